"""Step Jacobians of the vanilla RNN on CUDA: the GPU twin of :mod:`rnnlab.kernels.cpu.jacobian`.

- :func:`rnn_jacobian_apply` and :func:`rnn_jacobian_apply_transpose`: kernels with the
  arguments of their CPU namesakes (``out = J_t q`` and ``out = J_t^T v`` for a block of vectors
  of the joint state of ``L`` stacked layers with ``D`` deep-transition sublayers; the array
  conventions are those of :mod:`rnnlab.kernels.cpu.jacobian`). One thread block per vector
  (column of ``q``), the H-vectors of the chain in shared memory, one barrier per matrix-vector
  product. One step per launch: they serve analyses that apply a few Jacobians, not time loops
  (the Lyapunov kernel has its own fused step). :func:`jacobian_apply` and
  :func:`jacobian_apply_transpose` launch them on host or device arrays.
- :func:`rnn_frame_step_diag`: the device function of the matrix-free frame step
  ``B <- (B W^T) diag(g')`` (``J_t = diag(g'_t) W``) used by
  :func:`rnnlab.kernels.cuda.lyapunov.lyapunov_ensemble`.

Deterministic: no atomics, every sum in a fixed order.
"""

import math

import numpy as np

try:
    from numba import cuda
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "rnnlab.kernels.cuda needs the numba-cuda package (pip install 'numba-cuda[cu13]')"
    ) from exc

from ...activations import derivative_from_output
from . import blas

#: Output columns a thread accumulates at once in :func:`rnn_frame_step_diag` (register tile:
#: each frame element read from shared memory feeds this many multiply-adds).
FRAME_TILE = 8


@cuda.jit
def rnn_jacobian_apply(w_hh, w_up, w_tr, states, act, t, q, out):
    """``out = J_t q`` for a block ``q`` of tangent vectors of the joint state.

    Parameters
    ----------
    w_hh, w_up, w_tr, states
        As :func:`rnnlab.kernels.cpu.jacobian.rnn_jacobian_apply`: ``(L, H, H)``,
        ``(L, H, H)``, ``(L, D, H, H)``, ``(L, D + 1, T, H)`` device arrays.
    act : int
        Activation code.
    t : int
        Step; ``J_t`` maps the state after step ``t - 1`` to that after ``t``.
    q : device array, shape (L, H, k)
        Tangent vectors at ``s<t-1>``.
    out : device array, shape (L, H, k)
        Output: the vectors at ``s<t>``.

    Notes
    -----
    Launch with ``grid = k`` (a block per vector), any block size, and dynamic shared memory
    of ``2 H * itemsize`` bytes.
    """
    n_layers = w_hh.shape[0]
    hidden = w_hh.shape[1]
    depth = w_tr.shape[1]
    c = cuda.blockIdx.x
    if c >= q.shape[2]:
        return
    tid = cuda.threadIdx.x
    n_thr = cuda.blockDim.x
    buf = cuda.shared.array(0, dtype=q.dtype)
    zero = q.dtype.type(0)
    for l in range(n_layers):
        # z = W_hh q_l (+ W_ih^l out_{l-1}), then scaled by g' of sublayer 0
        for i in range(tid, hidden, n_thr):
            acc = zero
            for j in range(hidden):
                acc += w_hh[l, i, j] * q[l, j, c]
            if l > 0:
                for j in range(hidden):
                    acc += w_up[l, i, j] * out[l - 1, j, c]
            buf[i] = acc * derivative_from_output(act, states[l, 0, t, i])
        cuda.syncthreads()
        cur = 0
        for kk in range(1, depth + 1):
            src = cur * hidden
            dst = (1 - cur) * hidden
            for i in range(tid, hidden, n_thr):
                acc = zero
                for j in range(hidden):
                    acc += w_tr[l, kk - 1, i, j] * buf[src + j]
                buf[dst + i] = acc * derivative_from_output(act, states[l, kk, t, i])
            cur = 1 - cur
            cuda.syncthreads()
        for i in range(tid, hidden, n_thr):
            out[l, i, c] = buf[cur * hidden + i]
        # out[l] is read whole by the next layer; buf is rewritten
        cuda.syncthreads()


@cuda.jit
def rnn_jacobian_apply_transpose(w_hh, w_up, w_tr, states, act, t, v, out):
    """``out = J_t^T v`` for a block ``v`` of adjoint vectors (gradients) of the joint state.

    Parameters
    ----------
    w_hh, w_up, w_tr, states, act, t
        As :func:`rnn_jacobian_apply`.
    v : device array, shape (L, H, k)
        Gradients with respect to ``s<t>``.
    out : device array, shape (L, H, k)
        Output: gradients with respect to ``s<t-1>`` through step t.

    Notes
    -----
    Launch with ``grid = k``, any block size, and dynamic shared memory of
    ``3 H * itemsize`` bytes. Thread ``j`` reads column ``j`` of each matrix (coalesced).
    """
    n_layers = w_hh.shape[0]
    hidden = w_hh.shape[1]
    depth = w_tr.shape[1]
    c = cuda.blockIdx.x
    if c >= v.shape[2]:
        return
    tid = cuda.threadIdx.x
    n_thr = cuda.blockDim.x
    buf = cuda.shared.array(0, dtype=v.dtype)
    carry = 2 * hidden  # W_ih^{l}^T g of the layer above
    zero = v.dtype.type(0)
    for i in range(tid, hidden, n_thr):
        buf[carry + i] = zero
    cuda.syncthreads()
    for l in range(n_layers - 1, -1, -1):
        cur = 0
        for i in range(tid, hidden, n_thr):
            buf[i] = v[l, i, c] + buf[carry + i]
        cuda.syncthreads()
        for kk in range(depth, 0, -1):
            src = cur * hidden
            dst = (1 - cur) * hidden
            for j in range(tid, hidden, n_thr):
                acc = zero
                for i in range(hidden):
                    acc += w_tr[l, kk - 1, i, j] * (
                        buf[src + i] * derivative_from_output(act, states[l, kk, t, i]))
                buf[dst + j] = acc
            cur = 1 - cur
            cuda.syncthreads()
        src = cur * hidden
        for i in range(tid, hidden, n_thr):
            buf[src + i] *= derivative_from_output(act, states[l, 0, t, i])
        cuda.syncthreads()
        for j in range(tid, hidden, n_thr):
            acc = zero
            for i in range(hidden):
                acc += w_hh[l, i, j] * buf[src + i]
            out[l, j, c] = acc
            if l > 0:
                acc = zero
                for i in range(hidden):
                    acc += w_up[l, i, j] * buf[src + i]
                buf[carry + j] = acc
        cuda.syncthreads()


@cuda.jit(device=True)
def rnn_frame_step_diag(frame, ld, k, n, w_t, deriv, scratch, chunk):
    """Advance a row-frame one step of ``J = diag(deriv) W``: ``B <- (B W^T) diag(deriv)``.

    Every thread of the block must call it (it contains barriers). The matrix-free step of
    :func:`rnnlab.kernels.cpu.lyapunov.qr_lyapunov_diag`, by the whole block.

    Parameters
    ----------
    frame : 1-D array (shared or global memory), float64
        Row ``i`` (``frame[i*ld : i*ld + n]``) is tangent vector ``i``; updated in place.
    ld : int
        Row stride of ``frame`` and ``scratch`` (``>= n``; odd avoids bank conflicts).
    k, n : int
        Number of vectors and their length.
    w_t : 2-D array, shape (n, n)
        ``W^T`` (C-contiguous, global memory): threads sharing an output tile read the same
        row segment (a broadcast).
    deriv : 1-D array, shape (n,)
        ``g'`` at this step.
    scratch : 1-D shared array, at least ``chunk * ld`` elements
        The new rows of a chunk, before they replace the old ones.
    chunk : int
        Rows per chunk (``>= 1``; ``blockDim / ceil(n / FRAME_TILE)`` keeps every thread busy).

    Notes
    -----
    Thread ``item`` computes row ``c0 + item % rows`` at columns
    ``FRAME_TILE * (item // rows) ...``: consecutive threads take consecutive rows, so their
    shared-memory reads are conflict-free for odd ``ld``. Two barriers per chunk; ends with one.
    """
    tid = cuda.threadIdx.x
    n_thr = cuda.blockDim.x
    n_tiles = (n + FRAME_TILE - 1) // FRAME_TILE
    last = n - 1
    for c0 in range(0, k, chunk):
        rows = min(chunk, k - c0)
        for item in range(tid, rows * n_tiles, n_thr):
            r = item % rows
            j0 = (item // rows) * FRAME_TILE
            # columns past the end are clamped to the last one (computed, not stored)
            j1 = min(j0 + 1, last)
            j2 = min(j0 + 2, last)
            j3 = min(j0 + 3, last)
            j4 = min(j0 + 4, last)
            j5 = min(j0 + 5, last)
            j6 = min(j0 + 6, last)
            j7 = min(j0 + 7, last)
            base = (c0 + r) * ld
            a0 = 0.0
            a1 = 0.0
            a2 = 0.0
            a3 = 0.0
            a4 = 0.0
            a5 = 0.0
            a6 = 0.0
            a7 = 0.0
            for ll in range(n):
                b = frame[base + ll]
                a0 += b * w_t[ll, j0]
                a1 += b * w_t[ll, j1]
                a2 += b * w_t[ll, j2]
                a3 += b * w_t[ll, j3]
                a4 += b * w_t[ll, j4]
                a5 += b * w_t[ll, j5]
                a6 += b * w_t[ll, j6]
                a7 += b * w_t[ll, j7]
            s = r * ld
            scratch[s + j0] = a0 * deriv[j0]
            if j0 + 1 <= last:
                scratch[s + j1] = a1 * deriv[j1]
            if j0 + 2 <= last:
                scratch[s + j2] = a2 * deriv[j2]
            if j0 + 3 <= last:
                scratch[s + j3] = a3 * deriv[j3]
            if j0 + 4 <= last:
                scratch[s + j4] = a4 * deriv[j4]
            if j0 + 5 <= last:
                scratch[s + j5] = a5 * deriv[j5]
            if j0 + 6 <= last:
                scratch[s + j6] = a6 * deriv[j6]
            if j0 + 7 <= last:
                scratch[s + j7] = a7 * deriv[j7]
        cuda.syncthreads()
        for idx in range(tid, rows * n, n_thr):
            r = idx // n
            j = idx - r * n
            frame[(c0 + r) * ld + j] = scratch[r * ld + j]
        cuda.syncthreads()


def frame_chunk(n, k, threads):
    """Rows per chunk of :func:`rnn_frame_step_diag`: enough (row, tile) items for every thread,
    at most ``k``."""
    tiles = math.ceil(n / FRAME_TILE)
    return max(1, min(k, threads // tiles))


# --- host wrappers ------------------------------------------------------------------------------

def _launch(kernel, n_buffers, w_hh, w_up, w_tr, states, act, t, q, out, threads):
    q_host = not blas.is_device_array(q)
    dtype = np.dtype(np.asarray(q).dtype if q_host else q.dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"the CUDA kernels run in float32 or float64, got {dtype}")
    d_q = blas.to_device(q, dtype)
    n_layers, hidden, k = d_q.shape
    d_out = (cuda.device_array((n_layers, hidden, k), dtype=dtype) if out is None
             else blas.to_device(out, dtype) if blas.is_device_array(out)
             else cuda.device_array(np.shape(out), dtype=dtype))
    if threads is None:
        threads = min(1024, 32 * max(1, math.ceil(hidden / 32)))
    if k > 0:
        kernel[k, threads, 0, n_buffers * hidden * dtype.itemsize](
            blas.to_device(w_hh, dtype), blas.to_device(w_up, dtype), blas.to_device(w_tr, dtype),
            blas.to_device(states, dtype), int(act), int(t), d_q, d_out)
    if out is None:
        return d_out.copy_to_host() if q_host else d_out
    if not blas.is_device_array(out):
        out[...] = d_out.copy_to_host()
    return out


def jacobian_apply(w_hh, w_up, w_tr, states, act, t, q, out=None, threads=None):
    """``J_t q`` on the GPU (launches :func:`rnn_jacobian_apply`).

    Parameters
    ----------
    w_hh, w_up, w_tr, states, act, t, q
        As :func:`rnnlab.kernels.cpu.jacobian.rnn_jacobian_apply`; NumPy arrays (copied to the
        device) or C-contiguous device arrays of ``q``'s dtype.
    out : array, shape (L, H, k), optional
        Written in place when given (host or device array).
    threads : int, optional
        Threads per block (default: ``H`` rounded up to whole warps).

    Returns
    -------
    ndarray or device array
        ``out``, or a new array (on the host when ``q`` is a host array).
    """
    return _launch(rnn_jacobian_apply, 2, w_hh, w_up, w_tr, states, act, t, q, out, threads)


def jacobian_apply_transpose(w_hh, w_up, w_tr, states, act, t, v, out=None, threads=None):
    """``J_t^T v`` on the GPU (launches :func:`rnn_jacobian_apply_transpose`).

    Parameters
    ----------
    w_hh, w_up, w_tr, states, act, t, v, out, threads
        As :func:`jacobian_apply`.

    Returns
    -------
    ndarray or device array
        ``out``, or a new array (on the host when ``v`` is a host array).
    """
    return _launch(rnn_jacobian_apply_transpose, 3, w_hh, w_up, w_tr, states, act, t, v, out,
                   threads)
