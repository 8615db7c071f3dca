"""QR (Benettin) accumulation through a sequence of step Jacobians.

The general kernels consume dense Jacobians in chunks (``(C, n, n)``, processing order), so one
driver serves every cell: the cell kernels (:mod:`.jacobian`) only produce the chunks. The
``_diag`` kernels are the matrix-free fast path of the single-layer vanilla cell,
``J_t = diag(g'_t) W``: no Jacobian is formed, and between two QRs the rows of the frame evolve
independently, so blocks of rows run on different threads. The frame of ``k`` tangent vectors is kept transposed, ``qt`` ``(k, n)`` (row i is
vector i), so that every vector operation in the QR is contiguous.
"""

import math

import numpy as np
from numba import njit, prange

from .qr import householder_qr_rows_ws


@njit(cache=True)
def qr_lyapunov_chunk(jac, qt, work, rdiag, m, phase, incs, n_incs, qr_work):
    """Advance an orthonormal frame through a chunk of Jacobians, re-orthonormalising every
    ``m`` steps.

    Parameters
    ----------
    jac : ndarray, shape (C, n, n)
        ``J_t`` for C consecutive steps.
    qt : ndarray, shape (k, n)
        The frame (row i = tangent vector i), updated in place.
    work : ndarray, shape (k, n)
        Workspace.
    rdiag : ndarray, shape (k,)
        Workspace for R's diagonal.
    m : int
        Re-orthonormalisation interval (steps).
    phase : ndarray of int64, shape (1,)
        Steps since the last QR, carried between chunks (in/out).
    incs : ndarray, shape (rows, k)
        Output: ``log|R_ii|`` of every QR done, appended from row ``n_incs[0]``.
    n_incs : ndarray of int64, shape (1,)
        Number of rows of ``incs`` filled (in/out).
    qr_work : ndarray
        Workspace of the QR (:func:`rnnlab.kernels.cpu.qr.qr_workspace`).
    """
    for c in range(jac.shape[0]):
        # (J Q)^T = Q^T J^T: the product lands transposed, rows = new tangent vectors
        np.dot(qt, jac[c].T, work)
        phase[0] += 1
        if phase[0] == m:
            householder_qr_rows_ws(work, qt, rdiag, qr_work)
            row = n_incs[0]
            for i in range(rdiag.shape[0]):
                incs[row, i] = math.log(abs(rdiag[i]))
            n_incs[0] = row + 1
            phase[0] = 0
        else:
            qt[:, :] = work


@njit(cache=True)
def qr_finish(qt, work, rdiag, incs, n_incs, qr_work):
    """Re-orthonormalise a frame left un-orthonormalised by the last chunk (``phase > 0``)."""
    work[:, :] = qt
    householder_qr_rows_ws(work, qt, rdiag, qr_work)
    row = n_incs[0]
    for i in range(rdiag.shape[0]):
        incs[row, i] = math.log(abs(rdiag[i]))
    n_incs[0] = row + 1


@njit(cache=True)
def _backward_step(w, g, u, log_scale):
    """Finish one backward step: ``dL/ds<t-1> = exp(log_scale) w + g``, where ``w`` is
    ``J_t^T u``; leaves the unit direction in ``u`` and the log-norm in ``log_scale``."""
    n = u.shape[0]
    wn = math.sqrt(np.dot(w, w))
    s = log_scale[0] + math.log(wn) if wn > 0 else -np.inf
    gn = math.sqrt(np.dot(g, g))
    if gn > 0:
        lg = math.log(gn)
        top = max(s, lg)
        a = math.exp(s - top) / wn if wn > 0 else 0.0
        b = math.exp(lg - top) / gn
        for i in range(n):
            w[i] = a * w[i] + b * g[i]
        wn = math.sqrt(np.dot(w, w))
        s = top + math.log(wn) if wn > 0 else -np.inf
    if wn > 0:
        for i in range(n):
            u[i] = w[i] / wn
    log_scale[0] = s


@njit(cache=True)
def gradient_log_norms_chunk(jac, t0, local, u, log_scale, out):
    """Propagate a gradient backwards through a chunk of Jacobians in log-norm form.

    The gradient ``dL/ds<t>`` is kept as ``exp(log_scale) * u`` with ``|u| = 1``, so nothing
    underflows however far it decays. Steps go from ``t0 + C - 1`` down to ``t0``::

        dL/ds<t-1> = J_t^T dL/ds<t> + local gradient at t-1

    Parameters
    ----------
    jac : ndarray, shape (C, n, n)
        ``J_t`` for ``t = t0 .. t0 + C - 1``.
    t0 : int
        First step of the chunk.
    local : ndarray, shape (T, n)
        Gradient of the per-step loss terms with respect to ``s<t>`` (zeros where none).
    u : ndarray, shape (n,)
        Unit direction of ``dL/ds<t0 + C - 1>`` (in/out: leaves as that of ``dL/ds<t0 - 1>``).
    log_scale : ndarray, shape (1,)
        Its log-norm (in/out); ``-inf`` for an exactly zero gradient.
    out : ndarray, shape (T + 1,)
        ``out[t + 1] = log |dL/ds<t>|``; ``out[0]`` is that of the initial state. Entries
        ``t0 + C`` down to ``t0`` are written.
    """
    zero = np.zeros_like(u)
    for c in range(jac.shape[0] - 1, -1, -1):
        t = t0 + c
        out[t + 1] = log_scale[0]
        w = np.dot(u, jac[c])  # J_t^T u
        _backward_step(w, local[t - 1] if t > 0 else zero, u, log_scale)
    out[t0] = log_scale[0]


@njit(cache=True)
def gradient_log_norms_diag(w_hh, deriv, local, u, log_scale, out):
    """:func:`gradient_log_norms_chunk` for ``J_t = diag(deriv[t]) W``, all T steps, no
    Jacobian formed: ``J_t^T u = W^T (deriv[t] * u)``.

    Parameters
    ----------
    w_hh : ndarray, shape (n, n)
        ``W``.
    deriv : ndarray, shape (T, n)
        Activation derivatives ``g'(z_t)``.
    local, u, log_scale, out
        As :func:`gradient_log_norms_chunk` (``out`` fully written).
    """
    zero = np.zeros_like(u)
    scaled = np.empty_like(u)
    n_steps = deriv.shape[0]
    for t in range(n_steps - 1, -1, -1):
        out[t + 1] = log_scale[0]
        for i in range(u.shape[0]):
            scaled[i] = deriv[t, i] * u[i]
        w = np.dot(scaled, w_hh)
        _backward_step(w, local[t - 1] if t > 0 else zero, u, log_scale)
    out[0] = log_scale[0]


@njit(cache=True, parallel=True)
def qr_lyapunov_diag(w_hh_t, deriv, t0, t1, blocks, spare, gathered, qt, rdiag, m, phase,
                     incs, n_incs, qr_work):
    """:func:`qr_lyapunov_chunk` for ``J_t = diag(deriv[t]) W`` over steps ``[t0, t1)``.

    The frame lives in ``blocks`` ``(P, R, n)``: row ``i`` of the frame is
    ``blocks[i // R, i % R]`` (rows past k are zero and stay zero). Between QRs each block is
    advanced on its own thread, ``B <- (B W^T) diag(g'_t)`` (the transposed ``J_t Q``).

    Parameters
    ----------
    w_hh_t : ndarray, shape (n, n)
        ``W^T`` (C-contiguous).
    deriv : ndarray, shape (T, n)
        Activation derivatives.
    t0, t1 : int
        Steps to process.
    blocks, spare : ndarray, shape (P, R, n)
        The frame in row blocks (in/out) and workspace.
    gathered : ndarray, shape (k, n)
        Workspace: the frame gathered for the QR.
    qt : ndarray, shape (k, n)
        Workspace: the QR's orthonormal rows.
    rdiag, m, phase, incs, n_incs, qr_work
        As :func:`qr_lyapunov_chunk`.
    """
    n_blocks, rows, n = blocks.shape
    k = qt.shape[0]
    s = t0
    while s < t1:
        steps = min(m - phase[0], t1 - s)
        for p in prange(n_blocks):
            for q in range(steps):
                src = blocks[p] if q % 2 == 0 else spare[p]
                dst = spare[p] if q % 2 == 0 else blocks[p]
                np.dot(src, w_hh_t, dst)
                d = deriv[s + q]
                for r in range(rows):
                    for j in range(n):
                        dst[r, j] *= d[j]
            if steps % 2 == 1:
                blocks[p][:, :] = spare[p]
        s += steps
        phase[0] += steps
        if phase[0] == m:
            for i in range(k):
                gathered[i] = blocks[i // rows, i % rows]
            householder_qr_rows_ws(gathered, qt, rdiag, qr_work)
            for i in range(k):
                blocks[i // rows, i % rows] = qt[i]
            row = n_incs[0]
            for i in range(k):
                incs[row, i] = math.log(abs(rdiag[i]))
            n_incs[0] = row + 1
            phase[0] = 0
