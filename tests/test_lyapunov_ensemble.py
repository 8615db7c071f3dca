"""Ensemble Lyapunov spectra (rnnlab.diagnostics.lyapunov_ensemble) on the CPU.

- Agreement with the single-network path: ``exponents[e]`` equals
  :func:`lyapunov_spectrum` of network ``e``'s trajectory from ``rnnlab.RNN`` +
  :func:`trajectories` (every activation, k < N and k = N, m > 1, warm-up, per-network, shared
  and zero drive, per-network and shared h0).
- Exact identities (DESIGN.md): linear RNN with ``W = c Q`` (Q orthogonal): every exponent is
  ``log|c|``, over 10,000 steps; any cell, full spectrum: ``sum(λ) = mean log|det J_t|``.
- Argument errors, each naming its argument, raised before any kernel runs; ``backend="cuda"``
  without a GPU; float32 input; overflowing networks; determinism; the tidy table.

The CUDA kernels are checked against these CPU kernels in tests/test_cuda_lyapunov.py.
"""

import numpy as np
import pytest

import rnnlab
from rnnlab import BackendUnavailableError
from rnnlab.diagnostics import (LyapunovEnsembleResult, lyapunov_ensemble, lyapunov_spectrum,
                                trajectories)


def rel_err(ref, got):
    """max |ref - got| / max |ref| over finite entries; inf if the infinities differ."""
    ref, got = np.asarray(ref), np.asarray(got)
    fin = np.isfinite(ref)
    if not np.array_equal(fin, np.isfinite(got)) or not np.array_equal(ref[~fin], got[~fin]):
        return np.inf
    return float(np.abs(ref[fin] - got[fin]).max() / max(np.abs(ref[fin]).max(), 1e-300))


def ensemble_and_references(nonlinearity, gain, drive_kind, h0_kind, k, m, warmup,
                            n_net=3, n=6, n_in=2, n_steps=120, seed=0):
    """Exponents from lyapunov_ensemble and, per network, from RNN + trajectories +
    lyapunov_spectrum on the same weights, drive and initial state."""
    rng = np.random.default_rng(seed)
    w = gain * rng.standard_normal((n_net, n, n)) / np.sqrt(n)
    nets, xs, drives = [], [], []
    shared_x = rng.standard_normal((n_steps, 1, n_in))
    for e in range(n_net):
        net = rnnlab.RNN(n_in, n, nonlinearity=nonlinearity, dtype=np.float64, seed=10 + e)
        p = net.parameters()
        p["weight_hh_l0"][...] = w[e]
        if drive_kind == "shared":  # every network gets network 0's input weights and input
            if e > 0:
                for name in ("weight_ih_l0", "bias_ih_l0", "bias_hh_l0"):
                    p[name][...] = nets[0].parameters()[name]
            x = shared_x
        elif drive_kind == "none":
            p["bias_ih_l0"][...] = 0.0
            p["bias_hh_l0"][...] = 0.0
            x = np.zeros((n_steps, 1, n_in))
        else:
            x = rng.standard_normal((n_steps, 1, n_in))
        if nonlinearity == "relu":  # positive input keeps most units on
            x = np.abs(x)
            p["bias_ih_l0"][...] = np.abs(p["bias_ih_l0"]) + (0.2 if drive_kind != "none"
                                                              else 0.0)
        # the drive as the model projects it: x W_ih^T + (b_ih + b_hh)
        drives.append(x[:, 0] @ p["weight_ih_l0"].T + (p["bias_ih_l0"] + p["bias_hh_l0"]))
        nets.append(net)
        xs.append(x)
    if h0_kind == "per-network":
        h0 = 0.5 * np.abs(rng.standard_normal((n_net, n)))
    elif h0_kind == "shared":
        h0 = 0.5 * np.abs(rng.standard_normal(n))
    else:
        h0 = None
    if drive_kind == "shared":
        drive, n_steps_arg = drives[0], None
    elif drive_kind == "none":
        drive, n_steps_arg = None, n_steps
    else:
        drive, n_steps_arg = np.stack(drives, axis=1), None
    res = lyapunov_ensemble(w, drive, h0, nonlinearity=nonlinearity, n_steps=n_steps_arg, k=k,
                            m=m, warmup=warmup, seed=seed, backend="cpu")
    refs = []
    for e, (net, x) in enumerate(zip(nets, xs)):
        h0_e = None
        if h0 is not None:
            h0_e = (h0[e] if h0.ndim == 2 else h0).reshape(1, 1, n)
        (traj,) = trajectories(net, x, h0_e)
        refs.append(lyapunov_spectrum(traj, k=k, m=m, warmup=warmup, seed=seed).exponents)
    return res, np.stack(refs)


CHAOTIC = {"n": 16, "n_steps": 200, "seed": 1}


@pytest.mark.parametrize("nonlinearity, gain, drive, h0, k, m, warmup, extra", [
    # chaotic (λ_1 > 0 for every network): agreement to round-off needs the same trajectories,
    # and the ensemble kernel indeed sums in the order of rnnlab.RNN's kernel
    ("tanh", 3.0, "per-network", "per-network", 4, 1, 20, CHAOTIC),
    ("tanh", 1.6, "per-network", None, None, 1, 0, {}),
    ("tanh", 1.6, "shared", None, 3, 3, 10, {}),
    ("relu", 0.8, "per-network", "shared", 4, 1, 7, {}),  # a dead direction: -inf, both sides
    ("sigmoid", 3.0, "per-network", None, None, 5, 20, {}),
    ("linear", 0.9, "none", "per-network", 2, 2, 3, {}),
    ("linear", 1.1, "shared", "shared", None, 7, 1, {}),  # m does not divide T - warmup
])
def test_matches_single_network(nonlinearity, gain, drive, h0, k, m, warmup, extra):
    res, refs = ensemble_and_references(nonlinearity, gain, drive, h0, k, m, warmup, **extra)
    if extra is CHAOTIC:
        assert (res.exponents[:, 0] > 0.03).all()
    assert res.exponents.shape == refs.shape
    assert res.exponents.dtype == np.float64
    assert rel_err(refs, res.exponents) < 1e-12
    assert (res.diverged_at == -1).all()


def test_linear_orthogonal_identity_long_run():
    """W_e = c_e Q_e, linear, zero drive: every exponent is log|c_e| (10,000 steps)."""
    rng = np.random.default_rng(3)
    n, c = 4, np.array([0.5, 1.0, -1.3])
    q = np.stack([np.linalg.qr(rng.standard_normal((n, n)))[0] for _ in c])
    w = c[:, None, None] * q
    for k, m in ((n, 1), (2, 5)):
        res = lyapunov_ensemble(w, nonlinearity="linear", n_steps=10_000, k=k, m=m,
                                warmup=100, backend="cpu")
        np.testing.assert_allclose(res.exponents, np.repeat(np.log(np.abs(c))[:, None], k, 1),
                                   rtol=0, atol=1e-12)


def test_sum_equals_mean_log_det():
    """k = N: sum(λ) = mean over the measured steps of log|det J_t|, with
    det J_t = det W prod g'(a<t>), from a NumPy trajectory."""
    rng = np.random.default_rng(4)
    n_net, n, n_steps, warmup = 2, 5, 300, 50
    w = 0.9 * rng.standard_normal((n_net, n, n)) / np.sqrt(n)
    drive = rng.standard_normal((n_steps, n_net, n))
    h0 = 0.3 * rng.standard_normal((n_net, n))
    res = lyapunov_ensemble(w, drive, h0, m=3, warmup=warmup, backend="cpu")
    for e in range(n_net):
        a = h0[e]
        logdet = []
        for t in range(n_steps):
            a = np.tanh(w[e] @ a + drive[t, e])
            logdet.append(np.log(np.abs(np.linalg.det(w[e]))) + np.log(1 - a * a).sum())
        expected = np.mean(logdet[warmup:])
        assert abs(res.exponents[e].sum() - expected) < 1e-11 * max(1.0, abs(expected))


def test_float32_input_is_converted_to_float64():
    rng = np.random.default_rng(5)
    w32 = rng.standard_normal((2, 4, 4)).astype(np.float32)
    d32 = rng.standard_normal((50, 4)).astype(np.float32)
    res32 = lyapunov_ensemble(w32, d32, backend="cpu")
    res64 = lyapunov_ensemble(w32.astype(np.float64), d32.astype(np.float64), backend="cpu")
    assert res32.exponents.dtype == np.float64
    np.testing.assert_array_equal(res32.exponents, res64.exponents)
    assert res32.config["input_dtype"] == "float32" and res32.config["dtype"] == "float64"


def test_deterministic_and_tidy_table():
    rng = np.random.default_rng(6)
    w = rng.standard_normal((3, 5, 5))
    drive = rng.standard_normal((40, 3, 5))
    a = lyapunov_ensemble(w, drive, k=2, m=2, warmup=4, seed=1, backend="cpu")
    b = lyapunov_ensemble(w, drive, k=2, m=2, warmup=4, seed=1, backend="cpu")
    assert isinstance(a, LyapunovEnsembleResult)
    np.testing.assert_array_equal(a.exponents, b.exponents)  # bitwise
    df = a.to_frame()
    assert len(df) == 3 * 2
    assert list(df.columns[:4]) == ["network", "index", "exponent", "diverged_at"]
    assert df["network"].tolist() == [0, 0, 1, 1, 2, 2]
    assert df["index"].tolist() == [1, 2] * 3
    np.testing.assert_array_equal(df["exponent"].to_numpy(), a.exponents.ravel())
    for key, val in a.config.items():
        assert (df[key] == val).all()
    assert a.config["drive"] == "per-network" and a.config["T"] == 40 and a.config["k"] == 2


def test_overflowing_network_gives_nan_and_warns():
    """Network 1 overflows (linear, W = 10 I); the others are unaffected."""
    w = np.stack([0.5 * np.eye(3), 10.0 * np.eye(3), 0.9 * np.eye(3)])
    with pytest.warns(RuntimeWarning, match="overflowed"):
        res = lyapunov_ensemble(w, h0=np.ones(3), nonlinearity="linear", n_steps=400,
                                backend="cpu")
    assert res.diverged_at[1] > 300 and res.diverged_at[0] == res.diverged_at[2] == -1
    assert np.isnan(res.exponents[1]).all()
    np.testing.assert_allclose(res.exponents[[0, 2]], np.log([[0.5] * 3, [0.9] * 3]),
                               atol=1e-12)


@pytest.fixture
def no_kernel(monkeypatch):
    """Fail the test if a kernel runs: errors must come from validation."""
    from rnnlab.kernels.cpu import lyapunov as cpu_kernels

    def boom(*args, **kwargs):
        raise AssertionError("a kernel ran before the arguments were validated")

    monkeypatch.setattr(cpu_kernels, "lyapunov_ensemble_sums", boom)


W = np.zeros((2, 3, 3))
D = np.zeros((10, 2, 3))


@pytest.mark.parametrize("kwargs, error, match", [
    ({"w_hh": np.zeros((3, 3))}, ValueError, "w_hh must have shape"),
    ({"w_hh": np.zeros((2, 3, 4))}, ValueError, "w_hh must have shape"),
    ({"w_hh": np.zeros((0, 3, 3))}, ValueError, "w_hh must have shape"),
    ({"w_hh": np.zeros((2, 3, 3), dtype=np.int64)}, TypeError, "w_hh must be a float64"),
    ({"w_hh": np.zeros((2, 3, 3), dtype=np.float16)}, TypeError, "w_hh must be a float64"),
    ({"w_hh": np.full((2, 3, 3), np.nan)}, ValueError, "w_hh contains NaN"),
    ({"drive": np.zeros((10, 3, 3))}, ValueError, "drive must have shape"),
    ({"drive": np.zeros((10, 4))}, ValueError, "drive must have shape"),
    ({"drive": np.zeros((0, 2, 3))}, ValueError, "drive has T = 0"),
    ({"drive": np.zeros((0, 3))}, ValueError, "drive has T = 0"),
    ({"drive": np.full((10, 3), np.inf)}, ValueError, "drive contains NaN or Inf"),
    ({"drive": D, "n_steps": 5}, ValueError, "n_steps"),
    ({"drive": None}, ValueError, "n_steps is required"),
    ({"drive": None, "n_steps": 0}, ValueError, "n_steps must be >= 1"),
    ({"h0": np.zeros((3, 3))}, ValueError, "h0 must have shape"),
    ({"h0": np.array([0.0, np.inf, 0.0])}, ValueError, "h0 contains NaN or Inf"),
    ({"k": 4}, ValueError, "k = 4 exceeds"),
    ({"k": 0}, ValueError, "k must be >= 1"),
    ({"k": 2.0}, TypeError, "k must be an integer"),
    ({"m": 0}, ValueError, "m must be >= 1"),
    ({"warmup": 10}, ValueError, r"warmup \(10\) must be shorter"),
    ({"warmup": -1}, ValueError, "warmup must be >= 0"),
    ({"seed": -1}, ValueError, "seed must be >= 0"),
    ({"nonlinearity": "softplus"}, ValueError, "nonlinearity must be one of"),
    ({"backend": "tpu"}, ValueError, "backend must be one of"),
])
def test_argument_errors(no_kernel, kwargs, error, match):
    args = {"w_hh": W, "drive": D, **kwargs}
    with pytest.raises(error, match=match):
        lyapunov_ensemble(**args)


def test_cuda_backend_without_gpu_raises_clear_error(no_kernel):
    from rnnlab.kernels import cuda

    if cuda.is_available():
        pytest.skip("a GPU (or the CUDA simulator) is available here")
    with pytest.raises(BackendUnavailableError, match="backend='cuda' cannot run here"):
        lyapunov_ensemble(W, D, backend="cuda")
