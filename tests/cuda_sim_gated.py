"""CPU vs CUDA agreement of the LSTM and GRU kernels, run as a script (see test_cuda_gated.py).

    NUMBA_ENABLE_CUDASIM=1 python tests/cuda_sim_gated.py          # Numba's CUDA simulator
    python tests/cuda_sim_gated.py --gpu                            # a real GPU, larger sizes

A script rather than a test module because the simulator must be chosen before ``numba.cuda`` is
first imported (as tests/cuda_sim_check.py, the vanilla twin). Compares
:mod:`rnnlab.kernels.cuda.lstm` and :mod:`rnnlab.kernels.cuda.gru` with their CPU twins in
:mod:`rnnlab.kernels.cpu` (forward states and every gradient, including ``dz``), float32 and
float64, both directions, with and without bias, with and without the per-step hidden (and cell)
gradients, W_hh in shared and in global memory, host and device-resident arguments. Prints one
line per case; exits 1 on any disagreement beyond 1e-10 (float64) or 1e-5 (float32), relative to
the largest entry of each array, or on a wrong key, shape, dtype or array kind.
"""

import argparse
import sys
import time

import numpy as np

from cuda_checks import Report, rel_err


def compare(prefix, ref, got, errs):
    """Add ``rel_err`` of every array of the dict ``ref`` to ``errs`` (inf for a missing or
    extra key)."""
    for k in set(ref) | set(got):
        errs[prefix + k] = (rel_err(ref[k], got[k], same_dtype=True) if k in ref and k in got
                            else np.inf)


def _copy_back(arrays, errs):
    """Device arrays -> NumPy; an entry that is not a device array is an error."""
    from rnnlab.kernels.cuda import blas

    out = {}
    for k, v in arrays.items():
        if not blas.is_device_array(v):
            errs["not-on-device:" + k] = np.inf
            out[k] = np.asarray(v)
        else:
            out[k] = v.copy_to_host()
    return out


def gated_case(cell, cpu, gpu, dtype, reverse, bias, hidden_grads, sizes, rng,
               device_resident=False, overwrite_states=False):
    """One forward + backward pass of ``cell`` ("lstm" or "gru") on CPU and GPU; returns the
    relative error of every array. ``overwrite_states`` (LSTM, device-resident): the backward
    pass writes dz over the device states' gates, and must return that very array."""
    from numba import cuda

    T, B, I, H = sizes
    dt = np.dtype(dtype)
    n_gates = 4 if cell == "lstm" else 3

    def r(*shape, scale=1.0):
        return (scale * rng.standard_normal(shape)).astype(dt)

    x = r(T, B, I)
    w_ih = r(n_gates * H, I, scale=0.6)
    w_hh = r(n_gates * H, H, scale=1.2 / np.sqrt(H))
    h0, c0 = r(B, H, scale=0.5), r(B, H, scale=0.5)
    d_out, dh_n, dc_n = r(T, B, H), r(B, H), r(B, H)
    if cell == "lstm":
        b = r(n_gates * H, scale=0.3) if bias else None
        f_args = (x, w_ih, w_hh, b, h0, c0)
        states = cpu.lstm_layer_forward(*f_args, reverse=reverse)
        grads = cpu.lstm_layer_backward(x, w_ih, w_hh, h0, c0, states, d_out, dh_n, dc_n,
                                        reverse=reverse, hidden_grads=hidden_grads)
        forward, backward = gpu.lstm_layer_forward, gpu.lstm_layer_backward

        def b_args(a, st):
            return (a["x"], a["w_ih"], a["w_hh"], a["h0"], a["c0"], st, a["d_out"], a["dh_n"],
                    a["dc_n"])
    else:
        b_ih = r(n_gates * H, scale=0.3) if bias else None
        b_hh = r(n_gates * H, scale=0.3) if bias else None
        f_args = (x, w_ih, w_hh, b_ih, b_hh, h0)
        states = cpu.gru_layer_forward(*f_args, reverse=reverse)
        grads = cpu.gru_layer_backward(x, w_ih, w_hh, h0, states, d_out, dh_n, reverse=reverse,
                                       hidden_grads=hidden_grads)
        forward, backward = gpu.gru_layer_forward, gpu.gru_layer_backward

        def b_args(a, st):
            return (a["x"], a["w_ih"], a["w_hh"], a["h0"], st, a["d_out"], a["dh_n"])

    host = dict(x=x, w_ih=w_ih, w_hh=w_hh, h0=h0, c0=c0, d_out=d_out, dh_n=dh_n, dc_n=dc_n)
    errs = {}
    if device_resident:
        dev = {k: cuda.to_device(v) for k, v in host.items()}
        d_f_args = tuple(None if a is None else cuda.to_device(a) for a in f_args)
        d_states = forward(*d_f_args, reverse=reverse, to_host=False)
        g_states = _copy_back(d_states, errs)  # before a backward pass that may overwrite them
        kw = {"overwrite_states": True} if overwrite_states else {}
        d_grads = backward(*b_args(dev, d_states), reverse=reverse, hidden_grads=hidden_grads,
                           to_host=False, **kw)
        if overwrite_states and d_grads["dz"] is not d_states["gates"]:
            errs["dz-not-over-gates"] = np.inf
        g_grads = _copy_back(d_grads, errs)
    else:
        g_states = forward(*f_args, reverse=reverse)
        g_grads = backward(*b_args(host, g_states), reverse=reverse, hidden_grads=hidden_grads)
        for k, v in {**g_states, **g_grads}.items():
            if not isinstance(v, np.ndarray):
                errs["not-numpy:" + k] = np.inf
    compare("", states, g_states, errs)
    compare("d_", grads, g_grads, errs)
    return errs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true",
                        help="larger sizes, for a real GPU (the simulator would take minutes)")
    args = parser.parse_args(argv)

    from rnnlab.kernels.cpu import gru as cpu_gru
    from rnnlab.kernels.cpu import lstm as cpu_lstm
    from rnnlab.kernels.cuda import gru as gpu_gru
    from rnnlab.kernels.cuda import lstm as gpu_lstm

    pairs = {"lstm": (cpu_lstm, gpu_lstm), "gru": (cpu_gru, gpu_gru)}
    rng = np.random.default_rng(2025)
    sizes = (40, 6, 5, 48) if args.gpu else (5, 2, 3, 4)  # T, B, I, H
    report = Report(58, 12)

    def run(cell, dtype, reverse, bias, hidden_grads, sizes, extra="", **kw):
        cpu, gpu = pairs[cell]
        t0 = time.perf_counter()
        errs = gated_case(cell, cpu, gpu, dtype, reverse, bias, hidden_grads, sizes, rng, **kw)
        label = (f"{cell} {np.dtype(dtype).name} reverse={reverse} bias={bias} "
                 f"hidden_grads={hidden_grads}{extra}")
        report.for_dtype(label, dtype, errs, time.perf_counter() - t0)

    # W_hh in shared memory: each (cell, dtype) runs both directions; bias and hidden_grads
    # rotate with the direction
    for cell in pairs:
        for dtype in (np.float64, np.float32):
            for reverse in (False, True):
                run(cell, dtype, reverse, not reverse, not reverse, sizes)

    # W_hh read from global memory, more units than threads (strided ownership, H not a
    # multiple of the block), device-resident arguments and results: the module-level limits
    # are lowered for these cases only
    for cell, (_, gpu) in pairs.items():
        saved = gpu.SHARED_MEMORY_BYTES, gpu.MAX_THREADS
        gpu.SHARED_MEMORY_BYTES, gpu.MAX_THREADS = 0, (2 if not args.gpu else 32)
        try:
            T, B, I, H = sizes
            for dtype in (np.float64, np.float32):
                reverse = dtype is np.float32
                run(cell, dtype, reverse, reverse, True, (T, B, I, H + 1),
                    " global-W strided device", device_resident=True)
        finally:
            gpu.SHARED_MEMORY_BYTES, gpu.MAX_THREADS = saved

    # LSTM: dz written over the device-resident gates (what net.backward asks for)
    for dtype in (np.float64, np.float32):
        run("lstm", dtype, dtype is np.float64, True, False, sizes, " device overwrite-states",
            device_resident=True, overwrite_states=True)

    if args.gpu:  # the shared-memory limit itself: largest H that fits, and one more
        for cell, (_, gpu) in pairs.items():
            for dtype in (np.float32, np.float64):
                h_max = max(h for h in range(1, 200) if gpu.weights_fit_in_shared(h, dtype))
                for h in (h_max, h_max + 1):
                    run(cell, dtype, False, True, False, (20, 3, 4, h), f" H={h}")

    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
