"""rnnlab: gradient flow in recurrent neural networks, on Numba kernels."""

from ._version import __version__
from .layers import RNN

__all__ = ["RNN", "__version__"]
