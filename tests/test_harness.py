"""The experiment harness: grids, --set parsing, the result store, resume after SIGKILL, the
local pool and Dask giving the same table, errors before work."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rnnlab.cli import main
from rnnlab.harness import Grid, registry, runner, store

REPO = Path(__file__).resolve().parents[1]

# A study doing real rnnlab work (a gradient-decay rate), logging every point it computes to
# $RNNLAB_TEST_LOG, slowed by $RNNLAB_TEST_SLEEP, killing its own worker once at a=3 if
# $RNNLAB_TEST_KILL_ONCE names a marker file not yet there.
STUDY = '''
"""Test study."""
import os, time
import numpy as np, pandas as pd
import rnnlab
from rnnlab.diagnostics import gradient_decay, trajectories
from rnnlab.harness import Grid, Diverged, figures

TITLE = "a test study"
GRIDS = {"quick": Grid(a=[1, 2, 3, 4], gain=[0.5, 1.5], seed=0) + Grid(a=[9], gain=[1.0], seed=0),
         "full": Grid(a=[1], gain=[0.5], seed=0)}

def run(point):
    log = os.environ.get("RNNLAB_TEST_LOG")
    if log:
        with open(log, "a") as fh:
            fh.write(repr(sorted(point.items())) + "\\n")
    time.sleep(float(os.environ.get("RNNLAB_TEST_SLEEP", "0")))
    marker = os.environ.get("RNNLAB_TEST_KILL_ONCE")
    if marker and point["a"] == 3 and not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), 9)
    if point["a"] == 9:
        raise Diverged("states overflowed")
    if point["a"] == 4 and point["gain"] > 1:
        raise RuntimeError("a failing point")
    net = rnnlab.RNN(2, 8, dtype=np.float64, seed=point["seed"] + point["a"])
    net.parameters()["weight_hh_l0"][...] *= point["gain"]
    x = np.random.default_rng(point["a"]).standard_normal((200, 1, 2))
    gd = gradient_decay(trajectories(net, x)[0])
    return pd.DataFrame({"quantity": ["decay_rate", "last_log_norm"], "index": [0, 1],
                         "value": [gd.fit()["rate"], gd.log_norms[0]]})

def figure(table, out_dir):
    with figures.style() as plt:
        fig, ax = plt.subplots()
        rate = table[table.quantity == "decay_rate"]
        ax.plot(rate["gain"], rate["value"], "o")
        ax.set_xlabel("gain"); ax.set_ylabel("rate (nats/step)")
        return figures.save(fig, os.path.join(str(out_dir), "test_study"))
'''


@pytest.fixture
def exps(tmp_path):
    folder = tmp_path / "experiments"
    folder.mkdir()
    (folder / "test_study.py").write_text(STUDY)
    return folder


def _env(**extra):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _run_cli(*args, **env):
    return subprocess.run([sys.executable, "-m", "rnnlab", *args], capture_output=True,
                          text=True, env=_env(**env), cwd=REPO, timeout=300)


# ------------------------------------------------------------------------------ grids
def test_grid_product_union_filter_and_dedupe():
    g = Grid(a=[1, 2], b=["x", "y"], where=lambda p: (p["a"], p["b"]) != (2, "y")) + \
        Grid(a=[1], b=["x"]) + Grid(a=[3], b=["z"], c=True)
    assert g.points() == [{"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 2, "b": "x"},
                          {"a": 3, "b": "z", "c": True}]
    assert g.keys == ["a", "b", "c"] and len(g) == 4
    assert g.with_values({"a": [7]}).points()[0] == {"a": 7, "b": "x"}
    with pytest.raises(KeyError, match="unknown grid parameter"):
        g.with_values({"nope": [1]})
    with pytest.raises(TypeError, match="finite int, float, str or bool"):
        Grid(a=[np.nan])
    with pytest.raises(ValueError, match="no values"):
        Grid(a=[])


def test_set_overrides_are_typed_and_checked():
    g = Grid(T=[10], gain=[0.5], cell=["rnn"], flag=[True])
    assert runner.parse_overrides(g, ["T=5,20", "gain=1", "cell=lstm", "flag=false"]) == {
        "T": [5, 20], "gain": [1.0], "cell": ["lstm"], "flag": [False]}
    for bad, msg in [("depth=2", "not a parameter of this grid.*T, gain, cell, flag"),
                     ("T=2.5", "'2.5' is not a valid int"), ("gain=abc", "not a valid float"),
                     ("gain=inf", "not a valid float"), ("flag=maybe", "not a valid bool"),
                     ("T", "key=value"), ("cell=", "not a valid str")]:
        with pytest.raises(ValueError, match=msg):
            runner.parse_overrides(g, [bad])


def test_point_keys_are_stable_and_distinct():
    k = store.point_key("s", {"a": 1, "gain": 0.5})
    assert k == store.point_key("s", {"gain": 0.5, "a": 1})
    assert len({k, store.point_key("s", {"a": 1, "gain": 0.25}),
                store.point_key("t", {"a": 1, "gain": 0.5})}) == 3


# --------------------------------------------------------------------- errors before work
def test_cli_errors_before_any_work(exps, tmp_path, capsys):
    out = tmp_path / "out"
    cases = [(["run", "nope"], "unknown study 'nope'; known: test_study"),
             (["run", "test_study", "--set", "depth=3"], "not a parameter of this grid"),
             (["run", "test_study", "--set", "gain=high"], "'high' is not a valid float"),
             (["run", "test_study", "--grid", "huge"], "invalid choice"),
             (["run", "test_study", "--workers", "0"], "--workers must be >= 1")]
    for args, msg in cases:
        with pytest.raises(SystemExit) as exc:
            main(args + ["--out", str(out), "--experiments", str(exps)])
        assert exc.value.code == 2
        assert msg in capsys.readouterr().err
    assert not list(out.rglob("*.parquet"))  # nothing computed
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(SystemExit):
        main(["run", "test_study", "--out", str(blocker / "x"), "--experiments", str(exps)])
    assert "cannot write to the output folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["run", "test_study", "--experiments", str(tmp_path / "missing")])
    assert "is not a folder" in capsys.readouterr().err


def test_bad_study_file_is_reported(tmp_path):
    (tmp_path / "broken.py").write_text("GRIDS = {'quick': 1}\ndef run(p): pass\n"
                                        "def figure(t, o): pass\n")
    with pytest.raises(TypeError, match="GRIDS must map 'quick' and 'full' to Grid"):
        registry.load_study("broken", tmp_path)


# --------------------------------------------------------------------------- the store
def test_statuses_provenance_and_retry_of_errors(exps, tmp_path, capsys):
    out = tmp_path / "out"
    log = tmp_path / "log"
    os.environ["RNNLAB_TEST_LOG"] = str(log)
    try:
        code = main(["run", "test_study", "--out", str(out), "--experiments", str(exps),
                     "--jobs", "1"])
        assert code == 1  # one point failed, and the exit status says so
        table = pd.read_parquet(out / "test_study" / "test_study.parquet")
        csv = pd.read_csv(out / "test_study" / "test_study.csv")
        assert len(csv) == len(table)
        status = table.groupby(["a", "gain"])["status"].first()
        assert status[(9, 1.0)] == "diverged" and status[(4, 1.5)] == "error"
        assert (status.drop([(9, 1.0), (4, 1.5)]) == "ok").all()
        err = table[table.status == "error"]["error"].iloc[0]
        assert "RuntimeError: a failing point" in err
        for col in ["rnnlab_version", "git_commit", "numba_version", "numpy_version", "device",
                    "dtype", "seed", "wall_s", "compile_s"]:
            assert col in table.columns and table[col].notna().all(), col
        assert (out / "test_study" / "test_study.png").stat().st_size > 0
        # a rerun computes only the failed point again
        log.write_text("")
        main(["run", "test_study", "--out", str(out), "--experiments", str(exps),
              "--jobs", "1"])
        assert log.read_text().splitlines() == [repr(sorted(
            {"a": 4, "gain": 1.5, "seed": 0}.items()))]
        assert "1 computed, 8 already done" in capsys.readouterr().out
    finally:
        del os.environ["RNNLAB_TEST_LOG"]


def test_same_seed_gives_bitwise_identical_tables(exps, tmp_path):
    tables = []
    for name in ("a", "b"):
        main(["run", "test_study", "--out", str(tmp_path / name), "--experiments", str(exps),
              "--jobs", "1", "--no-figure"])
        tables.append(pd.read_parquet(tmp_path / name / "test_study" / "test_study.parquet"))
    assert store.numeric_equal(*tables)
    assert tables[0]["value"].notna().sum() == 14  # 7 ok points x 2 quantities


def test_figures_redraw_from_tables_only(exps, tmp_path):
    out = tmp_path / "out"
    main(["run", "test_study", "--out", str(out), "--experiments", str(exps), "--jobs", "1"])
    png = out / "test_study" / "test_study.png"
    png.unlink()
    log = tmp_path / "log"
    os.environ["RNNLAB_TEST_LOG"] = str(log)
    try:
        assert main(["figures", "--out", str(out), "--experiments", str(exps)]) == 0
    finally:
        del os.environ["RNNLAB_TEST_LOG"]
    assert png.stat().st_size > 0 and not log.exists()


# ---------------------------------------------------------------- resume after SIGKILL
def test_sigkill_then_rerun_equals_an_uninterrupted_run(exps, tmp_path):
    ref = tmp_path / "ref"
    assert _run_cli("run", "test_study", "--out", str(ref), "--experiments", str(exps),
                    "--jobs", "1", "--no-figure").returncode == 1
    out, log = tmp_path / "out", tmp_path / "log"
    shards = out / "test_study" / "shards"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rnnlab", "run", "test_study", "--out", str(out),
         "--experiments", str(exps), "--jobs", "2", "--no-figure"],
        env=_env(RNNLAB_TEST_LOG=log, RNNLAB_TEST_SLEEP=0.4), cwd=REPO,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(shards.glob("*.parquet"))) < 3:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its pool workers
    proc.wait()
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in shards.glob("*.parquet")}
    assert 3 <= len(before) < 9, "the sweep was not interrupted mid-way"
    log.write_text("")
    rerun = _run_cli("run", "test_study", "--out", str(out), "--experiments", str(exps),
                     "--jobs", "2", "--no-figure", RNNLAB_TEST_LOG=log)
    assert f"{9 - len(before)} computed, {len(before)} already done" in rerun.stdout
    # finished points untouched and not recomputed
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in shards.glob("*.parquet") if p.name in before} == before
    recomputed = {store.point_key("test_study", dict(eval(line)))
                  for line in log.read_text().splitlines()}
    assert not recomputed & {n.removesuffix(".parquet") for n in before}
    assert store.numeric_equal(pd.read_parquet(out / "test_study" / "test_study.parquet"),
                               pd.read_parquet(ref / "test_study" / "test_study.parquet"))


# ------------------------------------------------------------------------------ scale
def test_local_pool_and_dask_give_the_serial_table(exps, tmp_path):
    pytest.importorskip("distributed")
    tables = {}
    for name, args in [("serial", ["--jobs", "1"]), ("pool", ["--jobs", "2"]),
                       ("dask", ["--workers", "2"])]:
        res = _run_cli("run", "test_study", "--out", str(tmp_path / name), "--experiments",
                       str(exps), "--no-figure", *args)
        assert "9 computed" in res.stdout, res.stderr
        tables[name] = pd.read_parquet(tmp_path / name / "test_study" / "test_study.parquet")
    assert store.numeric_equal(tables["serial"], tables["pool"])
    assert store.numeric_equal(tables["serial"], tables["dask"])


@pytest.mark.parametrize("backend", [["--jobs", "2"], ["--workers", "2"]])
def test_a_killed_worker_does_not_stop_the_sweep(exps, tmp_path, backend):
    if backend[0] == "--workers":
        pytest.importorskip("distributed")
    marker = tmp_path / "killed"
    res = _run_cli("run", "test_study", "--out", str(tmp_path / "out"), "--experiments",
                   str(exps), "--no-figure", *backend, RNNLAB_TEST_KILL_ONCE=marker)
    assert marker.exists(), "no worker was killed"
    assert "9 computed" in res.stdout, res.stderr
    table = pd.read_parquet(tmp_path / "out" / "test_study" / "test_study.parquet")
    status = table.groupby(["a", "gain"])["status"].first()
    assert (status[[(3, 0.5), (3, 1.5)]] == "ok").all()
    assert list(status.value_counts().sort_index().items()) == [
        ("diverged", 1), ("error", 1), ("ok", 7)]
