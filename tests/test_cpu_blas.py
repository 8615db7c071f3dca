"""The CPU's large matrix products (kernels/cpu/blas.py) and the BLAS thread limit (_blas.py).

The products are lists of GEMMs run by a compiled loop that calls SciPy's Fortran BLAS through
raw pointers, so every layout the layers hand it (transposed views, row and column slices,
accumulation, empty factors) is checked here against a float64 NumPy product.
"""

import os
import subprocess
import sys
import textwrap
import threading

import numba
import numpy as np
import pytest
import threadpoolctl

from rnnlab import _blas
from rnnlab.kernels.cpu import blas


def views(x):
    """The same matrix as C-ordered, Fortran-ordered and strided-slice views."""
    rows, cols = x.shape
    wide = np.zeros((rows, cols + 3), x.dtype)
    wide[:, 1:cols + 1] = x
    tall = np.zeros((cols + 2, rows), x.dtype)
    tall[2:] = x.T
    return {"C": x, "F": np.asfortranarray(x), "column slice": wide[:, 1:cols + 1],
            "transposed slice": tall[2:].T, "reversed rows": np.ascontiguousarray(x[::-1])[::-1],
            "every other column": np.repeat(x, 2, axis=1)[:, ::2]}


@pytest.fixture(params=[0, 1 << 62], ids=["parallel", "serial"])
def parallel_work(request, monkeypatch):
    """Run the products on Numba's threads in small blocks, or on this thread."""
    monkeypatch.setattr(blas, "PARALLEL_WORK", request.param)
    monkeypatch.setattr(blas, "BLOCK_WORK", 64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m, k, n", [(7, 5, 3), (1, 9, 4), (6, 1, 5), (9, 4, 1), (3, 200, 8),
                                     (130, 17, 11)])
def test_matmul_tasks_match_numpy_for_every_layout(dtype, m, k, n, parallel_work, rng):
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    tol = 1e-5 if dtype == np.float32 else 1e-13
    for name_a, va in views(a).items():
        for name_b, vb in views(b).items():
            out = np.full((m, n), np.nan, dtype)
            blas.run_products(blas.matmul_tasks(va, vb, out), m * n * k)
            np.testing.assert_allclose(out, ref, rtol=tol, atol=tol * np.sqrt(k),
                                       err_msg=f"a {name_a}, b {name_b}")


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("n_steps", [1, 2, 40])
def test_prev_state_tasks_sum_dz_times_the_previous_state(reverse, n_steps, parallel_work, rng):
    batch, hidden, width = 3, 6, 10
    dz_all = rng.standard_normal((n_steps, batch, 2 * width))
    dz = dz_all[:, :, 4:4 + width]  # a column slice, as the GRU passes
    states = rng.standard_normal((n_steps, batch, hidden))
    h0 = rng.standard_normal((batch, hidden))
    prev = (np.concatenate([states[1:], h0[None]]) if reverse
            else np.concatenate([h0[None], states[:-1]]))
    out = np.full((width, hidden), np.nan)
    blas.run_products(blas.prev_state_tasks(dz, states, h0, reverse, out), 0)
    np.testing.assert_allclose(out, np.einsum("tbk,tbh->kh", dz, prev), rtol=1e-12, atol=1e-13)


def test_split_reduction_partial_sums_are_exact_in_a_fixed_order(monkeypatch, rng):
    """A weight gradient with few output rows is summed in blocks of the T*B reduction; the
    partial sums are added in block order, whatever the number of threads."""
    monkeypatch.setattr(blas, "BLOCK_WORK", 64)
    monkeypatch.setattr(blas, "PARALLEL_WORK", 0)
    a = rng.standard_normal((4, 3000))
    b = rng.standard_normal((3000, 5))
    tasks = blas.matmul_tasks(a, b, np.empty((4, 5)))
    assert sum(isinstance(t, blas.AfterAll) for t in tasks) == 1 and len(tasks) == 5
    out = np.empty((4, 5))
    blas.run_products(blas.matmul_tasks(a, b, out), 0)
    bounds = [(3000 * c // 4, 3000 * (c + 1) // 4) for c in range(4)]
    expected = a[:, :750] @ b[:750]
    for k0, k1 in bounds[1:]:
        expected = expected + a[:, k0:k1] @ b[k0:k1]
    np.testing.assert_allclose(out, expected, rtol=1e-14, atol=1e-13)
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        one = np.empty((4, 5))
        blas.run_products(blas.matmul_tasks(a, b, one), 0)
    finally:
        numba.set_num_threads(threads)
    assert np.array_equal(one, out)


def test_empty_products(parallel_work):
    out = np.full((3, 4), 7.0)
    blas.run_products(blas.matmul_tasks(np.empty((3, 0)), np.empty((0, 4)), out), 0)
    assert np.array_equal(out, np.zeros((3, 4)))  # a sum of nothing
    acc = np.full((3, 4), 7.0)
    blas.run_products([[blas.Gemm(np.empty((3, 0)), np.empty((0, 4)), acc, True)]], 0)
    assert np.array_equal(acc, np.full((3, 4), 7.0))
    blas.run_products(blas.matmul_tasks(np.empty((0, 2)), np.ones((2, 4)), np.empty((0, 4))), 0)


def test_accumulate_adds_to_the_output(parallel_work, rng):
    a, b = rng.standard_normal((5, 4)), rng.standard_normal((4, 3))
    out = rng.standard_normal((5, 3))
    expected = out + a @ b
    blas.run_products([[blas.Gemm(a, b, out, accumulate=True)]], 0)
    np.testing.assert_allclose(out, expected, rtol=1e-14, atol=1e-14)


def test_bad_products_are_refused_before_any_call():
    with pytest.raises(ValueError, match="do not match"):
        blas.run_products([[blas.Gemm(np.ones((2, 3)), np.ones((4, 2)), np.empty((2, 2)))]], 0)
    with pytest.raises(ValueError, match="do not match"):
        blas.run_products([[blas.Gemm(np.ones((2, 3), np.float32), np.ones((3, 2)),
                                      np.empty((2, 2)))]], 0)
    with pytest.raises(ValueError, match="contiguous rows"):
        blas.run_products([[blas.Gemm(np.ones((2, 3)), np.ones((3, 2)),
                                      np.empty((2, 4))[:, ::2])]], 0)
    with pytest.raises(ValueError, match="contiguous rows"):
        blas.run_products([[blas.Gemm(np.ones((2, 3)), np.ones((3, 2)),
                                      np.empty((2, 2))[::-1])]], 0)
    with pytest.raises(TypeError, match="float32 or all float64"):
        blas.run_products([[blas.Gemm(np.ones((2, 3), int), np.ones((3, 2), int),
                                      np.empty((2, 2), int))]], 0)


def blas_thread_counts():
    return [lib["num_threads"] for lib in threadpoolctl.threadpool_info()
            if lib["user_api"] == "blas"]


def test_blas_limit_nests_and_is_shared_by_threads():
    before = blas_thread_counts()
    with _blas.blas_threads_for(0):
        assert set(blas_thread_counts()) == {1}
        with _blas.blas_threads_for(0):
            assert set(blas_thread_counts()) == {1}
        assert set(blas_thread_counts()) == {1}  # the inner block does not restore
    assert blas_thread_counts() == before
    with _blas.blas_threads_for(_blas.SINGLE_THREAD_WORK):
        assert blas_thread_counts() == before  # large work: the library's own threads

    # two threads whose blocks overlap: limited until the last one leaves, then restored
    entered, release, seen = threading.Barrier(2), threading.Event(), []

    def worker(wait):
        with _blas.blas_threads_for(0):
            entered.wait()
            if wait:
                release.wait()
            seen.append(set(blas_thread_counts()))

    first = threading.Thread(target=worker, args=(True,))
    second = threading.Thread(target=worker, args=(False,))
    first.start()
    second.start()
    try:
        second.join()
        assert set(blas_thread_counts()) == {1}  # the first thread is still inside
    finally:
        release.set()
        first.join()
    assert seen == [{1}, {1}]
    assert blas_thread_counts() == before


def test_products_load_from_the_on_disk_cache_in_a_new_process(tmp_path):
    """The compiled product loop links SciPy's GEMM by name, so a second process loads it
    from the cache (and gets the same numbers)."""
    code = textwrap.dedent("""
        import numpy as np
        from rnnlab.kernels.cpu import blas
        a = np.arange(12.0).reshape(3, 4); b = np.arange(8.0).reshape(4, 2)
        out = np.empty((3, 2))
        blas.run_products(blas.matmul_tasks(a, b, out), 0)
        assert np.array_equal(out, a @ b)
        stats = blas._run_tasks.stats
        print(len(stats.cache_hits), len(stats.cache_misses))
    """)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    runs = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                           text=True, check=True).stdout.split() for _ in range(2)]
    assert runs[0] == ["0", "1"] and runs[1] == ["1", "0"]


def test_the_kernels_blas_is_limited_even_when_the_first_limit_came_before_it_loaded():
    """The products call SciPy's BLAS from Numba's threads: it must run single-threaded there
    even if the BLAS limit was first used before SciPy's BLAS was loaded (else OpenBLAS starts
    its own threads inside the OpenMP region and, when it can see libgomp, warns that the
    program may hang: seen in the benchmark, with PyTorch loaded)."""
    code = textwrap.dedent("""
        import sys
        import numpy as np
        from rnnlab import _blas
        assert "scipy.linalg" not in sys.modules
        with _blas.blas_threads_for(0):
            pass
        from rnnlab.kernels.cpu import blas
        blas.PARALLEL_WORK, blas.BLOCK_WORK = 0, 1000
        a, b = np.ones((400, 300)), np.ones((300, 200))
        out = np.empty((400, 200))
        blas.run_products(blas.matmul_tasks(a, b, out), 0)
        assert np.array_equal(out, a @ b)
        import threadpoolctl
        loaded = {lib["filepath"] for lib in threadpoolctl.threadpool_info()
                  if lib["user_api"] == "blas"}
        assert loaded == {lib.filepath for lib in _blas._blas_libraries()}, loaded
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, NUMBA_NUM_THREADS="2"))
    assert run.returncode == 0, run.stderr
    assert "OpenBLAS" not in run.stderr, run.stderr


def test_scipys_blas_is_the_fallback_when_numpy_exports_no_gemm():
    """NumPy's bundled ILP64 OpenBLAS is used where it exports the GEMMs (NumPy's wheels);
    otherwise SciPy's LP64 one: both give the products NumPy gives."""
    code = textwrap.dedent("""
        import numpy as np
        from rnnlab.kernels.cpu import blas
        blas._numpy_gemm = lambda: None
        rng = np.random.default_rng(0)
        for dtype in (np.float32, np.float64):
            a = rng.standard_normal((300, 70)).astype(dtype)
            b = rng.standard_normal((70, 40)).astype(dtype)
            for x in (a, np.asfortranarray(a)):
                out = np.empty((300, 40), dtype)
                blas.run_products(blas.matmul_tasks(x, b, out), 0)
                ref = a.astype(np.float64) @ b.astype(np.float64)
                assert np.allclose(out, ref, rtol=1e-4, atol=1e-4)
        print(blas.gemm_source)
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["scipy"]
    blas.run_products(blas.matmul_tasks(np.ones((2, 2)), np.ones((2, 2)), np.empty((2, 2))), 0)
    assert blas.gemm_source in ("numpy", "scipy")


# --------------------------------------------------------------------- the per-step product
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows, inner, cols", [
    (4, 3, 64), (9, 17, 130), (5, 0, 70), (8, 33, 32), (13, 70, 200), (1, 5, 64), (4, 1, 64),
    (3, 40, 256), (16, 64, 1024),
    # tall tiles (8 rows) alone, then a 4-row tile, then rows and columns for the loops
    (8, 6, 64), (12, 9, 96), (23, 31, 200), (20, 5, 192),
    # one row left over: one-row tiles (with column edges), or loops past the size rule
    (1, 37, 300), (5, 21, 130), (1, 9, 128), (9, 50, 256), (1, 40, 1100),
    # half-width one-row tiles (64 float32 / 32 float64 columns), alone or after full ones
    (1, 30, 64), (1, 11, 200), (5, 7, 100), (1, 3, 40),
    # narrow products of 1 or 2 vectors (float32 16 / 32 columns, float64 8 / 16; the others'
    # loops and tiles, 3 vectors too): 8-row, 4-row and one-row tiles as wide as the product
    (1, 16, 16), (8, 16, 16), (13, 5, 16), (4, 64, 8), (29, 9, 8), (1, 7, 24), (11, 12, 24),
    (17, 33, 32), (2, 3, 48), (9, 1, 48)])
def test_step_product_tiles_and_loops_give_the_same_bits(dtype, rows, inner, cols, rng):
    """accumulate_product (register tiles of 8 and 4 rows where the CPU has AVX-512, one-row
    tiles for a row left over, loops for the edges) is bitwise the all-loop version, and both
    are a @ w added to acc (float64 NumPy reference), with row and column offsets into larger
    arrays."""
    a = rng.standard_normal((rows + 3, inner + 5)).astype(dtype)
    w = rng.standard_normal((inner + 2, cols)).astype(dtype)
    acc0 = rng.standard_normal((rows + 1, cols)).astype(dtype)
    tiled = acc0.copy()
    blas.accumulate_product(tiled, 1, a, 2, 3, w, 1, inner, rows)
    loops = acc0.copy()
    blas._loop_product(loops, 1, a, 2, 3, w, 1, inner, rows, 0, cols)
    np.testing.assert_array_equal(tiled, loops)
    ref = acc0.astype(np.float64)
    ref[1:1 + rows] += a[2:2 + rows, 3:3 + inner].astype(np.float64) @ w[1:1 + inner].astype(
        np.float64)
    tol = 1e-5 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(tiled, ref, rtol=tol, atol=tol * max(1, inner))
    np.testing.assert_array_equal(tiled[0], acc0[0])  # rows outside the block untouched


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("accumulate", [True, False])
@pytest.mark.parametrize("rows, inner, cols", [(1, 16, 16), (6, 16, 16), (9, 24, 24),
                                               (3, 20, 48), (4, 16, 64), (2, 5, 7)])
def test_step_product_is_the_loops_product(dtype, accumulate, rows, inner, cols, rng):
    """step_product (narrow products straight to their tiles, the others through
    accumulate_product): the bits of the loops, added to ``out`` or in place of it."""
    a = rng.standard_normal((rows + 3, inner + 5)).astype(dtype)
    w = rng.standard_normal((inner + 2, cols)).astype(dtype)
    out0 = rng.standard_normal((rows + 2, cols)).astype(dtype)
    out = out0.copy()
    blas.step_product(out, 1, a, 2, 3, w, 1, inner, rows, accumulate, False, blas.bind_gemm(),
                      blas.gemm_scratch())
    loops = out0.copy()
    if not accumulate:
        loops[1:1 + rows] = 0
    blas._loop_product(loops, 1, a, 2, 3, w, 1, inner, rows, 0, cols)
    np.testing.assert_array_equal(out, loops)
    np.testing.assert_array_equal(out[[0, -1]], out0[[0, -1]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows, inner, cols", [
    (1, 9, 64), (1, 30, 300), (3, 17, 130), (4, 5, 64), (5, 21, 200), (7, 2, 33),  # 4-vector
    (8, 13, 64), (9, 6, 100), (12, 31, 256), (13, 4, 40), (16, 40, 512), (23, 3, 17),  # 2-vector
    (6, 0, 64)])
def test_accumulate_panels_is_bitwise_accumulate_product(dtype, rows, inner, cols, rng):
    """w packed as panels (widths by rows, zero-padded columns): the same bits as the
    row-major product, with row, column and inner offsets; padded columns get a @ 0."""
    a = rng.standard_normal((rows + 3, inner + 5)).astype(dtype)
    w = rng.standard_normal((inner + 2, cols)).astype(dtype)
    panels = blas.pack_panels(w, rows)
    n_panels, k, width = panels.shape
    assert k == inner + 2 and n_panels * width >= cols > (n_panels - 1) * width
    assert width * np.dtype(dtype).itemsize == 64 * blas.panel_vectors(rows)
    for q in range(n_panels):  # the layout, entry by entry
        c1 = min(cols, (q + 1) * width)
        np.testing.assert_array_equal(panels[q, :, :c1 - q * width], w[:, q * width:c1])
        assert not panels[q, :, c1 - q * width:].any()
    acc0 = rng.standard_normal((rows + 1, n_panels * width)).astype(dtype)
    packed = acc0.copy()
    blas.accumulate_panels(packed, 1, a, 2, 3, panels, 1, inner, rows)
    plain = acc0.copy()
    blas.accumulate_product(plain[:, :cols], 1, a, 2, 3, w, 1, inner, rows)
    np.testing.assert_array_equal(packed[:, :cols], plain[:, :cols])
    np.testing.assert_array_equal(packed[:, cols:], acc0[:, cols:])
    loops = acc0.copy()  # the fallback where the target has no tiles
    for q in range(n_panels):
        blas._loop_product(loops[:, q * width:(q + 1) * width], 1, a, 2, 3, panels[q], 1, inner,
                           rows, 0, width)
    np.testing.assert_array_equal(packed, loops)


def test_step_product_tiles_follow_numba_target_cpu(tmp_path):
    """Tiles only where Numba compiles for AVX-512, fused multiply-adds only where it compiles
    for FMA: a generic target turns both off, and the panels' loops then give the bits of the
    row-major loops."""
    code = textwrap.dedent("""
        import numpy as np
        from rnnlab.kernels.cpu import blas
        rng = np.random.default_rng(0)
        a = rng.standard_normal((9, 20)).astype(np.float32)
        w = rng.standard_normal((20, 150)).astype(np.float32)
        acc = rng.standard_normal((9, 192)).astype(np.float32)
        plain = acc.copy()
        blas.accumulate_product(plain, 0, a, 0, 0, w, 0, 20, 9)
        blas.accumulate_panels(acc, 0, a, 0, 0, blas.pack_panels(w, 9), 0, 20, 9)
        print(blas.TILES, blas.FUSED, np.array_equal(acc[:, :150], plain[:, :150]))
    """)
    env = dict(os.environ, NUMBA_CPU_NAME="generic", NUMBA_CACHE_DIR=str(tmp_path))
    env.pop("NUMBA_CPU_FEATURES", None)
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert run.stdout.split() == ["False", "False", "True"]


@pytest.mark.parametrize("dtype, bits", [(np.float32, 12), (np.float64, 27)])
@pytest.mark.parametrize("rows, inner, cols", [
    (4, 1, 64), (8, 4, 128), (12, 2, 64),  # register tiles: 4 rows, tall (8), both
    (1, 1, 128), (1, 5, 64),  # one-row and half-width tiles
    (1, 3, 16), (8, 2, 16), (5, 1, 48), (12, 4, 32),  # narrow tiles (1, 2 vectors), loops
    (3, 1, 5), (2, 6, 7)])  # loops (unrolled by four, and the inner steps left over)
def test_step_product_rounds_each_multiply_add_once_where_fused(dtype, bits, rows, inner, cols):
    """Every multiply-add of the per-step product is fused where the target has FMA (one
    rounding), else rounded twice, by tile and by loop alike. With ``e = 2**-bits`` and
    ``a = w = 1 + e``, ``acc = -(1 + 2e)``: the exact ``acc + a w`` is ``e**2``, which a product
    rounded on its own loses (``e**2`` is half an ulp of ``1 + 2e``, rounded to even)."""
    e = dtype(2.0 ** -bits)
    one = dtype(1)
    a = np.zeros((rows, inner), dtype)
    a[:, -1] = one + e  # the other steps add 0 * w, exact either way
    w = np.full((inner, cols), one + e, dtype)
    acc = np.full((rows, cols), -(one + 2 * e), dtype)
    assert dtype(a[0, -1] * w[0, 0]) == one + 2 * e  # the rounded product alone
    blas.accumulate_product(acc, 0, a, 0, 0, w, 0, inner, rows)
    expect = dtype(e * e) if blas.FUSED else dtype(0)
    np.testing.assert_array_equal(acc, np.full((rows, cols), expect, dtype))
