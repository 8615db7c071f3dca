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

from ..._blas import blas_threads_for
from ...activations import activate, derivative_from_output
from .blas import _madd
from .qr import _N, _at, _gemm, householder_qr_rows_ws, qr_workspace_size


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


@njit(cache=True)
def _frame_step(w_hh_t, deriv, t, src, dst, p, consts):
    """``dst[p] = (src[p] W^T) diag(deriv[t])`` for block ``p`` of a frame in row blocks: one
    BLAS call on pointers (row blocks as slices cost a reference-count pair each, as much as
    the product of a small frame)."""
    rows, n = src.shape[1], src.shape[2]
    o = p * rows * n
    # row-major dst = src @ w_hh_t is column-major dst^T = w_hh_t^T src^T
    _gemm(_N, _N, n, rows, n, _at(consts, 0), _at(w_hh_t, 0), n, _at(src, o), n,
          _at(consts, 1), _at(dst, o), n)
    for r in range(rows):
        for j in range(n):
            dst[p, r, j] *= deriv[t, j]


@njit(cache=True)
def _advance_block(w_hh_t, deriv, s, steps, blocks, spare, p, consts):
    """``steps`` steps of row block ``p`` from step ``s``: ``B <- (B W^T) diag(g'_t)``,
    alternating between ``blocks`` and ``spare``: the result is in ``spare`` when ``steps`` is
    odd, in ``blocks`` when it is even. ``consts`` holds 1 and 0 (BLAS's alpha and beta)."""
    for q in range(steps):
        if q % 2 == 0:
            _frame_step(w_hh_t, deriv, s + q, blocks, spare, p, consts)
        else:
            _frame_step(w_hh_t, deriv, s + q, spare, blocks, p, consts)


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
    n_blocks = blocks.shape[0]
    consts = np.empty(2, dtype=blocks.dtype)
    consts[0] = 1.0
    consts[1] = 0.0
    s = t0
    while s < t1:
        steps = min(m - phase[0], t1 - s)
        if n_blocks == 1:
            # one block: no parallel region (even on one thread, entering one costs about as
            # much as a small frame's step)
            _advance_block(w_hh_t, deriv, s, steps, blocks, spare, 0, consts)
        else:
            for p in prange(n_blocks):
                _advance_block(w_hh_t, deriv, s, steps, blocks, spare, p, consts)
        s += steps
        phase[0] += steps
        # odd step counts leave the frame in ``spare``
        _settle_blocks(blocks, spare, steps % 2 == 1, phase[0] == m, gathered, qt, rdiag, incs,
                       n_incs, qr_work)
        if phase[0] == m:
            phase[0] = 0


@njit(cache=True)
def _settle_blocks(blocks, spare, in_spare, factor, gathered, qt, rdiag, incs, n_incs, qr_work):
    """Leave the frame of :func:`qr_lyapunov_diag` in ``blocks``, re-orthonormalised when
    ``factor``: gather it (from ``spare`` when ``in_spare``), factor it, scatter ``Q`` back and
    append ``log|R_ii|`` to ``incs``. Compiled apart from the parallel driver: there, every
    array assignment would become a parallel region of its own."""
    rows = blocks.shape[1]
    k = qt.shape[0]
    src = spare if in_spare else blocks
    if not factor:
        if in_spare:
            blocks[:, :, :] = spare
        return
    if blocks.shape[0] == 1 and rows == k and in_spare:
        # a single block: factor straight from the product into the frame
        householder_qr_rows_ws(spare[0], blocks[0], rdiag, qr_work)
    else:
        for i in range(k):
            gathered[i] = src[i // rows, i % rows]
        householder_qr_rows_ws(gathered, qt, rdiag, qr_work)
        for i in range(k):
            blocks[i // rows, i % rows] = qt[i]
    row = n_incs[0]
    for i in range(k):
        incs[row, i] = math.log(abs(rdiag[i]))
    n_incs[0] = row + 1


# ----------------------------------------------------------------------------- ensembles
# Many vanilla networks at once (a sweep over gains or seeds): each network runs its own
# trajectory, computed on the fly, with its own frame. Networks are independent, so the parallel
# loop runs over them *outside* the time loop (one parallel region for the whole run).


@njit(cache=True, parallel=True)
def lyapunov_ensemble(w_hh_t, drive, h0, act, q0t, m, warmup, n_steps, sums, status):
    """Lyapunov spectra of ``E`` vanilla networks along their own trajectories (Benettin QR).

    Network ``e`` runs ``a<t> = g(W_e a<t-1> + drive<t>)`` from ``a<-1> = h0[e]``; its frame of
    ``k`` tangent vectors (rows, as in :func:`qr_lyapunov_diag`) evolves as
    ``B <- (B W_e^T) diag(g'(a<t>))`` and is re-orthonormalised by a QR every ``m`` steps, at
    step ``warmup - 1`` and at the last step; the ``log|R_ii|`` of the QRs after the warm-up are
    summed. This is exactly :func:`rnnlab.diagnostics.lyapunov_spectrum` on each network's
    trajectory (the state update even sums in the order of
    :func:`rnnlab.kernels.cpu.vanilla.rnn_recurrence`, so the trajectories are bitwise those
    of ``rnnlab.RNN``).

    Parameters
    ----------
    w_hh_t : ndarray, shape (E, n, n), float64, C-contiguous
        ``W_e^T`` for every network (transposed: the inner loops run over contiguous rows).
    drive : ndarray, shape (Td, Ed, n), float64
        ``W_ih x<t> + b``; ``Td`` is ``n_steps`` or 1 (the same drive at every step) and ``Ed``
        is ``E`` or 1 (the same drive for every network).
    h0 : ndarray, shape (E, n)
        Initial states.
    act : int
        Activation code (:mod:`rnnlab.activations`).
    q0t : ndarray, shape (k, n)
        Initial frame (row i = tangent vector i, orthonormal), the same for every network.
    m : int
        Re-orthonormalisation interval (steps), >= 1.
    warmup : int
        Steps whose QRs are not summed, ``0 <= warmup < n_steps``.
    n_steps : int
        Steps T.
    sums : ndarray, shape (E, k), float64
        Output (accumulated into: pass zeros): ``sum log|R_ii|`` over the measured QRs, summed
        in step order; the exponents are ``sums / (n_steps - warmup)``.
    status : ndarray of int64, shape (E,)
        In/out: pass -1; set to the first step at which network ``e``'s state was not finite.

    Notes
    -----
    Memory is bounded by the frames (``2 k n`` floats per network and thread): no per-step
    record is kept. Call with BLAS limited to one thread (the products are small and the
    networks already run in parallel); see :func:`lyapunov_ensemble_sums`.
    """
    n_net, n = w_hh_t.shape[0], w_hh_t.shape[1]
    k = q0t.shape[0]
    # 1 where the drive varies along the axis, 0 where it is broadcast (integer multipliers
    # keep the index arithmetic integer inside the parallel loop)
    step_stride = 1 if drive.shape[0] > 1 else 0
    net_stride = 1 if drive.shape[1] > 1 else 0
    for e in prange(n_net):
        w_t = w_hh_t[e]
        frame = q0t.copy()
        work = np.empty((k, n))
        rdiag = np.empty(k)
        qr_work = np.empty(qr_workspace_size(k, n))
        a = h0[e].copy()
        z = np.empty(n)
        d = np.empty(n)
        phase = 0
        for t in range(n_steps):
            src = drive[t * step_stride, e * net_stride]
            for i in range(n):
                z[i] = src[i]
            # the order and rounding of rnn_recurrence: j outer, a contiguous axpy over i, each
            # step a multiply-add as the per-step product rounds it
            for j in range(n):
                a_j = a[j]
                w_row = w_t[j]
                for i in range(n):
                    z[i] = _madd(z[i], a_j, w_row[i])
            for i in range(n):
                a[i] = activate(act, z[i])
                d[i] = derivative_from_output(act, a[i])
            if status[e] < 0:
                for i in range(n):
                    if not np.isfinite(a[i]):
                        status[e] = t
                        break
            # (J_t Q)^T = Q^T W^T diag(g'): the frame's rows are the tangent vectors
            np.dot(frame, w_t, work)
            for r in range(k):
                for j in range(n):
                    work[r, j] *= d[j]
            phase += 1
            if phase == m or t == warmup - 1 or t == n_steps - 1:
                householder_qr_rows_ws(work, frame, rdiag, qr_work)
                if t >= warmup:
                    for i in range(k):
                        sums[e, i] += math.log(abs(rdiag[i]))
                phase = 0
            else:
                frame, work = work, frame


def lyapunov_ensemble_sums(w_hh, drive, h0, act, q0t, m, warmup, n_steps):
    """Run :func:`lyapunov_ensemble` on host arrays (the CPU twin of
    :func:`rnnlab.kernels.cuda.lyapunov.lyapunov_ensemble_sums`).

    Parameters
    ----------
    w_hh : ndarray, shape (E, n, n)
        Recurrent weights ``W_e`` (PyTorch layout), float64.
    drive : ndarray, shape (Td, Ed, n)
        See :func:`lyapunov_ensemble` (``Td`` in {1, n_steps}, ``Ed`` in {1, E}).
    h0 : ndarray, shape (E, n)
        Initial states.
    act : int
        Activation code.
    q0t : ndarray, shape (k, n)
        Initial frame (rows orthonormal).
    m, warmup, n_steps : int
        As :func:`lyapunov_ensemble` (validated by the caller).

    Returns
    -------
    sums : ndarray, shape (E, k)
        ``sum log|R_ii|`` over the measured QRs.
    status : ndarray of int64, shape (E,)
        First step with a non-finite state, -1 where the trajectory stayed finite.
    """
    w_hh_t = np.ascontiguousarray(np.transpose(w_hh, (0, 2, 1)), dtype=np.float64)
    drive = np.ascontiguousarray(drive, dtype=np.float64)
    h0 = np.ascontiguousarray(h0, dtype=np.float64)
    q0t = np.ascontiguousarray(q0t, dtype=np.float64)
    sums = np.zeros((w_hh_t.shape[0], q0t.shape[0]))
    status = np.full(w_hh_t.shape[0], -1, dtype=np.int64)
    # the networks run in parallel: each product is small, one BLAS thread each
    with blas_threads_for(0):
        lyapunov_ensemble(w_hh_t, drive, h0, int(act), q0t, int(m), int(warmup), int(n_steps),
                          sums, status)
    return sums, status
