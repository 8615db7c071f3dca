"""Optimisers acting in place on a dict of parameter arrays (``model.parameters()``), and
learning-rate schedules.

The update equations and defaults are PyTorch's (``torch.optim.SGD``, ``RMSprop``, ``Adam``, and
``torch.optim.lr_scheduler``), so a run here can be compared step by step with one there. Every
optimiser keeps its state in the parameters' dtype (float32 stays float32) and exposes ``lr`` as a
plain attribute, which the schedules below set.
"""

import math
from collections.abc import Mapping

import numpy as np


def _check_number(value, name, low=None, high=None, low_open=False, high_open=False):
    """Return ``value`` as a float, requiring a finite real in the given interval."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    ok = math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        lo = "(-inf" if low is None else ("(" if low_open else "[") + repr(low)
        hi = "inf)" if high is None else repr(high) + (")" if high_open else "]")
        raise ValueError(f"{name} must be a finite number in {lo}, {hi}, got {value!r}")
    return value


class Optimizer:
    """Base class: holds the live parameter arrays and checks the gradients of each step.

    Parameters
    ----------
    params : dict of str to ndarray
        Live floating-point parameter arrays, updated in place (e.g. ``model.parameters()``).
    lr : float
        Learning rate (> 0); a plain attribute, so schedules and users may change it between steps.
    """

    def __init__(self, params, lr):
        if not isinstance(params, Mapping):
            raise TypeError(f"params must be a dict of name -> ndarray (e.g. model.parameters()), "
                            f"got {type(params).__name__}")
        if not params:
            raise ValueError("params is empty: there is nothing to optimise")
        for name, p in params.items():
            if not isinstance(p, np.ndarray) or p.dtype.kind != "f":
                raise TypeError(f"params[{name!r}] must be a floating-point ndarray (it is updated "
                                f"in place), got {type(p).__name__}"
                                + (f" of dtype {p.dtype}" if isinstance(p, np.ndarray) else ""))
        self.params = params
        self.lr = _check_number(lr, "lr", low=0.0, low_open=True)
        self.step_count = 0

    def _checked(self, grads):
        """Yield ``(name, param, grad)``, after checking that every parameter has a gradient of
        its shape (extra entries in ``grads`` are ignored)."""
        if not isinstance(grads, Mapping):
            raise TypeError(f"grads must be a dict of name -> ndarray, got {type(grads).__name__}")
        missing = [k for k in self.params if k not in grads]
        if missing:
            raise ValueError(f"grads is missing entries for parameters {missing}")
        for name, p in self.params.items():
            if np.shape(grads[name]) != p.shape:
                raise ValueError(f"grads[{name!r}] has shape {np.shape(grads[name])} but the "
                                 f"parameter has shape {p.shape}")
        # the lr is re-read every step: schedules (and users) change it between steps
        self.lr = _check_number(self.lr, "lr", low=0.0, low_open=True)
        self.step_count += 1
        return [(name, p, np.asarray(grads[name])) for name, p in self.params.items()]

    def step(self, grads):
        """Apply one update from ``grads`` (same keys and shapes as the parameters)."""
        raise NotImplementedError


class SGD(Optimizer):
    """Stochastic gradient descent with optional (heavy-ball) momentum, as ``torch.optim.SGD``.

    Parameters
    ----------
    params : dict of str to ndarray
        Live parameter arrays, updated in place (e.g. ``model.parameters()``).
    lr : float
        Learning rate.
    momentum : float, optional
        Momentum factor ``mu``: ``v <- mu v + g``, ``p <- p - lr v``.
    """

    def __init__(self, params, lr, momentum=0.0):
        super().__init__(params, lr)
        self.momentum = _check_number(momentum, "momentum", low=0.0, high=1.0, high_open=True)
        self._velocity = {k: np.zeros_like(p) for k, p in params.items()}

    def step(self, grads):
        """Apply one update from ``grads`` (same keys as the parameters)."""
        for name, p, g in self._checked(grads):
            if self.momentum:
                vel = self._velocity[name]
                vel *= self.momentum
                vel += g
                g = vel
            p -= p.dtype.type(self.lr) * g


class RMSprop(Optimizer):
    """RMSprop with PyTorch's update and defaults (``torch.optim.RMSprop``).

    For each parameter ``p`` with gradient ``g`` (Tieleman & Hinton 2012; Graves 2013 for the
    centred form)::

        g   <- g + weight_decay * p                      (if weight_decay)
        v   <- alpha v + (1 - alpha) g**2
        v~  <- v - gbar**2, gbar <- alpha gbar + (1 - alpha) g    (if centered; else v~ = v)
        b   <- momentum b + g / (sqrt(v~) + eps);  p <- p - lr b   (if momentum)
        p   <- p - lr g / (sqrt(v~) + eps)                          (otherwise)

    with ``v``, ``gbar`` and ``b`` starting at zero. Note that ``eps`` is added *outside* the
    square root, as in PyTorch (Keras/TF add it inside). The centred ``v~`` is clamped at 0,
    where rounding would make it negative and torch would return NaN.

    Parameters
    ----------
    params : dict of str to ndarray
        Live parameter arrays, updated in place.
    lr : float, optional
        Learning rate (> 0), default 0.01.
    alpha : float, optional
        Smoothing constant in [0, 1), default 0.99.
    eps : float, optional
        Added to the denominator (>= 0), default 1e-8.
    weight_decay : float, optional
        L2 penalty added to the gradient (>= 0), default 0.
    momentum : float, optional
        Momentum factor in [0, 1), default 0.
    centered : bool, optional
        Normalise by the estimated variance of the gradient instead of its second moment.
    """

    def __init__(self, params, lr=0.01, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False):
        super().__init__(params, lr)
        self.alpha = _check_number(alpha, "alpha", low=0.0, high=1.0, high_open=True)
        self.eps = _check_number(eps, "eps", low=0.0)
        self.weight_decay = _check_number(weight_decay, "weight_decay", low=0.0)
        self.momentum = _check_number(momentum, "momentum", low=0.0, high=1.0, high_open=True)
        if not isinstance(centered, (bool, np.bool_)):
            raise TypeError(f"centered must be a bool, got {type(centered).__name__}")
        self.centered = bool(centered)
        self.square_avg = {k: np.zeros_like(p) for k, p in params.items()}
        self.grad_avg = {k: np.zeros_like(p) for k, p in params.items()} if centered else None
        self.momentum_buffer = ({k: np.zeros_like(p) for k, p in params.items()}
                                if self.momentum else None)

    def step(self, grads):
        """Apply one update from ``grads`` (same keys and shapes as the parameters)."""
        for name, p, g in self._checked(grads):
            f = p.dtype.type  # scalars in the parameter's dtype keep float32 float32
            g = g.astype(p.dtype, copy=False)
            if self.weight_decay:
                g = g + f(self.weight_decay) * p
            v = self.square_avg[name]
            v *= f(self.alpha)
            v += f(1 - self.alpha) * (g * g)
            if self.centered:
                gbar = self.grad_avg[name]
                gbar *= f(self.alpha)
                gbar += f(1 - self.alpha) * g
                # v - gbar**2 >= 0 exactly, but not always after rounding (constant gradients,
                # long runs): clamp, where torch would return NaN
                denom = np.sqrt(np.maximum(v - gbar * gbar, 0))
            else:
                denom = np.sqrt(v)
            denom += f(self.eps)
            if self.momentum:
                buf = self.momentum_buffer[name]
                buf *= f(self.momentum)
                buf += g / denom
                p -= f(self.lr) * buf
            else:
                p -= f(self.lr) * (g / denom)


class Adam(Optimizer):
    """Adam with PyTorch's bias-corrected update and defaults (``torch.optim.Adam``).

    At step ``t = 1, 2, ...``, for each parameter ``p`` with gradient ``g`` (Kingma & Ba 2015;
    AMSGrad: Reddi et al. 2018)::

        g  <- g + weight_decay * p                        (if weight_decay; L2, not AdamW)
        m  <- beta1 m + (1 - beta1) g
        v  <- beta2 v + (1 - beta2) g**2
        vm <- max(vm, v)                                   (if amsgrad; the maximum of the raw
                                                            v, as torch's implementation)
        p  <- p - lr / (1 - beta1**t) * m / (sqrt(v or vm) / sqrt(1 - beta2**t) + eps)

    with ``m``, ``v``, ``vm`` starting at zero; this is the docs' ``m_hat / (sqrt(v_hat) + eps)``
    arranged as torch computes it.

    Parameters
    ----------
    params : dict of str to ndarray
        Live parameter arrays, updated in place.
    lr : float, optional
        Learning rate (> 0), default 1e-3.
    betas : tuple of float, optional
        ``(beta1, beta2)``, each in [0, 1), default (0.9, 0.999).
    eps : float, optional
        Added to the denominator (>= 0), default 1e-8.
    weight_decay : float, optional
        L2 penalty added to the gradient (>= 0), default 0.
    amsgrad : bool, optional
        Use the running maximum of the second moment (AMSGrad).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False):
        super().__init__(params, lr)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        self.betas = (_check_number(betas[0], "betas[0]", low=0.0, high=1.0, high_open=True),
                      _check_number(betas[1], "betas[1]", low=0.0, high=1.0, high_open=True))
        self.eps = _check_number(eps, "eps", low=0.0)
        self.weight_decay = _check_number(weight_decay, "weight_decay", low=0.0)
        if not isinstance(amsgrad, (bool, np.bool_)):
            raise TypeError(f"amsgrad must be a bool, got {type(amsgrad).__name__}")
        self.amsgrad = bool(amsgrad)
        self.exp_avg = {k: np.zeros_like(p) for k, p in params.items()}
        self.exp_avg_sq = {k: np.zeros_like(p) for k, p in params.items()}
        self.max_exp_avg_sq = ({k: np.zeros_like(p) for k, p in params.items()}
                               if self.amsgrad else None)

    def step(self, grads):
        """Apply one update from ``grads`` (same keys and shapes as the parameters)."""
        checked = self._checked(grads)
        beta1, beta2 = self.betas
        t = self.step_count
        # bias corrections in float64 (Python floats), as torch computes them
        step_size = self.lr / (1 - beta1 ** t)
        bc2_sqrt = math.sqrt(1 - beta2 ** t)
        for name, p, g in checked:
            f = p.dtype.type
            g = g.astype(p.dtype, copy=False)
            if self.weight_decay:
                g = g + f(self.weight_decay) * p
            m, v = self.exp_avg[name], self.exp_avg_sq[name]
            m *= f(beta1)
            m += f(1 - beta1) * g
            v *= f(beta2)
            v += f(1 - beta2) * (g * g)
            if self.amsgrad:
                vm = self.max_exp_avg_sq[name]
                np.maximum(vm, v, out=vm)
                v = vm
            denom = np.sqrt(v) / f(bc2_sqrt)
            denom += f(self.eps)
            p -= f(step_size) * (m / denom)


# ---------------------------------------------------------------------------- schedules
class LRScheduler:
    """Base class of the learning-rate schedules (``torch.optim.lr_scheduler`` semantics).

    On construction the optimiser's current ``lr`` becomes the base rate and the schedule is at
    epoch 0 (``last_epoch = 0``, ``optimizer.lr`` set to the epoch-0 rate); each :meth:`step`
    advances one epoch and sets ``optimizer.lr = get_lr()``. As in PyTorch, call
    ``optimizer.step`` before ``scheduler.step``.

    Parameters
    ----------
    optimizer : Optimizer
        Any object with a float attribute ``lr`` (the optimisers of this module).
    """

    def __init__(self, optimizer):
        lr = getattr(optimizer, "lr", None)
        if lr is None:
            raise TypeError(f"optimizer must have a learning rate attribute 'lr' (an rnnlab "
                            f"optimiser), got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.base_lr = _check_number(lr, "optimizer.lr", low=0.0, low_open=True)
        self.last_epoch = 0
        optimizer.lr = self.get_lr()

    def get_lr(self):
        """The learning rate of epoch ``last_epoch`` (a float)."""
        raise NotImplementedError

    def get_last_lr(self):
        """The learning rate last set on the optimiser (``optimizer.lr``)."""
        return self.optimizer.lr

    def step(self):
        """Advance one epoch and set ``optimizer.lr``; returns the new rate."""
        self.last_epoch += 1
        self.optimizer.lr = self.get_lr()
        return self.optimizer.lr


def _check_epochs(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


class StepLR(LRScheduler):
    """``lr = base_lr * gamma ** (epoch // step_size)`` (``torch.optim.lr_scheduler.StepLR``).

    Parameters
    ----------
    optimizer : Optimizer
        Its ``lr`` at construction is the base rate.
    step_size : int
        Epochs between decays (>= 1).
    gamma : float, optional
        Multiplicative decay (> 0), default 0.1.
    """

    def __init__(self, optimizer, step_size, gamma=0.1):
        self.step_size = _check_epochs(step_size, "step_size")
        self.gamma = _check_number(gamma, "gamma", low=0.0, low_open=True)
        super().__init__(optimizer)

    def get_lr(self):
        """``base_lr * gamma ** (last_epoch // step_size)``."""
        return self.base_lr * self.gamma ** (self.last_epoch // self.step_size)


class ExponentialLR(LRScheduler):
    """``lr = base_lr * gamma ** epoch`` (``torch.optim.lr_scheduler.ExponentialLR``).

    Parameters
    ----------
    optimizer : Optimizer
        Its ``lr`` at construction is the base rate.
    gamma : float
        Multiplicative decay per epoch (> 0).
    """

    def __init__(self, optimizer, gamma):
        self.gamma = _check_number(gamma, "gamma", low=0.0, low_open=True)
        super().__init__(optimizer)

    def get_lr(self):
        """``base_lr * gamma ** last_epoch``."""
        return self.base_lr * self.gamma ** self.last_epoch


class CosineAnnealingLR(LRScheduler):
    """Cosine annealing (Loshchilov & Hutter 2017) without restarts
    (``torch.optim.lr_scheduler.CosineAnnealingLR``)::

        lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2

    This is PyTorch's closed form; torch's ``step`` uses an equivalent recursion, so the two agree
    to rounding. Past ``T_max`` the rate rises again (period ``2 T_max``), as in PyTorch.

    Parameters
    ----------
    optimizer : Optimizer
        Its ``lr`` at construction is the base rate.
    T_max : int
        Epochs from the base rate down to ``eta_min`` (>= 1).
    eta_min : float, optional
        Minimum rate (>= 0), default 0.
    """

    def __init__(self, optimizer, T_max, eta_min=0.0):
        self.T_max = _check_epochs(T_max, "T_max")
        self.eta_min = _check_number(eta_min, "eta_min", low=0.0)
        super().__init__(optimizer)

    def get_lr(self):
        """The closed-form cosine rate of epoch ``last_epoch``."""
        if self.last_epoch == 0:
            return self.base_lr  # exactly, as torch's first (constructor) step gives
        cos = math.cos(math.pi * self.last_epoch / self.T_max)
        return self.eta_min + (self.base_lr - self.eta_min) * (1 + cos) / 2
