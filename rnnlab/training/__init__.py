"""Training: optimisers and initialisers (more in the training issue: clipping,
truncated/checkpointed BPTT)."""

from .initializers import forget_bias_, gaussian_, identity_, initialize, orthogonal_
from .optimizers import SGD

__all__ = ["SGD", "forget_bias_", "gaussian_", "identity_", "initialize", "orthogonal_"]
