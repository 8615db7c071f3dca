"""Lyapunov spectra of ensembles of vanilla RNNs on CUDA: the GPU twin of
:func:`rnnlab.kernels.cpu.lyapunov.lyapunov_ensemble`.

:func:`lyapunov_ensemble` is a persistent kernel: ONE launch runs all T steps of all E networks,
one thread block per network (networks are independent, so blocks never wait for each other).
Per step, inside a block:

1. state: thread ``i`` computes ``a_i = g(drive_i + sum_j W_ij a_j)`` reading ``W^T`` row by
   row (coalesced), the state double-buffered in shared memory; ``g'`` into shared memory;
   one barrier;
2. frame step ``B <- (B W^T) diag(g')`` (:func:`rnnlab.kernels.cuda.jacobian.rnn_frame_step_diag`):
   register tiles of 8 outputs per thread, ``W^T`` read from global memory (L1/L2-resident,
   each load broadcast to the threads sharing a tile); two barriers per chunk of rows;
3. every ``m`` steps (and at the end of the warm-up and of the run) the block-level Householder
   QR (:func:`rnnlab.kernels.cuda.qr.householder_qr_rows`), two barriers per column for the
   factorisation and two for forming ``Q``; thread ``i`` adds ``log|R_ii|`` to its network's
   sum (float64, step order: deterministic).

Where the frame lives. The QR sweeps the frame about ``2k`` times per re-orthonormalisation
(the factorisation and the forming of ``Q`` each read and write the trailing vectors once per
column), so the frame belongs in shared memory: ``k * ld * 8`` bytes (``ld = n`` rounded up to
odd), 129 KiB at ``n = k = 128`` (161 KiB with the kernel's other buffers, 256 threads). That
is more than the 48 KiB a block gets by default (enough up to ``n = k = 57``) but less than the
227 KiB an H100 (sm_90) block may opt in to (up to ``n = k = 159``):
:func:`lyapunov_ensemble_sums` raises the kernel's dynamic shared-memory limit through the
driver when the frame needs it, and falls back to a frame in global memory (L1/L2-cached; same
kernel, ``frame_in_shared=False``) where opt-in is impossible or refused. ``W`` stays in global
memory either way (``n * n * 8`` bytes would not fit beside the frame): the state update reads
it coalesced, the frame step once per 8 output columns per row chunk, broadcast.

Registers: 160 per thread at sm_90 (no spills), so a block may have at most 384 threads.

No atomics; every reduction in a fixed order; results are bitwise reproducible run to run.
"""

import math
import warnings

import numpy as np

try:
    from numba import cuda
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "rnnlab.kernels.cuda needs the numba-cuda package (pip install 'numba-cuda[cu13]')"
    ) from exc

from ...activations import activate, derivative_from_output
from . import blas
from .jacobian import frame_chunk, rnn_frame_step_diag
from .qr import householder_qr_rows, leading_dimension, scratch_size

#: Dynamic shared memory a block may use without opting in (bytes).
SHARED_MEMORY_BYTES = 48 * 1024

#: Default threads per block (8 warps: enough parallel (vector, segment) slots for the QR at
#: n = k = 128; more would leave the late QR columns idler).
DEFAULT_THREADS = 256

#: Default threads per block in Numba's CUDA simulator, which runs a Python thread per CUDA
#: thread (any block size computes the same result, to round-off).
SIMULATOR_THREADS = 8


@cuda.jit
def lyapunov_ensemble(w_hh_t, drive, h0, act, q0t, m, warmup, n_steps, chunk, frames, sums,
                      status, frame_in_shared):
    """Lyapunov spectra of ``E`` vanilla networks, all T steps in one launch.

    Same method and arguments as :func:`rnnlab.kernels.cpu.lyapunov.lyapunov_ensemble`, plus
    the launch-dependent ``chunk``, ``frames`` and ``frame_in_shared``.

    Parameters
    ----------
    w_hh_t : device array, shape (E, n, n), float64
        ``W_e^T`` for every network.
    drive : device array, shape (Td, Ed, n), float64
        ``W_ih x<t> + b``; ``Td`` in {1, n_steps}, ``Ed`` in {1, E} (broadcast where 1).
    h0 : device array, shape (E, n)
        Initial states.
    act : int
        Activation code.
    q0t : device array, shape (k, n)
        Initial frame (row i = tangent vector i), the same for every network.
    m, warmup, n_steps : int
        QR interval, unmeasured steps (``< n_steps``), steps.
    chunk : int
        Rows per chunk of the frame step (:func:`rnnlab.kernels.cuda.jacobian.frame_chunk`).
    frames : device array, shape (E, k * ld), float64
        The frames when ``frame_in_shared`` is False (any array otherwise: not touched).
    sums : device array, shape (E, k), float64
        Output, accumulated into (pass zeros): ``sum log|R_ii|`` over the measured QRs.
    status : device array of int64, shape (E,)
        In/out: pass -1; the first step at which network ``e``'s state was not finite.
    frame_in_shared : bool
        Keep the frame in dynamic shared memory.

    Notes
    -----
    Launch with ``grid = E`` (one block per network), any block size (a multiple of 32,
    :data:`DEFAULT_THREADS`), and :func:`shared_bytes` of dynamic shared memory.
    """
    n_net = w_hh_t.shape[0]
    n = w_hh_t.shape[1]
    k = q0t.shape[0]
    e = cuda.blockIdx.x
    if e >= n_net:
        return  # whole block: no thread of it reaches a barrier
    tid = cuda.threadIdx.x
    n_thr = cuda.blockDim.x
    ld = leading_dimension(n)
    smem = cuda.shared.array(0, dtype=sums.dtype)
    # layout: [state, 2 buffers (2n)] [g' (n)] [QR work] [frame-step scratch (chunk*ld)]
    #         [frame (k*ld), if in shared]
    o_deriv = 2 * n
    o_qr = 3 * n
    o_scr = o_qr + scratch_size(k, n, n_thr)
    o_frame = o_scr + chunk * ld
    deriv = smem[o_deriv:o_qr]
    qr_work = smem[o_qr:o_scr]
    scratch = smem[o_scr:o_frame]
    if frame_in_shared:
        frame = smem[o_frame:o_frame + k * ld]
    else:
        frame = frames[e]
    rdiag = qr_work[2 * k:3 * k]
    w_t = w_hh_t[e]
    step_stride = 1 if drive.shape[0] > 1 else 0
    de = e if drive.shape[1] > 1 else 0
    for idx in range(tid, k * n, n_thr):
        i = idx // n
        frame[i * ld + idx - i * n] = q0t[i, idx - i * n]
    for i in range(tid, n, n_thr):
        smem[i] = h0[e, i]
    cuda.syncthreads()
    cur = 0
    phase = 0
    for t in range(n_steps):
        src = cur * n
        dst = (1 - cur) * n
        td = t * step_stride
        # the summation order of the CPU kernel (j ascending, from the drive)
        for i in range(tid, n, n_thr):
            z = drive[td, de, i]
            for j in range(n):
                z += smem[src + j] * w_t[j, i]
            a = activate(act, z)
            smem[dst + i] = a
            deriv[i] = derivative_from_output(act, a)
            if not math.isfinite(a) and status[e] < 0:
                status[e] = t  # every thread that writes in this step writes the same t
        cur = 1 - cur
        cuda.syncthreads()
        rnn_frame_step_diag(frame, ld, k, n, w_t, deriv, scratch, chunk)
        phase += 1
        if phase == m or t == warmup - 1 or t == n_steps - 1:
            householder_qr_rows(frame, ld, k, n, qr_work)
            if t >= warmup:
                for i in range(tid, k, n_thr):
                    r = abs(rdiag[i])
                    # log(0) = -inf on the GPU; spelled out for the simulator (Python's raises)
                    sums[e, i] += math.log(r) if r > 0.0 else -math.inf
            phase = 0


# --- launch configuration -----------------------------------------------------------------------

def shared_elements(n, k, threads, frame_in_shared):
    """float64 elements of dynamic shared memory :func:`lyapunov_ensemble` needs."""
    ld = leading_dimension(n)
    small = 3 * n + scratch_size(k, n, threads) + frame_chunk(n, k, threads) * ld
    return small + (k * ld if frame_in_shared else 0)


def shared_bytes(n, k, threads, frame_in_shared):
    """Bytes of dynamic shared memory :func:`lyapunov_ensemble` needs."""
    return 8 * shared_elements(n, k, threads, frame_in_shared)


def _simulated():
    from numba import config

    return bool(getattr(config, "ENABLE_CUDASIM", False))


def _opt_in_limit():
    """The most dynamic shared memory a block may opt in to on the current device (bytes)."""
    try:
        return int(cuda.get_current_device().MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
    except Exception:  # noqa: BLE001 - an old driver or binding: no opt-in
        return SHARED_MEMORY_BYTES


def _allow_shared(kernel, args, nbytes):
    """Let ``kernel``, specialised for ``args``, launch with ``nbytes`` of dynamic shared memory
    (above 48 KB a kernel must opt in: ``CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES``)."""
    from numba import typeof
    from numba.cuda.cudadrv.driver import binding, driver

    compiled = kernel.compile(tuple(typeof(a) for a in args))
    cufunc = compiled._codelibrary.get_cufunc()
    attr = binding.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
    driver.cuKernelSetAttribute(attr, int(nbytes), cufunc.handle, cufunc.device.id)


def lyapunov_ensemble_sums(w_hh, drive, h0, act, q0t, m, warmup, n_steps, threads=None,
                           frame_in_shared=None):
    """Run :func:`lyapunov_ensemble` (the CUDA twin of
    :func:`rnnlab.kernels.cpu.lyapunov.lyapunov_ensemble_sums`).

    Parameters
    ----------
    w_hh : ndarray, shape (E, n, n)
        Recurrent weights ``W_e`` (PyTorch layout), float64.
    drive : ndarray or device array, shape (Td, Ed, n)
        ``Td`` in {1, n_steps}, ``Ed`` in {1, E}; a C-contiguous float64 device array is used
        in place (a long drive need not be copied twice).
    h0 : ndarray, shape (E, n)
        Initial states.
    act : int
        Activation code.
    q0t : ndarray, shape (k, n)
        Initial frame (rows orthonormal).
    m, warmup, n_steps : int
        As the kernel (validated by the caller).
    threads : int, optional
        Threads per block (default :data:`DEFAULT_THREADS`; at most 384 on sm_90, where the
        kernel uses 160 registers per thread). Results are bitwise reproducible for a given
        count and agree to round-off across counts (the QR's partial sums are grouped by it).
    frame_in_shared : bool, optional
        Force the frame into shared (True) or global (False) memory; default: shared where it
        fits in the block's limit (48 KB, or the device's opt-in limit).

    Returns
    -------
    sums : ndarray, shape (E, k)
        ``sum log|R_ii|`` over the measured QRs.
    status : ndarray of int64, shape (E,)
        First step with a non-finite state, -1 where the trajectory stayed finite.
    """
    f64 = np.dtype(np.float64)
    w_hh_t = np.ascontiguousarray(np.transpose(np.asarray(w_hh), (0, 2, 1)), dtype=f64)
    n_net, n = w_hh_t.shape[0], w_hh_t.shape[1]
    k = int(q0t.shape[0])
    simulated = _simulated()
    if threads is None:
        threads = SIMULATOR_THREADS if simulated else DEFAULT_THREADS
    threads = int(threads)
    if not 1 <= threads <= 1024:
        raise ValueError(f"threads must be in [1, 1024], got {threads}")
    chunk = frame_chunk(n, k, threads)
    need = shared_bytes(n, k, threads, True)
    if frame_in_shared is None:
        frame_in_shared = need <= SHARED_MEMORY_BYTES or (not simulated
                                                          and need <= _opt_in_limit())
    frame_in_shared = bool(frame_in_shared)
    ld = leading_dimension(n)
    args = [cuda.to_device(w_hh_t), blas.to_device(drive, f64), cuda.to_device(
        np.ascontiguousarray(h0, dtype=f64)), int(act), cuda.to_device(
        np.ascontiguousarray(q0t, dtype=f64)), int(m), int(warmup), int(n_steps), int(chunk),
        cuda.device_array((n_net, k * ld) if not frame_in_shared else (1, 1), dtype=f64),
        cuda.to_device(np.zeros((n_net, k))), cuda.to_device(np.full(n_net, -1, np.int64)),
        frame_in_shared]
    nbytes = shared_bytes(n, k, threads, frame_in_shared)
    if frame_in_shared and nbytes > SHARED_MEMORY_BYTES and not simulated:
        try:
            _allow_shared(lyapunov_ensemble, args, nbytes)
            lyapunov_ensemble[n_net, threads, 0, nbytes](*args)
        except Exception as exc:  # noqa: BLE001 - opt-in refused: run with the frame in global
            warnings.warn(f"lyapunov_ensemble: {nbytes} bytes of shared memory per block were "
                          f"refused ({type(exc).__name__}: {exc}); the frame stays in global "
                          f"memory (slower)", RuntimeWarning, stacklevel=2)
            return lyapunov_ensemble_sums(w_hh, drive, h0, act, q0t, m, warmup, n_steps,
                                          threads, frame_in_shared=False)
    else:
        lyapunov_ensemble[n_net, threads, 0, nbytes](*args)
    return args[10].copy_to_host(), args[11].copy_to_host()
