"""Lyapunov spectra by the QR (Benettin) method.

A frame of ``k`` orthonormal tangent vectors is carried along the trajectory, ``Q <- J_t Q``, and
re-orthonormalised every ``m`` steps by a QR factorisation; the exponents are the time averages
of ``log|R_ii|`` (natural log, per step). ``k < n`` gives the leading ``k`` exponents at a
fraction of the cost.
"""

import warnings
from dataclasses import dataclass, field

import numba
import numpy as np
import pandas as pd

from .. import _validation as v
from .._backend import resolve_backend
from .._blas import blas_threads_for
from ..activations import activation_code
from ..kernels.cpu.lyapunov import qr_finish, qr_lyapunov_chunk, qr_lyapunov_diag
from ..kernels.cpu.qr import qr_workspace
from ..kernels.cpu.vanilla import n_chunks


@dataclass
class LyapunovResult:
    """Exponents and the record of every QR.

    Attributes
    ----------
    exponents : ndarray, shape (k,)
        λ_1 >= ... (as computed, not re-sorted) in nats per step; ``-inf`` where a direction
        is annihilated exactly.
    increments : ndarray, shape (n_qr, k)
        ``log|R_ii|`` of every QR after the warm-up.
    steps : ndarray, shape (n_qr,)
        Steps covered by each QR (``m``, the last one possibly fewer).
    config : dict
        Trajectory and method description.
    """

    exponents: np.ndarray
    increments: np.ndarray
    steps: np.ndarray
    config: dict = field(default_factory=dict)

    def trace(self):
        """Running estimates after every QR: a DataFrame (step, index, estimate)."""
        cum = np.cumsum(self.increments, axis=0) / np.cumsum(self.steps)[:, None]
        n_qr, k = cum.shape
        return pd.DataFrame({"step": np.repeat(np.cumsum(self.steps), k),
                             "index": np.tile(np.arange(1, k + 1), n_qr),
                             "estimate": cum.ravel()})

    def finite_time(self, window):
        """Finite-time exponents over consecutive windows of ``window`` steps.

        Parameters
        ----------
        window : int
            A multiple of the re-orthonormalisation interval ``m``.

        Returns
        -------
        DataFrame
            (window_start, index, exponent).
        """
        m = int(self.config["m"])
        window = v.check_positive_int(window, "window")
        if window % m:
            raise ValueError(f"window ({window}) must be a multiple of m ({m})")
        per = window // m
        n_win = self.increments.shape[0] // per
        if n_win == 0:
            raise ValueError(f"window ({window}) is longer than the measured trajectory "
                             f"({int(self.steps.sum())} steps)")
        inc = self.increments[:n_win * per].reshape(n_win, per, -1).sum(axis=1) / window
        k = inc.shape[1]
        return pd.DataFrame({"window_start": np.repeat(np.arange(n_win) * window, k),
                             "index": np.tile(np.arange(1, k + 1), n_win),
                             "exponent": inc.ravel()})

    def to_frame(self):
        """Tidy table: one row per exponent, the configuration in columns."""
        k = self.exponents.shape[0]
        return pd.DataFrame({**{c: [val] * k for c, val in self.config.items()},
                             "index": np.arange(1, k + 1), "exponent": self.exponents})


def lyapunov_spectrum(trajectory, k=None, m=1, warmup=0, seed=0):
    """Lyapunov spectrum of a trajectory by QR re-orthonormalisation.

    Parameters
    ----------
    trajectory : Trajectory
        From :func:`rnnlab.diagnostics.trajectories` (or a :class:`JacobianSequence`).
    k : int, optional
        Number of leading exponents (default: all ``n``).
    m : int
        Re-orthonormalise every ``m`` steps (1 is the most robust; larger is faster but lets
        the frame's columns grow like ``exp(λ m)`` between QRs).
    warmup : int
        Steps discarded before measuring (the frame aligns with the leading directions).
    seed : int
        Seed of the random initial frame.

    Returns
    -------
    LyapunovResult
    """
    n, n_steps = trajectory.n, trajectory.n_steps
    k = n if k is None else v.check_positive_int(k, "k")
    if k > n:
        raise ValueError(f"k = {k} exceeds the state dimension n = {n}")
    m = v.check_positive_int(m, "m")
    warmup = v.check_positive_int(warmup, "warmup", minimum=0)
    if warmup >= n_steps:
        raise ValueError(f"warmup ({warmup}) must be shorter than the trajectory "
                         f"(T = {n_steps} steps)")
    # the first k columns of one n x n random frame: Householder QR treats columns in order, so
    # a partial spectrum follows exactly the leading vectors of the full one
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    diag = trajectory.diagonal_form()
    runner = (_DiagonalRunner(*diag, q[:, :k], m) if diag is not None
              else _DenseRunner(trajectory, q[:, :k], m))
    with blas_threads_for(0):
        if warmup:
            scratch = np.empty((warmup // m + 2, k))
            count = np.zeros(1, dtype=np.int64)
            runner.run(0, warmup, scratch, count)
            if runner.phase[0]:
                runner.finish(scratch, count)
            runner.phase[0] = 0
        n_measure = n_steps - warmup
        incs = np.empty((n_measure // m + 2, k))
        count = np.zeros(1, dtype=np.int64)
        runner.run(warmup, n_steps, incs, count)
        last = int(runner.phase[0])
        if last:
            runner.finish(incs, count)
    incs = incs[:count[0]]
    steps = np.full(count[0], m, dtype=np.int64)
    if last:
        steps[-1] = last
    config = {**trajectory.config, "T": n_steps, "warmup": warmup, "m": m, "k": k, "seed": seed}
    return LyapunovResult(incs.sum(axis=0) / n_measure, incs, steps, config)


class _DenseRunner:
    """Carries the frame through dense Jacobian chunks (any cell)."""

    def __init__(self, trajectory, q, m):
        self.trajectory, self.m = trajectory, m
        self.qt = np.ascontiguousarray(q.T)
        self.work = np.empty_like(self.qt)
        self.rdiag = np.empty(q.shape[1])
        self.qr_work = qr_workspace(*self.qt.shape)
        self.phase = np.zeros(1, dtype=np.int64)

    def run(self, t0, t1, incs, count):
        for _, jac in self.trajectory.chunks(t0, t1):
            qr_lyapunov_chunk(jac, self.qt, self.work, self.rdiag, self.m, self.phase, incs,
                              count, self.qr_work)

    def finish(self, incs, count):
        qr_finish(self.qt, self.work, self.rdiag, incs, count, self.qr_work)


#: Multiply-adds of one parallel region (k n^2 m: m steps of the frame between two QRs) above
#: which the matrix-free frame's rows run in blocks on parallel threads, when m >= 2.
PARALLEL_WORK = 1 << 18
#: The same when a QR follows every step (m = 1). The serial QR between two regions outlasts the
#: workers' spin, so every region pays to wake them. Measured on 2 cores (Intel Xeon, float64,
#: T = 10,000, serial -> parallel, ms): m = 1: N = 64, k = 64 324 -> 467; N = 128, k = 128
#: 1873 -> 2436; N = 256, k = 8 219 -> 230; N = 256, k = 256 13147 -> 11806. m >= 2:
#: N = 64, k = 8, m = 10 14.5 -> 13.3; N = 128, k = 8, m = 2 66.4 -> 69.3, m = 4
#: 56.1 -> 47.1; N = 128, k = 128, m = 2 1384 -> 1351; N = 256, k = 8, m = 10 190 -> 116.
PARALLEL_WORK_M1 = 1 << 23


class _DiagonalRunner:
    """Matrix-free: ``J_t = diag(g'_t) W``, blocks of the frame's rows on parallel threads."""

    def __init__(self, w_hh, deriv, q, m):
        n, k = q.shape
        self.w_hh_t, self.deriv, self.m = np.ascontiguousarray(w_hh.T), deriv, m
        # a parallel region costs more than a small frame's steps (and stalls when the other
        # cores are busy): small frames run on one thread
        region_work = k * n * n * m
        self.serial = region_work <= (PARALLEL_WORK if m >= 2 else PARALLEL_WORK_M1)
        n_blocks = 1 if self.serial else n_chunks(k)
        rows = -(-k // n_blocks)
        self.blocks = np.zeros((n_blocks, rows, n))
        self.blocks.reshape(-1, n)[:k] = q.T
        self.spare = np.empty_like(self.blocks)
        self.gathered = np.empty((k, n))
        self.qt = np.empty((k, n))
        self.rdiag = np.empty(k)
        self.qr_work = qr_workspace(k, n)
        self.phase = np.zeros(1, dtype=np.int64)

    def run(self, t0, t1, incs, count):
        threads = numba.get_num_threads()
        if self.serial:
            numba.set_num_threads(1)
        try:
            qr_lyapunov_diag(self.w_hh_t, self.deriv, t0, t1, self.blocks, self.spare,
                             self.gathered, self.qt, self.rdiag, self.m, self.phase, incs, count,
                             self.qr_work)
        finally:
            numba.set_num_threads(threads)

    def finish(self, incs, count):
        k, n = self.qt.shape
        frame = self.blocks.reshape(-1, n)[:k].copy()
        qr_finish(frame, self.gathered, self.rdiag, incs, count, self.qr_work)
        self.blocks.reshape(-1, n)[:k] = frame


# ----------------------------------------------------------------------------- ensembles


@dataclass
class LyapunovEnsembleResult:
    """Lyapunov spectra of an ensemble of vanilla networks.

    Attributes
    ----------
    exponents : ndarray, shape (E, k), float64
        ``exponents[e]`` are network ``e``'s leading ``k`` exponents (as computed, not
        re-sorted) in nats per step; NaN for a network whose state overflowed (see
        ``diverged_at``), ``-inf`` where a direction is annihilated exactly.
    config : dict
        The method and the ensemble (scalars), repeated as columns by :meth:`to_frame`.
    diverged_at : ndarray of int64, shape (E,)
        First step at which network ``e``'s state was not finite, -1 where it stayed finite.
    """

    exponents: np.ndarray
    config: dict = field(default_factory=dict)
    diverged_at: np.ndarray = None

    def to_frame(self):
        """Tidy table: one row per (network, exponent), the configuration in columns.

        Returns
        -------
        DataFrame
            Columns ``network``, ``index`` (1-based), ``exponent``, ``diverged_at`` and one
            column per ``config`` entry.
        """
        n_net, k = self.exponents.shape
        diverged = (np.full(n_net, -1, dtype=np.int64) if self.diverged_at is None
                    else np.asarray(self.diverged_at))
        return pd.DataFrame({"network": np.repeat(np.arange(n_net), k),
                             "index": np.tile(np.arange(1, k + 1), n_net),
                             "exponent": self.exponents.ravel(),
                             "diverged_at": np.repeat(diverged, k),
                             **{c: [val] * (n_net * k) for c, val in self.config.items()}})


def _float_array(value, name):
    """``value`` as a float64 array (float32 accepted and converted), finite."""
    arr = v.to_numpy(value, name)
    if arr.dtype not in v.FLOAT_DTYPES:
        raise TypeError(f"{name} must be a float64 (or float32) array, got dtype {arr.dtype}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or Inf values")
    return arr


def _ensemble_arguments(w_hh, drive, h0, n_steps):
    """Validated ``(w_hh (E, n, n), drive (Td, Ed, n), h0 (E, n), T, drive kind, input dtype)``,
    all float64."""
    w = _float_array(w_hh, "w_hh")
    if w.ndim != 3 or w.shape[1] != w.shape[2] or w.shape[0] < 1 or w.shape[1] < 1:
        raise ValueError(f"w_hh must have shape (E, N, N) with E, N >= 1, got {w.shape}")
    in_dtype = w.dtype.name
    n_net, n = w.shape[0], w.shape[1]
    if drive is None:
        if n_steps is None:
            raise ValueError("n_steps is required when drive is None (zero drive)")
        n_steps = v.check_positive_int(n_steps, "n_steps")
        d = np.zeros((1, 1, n))  # broadcast over steps and networks: no T x N array
        kind = "none"
    else:
        d = _float_array(drive, "drive")
        if d.ndim == 2 and d.shape[1] == n:
            d = d[:, None, :]
            kind = "shared"
        elif d.ndim == 3 and d.shape[1:] == (n_net, n):
            kind = "per-network"
        else:
            raise ValueError(f"drive must have shape (T, E, N) = (T, {n_net}, {n}) or (T, N) = "
                             f"(T, {n}), got {d.shape}")
        if d.shape[0] == 0:
            raise ValueError("drive has T = 0 steps: there is no trajectory to measure")
        if n_steps is not None and v.check_positive_int(n_steps, "n_steps") != d.shape[0]:
            raise ValueError(f"n_steps ({n_steps}) does not match the drive's length "
                             f"(T = {d.shape[0]}); leave n_steps out when a drive is given")
        n_steps = d.shape[0]
    if h0 is None:
        h = np.zeros((n_net, n))
    else:
        h = _float_array(h0, "h0")
        if h.shape == (n,):
            h = np.broadcast_to(h, (n_net, n))
        elif h.shape != (n_net, n):
            raise ValueError(f"h0 must have shape (E, N) = ({n_net}, {n}) or (N,) = ({n},), "
                             f"got {h.shape}")
    # diagnostics run in float64: float32 inputs are converted (a copy), float64 ones are not
    as64 = [np.ascontiguousarray(a, dtype=np.float64) for a in (w, d, h)]
    return (*as64, n_steps, kind, in_dtype)


def lyapunov_ensemble(w_hh, drive=None, h0=None, nonlinearity="tanh", n_steps=None, k=None, m=1,
                      warmup=0, seed=0, backend=None):
    """Lyapunov spectra of many vanilla RNNs at once, each along its own trajectory.

    Network ``e`` runs ``a<t> = g(W_e a<t-1> + drive<t>)``, ``J_t = diag(g'(a<t>)) W_e``; its
    spectrum is computed by the QR method of :func:`lyapunov_spectrum` (the same initial frame
    for the same ``seed``, the same QR schedule), so ``result.exponents[e]`` equals
    ``lyapunov_spectrum`` of network ``e``'s trajectory. No trajectory or per-step record is
    stored: memory is the weights, the drive and one frame per network.

    Parameters
    ----------
    w_hh : array_like, shape (E, N, N)
        Recurrent weights of the E networks (PyTorch's ``weight_hh_l0`` layout). float64, or
        float32 (converted: the computation always runs in float64).
    drive : array_like, shape (T, E, N) or (T, N), optional
        ``W_ih x<t> + b_ih + b_hh`` for every step, per network or shared by all networks
        (float64 or float32, converted). ``None``: zero drive (then ``n_steps`` is required).
    h0 : array_like, shape (E, N) or (N,), optional
        Initial states (default zeros).
    nonlinearity : {"tanh", "relu", "sigmoid", "linear"}
        The activation ``g``.
    n_steps : int, optional
        T; required when ``drive`` is None, otherwise it must equal ``len(drive)``.
    k : int, optional
        Number of leading exponents (default N).
    m : int
        Re-orthonormalise every ``m`` steps.
    warmup : int
        Steps discarded before measuring, ``0 <= warmup < T``.
    seed : int
        Seed of the random initial frame (shared by all networks).
    backend : {None, "cpu", "cuda"}
        ``"cpu"``: Numba kernels, networks on parallel threads; ``"cuda"``: one persistent GPU
        kernel (one thread block per network); ``None``: :func:`rnnlab.default_backend`.

    Returns
    -------
    LyapunovEnsembleResult
        ``exponents`` ``(E, k)``; NaN for a network whose state overflowed (``diverged_at``).

    Raises
    ------
    TypeError, ValueError
        For an invalid argument (named in the message), before any kernel runs.
    rnnlab.BackendUnavailableError
        For ``backend="cuda"`` where CUDA cannot run.

    Examples
    --------
    >>> import numpy as np
    >>> from rnnlab.diagnostics import lyapunov_ensemble
    >>> rng = np.random.default_rng(0)
    >>> gains = np.array([0.5, 1.0, 2.0])
    >>> w = gains[:, None, None] * rng.standard_normal((3, 32, 32)) / np.sqrt(32)
    >>> res = lyapunov_ensemble(w, rng.standard_normal((500, 32)), k=4, warmup=100)
    >>> res.exponents.shape
    (3, 4)
    """
    w, d, h, n_steps, kind, in_dtype = _ensemble_arguments(w_hh, drive, h0, n_steps)
    n_net, n = w.shape[0], w.shape[1]
    act = activation_code(nonlinearity)
    k = n if k is None else v.check_positive_int(k, "k")
    if k > n:
        raise ValueError(f"k = {k} exceeds the state dimension N = {n}")
    m = v.check_positive_int(m, "m")
    warmup = v.check_positive_int(warmup, "warmup", minimum=0)
    if warmup >= n_steps:
        raise ValueError(f"warmup ({warmup}) must be shorter than the trajectory "
                         f"(T = {n_steps} steps)")
    seed = v.check_positive_int(seed, "seed", minimum=0)
    backend = resolve_backend(backend)
    # the initial frame of lyapunov_spectrum: the first k columns of one N x N random frame
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    q0t = np.ascontiguousarray(q[:, :k].T)
    if backend == "cuda":
        from ..kernels.cuda import lyapunov as kernels  # imports numba.cuda only here
    else:
        from ..kernels.cpu import lyapunov as kernels
    sums, status = kernels.lyapunov_ensemble_sums(w, d, h, act, q0t, m, warmup, n_steps)
    exponents = sums / (n_steps - warmup)
    diverged = status >= 0
    if diverged.any():
        exponents[diverged] = np.nan
        warnings.warn(f"lyapunov_ensemble: the state of {int(diverged.sum())} network(s) "
                      f"(first: {np.flatnonzero(diverged)[:5].tolist()}) overflowed; their "
                      f"exponents are NaN (lower the gain or shorten the run)",
                      RuntimeWarning, stacklevel=2)
    config = {"cell": "rnn", "activation": nonlinearity, "H": n, "E": n_net, "T": n_steps,
              "warmup": warmup, "m": m, "k": k, "seed": seed, "drive": kind,
              "backend": backend, "dtype": "float64", "input_dtype": in_dtype}
    return LyapunovEnsembleResult(exponents, config, status)
