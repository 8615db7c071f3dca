"""Tests of the blocked Householder QR kernel (rnnlab.kernels.cpu.qr) against numpy.linalg.qr."""

import numpy as np
import pytest
from threadpoolctl import ThreadpoolController

from rnnlab.kernels.cpu.qr import (
    _qr_core,
    _workspace_size_nb,
    householder_qr_rows,
    householder_qr_rows_ws,
    qr_block_size,
    qr_workspace,
    qr_workspace_size,
)

# Shapes (n, k): k = 1, a single panel (k <= 8), several panels of 8 with a ragged last one,
# panel width 16 (k >= 224), n = k and k << n. Widths 32 and 64 (k >= 448, 896) are exercised
# on smaller matrices through _qr_core (test_panel_widths).
SHAPES = [
    (1, 1), (2, 1), (3, 3), (7, 4), (8, 8), (9, 9), (16, 5), (17, 17), (40, 23), (64, 64),
    (100, 37), (128, 8), (128, 128), (130, 97), (260, 250),
]


@pytest.fixture(autouse=True, scope="module")
def one_blas_thread():
    # NumPy's and SciPy's OpenBLAS (the kernel calls the latter) would otherwise each spin
    # worker threads that fight over a small machine's cores
    with ThreadpoolController().limit(limits=1, user_api="blas"):
        yield


def qr_rows(a, dtype=np.float64, work=None):
    """Run the kernel on A (n x k); return Q (n x k) and diag(R)."""
    n, k = a.shape
    at = np.array(a.T, dtype=dtype, order="C")  # always a copy: the kernel destroys it
    qt = np.empty((k, n), dtype)
    rd = np.empty(k, dtype)
    if work is None:
        work = qr_workspace(k, n, dtype)
    householder_qr_rows_ws(at, qt, rd, work)
    return qt.T, rd


def well_conditioned(rng, n, k, cond=10.0):
    """n x k matrix with singular values spread geometrically over [1/cond, 1]."""
    u = np.linalg.qr(rng.standard_normal((n, k)))[0]
    v = np.linalg.qr(rng.standard_normal((k, k)))[0]
    return (u * np.geomspace(1.0, 1.0 / cond, k)) @ v.T


def check_factorisation(a, q, rd, tol=1e-13):
    """Q orthonormal, Q^T A upper triangular with diagonal rd, and A = Q triu(Q^T A)."""
    k = a.shape[1]
    scale = max(np.abs(a).max(), np.finfo(float).tiny)
    assert np.abs(q.T @ q - np.eye(k)).max() <= tol
    r_full = q.T @ a
    assert np.abs(np.tril(r_full, -1)).max(initial=0.0) <= tol * scale
    assert np.abs(np.diag(r_full) - rd).max() <= tol * scale
    assert np.abs(q @ np.triu(r_full) - a).max() <= tol * scale


@pytest.mark.parametrize("n,k", SHAPES)
def test_matches_numpy(n, k):
    rng = np.random.default_rng(n * 1000 + k)
    a = well_conditioned(rng, n, k)
    q, rd = qr_rows(a)
    q_np, r_np = np.linalg.qr(a)
    d = np.diag(r_np)
    # |R_ii| to 1e-12 relative, and the same (LAPACK) sign convention
    assert np.abs(np.abs(rd) - np.abs(d)).max() <= 1e-12 * np.abs(d).min()
    assert np.array_equal(np.sign(rd), np.sign(d))
    # Q^T Q = I, and Q equals numpy's up to the signs of its columns
    assert np.abs(q.T @ q - np.eye(k)).max() <= 1e-13
    s = np.sign(rd) * np.sign(d)
    assert np.abs(q * s - q_np).max() <= 1e-12
    check_factorisation(a, q, rd)


@pytest.mark.parametrize("nb", [1, 3, 8, 16, 32, 64, 200])
def test_panel_widths(nb):
    # every panel width on one shape, including ragged last panels and nb > k
    rng = np.random.default_rng(nb)
    n, k = 150, 140
    a = well_conditioned(rng, n, k)
    at = np.ascontiguousarray(a.T).copy()
    qt = np.empty((k, n))
    rd = np.empty(k)
    nb = min(nb, k)
    _qr_core(at, qt, rd, np.empty(_workspace_size_nb(k, n, nb)), nb)
    q_np, r_np = np.linalg.qr(a)
    d = np.diag(r_np)
    assert np.abs(rd - d).max() <= 1e-12 * np.abs(d).min()
    assert np.abs(qt.T - q_np).max() <= 1e-12
    check_factorisation(a, qt.T, rd)


@pytest.mark.parametrize("n,k", [(50, 50), (128, 128), (200, 64)])
def test_gaussian_matrices(n, k):
    # plain Gaussian matrices (square ones are far less well conditioned: cond ~ 1e3..1e6)
    rng = np.random.default_rng(7 + n + k)
    a = rng.standard_normal((n, k))
    q, rd = qr_rows(a)
    d = np.diag(np.linalg.qr(a)[1])
    assert np.abs(rd - d).max() <= 1e-12 * np.abs(d).max()
    check_factorisation(a, q, rd)


@pytest.mark.parametrize("n,k", [(9, 9), (64, 40), (128, 128), (260, 250)])
def test_float32(n, k):
    rng = np.random.default_rng(11 + n)
    a = well_conditioned(rng, n, k).astype(np.float32)
    q, rd = qr_rows(a, np.float32)
    assert q.dtype == np.float32 and rd.dtype == np.float32
    a64 = a.astype(np.float64)
    q_np, r_np = np.linalg.qr(a64)
    d = np.diag(r_np)
    assert np.abs(np.abs(rd) - np.abs(d)).max() <= 1e-5 * np.abs(d).min()
    q64 = q.astype(np.float64)
    assert np.abs(q64.T @ q64 - np.eye(k)).max() <= 1e-5
    s = np.sign(rd) * np.sign(d)
    assert np.abs(q64 * s - q_np).max() <= 1e-5


def test_zero_columns_give_exact_zeros():
    rng = np.random.default_rng(1)
    for n, k, zero_cols in [(12, 8, [0, 3, 7]), (128, 128, [0, 5, 8, 9, 64, 127]), (40, 40, [39])]:
        a = well_conditioned(rng, n, k)
        a[:, zero_cols] = 0.0
        q, rd = qr_rows(a)
        d = np.diag(np.linalg.qr(a)[1])
        # exactly zero, as LAPACK gives: log|R_ii| = -inf downstream
        assert np.array_equal(np.flatnonzero(rd == 0.0), zero_cols)
        assert np.array_equal(np.flatnonzero(d == 0.0), zero_cols)
        with np.errstate(divide="ignore"):
            assert np.all(np.isneginf(np.log(np.abs(rd[zero_cols]))))
        nz = np.flatnonzero(d)
        assert np.abs(np.abs(rd[nz]) - np.abs(d[nz])).max() <= 1e-12 * np.abs(d[nz]).max()
        check_factorisation(a, q, rd)


def test_dependent_columns():
    # Duplicated / linearly dependent columns leave rounding noise (~1e-16 ||A||, not exact
    # zeros, like LAPACK) on the diagonal, and Q stays orthonormal. Past the first dependent
    # column the factorisation is no longer unique, so only the columns before it are compared.
    rng = np.random.default_rng(2)
    n, k = 30, 12
    a = rng.standard_normal((n, k))
    a[:, 4] = a[:, 1]
    a[:, 9] = 2.0 * a[:, 0] - 0.5 * a[:, 3]
    q, rd = qr_rows(a)
    d = np.diag(np.linalg.qr(a)[1])
    scale = np.abs(a).max()
    for j in (4, 9):
        assert abs(rd[j]) <= 1e-14 * scale and abs(d[j]) <= 1e-14 * scale
    assert np.abs(rd[:4] - d[:4]).max() <= 1e-12 * np.abs(d[:4]).max()
    check_factorisation(a, q, rd)


def test_rank_deficient_large():
    rng = np.random.default_rng(3)
    n, k, rank = 200, 150, 100
    a = rng.standard_normal((n, k))
    a[:, rank:] = a[:, :rank] @ rng.standard_normal((rank, k - rank))
    q, rd = qr_rows(a)
    assert np.abs(rd[rank:]).max() <= 1e-13 * np.abs(a).max()
    check_factorisation(a, q, rd)
    # rank 1
    a = np.outer(rng.standard_normal(n), rng.standard_normal(k))
    q, rd = qr_rows(a)
    assert np.abs(rd[1:]).max() <= 1e-13 * np.abs(a).max()
    check_factorisation(a, q, rd)


def test_all_zero_and_identity():
    for n, k in [(5, 5), (20, 13), (130, 100)]:
        q, rd = qr_rows(np.zeros((n, k)))
        assert np.array_equal(rd, np.zeros(k))
        assert np.array_equal(q, np.eye(n, k))  # no reflection at all
        q, rd = qr_rows(-np.eye(n, k))
        assert np.array_equal(rd, -np.ones(k))
        assert np.array_equal(q, np.eye(n, k))


@pytest.mark.parametrize("cond", [1e12, 1e15])
def test_ill_conditioned(cond):
    rng = np.random.default_rng(4)
    for n, k in [(100, 60), (128, 128)]:
        a = well_conditioned(rng, n, k, cond=cond)
        q, rd = qr_rows(a)
        check_factorisation(a, q, rd)


@pytest.mark.parametrize(
    "kind", ["column scales 1e-200..1e200", "subnormal entries", "entries 1e300", "tiny 1e-300"]
)
def test_extreme_scaling(kind):
    # the norms are guarded against overflow and underflow, as in LAPACK's dlarfg/dnrm2
    rng = np.random.default_rng(5)
    n, k = 40, 24
    a = well_conditioned(rng, n, k)
    if kind.startswith("column"):
        a = a * np.logspace(-200, 200, k)
    elif kind.startswith("subnormal"):
        a = a * 1e-310
    elif kind.startswith("entries"):
        a = a * 1e300
    else:
        a = a * 1e-300
    q, rd = qr_rows(a)
    d = np.diag(np.linalg.qr(a)[1])
    assert np.all(np.isfinite(q)) and np.all(np.isfinite(rd))
    assert np.abs(q.T @ q - np.eye(k)).max() <= 1e-13
    tol = 1e-6 if kind.startswith("subnormal") else 1e-12  # subnormals carry fewer digits
    assert np.all(np.abs(np.abs(rd) - np.abs(d)) <= tol * np.abs(d))


def test_deterministic_and_workspace_reuse():
    rng = np.random.default_rng(6)
    for n, k in [(128, 128), (77, 30)]:
        a = rng.standard_normal((n, k))
        work = qr_workspace(k, n)
        q1, r1 = qr_rows(a, work=work)
        work[:] = np.nan  # stale or garbage workspace contents must not matter
        q2, r2 = qr_rows(a, work=work)
        q3, r3 = qr_rows(a)
        assert np.array_equal(q1, q2) and np.array_equal(r1, r2)
        assert np.array_equal(q1, q3) and np.array_equal(r1, r3)
        # the allocating variant gives the same bits
        at = np.ascontiguousarray(a.T).copy()
        qt = np.empty((k, n))
        rd = np.empty(k)
        householder_qr_rows(at, qt, rd)
        assert np.array_equal(qt.T, q1) and np.array_equal(rd, r1)


def test_lyapunov_loop_matches_numpy():
    # the use the kernel is made for: Q <- qr(J_t Q), summing log|R_ii|
    rng = np.random.default_rng(8)
    n, k, steps = 48, 10, 200
    w = rng.standard_normal((n, n)) * 1.5 / np.sqrt(n)
    q_np = np.linalg.qr(rng.standard_normal((n, k)))[0]
    qt = np.ascontiguousarray(q_np.T)
    at = np.empty((k, n))
    rd = np.empty(k)
    work = qr_workspace(k, n)
    s_np = np.zeros(k)
    s_rows = np.zeros(k)
    for _ in range(steps):
        jac = np.tanh(rng.standard_normal(n)) ** 2 * -1.0 + 1.0
        jac = jac[:, None] * w
        q_np, r_np = np.linalg.qr(jac @ q_np)
        s_np += np.log(np.abs(np.diag(r_np)))
        np.dot(qt, jac.T, out=at)  # (J Q)^T
        householder_qr_rows_ws(at, qt, rd, work)
        s_rows += np.log(np.abs(rd))
    assert np.allclose(s_rows, s_np, rtol=1e-10, atol=1e-10)
    s = np.sign(np.sum(qt.T * q_np, axis=0))
    assert np.abs(qt.T * s - q_np).max() <= 1e-8


def test_argument_errors():
    a = np.zeros((5, 3))  # at of shape (k, n) = (5, 3): k > n
    with pytest.raises(ValueError):
        householder_qr_rows_ws(a, np.empty((5, 3)), np.empty(5), np.empty(1000))
    at = np.ones((3, 5))
    with pytest.raises(ValueError):
        householder_qr_rows_ws(at, np.empty((3, 4)), np.empty(3), qr_workspace(3, 5))
    with pytest.raises(ValueError):
        householder_qr_rows_ws(at, np.empty((3, 5)), np.empty(2), qr_workspace(3, 5))
    with pytest.raises(ValueError):
        householder_qr_rows_ws(at, np.empty((3, 5)), np.empty(3), np.empty(10))
    with pytest.raises(ValueError):
        qr_workspace(3, 5, np.int64)
    with pytest.raises(ValueError):
        qr_workspace(6, 5)


def test_block_size_and_workspace_size():
    for n, k in SHAPES + [(500, 450), (2000, 1000), (1024, 16)]:
        nb = qr_block_size(k, n)
        assert 1 <= nb <= k
        assert qr_workspace_size(k, n) == _workspace_size_nb(k, n, nb) >= k * n
    assert [qr_block_size(k, 2000) for k in (5, 100, 300, 500, 1000)] == [5, 8, 16, 32, 64]
