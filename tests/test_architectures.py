"""The five architectures: exact gradients of the whole loss (float64 finite differences),
teacher forcing, free-running generation, and end-to-end training."""

import numpy as np
import pytest

import rnnlab
from conftest import numerical_gradient, relative_error
from rnnlab.architectures import EncoderDecoder, ManyToMany, ManyToOne, OneToMany, OneToOne
from rnnlab.heads import OutputHead
from rnnlab.training import SGD

F64 = np.float64
T, B, I, H, K = 4, 3, 2, 3, 2


def _targets(rng, loss, shape):
    if loss == "cross_entropy":
        return rng.integers(0, K, shape[:-1])
    if loss == "bce":
        return (rng.random(shape) > 0.5).astype(F64)
    return rng.standard_normal(shape)


def _head(width, loss, hidden_sizes=()):
    act = {"bce": "sigmoid", "cross_entropy": "softmax", "mse": "linear"}[loss]
    return OutputHead(width, K, act, hidden_sizes=hidden_sizes, dtype=F64, seed=5)


def _check(model, loss_fn):
    loss, grads = loss_fn()
    assert set(grads) == set(model.parameters())
    for name, p in model.parameters().items():
        err = relative_error(numerical_gradient(lambda: loss_fn()[0], p), grads[name])
        assert err < 1e-6, (name, err)
    return loss


LOSSES = ["bce", "cross_entropy", "mse"]


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("bidirectional,hidden_sizes,transition", [
    (False, (), 0), (True, (4,), 1)])
def test_many_to_many(loss, bidirectional, hidden_sizes, transition, rng):
    rnn = rnnlab.RNN(I, H, num_layers=2, bidirectional=bidirectional, dtype=F64, seed=0,
                     transition_layers=transition)
    model = ManyToMany(rnn, _head(rnn.num_directions * H, loss, hidden_sizes), loss)
    x = rng.standard_normal((T, B, I))
    y = _targets(rng, loss, (T, B, K))
    mask = (rng.random((T, B)) > 0.3).astype(F64)
    _check(model, lambda: model.loss_and_grad(x, y, mask))


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_many_to_one(loss, bidirectional, rng):
    rnn = rnnlab.RNN(I, H, num_layers=2, bidirectional=bidirectional, dtype=F64, seed=0)
    model = ManyToOne(rnn, _head(rnn.num_directions * H, loss, (3,)), loss, reduction="mean")
    x = rng.standard_normal((T, B, I))
    _check(model, lambda: model.loss_and_grad(x, _targets(np.random.default_rng(1), loss,
                                                                (B, K))))


@pytest.mark.parametrize("loss", LOSSES)
def test_one_to_one(loss, rng):
    model = OneToOne(rnnlab.RNN(I, H, nonlinearity="relu", dtype=F64, seed=0), _head(H, loss),
                     loss)
    x = rng.standard_normal((B, I))
    y = _targets(rng, loss, (B, K))
    _check(model, lambda: model.loss_and_grad(x, y))


@pytest.mark.parametrize("loss", LOSSES)
def test_one_to_many(loss, rng):
    model = OneToMany(rnnlab.RNN(K, H, num_layers=2, dtype=F64, seed=0), _head(H, loss), loss)
    x = rng.standard_normal((B, K))
    y = _targets(rng, loss, (5, B, K))
    _check(model, lambda: model.loss_and_grad(x, y))


@pytest.mark.parametrize("loss", LOSSES)
def test_encoder_decoder(loss, rng):
    enc = rnnlab.RNN(I, H, num_layers=2, dtype=F64, seed=0)
    dec = rnnlab.RNN(K, H, num_layers=2, nonlinearity="sigmoid", dtype=F64, seed=1)
    model = EncoderDecoder(enc, dec, _head(H, loss), loss)
    x = rng.standard_normal((T, B, I))
    y = _targets(rng, loss, (6, B, K))  # T_y = 6 != T_x = 4
    mask = (rng.random((6, B)) > 0.3).astype(F64)
    _check(model, lambda: model.loss_and_grad(x, y, mask))


def test_one_to_many_teacher_forcing_feeds_targets_back(rng):
    """The teacher-forced loss equals the loss of a ManyToMany fed [x, y<1>, ...]."""
    rnn = rnnlab.RNN(K, H, dtype=F64, seed=0)
    head = _head(H, "bce")
    x = rng.standard_normal((B, K))
    y = _targets(rng, "bce", (5, B, K))
    loss, _ = OneToMany(rnn, head, "bce").loss_and_grad(x, y)
    inputs = np.concatenate([x[None], y[:-1]])
    expected, _ = ManyToMany(rnn, head, "bce").loss_and_grad(inputs, y)
    assert loss == expected


def test_generation_feeds_outputs_back(rng):
    """Free-running generation equals stepping by hand with ŷ fed back."""
    rnn = rnnlab.RNN(K, H, num_layers=2, dtype=F64, seed=0)
    head = _head(H, "bce")
    model = OneToMany(rnn, head, "bce")
    x = rng.standard_normal((B, K))
    gen = model.generate(x, 6)
    inp, h = x, None
    for t in range(6):
        a, h = rnn.step(inp, h)
        inp = head.activate(head.forward(a)[0])
        np.testing.assert_allclose(gen[t], inp, rtol=1e-13)
    sampled = model.generate(x, 6, sample=True, seed=3)
    assert sampled.shape == (6, B, K) and np.array_equal(
        sampled, model.generate(x, 6, sample=True, seed=3))


def test_encoder_decoder_generates_other_length(rng):
    enc = rnnlab.RNN(I, H, dtype=F64, seed=0)
    dec = rnnlab.RNN(K, H, dtype=F64, seed=1)
    model = EncoderDecoder(enc, dec, _head(H, "cross_entropy"), "cross_entropy")
    out = model.generate(rng.standard_normal((7, B, I)), 3)
    assert out.shape == (3, B, K)
    np.testing.assert_allclose(out.sum(axis=-1), 1.0)


def test_many_to_one_learns_the_sign_of_a_sum():
    """End to end: SGD on exact gradients drives the loss well below chance."""
    rng = np.random.default_rng(0)
    model = ManyToOne(rnnlab.RNN(1, 8, dtype=F64, seed=0), OutputHead(8, 1, "sigmoid",
                      dtype=F64, seed=1), "bce", reduction="mean")
    opt = SGD(model.parameters(), lr=0.02, momentum=0.9)
    for _ in range(600):
        x = rng.standard_normal((10, 32, 1))
        y = (x.sum(axis=0) > 0).astype(F64)
        loss, grads = model.loss_and_grad(x, y)
        opt.step(grads)
    x = rng.standard_normal((10, 512, 1))
    y = (x.sum(axis=0) > 0).astype(F64)
    loss, _ = model.loss_and_grad(x, y)
    assert loss < 0.3 * np.log(2)  # chance: ln 2 per sequence
    assert ((model.predict(x) > 0.5) == (y > 0.5)).mean() > 0.9


ARCHS = ["one_to_one", "one_to_many", "many_to_one", "many_to_many", "encoder_decoder"]


def _data(architecture, rng, loss):
    x_shape = {"one_to_one": (B, I), "one_to_many": (B, K)}.get(architecture, (T, B, I))
    y_shape = {"one_to_one": (B, K), "many_to_one": (B, K), "one_to_many": (5, B, K),
               "encoder_decoder": (6, B, K)}.get(architecture, (T, B, K))
    return rng.standard_normal(x_shape), _targets(rng, loss, y_shape)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_sigmoid"])
@pytest.mark.parametrize("architecture", ARCHS)
def test_every_architecture_with_every_cell(architecture, cell, rng):
    from rnnlab.architectures import make_model

    loss = "cross_entropy" if architecture in ("one_to_many", "encoder_decoder") else "bce"
    model = make_model(architecture, cell, I, H, K, loss=loss, dtype=F64, seed=3,
                       num_layers=2, bidirectional=architecture in ("many_to_one",
                                                                    "many_to_many"))
    x, y = _data(architecture, rng, loss)
    _check(model, lambda: model.loss_and_grad(x, y))
    if architecture in ("one_to_many", "encoder_decoder"):
        gen = model.generate(x, 4)
        assert gen.shape == (4, B, K) and np.allclose(gen.sum(axis=-1), 1)


def test_make_model_errors():
    from rnnlab.architectures import make_model, recurrent_layer

    with pytest.raises(ValueError, match="architecture must be one of"):
        make_model("many_to_few", "lstm", 2, 3, 1)
    with pytest.raises(ValueError, match="cell must be one of"):
        recurrent_layer("rnn_softplus", 2, 3)
    with pytest.raises(ValueError, match="same cell"):
        EncoderDecoder(rnnlab.LSTM(2, 3, dtype=F64), rnnlab.GRU(2, 3, dtype=F64),
                       OutputHead(3, 2, dtype=F64))
