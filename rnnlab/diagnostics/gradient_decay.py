"""Gradient decay: log ‖∂L/∂a<t>‖ for every step, without underflow at any length.

The backward vector is renormalised every step and its log-norm accumulated, so a gradient of
1e-762 (gain 0.8, 4,000 steps) is recorded as -1754.6 rather than 0.
"""

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .. import _validation as v
from .._blas import blas_threads_for
from ..kernels.cpu.lyapunov import gradient_log_norms_chunk, gradient_log_norms_diag


@dataclass
class GradientDecay:
    """log-norms of the gradient of a loss with respect to every state.

    Attributes
    ----------
    log_norms : ndarray, shape (T + 1,)
        ``log_norms[t + 1] = log ‖∂L/∂s<t>‖`` (natural log); ``log_norms[0]`` is the initial
        state's.
    config : dict
        Trajectory description.
    """

    log_norms: np.ndarray
    config: dict

    @property
    def distance(self):
        """``T - 1 - t`` for every entry of :attr:`log_norms` (the initial state is at T)."""
        n_steps = self.log_norms.shape[0] - 1
        return np.arange(n_steps, -1, -1)

    def fit(self, start=None, stop=None):
        """Least-squares exponential decay rate over a window of distances.

        Parameters
        ----------
        start, stop : int, optional
            Distances ``start <= T - 1 - t < stop`` fitted (default: skip the first 10% as a
            transient, up to the initial state). Only finite log-norms are used.

        Returns
        -------
        dict
            ``rate`` (slope of the log-norm per step: negative means vanishing),
            ``intercept``, ``residual`` (RMS, nats), ``fit_start``, ``fit_stop``, ``points``.
        """
        n_steps = self.log_norms.shape[0] - 1
        start = n_steps // 10 if start is None else start
        stop = n_steps + 1 if stop is None else stop
        dist = self.distance
        sel = (dist >= start) & (dist < stop) & np.isfinite(self.log_norms)
        if sel.sum() < 2:
            return {"rate": np.nan, "intercept": np.nan, "residual": np.nan,
                    "fit_start": start, "fit_stop": stop, "points": int(sel.sum())}
        coef = np.polyfit(dist[sel], self.log_norms[sel], 1)
        resid = self.log_norms[sel] - np.polyval(coef, dist[sel])
        return {"rate": float(coef[0]), "intercept": float(coef[1]),
                "residual": float(np.sqrt(np.mean(resid ** 2))), "fit_start": start,
                "fit_stop": stop, "points": int(sel.sum())}

    def to_frame(self):
        """Tidy table (t, distance, log_norm) with the configuration in columns."""
        n = self.log_norms.shape[0]
        return pd.DataFrame({**{c: [val] * n for c, val in self.config.items()},
                             "t": np.arange(-1, n - 1), "distance": self.distance,
                             "log_norm": self.log_norms})


def gradient_decay(trajectory, loss="last", local=None, seed=0):
    """log ‖∂L/∂s<t>‖ along a trajectory.

    Parameters
    ----------
    trajectory : Trajectory
        From :func:`rnnlab.diagnostics.trajectories`.
    loss : {"last", "sum"}
        ``"last"``: a loss at the final step only, whose gradient is ``local[-1]`` (default: a
        random unit vector). ``"sum"``: the seed's per-step loss summed over time, whose
        per-step gradients with respect to the states are ``local`` (required).
    local : array_like, shape (T, n), optional
        Gradients of the per-step loss terms with respect to the states ``s<t>``.
    seed : int
        Seed of the default final-step gradient.

    Returns
    -------
    GradientDecay
    """
    n, n_steps = trajectory.n, trajectory.n_steps
    if loss not in ("last", "sum"):
        raise ValueError(f"loss must be 'last' or 'sum', got {loss!r}")
    if local is None:
        if loss == "sum":
            raise ValueError("loss='sum' needs local, the per-step gradients (T, n)")
        local = np.zeros((n_steps, n))
        g = np.random.default_rng(seed).standard_normal(n)
        local[-1] = g / np.linalg.norm(g)
    else:
        local = np.ascontiguousarray(v.check_float_array(
            np.asarray(v.to_numpy(local, "local"), dtype=np.float64), "local", np.float64,
            shape=(n_steps, n)))
        if loss == "last" and local[:-1].any():
            raise ValueError("loss='last' takes local with only its last row non-zero")
    g_last = local[-1]
    norm = np.linalg.norm(g_last)
    u = g_last / norm if norm > 0 else np.zeros(n)
    log_scale = np.array([np.log(norm) if norm > 0 else -np.inf])
    out = np.empty(n_steps + 1)
    diag = trajectory.diagonal_form()
    with blas_threads_for(0):
        if diag is not None:
            gradient_log_norms_diag(diag[0], diag[1], local, u, log_scale, out)
        else:
            for t0, jac in trajectory.chunks(reverse=True):
                gradient_log_norms_chunk(jac, t0, local, u, log_scale, out)
    return GradientDecay(out, {**trajectory.config, "T": n_steps, "loss": loss})
