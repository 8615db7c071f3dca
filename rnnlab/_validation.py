"""Argument checks shared by the public API: every error names the argument and what was expected,
and is raised before any kernel runs."""

import numbers

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def check_dtype(dtype, name="dtype"):
    """Return ``dtype`` as a NumPy dtype, which must be float32 or float64."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be numpy.float32 or numpy.float64, got {dtype!r}")
    return dt


def check_positive_int(value, name, minimum=1):
    """Return ``value`` as an int, requiring an integer >= ``minimum`` (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def to_numpy(value, name):
    """Convert ``value`` to a NumPy array without importing any framework.

    Accepts NumPy arrays, anything ``np.asarray`` understands (lists, objects with
    ``__array__``), and tensors exposing ``.detach().cpu().numpy()`` (PyTorch).
    """
    if isinstance(value, np.ndarray):
        return value
    detach = getattr(value, "detach", None)
    if callable(detach):
        value = detach()
        cpu = getattr(value, "cpu", None)
        if callable(cpu):
            value = cpu()
        to_np = getattr(value, "numpy", None)
        if callable(to_np):
            return np.asarray(to_np())
    try:
        return np.asarray(value)
    except Exception as exc:  # noqa: BLE001 - report what could not be converted
        raise TypeError(f"{name} could not be converted to a NumPy array: {exc}") from exc


def check_float_array(value, name, dtype, shape=None, finite=True):
    """Return ``value`` as a C-contiguous array of ``dtype``, validating it.

    Parameters
    ----------
    value : array_like
        The argument.
    name : str
        The argument's name, used in error messages.
    dtype : numpy.dtype
        The model's dtype; a floating array of another precision is refused (as in PyTorch)
        rather than silently converted.
    shape : tuple, optional
        Expected shape; ``None`` skips the check.
    finite : bool
        Refuse NaN and Inf.
    """
    arr = to_numpy(value, name)
    if arr.dtype.kind not in "f":
        raise TypeError(
            f"{name} must be a floating-point array of dtype {dtype.name}, got dtype {arr.dtype}"
        )
    if arr.dtype != dtype:
        raise TypeError(
            f"{name} has dtype {arr.dtype} but the model's dtype is {dtype.name}; convert it with "
            f".astype(np.{dtype.name}) or build the model with dtype=np.{arr.dtype.name}"
        )
    if shape is not None and arr.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {arr.shape}")
    if finite and not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or Inf values")
    return np.ascontiguousarray(arr)
