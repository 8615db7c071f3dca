"""Initialisers: exact properties (orthogonality, identity, forget bias) and the Gaussian
ensemble's variance."""

import numpy as np
import pytest

import rnnlab
from rnnlab.training import initialize


@pytest.mark.parametrize("cell,gates", [("RNN", 1), ("LSTM", 4), ("GRU", 3)])
@pytest.mark.parametrize("gain", [0.5, 1.0, 1.7])
def test_orthogonal_blocks_have_all_singular_values_equal_to_the_gain(cell, gates, gain):
    layer = getattr(rnnlab, cell)(3, 8, num_layers=2, bidirectional=True, dtype=np.float64)
    initialize(layer, "orthogonal", gain=gain, seed=0)
    for name, w in layer.parameters().items():
        if name.startswith("weight_hh"):
            assert w.shape == (gates * 8, 8)
            for g in range(gates):
                np.testing.assert_allclose(np.linalg.svd(w[g * 8:(g + 1) * 8], compute_uv=False),
                                           gain, rtol=1e-13)


def test_identity_init_is_irnn():
    net = initialize(rnnlab.RNN(2, 5, num_layers=2, nonlinearity="relu", dtype=np.float32),
                     "identity")
    for name, p in net.parameters().items():
        if name.startswith("weight_hh"):
            assert np.array_equal(p, np.eye(5, dtype=np.float32))
        elif name.startswith("bias"):
            assert not p.any()
    # IRNN with zero input keeps a positive state exactly (relu(I h) = h); layer 1 also reads
    # layer 0 through its (random) W_ih, so only the first layer is fixed
    h0 = np.full((2, 1, 5), 0.3, np.float32)
    out, h_n = net(np.zeros((100, 1, 2), np.float32), h0)
    assert np.array_equal(h_n[0], h0[0])


def test_gaussian_init_has_variance_gain_squared_over_h():
    net = initialize(rnnlab.RNN(2, 400, dtype=np.float64), "gaussian", gain=1.5, seed=0)
    w = net.parameters()["weight_hh_l0"]
    # 160,000 draws: the sample std is within 1% of gain / sqrt(H) with overwhelming probability
    assert abs(w.std() / (1.5 / np.sqrt(400)) - 1) < 0.01
    assert abs(w.mean()) < 0.01 * 1.5 / np.sqrt(400) * 10


def test_uniform_init_scales_recurrent_weights_by_gain():
    a = initialize(rnnlab.RNN(2, 4, dtype=np.float64), "uniform", gain=1.0, seed=3)
    b = initialize(rnnlab.RNN(2, 4, dtype=np.float64), "uniform", gain=2.0, seed=3)
    pa, pb = a.parameters(), b.parameters()
    np.testing.assert_array_equal(pb["weight_hh_l0"], 2.0 * pa["weight_hh_l0"])
    np.testing.assert_array_equal(pb["weight_ih_l0"], pa["weight_ih_l0"])


def test_forget_bias_sets_the_effective_forget_gate_bias():
    lstm = initialize(rnnlab.LSTM(2, 3, num_layers=2, dtype=np.float64, seed=0), "orthogonal",
                      forget_bias=1.0, seed=1)
    for name in ("l0", "l1"):
        p = lstm.parameters()
        total = p[f"bias_ih_{name}"] + p[f"bias_hh_{name}"]
        np.testing.assert_array_equal(total[3:6], 1.0)


def test_initializer_errors():
    with pytest.raises(ValueError, match="recurrent must be one of"):
        initialize(rnnlab.RNN(2, 3), "xavier")
    with pytest.raises(ValueError, match="gain"):
        initialize(rnnlab.RNN(2, 3), "gaussian", gain=-1)
    with pytest.raises(TypeError, match="needs an LSTM"):
        initialize(rnnlab.RNN(2, 3), forget_bias=1.0)
    with pytest.raises(ValueError, match="IRNN"):
        initialize(rnnlab.GRU(2, 3), "identity")
