"""The benchmark scripts run end to end at tiny sizes (rnnlab alone: PyTorch and JAX are optional).

Nothing here times anything: it checks that the scripts a user runs for hours start, write what
they promise and skip what cannot fit, before an hour is spent finding out.
"""

import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_cpu  # noqa: E402
import bench_diagnostics  # noqa: E402
import bench_rnn  # noqa: E402

TINY = ["--T", "12", "--B", "1", "2", "--H", "4", "--cells", "rnn", "lstm", "--dtypes", "float64",
        "--no-torch", "--no-jax", "--no-extras"]


def test_bench_cpu_writes_a_row_per_configuration_and_op(tmp_path):
    out = tmp_path / "cpu.parquet"
    assert bench_cpu.main(TINY + ["--out", str(out), "--memory-limit", "0"]) == 0
    table = pd.read_parquet(out)
    assert len(table) == 2 * 2 * 2  # cells x batch sizes x {fwd, fwd+bwd}
    assert set(table.op) == {"fwd", "fwd+bwd"}
    assert (table.rnnlab_ms > 0).all() and table.git_commit.notna().all()
    assert (table.round_order == "cycled").all() and (table.numpy_hugepages == "off").all()
    # multiply-adds of the products: 2 (forward) or 6 (fwd+bwd) per gate block, T*B*H*H each
    lstm = table[(table.cell == "lstm") & (table.B == 2) & (table.op == "fwd+bwd")].iloc[0]
    assert lstm.macs == 6 * 12 * 2 * 4 * 4 * 4
    # a rerun skips what the table holds
    assert bench_cpu.main(TINY + ["--out", str(out), "--memory-limit", "0"]) == 0
    assert len(pd.read_parquet(out)) == 8


def test_timed_rounds_cycle_through_every_order():
    calls = []
    fns = {n: (lambda n=n: calls.append(n)) for n in ("rnnlab", "torch", "jax")}
    times = bench_rnn.time_interleaved(fns, warmup=2, repeats=7)
    assert {n: len(t) for n, t in times.items()} == {"rnnlab": 7, "torch": 7, "jax": 7}
    rounds = [tuple(calls[3 * k:3 * k + 3]) for k in range(9)]
    assert all(sorted(r) == ["jax", "rnnlab", "torch"] for r in rounds)
    assert rounds[0] == ("rnnlab", "torch", "jax") and len(set(rounds[:6])) == 6
    # in the timed rounds each implementation follows each of the others at least once
    timed = calls[6:]
    before = {n: {timed[i - 1] for i in range(1, len(timed)) if timed[i] == n} for n in fns}
    assert all(b - {n} == set(fns) - {n} for n, b in before.items())


def test_numpy_hugepage_switch_round_trips():
    np = pytest.importorskip("numpy")
    before = bench_rnn.set_numpy_hugepages(False)
    assert before is not None, f"NumPy {np.__version__} has no huge-page switch"
    try:
        assert bench_rnn.set_numpy_hugepages(True) is False
        assert bench_rnn.set_numpy_hugepages(True) is True
    finally:
        bench_rnn.set_numpy_hugepages(before)


def test_bench_cpu_skips_configurations_over_the_memory_limit(tmp_path, capsys, monkeypatch):
    ran = []
    monkeypatch.setattr(bench_cpu.bench_rnn, "run_size", lambda *a: ran.append(a))
    out = tmp_path / "cpu.parquet"
    # 1 kB: every configuration is over it (the estimate has a 1 GB base)
    assert bench_cpu.main(TINY + ["--out", str(out), "--memory-limit", "1e-6"]) == 0
    text = capsys.readouterr().out
    assert ran == [] and not out.exists()
    assert text.count("skipped: ") == 4 and "4 configurations skipped for memory" in text


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_peak_estimate_grows_with_the_data(cell, monkeypatch):
    from rnnlab import _scratch

    monkeypatch.setattr(_scratch, "SCRATCH_BYTES", 1 << 40)  # the pool kept whole
    small = bench_cpu.peak_bytes(cell, "float32", (1000, 32, 256))
    assert bench_cpu.peak_bytes(cell, "float64", (1000, 32, 256)) - bench_cpu.PEAK_BASE_BYTES \
        == 2 * (small - bench_cpu.PEAK_BASE_BYTES)
    assert bench_cpu.peak_bytes(cell, "float32", (10000, 32, 256)) - bench_cpu.PEAK_BASE_BYTES \
        == 10 * (small - bench_cpu.PEAK_BASE_BYTES)
    # rnnlab's own arrays alone (input, upstream gradient, states, input gradient) fit under it
    gates = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
    assert small - bench_cpu.PEAK_BASE_BYTES > 4 * 1000 * 32 * 256 * (3 + gates + 2)
    # the pool rnnlab keeps while the peers run counts up to its cap
    monkeypatch.setattr(_scratch, "SCRATCH_BYTES", 1000)
    assert small - bench_cpu.peak_bytes(cell, "float32", (1000, 32, 256)) == (
        4 * 1000 * 32 * 256 * bench_cpu.PEAK_SCRATCH_ELEMENT_BYTES[cell] - 1000)


def test_bench_cpu_rejects_a_negative_memory_limit():
    with pytest.raises(SystemExit):
        bench_cpu.parse_args(["--memory-limit", "-1"])


def test_bench_diagnostics_covers_the_grid_and_agrees_with_numpy(capsys):
    rows = bench_diagnostics.main(["--n", "8", "12", "--m", "1", "3", "--steps", "300",
                                   "--repeats", "1", "--decay-n", "8"])
    names = [r[0] for r in rows]
    assert len(rows) == 2 * 2 * 2 + 1  # N x m x {full, k = 8} + gradient decay
    assert "lyapunov N=12 T=300 m=3 k=8" in names and "lyapunov N=12 T=300 m=3 k=12" in names
    for name, ours, theirs, lead, _, full in rows[:-1]:
        assert ours > 0 and theirs > 0 and full > 0
        assert lead < 1e-9, name  # the leading exponents: rnnlab and the NumPy loop agree
    assert "full/k" in capsys.readouterr().out


def test_bench_diagnostics_rejects_bad_sizes():
    with pytest.raises(SystemExit):
        bench_diagnostics.main(["--n", "0"])
