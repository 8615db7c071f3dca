"""Gradient clipping (Pascanu, Mikolov & Bengio 2013) and the NaN/Inf guard of their code.

Pascanu et al. 2013, "On the difficulty of training recurrent neural networks", Algorithm 1
("gradient norm clipping")::

    g <- dE/dtheta
    if ||g|| >= threshold:  g <- threshold / ||g|| * g

with ``||g||`` the Euclidean norm of *all* parameters' gradients taken together. Their code
(``trainingRNNs/RNN.py``) also refuses a step whose norm is NaN, Inf or above 1e10: in float32 such
a gradient cannot be trusted, so the update is skipped (their code substitutes a small shrink
of ``W_hh``, ``0.02 W_hh``; here the caller decides, and :class:`Clipper` counts the skips).

All functions act in place on a dict of gradient arrays (the ``grads`` of
``model.loss_and_grad``) and leave the arrays' dtype unchanged.
"""

import math
from collections.abc import Mapping

import numpy as np

#: Pascanu et al.'s limit: a gradient norm above this is treated as an overflow.
SKIP_ABOVE = 1e10


def _arrays(grads):
    if not isinstance(grads, Mapping):
        raise TypeError(f"grads must be a dict of name -> ndarray, got {type(grads).__name__}")
    for name, g in grads.items():
        if not isinstance(g, np.ndarray) or g.dtype.kind != "f":
            raise TypeError(f"grads[{name!r}] must be a floating-point ndarray, got "
                            f"{type(g).__name__}"
                            + (f" of dtype {g.dtype}" if isinstance(g, np.ndarray) else ""))
    return list(grads.values())


def _check_threshold(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return value


def global_norm(grads):
    """Euclidean norm of all gradient entries together, accumulated in float64.

    Parameters
    ----------
    grads : dict of str to ndarray
        Gradient arrays (any float dtype).

    Returns
    -------
    float
        ``sqrt(sum over arrays and entries of g**2)``; NaN if any entry is NaN, Inf if any entry
        is infinite or the norm exceeds the largest float64. Finite gradients whose squares
        over- or underflow float64 (entries beyond ~1e154 or below ~1e-154) are rescaled by a
        power of two first (an exact operation), so their norm neither overflows nor loses its
        small entries.
    """
    arrays = _arrays(grads)
    norm = math.sqrt(_sum_squares(arrays, 0))
    if math.isnan(norm) or (math.isinf(norm) and any(np.isinf(g).any() for g in arrays)):
        return norm  # a NaN entry gives NaN, an Inf entry Inf (squares never cancel)
    if math.isinf(norm) or norm < 1e-140:
        # the squares over- or underflowed float64: rescale by a power of two (exact), undo after
        peak = max((float(np.abs(g).max()) for g in arrays if g.size), default=0.0)
        if peak == 0:
            return 0.0
        exponent = math.frexp(peak)[1]
        try:
            norm = math.ldexp(math.sqrt(_sum_squares(arrays, exponent)), exponent)
        except OverflowError:  # the norm itself exceeds the largest float64
            norm = math.inf
    return norm


def _sum_squares(arrays, exponent):
    """Sum of the squares of every entry of ``arrays * 2**-exponent``, in float64."""
    total = 0.0
    with np.errstate(over="ignore", under="ignore"):
        for g in arrays:
            flat = g.astype(np.float64, copy=False).ravel()
            if exponent:
                flat = np.ldexp(flat, -exponent)
            total += float(np.dot(flat, flat))
    return total


def clip_grad_norm(grads, max_norm):
    """Norm clipping (Pascanu et al. 2013, Algorithm 1), in place.

    If the global norm ``n`` of ``grads`` exceeds ``max_norm``, every array is multiplied by
    ``max_norm / n`` (computed in float64, then applied in each array's dtype), so the direction
    is kept and the new norm is ``max_norm`` (to rounding). A non-finite norm leaves the
    gradients untouched: there is no direction to keep; check it with :func:`check_step`.

    Parameters
    ----------
    grads : dict of str to ndarray
        Gradient arrays, modified in place.
    max_norm : float
        The threshold (> 0).

    Returns
    -------
    float
        The norm before clipping.
    """
    max_norm = _check_threshold(max_norm, "max_norm")
    norm = global_norm(grads)
    if math.isfinite(norm) and norm > max_norm:
        _rescale(grads, max_norm / norm)
    return norm


def _rescale(grads, scale):
    for g in grads.values():
        g *= g.dtype.type(scale)


def clip_grad_value(grads, clip_value):
    """Clip every gradient entry to ``[-clip_value, clip_value]``, in place.

    Parameters
    ----------
    grads : dict of str to ndarray
        Gradient arrays, modified in place (NaN entries stay NaN).
    clip_value : float
        The bound (> 0).

    Returns
    -------
    int
        The number of entries that were clipped.
    """
    clip_value = _check_threshold(clip_value, "clip_value")
    n_clipped = 0
    for g in _arrays(grads):
        bound = g.dtype.type(clip_value)
        n_clipped += int(np.count_nonzero(np.abs(g) > bound))
        np.clip(g, -bound, bound, out=g)
    return n_clipped


def check_step(norm, skip_above=SKIP_ABOVE):
    """Whether a step with gradient norm ``norm`` must be skipped (Pascanu et al.'s guard).

    Parameters
    ----------
    norm : float
        The global gradient norm (:func:`global_norm`).
    skip_above : float, optional
        Norms above this are treated as overflow (default 1e10, as in Pascanu et al.'s code).

    Returns
    -------
    bool
        True if ``norm`` is NaN, infinite, negative or above ``skip_above``.
    """
    skip_above = _check_threshold(skip_above, "skip_above")
    norm = float(norm)
    return not (math.isfinite(norm) and 0 <= norm <= skip_above)


class Clipper:
    """One call per training step: guard, clip, report, and count.

    Parameters
    ----------
    mode : {"norm", "value", None}, optional
        ``"norm"``: :func:`clip_grad_norm` (Pascanu et al.'s rescaling); ``"value"``:
        :func:`clip_grad_value`; ``None``: no clipping (the guard still runs).
    threshold : float, optional
        ``max_norm`` or ``clip_value`` (> 0); required unless ``mode`` is None.
    skip_above : float or None, optional
        Steps whose norm is non-finite or above this are reported ``skipped`` and their gradients
        left untouched (default 1e10); ``None`` still skips non-finite norms.

    Attributes
    ----------
    n_steps, n_clipped, n_skipped : int
        Calls so far, those whose gradient was clipped, and those to be skipped.

    Examples
    --------
    >>> clipper = Clipper("norm", 1.0)                                    # doctest: +SKIP
    >>> loss, grads = model.loss_and_grad(x, y)                          # doctest: +SKIP
    >>> info = clipper(grads)                                            # doctest: +SKIP
    >>> if not info["skipped"]:                                          # doctest: +SKIP
    ...     optimizer.step(grads)
    """

    def __init__(self, mode="norm", threshold=None, skip_above=SKIP_ABOVE):
        if mode not in ("norm", "value", None):
            raise ValueError(f"mode must be 'norm', 'value' or None, got {mode!r}")
        if mode is None:
            if threshold is not None:
                raise ValueError("threshold is given but mode is None (no clipping); pass "
                                 "mode='norm' or mode='value'")
        else:
            if threshold is None:
                raise ValueError(f"mode={mode!r} needs a threshold (> 0)")
            threshold = _check_threshold(threshold, "threshold")
        self.mode = mode
        self.threshold = threshold
        self.skip_above = (math.inf if skip_above is None
                           else _check_threshold(skip_above, "skip_above"))
        self.reset()

    def reset(self):
        """Zero the counters."""
        self.n_steps = 0
        self.n_clipped = 0
        self.n_skipped = 0

    def __call__(self, grads):
        """Guard and clip ``grads`` in place.

        Parameters
        ----------
        grads : dict of str to ndarray
            This step's gradients.

        Returns
        -------
        dict
            ``norm_before`` (float, the global norm as computed), ``norm_after`` (the norm of the
            gradient to apply; equal to ``norm_before`` when nothing was clipped or the step is
            skipped), ``skipped`` (bool: do not apply this step) and ``clipped`` (bool).
        """
        norm = global_norm(grads)
        self.n_steps += 1
        skipped = not (math.isfinite(norm) and norm <= self.skip_above)
        clipped = False
        norm_after = norm
        if skipped:
            self.n_skipped += 1
        elif self.mode == "norm":
            if norm > self.threshold:
                _rescale(grads, self.threshold / norm)
                clipped = True
                norm_after = global_norm(grads)
        elif self.mode == "value":
            clipped = clip_grad_value(grads, self.threshold) > 0
            if clipped:
                norm_after = global_norm(grads)
        self.n_clipped += clipped
        return {"norm_before": norm, "norm_after": norm_after, "skipped": skipped,
                "clipped": clipped}

    def stats(self):
        """The counters as a dict: ``steps``, ``clipped``, ``skipped``."""
        return {"steps": self.n_steps, "clipped": self.n_clipped, "skipped": self.n_skipped}

    def __repr__(self):
        return (f"Clipper(mode={self.mode!r}, threshold={self.threshold!r}, "
                f"skip_above={self.skip_above!r}; steps={self.n_steps}, "
                f"clipped={self.n_clipped}, skipped={self.n_skipped})")
