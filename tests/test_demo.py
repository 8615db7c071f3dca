"""The main job's demo: trains, writes its tables and figure."""

import pandas as pd

from rnnlab.demo import run_demo


def test_demo_trains_and_writes_outputs(tmp_path):
    result = run_demo(out_dir=tmp_path, steps=400, verbose=False)
    assert result["accuracy"] > 0.95  # chance is 0.5
    curve = pd.read_csv(result["paths"]["loss_curve"])
    norms = pd.read_csv(result["paths"]["gradient_norms"])
    assert list(curve.columns) == ["step", "loss", "loss_per_step", "grad_norm"]
    assert curve.loss_per_step.iloc[-20:].mean() < 0.1 < curve.loss_per_step.iloc[0]
    # the gradient of the last step's loss decays with distance
    assert norms.grad_norm_init.iloc[-1] > norms.grad_norm_init.iloc[-50] > 0
    assert result["paths"]["figure"].stat().st_size > 10_000
