"""The gated cells, LSTM and GRU, with PyTorch's interface and gate order.

They share :class:`rnnlab.layers.RecurrentLayer` with the vanilla RNN (layouts, stacking,
directions, state_dict); only the cell's parameters and kernels differ.
"""

from .layers import RecurrentLayer, _suffix


def _gated_param_shapes(net, layer, direction):
    G, H, sfx = net.gate_count, net.hidden_size, _suffix(layer, direction)
    shapes = {f"weight_ih{sfx}": (G * H, net._layer_input_size(layer)),
              f"weight_hh{sfx}": (G * H, H)}
    if net.bias:
        shapes[f"bias_ih{sfx}"] = (G * H,)
        shapes[f"bias_hh{sfx}"] = (G * H,)
    return shapes


class LSTM(RecurrentLayer):
    """Long short-term memory with PyTorch's interface and gate order (i, f, g, o)::

        [i, f, g, o] = [σ, σ, tanh, σ](W_ih x<t> + b_ih + W_hh h<t-1> + b_hh)
        c<t> = f * c<t-1> + i * g,    h<t> = o * tanh(c<t>)

    Parameters
    ----------
    input_size : int
        Features of ``x<t>``.
    hidden_size : int
        Units ``H`` of each layer.
    num_layers : int, optional
        Stacked layers (each reads the one below; directions concatenated).
    bias : bool, optional
        Use ``b_ih`` and ``b_hh``.
    batch_first : bool, optional
        Input and output are ``(B, T, features)``.
    bidirectional : bool, optional
        Add a second LSTM per layer reading the sequence backwards; outputs are concatenated
        ``[forward, backward]`` per step.
    dtype : {numpy.float32, numpy.float64}, optional
        Precision of parameters, inputs and kernels.
    seed : int, optional
        Seed of the U(-1/sqrt(H), 1/sqrt(H)) initialisation.
    backend : {None, "cpu", "cuda"}, optional
        Where the kernels run (see :class:`rnnlab.RNN`).

    Notes
    -----
    Parameters are ``weight_ih_l{l}`` ``(4H, I_l)``, ``weight_hh_l{l}`` ``(4H, H)``,
    ``bias_ih_l{l}``, ``bias_hh_l{l}`` ``(4H,)`` (``_reverse`` for the backward direction), the
    four gate blocks stacked i, f, g, o as in ``torch.nn.LSTM``. The state is the pair
    ``(h, c)`` everywhere PyTorch uses it: ``hx=(h0, c0)`` in, ``(h_n, c_n)`` out.

    Examples
    --------
    >>> import numpy as np, rnnlab
    >>> net = rnnlab.LSTM(3, 8, num_layers=2, seed=0)
    >>> x = np.zeros((5, 2, 3), dtype=np.float32)
    >>> out, (h_n, c_n) = net(x)
    >>> out.shape, h_n.shape, c_n.shape
    ((5, 2, 8), (2, 2, 8), (2, 2, 8))
    """

    gate_count = 4
    _state_names = ("h0", "c0")
    _final_grad_names = ("d_hn", "d_cn")

    def _cell_param_shapes(self, layer, direction):
        return _gated_param_shapes(self, layer, direction)

    @staticmethod
    def _split_hx(hx, name="hx"):
        """``(h0, c0)`` from the user's ``hx`` (``None`` -> zeros for both)."""
        if hx is None:
            return None, None
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise TypeError(f"{name} must be a tuple (h0, c0) of two arrays of shape "
                            f"(num_layers * num_directions, B, hidden_size), or None; got "
                            + (f"a {type(hx).__name__} of length {len(hx)}"
                               if isinstance(hx, (tuple, list)) else type(hx).__name__))
        h0, c0 = hx
        if h0 is None or c0 is None:
            raise TypeError(f"{name} must give both h0 and c0 (or be None for zeros), got "
                            f"{'h0' if h0 is None else 'c0'} = None")
        return h0, c0

    def forward(self, x, hx=None):
        """Run the network over a sequence.

        Parameters
        ----------
        x : array_like
            ``(T, B, input_size)``, ``(B, T, input_size)`` with ``batch_first``, or
            ``(T, input_size)`` unbatched; the model's dtype.
        hx : tuple of array_like, optional
            ``(h0, c0)``, each ``(num_layers * num_directions, B, hidden_size)``
            (``(num_layers * num_directions, hidden_size)`` unbatched); zeros if omitted.

        Returns
        -------
        output : ndarray
            ``(T, B, num_directions * hidden_size)`` in the input's layout: the top layer's
            hidden states, directions concatenated.
        (h_n, c_n) : tuple of ndarray
            Every layer's final hidden and cell states, each shaped like ``h0``.
        """
        return self._forward_only(x, self._split_hx(hx))

    def forward_with_cache(self, x, hx=None):
        """:meth:`forward`, also returning what :meth:`backward_from_cache` needs.

        Returns
        -------
        output, (h_n, c_n)
            As :meth:`forward`.
        cache : dict
            Inputs and per-layer states kept for backpropagation.
        """
        output, (h_n, c_n), cache = self._forward_states(x, self._split_hx(hx))
        return output, (h_n, c_n), cache

    def backward(self, x, d_output=None, hx=None, d_hn=None, d_cn=None):
        """Exact gradients by backpropagation through time.

        The loss is taken as ``sum(output * d_output) + sum(h_n * d_hn) + sum(c_n * d_cn)``.

        Parameters
        ----------
        x : array_like
            The input, as for :meth:`forward`.
        d_output : array_like, optional
            Gradient with respect to ``output`` (same shape); zeros if omitted.
        hx : tuple of array_like, optional
            ``(h0, c0)``, as for :meth:`forward`.
        d_hn, d_cn : array_like, optional
            Gradients with respect to ``h_n`` and ``c_n``; zeros if omitted.

        Returns
        -------
        dict of str to ndarray
            The gradient of every parameter under its state_dict name, plus ``"input"`` (shaped
            like ``x``), ``"h0"`` and ``"c0"`` (shaped like ``h_n``).
        """
        return self._backward_states(x, self._split_hx(hx), d_output, (d_hn, d_cn))

    def backward_from_cache(self, cache, d_output=None, d_hn=None, d_cn=None,
                            return_hidden_grads=False):
        """Backpropagate from a cache returned by :meth:`forward_with_cache`.

        Parameters
        ----------
        cache : dict
            From :meth:`forward_with_cache` on this model.
        d_output, d_hn, d_cn : array_like, optional
            As in :meth:`backward`.
        return_hidden_grads : bool
            Also return ``"hidden" + suffix`` (e.g. ``"hidden_l0"``, ``"hidden_l0_reverse"``),
            the total gradient dL/dh<t> of every layer's hidden state, and ``"cell" + suffix``,
            the total dL/dc<t> of its cell state, each ``(T, B, H)`` time-major.

        Returns
        -------
        dict of str to ndarray
            As :meth:`backward`.
        """
        return self._backward_from_cache_states(cache, d_output, (d_hn, d_cn),
                                                return_hidden_grads)

    def step(self, x_t, hx=None):
        """Advance a unidirectional network by one time step (streaming, real-time use).

        Parameters
        ----------
        x_t : array_like
            One step of input, ``(B, input_size)`` or ``(input_size,)``.
        hx : tuple of array_like, optional
            ``(h, c)`` after the previous step, each ``(num_layers, B, hidden_size)`` (or
            ``(num_layers, hidden_size)``); zeros if omitted.

        Returns
        -------
        y_t : ndarray
            The top layer's hidden state after this step, ``(B, hidden_size)``.
        (h, c) : tuple of ndarray
            The new state, to pass to the next call.
        """
        return self._step(x_t, hx)

    def _layer_output(self, states):
        return states["hidden"]

    def _layer_final(self, states, direction):
        t = 0 if direction else states["hidden"].shape[0] - 1
        return states["hidden"][t], states["cells"][t]

    def _layer_forward(self, layer, direction, layer_in, init, alloc):
        sfx, p = _suffix(layer, direction), self._params
        bias = p[f"bias_ih{sfx}"] + p[f"bias_hh{sfx}"] if self.bias else None
        return self._kernels("lstm").lstm_layer_forward(
            layer_in, p[f"weight_ih{sfx}"], p[f"weight_hh{sfx}"], bias, init[0], init[1],
            reverse=bool(direction), **self._kernel_kwargs(alloc))

    def _layer_backward(self, layer, direction, layer_in, states, init, d_out, d_final, grads,
                        return_hidden_grads, alloc, consume=False):
        sfx, p = _suffix(layer, direction), self._params
        g = self._kernels("lstm").lstm_layer_backward(
            layer_in, p[f"weight_ih{sfx}"], p[f"weight_hh{sfx}"], init[0], init[1], states, d_out,
            d_final[0], d_final[1], reverse=bool(direction), hidden_grads=return_hidden_grads,
            overwrite_states=consume, **self._kernel_kwargs(alloc))
        grads[f"weight_ih{sfx}"] = g["weight_ih"]
        grads[f"weight_hh{sfx}"] = g["weight_hh"]
        if self.bias:
            grads[f"bias_ih{sfx}"] = g["bias"]
            grads[f"bias_hh{sfx}"] = g["bias"].copy()
        if return_hidden_grads:
            grads[f"hidden{sfx}"] = g["hidden"]
            grads[f"cell{sfx}"] = g["cell"]
        return g


class GRU(RecurrentLayer):
    """Gated recurrent unit with PyTorch's interface and gate order (r, z, n)::

        r = σ(W_ir x<t> + b_ir + W_hr h<t-1> + b_hr)
        z = σ(W_iz x<t> + b_iz + W_hz h<t-1> + b_hz)
        n = tanh(W_in x<t> + b_in + r * (W_hn h<t-1> + b_hn))
        h<t> = (1 - z) * n + z * h<t-1>

    Parameters
    ----------
    input_size, hidden_size, num_layers, bias, batch_first, bidirectional, dtype, seed, backend
        As for :class:`LSTM`.

    Notes
    -----
    Parameters are ``weight_ih_l{l}`` ``(3H, I_l)``, ``weight_hh_l{l}`` ``(3H, H)``,
    ``bias_ih_l{l}``, ``bias_hh_l{l}`` ``(3H,)``, blocks stacked r, z, n as in
    ``torch.nn.GRU``. Forward, backward and streaming calls are the :class:`RNN`'s.

    Examples
    --------
    >>> import numpy as np, rnnlab
    >>> net = rnnlab.GRU(3, 8, bidirectional=True, seed=0)
    >>> out, h_n = net(np.zeros((5, 2, 3), dtype=np.float32))
    >>> out.shape, h_n.shape
    ((5, 2, 16), (2, 2, 8))
    """

    gate_count = 3

    def _cell_param_shapes(self, layer, direction):
        return _gated_param_shapes(self, layer, direction)

    def _layer_output(self, states):
        return states["hidden"]

    def _layer_forward(self, layer, direction, layer_in, init, alloc):
        sfx, p = _suffix(layer, direction), self._params
        b_ih = p[f"bias_ih{sfx}"] if self.bias else None
        b_hh = p[f"bias_hh{sfx}"] if self.bias else None
        return self._kernels("gru").gru_layer_forward(
            layer_in, p[f"weight_ih{sfx}"], p[f"weight_hh{sfx}"], b_ih, b_hh, init[0],
            reverse=bool(direction), **self._kernel_kwargs(alloc))

    def _layer_backward(self, layer, direction, layer_in, states, init, d_out, d_final, grads,
                        return_hidden_grads, alloc, consume=False):
        sfx, p = _suffix(layer, direction), self._params
        g = self._kernels("gru").gru_layer_backward(
            layer_in, p[f"weight_ih{sfx}"], p[f"weight_hh{sfx}"], init[0], states, d_out,
            d_final[0], reverse=bool(direction), hidden_grads=return_hidden_grads,
            **self._kernel_kwargs(alloc))
        grads[f"weight_ih{sfx}"] = g["weight_ih"]
        grads[f"weight_hh{sfx}"] = g["weight_hh"]
        if self.bias:
            grads[f"bias_ih{sfx}"] = g["bias_ih"]
            grads[f"bias_hh{sfx}"] = g["bias_hh"]
        if return_hidden_grads:
            grads[f"hidden{sfx}"] = g["hidden"]
        return g
