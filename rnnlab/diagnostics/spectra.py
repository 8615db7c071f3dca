"""Singular-value spectra of Jacobian products, ∏_{s=t+1}^{T} J_s, in log space.

The product ``P`` is never formed (it under- or overflows long before 10,000 steps). A forward
QR sweep through the window gives ``P V = Q R_total`` with ``R_total = R_span ... R_1``; the
``log|R_ii|`` summed over the sweep equal ``log σ_i`` exactly once the frame ``V`` holds the
right singular vectors (then ``P V`` has orthogonal columns and ``R_total`` is diagonal).
``R_total`` is carried row-scaled, ``diag(e^s) M`` with unit-size rows of ``M``, so that no row
underflows however graded the product is. Between sweeps the frame is rotated, window by window
of frame columns whose scales lie within ``WINDOW`` nats (one window unless the product spans
more than float64 can hold), by the right singular vectors of that diagonal block of
``R_total`` computed by preconditioned Jacobi SVD (LAPACK ``dgejsv``), which is accurate to each
singular value's own scale for such graded blocks; then the frame is sorted by decreasing
estimate so that the next ``R_total`` is graded. Directions a large gap apart need no rotation
(the QR sweep itself removes the larger ones' components from the smaller), so a sweep or two
usually converges; windows alternate their boundaries between sweeps so that no near-degenerate
pair stays split.

Sweeps repeat until the logs agree to ``tol`` per step; the ``converged`` column reports it.
"""

import numpy as np
import pandas as pd
from scipy.linalg import lapack

from .. import _validation as v
from .._blas import blas_threads_for


#: Largest range of row scales (nats) in one refinement window (float64 holds about 1400).
WINDOW = 600.0


def _sweep(trajectory, t0, t1, frame):
    """One forward QR pass from ``frame`` (n x n, columns); returns the summed log|R_ii|, the
    product of the R factors as row scales ``s`` and rows ``M`` (``R_total = diag(e^s) M``),
    and the end frame."""
    n = frame.shape[0]
    logs = np.zeros(n)
    scale, rows = np.zeros(n), np.eye(n)
    q = frame
    with np.errstate(divide="ignore"):
        for _, jac in trajectory.chunks(t0, t1):
            for j_t in jac:
                q, r = np.linalg.qr(j_t @ q)
                logs += np.log(np.abs(np.diag(r)))
                # row i of r @ diag(e^s) M, each term's scale taken out before summing
                w = np.log(np.abs(r)) + scale
                top = w.max(axis=1)
                rows = (np.sign(r) * np.exp(w - top[:, None])) @ rows
                size = np.abs(rows).max(axis=1)
                rows /= size[:, None]
                scale = top + np.log(size)
    return logs, scale, rows, q


def _resolved(scale, rows, rel=1e-10):
    """An orthogonal matrix whose leading columns are the left singular vectors of ``R_total``
    that its SVD resolves (σ_i > rel σ_1), completed by the trailing coordinate directions
    (the strongly graded part is left to the backward sweep)."""
    n = rows.shape[0]
    u_r, sv, _ = np.linalg.svd(np.exp(scale - scale.max())[:, None] * rows)
    r = int(np.sum(sv > rel * sv[0]))
    q, rr = np.linalg.qr(np.hstack([u_r[:, :r], np.eye(n)[:, r:]]))
    return q * np.sign(np.diag(rr))


def _backward_sweep(trajectory, t0, t1, frame):
    """QR pass through ``J_s^T`` from the end of the window back to its start: a step of
    subspace iteration on ``P^T P``, which separates directions a large gap apart."""
    q = frame
    for _, jac in trajectory.chunks(t0, t1, reverse=True):
        for j_t in jac[::-1]:
            q, _ = np.linalg.qr(j_t.T @ q)
    return q


def _windows(scale, shift):
    """Consecutive index ranges whose scales span at most ``WINDOW`` nats; with ``shift`` the
    first window is cut at half width, moving every boundary."""
    n, out, a = len(scale), [], 0
    width = WINDOW / 2 if shift else WINDOW
    while a < n:
        b = a + 1
        while b < n and np.ptp(scale[a:b + 1]) <= width:
            b += 1
        out.append((a, b))
        a, width = b, WINDOW
    return out


def _right_vectors(block):
    """Right singular vectors and values of a graded upper-triangular block by ``dgejsv``
    (on its transpose, whose columns are graded); ``None`` if LAPACK fails."""
    sva, u, _, work, _, info = lapack.dgejsv(np.asfortranarray(block.T), joba=3, jobu=0,
                                             jobv=3, jobr=1, jobt=0, jobp=1)
    if info != 0 or not np.all(np.isfinite(sva)):
        return None
    return u, sva * (work[0] / work[1])


def _refine(frame, scale, rows, shift):
    """Rotate each window of the frame by the right singular vectors of its block of
    ``R_total``; return the frame sorted by decreasing singular-value estimate."""
    frame, est = frame.copy(), scale + np.log(np.abs(np.diag(rows)))
    for a, b in _windows(scale, shift):
        if b - a < 2:
            continue
        top = scale[a:b].max()
        block = np.exp(scale[a:b] - top)[:, None] * rows[a:b, a:b]
        got = _right_vectors(block)
        if got is None:
            continue
        u, sv = got
        frame[:, a:b] = frame[:, a:b] @ u
        with np.errstate(divide="ignore"):
            est[a:b] = top + np.log(sv)
    return frame[:, np.argsort(-est, kind="stable")]


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
                logs, scale, rows, end = _sweep(trajectory, t0, n_steps, frame)
                if prev is not None and np.all(np.abs(logs - prev) <= tol * span):
                    converged = True
                    break
                prev = logs
                if np.ptp(scale) <= WINDOW or sweeps % 2 == 0:
                    frame = _refine(frame, scale, rows, shift=sweeps % 4 == 0)
                else:
                    frame = _backward_sweep(trajectory, t0, n_steps, end @ _resolved(scale, rows))
            log_sigma = np.sort(logs)[::-1]
            frames.append(pd.DataFrame({
                **{c: [val] * n for c, val in trajectory.config.items()},
                "T": n_steps, "span": span, "index": np.arange(1, n + 1),
                "log_sigma": log_sigma, "sweeps": sweeps, "converged": converged}))
    return pd.concat(frames, ignore_index=True)
