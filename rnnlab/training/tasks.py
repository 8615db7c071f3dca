"""Synthetic long-range tasks from the vanishing/exploding-gradient literature.

Each task is a seeded generator of batches in the time-major shapes the architectures of
:mod:`rnnlab.architectures` take, for any sequence length ``T`` at or above its ``min_T``:

=========================  ============  =============  =======================================
task                       architecture  loss           trivial baseline (paper's normalisation)
=========================  ============  =============  =======================================
:class:`AddingProblem`     many_to_one   mse            1/24 (mean variant), 1/6 (sum variant)
:class:`CopyMemory`        many_to_many  cross_entropy  10 ln 8 / (T + 20) per step
:class:`TemporalOrder`     many_to_one   cross_entropy  ln 4 per sequence
:class:`MelodyGeneration`  one_to_many   bce            sum_k H(q_k) per step (marginal q)
=========================  ============  =============  =======================================

``batch(B, rng=None)`` returns ``(x, y, mask)``; ``mask`` is all ones, shaped as the loss's per-step
weights, so the model's summed loss divided by ``mask.sum()`` is the loss in the paper's
normalisation, the one ``baseline`` and :meth:`Task.evaluate` use::

    x, y, mask = task.batch(20)
    loss, grads = model.loss_and_grad(x, y, mask)     # reduction="sum"
    paper_loss = loss / mask.sum()                    # comparable to task.baseline

:meth:`Task.evaluate` takes the model's *predictions* (``model.predict(x)``: probabilities for the
classification losses, values for MSE) and returns the loss, the paper's error rate and whether the
task counts as solved; :meth:`Task.score` does so on fresh sequences (10,000 by default, as in
Pascanu et al. 2013).
"""

import math

import numpy as np

from .._validation import check_dtype, check_positive_int

#: A task counts as solved below this error rate on fresh sequences (Pascanu et al. 2013: 1%).
SUCCESS_ERROR_RATE = 0.01


def _generator(seed, name):
    if seed is None or isinstance(seed, (int, np.integer, np.random.SeedSequence)):
        if isinstance(seed, bool):
            raise TypeError(f"{name} must be None, an int or a numpy.random.Generator, got bool")
        return np.random.default_rng(seed)
    if isinstance(seed, np.random.Generator):
        return seed
    raise TypeError(f"{name} must be None, an int or a numpy.random.Generator, got "
                    f"{type(seed).__name__}")


def _binary_entropy(q):
    """``-q ln q - (1 - q) ln(1 - q)`` in nats, elementwise, with ``0 ln 0 = 0``."""
    q = np.asarray(q, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(q * np.log(q) + (1 - q) * np.log1p(-q))
    return np.where((q <= 0) | (q >= 1), 0.0, h)


class Task:
    """Base class of the tasks: seeding, shapes, evaluation.

    Parameters
    ----------
    T : int
        Sequence length parameter (its meaning is each task's; at least ``min_T``).
    dtype : {numpy.float32, numpy.float64}, optional
        Dtype of the inputs and of real-valued targets (class indices are int64).
    seed : int, numpy.random.Generator or None, optional
        Seed of the task's own generator, used by :meth:`batch` when no ``rng`` is given.

    Attributes
    ----------
    architecture : {"many_to_one", "many_to_many", "one_to_many"}
        The architecture (:func:`rnnlab.architectures.make_model` name) the task is posed for.
    loss : {"mse", "cross_entropy", "bce"}
        The loss (:data:`rnnlab.losses.LOSSES` name); its head activation is
        ``{"mse": "linear", "cross_entropy": "softmax", "bce": "sigmoid"}``.
    input_size, output_size : int
        Feature widths of ``x`` and of the model's output.
    baseline : float
        The loss of the trivial predictor (:meth:`trivial_prediction`), exactly, in the paper's
        normalisation.
    min_T : int
        The smallest valid ``T``.
    """

    architecture = None
    loss = None
    min_T = 1

    def __init__(self, T, dtype=np.float32, seed=None):
        self.T = check_positive_int(T, "T", minimum=self.min_T)
        self.dtype = check_dtype(dtype)
        self.rng = _generator(seed, "seed")

    # ---------------------------------------------------------------- to be provided
    def _generate(self, B, rng):
        raise NotImplementedError

    def trivial_prediction(self, B):
        """The trivial predictor's output for ``B`` sequences, shaped like ``model.predict``'s
        (its loss is :attr:`baseline` in expectation)."""
        raise NotImplementedError

    def _per_sequence(self, pred, y):
        """Per-sequence loss terms and error indicators (or fractions), each ``(..., B)``."""
        raise NotImplementedError

    # ---------------------------------------------------------------- public
    def batch(self, B, rng=None):
        """A fresh batch.

        Parameters
        ----------
        B : int
            Number of sequences.
        rng : int or numpy.random.Generator, optional
            Generator (or seed) for this batch; default the task's own (``seed``).

        Returns
        -------
        x : ndarray
            Inputs, ``(T_x, B, input_size)`` (``(B, input_size)`` for one-to-many).
        y : ndarray
            Targets: ``(B, K)`` floats or ``(B,)`` class indices (many-to-one), ``(T, B, K)``
            floats or ``(T, B)`` class indices (many-to-many, one-to-many).
        mask : ndarray
            All ones, the shape of the loss's step weights: ``(B,)`` or ``(T, B)``.
        """
        B = check_positive_int(B, "B")
        rng = self.rng if rng is None else _generator(rng, "rng")
        x, y = self._generate(B, rng)
        mask_shape = y.shape[:-1] if y.dtype.kind == "f" else y.shape
        return x, y, np.ones(mask_shape, dtype=self.dtype)

    def evaluate(self, pred, y, mask=None):
        """Loss, error rate and success of predictions, as the papers measure them.

        Parameters
        ----------
        pred : ndarray
            The model's predictions (``model.predict(x)``): probabilities for cross-entropy and
            BCE, values for MSE; shaped as the targets, with a class axis for class indices.
        y : ndarray
            The targets from :meth:`batch`.
        mask : ndarray, optional
            Weights per sequence (many-to-one) or per step (``(T, B)``); default all ones.

        Returns
        -------
        dict
            ``loss`` (float, in the normalisation of :attr:`baseline`), ``error_rate`` (float,
            the task's error measure, see the class), ``success`` (bool,
            ``error_rate < 0.01``), ``n`` (number of sequences).
        """
        pred = np.asarray(pred)
        y = np.asarray(y)
        if pred.dtype.kind != "f":
            raise TypeError(f"pred must be a floating-point array, got dtype {pred.dtype}")
        expected = y.shape + (self.output_size,) if y.dtype.kind in "iu" else y.shape
        if pred.shape != expected:
            raise ValueError(f"pred must have shape {expected} (that of the targets"
                             f"{' plus a class axis' if y.dtype.kind in 'iu' else ''}), got "
                             f"{pred.shape}")
        if not np.isfinite(pred).all():
            raise ValueError("pred contains NaN or Inf values")
        loss_terms, errors = self._per_sequence(pred.astype(np.float64), y)
        if mask is None:
            w = np.ones(loss_terms.shape)
        else:
            w = np.asarray(mask, dtype=np.float64)
            if w.shape != loss_terms.shape:
                raise ValueError(f"mask must have shape {loss_terms.shape}, got {w.shape}")
            if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
                raise ValueError("mask must be finite, non-negative and not all zero")
        loss = float((w * loss_terms).sum() / w.sum())
        # copy memory counts errors on the recall steps only: their weights are the last rows
        err_w = w if errors.shape == w.shape else w[-errors.shape[0]:]
        if err_w.sum() <= 0:
            raise ValueError("mask gives zero weight to every step that is scored for errors")
        error_rate = float((err_w * errors).sum() / err_w.sum())
        return {"loss": loss, "error_rate": error_rate, "success": self.success(error_rate),
                "n": int(loss_terms.shape[-1])}

    def success(self, error_rate):
        """Whether ``error_rate`` (from :meth:`evaluate`) counts as solved: below 1%."""
        error_rate = float(error_rate)
        if not 0 <= error_rate <= 1:
            raise ValueError(f"error_rate must lie in [0, 1], got {error_rate!r}")
        return error_rate < SUCCESS_ERROR_RATE

    def score(self, predict, n_sequences=10_000, batch_size=1_000, rng=None):
        """Evaluate ``predict`` on fresh sequences (Pascanu et al.: 10,000).

        Parameters
        ----------
        predict : callable
            ``x -> pred`` (e.g. ``model.predict``, or ``lambda x: model.generate(x, task.T)``
            for one-to-many).
        n_sequences : int, optional
            Number of fresh sequences.
        batch_size : int, optional
            Sequences per call of ``predict``.
        rng : int or numpy.random.Generator, optional
            Generator for the fresh sequences; default the task's own.

        Returns
        -------
        dict
            As :meth:`evaluate`, over all ``n_sequences``.
        """
        n_sequences = check_positive_int(n_sequences, "n_sequences")
        batch_size = check_positive_int(batch_size, "batch_size")
        rng = self.rng if rng is None else _generator(rng, "rng")
        loss = err = 0.0
        done = 0
        while done < n_sequences:
            b = min(batch_size, n_sequences - done)
            x, y, _ = self.batch(b, rng)
            res = self.evaluate(predict(x), y)
            # every sequence carries the same weight (unit masks), so weight batches by size
            loss += res["loss"] * b
            err += res["error_rate"] * b
            done += b
        error_rate = err / n_sequences
        return {"loss": loss / n_sequences, "error_rate": error_rate,
                "success": self.success(min(max(error_rate, 0.0), 1.0)), "n": n_sequences}

    def __repr__(self):
        return f"{type(self).__name__}(T={self.T}, dtype={self.dtype.name})"


def _class_log_loss(pred, y):
    """``-ln pred[..., y]`` (floored at the smallest normal float, so a zero gives ~708)."""
    p = np.take_along_axis(pred, y[..., None], axis=-1)[..., 0]
    return -np.log(np.maximum(p, np.finfo(np.float64).tiny))


class AddingProblem(Task):
    """The adding problem (Hochreiter & Schmidhuber 1997; Pascanu et al. 2013; Le et al. 2015).

    Each sequence has ``T`` steps of two channels: channel 0 holds values drawn independently
    from U[0, 1), channel 1 is a marker that is 1 at exactly two steps and 0 elsewhere. The
    target, read after the last step, is the mean (``variant="mean"``: Hochreiter &
    Schmidhuber's scaling as used by Pascanu et al.) or the sum (``variant="sum"``: Le et al.
    2015) of the two marked values.

    Marker positions (0-based):

    * ``placement="halves"`` (Le et al. 2015, the default): the first uniformly in
      ``[0, T//2)``, the second uniformly in ``[T//2, T)``.
    * ``placement="pascanu"`` (Pascanu et al.'s code, ``addition.py``): the first in
      ``[0, L)``, the second in ``[L, L + 4T//10)`` with ``L = T//10``. (Their code also draws each
      batch's length from ``[T, 1.1 T)``; here ``T`` is fixed.)

    Loss: squared error of the single output, averaged over sequences. Trivial baseline: predict
    the mean target (0.5 or 1), whose expected squared error is the target's variance,
    ``Var((u1 + u2)/2) = 1/24`` or ``Var(u1 + u2) = 1/6 ≈ 0.167``. Error rate (Pascanu et al.):
    the fraction of sequences whose squared error exceeds ``tolerance = 0.04``.

    Parameters
    ----------
    T : int
        Sequence length (>= 2; >= 10 with ``placement="pascanu"``).
    variant : {"mean", "sum"}, optional
        Target: the mean or the sum of the two marked values.
    placement : {"halves", "pascanu"}, optional
        Marker positions, see above.
    tolerance : float, optional
        Squared error above which a sequence counts as an error (Pascanu et al.: 0.04).
    dtype, seed
        See :class:`Task`.
    """

    architecture = "many_to_one"
    loss = "mse"
    input_size = 2
    output_size = 1
    min_T = 2

    def __init__(self, T, variant="mean", placement="halves", tolerance=0.04, dtype=np.float32,
                 seed=None):
        if variant not in ("mean", "sum"):
            raise ValueError(f"variant must be 'mean' or 'sum', got {variant!r}")
        if placement not in ("halves", "pascanu"):
            raise ValueError(f"placement must be 'halves' or 'pascanu', got {placement!r}")
        if (isinstance(tolerance, bool)
                or not isinstance(tolerance, (int, float, np.integer, np.floating))
                or not (math.isfinite(tolerance) and tolerance > 0)):
            raise ValueError(f"tolerance must be a finite number > 0, got {tolerance!r}")
        if placement == "pascanu":
            self.min_T = 10  # the first marker lies in the first T//10 steps
        super().__init__(T, dtype, seed)
        self.variant = variant
        self.placement = placement
        self.tolerance = float(tolerance)
        self.target_mean = 0.5 if variant == "mean" else 1.0
        self.baseline = 1 / 24 if variant == "mean" else 1 / 6

    def _generate(self, B, rng):
        T = self.T
        if self.placement == "halves":
            p0 = rng.integers(0, T // 2, size=B)
            p1 = rng.integers(T // 2, T, size=B)
        else:
            low = T // 10
            p0 = rng.integers(0, low, size=B)
            p1 = rng.integers(low, low + 4 * T // 10, size=B)
        x = np.zeros((T, B, 2), dtype=self.dtype)
        x[:, :, 0] = rng.random((T, B))
        cols = np.arange(B)
        x[p0, cols, 1] = 1
        x[p1, cols, 1] = 1
        # the target from the stored (possibly float32-rounded) values the model sees
        y = x[p0, cols, 0].astype(np.float64) + x[p1, cols, 0]
        if self.variant == "mean":
            y /= 2
        return x, y.astype(self.dtype)[:, None]

    def trivial_prediction(self, B):
        """The constant ``0.5`` (mean) or ``1.0`` (sum), ``(B, 1)``."""
        return np.full((check_positive_int(B, "B"), 1), self.target_mean, dtype=self.dtype)

    def _per_sequence(self, pred, y):
        sq = (pred[:, 0] - y[:, 0].astype(np.float64)) ** 2
        return sq, (sq > self.tolerance).astype(np.float64)

    def __repr__(self):
        return (f"AddingProblem(T={self.T}, variant={self.variant!r}, "
                f"placement={self.placement!r}, dtype={self.dtype.name})")


class CopyMemory(Task):
    """The copy-memory task (Arjovsky, Shah & Bengio 2016, "Unitary evolution RNNs", §4.1).

    Classes: 0 = blank, 1..8 = the symbols, 9 = the delimiter (``n_symbols + 2`` in all). Each
    input sequence, of length ``T + 2 n_copy`` (``T + 20``), is ``n_copy = 10`` symbols drawn
    uniformly and independently from the 8, then ``T - 1`` blanks, the delimiter, then 10 blanks;
    inputs are one-hot. The target is blank for the first ``T + 10`` steps, then the 10 symbols in
    their order. Loss: cross-entropy averaged over all steps and sequences.

    Trivial (memoryless) baseline: blank with certainty for ``T + 10`` steps, then the uniform
    distribution over the 8 symbols, giving ``10 ln 8 / (T + 20)`` per step (in general
    ``n_copy ln(n_symbols) / (T + 2 n_copy)``). Error rate (this package's convention; Arjovsky et
    al. report the cross-entropy only): the fraction of the recalled symbols whose most likely
    class is wrong.

    Parameters
    ----------
    T : int
        Delay: the number of steps from the last symbol to the delimiter (>= 1).
    n_symbols : int, optional
        Alphabet size (8).
    n_copy : int, optional
        Symbols to remember (10).
    dtype, seed
        See :class:`Task`.
    """

    architecture = "many_to_many"
    loss = "cross_entropy"

    def __init__(self, T, n_symbols=8, n_copy=10, dtype=np.float32, seed=None):
        self.n_symbols = check_positive_int(n_symbols, "n_symbols", minimum=2)
        self.n_copy = check_positive_int(n_copy, "n_copy")
        super().__init__(T, dtype, seed)
        self.input_size = self.output_size = self.n_symbols + 2
        self.blank, self.delimiter = 0, self.n_symbols + 1
        self.length = self.T + 2 * self.n_copy
        self.baseline = self.n_copy * math.log(self.n_symbols) / self.length

    def _generate(self, B, rng):
        T, n = self.T, self.n_copy
        symbols = rng.integers(1, self.n_symbols + 1, size=(n, B))
        seq = np.zeros((self.length, B), dtype=np.int64)
        seq[:n] = symbols
        seq[T + n - 1] = self.delimiter
        y = np.zeros((self.length, B), dtype=np.int64)
        y[T + n:] = symbols
        x = np.eye(self.input_size, dtype=self.dtype)[seq]
        return x, y

    def trivial_prediction(self, B):
        """Blank with probability 1 for ``T + n_copy`` steps, then uniform over the symbols:
        ``(T + 2 n_copy, B, n_symbols + 2)``."""
        B = check_positive_int(B, "B")
        pred = np.zeros((self.length, B, self.output_size), dtype=self.dtype)
        pred[:self.T + self.n_copy, :, self.blank] = 1
        pred[self.T + self.n_copy:, :, 1:self.n_symbols + 1] = 1 / self.n_symbols
        return pred

    def _per_sequence(self, pred, y):
        recall = slice(self.T + self.n_copy, None)
        wrong = pred[recall].argmax(axis=-1) != y[recall]
        return _class_log_loss(pred, y), wrong.astype(np.float64)

    def __repr__(self):
        return (f"CopyMemory(T={self.T}, n_symbols={self.n_symbols}, n_copy={self.n_copy}, "
                f"dtype={self.dtype.name})")


class TemporalOrder(Task):
    """The temporal-order task (Hochreiter & Schmidhuber 1997, experiment 6a; Pascanu et al.
    2013).

    Each sequence has ``T`` one-hot steps over ``2 + n_distractors`` symbols: symbols 0 and 1
    are the relevant ``A`` and ``B``, the others distractors. Two steps hold a relevant symbol,
    each ``A`` or ``B`` with probability 1/2; every other step holds a distractor drawn uniformly.
    The relevant steps (0-based) are drawn uniformly from ``[T//10, 2 T//10)`` and
    ``[5T//10, 5T//10 + T//10)``: Pascanu et al.'s code (``tempOrder.py``), which scales
    Hochreiter & Schmidhuber's positions (``t1`` in [10, 20], ``t2`` in [50, 60] for lengths
    100-110) with ``T`` and, like them here, drops the start/end markers ``E``, ``B`` of the
    original. The target, read after the last step, is the order: class ``2 v1 + v2`` for
    ``AA, AB, BA, BB`` (:attr:`CLASSES`; Pascanu's code numbers them ``v1 + 2 v2``).

    Loss: cross-entropy averaged over sequences; trivial baseline ``ln 4`` (uniform prediction).
    Error rate: the fraction of sequences whose most likely class is wrong; solved below 1% on
    10,000 fresh sequences (:meth:`Task.score`).

    Parameters
    ----------
    T : int
        Sequence length (>= 10).
    n_distractors : int, optional
        Number of distractor symbols (4).
    dtype, seed
        See :class:`Task`.
    """

    architecture = "many_to_one"
    loss = "cross_entropy"
    output_size = 4
    min_T = 10
    CLASSES = ("AA", "AB", "BA", "BB")

    def __init__(self, T, n_distractors=4, dtype=np.float32, seed=None):
        self.n_distractors = check_positive_int(n_distractors, "n_distractors")
        super().__init__(T, dtype, seed)
        self.input_size = 2 + self.n_distractors
        self.baseline = math.log(4)

    def _generate(self, B, rng):
        T, tenth = self.T, self.T // 10
        p0 = rng.integers(tenth, 2 * tenth, size=B)
        p1 = rng.integers(5 * T // 10, 5 * T // 10 + tenth, size=B)
        v0 = rng.integers(0, 2, size=B)
        v1 = rng.integers(0, 2, size=B)
        seq = rng.integers(2, self.input_size, size=(T, B))
        cols = np.arange(B)
        seq[p0, cols] = v0
        seq[p1, cols] = v1
        x = np.eye(self.input_size, dtype=self.dtype)[seq]
        return x, (2 * v0 + v1).astype(np.int64)

    def trivial_prediction(self, B):
        """Uniform over the 4 classes, ``(B, 4)``."""
        return np.full((check_positive_int(B, "B"), 4), 0.25, dtype=self.dtype)

    def _per_sequence(self, pred, y):
        return _class_log_loss(pred, y), (pred.argmax(axis=-1) != y).astype(np.float64)

    def __repr__(self):
        return (f"TemporalOrder(T={self.T}, n_distractors={self.n_distractors}, "
                f"dtype={self.dtype.name})")


class MelodyGeneration(Task):
    """One-to-many generation of a melody from a cue (the seed's "music generation").

    A fixed set of ``n_melodies`` monophonic melodies over ``n_pitches`` pitches is drawn once
    from ``melody_seed`` (so it is part of the task's definition, the same in every instance):
    melody ``m`` is a sequence of ``period`` pitches, each uniform over the pitches, repeated.
    A sequence picks ``m`` uniformly; the input is the cue ``x = one_hot(m)`` (width
    ``n_pitches``, as a one-to-many model feeds its outputs back, so ``n_melodies <= n_pitches``);
    the target ``y<t>`` (``t = 0 .. T-1``) is the piano roll ``one_hot(melody[m][t mod period])``,
    a binary ``(T, B, n_pitches)`` array.

    Loss: binary cross-entropy summed over pitches, averaged over steps and sequences. Trivial
    baseline: predict the marginal ``q_k``, the probability that pitch ``k`` sounds at a random
    step ``t < T`` of a random melody, at every step; its expected loss is exactly
    ``sum_k H(q_k)`` with ``H`` the binary entropy in nats. Error rate (this package's
    convention): the fraction of steps whose thresholded prediction (``pred > 0.5``) differs from
    the target in any pitch.

    Under teacher forcing (:class:`rnnlab.architectures.OneToMany`) the previous notes are seen;
    free-running generation (``model.generate(x, T)``, e.g. with :meth:`Task.score`) must carry
    the cue across all ``T`` steps.

    Parameters
    ----------
    T : int
        Number of generated steps (>= 1).
    n_pitches : int, optional
        Pitches (input and output width), default 8.
    period : int, optional
        Melody length before it repeats, default 8.
    n_melodies : int, optional
        Number of melodies (<= ``n_pitches``), default 4.
    melody_seed : int, optional
        Seed of the melodies (default 0).
    dtype, seed
        See :class:`Task`.
    """

    architecture = "one_to_many"
    loss = "bce"

    def __init__(self, T, n_pitches=8, period=8, n_melodies=4, melody_seed=0,
                 dtype=np.float32, seed=None):
        self.n_pitches = check_positive_int(n_pitches, "n_pitches", minimum=2)
        self.period = check_positive_int(period, "period")
        self.n_melodies = check_positive_int(n_melodies, "n_melodies")
        if self.n_melodies > self.n_pitches:
            raise ValueError(f"n_melodies ({n_melodies}) must be <= n_pitches ({n_pitches}): "
                             f"the cue is a one-hot vector of width n_pitches")
        self.melody_seed = check_positive_int(melody_seed, "melody_seed", minimum=0)
        super().__init__(T, dtype, seed)
        self.input_size = self.output_size = self.n_pitches
        self.melodies = np.random.default_rng(self.melody_seed).integers(
            0, self.n_pitches, size=(self.n_melodies, self.period))
        steps = self.melodies[:, np.arange(self.T) % self.period]        # (M, T)
        counts = np.zeros(self.n_pitches)
        np.add.at(counts, steps.ravel(), 1)
        self.marginal = counts / steps.size
        self.baseline = float(_binary_entropy(self.marginal).sum())

    def _generate(self, B, rng):
        m = rng.integers(0, self.n_melodies, size=B)
        x = np.eye(self.n_pitches, dtype=self.dtype)[m]
        notes = self.melodies[m][:, np.arange(self.T) % self.period].T        # (T, B)
        y = np.eye(self.n_pitches, dtype=self.dtype)[notes]
        return x, y

    def trivial_prediction(self, B):
        """The marginal ``q`` at every step, ``(T, B, n_pitches)``."""
        B = check_positive_int(B, "B")
        return np.broadcast_to(self.marginal.astype(self.dtype),
                               (self.T, B, self.n_pitches)).copy()

    def _per_sequence(self, pred, y):
        tiny = np.finfo(np.float64).tiny
        y = y.astype(np.float64)
        terms = -(y * np.log(np.maximum(pred, tiny)) + (1 - y) * np.log(np.maximum(1 - pred, tiny)))
        wrong = ((pred > 0.5) != (y > 0.5)).any(axis=-1)
        return terms.sum(axis=-1), wrong.astype(np.float64)

    def __repr__(self):
        return (f"MelodyGeneration(T={self.T}, n_pitches={self.n_pitches}, period={self.period},"
                f" n_melodies={self.n_melodies}, dtype={self.dtype.name})")


#: Task name -> class, for experiment grids.
TASKS = {"adding": AddingProblem, "copy": CopyMemory, "temporal_order": TemporalOrder,
         "melody": MelodyGeneration}


def make_task(name, T, **kwargs):
    """Build a task by name.

    Parameters
    ----------
    name : {"adding", "copy", "temporal_order", "melody"}
        See :data:`TASKS`.
    T : int
        Sequence length parameter.
    **kwargs
        Passed to the task's class (``variant``, ``dtype``, ``seed``, ...).

    Returns
    -------
    Task
    """
    if name not in TASKS:
        raise ValueError(f"task name must be one of {sorted(TASKS)}, got {name!r}")
    return TASKS[name](T, **kwargs)
