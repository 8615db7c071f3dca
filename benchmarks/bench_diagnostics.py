"""Speed of the diagnostics against the plain NumPy loops a user would write.

Run: ``python benchmarks/bench_diagnostics.py [--n 64 128 256] [--m 1 10] [--steps 10000]
[--repeats 3]``

Measured side by side in one process, interleaved (A B A B ...), median of ``--repeats`` after a
warm-up, BLAS limited to one thread for both (two threads make the NumPy loop several times
slower on a 2-core machine: thread overhead on 128 x 128 products):

* Lyapunov spectrum of a tanh RNN (Gaussian weights, gain 1.5, N units, T steps, float64):
  rnnlab's :func:`rnnlab.diagnostics.lyapunov_spectrum` against
  ``Q = (d[:, None] * W) @ Q; Q, R = np.linalg.qr(Q)`` every ``m`` steps, for N in {64, 128,
  256}, m in {1, 10}, the full spectrum and the k = 8 leading exponents (the issue's grid); the
  ``full/k`` column is rnnlab's full-spectrum time over the k = 8 time at the same N and m;
* gradient decay (log-norm of a backpropagated gradient at every step) at N = 256.

Prints a table of times and ratios (> 1: rnnlab faster) and checks that both give the same
exponents.
"""

import argparse
import time

import numpy as np
from threadpoolctl import threadpool_limits

import rnnlab
from rnnlab.diagnostics import gradient_decay, lyapunov_spectrum, trajectories
from rnnlab.training import initialize


def numpy_lyapunov(w, deriv, m, k):
    """The plain NumPy QR loop (what the issue measures rnnlab against)."""
    n = w.shape[0]
    q = np.linalg.qr(np.random.default_rng(0).standard_normal((n, n)))[0][:, :k]
    logs = np.zeros(k)
    for t in range(deriv.shape[0]):
        q = (deriv[t][:, None] * w) @ q
        if (t + 1) % m == 0 or t == deriv.shape[0] - 1:
            q, r = np.linalg.qr(q)
            logs += np.log(np.abs(np.diag(r)))
    return logs / deriv.shape[0]


def numpy_gradient_decay(w, deriv):
    """Renormalised backward pass in NumPy: v <- J_t^T v, accumulating log-norms."""
    v = np.ones(w.shape[0]) / np.sqrt(w.shape[0])
    out = np.empty(deriv.shape[0] + 1)
    s = 0.0
    for t in range(deriv.shape[0] - 1, -1, -1):
        out[t + 1] = s
        v = w.T @ (deriv[t] * v)
        nv = np.linalg.norm(v)
        s += np.log(nv)
        v /= nv
    out[0] = s
    return out


def _time(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def lyapunov_cases(n, steps, ms, repeats):
    """Time rnnlab's Lyapunov spectrum against :func:`numpy_lyapunov` at one network size.

    A tanh RNN with Gaussian weights of gain 1.5 (N units, float64) runs ``steps`` steps; for
    every m in ``ms`` the full spectrum (k = N) and the k = 8 leading exponents are timed,
    interleaved, median of ``repeats`` after a warm-up call.

    Returns
    -------
    list of tuple
        ``(name, rnnlab s, numpy s, max |Δλ| over the leading half, max |Δλ|, rnnlab s of the
        full spectrum at the same m)`` per case.
    """
    net = initialize(rnnlab.RNN(1, n, dtype=np.float64, seed=0), "gaussian", gain=1.5, seed=1)
    x = np.random.default_rng(2).standard_normal((steps, 1, 1))
    traj = trajectories(net, x)[0]
    w = net.parameters()["weight_hh_l0"]
    deriv = 1 - traj.states[0, 0, :, :] ** 2
    rows = []
    for m in ms:
        full = None
        for k in (None, 8):
            kk = n if k is None else min(k, n)
            lyapunov_spectrum(traj, k=k, m=m)  # compile / warm
            ours, theirs = [], []
            for _ in range(repeats):  # interleaved
                ours += _time(lambda: lyapunov_spectrum(traj, k=k, m=m), 1)
                theirs += _time(lambda: numpy_lyapunov(w, deriv, m, kk), 1)
            diff = np.abs(lyapunov_spectrum(traj, k=k, m=m).exponents
                          - numpy_lyapunov(w, deriv, m, kk))
            full = np.median(ours) if k is None else full
            # with m > 1 the trailing exponents of a full spectrum fall below round-off
            # between QRs (their directions shrink by exp((λ_k - λ_1) m)) in both codes alike
            rows.append((f"lyapunov N={n} T={steps} m={m} k={kk}", np.median(ours),
                         np.median(theirs), diff[:max(kk // 2, 1)].max(), diff.max(), full))
    return rows


def main(argv=None):
    """Run the benchmark and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[64, 128, 256],
                    help="network sizes N of the Lyapunov spectra")
    ap.add_argument("--m", type=int, nargs="+", default=[1, 10],
                    help="steps between QR factorisations")
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--decay-n", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    for name in ("n", "m", "steps", "decay_n", "repeats"):
        vals = getattr(args, name)
        if min(vals if isinstance(vals, list) else [vals]) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")

    rows = []
    with threadpool_limits(1, user_api="blas"):
        for n in args.n:
            rows += lyapunov_cases(n, args.steps, args.m, args.repeats)
        x = np.random.default_rng(2).standard_normal((args.steps, 1, 1))
        net2 = initialize(rnnlab.RNN(1, args.decay_n, dtype=np.float64, seed=0), "gaussian",
                          gain=1.0, seed=1)
        traj2 = trajectories(net2, x)[0]
        w2 = net2.parameters()["weight_hh_l0"]
        deriv2 = 1 - traj2.states[0, 0, :, :] ** 2
        gradient_decay(traj2)
        ours, theirs = [], []
        for _ in range(args.repeats):
            ours += _time(lambda: gradient_decay(traj2), 1)
            theirs += _time(lambda: numpy_gradient_decay(w2, deriv2), 1)
        rows.append((f"gradient decay N={args.decay_n} T={args.steps}", np.median(ours),
                     np.median(theirs), np.nan, np.nan, np.nan))
    # ratio: numpy / rnnlab at the same (N, m, k); full/k: rnnlab's full spectrum over this
    # row's time (the k = 8 rows: what asking for 8 exponents saves)
    print(f"{'case':44s} {'rnnlab s':>9s} {'numpy s':>9s} {'ratio':>7s} {'full/k':>7s} "
          f"{'|Δλ| lead':>10s} {'|Δλ| all':>10s}")
    for name, a, b, lead, all_, full in rows:
        print(f"{name:44s} {a:9.3f} {b:9.3f} {b / a:7.2f} {full / a:7.2f} {lead:10.2e} "
              f"{all_:10.2e}")
    return rows


if __name__ == "__main__":
    main()
