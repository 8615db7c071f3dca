"""Large matrix products on the CPU: the products over all T*B rows that bracket every
recurrence (input projections before it, input and weight gradients after it), run as
single-threaded BLAS calls on fixed blocks spread over Numba's own threads.

The CPU twin of :mod:`rnnlab.kernels.cuda.blas` (where the same products are tiled device GEMMs).
Used by the vanilla, LSTM and GRU layer wrappers; :func:`step_product` is the per-step product
inside their compiled recurrences: :func:`accumulate_product` (compiled loops and register
tiles) for small steps, :func:`blas_product` (a single-threaded GEMM called from inside the
compiled recurrence) for large ones.
"""

from typing import NamedTuple

import llvmlite.binding as ll
from llvmlite import ir
import numba
import numpy as np
from numba import njit, prange, types
from numba.extending import get_cython_function_address, intrinsic

from ..._blas import blas_threads_for

# ----------------------------------------------------------------------- large matrix products
# The products over all T*B rows (input projection, input and weight gradients) are lists of
# GEMMs on fixed blocks, run by one compiled loop on Numba's threads, each block one
# single-threaded call of the Fortran BLAS that SciPy exports (the same library Numba's np.dot
# calls). Why Numba's threads, not BLAS's or a Python pool: whatever runs the products right
# after a recurrence competes with Numba's OpenMP workers, which spin for a while after each
# parallel region (GOMP_SPINCOUNT; rnnlab lowers it, but only if libgomp was not loaded before
# rnnlab, as `import torch` does). Measured here (2 cores, LSTM float32, T = 1000, B = 1,
# H = 256, fwd+BPTT): 33-35 ms, but 43-45 ms when torch was imported first and the products
# ran on a Python thread pool; the workers themselves running the products do not compete.
# The blocks depend on the shapes only, and each output block is one BLAS call over the whole
# reduction (or a fixed-order sum of partial products), so results do not depend on the
# number of threads.

#: Multiply-adds per block (fewer blocks for smaller products), and the most blocks: each
#: block repacks the whole right-hand factor (for a weight gradient, all T*B rows of x or h),
#: so more blocks than threads cost time (measured: 4 blocks 5 % faster than 8 on 2 cores).
BLOCK_WORK = 1 << 22
MAX_BLOCKS = 4
#: Below this many multiply-adds in all, products run one after the other on this thread:
#: handing work to another thread costs more than it saves. Measured (2 cores, float32
#: fwd+BPTT, T = 1000, three runs), 2^26 / 2^24 / 2^22: LSTM B = 1, H = 64 3.9-4.0 / 3.6 /
#: 3.4-3.6 ms, GRU B = 1, H = 64 2.7 / 2.5 / 2.3-2.9, LSTM B = 8, H = 16 3.1 / 3.0 / 3.9-4.3.
PARALLEL_WORK = 1 << 24

# The Fortran GEMMs, bound by symbol name so that cached kernels link to them in a new process
# (bound on first use: importing scipy.linalg costs 0.1 s). Every argument is a pointer; they
# are declared as integers (addresses), the same registers. NumPy's own OpenBLAS is preferred
# where it exports them (NumPy's wheels: an ILP64 build, 64-bit integer arguments): measured
# here, its float32 GEMM with a transposed factor (every weight gradient) took 3.5 ms where
# SciPy's older OpenBLAS took 5.1 ms (256 x 8000 @ 8000 x 64, one thread; 0.3.31 / 0.3.30).
_bound = False
_ilp64 = False
#: Where the GEMMs came from: "numpy" or "scipy" (set on first use).
gemm_source = None


def _numpy_gemm():
    """``(sgemm, dgemm)`` addresses in NumPy's bundled ILP64 OpenBLAS, or None."""
    import ctypes
    import os

    from threadpoolctl import ThreadpoolController

    np_dir = os.path.dirname(os.path.dirname(os.path.abspath(np.__file__)))
    for lib in ThreadpoolController().select(internal_api="openblas").lib_controllers:
        if not (lib.filepath.startswith(np_dir) and "numpy" in os.path.relpath(lib.filepath,
                                                                                np_dir)):
            continue
        dl = ctypes.CDLL(lib.filepath)
        for prefix in ("scipy_", ""):  # NumPy 2 wheels: scipy_sgemm_64_; NumPy 1: sgemm_64_
            names = [f"{prefix}{g}gemm_64_" for g in "sd"]
            if all(hasattr(dl, name) for name in names):
                return [ctypes.cast(getattr(dl, name), ctypes.c_void_p).value for name in names]
    return None


def _bind_gemm():
    global _bound, _ilp64, gemm_source
    if _bound:
        return
    addresses = _numpy_gemm()
    _ilp64 = addresses is not None
    if addresses is None:
        addresses = [get_cython_function_address("scipy.linalg.cython_blas", g + "gemm")
                     for g in "sd"]
    for g, address in zip("sd", addresses):
        ll.add_symbol(f"rnnlab_{g}gemm", address)
    _bound = True
    gemm_source = "numpy" if _ilp64 else "scipy"


_sgemm = types.ExternalFunction("rnnlab_sgemm", types.void(*([types.intp] * 13)))
_dgemm = types.ExternalFunction("rnnlab_dgemm", types.void(*([types.intp] * 13)))
_N, _T = ord("N"), ord("T")
#: Columns of a GEMM's integer descriptor (see :func:`_describe`).
_OP_B, _OP_A, _M, _N_COLS, _K, _LD_B, _LD_A, _LD_C, _BETA, _PTR_B, _PTR_A, _PTR_C = range(12)


class Gemm(NamedTuple):
    """``out = a @ b`` (``accumulate=False``) or ``out += a @ b``: one block of a product task.

    ``a`` and ``b`` may be any views with one unit stride (transposed, row or column slices);
    ``out`` has C-contiguous rows.
    """

    a: np.ndarray
    b: np.ndarray
    out: np.ndarray
    accumulate: bool = False


class AfterAll:
    """A task of :func:`run_products` that runs after all the others (in list order), on the
    calling thread: the fixed-order sum of the partial products of :func:`matmul_tasks`."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self):
        self.fn()


def _operand(x):
    """``(op, ld, x)`` of a factor for the column-major call computing ``out^T = b^T a^T``:
    a row-major factor is its own transpose in column-major order (``op = 'N'``), a
    column-major one is passed transposed; any other layout is copied."""
    rows, cols = x.shape
    s0, s1 = (s // x.itemsize for s in x.strides)
    if (s1 == 1 or cols == 1) and (rows == 1 or s0 >= cols):
        return _N, s0 if rows > 1 else cols, x
    if (s0 == 1 or rows == 1) and (cols == 1 or s1 >= rows):
        return _T, s1 if cols > 1 else rows, x
    return _N, cols, np.ascontiguousarray(x)  # reversed or strided both ways


def _describe(gemm, keep):
    """The integer descriptor of one :class:`Gemm` (``None`` if there is nothing to compute);
    arrays whose addresses it holds are appended to ``keep``."""
    a, b, out, accumulate = gemm
    m, k = a.shape
    n = b.shape[1]
    if b.shape[0] != k or out.shape != (m, n) or out.dtype != a.dtype or b.dtype != a.dtype:
        raise ValueError(f"GEMM shapes or dtypes do not match: {a.shape} {a.dtype} @ "
                         f"{b.shape} {b.dtype} -> {out.shape} {out.dtype}")
    if m == 0 or n == 0:
        return None
    if k == 0:
        if not accumulate:
            out[...] = 0
        return None
    ld_c = out.strides[0] // out.itemsize if m > 1 else n
    if (out.strides[1] != out.itemsize and n > 1) or ld_c < n:
        raise ValueError("GEMM output must have contiguous rows")
    op_a, ld_a, a = _operand(a)
    op_b, ld_b, b = _operand(b)
    keep += (a, b, out)
    return (op_b, op_a, n, m, k, ld_b, ld_a, ld_c, int(accumulate),
            b.ctypes.data, a.ctypes.data, out.ctypes.data)


@njit(cache=True)
def _fill_dims(dims, d, i):
    dims[0], dims[1], dims[2] = d[i, _M], d[i, _N_COLS], d[i, _K]
    dims[3], dims[4], dims[5] = d[i, _LD_B], d[i, _LD_A], d[i, _LD_C]


@njit(cache=True)
def _run_gemm(d, i, double, ilp64, chars, dims32, dims64, scalars32, scalars64):
    # One Fortran GEMM from row i of the descriptor table d, with its scalar arguments passed
    # through this thread's small arrays (32- or 64-bit integers, as the library takes them).
    chars[0], chars[1] = d[i, _OP_B], d[i, _OP_A]
    if ilp64:
        _fill_dims(dims64, d, i)
        p, w = dims64.ctypes.data, 8
    else:
        _fill_dims(dims32, d, i)
        p, w = dims32.ctypes.data, 4
    c = chars.ctypes.data
    if double:
        scalars64[0], scalars64[1] = 1.0, d[i, _BETA]
        s = scalars64.ctypes.data
        _dgemm(c, c + 1, p, p + w, p + 2 * w, s, d[i, _PTR_B], p + 3 * w, d[i, _PTR_A],
               p + 4 * w, s + 8, d[i, _PTR_C], p + 5 * w)
    else:
        scalars32[0], scalars32[1] = 1.0, d[i, _BETA]
        s = scalars32.ctypes.data
        _sgemm(c, c + 1, p, p + w, p + 2 * w, s, d[i, _PTR_B], p + 3 * w, d[i, _PTR_A],
               p + 4 * w, s + 4, d[i, _PTR_C], p + 5 * w)


@njit(cache=True)
def _run_tasks(d, starts, first, step, double, ilp64):
    # Tasks first, first + step, ...; task k is rows starts[k]:starts[k + 1] of d, in order.
    chars = np.empty(2, np.uint8)
    dims32 = np.empty(6, np.int32)
    dims64 = np.empty(6, np.int64)
    scalars32 = np.empty(2, np.float32)
    scalars64 = np.empty(2, np.float64)
    for k in range(first, starts.shape[0] - 1, step):
        for i in range(starts[k], starts[k + 1]):
            _run_gemm(d, i, double, ilp64, chars, dims32, dims64, scalars32, scalars64)


@njit(cache=True, parallel=True)
def _run_tasks_parallel(d, starts, n_threads, double, ilp64):
    for t in prange(n_threads):  # one iteration per thread: tasks dealt round-robin
        _run_tasks(d, starts, t, n_threads, double, ilp64)


def run_products(tasks, work):
    """Run independent product tasks (lists of :class:`Gemm` writing disjoint outputs).

    The tasks are dealt round-robin to ``numba.get_num_threads()`` of Numba's threads, with BLAS
    limited to one thread per call; below :data:`PARALLEL_WORK` multiply-adds they run on this
    thread, one after the other. :class:`AfterAll` tasks run last, here, in order.

    Parameters
    ----------
    tasks : list of (list of Gemm or AfterAll)
    work : int
        Multiply-adds of all the tasks together.
    """
    finals = [task for task in tasks if isinstance(task, AfterAll)]
    rows, starts, keep, dtypes = [], [0], [], set()
    for task in tasks:
        if isinstance(task, AfterAll):
            continue
        for gemm in task:
            dtypes.add(gemm.out.dtype)
            row = _describe(gemm, keep)
            if row is not None:
                rows.append(row)
        starts.append(len(rows))
    if rows:
        if len(dtypes) != 1 or next(iter(dtypes)) not in (np.float32, np.float64):
            raise TypeError(f"products must be all float32 or all float64, got {dtypes}")
        d = np.array(rows, dtype=np.int64)
        starts = np.array(starts, dtype=np.int64)
        double = next(iter(dtypes)) == np.float64
        n_threads = min(len(starts) - 1, numba.get_num_threads())
        _bind_gemm()
        with blas_threads_for(0):
            if n_threads <= 1 or work < PARALLEL_WORK:
                _run_tasks(d, starts, 0, 1, double, _ilp64)
            else:
                _run_tasks_parallel(d, starts, n_threads, double, _ilp64)
    del keep
    for task in finals:
        task()


def _ranges(n, count):
    return [(n * k // count, n * (k + 1) // count) for k in range(count)]


def _blocks(n_rows, work):
    return _ranges(n_rows, int(min(MAX_BLOCKS, max(1, work // BLOCK_WORK), n_rows)))


def _split_reduction(m, n_inner, count):
    # A product whose reduction is the long side (a weight gradient, summed over T*B rows) is
    # split along the reduction: every row block would repack the whole right-hand factor.
    # Measured (2 cores): float32, T = 1000, B = 128, H = 16, the three LSTM gradient
    # products took 22 ms in 16-row blocks, 9 ms split; float32 LSTM dW_ih at B = 8, H = 256
    # 26.6 -> 24.5 ms and at B = 128, H = 512 1430-1540 -> 1375-1400 ms; float64 at B = 32,
    # H = 512 the same either way (692 / 702 ms).
    return count > 1 and n_inner >= count * m


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

    Blocks of rows of ``a``; or, when the inner dimension is the long one (a weight gradient),
    blocks of the inner dimension whose partial products are added in a fixed order. The
    blocks depend on the shapes only.

    Parameters
    ----------
    a : ndarray, shape (M, K)
        May be a transposed or column-sliced view (BLAS takes any unit-stride layout).
    b : ndarray, shape (K, N)
    out : ndarray, shape (M, N)
        C-contiguous rows.

    Returns
    -------
    list
        Tasks for :func:`run_products`.
    """
    m, n_inner = a.shape
    work = m * n_inner * b.shape[1]
    count = int(min(MAX_BLOCKS, max(1, work // BLOCK_WORK)))
    if _split_reduction(m, n_inner, count):
        parts, add = _partial_sums(out, count)

        return [[Gemm(a[:, k0:k1], b[k0:k1], parts[c])]
                for c, (k0, k1) in enumerate(_ranges(n_inner, count))] + [add]
    return [[Gemm(a[r0:r1], b, out[r0:r1])] for r0, r1 in _blocks(m, work)]


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
    list
        Tasks for :func:`run_products`.
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

        tasks = [[Gemm(dz_rest[:, k0:k1], h_prev[k0:k1], parts[c])]
                 for c, (k0, k1) in enumerate(_ranges(n_rest, count))]
        tasks[0].append(Gemm(dz_first, h0, out, accumulate=True))
        return tasks + [add]
    return [[Gemm(dz_first[r0:r1], h0, out[r0:r1])]
            + ([Gemm(dz_rest[r0:r1], h_prev, out[r0:r1], accumulate=True)] if n_steps > 1 else [])
            for r0, r1 in _blocks(width, work)]



# ------------------------------------------------------------ one BLAS call inside a kernel
# For per-step products large enough that BLAS beats the compiled loops and tiles below (one
# thread: float32 64 x 512 @ 512 x 2048 at 65 G multiply-adds/s here, the tiles at about 40),
# a compiled recurrence may call the GEMM itself, one call per step on its own chunk of the
# batch: no Python between steps, no BLAS threads (the caller limits BLAS to one thread, and
# binds the GEMMs with bind_gemm() first).


def bind_gemm():
    """Bind the GEMMs for :func:`blas_product`; returns ``ilp64`` (its last argument)."""
    _bind_gemm()
    return _ilp64


@njit(cache=True)
def gemm_scratch():
    """Per-thread scratch for :func:`blas_product` (the descriptor and scalar arguments)."""
    return (np.empty((1, 12), np.int64), np.empty(2, np.uint8), np.empty(6, np.int32),
            np.empty(6, np.int64), np.empty(2, np.float32), np.empty(2, np.float64))


@njit(cache=True)
def blas_product(out, out_row0, a, a_row0, a_col0, w, w_row0, n_inner, n_rows, accumulate,
                 ilp64, scratch):
    """``out[out_row0 + r] (+)= a[a_row0 + r, a_col0:a_col0 + n_inner] @ w[w_row0:w_row0 +
    n_inner]`` for ``r < n_rows``: :func:`accumulate_product` as one single-threaded BLAS GEMM
    (the sums are BLAS's, not the loops').

    Parameters
    ----------
    out : ndarray, shape (R, K)
        Output, contiguous rows; overwritten, or added to if ``accumulate``.
    out_row0, a_row0, a_col0, w_row0 : int
        Offsets of the blocks used in ``out``, ``a`` and ``w``.
    a : ndarray, shape (R', N')
        Left factor, contiguous rows.
    w : ndarray, shape (N'', K)
        Right factor, contiguous rows.
    n_inner, n_rows : int
        Inner dimension and number of rows.
    accumulate : bool
    ilp64 : bool
        From :func:`bind_gemm`.
    scratch : tuple
        From :func:`gemm_scratch`, one per thread.
    """
    d, chars, dims32, dims64, scalars32, scalars64 = scratch
    it = out.itemsize
    n = out.shape[1]
    if n_rows <= 0 or n == 0:
        return
    # column-major: out^T (n x m) = w^T (n x k) a^T (k x m), each row-major factor its own
    # transpose
    d[0, _OP_B] = _N
    d[0, _OP_A] = _N
    d[0, _M] = n
    d[0, _N_COLS] = n_rows
    d[0, _K] = n_inner
    d[0, _LD_B] = w.strides[0] // it
    d[0, _LD_A] = a.strides[0] // it
    d[0, _LD_C] = out.strides[0] // it
    d[0, _BETA] = 1 if accumulate else 0
    d[0, _PTR_B] = w.ctypes.data + w_row0 * w.strides[0]
    d[0, _PTR_A] = a.ctypes.data + a_row0 * a.strides[0] + a_col0 * it
    d[0, _PTR_C] = out.ctypes.data + out_row0 * out.strides[0]
    _run_gemm(d, 0, it == 8, ilp64, chars, dims32, dims64, scalars32, scalars64)

# ------------------------------------------------------------------- the per-step product
# On CPUs with AVX-512 (32 vector registers), most of the per-step product runs as register
# tiles: 4 rows x 4 vectors of acc (4 x 64 float32 or 4 x 32 float64) stay in registers for the
# whole inner dimension, so acc is loaded and stored once per product instead of once per four
# multiply-adds. Written as LLVM IR (an intrinsic) because LLVM keeps neither Numba arrays nor
# scalar locals of this size in vector registers. Each entry is still acc + a_0 w_0 + a_1 w_1
# + ... in that order, each step a fused multiply-add (one rounding) where the CPU has FMA
# (:data:`FUSED`), exactly as the loops do (:func:`_madd`), so tiles and loops give the same
# bits and may be mixed. Measured on 2 cores (AMD EPYC,
# Zen 4), one thread, float32, G multiply-adds/s, loops -> tiles: 32 x 512 @ 512 x 1024
# 28-33 -> 37-41, 16 x 512 @ 512 x 2048 30-31 -> 39-40, 64 x 256 @ 256 x 1024 25-32 -> 41-42,
# 8 x 256 @ 256 x 1024 30-32 -> 40-41.

#: Rows and vectors of a register tile (16 accumulators).
TILE_ROWS = 4
TILE_VECTORS = 4
#: Rows and vectors of the tall tiles that take eight rows at a time (16 accumulators too): each
#: vector of w loaded serves eight rows, not four, which halves the traffic from L2 per
#: multiply-add. Each block of TILE_VECTORS vectors is two tall tiles side by side, so the same
#: columns are tiled. Measured on 2 cores (Intel Xeon, AVX-512, FMA), each thread its own w,
#: us a product, 4 x 4 -> 8 x 2: float32 8 x 512 @ 512 x 1024 124-126 -> 106-117, 8 x 2048 @
#: 2048 x 256 121-144 -> 87-107, 8 x 256 @ 256 x 1024 41-42 -> 32-33, 8 x 64 @ 64 x 256 4.1 ->
#: 3.5, 16 x 256 @ 256 x 1024 58.7 -> 53.8; float64 8 x 2048 @ 2048 x 256 584 -> 298, 8 x 512 @
#: 512 x 1024 265 -> 235, 16 x 64 @ 64 x 256 11.4 -> 9.6; w shared by both threads, float32
#: 16 x 512 @ 512 x 2048 669 -> 570.
TALL_ROWS = 2 * TILE_ROWS
TALL_VECTORS = TILE_VECTORS // 2
#: Vectors of the one-row tiles for the rows left over (a batch of 1 above all: a mat-vec, whose
#: loops load and store acc once per four multiply-adds, bound by the stores).
ROW_VECTORS = 8
#: One-row tiles only where acc has at most this many vectors of 64 bytes and w at most this many
#: bytes. Measured (one thread, G multiply-adds/s, loops -> one-row tiles): float32 1 x 1024 @
#: 1024 x 128 16-22 -> 26-29, 1 x 256 @ 256 x 512 19-26 -> 21-28, 1 x 512 @ 512 x 256 17-25 ->
#: 24-29, 1 x 64 @ 64 x 256 18-26 -> 24-28; float64 1 x 1024 @ 1024 x 128 8-9 -> 11; but float32
#: 1 x 512 @ 512 x 1024 16-19 -> 15-17 and float64 1 x 256 @ 256 x 512 11 -> 9 (w beyond L2, or
#: acc wide: many strided passes over w). Half-width tiles (4 vectors) for what is left of at
#: least 4 vectors: float32 1 x 256 @ 256 x 64 12-16 -> 25-27, 1 x 64 @ 64 x 64 14-16 -> 25-34.
ROW_TILE_VECTORS_MAX = 32
ROW_TILE_BYTES_MAX = 1 << 20
#: Widest product (vectors of 64 bytes) that runs on the narrow tiles, as wide as the product:
#: :data:`TALL_ROWS` rows at a time (:data:`TILE_ROWS` at three vectors), then
#: :data:`TILE_ROWS`, then one (a tanh RNN of H = 16, the LSTM's and GRU's dL/dh<t-1> at
#: H = 16, the GRU's float32 gates at H = 16), called from step_product with addresses only.
#: Below four vectors the tiles above do not apply, and the loops store and reload acc every
#: four multiply-adds; and a call to accumulate_product with its arrays cost more than such a
#: product. Measured on 2 cores (Intel Xeon, AVX-512), T = 1000, forward recurrence, ns a step,
#: before -> narrow tiles -> also straight from step_product: tanh float32 (B, H) = (1, 16)
#: 172 -> 127 -> 41, (8, 16) 401 -> 200 -> 110, float64 (1, 16) 195 -> 83; GRU float32
#: (1, 16) 139 -> 117 (220 with its three vectors left to the loops). Four vectors (the LSTM's
#: float32 gates at H = 16) gained nothing measurable, so stay with the tiles above. The narrow
#: tiles cost 14 s more on a cold cache (65 -> 79 s for three cells, two dtypes, two sizes).
NARROW_VECTORS_MAX = 3


def _target_has(feature):
    """Whether Numba compiles for a CPU with ``feature`` (``NUMBA_CPU_NAME`` /
    ``NUMBA_CPU_FEATURES`` when set, else the host)."""
    from numba.core import config

    if config.CPU_NAME and config.CPU_NAME != "host":
        return "+" + feature in (config.CPU_FEATURES or "")
    return bool(ll.get_host_cpu_features().get(feature, False))


#: Whether :func:`accumulate_product` uses register tiles (AVX-512 only: with 16 vector
#: registers the tile would spill).
TILES = _target_has("avx512f")
#: Whether every multiply-add of the per-step product is fused (one rounding; the CPU's FMA
#: instructions). Twice the peak of a multiply and an add rounded apart, which is what the
#: per-step product runs at for small batches. Measured on 2 cores (Intel Xeon, AVX-512), one
#: thread, float32 register tiles, G multiply-adds/s, separate -> fused: 4 x 512 @ 512 x 1024
#: 41-43 -> 56-58, 8 x 256 @ 256 x 1024 54 -> 77-80, 4 x 256 @ 256 x 256 54 -> 67-68; float64
#: 8 x 256 @ 256 x 1024 15.5 -> 20.5. Off where the target has no FMA (it would be a libm call
#: per entry): results then differ in the last bits from an FMA machine's, as BLAS's do.
FUSED = _target_has("fma")


def _fused_call(builder, x, y, z):
    """``x * y + z`` rounded once (``llvm.fma``), scalars or vectors of float or double."""
    ty = x.type
    if isinstance(ty, ir.VectorType):
        suffix = "v%d%s" % (ty.count, "f64" if isinstance(ty.element, ir.DoubleType) else "f32")
    else:
        suffix = "f64" if isinstance(ty, ir.DoubleType) else "f32"
    fn = builder.module.declare_intrinsic("llvm.fma." + suffix, fnty=ir.FunctionType(
        ty, [ty, ty, ty]))
    return builder.call(fn, [x, y, z])


def _madd_ir(builder, acc, x, y):
    # acc + x * y: fused where FUSED, else a multiply and an add rounded apart (the one
    # definition every tile and loop of the per-step product uses)
    if FUSED:
        return _fused_call(builder, x, y, acc)
    return builder.fadd(acc, builder.fmul(x, y))


@intrinsic
def _madd(typingctx, acc, x, y):
    """``acc + x * y`` for floats of one type, as every step of the per-step product sums:
    fused (one rounding) where :data:`FUSED`, else rounded twice."""
    if not (isinstance(acc, types.Float) and acc == x == y):
        return None
    sig = acc(acc, x, y)

    def codegen(context, builder, signature, args):
        return _madd_ir(builder, *args)

    return sig, codegen


def _tile_intrinsic(double, n_rows=TILE_ROWS, n_vectors=TILE_VECTORS):
    """``acc[r, :C] += sum_k a[r, k] w[k, :C]`` for ``r < n_rows``, ``C = n_vectors`` vectors
    of 64 bytes; arguments are addresses and row strides in elements."""
    lanes = 8 if double else 16
    size = 8 if double else 4

    @intrinsic
    def tile(typingctx, acc_ptr, ld_acc, a_ptr, ld_a, w_ptr, ld_w, n_inner):
        sig = types.void(*([types.intp] * 7))

        def codegen(context, builder, signature, args):
            acc_p, ld_acc_v, a_p, ld_a_v, w_p, ld_w_v, n = args
            i64 = ir.IntType(64)
            ft = ir.DoubleType() if double else ir.FloatType()
            vt = ir.VectorType(ft, lanes)

            def const(v):
                return ir.Constant(i64, v)

            def ptr(base, index, ty):
                return builder.inttoptr(builder.add(base, builder.mul(index, const(size))),
                                        ty.as_pointer())

            def acc_ptr_of(r, v):
                return ptr(acc_p, builder.add(builder.mul(const(r), ld_acc_v), const(v * lanes)),
                           vt)

            cells = [(r, v) for r in range(n_rows) for v in range(n_vectors)]
            start = [builder.load(acc_ptr_of(r, v), align=size) for r, v in cells]
            entry = builder.block
            head = builder.append_basic_block("tile_head")
            body = builder.append_basic_block("tile_body")
            done = builder.append_basic_block("tile_done")
            builder.branch(head)
            builder.position_at_end(head)
            k = builder.phi(i64)
            sums = [builder.phi(vt) for _ in cells]
            k.add_incoming(const(0), entry)
            for phi, value in zip(sums, start):
                phi.add_incoming(value, entry)
            builder.cbranch(builder.icmp_signed("<", k, n), body, done)
            builder.position_at_end(body)
            w_row = builder.mul(k, ld_w_v)
            w_vec = [builder.load(ptr(w_p, builder.add(w_row, const(v * lanes)), vt), align=size)
                     for v in range(n_vectors)]
            undef = ir.Constant(vt, ir.Undefined)
            splat = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)
            new = []
            for r in range(n_rows):
                a_rk = builder.load(ptr(a_p, builder.add(builder.mul(const(r), ld_a_v), k), ft))
                a_vec = builder.shuffle_vector(
                    builder.insert_element(undef, a_rk, ir.Constant(ir.IntType(32), 0)), undef,
                    splat)
                for v in range(n_vectors):
                    new.append(_madd_ir(builder, sums[r * n_vectors + v], a_vec, w_vec[v]))
            tail = builder.block
            k.add_incoming(builder.add(k, const(1)), tail)
            for phi, value in zip(sums, new):
                phi.add_incoming(value, tail)
            builder.branch(head)
            builder.position_at_end(done)
            for (r, v), value in zip(cells, sums):
                builder.store(value, acc_ptr_of(r, v), align=size)
            return context.get_dummy_value()

        return sig, codegen

    return tile


_tile32 = _tile_intrinsic(False)
_tile64 = _tile_intrinsic(True)
_tall32 = _tile_intrinsic(False, TALL_ROWS, TALL_VECTORS)
_tall64 = _tile_intrinsic(True, TALL_ROWS, TALL_VECTORS)
_row32 = _tile_intrinsic(False, 1, ROW_VECTORS)
_row64 = _tile_intrinsic(True, 1, ROW_VECTORS)
_half32 = _tile_intrinsic(False, 1, ROW_VECTORS // 2)
_half64 = _tile_intrinsic(True, 1, ROW_VECTORS // 2)
# the narrow tiles for rows left over in panels of TALL_VECTORS vectors
_narrow32 = _tile_intrinsic(False, TILE_ROWS, TALL_VECTORS)
_narrow64 = _tile_intrinsic(True, TILE_ROWS, TALL_VECTORS)
_pair32 = _tile_intrinsic(False, 1, TALL_VECTORS)
_pair64 = _tile_intrinsic(True, 1, TALL_VECTORS)
# the narrow tiles (NARROW_VECTORS_MAX) of one vector and of three (two: the tiles above)
_col8x32 = _tile_intrinsic(False, TALL_ROWS, 1)
_col8x64 = _tile_intrinsic(True, TALL_ROWS, 1)
_col4x32 = _tile_intrinsic(False, TILE_ROWS, 1)
_col4x64 = _tile_intrinsic(True, TILE_ROWS, 1)
_col1x32 = _tile_intrinsic(False, 1, 1)
_col1x64 = _tile_intrinsic(True, 1, 1)
_tri4x32 = _tile_intrinsic(False, TILE_ROWS, 3)
_tri4x64 = _tile_intrinsic(True, TILE_ROWS, 3)
_tri1x32 = _tile_intrinsic(False, 1, 3)
_tri1x64 = _tile_intrinsic(True, 1, 3)


@njit(cache=True, error_model="numpy")
def _run_tile(n_rows, n_vectors, it, p_acc, ld_acc, p_a, ld_a, p_w, ld_w, n_inner):
    # one register tile of n_rows x n_vectors (a shape compiled above) of itemsize it;
    # arguments as for _tile_intrinsic (inlined by LLVM: the branches fold away)
    args = (p_acc, ld_acc, p_a, ld_a, p_w, ld_w, n_inner)
    if n_rows == TALL_ROWS:
        if it == 8:
            _tall64(*args)
        else:
            _tall32(*args)
    elif n_rows == TILE_ROWS:
        if n_vectors == TILE_VECTORS:
            if it == 8:
                _tile64(*args)
            else:
                _tile32(*args)
        elif it == 8:
            _narrow64(*args)
        else:
            _narrow32(*args)
    elif n_vectors == ROW_VECTORS:
        if it == 8:
            _row64(*args)
        else:
            _row32(*args)
    elif n_vectors == ROW_VECTORS // 2:
        if it == 8:
            _half64(*args)
        else:
            _half32(*args)
    elif it == 8:
        _pair64(*args)
    else:
        _pair32(*args)


@njit(cache=True, error_model="numpy")
def _run_narrow_tile(n_rows, n_vectors, it, p_acc, ld_acc, p_a, ld_a, p_w, ld_w, n_inner):
    # as _run_tile, for the narrow tiles: 1 vector of TALL_ROWS, TILE_ROWS or 1 rows, 3 of
    # TILE_ROWS or 1; 2 vectors go to _run_tile
    args = (p_acc, ld_acc, p_a, ld_a, p_w, ld_w, n_inner)
    if n_vectors == 1:
        if n_rows == TALL_ROWS:
            if it == 8:
                _col8x64(*args)
            else:
                _col8x32(*args)
        elif n_rows == TILE_ROWS:
            if it == 8:
                _col4x64(*args)
            else:
                _col4x32(*args)
        elif it == 8:
            _col1x64(*args)
        else:
            _col1x32(*args)
    elif n_vectors == 3:
        if n_rows == TILE_ROWS:
            if it == 8:
                _tri4x64(*args)
            else:
                _tri4x32(*args)
        elif it == 8:
            _tri1x64(*args)
        else:
            _tri1x32(*args)
    else:
        _run_tile(n_rows, n_vectors, it, *args)  # two vectors: the tall, narrow and pair tiles


@njit(cache=True, error_model="numpy")
def _narrow_product(vectors, it, p_acc, ld_acc, p_a, ld_a, p_w, ld_w, n_inner, n_rows):
    # accumulate_product of a product of 1 to NARROW_VECTORS_MAX vectors, all on tiles as wide
    # as the product: TALL_ROWS rows at a time (TILE_ROWS at 3 vectors: 24 accumulators would
    # not leave registers for w), then TILE_ROWS, then one; addresses and
    # strides as for _tile_intrinsic (no arrays: a call with arrays costs more than a whole
    # product of H = 16)
    r = 0
    while r < n_rows:
        if vectors < 3 and r + TALL_ROWS <= n_rows:
            rows = TALL_ROWS
        elif r + TILE_ROWS <= n_rows:
            rows = TILE_ROWS
        else:
            rows = 1
        _run_narrow_tile(rows, vectors, it, p_acc + r * ld_acc * it, ld_acc, p_a + r * ld_a * it,
                         ld_a, p_w, ld_w, n_inner)
        r += rows


@njit(cache=True, error_model="numpy", inline="always")
def _narrow_step(acc, acc_row0, a, a_row0, a_col0, w, w_row0, n_inner, n_rows):
    # the product of accumulate_product on the narrow tiles, if it is narrow (1 to
    # NARROW_VECTORS_MAX whole vectors) and the tiles apply; False if not. Inlined into its
    # callers (step_product too): below, addresses only
    n = acc.shape[1]
    it = acc.itemsize
    if not (TILES and n_inner > 0 and n * it % 64 == 0 and 0 < n * it <= NARROW_VECTORS_MAX * 64
            and acc.strides[1] == it and a.strides[1] == it and w.strides[1] == it):
        return False
    ld_acc, ld_a, ld_w = acc.strides[0] // it, a.strides[0] // it, w.strides[0] // it
    _narrow_product(n * it // 64, it, acc.ctypes.data + acc_row0 * ld_acc * it, ld_acc,
                    a.ctypes.data + (a_row0 * ld_a + a_col0) * it, ld_a,
                    w.ctypes.data + w_row0 * ld_w * it, ld_w, n_inner, n_rows)
    return True


@njit(cache=True, error_model="numpy")
def _loop_product(acc, acc_row0, a, a_row0, a_col0, w, w_row0, n_inner, n_rows, c0, c1):
    # accumulate_product on columns c0:c1, as loops: j outer, four rows of w per pass so that
    # each row of acc is loaded and stored once per four multiply-adds, the rows in the middle,
    # two at a time so that each load of w serves two (measured: float32, 4 rows, H = 256,
    # 4H columns, 52 -> 29 us); column slices, so that the loops from 0 vectorise
    j = 0
    while j + 4 <= n_inner:
        w0 = w[w_row0 + j, c0:c1]
        w1 = w[w_row0 + j + 1, c0:c1]
        w2 = w[w_row0 + j + 2, c0:c1]
        w3 = w[w_row0 + j + 3, c0:c1]
        c = a_col0 + j
        r = 0
        while r + 2 <= n_rows:
            a_r = a[a_row0 + r]
            a_s = a[a_row0 + r + 1]
            a0, a1, a2, a3 = a_r[c], a_r[c + 1], a_r[c + 2], a_r[c + 3]
            b0, b1, b2, b3 = a_s[c], a_s[c + 1], a_s[c + 2], a_s[c + 3]
            x = acc[acc_row0 + r, c0:c1]
            y = acc[acc_row0 + r + 1, c0:c1]
            for i in range(x.shape[0]):
                w0i, w1i, w2i, w3i = w0[i], w1[i], w2[i], w3[i]
                x[i] = _madd(_madd(_madd(_madd(x[i], a0, w0i), a1, w1i), a2, w2i), a3, w3i)
                y[i] = _madd(_madd(_madd(_madd(y[i], b0, w0i), b1, w1i), b2, w2i), b3, w3i)
            r += 2
        if r < n_rows:
            a_r = a[a_row0 + r]
            a0, a1, a2, a3 = a_r[c], a_r[c + 1], a_r[c + 2], a_r[c + 3]
            x = acc[acc_row0 + r, c0:c1]
            for i in range(x.shape[0]):
                x[i] = _madd(_madd(_madd(_madd(x[i], a0, w0[i]), a1, w1[i]), a2, w2[i]), a3,
                             w3[i])
        j += 4
    while j < n_inner:
        w0 = w[w_row0 + j, c0:c1]
        for r in range(n_rows):
            a0 = a[a_row0 + r, a_col0 + j]
            x = acc[acc_row0 + r, c0:c1]
            for i in range(x.shape[0]):
                x[i] = _madd(x[i], a0, w0[i])
        j += 1


@njit(cache=True, error_model="numpy")
def accumulate_product(acc, acc_row0, a, a_row0, a_col0, w, w_row0, n_inner, n_rows):
    """``acc[acc_row0 + r] += a[a_row0 + r, a_col0:a_col0 + n_inner] @ w[w_row0:w_row0 + n_inner]``.

    The small per-step matrix product of every recurrence (``r < n_rows``, a chunk of the batch):
    register tiles of :data:`TALL_ROWS`, then :data:`TILE_ROWS`, rows where :data:`TILES`
    (whole tiles of rows and columns), compiled loops for the rest. Each entry is summed in the
    fixed order ``j = 0, 1, 2, ...``, every step one multiply-add rounded once where
    :data:`FUSED` (else twice): the same bits by tile or loop and whatever the chunking.

    Parameters
    ----------
    acc : ndarray, shape (R, K)
        Accumulator, updated in place (contiguous rows).
    acc_row0, a_row0, a_col0, w_row0 : int
        Offsets of the blocks used in ``acc``, ``a`` and ``w``.
    a : ndarray, shape (R', N')
        Left factor (contiguous rows).
    w : ndarray, shape (N'', K)
        Right factor (contiguous rows).
    n_inner, n_rows : int
        Inner dimension and number of rows.
    """
    n = acc.shape[1]
    it = acc.itemsize
    rows_tiled = 0
    cols_tiled = 0
    rows_done = 0  # rows whose columns below cols_row are done by one-row tiles
    cols_row = 0
    # (no tile is narrower than 4 vectors: below that, straight to the loops)
    if TILES and n_inner > 0 and n * it >= 256 and acc.strides[1] == it and (
            a.strides[1] == it and w.strides[1] == it):
        ld_acc, ld_a, ld_w = acc.strides[0] // it, a.strides[0] // it, w.strides[0] // it
        p_acc = acc.ctypes.data + acc_row0 * ld_acc * it
        p_a = a.ctypes.data + (a_row0 * ld_a + a_col0) * it
        p_w = w.ctypes.data + w_row0 * ld_w * it
        cols = TILE_VECTORS * 64 // it
        rows_tiled = n_rows - n_rows % TILE_ROWS
        cols_tiled = n - n % cols
        if rows_tiled > 0 and cols_tiled > 0:
            cols_tall = cols // 2
            rows_tall = rows_tiled - rows_tiled % TALL_ROWS
            for c0 in range(0, cols_tiled, cols):
                for r in range(0, rows_tall, TALL_ROWS):
                    for c in range(c0, c0 + cols, cols_tall):
                        _run_tile(TALL_ROWS, TALL_VECTORS, it, p_acc + (r * ld_acc + c) * it,
                                  ld_acc, p_a + r * ld_a * it, ld_a, p_w + c * it, ld_w, n_inner)
                for r in range(rows_tall, rows_tiled, TILE_ROWS):
                    _run_tile(TILE_ROWS, TILE_VECTORS, it, p_acc + (r * ld_acc + c0) * it, ld_acc,
                              p_a + r * ld_a * it, ld_a, p_w + c0 * it, ld_w, n_inner)
        else:
            rows_tiled = 0
            cols_tiled = 0
        # a single row left over (a batch of one above all): one-row tiles where w fits in a
        # core's L2 and acc is narrow (else their strided passes over w lose to the loops)
        cols1 = ROW_VECTORS * 64 // it
        cols_row = n - n % cols1
        # and a half-width tile for what is left of at least half of one (H = 64 float32)
        half = n - cols_row >= cols1 // 2
        if n_rows - rows_tiled == 1 and (cols_row > 0 or half) and (
                n <= ROW_TILE_VECTORS_MAX * 64 // it and n_inner * n * it <= ROW_TILE_BYTES_MAX):
            r = rows_tiled
            p_acc_r = p_acc + r * ld_acc * it
            p_a_r = p_a + r * ld_a * it
            for c0 in range(0, cols_row, cols1):
                _run_tile(1, ROW_VECTORS, it, p_acc_r + c0 * it, ld_acc, p_a_r, ld_a,
                          p_w + c0 * it, ld_w, n_inner)
            if half:
                _run_tile(1, ROW_VECTORS // 2, it, p_acc_r + cols_row * it, ld_acc, p_a_r, ld_a,
                          p_w + cols_row * it, ld_w, n_inner)
                cols_row += cols1 // 2
            rows_done = 1
    c_left = cols_row if rows_done else 0
    if rows_tiled < n_rows and c_left < n:
        _loop_product(acc, acc_row0 + rows_tiled, a, a_row0 + rows_tiled, a_col0, w, w_row0,
                      n_inner, n_rows - rows_tiled, c_left, n)
    if cols_tiled < n and rows_tiled > 0:
        _loop_product(acc, acc_row0, a, a_row0, a_col0, w, w_row0, n_inner, rows_tiled,
                      cols_tiled, n)


# ------------------------------------------------------------------------------ panels
# Where one thread's w outgrows its L2 cache (the unit-split recurrences), a product streams w
# from L3 every step. In a row-major w each row of a tile's column block lies in another 4 KB
# page (1024 float32 columns: a row is 4 KB), and the hardware prefetchers do not cross pages:
# every row is a miss. Packed as panels (the columns of one tile width, contiguous over the
# inner dimension) the stream is sequential. Measured on 2 cores (Intel Xeon, AVX-512), each
# thread its own w, float32, fastest of 7, us a product, row-major -> panels of 2 / 4 / 8
# vectors: 8 x 512 @ 512 x 1024 141 -> 68 / 80 / 84, 8 x 2048 @ 2048 x 256 123 -> 67 / 85 / 95,
# 8 x 256 @ 256 x 512 18 -> 13.5 / 15 / 16, 16 x 512 @ 512 x 1024 262 -> 142 / 155 / 155;
# 4 x 512 @ 512 x 1024 62.5 -> - / 45 / 56, 4 x 2048 @ 2048 x 256 72 -> - / 48 / 55;
# 1 x 2048 @ 2048 x 256 68 -> 43 / 35 / 34, 1 x 512 @ 512 x 1024 40 -> 35 / 37 / 34,
# 1 x 1024 @ 1024 x 128 6.6 -> 8.0 / 4.6 / 6.6. Hence 2 vectors from 8 rows, 4 from 4, and 8
# for fewer (one-row tiles of 8 vectors: 8 independent sums, as many as two FMA units with a
# latency of 4 keep busy). The unit-split LSTM, T = 1000, fwd+BPTT, ms (tall tiles on both
# sides): float32 (8, 512) 545-562 -> 384-403, (1, 512) 135-163 -> 115-120, (1, 256) 30 -> 28.


def panel_vectors(n_rows):
    """Vectors of 64 bytes in a panel's row for products of ``n_rows`` rows: the tall tiles'
    width from :data:`TALL_ROWS` rows, the 4-row tiles' from :data:`TILE_ROWS`, else the
    one-row tiles'."""
    if n_rows >= TALL_ROWS:
        return TALL_VECTORS
    return TILE_VECTORS if n_rows >= TILE_ROWS else ROW_VECTORS


def panel_columns(n_rows, itemsize):
    """Columns of a panel (:func:`panel_vectors` vectors of ``itemsize``-byte numbers)."""
    return panel_vectors(n_rows) * 64 // itemsize


def pack_panels(w, n_rows):
    """``w`` packed as panels for :func:`accumulate_panels`.

    Parameters
    ----------
    w : ndarray, shape (..., K, N)
        Right factor of the products (or a stack of them).
    n_rows : int
        Rows of the products it will serve (sets the panel width, :func:`panel_vectors`).

    Returns
    -------
    ndarray, shape (..., P, K, C), contiguous
        ``out[..., q, k, c] = w[..., k, q*C + c]``, zero where ``q*C + c >= N``:
        ``C = panel_columns(n_rows, w.itemsize)``, ``P = ceil(N / C)``.
    """
    *lead, k, n = w.shape
    cols = panel_columns(n_rows, w.itemsize)
    n_panels = -(-n // cols)
    padded = np.zeros((*lead, k, n_panels * cols), dtype=w.dtype)
    padded[..., :n] = w
    return np.ascontiguousarray(
        padded.reshape(*lead, k, n_panels, cols).swapaxes(-3, -2))


@njit(cache=True, error_model="numpy")
def accumulate_panels(acc, acc_row0, a, a_row0, a_col0, panels, w_row0, n_inner, n_rows):
    """:func:`accumulate_product` with ``w`` packed as panels (:func:`pack_panels`):
    ``acc[acc_row0 + r, :P*C] += a[a_row0 + r, a_col0:a_col0 + n_inner] @ W[w_row0:w_row0 +
    n_inner]`` for ``r < n_rows``, where ``W[k, q*C + c] = panels[q, k, c]``.

    Register tiles of :data:`TALL_ROWS`, then :data:`TILE_ROWS` rows, then one row, each the
    width of a panel or a whole part of it; compiled loops where :data:`TILES` is off. The same
    sums in the same order as :func:`accumulate_product`: the same bits.

    Parameters
    ----------
    acc : ndarray, shape (R, K)
        Accumulator, updated in place (contiguous rows; ``K >= P*C``).
    acc_row0, a_row0, a_col0, w_row0 : int
        Offsets of the blocks used in ``acc``, ``a`` and the panels' inner dimension.
    a : ndarray, shape (R', N')
        Left factor (contiguous rows).
    panels : ndarray, shape (P, N'', C)
        From :func:`pack_panels`, contiguous.
    n_inner, n_rows : int
        Inner dimension and number of rows.
    """
    n_panels, _, cols = panels.shape
    it = acc.itemsize
    vectors = cols * it // 64
    if not (TILES and n_inner > 0 and cols * it % 128 == 0 and acc.strides[1] == it and
            a.strides[1] == it and panels.strides[2] == it and panels.strides[1] == cols * it):
        for q in range(n_panels):
            _loop_product(acc[:, q * cols:(q + 1) * cols], acc_row0, a, a_row0, a_col0,
                          panels[q], w_row0, n_inner, n_rows, 0, cols)
        return
    ld_acc, ld_a = acc.strides[0] // it, a.strides[0] // it
    p_acc = acc.ctypes.data + acc_row0 * ld_acc * it
    p_a = a.ctypes.data + (a_row0 * ld_a + a_col0) * it
    lanes = 64 // it
    for q in range(n_panels):
        p_w = panels.ctypes.data + q * panels.strides[0] + w_row0 * cols * it
        c0 = q * cols
        r = 0
        while r < n_rows:
            # tall tiles, then 4-row tiles, then one row: each as wide as the panel allows
            if r + TALL_ROWS <= n_rows:
                rows, step = TALL_ROWS, TALL_VECTORS
            elif r + TILE_ROWS <= n_rows:
                rows = TILE_ROWS
                step = TILE_VECTORS if vectors % TILE_VECTORS == 0 else TALL_VECTORS
            else:
                rows = 1
                if vectors % ROW_VECTORS == 0:
                    step = ROW_VECTORS
                elif vectors % (ROW_VECTORS // 2) == 0:
                    step = ROW_VECTORS // 2
                else:
                    step = TALL_VECTORS
            for v in range(0, vectors, step):
                _run_tile(rows, step, it, p_acc + (r * ld_acc + c0 + v * lanes) * it, ld_acc,
                          p_a + r * ld_a * it, ld_a, p_w + v * 64, cols, n_inner)
            r += rows


@njit(cache=True, error_model="numpy", inline="always")
def step_product(out, out_row0, a, a_row0, a_col0, w, w_row0, n_inner, n_rows, accumulate, blas,
                 ilp64, scratch):
    """The per-step product of a batch-chunked recurrence: ``out[out_row0 + r] (+)=
    a[a_row0 + r, a_col0:a_col0 + n_inner] @ w[w_row0:w_row0 + n_inner]`` for ``r < n_rows``,
    by one single-threaded BLAS call (``blas``: :func:`blas_product`, for large steps) or by
    the compiled loops and register tiles (:func:`accumulate_product`, the same bits whatever
    the chunking).

    Parameters
    ----------
    out, out_row0, a, a_row0, a_col0, w, w_row0, n_inner, n_rows, accumulate
        As for :func:`blas_product` (``accumulate=False``: ``out``'s rows are overwritten).
    blas : bool
        Call BLAS (which must then be limited to one thread) instead of the loops.
    ilp64 : bool
        From :func:`bind_gemm`, which must have run in this process (the kernel links to the
        GEMMs it binds even when ``blas`` is False).
    scratch : tuple
        From :func:`gemm_scratch`, one per thread.
    """
    if blas:
        blas_product(out, out_row0, a, a_row0, a_col0, w, w_row0, n_inner, n_rows, accumulate,
                     ilp64, scratch)
        return
    if not accumulate:
        out[out_row0:out_row0 + n_rows, :] = 0
    # a narrow product (H = 16) takes less time than a call to accumulate_product with its
    # arrays: straight to its tiles
    if not _narrow_step(out, out_row0, a, a_row0, a_col0, w, w_row0, n_inner, n_rows):
        accumulate_product(out, out_row0, a, a_row0, a_col0, w, w_row0, n_inner, n_rows)
