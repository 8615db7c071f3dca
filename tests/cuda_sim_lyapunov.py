"""CPU vs CUDA agreement of the ensemble Lyapunov kernel, the block-level QR and the Jacobian
kernels, run as a script (see tests/test_cuda_lyapunov.py).

    NUMBA_ENABLE_CUDASIM=1 python tests/cuda_sim_lyapunov.py       # Numba's CUDA simulator
    python tests/cuda_sim_lyapunov.py --gpu                         # a real GPU, larger sizes

A script because the simulator must be chosen before ``numba.cuda`` is first imported. Compares
:mod:`rnnlab.kernels.cuda.lyapunov`, :mod:`~rnnlab.kernels.cuda.qr` and
:mod:`~rnnlab.kernels.cuda.jacobian` with their CPU twins: every activation, k < n and k = n,
m > 1, warm-up, shared and per-network drive, the frame in shared and in global memory, odd
block sizes (threads owning several slots); the QR on random, rank-deficient, zero-column and
badly scaled frames. Prints one line per case; exits 1 on any disagreement beyond 1e-10,
relative to the largest entry of the reference.
"""

import argparse
import sys
import time
import warnings

import numpy as np

from cuda_checks import Report, rel_err


def ensemble_case(cpu, gpu, rng, act, sizes, k, m, warmup, drive_kind, threads, in_shared,
                  gain=1.2):
    """Both kernels on one random ensemble; returns the relative errors of the sums."""
    n_net, n, n_steps = sizes
    w = gain * rng.standard_normal((n_net, n, n)) / np.sqrt(n)
    if drive_kind == "per-network":
        drive = 0.5 * rng.standard_normal((n_steps, n_net, n))
    elif drive_kind == "shared":
        drive = 0.5 * rng.standard_normal((n_steps, 1, n))
    else:
        drive = np.zeros((1, 1, n))
    h0 = 0.3 * rng.standard_normal((n_net, n))
    if act == 1:
        # relu: a unit that is off zeroes a row of J_t; with fewer than k units on, the trailing
        # directions of the frame are round-off and their R_ii differ between any two QRs. A
        # positive drive keeps (most) units on; the test measures the leading k < n.
        h0 = np.abs(h0) + 0.1
        drive = np.abs(drive) + 1.0
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    q0t = np.ascontiguousarray(q[:, :k].T)
    ref, ref_status = cpu.lyapunov_ensemble_sums(w, drive, h0, act, q0t, m, warmup, n_steps)
    got, status = gpu.lyapunov_ensemble_sums(w, drive, h0, act, q0t, m, warmup, n_steps,
                                             threads=threads, frame_in_shared=in_shared)
    errs = {"sums": rel_err(ref, got)}
    errs["status"] = 0.0 if np.array_equal(ref_status, status) else np.inf
    return errs


def qr_cases(gpu_qr, rng):
    """The block QR against the CPU Householder QR (Q and diag(R))."""
    from rnnlab.kernels.cpu.qr import householder_qr_rows

    def cpu_qr(at):
        qt = np.empty_like(at)
        r = np.empty(at.shape[0])
        householder_qr_rows(at.copy(), qt, r)
        return qt, r

    out = {}
    frames = {
        "random k<n": rng.standard_normal((3, 7)),
        "random k=n": rng.standard_normal((6, 6)),
        "single vector": rng.standard_normal((1, 5)),
        "tiny (underflowing squares)": 1e-170 * rng.standard_normal((4, 6)),
        "huge (overflowing squares)": 1e170 * rng.standard_normal((4, 6)),
        "mixed scales": rng.standard_normal((4, 6)) * np.array([[1e-160], [1.0], [1e150], [1.0]]),
    }
    zero = rng.standard_normal((4, 6))
    zero[1] = 0.0
    frames["zero vector"] = zero
    unit = rng.standard_normal((3, 5))
    unit[0] = 0.0
    unit[0, 0] = 2.5  # nothing below the diagonal: not reflected, R_00 = 2.5
    frames["no reflection"] = unit
    for label, at in frames.items():
        q_ref, r_ref = cpu_qr(at)
        q_got, r_got = gpu_qr(at)
        out[label] = {"Q": rel_err(q_ref, q_got), "diag R": rel_err(r_ref, r_got)}
    # repeated vector: rank 3, so Q's third column is any unit vector orthogonal to the first
    # two (R_22 ~ eps, and R_33 depends on that choice); compare what is determined, and check
    # that the GPU's Q is orthonormal
    rep = rng.standard_normal((4, 7))
    rep[2] = rep[0]
    q_ref, r_ref = cpu_qr(rep)
    q_got, r_got = gpu_qr(rep)
    out["repeated vector"] = {
        "diag R[:2]": rel_err(r_ref[:2], r_got[:2]),
        "|R_22| / |R_00|": float(abs(r_got[2]) / abs(r_got[0])) * 1e4,  # ~1e-16 * 1e4
        "Q[:2]": rel_err(q_ref[:2], q_got[:2]),
        "orthonormality": float(np.abs(q_got @ q_got.T - np.eye(4)).max()),
    }
    # a batch: one block per frame
    batch = rng.standard_normal((3, 4, 6))
    q_got, r_got = gpu_qr(batch)
    refs = [cpu_qr(b) for b in batch]
    out["batch of 3"] = {"Q": rel_err(np.stack([r[0] for r in refs]), q_got),
                         "diag R": rel_err(np.stack([r[1] for r in refs]), r_got)}
    return out


def jacobian_case(cpu_jac, gpu_jac, rng, act, sizes):
    """J_t q and J_t^T v, CPU vs CUDA, for a joint stack with deep transition."""
    n_layers, depth, hidden, n_steps, k = sizes
    w_hh = rng.standard_normal((n_layers, hidden, hidden)) / np.sqrt(hidden)
    w_up = rng.standard_normal((n_layers, hidden, hidden)) / np.sqrt(hidden)
    w_tr = rng.standard_normal((n_layers, depth, hidden, hidden)) / np.sqrt(hidden)
    states = np.tanh(rng.standard_normal((n_layers, depth + 1, n_steps, hidden)))
    if act == 1:
        states = np.abs(states) * (rng.random(states.shape) > 0.3)
    elif act == 2:
        states = 0.5 + 0.5 * states
    q = rng.standard_normal((n_layers, hidden, k))
    t = n_steps - 2
    ref = np.empty_like(q)
    cpu_jac.rnn_jacobian_apply(w_hh, w_up, w_tr, states, act, t, q, ref)
    got = gpu_jac.jacobian_apply(w_hh, w_up, w_tr, states, act, t, q)
    ref_t = np.empty_like(q)
    cpu_jac.rnn_jacobian_apply_transpose(w_hh, w_up, w_tr, states, act, t, q, ref_t)
    got_t = np.empty_like(q)
    gpu_jac.jacobian_apply_transpose(w_hh, w_up, w_tr, states, act, t, q, out=got_t, threads=3)
    return {"apply": rel_err(ref, got), "transpose": rel_err(ref_t, got_t)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true",
                        help="larger sizes, for a real GPU (the simulator would take minutes)")
    args = parser.parse_args(argv)

    from rnnlab.kernels.cpu import jacobian as cpu_jac
    from rnnlab.kernels.cpu import lyapunov as cpu
    from rnnlab.kernels.cuda import jacobian as gpu_jac
    from rnnlab.kernels.cuda import lyapunov as gpu
    from rnnlab.kernels.cuda import qr as gpu_qr

    rng = np.random.default_rng(7)
    report = Report(62, 20)

    if args.gpu:
        # contracting networks (gain 0.9): the GPU contracts a*b+c into FMAs, so its trajectory
        # differs from the CPU's at round-off, which a positive exponent would amplify
        sizes, big_t, threads, gain = (4, 48, 40), (3, 128, 60), (None, 96), 0.9
        from numba import cuda

        print(f"device: {cuda.get_current_device().name}", flush=True)
    else:
        sizes, big_t, threads, gain = (2, 5, 12), None, (8, 3), 1.2
    # (act, k, m, warmup, drive, threads index, frame in shared)
    cases = [(0, None, 1, 0, "per-network", 0, True),
             (0, 3, 3, 4, "shared", 1, False),
             (1, 3, 2, 3, "per-network", 0, False),
             (2, 2, 1, 5, "none", 1, True),
             (3, None, 4, 1, "shared", 0, True)]
    for act, k, m, warmup, drive, ti, shared in cases:
        kk = sizes[1] if k is None else k
        t0 = time.perf_counter()
        errs = ensemble_case(cpu, gpu, rng, act, sizes, kk, m, warmup, drive, threads[ti],
                             shared, gain)
        report(f"ensemble act={act} k={kk} m={m} warmup={warmup} {drive} "
               f"threads={threads[ti]} shared={shared}", errs, time.perf_counter() - t0)
    # n = 10: two column tiles of the frame step, the second ragged (clamped columns); with 3
    # and 8 threads the frame step runs in chunks of 1 and 4 rows (ragged last chunk), and the
    # QR gives threads several (vector, segment) slots
    for n_thr, shared in ((3, True), (8, False)):
        t0 = time.perf_counter()
        errs = ensemble_case(cpu, gpu, rng, 0, (2, 10, 6), 7, 2, 1, "per-network", n_thr, shared,
                             gain)
        report(f"ensemble n=10 k=7 threads={n_thr} shared={shared}", errs,
               time.perf_counter() - t0)
    if big_t is not None:  # n = k = 128 (opt-in shared memory), and the default configuration
        for shared in (None, False):
            t0 = time.perf_counter()
            errs = ensemble_case(cpu, gpu, rng, 0, big_t, big_t[1], 1, 10, "per-network", None,
                                 shared, gain=0.9)
            report(f"ensemble n=k={big_t[1]} frame_in_shared={shared}", errs,
                   time.perf_counter() - t0)

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        # the huge-scale QR case overflows its squares on purpose (the simulator's threads do
        # not inherit np.errstate, hence a warnings filter)
        warnings.filterwarnings("ignore", "overflow encountered", RuntimeWarning)
        qr_errs = qr_cases(gpu_qr.qr_rows_batched, rng)
    for label, errs in qr_errs.items():
        report(f"qr {label}", errs, time.perf_counter() - t0)
        t0 = time.perf_counter()

    jac_sizes = (2, 1, 4, 4, 3) if not args.gpu else (3, 2, 40, 6, 5)
    for act in range(4):
        t0 = time.perf_counter()
        report(f"jacobian act={act}", jacobian_case(cpu_jac, gpu_jac, rng, act, jac_sizes),
               time.perf_counter() - t0)

    # the public API end to end
    from rnnlab.diagnostics import lyapunov_ensemble

    t0 = time.perf_counter()
    n_net, n, n_steps = sizes
    w = rng.standard_normal((n_net, n, n)) / np.sqrt(n)
    drive = rng.standard_normal((n_steps, n))
    res = {b: lyapunov_ensemble(w, drive, k=n - 1, m=2, warmup=2, backend=b)
           for b in ("cpu", "cuda")}
    report("lyapunov_ensemble(backend='cuda') vs 'cpu'",
           {"exponents": rel_err(res["cpu"].exponents, res["cuda"].exponents)},
           time.perf_counter() - t0)

    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
