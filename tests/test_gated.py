"""LSTM and GRU: PyTorch's numbers, finite differences, exact Jacobian identities, kernel
properties (precision, determinism, compile-once, long sequences) and argument checks."""

import os
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest

import rnnlab
from rnnlab.activations import fast_sigmoid, fast_tanh
from rnnlab.kernels.cpu import blas as blas_kernels
from rnnlab.kernels.cpu import gru as gru_kernels
from rnnlab.kernels.cpu import lstm as lstm_kernels
from rnnlab import _scratch as scratch_pool
from rnnlab._blas import blas_threads_for
from rnnlab.kernels.cpu.blas import bind_gemm

from conftest import numerical_gradient, relative_error

FIXTURE = Path(__file__).parent / "data" / "pytorch_reference.npz"
CELLS = {"lstm": rnnlab.LSTM, "gru": rnnlab.GRU}


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _run(net, x, hx, d_out, d_finals):
    """(output, finals, grads) for either cell; ``hx`` and ``d_finals`` are tuples of states."""
    if isinstance(net, rnnlab.LSTM):
        out, finals = net(x, hx)
        grads = net.backward(x, d_out, hx, *d_finals)
    else:
        out, h_n = net(x, hx[0] if hx else None)
        finals = (h_n,)
        grads = net.backward(x, d_out, hx[0] if hx else None, d_finals[0])
    return out, finals, grads


# ------------------------------------------------------------------------------ PyTorch's numbers
@pytest.fixture(scope="module")
def ref():
    return np.load(FIXTURE)


def _fixture_net(ref, case):
    net = CELLS[case](4, 5, num_layers=2, bidirectional=True, dtype=np.float64)
    prefix = f"{case}/param/"
    net.load_state_dict({k[len(prefix):]: ref[k] for k in ref.files if k.startswith(prefix)})
    return net


@pytest.mark.parametrize("case", sorted(CELLS))
def test_forward_and_gradients_match_pytorch(ref, case):
    net = _fixture_net(ref, case)
    r = {k.split("/", 1)[1]: ref[k] for k in ref.files if k.startswith(case + "/")}
    lstm = case == "lstm"
    hx = (r["h0"], r["c0"]) if lstm else (r["h0"],)
    d_finals = (r["d_hn"], r["d_cn"]) if lstm else (r["d_hn"],)
    out, finals, grads = _run(net, r["x"], hx, r["d_output"], d_finals)
    np.testing.assert_allclose(out, r["output"], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(finals[0], r["h_n"], rtol=1e-12, atol=1e-14)
    if lstm:
        np.testing.assert_allclose(finals[1], r["c_n"], rtol=1e-12, atol=1e-14)
    expected = {k[len("grad/"):]: v for k, v in r.items() if k.startswith("grad/")}
    assert set(grads) == set(expected)
    for name, g in expected.items():
        assert np.abs(grads[name] - g).max() <= 1e-12 * np.abs(g).max(), name


@pytest.mark.parametrize("case", sorted(CELLS))
def test_state_dict_is_pytorchs(ref, case):
    net = _fixture_net(ref, case)
    prefix = f"{case}/param/"
    expected = {k[len(prefix):]: ref[k].shape for k in ref.files if k.startswith(prefix)}
    assert {k: v.shape for k, v in net.state_dict().items()} == expected
    assert list(net.state_dict()) == [k[len(prefix):] for k in ref.files
                                      if k.startswith(prefix)]
    assert net.gate_count == {"lstm": 4, "gru": 3}[case]


@pytest.mark.parametrize("case", sorted(CELLS))
def test_default_initialisation_is_pytorchs_uniform(case):
    net = CELLS[case](3, 16, num_layers=2, seed=0)
    bound = 1 / np.sqrt(16)
    for name, value in net.state_dict().items():
        assert value.dtype == np.float32
        assert np.abs(value).max() <= bound and np.abs(value).max() > 0.9 * bound, name
    again = CELLS[case](3, 16, num_layers=2, seed=0).state_dict()
    assert all(np.array_equal(v, again[k]) for k, v in net.state_dict().items())


# ------------------------------------------------------------------------- finite differences
FD_CASES = [  # (layers, bidirectional, bias, layout, T)
    (1, False, True, "time_major", 3),
    (2, True, True, "time_major", 3),
    (3, False, False, "time_major", 2),
    (2, True, True, "batch_first", 3),
    (1, True, True, "unbatched", 3),
    (2, False, True, "time_major", 1),
]


@pytest.mark.parametrize("layers,bidirectional,bias,layout,T", FD_CASES)
@pytest.mark.parametrize("case", sorted(CELLS))
def test_bptt_matches_finite_differences(case, layers, bidirectional, bias, layout, T):
    rng = np.random.default_rng(layers * 10 + T)
    I, H, B = 2, 3, 2
    D = 2 if bidirectional else 1
    lstm = case == "lstm"
    net = CELLS[case](I, H, num_layers=layers, bias=bias, bidirectional=bidirectional,
                      batch_first=layout == "batch_first", dtype=np.float64, seed=1)
    for value in net.parameters().values():  # larger than the default: gates away from 1/2
        value[...] = rng.uniform(-0.8, 0.8, value.shape)
    if layout == "unbatched":
        x_shape, out_shape, state_shape = (T, I), (T, D * H), (D * layers, H)
    elif layout == "batch_first":
        x_shape, out_shape, state_shape = (B, T, I), (B, T, D * H), (D * layers, B, H)
    else:
        x_shape, out_shape, state_shape = (T, B, I), (T, B, D * H), (D * layers, B, H)
    x = rng.standard_normal(x_shape)
    hx = tuple(0.5 * rng.standard_normal(state_shape) for _ in range(1 + lstm))
    d_out = rng.standard_normal(out_shape)
    d_finals = tuple(rng.standard_normal(state_shape) for _ in range(1 + lstm))

    def loss():
        out, finals = net(x, hx) if lstm else net(x, hx[0])
        finals = finals if lstm else (finals,)
        return np.sum(out * d_out) + sum(np.sum(f * d) for f, d in zip(finals, d_finals))

    _, _, grads = _run(net, x, hx, d_out, d_finals)
    names = list(net.parameters()) + ["input", "h0"] + (["c0"] if lstm else [])
    assert set(grads) == set(names)
    wrt = dict(net.parameters(), input=x, h0=hx[0], **({"c0": hx[1]} if lstm else {}))
    for name in names:
        numeric = numerical_gradient(loss, wrt[name], eps=1e-5)
        assert grads[name].shape == numeric.shape, name
        assert relative_error(numeric, grads[name]) < 1e-6, name


@pytest.mark.parametrize("case", sorted(CELLS))
def test_hidden_grads_are_total_state_gradients(case):
    """hidden_l{l}{sfx} is dL/dh<t> (and cell_... dL/dc<t> for the LSTM): at the last step
    processed it is the gradient from above; one step earlier it adds the recurrent path."""
    rng = np.random.default_rng(3)
    net = CELLS[case](2, 4, num_layers=2, bidirectional=True, dtype=np.float64, seed=2)
    x = rng.standard_normal((5, 3, 2))
    d_out = rng.standard_normal((5, 3, 8))
    d_hn = rng.standard_normal((4, 3, 4))
    out, _, cache = net.forward_with_cache(x)
    g = net.backward_from_cache(cache, d_out, d_hn, return_hidden_grads=True)
    top = "hidden_l1"
    np.testing.assert_array_equal(g[top][-1], d_out[-1, :, :4] + d_hn[2])
    np.testing.assert_array_equal(g[top + "_reverse"][0], d_out[0, :, 4:] + d_hn[3])
    # the lower layer's output gradient is the upper layer's input gradient, so the two
    # directions of layer 0 see the same d_out from above
    assert all(g[f"hidden_l{l}{s}"].shape == (5, 3, 4) for l in (0, 1) for s in ("", "_reverse"))
    if case == "lstm":
        assert {k for k in g if k.startswith("cell_")} == {"cell_l0", "cell_l0_reverse",
                                                             "cell_l1", "cell_l1_reverse"}
        # with d_cn = 0 the last cell gradient is the path through h<T-1> = o tanh(c<T-1>)
        c_last = cache["states"][1, 0]["cells"][-1]
        o_last = cache["states"][1, 0]["gates"][-1, :, 12:16]
        expected = g[top][-1] * o_last * (1 - np.tanh(c_last) ** 2)
        np.testing.assert_allclose(g["cell_l1"][-1], expected, rtol=1e-14, atol=1e-15)


# ------------------------------------------------------------------ exact Jacobian identities
def _zero_recurrent_weights(case, H, I, seed):
    net = CELLS[case](I, H, dtype=np.float64, seed=seed)
    p = net.parameters()
    rng = np.random.default_rng(seed)
    p["weight_hh_l0"][...] = 0
    p["bias_ih_l0"][...] = rng.uniform(-2, 2, p["bias_ih_l0"].shape)
    p["bias_hh_l0"][...] = rng.uniform(-2, 2, p["bias_hh_l0"].shape)
    return net, p


def test_gru_step_jacobian_is_diag_z_with_zero_recurrent_weights():
    """W_hh = 0, x = 0: r, z, n do not depend on h, so dh'/dh = diag(z) exactly."""
    H, I, B = 6, 3, 2
    net, p = _zero_recurrent_weights("gru", H, I, seed=4)
    x = np.zeros((1, B, I))
    h0 = np.random.default_rng(0).standard_normal((1, B, H))
    b = p["bias_ih_l0"] + p["bias_hh_l0"]
    z = _sigmoid(b[H:2 * H])
    jac = np.empty((B, H, H))
    for k in range(H):
        d_out = np.zeros((1, B, H))
        d_out[0, :, k] = 1.0
        jac[:, k, :] = net.backward(x, d_out, h0)["h0"][0]
    for row in jac:
        assert not np.any(row - np.diag(np.diag(row)))  # off-diagonal exactly zero
        np.testing.assert_allclose(np.diag(row), z, rtol=1e-15, atol=0)


def test_lstm_cell_jacobian_is_diag_f_with_zero_recurrent_weights():
    """W_hh = 0: f, i, g do not depend on (h, c), so dc'/dc = diag(f) and nothing reaches h0."""
    H, I, B = 6, 3, 2
    net, p = _zero_recurrent_weights("lstm", H, I, seed=5)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, B, I))
    hx = (rng.standard_normal((1, B, H)), rng.standard_normal((1, B, H)))
    pre = x[0] @ p["weight_ih_l0"].T + p["bias_ih_l0"] + p["bias_hh_l0"]
    f = _sigmoid(pre[:, H:2 * H])
    for k in range(H):
        d_cn = np.zeros((1, B, H))
        d_cn[0, :, k] = 1.0
        g = net.backward(x, None, hx, None, d_cn)
        expected = np.zeros((B, H))
        expected[:, k] = f[:, k]
        assert not np.any(g["c0"][0] * (expected == 0))  # off-diagonal exactly zero
        np.testing.assert_allclose(g["c0"][0], expected, rtol=1e-15, atol=0)
        assert not np.any(g["h0"])


# --------------------------------------------------------------------- precision and kernels
@numba.njit(error_model="numpy")
def _fast_activations(z):
    """``fast_sigmoid`` and ``fast_tanh`` of every entry of ``z``, compiled as the kernels are."""
    s = np.empty_like(z)
    t = np.empty_like(z)
    for i in range(z.shape[0]):
        s[i] = fast_sigmoid(z[i])
        t[i] = fast_tanh(z[i])
    return s, t


def test_fast_float32_activations_are_accurate():
    z64 = np.linspace(-40, 40, 200_001)
    s32, t32 = _fast_activations(z64.astype(np.float32))
    assert s32.dtype == np.float32 and t32.dtype == np.float32
    z = z64.astype(np.float32).astype(np.float64)
    assert np.abs(s32 - _sigmoid(z)).max() < 2e-7
    assert np.abs(t32 - np.tanh(z)).max() < 4e-7  # Eigen's rational: 3 ulp near |tanh| = 1
    assert s32.min() >= 0 and s32.max() <= 1
    s64, t64 = _fast_activations(np.array([-800.0, -30.0, 0.0, 30.0, 800.0]))  # no overflow warning
    np.testing.assert_allclose(s64, [0.0, _sigmoid(-30.0), 0.5, _sigmoid(30.0), 1.0],
                               rtol=1e-15, atol=0)


def _ulps_from_mpmath(values, points, exact, mpmath):
    """Largest error of ``values`` in units of the last place of the correctly rounded result
    (``exact(mpf) -> mpf``, evaluated with 120 bits)."""
    worst = 0.0
    with mpmath.workprec(120):
        for v, z in zip(values, points):
            ref = float(exact(mpmath.mpf(float(z))))
            err = abs(v - ref) / np.spacing(abs(ref)) if ref != 0 else (0.0 if v == 0 else np.inf)
            worst = max(worst, err)
    return worst


def test_fast_float64_activations_are_accurate_to_a_few_ulp():
    """float64 tanh and sigmoid are polynomial (vectorisable) forms, not libm: within 2 ulp of
    the correctly rounded value (mpmath), with exact special values."""
    mpmath = pytest.importorskip("mpmath")
    rng = np.random.default_rng(12)
    z = np.concatenate([
        rng.standard_normal(3000) * 3,
        np.linspace(-25, 25, 2001),
        rng.choice([-1, 1], 1000) * 10.0 ** rng.uniform(-300, 0, 1000),  # tiny: tanh(z) ~ z
        np.arange(-60, 61) * np.log(2) / 2,  # the reduction's boundaries, k ln2 / 2
    ])
    s, t = _fast_activations(z)
    assert _ulps_from_mpmath(t, z, mpmath.tanh, mpmath) <= 2.0
    assert _ulps_from_mpmath(s, z, lambda m: 1 / (1 + mpmath.exp(-m)), mpmath) <= 2.0
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 5e-324, 700.0, -707.5, -709.0, -1e4])
    s, t = _fast_activations(special)
    np.testing.assert_array_equal(t[:4], [0.0, -0.0, 1.0, -1.0])
    assert np.signbit(t[1]) and np.isnan(t[4]) and np.isnan(s[4]) and t[5] == 5e-324
    np.testing.assert_array_equal(s[[0, 2, 3, 6, 9]], [0.5, 1.0, 0.0, 1.0, 0.0])
    np.testing.assert_allclose(s[7], np.exp(-707.5), rtol=4e-16)
    assert 0 <= s[8] <= np.exp(-708)  # exp(-709) is flushed to zero: an error below 1e-307
    assert np.all(np.diff(_fast_activations(np.linspace(-30, 30, 100_001))[1]) >= 0)  # monotone


@pytest.mark.parametrize("case", sorted(CELLS))
def test_float32_agrees_with_float64(case):
    rng = np.random.default_rng(7)
    net64 = CELLS[case](5, 16, num_layers=2, bidirectional=True, dtype=np.float64, seed=3)
    net32 = CELLS[case](5, 16, num_layers=2, bidirectional=True, dtype=np.float32)
    net32.load_state_dict(net64.state_dict())
    net64.load_state_dict(net32.state_dict())  # the same (float32-representable) values
    x = rng.standard_normal((30, 4, 5)).astype(np.float32)
    d_out = rng.standard_normal((30, 4, 32)).astype(np.float32)
    g32 = net32.backward(x, d_out)
    g64 = net64.backward(x.astype(np.float64), d_out.astype(np.float64))
    for name, g in g64.items():
        assert g32[name].dtype == np.float32
        assert relative_error(g, g32[name], floor=0) < 1e-5, name
    assert relative_error(net64(x.astype(np.float64))[0], net32(x)[0], floor=0) < 1e-5


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", sorted(CELLS))
def test_reruns_and_thread_counts_are_bitwise_identical(case, dtype):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((20, 5, 3)).astype(dtype)
    d_out = rng.standard_normal((20, 5, 16)).astype(dtype)

    def run():
        net = CELLS[case](3, 8, num_layers=2, bidirectional=True, dtype=dtype, seed=9)
        out, _, cache = net.forward_with_cache(x)
        return out, net.backward_from_cache(cache, d_out, return_hidden_grads=True)

    a = run()
    b = run()
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        c = run()
    finally:
        numba.set_num_threads(threads)
    for other in (b, c):
        assert np.array_equal(a[0], other[0])
        assert a[1].keys() == other[1].keys()
        for k in a[1]:
            assert np.array_equal(a[1][k], other[1][k]), k


@pytest.mark.parametrize("case", sorted(CELLS))
def test_parallel_products_are_bitwise_the_serial_ones(case, monkeypatch):
    """The large products run in fixed blocks, on one thread or several: the same bits."""
    rng = np.random.default_rng(10)
    x = rng.standard_normal((40, 6, 5))
    d_out = rng.standard_normal((40, 6, 16))
    net = CELLS[case](5, 8, num_layers=2, bidirectional=True, dtype=np.float64, seed=4)
    serial = net.backward(x, d_out)
    monkeypatch.setattr(blas_kernels, "PARALLEL_WORK", 0)
    monkeypatch.setattr(blas_kernels, "BLOCK_WORK", 1000)  # several blocks per product
    parallel = net.backward(x, d_out)
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        one_thread = net.backward(x, d_out)
    finally:
        numba.set_num_threads(threads)
    for k, g in serial.items():
        np.testing.assert_allclose(parallel[k], g, rtol=1e-13, atol=1e-15)  # other blocks
        assert np.array_equal(parallel[k], one_thread[k]), k


@pytest.mark.parametrize("case", sorted(CELLS))
def test_scratch_buffers_never_leak_into_results(case):
    """forward() and backward() reuse memory for the per-step states; nothing they return may
    be overwritten by a later call, and the results are those of the cache path bit for bit."""
    rng = np.random.default_rng(11)
    net = CELLS[case](3, 6, num_layers=2, bidirectional=True, dtype=np.float64, seed=5)
    lstm = case == "lstm"
    x1, x2 = rng.standard_normal((2, 7, 4, 3))
    d_out = rng.standard_normal((7, 4, 12))
    first = net(x1)
    kept = [np.copy(first[0])] + [np.copy(a) for a in (first[1] if lstm else (first[1],))]
    g1 = net.backward(x1, d_out)
    g1_copy = {k: v.copy() for k, v in g1.items()}
    net(x2)
    net.backward(x2, d_out)
    assert np.array_equal(first[0], kept[0])
    for a, b in zip(first[1] if lstm else (first[1],), kept[1:]):
        assert np.array_equal(a, b)
    for k, v in g1.items():
        assert np.array_equal(v, g1_copy[k]), k
    out_c, finals_c, cache = net.forward_with_cache(x1)
    assert np.array_equal(out_c, first[0])
    g_c = net.backward_from_cache(cache, d_out)
    for k, v in g_c.items():
        assert np.array_equal(v, g1[k]), k
    # the cache survives a backward pass and a second use
    g_c2 = net.backward_from_cache(cache, d_out)
    assert all(np.array_equal(v, g_c2[k]) for k, v in g_c.items())


def test_scratch_pool_is_bounded_and_releasable(monkeypatch):
    monkeypatch.setattr(scratch_pool, "SCRATCH_BYTES", 1000)
    with scratch_pool.ScratchBuffers() as scratch:
        big = scratch.empty((200,), np.float64)  # 1600 bytes: not kept
        small = scratch.empty((10,), np.float64)
    with scratch_pool.ScratchBuffers() as scratch:
        assert scratch.empty((10,), np.float64) is small
        assert scratch.empty((10,), np.float64) is not small
        assert scratch.empty((200,), np.float64) is not big
    rnnlab.release_scratch()
    with scratch_pool.ScratchBuffers() as scratch:
        assert scratch.empty((10,), np.float64) is not small


def test_scratch_pool_keeps_unasked_buffers_and_frees_all_on_a_new_shape(monkeypatch):
    import weakref
    monkeypatch.setattr(scratch_pool, "SCRATCH_BYTES", 10_000)
    rnnlab.release_scratch()
    with scratch_pool.ScratchBuffers() as scratch:
        a = weakref.ref(scratch.empty((10,), np.float64))
        b = weakref.ref(scratch.empty((20,), np.float32))
    with scratch_pool.ScratchBuffers() as scratch:  # asks for a only: b stays in the pool
        assert scratch.empty((10,), np.float64) is a()
    with scratch_pool.ScratchBuffers() as scratch:
        assert scratch.empty((20,), np.float32) is b()
    with scratch_pool.ScratchBuffers() as scratch:
        assert scratch.empty((10,), np.float64) is a()
        fresh = scratch.empty((30,), np.float64)  # a new shape: the rest of the pool goes first
        assert b() is None and a() is not None and fresh is not a()
    with scratch_pool.ScratchBuffers() as scratch:
        assert scratch.empty((30,), np.float64) is fresh
    rnnlab.release_scratch()


def test_default_scratch_pool_is_a_quarter_of_memory():
    code = ("import os, rnnlab._scratch as m; "
            "print(m.SCRATCH_BYTES, os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES'))")
    env = {k: v for k, v in os.environ.items() if k != "RNNLAB_SCRATCH_BYTES"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    pool, physical = map(int, run.stdout.split())
    assert pool == physical // 4


@pytest.mark.parametrize("value, expected", [
    ("0", "0"), ("2e9", "2000000000"), ("12345", "12345"),
    ("lots", "RNNLAB_SCRATCH_BYTES must be"), ("-5", "RNNLAB_SCRATCH_BYTES must be")])
def test_scratch_pool_size_comes_from_the_environment(value, expected):
    code = "import rnnlab._scratch as m; print(m.SCRATCH_BYTES)"
    env = dict(os.environ, RNNLAB_SCRATCH_BYTES=value)
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert expected in (run.stdout if run.returncode == 0 else run.stderr)


def test_each_kernel_compiles_once_per_dtype():
    for dtype in (np.float32, np.float64):
        for case in CELLS:
            for bidirectional, bias in ((False, True), (True, False)):
                net = CELLS[case](2, 3, num_layers=2, bias=bias, bidirectional=bidirectional,
                                  dtype=dtype, seed=0)
                x = np.ones((3, 2, 2), dtype=dtype)
                _, _, cache = net.forward_with_cache(x)
                net.backward_from_cache(cache, return_hidden_grads=bidirectional)
                net.backward(x[:, 0])  # unbatched
    for kernel in (lstm_kernels.lstm_recurrence, lstm_kernels.lstm_recurrence_backward,
                   gru_kernels.gru_recurrence, gru_kernels.gru_recurrence_backward):
        assert len(kernel.signatures) == 2, kernel


def test_accumulate_product_is_a_matrix_product():
    rng = np.random.default_rng(0)
    for n_inner in (1, 4, 7, 9):
        a = rng.standard_normal((5, n_inner + 3))
        w = rng.standard_normal((n_inner + 2, 6))
        acc = rng.standard_normal((4, 6))
        expected = acc.copy()
        expected[1:4] += a[2:5, 3:3 + n_inner] @ w[2:2 + n_inner]
        blas_kernels.accumulate_product(acc, 1, a, 2, 3, w, 2, n_inner, 3)
        np.testing.assert_allclose(acc, expected, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("case", sorted(CELLS))
def test_ten_thousand_steps_forward_and_bptt(case):
    """T = 10,000, B = 32, H = 64: no recursion, memory linear in T, finite gradients."""
    T, B, H = 10_000, 32, 64
    net = CELLS[case](H, H, dtype=np.float32, seed=0)
    x = (0.1 * np.random.default_rng(0).standard_normal((T, B, H))).astype(np.float32)
    d_out = np.zeros((T, B, H), dtype=np.float32)
    d_out[-1] = 1.0
    grads = net.backward(x, d_out)
    assert all(np.isfinite(g).all() for g in grads.values())
    norms = np.linalg.norm(grads["input"], axis=(1, 2))
    assert norms[-1] > 0 and norms[-10] > 0


# --------------------------------------------------------------------------------- the API
def test_lstm_api_shapes_and_layouts():
    rng = np.random.default_rng(0)
    net = rnnlab.LSTM(3, 4, num_layers=2, batch_first=True, dtype=np.float64, seed=0)
    x = rng.standard_normal((2, 5, 3))  # (B, T, I)
    out, (h_n, c_n) = net(x)
    assert out.shape == (2, 5, 4) and h_n.shape == c_n.shape == (2, 2, 4)
    out_u, (h_u, c_u) = net(x[1])  # unbatched (T, I)
    np.testing.assert_array_equal(out_u, out[1])
    np.testing.assert_array_equal(c_u, c_n[:, 1])
    g = net.backward(x[1], np.ones((5, 4)), (h_u, c_u), np.ones((2, 4)), np.ones((2, 4)))
    assert g["input"].shape == (5, 3) and g["h0"].shape == g["c0"].shape == (2, 4)
    # streaming: one step at a time gives the forward pass
    state = None
    for t in range(5):
        y, state = net.step(x[:, t], state)
        np.testing.assert_allclose(y, out[:, t], rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(state[1], c_n, rtol=1e-13, atol=1e-15)


def test_gru_api_is_the_rnns():
    net = rnnlab.GRU(3, 4, bidirectional=True, dtype=np.float64, seed=0)
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    out, h_n = net(x, np.zeros((2, 2, 4)))
    assert out.shape == (5, 2, 8) and h_n.shape == (2, 2, 4)
    np.testing.assert_array_equal(h_n[0], out[-1, :, :4])
    np.testing.assert_array_equal(h_n[1], out[0, :, 4:])
    out2, h_n2, cache = net.forward_with_cache(x)
    g = net.backward_from_cache(cache, np.ones_like(out2), h_n2)
    assert set(g) == set(net.state_dict()) | {"input", "h0"}
    with pytest.raises(ValueError, match="unidirectional"):
        net.step(x[0])


@pytest.fixture
def no_kernels(monkeypatch):
    """Fail if a kernel runs: errors must be raised before any work starts."""
    def boom(*args, **kwargs):
        raise AssertionError("a kernel ran before the arguments were checked")
    from rnnlab.kernels.cpu import gru, lstm
    for module, cell in ((lstm, "lstm"), (gru, "gru")):
        for name in (f"{cell}_layer_forward", f"{cell}_layer_backward"):
            monkeypatch.setattr(module, name, boom)


@pytest.mark.parametrize("hx,error,match", [
    (np.zeros((1, 2, 4)), TypeError, "hx must be a tuple"),
    ((np.zeros((1, 2, 4)),), TypeError, "hx must be a tuple"),
    ((np.zeros((1, 2, 4)), None), TypeError, "both h0 and c0"),
    ((np.zeros((1, 2, 4)), np.zeros((1, 3, 4))), ValueError, "c0"),
    ((np.zeros((2, 2, 4)), np.zeros((1, 2, 4))), ValueError, "h0"),
    ((np.zeros((1, 2, 4), np.float32), np.zeros((1, 2, 4))), TypeError, "h0 has dtype float32"),
    ((np.zeros((1, 2, 4)), np.full((1, 2, 4), np.nan)), ValueError, "c0 contains NaN"),
])
def test_lstm_rejects_bad_hx_before_running(no_kernels, hx, error, match):
    net = rnnlab.LSTM(3, 4, dtype=np.float64)
    x = np.zeros((5, 2, 3))
    with pytest.raises(error, match=match):
        net(x, hx)
    with pytest.raises(error, match=match):
        net.backward(x, None, hx)


def test_gradient_arguments_are_checked_before_running(no_kernels):
    x = np.zeros((5, 2, 3))
    lstm = rnnlab.LSTM(3, 4, dtype=np.float64)
    with pytest.raises(ValueError, match="d_cn"):
        lstm.backward(x, None, None, None, np.zeros((1, 2, 5)))
    with pytest.raises(ValueError, match="d_output"):
        lstm.backward(x, np.zeros((5, 2, 5)))
    gru = rnnlab.GRU(3, 4, dtype=np.float64)
    with pytest.raises(TypeError, match="d_hn"):
        gru.backward(x, None, None, np.zeros((1, 2, 4), np.float32))
    with pytest.raises(ValueError, match="x has 4 features"):
        gru(np.zeros((5, 2, 4)))


def test_cache_from_another_model_is_refused():
    x = np.zeros((3, 2, 3))
    _, _, cache = rnnlab.GRU(3, 4, dtype=np.float64).forward_with_cache(x)
    with pytest.raises(ValueError, match="different model"):
        rnnlab.LSTM(3, 4, dtype=np.float64).backward_from_cache(cache)
    with pytest.raises(ValueError, match="different model"):
        rnnlab.GRU(3, 5, dtype=np.float64).backward_from_cache(cache)
    with pytest.raises(TypeError, match="forward_with_cache"):
        rnnlab.GRU(3, 4, dtype=np.float64).backward_from_cache({"x": 1})


def test_load_state_dict_names_the_gate_count():
    lstm = rnnlab.LSTM(3, 4, dtype=np.float64)
    gru = rnnlab.GRU(3, 4, dtype=np.float64)
    with pytest.raises(ValueError, match="4 gate blocks found, GRU has 3"):
        gru.load_state_dict(lstm.state_dict())
    with pytest.raises(ValueError, match="3 gate blocks found, LSTM has 4"):
        lstm.load_state_dict(gru.state_dict())
    rnn = rnnlab.RNN(3, 4, dtype=np.float64)
    with pytest.raises(ValueError, match="4 gate blocks found, RNN has 1"):
        rnn.load_state_dict(lstm.state_dict())


# (W_hh as panels: batches from 8 take 2-vector panels and tall tiles, smaller ones 4-vector
# panels, 4-row and one-row tiles; float32 and float64 panels differ in width)
UNIT_SPLIT_CASES = [(1, 13, 2, np.float64), (3, 8, 3, np.float64), (2, 5, 1, np.float64),
                    (5, 9, 2, np.float64), (1, 40, 2, np.float32), (9, 40, 2, np.float64),
                    (13, 24, 3, np.float32), (8, 70, 2, np.float32)]


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("batch, hidden, parts, dtype", UNIT_SPLIT_CASES)
def test_lstm_unit_split_kernels_are_bitwise_the_batch_chunked_ones(reverse, batch, hidden,
                                                                    parts, dtype):
    """Small batches split the hidden units over threads: the same sums in the same order."""
    rng = np.random.default_rng(batch * 100 + hidden)
    T, I = 7, 4
    x = rng.standard_normal((T, batch, I)).astype(dtype)
    w_ih = (0.5 * rng.standard_normal((4 * hidden, I))).astype(dtype)
    w_hh = (0.5 * rng.standard_normal((4 * hidden, hidden))).astype(dtype)
    bias = (0.3 * rng.standard_normal(4 * hidden)).astype(dtype)
    h0, c0 = rng.standard_normal((2, batch, hidden)).astype(dtype)
    d_out = rng.standard_normal((T, batch, hidden)).astype(dtype)
    dh_n, dc_n = rng.standard_normal((2, batch, hidden)).astype(dtype)
    proj = (x.reshape(-1, I) @ w_ih.T).reshape(T, batch, -1)
    results = []
    for units in (False, True):
        gates = proj.copy()
        cells = np.empty((T, batch, hidden), dtype)
        hid = np.empty((T, batch, hidden), dtype)
        w_rows = lstm_kernels.pack_unit_parts(w_hh, parts, batch, True)
        w_cols = lstm_kernels.pack_unit_parts(w_hh, parts, batch, False)
        if units:
            lstm_kernels.lstm_recurrence_units(w_rows, bias, h0, c0, reverse, gates, cells, hid,
                                               parts)
        else:
            lstm_kernels.lstm_recurrence(np.ascontiguousarray(w_hh.T), bias, h0, c0, reverse,
                                         gates, cells, hid, 1, False, bind_gemm())
        dz = np.empty_like(gates)
        dh0, dc0 = np.empty_like(h0), np.empty_like(c0)
        db_rows = np.zeros((batch, 4 * hidden))
        d_hidden, d_cell = np.empty((2, T, batch, hidden), dtype)
        if units:
            lstm_kernels.lstm_recurrence_backward_units(
                w_cols, h0, c0, gates, cells, d_out, dh_n, dc_n, reverse, dz, dh0, dc0, db_rows,
                d_hidden, d_cell, parts)
        else:
            lstm_kernels.lstm_recurrence_backward(
                w_hh, h0, c0, gates, cells, d_out, dh_n, dc_n, reverse, dz, dh0, dc0, db_rows,
                d_hidden, d_cell, batch, False, bind_gemm())
        results.append((gates, cells, hid, dz, dh0, dc0, db_rows, d_hidden, d_cell))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("store_hidden", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("batch, hidden, parts, dtype", UNIT_SPLIT_CASES)
def test_gru_unit_split_kernels_are_bitwise_the_batch_chunked_ones(reverse, batch, hidden, parts,
                                                                   dtype, store_hidden):
    """As for the LSTM: the GRU's unit-split kernels sum in the order of the batch-chunked ones
    (r, z, n gates; the n block's recurrent part kept apart), so every output is the same."""
    rng = np.random.default_rng(batch * 100 + hidden + 7)
    T, I = 7, 4
    x = rng.standard_normal((T, batch, I)).astype(dtype)
    w_ih = (0.5 * rng.standard_normal((3 * hidden, I))).astype(dtype)
    w_hh = (0.5 * rng.standard_normal((3 * hidden, hidden))).astype(dtype)
    b_ih, b_hh = (0.3 * rng.standard_normal((2, 3 * hidden))).astype(dtype)
    h0 = rng.standard_normal((batch, hidden)).astype(dtype)
    d_out = rng.standard_normal((T, batch, hidden)).astype(dtype)
    dh_n = rng.standard_normal((batch, hidden)).astype(dtype)
    proj = (x.reshape(-1, I) @ w_ih.T).reshape(T, batch, -1)
    results = []
    units_max = -(-hidden // parts)
    for units in (False, True):
        gates = proj.copy()
        hn = np.empty((T, batch, hidden), dtype)
        hid = np.empty((T, batch, hidden), dtype)
        w_rows = lstm_kernels.pack_unit_parts(w_hh, parts, batch, True)
        w_cols = lstm_kernels.pack_unit_parts(w_hh, parts, batch, False)
        # the panels of each part's rows of every gate block and of its columns, padded
        rows = np.zeros((parts, hidden, 3 * units_max), dtype)
        cols = np.zeros((parts, 3 * hidden, units_max), dtype)
        for p in range(parts):
            i0, i1 = p * hidden // parts, (p + 1) * hidden // parts
            for g in range(3):
                rows[p, :, g * units_max:g * units_max + i1 - i0] = w_hh[
                    g * hidden + i0:g * hidden + i1].T
            cols[p, :, :i1 - i0] = w_hh[:, i0:i1]
        np.testing.assert_array_equal(w_rows, blas_kernels.pack_panels(rows, batch))
        np.testing.assert_array_equal(w_cols, blas_kernels.pack_panels(cols, batch))
        if units:
            gru_kernels.gru_recurrence_units(w_rows, b_ih, b_hh, h0, reverse, gates, hn, hid,
                                             parts)
        else:
            gru_kernels.gru_recurrence(np.ascontiguousarray(w_hh.T), b_ih, b_hh, h0, reverse,
                                       gates, hn, hid, 1, False, bind_gemm())
        dz = np.empty((T, batch, 4 * hidden), dtype)
        dh0 = np.empty_like(h0)
        db_rows = np.zeros((batch, 4 * hidden))
        d_hidden = np.empty((T if store_hidden else 0, batch, hidden), dtype)
        if units:
            gru_kernels.gru_recurrence_backward_units(w_cols, h0, gates, hn, hid, d_out, dh_n,
                                                      reverse, dz, dh0, db_rows, d_hidden, parts)
        else:
            gru_kernels.gru_recurrence_backward(w_hh, h0, gates, hn, hid, d_out, dh_n, reverse,
                                                dz, dh0, db_rows, d_hidden, batch, False,
                                                bind_gemm())
        results.append((gates, hn, hid, dz, dh0, db_rows, d_hidden))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_gru_layer_picks_the_unit_split_by_shape(monkeypatch):
    """The GRU's wrappers use the LSTM's rule with three gate blocks; gradients (checked
    against the batch-chunked kernels) are unchanged, and they are PyTorch's gradients by the
    GRU tests above."""
    if numba.get_num_threads() < 2:
        pytest.skip("one thread: the unit split never applies")
    monkeypatch.setattr(lstm_kernels, "l2_bytes", lambda: 2 << 20)
    assert lstm_kernels.unit_parts(1, 256, 4, gates=3) >= 2  # 3 * 256^2 multiply-adds a step
    assert lstm_kernels.unit_parts(1, 128, 4, gates=3) == 0  # 3 * 128^2 < UNIT_SPLIT_WORK
    # no forward split by batch bytes for the GRU: float32 (32, 256) has 768 KB of W_hh
    assert lstm_kernels.unit_parts(32, 256, 4, forward=True, gates=3) >= 2
    assert lstm_kernels.unit_parts(32, 256, 4, forward=True, gates=3, batch_bytes=None) == 0
    net = rnnlab.GRU(3, 32, dtype=np.float64, seed=2)
    rng = np.random.default_rng(5)
    x, d_out = rng.standard_normal((9, 1, 3)), rng.standard_normal((9, 1, 32))
    calls = []
    for name in ("gru_recurrence_units", "gru_recurrence_backward_units"):
        real = getattr(gru_kernels, name)
        monkeypatch.setattr(gru_kernels, name,
                            lambda *a, _real=real, _name=name: calls.append(_name) or _real(*a))
    chunked = net.backward(x, d_out)
    assert calls == []
    monkeypatch.setattr(lstm_kernels, "UNIT_SPLIT_WORK", 0)
    split = net.backward(x, d_out)
    assert calls == ["gru_recurrence_units", "gru_recurrence_backward_units"]
    for name in chunked:
        np.testing.assert_array_equal(chunked[name], split[name])


@pytest.mark.parametrize("units", [False, True])
@pytest.mark.parametrize("store_hidden", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_lstm_backward_may_write_dz_over_the_gates(units, store_hidden, reverse):
    """``dz`` written over the gate activations (one step's gates are read before its dz is
    written) is bitwise the ``dz`` written into new memory, and so is every other output."""
    rng = np.random.default_rng(11)
    T, batch, hidden, parts = 6, 3, 10, 2
    w_hh = 0.5 * rng.standard_normal((4 * hidden, hidden))
    h0, c0 = rng.standard_normal((2, batch, hidden))
    gates = rng.uniform(0.05, 0.95, (T, batch, 4 * hidden))
    gates[:, :, 2 * hidden:3 * hidden] = rng.uniform(-0.9, 0.9, (T, batch, hidden))
    cells = rng.standard_normal((T, batch, hidden))
    d_out = rng.standard_normal((T, batch, hidden))
    dh_n, dc_n = rng.standard_normal((2, batch, hidden))
    results = []
    for in_place in (False, True):
        g = gates.copy()
        dz = g if in_place else np.empty_like(g)
        dh0, dc0 = np.empty_like(h0), np.empty_like(c0)
        db_rows = np.zeros((batch, 4 * hidden))
        d_hidden, d_cell = np.empty((2, T if store_hidden else 0, batch, hidden))
        if units:
            lstm_kernels.lstm_recurrence_backward_units(
                lstm_kernels.pack_unit_parts(w_hh, parts, batch, False), h0, c0, g, cells, d_out,
                dh_n, dc_n, reverse, dz, dh0, dc0, db_rows, d_hidden, d_cell, parts)
        else:
            lstm_kernels.lstm_recurrence_backward(
                w_hh, h0, c0, g, cells, d_out, dh_n, dc_n, reverse, dz, dh0, dc0, db_rows,
                d_hidden, d_cell, 2, False, bind_gemm())
        results.append((dz, dh0, dc0, db_rows, d_hidden, d_cell))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(results[0][0], gates)  # the gates really were overwritten


def test_lstm_backward_consumes_only_states_it_owns():
    """``backward`` (whose forward states die with the call) writes dz over the gates;
    ``backward_from_cache`` must not: the same cache gives the same gradients twice."""
    net = rnnlab.LSTM(3, 6, num_layers=2, bidirectional=True, dtype=np.float64, seed=4)
    rng = np.random.default_rng(6)
    x, d_out = rng.standard_normal((8, 2, 3)), rng.standard_normal((8, 2, 12))
    _, _, cache = net.forward_with_cache(x)
    gates = [st["gates"].copy() for st in cache["states"].values()]
    first = net.backward_from_cache(cache, d_out)
    for st, g in zip(cache["states"].values(), gates):
        np.testing.assert_array_equal(st["gates"], g)
    second = net.backward_from_cache(cache, d_out)
    direct = net.backward(x, d_out)
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])
        np.testing.assert_array_equal(first[name], direct[name])


def test_lstm_layer_picks_the_unit_split_for_a_small_batch(monkeypatch):
    """The layer wrappers switch to the unit-split kernels by shape; gradients are unchanged."""
    net = rnnlab.LSTM(3, 32, dtype=np.float64, seed=2)
    rng = np.random.default_rng(5)
    x, d_out = rng.standard_normal((9, 1, 3)), rng.standard_normal((9, 1, 32))
    chunked = net.backward(x, d_out)
    monkeypatch.setattr(lstm_kernels, "UNIT_SPLIT_WORK", 0)
    if numba.get_num_threads() < 2:
        pytest.skip("one thread: the unit split never applies")
    assert lstm_kernels.unit_parts(1, 32) >= 2
    split = net.backward(x, d_out)
    for name in chunked:
        np.testing.assert_array_equal(chunked[name], split[name])


@pytest.mark.parametrize("l2", [1 << 20, 2 << 20])
def test_lstm_splits_units_where_w_hh_fills_l2(l2, monkeypatch):
    """Up to UNIT_SPLIT_MAX_BATCH rows both directions split wherever W_hh fills a core's L2,
    BLAS steps or not; beyond, the backward one only where W_hh overflows L2 and a thread's part
    fits, and never over BLAS steps."""
    if numba.get_num_threads() != 2:
        pytest.skip("the rule is stated for two threads here")
    monkeypatch.setattr(lstm_kernels, "l2_bytes", lambda: l2)
    top = lstm_kernels.UNIT_SPLIT_MAX_BATCH
    # float32 W_hh at H = 512 is 4 MB (2 MB a thread), at H = 256 1 MB; float64 twice that
    for batch in (2, 8, top):
        for forward in (False, True):
            for blas in (False, True):
                assert lstm_kernels.unit_parts(batch, 512, 4, forward, blas=blas) == 2
                assert lstm_kernels.unit_parts(batch, 512, 8, forward, blas=blas) == 2
                assert lstm_kernels.unit_parts(batch, 256, 8, forward, blas=blas) == 2
        assert (lstm_kernels.unit_parts(batch, 256, 4) == 2) == (l2 == 1 << 20)
        assert lstm_kernels.unit_parts(batch, 128, 8) == 0  # 512 KB
    wide = 2 * top
    assert (lstm_kernels.unit_parts(wide, 512, 4) == 2) == (l2 == 2 << 20)
    assert lstm_kernels.unit_parts(wide, 512, 4, blas=True) == 0
    assert lstm_kernels.unit_parts(wide, 512, 4, forward=True, blas=True) == 0
    assert lstm_kernels.unit_parts(wide, 512, 8) == 0  # 4 MB a thread
    assert lstm_kernels.unit_parts(wide, 256, 4) == 0  # fits one core's L2
    assert (lstm_kernels.unit_parts(wide, 256, 8) == 2) == (l2 == 1 << 20)


def test_l2_size_is_read_or_defaults():
    size = lstm_kernels.l2_bytes()
    assert size >= 64 << 10 and size % 1024 == 0


def test_lstm_forward_picks_the_unit_split_for_a_large_w_hh(monkeypatch):
    """At B >= threads the forward recurrence splits units when W_hh is large (by bytes);
    the backward one stays batch-chunked; the results are unchanged."""
    if numba.get_num_threads() < 2:
        pytest.skip("one thread: the unit split never applies")
    monkeypatch.setattr(lstm_kernels, "l2_bytes", lambda: 2 << 20)  # W_hh of 1 MB fits in L2
    net = rnnlab.LSTM(3, 32, dtype=np.float64, seed=2)
    rng = np.random.default_rng(6)
    x, d_out = rng.standard_normal((9, 5, 3)), rng.standard_normal((9, 5, 32))
    assert lstm_kernels.unit_parts(5, 32, 8, forward=True) == 0
    assert lstm_kernels.unit_parts(8, 256, 4, forward=True) >= 2  # 1 MB of float32 W_hh
    assert lstm_kernels.unit_parts(8, 256, 4) == 0
    chunked = net.backward(x, d_out)
    monkeypatch.setattr(lstm_kernels, "UNIT_SPLIT_BYTES", 0)
    assert lstm_kernels.unit_parts(5, 32, 8, forward=True) >= 2
    assert lstm_kernels.unit_parts(5, 32, 8) == 0
    split = net.backward(x, d_out)
    for name in chunked:
        np.testing.assert_array_equal(chunked[name], split[name])


@pytest.mark.parametrize("in_place, chunks", [(False, 1), (True, 3)])
@pytest.mark.parametrize("store_hidden", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_lstm_blas_step_kernels_match_the_compiled_loops(in_place, chunks, store_hidden, reverse):
    """One BLAS product a step per batch chunk (large B * 4H * H; the kernels' ``blas``
    argument) computes what the loops compute, up to the products' summation order; dz may be
    written over the gates there too."""
    ilp64 = bind_gemm()
    rng = np.random.default_rng(21)
    T, batch, hidden, I = 7, 5, 9, 4
    x = rng.standard_normal((T, batch, I))
    w_ih = 0.5 * rng.standard_normal((4 * hidden, I))
    w_hh = 0.5 * rng.standard_normal((4 * hidden, hidden))
    bias = 0.3 * rng.standard_normal(4 * hidden)
    h0, c0 = rng.standard_normal((2, batch, hidden))
    d_out = rng.standard_normal((T, batch, hidden))
    dh_n, dc_n = rng.standard_normal((2, batch, hidden))
    proj = (x.reshape(-1, I) @ w_ih.T).reshape(T, batch, -1)
    results = []
    for blas in (False, True):
        gates = proj.copy()
        cells, hid = np.empty((2, T, batch, hidden))
        with blas_threads_for(0):
            lstm_kernels.lstm_recurrence(np.ascontiguousarray(w_hh.T), bias, h0, c0, reverse,
                                         gates, cells, hid, chunks if blas else 2, blas, ilp64)
        forward = (gates.copy(), cells, hid)
        dz = gates if in_place and blas else np.empty_like(gates)
        dh0, dc0 = np.empty_like(h0), np.empty_like(c0)
        db_rows = np.zeros((batch, 4 * hidden))
        d_hidden, d_cell = np.empty((2, T if store_hidden else 0, batch, hidden))
        with blas_threads_for(0):
            lstm_kernels.lstm_recurrence_backward(
                w_hh, h0, c0, gates, cells, d_out, dh_n, dc_n, reverse, dz, dh0, dc0, db_rows,
                d_hidden, d_cell, chunks if blas else 2, blas, ilp64)
        results.append(forward + (dz, dh0, dc0, db_rows, d_hidden, d_cell))
    names = ("gates", "cells", "hidden", "dz", "dh0", "dc0", "db_rows", "d_hidden", "d_cell")
    for name, a, b in zip(names, *results):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-13, err_msg=name)
    assert np.abs(results[1][3]).max() > 0.01  # gradients that are not all zero


def test_lstm_blas_steps_match_pytorch(ref, monkeypatch):
    """PyTorch's numbers (2 layers, bidirectional) through the BLAS-step recurrences."""
    calls = []  # (kernel, its blas argument)
    for name in ("lstm_recurrence", "lstm_recurrence_backward"):
        fn = getattr(lstm_kernels, name)
        monkeypatch.setattr(lstm_kernels, name,
                            lambda *a, _fn=fn, _n=name: (calls.append((_n, a[-2])), _fn(*a))[1])
    monkeypatch.setattr(lstm_kernels, "LSTM_BLAS_STEP_BYTES", 0)
    monkeypatch.setattr(lstm_kernels, "LSTM_BLAS_STEP_BATCH", 1)
    test_forward_and_gradients_match_pytorch(ref, "lstm")
    # forward and backward of both layers in both directions ran on BLAS steps
    assert calls.count(("lstm_recurrence", True)) >= 4
    assert calls.count(("lstm_recurrence_backward", True)) == 4


def test_lstm_blas_steps_rule():
    assert lstm_kernels.lstm_blas_steps(128, 512, np.float32)  # 2^29 bytes of multiply-adds
    assert lstm_kernels.lstm_blas_steps(32, 512, np.float32)  # 2^27
    assert lstm_kernels.lstm_blas_steps(32, 256, np.float64)  # 2^26
    assert not lstm_kernels.lstm_blas_steps(32, 256, np.float32)  # 2^25
    assert not lstm_kernels.lstm_blas_steps(8, 1024, np.float64)  # too few rows a chunk
    assert not lstm_kernels.lstm_blas_steps(1, 1024, np.float64)
    assert not lstm_kernels.lstm_blas_steps(8, 64, np.float32)


@pytest.mark.parametrize("store_hidden", [False, True])
@pytest.mark.parametrize("reverse, chunks", [(False, 1), (True, 3)])
def test_gru_blas_step_kernels_match_the_compiled_loops(store_hidden, reverse, chunks):
    """The GRU's BLAS-step recurrences (one BLAS product a step per batch chunk) compute what
    the loops compute, up to summation order."""
    ilp64 = bind_gemm()
    rng = np.random.default_rng(23)
    T, batch, hidden, I = 7, 5, 9, 4
    x = rng.standard_normal((T, batch, I))
    w_ih = 0.5 * rng.standard_normal((3 * hidden, I))
    w_hh = 0.5 * rng.standard_normal((3 * hidden, hidden))
    b_ih, b_hh = 0.3 * rng.standard_normal((2, 3 * hidden))
    h0 = rng.standard_normal((batch, hidden))
    d_out = rng.standard_normal((T, batch, hidden))
    dh_n = rng.standard_normal((batch, hidden))
    proj = (x.reshape(-1, I) @ w_ih.T).reshape(T, batch, -1)
    results = []
    for blas in (False, True):
        gates = proj.copy()
        hn, hid = np.empty((2, T, batch, hidden))
        with blas_threads_for(0):
            gru_kernels.gru_recurrence(np.ascontiguousarray(w_hh.T), b_ih, b_hh, h0, reverse,
                                       gates, hn, hid, chunks if blas else 2, blas, ilp64)
        dz = np.empty((T, batch, 4 * hidden))
        dh0 = np.empty_like(h0)
        db_rows = np.zeros((batch, 4 * hidden))
        d_hidden = np.empty((T if store_hidden else 0, batch, hidden))
        with blas_threads_for(0):
            gru_kernels.gru_recurrence_backward(w_hh, h0, gates, hn, hid, d_out, dh_n, reverse,
                                                dz, dh0, db_rows, d_hidden, chunks if blas else 2,
                                                blas, ilp64)
        results.append((gates, hn, hid, dz, dh0, db_rows, d_hidden))
    names = ("gates", "hn", "hidden", "dz", "dh0", "db_rows", "d_hidden")
    for name, a, b in zip(names, *results):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-13, err_msg=name)
    assert np.abs(results[1][4]).max() > 0.01


def test_gru_blas_steps_match_pytorch(ref, monkeypatch):
    """PyTorch's numbers (2 layers, bidirectional) through the GRU's BLAS-step recurrences."""
    calls = []  # (kernel, its blas argument)
    for name in ("gru_recurrence", "gru_recurrence_backward"):
        fn = getattr(gru_kernels, name)
        monkeypatch.setattr(gru_kernels, name,
                            lambda *a, _fn=fn, _n=name: (calls.append((_n, a[-2])), _fn(*a))[1])
    monkeypatch.setattr(gru_kernels, "GRU_BLAS_STEP_BYTES", 0)
    monkeypatch.setattr(gru_kernels, "GRU_BLAS_STEP_BATCH", 1)
    test_forward_and_gradients_match_pytorch(ref, "gru")
    assert calls.count(("gru_recurrence", True)) >= 4
    assert calls.count(("gru_recurrence_backward", True)) == 4


def test_gru_blas_steps_rule():
    assert gru_kernels.gru_blas_steps(128, 512, np.float64)  # 805 MB of multiply-adds a step
    assert gru_kernels.gru_blas_steps(128, 512, np.float32)
    assert gru_kernels.gru_blas_steps(32, 512, np.float32)  # 101 MB
    assert not gru_kernels.gru_blas_steps(32, 256, np.float64)  # 50 MB
    assert not gru_kernels.gru_blas_steps(8, 1024, np.float64)  # too few rows a chunk
    assert not gru_kernels.gru_blas_steps(1, 1024, np.float64)
