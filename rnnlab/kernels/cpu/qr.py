"""Blocked Householder QR with the Q factor formed, for the Lyapunov (Benettin) QR loop.

Every step of the Lyapunov-spectrum method computes ``A = J_t Q`` and re-orthonormalises it,
``Q, R = qr(A)``, accumulating ``log|R_ii|``. At the sizes that loop runs at (n ~ 100) LAPACK is
slow: reference ``dgeqrf`` and ``dorgqr`` (which OpenBLAS ships) run their unblocked level-2 code
up to 128 columns. This module is the same algorithm, blocked at every size, with the panels
factored by compiled code:

* **Transposed layout.** The kernels take ``at`` of shape ``(k, n)``, C-contiguous, whose row
  ``i`` is column ``i`` of ``A`` (``n x k``, ``n >= k``), and write ``qt`` whose row ``i`` is
  column ``i`` of ``Q``. Every vector operation of a Householder step then runs over contiguous
  memory, and the same buffer read column-major is ``A`` itself with leading dimension ``n``,
  so the matrix products run in BLAS on sub-blocks in place (no copies).
* **Compact WY** (Schreiber & Van Loan 1989, as LAPACK ``dgeqrf``/``dlarft``/``dlarfb``/
  ``dorgqr``): columns are factored in panels of ``nb`` (8 to 64); the product of a panel's
  reflectors is ``H = I - V T V^T`` (``V`` unit lower trapezoidal, ``T`` upper triangular), and
  the trailing columns are updated with three matrix products. ``Q`` is then accumulated
  backwards, block by block, skipping the blocks known to be zero.
* **Panels.** The unblocked factorisation of a panel is fused: the update of a column by
  reflector ``p`` and its dot product with reflector ``p + 1`` share one pass over memory, the
  norm of the next Householder vector is summed while it is updated, the scaling of each vector
  is deferred to one pass at the end of the panel (when it is within a factor 2**10 of 1, so
  that no product can overflow or underflow where LAPACK's would not), and the Gram matrix
  ``V^T V`` that ``T`` needs is built on the way.

Numerics are those of LAPACK ``dgeqrf`` + ``dorgqr`` (Householder stability: ``Q`` is orthonormal
to working precision whatever the conditioning or rank of ``A``, including exactly zero or
repeated columns); the reflector convention is ``dlarfg``'s (``beta = -sign(alpha) ||x||``, so
the signs of ``diag(R)`` match NumPy/LAPACK), including its treatment of a column whose part
below the diagonal is exactly zero (no reflection, ``R_ii = A_ii``, so an exactly zero column
gives ``R_ii = 0`` exactly and ``log|R_ii| = -inf`` downstream). Norms are guarded against
overflow and underflow. The loops are compiled with ``fastmath={'reassoc', 'contract'}`` only
(so reductions vectorise), never ``nnan``/``ninf``: inf, nan and signed zeros keep their IEEE
meaning. Results are bitwise reproducible run to run (fixed reduction orders; the BLAS products
are deterministic for a fixed BLAS thread count).

Speed (one BLAS thread, 2-core AMD EPYC with AVX-512, float64, n = k = 128): about 150 us for the
factorisation with ``Q`` formed, against about 500 us for ``numpy.linalg.qr``.

The matrix products call the BLAS ``?gemm`` that NumPy's ``np.dot`` uses inside Numba (SciPy's
OpenBLAS, through Numba's own ``numba_xxgemm`` helper, so the compiled kernels stay cacheable).
Limit BLAS to one thread around many small calls (see :mod:`rnnlab._blas`); at n = 128 a second
thread gains nothing.

Public functions (all ``@njit``, callable from Python and from other compiled code):

* :func:`qr_workspace_size`, :func:`qr_workspace`: size / allocation of the work array.
* :func:`householder_qr_rows_ws`: the kernel, with a caller-owned work array (no allocation).
* :func:`householder_qr_rows`: the same, allocating its work array.
* :func:`qr_block_size`: the panel width used for a shape.

float64 and float32 arrays are both accepted (float32 runs ``sgemm`` and float32 loops).
"""

import math

import numpy as np
from numba import njit, types
from numba.extending import intrinsic, overload
from numba.np.linalg import ensure_blas
from numba.np.numpy_support import as_dtype

ensure_blas()

_FM = {"reassoc", "contract"}

# A Householder tail is left unscaled (v = [1, sc * tail], scaled once at the end of the panel)
# only while |sc| is in this range, i.e. while the tail is within a factor 2**10 of the unit-size
# vector LAPACK would store; the fused products then stay as safe from overflow and underflow
# as LAPACK's own.
_DEFER_LO = 2.0 ** -10
_DEFER_HI = 2.0 ** 10

# ---------------------------------------------------------------------------------------------
# BLAS gemm on raw (column-major) sub-blocks, through Numba's helper library
# ---------------------------------------------------------------------------------------------


def _ext_gemm(nbty):
    ptr = types.CPointer(nbty)
    sig = types.intc(
        types.char,  # kind
        types.char,  # transa
        types.char,  # transb
        types.intp,  # m
        types.intp,  # n
        types.intp,  # k
        ptr,  # alpha
        ptr,  # a
        types.intp,  # lda
        ptr,  # b
        types.intp,  # ldb
        ptr,  # beta
        ptr,  # c
        types.intp,  # ldc
    )
    return types.ExternalFunction("numba_xxgemm", sig)


_xgemm = {types.float64: (_ext_gemm(types.float64), ord("d")),
          types.float32: (_ext_gemm(types.float32), ord("s"))}

_N = ord("N")


def _gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """``c = alpha op(a) op(b) + beta c`` (column-major BLAS ``?gemm``).

    ``alpha``, ``a``, ``b``, ``beta`` and ``c`` are pointers to the scalars and to the first
    element of each operand (:func:`_at`).
    """


@overload(_gemm)
def _gemm_ol(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    fn, kind = _xgemm[a.dtype]

    def impl(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        fn(kind, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)

    return impl


@intrinsic
def _at(typingctx, a, i):
    """Pointer to element ``i`` (flat) of the C-contiguous array ``a``. Unlike a slice, it
    touches no reference count (the caller keeps ``a`` alive)."""
    if not isinstance(a, types.Array) or a.layout != "C" or not isinstance(i, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        idx = context.cast(builder, args[1], signature.args[1], types.intp)
        return builder.gep(ary.data, [idx])

    return types.CPointer(a.dtype)(a, i), codegen


def _limits(a):
    """``(ssq_lo, ssq_hi, safmin)`` for the dtype of ``a``: the range in which a plain sum of
    squares is trusted, and LAPACK's ``safmin = tiny / eps``."""


@overload(_limits)
def _limits_ol(a):
    fi = np.finfo(as_dtype(a.dtype))
    tiny, big, eps = float(fi.tiny), float(fi.max), float(fi.eps) / 2.0
    lo = tiny / eps  # below this, squares may have underflowed
    hi = big * eps  # above this, the sum may have overflowed
    safmin = tiny / eps

    def impl(a):
        return lo, hi, safmin

    return impl


def _u(i):
    """``i`` as an unsigned index (no wrap-around of negative indices)."""


@overload(_u)
def _u_ol(i):
    def impl(i):
        return np.uint64(i)

    return impl


def _cast(a, v):
    """``v`` converted to the dtype of array ``a``."""


@overload(_cast)
def _cast_ol(a, v):
    ty = a.dtype

    def impl(a, v):
        return ty(v)

    return impl


# ---------------------------------------------------------------------------------------------
# Panel factorisation (unblocked, fused) and the triangular factor T
# ---------------------------------------------------------------------------------------------


# The helpers below index ``at`` in place rather than take row slices (every slice costs a
# reference-count increment and decrement, out of line: at k = 8 a fifth of the time), and their
# vector loops count with unsigned integers (``_u``): Numba wraps negative indices, and a signed
# loop index that does not start at 0 keeps LLVM from vectorising the loop.


@njit(cache=True, fastmath=_FM)
def _safe_norm(a, r, c0):
    """2-norm of ``a[r, c0:]`` without overflow or underflow (scaled by the largest
    magnitude)."""
    zero = _cast(a, 0.0)
    amax = zero
    for ll in range(_u(c0), _u(a.shape[1])):
        v = abs(a[r, ll])
        if v > amax or v != v:
            amax = v
    if amax == 0.0 or not (amax < math.inf):
        return amax
    inv = _cast(a, 1.0 / amax)
    ssq = zero
    for ll in range(_u(c0), _u(a.shape[1])):
        t = a[r, ll] * inv
        ssq += t * t
    return amax * math.sqrt(ssq)


@njit(cache=True, fastmath=_FM)
def _house(at, r, c, ssq, rdiag, w, ot, osc):
    """Householder reflector of row ``r`` of ``at`` at diagonal position ``c`` (``dlarfg``).

    ``ssq`` is the plain sum of squares of the tail ``at[r, c+1:]``. Sets ``rdiag[r] = beta``,
    ``tau[r] = tau`` and ``sc[r] = 1 / (alpha - beta)`` (the factor that turns the tail into the
    Householder vector; the tail itself is scaled at the end of the panel, or here, with
    ``sc[r] = 1``, when that factor is far from 1), where ``tau`` and ``sc`` are the vectors at
    offsets ``ot`` and ``osc`` of ``w``, and ``at[r, c] = 1``.
    """
    lo, hi, safmin = _limits(at)
    n = at.shape[1]
    alpha = at[r, c]
    fast = ssq > lo and ssq < hi
    if fast:
        xnorm = math.sqrt(ssq)
    else:
        xnorm = _safe_norm(at, r, c + 1)
    if xnorm == 0.0:
        tau = 0.0
        beta = alpha
        sc = 0.0
    else:
        a2 = alpha * alpha
        if fast and (alpha == 0.0 or (a2 > lo and a2 < hi)):
            beta = -math.copysign(math.sqrt(a2 + ssq), alpha)
        else:
            beta = -math.copysign(math.hypot(alpha, xnorm), alpha)
        knt = 0
        if abs(beta) < safmin:
            # xnorm and beta may be inaccurate: rescale x (as dlarfg does)
            rsafmn = _cast(at, 1.0 / safmin)
            while True:
                knt += 1
                for ll in range(_u(c + 1), _u(n)):
                    at[r, ll] *= rsafmn
                beta *= rsafmn
                alpha *= rsafmn
                if abs(beta) >= safmin or knt >= 20:
                    break
            xnorm = _safe_norm(at, r, c + 1)
            beta = -math.copysign(math.hypot(alpha, xnorm), alpha)
        tau = (beta - alpha) / beta
        sc = 1.0 / (alpha - beta)
        if not (abs(sc) >= _DEFER_LO and abs(sc) <= _DEFER_HI):
            # The unscaled tail is far from unit size: products of two tails could overflow or
            # underflow, so scale now, as dlarfg does.
            scx = _cast(at, sc)
            for ll in range(_u(c + 1), _u(n)):
                at[r, ll] *= scx
            sc = 1.0
        for _ in range(knt):
            beta *= safmin
    at[r, c] = 1.0
    rdiag[r] = beta
    w[ot + r] = tau
    w[osc + r] = sc


@njit(cache=True, fastmath=_FM)
def _dots(at, r0, cnt, r, c, out, o):
    """``out[o + q] = at[r0 + q, c:] . at[r, c:]`` for ``q < cnt`` (four rows per pass)."""
    n = at.shape[1]
    zero = _cast(at, 0.0)
    q = 0
    while q + 4 <= cnt:
        s0 = zero
        s1 = zero
        s2 = zero
        s3 = zero
        for ll in range(_u(c), _u(n)):
            xv = at[r, ll]
            s0 += at[r0 + q, ll] * xv
            s1 += at[r0 + q + 1, ll] * xv
            s2 += at[r0 + q + 2, ll] * xv
            s3 += at[r0 + q + 3, ll] * xv
        out[o + q] = s0
        out[o + q + 1] = s1
        out[o + q + 2] = s2
        out[o + q + 3] = s3
        q += 4
    while q < cnt:
        s0 = zero
        for ll in range(_u(c), _u(n)):
            s0 += at[r0 + q, ll] * at[r, ll]
        out[o + q] = s0
        q += 1


@njit(cache=True, fastmath=_FM)
def _panel(at, j0, nbb, rdiag, w, ot, osc, og, os):
    """Factor the panel of rows ``j0 .. j0+nbb-1`` of ``at`` (columns of A) from position ``j0``.

    The vectors ``tau``, ``sc``, ``g`` and ``s`` are those at offsets ``ot``, ``osc``, ``og`` and
    ``os`` of ``w``. On exit row ``j0 + p`` holds the Householder vector ``v_p`` from position
    ``j0`` on (zeros before ``j0 + p``, 1 there, the scaled tail after), ``rdiag``/``tau`` hold
    ``beta``/``tau`` and ``g[q + p*nbb] = v_q . v_p`` for ``q < p`` (column-major Gram matrix,
    upper part).

    Tails are kept unscaled (``v_p = [1, sc[p] * tail]``) until the end of the panel.
    ``s[j0 + i]`` carries the dot product of row ``j0 + i`` with the next reflector between
    iterations.
    """
    zero = _cast(at, 0.0)
    n = at.shape[1]
    # first reflector
    ssq = zero
    for ll in range(_u(j0 + 1), _u(n)):
        ssq += at[j0, ll] * at[j0, ll]
    _house(at, j0, j0, ssq, rdiag, w, ot, osc)
    if nbb > 1:
        # s[i] = v_0 . row i = row_i[j0] + sc_0 * (tail_0 . row_i[j0+1:])
        _dots(at, j0 + 1, nbb - 1, j0, j0 + 1, w, os + j0 + 1)
        sc0 = w[osc + j0]
        for i in range(j0 + 1, j0 + nbb):
            w[os + i] = at[i, j0] + sc0 * w[os + i]
    for p in range(nbb - 1):
        j = j0 + p
        r = j + 1
        tau = w[ot + j]
        scp = w[osc + j]
        # at[j, j + 2:] is the unscaled tail of v_p beyond position j + 1
        vp1 = scp * at[j, j + 1]  # v_p at position j + 1
        # row p+1: apply reflector p; sum the squares of its new tail on the way
        c = tau * w[os + r]
        cs = _cast(at, c * scp)
        at[r, j] -= c
        at[r, j + 1] -= c * vp1
        ssq = zero
        for ll in range(_u(j + 2), _u(n)):
            t = at[r, ll] - cs * at[j, ll]
            at[r, ll] = t
            ssq += t * t
        _house(at, r, j + 1, ssq, rdiag, w, ot, osc)
        # at[r, j + 2:] is now the unscaled tail of v_{p+1}
        scq = w[osc + r]
        # rows p+2.. : apply reflector p and take the dot product with reflector p+1
        ra = j0 + p + 2
        while ra + 2 <= j0 + nbb:
            rb = ra + 1
            ca = tau * w[os + ra]
            cb = tau * w[os + rb]
            at[ra, j] -= ca
            at[rb, j] -= cb
            ha = at[ra, j + 1] - ca * vp1
            hb = at[rb, j + 1] - cb * vp1
            at[ra, j + 1] = ha
            at[rb, j + 1] = hb
            csa = _cast(at, ca * scp)
            csb = _cast(at, cb * scp)
            da = zero
            db = zero
            for ll in range(_u(j + 2), _u(n)):
                u = at[j, ll]
                vq = at[r, ll]
                t0 = at[ra, ll] - csa * u
                t1 = at[rb, ll] - csb * u
                at[ra, ll] = t0
                at[rb, ll] = t1
                da += t0 * vq
                db += t1 * vq
            w[os + ra] = ha + scq * da
            w[os + rb] = hb + scq * db
            ra += 2
        if ra < j0 + nbb:
            ca = tau * w[os + ra]
            at[ra, j] -= ca
            ha = at[ra, j + 1] - ca * vp1
            at[ra, j + 1] = ha
            csa = _cast(at, ca * scp)
            da = zero
            for ll in range(_u(j + 2), _u(n)):
                t0 = at[ra, ll] - csa * at[j, ll]
                at[ra, ll] = t0
                da += t0 * at[r, ll]
            w[os + ra] = ha + scq * da
        # Gram column p+1: v_q . v_{p+1} = sc_q (row_q[j+1] + sc_{p+1} (tail_q . tail_{p+1}))
        go = (p + 1) * nbb
        _dots(at, j0, p + 1, r, j + 2, w, og + go)
        for q in range(p + 1):
            w[og + go + q] = w[osc + j0 + q] * (at[j0 + q, j + 1] + scq * w[og + go + q])
    # scale the tails, clear the R part above each diagonal
    for p in range(nbb):
        j = j0 + p
        for q in range(j0, j):
            at[j, q] = 0.0
        sc = _cast(at, w[osc + j])
        for ll in range(_u(j + 1), _u(n)):
            at[j, ll] *= sc


@njit(cache=True, fastmath=_FM)
def _vt_copy(at, j0, nbb, vt, o):
    """``vt[o + l*nbb + p] = at[j0 + p, j0 + l]``: ``V^T`` column-major (``nbb x m``, ld
    ``nbb``)."""
    n = at.shape[1]
    for p in range(nbb):
        for ll in range(n - j0):
            vt[o + ll * nbb + p] = at[j0 + p, j0 + ll]


@njit(cache=True, fastmath=_FM)
def _larft(w, ot, og, otc, ottc, nbb):
    """Triangular factor ``T`` of ``H_0 ... H_{nbb-1} = I - V T V^T`` (``dlarft``, forward,
    columnwise) from the Gram matrix (``w[og:]``) and the ``tau`` (``w[ot:ot + nbb]``). Writes
    ``T`` (``w[otc:]``) and ``T^T`` (``w[ottc:]``), both column-major ``nbb x nbb``."""
    for p in range(nbb):
        tau = w[ot + p]
        col = otc + p * nbb
        for i in range(nbb):
            w[col + i] = 0.0
        for q in range(p):
            f = -tau * w[og + p * nbb + q]
            for i in range(q + 1):
                w[col + i] += w[otc + q * nbb + i] * f
        w[col + p] = tau
    for p in range(nbb):
        for i in range(nbb):
            w[ottc + p * nbb + i] = w[otc + i * nbb + p]


@njit(cache=True)
def qr_block_size(k, n):
    """Panel width used for ``k`` columns of length ``n``.

    Parameters
    ----------
    k, n : int
        Number of columns (``k <= n``) and their length.

    Returns
    -------
    int
        ``nb``: ``k`` itself when ``k <= 8`` (a single panel), otherwise 8, 16, 32 or 64 growing
        with ``k`` (tuned with one BLAS thread on AVX-512: narrow panels keep the level-2 work
        small, wide ones make the trailing products larger and fewer).
    """
    if k <= 8:
        return max(k, 1)
    if k < 224:
        return 8
    if k < 448:
        return 16
    if k < 896:
        return 32
    return 64


@njit(cache=True)
def _workspace_size_nb(k, n, nb):
    nblk = (k + nb - 1) // nb
    return 4 + 3 * k + nb * nb + 2 * nblk * nb * nb + k * n + 2 * nb * k


@njit(cache=True)
def qr_workspace_size(k, n):
    """Length of the work array :func:`householder_qr_rows_ws` needs.

    Parameters
    ----------
    k, n : int
        Number of columns (``k <= n``) and their length.

    Returns
    -------
    int
        Number of elements (of the data's dtype).
    """
    return _workspace_size_nb(k, n, qr_block_size(k, n))


def qr_workspace(k, n, dtype=np.float64):
    """Allocate the work array for :func:`householder_qr_rows_ws`.

    Parameters
    ----------
    k, n : int
        Number of columns (``k <= n``) and their length.
    dtype : numpy dtype, optional
        ``float64`` (default) or ``float32``: the dtype of the data it will be used with.

    Returns
    -------
    ndarray, shape (qr_workspace_size(k, n),)
        Uninitialised; reusable for any number of calls with the same ``(k, n)`` and dtype (one
        call at a time).
    """
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float64), np.dtype(np.float32)):
        raise ValueError("qr_workspace: dtype must be float64 or float32")
    if not (1 <= k <= n):
        raise ValueError("qr_workspace: need 1 <= k <= n")
    return np.empty(qr_workspace_size(k, n), dtype=dtype)


@njit(cache=True)
def householder_qr_rows_ws(at, qt, rdiag, work):
    """QR factorisation ``A = Q R`` in the transposed layout, with a caller-owned work array.

    Parameters
    ----------
    at : ndarray, shape (k, n), C-contiguous, float64 or float32
        Row ``i`` is column ``i`` of ``A`` (``n x k``, ``1 <= k <= n``). Destroyed (used as
        workspace: on exit it holds the Householder vectors). A non-contiguous array is a
        typing error.
    qt : ndarray, shape (k, n), C-contiguous, same dtype
        Output: row ``i`` is column ``i`` of ``Q`` (orthonormal columns). Must not overlap
        ``at``.
    rdiag : ndarray, shape (k,), same dtype
        Output: the diagonal of ``R``, signed as LAPACK/NumPy sign it (``R_ii = -sign(a) ||x||``
        for the Householder step of column ``i``; a column with nothing below the diagonal is
        not reflected, so ``R_ii`` is the diagonal element itself, exactly 0 for a zero column).
    work : ndarray, shape (>= qr_workspace_size(k, n),), same dtype
        Scratch space, contents irrelevant (see :func:`qr_workspace`); one call at a time.

    Notes
    -----
    ``R`` above the diagonal is not returned (the Lyapunov loop needs only its diagonal).
    Deterministic: the same inputs give bitwise the same outputs (for a fixed BLAS thread
    count). The trailing products run in BLAS; limit it to one thread around small problems.
    """
    k, n = at.shape
    if k < 1 or n < k:
        raise ValueError("householder_qr_rows_ws: need at.shape = (k, n) with 1 <= k <= n")
    if qt.shape[0] != k or qt.shape[1] != n or rdiag.shape[0] != k:
        raise ValueError("householder_qr_rows_ws: qt must be (k, n) and rdiag (k,)")
    _qr_core(at, qt, rdiag, work, qr_block_size(k, n))


@njit(cache=True)
def _qr_core(at, qt, rdiag, work, nb):
    """The factorisation with panel width ``nb`` (checks done by the caller)."""
    k, n = at.shape
    nblk = (k + nb - 1) // nb
    if work.shape[0] < _workspace_size_nb(k, n, nb):
        raise ValueError("householder_qr_rows_ws: work array too small")
    # the work array's parts, by offset: slices would cost a reference-count pair each
    work[0] = 1.0
    work[1] = 0.0
    work[2] = -1.0
    one, zero, mone = _at(work, 0), _at(work, 1), _at(work, 2)
    ot = 4  # tau, k
    osc = ot + k  # sc, k
    os = osc + k  # s, k
    og = os + k  # the panel's Gram matrix, nb * nb
    otc = og + nb * nb  # T of every panel, nblk * nb * nb
    ottc = otc + nblk * nb * nb  # T^T of every panel, nblk * nb * nb
    ovt = ottc + nblk * nb * nb  # V^T of every panel, k * n
    oy1 = ovt + k * n  # nb * k
    oy2 = oy1 + nb * k  # nb * k
    y1, y2 = _at(work, oy1), _at(work, oy2)

    # ---- R phase: panels, right-looking trailing updates C -= V T^T (V^T C)
    for b in range(nblk):
        j0 = b * nb
        nbb = min(nb, k - j0)
        j1 = j0 + nbb
        m = n - j0
        _panel(at, j0, nbb, rdiag, work, ot, osc, og, os)
        _larft(work, ot + j0, og, otc + b * nb * nb, ottc + b * nb * nb, nbb)
        if nblk > 1:  # V^T serves the trailing update and the blocked Q phase only
            _vt_copy(at, j0, nbb, work, ovt + j0 * n)
        nt = k - j1
        if nt > 0:
            vt = _at(work, ovt + j0 * n)
            ttc = _at(work, ottc + b * nb * nb)
            v = _at(at, j0 * n + j0)  # V: m x nbb, ld n
            c = _at(at, j1 * n + j0)  # C = A[j0:, j1:]: m x nt, ld n
            _gemm(_N, _N, nbb, nt, m, one, vt, nbb, c, n, zero, y1, nbb)
            _gemm(_N, _N, nbb, nt, nbb, one, ttc, nbb, y1, nbb, zero, y2, nbb)
            _gemm(_N, _N, m, nt, nbb, mone, v, n, y2, nbb, one, c, n)

    # ---- Q phase: Q = H_0 ... H_{k-1} [I; 0], accumulated backwards
    qt[:, :] = 0.0
    for i in range(k):
        qt[i, i] = 1.0
    for b in range(nblk - 1, -1, -1):
        j0 = b * nb
        nbb = min(nb, k - j0)
        j1 = j0 + nbb
        m = n - j0
        nc = k - j0
        # Y = V^T Q[j0:, j0:k]; the panel's own columns are still e_i: Y[:, :nbb] = V1^T,
        # and rows j0..j1-1 of the later columns are still zero
        for c in range(nbb):
            for p in range(nbb):
                work[oy1 + c * nbb + p] = at[j0 + p, j0 + c]
        if nc > nbb:
            if m > nbb:
                _gemm(_N, _N, nbb, nc - nbb, m - nbb, one, _at(work, ovt + j0 * n + nbb * nbb),
                      nbb, _at(qt, j1 * n + j1), n, zero, _at(work, oy1 + nbb * nbb), nbb)
            else:
                for i in range(nbb * nbb, nbb * nc):
                    work[oy1 + i] = 0.0
        _gemm(_N, _N, nbb, nc, nbb, one, _at(work, otc + b * nb * nb), nbb, y1, nbb, zero, y2,
              nbb)
        _gemm(_N, _N, m, nc, nbb, mone, _at(at, j0 * n + j0), n, y2, nbb, one,
              _at(qt, j0 * n + j0), n)


@njit(cache=True)
def householder_qr_rows(at, qt, rdiag):
    """:func:`householder_qr_rows_ws` allocating its own work array.

    Parameters
    ----------
    at : ndarray, shape (k, n), C-contiguous, float64 or float32
        Row ``i`` is column ``i`` of ``A`` (``1 <= k <= n``); destroyed.
    qt : ndarray, shape (k, n), C-contiguous, same dtype
        Output: row ``i`` is column ``i`` of ``Q``.
    rdiag : ndarray, shape (k,), same dtype
        Output: the diagonal of ``R`` (LAPACK signs).
    """
    k, n = at.shape
    if k < 1 or n < k:
        raise ValueError("householder_qr_rows: need at.shape = (k, n) with 1 <= k <= n")
    work = np.empty(qr_workspace_size(k, n), dtype=at.dtype)
    householder_qr_rows_ws(at, qt, rdiag, work)
