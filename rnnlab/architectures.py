"""The five RNN architectures of the seed, trainable end to end with exact gradients.

==================  ===========================================  ================================
architecture        data                                          example
==================  ===========================================  ================================
:class:`OneToOne`   x ``(B, I)`` -> y ``(B, K)``                  a feed-forward net (T = 1)
:class:`OneToMany`  x ``(B, I)`` -> y ``(T_y, B, K)``             music generation
:class:`ManyToOne`  x ``(T, B, I)`` -> y ``(B, K)``               sentiment analysis
:class:`ManyToMany` x ``(T, B, I)`` -> y ``(T, B, K)``            tagging every step (T_x = T_y)
:class:`EncoderDecoder` x ``(T_x, B, I)`` -> y ``(T_y, B, K)``    translation (T_x != T_y)
==================  ===========================================  ================================

Data are time-major. ``loss_and_grad`` returns the loss and the gradient of every parameter under
``"<module>.<name>"`` (e.g. ``"rnn.weight_hh_l0"``, ``"head.weight_0"``), the names of
:meth:`SequenceModel.parameters`. Losses are summed over time (the seed's formula);
``reduction="mean"`` divides by the batch size.
"""

import numpy as np

from .heads import OutputHead
from .layers import RecurrentLayer
from .losses import LOSSES


class SequenceModel:
    """Base class: recurrent modules plus an output head, a loss, and the parameter plumbing.

    Parameters
    ----------
    head : OutputHead
        The read-out.
    loss : {"bce", "cross_entropy", "mse"}
        ``"bce"`` needs a sigmoid head and ``"cross_entropy"`` a softmax head (both computed from
        the logits); ``"mse"`` is taken on the activated output ŷ.
    reduction : {"sum", "mean"}
        Sum the loss over the batch, or average it over the batch.
    """

    def __init__(self, modules, head, loss="bce", reduction="sum"):
        if not isinstance(head, OutputHead):
            raise TypeError(f"head must be an rnnlab OutputHead, got {type(head).__name__}")
        for name, module in modules.items():
            if not isinstance(module, RecurrentLayer):
                raise TypeError(f"{name} must be an rnnlab recurrent layer (RNN, ...), got "
                                f"{type(module).__name__}")
            if module.batch_first:
                raise ValueError(f"{name}: architectures take time-major (T, B, features) data; "
                                 f"build the layer with batch_first=False")
            if module.dtype != head.dtype:
                raise TypeError(f"{name} has dtype {module.dtype} but head has {head.dtype}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {loss!r}")
        needed = LOSSES[loss][1]
        if needed is not None and head.activation != needed:
            raise ValueError(f"loss {loss!r} is computed through a {needed} output; the head's "
                             f"activation is {head.activation!r}")
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        self._modules = dict(modules, head=head)
        self.head = head
        self.loss = loss
        self.reduction = reduction
        self.dtype = head.dtype

    # ------------------------------------------------------------------------ parameters
    def parameters(self):
        """Live parameter arrays under ``"<module>.<name>"``."""
        return {f"{m}.{k}": a for m, mod in self._modules.items()
                for k, a in mod.parameters().items()}

    def state_dict(self):
        """A copy of every parameter under ``"<module>.<name>"``."""
        return {k: a.copy() for k, a in self.parameters().items()}

    def load_state_dict(self, state_dict):
        """Load ``"<module>.<name>"`` entries into each module (checked per module)."""
        prefixes = tuple(f"{m}." for m in self._modules)
        unexpected = [k for k in state_dict if not k.startswith(prefixes)]
        if unexpected:
            raise ValueError(f"state_dict has unexpected entries {unexpected}")
        for m, mod in self._modules.items():
            mod.load_state_dict({k[len(m) + 1:]: a for k, a in state_dict.items()
                                 if k.startswith(f"{m}.")})

    def _collect(self, grads, name, module_grads):
        params = self._modules[name].parameters()
        for k, g in module_grads.items():
            if k in params:
                grads[f"{name}.{k}"] = g

    # ------------------------------------------------------------------------ loss
    def _loss(self, logits, y, mask):
        """Loss and dL/dlogits, with the batch reduction applied."""
        fn = LOSSES[self.loss][0]
        if self.loss == "mse":
            pred = self.head.activate(logits)
            loss, d_pred = fn(pred, y, mask)
            d_logits = self._output_backward(pred, d_pred)
        else:
            loss, d_logits = fn(logits, y, mask)
        if self.reduction == "mean":
            batch = logits.shape[-2]
            loss /= batch
            d_logits = d_logits / self.dtype.type(batch)
        return loss, d_logits.astype(self.dtype)

    def _output_backward(self, pred, d_pred):
        act = self.head.activation
        if act == "sigmoid":
            return d_pred * pred * (1 - pred)
        if act == "softmax":
            return pred * (d_pred - (d_pred * pred).sum(axis=-1, keepdims=True))
        return d_pred

    def _check_x(self, x, ndim, name="x"):
        x = np.asarray(x)
        if x.dtype != self.dtype:
            raise TypeError(f"{name} has dtype {x.dtype} but the model's dtype is "
                            f"{self.dtype.name}; convert it with .astype(np.{self.dtype.name})")
        if x.ndim != ndim:
            layout = "(T, B, features)" if ndim == 3 else "(B, features)"
            raise ValueError(f"{name} must have shape {layout} for {type(self).__name__}, got "
                             f"{x.shape}")
        return x

    def _feedback(self, y):
        """Teacher-forcing inputs from targets: one-hot for class indices, else the targets."""
        y = np.asarray(y)
        if y.dtype.kind in "iu":
            return np.eye(self.head.out_features, dtype=self.dtype)[y]
        return y.astype(self.dtype)

    def _sample(self, pred, rng):
        if self.head.activation == "sigmoid":
            return (rng.random(pred.shape) < pred).astype(self.dtype)
        if self.head.activation == "softmax":
            cum = pred.cumsum(axis=-1)
            idx = (rng.random(pred.shape[:-1] + (1,)) > cum).sum(axis=-1)
            idx = np.minimum(idx, pred.shape[-1] - 1)
            return np.eye(pred.shape[-1], dtype=self.dtype)[idx]
        return pred


class ManyToMany(SequenceModel):
    """Many-to-many with ``T_x = T_y``: a prediction at every step.

    Parameters
    ----------
    rnn : RNN
        The recurrent network (any depth, uni- or bidirectional).
    head : OutputHead
        Read-out with ``in_features = rnn.num_directions * rnn.hidden_size``.
    loss, reduction
        See :class:`SequenceModel`.
    """

    def __init__(self, rnn, head, loss="bce", reduction="sum"):
        super().__init__({"rnn": rnn}, head, loss, reduction)
        self.rnn = rnn
        _check_width(rnn, head)

    def predict(self, x, h0=None):
        """ŷ<t> for every step, ``(T, B, K)``."""
        out, _ = self.rnn(self._check_x(x, 3), h0)
        return self.head.activate(self.head.forward(out)[0])

    def loss_and_grad(self, x, y, mask=None, h0=None):
        """Loss over all steps and its gradient.

        Parameters
        ----------
        x : ndarray
            ``(T, B, I)``.
        y : ndarray
            ``(T, B, K)`` targets (``(T, B)`` class indices for cross-entropy).
        mask : ndarray, optional
            ``(T, B)`` step weights.
        h0 : ndarray, optional
            Initial state.

        Returns
        -------
        loss : float
        grads : dict of str to ndarray
        """
        out, _, cache = self.rnn.forward_with_cache(self._check_x(x, 3), h0)
        logits, head_cache = self.head.forward(out)
        loss, d_logits = self._loss(logits, y, mask)
        grads = {}
        head_grads = self.head.backward(head_cache, d_logits)
        self._collect(grads, "head", head_grads)
        self._collect(grads, "rnn", self.rnn.backward_from_cache(cache, head_grads["input"]))
        return loss, grads


class ManyToOne(SequenceModel):
    """Many-to-one: one prediction from the whole sequence (sentiment analysis).

    The read-out sees the top layer's final state of every direction, concatenated
    (``h_n``: the forward direction after ``x<T>``, the backward one after ``x<1>``).
    """

    def __init__(self, rnn, head, loss="bce", reduction="sum"):
        super().__init__({"rnn": rnn}, head, loss, reduction)
        self.rnn = rnn
        _check_width(rnn, head)

    def _features(self, h_n):
        if isinstance(h_n, tuple):  # LSTM: (h_n, c_n); the read-out sees h
            h_n = h_n[0]
        top = (self.rnn.num_layers - 1) * self.rnn.num_directions
        return np.concatenate([h_n[top + d] for d in range(self.rnn.num_directions)], axis=-1)

    def _prepare(self, x):
        return self._check_x(x, 3)

    def predict(self, x, h0=None):
        """ŷ, ``(B, K)``."""
        _, h_n = self.rnn(self._prepare(x), h0)
        return self.head.activate(self.head.forward(self._features(h_n))[0])

    def loss_and_grad(self, x, y, mask=None, h0=None):
        """Loss of the single prediction and its gradient.

        Parameters
        ----------
        x : ndarray
            ``(T, B, I)``.
        y : ndarray
            ``(B, K)`` targets (``(B,)`` class indices for cross-entropy).
        mask : ndarray, optional
            ``(B,)`` sequence weights.
        h0 : ndarray, optional
            Initial state.
        """
        _, h_n, cache = self.rnn.forward_with_cache(self._prepare(x), h0)
        logits, head_cache = self.head.forward(self._features(h_n))
        loss, d_logits = self._loss(logits, y, mask)
        grads = {}
        head_grads = self.head.backward(head_cache, d_logits)
        self._collect(grads, "head", head_grads)
        d_hn = np.zeros_like(h_n[0] if isinstance(h_n, tuple) else h_n)
        top = (self.rnn.num_layers - 1) * self.rnn.num_directions
        H = self.rnn.hidden_size
        for d in range(self.rnn.num_directions):
            d_hn[top + d] = head_grads["input"][:, d * H:(d + 1) * H]
        self._collect(grads, "rnn", self.rnn.backward_from_cache(cache, None, d_hn))
        return loss, grads


class OneToOne(ManyToOne):
    """One-to-one: a single input, a single output (the recurrence runs one step, T = 1).

    ``x`` is ``(B, I)`` and ``y`` ``(B, K)``; otherwise as :class:`ManyToOne`.
    """

    def _prepare(self, x):
        return self._check_x(x, 2)[None]


class OneToMany(SequenceModel):
    """One-to-many (music generation): one input, then each output fed back as the next input.

    Training uses teacher forcing: the inputs are ``[x, y<1>, ..., y<T_y - 1>]`` (one-hot for
    class targets). :meth:`generate` runs free, feeding back ŷ (or a sample of it).

    Parameters
    ----------
    rnn : RNN
        Unidirectional, with ``input_size == head.out_features`` (the output is fed back).
    head : OutputHead
        Read-out.
    loss, reduction
        See :class:`SequenceModel`.
    """

    def __init__(self, rnn, head, loss="bce", reduction="sum"):
        super().__init__({"rnn": rnn}, head, loss, reduction)
        self.rnn = rnn
        _check_width(rnn, head)
        if rnn.bidirectional:
            raise ValueError("rnn must be unidirectional for OneToMany: generation feeds each "
                             "output back, so the sequence does not exist ahead of time")
        if rnn.input_size != head.out_features:
            raise ValueError(f"rnn.input_size ({rnn.input_size}) must equal "
                             f"head.out_features ({head.out_features}): outputs are fed back")

    def _inputs(self, x, y):
        x = self._check_x(x, 2)
        fed = self._feedback(y)
        if fed.ndim != 3 or fed.shape[1:] != (x.shape[0], self.head.out_features):
            raise ValueError(f"y must have shape (T_y, B, K) = (T_y, {x.shape[0]}, "
                             f"{self.head.out_features}) or (T_y, B) of class indices, got "
                             f"{np.shape(y)}")
        return np.concatenate([x[None], fed[:-1]], axis=0)

    def loss_and_grad(self, x, y, mask=None, h0=None):
        """Teacher-forced loss over ``T_y`` generated steps and its gradient.

        Parameters
        ----------
        x : ndarray
            ``(B, I)`` the single input.
        y : ndarray
            ``(T_y, B, K)`` targets (or ``(T_y, B)`` class indices).
        mask : ndarray, optional
            ``(T_y, B)``.
        h0 : ndarray, optional
            Initial state.
        """
        out, _, cache = self.rnn.forward_with_cache(self._inputs(x, y), h0)
        logits, head_cache = self.head.forward(out)
        loss, d_logits = self._loss(logits, y, mask)
        grads = {}
        head_grads = self.head.backward(head_cache, d_logits)
        self._collect(grads, "head", head_grads)
        self._collect(grads, "rnn", self.rnn.backward_from_cache(cache, head_grads["input"]))
        return loss, grads

    def generate(self, x, n_steps, sample=False, seed=None, h0=None):
        """Free-running generation with the streaming step.

        Parameters
        ----------
        x : ndarray
            ``(B, I)`` the first input.
        n_steps : int
            Steps to generate.
        sample : bool
            Feed back a sample (Bernoulli for sigmoid, categorical for softmax) instead of ŷ.
        seed : int, optional
            Seed of the sampling.
        h0 : ndarray, optional
            Initial state.

        Returns
        -------
        ndarray
            ``(n_steps, B, K)``: ŷ at every step.
        """
        return _generate(self, self.rnn, self._check_x(x, 2), n_steps,
                         sample, seed, h0)


class EncoderDecoder(SequenceModel):
    """Encoder-decoder for ``T_x != T_y``: the encoder's final state starts the decoder.

    Parameters
    ----------
    encoder : RNN
        Reads ``x``; its ``h_n`` must have the decoder's state shape.
    decoder : RNN
        Unidirectional, ``input_size == head.out_features``; trained with teacher forcing on
        ``[start, y<1>, ..., y<T_y - 1>]`` where ``start`` is a zero vector.
    head : OutputHead
        Read-out of the decoder.
    loss, reduction
        See :class:`SequenceModel`.
    """

    def __init__(self, encoder, decoder, head, loss="bce", reduction="sum"):
        super().__init__({"encoder": encoder, "decoder": decoder}, head, loss, reduction)
        self.encoder, self.decoder = encoder, decoder
        _check_width(decoder, head)
        if decoder.bidirectional:
            raise ValueError("decoder must be unidirectional: it generates step by step")
        if type(encoder) is not type(decoder):
            raise ValueError(f"encoder ({type(encoder).__name__}) and decoder "
                             f"({type(decoder).__name__}) must be the same cell: the encoder's "
                             f"final state is the decoder's initial state")
        enc_states = encoder.num_layers * encoder.num_directions
        if (enc_states, encoder.hidden_size) != (decoder.num_layers, decoder.hidden_size):
            raise ValueError(f"encoder's h_n ({enc_states} states of {encoder.hidden_size}) must "
                             f"match decoder's h0 ({decoder.num_layers} states of "
                             f"{decoder.hidden_size})")
        if decoder.input_size != head.out_features:
            raise ValueError(f"decoder.input_size ({decoder.input_size}) must equal "
                             f"head.out_features ({head.out_features}): outputs are fed back")

    def loss_and_grad(self, x, y, mask=None):
        """Teacher-forced loss and its gradient through decoder and encoder.

        Parameters
        ----------
        x : ndarray
            ``(T_x, B, I)``.
        y : ndarray
            ``(T_y, B, K)`` (or ``(T_y, B)`` class indices).
        mask : ndarray, optional
            ``(T_y, B)``.
        """
        x = self._check_x(x, 3)
        fed = self._feedback(y)
        if fed.ndim != 3 or fed.shape[1:] != (x.shape[1], self.head.out_features):
            raise ValueError(f"y must have shape (T_y, {x.shape[1]}, {self.head.out_features}) "
                             f"or (T_y, B) of class indices, got {np.shape(y)}")
        dec_in = np.concatenate([np.zeros_like(fed[:1]), fed[:-1]], axis=0)
        _, h_enc, enc_cache = self.encoder.forward_with_cache(x)
        out, _, dec_cache = self.decoder.forward_with_cache(dec_in, h_enc)
        logits, head_cache = self.head.forward(out)
        loss, d_logits = self._loss(logits, y, mask)
        grads = {}
        head_grads = self.head.backward(head_cache, d_logits)
        self._collect(grads, "head", head_grads)
        dec_grads = self.decoder.backward_from_cache(dec_cache, head_grads["input"])
        self._collect(grads, "decoder", dec_grads)
        d_states = [dec_grads[name] for name in self.decoder._state_names]
        self._collect(grads, "encoder",
                      self.encoder.backward_from_cache(enc_cache, None, *d_states))
        return loss, grads

    def generate(self, x, n_steps, sample=False, seed=None):
        """Encode ``x`` and decode ``n_steps`` outputs free-running, ``(n_steps, B, K)``."""
        x = self._check_x(x, 3)
        _, h_enc = self.encoder(x)
        start = np.zeros((x.shape[1], self.head.out_features), dtype=self.dtype)
        return _generate(self, self.decoder, start, n_steps, sample, seed, h_enc)


CELLS = ("rnn_tanh", "rnn_relu", "rnn_sigmoid", "rnn_linear", "lstm", "gru")


def recurrent_layer(cell, input_size, hidden_size, **kwargs):
    """Build a recurrent layer by name.

    Parameters
    ----------
    cell : {"rnn_tanh", "rnn_relu", "rnn_sigmoid", "rnn_linear", "lstm", "gru"}
        The cell (PyTorch's ``mode`` names for the vanilla ones).
    input_size, hidden_size : int
        Sizes.
    **kwargs
        Passed to :class:`rnnlab.RNN`, :class:`rnnlab.LSTM` or :class:`rnnlab.GRU`
        (``num_layers``, ``bidirectional``, ``dtype``, ``seed``, ...).
    """
    from .gated import GRU, LSTM
    from .layers import RNN

    if cell == "lstm":
        return LSTM(input_size, hidden_size, **kwargs)
    if cell == "gru":
        return GRU(input_size, hidden_size, **kwargs)
    if isinstance(cell, str) and cell.startswith("rnn_") and cell in CELLS:
        return RNN(input_size, hidden_size, nonlinearity=cell[4:], **kwargs)
    raise ValueError(f"cell must be one of {list(CELLS)}, got {cell!r}")


ARCHITECTURES = {"one_to_one": "OneToOne", "one_to_many": "OneToMany",
                 "many_to_one": "ManyToOne", "many_to_many": "ManyToMany",
                 "encoder_decoder": "EncoderDecoder"}


def make_model(architecture, cell, input_size, hidden_size, output_size, loss="bce",
               reduction="sum", head_hidden_sizes=(), dtype=np.float32, seed=None, **rnn_kwargs):
    """Build one of the five architectures around a named cell.

    Parameters
    ----------
    architecture : {"one_to_one", "one_to_many", "many_to_one", "many_to_many",
                    "encoder_decoder"}
        The shape.
    cell : str
        See :func:`recurrent_layer`.
    input_size, hidden_size, output_size : int
        Sizes (``one_to_many`` feeds outputs back, so its recurrent input is ``output_size``).
    loss : {"bce", "cross_entropy", "mse"}
        Sets the head's activation (sigmoid, softmax, linear).
    reduction : {"sum", "mean"}
        Batch reduction.
    head_hidden_sizes : sequence of int
        Deep output layers.
    dtype : numpy dtype
        Precision.
    seed : int, optional
        Seed of every module (offset per module).
    **rnn_kwargs
        ``num_layers``, ``bidirectional``, ``transition_layers`` (vanilla), ...

    Returns
    -------
    SequenceModel
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {sorted(ARCHITECTURES)}, got "
                         f"{architecture!r}")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {loss!r}")
    activation = LOSSES[loss][1] or "linear"

    def seeded(offset):
        return None if seed is None else seed + offset

    def layer(n_in, offset, **extra):
        return recurrent_layer(cell, n_in, hidden_size, dtype=dtype, seed=seeded(offset),
                               **{**rnn_kwargs, **extra})

    if architecture == "encoder_decoder":
        enc = layer(input_size, 0, bidirectional=False)
        dec = layer(output_size, 1, bidirectional=False)
        head = OutputHead(hidden_size, output_size, activation, head_hidden_sizes, dtype=dtype,
                          seed=seeded(2))
        return EncoderDecoder(enc, dec, head, loss, reduction)
    rnn = layer(output_size if architecture == "one_to_many" else input_size, 0)
    head = OutputHead(rnn.num_directions * hidden_size, output_size, activation,
                      head_hidden_sizes, dtype=dtype, seed=seeded(2))
    return globals()[ARCHITECTURES[architecture]](rnn, head, loss, reduction)


def _check_width(rnn, head):
    width = rnn.num_directions * rnn.hidden_size
    if head.in_features != width:
        raise ValueError(f"head.in_features ({head.in_features}) must equal the RNN's output "
                         f"width num_directions * hidden_size = {width}")


def _generate(model, rnn, first, n_steps, sample, seed, h0):
    if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)) or n_steps < 1:
        raise ValueError(f"n_steps must be an integer >= 1, got {n_steps!r}")
    rng = np.random.default_rng(seed)
    preds = []
    inp, h = first, h0
    for _ in range(n_steps):
        a, h = rnn.step(inp, h)
        pred = model.head.activate(model.head.forward(a)[0])
        preds.append(pred)
        inp = model._sample(pred, rng) if sample else pred.astype(model.dtype)
    return np.stack(preds)
