"""Speed of the ensemble Lyapunov spectrum: CPU kernel vs CUDA kernel.

Run: ``python benchmarks/bench_lyapunov_ensemble.py [--networks 256] [--n 128] [--steps 10000]
[--k 128] [--m 1] [--drive shared] [--repeats 1] [--no-cuda]``

Times :func:`rnnlab.diagnostics.lyapunov_ensemble` (E tanh networks of N units, Gaussian weights
with gains spread over [0.5, 2.5], T steps, k exponents, QR every m steps, float64) with
``backend="cpu"`` (Numba, networks on parallel threads, one BLAS thread each) and, when a GPU is
present, ``backend="cuda"`` (one persistent kernel, one block per network), after a warm-up
call that compiles both. Prints one row per backend (seconds, microseconds per network-step,
speed-up of CUDA over CPU) and the largest difference between the two backends' exponents.

The issue's size (E = 256, N = k = 128, T = 10,000) takes minutes on a small CPU: at a reduced
``--networks``/``--steps`` (same N and k) the CPU row is also extrapolated linearly in E*T to
the full size (``--full E,T``), valid once E is at least the number of cores.
"""

import argparse
import os
import time

import numpy as np

from rnnlab.diagnostics import lyapunov_ensemble


def make_ensemble(n_net, n, n_steps, drive, seed=0):
    """Weights ``g_e W_e / sqrt(N)`` with gains from 0.5 to 2.5, a drive and initial states."""
    rng = np.random.default_rng(seed)
    gains = np.linspace(0.5, 2.5, n_net)
    w = gains[:, None, None] * rng.standard_normal((n_net, n, n)) / np.sqrt(n)
    if drive == "shared":
        d = 0.3 * rng.standard_normal((n_steps, n))
    elif drive == "per-network":
        d = 0.3 * rng.standard_normal((n_steps, n_net, n))
    else:
        d = None
    h0 = 0.1 * rng.standard_normal((n_net, n))
    return w, d, h0


def gpu_present():
    try:
        from rnnlab.kernels import cuda

        return cuda.is_available() and not os.environ.get("NUMBA_ENABLE_CUDASIM")
    except Exception:  # noqa: BLE001
        return False


def run(backend, w, d, h0, args):
    return lyapunov_ensemble(w, d, h0, n_steps=None if d is not None else args.steps, k=args.k,
                             m=args.m, warmup=args.warmup, backend=backend)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", type=int, default=256, help="E (default 256)")
    parser.add_argument("--n", type=int, default=128, help="units N (default 128)")
    parser.add_argument("--steps", type=int, default=10_000, help="T (default 10000)")
    parser.add_argument("--k", type=int, default=None, help="exponents (default N)")
    parser.add_argument("--m", type=int, default=1, help="QR interval (default 1)")
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument("--drive", choices=("shared", "per-network", "none"), default="shared",
                        help="a per-network drive is E*T*N floats (2.6 GB at the full size)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs (the median is kept)")
    parser.add_argument("--no-cuda", action="store_true", help="time the CPU only")
    parser.add_argument("--no-cpu", action="store_true", help="time CUDA only")
    parser.add_argument("--full", default="256,10000",
                        help="E,T to extrapolate the CPU time to (default 256,10000)")
    args = parser.parse_args(argv)
    args.k = args.n if args.k is None else args.k

    backends = [] if args.no_cpu else ["cpu"]
    if not args.no_cuda and gpu_present():
        backends.append("cuda")
    import numba

    print(f"E={args.networks} N={args.n} T={args.steps} k={args.k} m={args.m} "
          f"drive={args.drive}; numba threads={numba.get_num_threads()}, "
          f"cpu cores={os.cpu_count()}, backends={backends}", flush=True)

    # warm-up: compile every kernel (and raise the CUDA kernel's shared-memory limit)
    wt, dt, ht = make_ensemble(2, args.n, 5, args.drive)
    for b in backends:
        lyapunov_ensemble(wt, dt, ht, n_steps=None if dt is not None else 5, k=args.k, m=args.m,
                          backend=b)

    w, d, h0 = make_ensemble(args.networks, args.n, args.steps, args.drive)
    times, results = {}, {}
    for b in backends:
        samples = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            results[b] = run(b, w, d, h0, args)
            samples.append(time.perf_counter() - t0)
        times[b] = float(np.median(samples))

    net_steps = args.networks * args.steps
    print(f"\n{'backend':<22}{'seconds':>12}{'us/network-step':>18}{'speed-up':>10}")
    for b, t in times.items():
        ratio = times["cpu"] / t if "cpu" in times else float("nan")
        print(f"{b:<22}{t:>12.3f}{1e6 * t / net_steps:>18.1f}{ratio:>10.1f}")
    if "cpu" in times:
        e_full, t_full = (int(x) for x in args.full.split(","))
        scale = (e_full * t_full) / net_steps
        if scale != 1:
            est = times["cpu"] * scale
            print(f"{'cpu, extrapolated':<22}{est:>12.1f}{1e6 * times['cpu'] / net_steps:>18.1f}"
                  f"{'':>10}   (E={e_full}, T={t_full}: x{scale:g})")
            if "cuda" in times:
                print(f"{'cuda vs extrapolated':<22}{'':>12}{'':>18}{est / times['cuda']:>10.1f}")
    if len(results) == 2:
        a, b = results["cpu"].exponents, results["cuda"].exponents
        fin = np.isfinite(a) & np.isfinite(b)
        print(f"\nmax |cpu - cuda| exponent difference: {np.abs(a[fin] - b[fin]).max():.2e} "
              f"(largest |exponent| {np.abs(a[fin]).max():.2f}; chaotic networks diverge at "
              f"round-off, so long runs agree to the statistical error only)")


if __name__ == "__main__":
    main()
