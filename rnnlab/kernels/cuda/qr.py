"""Block-level Householder QR for CUDA: the GPU twin of :mod:`rnnlab.kernels.cpu.qr`.

The Lyapunov (Benettin) loop re-orthonormalises a frame of ``k`` tangent vectors of length ``n``
at every QR. One thread block factors one frame, in place, in the *transposed layout* of the CPU
kernels: row ``i`` of ``at`` (``k x n``, leading dimension ``ld >= n``) is column ``i`` of
``A`` (``n x k``), i.e. tangent vector ``i``. On exit row ``i`` is column ``i`` of ``Q``.

Algorithm: unblocked Householder (LAPACK ``dgeqr2`` then ``dorg2r``, in place), the numerics of
the CPU kernel: ``dlarfg``'s reflector convention (``R_ii = -sign(a_ii) ||x||``, so the signs of
``diag(R)`` match LAPACK's and NumPy's; a column with nothing below the diagonal is not reflected,
so an exactly zero column gives ``R_ii = 0``), norms guarded against overflow and underflow. It
was chosen over Gram-Schmidt (CGS2) because Householder gives an orthonormal ``Q`` to working
precision whatever the conditioning of the frame, which grows like ``exp((λ_1 - λ_k) m)``
between QRs: large ``m`` or a wide spectrum makes CGS2 lose orthogonality (and, for a
numerically rank-deficient frame, fail), silently biasing the trailing exponents.

Parallelisation without warp intrinsics (so that Numba's CUDA simulator runs the same code):
for column ``j`` the ``nv = k - j - 1`` trailing vectors are split into ``P`` segments each
(``P * nv <= blockDim``, more segments as the trailing matrix shrinks, so the work per thread
stays balanced). A thread computes the partial dot product of its segment with the Householder
vector, writes it to shared memory, and after one barrier every thread of a vector sums the
``P`` partials in a fixed order and updates its segment. The sum of squares that the next
reflector needs is accumulated on the way. Two barriers per column for the factorisation, two
for forming ``Q``; every reduction has a fixed order, so results are bitwise reproducible.
With ``ld`` odd, threads of a warp that read the same position of consecutive rows hit
distinct shared-memory banks.

Device functions take flat arrays so that the frame can live in shared or global memory. The
kernel :func:`householder_qr_rows_batched` (one block per matrix) and its host wrapper
:func:`qr_rows_batched` expose the QR on its own, for tests and for users' batched QRs.
"""

import math

import numpy as np

try:
    from numba import cuda
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "rnnlab.kernels.cuda needs the numba-cuda package (pip install 'numba-cuda[cu13]')"
    ) from exc
from numba.extending import register_jitable

_FI = np.finfo(np.float64)
#: Sums of squares in ``(SSQ_LO, SSQ_HI)`` are trusted; outside it the norm is recomputed with
#: scaling (the bounds of the CPU kernel: squares may have underflowed or overflowed).
SSQ_LO = float(_FI.tiny) / (float(_FI.eps) / 2.0)
SSQ_HI = float(_FI.max) * (float(_FI.eps) / 2.0)


@register_jitable
def scratch_size(k, n, threads):
    """Elements of the shared scratch :func:`householder_qr_rows` needs (see its ``work``).

    Parameters
    ----------
    k, n : int
        Number of vectors and their length (``1 <= k <= n``).
    threads : int
        Threads per block.

    Returns
    -------
    int
        ``3k`` (tau, scale, R's diagonal) + ``max(threads, k)`` (partial dots) + ``threads``
        (partial sums of squares) + ``2n`` (Householder vector, double-buffered).
    """
    return 3 * k + max(threads, k) + threads + 2 * n


@register_jitable
def leading_dimension(n):
    """Row stride of a frame of vectors of length ``n`` in shared memory: ``n`` rounded up to an
    odd number, so that threads reading one position of consecutive rows avoid bank conflicts."""
    return n | 1


@cuda.jit(device=True)
def _tail_norm(at, base, l0, l1):
    """2-norm of ``at[base + l0 : base + l1]`` scaled by its largest magnitude (no overflow or
    underflow), serially: the rare slow path, run redundantly by every thread."""
    amax = 0.0
    for ll in range(l0, l1):
        a = abs(at[base + ll])
        if a > amax or a != a:
            amax = a
    if amax == 0.0 or not (amax < math.inf):
        return amax
    inv = 1.0 / amax
    ssq = 0.0
    for ll in range(l0, l1):
        t = at[base + ll] * inv
        ssq += t * t
    return amax * math.sqrt(ssq)


@cuda.jit(device=True)
def _reflector(at, base, j, n, ssq):
    """``(beta, tau, sc)`` of the reflector of row ``j`` (``dlarfg``): ``alpha = at[base + j]``,
    tail ``x = at[base + j + 1 : base + n]`` with sum of squares ``ssq``; the Householder vector
    is ``[1, sc * x]``. No reflection (``tau = 0``, ``beta = alpha``) when ``x`` is zero."""
    alpha = at[base + j]
    fast = ssq > SSQ_LO and ssq < SSQ_HI
    if fast:
        xnorm = math.sqrt(ssq)
    else:
        xnorm = _tail_norm(at, base, j + 1, n)
    if xnorm == 0.0:
        return alpha, 0.0, 0.0
    a2 = alpha * alpha
    if fast and (alpha == 0.0 or (a2 > SSQ_LO and a2 < SSQ_HI)):
        beta = -math.copysign(math.sqrt(a2 + ssq), alpha)
    else:
        beta = -math.copysign(math.hypot(alpha, xnorm), alpha)
    return beta, (beta - alpha) / beta, 1.0 / (alpha - beta)


@cuda.jit(device=True)
def _segments(nv, nl, n_threads):
    """Segments per trailing vector: as many as the block allows, at least one element each."""
    return max(1, min(n_threads // nv, nl))


@cuda.jit(device=True)
def householder_qr_rows(at, ld, k, n, work):
    """QR of a ``k x n`` row-frame in place, by the whole thread block: ``at`` becomes ``Q``.

    Every thread of the block must call it (it contains barriers) with the same arguments.

    Parameters
    ----------
    at : 1-D array (shared or global memory), float64
        Row ``i`` (``at[i*ld : i*ld + n]``) is column ``i`` of ``A``, ``1 <= k <= n``. On exit
        row ``i`` is column ``i`` of ``Q`` (orthonormal).
    ld : int
        Row stride (``>= n``; odd avoids shared-memory bank conflicts).
    k, n : int
        Number of vectors and their length.
    work : 1-D shared array, float64, at least ``scratch_size(k, n, blockDim.x)`` elements
        ``work[2k:3k]`` holds ``diag(R)`` on exit (LAPACK signs).

    Notes
    -----
    Ends with a barrier: on return every thread sees ``Q`` and ``diag(R)``.
    """
    tid = cuda.threadIdx.x
    n_thr = cuda.blockDim.x
    taus = work[0:k]
    scs = work[k:2 * k]
    rdiag = work[2 * k:3 * k]
    o_part = 3 * k
    o_sq = o_part + max(n_thr, k)
    o_v = o_sq + n_thr
    # ---- sum of squares of the first tail, as partials (later ones come from the updates)
    n_sq = _segments(1, n - 1, n_thr) if n > 1 else 1
    for p in range(tid, n_sq, n_thr):
        s = 0.0
        for ll in range(1 + p, n, n_sq):
            x = at[ll]
            s += x * x
        work[o_sq + p] = s
    cuda.syncthreads()
    # ---- factorisation: reflector j, then apply it to the trailing rows
    for j in range(k):
        bj = j * ld
        ssq = 0.0
        for p in range(n_sq):
            ssq += work[o_sq + p]
        beta, tau, sc = _reflector(at, bj, j, n, ssq)
        if tid == 0:
            taus[j] = tau
            scs[j] = sc
            rdiag[j] = beta
        if j > 0:
            # store the previous Householder vector scaled: nobody reads row j-1 until Q is formed
            bp = bj - ld
            scp = scs[j - 1]
            for ll in range(j + tid, n, n_thr):
                at[bp + ll] *= scp
        nv = k - j - 1
        nl = n - j - 1
        n_seg = 1
        if nv > 0:
            n_seg = _segments(nv, nl, n_thr)
            for slot in range(tid, n_seg * nv, n_thr):
                bi = (j + 1 + slot % nv) * ld
                s = 0.0
                for ll in range(j + 1 + slot // nv, n, n_seg):
                    s += (sc * at[bj + ll]) * at[bi + ll]
                work[o_part + slot] = s
        cuda.syncthreads()
        if nv > 0:
            for slot in range(tid, n_seg * nv, n_thr):
                r = slot % nv
                p = slot // nv
                bi = (j + 1 + r) * ld
                s = at[bi + j]
                for q in range(n_seg):
                    s += work[o_part + q * nv + r]
                c = tau * s
                sq = 0.0
                for ll in range(j + 1 + p, n, n_seg):
                    y = at[bi + ll]
                    if tau != 0.0:
                        y -= c * (sc * at[bj + ll])
                        at[bi + ll] = y
                    if ll > j + 1:
                        sq += y * y
                if r == 0:  # row j+1: its tail's sum of squares, for the next reflector
                    work[o_sq + p] = sq
            n_sq = n_seg
        cuda.syncthreads()
    # ---- Q = H_0 ... H_{k-1} [I; 0], formed in place backwards (dorg2r). Householder vector j
    # is copied to a shared buffer (double-buffered, one step ahead) so that row j can be
    # overwritten by column j of Q while the other rows still read the vector.
    vb = o_v + ((k - 1) % 2) * n
    bl = (k - 1) * ld
    scl = scs[k - 1]
    for ll in range(k + tid, n, n_thr):
        work[vb + ll] = at[bl + ll] * scl
    cuda.syncthreads()
    for j in range(k - 1, -1, -1):
        bj = j * ld
        vb = o_v + (j % 2) * n
        tau = taus[j]
        for ll in range(tid, n, n_thr):
            if ll < j:
                at[bj + ll] = 0.0
            elif ll == j:
                at[bj + ll] = 1.0 - tau
            else:
                at[bj + ll] = -tau * work[vb + ll]
        if j > 0:
            vn = o_v + ((j - 1) % 2) * n
            bp = bj - ld
            for ll in range(j + tid, n, n_thr):
                work[vn + ll] = at[bp + ll]
        nv = k - j - 1
        n_seg = 1
        if nv > 0 and tau != 0.0:
            n_seg = _segments(nv, n - j - 1, n_thr)
            for slot in range(tid, n_seg * nv, n_thr):
                bi = (j + 1 + slot % nv) * ld
                s = 0.0
                for ll in range(j + 1 + slot // nv, n, n_seg):
                    s += work[vb + ll] * at[bi + ll]
                work[o_part + slot] = s
        cuda.syncthreads()
        if nv > 0 and tau != 0.0:
            for slot in range(tid, n_seg * nv, n_thr):
                r = slot % nv
                p = slot // nv
                bi = (j + 1 + r) * ld
                s = 0.0
                for q in range(n_seg):
                    s += work[o_part + q * nv + r]
                c = tau * s
                if p == 0:
                    at[bi + j] = -c  # was 0: rows below j of the formed part start at j + 1
                for ll in range(j + 1 + p, n, n_seg):
                    at[bi + ll] -= c * work[vb + ll]
        cuda.syncthreads()


@cuda.jit
def householder_qr_rows_batched(at, ld, n, rdiag):
    """QR of a batch of row-frames, one thread block per frame (see :func:`householder_qr_rows`).

    Parameters
    ----------
    at : device array, shape (B, k * ld), float64
        Frame ``b`` in rows of stride ``ld``; on exit its ``Q`` (same layout).
    ld : int
        Row stride, ``>= n``.
    n : int
        Vector length (``k <= n``).
    rdiag : device array, shape (B, k), float64
        Output: ``diag(R)`` of every frame (LAPACK signs).

    Notes
    -----
    Launch with ``grid = B`` and dynamic shared memory of
    ``scratch_size(k, n, threads) * 8`` bytes.
    """
    b = cuda.blockIdx.x
    if b >= at.shape[0]:
        return
    k = rdiag.shape[1]
    work = cuda.shared.array(0, dtype=rdiag.dtype)
    householder_qr_rows(at[b], ld, k, n, work)
    for i in range(cuda.threadIdx.x, k, cuda.blockDim.x):
        rdiag[b, i] = work[2 * k + i]


def qr_rows_batched(at, threads=None):
    """QR of a batch of frames on the GPU (host wrapper of :func:`householder_qr_rows_batched`).

    Parameters
    ----------
    at : array_like, shape (B, k, n) or (k, n), float64
        Row ``i`` of frame ``b`` is column ``i`` of ``A_b`` (``1 <= k <= n``); not modified.
    threads : int, optional
        Threads per block (default 128; 8 in Numba's simulator, which runs a Python thread per
        CUDA thread).

    Returns
    -------
    qt : ndarray, same shape as ``at``
        Row ``i`` is column ``i`` of ``Q``.
    rdiag : ndarray, shape (B, k) or (k,)
        ``diag(R)`` with LAPACK's signs, as :func:`rnnlab.kernels.cpu.qr.householder_qr_rows`.
    """
    a = np.asarray(at, dtype=np.float64)
    single = a.ndim == 2
    if single:
        a = a[None]
    if a.ndim != 3 or not (1 <= a.shape[1] <= a.shape[2]):
        raise ValueError(f"at must have shape (B, k, n) or (k, n) with 1 <= k <= n, got "
                         f"{np.shape(at)}")
    n_mat, k, n = a.shape
    if threads is None:
        from numba import config

        threads = 8 if getattr(config, "ENABLE_CUDASIM", False) else 128
    ld = leading_dimension(n)
    padded = np.zeros((n_mat, k, ld))
    padded[:, :, :n] = a
    d_at = cuda.to_device(padded.reshape(n_mat, k * ld))
    d_r = cuda.device_array((n_mat, k), dtype=np.float64)
    householder_qr_rows_batched[n_mat, threads, 0, 8 * scratch_size(k, n, threads)](
        d_at, ld, n, d_r)
    qt = d_at.copy_to_host().reshape(n_mat, k, ld)[:, :, :n]
    r = d_r.copy_to_host()
    return (qt[0], r[0]) if single else (np.ascontiguousarray(qt), r)
