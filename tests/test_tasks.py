"""Tasks: exact structure of the sequences, seeding, baselines by formula and empirically, the
papers' error measures, and the shapes the architectures take."""

import math

import numpy as np
import pytest

from rnnlab.architectures import make_model
from rnnlab.losses import bce_with_logits
from rnnlab.training import (TASKS, AddingProblem, CopyMemory, MelodyGeneration, TemporalOrder,
                             make_task)

F64 = np.float64


def _empirical_close(per_sequence, expected, sigmas=5):
    """The sample mean is within ``sigmas`` standard errors of ``expected``."""
    per_sequence = np.asarray(per_sequence, dtype=F64)
    se = per_sequence.std(ddof=1) / math.sqrt(per_sequence.size)
    assert abs(per_sequence.mean() - expected) < sigmas * se + 1e-12, (per_sequence.mean(),
                                                                      expected, se)


# ---------------------------------------------------------------------------- common contract
@pytest.mark.parametrize("name", sorted(TASKS))
@pytest.mark.parametrize("dtype", [np.float32, F64])
def test_shapes_dtypes_and_attributes(name, dtype):
    task = make_task(name, 20, dtype=dtype, seed=0)
    x, y, mask = task.batch(3)
    assert task.architecture in ("many_to_one", "many_to_many", "one_to_many")
    assert task.loss in ("mse", "cross_entropy", "bce")
    assert x.dtype == dtype and mask.dtype == dtype and np.all(mask == 1)
    assert x.shape[-1] == task.input_size and x.shape[-2] == 3
    if task.architecture == "one_to_many":
        assert x.ndim == 2 and y.shape[:2] == (task.T, 3)
    else:
        assert x.ndim == 3
    if task.loss == "cross_entropy":
        assert y.dtype == np.int64 and y.shape == mask.shape
        assert y.min() >= 0 and y.max() < task.output_size
    else:
        assert y.dtype == dtype and y.shape[:-1] == mask.shape and y.shape[-1] == task.output_size
    assert task.trivial_prediction(3).shape == (y.shape + (task.output_size,)
                                                if y.dtype.kind == "i" else y.shape)
    assert repr(task).startswith(type(task).__name__)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_seeding(name):
    a = make_task(name, 20, seed=7).batch(5)
    b = make_task(name, 20, seed=7).batch(5)
    c = make_task(name, 20, seed=8).batch(5)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert any(not np.array_equal(u, v) for u, v in zip(a, c))
    # an explicit rng (or seed) per call overrides the task's own generator
    task = make_task(name, 20, seed=8)
    d = task.batch(5, rng=np.random.default_rng(3))
    e = task.batch(5, rng=3)
    for u, v in zip(d, e):
        np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_model_loss_over_mask_sum_is_the_papers_loss(name):
    """The architecture takes the batch as it is, and its summed loss / mask.sum() is the loss in
    the normalisation of ``baseline`` and ``evaluate``."""
    task = make_task(name, 12, dtype=F64, seed=1)
    x, y, mask = task.batch(4)
    model = make_model(task.architecture, "rnn_tanh", task.input_size, 5, task.output_size,
                       loss=task.loss, dtype=F64, seed=0)
    loss, grads = model.loss_and_grad(x, y, mask)
    assert set(grads) == set(model.parameters())
    if task.architecture == "one_to_many":
        # OneToMany has no teacher-forced predict: check the normalisation with the trivial
        # predictor through the loss module instead
        q = task.trivial_prediction(4)
        summed, _ = bce_with_logits(np.log(q) - np.log1p(-q), y, mask)
        assert summed / mask.sum() == pytest.approx(task.evaluate(q, y, mask)["loss"], rel=1e-12)
    else:
        res = task.evaluate(model.predict(x), y, mask)
        assert loss / mask.sum() == pytest.approx(res["loss"], rel=1e-10)


def test_make_task_and_errors():
    assert isinstance(make_task("adding", 10, variant="sum"), AddingProblem)
    with pytest.raises(ValueError, match="task name"):
        make_task("parity", 10)
    with pytest.raises(ValueError, match="T must be >= 2"):
        AddingProblem(1)
    with pytest.raises(ValueError, match="T must be >= 10"):
        AddingProblem(9, placement="pascanu")
    with pytest.raises(ValueError, match="T must be >= 10"):
        TemporalOrder(9)
    with pytest.raises(TypeError, match="T must be an integer"):
        CopyMemory(5.0)
    with pytest.raises(ValueError, match="variant"):
        AddingProblem(10, variant="product")
    with pytest.raises(ValueError, match="placement"):
        AddingProblem(10, placement="anywhere")
    with pytest.raises(ValueError, match="tolerance"):
        AddingProblem(10, tolerance=0)
    with pytest.raises(TypeError, match="dtype"):
        CopyMemory(5, dtype=np.int32)
    with pytest.raises(TypeError, match="seed"):
        CopyMemory(5, seed="abc")
    with pytest.raises(TypeError, match="rng"):
        CopyMemory(5).batch(2, rng=1.5)
    with pytest.raises(ValueError, match="B must be >= 1"):
        CopyMemory(5).batch(0)
    with pytest.raises(ValueError, match="n_melodies"):
        MelodyGeneration(5, n_pitches=4, n_melodies=5)


def test_evaluate_checks_its_arguments():
    task = TemporalOrder(10, seed=0)
    _, y, _ = task.batch(4)
    with pytest.raises(ValueError, match=r"pred must have shape \(4, 4\)"):
        task.evaluate(np.full((4, 3), 1 / 3), y)
    with pytest.raises(TypeError, match="floating-point"):
        task.evaluate(np.ones((4, 4), dtype=int), y)
    with pytest.raises(ValueError, match="NaN"):
        task.evaluate(np.full((4, 4), np.nan), y)
    with pytest.raises(ValueError, match="mask must have shape"):
        task.evaluate(task.trivial_prediction(4), y, np.ones(3))
    with pytest.raises(ValueError, match="error_rate"):
        task.success(1.5)


# ---------------------------------------------------------------------------- adding problem
@pytest.mark.parametrize("T", [2, 3, 17, 100])
def test_adding_halves_structure(T):
    task = AddingProblem(T, variant="sum", dtype=F64, seed=T)
    x, y, _ = task.batch(500)
    values, marker = x[:, :, 0], x[:, :, 1]
    assert ((values >= 0) & (values < 1)).all()
    assert set(np.unique(marker)) <= {0.0, 1.0}
    assert (marker.sum(axis=0) == 2).all()
    half = T // 2
    assert (marker[:half].sum(axis=0) == 1).all() and (marker[half:].sum(axis=0) == 1).all()
    np.testing.assert_array_equal(y[:, 0], (values * marker).sum(axis=0))
    if T == 100:  # both markers cover their halves
        first = marker.argmax(axis=0)
        second = T - 1 - marker[::-1].argmax(axis=0)
        assert first.min() == 0 and first.max() == half - 1
        assert second.min() == half and second.max() == T - 1


def test_adding_mean_variant_and_pascanu_placement():
    task = AddingProblem(50, variant="mean", placement="pascanu", dtype=F64, seed=0)
    x, y, _ = task.batch(2000)
    marker = x[:, :, 1]
    pos = np.sort(np.argwhere(marker.T == 1)[:, 1].reshape(-1, 2), axis=1)
    # Pascanu et al.'s addition.py: first in [0, T/10), second in [T/10, T/10 + 4T/10)
    assert pos[:, 0].min() == 0 and pos[:, 0].max() == 4
    assert pos[:, 1].min() == 5 and pos[:, 1].max() == 24
    np.testing.assert_allclose(y[:, 0], (x[:, :, 0] * marker).sum(axis=0) / 2, rtol=1e-15)


def test_adding_float32_target_is_the_mean_of_the_values_seen():
    task = AddingProblem(10, seed=0)
    x, y, _ = task.batch(100)
    marked = (x[:, :, 0].astype(F64) * x[:, :, 1]).sum(axis=0) / 2
    np.testing.assert_array_equal(y[:, 0], marked.astype(np.float32))


@pytest.mark.parametrize("variant, baseline", [("mean", 1 / 24), ("sum", 1 / 6)])
def test_adding_baseline(variant, baseline):
    task = AddingProblem(6, variant=variant, dtype=F64, seed=11)
    # by formula: the trivial predictor outputs E[target]; its MSE is Var(target), with
    # Var(U[0,1]) = 1/12 and two independent values
    var_u = 1 / 12
    assert task.baseline == (2 * var_u / 4 if variant == "mean" else 2 * var_u)
    assert task.baseline == pytest.approx(baseline, rel=1e-15)
    assert task.trivial_prediction(1)[0, 0] == (0.5 if variant == "mean" else 1.0)
    # empirically: a large batch's loss of the trivial predictor, within sampling error
    B = 100_000
    _, y, _ = task.batch(B)
    pred = task.trivial_prediction(B)
    _empirical_close((pred[:, 0] - y[:, 0]) ** 2, task.baseline)
    assert task.evaluate(pred, y)["loss"] == pytest.approx(((pred - y) ** 2).mean(), rel=1e-12)


def test_adding_error_rate_is_pascanus():
    task = AddingProblem(10, dtype=F64, seed=0)
    _, y, _ = task.batch(8)
    pred = y.copy()
    pred[:3, 0] += np.array([0.21, 0.19, -0.3])  # squared errors 0.0441, 0.0361, 0.09
    res = task.evaluate(pred, y)
    assert res["error_rate"] == 2 / 8 and not res["success"]
    assert task.evaluate(y.copy(), y) == {"loss": 0.0, "error_rate": 0.0, "success": True, "n": 8}
    # mask weights sequences
    mask = np.zeros(8)
    mask[1] = 1
    assert task.evaluate(pred, y, mask)["error_rate"] == 0.0


# ---------------------------------------------------------------------------- copy memory
@pytest.mark.parametrize("T", [1, 2, 30])
def test_copy_memory_structure(T):
    task = CopyMemory(T, seed=T)
    x, y, mask = task.batch(64)
    L = T + 20
    assert x.shape == (L, 64, 10) and y.shape == (L, 64) and mask.shape == (L, 64)
    assert (x.sum(axis=-1) == 1).all()
    seq = x.argmax(axis=-1)
    symbols = seq[:10]
    assert ((symbols >= 1) & (symbols <= 8)).all()
    assert set(np.unique(symbols)) == set(range(1, 9))
    assert (seq[10:T + 9] == 0).all()          # T - 1 blanks
    assert (seq[T + 9] == 9).all()             # the delimiter
    assert (seq[T + 10:] == 0).all()           # 10 blanks
    assert (y[:T + 10] == 0).all()
    np.testing.assert_array_equal(y[T + 10:], symbols)


@pytest.mark.parametrize("T", [1, 100, 1000])
def test_copy_memory_baseline(T):
    task = CopyMemory(T, seed=0)
    assert task.baseline == 10 * math.log(8) / (T + 20)
    _, y, mask = task.batch(50)
    res = task.evaluate(task.trivial_prediction(50), y, mask)
    # the memoryless predictor's loss does not depend on the draw: it equals the baseline
    assert res["loss"] == pytest.approx(task.baseline, rel=1e-6)  # float32 probabilities
    assert CopyMemory(T, n_symbols=4, n_copy=3).baseline == 3 * math.log(4) / (T + 6)


def test_copy_memory_error_rate_counts_recalled_symbols():
    task = CopyMemory(5, dtype=F64, seed=0)
    _, y, _ = task.batch(4)
    pred = np.eye(10)[y]
    res = task.evaluate(pred, y)
    assert res["loss"] == 0.0 and res["error_rate"] == 0.0 and res["success"]
    pred[-1, 0] = np.eye(10)[(y[-1, 0] % 8) + 1]   # one wrong symbol of 40 recalled
    pred[0, 1] = np.eye(10)[3]                     # a wrong blank: costs loss, not recall errors
    res = task.evaluate(pred, y)
    assert res["error_rate"] == 1 / 40
    assert res["loss"] == pytest.approx(2 * -math.log(np.finfo(F64).tiny) / (25 * 4))


# ---------------------------------------------------------------------------- temporal order
@pytest.mark.parametrize("T", [10, 19, 100, 250])
def test_temporal_order_structure(T):
    task = TemporalOrder(T, seed=T)
    x, y, _ = task.batch(2000)
    assert x.shape == (T, 2000, 6) and (x.sum(axis=-1) == 1).all()
    seq = x.argmax(axis=-1)
    relevant = seq < 2
    assert (relevant.sum(axis=0) == 2).all()
    pos = np.sort(np.argwhere(relevant.T)[:, 1].reshape(-1, 2), axis=1)
    tenth = T // 10
    assert pos[:, 0].min() == tenth and pos[:, 0].max() == 2 * tenth - 1
    assert pos[:, 1].min() == 5 * T // 10 and pos[:, 1].max() == 5 * T // 10 + tenth - 1
    cols = np.arange(2000)
    first, second = seq[pos[:, 0], cols], seq[pos[:, 1], cols]
    names = np.array(TemporalOrder.CLASSES)[y]
    expected = np.array(["AB"[a] + "AB"[b] for a, b in zip(first, second)])
    np.testing.assert_array_equal(names, expected)
    assert set(np.unique(y)) == {0, 1, 2, 3}


def test_temporal_order_baseline_and_score():
    task = TemporalOrder(20, dtype=F64, seed=0)
    assert task.baseline == math.log(4)
    _, y, _ = task.batch(1000)
    res = task.evaluate(task.trivial_prediction(1000), y)
    assert res["loss"] == pytest.approx(math.log(4), rel=1e-15)
    _empirical_close(y == 0, 0.25)  # each class has probability 1/4

    def oracle(x):
        seq = x.argmax(axis=-1)
        pos = np.sort(np.argwhere((seq < 2).T)[:, 1].reshape(-1, 2), axis=1)
        cols = np.arange(x.shape[1])
        return np.eye(4)[2 * seq[pos[:, 0], cols] + seq[pos[:, 1], cols]]

    assert task.score(oracle, n_sequences=2500, batch_size=1000) == {
        "loss": 0.0, "error_rate": 0.0, "success": True, "n": 2500}
    bad = task.score(lambda x: np.full((x.shape[1], 4), 0.25), n_sequences=300, batch_size=128)
    assert bad["loss"] == pytest.approx(math.log(4)) and not bad["success"]


# ---------------------------------------------------------------------------- melody generation
def test_melody_structure_and_fixed_melodies():
    task = MelodyGeneration(21, n_pitches=6, period=5, n_melodies=3, seed=0)
    other = MelodyGeneration(21, n_pitches=6, period=5, n_melodies=3, seed=99)
    np.testing.assert_array_equal(task.melodies, other.melodies)  # part of the definition
    x, y, mask = task.batch(50)
    assert x.shape == (50, 6) and y.shape == (21, 50, 6) and mask.shape == (21, 50)
    m = x.argmax(axis=-1)
    assert (x.sum(axis=-1) == 1).all() and m.max() < 3
    for b in range(50):
        for t in range(21):
            assert y[t, b].argmax() == task.melodies[m[b], t % 5] and y[t, b].sum() == 1


def test_melody_baseline():
    task = MelodyGeneration(13, n_pitches=5, period=4, n_melodies=3, dtype=F64, seed=2)
    # by formula, from a direct count over (melody, step)
    q = np.zeros(5)
    for mel in task.melodies:
        for t in range(13):
            q[mel[t % 4]] += 1 / (3 * 13)
    expected = sum(-(p * math.log(p) + (1 - p) * math.log(1 - p)) for p in q if 0 < p < 1)
    assert task.baseline == pytest.approx(expected, rel=1e-13)
    # empirically
    B = 20_000
    _, y, _ = task.batch(B)
    pred = task.trivial_prediction(B)
    per_seq = -(y * np.log(pred) + (1 - y) * np.log1p(-pred)).sum(axis=-1).mean(axis=0)
    _empirical_close(per_seq, task.baseline)
    res = task.evaluate(pred, y)
    assert res["loss"] == pytest.approx(per_seq.mean(), rel=1e-12)
    assert res["error_rate"] == 1.0  # every q_k < 1/2: all pitches off, every step wrong
    assert task.evaluate(y.copy(), y)["success"]
