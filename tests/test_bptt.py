"""Full, truncated and checkpointed BPTT (rnnlab.training.bptt).

Checkpointed BPTT must equal full BPTT to 1e-12 in float64; TBPTT(k1, k2) must equal full BPTT
when k1 = k2 = T (exactly) and when k2 = T (summed over updates), each update must equal full
BPTT on its window with the entering state held fixed, and the summed updates must be the
gradient of the truncated objective (float64 finite differences)."""

import numpy as np
import pytest

import rnnlab
from conftest import numerical_gradient, relative_error
from rnnlab.architectures import (EncoderDecoder, ManyToMany, ManyToOne, OneToMany, OneToOne,
                                  make_model)
from rnnlab.heads import OutputHead
from rnnlab.losses import bce_with_logits
from rnnlab.training import (SGD, checkpointed_bptt, full_bptt, truncated_bptt,
                             truncated_bptt_sum)

F64 = np.float64
I, H, K, B = 2, 4, 3, 3
CELLS = ["rnn_tanh", "lstm", "gru"]
ARCHS = ["many_to_many", "many_to_one"]


def _model(arch, cell, layers=1, dtype=F64, loss="bce", **kw):
    return make_model(arch, cell, I, H, K, loss=loss, dtype=dtype, seed=3, num_layers=layers,
                      **kw)


def _data(rng, model, n_steps, dtype=F64):
    many = isinstance(model, ManyToMany)
    lead = (n_steps, B) if many else (B,)
    x = rng.standard_normal((n_steps, B, I)).astype(dtype)
    if model.loss == "cross_entropy":
        y = rng.integers(0, K, lead)
    elif model.loss == "bce":
        y = (rng.random(lead + (K,)) > 0.5).astype(dtype)
    else:
        y = rng.standard_normal(lead + (K,)).astype(dtype)
    mask = (rng.random(lead) > 0.2).astype(dtype)
    return x, y, mask


def _h0(rng, model, dtype=F64):
    shape = (model.rnn.num_layers, B, H)
    if isinstance(model.rnn, rnnlab.LSTM):
        return (rng.standard_normal(shape).astype(dtype), rng.standard_normal(shape).astype(dtype))
    return rng.standard_normal(shape).astype(dtype)


def _assert_grads_close(ref, got, tol):
    assert list(got) == list(ref) or set(got) == set(ref)
    for name in ref:
        assert got[name].dtype == ref[name].dtype, name
        scale = np.abs(ref[name]).max()
        assert np.abs(got[name] - ref[name]).max() <= tol * max(scale, 1e-300), name


def _as_tuple(state):
    return state if isinstance(state, tuple) else (state,)


def _state_at(model, x, step, h0):
    """The state after ``step`` steps, by an independent forward pass (``h0`` at step 0)."""
    if step == 0:
        return h0
    return model.rnn(x[:step], h0)[1]


# ------------------------------------------------------------------------------ checkpointed
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layers", [1, 2])
def test_checkpointed_equals_full(arch, cell, layers, rng):
    model = _model(arch, cell, layers)
    n_steps = 23  # default segment ceil(sqrt(23)) = 5: segments 5, 5, 5, 5, 3
    x, y, mask = _data(rng, model, n_steps)
    h0 = _h0(rng, model)
    loss, grads = full_bptt(model, x, y, mask, h0)
    for segment in (None, 7, 1):
        c_loss, c_grads = checkpointed_bptt(model, x, y, mask, h0, segment=segment)
        assert abs(c_loss - loss) <= 1e-12 * abs(loss)
        _assert_grads_close(grads, c_grads, 1e-12)
    # a segment covering the sequence is full BPTT itself
    c_loss, c_grads = checkpointed_bptt(model, x, y, mask, h0, segment=n_steps + 5)
    assert c_loss == loss
    _assert_grads_close(grads, c_grads, 0.0)


@pytest.mark.parametrize("loss,reduction", [("cross_entropy", "mean"), ("mse", "sum")])
def test_checkpointed_other_losses_deep_head(loss, reduction, rng):
    rnn = rnnlab.RNN(I, H, num_layers=2, dtype=F64, seed=1, transition_layers=1)
    act = {"cross_entropy": "softmax", "mse": "linear"}[loss]
    for cls in (ManyToMany, ManyToOne):
        model = cls(rnn, OutputHead(H, K, act, hidden_sizes=(5,), dtype=F64, seed=2), loss,
                    reduction)
        x, y, mask = _data(rng, model, 11)
        ref = full_bptt(model, x, y, mask)
        got = checkpointed_bptt(model, x, y, mask, segment=4)
        assert abs(got[0] - ref[0]) <= 1e-12 * abs(ref[0])
        _assert_grads_close(ref[1], got[1], 1e-12)


def test_checkpointed_short_sequences(rng):
    model = _model("many_to_many", "lstm", 2)
    for n_steps in (1, 2, 4):
        x, y, mask = _data(rng, model, n_steps)
        ref = full_bptt(model, x, y, mask)
        got = checkpointed_bptt(model, x, y, mask)
        _assert_grads_close(ref[1], got[1], 1e-12)


def test_checkpointed_float32(rng):
    model = _model("many_to_many", "gru", 2, dtype=np.float32)
    x, y, mask = _data(rng, model, 30, np.float32)
    ref = full_bptt(model, x, y, mask)
    got = checkpointed_bptt(model, x, y, mask)
    assert abs(got[0] - ref[0]) <= 1e-5 * abs(ref[0])
    _assert_grads_close(ref[1], got[1], 1e-4)  # float32 round-off, dtypes checked too


def test_checkpointed_runs_segment_by_segment(rng, monkeypatch):
    """No recurrent pass ever covers more than one segment: the (T, B, H) output never exists,
    and the first pass keeps only checkpoints (its outputs are dropped)."""
    model = _model("many_to_many", "rnn_tanh", 2)
    lengths = []
    rnn_cls = type(model.rnn)
    original = rnn_cls._forward_prepared

    def spy(self, x, *args, **kwargs):
        lengths.append(x.shape[0])
        return original(self, x, *args, **kwargs)

    monkeypatch.setattr(rnn_cls, "_forward_prepared", spy)
    x, y, _ = _data(rng, model, 23)
    checkpointed_bptt(model, x, y)
    # first pass: 4 segments of 5 (the last one is not run twice); backward walk: 3, then 5s
    assert lengths == [5, 5, 5, 5, 3, 5, 5, 5, 5]


# ------------------------------------------------------------------------------ truncated
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("cell", CELLS)
def test_truncated_k1_k2_T_is_full_exactly(arch, cell, rng):
    model = _model(arch, cell, 2)
    n_steps = 9
    x, y, mask = _data(rng, model, n_steps)
    h0 = _h0(rng, model)
    loss, grads = full_bptt(model, x, y, mask, h0)
    updates = list(truncated_bptt(model, x, y, n_steps, n_steps, mask, h0))
    assert len(updates) == 1
    t_loss, t_grads, info = updates[0]
    assert t_loss == loss
    assert info["window"] == (0, n_steps) and info["chunk"] == (0, n_steps)
    assert list(t_grads) == list(grads)
    for name in grads:
        np.testing.assert_array_equal(t_grads[name], grads[name], err_msg=name)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("cell", CELLS)
def test_truncated_k2_T_sums_to_full(arch, cell, rng):
    """With k2 = T every window starts at step 0: the updates add up to full BPTT."""
    model = _model(arch, cell, 2)
    n_steps = 10
    x, y, mask = _data(rng, model, n_steps)
    loss, grads = full_bptt(model, x, y, mask)
    for k1 in (1, 3, 4):
        t_loss, t_grads = truncated_bptt_sum(model, x, y, k1, n_steps, mask)
        assert abs(t_loss - loss) <= 1e-12 * abs(loss)
        _assert_grads_close(grads, t_grads, 1e-12)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("k1,k2", [(3, 5), (2, 7), (3, 3), (4, 5)])
def test_truncated_windows_equal_fixed_state_reference(cell, k1, k2, rng):
    """Each update is full BPTT on its window, entering state fixed, loss on its chunk only."""
    model = _model("many_to_many", cell, 2)
    n_steps = 13  # not a multiple of k1: a short last chunk
    x, y, mask = _data(rng, model, n_steps)
    h0 = _h0(rng, model)
    updates = list(truncated_bptt(model, x, y, k1, k2, mask, h0))
    assert len(updates) == -(-n_steps // k1)
    total = 0.0
    for j, (loss, grads, info) in enumerate(updates):
        c0, stop = j * k1, min((j + 1) * k1, n_steps)
        start = max(0, stop - k2)
        assert info["window"] == (start, stop) and info["chunk"] == (c0, stop)
        window_mask = mask[start:stop].copy()
        window_mask[:c0 - start] = 0  # steps before the chunk count in an earlier update
        ref_loss, ref_grads = model.loss_and_grad(x[start:stop], y[start:stop], window_mask,
                                                  _state_at(model, x, start, h0))
        assert abs(loss - ref_loss) <= 1e-12 * abs(ref_loss)
        _assert_grads_close(ref_grads, grads, 1e-12)
        # the carried state is the true state after `stop` steps
        for got, ref in zip(_as_tuple(info["state"]), _as_tuple(_state_at(model, x, stop, h0))):
            np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-14)
        total += loss
    full_loss = full_bptt(model, x, y, mask, h0)[0]
    assert abs(total - full_loss) <= 1e-12 * abs(full_loss)  # each step's loss counted once


@pytest.mark.parametrize("cell", CELLS)
def test_truncated_many_to_one(cell, rng):
    """Loss at the end only: the last window is full BPTT over the last k2 steps, the others
    carry no loss."""
    model = _model("many_to_one", cell, 2)
    n_steps, k1, k2 = 11, 3, 5
    x, y, mask = _data(rng, model, n_steps)
    updates = list(truncated_bptt(model, x, y, k1, k2, mask))
    assert len(updates) == 4
    for loss, grads, info in updates[:-1]:
        assert loss == 0.0 and not info["has_loss"]
        assert all(not g.any() for g in grads.values())
    loss, grads, info = updates[-1]
    assert info["has_loss"] and info["window"] == (n_steps - k2, n_steps)
    ref_loss, ref_grads = model.loss_and_grad(x[-k2:], y, mask,
                                              _state_at(model, x, n_steps - k2, None))
    assert abs(loss - ref_loss) <= 1e-12 * abs(ref_loss)
    _assert_grads_close(ref_grads, grads, 1e-12)


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm"])
def test_truncated_objective_finite_differences(cell, rng):
    """The summed updates are the gradient of sum_j L_j(theta; s_j), where L_j is the loss of
    chunk j computed through its window from the entering state s_j held constant."""
    n_steps, k1, k2 = 7, 2, 3
    model = _model("many_to_many", cell, 2)
    x, y, mask = _data(rng, model, n_steps)
    windows = [(max(0, min(c0 + k1, n_steps) - k2), c0, min(c0 + k1, n_steps))
               for c0 in range(0, n_steps, k1)]
    entering = [_state_at(model, x, start, None) for start, _, _ in windows]  # fixed

    def objective():
        total = 0.0
        for (start, c0, stop), state in zip(windows, entering):
            out = model.rnn(x[start:stop], state)[0]
            logits = model.head.forward(out[c0 - start:])[0]
            total += bce_with_logits(logits, y[c0:stop], mask[c0:stop])[0]
        return total

    loss, grads = truncated_bptt_sum(model, x, y, k1, k2, mask)
    assert abs(loss - objective()) <= 1e-12 * abs(loss)
    for name, p in model.parameters().items():
        err = relative_error(numerical_gradient(objective, p), grads[name])
        assert err < 1e-7, (name, err)
    # and it is not the full gradient: truncation drops the long-range terms
    full = full_bptt(model, x, y, mask)[1]
    assert np.abs(full["rnn.weight_hh_l0"] - grads["rnn.weight_hh_l0"]).max() > 1e-6


@pytest.mark.parametrize("k1,k2", [(4, 4), (3, 5)])
def test_truncated_with_optimizer_steps(k1, k2, rng):
    """An optimizer step between updates: the next window's forward uses the new weights, from
    the state carried over (computed with the old ones)."""
    model = _model("many_to_many", "lstm", 1)
    n_steps = 8
    x, y, mask = _data(rng, model, n_steps)
    opt = SGD(model.parameters(), lr=0.5)
    gen = truncated_bptt(model, x, y, k1, k2, mask)
    _, grads, info = next(gen)
    # the state at the next window's start, with the weights of the first update
    next_start = max(0, min(2 * k1, n_steps) - k2)
    carried = _state_at(model, x, next_start, None)
    opt.step(grads)
    loss, grads, info = next(gen)
    start, stop = info["window"]
    assert start == next_start
    window_mask = mask[start:stop].copy()
    window_mask[:k1 - start] = 0
    ref_loss, ref_grads = model.loss_and_grad(x[start:stop], y[start:stop], window_mask, carried)
    assert abs(loss - ref_loss) <= 1e-12 * abs(ref_loss)
    _assert_grads_close(ref_grads, grads, 1e-12)


# ------------------------------------------------------------------------------ errors
def test_argument_errors_before_any_kernel(rng, monkeypatch):
    model = _model("many_to_many", "rnn_tanh")
    x, y, mask = _data(rng, model, 6)

    def no_kernels(*args, **kwargs):
        raise AssertionError("a kernel ran before the arguments were checked")

    monkeypatch.setattr(type(model.rnn), "_forward_prepared", no_kernels)
    cases = [
        (TypeError, "k1", lambda: truncated_bptt(model, x, y, 1.5, 3)),
        (TypeError, "k2", lambda: truncated_bptt(model, x, y, 2, True)),
        (ValueError, "k1", lambda: truncated_bptt(model, x, y, 0, 3)),
        (ValueError, "k2 must be >= k1", lambda: truncated_bptt(model, x, y, 3, 2)),
        (ValueError, "segment", lambda: checkpointed_bptt(model, x, y, segment=0)),
        (TypeError, "segment", lambda: checkpointed_bptt(model, x, y, segment=2.0)),
        (ValueError, "T = 0", lambda: checkpointed_bptt(model, x[:0], y[:0])),
        (ValueError, "T = 0", lambda: truncated_bptt(model, x[:0], y[:0], 1, 1)),
        (ValueError, "y must have shape", lambda: checkpointed_bptt(model, x, y[:-1])),
        (ValueError, "y must have shape", lambda: truncated_bptt(model, x, y[..., :2], 1, 1)),
        (ValueError, "mask must have shape", lambda: checkpointed_bptt(model, x, y, mask[:, :2])),
        (ValueError, "input_size", lambda: checkpointed_bptt(model, x[..., :1], y)),
        (TypeError, "dtype", lambda: truncated_bptt(model, x.astype(np.float32), y, 1, 1)),
    ]
    for exc, match, call in cases:
        with pytest.raises(exc, match=match):
            call()


def test_unsupported_models(rng):
    bi = make_model("many_to_many", "gru", I, H, K, dtype=F64, seed=0, bidirectional=True)
    x, y, _ = _data(rng, bi, 5)
    for call in (lambda: truncated_bptt(bi, x, y, 2, 2), lambda: checkpointed_bptt(bi, x, y)):
        with pytest.raises(ValueError, match="bidirectional"):
            call()
    full_bptt(bi, x, y)  # full BPTT is fine
    for arch in ("one_to_one", "one_to_many", "encoder_decoder"):
        model = make_model(arch, "rnn_tanh", K if arch == "one_to_many" else I, H, K,
                           dtype=F64, seed=0)
        assert isinstance(model, (OneToOne, OneToMany, EncoderDecoder))
        with pytest.raises(TypeError, match="ManyToMany or ManyToOne"):
            checkpointed_bptt(model, x, y)
        with pytest.raises(TypeError, match="ManyToMany or ManyToOne"):
            truncated_bptt(model, x, y, 1, 1)
