"""Smoke tests of the remedies study (experiments/remedies.py): the cliff's gradient against
finite differences, clipped steps bounded, a training point's rows, divergence recorded, the
figures drawn."""

import numpy as np
import pandas as pd
import pytest

from rnnlab.harness import Diverged, registry


@pytest.fixture(scope="module")
def study():
    return registry.load_study("remedies")


def test_cliff_gradient_matches_finite_differences(study):
    mod = study.module
    w = np.array([-1.0, 3.0, 5.5, 7.0, 12.0])
    b = np.array([1.0, -1.5, -2.5, -3.5, -6.0])
    loss, gw, gb = mod.cliff_loss_and_grad(w, b)
    eps = 1e-6
    fw = (mod.cliff_loss_and_grad(w + eps, b)[0] - mod.cliff_loss_and_grad(w - eps, b)[0]) / 2 / eps
    fb = (mod.cliff_loss_and_grad(w, b + eps)[0] - mod.cliff_loss_and_grad(w, b - eps)[0]) / 2 / eps
    np.testing.assert_allclose(gw, fw, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(gb, fb, rtol=1e-5, atol=1e-7)
    # and the loss is the 50-step recurrence's
    x = np.full(5, mod.CLIFF_X0)
    for _ in range(50):
        x = w / (1 + np.exp(-x)) + b
    np.testing.assert_allclose(loss, (x - mod.CLIFF_TARGET) ** 2, rtol=1e-14)


def test_cliff_trajectories_plain_jumps_clipped_does_not(study):
    runs = {m: study.run({"task": "cliff", "method": m, "seed": 0}) for m in ("sgd", "sgd_clip")}
    mod = study.module
    for method, rows in runs.items():
        err = rows[rows.quantity == "error"].sort_values("step")
        assert list(rows.columns) == ["step", "w", "b", "quantity", "value"]
        step = np.hypot(np.diff(err.w), np.diff(err.b))
        if method == "sgd_clip":  # every step at most lr * threshold
            assert step.max() <= mod.CLIFF_LR * mod.CLIFF_CLIP * (1 + 1e-12)
        else:  # the wall throws plain gradient descent far away
            assert step.max() > 10
    assert runs["sgd_clip"].query("quantity == 'error'").value.iloc[-1] < 0.1


def test_training_point_rows_and_divergence(study):
    point = {"task": "adding", "method": "lstm", "T": 10, "steps": 3, "seed": 0, "H": 4,
             "lr": 0.01, "batch": 4, "eval_every": 2}
    rows = study.run(point)
    assert list(rows.columns) == ["quantity", "step", "value"]
    q = set(rows.quantity)
    assert {"final_loss", "final_error_rate", "solved", "updates", "baseline",
            "clipped_updates", "skipped_updates", "eval_loss"} <= q
    assert rows[rows.quantity == "baseline"].value.iloc[0] == pytest.approx(1 / 24)
    pd.testing.assert_frame_equal(rows, study.run(point), check_exact=True)
    with pytest.raises(Diverged):
        study.run({**point, "method": "irnn", "lr": 1e6, "steps": 50, "T": 30})


def test_figures_from_a_small_table(study, tmp_path):
    frames = []
    points = [{"task": "cliff", "method": m, "seed": 0} for m in ("surface", "sgd", "sgd_clip")]
    points += [{"task": "adding", "method": m, "T": T, "steps": 2, "seed": 0, "H": 4,
                "lr": 0.01, "batch": 4, "eval_every": 2} for m in ("tanh", "gru") for T in (5, 8)]
    for p in points:
        frames.append(study.run(p).assign(status="ok", **p))
    files = study.figure(pd.concat(frames, ignore_index=True), tmp_path)
    assert sorted(f.name for f in files) == ["remedies.png", "remedies_cliff.png"]
    assert all(f.stat().st_size > 10_000 for f in files)
