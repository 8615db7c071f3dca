"""Training: optimisers and initialisers (more in the training issue: clipping,
truncated/checkpointed BPTT)."""

from .initializers import forget_bias_, gaussian_, identity_, initialize, orthogonal_
from .optimizers import SGD

__all__ = ["SGD", "forget_bias_", "gaussian_", "identity_", "initialize", "orthogonal_"]

from .bptt import checkpointed_bptt, full_bptt, truncated_bptt, truncated_bptt_sum  # noqa: E402

__all__ += ["checkpointed_bptt", "full_bptt", "truncated_bptt", "truncated_bptt_sum"]

from .clipping import (  # noqa: E402
    Clipper, check_step, clip_grad_norm, clip_grad_value, global_norm)
from .optimizers import (  # noqa: E402
    Adam, CosineAnnealingLR, ExponentialLR, LRScheduler, Optimizer, RMSprop, StepLR)
from .tasks import (  # noqa: E402
    TASKS, AddingProblem, CopyMemory, MelodyGeneration, Task, TemporalOrder, make_task)

__all__ += ["Adam", "AddingProblem", "Clipper", "CopyMemory", "CosineAnnealingLR",
            "ExponentialLR", "LRScheduler", "MelodyGeneration", "Optimizer", "RMSprop", "StepLR",
            "TASKS", "Task", "TemporalOrder", "check_step", "clip_grad_norm", "clip_grad_value",
            "global_norm", "make_task"]

from .trainer import OPTIMIZERS, TrainResult, Trainer, spectral_radius  # noqa: E402

__all__ += ["OPTIMIZERS", "TrainResult", "Trainer", "spectral_radius"]
