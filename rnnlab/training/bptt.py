"""Backpropagation through time, three ways: full, truncated and checkpointed.

* :func:`full_bptt` is the model's own ``loss_and_grad``: the whole sequence is kept in memory
  (every layer's states for all ``T`` steps, the ``(T, B, H)`` output and its gradient).
* :func:`truncated_bptt` is Williams & Peng's TBPTT(k1, k2): the hidden state is carried
  forward, and every ``k1`` steps the gradient is backpropagated through the last ``k2`` steps
  only. It yields one ``(loss, grads, info)`` per update; :func:`truncated_bptt_sum` adds them
  up with the weights held fixed.
* :func:`checkpointed_bptt` gives the same loss and gradients as full BPTT but keeps only the
  states at segment boundaries (every ``ceil(sqrt(T))``-th step by default) and recomputes one
  segment at a time on the way back: memory ``O(sqrt(T))`` instead of ``O(T)`` for about one
  extra forward pass.

Truncated and checkpointed BPTT work on :class:`~rnnlab.architectures.ManyToMany` (a loss at
every step) and :class:`~rnnlab.architectures.ManyToOne` (a loss at the end) models around any
unidirectional cell (vanilla, LSTM, GRU; any depth). A bidirectional layer reads the sequence
backwards too, so it needs the whole sequence and is refused.
"""

import math
import numbers

import numpy as np

from ..architectures import ManyToMany, ManyToOne, OneToOne

__all__ = ["checkpointed_bptt", "full_bptt", "truncated_bptt", "truncated_bptt_sum"]


# ------------------------------------------------------------------------------ validation
def _check_int(value, name, minimum=1):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_model(model, who):
    """The model's recurrent layer; only unidirectional ManyToMany / ManyToOne models."""
    if isinstance(model, OneToOne) or not isinstance(model, (ManyToMany, ManyToOne)):
        raise TypeError(f"{who} needs an rnnlab ManyToMany or ManyToOne model (a loss at every "
                        f"step, or at the end of the sequence), got {type(model).__name__}")
    rnn = model.rnn
    if rnn.bidirectional:
        raise ValueError(f"{who} needs a unidirectional recurrent layer: a bidirectional "
                         f"{type(rnn).__name__} reads the sequence backwards too, so it needs "
                         f"the whole sequence at once; use full_bptt instead")
    return rnn


def _check_data(model, x, y, mask):
    """Check ``x``, ``y`` and ``mask`` up front, so that no error comes half-way through."""
    rnn = model.rnn
    x = model._check_x(x, 3)
    n_steps, batch, n_in = x.shape
    if n_steps == 0:
        raise ValueError("x has sequence length T = 0; T must be >= 1")
    if batch == 0:
        raise ValueError("x has batch size B = 0; B must be >= 1")
    if n_in != rnn.input_size:
        raise ValueError(f"x has {n_in} features in its last dimension, expected "
                         f"input_size = {rnn.input_size}")
    if not np.isfinite(x).all():
        raise ValueError("x contains NaN or Inf values")
    many = isinstance(model, ManyToMany)
    lead = (n_steps, batch) if many else (batch,)
    y = np.asarray(y)
    n_out = model.head.out_features
    indices = model.loss == "cross_entropy" and y.dtype.kind in "iu"
    expected = lead if indices else lead + (n_out,)
    if y.shape != expected:
        what = "(T, B, K)" if many else "(B, K)"
        raise ValueError(f"y must have shape {what} = {lead + (n_out,)}"
                         + (f" (or {lead} of class indices)" if model.loss == "cross_entropy"
                            else "") + f", got {y.shape}")
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != lead:
            raise ValueError(f"mask must have shape {lead} (one weight per "
                             f"{'step and sequence' if many else 'sequence'}), got {mask.shape}")
    return x, y, mask, many


# ------------------------------------------------------------------------------ state plumbing
# The states of a layer are kept as a tuple, (h,) or (h, c) for the LSTM, each
# (num_layers, B, H); these helpers convert to and from the layer's own conventions.
def _initial_states(rnn, h0):
    if len(rnn._state_names) == 2:
        return tuple(rnn._split_hx(h0, "h0"))
    return (h0,)


def _user_states(rnn, states):
    """``h`` or ``(h, c)`` as the layer takes and returns them (``None`` for zeros)."""
    if all(s is None for s in states):
        return None
    return states if len(states) == 2 else states[0]


def _forward(rnn, x, states, cache):
    """Run ``x`` from ``states``; return the output, the final states (a tuple) and the cache."""
    if cache:
        out, finals, c = rnn.forward_with_cache(x, _user_states(rnn, states))
    else:
        (out, finals), c = rnn(x, _user_states(rnn, states)), None
    return out, (finals if isinstance(finals, tuple) else (finals,)), c


def _backward(rnn, cache, d_out, d_states):
    grads = rnn.backward_from_cache(cache, d_out, *d_states)
    return grads, tuple(grads[name] for name in rnn._state_names)


def _head_grads(model, out, y, mask):
    """Loss of a stretch of outputs and the head's gradients, exactly as ``loss_and_grad``."""
    logits, head_cache = model.head.forward(out)
    loss, d_logits = model._loss(logits, y, mask)
    return loss, model.head.backward(head_cache, d_logits)


def _final_grads(model, rnn, finals, y, mask):
    """ManyToOne: the loss read from the final state, and the gradient it sends into it."""
    loss, head_grads = _head_grads(model, model._features(_user_states(rnn, finals)), y, mask)
    d_h = np.zeros_like(finals[0])
    d_h[rnn.num_layers - 1] = head_grads["input"]  # the read-out sees the top layer only
    return loss, head_grads, (d_h,) + (None,) * (len(finals) - 1)


def _accumulate(total, part):
    """Add gradients into float64 sums (checkpointed and summed BPTT add up many pieces)."""
    for k, g in part.items():
        if k in total:
            total[k] += g
        else:
            total[k] = g.astype(np.float64)


def _cast(model, grads64):
    return {k: g.astype(model.dtype) for k, g in grads64.items()}


def _model_grads(model, head_grads, rnn_grads):
    grads = {}
    if head_grads is not None:
        model._collect(grads, "head", head_grads)
    model._collect(grads, "rnn", rnn_grads)
    return grads


# ------------------------------------------------------------------------------ full
def full_bptt(model, x, y, mask=None, h0=None):
    """Loss and exact gradient by backpropagation through the whole sequence.

    A thin wrapper of ``model.loss_and_grad``, for symmetry with :func:`truncated_bptt` and
    :func:`checkpointed_bptt`. It keeps every layer's states for all ``T`` steps.

    Parameters
    ----------
    model : SequenceModel
        Any rnnlab architecture.
    x, y : ndarray
        Inputs and targets, as the model's ``loss_and_grad`` takes them.
    mask : ndarray, optional
        Step (or sequence) weights.
    h0 : ndarray or tuple of ndarray, optional
        Initial state (``(h0, c0)`` for an LSTM); zeros if omitted.

    Returns
    -------
    loss : float
    grads : dict of str to ndarray
        Keyed as ``model.parameters()`` (``"rnn.weight_hh_l0"``, ``"head.weight_0"``, ...).
    """
    if h0 is None:
        return model.loss_and_grad(x, y, mask=mask)
    return model.loss_and_grad(x, y, mask=mask, h0=h0)


# ------------------------------------------------------------------------------ truncated
def truncated_bptt(model, x, y, k1, k2, mask=None, h0=None):
    """Truncated BPTT(k1, k2) (Williams & Peng 1990): one update every ``k1`` steps.

    The state is carried forward through the sequence; after every ``k1`` new steps (and at
    the end), the gradient is backpropagated through the last ``k2`` steps only. The state
    entering that window is a constant: no gradient flows past ``k2`` steps back, and none
    comes from steps after the window (they are not seen yet).

    Parameters
    ----------
    model : ManyToMany or ManyToOne
        Around a unidirectional RNN, LSTM or GRU of any depth.
    x : ndarray
        ``(T, B, I)`` in the model's dtype.
    y : ndarray
        Targets as for ``model.loss_and_grad``: ``(T, B, K)`` (ManyToMany) or ``(B, K)``
        (ManyToOne); class indices without the ``K`` axis for cross-entropy.
    k1 : int
        Steps between updates, ``>= 1``.
    k2 : int
        Steps backpropagated through at each update, ``>= k1``. ``k1 = k2`` gives the usual
        "detach the state every k steps" TBPTT on disjoint chunks.
    mask : ndarray, optional
        ``(T, B)`` step weights (ManyToMany) or ``(B,)`` sequence weights (ManyToOne).
    h0 : ndarray or tuple of ndarray, optional
        Initial state ``(num_layers, B, H)`` (``(h0, c0)`` for an LSTM); zeros if omitted.

    Returns
    -------
    iterator of (loss, grads, info)
        One item per update, ``ceil(T / k1)`` in all. ``loss`` (float) is the loss of the
        chunk's new steps (ManyToMany: the last ``k1`` steps of the window, i.e. the steps
        since the previous update; every step's loss is counted in exactly one update).
        ``grads`` (dict of str to ndarray, keyed as ``model.parameters()``) is its gradient
        through the window. ``info`` is a dict: ``"window"`` ``(start, stop)`` the steps
        backpropagated through, ``"chunk"`` ``(start, stop)`` the steps whose loss counts,
        ``"has_loss"`` (bool), and ``"state"``, the carried state after step ``stop``
        (``h`` or ``(h, c)``).

    Raises
    ------
    TypeError
        For a model other than ManyToMany / ManyToOne, or a non-integer ``k1``/``k2``.
    ValueError
        For ``k1 < 1``, ``k2 < k1``, a bidirectional layer, or mis-shaped data; all checked
        when this function is called, before any kernel runs.

    Notes
    -----
    Each window is recomputed forward from its entering state with the weights *current when
    the update is made*, so a trainer may apply an optimizer step after every item: the
    forward pass of the next chunk then uses the updated weights (the entering state itself
    was computed at the previous update, with the weights of then). With the weights left
    unchanged, the items add up to :func:`truncated_bptt_sum`.

    A ManyToOne model has its loss at the end only: every window but the last carries no loss
    and yields ``loss = 0.0``, zero gradients and ``info["has_loss"] = False`` (its forward
    pass still carries the state). The last window's gradient is that of full BPTT truncated
    to the last ``k2`` steps. A trainer may skip updates without loss.

    With ``k2 >= T`` every window starts at step 0, so the items sum to the full BPTT
    gradient; with ``k1 = k2 = T`` there is a single update, equal to :func:`full_bptt`.

    Each update costs a forward and a backward pass over ``k2`` steps (the ``k2 - k1`` steps
    before the chunk are recomputed), so the whole sequence costs about ``k2 / k1`` times
    full BPTT; memory is that of ``k2`` steps.

    Examples
    --------
    >>> import numpy as np
    >>> from rnnlab.architectures import make_model
    >>> from rnnlab.training import SGD, truncated_bptt
    >>> model = make_model("many_to_many", "rnn_tanh", 2, 8, 1, seed=0)
    >>> x = np.zeros((100, 4, 2), np.float32); y = np.zeros((100, 4, 1), np.float32)
    >>> opt = SGD(model.parameters(), lr=0.01)
    >>> for loss, grads, info in truncated_bptt(model, x, y, k1=10, k2=20):
    ...     opt.step(grads)
    """
    rnn = _check_model(model, "truncated_bptt")
    k1 = _check_int(k1, "k1")
    k2 = _check_int(k2, "k2")
    if k2 < k1:
        raise ValueError(f"k2 must be >= k1 (each update backpropagates through the k1 new "
                         f"steps at least), got k1 = {k1}, k2 = {k2}")
    x, y, mask, many = _check_data(model, x, y, mask)
    # the checks above run now; the updates run lazily, one per next()
    return _truncated_updates(model, rnn, x, y, mask, many, k1, k2,
                              _initial_states(rnn, h0))


def _truncated_updates(model, rnn, x, y, mask, many, k1, k2, states):
    n_steps = x.shape[0]
    start = 0  # first step of the current window; `states` is the state entering it
    for index, chunk0 in enumerate(range(0, n_steps, k1)):
        stop = min(chunk0 + k1, n_steps)
        has_loss = many or stop == n_steps
        # The next window starts at `split`; it lies inside this window (k2 >= k1), so the
        # state entering it is read off this window's forward pass by running it in two pieces.
        split = max(0, min(stop + k1, n_steps) - k2)
        bounds = [start, stop] if split in (start, stop) else [start, split, stop]
        outs, caches, finals, next_states = [], [], states, states
        for a, b in zip(bounds[:-1], bounds[1:]):
            out, finals, cache = _forward(rnn, x[a:b], finals, has_loss)
            outs.append(out)
            caches.append(cache)
            if b == split:
                next_states = finals
        if not has_loss:
            loss, grads = 0.0, {k: np.zeros_like(p) for k, p in model.parameters().items()}
        else:
            if many:
                out = outs[0] if len(outs) == 1 else np.concatenate(outs)
                n_loss = stop - chunk0
                loss, head_grads = _head_grads(
                    model, out[-n_loss:], y[chunk0:stop],
                    None if mask is None else mask[chunk0:stop])
                if n_loss == stop - start:
                    d_out = head_grads["input"]
                else:  # steps of the window before the chunk carry no loss of their own
                    d_out = np.zeros_like(out)
                    d_out[-n_loss:] = head_grads["input"]
                d_states = (None,) * len(finals)
            else:
                loss, head_grads, d_states = _final_grads(model, rnn, finals, y, mask)
                d_out = None
            # walk the pieces backward, carrying dL/d(state) across the split
            pieces = []
            for i in range(len(caches) - 1, -1, -1):
                a, b = bounds[i] - start, bounds[i + 1] - start
                g, d_states = _backward(rnn, caches[i], None if d_out is None else d_out[a:b],
                                        d_states)
                pieces.append({k: v for k, v in g.items() if k in rnn.parameters()})
            if len(pieces) == 1:  # one piece: exactly what loss_and_grad computes
                rnn_grads = pieces[0]
            else:
                rnn_grads = {}
                for g in pieces:
                    _accumulate(rnn_grads, g)
                rnn_grads = _cast(model, rnn_grads)
            grads = _model_grads(model, head_grads, rnn_grads)
        del outs, caches
        info = {"index": index, "window": (start, stop), "chunk": (chunk0, stop),
                "has_loss": has_loss, "state": _user_states(rnn, finals)}
        yield loss, grads, info
        start, states = split, next_states


def truncated_bptt_sum(model, x, y, k1, k2, mask=None, h0=None):
    """The losses and gradients of every TBPTT(k1, k2) update, added up with fixed weights.

    What :func:`truncated_bptt` yields, summed without any optimizer step in between: the
    gradient of the truncated objective (each window's loss with its entering state held
    constant). Useful for testing and for accumulating one update over a whole sequence.

    Parameters
    ----------
    model, x, y, k1, k2, mask, h0
        As for :func:`truncated_bptt`.

    Returns
    -------
    loss : float
        The loss of the whole sequence (every step counted once).
    grads : dict of str to ndarray
        The summed gradients, accumulated in float64 and returned in the model's dtype.
    """
    total_loss, total = 0.0, {}
    for loss, grads, _ in truncated_bptt(model, x, y, k1, k2, mask=mask, h0=h0):
        total_loss += loss
        _accumulate(total, grads)
    return total_loss, _cast(model, total)


# ------------------------------------------------------------------------------ checkpointed
def checkpointed_bptt(model, x, y, mask=None, h0=None, segment=None):
    """Full BPTT's loss and gradients in ``O(sqrt(T))`` memory, by recomputing segments.

    A first forward pass keeps only the state entering each segment of ``segment`` steps
    (the checkpoints), not the outputs. Then the segments are walked from the last to the
    first: each one is recomputed from its checkpoint with its cache, its outputs go through
    the head and the loss, and the gradient is backpropagated through it, the gradient of the
    state entering it (``dL/dh``, and ``dL/dc`` for an LSTM) being carried into the previous
    segment. Only one segment's states, outputs and gradients exist at a time, so at
    ``T = 100,000``, ``B = 32``, ``H = 256`` the ``(T, B, H)`` output (3.3 GB in float32) is
    never held.

    Parameters
    ----------
    model : ManyToMany or ManyToOne
        Around a unidirectional RNN, LSTM or GRU of any depth.
    x, y, mask, h0
        As for :func:`truncated_bptt` (and the model's ``loss_and_grad``).
    segment : int, optional
        Steps per segment, ``>= 1``; default ``ceil(sqrt(T))``. The last segment may be
        shorter. ``segment >= T`` is full BPTT.

    Returns
    -------
    loss : float
        As full BPTT's (the per-segment losses summed in time order).
    grads : dict of str to ndarray
        As full BPTT's, keyed as ``model.parameters()``: the per-segment gradients are
        accumulated in float64 and returned in the model's dtype. In float64 they match
        :func:`full_bptt` to round-off (about 1e-15 relative); only the order of the sums
        differs.

    Raises
    ------
    TypeError, ValueError
        As :func:`truncated_bptt`, and for a ``segment`` that is not an integer ``>= 1``; all
        checked before any kernel runs.

    Notes
    -----
    Memory: ``ceil(T / segment)`` checkpoints of ``num_layers * B * H`` values (twice that for
    an LSTM) plus one segment's forward cache and gradients, besides ``x`` and ``y``
    themselves; with the default segment both terms grow as ``sqrt(T)``. Time: one forward
    pass more than full BPTT (the last segment's forward is not repeated).

    The loss is evaluated during the backward walk, where each segment's outputs are
    recomputed anyway, so the first pass runs the recurrence only.
    """
    rnn = _check_model(model, "checkpointed_bptt")
    x, y, mask, many = _check_data(model, x, y, mask)
    n_steps = x.shape[0]
    if segment is None:
        segment = math.isqrt(n_steps - 1) + 1  # ceil(sqrt(T)) without float round-off
    segment = _check_int(segment, "segment")
    bounds = list(range(0, n_steps, segment)) + [n_steps]
    n_seg = len(bounds) - 1

    # forward: keep the state entering each segment (the last one is recomputed first anyway)
    checkpoints = [_initial_states(rnn, h0)]
    for i in range(n_seg - 1):
        _, finals, _ = _forward(rnn, x[bounds[i]:bounds[i + 1]], checkpoints[-1], False)
        checkpoints.append(finals)

    # backward: recompute each segment from its checkpoint, last to first
    losses = [0.0] * n_seg
    total = {}
    d_states = (None,) * len(checkpoints[0])
    for i in range(n_seg - 1, -1, -1):
        a, b = bounds[i], bounds[i + 1]
        out, finals, cache = _forward(rnn, x[a:b], checkpoints[i], True)
        checkpoints[i] = None  # not needed again
        head_grads, d_out = None, None
        if many:
            losses[i], head_grads = _head_grads(model, out, y[a:b],
                                                None if mask is None else mask[a:b])
            d_out = head_grads["input"]
        elif i == n_seg - 1:
            losses[i], head_grads, d_states = _final_grads(model, rnn, finals, y, mask)
        del out
        rnn_grads, d_states = _backward(rnn, cache, d_out, d_states)
        del cache
        _accumulate(total, _model_grads(model, head_grads, rnn_grads))
    grads = _cast(model, total)
    return float(sum(losses)), {k: grads[k] for k in model.parameters()}
