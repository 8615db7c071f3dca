"""rnnlab's gated cells (LSTM, GRU) against the naive NumPy reference in
``tests/reference_gated.py``.

The reference is written from the math only (never from rnnlab's kernels).  It is itself
checked against the stored PyTorch results (``tests/data/pytorch_reference.npz``) and
against central finite differences -- every parameter, the input, the initial states and
the per-step hidden (and cell) gradients -- so a disagreement below points at rnnlab.

Accuracy: float64 to 1e-12 and float32 (compared with the float64 reference evaluated on
the same float32 values) to 1e-5, both as ``max|a - ref| / max|ref|`` per array.
"""

import itertools
import os
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import rnnlab

sys.path.insert(0, os.path.dirname(__file__))
import reference_gated as rg  # noqa: E402

MODES = ("lstm", "gru")
TOL = {np.float64: 1e-12, np.float32: 1e-5}
DATA = os.path.join(os.path.dirname(__file__), "data", "pytorch_reference.npz")
SFX = rg.SUFFIXES


def rel_err(actual, expected):
    """max|actual - expected| / max|expected| (absolute when expected is all zero)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    if actual.size == 0:
        return 0.0
    assert np.all(np.isfinite(actual)), "non-finite values"
    scale = np.max(np.abs(expected))
    diff = np.max(np.abs(actual - expected))
    return diff / scale if scale > 0 else diff


def assert_close(actual, expected, tol, what=""):
    err = rel_err(actual, expected)
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.1e}"


def fd(array, loss, eps=1e-6):
    """Central differences of ``loss()`` with respect to every entry of ``array`` (in place)."""
    num = np.zeros(array.shape)
    for idx in np.ndindex(array.shape):
        old = array[idx]
        array[idx] = old + eps
        lp = loss()
        array[idx] = old - eps
        lm = loss()
        array[idx] = old
        num[idx] = (lp - lm) / (2 * eps)
    return num


# ----------------------------------------------------------------------------------------
# building a model and running both implementations
# ----------------------------------------------------------------------------------------


def cls(mode):
    """rnnlab.LSTM / rnnlab.GRU (an AttributeError here means the class is not exported)."""
    return rnnlab.LSTM if mode == "lstm" else rnnlab.GRU


def build(mode, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
          bidirectional=False, dtype=np.float64, seed=0, scale=0.5):
    """An rnnlab LSTM/GRU loaded with fresh random parameters, and those params in float64."""
    net = cls(mode)(input_size, hidden_size, num_layers=num_layers, bias=bias,
                    batch_first=batch_first, bidirectional=bidirectional, dtype=dtype,
                    seed=seed)
    shapes = rg.param_shapes(mode, input_size, hidden_size, num_layers, bidirectional, bias)
    have = {k: v.shape for k, v in net.state_dict().items()}
    assert have == shapes, "parameter names/shapes differ from PyTorch's"
    rng = np.random.default_rng(1000 + seed)
    net.load_state_dict(rg.random_params(shapes, rng, scale))
    # the reference sees exactly the values the model holds (float32 ones cast up)
    params64 = {k: np.asarray(v, dtype=np.float64) for k, v in net.state_dict().items()}
    return net, params64


def random_problem(rng, T, B, I, H, S, nd, dtype, unbatched=False, batch_first=False):
    """x, h0, c0, d_output, d_hn, d_cn in rnnlab's layout (and dtype); S = layers * dirs."""
    def r(*shape):
        return rng.standard_normal(shape).astype(dtype)
    if unbatched:
        return r(T, I), 0.5 * r(S, H), 0.5 * r(S, H), r(T, nd * H), r(S, H), r(S, H)
    x = r(B, T, I) if batch_first else r(T, B, I)
    d_out = r(B, T, nd * H) if batch_first else r(T, B, nd * H)
    return x, 0.5 * r(S, B, H), 0.5 * r(S, B, H), d_out, r(S, B, H), r(S, B, H)


def to_time_major(a, unbatched, batch_first):
    """rnnlab layout -> (T, B, F) float64."""
    a = np.asarray(a, dtype=np.float64)
    if unbatched:
        return a[:, None, :]
    if batch_first:
        return np.swapaxes(a, 0, 1)
    return a


def from_time_major(a, unbatched, batch_first):
    if unbatched:
        return a[:, 0, :]
    if batch_first:
        return np.swapaxes(a, 0, 1)
    return a


def run_rnnlab(mode, net, x, h0, c0, d_out, d_hn, d_cn, use_hx=True):
    """Every entry point of rnnlab: returns out, h_n, c_n (None for GRU), grads (with hidden
    grads, from the cache) and grads_plain (from ``backward``), after checking that the
    plain call and forward_with_cache agree bit for bit."""
    if mode == "lstm":
        hx = (h0, c0) if use_hx else None
        out, (h_n, c_n) = net(x, hx) if use_hx else net(x)
        out_c, (h_n_c, c_n_c), cache = net.forward_with_cache(x, hx)
        grads = net.backward_from_cache(cache, d_out, d_hn, d_cn, return_hidden_grads=True)
        grads_plain = net.backward(x, d_out, hx=hx, d_hn=d_hn, d_cn=d_cn)
        np.testing.assert_array_equal(c_n, c_n_c)
    else:
        h0 = h0 if use_hx else None
        out, h_n = net(x, h0) if use_hx else net(x)
        out_c, h_n_c, cache = net.forward_with_cache(x, h0)
        grads = net.backward_from_cache(cache, d_out, d_hn, return_hidden_grads=True)
        grads_plain = net.backward(x, d_out, h0=h0, d_hn=d_hn)
        c_n = None
    np.testing.assert_array_equal(out, out_c)
    np.testing.assert_array_equal(h_n, h_n_c)
    return out, h_n, c_n, grads, grads_plain


def check_against_reference(mode, T, B, I, H, L=1, bias=True, bidirectional=False,
                            dtype=np.float64, batch_first=False, unbatched=False, seed=0,
                            use_hx=True, use_d_hn=True, scale=0.5):
    lstm = mode == "lstm"
    nd = 2 if bidirectional else 1
    S = L * nd
    tol = TOL[dtype]
    net, p64 = build(mode, I, H, L, bias, batch_first, bidirectional, dtype, seed, scale)
    rng = np.random.default_rng(seed)
    x, h0, c0, d_out, d_hn, d_cn = random_problem(rng, T, B, I, H, S, nd, dtype, unbatched,
                                                  batch_first)
    if not use_d_hn:
        d_hn = d_cn = None

    # --- rnnlab
    out, h_n, c_n, grads, grads_plain = run_rnnlab(mode, net, x, h0, c0, d_out, d_hn, d_cn,
                                                   use_hx)
    state_shape = (S, H) if unbatched else (S, B, H)
    assert out.dtype == dtype and h_n.dtype == dtype
    assert h_n.shape == state_shape
    if lstm:
        assert c_n.dtype == dtype and c_n.shape == state_shape

    # --- reference (time-major, batched, float64)
    def _s(a):
        return None if a is None else np.asarray(a, np.float64).reshape(S, -1, H)
    x_tm = to_time_major(x, unbatched, batch_first)
    r_out, r_hn, r_cn, r_cache = rg.gated_forward(
        mode, p64, x_tm, _s(h0) if use_hx else None, _s(c0) if use_hx and lstm else None)
    r_grads = rg.gated_backward(r_cache, to_time_major(d_out, unbatched, batch_first),
                                _s(d_hn), _s(d_cn) if lstm else None)

    assert_close(out, from_time_major(r_out, unbatched, batch_first), tol, "output")
    assert_close(h_n, r_hn.reshape(h_n.shape), tol, "h_n")
    if lstm:
        assert_close(c_n, r_cn.reshape(c_n.shape), tol, "c_n")

    names = set(p64) | {"input", "h0"} | ({"c0"} if lstm else set())
    assert set(grads_plain) == names
    hidden_names = {f"hidden_l{l}{SFX[d]}" for l in range(L) for d in range(nd)}
    cell_names = {f"cell_l{l}{SFX[d]}" for l in range(L) for d in range(nd)} if lstm else set()
    assert names | hidden_names <= set(grads), sorted(names | hidden_names - set(grads))
    # per-step cell gradients are optional; if rnnlab gives them they must be dL/dc<t>
    extra = set(grads) - names - hidden_names
    assert extra <= cell_names, f"unexpected gradient entries {sorted(extra)}"
    for name in names:
        if name == "input":
            expected = from_time_major(r_grads["input"], unbatched, batch_first)
        elif name in ("h0", "c0"):
            expected = r_grads[name].reshape(state_shape)
        else:
            expected = r_grads[name]
        assert grads[name].dtype == dtype, name
        assert_close(grads[name], expected, tol, name)
        assert_close(grads_plain[name], expected, tol, name + " (backward)")
    for name in hidden_names | extra:
        assert grads[name].dtype == dtype, name
        assert_close(grads[name], r_grads[name], tol, name)  # always (T, B, H) time-major
    return net, p64


# ----------------------------------------------------------------------------------------
# 0. the reference itself: PyTorch data and finite differences
# ----------------------------------------------------------------------------------------


def _fixture(data, mode):
    params = {k.split("/")[-1]: data[k] for k in data.files if k.startswith(mode + "/param/")}
    expected_grads = {k.split("/", 2)[2]: data[k] for k in data.files
                      if k.startswith(mode + "/grad/")}
    return params, expected_grads


@pytest.mark.parametrize("mode", MODES)
def test_reference_matches_pytorch_data(mode):
    data = np.load(DATA)
    params, expected = _fixture(data, mode)
    lstm = mode == "lstm"
    out, h_n, c_n, cache = rg.gated_forward(mode, params, data[mode + "/x"],
                                            data[mode + "/h0"],
                                            data[mode + "/c0"] if lstm else None)
    grads = rg.gated_backward(cache, data[mode + "/d_output"], data[mode + "/d_hn"],
                              data[mode + "/d_cn"] if lstm else None)
    assert_close(out, data[mode + "/output"], 1e-13, "output")
    assert_close(h_n, data[mode + "/h_n"], 1e-13, "h_n")
    if lstm:
        assert_close(c_n, data[mode + "/c_n"], 1e-13, "c_n")
    assert set(expected) == set(params) | {"input", "h0"} | ({"c0"} if lstm else set())
    for name, val in expected.items():
        assert_close(grads[name], val, 1e-13, name)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("mode", MODES)
def test_rnnlab_matches_pytorch_data(mode, dtype):
    data = np.load(DATA)
    params, expected = _fixture(data, mode)
    net = cls(mode)(4, 5, num_layers=2, bidirectional=True, dtype=dtype)
    net.load_state_dict(params)
    c = lambda k: data[f"{mode}/{k}"].astype(dtype)  # noqa: E731
    tol = TOL[dtype]
    if mode == "lstm":
        out, (h_n, c_n) = net(c("x"), (c("h0"), c("c0")))
        grads = net.backward(c("x"), c("d_output"), hx=(c("h0"), c("c0")), d_hn=c("d_hn"),
                             d_cn=c("d_cn"))
        assert_close(c_n, data["lstm/c_n"], tol, "c_n")
    else:
        out, h_n = net(c("x"), c("h0"))
        grads = net.backward(c("x"), c("d_output"), c("h0"), c("d_hn"))
    assert_close(out, data[mode + "/output"], tol, "output")
    assert_close(h_n, data[mode + "/h_n"], tol, "h_n")
    assert set(grads) == set(expected)
    for name, val in expected.items():
        assert_close(grads[name], val, tol, name)


def _fd_problem(mode, bias, seed=7, T=4, B=2, I=3, H=3, L=2):
    rng = np.random.default_rng(seed)
    params = rg.random_params(rg.param_shapes(mode, I, H, L, True, bias), rng, scale=1.0)
    S = 2 * L
    x = rng.standard_normal((T, B, I))
    h0 = 0.5 * rng.standard_normal((S, B, H))
    c0 = 0.5 * rng.standard_normal((S, B, H)) if mode == "lstm" else None
    d_out = rng.standard_normal((T, B, 2 * H))
    d_hn = rng.standard_normal((S, B, H))
    d_cn = rng.standard_normal((S, B, H)) if mode == "lstm" else None
    return params, x, h0, c0, d_out, d_hn, d_cn


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("mode", MODES)
def test_reference_gradients_finite_differences(mode, bias):
    """Central differences of the reference's own loss: every parameter, x, h0 (and c0)."""
    params, x, h0, c0, d_out, d_hn, d_cn = _fd_problem(mode, bias)
    _, _, _, cache = rg.gated_forward(mode, params, x, h0, c0)
    grads = rg.gated_backward(cache, d_out, d_hn, d_cn)
    loss = lambda: rg.gated_loss(mode, params, x, h0, c0, d_out, d_hn, d_cn)  # noqa: E731
    for name in params:
        assert_close(grads[name], fd(params[name], loss), 1e-7, name)
    assert_close(grads["input"], fd(x, loss), 1e-7, "input")
    assert_close(grads["h0"], fd(h0, loss), 1e-7, "h0")
    if mode == "lstm":
        assert_close(grads["c0"], fd(c0, loss), 1e-7, "c0")


@pytest.mark.parametrize("mode", MODES)
def test_reference_hidden_grads_finite_differences(mode):
    """The reference's hidden_l{l}{sfx} (and cell_l{l}{sfx}) are the total dL/dh<t>
    (dL/dc<t>): perturb h<t> (c<t>) of one layer/direction as it is formed."""
    params, x, h0, c0, d_out, d_hn, d_cn = _fd_problem(mode, True, seed=8)
    T, B, _ = x.shape
    H = h0.shape[-1]
    _, _, _, cache = rg.gated_forward(mode, params, x, h0, c0)
    grads = rg.gated_backward(cache, d_out, d_hn, d_cn)
    for layer, d in itertools.product(range(2), range(2)):
        shift = np.zeros((T, B, H))
        loss = lambda: rg.gated_loss(mode, params, x, h0, c0, d_out, d_hn, d_cn,  # noqa: E731
                                     h_shift={(layer, d): shift})
        assert_close(grads[f"hidden_l{layer}{SFX[d]}"], fd(shift, loss), 1e-7,
                     f"hidden_l{layer}{SFX[d]}")
        if mode == "lstm":
            loss = lambda: rg.gated_loss(mode, params, x, h0, c0, d_out, d_hn,  # noqa: E731
                                         d_cn, c_shift={(layer, d): shift})
            assert_close(grads[f"cell_l{layer}{SFX[d]}"], fd(shift, loss), 1e-7,
                         f"cell_l{layer}{SFX[d]}")
    # the last processed step's hidden gradient is d_output + d_hn there
    assert_close(grads["hidden_l1"][T - 1], d_out[T - 1][:, :H] + d_hn[2], 1e-15, "end fwd")
    assert_close(grads["hidden_l1_reverse"][0], d_out[0][:, H:] + d_hn[3], 1e-15, "end rev")


# ----------------------------------------------------------------------------------------
# 1. forward and all gradients over the configuration grid
# ----------------------------------------------------------------------------------------

GRID = list(itertools.product(MODES, (1, 2, 3), (False, True), (True, False)))


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("mode,L,bidir,bias", GRID,
                         ids=[f"{m}-L{L}-{'bi' if b else 'uni'}-{'bias' if bb else 'nobias'}"
                              for m, L, b, bb in GRID])
def test_grid(mode, L, bidir, bias, dtype):
    seed = GRID.index((mode, L, bidir, bias))
    check_against_reference(mode, T=5, B=3, I=4, H=5, L=L, bias=bias, bidirectional=bidir,
                            dtype=dtype, seed=seed)


LAYOUTS = ["batch_first", "unbatched", "T1", "T1_unbatched", "T1_batch_first", "B1",
           "no_hx", "no_d_hn"]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("bidir", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_layouts_and_edge_cases(layout, mode, bidir, dtype):
    kw = dict(T=6, B=2, I=3, H=4, L=2, bidirectional=bidir, dtype=dtype,
              seed=LAYOUTS.index(layout))
    if layout.startswith("T1"):
        kw["T"] = 1
    if "batch_first" in layout:
        kw["batch_first"] = True
    if "unbatched" in layout:
        kw["unbatched"] = True
    if layout == "B1":
        kw["B"] = 1
    if layout == "no_hx":
        kw["use_hx"] = False
    if layout == "no_d_hn":
        kw["use_d_hn"] = False
    check_against_reference(mode, **kw)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("mode", MODES)
def test_larger_case(mode, dtype):
    check_against_reference(mode, T=40, B=8, I=13, H=32, L=2, bidirectional=True,
                            dtype=dtype, seed=11)


@pytest.mark.parametrize("mode", MODES)
def test_saturated_gates(mode):
    """Large weights push the gates into saturation (sigmoid ~ 0 or 1, tanh ~ +-1)."""
    check_against_reference(mode, T=6, B=3, I=4, H=5, L=2, bidirectional=True, seed=21,
                            scale=8.0)


@pytest.mark.parametrize("mode", MODES)
def test_parameters_are_live_and_named_like_state_dict(mode):
    net, p64 = build(mode, 3, 4, 2, bidirectional=True, seed=3)
    params = net.parameters()
    assert set(params) == set(p64)
    x = np.random.default_rng(1).standard_normal((5, 2, 3))
    params["weight_ih_l0"][:] = 0.0
    params["weight_ih_l0_reverse"][:] = 0.0  # x no longer reaches the network at all
    p64["weight_ih_l0"][:] = 0.0
    p64["weight_ih_l0_reverse"][:] = 0.0
    out = net(x)[0]
    r_out = rg.gated_forward(mode, p64, x)[0]
    assert_close(out, r_out, 1e-12, "output after in-place update")
    np.testing.assert_array_equal(out, net(np.zeros_like(x))[0])
    grads = net.backward(x, np.ones_like(out))
    assert not np.any(grads["input"])


@pytest.mark.parametrize("mode", MODES)
def test_zero_loss_gradients_are_zero(mode):
    net, _ = build(mode, 3, 4, 2, bidirectional=True)
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    grads = net.backward(x)  # d_output, d_hn (and d_cn) omitted -> all zero
    expected = set(net.state_dict()) | {"input", "h0"} | ({"c0"} if mode == "lstm" else set())
    assert set(grads) == expected
    for name, val in grads.items():
        assert not np.any(val), name


# ----------------------------------------------------------------------------------------
# 2. property test over random small configurations
# ----------------------------------------------------------------------------------------


@settings(max_examples=40, derandomize=True, deadline=None, database=None)
@given(mode=st.sampled_from(MODES), T=st.integers(1, 6), B=st.integers(1, 3),
       I=st.integers(1, 4), H=st.integers(1, 5), L=st.integers(1, 3), bidir=st.booleans(),
       bias=st.booleans(), batch_first=st.booleans(), unbatched=st.booleans(),
       use_hx=st.booleans(), use_d_hn=st.booleans(), seed=st.integers(0, 2**16))
def test_property_random_configs(mode, T, B, I, H, L, bidir, bias, batch_first, unbatched,
                                 use_hx, use_d_hn, seed):
    """float64 only: with H = 1 and a tiny output, float32's relative error (of the result,
    not of the cancelling terms) is legitimately near 1e-5; float32 is covered above."""
    check_against_reference(mode, T=T, B=B, I=I, H=H, L=L, bias=bias, bidirectional=bidir,
                            dtype=np.float64,
                            batch_first=batch_first and not unbatched, unbatched=unbatched,
                            seed=seed, use_hx=use_hx, use_d_hn=use_d_hn)


# ----------------------------------------------------------------------------------------
# 3. streaming
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_first", [False, True], ids=["tm", "bf"])
@pytest.mark.parametrize("unbatched", [False, True], ids=["batched", "unbatched"])
@pytest.mark.parametrize("L", [1, 3])
@pytest.mark.parametrize("mode", MODES)
def test_step_matches_full_forward(mode, L, unbatched, batch_first):
    T, B, I, H = 7, 3, 4, 5
    net, p64 = build(mode, I, H, L, batch_first=batch_first, seed=5)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((T, I) if unbatched else (T, B, I))  # time-major here
    sshape = (L, H) if unbatched else (L, B, H)
    h0 = 0.5 * rng.standard_normal(sshape)
    c0 = 0.5 * rng.standard_normal(sshape)
    x_user = x if (unbatched or not batch_first) else np.swapaxes(x, 0, 1)
    r_out, r_hn, r_cn, _ = rg.gated_forward(mode, p64, x.reshape(T, -1, I),
                                            h0.reshape(L, -1, H), c0.reshape(L, -1, H))
    if mode == "lstm":
        out, (h_n, c_n) = net(x_user, (h0, c0))
    else:
        out, h_n = net(x_user, h0)
    out_tm = out if (unbatched or not batch_first) else np.swapaxes(out, 0, 1)

    state = (h0, c0) if mode == "lstm" else h0
    for t in range(T):
        y, state = net.step(x[t], state)  # one step: (B, I) or (I,) in any layout
        assert y.shape == out_tm[t].shape
        assert_close(y, out_tm[t], 1e-12, f"y[{t}] vs forward")
        assert_close(y, r_out[t].reshape(y.shape), 1e-12, f"y[{t}] vs reference")
    if mode == "lstm":
        h, c = state
        assert h.shape == h_n.shape and c.shape == c_n.shape
        assert_close(c, c_n, 1e-12, "final cell vs forward")
        assert_close(c, r_cn.reshape(c.shape), 1e-12, "final cell vs reference")
    else:
        h = state
        assert h.shape == h_n.shape
    assert_close(h, h_n, 1e-12, "final state vs forward")
    assert_close(h, r_hn.reshape(h.shape), 1e-12, "final state vs reference")


@pytest.mark.parametrize("mode", MODES)
def test_step_default_state_is_zeros(mode):
    net, _ = build(mode, 3, 4, 2, seed=1)
    x = np.random.default_rng(0).standard_normal((4, 2, 3))
    out = net(x)[0]
    state = None
    for t in range(4):
        y, state = net.step(x[t], state)
        assert_close(y, out[t], 1e-12, f"y[{t}]")


@pytest.mark.parametrize("mode", MODES)
def test_step_rejects_bidirectional(mode):
    net, _ = build(mode, 3, 4, 1, bidirectional=True)
    with pytest.raises(ValueError):
        net.step(np.zeros((2, 3)))


# ----------------------------------------------------------------------------------------
# 4. the gated identities: with W_hh = 0 the recurrent Jacobian is exactly the gate
#    GRU:  h' = (1-z) n + z h,  z and n independent of h   =>  dh'/dh = diag(z)
#    LSTM: c' = f c + i g,      f, i, g independent of c   =>  dc'/dc = diag(f)
# ----------------------------------------------------------------------------------------


def _zero_recurrence(mode, dtype, H=5, I=3, seed=13):
    net, p64 = build(mode, I, H, 1, dtype=dtype, seed=seed, scale=1.5)
    params = net.state_dict()
    params["weight_hh_l0"][:] = 0
    net.load_state_dict(params)
    p64["weight_hh_l0"][:] = 0
    return net, p64


def _state_jacobian(mode, grad_fn, T, B, H, wrt):
    """J[b, j, k] = d state_T[b, j] / d state_0[b, k] from gradients with a one-hot loss on
    the final state (``grad_fn(d_hn, d_cn) -> grads``); the batch rows are independent."""
    J = np.zeros((B, H, H))
    for j in range(H):
        e = np.zeros((1, B, H))
        e[0, :, j] = 1.0
        zero = np.zeros_like(e)
        if wrt == "h0":
            g = grad_fn(e, zero)
        else:  # d c_n / d c0
            g = grad_fn(zero, e)
        J[:, j, :] = np.asarray(g[wrt], dtype=np.float64)[0]
    return J


def _ref_grad_fn(mode, p64, x, h0, c0):
    T, B, _ = x.shape
    _, _, _, cache = rg.gated_forward(mode, p64, x, h0, c0)
    H = p64["weight_hh_l0"].shape[1]

    def fn(d_hn, d_cn):
        return rg.gated_backward(cache, np.zeros((T, B, H)), d_hn,
                                 d_cn if mode == "lstm" else None)
    return fn


def _net_grad_fn(mode, net, x, h0, c0):
    T, B, _ = x.shape
    H = net.hidden_size
    dt = net.dtype
    zeros_out = np.zeros((T, B, H), dt)
    if mode == "lstm":
        return lambda d_hn, d_cn: net.backward(x, zeros_out, hx=(h0, c0), d_hn=d_hn.astype(dt),
                                               d_cn=d_cn.astype(dt))
    return lambda d_hn, d_cn: net.backward(x, zeros_out, h0, d_hn.astype(dt))


def _check_diagonal(J, expected, rtol, what):
    B, H, _ = J.shape
    off = J * (1.0 - np.eye(H))
    assert not np.any(off), f"{what}: off-diagonal entries {np.abs(off).max():.3e}"
    diag = np.einsum("bjj->bj", J)
    err = np.abs(diag - expected).max() / np.abs(expected).max()
    assert err <= rtol, f"{what}: diagonal relative error {err:.3e} > {rtol:.1e}"


@pytest.mark.parametrize("T", [1, 5])
@pytest.mark.parametrize("zero_input", [True, False], ids=["x0", "x"])
def test_reference_gated_identities_are_exact(zero_input, T):
    """In the reference itself, the single-step Jacobians are the gates bit for bit."""
    rng = np.random.default_rng(5)
    B, I, H = 3, 3, 5
    for mode in MODES:
        p = rg.random_params(rg.param_shapes(mode, I, H), rng, scale=1.5)
        p["weight_hh_l0"][:] = 0
        x = np.zeros((T, B, I)) if zero_input else rng.standard_normal((T, B, I))
        h0 = rng.standard_normal((1, B, H))
        c0 = rng.standard_normal((1, B, H)) if mode == "lstm" else None
        gate = rg.gru_update_gate if mode == "gru" else rg.lstm_forget_gate
        gates = np.stack([gate(p, x[t]) for t in range(T)])  # (T, B, H)
        _, _, _, cache = rg.gated_forward(mode, p, x, h0, c0)
        recs = cache["layer_recs"][0][0]
        np.testing.assert_array_equal(np.stack([recs[t]["z" if mode == "gru" else "f"]
                                                for t in range(T)]), gates)
        wrt = "h0" if mode == "gru" else "c0"
        J = _state_jacobian(mode, _ref_grad_fn(mode, p, x, h0, c0), T, B, H, wrt)
        expected = gates[T - 1]
        for t in range(T - 2, -1, -1):  # the backward pass multiplies in this order
            expected = expected * gates[t]
        _check_diagonal(J, expected, 0.0, f"{mode} reference")
        if mode == "lstm":  # and no gradient reaches h0 at all
            g = _ref_grad_fn(mode, p, x, h0, c0)(np.zeros((1, B, H)), np.ones((1, B, H)))
            assert not np.any(g["h0"])


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("T", [1, 5])
@pytest.mark.parametrize("zero_input", [True, False], ids=["x0", "x"])
@pytest.mark.parametrize("mode", MODES)
def test_rnnlab_gated_identities(mode, zero_input, T, dtype):
    """rnnlab with W_hh = 0: GRU dh_T/dh_0 = diag(prod z_t), LSTM dc_T/dc_0 = diag(prod f_t);
    off-diagonal entries exactly zero, diagonal equal to the reference's gates up to the
    last bits of the sigmoid (f64) / float32 rounding."""
    B, I, H = 3, 3, 5
    net, p64 = _zero_recurrence(mode, dtype, H, I)
    rng = np.random.default_rng(6)
    x = (np.zeros((T, B, I)) if zero_input else rng.standard_normal((T, B, I))).astype(dtype)
    h0 = rng.standard_normal((1, B, H)).astype(dtype)
    c0 = rng.standard_normal((1, B, H)).astype(dtype) if mode == "lstm" else None
    gate = rg.gru_update_gate if mode == "gru" else rg.lstm_forget_gate
    expected = np.prod([gate(p64, np.asarray(x[t], np.float64)) for t in range(T)], axis=0)
    wrt = "h0" if mode == "gru" else "c0"
    J = _state_jacobian(mode, _net_grad_fn(mode, net, x, h0, c0), T, B, H, wrt)
    rtol = (1e-15 * T + 1e-16) if dtype == np.float64 else 1e-6 * T
    _check_diagonal(J, expected, rtol, f"{mode} rnnlab")
    if mode == "lstm":  # with W_hh = 0, nothing flows from c_n back to h0
        g = _net_grad_fn(mode, net, x, h0, c0)(np.zeros((1, B, H)), np.ones((1, B, H)))
        assert not np.any(g["h0"])
