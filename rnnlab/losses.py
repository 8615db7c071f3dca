"""Per-step losses summed over time, each returning the loss and its gradient.

The seed's loss is binary cross-entropy summed over time steps,
``L = sum_t [-y<t> log ŷ<t> - (1 - y<t>) log(1 - ŷ<t>)]``, computed here from the logits
(``ŷ = sigmoid(l)``) so that it never takes the log of 0. Every loss is a plain sum over all
leading axes (time, batch) and output units; a per-step ``mask`` of shape ``logits.shape[:-1]``
weights (usually 0/1) each step, for sequences whose targets exist only at some steps.
"""

import numpy as np


def _mask(mask, shape, dtype):
    """The mask as an array of ``shape[:-1] + (1,)`` (broadcast over output units)."""
    if mask is None:
        return None
    m = np.asarray(mask)
    if m.dtype.kind not in "biuf":
        raise TypeError(f"mask must be boolean or numeric, got dtype {m.dtype}")
    if m.shape != tuple(shape[:-1]):
        raise ValueError(f"mask must have shape {tuple(shape[:-1])} (one weight per step and "
                         f"sequence), got {m.shape}")
    if not np.isfinite(m).all():
        raise ValueError("mask contains NaN or Inf values")
    return m.astype(dtype)[..., None]


def _check_pair(pred, target, name_pred, name_target):
    pred = np.asarray(pred)
    target = np.asarray(target)
    if pred.dtype.kind != "f":
        raise TypeError(f"{name_pred} must be a floating-point array, got dtype {pred.dtype}")
    if target.shape != pred.shape:
        raise ValueError(f"{name_target} must have the shape of {name_pred} {pred.shape}, got "
                         f"{target.shape}")
    if not (np.isfinite(pred).all() and np.isfinite(target).all()):
        raise ValueError(f"{name_pred} and {name_target} must be finite")
    return pred, target.astype(pred.dtype)


def bce_with_logits(logits, target, mask=None):
    """Binary cross-entropy of ``sigmoid(logits)`` against ``target``, summed.

    Parameters
    ----------
    logits : ndarray
        ``(..., K)`` pre-sigmoid outputs, e.g. ``(T, B, K)``.
    target : ndarray
        Same shape, values in [0, 1].
    mask : ndarray, optional
        ``logits.shape[:-1]`` step weights.

    Returns
    -------
    loss : float
        ``sum mask * [max(l, 0) - l*y + log(1 + exp(-|l|))]``, which equals the seed's
        ``-y log ŷ - (1 - y) log(1 - ŷ)``.
    d_logits : ndarray
        ``mask * (sigmoid(l) - y)``.
    """
    logits, target = _check_pair(logits, target, "logits", "target")
    if ((target < 0) | (target > 1)).any():
        raise ValueError("target of bce_with_logits must lie in [0, 1]")
    m = _mask(mask, logits.shape, logits.dtype)
    terms = np.maximum(logits, 0) - logits * target + np.log1p(np.exp(-np.abs(logits)))
    e = np.exp(-np.abs(logits))
    prob = np.where(logits >= 0, 1 / (1 + e), e / (1 + e))
    grad = prob - target
    if m is not None:
        terms = terms * m
        grad = grad * m
    return float(terms.sum(dtype=np.float64)), grad.astype(logits.dtype)


def cross_entropy(logits, target, mask=None):
    """Softmax cross-entropy, summed over steps and sequences.

    Parameters
    ----------
    logits : ndarray
        ``(..., C)`` unnormalised class scores.
    target : ndarray
        Integer class indices of shape ``logits.shape[:-1]``, or class probabilities shaped
        like ``logits``.
    mask : ndarray, optional
        ``logits.shape[:-1]`` step weights.

    Returns
    -------
    loss : float
        ``-sum mask * sum_c target_c log softmax(logits)_c``.
    d_logits : ndarray
        ``mask * (softmax(logits) * sum_c target_c - target)``, i.e.
        ``mask * (softmax(logits) - target)`` when each target row sums to 1.
    """
    logits = np.asarray(logits)
    target = np.asarray(target)
    if target.dtype.kind in "iu":
        if target.shape != logits.shape[:-1]:
            raise ValueError(f"target of class indices must have shape {logits.shape[:-1]}, "
                             f"got {target.shape}")
        n_classes = logits.shape[-1]
        if target.size and (target.min() < 0 or target.max() >= n_classes):
            raise ValueError(f"target class indices must lie in [0, {n_classes - 1}]")
        target = np.eye(n_classes, dtype=logits.dtype)[target]
    logits, target = _check_pair(logits, target, "logits", "target")
    m = _mask(mask, logits.shape, logits.dtype)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_z = np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    log_p = shifted - log_z
    terms = -(target * log_p)
    grad = np.exp(log_p) * target.sum(axis=-1, keepdims=True) - target
    if m is not None:
        terms = terms * m
        grad = grad * m
    return float(terms.sum(dtype=np.float64)), grad.astype(logits.dtype)


def mse(pred, target, mask=None):
    """Squared error ``sum mask * (pred - target)**2`` (summed, not averaged).

    Returns
    -------
    loss : float
    d_pred : ndarray
        ``2 * mask * (pred - target)``.
    """
    pred, target = _check_pair(pred, target, "pred", "target")
    m = _mask(mask, pred.shape, pred.dtype)
    diff = pred - target
    terms = diff * diff
    grad = 2 * diff
    if m is not None:
        terms = terms * m
        grad = grad * m
    return float(terms.sum(dtype=np.float64)), grad.astype(pred.dtype)


#: Loss name -> (function, output activation it is computed through).
LOSSES = {
    "bce": (bce_with_logits, "sigmoid"),
    "cross_entropy": (cross_entropy, "softmax"),
    "mse": (mse, None),
}
