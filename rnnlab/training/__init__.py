"""Training: optimisers (more in the training issue: clipping, truncated/checkpointed BPTT)."""

from .optimizers import SGD

__all__ = ["SGD"]
