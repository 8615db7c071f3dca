"""CUDA kernels: the GPU twins of :mod:`rnnlab.kernels.cpu`, file for file and name for name.

- :mod:`rnnlab.kernels.cuda.vanilla`: ``rnn_recurrence``, ``rnn_recurrence_backward``
  (persistent kernels, one launch per sequence pass; ``*_grid`` variants on a cooperative grid
  for large H) and the host wrappers ``rnn_layer_forward``, ``rnn_layer_backward``.
- :mod:`rnnlab.kernels.cuda.lstm`, :mod:`rnnlab.kernels.cuda.gru`: the gated cells, likewise.
- :mod:`rnnlab.kernels.cuda.jacobian`, :mod:`rnnlab.kernels.cuda.qr`,
  :mod:`rnnlab.kernels.cuda.lyapunov`: matrix-free Jacobian application, block-level QR and
  Lyapunov spectra of ensembles of networks (one block per network).
- :mod:`rnnlab.kernels.cuda.blas`: the tiled GEMMs and reductions that replace BLAS on the device.

Models and diagnostics reach these through ``backend="cuda"`` (see :mod:`rnnlab._backend`).
Nothing here is imported by ``import rnnlab``: the submodules import :mod:`numba.cuda` (the
``numba-cuda`` package) only when they are imported themselves, so rnnlab works where numba-cuda,
the CUDA toolkit or a GPU is missing. :func:`is_available` says whether the kernels can run.
"""

import importlib

#: The kernel modules, each the twin of the CPU module of the same name.
SUBMODULES = ("vanilla", "lstm", "gru", "jacobian", "qr", "lyapunov", "blas")

__all__ = ["is_available", *SUBMODULES]


def is_available():
    """True when numba-cuda is installed and a GPU (or Numba's CUDA simulator,
    ``NUMBA_ENABLE_CUDASIM=1``) can run the kernels."""
    try:
        from numba import cuda
    except ImportError:
        return False
    try:
        return bool(cuda.is_available())
    except Exception:  # noqa: BLE001 - a broken driver means "not available"
        return False


def __getattr__(name):
    # lazy submodules: ``rnnlab.kernels.cuda.vanilla`` imports numba.cuda only when asked for
    if name in SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
