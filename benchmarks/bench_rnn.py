"""Benchmark rnnlab's recurrent layers (forward + BPTT) against PyTorch and JAX on the CPU.

What it measures
----------------
``--cell`` picks the layer: ``rnn`` (tanh RNN, the default), ``lstm`` or ``gru``. For each size
``(T, B, H)`` (sequence length, batch, hidden units; input size ``I = H`` unless
``--input-size`` is given) one single-layer network of that cell is built with rnnlab, and the
*same* weights are copied into ``torch.nn.RNN`` / ``torch.nn.LSTM`` / ``torch.nn.GRU`` and into a
JAX ``lax.scan`` implementation of the same cell in PyTorch's conventions (LSTM gates i, f, g, o;
GRU gates r, z, n with ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))`` and
``h' = (1 - z) * n + z * h``). All three get the same ``x`` (T, B, I) and ``d_output``
(T, B, H); initial states are zeros. Two operations are timed:

* **fwd+bwd**: the forward pass plus backpropagation through time for the loss
  ``L = sum(output * d_output)``, producing the gradients of every parameter *and* of the input.

  - rnnlab: ``net.backward(x, d_output)``
  - PyTorch: ``out, _ = net(x)`` then ``(out * d_output).sum().backward()`` (``x`` requires grad;
    gradients are reset before every call)
  - JAX: ``jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x, d_output)``, blocked until ready

* **fwd**: the forward pass only (``net(x)``; ``net(x)`` under ``torch.no_grad()``; a jitted
  ``lax.scan`` returning the outputs).

Before timing, every size is checked once: the outputs and ``dL/dW_hh`` (and ``dL/dx``) of
PyTorch and JAX must match rnnlab's to a dtype-appropriate tolerance; the script prints the
relative errors and stops with an error if they do not.

Timing happens in one process. The first call of each implementation is timed on its own (it
includes Numba compilation or cache loading for rnnlab, tracing + XLA compilation for JAX), then
each runs ``--warmup`` untimed calls, then ``--repeats`` timed rounds in which the implementations
are called in turn so that drifts in machine load hit all of them alike; the rounds cycle
through every order (A B C, A C B, B A C, ...: :func:`round_orders`), so that no implementation
always runs right after the same other one. The
tables report the median wall time (``time.perf_counter``) in milliseconds and the ratios
``torch / rnnlab`` and ``jax / rnnlab``: a ratio above 1 means rnnlab is faster.

Threads: PyTorch is set to ``--threads`` intra-op threads (default: the machine's core count);
rnnlab runs its recurrence on Numba's thread pool (``NUMBA_NUM_THREADS``, default the core count);
JAX/XLA uses its own CPU thread pool.

Shared machines: every timed block also reports the CPU that *other* processes used meanwhile
("other CPU", in cores) and the spread of the timings (IQR / median). Multi-threaded timings on a
small machine are very sensitive to outside load; ``--wait-quiet SECONDS`` waits for an idle
machine before each block and redoes blocks that were disturbed anyway.

How to run
----------
From the repository root, with rnnlab importable and torch, jax, numba, numpy, threadpoolctl
installed::

    PYTHONPATH=. python benchmarks/bench_rnn.py                      # default sizes
    PYTHONPATH=. python benchmarks/bench_rnn.py --sizes 1000,32,64 --repeats 15 --out r.csv
    PYTHONPATH=. python benchmarks/bench_rnn.py --no-jax --dtype float64
    PYTHONPATH=. python benchmarks/bench_rnn.py --fresh-numba-cache  # time a cold Numba compile
    PYTHONPATH=. python benchmarks/bench_rnn.py --wait-quiet 300     # on a shared machine
    PYTHONPATH=. python benchmarks/bench_rnn.py --cell lstm          # or --cell gru

rnnlab's kernels are compiled by Numba on the first call and cached on disk, so the first call of
a session is either a compile (cold cache) or a cache load (warm cache). ``--fresh-numba-cache``
points Numba at an empty temporary cache directory to measure the cold compile.
"""

import argparse
import atexit
import csv
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

DEFAULT_SIZES = ((1000, 1, 64), (1000, 32, 64), (10000, 32, 64), (1000, 32, 256))
FRAMEWORKS = ("rnnlab", "torch", "jax")
CELLS = ("rnn", "lstm", "gru")
#: Largest allowed relative error ``max|a - b| / max|b|`` between two implementations.
TOLERANCE = {"float32": 1e-4, "float64": 1e-10}


# ------------------------------------------------------------------------------------ arguments
def parse_size(text):
    """Parse ``"T,B,H"`` (or ``"TxBxH"``) into a tuple of three positive ints.

    Parameters
    ----------
    text : str
        The size as given on the command line.

    Returns
    -------
    tuple of int
        ``(T, B, H)``.
    """
    parts = text.replace("x", ",").split(",")
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        size = ()
    if len(size) != 3 or min(size) < 1:
        raise argparse.ArgumentTypeError(f"size must be T,B,H with positive ints, got {text!r}")
    return size


def parse_args(argv=None):
    """Parse the command line.

    Parameters
    ----------
    argv : list of str, optional
        Arguments (``sys.argv[1:]`` if omitted).

    Returns
    -------
    argparse.Namespace
    """
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--cell", choices=CELLS, default="rnn",
                   help="recurrent cell: tanh RNN, LSTM or GRU (single layer, PyTorch layout)")
    p.add_argument("--sizes", type=parse_size, nargs="+", default=list(DEFAULT_SIZES),
                   metavar="T,B,H", help="sizes to run (sequence length, batch, hidden)")
    p.add_argument("--input-size", type=int, default=None,
                   help="input features I (None: I = H for every size)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--repeats", type=int, default=7, help="timed rounds (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls after the first call")
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="PyTorch intra-op threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    p.add_argument("--no-jax", action="store_true", help="skip JAX")
    p.add_argument("--no-forward", action="store_true", help="skip the forward-only table")
    p.add_argument("--fresh-numba-cache", action="store_true",
                   help="use an empty temporary Numba cache, so the first call is a cold compile")
    p.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                   help="before each timed block, wait up to this long for other processes to "
                        "leave the CPUs idle (for shared machines)")
    p.add_argument("--max-other-load", type=float, default=0.1, metavar="CORES",
                   help="with --wait-quiet, redo a timed block during which other processes "
                        "used more than this many cores")
    p.add_argument("--retries", type=int, default=3,
                   help="with --wait-quiet, how many times a disturbed block may be redone")
    p.add_argument("--numpy-hugepages", action="store_true",
                   help="let NumPy ask for transparent huge pages (its default; off here, see "
                        "set_numpy_hugepages)")
    p.add_argument("--out", default=None, help="write the results as CSV to this path")
    p.add_argument("--append", action="store_true",
                   help="append the rows to --out (header written only if the file is new or "
                        "empty; an existing header must match)")
    args = p.parse_args(argv)
    if args.repeats < 7:
        p.error("--repeats must be at least 7")
    if args.warmup < 2:
        p.error("--warmup must be at least 2")
    if args.input_size is not None and args.input_size < 1:
        p.error("--input-size must be positive")
    return args


# ------------------------------------------------------------------------------- implementations
class RnnlabImpl:
    """rnnlab's ``RNN``, ``LSTM`` or ``GRU`` layer; the reference the others are compared with.

    Parameters
    ----------
    cell : {"rnn", "lstm", "gru"}
        Recurrent cell.
    n_in, hidden : int
        Input size and hidden units.
    dtype : {"float32", "float64"}
        Precision.
    seed : int
        Initialisation seed; the other implementations copy these weights.
    """

    name = "rnnlab"

    def __init__(self, cell, n_in, hidden, dtype, seed):
        import rnnlab

        if cell == "rnn":
            self.net = rnnlab.RNN(n_in, hidden, nonlinearity="tanh", dtype=dtype, seed=seed)
        else:
            layer = rnnlab.LSTM if cell == "lstm" else rnnlab.GRU
            self.net = layer(n_in, hidden, dtype=dtype, seed=seed)

    def state_dict(self):
        """The weights, under PyTorch's names."""
        return self.net.state_dict()

    def setup(self, x, d_output):
        """Keep the inputs (NumPy arrays) for the timed calls."""
        self.x, self.d_output = x, d_output

    def fwd_bwd(self):
        """Forward + BPTT; returns the gradient dict."""
        return self.net.backward(self.x, self.d_output)

    def fwd(self):
        """Forward pass; returns the output."""
        return self.net(self.x)[0]

    def check_values(self):
        """``(output, dW_hh, dx)`` as NumPy arrays."""
        g = self.fwd_bwd()
        return self.fwd(), g["weight_hh_l0"], g["input"]


class TorchImpl:
    """``torch.nn.RNN``, ``torch.nn.LSTM`` or ``torch.nn.GRU`` with autograd.

    Parameters
    ----------
    cell : {"rnn", "lstm", "gru"}
        Recurrent cell.
    n_in, hidden : int
        Input size and hidden units.
    dtype : {"float32", "float64"}
        Precision.
    state_dict : dict of str to ndarray
        Weights to load (rnnlab's).
    """

    name = "torch"

    def __init__(self, cell, n_in, hidden, dtype, state_dict):
        import torch

        self.torch = torch
        self.tdtype = torch.float32 if dtype == "float32" else torch.float64
        if cell == "rnn":
            net = torch.nn.RNN(n_in, hidden, nonlinearity="tanh")
        else:
            net = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(n_in, hidden)
        self.net = net.to(self.tdtype)
        self.net.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state_dict.items()})

    def setup(self, x, d_output):
        """Wrap the inputs as tensors; ``x`` requires grad so that dL/dx is computed."""
        self.x = self.torch.from_numpy(x.copy()).requires_grad_(True)
        self.d_output = self.torch.from_numpy(d_output.copy())

    def fwd_bwd(self):
        """Forward + backward; gradients are reset first so nothing accumulates."""
        self.net.zero_grad(set_to_none=True)
        self.x.grad = None
        out, _ = self.net(self.x)
        (out * self.d_output).sum().backward()
        return self.x.grad

    def fwd(self):
        """Forward pass without building the autograd graph."""
        with self.torch.no_grad():
            return self.net(self.x)[0]

    def check_values(self):
        """``(output, dW_hh, dx)`` as NumPy arrays."""
        self.fwd_bwd()
        return (self.fwd().numpy(), self.net.weight_hh_l0.grad.numpy().copy(),
                self.x.grad.numpy().copy())


class JaxImpl:
    """A tanh RNN, LSTM or GRU written with ``jax.lax.scan``, differentiated with ``jax.grad``.

    Both the gradient and the forward pass are jitted. The cells follow PyTorch's conventions
    (gate blocks stacked i, f, g, o for the LSTM and r, z, n for the GRU).

    Parameters
    ----------
    cell : {"rnn", "lstm", "gru"}
        Recurrent cell.
    n_in, hidden : int
        Input size and hidden units.
    dtype : {"float32", "float64"}
        Precision.
    state_dict : dict of str to ndarray
        Weights to load (rnnlab's, PyTorch names).
    """

    name = "jax"

    def __init__(self, cell, n_in, hidden, dtype, state_dict):
        import jax
        import jax.numpy as jnp

        self.jax, self.jnp = jax, jnp
        self.cell, self.hidden = cell, hidden
        self.params = {k.removesuffix("_l0"): jnp.asarray(v) for k, v in state_dict.items()}
        self._fwd = jax.jit(self.forward)
        self._grad = jax.jit(jax.grad(self.loss, argnums=(0, 1)))

    def forward(self, params, x):
        """All hidden states ``(T, B, H)`` from zero initial states.

        * rnn: ``h = tanh(x_t W_ih^T + b_ih + h W_hh^T + b_hh)``
        * lstm: ``[i, f, g, o] = [σ, σ, tanh, σ](x_t W_ih^T + b_ih + h W_hh^T + b_hh)``,
          ``c = f * c + i * g``, ``h = o * tanh(c)``
        * gru: ``r, z = σ(...)``, ``n = tanh(x_t W_in^T + b_in + r * (h W_hn^T + b_hn))``,
          ``h = (1 - z) * n + z * h``
        """
        jax, jnp = self.jax, self.jnp
        w_ih, w_hh = params["weight_ih"], params["weight_hh"]
        b_ih, b_hh = params["bias_ih"], params["bias_hh"]
        H = self.hidden
        h0 = jnp.zeros((x.shape[1], H), dtype=x.dtype)

        if self.cell == "rnn":
            def step(h, x_t):
                h = jnp.tanh(x_t @ w_ih.T + b_ih + h @ w_hh.T + b_hh)
                return h, h

            carry = h0
        elif self.cell == "lstm":
            def step(hc, x_t):
                h, c = hc
                gates = x_t @ w_ih.T + b_ih + h @ w_hh.T + b_hh
                i = jax.nn.sigmoid(gates[:, :H])
                f = jax.nn.sigmoid(gates[:, H:2 * H])
                g = jnp.tanh(gates[:, 2 * H:3 * H])
                o = jax.nn.sigmoid(gates[:, 3 * H:])
                c = f * c + i * g
                h = o * jnp.tanh(c)
                return (h, c), h

            carry = (h0, h0)
        else:
            def step(h, x_t):
                gi = x_t @ w_ih.T + b_ih
                gh = h @ w_hh.T + b_hh
                r = jax.nn.sigmoid(gi[:, :H] + gh[:, :H])
                z = jax.nn.sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])
                n = jnp.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
                h = (1 - z) * n + z * h
                return h, h

            carry = h0
        _, out = jax.lax.scan(step, carry, x)
        return out

    def loss(self, params, x, d_output):
        """``sum(output * d_output)``."""
        return self.jnp.sum(self.forward(params, x) * d_output)

    def setup(self, x, d_output):
        """Move the inputs to JAX's device once, outside the timings."""
        self.x = self.jax.device_put(x)
        self.d_output = self.jax.device_put(d_output)

    def fwd_bwd(self):
        """Gradients with respect to the parameters and ``x``, blocked until computed."""
        return self.jax.block_until_ready(self._grad(self.params, self.x, self.d_output))

    def fwd(self):
        """Forward pass, blocked until computed."""
        return self.jax.block_until_ready(self._fwd(self.params, self.x))

    def check_values(self):
        """``(output, dW_hh, dx)`` as NumPy arrays."""
        import numpy as np

        d_params, d_x = self.fwd_bwd()
        return np.asarray(self.fwd()), np.asarray(d_params["weight_hh"]), np.asarray(d_x)


# ------------------------------------------------------------------------------------- running
class OtherLoad:
    """CPU time used by *other* processes while a block runs, in cores (Linux ``/proc`` only).

    On a shared machine this tells whether a timing was contended: 0 means the machine was ours,
    1 means another process kept a whole core busy on average. It is system-wide busy time
    (``/proc/stat``) minus this process's own user + system time (``/proc/self/stat``).
    """

    def __init__(self):
        self.cores = float("nan")

    @staticmethod
    def _read():
        try:
            with open("/proc/stat") as f:
                # user nice system idle iowait irq softirq steal (guest time is inside user)
                cpu = [int(v) for v in f.readline().split()[1:9]]
            with open("/proc/self/stat") as f:
                own = f.read().rsplit(")", 1)[1].split()
        except (OSError, ValueError, IndexError):
            return None
        busy = sum(cpu) - cpu[3] - cpu[4]
        return time.perf_counter(), busy, int(own[11]) + int(own[12])  # utime + stime

    def __enter__(self):
        self._start = self._read()
        return self

    def __exit__(self, *exc):
        end = self._read()
        if self._start is not None and end is not None:
            hz = os.sysconf("SC_CLK_TCK")
            wall = end[0] - self._start[0]
            other = (end[1] - self._start[1]) - (end[2] - self._start[2])
            self.cores = max(other, 0) / hz / wall
        return False


def wait_until_quiet(max_wait, threshold=0.1, window=1.0):
    """Sleep until other processes use less than ``threshold`` cores over ``window`` seconds.

    Parameters
    ----------
    max_wait : float
        Give up after this many seconds (0: return at once).
    threshold : float, optional
        Other processes' load, in cores, regarded as quiet.
    window : float, optional
        Length of one measurement, in seconds.

    Returns
    -------
    float
        Seconds waited.
    """
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < max_wait:
        with OtherLoad() as load:
            time.sleep(window)
        if not load.cores > threshold:  # also stops on NaN (no /proc)
            break
    return time.perf_counter() - t0


def rel_err(a, b):
    """``max|a - b| / max|b|``, computed in float64."""
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), np.finfo(np.float64).tiny))


def check_agreement(impls, dtype):
    """Compare every implementation's output, dW_hh and dx with rnnlab's.

    Parameters
    ----------
    impls : list
        Implementations, rnnlab first; their inputs already set.
    dtype : str
        ``"float32"`` or ``"float64"`` (selects the tolerance).

    Returns
    -------
    list of str
        One line per compared implementation.

    Raises
    ------
    RuntimeError
        If a relative error exceeds the tolerance.
    """
    tol = TOLERANCE[dtype]
    ref = impls[0].check_values()
    lines, failures = [], []
    for impl in impls[1:]:
        errs = [rel_err(v, r) for v, r in zip(impl.check_values(), ref, strict=True)]
        ok = max(errs) <= tol
        lines.append(f"    {impl.name:>6} vs rnnlab: output {errs[0]:.1e}, dW_hh {errs[1]:.1e}, "
                     f"dx {errs[2]:.1e} (max|diff|/max|ref|, tol {tol:.0e}) "
                     f"{'OK' if ok else 'MISMATCH'}")
        if not ok:
            failures.append(impl.name)
    if failures:
        raise RuntimeError("implementations disagree with rnnlab: " + ", ".join(failures)
                           + "\n" + "\n".join(lines))
    return lines


def time_call(fn):
    """Wall time of one call of ``fn``, in milliseconds."""
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def round_orders(names):
    """Every order of ``names``, the first being the given one.

    The timed rounds cycle through these, so that each implementation follows each of the
    others about equally often. With a fixed order (A B C A B C ...) rnnlab always ran right
    after JAX, and paid for the state JAX leaves the machine in: tanh RNN float64
    (1000, 128, 256), fwd+BPTT, on a 2-core Xeon VM, rnnlab took 1.0 s right after PyTorch
    and 1.4-1.55 s right after JAX. The cost was not threads left spinning (no thread of the
    process used CPU after JAX returned) but fresh memory: JAX and PyTorch fault in 1.0-1.7 GB
    of pages a call, and what the next call's large arrays cost to fault in (NumPy asks for
    transparent huge pages) depended on who had just freed what.

    Parameters
    ----------
    names : sequence of str
        The implementations, in the order given.

    Returns
    -------
    list of tuple of str
        All ``len(names)!`` orders, ``itertools.permutations`` order.
    """
    import itertools

    return list(itertools.permutations(names))


def time_interleaved(fns, warmup, repeats):
    """Time several callables in turn, in a different order each round.

    Round ``k`` calls them in the order ``round_orders(fns)[k % n!]`` (A B C, A C B, B A C,
    ...), so no implementation always runs right after the same other one.

    Parameters
    ----------
    fns : dict of str to callable
        What to time, by name.
    warmup : int
        Untimed calls of each, first (the same cycle of orders).
    repeats : int
        Timed rounds.

    Returns
    -------
    dict of str to list of float
        Every timed call's wall time in milliseconds, by name, in the order of the rounds.
    """
    orders = round_orders(list(fns))
    for k in range(warmup):
        for name in orders[k % len(orders)]:
            fns[name]()
    times = {name: [] for name in fns}
    for k in range(repeats):
        for name in orders[(warmup + k) % len(orders)]:
            times[name].append(time_call(fns[name]))
    return times


def summarize(times):
    """Median and relative interquartile range (IQR / median) of a list of timings."""
    q = statistics.quantiles(times, n=4, method="inclusive")
    med = statistics.median(times)
    return med, (q[2] - q[0]) / med


def run_size(size, args):
    """Build, check and time all implementations for one size, printing progress.

    Parameters
    ----------
    size : tuple of int
        ``(T, B, H)``.
    args : argparse.Namespace
        The command line.

    Returns
    -------
    first : dict of str to float
        First-call time (ms) of fwd+bwd per implementation.
    results : dict of str to dict
        ``{"fwd+bwd": times, "fwd": times}`` as returned by :func:`time_interleaved`.
    other_load : dict of str to float
        ``{"fwd+bwd": cores, "fwd": cores}``: CPU used by other processes while timing
        (:class:`OtherLoad`).
    """
    import numpy as np

    n_steps, batch, hidden = size
    n_in = args.input_size or hidden
    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal((n_steps, batch, n_in)).astype(args.dtype)
    d_output = rng.standard_normal((n_steps, batch, hidden)).astype(args.dtype)

    impls = [RnnlabImpl(args.cell, n_in, hidden, args.dtype, args.seed)]
    state = impls[0].state_dict()
    if not args.no_torch:
        impls.append(TorchImpl(args.cell, n_in, hidden, args.dtype, state))
    if not args.no_jax:
        impls.append(JaxImpl(args.cell, n_in, hidden, args.dtype, state))
    first = {}
    wait_until_quiet(args.wait_quiet)
    for impl in impls:
        impl.setup(x, d_output)
        first[impl.name] = time_call(impl.fwd_bwd)
    print("    first call fwd+bwd: " + ", ".join(f"{n} {t:.0f} ms" for n, t in first.items()),
          flush=True)
    if len(impls) > 1:
        print("\n".join(check_agreement(impls, args.dtype)), flush=True)
    ops = {"fwd+bwd": {i.name: i.fwd_bwd for i in impls}}
    if not args.no_forward:
        ops["fwd"] = {i.name: i.fwd for i in impls}
    results, other_load = {}, {}
    for op, fns in ops.items():
        # on a shared machine (--wait-quiet), a block that other processes disturbed is redone
        # up to --retries times; the least disturbed attempt is kept
        attempts = 1 + (args.retries if args.wait_quiet > 0 else 0)
        for attempt in range(attempts):
            waited = wait_until_quiet(args.wait_quiet)
            if waited > 2:
                print(f"    {op}: waited {waited:.0f} s for other processes to quiet down",
                      flush=True)
            with OtherLoad() as load:
                times = time_interleaved(fns, args.warmup, args.repeats)
            if not load.cores >= other_load.get(op, float("inf")):
                results[op], other_load[op] = times, load.cores
            if not load.cores > args.max_other_load:
                break
            if attempt + 1 < attempts:
                print(f"    {op}: other processes used {load.cores:.2f} cores during the timing;"
                      f" retrying", flush=True)
    return first, results, other_load


# ------------------------------------------------------------------------------------ reporting
def format_table(title, rows, names):
    """Render one results table.

    Parameters
    ----------
    title : str
        Heading.
    rows : list of dict
        Rows from :func:`make_row` for one operation.
    names : tuple of str
        Implementations run.

    Returns
    -------
    str
    """
    head = f"{'size (T,B,H)':>16}" + "".join(f"{n + ' ms':>11}" for n in names)
    head += "".join(f"{n + '/rnnlab':>14}" for n in names[1:])
    head += f"{'max IQR':>9}{'other CPU':>11}"
    lines = [title, head, "-" * len(head)]
    for r in rows:
        line = f"{'{},{},{}'.format(r['T'], r['B'], r['H']):>16}"
        line += "".join(f"{r[n + '_ms']:>11.2f}" for n in names)
        line += "".join(f"{r[n + '_over_rnnlab']:>14.2f}" for n in names[1:])
        line += f"{max(r[n + '_iqr'] for n in names):>9.0%}{r['other_cpu_cores']:>11.2f}"
        lines.append(line)
    return "\n".join(lines)


def make_row(cell, size, n_in, op, times, other_cores, first, names):
    """One CSV/table row: medians, IQRs, ratios to rnnlab, other load, first-call times."""
    row = {"cell": cell, "op": op, "T": size[0], "B": size[1], "H": size[2], "I": n_in}
    for n in names:
        row[n + "_ms"], row[n + "_iqr"] = summarize(times[n])
    for n in names[1:]:
        row[n + "_over_rnnlab"] = row[n + "_ms"] / row["rnnlab_ms"]
    row["other_cpu_cores"] = other_cores
    for n in names:
        row[n + "_first_call_ms"] = first[n]
    return row


def git_revision(path):
    """``" (git abc1234)"``, with ``"+changes"`` if the work tree is modified; ``""`` if unknown."""
    import subprocess

    cwd = os.path.dirname(os.path.abspath(path))
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=cwd, text=True,
                             capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=cwd, text=True, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return ""
    return f" (git {rev}{'+changes' if dirty.strip() else ''})"


def environment_summary(args):
    """One-paragraph description of the software and thread settings."""
    import numba
    import numpy as np

    import rnnlab

    numba_info = (f"Numba {numba.__version__} (threads {numba.get_num_threads()}, layer "
                  f"{numba.threading_layer()})")
    parts = [f"rnnlab {rnnlab.__version__}{git_revision(rnnlab.__file__)}",
             f"Python {platform.python_version()}", f"NumPy {np.__version__}", numba_info]
    if not args.no_torch:
        import torch

        parts.append(f"PyTorch {torch.__version__} (threads {torch.get_num_threads()})")
    if not args.no_jax:
        import jax

        parts.append(f"JAX {jax.__version__} ({jax.devices()[0].platform})")
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} logical CPUs; " + ", ".join(parts)
            + f"; NumPy huge pages {'on' if args.numpy_hugepages else 'off'}"
            + f"; cell {args.cell}, dtype {args.dtype}, {args.warmup} warm-ups, "
            f"median of {args.repeats}")


def import_rnnlab_first():
    """Import rnnlab before PyTorch and JAX.

    PyTorch loads GNU libgomp, and Numba's OpenMP thread pool then shares that copy, which
    reads ``GOMP_SPINCOUNT`` once, when it loads. rnnlab sets that variable (unless the user
    did) to 10,000 instead of libgomp's 300,000, so the order decides the spin count of the
    one OpenMP runtime that both PyTorch and Numba use. Measured here (2 cores, PyTorch 2.13,
    float32, fwd+BPTT, T = 1000): PyTorch alone did not depend on it (LSTM (B, H) = (1, 256):
    29.7-40.1 ms with the default, 30.0-39.2 ms with 10,000, three processes each: the spread
    is between processes, not settings); rnnlab's LSTM there took 43-45 ms with the default
    and 33-35 ms with 10,000 while its large products ran on a Python thread pool, and no
    longer depends on it since they run on Numba's own threads (``kernels/cpu/blas.py``).
    """
    import rnnlab  # noqa: F401


def set_numpy_hugepages(enable):
    """Tell NumPy whether to ask for transparent huge pages for its large arrays.

    NumPy asks the kernel for huge pages (``madvise(MADV_HUGEPAGE)``) for every array of 4 MB
    or more; PyTorch's and XLA's allocators do not. On a virtual machine that hands freed memory
    back to its host, a fresh huge page can cost far more to fault in than the small pages the
    others reuse, and the cost depends on what the other implementations just freed. Measured
    on a 2-core Xeon VM (tanh RNN float64 (1000, 128, 256), fwd+BPTT, all three in one
    process): rnnlab 1728 ms with NumPy's huge pages (IQR 21 %), 1184 ms without (IQR 8 %);
    rnnlab alone took 1.0-2.1 s with them and 1.14-1.2 s without. The benchmarks turn them off
    by default, so that all three allocate the same kind of pages (``--numpy-hugepages`` keeps
    NumPy's default). Same effect as ``NUMPY_MADVISE_HUGEPAGE=0`` before NumPy is imported.

    Parameters
    ----------
    enable : bool
        NumPy's default is True.

    Returns
    -------
    bool or None
        The setting before, to restore it with; None if this NumPy has no such switch (then
        nothing changed).
    """
    import numpy as np

    switch = getattr(getattr(np, "_core", np.core).multiarray, "_set_madvise_hugepage", None)
    return None if switch is None else bool(switch(bool(enable)))


def main(argv=None):
    """Run the benchmark; returns the process exit status."""
    args = parse_args(argv)
    set_numpy_hugepages(args.numpy_hugepages)  # for the rest of this process
    if args.fresh_numba_cache:  # must happen before Numba is imported
        cache_dir = tempfile.mkdtemp(prefix="rnnlab-numba-cache-")
        atexit.register(shutil.rmtree, cache_dir, ignore_errors=True)
        os.environ["NUMBA_CACHE_DIR"] = cache_dir
    import_rnnlab_first()
    if not args.no_jax and args.dtype == "float64":
        import jax

        jax.config.update("jax_enable_x64", True)
    if not args.no_torch:
        import torch

        torch.set_num_threads(args.threads)

    names = tuple(n for n in FRAMEWORKS if not (n == "torch" and args.no_torch)
                  and not (n == "jax" and args.no_jax))
    print(environment_summary(args))
    print()
    rows = {"fwd+bwd": [], "fwd": []}
    for size in args.sizes:
        n_in = args.input_size or size[2]
        print(f"T={size[0]} B={size[1]} H={size[2]} I={n_in}", flush=True)
        first, results, other_load = run_size(size, args)
        for op, times in results.items():
            rows[op].append(make_row(args.cell, size, n_in, op, times, other_load[op], first,
                                     names))
    print()
    cell = args.cell.upper()
    print(format_table(f"{cell} forward + BPTT (median ms; ratio > 1 means rnnlab is faster)",
                       rows["fwd+bwd"], names))
    if rows["fwd"]:
        print()
        print(format_table(f"{cell} forward only (median ms; ratio > 1 means rnnlab is faster)",
                           rows["fwd"], names))
    print("\nmax IQR: largest interquartile range / median among the implementations. other CPU:"
          " cores kept busy by other processes\nduring the timing (0 = machine to ourselves). "
          "Both are noise indicators.")
    if args.out:
        all_rows = rows["fwd+bwd"] + rows["fwd"]
        for r in all_rows:
            r["dtype"] = args.dtype
        fields = list(all_rows[0])
        header_needed = True
        if args.append and os.path.exists(args.out) and os.path.getsize(args.out) > 0:
            with open(args.out, newline="") as f:
                existing = next(csv.reader(f), [])
            if existing != fields:
                print(f"error: {args.out} has other columns ({','.join(existing)}); not "
                      f"appending", file=sys.stderr)
                return 1
            header_needed = False
        with open(args.out, "a" if args.append else "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            if header_needed:
                writer.writeheader()
            writer.writerows(all_rows)
        print(f"{'appended to' if args.append else 'wrote'} {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
