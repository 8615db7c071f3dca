"""Large matrix products on the CPU: the products over all T*B rows that bracket every
recurrence (input projections before it, input and weight gradients after it), run as
single-threaded BLAS calls on fixed row blocks spread over a small thread pool.

The CPU twin of :mod:`rnnlab.kernels.cuda.blas` (where the same products are tiled device GEMMs).
Used by the vanilla, LSTM and GRU layer wrappers; :func:`accumulate_product` is the small
per-step product inside their compiled recurrences.
"""

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from numba import njit

from ..._blas import blas_threads_for

# ----------------------------------------------------------------------- large matrix products
# The products over all T*B rows (input projection, input and weight gradients) run as
# single-threaded BLAS calls on fixed row blocks, spread over this thread and a small pool.
# OpenBLAS's own threads spin for a while after each call and then compete with the
# recurrence's threads (measured here, 2 cores, T = 1000, B = 16, H = 256: the LSTM recurrence
# ran 40 % slower right after a two-thread product); pool threads sleep instead. The blocks
# depend on the shapes only, and each output block is one BLAS call over the whole reduction,
# so results do not depend on the number of threads (with OpenBLAS they are even the bits of a
# single call for the whole product, which OpenBLAS's own threading does not always give).

#: Multiply-adds per block (fewer blocks for smaller products), and the most blocks: each
#: block repacks the whole right-hand factor (for a weight gradient, all T*B rows of x or h),
#: so more blocks than threads cost time (measured: 4 blocks 5 % faster than 8 on 2 cores).
BLOCK_WORK = 1 << 22
MAX_BLOCKS = 4
#: Below this many multiply-adds in all, products run one after the other on this thread:
#: handing work to another thread costs more than it saves (measured: T = 1000, B = 1, H = 64),
#: not least because Numba's OpenMP workers are still spinning from the last recurrence.
PARALLEL_WORK = 1 << 26

_pool = None
_pool_lock = threading.Lock()


def _executor():
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=max(1, numba.config.NUMBA_NUM_THREADS - 1),
                                       thread_name_prefix="rnnlab-blas")
        return _pool


def _forget_pool_after_fork():
    # a forked child has none of the parent's threads: it starts its own pool when needed
    global _pool, _pool_lock
    _pool = None
    _pool_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_pool_after_fork)


def run_products(tasks, work):
    """Run independent products (zero-argument callables writing disjoint outputs) in parallel.

    They are dealt round-robin to ``numba.get_num_threads()`` threads, this one included, with
    BLAS limited to one thread; below :data:`PARALLEL_WORK` they run here, one after the other.

    Parameters
    ----------
    tasks : list of callable
    work : int
        Multiply-adds of all the tasks together.
    """
    n_threads = min(len(tasks), numba.get_num_threads())
    if n_threads <= 1 or work < PARALLEL_WORK:
        with blas_threads_for(0):
            for task in tasks:
                task()
        return

    def run(k):
        for task in tasks[k::n_threads]:
            task()

    with blas_threads_for(0):
        futures = [_executor().submit(run, k) for k in range(1, n_threads)]
        try:
            run(0)
        finally:
            for future in futures:
                future.result()


def _blocks(n_rows, work):
    count = int(min(MAX_BLOCKS, max(1, work // BLOCK_WORK), n_rows))
    return [(n_rows * k // count, n_rows * (k + 1) // count) for k in range(count)]


def matmul_tasks(a, b, out):
    """Tasks computing ``out = a @ b`` in row blocks of ``a`` (see :func:`run_products`).

    Parameters
    ----------
    a : ndarray, shape (M, K)
        May be a transposed or column-sliced view (BLAS takes any unit-stride layout).
    b : ndarray, shape (K, N)
    out : ndarray, shape (M, N)
        C-contiguous rows.

    Returns
    -------
    list of callable
    """
    def task(r0, r1):
        return lambda: np.matmul(a[r0:r1], b, out=out[r0:r1])

    return [task(r0, r1) for r0, r1 in _blocks(a.shape[0], a.shape[0] * a.shape[1] * b.shape[1])]


def prev_state_tasks(dz, hidden, h0, reverse, out):
    """Tasks computing ``out = sum_t dz<t>^T h<t-1>``, the recurrent weight gradient.

    For each block of rows of ``out``: one product with ``h0`` for the first step processed,
    plus one large product over the other (T - 1) * B rows.

    Parameters
    ----------
    dz : ndarray, shape (T, B, K)
        Gradients with respect to the recurrent pre-activations (may be a column slice).
    hidden : ndarray, shape (T, B, H)
        The hidden states.
    h0 : ndarray, shape (B, H)
        The initial state (the "previous" state of the first step processed).
    reverse : bool
        Direction of the recurrence (the previous state of ``t`` is ``h<t+1>``).
    out : ndarray, shape (K, H)
        Output.

    Returns
    -------
    list of callable
    """
    n_steps, batch, width = dz.shape
    hid = hidden.shape[2]
    first, rest, prev = (n_steps - 1, slice(0, -1), slice(1, None)) if reverse else (
        0, slice(1, None), slice(0, -1))
    dz_first = dz[first].T
    dz_rest = dz[rest].reshape(-1, width).T
    h_prev = hidden[prev].reshape(-1, hid)

    def task(r0, r1):
        def run():
            np.matmul(dz_first[r0:r1], h0, out=out[r0:r1])
            if n_steps > 1:
                out[r0:r1] += dz_rest[r0:r1] @ h_prev
        return run

    return [task(r0, r1) for r0, r1 in _blocks(width, width * n_steps * batch * hid)]


@njit(cache=True, error_model="numpy")
def accumulate_product(acc, acc_row0, a, a_row0, a_col0, w, w_row0, n_inner, n_rows):
    """``acc[acc_row0 + r] += a[a_row0 + r, a_col0:a_col0 + n_inner] @ w[w_row0:w_row0 + n_inner]``.

    The small per-step matrix product of every recurrence (``r < n_rows``, a chunk of the batch),
    written so that the innermost loop is a contiguous axpy over a row of ``w`` (which
    vectorises): ``j`` outer, four rows of ``w`` per pass so that each row of ``acc`` is loaded
    and stored once per four multiply-adds, the chunk's rows in the middle. Each entry is still
    summed in the fixed order ``j = 0, 1, 2, ...``, whatever the chunking.

    Parameters
    ----------
    acc : ndarray, shape (R, K)
        Accumulator, updated in place.
    acc_row0, a_row0, a_col0, w_row0 : int
        Offsets of the blocks used in ``acc``, ``a`` and ``w``.
    a : ndarray, shape (R', N')
        Left factor.
    w : ndarray, shape (N'', K)
        Right factor (C-contiguous rows).
    n_inner, n_rows : int
        Inner dimension and number of rows.
    """
    j = 0
    while j + 4 <= n_inner:
        w0 = w[w_row0 + j]
        w1 = w[w_row0 + j + 1]
        w2 = w[w_row0 + j + 2]
        w3 = w[w_row0 + j + 3]
        for r in range(n_rows):
            a_r = a[a_row0 + r]
            a0 = a_r[a_col0 + j]
            a1 = a_r[a_col0 + j + 1]
            a2 = a_r[a_col0 + j + 2]
            a3 = a_r[a_col0 + j + 3]
            x = acc[acc_row0 + r]
            for i in range(x.shape[0]):
                x[i] = x[i] + a0 * w0[i] + a1 * w1[i] + a2 * w2[i] + a3 * w3[i]
        j += 4
    while j < n_inner:
        w0 = w[w_row0 + j]
        for r in range(n_rows):
            a0 = a[a_row0 + r, a_col0 + j]
            x = acc[acc_row0 + r]
            for i in range(x.shape[0]):
                x[i] = x[i] + a0 * w0[i]
        j += 1
