"""The training loop: a model, a task, an optimiser, clipping and a BPTT variant, with per-step
logs, evaluation on fresh sequences, early stopping at the task's success criterion, and
divergence recorded as a result (never raised).

>>> from rnnlab.architectures import make_model
>>> from rnnlab.training import AddingProblem, Trainer
>>> task = AddingProblem(50, seed=0)
>>> model = make_model(task.architecture, "lstm", task.input_size, 16, task.output_size,
...                    loss=task.loss, seed=0)
>>> result = Trainer(model, task, optimizer="adam", lr=1e-2, seed=0).fit(max_steps=20)
>>> sorted(result.log.columns)[:3]
['clipped', 'grad_norm_after', 'grad_norm_before']
"""

import math
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .._validation import check_positive_int
from ..architectures import SequenceModel
from .bptt import checkpointed_bptt, truncated_bptt
from .clipping import Clipper
from .optimizers import SGD, Adam, Optimizer, RMSprop
from .tasks import Task

OPTIMIZERS = {"sgd": SGD, "rmsprop": RMSprop, "adam": Adam}

#: A training loss above this (per step, the task's normalisation) counts as diverged.
DIVERGED_LOSS = 1e6

#: This many skipped steps in a row (non-finite or huge gradients) count as diverged.
MAX_SKIPPED_IN_A_ROW = 100


@dataclass
class TrainResult:
    """The outcome of :meth:`Trainer.fit`.

    Attributes
    ----------
    status : {"solved", "budget", "diverged"}
        Stopped at the success criterion, ran out of steps, or diverged.
    steps : int
        Updates made (skipped ones included).
    log : DataFrame
        One row per update: step, loss, grad_norm_before, grad_norm_after, clipped, skipped,
        lr, spectral_radius (of W_hh, every ``spectral_every`` steps, NaN between).
    evals : DataFrame
        One row per evaluation: step, loss, error_rate, success.
    final : dict
        The last evaluation (loss, error_rate, success), or NaNs if diverged before any.
    message : str
        Why it stopped.
    seconds : float
        Wall time.
    """

    status: str
    steps: int
    log: pd.DataFrame
    evals: pd.DataFrame
    final: dict
    message: str
    seconds: float


def spectral_radius(model):
    """Largest |eigenvalue| of the first recurrent layer's ``W_hh`` (the largest over the gate
    blocks of a gated cell)."""
    rnn = next(m for name, m in model._modules.items() if name != "head")
    w = rnn.parameters()["weight_hh_l0"].astype(np.float64)
    H = w.shape[1]
    return max(float(np.abs(np.linalg.eigvals(w[g * H:(g + 1) * H])).max())
               for g in range(w.shape[0] // H))


class Trainer:
    """Train ``model`` on ``task``.

    Parameters
    ----------
    model : SequenceModel
        Built for the task (``make_model(task.architecture, cell, task.input_size, H,
        task.output_size, loss=task.loss)``), with ``reduction="sum"``: the trainer divides the
        loss and gradients by the number of scored steps (the task's normalisation).
    task : Task
        Supplies training batches and evaluation.
    optimizer : {"sgd", "rmsprop", "adam"} or Optimizer
        By name (built on ``model.parameters()`` with ``lr`` and ``momentum`` for SGD) or an
        instance.
    lr : float
        Learning rate for a named optimiser.
    momentum : float
        SGD momentum.
    clip : Clipper, (mode, threshold) or None
        Gradient clipping; None clips nothing but still skips non-finite or huge (> 1e10)
        gradients (Pascanu's guard).
    bptt : {"full", "checkpointed"} or ("truncated", k1, k2)
        How gradients are computed. Truncated BPTT makes one update per ``k1`` steps.
    batch_size : int
        Sequences per update (Pascanu et al.: 20).
    eval_every : int
        Updates between evaluations on fresh sequences.
    eval_sequences : int
        Fresh sequences per evaluation (the papers use 10,000 for the final one).
    spectral_every : int
        Updates between spectral-radius logs.
    scheduler : callable, optional
        ``scheduler(optimizer)`` returning an LR scheduler stepped after every update.
    seed : int
        Seeds the training and evaluation batches (the model has its own seed).
    """

    def __init__(self, model, task, optimizer="sgd", lr=0.01, momentum=0.0, clip=None,
                 bptt="full", batch_size=20, eval_every=100, eval_sequences=1000,
                 spectral_every=10, scheduler=None, seed=0):
        if not isinstance(model, SequenceModel):
            raise TypeError(f"model must be an rnnlab architecture, got {type(model).__name__}")
        if not isinstance(task, Task):
            raise TypeError(f"task must be an rnnlab Task, got {type(task).__name__}")
        if model.reduction != "sum":
            raise ValueError("build the model with reduction='sum': the trainer normalises the "
                             "loss by the number of scored steps itself")
        if model.loss != task.loss:
            raise ValueError(f"the model's loss is {model.loss!r} but the task's is {task.loss!r}")
        self.model, self.task = model, task
        if isinstance(optimizer, str):
            if optimizer not in OPTIMIZERS:
                raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)} or an "
                                 f"Optimizer, got {optimizer!r}")
            kw = {"momentum": momentum} if optimizer == "sgd" else {}
            optimizer = OPTIMIZERS[optimizer](model.parameters(), lr=lr, **kw)
        elif not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a name or an Optimizer, got "
                            f"{type(optimizer).__name__}")
        self.optimizer = optimizer
        if clip is None:
            clip = Clipper(None)
        elif isinstance(clip, tuple):
            clip = Clipper(*clip)
        elif not isinstance(clip, Clipper):
            raise TypeError(f"clip must be a Clipper, (mode, threshold) or None, got {clip!r}")
        self.clipper = clip
        if isinstance(bptt, tuple) and len(bptt) == 3 and bptt[0] == "truncated":
            self.k1 = check_positive_int(bptt[1], "bptt k1")
            self.k2 = check_positive_int(bptt[2], "bptt k2")
            if self.k2 < self.k1:
                raise ValueError(f"bptt: k2 must be >= k1, got {bptt}")
        elif bptt not in ("full", "checkpointed"):
            raise ValueError(f"bptt must be 'full', 'checkpointed' or ('truncated', k1, k2), "
                             f"got {bptt!r}")
        if bptt != "full" and task.architecture not in ("many_to_one", "many_to_many"):
            raise ValueError(f"bptt={bptt!r} needs a many-to-one or many-to-many task")
        self.bptt = bptt
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.eval_every = check_positive_int(eval_every, "eval_every")
        self.eval_sequences = check_positive_int(eval_sequences, "eval_sequences")
        self.spectral_every = check_positive_int(spectral_every, "spectral_every")
        self.scheduler = scheduler(optimizer) if scheduler is not None else None
        rng = np.random.default_rng(seed)
        self._train_rng, self._eval_rng = (np.random.default_rng(s) for s in
                                           rng.integers(2 ** 63, size=2))

    # ------------------------------------------------------------------------ pieces
    def _gradients(self, x, y, mask):
        """Yield (loss, grads) per update, both per scored step."""
        if isinstance(self.bptt, tuple):
            for loss, grads, info in truncated_bptt(self.model, x, y, self.k1, self.k2, mask):
                if not info["has_loss"]:
                    continue
                c0, c1 = info["chunk"]
                n = mask[c0:c1].sum() if self.task.architecture == "many_to_many" else mask.sum()
                yield loss / n, grads, 1.0 / n
            return
        fn = checkpointed_bptt if self.bptt == "checkpointed" else None
        loss, grads = fn(self.model, x, y, mask) if fn else self.model.loss_and_grad(x, y, mask)
        yield loss / mask.sum(), grads, 1.0 / mask.sum()

    def evaluate(self, n_sequences=None):
        """Loss, error rate and success on fresh sequences (the task's own measures)."""
        model, task = self.model, self.task
        if task.architecture == "one_to_many":
            predict = lambda x: model.generate(x, task.T)  # noqa: E731
        else:
            predict = model.predict
        n = n_sequences or self.eval_sequences
        with np.errstate(all="ignore"):
            return task.score(predict, n_sequences=n, batch_size=min(n, 500),
                              rng=self._eval_rng)

    # ------------------------------------------------------------------------- the loop
    def fit(self, max_steps, stop_on_success=True):
        """Train for at most ``max_steps`` updates.

        Parameters
        ----------
        max_steps : int
            Update budget.
        stop_on_success : bool
            Stop at the first evaluation meeting the task's success criterion.

        Returns
        -------
        TrainResult
        """
        max_steps = check_positive_int(max_steps, "max_steps")
        start = time.perf_counter()
        rows, evals = [], []
        status, message, step, skipped_run = "budget", f"ran {max_steps} updates", 0, 0
        params = self.model.parameters()
        while step < max_steps and status == "budget":
            x, y, mask = self.task.batch(self.batch_size, self._train_rng)
            try:
                with np.errstate(all="ignore"):
                    updates = list(self._gradients(x, y, mask))
            except ValueError as exc:  # the input checks of a layer fed overflowed states
                if "NaN or Inf" not in str(exc) and "not finite" not in str(exc):
                    raise
                status, message = "diverged", f"non-finite states at update {step + 1}: {exc}"
                break
            for loss, grads, scale in updates:
                for g in grads.values():
                    g *= g.dtype.type(scale)
                info = self.clipper(grads)
                step += 1
                if not math.isfinite(loss) or loss > DIVERGED_LOSS:
                    status, message = "diverged", f"training loss {loss:.3g} at update {step}"
                elif info["skipped"]:
                    skipped_run += 1
                    if skipped_run >= MAX_SKIPPED_IN_A_ROW:
                        status, message = "diverged", (f"{skipped_run} updates in a row with a "
                                                       f"non-finite or huge gradient")
                else:
                    skipped_run = 0
                    self.optimizer.step(grads)
                    if not all(np.isfinite(p).all() for p in params.values()):
                        status, message = "diverged", f"non-finite weights at update {step}"
                rows.append({"step": step, "loss": float(loss), "lr": self.optimizer.lr,
                             "grad_norm_before": info["norm_before"],
                             "grad_norm_after": info["norm_after"],
                             "clipped": info["clipped"], "skipped": info["skipped"],
                             "spectral_radius": spectral_radius(self.model)
                             if status == "budget" and step % self.spectral_every == 0
                             else np.nan})
                if self.scheduler is not None:
                    self.scheduler.step()
                if status != "budget":
                    break
                if step % self.eval_every == 0 or step == max_steps:
                    ev = self.evaluate()
                    evals.append({"step": step, **ev})
                    if stop_on_success and ev["success"]:
                        status, message = "solved", f"solved at update {step}"
                        break
                if step >= max_steps:
                    break
        final = evals[-1] if evals and status != "diverged" else \
            {"loss": np.nan, "error_rate": np.nan, "success": False, "n": 0}
        if status == "budget" and (not evals or evals[-1]["step"] != step):
            final = self.evaluate()
            evals.append({"step": step, **final})
        return TrainResult(status, step, pd.DataFrame(rows), pd.DataFrame(evals), final,
                           message, time.perf_counter() - start)
