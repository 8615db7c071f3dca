"""Bad input: a clear ValueError/TypeError naming the argument, raised before any kernel runs."""

import numpy as np
import pytest

import rnnlab
from rnnlab.architectures import EncoderDecoder, ManyToMany, OneToMany
from rnnlab.heads import OutputHead
from rnnlab.losses import bce_with_logits, cross_entropy, mse

F32 = np.float32


@pytest.fixture
def net():
    return rnnlab.RNN(3, 4, num_layers=2, dtype=F32, seed=0)


@pytest.mark.parametrize("kwargs,exc,match", [
    ({"nonlinearity": "softplus"}, ValueError, "nonlinearity"),
    ({"nonlinearity": None}, ValueError, "nonlinearity"),
    ({"hidden_size": 0}, ValueError, "hidden_size"),
    ({"hidden_size": 2.5}, TypeError, "hidden_size"),
    ({"num_layers": 0}, ValueError, "num_layers"),
    ({"input_size": True}, TypeError, "input_size"),
    ({"dtype": np.int32}, TypeError, "dtype"),
    ({"dtype": np.float16}, TypeError, "dtype"),
    ({"bidirectional": "yes"}, TypeError, "bidirectional"),
    ({"transition_layers": -1}, ValueError, "transition_layers"),
])
def test_constructor_arguments(kwargs, exc, match):
    args = {"input_size": 3, "hidden_size": 4, **kwargs}
    with pytest.raises(exc, match=match):
        rnnlab.RNN(**args)


@pytest.mark.parametrize("x,exc,match", [
    (np.zeros((0, 2, 3), F32), ValueError, "T = 0"),
    (np.zeros((5, 0, 3), F32), ValueError, "B = 0"),
    (np.zeros((5, 2, 4), F32), ValueError, "input_size"),
    (np.zeros((5, 2, 3, 1), F32), ValueError, "3 dimensions"),
    (np.zeros(3, F32), ValueError, "3 dimensions"),
    (np.zeros((5, 2, 3), np.float64), TypeError, "dtype"),
    (np.zeros((5, 2, 3), np.int64), TypeError, "floating"),
    (np.full((5, 2, 3), np.nan, F32), ValueError, "NaN"),
    (np.full((5, 2, 3), np.inf, F32), ValueError, "NaN or Inf"),
])
def test_bad_input(net, x, exc, match):
    with pytest.raises(exc, match=match):
        net(x)
    with pytest.raises(exc, match=match):
        net.backward(x, None)


def test_bad_h0_and_gradients(net):
    x = np.zeros((5, 2, 3), F32)
    with pytest.raises(ValueError, match="h0 must have shape"):
        net(x, np.zeros((1, 2, 4), F32))
    with pytest.raises(TypeError, match="h0 has dtype float64"):
        net(x, np.zeros((2, 2, 4)))
    with pytest.raises(ValueError, match="h0 contains NaN"):
        net(x, np.full((2, 2, 4), np.nan, F32))
    with pytest.raises(ValueError, match="d_output must have shape"):
        net.backward(x, np.zeros((5, 2, 3), F32))
    with pytest.raises(ValueError, match="d_hn must have shape"):
        net.backward(x, np.zeros((5, 2, 4), F32), d_hn=np.zeros((2, 4), F32))
    with pytest.raises(ValueError, match="d_output contains NaN"):
        net.backward(x, np.full((5, 2, 4), np.inf, F32))


def test_state_dict_errors(net):
    good = net.state_dict()
    missing = {k: v for k, v in good.items() if k != "weight_hh_l1"}
    with pytest.raises(ValueError, match="missing \\['weight_hh_l1'\\]"):
        net.load_state_dict(missing)
    with pytest.raises(ValueError, match="unexpected \\['weight_hh_l2'\\]"):
        net.load_state_dict({**good, "weight_hh_l2": good["weight_hh_l1"]})
    with pytest.raises(ValueError, match="weight_ih_l0.*shape \\(4, 3\\)"):
        net.load_state_dict({**good, "weight_ih_l0": np.zeros((4, 2))})
    with pytest.raises(ValueError, match="4 gate blocks found"):
        net.load_state_dict({**good, "weight_hh_l0": np.zeros((16, 4))})
    with pytest.raises(ValueError, match="bias_hh_l0.*NaN"):
        net.load_state_dict({**good, "bias_hh_l0": np.full(4, np.nan)})
    with pytest.raises(TypeError, match="mapping"):
        net.load_state_dict([1, 2])
    # nothing was loaded by the failed calls
    assert all(np.array_equal(net.state_dict()[k], good[k]) for k in good)


def test_streaming_a_bidirectional_network_is_an_error():
    net = rnnlab.RNN(3, 4, bidirectional=True, dtype=F32)
    with pytest.raises(ValueError, match="whole sequence"):
        net.step(np.zeros((2, 3), F32))


def test_loss_errors():
    logits = np.zeros((4, 2, 3))
    with pytest.raises(ValueError, match="target must have the shape"):
        bce_with_logits(logits, np.zeros((4, 2)))
    with pytest.raises(ValueError, match="\\[0, 1\\]"):
        bce_with_logits(logits, np.full((4, 2, 3), 2.0))
    with pytest.raises(ValueError, match="mask must have shape \\(4, 2\\)"):
        mse(logits, logits, mask=np.ones((4, 2, 3)))
    with pytest.raises(ValueError, match="class indices must lie"):
        cross_entropy(logits, np.full((4, 2), 3))
    with pytest.raises(ValueError, match="finite"):
        mse(np.full((2, 1), np.nan), np.zeros((2, 1)))


def test_architecture_errors():
    rnn = rnnlab.RNN(2, 3, dtype=np.float64)
    with pytest.raises(ValueError, match="head.in_features"):
        ManyToMany(rnn, OutputHead(4, 2, dtype=np.float64))
    with pytest.raises(ValueError, match="computed through a sigmoid"):
        ManyToMany(rnn, OutputHead(3, 2, "softmax", dtype=np.float64), loss="bce")
    with pytest.raises(ValueError, match="loss must be one of"):
        ManyToMany(rnn, OutputHead(3, 2, dtype=np.float64), loss="hinge")
    with pytest.raises(TypeError, match="dtype"):
        ManyToMany(rnn, OutputHead(3, 2, dtype=np.float32))
    with pytest.raises(ValueError, match="input_size .* must equal"):
        OneToMany(rnn, OutputHead(3, 5, dtype=np.float64))
    bi = rnnlab.RNN(2, 3, bidirectional=True, dtype=np.float64)
    with pytest.raises(ValueError, match="unidirectional"):
        OneToMany(bi, OutputHead(6, 2, dtype=np.float64))
    with pytest.raises(ValueError, match="h_n"):
        EncoderDecoder(rnnlab.RNN(2, 4, dtype=np.float64), rnn, OutputHead(3, 2, dtype=np.float64))
    model = ManyToMany(rnn, OutputHead(3, 2, dtype=np.float64))
    with pytest.raises(ValueError, match="x must have shape \\(T, B, features\\)"):
        model.loss_and_grad(np.zeros((3, 2)), np.zeros((3, 2)))
    with pytest.raises(TypeError, match="x has dtype float32"):
        model.loss_and_grad(np.zeros((3, 1, 2), np.float32), np.zeros((3, 1, 2)))


def test_cli_errors(tmp_path, capsys):
    from rnnlab.cli import main

    with pytest.raises(SystemExit):
        main(["nonsense"])
    with pytest.raises(SystemExit):
        main(["demo", "--steps", "0"])
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SystemExit):
        main(["demo", "--out", str(blocker / "sub"), "--steps", "1", "--quiet"])
    assert "--out" in capsys.readouterr().err
