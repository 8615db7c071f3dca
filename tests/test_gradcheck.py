"""BPTT against central finite differences in float64 (relative error < 1e-6)."""

import itertools
import zlib

import numpy as np
import pytest

import rnnlab
from conftest import numerical_gradient, relative_error
from reference import rnn_forward

TOL = 1e-6
ACTIVATIONS = ["tanh", "relu", "sigmoid", "linear"]


def _check_rnn(net, x, h0, rng):
    out, h_n = net(x, h0)
    d_out = rng.standard_normal(out.shape)
    d_hn = rng.standard_normal(h_n.shape)

    def loss():
        o, h = net(x, h0)
        return float((o * d_out).sum() + (h * d_hn).sum())

    grads = net.backward(x, d_out, h0, d_hn)
    assert set(grads) == set(net.parameters()) | {"input", "h0"}
    for name, p in net.parameters().items():
        err = relative_error(numerical_gradient(loss, p), grads[name])
        assert err < TOL, (name, err)
    assert relative_error(numerical_gradient(loss, x), grads["input"]) < TOL
    assert relative_error(numerical_gradient(loss, h0), grads["h0"]) < TOL


@pytest.mark.parametrize(
    "nonlinearity,num_layers,bidirectional,transition_layers",
    list(itertools.product(ACTIVATIONS, [1, 2, 3], [False, True], [0, 1, 2])),
)
def test_rnn_bptt_matches_finite_differences(nonlinearity, num_layers, bidirectional,
                                             transition_layers):
    # a stable seed (hash() of a str changes from process to process)
    rng = np.random.default_rng(zlib.crc32(repr((nonlinearity, num_layers, bidirectional,
                                                 transition_layers)).encode()))
    net = rnnlab.RNN(2, 3, num_layers=num_layers, nonlinearity=nonlinearity,
                     bidirectional=bidirectional, dtype=np.float64, seed=1,
                     transition_layers=transition_layers)
    h0_shape = (num_layers * (2 if bidirectional else 1), 2, 3)
    for _ in range(50):
        x = rng.standard_normal((4, 2, 2))
        h0 = 0.5 * rng.standard_normal(h0_shape)
        # central differences are only valid away from relu's kink: keep every pre-activation
        # 1e-3 away from 0 (the probes move them by ~1e-5)
        if nonlinearity != "relu" or _min_abs_preactivation(net, x, h0) > 1e-3:
            break
    _check_rnn(net, x, h0, rng)


def _min_abs_preactivation(net, x, h0):
    cache = rnn_forward(net.parameters(), x, h0, net.nonlinearity)[2]
    return min(np.abs(z).min() for steps_ld in cache["layer_steps"] for steps in steps_ld
               for step in steps.values() for z in step["zs"])


@pytest.mark.parametrize("layout", ["batch_first", "unbatched", "no_bias", "T1"])
def test_rnn_bptt_layouts(layout, rng):
    kw = {"batch_first": layout == "batch_first", "bias": layout != "no_bias"}
    net = rnnlab.RNN(3, 4, num_layers=2, bidirectional=True, dtype=np.float64, seed=2, **kw)
    if layout == "unbatched":
        x, h0 = rng.standard_normal((5, 3)), rng.standard_normal((4, 4))
    elif layout == "batch_first":
        x, h0 = rng.standard_normal((2, 5, 3)), rng.standard_normal((4, 2, 4))
    elif layout == "T1":
        x, h0 = rng.standard_normal((1, 2, 3)), rng.standard_normal((4, 2, 4))
    else:
        x, h0 = rng.standard_normal((5, 2, 3)), rng.standard_normal((4, 2, 4))
    _check_rnn(net, x, h0, rng)
