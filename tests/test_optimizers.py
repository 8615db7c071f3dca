"""Optimisers and learning-rate schedules: naive NumPy transcriptions of the PyTorch docs'
pseudo-code (float64), argument errors, float32 kept float32, and (where torch is importable)
torch.optim itself."""

import math

import numpy as np
import pytest

from rnnlab.training import (SGD, Adam, CosineAnnealingLR, ExponentialLR, RMSprop, StepLR)

F64 = np.float64
N_STEPS = 7


def _problem(dtype=F64, seed=0):
    rng = np.random.default_rng(seed)
    params = {"w": rng.standard_normal((3, 4)).astype(dtype),
              "b": rng.standard_normal(4).astype(dtype)}
    grads = [{k: (rng.standard_normal(p.shape) * 10.0 ** rng.integers(-3, 2)).astype(dtype)
              for k, p in params.items()} for _ in range(N_STEPS)]
    return params, grads


# ---------------------------------------------------------------------------- naive references
def naive_rmsprop(theta, grads, lr=0.01, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                  centered=False):
    """torch.optim.RMSprop's documented algorithm, line by line, for one array."""
    v = np.zeros_like(theta)
    g_ave = np.zeros_like(theta)
    b = np.zeros_like(theta)
    theta = theta.copy()
    for g in grads:
        if weight_decay != 0:
            g = g + weight_decay * theta
        v = alpha * v + (1 - alpha) * g * g
        v_tilde = v
        if centered:
            g_ave = g_ave * alpha + (1 - alpha) * g
            v_tilde = v_tilde - g_ave ** 2
        if momentum > 0:
            b = momentum * b + g / (np.sqrt(v_tilde) + eps)
            theta = theta - lr * b
        else:
            theta = theta - lr * g / (np.sqrt(v_tilde) + eps)
    return theta


def naive_adam(theta, grads, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
               amsgrad=False):
    """torch.optim.Adam's documented algorithm, line by line, for one array.

    AMSGrad: the running maximum is taken of the raw second moment ``v`` and divided by the
    current bias correction, as torch's implementation does (the docs' pseudo-code writes the
    maximum of the bias-corrected ``v_hat``, which differs; the torch test below settles it)."""
    beta1, beta2 = betas
    m = np.zeros_like(theta)
    v = np.zeros_like(theta)
    v_max = np.zeros_like(theta)
    theta = theta.copy()
    for t, g in enumerate(grads, start=1):
        if weight_decay != 0:
            g = g + weight_decay * theta
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g ** 2
        m_hat = m / (1 - beta1 ** t)
        if amsgrad:
            v_max = np.maximum(v_max, v)
            v_hat = v_max / (1 - beta2 ** t)
        else:
            v_hat = v / (1 - beta2 ** t)
        theta = theta - lr * m_hat / (np.sqrt(v_hat) + eps)
    return theta


def naive_sgd(theta, grads, lr, momentum=0.0):
    buf = np.zeros_like(theta)
    theta = theta.copy()
    for g in grads:
        buf = momentum * buf + g
        theta = theta - lr * buf
    return theta


def _run(cls, params, grads, **kwargs):
    opt = cls(params, **kwargs)
    for g in grads:
        opt.step(g)
    return opt


def _close(actual, expected):
    """Equal up to a couple of ulps of the parameter: the implementation arranges the same
    expressions as torch does, the naive code as the docs write them."""
    np.testing.assert_allclose(actual, expected, rtol=1e-15, atol=1e-15)


RMSPROP_CASES = [{}, {"lr": 0.003, "alpha": 0.9, "eps": 1e-6}, {"momentum": 0.9},
                 {"centered": True}, {"centered": True, "momentum": 0.5, "weight_decay": 0.1}]
ADAM_CASES = [{}, {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6}, {"weight_decay": 0.05},
              {"amsgrad": True}, {"amsgrad": True, "weight_decay": 0.1, "betas": (0.5, 0.9)}]


@pytest.mark.parametrize("kwargs", RMSPROP_CASES)
def test_rmsprop_matches_the_docs(kwargs):
    params, grads = _problem()
    start = {k: p.copy() for k, p in params.items()}
    _run(RMSprop, params, grads, **kwargs)
    for k in params:
        _close(params[k], naive_rmsprop(start[k], [g[k] for g in grads], **kwargs))


@pytest.mark.parametrize("kwargs", ADAM_CASES)
def test_adam_matches_the_docs(kwargs):
    params, grads = _problem()
    start = {k: p.copy() for k, p in params.items()}
    _run(Adam, params, grads, **kwargs)
    for k in params:
        _close(params[k], naive_adam(start[k], [g[k] for g in grads], **kwargs))


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_keeps_its_behaviour(momentum):
    params, grads = _problem()
    start = {k: p.copy() for k, p in params.items()}
    _run(SGD, params, grads, lr=0.1, momentum=momentum)
    for k in params:
        _close(params[k], naive_sgd(start[k], [g[k] for g in grads], 0.1, momentum))


def test_defaults_are_pytorchs():
    params, _ = _problem()
    rms, adam = RMSprop(params), Adam(params)
    assert (rms.lr, rms.alpha, rms.eps, rms.weight_decay, rms.momentum, rms.centered) == (
        0.01, 0.99, 1e-8, 0.0, 0.0, False)
    assert (adam.lr, adam.betas, adam.eps, adam.weight_decay, adam.amsgrad) == (
        1e-3, (0.9, 0.999), 1e-8, 0.0, False)


def test_centered_rmsprop_stays_finite_under_a_constant_gradient():
    """v - gbar**2 = alpha**t (1 - alpha**t) g**2 -> 0: rounding must not make it negative."""
    params = {"p": np.zeros(64)}
    g = {"p": np.linspace(0.1, 3.0, 64)}
    opt = RMSprop(params, lr=1e-6, alpha=0.9, centered=True)
    bare = 0
    for _ in range(500):
        opt.step(g)
        bare += (opt.square_avg["p"] - opt.grad_avg["p"] ** 2 < 0).sum()
    assert bare > 0  # the case the clamp is for does occur
    assert np.isfinite(params["p"]).all()


def test_adam_first_step_is_lr_times_sign():
    """Bias correction: the first Adam step is lr * g / (|g| + eps), i.e. lr * sign(g) at
    eps = 0, whatever the gradient's scale."""
    params = {"p": np.zeros(5)}
    g = np.array([1e-3, -2.0, 5.0, -7e2, 3e-9])
    Adam(params, lr=0.1, eps=0.0).step({"p": g})
    np.testing.assert_allclose(params["p"], -0.1 * np.sign(g), rtol=1e-15)


@pytest.mark.parametrize("cls, kwargs", [(SGD, {"lr": 0.1, "momentum": 0.9}), (RMSprop, {}),
                                         (RMSprop, {"centered": True, "momentum": 0.5}),
                                         (Adam, {}), (Adam, {"amsgrad": True})])
def test_float32_stays_float32(cls, kwargs):
    params32, grads32 = _problem(np.float32)
    params64 = {k: p.astype(F64) for k, p in params32.items()}
    opt = _run(cls, params32, grads32, **kwargs)
    _run(cls, params64, [{k: g.astype(F64) for k, g in s.items()} for s in grads32], **kwargs)
    for k in params32:
        assert params32[k].dtype == np.float32
        np.testing.assert_allclose(params32[k], params64[k], rtol=2e-5, atol=1e-6)
    state = [v for v in vars(opt).values() if isinstance(v, dict) and v is not opt.params]
    assert state and all(a.dtype == np.float32 for d in state for a in d.values())


def test_params_are_updated_in_place():
    params, grads = _problem()
    live = params["w"]
    Adam(params).step(grads[0])
    assert params["w"] is live


@pytest.mark.parametrize("cls", [SGD, RMSprop, Adam])
def test_argument_errors(cls):
    params, grads = _problem()
    lr = {"lr": 0.1}
    with pytest.raises(ValueError, match="lr must be a finite number"):
        cls(params, lr=0.0)
    with pytest.raises(ValueError, match="lr must be a finite number"):
        cls(params, lr=float("nan"))
    with pytest.raises(TypeError, match="lr must be a real number"):
        cls(params, lr="0.1")
    with pytest.raises(TypeError, match="params must be a dict"):
        cls([params["w"]], **lr)
    with pytest.raises(ValueError, match="params is empty"):
        cls({}, **lr)
    with pytest.raises(TypeError, match=r"params\['i'\] must be a floating-point ndarray"):
        cls({"i": np.zeros(3, dtype=int)}, **lr)
    opt = cls(params, **lr)
    with pytest.raises(ValueError, match=r"missing entries for parameters \['b'\]"):
        opt.step({"w": grads[0]["w"]})
    with pytest.raises(ValueError, match=r"grads\['b'\] has shape \(3,\)"):
        opt.step({"w": grads[0]["w"], "b": np.zeros(3)})
    with pytest.raises(TypeError, match="grads must be a dict"):
        opt.step([grads[0]["w"]])
    with pytest.raises(ValueError, match=r"(momentum|betas\[0\]) must be a finite number in"):
        cls(params, lr=0.1, momentum=1.0) if cls is not Adam else Adam(params, betas=(1.0, 0.9))


def test_specific_argument_errors():
    params, _ = _problem()
    with pytest.raises(ValueError, match="alpha"):
        RMSprop(params, alpha=1.0)
    with pytest.raises(ValueError, match="eps"):
        RMSprop(params, eps=-1e-8)
    with pytest.raises(ValueError, match="weight_decay"):
        Adam(params, weight_decay=-0.1)
    with pytest.raises(TypeError, match="centered must be a bool"):
        RMSprop(params, centered=1)
    with pytest.raises(TypeError, match="betas must be a pair"):
        Adam(params, betas=0.9)
    with pytest.raises(ValueError, match=r"betas\[1\]"):
        Adam(params, betas=(0.9, -0.1))
    with pytest.raises(TypeError, match="amsgrad must be a bool"):
        Adam(params, amsgrad="yes")


# ---------------------------------------------------------------------------- schedules
def test_schedules_follow_pytorchs_closed_forms():
    params, grads = _problem()
    cases = [(StepLR, {"step_size": 3, "gamma": 0.5}, lambda e: 0.1 * 0.5 ** (e // 3)),
             (ExponentialLR, {"gamma": 0.9}, lambda e: 0.1 * 0.9 ** e),
             (CosineAnnealingLR, {"T_max": 5, "eta_min": 0.01},
              lambda e: 0.01 + (0.1 - 0.01) * (1 + math.cos(math.pi * e / 5)) / 2)]
    for cls, kwargs, formula in cases:
        opt = Adam(params, lr=0.1)
        sched = cls(opt, **kwargs)
        assert sched.last_epoch == 0 and opt.lr == formula(0) == sched.get_lr()
        for epoch in range(1, 13):
            assert sched.step() == formula(epoch)
            assert opt.lr == sched.get_lr() == sched.get_last_lr() == formula(epoch)
    cos = CosineAnnealingLR(SGD(params, lr=1.0), T_max=4)
    lrs = [cos.step() for _ in range(8)]
    assert lrs[3] == 0.0 and lrs[7] == pytest.approx(1.0)  # down at T_max, back up at 2 T_max


def test_the_optimiser_uses_the_scheduled_rate():
    params = {"p": np.zeros(1)}
    opt = SGD(params, lr=1.0)
    sched = StepLR(opt, step_size=1, gamma=0.5)
    for _ in range(3):
        opt.step({"p": np.ones(1)})
        sched.step()
    assert params["p"][0] == -(1.0 + 0.5 + 0.25)


def test_schedule_errors():
    params, _ = _problem()
    opt = SGD(params, lr=0.1)
    with pytest.raises(TypeError, match="optimizer must have"):
        StepLR(object(), step_size=1)
    with pytest.raises(ValueError, match="step_size must be >= 1"):
        StepLR(opt, step_size=0)
    with pytest.raises(TypeError, match="step_size must be an integer"):
        StepLR(opt, step_size=2.5)
    with pytest.raises(ValueError, match="gamma"):
        ExponentialLR(opt, gamma=0.0)
    with pytest.raises(ValueError, match="eta_min"):
        CosineAnnealingLR(opt, T_max=3, eta_min=-1.0)
    opt.lr = -1.0
    with pytest.raises(ValueError, match="lr must be a finite number"):
        opt.step(_problem()[1][0])


# ---------------------------------------------------------------------------- torch itself
def _torch_run(torch, cls_name, params, grads, kwargs, sched=None):
    tparams = [torch.tensor(p.copy()) for p in params.values()]
    for p in tparams:
        p.requires_grad_(True)
    opt = getattr(torch.optim, cls_name)(tparams, **kwargs)
    scheduler = None
    if sched is not None:
        scheduler = getattr(torch.optim.lr_scheduler, sched[0])(opt, **sched[1])
    lrs = []
    for step in grads:
        for p, g in zip(tparams, step.values()):
            p.grad = torch.tensor(g)
        opt.step()
        if scheduler is not None:
            scheduler.step()
            lrs.append(opt.param_groups[0]["lr"])
    return [p.detach().numpy() for p in tparams], lrs


@pytest.mark.parametrize("dtype", [F64, np.float32])
@pytest.mark.parametrize("cls, kwargs", [(RMSprop, k) for k in RMSPROP_CASES]
                         + [(Adam, k) for k in ADAM_CASES])
def test_matches_torch_optim(cls, kwargs, dtype):
    torch = pytest.importorskip("torch")
    params, grads = _problem(dtype)
    expected, _ = _torch_run(torch, cls.__name__, params, grads, kwargs)
    _run(cls, params, grads, **kwargs)
    tol = {"rtol": 1e-14, "atol": 1e-15} if dtype == F64 else {"rtol": 1e-6, "atol": 1e-7}
    for actual, want in zip(params.values(), expected):
        np.testing.assert_allclose(actual, want, **tol)


@pytest.mark.parametrize("cls, kwargs", [(StepLR, {"step_size": 3, "gamma": 0.5}),
                                         (ExponentialLR, {"gamma": 0.9}),
                                         (CosineAnnealingLR, {"T_max": 3, "eta_min": 0.01})])
def test_schedules_match_torch(cls, kwargs):
    torch = pytest.importorskip("torch")
    params, grads = _problem()
    grads = grads * 2  # 14 epochs: past T_max, around the cosine's period
    expected_params, expected_lrs = _torch_run(torch, "SGD", params, grads, {"lr": 0.1},
                                               (cls.__name__, kwargs))
    opt = SGD(params, lr=0.1)
    sched = cls(opt, **kwargs)
    lrs = []
    for g in grads:
        opt.step(g)
        lrs.append(sched.step())
    np.testing.assert_allclose(lrs, expected_lrs, rtol=1e-13, atol=1e-16)
    for actual, want in zip(params.values(), expected_params):
        np.testing.assert_allclose(actual, want, rtol=1e-13, atol=1e-15)
