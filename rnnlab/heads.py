"""Output heads: ŷ<t> = g(W_ya a<t> + b_y), optionally through a deep output MLP.

A head maps hidden states of any leading shape ``(..., in_features)`` to logits
``(..., out_features)``. The output activation is applied separately (:meth:`OutputHead.activate`)
so that the losses can work from logits, which is numerically stable.
"""

import numpy as np

from . import _validation as v
from .activations import activation_code

OUTPUT_ACTIVATIONS = ("sigmoid", "softmax", "linear")


def _sigmoid(z):
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    e = np.exp(z[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


_HIDDEN = {
    "tanh": (np.tanh, lambda a: 1 - a * a),
    "relu": (lambda z: np.maximum(z, 0), lambda a: (a > 0).astype(a.dtype)),
    "sigmoid": (_sigmoid, lambda a: a * (1 - a)),
    "linear": (lambda z: z, np.ones_like),
}


class OutputHead:
    """Affine read-out ``logits = W_ya a + b_y``, with optional hidden layers (deep output).

    Parameters
    ----------
    in_features : int
        Width of the hidden state read (``num_directions * hidden_size`` for a bidirectional
        network).
    out_features : int
        Output units.
    activation : {"sigmoid", "softmax", "linear"}, optional
        Output activation ``g`` giving ŷ from the logits.
    hidden_sizes : sequence of int, optional
        Widths of the deep output's hidden layers (Pascanu et al. 2014); empty for the plain
        affine read-out.
    hidden_activation : {"tanh", "relu", "sigmoid", "linear"}, optional
        Activation of the hidden layers.
    dtype : {numpy.float32, numpy.float64}, optional
        Precision.
    seed : int, optional
        Seed of PyTorch's ``nn.Linear`` initialisation, U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    Notes
    -----
    Parameters are ``weight_0, bias_0, ..., weight_K, bias_K`` with ``K = len(hidden_sizes)``;
    ``weight_K`` is the read-out ``W_ya``.
    """

    def __init__(self, in_features, out_features, activation="sigmoid", hidden_sizes=(),
                 hidden_activation="tanh", dtype=np.float32, seed=None):
        self.in_features = v.check_positive_int(in_features, "in_features")
        self.out_features = v.check_positive_int(out_features, "out_features")
        if activation not in OUTPUT_ACTIVATIONS:
            raise ValueError(f"activation must be one of {list(OUTPUT_ACTIVATIONS)}, got "
                             f"{activation!r}")
        self.activation = activation
        self.hidden_sizes = tuple(v.check_positive_int(n, "hidden_sizes[i]")
                                  for n in hidden_sizes)
        activation_code(hidden_activation, "hidden_activation")
        self.hidden_activation = hidden_activation
        self.dtype = v.check_dtype(dtype)
        self.reset_parameters(seed)

    def _shapes(self):
        widths = (self.in_features,) + self.hidden_sizes + (self.out_features,)
        shapes = {}
        for k in range(len(widths) - 1):
            shapes[f"weight_{k}"] = (widths[k + 1], widths[k])
            shapes[f"bias_{k}"] = (widths[k + 1],)
        return shapes

    def reset_parameters(self, seed=None):
        """Draw parameters as ``torch.nn.Linear`` does: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
        rng = np.random.default_rng(seed)
        self._params = {}
        for name, shape in self._shapes().items():
            fan_in = self._shapes()[name.replace("bias", "weight")][1]
            bound = 1.0 / np.sqrt(fan_in)
            self._params[name] = rng.uniform(-bound, bound, size=shape).astype(self.dtype)

    def parameters(self):
        """The live parameter arrays by name."""
        return self._params

    def state_dict(self):
        """A copy of the parameters."""
        return {k: a.copy() for k, a in self._params.items()}

    def load_state_dict(self, state_dict):
        """Load parameters; a missing, extra, mis-shaped or non-finite entry raises ValueError."""
        expected = self._shapes()
        missing = [k for k in expected if k not in state_dict]
        unexpected = [k for k in state_dict if k not in expected]
        if missing or unexpected:
            raise ValueError(f"state_dict does not match OutputHead: missing {missing}, "
                             f"unexpected {unexpected}")
        new = {}
        for name, shape in expected.items():
            arr = np.ascontiguousarray(v.to_numpy(state_dict[name], name), dtype=self.dtype)
            if arr.shape != shape:
                raise ValueError(f"state_dict[{name!r}] must have shape {shape}, got {arr.shape}")
            if not np.isfinite(arr).all():
                raise ValueError(f"state_dict[{name!r}] contains NaN or Inf values")
            new[name] = arr
        self._params = new

    def forward(self, a):
        """Logits of hidden states ``a`` of shape ``(..., in_features)``.

        Returns
        -------
        logits : ndarray
            ``(..., out_features)``.
        cache : list of ndarray
            The input of every affine layer, for :meth:`backward`.
        """
        a = v.check_float_array(a, "a", self.dtype)
        if a.ndim < 1 or a.shape[-1] != self.in_features:
            raise ValueError(f"a must have last dimension in_features = {self.in_features}, "
                             f"got shape {a.shape}")
        g = _HIDDEN[self.hidden_activation][0]
        cache = [a]
        h = a
        n_layers = len(self.hidden_sizes) + 1
        for k in range(n_layers):
            z = h @ self._params[f"weight_{k}"].T + self._params[f"bias_{k}"]
            h = g(z) if k < n_layers - 1 else z
            if k < n_layers - 1:
                cache.append(h)
        return h, cache

    def activate(self, logits):
        """ŷ = g(logits): sigmoid, softmax over the last axis, or the identity."""
        if self.activation == "sigmoid":
            return _sigmoid(logits)
        if self.activation == "softmax":
            return _softmax(logits)
        return logits

    def backward(self, cache, d_logits):
        """Gradients of every parameter and of the input, given dL/dlogits.

        Returns
        -------
        dict of str to ndarray
            ``weight_k``, ``bias_k`` and ``"input"`` (shaped like the head's input).
        """
        d_prime = _HIDDEN[self.hidden_activation][1]
        grads = {}
        d = np.asarray(d_logits, dtype=self.dtype)
        for k in range(len(self.hidden_sizes), -1, -1):
            h_in = cache[k]
            w = self._params[f"weight_{k}"]
            grads[f"weight_{k}"] = d.reshape(-1, d.shape[-1]).T @ h_in.reshape(-1, h_in.shape[-1])
            grads[f"bias_{k}"] = d.reshape(-1, d.shape[-1]).sum(axis=0, dtype=np.float64).astype(
                self.dtype)
            d = d @ w
            if k > 0:
                d = d * d_prime(h_in)
        grads["input"] = d
        return grads
