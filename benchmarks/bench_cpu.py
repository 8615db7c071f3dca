"""The CPU benchmark suite in one command: rnnlab against PyTorch and JAX over the (T, B, H) grid.

Run from the repository root (PyTorch and JAX are optional: ``pip install -e ".[bench]"``)::

    PYTHONPATH=. python benchmarks/bench_cpu.py                       # the issue's whole grid
    PYTHONPATH=. python benchmarks/bench_cpu.py --T 1000 --B 1 8 --H 16 64 --cells rnn
    PYTHONPATH=. python benchmarks/bench_cpu.py --figure-only         # redraw from the table

For every cell (tanh RNN, LSTM, GRU), dtype (float32, float64) and size (T, B, H) in
{1000, 10000} x {1, 8, 32, 128} x {16, 64, 256, 512} (input size I = H), the forward pass and
forward + BPTT of one layer are timed in this one process by :func:`bench_rnn.run_size`: the
same weights, input and upstream gradient in every implementation, agreement checked first,
the first call (Numba compile or cache load, XLA compile) timed on its own and recorded in the
``*_first_call_ms`` columns, then warm-up calls, then interleaved rounds (each round in another
order of A B C; median of ``--repeats`` >= 7), with NumPy's transparent huge pages off so that
all three fault in the same kind of pages (``--numpy-hugepages``: NumPy's default, see
:func:`bench_rnn.set_numpy_hugepages`). Each configuration's rows are appended to
``results/benchmarks/cpu.parquet`` as soon as it finishes (written atomically), with provenance
(versions, git commit, CPU, threads, ``GOMP_SPINCOUNT``, date): a killed run loses at most the
configuration in progress, and a rerun skips what the table already holds (``--force`` redoes
it). At the end it prints the ratio tables (peer / rnnlab: > 1 means rnnlab is faster) and
draws ``results/benchmarks/cpu.png`` (heat maps of the ratios).

Also measured (``--extras``): the cold start of a second process (import + first forward and
backward of a small model, Numba cache warm), and the machine's float32 / float64 matrix-product
rate through the same BLAS (the yardstick of the GEMM-bound corner B = 128, H = 512).

The whole grid takes many hours on a 2-core machine (the LSTM at T = 10,000, B = 128, H = 512
alone runs for minutes per call); ``--T``, ``--B``, ``--H``, ``--cells``, ``--dtypes`` select
a part. A configuration whose estimated peak memory (:func:`peak_bytes`, all three
implementations in the process) exceeds ``--memory-limit`` (default: 90 % of the memory
available at the start) is skipped with a message before anything is allocated, and listed at
the end: run out of memory, the process would be killed at that configuration on every rerun.
"""

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_rnn  # noqa: E402  (the timing machinery, shared with the single-cell script)

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "results" / "benchmarks" / "cpu.parquet"
KEY = ["cell", "dtype", "op", "T", "B", "H"]

#: Peak bytes of one configuration per T*B*H element and byte of the dtype, with rnnlab, PyTorch
#: and JAX in the process (inputs and their copies held by each, one call's working set at a
#: time). Measured here as the slope of ``ru_maxrss`` between T = 500 and T = 4000 at B = 32,
#: H = 256 (float32: tanh RNN 18.6, LSTM 28.1, GRU 32.5; LSTM float64 31.7), rounded up.
#: rnnlab's own share is about 9.6 for the LSTM.
PEAK_ELEMENT_BYTES = {"rnn": 20, "lstm": 32, "gru": 34}
#: Interpreter, Numba, PyTorch and XLA themselves (measured about 0.8 GB).
PEAK_BASE_BYTES = 1 << 30
#: rnnlab's scratch pool (:mod:`rnnlab._scratch`), kept between its calls while the peers run,
#: per T*B*H element and byte of the dtype: the LSTM's gates, cell states and dz (4 + 1 + 4),
#: the GRU's gates, hn and dz (3 + 1 + 4), the tanh RNN's dz; at most ``SCRATCH_BYTES``.
PEAK_SCRATCH_ELEMENT_BYTES = {"rnn": 1, "lstm": 9, "gru": 8}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--cells", nargs="+", default=list(bench_rnn.CELLS), choices=bench_rnn.CELLS)
    p.add_argument("--dtypes", nargs="+", default=["float32", "float64"],
                   choices=["float32", "float64"])
    p.add_argument("--T", nargs="+", type=int, default=[1000, 10000])
    p.add_argument("--B", nargs="+", type=int, default=[1, 8, 32, 128])
    p.add_argument("--H", nargs="+", type=int, default=[16, 64, 256, 512])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="PyTorch threads")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--no-jax", action="store_true")
    p.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS")
    p.add_argument("--max-other-load", type=float, default=0.1, metavar="CORES")
    p.add_argument("--retries", type=int, default=3)
    p.add_argument("--out", default=str(TABLE), help="the parquet table (appended to)")
    p.add_argument("--force", action="store_true", help="redo configurations already in --out")
    p.add_argument("--extras", action=argparse.BooleanOptionalAction, default=True,
                   help="also time the cold start and the BLAS matrix-product rate")
    p.add_argument("--figure-only", action="store_true", help="only redraw the figure")
    p.add_argument("--numpy-hugepages", action="store_true",
                   help="let NumPy ask for transparent huge pages (its default; off here, see "
                        "bench_rnn.set_numpy_hugepages)")
    p.add_argument("--memory-limit", type=float, default=None, metavar="GB",
                   help="skip configurations estimated to need more (default: 90%% of the "
                        "memory available at the start; 0: no limit)")
    args = p.parse_args(argv)
    if args.repeats < 7 or args.warmup < 2:
        p.error("--repeats must be >= 7 and --warmup >= 2")
    if args.memory_limit is not None and args.memory_limit < 0:
        p.error("--memory-limit must be >= 0 GB")
    return args


def peak_bytes(cell, dtype, size):
    """Estimated peak memory of one configuration (bytes), all three implementations.

    Parameters
    ----------
    cell : {"rnn", "lstm", "gru"}
    dtype : {"float32", "float64"}
    size : tuple of int
        ``(T, B, H)``, input size ``I = H``.
    """
    from rnnlab import _scratch

    T, B, H = size
    elements = T * B * H * np.dtype(dtype).itemsize
    kept = min(_scratch.SCRATCH_BYTES, PEAK_SCRATCH_ELEMENT_BYTES[cell] * elements)
    return PEAK_BASE_BYTES + PEAK_ELEMENT_BYTES[cell] * elements + kept


def available_bytes():
    """Memory the system can give this process now (``MemAvailable``), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def memory_limit(args):
    """The limit in bytes that :func:`run_grid` applies (None: no limit)."""
    if args.memory_limit is not None:
        return args.memory_limit * 1e9 if args.memory_limit > 0 else None
    avail = available_bytes()
    return 0.9 * avail if avail else None


def provenance(args):
    """Columns saying what produced a row."""
    import numba

    import rnnlab

    cols = {"rnnlab_version": rnnlab.__version__,
            "git_commit": bench_rnn.git_revision(rnnlab.__file__).strip(" ()") or "unknown",
            "python": platform.python_version(), "numpy": np.__version__,
            "numba": numba.__version__, "numba_threads": numba.get_num_threads(),
            "cpu": _cpu_model(), "logical_cpus": os.cpu_count(), "host": platform.node(),
            "gomp_spincount": os.environ.get("GOMP_SPINCOUNT", ""),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "torch": "", "jax": "",
            # rows timed before the rounds cycled through every order (bench_rnn.round_orders)
            # say "fixed": there rnnlab always ran right after JAX
            "round_order": "cycled",
            # NumPy's transparent huge pages (bench_rnn.set_numpy_hugepages); older rows: on
            "numpy_hugepages": "on" if args.numpy_hugepages else "off"}
    if not args.no_torch:
        import torch

        cols["torch"] = f"{torch.__version__} ({torch.get_num_threads()} threads)"
    if not args.no_jax:
        import jax

        cols["jax"] = jax.__version__
    return cols


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _write(table, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".parquet.tmp")
    table.to_parquet(tmp, index=False)
    os.replace(tmp, path)  # atomic: a killed run never leaves half a table


def _done(table, cell, dtype, size):
    if table is None or table.empty:
        return False
    T, B, H = size
    sel = ((table.cell == cell) & (table.dtype == dtype) & (table["T"] == T)
           & (table["B"] == B) & (table["H"] == H))
    return bool(sel.any())


def run_grid(args, path):
    table = pd.read_parquet(path) if path.exists() else None
    if table is not None and "round_order" not in table:
        table["round_order"] = "fixed"
    if table is not None and "numpy_hugepages" not in table:
        table["numpy_hugepages"] = "on"
    prov = provenance(args)
    configs = [(c, d, (T, B, H)) for d in args.dtypes for c in args.cells
               for T in sorted(args.T) for B in args.B for H in args.H]
    todo = [cfg for cfg in configs if args.force or not _done(table, *cfg)]
    limit = memory_limit(args)
    too_big = [cfg for cfg in todo if limit is not None and peak_bytes(*cfg) > limit]
    todo = [cfg for cfg in todo if cfg not in too_big]
    print(f"{len(configs)} configurations, {len(configs) - len(todo) - len(too_big)} already in "
          f"{path}; running {len(todo)}", flush=True)
    for cell, dtype, size in too_big:
        print(f"skipped: {cell} {dtype} T={size[0]} B={size[1]} H={size[2]} needs about "
              f"{peak_bytes(cell, dtype, size) / 1e9:.0f} GB, over the {limit / 1e9:.1f} GB "
              f"limit (--memory-limit)", flush=True)
    for k, (cell, dtype, size) in enumerate(todo, 1):
        ns = argparse.Namespace(cell=cell, dtype=dtype, input_size=None, seed=0,
                                repeats=args.repeats, warmup=args.warmup,
                                no_torch=args.no_torch, no_jax=args.no_jax, no_forward=False,
                                wait_quiet=args.wait_quiet, max_other_load=args.max_other_load,
                                retries=args.retries)
        names = tuple(n for n in bench_rnn.FRAMEWORKS if not (n == "torch" and args.no_torch)
                      and not (n == "jax" and args.no_jax))
        print(f"[{k}/{len(todo)}] {cell} {dtype} T={size[0]} B={size[1]} H={size[2]}",
              flush=True)
        t0 = time.perf_counter()
        first, results, other = bench_rnn.run_size(size, ns)
        rows = [{**bench_rnn.make_row(cell, size, size[2], op, times, other[op], first, names),
                 "dtype": dtype, **prov} for op, times in results.items()]
        for row in rows:
            # multiply-adds of the products (input size I = H): forward 2 (projection and
            # recurrence), backward 4 (recurrence, input, two weight gradients)
            gates = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
            T, B, H = size
            row["macs"] = (2 if row["op"] == "fwd" else 6) * T * B * gates * H * H
            row["rnnlab_gmacs_per_s"] = row["macs"] / row["rnnlab_ms"] / 1e6
        new = pd.DataFrame(rows)
        if table is not None and not table.empty:
            T, B, H = size
            stale = ((table.cell == cell) & (table.dtype == dtype) & (table["T"] == T)
                     & (table["B"] == B) & (table["H"] == H))
            table = pd.concat([table[~stale], new], ignore_index=True)
        else:
            table = new
        _write(table, path)
        fb = new[new.op == "fwd+bwd"].iloc[0]
        ratios = ", ".join(f"{n}/rnnlab {fb[n + '_over_rnnlab']:.2f}" for n in names[1:])
        print(f"    fwd+bwd rnnlab {fb['rnnlab_ms']:.1f} ms; {ratios}  "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return table, too_big


def print_tables(table):
    peers = [p for p in ("torch", "jax") if f"{p}_over_rnnlab" in table]
    for (cell, dtype, op), part in table.groupby(["cell", "dtype", "op"], sort=False):
        print(f"\n{cell} {dtype} {op}: median ms and peer / rnnlab (> 1: rnnlab faster)")
        cols = ["T", "B", "H", "rnnlab_ms", "rnnlab_first_call_ms"]
        cols += [c for p in peers for c in (f"{p}_ms", f"{p}_over_rnnlab")]
        print(part.sort_values(["T", "B", "H"])[cols].to_string(
            index=False, float_format=lambda v: f"{v:.2f}"))


def draw(table, path):
    """Heat maps of peer / rnnlab for forward + BPTT: a row per (cell, dtype), a column per
    (peer, T); B down, H across."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    fb = table[table.op == "fwd+bwd"]
    peers = [p for p in ("torch", "jax") if f"{p}_over_rnnlab" in fb and
             fb[f"{p}_over_rnnlab"].notna().any()]
    panels_r = list(fb.groupby(["cell", "dtype"], sort=False).groups)
    panels_c = [(p, T) for p in peers for T in sorted(fb["T"].unique())]
    if not panels_r or not panels_c:
        return None
    fig, axes = plt.subplots(len(panels_r), len(panels_c), squeeze=False,
                             figsize=(3.2 * len(panels_c), 2.6 * len(panels_r)))
    norm = LogNorm(vmin=0.25, vmax=4)
    for i, (cell, dtype) in enumerate(panels_r):
        for j, (peer, T) in enumerate(panels_c):
            ax = axes[i, j]
            part = fb[(fb.cell == cell) & (fb.dtype == dtype) & (fb["T"] == T)]
            grid = part.pivot_table(index="B", columns="H", values=f"{peer}_over_rnnlab")
            if grid.empty:
                ax.axis("off")
                continue
            ax.imshow(grid.values, cmap="RdBu", norm=norm, aspect="auto")
            ax.set_xticks(range(grid.shape[1]), grid.columns)
            ax.set_yticks(range(grid.shape[0]), grid.index)
            for (r, c), val in np.ndenumerate(grid.values):
                if np.isfinite(val):
                    dark = abs(np.log(val)) > np.log(2.2)  # deep colours: white text
                    ax.text(c, r, f"{val:.2g}", ha="center", va="center", fontsize=8,
                            color="white" if dark else "black")
            ax.set_title(f"{cell} {dtype}: {peer} / rnnlab, T={T}", fontsize=9)
            ax.set_xlabel("H", fontsize=8)
            ax.set_ylabel("B", fontsize=8)
    fig.suptitle("forward + BPTT time of the peer over rnnlab's (> 1, blue: rnnlab faster)",
                 fontsize=10)
    fig.tight_layout()
    out = path.with_suffix(".png")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def cold_start(repeats=5):
    """Seconds from a new process's start to the first forward + backward of a small RNN (the
    Numba cache warmed by a first process); the median of ``repeats``."""
    code = ("import numpy as np, rnnlab; net = rnnlab.RNN(1, 8, seed=0); "
            "x = np.zeros((10, 1, 1), np.float32); net(x); net.backward(x)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    times = []
    for k in range(repeats + 1):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, env=env)
        if k:  # the first run fills the cache
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def gemm_rate(dtype, n=2048, repeats=5):
    """The machine's matrix-product rate (multiply-adds per second) through NumPy's BLAS."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return n ** 3 / float(np.median(times))


def main(argv=None):
    args = parse_args(argv)
    path = Path(args.out)
    if args.figure_only:
        table = pd.read_parquet(path)
    else:
        import pyarrow  # noqa: F401  (fail now, not after the first hour of timings)

        bench_rnn.import_rnnlab_first()
        before = bench_rnn.set_numpy_hugepages(args.numpy_hugepages)

        if not args.no_jax and "float64" in args.dtypes:
            import jax

            jax.config.update("jax_enable_x64", True)  # float32 arrays stay float32
        if not args.no_torch:
            import torch

            torch.set_num_threads(args.threads)
        try:
            table, too_big = run_grid(args, path)
        finally:
            if before is not None:  # main() may be called from other code (the tests)
                bench_rnn.set_numpy_hugepages(before)
        if too_big:
            print(f"\n{len(too_big)} configurations skipped for memory: " + "; ".join(
                f"{c} {d} {s}" for c, d, s in too_big))
        if table is None:
            print("nothing to do")
            return 0
    print_tables(table)
    fig = draw(table, path)
    if fig:
        print(f"\nfigure: {fig}")
    if args.extras and not args.figure_only:
        print(f"\ncold start (second process, cached): {cold_start():.2f} s to the first "
              f"forward + backward of RNN(1, 8)")
        for dtype in (np.float32, np.float64):
            print(f"BLAS {np.dtype(dtype).name} matrix product (2048^3): "
                  f"{gemm_rate(dtype) / 1e9:.1f} G multiply-adds/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
