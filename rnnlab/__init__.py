"""rnnlab: gradient flow in recurrent neural networks, on Numba kernels."""

from ._backend import BackendUnavailableError, default_backend
from ._version import __version__
from .gated import GRU, LSTM
from .layers import RNN

__all__ = ["RNN", "LSTM", "GRU", "BackendUnavailableError", "default_backend", "__version__"]
