"""Singular-value spectra of Jacobian products, ∏_{s=t+1}^{T} J_s, in log space.

The product ``P`` is never formed (it under- or overflows long before 10,000 steps). A forward
QR sweep through the window gives ``P V = Q R_total`` with ``R_total = R_span ... R_1``; the
``log|R_ii|`` summed over the sweep equal ``log σ_i`` exactly once the frame ``V`` holds the
right singular vectors (then ``P V`` has orthogonal columns and ``R_total`` is diagonal). Between
forward sweeps the frame is improved in one of two ways:

* a product of moderate dynamic range (``max - min log σ < 30``): rotate the frame by the right
  singular vectors of ``R_total`` (carried rescaled step by step): ``P V V_r = Q U_r Σ``;
* a strongly graded product, whose small part of ``R_total`` underflows: a backward QR sweep
  through ``J_s^T`` from the end frame rotated by the left singular vectors of ``R_total``
  (subspace iteration on ``P^T P``, started from what the SVD resolves; large gaps make it
  converge in a sweep or two).

Sweeps repeat until the logs agree to ``tol`` per step; the ``converged`` column reports it.
"""

import numpy as np
import pandas as pd

from .. import _validation as v
from .._blas import blas_threads_for


#: Dynamic range (nats) above which the frame is refined by backward sweeps.
GRADED = 30.0


def _sweep(trajectory, t0, t1, frame):
    """One forward QR pass from ``frame`` (n x n, columns); returns the summed log|R_ii|,
    the rescaled product of the R factors and the end frame."""
    n = frame.shape[0]
    logs = np.zeros(n)
    r_total = np.eye(n)
    q = frame
    for _, jac in trajectory.chunks(t0, t1):
        for j_t in jac:
            q, r = np.linalg.qr(j_t @ q)
            logs += np.log(np.abs(np.diag(r)))
            r_total = r @ r_total
            r_total /= np.abs(r_total).max()
    return logs, r_total, q


def _resolved(u_r, sv, rel=1e-10):
    """An orthogonal matrix whose leading columns are the singular vectors of ``R_total`` that
    its SVD resolves (σ_i > rel σ_1), completed by the trailing coordinate directions (the
    underflowed, strongly graded part is left to the sweeps)."""
    n = u_r.shape[0]
    r = int(np.sum(sv > rel * sv[0]))
    q, rr = np.linalg.qr(np.hstack([u_r[:, :r], np.eye(n)[:, r:]]))
    return q * np.sign(np.diag(rr))


def _backward_sweep(trajectory, t0, t1, frame):
    """QR pass through ``J_s^T`` from the end of the window back to its start."""
    q = frame
    for _, jac in trajectory.chunks(t0, t1, reverse=True):
        for j_t in jac[::-1]:
            q, _ = np.linalg.qr(j_t.T @ q)
    return q


def default_spans(n_steps):
    """Every power of two up to ``n_steps``, and ``n_steps`` itself."""
    spans = [1 << i for i in range(int(np.log2(n_steps)) + 1)]
    return spans if spans[-1] == n_steps else spans + [n_steps]


def jacobian_product_spectra(trajectory, spans=None, tol=1e-10, max_sweeps=60):
    """log singular values of the products of the last ``span`` step Jacobians.

    Parameters
    ----------
    trajectory : Trajectory
        From :func:`rnnlab.diagnostics.trajectories`.
    spans : sequence of int, optional
        Product lengths (default :func:`default_spans`): the product of ``J_t`` for the last
        ``span`` steps, i.e. ``∂s<T-1>/∂s<T-1-span>``.
    tol : float
        Convergence: successive sweeps agree to ``tol`` per step in every ``log σ_i``.
    max_sweeps : int
        Sweeps allowed per span; the ``converged`` column says whether ``tol`` was met.

    Returns
    -------
    DataFrame
        (span, index, log_sigma, sweeps, converged) and the configuration columns, ``log_sigma``
        sorted in decreasing order.
    """
    n, n_steps = trajectory.n, trajectory.n_steps
    spans = default_spans(n_steps) if spans is None else [
        v.check_positive_int(s, "spans[i]") for s in spans]
    for s in spans:
        if s > n_steps:
            raise ValueError(f"span {s} exceeds the trajectory length T = {n_steps}")
    frames = []
    with blas_threads_for(0):
        for span in spans:
            t0 = n_steps - span
            frame = np.eye(n)
            prev, converged, sweeps = None, False, 0
            for sweeps in range(1, max_sweeps + 1):
                logs, r_total, end = _sweep(trajectory, t0, n_steps, frame)
                if prev is not None and np.all(np.abs(logs - prev) <= tol * span):
                    converged = True
                    break
                prev = logs
                u_r, sv, vt = np.linalg.svd(r_total)
                if logs.max() - logs.min() < GRADED:
                    frame = frame @ vt.T
                else:  # from the end frame rotated by the left singular vectors it resolves
                    frame = _backward_sweep(trajectory, t0, n_steps, end @ _resolved(u_r, sv))
            log_sigma = np.sort(logs)[::-1]
            frames.append(pd.DataFrame({
                **{c: [val] * n for c, val in trajectory.config.items()},
                "T": n_steps, "span": span, "index": np.arange(1, n + 1),
                "log_sigma": log_sigma, "sweeps": sweeps, "converged": converged}))
    return pd.concat(frames, ignore_index=True)
