"""The models on ``backend="cpu"`` and ``backend="cuda"`` agree: run as a script (see
tests/test_cuda_backend.py).

    NUMBA_ENABLE_CUDASIM=1 python tests/cuda_sim_models.py     # Numba's CUDA simulator
    python tests/cuda_sim_models.py --gpu                       # a real GPU, larger sizes

RNN (every activation, deep transition), LSTM and GRU; stacked and bidirectional; float32 and
float64; forward outputs and final states, every gradient of ``backward``, the hidden-state
gradients of ``backward_from_cache``, and the trajectories of the diagnostics. Prints one line
per case; exits 1 on any disagreement beyond 1e-10 (float64) or 1e-5 (float32), relative to
the largest entry of each array.
"""

import argparse
import sys
import time

import numpy as np

from cuda_checks import Report, rel_err


def model_case(make, dtype, sizes, rng, batch_first):
    T, B, I = sizes
    cpu = make("cpu")
    gpu = make("cuda")
    gpu.load_state_dict(cpu.state_dict())
    shape = (B, T, I) if batch_first else (T, B, I)
    x = rng.standard_normal(shape).astype(dtype)
    out_c, fin_c, cache_c = cpu._forward_states(x, (None,) * len(cpu._state_names))
    out_g, fin_g, cache_g = gpu._forward_states(x, (None,) * len(gpu._state_names))
    errs = {"output": rel_err(out_c, out_g)}
    for name, a, b in zip(cpu._state_names, fin_c, fin_g):
        errs[f"final_{name}"] = rel_err(a, b)
    d_out = rng.standard_normal(out_c.shape).astype(dtype)
    d_fin = tuple(rng.standard_normal(f.shape).astype(dtype) for f in fin_c)
    g_c = cpu._backward_from_cache_states(cache_c, d_out, d_fin, True)
    g_g = gpu._backward_from_cache_states(cache_g, d_out, d_fin, True)
    for k in g_c:
        errs[k] = rel_err(g_c[k], g_g[k])
    return errs


def trajectory_case(rng):
    import rnnlab
    from rnnlab.diagnostics import diagnose, trajectories

    net = rnnlab.RNN(2, 4, num_layers=2, transition_layers=1, seed=3)
    x = rng.standard_normal((6, 2, 2)).astype(np.float32)
    ref = trajectories(net, x)
    got = trajectories(net, x, backend="cuda")
    errs = {}
    for i, (a, b) in enumerate(zip(ref, got)):
        errs[f"jacobians_{i}"] = rel_err(a.jacobians(0, a.n_steps), b.jacobians(0, b.n_steps))
    lstm = rnnlab.LSTM(2, 3, seed=4)
    ref = diagnose(lstm, x, diagnostics=("lyapunov", "gradient_decay"))
    got = diagnose(lstm, x, diagnostics=("lyapunov", "gradient_decay"), backend="cuda")
    errs["diagnose_lyapunov"] = rel_err(ref["lyapunov"].exponent, got["lyapunov"].exponent)
    errs["diagnose_gradient_decay"] = rel_err(ref["gradient_decay"].log_norm,
                                              got["gradient_decay"].log_norm)
    return errs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="larger sizes, for a real GPU")
    args = parser.parse_args(argv)

    import rnnlab

    rng = np.random.default_rng(7)
    sizes = (30, 5, 6) if args.gpu else (4, 2, 3)  # T, B, I
    H = 40 if args.gpu else 3
    report = Report(52, 16)

    cases = [
        ("RNN tanh 2 layers bidirectional", lambda dt: lambda b: rnnlab.RNN(
            sizes[2], H, num_layers=2, bidirectional=True, dtype=dt, seed=1, backend=b), False),
        ("RNN relu transition_layers=1 batch_first", lambda dt: lambda b: rnnlab.RNN(
            sizes[2], H, nonlinearity="relu", transition_layers=1, batch_first=True, dtype=dt,
            seed=2, backend=b), True),
        ("LSTM 2 layers bidirectional", lambda dt: lambda b: rnnlab.LSTM(
            sizes[2], H, num_layers=2, bidirectional=True, dtype=dt, seed=3, backend=b), False),
        ("GRU 2 layers bidirectional no bias", lambda dt: lambda b: rnnlab.GRU(
            sizes[2], H, num_layers=2, bidirectional=True, bias=False, dtype=dt, seed=4,
            backend=b), False),
        ("GRU 1 layer batch_first", lambda dt: lambda b: rnnlab.GRU(
            sizes[2], H, batch_first=True, dtype=dt, seed=5, backend=b), True),
    ]
    for dtype in (np.float64, np.float32):
        for label, make, batch_first in cases:
            t0 = time.perf_counter()
            errs = model_case(make(dtype), dtype, sizes, rng, batch_first)
            report.for_dtype(f"{np.dtype(dtype).name} {label}", dtype, errs, time.perf_counter() - t0)
    t0 = time.perf_counter()
    report.for_dtype("float64 trajectories, diagnose (backend='cuda')", np.float64, trajectory_case(rng),
           time.perf_counter() - t0)

    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
