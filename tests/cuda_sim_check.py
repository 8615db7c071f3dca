"""CPU vs CUDA agreement of the vanilla kernels, run as a script (see tests/test_cuda_vanilla.py).

    NUMBA_ENABLE_CUDASIM=1 python tests/cuda_sim_check.py          # Numba's CUDA simulator
    python tests/cuda_sim_check.py --gpu                            # a real GPU, larger sizes

A script rather than a test module because the simulator must be chosen before ``numba.cuda`` is
first imported, which a pytest process running other tests cannot promise. Compares
:mod:`rnnlab.kernels.cuda.vanilla` with :mod:`rnnlab.kernels.cpu.vanilla` (the kernels behind
``rnnlab.RNN``) for every activation, float32 and float64, both directions, with and without a
deep-transition layer, W_hh in shared and in global memory, host and device-resident arguments;
and the BLAS kernels with NumPy. Prints one line per case; exits 1 on any disagreement beyond
1e-10 (float64) or 1e-5 (float32), relative to the largest entry of each array.
"""

import argparse
import sys
import time

import numpy as np

from cuda_checks import Report, rel_err


def layer_case(cpu, gpu, dtype, act, depth, reverse, sizes, rng, device_resident=False,
               algorithm="block"):
    from numba import cuda

    T, B, I, H = sizes
    dt = np.dtype(dtype)

    def r(*shape, scale=1.0):
        return (scale * rng.standard_normal(shape)).astype(dt)

    x, w_ih = r(T, B, I), r(H, I, scale=0.6)
    w_hh = r(H, H, scale=0.9 / np.sqrt(H))
    bias = r(H, scale=0.2)
    w_tr, b_tr = r(depth, H, H, scale=1.0 / np.sqrt(H)), r(depth, H, scale=0.2)
    h0 = r(B, H, scale=0.5)
    if act == 1:  # relu: start from positive states so that every unit is active somewhere
        h0 = np.abs(h0)
    d_out, dh_n = r(T, B, H), r(B, H)

    states = cpu.rnn_layer_forward(x, w_ih, w_hh, bias, w_tr, b_tr, h0, act, reverse)
    grads = cpu.rnn_layer_backward(x, w_ih, w_hh, w_tr, h0, states, d_out, dh_n, act, reverse)
    if device_resident:
        dev = {k: cuda.to_device(v) for k, v in dict(
            x=x, w_ih=w_ih, w_hh=w_hh, bias=bias, w_tr=w_tr, b_tr=b_tr, h0=h0, d_out=d_out,
            dh_n=dh_n).items()}
        d_states = gpu.rnn_layer_forward(dev["x"], dev["w_ih"], dev["w_hh"], dev["bias"],
                                         dev["w_tr"], dev["b_tr"], dev["h0"], act, reverse,
                                         to_host=False, algorithm=algorithm)
        d_grads = gpu.rnn_layer_backward(dev["x"], dev["w_ih"], dev["w_hh"], dev["w_tr"],
                                         dev["h0"], d_states, dev["d_out"], dev["dh_n"], act,
                                         reverse, to_host=False, algorithm=algorithm)
        g_states = d_states.copy_to_host()
        g_grads = {k: v.copy_to_host() for k, v in d_grads.items()}
    else:
        g_states = gpu.rnn_layer_forward(x, w_ih, w_hh, bias, w_tr, b_tr, h0, act, reverse,
                                         algorithm=algorithm)
        g_grads = gpu.rnn_layer_backward(x, w_ih, w_hh, w_tr, h0, g_states, d_out, dh_n, act,
                                         reverse, algorithm=algorithm)
    errs = {"states": rel_err(states, g_states)}
    for k, v in grads.items():
        errs[k] = rel_err(v, g_grads[k])
    return errs


def blas_case(blas, dtype, rng):
    from numba import cuda

    dt = np.dtype(dtype)
    # two row tiles and two k tiles (TILE = 16), few blocks: the simulator runs a thread per
    # CUDA thread
    a = rng.standard_normal((17, 18)).astype(dt)
    b = rng.standard_normal((18, 5)).astype(dt)
    c0 = rng.standard_normal((17, 5)).astype(dt)
    errs = {}
    c = cuda.to_device(c0)
    blas.gemm(cuda.to_device(a), cuda.to_device(b), c, accumulate=True)
    errs["matmul"] = rel_err(c0 + a @ b, c.copy_to_host())
    c = cuda.device_array((17, 5), dtype=dt)
    blas.gemm(cuda.to_device(a), cuda.to_device(np.ascontiguousarray(b.T)), c, trans_b=True)
    errs["matmul_nt"] = rel_err(a @ b, c.copy_to_host())
    c = cuda.device_array((18, 5), dtype=dt)
    blas.gemm(cuda.to_device(a), cuda.to_device(c0), c, trans_a=True)
    errs["matmul_tn"] = rel_err(a.T @ c0, c.copy_to_host())
    rows = rng.standard_normal((300, 5)).astype(dt)
    out = cuda.device_array(5, dtype=dt)
    blas.sum_rows(cuda.to_device(rows), out)
    errs["sum_rows"] = rel_err(rows.sum(axis=0, dtype=np.float64), out.copy_to_host())
    errs["transposed"] = rel_err(a.T, blas.transposed(cuda.to_device(a)).copy_to_host())
    return errs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true",
                        help="larger sizes, for a real GPU (the simulator would take minutes)")
    args = parser.parse_args(argv)

    from rnnlab.kernels.cpu import vanilla as cpu
    from rnnlab.kernels.cuda import blas
    from rnnlab.kernels.cuda import vanilla as gpu

    rng = np.random.default_rng(2024)
    sizes = (40, 6, 5, 64) if args.gpu else (5, 2, 3, 4)  # T, B, I, H
    report = Report(58, 10)

    for dtype in (np.float64, np.float32):
        name = np.dtype(dtype).name
        # every activation in both dtypes; depth and direction rotate so that each dtype sees
        # all four (depth, reverse) pairs
        for act in range(4):
            depth, reverse = (act + (dtype is np.float32)) % 2, act >= 2
            t0 = time.perf_counter()
            errs = layer_case(cpu, gpu, dtype, act, depth, reverse, sizes, rng)
            report.for_dtype(f"{name} act={act} depth={depth} reverse={reverse}", dtype, errs,
                   time.perf_counter() - t0)
        t0 = time.perf_counter()
        report.for_dtype(f"{name} blas", dtype, blas_case(blas, dtype, rng), time.perf_counter() - t0)

    # W_hh read from global memory, more units than threads (strided ownership, H not a
    # multiple of the block), device-resident arguments and results
    saved = gpu.SHARED_MEMORY_BYTES, gpu.MAX_THREADS
    gpu.SHARED_MEMORY_BYTES, gpu.MAX_THREADS = 0, (2 if not args.gpu else 32)
    try:
        T, B, I, H = sizes
        for dtype in (np.float64, np.float32):
            t0 = time.perf_counter()
            errs = layer_case(cpu, gpu, dtype, 0, 1, dtype is np.float32, (T, B, I, H + 1), rng,
                              device_resident=True)
            report.for_dtype(f"{np.dtype(dtype).name} tanh global-W strided device-resident", dtype, errs,
                   time.perf_counter() - t0)
    finally:
        gpu.SHARED_MEMORY_BYTES, gpu.MAX_THREADS = saved

    # the cooperative-grid kernels (one block in the simulator: multi-block grid sync is wrong
    # there; on a GPU, H = 300 spans ten blocks), W_hh's columns in shared and in global memory
    T, B, I, H = sizes
    h_grid = 300 if args.gpu else H + 1
    for dtype in (np.float64, np.float32):
        for act, depth, reverse, shared in ((0, 1, False, True), (1, 0, True, False),
                                            (2, 0, False, False), (3, 1, True, True)):
            saved = gpu.SHARED_MEMORY_BYTES
            if not shared:
                gpu.SHARED_MEMORY_BYTES = 0
            try:
                t0 = time.perf_counter()
                errs = layer_case(cpu, gpu, dtype, act, depth, reverse, (T, B, I, h_grid), rng,
                                  device_resident=act == 3, algorithm="grid")
            finally:
                gpu.SHARED_MEMORY_BYTES = saved
            report.for_dtype(f"{np.dtype(dtype).name} grid act={act} depth={depth} reverse={reverse} "
                   f"W in {'shared' if shared else 'global'}", dtype, errs,
                   time.perf_counter() - t0)

    if args.gpu:  # the shared-memory limit itself: largest H that fits, and one more
        for dtype in (np.float32, np.float64):
            h_max = max(h for h in range(1, 200) if gpu.weights_fit_in_shared(h, dtype))
            for h in (h_max, h_max + 1):
                t0 = time.perf_counter()
                errs = layer_case(cpu, gpu, dtype, 0, 0, False, (20, 3, 4, h), rng)
                report.for_dtype(f"{np.dtype(dtype).name} tanh H={h}", dtype, errs,
                       time.perf_counter() - t0)

    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
