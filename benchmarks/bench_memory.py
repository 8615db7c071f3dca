"""Peak memory of full against checkpointed BPTT (rnnlab.training.bptt).

Run: ``PYTHONPATH=. python benchmarks/bench_memory.py [--cells rnn_tanh lstm gru]
[--full-T 1000 10000] [--ckpt-T 1000 10000 100000] [--out results/benchmarks/memory_cpu_2cores.txt]``

Model: ManyToMany, one layer, B = 32, H = 256, input size I = 1, one sigmoid output with binary
cross-entropy at every step, float32. Every configuration runs in a fresh subprocess, which
builds the model and the data, warms up the kernels on a short sequence (Numba compilation or
cache load), then measures one call of ``full_bptt`` or ``checkpointed_bptt``:

* ``peak MB``: the peak of :mod:`tracemalloc` during the call, started after the data exist.
  NumPy reports its array allocations to tracemalloc, so this is what the method itself
  allocates beyond ``x`` and ``y`` (forward caches, outputs, gradients, checkpoints).
  Not counted: the kernels' small per-thread Numba buffers (``B/threads x H``) and BLAS's own
  workspace.
* ``RSS MB``: the process's peak resident set (``ru_maxrss``), which also holds the
  interpreter, NumPy, Numba/LLVM, the compiled kernels and the data; ``base MB`` is the
  resident set just before the call.
* ``seconds``: wall time of the call (with tracemalloc on, which costs little here: few, large
  allocations); ``other``: cores kept busy by other processes meanwhile (from ``/proc/stat``),
  as the timings on a shared 2-core machine are only as good as it is quiet
  (``--wait-quiet SECONDS`` waits for an idle machine before each run).

Full BPTT at T = 100,000 needs about 10x its T = 10,000 memory (many GB), so its row is a
linear extrapolation (least squares over the measured T) marked ``extrapolated``.
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
import tracemalloc

import numpy as np

B, H, I, K = 32, 256, 1, 1
MB = 1e6


def _cpu_counters():
    """(wall, busy jiffies of the whole machine, this process's own jiffies)."""
    with open("/proc/stat") as f:
        cpu = [int(v) for v in f.readline().split()[1:9]]
    with open("/proc/self/stat") as f:
        own = f.read().rsplit(")", 1)[1].split()
    return time.perf_counter(), sum(cpu) - cpu[3] - cpu[4], int(own[11]) + int(own[12])


def _other_cores(start, end):
    """Cores kept busy by *other* processes between two :func:`_cpu_counters` readings."""
    wall = end[0] - start[0]
    return max((end[1] - start[1]) - (end[2] - start[2]), 0) / os.sysconf("SC_CLK_TCK") / wall


def wait_until_quiet(max_wait, threshold=0.2, window=2.0):
    """Sleep (up to ``max_wait`` s) until other processes use < ``threshold`` cores."""
    deadline = time.perf_counter() + max_wait
    while time.perf_counter() < deadline:
        start = _cpu_counters()
        time.sleep(window)
        if _other_cores(start, _cpu_counters()) < threshold:
            return


def _rss_now_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MB


def child(cell, method, n_steps):
    """One measurement; prints a JSON line."""
    from rnnlab.architectures import make_model
    from rnnlab.training import checkpointed_bptt, full_bptt

    fn = {"full": full_bptt, "checkpointed": checkpointed_bptt}[method]
    model = make_model("many_to_many", cell, I, H, K, loss="bce", dtype=np.float32, seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n_steps, B, I), dtype=np.float32)
    y = (rng.random((n_steps, B, K)) > 0.5).astype(np.float32)
    fn(model, x[:16], y[:16])  # warm-up: kernels compiled or loaded from Numba's cache
    base = _rss_now_mb()
    tracemalloc.start()
    counters = _cpu_counters()
    loss, grads = fn(model, x, y)
    end = _cpu_counters()
    seconds = end[0] - counters[0]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3  # KiB on Linux
    assert np.isfinite(loss) and all(np.isfinite(g).all() for g in grads.values())
    print(json.dumps({"cell": cell, "method": method, "T": n_steps, "peak_mb": peak / MB,
                      "rss_mb": rss_peak, "base_mb": base, "seconds": seconds,
                      "other_cpu": _other_cores(counters, end), "data_mb": (x.nbytes + y.nbytes) / MB}))


def run_child(cell, method, n_steps):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", cell, method, str(n_steps)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{cell} {method} T={n_steps} failed:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def extrapolate(rows, n_steps):
    """Least-squares line through the measured (T, peak) points, evaluated at ``n_steps``."""
    ts = np.array([r["T"] for r in rows], dtype=float)
    fit = {}
    for key in ("peak_mb", "seconds"):
        vals = np.array([r[key] for r in rows])
        slope, icpt = np.polyfit(ts, vals, 1) if len(ts) > 1 else (vals[0] / ts[0], 0.0)
        fit[key] = slope * n_steps + icpt
    return fit


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", nargs="+", default=["rnn_tanh", "lstm", "gru"])
    parser.add_argument("--full-T", nargs="+", type=int, default=[1000, 10000])
    parser.add_argument("--ckpt-T", nargs="+", type=int, default=[1000, 10000, 100000])
    parser.add_argument("--extrapolate-T", type=int, default=100000,
                        help="T at which full BPTT's memory is extrapolated (0: none)")
    parser.add_argument("--out", help="also write the table to this file")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="before each run, wait up to this long for the machine to be idle")
    parser.add_argument("--child", nargs=3, metavar=("CELL", "METHOD", "T"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return

    header = (f"{'cell':<9} {'T':>7} {'B':>3} {'H':>4} {'method':<13} {'peak MB':>9} "
              f"{'RSS MB':>8} {'base MB':>8} {'seconds':>8} {'other':>5}  note")
    lines = [header, "-" * len(header)]

    def emit(line):
        print(line, flush=True)
        lines.append(line)

    print(header + "\n" + "-" * len(header), flush=True)
    data_mb = {}
    for cell in args.cells:
        full_rows = []
        for method, ts in (("full", args.full_T), ("checkpointed", args.ckpt_T)):
            for n_steps in ts:
                if args.wait_quiet:
                    wait_until_quiet(args.wait_quiet)
                r = run_child(cell, method, n_steps)
                data_mb[n_steps] = r["data_mb"]
                if method == "full":
                    full_rows.append(r)
                seg = "" if method == "full" else f"segment {int(np.ceil(np.sqrt(n_steps)))}"
                emit(f"{cell:<9} {n_steps:>7} {B:>3} {H:>4} {method:<13} {r['peak_mb']:>9.1f} "
                     f"{r['rss_mb']:>8.0f} {r['base_mb']:>8.0f} {r['seconds']:>8.2f} "
                     f"{r['other_cpu']:>5.2f}  {seg}")
            if method == "full" and args.extrapolate_T and full_rows and \
                    args.extrapolate_T > max(r["T"] for r in full_rows):
                fit = extrapolate(full_rows, args.extrapolate_T)
                emit(f"{cell:<9} {args.extrapolate_T:>7} {B:>3} {H:>4} {method:<13} "
                     f"{fit['peak_mb']:>9.0f} {'-':>8} {'-':>8} {fit['seconds']:>8.1f} {'-':>5}  "
                     f"extrapolated (linear in T)")
    notes = [
        "",
        f"ManyToMany, 1 layer, I = {I}, K = {K}, BCE, float32, "
        f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
        f"numpy {np.__version__}.",
        "peak MB: tracemalloc peak during the call (what the method allocates beyond x, y);",
        "RSS MB: process peak resident set (interpreter, Numba/LLVM, kernels and data "
        "included); base MB: resident set before the call.",
        "seconds: wall time of the call; other: cores that other processes kept busy meanwhile "
        "(timings with other > 0.2 are disturbed; memory is not).",
        "x + y: " + ", ".join(f"{d:.1f} MB at T = {t}" for t, d in sorted(data_mb.items())) + ".",
    ]
    for line in notes:
        emit(line)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
