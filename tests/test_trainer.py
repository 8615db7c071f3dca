"""The trainer: the clipped update is the formula, runs are deterministic, divergence is a
result, BPTT variants plug in, and the adding problem separates LSTM from vanilla tanh."""

import copy

import numpy as np
import pytest

from rnnlab.architectures import make_model
from rnnlab.training import AddingProblem, CopyMemory, TemporalOrder, Trainer, spectral_radius

F64 = np.float64


def _setup(cell="rnn_tanh", T=20, H=8, task_cls=AddingProblem, dtype=F64, seed=0):
    task = task_cls(T, dtype=dtype, seed=seed)
    model = make_model(task.architecture, cell, task.input_size, H, task.output_size,
                       loss=task.loss, dtype=dtype, seed=seed)
    return task, model


def _first_batch_grads(trainer, task, model, B):
    """The first batch the trainer will draw (a copy of its generator), and its gradient."""
    x, y, mask = task.batch(B, copy.deepcopy(trainer._train_rng))
    loss, grads = model.loss_and_grad(x, y, mask)
    return loss / mask.sum(), {k: v / mask.sum() for k, v in grads.items()}


@pytest.mark.parametrize("threshold", [0.05, 1e3])
def test_one_clipped_sgd_update_equals_pascanus_formula(threshold):
    task, model = _setup()
    trainer = Trainer(model, task, optimizer="sgd", lr=0.1, clip=("norm", threshold),
                      batch_size=5, eval_every=10, seed=3)
    before = {k: p.copy() for k, p in model.parameters().items()}
    loss, g = _first_batch_grads(trainer, task, model, 5)
    norm = np.sqrt(sum((v ** 2).sum() for v in g.values()))
    scale = min(1.0, threshold / norm)
    result = trainer.fit(1)
    for k, p in model.parameters().items():
        np.testing.assert_allclose(p, before[k] - 0.1 * scale * g[k], rtol=1e-12, atol=1e-15)
    row = result.log.iloc[0]
    assert bool(row.clipped) == (scale < 1) and not row.skipped
    assert row.grad_norm_before == pytest.approx(norm, rel=1e-12)
    assert row.grad_norm_after == pytest.approx(min(norm, threshold), rel=1e-12)
    assert row.loss == pytest.approx(loss, rel=1e-12)


@pytest.mark.parametrize("bptt", ["checkpointed", ("truncated", 20, 20)])
def test_bptt_variants_make_the_full_bptt_update(bptt):
    task, model = _setup("lstm")
    ref_task, ref_model = _setup("lstm")
    kw = dict(optimizer="sgd", lr=0.05, batch_size=4, eval_every=10, seed=1)
    Trainer(ref_model, ref_task, **kw).fit(1)
    Trainer(model, task, bptt=bptt, **kw).fit(1)
    for k, p in model.parameters().items():
        np.testing.assert_allclose(p, ref_model.parameters()[k], rtol=1e-12, atol=1e-14)


def test_truncated_bptt_makes_one_update_per_k1_steps():
    task, model = _setup("gru", task_cls=CopyMemory, T=10)  # many-to-many, 30 steps
    result = Trainer(model, task, optimizer="adam", lr=1e-3, bptt=("truncated", 10, 15),
                     batch_size=4, eval_every=100, eval_sequences=10, seed=0).fit(6)
    assert result.steps == 6 and len(result.log) == 6  # two sequences, three chunks each


def test_runs_are_deterministic_given_the_seed():
    logs = []
    for _ in range(2):
        task, model = _setup("gru", task_cls=TemporalOrder, T=20)
        res = Trainer(model, task, optimizer="rmsprop", lr=1e-3, clip=("norm", 1.0),
                      batch_size=8, eval_every=5, eval_sequences=50, spectral_every=2,
                      seed=7).fit(10)
        logs.append((res.log, res.evals))
    assert logs[0][0].equals(logs[1][0]) and logs[0][1].equals(logs[1][1])
    log = logs[0][0]
    assert list(log.step) == list(range(1, 11))
    assert log.spectral_radius.notna().sum() == 5
    assert set(log.columns) >= {"loss", "grad_norm_before", "grad_norm_after", "clipped",
                                "skipped", "lr", "spectral_radius"}


def test_spectral_radius_is_that_of_w_hh():
    _, model = _setup("rnn_tanh", H=6)
    w = model.parameters()["rnn.weight_hh_l0"]
    assert spectral_radius(model) == pytest.approx(np.abs(np.linalg.eigvals(w)).max())


def test_a_diverging_run_is_a_result_not_an_exception():
    task, model = _setup("rnn_relu", T=50)
    res = Trainer(model, task, optimizer="sgd", lr=1e4, batch_size=4, eval_every=5,
                  eval_sequences=20, seed=0).fit(200)
    assert res.status == "diverged" and res.steps < 200
    assert "loss" in res.message or "weights" in res.message or "gradient" in res.message


def test_the_guard_skips_huge_gradients_and_counts_them():
    task, model = _setup("rnn_tanh")
    trainer = Trainer(model, task, optimizer="sgd", lr=0.01, batch_size=4, eval_every=10,
                      clip=("norm", 1.0), seed=0)
    trainer.clipper.skip_above = 1e-12  # every gradient is "huge"
    before = {k: p.copy() for k, p in model.parameters().items()}
    res = trainer.fit(3)
    assert res.log.skipped.all() and trainer.clipper.n_skipped == 3
    for k, p in model.parameters().items():
        np.testing.assert_array_equal(p, before[k])


def test_argument_errors():
    task, model = _setup()
    with pytest.raises(ValueError, match="optimizer must be one of"):
        Trainer(model, task, optimizer="lbfgs")
    with pytest.raises(ValueError, match="bptt must be"):
        Trainer(model, task, bptt="partial")
    with pytest.raises(ValueError, match="k2 must be >= k1"):
        Trainer(model, task, bptt=("truncated", 10, 5))
    with pytest.raises(ValueError, match="reduction='sum'"):
        Trainer(make_model("many_to_one", "lstm", 2, 4, 1, loss="mse", reduction="mean"), task)
    with pytest.raises(ValueError, match="the model's loss"):
        Trainer(make_model("many_to_one", "lstm", 2, 4, 1, loss="bce"), task)
    with pytest.raises(TypeError, match="max_steps must be an integer"):
        Trainer(model, task).fit(2.5)


def test_lstm_solves_the_adding_problem_where_vanilla_tanh_does_not():
    # a short version of the remedies study's adding result (T = 50 instead of 100)
    status = {}
    for cell in ("lstm", "rnn_tanh"):
        task, model = _setup(cell, T=50, H=16, dtype=np.float32)
        res = Trainer(model, task, optimizer="adam", lr=0.01, clip=("norm", 1.0),
                      batch_size=32, eval_every=100, eval_sequences=500,
                      spectral_every=50, seed=0).fit(1000)
        status[cell] = (res.status, res.final["loss"])
    assert status["lstm"][0] == "solved" and status["lstm"][1] < 0.01
    assert status["rnn_tanh"][0] == "budget" and status["rnn_tanh"][1] > 1 / 24 * 0.5
