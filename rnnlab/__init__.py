"""rnnlab: gradient flow in recurrent neural networks, on Numba kernels."""

import os

# Numba's OpenMP workers (GNU libgomp) spin for up to 300,000 iterations after every parallel
# region before sleeping, and so hold a core while the BLAS products that follow a recurrence
# run: measured here (2 cores, tanh RNN, T = 1000, B = 32, H = 64) backward took 51 ms with the
# default and 27 ms with 10,000. Read once, when Numba first starts its thread pool; a value set
# by the user wins.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

# before any kernel is decorated: cached kernels keyed on every compiled module (_cache.py)
from . import _cache

_cache.install()

from ._backend import BackendUnavailableError, default_backend
from ._scratch import release_scratch
from ._version import __version__
from .gated import GRU, LSTM
from .layers import RNN

__all__ = ["RNN", "LSTM", "GRU", "BackendUnavailableError", "default_backend", "release_scratch",
           "__version__"]
