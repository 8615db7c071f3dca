"""rnnlab's kernels against the naive NumPy reference in ``tests/reference.py``.

The reference is written from the math only.  It is itself checked against the stored
PyTorch results (``tests/data/pytorch_reference.npz``) and against central finite
differences, so a disagreement below points at rnnlab.

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
import rnnlab.heads
import rnnlab.losses

sys.path.insert(0, os.path.dirname(__file__))
import reference as ref  # noqa: E402

NONLINEARITIES = ("tanh", "relu", "sigmoid", "linear")
TOL = {np.float64: 1e-12, np.float32: 1e-5}
DATA = os.path.join(os.path.dirname(__file__), "data", "pytorch_reference.npz")


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


# ----------------------------------------------------------------------------------------
# building a model and running both implementations
# ----------------------------------------------------------------------------------------


def build(input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
          batch_first=False, bidirectional=False, transition_layers=0, dtype=np.float64,
          seed=0, scale=0.5):
    """An rnnlab.RNN loaded with fresh random parameters, and those parameters in float64."""
    net = rnnlab.RNN(input_size, hidden_size, num_layers=num_layers, nonlinearity=nonlinearity,
                     bias=bias, batch_first=batch_first, bidirectional=bidirectional,
                     dtype=dtype, seed=seed, transition_layers=transition_layers)
    shapes = ref.param_shapes(input_size, hidden_size, num_layers, bidirectional,
                              transition_layers, bias)
    have = {k: v.shape for k, v in net.state_dict().items()}
    assert have == shapes, "parameter names/shapes differ from the documented ones"
    rng = np.random.default_rng(1000 + seed)
    net.load_state_dict(ref.random_params(shapes, rng, scale))
    # the reference sees exactly the values the model holds (float32 ones cast up)
    params64 = {k: np.asarray(v, dtype=np.float64) for k, v in net.state_dict().items()}
    return net, params64


def random_problem(rng, T, B, I, H, L, nd, dtype, unbatched=False, batch_first=False):
    """x, h0, d_output, d_hn in rnnlab's layout (and dtype)."""
    def r(*shape):
        return rng.standard_normal(shape).astype(dtype)
    if unbatched:
        return r(T, I), 0.5 * r(L * nd, H), r(T, nd * H), r(L * nd, H)
    x = r(B, T, I) if batch_first else r(T, B, I)
    d_out = r(B, T, nd * H) if batch_first else r(T, B, nd * H)
    return x, 0.5 * r(L * nd, B, H), d_out, r(L * nd, B, H)


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


def check_against_reference(T, B, I, H, L=1, nonlinearity="tanh", bias=True,
                            bidirectional=False, D=0, dtype=np.float64, batch_first=False,
                            unbatched=False, seed=0, use_h0=True, use_d_hn=True):
    nd = 2 if bidirectional else 1
    tol = TOL[dtype]
    net, p64 = build(I, H, L, nonlinearity, bias, batch_first, bidirectional, D, dtype, seed)
    rng = np.random.default_rng(seed)
    x, h0, d_out, d_hn = random_problem(rng, T, B, I, H, L, nd, dtype, unbatched, batch_first)
    if not use_h0:
        h0 = None
    if not use_d_hn:
        d_hn = None

    # --- rnnlab
    out, h_n = net(x, h0)
    out_c, h_n_c, cache = net.forward_with_cache(x, h0)
    grads = net.backward_from_cache(cache, d_out, d_hn, return_hidden_grads=True)
    grads_plain = net.backward(x, d_out, h0=h0, d_hn=d_hn)

    assert out.dtype == dtype and h_n.dtype == dtype
    np.testing.assert_array_equal(out, out_c)
    np.testing.assert_array_equal(h_n, h_n_c)

    # --- reference (time-major, batched, float64)
    x_tm = to_time_major(x, unbatched, batch_first)
    h0_ref = None if h0 is None else np.asarray(h0, np.float64).reshape(L * nd, -1, H)
    d_hn_ref = None if d_hn is None else np.asarray(d_hn, np.float64).reshape(L * nd, -1, H)
    r_out, r_hn, r_cache = ref.rnn_forward(p64, x_tm, h0_ref, nonlinearity)
    r_grads = ref.rnn_backward(r_cache, to_time_major(d_out, unbatched, batch_first), d_hn_ref)

    assert_close(out, from_time_major(r_out, unbatched, batch_first), tol, "output")
    assert_close(h_n, r_hn.reshape(h_n.shape), tol, "h_n")

    names = set(p64) | {"input", "h0"}
    assert set(grads_plain) == names
    hidden_names = {f"hidden_l{l}{ref.SUFFIXES[d]}" for l in range(L) for d in range(nd)}
    assert set(grads) == names | hidden_names
    for name in names:
        if name == "input":
            expected = from_time_major(r_grads["input"], unbatched, batch_first)
        elif name == "h0":
            expected = r_grads["h0"].reshape(grads["h0"].shape)
        else:
            expected = r_grads[name]
        assert grads[name].dtype == dtype, name
        assert_close(grads[name], expected, tol, name)
        assert_close(grads_plain[name], expected, tol, name + " (backward)")
    for name in hidden_names:
        assert_close(grads[name], r_grads[name], tol, name)  # always (T, B, H) time-major
    return net, p64


# ----------------------------------------------------------------------------------------
# 0. the reference itself: PyTorch data and finite differences
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("case,g", [("rnn_tanh", "tanh"), ("rnn_relu", "relu")])
def test_reference_matches_pytorch_data(case, g):
    data = np.load(DATA)
    params = {k.split("/")[-1]: data[k] for k in data.files if k.startswith(case + "/param/")}
    out, h_n, cache = ref.rnn_forward(params, data[case + "/x"], data[case + "/h0"], g)
    grads = ref.rnn_backward(cache, data[case + "/d_output"], data[case + "/d_hn"])
    assert_close(out, data[case + "/output"], 1e-12, "output")
    assert_close(h_n, data[case + "/h_n"], 1e-12, "h_n")
    for k in data.files:
        if k.startswith(case + "/grad/"):
            name = k.split("/", 2)[2]
            assert_close(grads[name], data[k], 1e-12, name)


@pytest.mark.parametrize("case,g", [("rnn_tanh", "tanh"), ("rnn_relu", "relu")])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_rnnlab_matches_pytorch_data(case, g, dtype):
    data = np.load(DATA)
    params = {k.split("/")[-1]: data[k] for k in data.files if k.startswith(case + "/param/")}
    net = rnnlab.RNN(4, 5, num_layers=2, nonlinearity=g, bidirectional=True, dtype=dtype, seed=0)
    net.load_state_dict(params)
    cast = lambda a: data[a].astype(dtype)  # noqa: E731
    out, h_n = net(cast(case + "/x"), cast(case + "/h0"))
    grads = net.backward(cast(case + "/x"), cast(case + "/d_output"), cast(case + "/h0"),
                         cast(case + "/d_hn"))
    tol = 1e-12 if dtype == np.float64 else 1e-5
    assert_close(out, data[case + "/output"], tol, "output")
    assert_close(h_n, data[case + "/h_n"], tol, "h_n")
    for k in data.files:
        if k.startswith(case + "/grad/"):
            name = k.split("/", 2)[2]
            assert_close(grads[name], data[k], tol, name)


@pytest.mark.parametrize("g", NONLINEARITIES)
def test_reference_gradients_finite_differences(g):
    """Central differences of the reference's own loss, every parameter and input entry."""
    rng = np.random.default_rng(7)
    T, B, I, H, L, D = 4, 2, 3, 3, 2, 1
    shapes = ref.param_shapes(I, H, L, True, D, True)
    params = ref.random_params(shapes, rng)
    x = rng.standard_normal((T, B, I))
    h0 = 0.5 * rng.standard_normal((2 * L, B, H))
    d_out = rng.standard_normal((T, B, 2 * H))
    d_hn = rng.standard_normal((2 * L, B, H))
    _, _, cache = ref.rnn_forward(params, x, h0, g)
    grads = ref.rnn_backward(cache, d_out, d_hn)
    eps = 1e-6

    def fd(array, set_loss):
        num = np.zeros_like(array)
        for idx in np.ndindex(array.shape):
            old = array[idx]
            array[idx] = old + eps
            lp = set_loss()
            array[idx] = old - eps
            lm = set_loss()
            array[idx] = old
            num[idx] = (lp - lm) / (2 * eps)
        return num

    loss = lambda: ref.rnn_loss(params, x, h0, d_out, d_hn, g)  # noqa: E731
    for name in params:
        assert_close(grads[name], fd(params[name], loss), 1e-6, name)
    assert_close(grads["input"], fd(x, loss), 1e-6, "input")
    assert_close(grads["h0"], fd(h0, loss), 1e-6, "h0")


def test_reference_hidden_grads_by_perturbing_states():
    """dL/da<t> of the reference equals dL/d(extra additive input to a<t>), via linearity.

    Adding ``e`` to z<t> of a linear single-layer net shifts a<t> by ``e``; so the hidden
    gradient at t is the input gradient mapped through W_ih when W_ih is the identity.
    """
    rng = np.random.default_rng(3)
    T, B, H = 5, 2, 3
    params = ref.random_params(ref.param_shapes(H, H, 1, True, 0, True), rng)
    params["weight_ih_l0"] = np.eye(H)
    params["weight_ih_l0_reverse"] = np.eye(H)
    x = rng.standard_normal((T, B, H))
    _, _, cache = ref.rnn_forward(params, x, None, "linear")
    d_out = rng.standard_normal((T, B, 2 * H))
    d_hn = rng.standard_normal((2, B, H))
    grads = ref.rnn_backward(cache, d_out, d_hn)
    # linear: dL/dx<t> = dL/da_f<t> + dL/da_r<t> when both W_ih are the identity
    assert_close(grads["input"], grads["hidden_l0"] + grads["hidden_l0_reverse"], 1e-13, "hid")


# ----------------------------------------------------------------------------------------
# 1. forward and all gradients over the configuration grid
# ----------------------------------------------------------------------------------------

GRID = list(itertools.product(NONLINEARITIES, (1, 2, 3), (False, True), (0, 1, 2), (True, False)))


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("g,L,bidir,D,bias", GRID,
                         ids=[f"{g}-L{L}-{'bi' if b else 'uni'}-D{D}-{'bias' if bb else 'nobias'}"
                              for g, L, b, D, bb in GRID])
def test_grid(g, L, bidir, D, bias, dtype):
    seed = GRID.index((g, L, bidir, D, bias))
    check_against_reference(T=5, B=3, I=4, H=5, L=L, nonlinearity=g, bias=bias,
                            bidirectional=bidir, D=D, dtype=dtype, seed=seed)


LAYOUTS = ["batch_first", "unbatched", "T1", "T1_unbatched", "T1_batch_first", "B1",
           "no_h0", "no_d_hn"]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("bidir", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("g", NONLINEARITIES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_layouts_and_edge_cases(layout, g, bidir, dtype):
    kw = dict(T=6, B=2, I=3, H=4, L=2, nonlinearity=g, bidirectional=bidir, D=1, dtype=dtype)
    if layout.startswith("T1"):
        kw["T"] = 1
    if "batch_first" in layout:
        kw["batch_first"] = True
    if "unbatched" in layout:
        kw["unbatched"] = True
    if layout == "B1":
        kw["B"] = 1
    if layout == "no_h0":
        kw["use_h0"] = False
    if layout == "no_d_hn":
        kw["use_d_hn"] = False
    check_against_reference(**kw)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("g", NONLINEARITIES)
def test_larger_case(g, dtype):
    check_against_reference(T=40, B=8, I=13, H=32, L=2, nonlinearity=g, bidirectional=True,
                            D=1, dtype=dtype, seed=11)


@pytest.mark.parametrize("g", NONLINEARITIES)
def test_zero_loss_gradients_are_zero(g):
    net, _ = build(3, 4, 2, g, bidirectional=True, transition_layers=1)
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    grads = net.backward(x)  # d_output and d_hn omitted -> all zero
    for name, val in grads.items():
        assert not np.any(val), name


# ----------------------------------------------------------------------------------------
# 2. property test over random small configurations
# ----------------------------------------------------------------------------------------


@settings(max_examples=40, derandomize=True, deadline=None, database=None)
@given(T=st.integers(1, 6), B=st.integers(1, 3), I=st.integers(1, 4), H=st.integers(1, 5),
       L=st.integers(1, 3), bidir=st.booleans(), D=st.integers(0, 2),
       g=st.sampled_from(NONLINEARITIES), bias=st.booleans(), batch_first=st.booleans(),
       unbatched=st.booleans(), use_h0=st.booleans(), use_d_hn=st.booleans(),
       seed=st.integers(0, 2**16))
def test_property_random_configs(T, B, I, H, L, bidir, D, g, bias, batch_first, unbatched,
                                 use_h0, use_d_hn, seed):
    check_against_reference(T=T, B=B, I=I, H=H, L=L, nonlinearity=g, bias=bias,
                            bidirectional=bidir, D=D, dtype=np.float64,
                            batch_first=batch_first and not unbatched, unbatched=unbatched,
                            seed=seed, use_h0=use_h0, use_d_hn=use_d_hn)


# ----------------------------------------------------------------------------------------
# 3. streaming
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("unbatched", [False, True], ids=["batched", "unbatched"])
@pytest.mark.parametrize("D", [0, 2])
@pytest.mark.parametrize("L", [1, 3])
@pytest.mark.parametrize("g", NONLINEARITIES)
def test_step_matches_full_forward(g, L, D, unbatched):
    T, B, I, H = 7, 3, 4, 5
    net, p64 = build(I, H, L, g, transition_layers=D, seed=5)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((T, I) if unbatched else (T, B, I))
    h0 = 0.5 * rng.standard_normal((L, H) if unbatched else (L, B, H))
    out, h_n = net(x, h0)
    r_out, r_hn, _ = ref.rnn_forward(p64, x.reshape(T, -1, I), h0.reshape(L, -1, H), g)

    h = h0
    for t in range(T):
        y, h = net.step(x[t], h)
        assert y.shape == out[t].shape and h.shape == h_n.shape
        assert_close(y, out[t], 1e-12, f"y[{t}] vs forward")
        assert_close(y, r_out[t].reshape(y.shape), 1e-12, f"y[{t}] vs reference")
    assert_close(h, h_n, 1e-12, "final state vs forward")
    assert_close(h, r_hn.reshape(h.shape), 1e-12, "final state vs reference")


def test_step_default_state_is_zeros():
    net, _ = build(3, 4, 2, "tanh", seed=1)
    x = np.random.default_rng(0).standard_normal((4, 2, 3))
    out, _ = net(x)
    h = None
    for t in range(4):
        y, h = net.step(x[t], h)
        assert_close(y, out[t], 1e-12, f"y[{t}]")


def test_step_rejects_bidirectional():
    net, _ = build(3, 4, 1, "tanh", bidirectional=True)
    with pytest.raises(ValueError):
        net.step(np.zeros((2, 3)))


# ----------------------------------------------------------------------------------------
# 5. bidirectional identity: a loss on one end step cannot reach the far end through the
#    direction that starts there
# ----------------------------------------------------------------------------------------


def _bidir_setup(g, D, dtype, T=6, B=2, I=3, H=4):
    net, p64 = build(I, H, 1, g, bidirectional=True, transition_layers=D, dtype=dtype, seed=9)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = (0.5 * rng.standard_normal((2, B, H))).astype(dtype)
    full = rng.standard_normal((B, 2 * H)).astype(dtype)
    return net, p64, x, h0, full, H


def _grads(net, x, h0, d_out):
    _, _, cache = net.forward_with_cache(x, h0)
    return net.backward_from_cache(cache, d_out, None, return_hidden_grads=True)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("D", [0, 1, 2])
@pytest.mark.parametrize("g", NONLINEARITIES)
def test_bidirectional_last_step_loss(g, D, dtype):
    """Loss on output[T-1] only: the reverse state at T-1 depends on x<T-1> (and h0_rev) only."""
    net, p64, x, h0, full, H = _bidir_setup(g, D, dtype)
    T = x.shape[0]
    d_full = np.zeros((T,) + full.shape, dtype)
    d_full[T - 1] = full
    d_fwd = d_full.copy()
    d_fwd[:, :, H:] = 0  # forward half only
    d_rev = d_full.copy()
    d_rev[:, :, :H] = 0  # reverse half only

    g_full, g_fwd, g_rev = (_grads(net, x, h0, d) for d in (d_full, d_fwd, d_rev))

    # reverse half alone contributes exactly nothing before T-1
    assert not np.any(g_rev["input"][:T - 1])
    assert not np.any(g_rev["hidden_l0_reverse"][:T - 1])
    assert not np.any(g_rev["hidden_l0"])
    assert not np.any(g_rev["h0"][0])
    for name in p64:
        if not name.endswith("_reverse"):
            assert not np.any(g_rev[name]), name
    # so the full gradient at x<0> (indeed x<0..T-2>) is exactly the forward contribution
    np.testing.assert_array_equal(g_full["input"][:T - 1], g_fwd["input"][:T - 1])
    if g != "relu":  # (relu units can die along the way and make it legitimately zero)
        assert np.any(g_full["input"][0])  # not trivially zero

    # the reference agrees with all of it
    _, _, rc = ref.rnn_forward(p64, x, h0, g)
    r_full, r_fwd, r_rev = (ref.rnn_backward(rc, d) for d in (d_full, d_fwd, d_rev))
    assert not np.any(r_rev["input"][:T - 1])
    np.testing.assert_array_equal(r_full["input"][:T - 1], r_fwd["input"][:T - 1])
    assert_close(g_full["input"], r_full["input"], TOL[dtype], "input")


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("D", [0, 1, 2])
@pytest.mark.parametrize("g", NONLINEARITIES)
def test_bidirectional_first_step_loss(g, D, dtype):
    """Mirror: loss on output[0] only: the forward state at 0 depends on x<0> (and h0) only."""
    net, p64, x, h0, full, H = _bidir_setup(g, D, dtype)
    T = x.shape[0]
    d_full = np.zeros((T,) + full.shape, dtype)
    d_full[0] = full
    d_fwd = d_full.copy()
    d_fwd[:, :, H:] = 0
    d_rev = d_full.copy()
    d_rev[:, :, :H] = 0

    g_full, g_fwd, g_rev = (_grads(net, x, h0, d) for d in (d_full, d_fwd, d_rev))

    assert not np.any(g_fwd["input"][1:])
    assert not np.any(g_fwd["hidden_l0"][1:])
    assert not np.any(g_fwd["hidden_l0_reverse"])
    assert not np.any(g_fwd["h0"][1])
    for name in p64:
        if name.endswith("_reverse"):
            assert not np.any(g_fwd[name]), name
    np.testing.assert_array_equal(g_full["input"][1:], g_rev["input"][1:])
    if g != "relu":
        assert np.any(g_full["input"][T - 1])

    _, _, rc = ref.rnn_forward(p64, x, h0, g)
    r_full, r_fwd, r_rev = (ref.rnn_backward(rc, d) for d in (d_full, d_fwd, d_rev))
    assert not np.any(r_fwd["input"][1:])
    np.testing.assert_array_equal(r_full["input"][1:], r_rev["input"][1:])
    assert_close(g_full["input"], r_full["input"], TOL[dtype], "input")


# ----------------------------------------------------------------------------------------
# 4. output heads and losses
# ----------------------------------------------------------------------------------------

HEAD_CASES = list(itertools.product(("sigmoid", "softmax", "linear"), ((), (4,), (3, 6)),
                                    NONLINEARITIES))


def _head(in_f, out_f, activation, hidden_sizes, hidden_activation, dtype, seed=0):
    head = rnnlab.heads.OutputHead(in_f, out_f, activation=activation,
                                   hidden_sizes=hidden_sizes,
                                   hidden_activation=hidden_activation, dtype=dtype, seed=seed)
    sizes = [in_f, *hidden_sizes, out_f]
    expected = {}
    for k in range(len(sizes) - 1):
        expected[f"weight_{k}"] = (sizes[k + 1], sizes[k])
        expected[f"bias_{k}"] = (sizes[k + 1],)
    assert {k: v.shape for k, v in head.state_dict().items()} == expected
    rng = np.random.default_rng(100 + seed)
    head.load_state_dict(ref.random_params(expected, rng, 0.8))
    p64 = {k: np.asarray(v, np.float64) for k, v in head.state_dict().items()}
    return head, p64


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("lead", [(), (3,), (5, 2)], ids=["vec", "B", "TB"])
@pytest.mark.parametrize("activation,hidden_sizes,hidden_activation", HEAD_CASES)
def test_head_against_reference(activation, hidden_sizes, hidden_activation, lead, dtype):
    in_f, out_f = 5, 3
    head, p64 = _head(in_f, out_f, activation, hidden_sizes, hidden_activation, dtype)
    rng = np.random.default_rng(1)
    a = rng.standard_normal(lead + (in_f,)).astype(dtype)
    d_logits = rng.standard_normal(lead + (out_f,)).astype(dtype)

    logits, cache = head.forward(a)
    grads = head.backward(cache, d_logits)
    r_logits, r_cache = ref.head_forward(p64, a, hidden_activation)
    r_grads = ref.head_backward(r_cache, d_logits)

    tol = TOL[dtype]
    assert logits.shape == lead + (out_f,)
    assert logits.dtype == dtype
    assert_close(logits, r_logits, tol, "logits")
    assert_close(head.activate(logits), ref.head_activate(logits, activation), tol, "activate")
    assert set(grads) == set(r_grads)
    for name in r_grads:
        assert grads[name].dtype == dtype, name
        assert_close(grads[name], r_grads[name], tol, name)
    assert grads["input"].shape == a.shape


def test_head_softmax_sums_to_one_and_is_stable():
    head, _ = _head(4, 6, "softmax", (), "tanh", np.float64)
    logits = np.array([[1000.0, 999.0, -1000.0, 0.0, 3.0, 1000.0]])
    p = head.activate(logits)
    assert np.all(np.isfinite(p))
    assert_close(p, ref.head_activate(logits, "softmax"), 1e-12, "softmax")
    assert_close(p.sum(axis=-1), np.ones(1), 1e-15, "sum")


def _mask_for(rng, shape, kind):
    if kind == "none":
        return None
    if kind == "binary":
        return (rng.random(shape) < 0.6).astype(np.float64)
    return rng.random(shape)  # real-valued step weights


LOSS_SHAPES = [(4,), (3, 4), (5, 3, 4)]
MASKS = ["none", "binary", "weights"]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("shape", LOSS_SHAPES, ids=["K", "BK", "TBK"])
def test_bce_with_logits(shape, mask_kind, dtype):
    rng = np.random.default_rng(5)
    logits = (3 * rng.standard_normal(shape)).astype(dtype)
    target = rng.random(shape).astype(dtype)
    target[..., 0] = 1.0
    target[..., -1] = 0.0
    mask = _mask_for(rng, shape[:-1], mask_kind)
    if mask is not None:
        mask = mask.astype(dtype)
    loss, grad = rnnlab.losses.bce_with_logits(logits, target, mask)
    r_loss, r_grad = ref.bce_with_logits(logits, target, mask)
    assert isinstance(loss, float)
    assert grad.shape == logits.shape
    assert abs(loss - r_loss) <= TOL[dtype] * abs(r_loss)
    assert_close(grad, r_grad, TOL[dtype], "d_logits")


def test_bce_with_logits_extreme_logits_are_finite():
    logits = np.array([[-800.0, -40.0, 0.0, 40.0, 800.0]])
    target = np.array([[0.0, 1.0, 0.5, 0.0, 1.0]])
    loss, grad = rnnlab.losses.bce_with_logits(logits, target)
    r_loss, r_grad = ref.bce_with_logits(logits, target)
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    assert abs(loss - r_loss) <= 1e-12 * abs(r_loss)
    assert_close(grad, r_grad, 1e-12, "d_logits")


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("shape", LOSS_SHAPES, ids=["C", "BC", "TBC"])
@pytest.mark.parametrize("target_kind", ["indices", "probabilities", "onehot", "unnormalised"])
def test_cross_entropy(target_kind, shape, mask_kind, dtype):
    rng = np.random.default_rng(6)
    logits = (2 * rng.standard_normal(shape)).astype(dtype)
    C = shape[-1]
    idx = rng.integers(0, C, size=shape[:-1])
    if target_kind == "indices":
        target = idx
    elif target_kind == "onehot":
        target = np.eye(C, dtype=dtype)[idx]
    elif target_kind == "probabilities":
        p = rng.random(shape) + 0.1
        target = (p / p.sum(axis=-1, keepdims=True)).astype(dtype)
    else:  # rows not summing to 1: the gradient is softmax * sum(target) - target
        target = rng.random(shape).astype(dtype)
    mask = _mask_for(rng, shape[:-1], mask_kind)
    if mask is not None:
        mask = mask.astype(dtype)
    loss, grad = rnnlab.losses.cross_entropy(logits, target, mask)
    r_loss, r_grad = ref.cross_entropy(logits, target, mask)
    assert isinstance(loss, float)
    assert grad.shape == logits.shape
    assert abs(loss - r_loss) <= TOL[dtype] * abs(r_loss)
    assert_close(grad, r_grad, TOL[dtype], "d_logits")


def test_cross_entropy_extreme_logits_are_finite():
    logits = np.array([[900.0, -900.0, 0.0], [-50.0, 50.0, 49.0]])
    target = np.array([1, 0])
    loss, grad = rnnlab.losses.cross_entropy(logits, target)
    r_loss, r_grad = ref.cross_entropy(logits, target)
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    assert abs(loss - r_loss) <= 1e-12 * abs(r_loss)
    assert_close(grad, r_grad, 1e-12, "d_logits")


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("shape", LOSS_SHAPES, ids=["K", "BK", "TBK"])
def test_mse(shape, mask_kind, dtype):
    rng = np.random.default_rng(8)
    pred = rng.standard_normal(shape).astype(dtype)
    target = rng.standard_normal(shape).astype(dtype)
    mask = _mask_for(rng, shape[:-1], mask_kind)
    if mask is not None:
        mask = mask.astype(dtype)
    loss, grad = rnnlab.losses.mse(pred, target, mask)
    r_loss, r_grad = ref.mse(pred, target, mask)
    assert isinstance(loss, float)
    assert grad.shape == pred.shape
    assert abs(loss - r_loss) <= TOL[dtype] * abs(r_loss)
    assert_close(grad, r_grad, TOL[dtype], "d_pred")


@pytest.mark.parametrize("name", ["bce", "ce", "mse"])
def test_reference_loss_gradients_finite_differences(name):
    """The reference losses' gradients, by central differences (masked)."""
    rng = np.random.default_rng(12)
    shape = (3, 2, 4)
    x = rng.standard_normal(shape)
    mask = rng.random(shape[:-1])
    if name == "bce":
        target, fn = rng.random(shape), ref.bce_with_logits
    elif name == "ce":
        p = rng.random(shape)
        target, fn = p / p.sum(-1, keepdims=True), ref.cross_entropy
    else:
        target, fn = rng.standard_normal(shape), ref.mse
    _, grad = fn(x, target, mask)
    num = np.zeros_like(x)
    eps = 1e-6
    for idx in np.ndindex(shape):
        old = x[idx]
        x[idx] = old + eps
        lp = fn(x, target, mask)[0]
        x[idx] = old - eps
        lm = fn(x, target, mask)[0]
        x[idx] = old
        num[idx] = (lp - lm) / (2 * eps)
    assert_close(grad, num, 1e-7, name)


@pytest.mark.parametrize("loss_name,activation", [("bce", "sigmoid"), ("ce", "softmax"),
                                                  ("mse", "linear")])
@pytest.mark.parametrize("bidir", [False, True], ids=["uni", "bi"])
def test_end_to_end_rnn_head_loss(loss_name, activation, bidir):
    """RNN -> head (deep output) -> masked loss, chained by hand in rnnlab and the reference."""
    T, B, I, H, K = 6, 3, 4, 5, 3
    nd = 2 if bidir else 1
    net, p64 = build(I, H, 2, "tanh", bidirectional=bidir, transition_layers=1, seed=21)
    head, hp64 = _head(nd * H, K, activation, (4,), "relu", np.float64, seed=3)
    rng = np.random.default_rng(22)
    x = rng.standard_normal((T, B, I))
    mask = (rng.random((T, B)) < 0.7).astype(np.float64)
    if loss_name == "bce":
        target, fn, rfn = rng.random((T, B, K)), rnnlab.losses.bce_with_logits, ref.bce_with_logits
    elif loss_name == "ce":
        target, fn, rfn = rng.integers(0, K, (T, B)), rnnlab.losses.cross_entropy, ref.cross_entropy
    else:
        target, fn, rfn = rng.standard_normal((T, B, K)), rnnlab.losses.mse, ref.mse

    out, h_n, cache = net.forward_with_cache(x)
    logits, hcache = head.forward(out)
    loss, d_logits = fn(logits, target, mask)
    hgrads = head.backward(hcache, d_logits)
    grads = net.backward_from_cache(cache, hgrads["input"], None)

    r_out, _, rc = ref.rnn_forward(p64, x, None, "tanh")
    r_logits, rhc = ref.head_forward(hp64, r_out, "relu")
    r_loss, r_dl = rfn(r_logits, target, mask)
    r_hgrads = ref.head_backward(rhc, r_dl)
    r_grads = ref.rnn_backward(rc, r_hgrads["input"], None)

    assert abs(loss - r_loss) <= 1e-12 * abs(r_loss)
    for name in r_hgrads:
        assert_close(hgrads[name], r_hgrads[name], 1e-12, "head " + name)
    for name in set(p64) | {"input", "h0"}:
        assert_close(grads[name], r_grads[name], 1e-12, name)
