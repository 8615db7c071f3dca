"""Small dense linear algebra on the GPU for the CUDA kernels: tiled GEMM, row sums, transposes.

CuPy and cuBLAS are not dependencies, so the products that the CPU kernels hand to BLAS (the input
projection before the time loop, the weight gradients after it) run on these kernels. They are
plain shared-memory tiled kernels: no atomics, every sum in a fixed order, so results are bitwise
reproducible from run to run.

Kernels (``@cuda.jit``, launched by the host helpers below):

- :func:`matmul` ``C (+)= A @ B``, :func:`matmul_nt` ``C (+)= A @ B.T`` and :func:`matmul_tn`
  ``C (+)= A.T @ B``. ``matmul_tn`` forms weight gradients, sums over ``T*B`` rows, and therefore
  accumulates in float64 whatever the dtype (the CPU path's ``_sum_rows`` does the same for the
  biases); the other two accumulate in the arrays' dtype, as BLAS does.
- :func:`sum_rows_partial` / :func:`sum_rows_finish`: column sums of a ``(M, N)`` matrix in two
  deterministic stages, accumulated in float64.
- :func:`add_bias` ``C[r, :] += bias``, :func:`transpose` ``out = A.T``.

Host helpers (:func:`gemm`, :func:`sum_rows`, :func:`transposed`, :func:`to_device`) take and
return device arrays and never copy to the host.
"""

import math

import numpy as np
from numba import cuda, float64

#: Edge of the square GEMM tile (threads per block: TILE * TILE).
TILE = 16
_TILE_PAD = TILE + 1  # padded row: transposed tile stores hit distinct banks
_THREADS_1D = 128


def _make_gemm(trans_a, trans_b, wide, name):
    """Build a tiled GEMM kernel ``C (+)= op(A) @ op(B)``; ``op`` transposes where asked.

    Every tile load is coalesced: a transposed operand is read along its rows and written
    transposed into the (padded) shared tile.
    """

    def kernel(a, b, c, accumulate):
        # sa[r, k] = op(A)[row0 + r, k0 + k],  sb[k, q] = op(B)[k0 + k, col0 + q]
        sa = cuda.shared.array((TILE, _TILE_PAD), dtype=c.dtype)
        sb = cuda.shared.array((TILE, _TILE_PAD), dtype=c.dtype)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        row0 = cuda.blockIdx.y * TILE
        col0 = cuda.blockIdx.x * TILE
        m = c.shape[0]
        n = c.shape[1]
        kdim = a.shape[0] if trans_a else a.shape[1]
        if wide:
            acc = float64(0)
        else:
            acc = c.dtype.type(0)
        zero = c.dtype.type(0)
        for k0 in range(0, kdim, TILE):
            if trans_a:  # A is (K, M): read a[k0 + ty, row0 + tx]
                r = row0 + tx
                k = k0 + ty
                sa[tx, ty] = a[k, r] if (r < m and k < kdim) else zero
            else:  # A is (M, K): read a[row0 + ty, k0 + tx]
                r = row0 + ty
                k = k0 + tx
                sa[ty, tx] = a[r, k] if (r < m and k < kdim) else zero
            if trans_b:  # B is (N, K): read b[col0 + ty, k0 + tx]
                q = col0 + ty
                k = k0 + tx
                sb[tx, ty] = b[q, k] if (q < n and k < kdim) else zero
            else:  # B is (K, N): read b[k0 + ty, col0 + tx]
                q = col0 + tx
                k = k0 + ty
                sb[ty, tx] = b[k, q] if (q < n and k < kdim) else zero
            cuda.syncthreads()
            for kk in range(TILE):
                if wide:
                    acc += float64(sa[ty, kk]) * float64(sb[kk, tx])
                else:
                    acc += sa[ty, kk] * sb[kk, tx]
            cuda.syncthreads()
        row = row0 + ty
        col = col0 + tx
        if row < m and col < n:
            if accumulate:
                c[row, col] = c[row, col] + acc
            else:
                c[row, col] = acc

    kernel.__name__ = kernel.__qualname__ = name
    kernel.__doc__ = (
        f"``C = {'A.T' if trans_a else 'A'} @ {'B.T' if trans_b else 'B'}`` "
        f"(``accumulate`` adds to ``C`` instead of overwriting it), accumulated in "
        f"{'float64' if wide else 'the dtype of C'}.\n\n"
        "Launch with ``block=(TILE, TILE)`` and ``grid=(ceil(N / TILE), ceil(M / TILE))``."
    )
    return cuda.jit(kernel)


matmul = _make_gemm(False, False, False, "matmul")
matmul_nt = _make_gemm(False, True, False, "matmul_nt")
matmul_tn = _make_gemm(True, False, True, "matmul_tn")


@cuda.jit
def sum_rows_partial(a, rows_per_chunk, partial):
    """Stage 1 of the column sums of ``a`` (M, N): ``partial[p, j]`` sums rows
    ``p*rows_per_chunk ...`` of column ``j`` in float64, in row order.

    Launch with ``grid=(ceil(N / 128), P)``, ``block=128``.
    """
    j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    p = cuda.blockIdx.y
    m = a.shape[0]
    if j < a.shape[1]:
        r0 = p * rows_per_chunk
        r1 = min(m, r0 + rows_per_chunk)
        acc = float64(0)
        for r in range(r0, r1):
            acc += float64(a[r, j])
        partial[p, j] = acc


@cuda.jit
def sum_rows_finish(partial, out):
    """Stage 2 of the column sums: ``out[j] = sum_p partial[p, j]`` in chunk order, cast to
    ``out``'s dtype."""
    j = cuda.grid(1)
    if j < out.shape[0]:
        acc = float64(0)
        for p in range(partial.shape[0]):
            acc += partial[p, j]
        out[j] = acc


@cuda.jit
def add_bias(c, bias):
    """``c[r, j] += bias[j]`` for every row ``r`` of ``c`` (M, N). Launch over ``M * N`` threads."""
    e = cuda.grid(1)
    n = c.shape[1]
    if e < c.shape[0] * n:
        r = e // n
        j = e - r * n
        c[r, j] = c[r, j] + bias[j]


@cuda.jit
def transpose(a, out):
    """``out = a.T`` for a 2-D ``a``. Launch over ``a.size`` threads."""
    e = cuda.grid(1)
    n = a.shape[1]
    if e < a.shape[0] * n:
        r = e // n
        j = e - r * n
        out[j, r] = a[r, j]


# --- host helpers: device arrays in, device arrays out ------------------------------------------

def is_device_array(a):
    """True for a Numba device array (or the simulator's) or anything exposing
    ``__cuda_array_interface__`` (CuPy, PyTorch CUDA tensors)."""
    return bool(getattr(a, "__cuda_ndarray__", False)) or hasattr(a, "__cuda_array_interface__")


def to_device(a, dtype):
    """Return ``a`` as a C-contiguous device array of ``dtype``: host arrays are copied once,
    device arrays are used in place (they must already be C-contiguous and of ``dtype``)."""
    if is_device_array(a):
        if not getattr(a, "__cuda_ndarray__", False):
            a = cuda.as_cuda_array(a)
        if np.dtype(a.dtype) != dtype:
            raise TypeError(f"device array has dtype {a.dtype}, expected {dtype}")
        if not a.is_c_contiguous():
            raise ValueError("device arrays must be C-contiguous")
        return a
    return cuda.to_device(np.ascontiguousarray(a, dtype=dtype))


def _blocks(n, per_block):
    return max(1, math.ceil(n / per_block))


def launch_1d(n):
    """``(blocks, threads)`` covering ``n`` threads: up to 128 per block, in whole warps."""
    threads = min(_THREADS_1D, 32 * _blocks(n, 32))
    return _blocks(n, threads), threads


def gemm(a, b, c, trans_a=False, trans_b=False, accumulate=False):
    """``c (+)= op(a) @ op(b)`` on device arrays, choosing :func:`matmul`, :func:`matmul_nt`
    or :func:`matmul_tn`.

    Parameters
    ----------
    a, b : device arrays, 2-D
        Operands; ``trans_a``/``trans_b`` use their transposes (both at once is not supported).
    c : device array, shape (M, N)
        Output, written in place.
    accumulate : bool
        Add the product to ``c`` instead of overwriting it.
    """
    if trans_a and trans_b:
        raise NotImplementedError("gemm: trans_a and trans_b together")
    kernel = matmul_tn if trans_a else matmul_nt if trans_b else matmul
    m, n = c.shape
    if m == 0 or n == 0:
        return c
    grid = (_blocks(n, TILE), _blocks(m, TILE))
    kernel[grid, (TILE, TILE)](a, b, c, accumulate)
    return c


def sum_rows(a, out):
    """``out[j] = a[:, j].sum()`` on device arrays, in float64 and a fixed order (the number of
    chunks depends only on the shape, so results do not depend on the device)."""
    m, n = a.shape
    if n == 0:
        return out
    n_chunks = max(1, min(256, m // 64))
    rows = max(1, math.ceil(m / n_chunks))
    n_chunks = max(1, math.ceil(m / rows))
    partial = cuda.device_array((n_chunks, n), dtype=np.float64)
    blocks, threads = launch_1d(n)
    sum_rows_partial[(blocks, n_chunks), threads](a, rows, partial)
    sum_rows_finish[blocks, threads](partial, out)
    return out


def bias_add(c, bias):
    """``c[r, :] += bias`` on device arrays (``c`` 2-D)."""
    if c.size:
        add_bias[launch_1d(c.size)](c, bias)
    return c


def transposed(a):
    """A new C-contiguous device array holding ``a.T`` (``a`` 2-D on the device)."""
    out = cuda.device_array((a.shape[1], a.shape[0]), dtype=a.dtype)
    if a.size:
        transpose[launch_1d(a.size)](a, out)
    return out
