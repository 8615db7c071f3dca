"""Gradient clipping (Pascanu et al. 2013, Algorithm 1) and the NaN/Inf guard."""

import math

import numpy as np
import pytest

from rnnlab.training import Clipper, check_step, clip_grad_norm, clip_grad_value, global_norm
from rnnlab.training.clipping import SKIP_ABOVE

F64 = np.float64


def _grads(scale=1.0, dtype=F64, seed=0):
    rng = np.random.default_rng(seed)
    return {"rnn.weight_hh_l0": (scale * rng.standard_normal((4, 4))).astype(dtype),
            "rnn.bias_hh_l0": (scale * rng.standard_normal(4)).astype(dtype),
            "head.weight_0": (scale * rng.standard_normal((2, 4))).astype(dtype)}


def _naive_norm(grads):
    return math.sqrt(sum(float((g.astype(F64) ** 2).sum()) for g in grads.values()))


# ---------------------------------------------------------------------------- global_norm
@pytest.mark.parametrize("dtype", [np.float32, F64])
def test_global_norm_is_the_norm_of_all_entries(dtype):
    grads = _grads(dtype=dtype)
    flat = np.concatenate([g.astype(F64).ravel() for g in grads.values()])
    assert global_norm(grads) == pytest.approx(np.linalg.norm(flat), rel=1e-15)
    assert global_norm({"a": np.array([3.0, 4.0]), "b": np.zeros((0, 2))}) == 5.0
    assert global_norm({}) == 0.0


def test_global_norm_accumulates_float32_in_float64():
    g = {"a": np.full(10_000, 1e20, dtype=np.float32)}  # squares overflow float32, not float64
    assert global_norm(g) == pytest.approx(1e22, rel=1e-7)


def test_global_norm_survives_over_and_underflow_of_the_squares():
    assert global_norm({"a": np.array([3e200, 4e200])}) == pytest.approx(5e200, rel=1e-15)
    assert global_norm({"a": np.array([3e-200]), "b": np.array([4e-200])}) == pytest.approx(
        5e-200, rel=1e-15)
    assert global_norm({"a": np.array([1e308, 1e308])}) == pytest.approx(math.sqrt(2) * 1e308)
    assert global_norm({"a": np.array([1e308, 1e308, 1e308, 1e308])}) == math.inf
    tiny = np.nextafter(0.0, 1.0)  # the smallest subnormal
    assert global_norm({"a": np.array([3 * tiny, 4 * tiny])}) == 5 * tiny


def test_global_norm_of_non_finite_gradients():
    assert math.isnan(global_norm({"a": np.array([1.0, np.nan]), "b": np.array([np.inf])}))
    assert global_norm({"a": np.array([1.0, -np.inf])}) == math.inf


def test_global_norm_argument_errors():
    with pytest.raises(TypeError, match="grads must be a dict"):
        global_norm([np.ones(2)])
    with pytest.raises(TypeError, match=r"grads\['a'\] must be a floating-point ndarray"):
        global_norm({"a": np.ones(2, dtype=int)})
    with pytest.raises(TypeError, match=r"grads\['a'\] must be a floating-point ndarray"):
        global_norm({"a": [1.0, 2.0]})


# ---------------------------------------------------------------------------- norm clipping
def test_clip_grad_norm_is_pascanus_rescaling():
    grads = _grads(scale=3.0)
    before = {k: g.copy() for k, g in grads.items()}
    norm = clip_grad_norm(grads, 1.0)
    assert norm == global_norm(before) and norm > 1.0
    for k, g in grads.items():
        # g <- threshold / ||g|| * g, the factor in float64: exactly
        np.testing.assert_array_equal(g, before[k] * (1.0 / norm))
        cos = (g * before[k]).sum() / (np.linalg.norm(g) * np.linalg.norm(before[k]))
        assert cos == pytest.approx(1.0, abs=1e-15)  # direction kept
    assert global_norm(grads) == pytest.approx(1.0, rel=1e-15)


@pytest.mark.parametrize("threshold", [1.0, 2.5])
def test_clip_grad_norm_leaves_small_gradients_untouched(threshold):
    grads = _grads(scale=1e-3)
    before = {k: g.copy() for k, g in grads.items()}
    live = grads["rnn.bias_hh_l0"]
    norm = clip_grad_norm(grads, threshold)
    assert norm == pytest.approx(_naive_norm(before), rel=1e-15)
    assert grads["rnn.bias_hh_l0"] is live
    for k in grads:
        np.testing.assert_array_equal(grads[k], before[k])
    # exactly at the threshold: untouched (Algorithm 1 clips above it)
    unit = {"a": np.array([0.6, 0.8])}
    clip_grad_norm(unit, 1.0)
    np.testing.assert_array_equal(unit["a"], [0.6, 0.8])


def test_clip_grad_norm_keeps_float32():
    grads = _grads(scale=50.0, dtype=np.float32)
    clip_grad_norm(grads, 0.5)
    assert all(g.dtype == np.float32 for g in grads.values())
    assert global_norm(grads) == pytest.approx(0.5, rel=1e-6)


def test_clip_grad_norm_leaves_non_finite_gradients_alone():
    grads = {"a": np.array([1.0, np.inf]), "b": np.array([2.0])}
    assert clip_grad_norm(grads, 1.0) == math.inf
    np.testing.assert_array_equal(grads["a"], [1.0, np.inf])
    np.testing.assert_array_equal(grads["b"], [2.0])


# ---------------------------------------------------------------------------- value clipping
def test_clip_grad_value():
    grads = {"a": np.array([-3.0, -0.5, 0.0, 0.5, 3.0]), "b": np.array([[2.0, np.nan]])}
    assert clip_grad_value(grads, 1.0) == 3
    np.testing.assert_array_equal(grads["a"], [-1.0, -0.5, 0.0, 0.5, 1.0])
    np.testing.assert_array_equal(grads["b"], [[1.0, np.nan]])
    g32 = {"a": np.array([5.0, -5.0], dtype=np.float32)}
    clip_grad_value(g32, 0.1)
    assert g32["a"].dtype == np.float32
    np.testing.assert_array_equal(g32["a"], np.array([0.1, -0.1], dtype=np.float32))


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_thresholds(bad):
    with pytest.raises(ValueError, match="max_norm must be a finite number > 0"):
        clip_grad_norm(_grads(), bad)
    with pytest.raises(ValueError, match="clip_value must be a finite number > 0"):
        clip_grad_value(_grads(), bad)
    with pytest.raises(ValueError, match="threshold must be a finite number > 0"):
        Clipper("norm", bad)
    with pytest.raises(ValueError, match="skip_above must be a finite number > 0"):
        check_step(1.0, bad)


def test_threshold_types():
    with pytest.raises(TypeError, match="max_norm must be a real number"):
        clip_grad_norm(_grads(), "1.0")
    with pytest.raises(TypeError, match="threshold must be a real number"):
        Clipper("value", True)


# ---------------------------------------------------------------------------- the guard
def test_check_step():
    assert not check_step(0.0) and not check_step(3.0) and not check_step(SKIP_ABOVE)
    assert check_step(math.nan) and check_step(math.inf) and check_step(-math.inf)
    assert check_step(2e10) and check_step(-1.0)
    assert not check_step(2e10, skip_above=1e12) and check_step(11.0, skip_above=10)
    assert SKIP_ABOVE == 1e10  # Pascanu et al.'s limit


def test_clipper_norm_mode_reports_and_counts():
    clipper = Clipper("norm", 1.0)
    small = _grads(scale=1e-2)
    info = clipper(small)
    assert info == {"norm_before": global_norm(small), "norm_after": global_norm(small),
                    "skipped": False, "clipped": False}
    big = _grads(scale=10.0)
    expected = {k: g * (1.0 / global_norm(big)) for k, g in big.items()}
    info = clipper(big)
    assert info["clipped"] and not info["skipped"] and info["norm_before"] > 1.0
    assert info["norm_after"] == pytest.approx(1.0, rel=1e-15)
    for k in big:
        np.testing.assert_array_equal(big[k], expected[k])
    for bad in (np.nan, np.inf, 1e11):
        g = _grads()
        g["rnn.bias_hh_l0"][0] = bad
        snapshot = {k: a.copy() for k, a in g.items()}
        info = clipper(g)
        assert info["skipped"] and not info["clipped"]
        for k in g:  # a skipped step's gradient is left as it was
            np.testing.assert_array_equal(g[k], snapshot[k])
    assert (clipper.n_steps, clipper.n_clipped, clipper.n_skipped) == (5, 1, 3)
    assert clipper.stats() == {"steps": 5, "clipped": 1, "skipped": 3}
    assert "skipped=3" in repr(clipper)
    clipper.reset()
    assert clipper.stats() == {"steps": 0, "clipped": 0, "skipped": 0}


def test_clipper_value_mode_and_guard_only():
    clipper = Clipper("value", 0.5)
    g = {"a": np.array([2.0, 0.1, -2.0])}
    info = clipper(g)
    assert info["clipped"] and info["norm_before"] == pytest.approx(math.sqrt(8.01))
    assert info["norm_after"] == pytest.approx(math.sqrt(0.51))
    np.testing.assert_array_equal(g["a"], [0.5, 0.1, -0.5])
    assert not clipper({"a": np.array([0.1])})["clipped"]

    guard = Clipper(None)
    g = {"a": np.array([300.0, 400.0])}
    info = guard(g)
    assert info == {"norm_before": 500.0, "norm_after": 500.0, "skipped": False,
                    "clipped": False}
    assert guard({"a": np.array([np.nan])})["skipped"]
    no_limit = Clipper("norm", 1.0, skip_above=None)
    assert not no_limit({"a": np.array([1e300])})["skipped"]
    assert no_limit({"a": np.array([np.inf])})["skipped"]


def test_clipper_argument_errors():
    with pytest.raises(ValueError, match="mode must be"):
        Clipper("l2", 1.0)
    with pytest.raises(ValueError, match="needs a threshold"):
        Clipper("norm")
    with pytest.raises(ValueError, match="mode is None"):
        Clipper(None, 1.0)
    with pytest.raises(TypeError, match="grads must be a dict"):
        Clipper("norm", 1.0)(np.ones(3))
