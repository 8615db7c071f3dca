"""Smoke tests of the gradient-flow studies in experiments/: each study's interface (GRIDS,
run, figure, warmup), determinism, its table's columns, and one property its numbers must
have."""

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rnnlab.activations import DERIVATIVE_BOUND
from rnnlab.harness import Diverged, Grid

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
STUDIES = ["gradient_decay", "jacobian_spectra", "lyapunov", "pascanu_bound"]
INDEX_COLUMNS = {"gradient_decay": ["distance"], "jacobian_spectra": ["span", "index"],
                 "lyapunov": ["index"], "pascanu_bound": []}
_MODULES = {}


@pytest.fixture(autouse=True)
def one_numba_thread():
    """Run on one Numba thread, as a sweep's workers do: the matrix-free Lyapunov kernel opens
    a parallel region every step, and with the other core busy (a shared machine) each of them
    waits for a descheduled thread (a 0.2 s point measured at 20 s)."""
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(before)


def load(name):
    if name not in _MODULES:
        spec = importlib.util.spec_from_file_location(f"study_{name}", EXPERIMENTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _MODULES[name] = module
    return _MODULES[name]


def run_checked(study, name, point):
    """run() twice: the same rows bit for bit, with the study's columns and dtypes."""
    rows = study.run(dict(point))
    again = study.run(dict(point))
    assert list(rows.columns) == ["quantity", "value"] + INDEX_COLUMNS[name]
    assert rows["value"].dtype == np.float64
    assert rows["quantity"].map(type).eq(str).all()
    assert not set(rows.columns) & set(point)
    pd.testing.assert_frame_equal(rows, again, check_exact=True)
    assert np.array_equal(rows["value"].to_numpy().view(np.int64),
                          again["value"].to_numpy().view(np.int64))
    return rows


def table_of(results, diverged=()):
    """The harness's table: the rows, the point's parameters as columns, a status."""
    frames = [rows.assign(status="ok", **point) for point, rows in results]
    frames += [pd.DataFrame({"quantity": [None], "value": [np.nan], "status": ["diverged"],
                             **{k: [v] for k, v in point.items()}}) for point in diverged]
    return pd.concat(frames, ignore_index=True)


def check_figure(study, table, out_dir):
    paths = study.figure(table, out_dir)
    assert paths and all(Path(p).suffix == ".png" for p in paths)
    for p in paths:
        data = Path(p).read_bytes()
        assert Path(p).parent == Path(out_dir) and data[:8] == b"\x89PNG\r\n\x1a\n"
        assert len(data) > 10_000


def quick(study, n):
    return study.GRIDS["quick"].points()[:n]


# --------------------------------------------------------------------------- the interface
@pytest.mark.parametrize("name", STUDIES)
def test_study_interface(name):
    study = load(name)
    assert study.__doc__ and isinstance(study.TITLE, str) and "\n" not in study.TITLE
    assert set(study.GRIDS) == {"quick", "full"}
    for grid in study.GRIDS.values():
        assert isinstance(grid, Grid)
        points = grid.points()
        assert points and all("seed" in p for p in points)
        assert all(isinstance(v, (bool, int, float, str)) for p in points for v in p.values())
    assert len(study.GRIDS["quick"]) < len(study.GRIDS["full"])
    study.warmup()


# --------------------------------------------------------------------------- gradient decay
def gradient_decay_results():
    name, study = "gradient_decay", load("gradient_decay")
    points = quick(study, 2) + [
        {**quick(study, 1)[0], "cell": "lstm", "activation": "gated", "depth": 2, "T": 300},
        {**quick(study, 1)[0], "cell": "rnn", "activation": "relu", "depth": 2, "T": 300}]
    results = []
    for point in points:
        rows = run_checked(study, name, point)
        curve = rows[rows.quantity == "log_grad_norm"]
        dist = curve.distance.to_numpy()
        assert dist[0] == 0 and dist[-1] == point["T"] and np.all(np.diff(dist) > 0)
        assert np.array_equal(dist[:101], np.arange(101))
        assert set(rows.quantity) == {"log_grad_norm", "decay_rate", "fit_residual"}
        assert rows[rows.quantity != "log_grad_norm"].distance.isna().all()
        assert np.isfinite(rows[rows.quantity != "log_grad_norm"].value).all()
        assert abs(curve.value.iloc[0]) < 1e-12  # the loss gradient has unit norm
        results.append((point, rows))
    # Pascanu: one step back multiplies the norm by at most σ_max(W_hh)·γ (tanh, one layer)
    for point, rows in results[:2]:
        net, _ = study.model(point)
        sigma = np.linalg.svd(net.parameters()["weight_hh_l0"], compute_uv=False)[0]
        steps = np.diff(rows[rows.quantity == "log_grad_norm"].value.to_numpy()[:101])
        assert np.all(steps <= np.log(sigma) + 1e-9)
        rate = rows[rows.quantity == "decay_rate"].value.iloc[0]
        assert rate <= np.log(sigma) + 1e-9
    # a linear network with gain 2 overflows: recorded as diverged
    blown = {**quick(study, 1)[0], "activation": "linear", "gain": 2.0}
    with pytest.raises(Diverged):
        study.run(blown)
    return results, blown


def test_gradient_decay(tmp_path):
    study = load("gradient_decay")
    results, blown = gradient_decay_results()
    check_figure(study, table_of(results, [blown]), tmp_path)
    check_figure(study, table_of(results[:1]), tmp_path / "one")


def test_gradient_decay_lower_layer_overflow_is_divergence():
    """A relu stack whose bottom layer overflows while the top layer's output stays finite
    (relu turns the NaN it receives into 0) is still reported as diverged."""
    study = load("gradient_decay")
    point = {**quick(study, 1)[0], "activation": "relu", "depth": 2, "T": 400}
    net, x = study.model(point)
    net.parameters()["weight_hh_l0"][...] *= 50
    with np.errstate(over="ignore", invalid="ignore"):
        out, _, cache = net.forward_with_cache(x)
    assert np.isfinite(out).all() and not np.isfinite(cache["states"][0, 0]).all()
    with pytest.raises(Diverged, match="overflowed"):
        study._trajectory(net, x)


# --------------------------------------------------------------------------- spectra
def test_jacobian_spectra(tmp_path):
    name, study = "jacobian_spectra", load("jacobian_spectra")
    points = quick(study, 1) + [
        {**p, "T": 64} for p in study.GRIDS["quick"].points() if p["cell"] == "lstm"]
    results = []
    for point in points:
        rows = run_checked(study, name, point)
        assert set(rows.quantity) == {"log_sigma", "lyapunov_exponent", "converged"}
        sv = rows[rows.quantity == "log_sigma"]
        n = point["H"] * (2 if point["cell"] == "lstm" else 1)
        spans = sorted(sv.span.unique())
        assert spans == [2.0 ** i for i in range(int(np.log2(point["T"])) + 1)]
        assert np.isfinite(sv.value).all()
        for _, s in sv.groupby("span"):
            assert list(s["index"]) == list(range(1, n + 1))
            assert np.all(np.diff(s.value.to_numpy()) <= 0)
        assert (rows[rows.quantity == "converged"].value == 1.0).all()
        lyap = rows[rows.quantity == "lyapunov_exponent"]
        assert list(lyap["index"]) == list(range(1, n + 1)) and lyap.span.isna().all()
        if point["cell"] == "rnn":
            # ‖∏ J‖ <= (σ_max(W_hh) γ)^span for tanh: per step at most log σ_max
            net, _ = study.model(point)
            bound = np.log(np.linalg.svd(net.parameters()["weight_hh_l0"],
                                         compute_uv=False)[0])
            top = sv[sv["index"] == 1]
            assert np.all(top.value / top.span <= bound + 1e-9)
            assert lyap.value.iloc[0] <= bound + 1e-9
        results.append((point, rows))
    check_figure(study, table_of(results), tmp_path)


# --------------------------------------------------------------------------- lyapunov
def test_lyapunov(tmp_path):
    name, study = "lyapunov", load("lyapunov")
    points = quick(study, 2)
    assert points[0]["gain"] == 0.5
    results = []
    for point in points:
        rows = run_checked(study, name, point)
        lyap = rows[rows.quantity == "lyapunov_exponent"]
        assert list(lyap["index"]) == list(range(1, point["k"] + 1))
        assert set(rows.quantity) == {"lyapunov_exponent", "decay_rate", "fit_residual",
                                      "log_spectral_radius"}
        assert np.isfinite(rows.value).all()
        results.append((point, rows))
    # g = 0.5: the state decays to the fixed point 0, where J = W_hh: λ1 is the log of its
    # spectral radius, and the gradient decays at that rate
    rows = results[0][1]
    q = rows.set_index("quantity").value
    lam1 = rows[(rows.quantity == "lyapunov_exponent") & (rows["index"] == 1)].value.iloc[0]
    assert lam1 < 0
    assert abs(lam1 - q["log_spectral_radius"]) < 0.01
    assert abs(q["decay_rate"] - lam1) < 0.01
    check_figure(study, table_of(results), tmp_path)


# --------------------------------------------------------------------------- pascanu
def test_pascanu_bound(tmp_path):
    name, study = "pascanu_bound", load("pascanu_bound")
    results, diverged = [], []
    for point in study.GRIDS["quick"].points():
        try:
            rows = run_checked(study, name, point)
        except Diverged:
            diverged.append(point)
            continue
        q = rows.set_index("quantity").value
        assert list(q.index) == list(study.QUANTITIES)
        assert q["gamma"] == DERIVATIVE_BOUND[point["activation"]]
        assert q["sigma_max_gamma"] == pytest.approx(q["sigma_max"] * q["gamma"], rel=1e-14)
        assert q["log_bound_rate"] == pytest.approx(np.log(q["sigma_max_gamma"]), rel=1e-12)
        # every step shrinks the gradient by at least σ_max γ, so does the fitted slope
        assert q["decay_rate"] <= q["log_bound_rate"] + 1e-9
        if q["sigma_max_gamma"] < 1:
            assert q["decay_rate"] < 0
        results.append((point, rows))
    assert len(results) >= len(study.GRIDS["quick"]) - 4
    check_figure(study, table_of(results, diverged), tmp_path)
    check_figure(study, table_of(results[:1]), tmp_path / "one")


@pytest.mark.parametrize("name", STUDIES)
def test_figure_of_a_table_without_results(name, tmp_path):
    """Only diverged points (or none finished yet): an empty figure, no crash."""
    study = load(name)
    check_figure(study, table_of([], quick(study, 1)), tmp_path)
