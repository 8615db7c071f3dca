"""rnnlab against PyTorch's own outputs and gradients (tests/data/pytorch_reference.npz, made by
PyTorch 2.13 in float64: 2 layers, bidirectional, T = 6, B = 3, I = 4, H = 5)."""

from pathlib import Path

import numpy as np
import pytest

import rnnlab

FIXTURE = Path(__file__).parent / "data" / "pytorch_reference.npz"
CASES = {"rnn_tanh": (rnnlab.RNN, {"nonlinearity": "tanh"}),
         "rnn_relu": (rnnlab.RNN, {"nonlinearity": "relu"})}


@pytest.fixture(scope="module")
def ref():
    return np.load(FIXTURE)


def _case(ref, case):
    cls, kw = CASES[case]
    net = cls(4, 5, num_layers=2, bidirectional=True, dtype=np.float64, **kw)
    prefix = f"{case}/param/"
    net.load_state_dict({k[len(prefix):]: ref[k] for k in ref.files if k.startswith(prefix)})
    return net


@pytest.mark.parametrize("case", sorted(CASES))
def test_forward_matches_pytorch(ref, case):
    net = _case(ref, case)
    out, h_n = net(ref[f"{case}/x"], ref[f"{case}/h0"])
    np.testing.assert_allclose(out, ref[f"{case}/output"], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(h_n, ref[f"{case}/h_n"], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("case", sorted(CASES))
def test_gradients_match_pytorch(ref, case):
    net = _case(ref, case)
    grads = net.backward(ref[f"{case}/x"], ref[f"{case}/d_output"], ref[f"{case}/h0"],
                         ref[f"{case}/d_hn"])
    prefix = f"{case}/grad/"
    expected = {k[len(prefix):]: ref[k] for k in ref.files if k.startswith(prefix)}
    assert set(grads) == set(expected)
    for name, g in expected.items():
        scale = np.abs(g).max()
        assert np.abs(grads[name] - g).max() <= 1e-12 * scale, name


@pytest.mark.parametrize("case", sorted(CASES))
def test_state_dict_names_and_shapes_are_pytorchs(ref, case):
    net = _case(ref, case)
    prefix = f"{case}/param/"
    expected = {k[len(prefix):]: ref[k].shape for k in ref.files if k.startswith(prefix)}
    assert {k: v.shape for k, v in net.state_dict().items()} == expected


class _FakeTensor:
    """Stands in for a torch tensor: only .detach().cpu().numpy(), no __array__."""

    def __init__(self, a):
        self._a = a

    def detach(self):
        return self

    def cpu(self):
        return self

    def numpy(self):
        return self._a


def test_load_state_dict_takes_tensor_like_values(ref):
    net = rnnlab.RNN(4, 5, num_layers=2, bidirectional=True, dtype=np.float64)
    prefix = "rnn_tanh/param/"
    net.load_state_dict({k[len(prefix):]: _FakeTensor(ref[k]) for k in ref.files
                         if k.startswith(prefix)})
    out, _ = net(ref["rnn_tanh/x"], ref["rnn_tanh/h0"])
    np.testing.assert_allclose(out, ref["rnn_tanh/output"], rtol=1e-12, atol=1e-14)
