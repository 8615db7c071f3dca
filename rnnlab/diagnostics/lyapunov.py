"""Lyapunov spectra by the QR (Benettin) method.

A frame of ``k`` orthonormal tangent vectors is carried along the trajectory, ``Q <- J_t Q``, and
re-orthonormalised every ``m`` steps by a QR factorisation; the exponents are the time averages
of ``log|R_ii|`` (natural log, per step). ``k < n`` gives the leading ``k`` exponents at a
fraction of the cost.
"""

from dataclasses import dataclass, field

import numba
import numpy as np
import pandas as pd

from .. import _validation as v
from .._blas import blas_threads_for
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


#: Multiply-adds per step (k n^2) below which the matrix-free frame runs on one thread.
SERIAL_WORK = 1 << 20


class _DiagonalRunner:
    """Matrix-free: ``J_t = diag(g'_t) W``, blocks of the frame's rows on parallel threads."""

    def __init__(self, w_hh, deriv, q, m):
        n, k = q.shape
        self.w_hh_t, self.deriv, self.m = np.ascontiguousarray(w_hh.T), deriv, m
        # a parallel region per step costs more than a small frame's step (and stalls when
        # the other cores are busy): small frames run on one thread
        self.serial = k * n * n < SERIAL_WORK
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
