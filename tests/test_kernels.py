"""Kernel-level properties: determinism, compile-once, long sequences, the on-disk cache."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import rnnlab
from rnnlab.kernels.cpu import vanilla


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_reruns_are_bitwise_identical(dtype):
    def run():
        net = rnnlab.RNN(3, 16, num_layers=2, bidirectional=True, dtype=dtype, seed=7,
                         transition_layers=1)
        x = np.random.default_rng(3).standard_normal((50, 5, 3)).astype(dtype)
        d = np.random.default_rng(4).standard_normal((50, 5, 32)).astype(dtype)
        out, h_n = net(x)
        return out, h_n, net.backward(x, d)

    a, b = run(), run()
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    for k in a[2]:
        assert np.array_equal(a[2][k], b[2][k]), k


def test_same_seed_same_parameters_different_seed_different():
    a = rnnlab.RNN(3, 4, num_layers=2, seed=11).state_dict()
    b = rnnlab.RNN(3, 4, num_layers=2, seed=11).state_dict()
    c = rnnlab.RNN(3, 4, num_layers=2, seed=12).state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a)
    bound = 1 / np.sqrt(4)
    assert all(np.abs(v).max() <= bound for v in a.values())


def test_each_kernel_compiles_once_per_signature():
    for dtype in (np.float32, np.float64):
        for nonlinearity in ("tanh", "relu", "sigmoid", "linear"):
            for bidirectional in (False, True):
                net = rnnlab.RNN(2, 3, num_layers=2, nonlinearity=nonlinearity,
                                 bidirectional=bidirectional, dtype=dtype, seed=0,
                                 transition_layers=int(bidirectional))
                x = np.ones((3, 2, 2), dtype=dtype)
                net.backward(x, np.ones((3, 2, 3 * (1 + bidirectional)), dtype=dtype))
    # activation, direction and depth are runtime arguments: one signature per dtype
    assert len(vanilla.rnn_recurrence.signatures) == 2
    assert len(vanilla.rnn_recurrence_backward.signatures) == 2


def test_ten_thousand_steps_forward_and_bptt():
    """T = 10,000, B = 32, H = 64: no recursion, memory linear in T, finite gradients."""
    T, B, H = 10_000, 32, 64
    net = rnnlab.RNN(H, H, dtype=np.float32, seed=0)
    x = (0.1 * np.random.default_rng(0).standard_normal((T, B, H))).astype(np.float32)
    d_out = np.zeros((T, B, H), dtype=np.float32)
    d_out[-1] = 1.0
    out, h_n = net(x)
    grads = net.backward(x, d_out)
    assert out.shape == (T, B, H) and np.array_equal(out[-1], h_n[0])
    assert all(np.isfinite(g).all() for g in grads.values())
    # the loss sits at the last step only: the input gradient decays with distance from it
    # (about e^-0.45 a step here) until it underflows float32, 10,000 steps back
    norms = np.linalg.norm(grads["input"], axis=(1, 2))
    assert norms[-1] > norms[-10] > norms[-50] > 0
    assert norms[:-1000].max() < 1e-30 * norms[-1]


def test_hidden_grads_are_the_total_state_gradient(rng):
    """dL/da<t> from the cache matches the identity dL/dh0 = dL/da<-1> and the loss at T."""
    net = rnnlab.RNN(2, 3, dtype=np.float64, seed=1)
    x = rng.standard_normal((6, 2, 2))
    d_out = np.zeros((6, 2, 3))
    d_out[-1] = rng.standard_normal((2, 3))
    out, h_n, cache = net.forward_with_cache(x)
    g = net.backward_from_cache(cache, d_out, return_hidden_grads=True)
    hidden = g["hidden_l0"]
    np.testing.assert_array_equal(hidden[-1], d_out[-1])
    # one more step back through a<0> = tanh(W_ih x<0> + b + W_hh h0): dL/dh0
    a0 = out[0]
    dz0 = hidden[0] * (1 - a0 * a0)
    np.testing.assert_allclose(g["h0"][0], dz0 @ net.parameters()["weight_hh_l0"], rtol=1e-13)


def test_second_process_uses_the_on_disk_cache(tmp_path):
    """A second interpreter loads the compiled kernels from the cache instead of compiling."""
    code = textwrap.dedent("""
        import time, numpy as np
        t0 = time.perf_counter()
        import rnnlab
        from rnnlab.kernels.cpu import vanilla
        net = rnnlab.RNN(3, 8, dtype=np.float32, seed=0)
        x = np.ones((10, 2, 3), dtype=np.float32)
        net.backward(x, np.ones((10, 2, 8), dtype=np.float32))
        stats = vanilla.rnn_recurrence.stats
        print(len(stats.cache_hits), len(stats.cache_misses), time.perf_counter() - t0)
    """)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                           text=True, check=True).stdout.split()
    second = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, check=True).stdout.split()
    assert int(first[0]) == 0 and int(first[1]) == 1  # compiled, then saved
    assert int(second[0]) == 1 and int(second[1]) == 0  # loaded


@pytest.mark.parametrize("act", [0, 1, 2, 3])
@pytest.mark.parametrize("depth, reverse", [(0, False), (1, True), (2, False)])
def test_blas_step_recurrence_matches_the_compiled_loops(act, depth, reverse, monkeypatch):
    """Large B * H * H runs one BLAS product a step: the same forward states and gradients as
    the compiled loops (float64, to rounding)."""
    rng = np.random.default_rng(act * 10 + depth)
    T, B, I, H = 12, 5, 3, 7
    x = rng.standard_normal((T, B, I))
    w_ih = 0.6 * rng.standard_normal((H, I))
    w_hh = 0.9 / np.sqrt(H) * rng.standard_normal((H, H))
    bias = 0.2 * rng.standard_normal(H)
    w_tr = rng.standard_normal((depth, H, H)) / np.sqrt(H)
    b_tr = 0.2 * rng.standard_normal((depth, H))
    h0 = np.abs(rng.standard_normal((B, H)))  # relu: active units from the start
    d_out, dh_n = rng.standard_normal((T, B, H)), rng.standard_normal((B, H))
    runs = []
    for threshold in (1 << 62, 0):
        monkeypatch.setattr(vanilla, "BLAS_STEP_BYTES", threshold)
        monkeypatch.setattr(vanilla, "BLAS_STEP_BATCH", 1)
        states = vanilla.rnn_layer_forward(x, w_ih, w_hh, bias, w_tr, b_tr, h0, act, reverse)
        grads = vanilla.rnn_layer_backward(x, w_ih, w_hh, w_tr, h0, states, d_out, dh_n, act,
                                           reverse)
        runs.append((states, grads))
    (s_loop, g_loop), (s_blas, g_blas) = runs
    np.testing.assert_allclose(s_blas, s_loop, rtol=1e-12, atol=1e-13)
    for name in g_loop:
        np.testing.assert_allclose(g_blas[name], g_loop[name], rtol=1e-11, atol=1e-12,
                                   err_msg=name)


@pytest.mark.parametrize("chunks", [1, 3])
def test_blas_step_kernels_any_chunking(chunks):
    """The kernels called directly with BLAS steps and 1 or 3 batch chunks (one BLAS product a
    step per chunk) give the loops' states and gradients (tanh, one deep-transition layer)."""
    from rnnlab._blas import blas_threads_for
    from rnnlab.kernels.cpu.blas import bind_gemm

    rng = np.random.default_rng(5)
    T, B, H, depth = 9, 5, 6, 1
    w_hh = rng.standard_normal((H, H)) / np.sqrt(H)
    w_tr = rng.standard_normal((depth, H, H)) / np.sqrt(H)
    b_tr = 0.2 * rng.standard_normal((depth, H))
    h0 = rng.standard_normal((B, H))
    proj = rng.standard_normal((T, B, H))
    d_out, dh_n = rng.standard_normal((T, B, H)), rng.standard_normal((B, H))
    w_hh_t = np.ascontiguousarray(w_hh.T)
    w_tr_t = np.ascontiguousarray(w_tr.transpose(0, 2, 1))
    ilp64 = bind_gemm()
    loops = np.empty((depth + 1, T, B, H))
    loops[0] = proj
    vanilla.rnn_recurrence(w_hh_t, w_tr_t, b_tr, h0, 0, False, loops, 2, False, ilp64)
    dz_loops, dh0_loops = np.empty_like(loops), np.empty_like(h0)
    vanilla.rnn_recurrence_backward(w_hh, w_tr, loops, d_out, dh_n, 0, False, dz_loops,
                                    dh0_loops, 2, False, ilp64)
    states = np.empty_like(loops)
    states[0] = proj
    dz, dh0 = np.empty_like(loops), np.empty_like(h0)
    with blas_threads_for(0):
        vanilla.rnn_recurrence(w_hh_t, w_tr_t, b_tr, h0, 0, False, states, chunks, True, ilp64)
        vanilla.rnn_recurrence_backward(w_hh, w_tr, states, d_out, dh_n, 0, False, dz, dh0,
                                        chunks, True, ilp64)
    np.testing.assert_allclose(states, loops, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(dz, dz_loops, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(dh0, dh0_loops, rtol=1e-11, atol=1e-12)
    assert np.abs(dh0).max() > 0.01


def test_blas_steps_rule():
    assert vanilla.blas_steps(128, 512, np.float64)  # 2^28 bytes of multiply-adds a step
    assert vanilla.blas_steps(128, 512, np.float32)  # 2^27
    assert vanilla.blas_steps(32, 512, np.float64)  # 2^26
    assert not vanilla.blas_steps(32, 512, np.float32)  # 2^25
    assert not vanilla.blas_steps(16, 1024, np.float64)  # too few rows a chunk
    assert not vanilla.blas_steps(1, 1024, np.float64)


def test_chunk_threads_limits_and_restores_the_thread_count():
    """A parallel region with fewer chunks than threads runs on as many threads as chunks; the
    caller's count comes back afterwards, also after an error."""
    import numba

    threads = numba.get_num_threads()
    with vanilla.chunk_threads(1):
        assert numba.get_num_threads() == 1
    assert numba.get_num_threads() == threads
    with vanilla.chunk_threads(threads + 3):
        assert numba.get_num_threads() == threads
    with pytest.raises(RuntimeError):
        with vanilla.chunk_threads(1):
            raise RuntimeError("inside")
    assert numba.get_num_threads() == threads


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1000, 16), (37, 5), (1, 3), (4000, 130)])
def test_bias_gradient_sums_rows_in_float64_in_row_order(dtype, shape, rng):
    """The vanilla bias gradient's sum over T*B rows: float64, row by row, the bits of NumPy's
    ``sum(axis=0, dtype=float64)``, rounded to the dtype once."""
    a = (rng.standard_normal(shape) * 10.0 ** rng.uniform(-4, 4, shape)).astype(dtype)
    out = vanilla._sum_rows(a)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, a.sum(axis=0, dtype=np.float64).astype(dtype))
