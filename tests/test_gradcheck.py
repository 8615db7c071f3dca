"""BPTT against central finite differences in float64 (relative error < 1e-6)."""

import itertools

import numpy as np
import pytest

import rnnlab
from conftest import numerical_gradient, relative_error

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
    rng = np.random.default_rng(hash((nonlinearity, num_layers, bidirectional,
                                      transition_layers)) % 2**32)
    net = rnnlab.RNN(2, 3, num_layers=num_layers, nonlinearity=nonlinearity,
                     bidirectional=bidirectional, dtype=np.float64, seed=1,
                     transition_layers=transition_layers)
    x = rng.standard_normal((4, 2, 2))
    h0 = 0.5 * rng.standard_normal((num_layers * (2 if bidirectional else 1), 2, 3))
    _check_rnn(net, x, h0, rng)


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
