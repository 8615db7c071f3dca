"""Initialisers for the remedies: orthogonal, identity (IRNN), Gaussian with a gain, forget bias.

Each acts in place on a recurrent layer (:class:`rnnlab.RNN`, :class:`rnnlab.LSTM`,
:class:`rnnlab.GRU`) and on every layer and direction; gated cells get one ``H x H`` block per
gate. :func:`initialize` applies a named scheme, as the experiment grids name them.
"""

import numpy as np

RECURRENT_INITS = ("uniform", "orthogonal", "identity", "gaussian")


def _blocks(layer):
    """Yield ``(suffix, W_hh, [H x H gate blocks])`` for every layer and direction."""
    H = layer.hidden_size
    for name, w in layer.parameters().items():
        if name.startswith("weight_hh"):
            yield name[len("weight_hh"):], w, [w[g * H:(g + 1) * H] for g in range(w.shape[0] // H)]


def _check_gain(gain):
    if not np.isfinite(gain) or gain < 0:
        raise ValueError(f"gain must be a finite number >= 0, got {gain!r}")
    return float(gain)


def orthogonal_(layer, gain=1.0, seed=None):
    """Recurrent weights ``gain * Q`` with ``Q`` a random orthogonal matrix (per gate block).

    Parameters
    ----------
    layer : RecurrentLayer
        Modified in place.
    gain : float
        Scale: every singular value of each block equals ``gain``.
    seed : int or numpy.random.Generator, optional
        Seed.
    """
    gain = _check_gain(gain)
    rng = np.random.default_rng(seed)
    for _, _, blocks in _blocks(layer):
        for block in blocks:
            q, r = np.linalg.qr(rng.standard_normal(block.shape))
            q *= np.sign(np.diag(r))  # Haar-distributed (Mezzadri 2007)
            block[...] = gain * q


def identity_(layer, gain=1.0):
    """IRNN (Le et al. 2015): ``W_hh = gain * I`` and zero biases (use with ``relu``).

    Parameters
    ----------
    layer : RecurrentLayer
        Modified in place.
    gain : float
        Diagonal value (Le et al. use 1; ``np-RNN`` variants use smaller).
    """
    gain = _check_gain(gain)
    for _, _, blocks in _blocks(layer):
        for block in blocks:
            block[...] = gain * np.eye(block.shape[0], dtype=block.dtype)
    for name, b in layer.parameters().items():
        if name.startswith("bias"):
            b[...] = 0


def gaussian_(layer, gain=1.0, seed=None):
    """Recurrent weights from N(0, gain^2 / H): the random-network ensemble whose transition to
    chaos sits at ``gain = 1`` for tanh (Sompolinsky et al. 1988).

    Parameters
    ----------
    layer : RecurrentLayer
        Modified in place.
    gain : float
        The gain ``g``.
    seed : int or numpy.random.Generator, optional
        Seed.
    """
    gain = _check_gain(gain)
    rng = np.random.default_rng(seed)
    for _, _, blocks in _blocks(layer):
        for block in blocks:
            block[...] = rng.normal(0.0, gain / np.sqrt(block.shape[1]), size=block.shape)


def forget_bias_(layer, value=1.0):
    """Set the LSTM forget-gate bias (Jozefowicz et al. 2015 recommend 1).

    The effective bias is ``b_ih + b_hh``: the forget block of ``bias_ih`` is set to ``value``
    and that of ``bias_hh`` to 0, so the gate starts at ``sigmoid(value + W x + W h)``.

    Parameters
    ----------
    layer : LSTM
        Modified in place.
    value : float
        The bias.
    """
    if getattr(layer, "gate_count", 1) != 4:
        raise TypeError(f"forget_bias_ needs an LSTM, got {type(layer).__name__}")
    if not layer.bias:
        raise ValueError("forget_bias_ needs an LSTM built with bias=True")
    if not np.isfinite(value):
        raise ValueError(f"value must be finite, got {value!r}")
    H = layer.hidden_size
    for name, b in layer.parameters().items():
        if name.startswith("bias_ih"):
            b[H:2 * H] = value
        elif name.startswith("bias_hh"):
            b[H:2 * H] = 0


def initialize(layer, recurrent="uniform", gain=1.0, forget_bias=None, seed=None):
    """Apply a named initialisation scheme to a recurrent layer, in place.

    Parameters
    ----------
    layer : RecurrentLayer
        RNN, LSTM or GRU.
    recurrent : {"uniform", "orthogonal", "identity", "gaussian"}
        Scheme of the recurrent weights; ``"uniform"`` redraws every parameter from PyTorch's
        U(-1/sqrt(H), 1/sqrt(H)) and then scales ``W_hh`` by ``gain``.
    gain : float
        Scale of the recurrent weights.
    forget_bias : float, optional
        LSTM only: the forget-gate bias.
    seed : int, optional
        Seed.

    Returns
    -------
    layer
        The same layer, for chaining.
    """
    if recurrent not in RECURRENT_INITS:
        raise ValueError(f"recurrent must be one of {list(RECURRENT_INITS)}, got {recurrent!r}")
    gain = _check_gain(gain)
    if recurrent == "uniform":
        layer.reset_parameters(seed)
        for _, w, _ in _blocks(layer):
            w *= w.dtype.type(gain)
    elif recurrent == "orthogonal":
        orthogonal_(layer, gain, seed)
    elif recurrent == "identity":
        if getattr(layer, "gate_count", 1) != 1:
            raise ValueError("recurrent='identity' (IRNN) is defined for the vanilla RNN")
        identity_(layer, gain)
    else:
        gaussian_(layer, gain, seed)
    if forget_bias is not None:
        forget_bias_(layer, forget_bias)
    return layer
