"""Shared test helpers: central finite differences in float64.

The whole suite runs on the CUDA kernels with ``RNNLAB_BACKEND=cuda`` (every model built without
an explicit ``backend`` then uses them): on a GPU, or in Numba's simulator with
``NUMBA_ENABLE_CUDASIM=1`` (slow: tiny sizes only). The header of the run names the backend.
"""

import numpy as np
import pytest


def numerical_gradient(f, arr, eps=1e-5):
    """Central differences of the scalar ``f()`` with respect to every entry of ``arr``,
    perturbed in place (and restored)."""
    grad = np.empty(arr.shape, dtype=np.float64)
    for idx in np.ndindex(arr.shape):
        old = arr[idx]
        arr[idx] = old + eps
        up = f()
        arr[idx] = old - eps
        down = f()
        arr[idx] = old
        grad[idx] = (up - down) / (2 * eps)
    return grad


def relative_error(numeric, analytic, floor=1e-4):
    """max |numeric - analytic| / max |numeric|.

    The scale is floored at ``floor``: a gradient that has decayed to ~1e-7 (deep relu stacks)
    is below the finite differences' own round-off (~1e-10 absolute), so it is held to an
    absolute error of ``floor * tol`` instead."""
    scale = max(np.abs(numeric).max(), floor)
    return np.abs(np.asarray(analytic) - numeric).max() / scale


def pytest_report_header(config):
    from rnnlab import default_backend

    return f"rnnlab backend: {default_backend()}"


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
