"""GPU benchmark: rnnlab's persistent CUDA kernels against PyTorch (cuDNN), in one process.

Run on a machine with a CUDA GPU::

    PYTHONPATH=. python benchmarks/bench_cuda.py [--cells rnn_tanh lstm gru] [--T 1000 10000]
        [--B 1 8 64] [--H 64 128 256 512] [--dtype float32] [--repeats 5]
        [--out results/benchmarks/cuda_<device>.csv]

For every (cell, T, B, H): microseconds per time step of one layer's forward pass and of
forward + BPTT, for rnnlab (device arrays in and out: ``to_host=False``, so no host transfers are
timed; the kernels are compiled by a first untimed call) and for ``torch.nn.RNN/LSTM/GRU`` on the
same GPU (cuDNN; input size = H, one layer, ``batch_first=False``) when PyTorch with CUDA is
installed. Each time is the median of ``--repeats`` calls, each call bracketed by device
synchronisation. Vanilla layers whose W_hh does not fit in shared memory are timed with both
algorithms (one block per sequence, cooperative grid). The table printed at the end has the
ratios ``torch / rnnlab`` (> 1: rnnlab is faster); the CSV keeps every number with the device's
name.

``--smoke`` runs a tiny configuration (works in Numba's simulator, ``NUMBA_ENABLE_CUDASIM=1``)
so that the script is tested without a GPU; its times mean nothing.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

CELLS = ("rnn_tanh", "lstm", "gru")


def _sync():
    from numba import cuda

    cuda.synchronize()


def _median_seconds(fn, repeats, sync):
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def rnnlab_case(cell, T, B, H, dtype, repeats, algorithm="auto"):
    """(forward seconds, forward+backward seconds) of rnnlab's CUDA kernels."""
    from numba import cuda

    from rnnlab.kernels.cuda import gru, lstm, vanilla

    rng = np.random.default_rng(0)
    gates = {"rnn_tanh": 1, "lstm": 4, "gru": 3}[cell]
    s = 1.0 / np.sqrt(H)

    def dev(*shape, scale=1.0):
        return cuda.to_device((scale * rng.uniform(-1, 1, shape)).astype(dtype))

    x, h0, c0 = dev(T, B, H), dev(B, H, scale=0.1), dev(B, H, scale=0.1)
    w_ih, w_hh = dev(gates * H, H, scale=s), dev(gates * H, H, scale=s)
    b_ih, b_hh = dev(gates * H, scale=s), dev(gates * H, scale=s)
    d_out, dh_n = dev(T, B, H), dev(B, H)
    if cell == "rnn_tanh":
        w_tr, b_tr = dev(0, H, H), dev(0, H)

        def fwd():
            return vanilla.rnn_layer_forward(x, w_ih, w_hh, b_ih, w_tr, b_tr, h0, 0,
                                             to_host=False, algorithm=algorithm)

        def both():
            st = fwd()
            return vanilla.rnn_layer_backward(x, w_ih, w_hh, w_tr, h0, st, d_out, dh_n, 0,
                                              to_host=False, algorithm=algorithm)
    elif cell == "lstm":
        def fwd():
            return lstm.lstm_layer_forward(x, w_ih, w_hh, b_ih, h0, c0, to_host=False)

        def both():
            st = fwd()
            return lstm.lstm_layer_backward(x, w_ih, w_hh, h0, c0, st, d_out, dh_n, dh_n,
                                            to_host=False)
    else:
        def fwd():
            return gru.gru_layer_forward(x, w_ih, w_hh, b_ih, b_hh, h0, to_host=False)

        def both():
            st = fwd()
            return gru.gru_layer_backward(x, w_ih, w_hh, h0, st, d_out, dh_n, to_host=False)
    both()  # compile (or load) every kernel
    _sync()
    return _median_seconds(fwd, repeats, _sync), _median_seconds(both, repeats, _sync)


def torch_case(cell, T, B, H, dtype, repeats):
    """(forward seconds, forward+backward seconds) of torch.nn on cuDNN, or None."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    torch.backends.cudnn.enabled = True
    tdt = torch.float32 if dtype == np.float32 else torch.float64
    make = {"rnn_tanh": lambda: torch.nn.RNN(H, H, nonlinearity="tanh"),
            "lstm": lambda: torch.nn.LSTM(H, H), "gru": lambda: torch.nn.GRU(H, H)}[cell]
    net = make().to(device="cuda", dtype=tdt)
    x = torch.randn(T, B, H, device="cuda", dtype=tdt, requires_grad=True)
    d_out = torch.randn(T, B, H, device="cuda", dtype=tdt)

    def fwd():
        with torch.no_grad():
            net(x)

    def both():
        out, _ = net(x)
        out.backward(d_out)

    both()
    sync = torch.cuda.synchronize
    return _median_seconds(fwd, repeats, sync), _median_seconds(both, repeats, sync)


def device_name():
    from numba import cuda
    from numba.core import config

    if getattr(config, "ENABLE_CUDASIM", False):
        return "simulator"
    name = cuda.get_current_device().name
    return name.decode() if isinstance(name, bytes) else str(name)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", nargs="+", default=list(CELLS), choices=CELLS)
    parser.add_argument("--T", nargs="+", type=int, default=[1000, 10000])
    parser.add_argument("--B", nargs="+", type=int, default=[1, 8, 64])
    parser.add_argument("--H", nargs="+", type=int, default=[64, 128, 256, 512])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None, help="CSV path (default: "
                        "results/benchmarks/cuda_<device>.csv; '-' for none)")
    parser.add_argument("--smoke", action="store_true",
                        help="one tiny configuration per cell (runs in the simulator)")
    args = parser.parse_args(argv)

    from rnnlab.kernels.cuda import is_available

    if not is_available():
        print("bench_cuda: no CUDA GPU here (numba.cuda.is_available() is False); nothing to "
              "measure", file=sys.stderr)
        return 2
    import pandas as pd

    from rnnlab.kernels.cuda import vanilla

    dtype = np.dtype(args.dtype).type
    grid = ([(c, 3, 1, 4) for c in args.cells] if args.smoke else
            [(c, T, B, H) for c in args.cells for T in args.T for B in args.B for H in args.H])
    repeats = 1 if args.smoke else args.repeats
    device = device_name()
    rows = []
    for cell, T, B, H in grid:
        algorithms = ["auto"]
        if cell == "rnn_tanh" and not vanilla.weights_fit_in_shared(H, dtype):
            algorithms = ["block", "grid"]
        ref = None if args.smoke else torch_case(cell, T, B, H, dtype, repeats)
        for algorithm in algorithms:
            fwd, both = rnnlab_case(cell, T, B, H, dtype, repeats, algorithm)
            if algorithm == "auto" and cell == "rnn_tanh":
                algorithm = vanilla.choose_algorithm("auto", H, B, dtype)
            row = {"device": device, "cell": cell, "T": T, "B": B, "H": H, "dtype": args.dtype,
                   "algorithm": algorithm if cell == "rnn_tanh" else "block",
                   "rnnlab_fwd_us_per_step": 1e6 * fwd / T,
                   "rnnlab_fwd_bptt_us_per_step": 1e6 * both / T,
                   "torch_fwd_us_per_step": np.nan, "torch_fwd_bptt_us_per_step": np.nan}
            if ref is not None:
                row["torch_fwd_us_per_step"] = 1e6 * ref[0] / T
                row["torch_fwd_bptt_us_per_step"] = 1e6 * ref[1] / T
            row["fwd_ratio"] = row["torch_fwd_us_per_step"] / row["rnnlab_fwd_us_per_step"]
            row["fwd_bptt_ratio"] = (row["torch_fwd_bptt_us_per_step"]
                                     / row["rnnlab_fwd_bptt_us_per_step"])
            rows.append(row)
            print(f"{cell:8s} T={T:6d} B={B:3d} H={H:4d} {row['algorithm']:5s} "
                  f"fwd {row['rnnlab_fwd_us_per_step']:8.2f} us/step "
                  f"(torch {row['torch_fwd_us_per_step']:8.2f})  fwd+bptt "
                  f"{row['rnnlab_fwd_bptt_us_per_step']:8.2f} "
                  f"(torch {row['torch_fwd_bptt_us_per_step']:8.2f})", flush=True)
    table = pd.DataFrame(rows)
    print()
    print(f"device: {device}; ratios are torch / rnnlab (> 1: rnnlab faster)")
    print(table[["cell", "T", "B", "H", "algorithm", "rnnlab_fwd_us_per_step", "fwd_ratio",
                 "rnnlab_fwd_bptt_us_per_step", "fwd_bptt_ratio"]].to_string(
        index=False, float_format=lambda v: f"{v:.2f}"))
    if args.out != "-" and not args.smoke:
        out = Path(args.out or f"results/benchmarks/cuda_{device.replace(' ', '_')}.csv")
        out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(out, index=False)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
