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


class AfterAll:
    """A task of :func:`run_products` that runs after all the others (in list order), on the
    calling thread: the fixed-order sum of the partial products of :func:`matmul_tasks`."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self):
        self.fn()


def run_products(tasks, work):
    """Run independent products (zero-argument callables writing disjoint outputs) in parallel.

    They are dealt round-robin to ``numba.get_num_threads()`` threads, this one included, with
    BLAS limited to one thread; below :data:`PARALLEL_WORK` they run here, one after the other.
    :class:`AfterAll` tasks run last, here, in order.

    Parameters
    ----------
    tasks : list of callable
    work : int
        Multiply-adds of all the tasks together.
    """
    finals = [task for task in tasks if isinstance(task, AfterAll)]
    tasks = [task for task in tasks if not isinstance(task, AfterAll)]
    n_threads = min(len(tasks), numba.get_num_threads())
    with blas_threads_for(0):
        if n_threads <= 1 or work < PARALLEL_WORK:
            for task in tasks:
                task()
        else:
            def run(k):
                for task in tasks[k::n_threads]:
                    task()

            futures = [_executor().submit(run, k) for k in range(1, n_threads)]
            try:
                run(0)
            finally:
                for future in futures:
                    future.result()
        for task in finals:
            task()


def _ranges(n, count):
    return [(n * k // count, n * (k + 1) // count) for k in range(count)]


def _blocks(n_rows, work):
    return _ranges(n_rows, int(min(MAX_BLOCKS, max(1, work // BLOCK_WORK), n_rows)))


#: Output rows per block below which a product whose reduction is the long side (a weight
#: gradient, summed over T*B rows) is split along the reduction instead: every row block repacks
#: the whole right-hand factor, which costs as much as the product when the blocks are thin
#: (measured, 2 cores, float32, T = 1000, B = 128, H = 16: the three LSTM gradient products
#: took 22 ms in 16-row blocks, 9 ms split along T*B).
MIN_BLOCK_ROWS = 64


def _split_reduction(m, n_inner, count):
    return count > 1 and m // count < MIN_BLOCK_ROWS and n_inner >= count * m


def _partial_sums(out, count):
    """``count`` outputs for the partial products (``out`` itself first) and the task adding
    the others into ``out`` in a fixed order."""
    parts = [out] + [np.empty_like(out) for _ in range(count - 1)]

    def add():
        for part in parts[1:]:
            np.add(out, part, out=out)

    return parts, AfterAll(add)


def matmul_tasks(a, b, out):
    """Tasks computing ``out = a @ b`` in blocks (see :func:`run_products`).

    Blocks of rows of ``a``; or, when ``a`` has few rows and a long inner dimension (a weight
    gradient), blocks of the inner dimension whose partial products are added in a fixed order
    (:data:`MIN_BLOCK_ROWS`). The blocks depend on the shapes only.

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
    m, n_inner = a.shape
    work = m * n_inner * b.shape[1]
    count = int(min(MAX_BLOCKS, max(1, work // BLOCK_WORK)))
    if _split_reduction(m, n_inner, count):
        parts, add = _partial_sums(out, count)

        def part_task(c, k0, k1):
            return lambda: np.matmul(a[:, k0:k1], b[k0:k1], out=parts[c])

        return [part_task(c, k0, k1) for c, (k0, k1) in enumerate(_ranges(n_inner, count))] + [add]

    def task(r0, r1):
        return lambda: np.matmul(a[r0:r1], b, out=out[r0:r1])

    return [task(r0, r1) for r0, r1 in _blocks(m, work)]


def prev_state_tasks(dz, hidden, h0, reverse, out):
    """Tasks computing ``out = sum_t dz<t>^T h<t-1>``, the recurrent weight gradient.

    One product with ``h0`` for the first step processed, plus one large product over the other
    (T - 1) * B rows, in blocks as :func:`matmul_tasks`.

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
    n_rest = h_prev.shape[0]
    work = width * n_steps * batch * hid
    count = int(min(MAX_BLOCKS, max(1, work // BLOCK_WORK)))
    if n_rest and _split_reduction(width, n_rest, count):
        parts, add = _partial_sums(out, count)

        def part_task(c, k0, k1):
            def run():
                np.matmul(dz_rest[:, k0:k1], h_prev[k0:k1], out=parts[c])
                if c == 0:
                    out[...] += dz_first @ h0
            return run

        return [part_task(c, k0, k1) for c, (k0, k1) in enumerate(_ranges(n_rest, count))] + [add]

    def task(r0, r1):
        def run():
            np.matmul(dz_first[r0:r1], h0, out=out[r0:r1])
            if n_steps > 1:
                out[r0:r1] += dz_rest[r0:r1] @ h_prev
        return run

    return [task(r0, r1) for r0, r1 in _blocks(width, work)]


@njit(cache=True, error_model="numpy")
def accumulate_product(acc, acc_row0, a, a_row0, a_col0, w, w_row0, n_inner, n_rows):
    """``acc[acc_row0 + r] += a[a_row0 + r, a_col0:a_col0 + n_inner] @ w[w_row0:w_row0 + n_inner]``.

    The small per-step matrix product of every recurrence (``r < n_rows``, a chunk of the batch),
    written so that the innermost loop is a contiguous axpy over a row of ``w`` (which
    vectorises): ``j`` outer, four rows of ``w`` per pass so that each row of ``acc`` is loaded
    and stored once per four multiply-adds, the chunk's rows in the middle, two at a time so
    that each load of ``w`` serves two rows (measured: float32, 4 rows, H = 256, 4H columns,
    52 -> 29 us). Each entry is still summed in the fixed order ``j = 0, 1, 2, ...``, whatever
    the chunking.

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
        c = a_col0 + j
        r = 0
        while r + 2 <= n_rows:
            a_r = a[a_row0 + r]
            a_s = a[a_row0 + r + 1]
            a0, a1, a2, a3 = a_r[c], a_r[c + 1], a_r[c + 2], a_r[c + 3]
            b0, b1, b2, b3 = a_s[c], a_s[c + 1], a_s[c + 2], a_s[c + 3]
            x = acc[acc_row0 + r]
            y = acc[acc_row0 + r + 1]
            for i in range(x.shape[0]):
                w0i, w1i, w2i, w3i = w0[i], w1[i], w2[i], w3[i]
                x[i] = x[i] + a0 * w0i + a1 * w1i + a2 * w2i + a3 * w3i
                y[i] = y[i] + b0 * w0i + b1 * w1i + b2 * w2i + b3 * w3i
            r += 2
        if r < n_rows:
            a_r = a[a_row0 + r]
            a0, a1, a2, a3 = a_r[c], a_r[c + 1], a_r[c + 2], a_r[c + 3]
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
