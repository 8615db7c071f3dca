"""Optimisers acting in place on a dict of parameter arrays (``model.parameters()``)."""

import numpy as np


class SGD:
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
        if not lr > 0 or not np.isfinite(lr):
            raise ValueError(f"lr must be a positive finite number, got {lr!r}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum!r}")
        self.params = params
        self.lr = float(lr)
        self.momentum = float(momentum)
        self._velocity = {k: np.zeros_like(p) for k, p in params.items()}

    def step(self, grads):
        """Apply one update from ``grads`` (same keys as the parameters)."""
        missing = [k for k in self.params if k not in grads]
        if missing:
            raise ValueError(f"grads is missing entries for parameters {missing}")
        for name, p in self.params.items():
            g = grads[name]
            if self.momentum:
                vel = self._velocity[name]
                vel *= self.momentum
                vel += g
                g = vel
            p -= p.dtype.type(self.lr) * g
