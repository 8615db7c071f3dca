"""PyTorch-shaped recurrent layers running on rnnlab's Numba kernels.

The contract is PyTorch's (see DESIGN.md): input ``(T, B, I)`` (``(B, T, I)`` with
``batch_first``, ``(T, I)`` unbatched), output ``(T, B, D*H)``, ``h_n`` ``(D*L, B, H)``, parameters
under PyTorch's names, so a model trained in PyTorch can be loaded and diagnosed here. Gradients
come from exact backpropagation through time (:meth:`RNN.backward`), without autograd.
"""

import numpy as np

from . import _validation as v
from ._blas import blas_threads_for
from .activations import activation_code
from .kernels.cpu.vanilla import rnn_layer_backward, rnn_layer_forward


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
                 bidirectional=False, dtype=np.float32, seed=None):
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
        self.seed = seed
        self._params = {}
        self.reset_parameters(seed)

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
    def _state_shape(self, batch):
        return (self.num_directions * self.num_layers, batch, self.hidden_size)

    def _prepare(self, x, h0, name_x="x", name_h0="h0"):
        """Validate the input and initial state; return time-major arrays and the layout."""
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
        x = np.ascontiguousarray(x)
        h0 = self._prepare_state(h0, name_h0, batch, unbatched)
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

    # ----------------------------------------------------------------------------- forward
    def __call__(self, x, h0=None):
        return self.forward(x, h0)

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
        output, h_n, _ = self.forward_with_cache(x, h0)
        return output, h_n

    def forward_with_cache(self, x, h0=None):
        """:meth:`forward`, also returning what :meth:`backward_from_cache` needs.

        Returns
        -------
        output, h_n : ndarray
            As :meth:`forward`.
        cache : dict
            Inputs and per-layer states kept for backpropagation.
        """
        x, h0, unbatched = self._prepare(x, h0)
        n_steps, batch, _ = x.shape
        inputs, states = [], {}
        h_n = np.empty_like(h0)
        layer_in = x
        with blas_threads_for(self._work(n_steps, batch)):
            for layer in range(self.num_layers):
                outs = []
                for direction in range(self.num_directions):
                    idx = layer * self.num_directions + direction
                    st = self._layer_forward(layer, direction, layer_in, h0[idx])
                    states[layer, direction] = st
                    out = self._layer_output(st)
                    h_n[idx] = out[0 if direction else n_steps - 1]
                    outs.append(out)
                inputs.append(layer_in)
                layer_in = outs[0] if len(outs) == 1 else np.concatenate(outs, axis=2)
        cache = {"inputs": inputs, "states": states, "h0": h0, "unbatched": unbatched,
                 "n_steps": n_steps, "batch": batch}
        output = self._to_user_layout(layer_in, unbatched)
        if unbatched:
            h_n = h_n[:, 0]
        return output, h_n, cache

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
        _, _, cache = self.forward_with_cache(x, h0)
        return self.backward_from_cache(cache, d_output, d_hn)

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
        n_steps, batch, unbatched = cache["n_steps"], cache["batch"], cache["unbatched"]
        width = self.num_directions * self.hidden_size
        if d_output is None:
            d_layer = np.zeros((n_steps, batch, width), dtype=self.dtype)
        else:
            d_layer = self._from_user_layout(d_output, "d_output", n_steps, batch, width,
                                             unbatched)
        d_hn = self._prepare_state(d_hn, "d_hn", batch, unbatched)
        grads = {}
        d_h0 = np.empty_like(d_hn)
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
                                             cache["h0"][idx], d_out, d_hn[idx], grads,
                                             return_hidden_grads)
                    d_h0[idx] = g["h0"]
                    d_in = g["input"] if d_in is None else d_in + g["input"]
                d_layer = d_in
        grads["input"] = self._to_user_layout(d_layer, unbatched)
        grads["h0"] = d_h0[:, 0] if unbatched else d_h0
        return grads

    def _layer_output(self, states):
        raise NotImplementedError

    def _layer_forward(self, layer, direction, layer_in, h0):
        raise NotImplementedError

    def _layer_backward(self, layer, direction, layer_in, states, h0, d_out, d_hn, grads,
                        return_hidden_grads):
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
        if self.bidirectional:
            raise ValueError("step() needs a unidirectional network: a bidirectional RNN reads "
                             "the sequence backwards too, so it needs the whole sequence; use "
                             "forward() on the full sequence instead")
        x_t = v.to_numpy(x_t, "x_t")
        if x_t.ndim not in (1, 2):
            raise ValueError(f"x_t must have shape (B, input_size) or (input_size,), got "
                             f"{x_t.shape}")
        if x_t.ndim == 2 and self.batch_first:
            output, h_n = self.forward(x_t[:, None], h)
            return output[:, 0], h_n
        output, h_n = self.forward(x_t[None], h)
        return output[0], h_n

    def __repr__(self):
        return (f"{type(self).__name__}({self.input_size}, {self.hidden_size}, "
                f"num_layers={self.num_layers}, bidirectional={self.bidirectional}, "
                f"dtype=np.{self.dtype.name})")


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
                 transition_layers=0):
        self.nonlinearity = nonlinearity
        self._act = activation_code(nonlinearity)
        self.transition_layers = v.check_positive_int(transition_layers, "transition_layers",
                                                      minimum=0)
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, bidirectional,
                         dtype, seed)

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

    def _layer_forward(self, layer, direction, layer_in, h0):
        sfx, p = _suffix(layer, direction), self._params
        bias = p[f"bias_ih{sfx}"] + p[f"bias_hh{sfx}"] if self.bias else None
        w_tr, b_tr = self._transition(sfx)
        return rnn_layer_forward(layer_in, p[f"weight_ih{sfx}"], p[f"weight_hh{sfx}"], bias,
                                 w_tr, b_tr, h0, self._act, reverse=bool(direction))

    def _layer_backward(self, layer, direction, layer_in, states, h0, d_out, d_hn, grads,
                        return_hidden_grads):
        sfx, p = _suffix(layer, direction), self._params
        w_tr, _ = self._transition(sfx)
        w_hh = p[f"weight_hh{sfx}"]
        g = rnn_layer_backward(layer_in, p[f"weight_ih{sfx}"], w_hh, w_tr, h0, states, d_out,
                               d_hn, self._act, reverse=bool(direction))
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
