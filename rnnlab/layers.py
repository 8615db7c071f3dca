"""PyTorch-shaped recurrent layers running on rnnlab's Numba kernels.

The contract is PyTorch's (see DESIGN.md): input ``(T, B, I)`` (``(B, T, I)`` with
``batch_first``, ``(T, I)`` unbatched), output ``(T, B, D*H)``, ``h_n`` ``(D*L, B, H)``, parameters
under PyTorch's names, so a model trained in PyTorch can be loaded and diagnosed here. Gradients
come from exact backpropagation through time (:meth:`RNN.backward`), without autograd.

This module holds what every cell shares (:class:`RecurrentLayer`: layouts, stacking, directions,
state_dict, validation) and the vanilla :class:`RNN`; the gated cells are in :mod:`rnnlab.gated`.
"""

import importlib

import numpy as np

from . import _validation as v
from ._backend import resolve_backend
from ._blas import blas_threads_for
from .activations import activation_code
from ._scratch import ScratchBuffers


def _suffix(layer, direction):
    return f"_l{layer}" + ("_reverse" if direction else "")


class RecurrentLayer:
    """Shared machinery of the recurrent layers: input layout, stacking, directions, state_dict.

    Subclasses define the cell: :meth:`_cell_param_shapes`, :meth:`_layer_forward` and
    :meth:`_layer_backward`.
    """

    #: Number of gate blocks stacked in ``weight_ih``/``weight_hh`` (1 for the vanilla cell).
    gate_count = 1

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 bidirectional=False, dtype=np.float32, seed=None, backend=None):
        self.input_size = v.check_positive_int(input_size, "input_size")
        self.hidden_size = v.check_positive_int(hidden_size, "hidden_size")
        self.num_layers = v.check_positive_int(num_layers, "num_layers")
        for flag, name in ((bias, "bias"), (batch_first, "batch_first"),
                           (bidirectional, "bidirectional")):
            if not isinstance(flag, (bool, np.bool_)):
                raise TypeError(f"{name} must be True or False, got {flag!r}")
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.bidirectional = bool(bidirectional)
        self.num_directions = 2 if self.bidirectional else 1
        self.dtype = v.check_dtype(dtype)
        self.backend = resolve_backend(backend)
        self.seed = seed
        self._params = {}
        self.reset_parameters(seed)

    # ----------------------------------------------------------------------------- backend
    def to(self, backend):
        """Run on another backend from now on (parameters stay host NumPy arrays).

        Parameters
        ----------
        backend : {"cpu", "cuda"}
            ``"cuda"`` raises :class:`rnnlab.BackendUnavailableError` where no GPU (or Numba's
            CUDA simulator) can run the kernels.

        Returns
        -------
        self
        """
        self.backend = resolve_backend(backend)
        return self

    def _kernels(self, cell):
        """The kernel module of ``cell`` (``"vanilla"``, ``"lstm"``, ``"gru"``) for the
        model's backend; the CUDA modules are imported only when used."""
        return importlib.import_module(f"rnnlab.kernels.{self.backend}.{cell}")

    def _kernel_kwargs(self, alloc, **cpu_only):
        # the CPU kernels take a scratch allocator (and other memory options); the CUDA ones
        # keep their work on the device
        return {"alloc": alloc, **cpu_only} if self.backend == "cpu" else {}

    # ----------------------------------------------------------------------------- parameters
    def _cell_param_shapes(self, layer, direction):
        """``{name: shape}`` of one layer and direction's parameters, in PyTorch's order."""
        raise NotImplementedError

    def _param_shapes(self):
        shapes = {}
        for layer in range(self.num_layers):
            for direction in range(self.num_directions):
                shapes.update(self._cell_param_shapes(layer, direction))
        return shapes

    def _layer_input_size(self, layer):
        return self.input_size if layer == 0 else self.num_directions * self.hidden_size

    def reset_parameters(self, seed=None):
        """Draw every parameter from U(-1/sqrt(H), 1/sqrt(H)), PyTorch's default.

        Parameters
        ----------
        seed : int or numpy.random.Generator, optional
            Seed for reproducible initialisation.
        """
        rng = np.random.default_rng(seed)
        bound = 1.0 / np.sqrt(self.hidden_size)
        self._params = {
            name: rng.uniform(-bound, bound, size=shape).astype(self.dtype)
            for name, shape in self._param_shapes().items()
        }

    def parameters(self):
        """The live parameter arrays by name (updating them in place updates the model)."""
        return self._params

    def state_dict(self):
        """A copy of the parameters under PyTorch's names and shapes.

        Returns
        -------
        dict of str to ndarray
        """
        return {name: value.copy() for name, value in self._params.items()}

    def load_state_dict(self, state_dict):
        """Load parameters, e.g. from a PyTorch model's ``state_dict()``.

        Parameters
        ----------
        state_dict : mapping
            Name to array; values may be NumPy arrays, anything ``np.asarray`` accepts, or
            tensors with ``.detach().cpu().numpy()`` (PyTorch is never imported). Values are
            converted to the model's dtype.

        Raises
        ------
        ValueError
            On a missing, unexpected or mis-shaped entry, or a non-finite value; nothing is
            loaded in that case.
        """
        if not hasattr(state_dict, "keys"):
            raise TypeError(f"state_dict must be a mapping of names to arrays, got "
                            f"{type(state_dict).__name__}")
        expected = self._param_shapes()
        missing = [k for k in expected if k not in state_dict]
        unexpected = [k for k in state_dict if k not in expected]
        if missing or unexpected:
            raise ValueError(f"state_dict does not match {type(self).__name__}"
                             f"(layers={self.num_layers}, bidirectional={self.bidirectional}):"
                             f" missing {missing}, unexpected {unexpected}")
        new = {}
        for name, shape in expected.items():
            arr = v.to_numpy(state_dict[name], f"state_dict[{name!r}]")
            if arr.shape != shape:
                gates = ""
                if name.startswith(("weight_ih", "weight_hh", "bias_ih", "bias_hh")) and \
                        arr.ndim >= 1 and arr.shape[0] % self.hidden_size == 0:
                    gates = (f" ({arr.shape[0] // self.hidden_size} gate blocks found, "
                             f"{type(self).__name__} has {self.gate_count})")
                raise ValueError(f"state_dict[{name!r}] must have shape {shape}, got "
                                 f"{arr.shape}{gates}")
            if arr.dtype.kind not in "fiu":
                raise TypeError(f"state_dict[{name!r}] must be numeric, got dtype {arr.dtype}")
            arr = np.ascontiguousarray(arr, dtype=self.dtype)
            if not np.isfinite(arr).all():
                raise ValueError(f"state_dict[{name!r}] contains NaN or Inf values")
            new[name] = arr
        self._params = new

    # ----------------------------------------------------------------------------- layouts
    #: The recurrent states, named as their gradients in :meth:`backward`'s result (the LSTM
    #: adds ``"c0"``), and the arguments that carry the gradients of their final values.
    _state_names = ("h0",)
    _final_grad_names = ("d_hn",)

    def _state_shape(self, batch):
        return (self.num_directions * self.num_layers, batch, self.hidden_size)

    def _prepare_input(self, x, name_x="x"):
        """Validate the input; return it time-major and C-contiguous, and whether unbatched."""
        x = v.to_numpy(x, name_x)
        if x.ndim not in (2, 3):
            raise ValueError(f"{name_x} must have 3 dimensions (T, B, input_size) or 2 (T, "
                             f"input_size) for an unbatched sequence, got shape {x.shape}")
        x = v.check_float_array(x, name_x, self.dtype, finite=False)
        unbatched = x.ndim == 2
        if unbatched:
            x = x[:, None, :]
        elif self.batch_first:
            x = x.transpose(1, 0, 2)
        n_steps, batch, n_in = x.shape
        if n_steps == 0:
            raise ValueError(f"{name_x} has sequence length T = 0; T must be >= 1")
        if batch == 0:
            raise ValueError(f"{name_x} has batch size B = 0; B must be >= 1")
        if n_in != self.input_size:
            raise ValueError(f"{name_x} has {n_in} features in its last dimension, expected "
                             f"input_size = {self.input_size}")
        if not np.isfinite(x).all():
            raise ValueError(f"{name_x} contains NaN or Inf values")
        return np.ascontiguousarray(x), unbatched

    def _prepare(self, x, h0, name_x="x", name_h0="h0"):
        """Validate the input and initial state; return time-major arrays and the layout."""
        x, unbatched = self._prepare_input(x, name_x)
        h0 = self._prepare_state(h0, name_h0, x.shape[1], unbatched)
        return x, h0, unbatched

    def _prepare_state(self, h0, name, batch, unbatched):
        shape = self._state_shape(batch)
        if h0 is None:
            return np.zeros(shape, dtype=self.dtype)
        expected = shape[::2] if unbatched else shape
        h0 = v.check_float_array(h0, name, self.dtype, shape=expected)
        return np.ascontiguousarray(h0.reshape(shape))

    def _to_user_layout(self, seq, unbatched):
        if unbatched:
            return seq[:, 0]
        if self.batch_first:
            return np.ascontiguousarray(seq.transpose(1, 0, 2))
        return seq

    def _from_user_layout(self, arr, name, n_steps, batch, width, unbatched):
        """Check a gradient given in the user's layout and return it time-major."""
        if unbatched:
            shape = (n_steps, width)
        elif self.batch_first:
            shape = (batch, n_steps, width)
        else:
            shape = (n_steps, batch, width)
        arr = v.check_float_array(arr, name, self.dtype, shape=shape)
        if unbatched:
            arr = arr[:, None, :]
        elif self.batch_first:
            arr = arr.transpose(1, 0, 2)
        return np.ascontiguousarray(arr)

    def _work(self, n_steps, batch):
        width = max(self.input_size, self.num_directions * self.hidden_size)
        return n_steps * batch * self.gate_count * self.hidden_size * width

    def _config(self):
        return (type(self).__name__, self.input_size, self.hidden_size, self.num_layers,
                self.num_directions, self.dtype)

    # ----------------------------------------------------------------------------- forward
    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, x, h0=None):
        """Run the network over a sequence.

        Parameters
        ----------
        x : array_like
            ``(T, B, input_size)``, ``(B, T, input_size)`` with ``batch_first``, or
            ``(T, input_size)`` unbatched; the model's dtype.
        h0 : array_like, optional
            Initial state ``(num_layers * num_directions, B, hidden_size)`` (zeros if omitted).

        Returns
        -------
        output : ndarray
            ``(T, B, num_directions * hidden_size)`` in the input's layout: the top layer's
            hidden states, directions concatenated.
        h_n : ndarray
            ``(num_layers * num_directions, B, hidden_size)``: every layer's final state.
        """
        output, (h_n,) = self._forward_only(x, (h0,))
        return output, h_n

    def _forward_only(self, x, init):
        """Output and final states, the per-step states living in scratch buffers."""
        x, unbatched = self._prepare_input(x)
        init = tuple(self._prepare_state(s, name, x.shape[1], unbatched)
                     for s, name in zip(init, self._state_names))
        with ScratchBuffers() as scratch:
            output, finals, _ = self._forward_prepared(x, init, unbatched, scratch.empty)
        return output, finals

    def forward_with_cache(self, x, h0=None):
        """:meth:`forward`, also returning what :meth:`backward_from_cache` needs.

        Returns
        -------
        output, h_n : ndarray
            As :meth:`forward`.
        cache : dict
            Inputs and per-layer states kept for backpropagation.
        """
        output, (h_n,), cache = self._forward_states(x, (h0,))
        return output, h_n, cache

    def _forward_states(self, x, init):
        """Validate, then run every layer and direction.

        ``init`` holds the user's initial states (or ``None``s), one per :attr:`_state_names`.
        Returns the output, the final states (one array each, in the user's layout) and the
        cache.
        """
        x, unbatched = self._prepare_input(x)
        init = tuple(self._prepare_state(s, name, x.shape[1], unbatched)
                     for s, name in zip(init, self._state_names))
        return self._forward_prepared(x, init, unbatched)

    def _forward_prepared(self, x, init, unbatched, alloc=np.empty):
        n_steps, batch, _ = x.shape
        inputs, states = [], {}
        finals = tuple(np.empty_like(s) for s in init)
        layer_in = x
        with blas_threads_for(self._work(n_steps, batch)):
            for layer in range(self.num_layers):
                outs = []
                for direction in range(self.num_directions):
                    idx = layer * self.num_directions + direction
                    st = self._layer_forward(layer, direction, layer_in,
                                             tuple(s[idx] for s in init), alloc)
                    states[layer, direction] = st
                    for final, value in zip(finals, self._layer_final(st, direction)):
                        final[idx] = value
                    outs.append(self._layer_output(st))
                inputs.append(layer_in)
                layer_in = outs[0] if len(outs) == 1 else np.concatenate(outs, axis=2)
        cache = {"inputs": inputs, "states": states, "init": init, "h0": init[0],
                 "unbatched": unbatched, "n_steps": n_steps, "batch": batch,
                 "config": self._config()}
        output = self._to_user_layout(layer_in, unbatched)
        if unbatched:
            finals = tuple(f[:, 0] for f in finals)
        return output, finals, cache

    # ----------------------------------------------------------------------------- backward
    def backward(self, x, d_output=None, h0=None, d_hn=None):
        """Exact gradients by backpropagation through time.

        The loss is taken as ``sum(output * d_output) + sum(h_n * d_hn)``: ``d_output`` and
        ``d_hn`` are the gradients of any loss with respect to the outputs.

        Parameters
        ----------
        x : array_like
            The input, as for :meth:`forward`.
        d_output : array_like, optional
            Gradient with respect to ``output`` (same shape); zeros if omitted.
        h0 : array_like, optional
            Initial state, as for :meth:`forward`.
        d_hn : array_like, optional
            Gradient with respect to ``h_n``; zeros if omitted.

        Returns
        -------
        dict of str to ndarray
            The gradient of every parameter under its state_dict name, plus ``"input"`` (shaped
            like ``x``) and ``"h0"`` (shaped like ``h_n``).
        """
        return self._backward_states(x, (h0,), d_output, (d_hn,))

    def _backward_states(self, x, init, d_output, d_finals):
        # every argument is checked before the forward pass runs
        x, unbatched = self._prepare_input(x)
        n_steps, batch, _ = x.shape
        init = tuple(self._prepare_state(s, name, batch, unbatched)
                     for s, name in zip(init, self._state_names))
        d_layer, d_finals = self._prepare_grads(d_output, d_finals, n_steps, batch, unbatched)
        with ScratchBuffers() as scratch:  # nothing of the forward pass outlives this call
            _, _, cache = self._forward_prepared(x, init, unbatched, scratch.empty)
            return self._backward_prepared(cache, d_layer, d_finals, False, scratch.empty,
                                           consume_states=True)

    def _prepare_grads(self, d_output, d_finals, n_steps, batch, unbatched):
        width = self.num_directions * self.hidden_size
        if d_output is None:
            d_layer = np.zeros((n_steps, batch, width), dtype=self.dtype)
        else:
            d_layer = self._from_user_layout(d_output, "d_output", n_steps, batch, width,
                                             unbatched)
        d_finals = tuple(self._prepare_state(d, name, batch, unbatched)
                         for d, name in zip(d_finals, self._final_grad_names))
        return d_layer, d_finals

    def _check_cache(self, cache):
        if not isinstance(cache, dict) or "config" not in cache:
            raise TypeError("cache must be the dict returned by forward_with_cache, got "
                            f"{type(cache).__name__}")
        if cache["config"] != self._config():
            raise ValueError(f"cache was made by a different model {cache['config'][:5]}; "
                             f"this one is {self._config()[:5]}")

    def backward_from_cache(self, cache, d_output=None, d_hn=None, return_hidden_grads=False):
        """Backpropagate from a cache returned by :meth:`forward_with_cache`.

        Parameters
        ----------
        cache : dict
            From :meth:`forward_with_cache` on this model.
        d_output, d_hn : array_like, optional
            As in :meth:`backward`.
        return_hidden_grads : bool
            Also return ``"hidden" + suffix`` (e.g. ``"hidden_l0"``, ``"hidden_l0_reverse"``):
            the total gradient dL/da<t> of every layer's hidden state, ``(T, B, H)`` time-major.

        Returns
        -------
        dict of str to ndarray
            As :meth:`backward`.
        """
        return self._backward_from_cache_states(cache, d_output, (d_hn,), return_hidden_grads)

    def _backward_from_cache_states(self, cache, d_output, d_finals, return_hidden_grads):
        self._check_cache(cache)
        d_layer, d_finals = self._prepare_grads(d_output, d_finals, cache["n_steps"],
                                                cache["batch"], cache["unbatched"])
        with ScratchBuffers() as scratch:
            return self._backward_prepared(cache, d_layer, d_finals, return_hidden_grads,
                                           scratch.empty)

    def _backward_prepared(self, cache, d_layer, d_finals, return_hidden_grads, alloc=np.empty,
                           consume_states=False):
        # consume_states: the cache is dropped after this call, so the kernels may overwrite
        # its per-step states (e.g. an LSTM's gate gradients written over its gates)
        n_steps, batch, unbatched = cache["n_steps"], cache["batch"], cache["unbatched"]
        grads = {}
        d_init = tuple(np.empty_like(d) for d in d_finals)
        H = self.hidden_size
        with blas_threads_for(self._work(n_steps, batch)):
            for layer in range(self.num_layers - 1, -1, -1):
                layer_in = cache["inputs"][layer]
                d_in = None
                for direction in range(self.num_directions):
                    idx = layer * self.num_directions + direction
                    d_out = np.ascontiguousarray(d_layer[:, :, direction * H:(direction + 1) * H])
                    g = self._layer_backward(layer, direction, layer_in,
                                             cache["states"][layer, direction],
                                             tuple(s[idx] for s in cache["init"]), d_out,
                                             tuple(d[idx] for d in d_finals), grads,
                                             return_hidden_grads, alloc, consume_states)
                    for d, name in zip(d_init, self._state_names):
                        d[idx] = g[name]
                    d_in = g["input"] if d_in is None else d_in + g["input"]
                d_layer = d_in
        grads["input"] = self._to_user_layout(d_layer, unbatched)
        for d, name in zip(d_init, self._state_names):
            grads[name] = d[:, 0] if unbatched else d
        return grads

    def _layer_output(self, states):
        """The layer's hidden states ``(T, B, H)`` from what :meth:`_layer_forward` returned."""
        raise NotImplementedError

    def _layer_final(self, states, direction):
        """The final value of every recurrent state (the last step processed)."""
        out = self._layer_output(states)
        return (out[0 if direction else out.shape[0] - 1],)

    def _layer_forward(self, layer, direction, layer_in, init, alloc):
        """Run one layer and direction; ``alloc(shape, dtype)`` may serve arrays that are not
        returned by the model (see :class:`~rnnlab._scratch.ScratchBuffers`)."""
        raise NotImplementedError

    def _layer_backward(self, layer, direction, layer_in, states, init, d_out, d_final, grads,
                        return_hidden_grads, alloc, consume=False):
        """Backpropagate through one layer and direction; ``consume``: ``states`` are not used
        again and may be overwritten."""
        raise NotImplementedError

    # ----------------------------------------------------------------------------- streaming
    def step(self, x_t, h=None):
        """Advance a unidirectional network by one time step (streaming, real-time use).

        Parameters
        ----------
        x_t : array_like
            One step of input, ``(B, input_size)`` or ``(input_size,)``.
        h : array_like, optional
            The state ``(num_layers, B, hidden_size)`` (or ``(num_layers, hidden_size)``) after
            the previous step; zeros if omitted.

        Returns
        -------
        y_t : ndarray
            The top layer's hidden state after this step, ``(B, hidden_size)``.
        h : ndarray
            The new state, to pass to the next call.

        Raises
        ------
        ValueError
            For a bidirectional network: its backward direction needs the whole sequence.
        """
        return self._step(x_t, h)

    def _step(self, x_t, state):
        if self.bidirectional:
            raise ValueError(f"step() needs a unidirectional network: a bidirectional "
                             f"{type(self).__name__} reads the sequence backwards too, so it "
                             f"needs the whole sequence; use forward() on the full sequence "
                             f"instead")
        x_t = v.to_numpy(x_t, "x_t")
        if x_t.ndim not in (1, 2):
            raise ValueError(f"x_t must have shape (B, input_size) or (input_size,), got "
                             f"{x_t.shape}")
        if x_t.ndim == 2 and self.batch_first:
            output, state = self.forward(x_t[:, None], state)
            return output[:, 0], state
        output, state = self.forward(x_t[None], state)
        return output[0], state

    def __repr__(self):
        on = "" if self.backend == "cpu" else f", backend={self.backend!r}"
        return (f"{type(self).__name__}({self.input_size}, {self.hidden_size}, "
                f"num_layers={self.num_layers}, bidirectional={self.bidirectional}, "
                f"dtype=np.{self.dtype.name}{on})")


class RNN(RecurrentLayer):
    """Elman RNN with PyTorch's interface: ``a<t> = g(W_ih x<t> + b_ih + W_hh a<t-1> + b_hh)``.

    Parameters
    ----------
    input_size : int
        Features of ``x<t>``.
    hidden_size : int
        Units ``H`` of each layer.
    num_layers : int, optional
        Stacked layers (each reads the one below; directions concatenated).
    nonlinearity : {"tanh", "relu", "sigmoid", "linear"}, optional
        The activation ``g``.
    bias : bool, optional
        Use ``b_ih`` and ``b_hh``.
    batch_first : bool, optional
        Input and output are ``(B, T, features)``.
    bidirectional : bool, optional
        Add a second RNN per layer reading the sequence backwards; outputs are concatenated
        ``[forward, backward]`` per step.
    dtype : {numpy.float32, numpy.float64}, optional
        Precision of parameters, inputs and kernels.
    seed : int, optional
        Seed of the U(-1/sqrt(H), 1/sqrt(H)) initialisation.
    transition_layers : int, optional
        Deep transition (Pascanu et al. 2014): extra hidden layers inside the recurrence,
        ``u_k = g(W_tr_k u_{k-1} + b_tr_k)``, each of width H, the last one being ``a<t>``.
        Parameters ``weight_tr{k}_l{l}`` and ``bias_tr{k}_l{l}`` (k = 1, 2, ...); not a
        PyTorch feature.
    backend : {None, "cpu", "cuda"}, optional
        Where the kernels run: Numba on the CPU, or the persistent CUDA kernels of
        :mod:`rnnlab.kernels.cuda` (same numbers: float64 to 1e-10, float32 to 1e-5). ``None``
        reads ``$RNNLAB_BACKEND`` (default ``"cpu"``); ``"cuda"`` without a GPU raises
        :class:`rnnlab.BackendUnavailableError` here, before anything runs.

    Examples
    --------
    >>> import numpy as np, rnnlab
    >>> net = rnnlab.RNN(3, 8, num_layers=2, seed=0)
    >>> x = np.zeros((5, 2, 3), dtype=np.float32)
    >>> out, h_n = net(x)
    >>> out.shape, h_n.shape
    ((5, 2, 8), (2, 2, 8))
    """

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, bidirectional=False, dtype=np.float32, seed=None,
                 transition_layers=0, backend=None):
        self.nonlinearity = nonlinearity
        self._act = activation_code(nonlinearity)
        self.transition_layers = v.check_positive_int(transition_layers, "transition_layers",
                                                      minimum=0)
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, bidirectional,
                         dtype, seed, backend)

    def _cell_param_shapes(self, layer, direction):
        H, sfx = self.hidden_size, _suffix(layer, direction)
        shapes = {f"weight_ih{sfx}": (H, self._layer_input_size(layer)),
                  f"weight_hh{sfx}": (H, H)}
        if self.bias:
            shapes[f"bias_ih{sfx}"] = (H,)
            shapes[f"bias_hh{sfx}"] = (H,)
        for k in range(1, self.transition_layers + 1):
            shapes[f"weight_tr{k}{sfx}"] = (H, H)
            shapes[f"bias_tr{k}{sfx}"] = (H,)
        return shapes

    def _transition(self, sfx):
        H, D, p = self.hidden_size, self.transition_layers, self._params
        w_tr = np.empty((D, H, H), dtype=self.dtype)
        b_tr = np.empty((D, H), dtype=self.dtype)
        for k in range(1, D + 1):
            w_tr[k - 1] = p[f"weight_tr{k}{sfx}"]
            b_tr[k - 1] = p[f"bias_tr{k}{sfx}"]
        return w_tr, b_tr

    def _layer_output(self, states):
        return states[-1]

    def _layer_forward(self, layer, direction, layer_in, init, alloc):
        sfx, p = _suffix(layer, direction), self._params
        bias = p[f"bias_ih{sfx}"] + p[f"bias_hh{sfx}"] if self.bias else None
        w_tr, b_tr = self._transition(sfx)
        return self._kernels("vanilla").rnn_layer_forward(
            layer_in, p[f"weight_ih{sfx}"], p[f"weight_hh{sfx}"], bias, w_tr, b_tr, init[0],
            self._act, reverse=bool(direction))

    def _layer_backward(self, layer, direction, layer_in, states, init, d_out, d_final, grads,
                        return_hidden_grads, alloc, consume=False):
        (h0,), (d_hn,) = init, d_final
        sfx, p = _suffix(layer, direction), self._params
        w_tr, _ = self._transition(sfx)
        w_hh = p[f"weight_hh{sfx}"]
        g = self._kernels("vanilla").rnn_layer_backward(
            layer_in, p[f"weight_ih{sfx}"], w_hh, w_tr, h0, states, d_out, d_hn, self._act,
            reverse=bool(direction), **self._kernel_kwargs(alloc))
        grads[f"weight_ih{sfx}"] = g["weight_ih"]
        grads[f"weight_hh{sfx}"] = g["weight_hh"]
        if self.bias:
            grads[f"bias_ih{sfx}"] = g["bias"]
            grads[f"bias_hh{sfx}"] = g["bias"].copy()
        for k in range(1, self.transition_layers + 1):
            grads[f"weight_tr{k}{sfx}"] = g["weight_tr"][k - 1]
            grads[f"bias_tr{k}{sfx}"] = g["bias_tr"][k - 1]
        if return_hidden_grads:
            grads[f"hidden{sfx}"] = _hidden_grads(g["dz"][0], w_hh, d_out, d_hn, direction)
        return g


def _hidden_grads(dz0, w_hh, d_out, d_hn, reverse):
    """Total dL/da<t>: the gradient from above plus the recurrent path through a<t+1>."""
    hidden = d_out.copy()
    if reverse:
        hidden[1:] += dz0[:-1] @ w_hh
        hidden[0] += d_hn
    else:
        hidden[:-1] += dz0[1:] @ w_hh
        hidden[-1] += d_hn
    return hidden
