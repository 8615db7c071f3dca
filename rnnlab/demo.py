"""A quick demonstration: train a small RNN on a delayed-recall task, record its loss curve and
the gradient norms that flow back through time.

Task: random bits ``x<t>``; the target at step t is the bit seen ``delay`` steps earlier,
``y<t> = x<t - delay>`` (masked for ``t < delay``). Many-to-many, the seed's binary cross-entropy
summed over time. A tanh RNN must carry each bit for ``delay`` steps, so the gradient has to flow
back that far; the table of ‖∂ℓ<T>/∂a<t>‖ shows how it decays with distance before and after
training.
"""

import time
from pathlib import Path

import numpy as np

from .architectures import ManyToMany
from .heads import OutputHead
from .layers import RNN
from .training import SGD


def delayed_recall_batch(rng, n_steps, batch, delay, dtype=np.float64):
    """A batch of the delayed-recall task.

    Returns
    -------
    x : ndarray, (T, B, 1)
        Random bits.
    y : ndarray, (T, B, 1)
        ``x`` delayed by ``delay`` steps (zeros before).
    mask : ndarray, (T, B)
        0 for the first ``delay`` steps, whose target does not exist.
    """
    x = (rng.random((n_steps, batch, 1)) < 0.5).astype(dtype)
    y = np.zeros_like(x)
    y[delay:] = x[:-delay]
    mask = np.ones((n_steps, batch), dtype=dtype)
    mask[:delay] = 0
    return x, y, mask


def gradient_norms(model, x):
    """‖∂ℓ<T>/∂a<t>‖ for the loss at the last step only, for every step t (first layer).

    The loss is the BCE term of the last step against target 1, so that the gradient flowing
    back is that of a single read-out, as in the vanishing-gradient analyses.
    """
    rnn, head = model.rnn, model.head
    out, _, cache = rnn.forward_with_cache(x)
    logits, head_cache = head.forward(out[-1:])
    d_logits = head.activate(logits) - 1
    d_out = np.zeros_like(out)
    d_out[-1:] = head.backward(head_cache, d_logits)["input"]
    grads = rnn.backward_from_cache(cache, d_out, return_hidden_grads=True)
    hidden = grads["hidden_l0"]
    return np.sqrt((hidden.astype(np.float64) ** 2).sum(axis=2)).mean(axis=1)


def run_demo(out_dir="results/demo", steps=1000, n_steps=30, delay=4, hidden_size=24, batch=32,
             lr=0.01, seed=0, verbose=True):
    """Train, write ``loss_curve.csv``, ``gradient_norms.csv`` and ``demo.png`` to ``out_dir``.

    Parameters
    ----------
    out_dir : str or Path
        Folder for the outputs (created).
    steps : int
        Gradient steps.
    n_steps : int
        Sequence length T.
    delay : int
        Recall delay.
    hidden_size : int
        Units H.
    batch : int
        Sequences per step.
    lr : float
        Learning rate (SGD with momentum 0.9, loss averaged over the batch).
    seed : int
        Seed of weights and data.
    verbose : bool
        Print progress.

    Returns
    -------
    dict
        Paths written and the final accuracy.
    """
    import pandas as pd

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rnn = RNN(1, hidden_size, dtype=np.float64, seed=seed)
    model = ManyToMany(rnn, OutputHead(hidden_size, 1, "sigmoid", dtype=np.float64, seed=seed + 1),
                       loss="bce", reduction="mean")
    probe_x, _, _ = delayed_recall_batch(np.random.default_rng(seed + 2), 200, 8, delay)
    norms_before = gradient_norms(model, probe_x)
    opt = SGD(model.parameters(), lr=lr, momentum=0.9)
    rows = []
    start = time.perf_counter()
    for step in range(steps):
        x, y, mask = delayed_recall_batch(rng, n_steps, batch, delay)
        loss, grads = model.loss_and_grad(x, y, mask)
        grad_norm = float(np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in grads.values())))
        opt.step(grads)
        per_step = loss / (n_steps - delay)
        rows.append({"step": step, "loss": loss, "loss_per_step": per_step,
                     "grad_norm": grad_norm})
        if verbose and (step % 50 == 0 or step == steps - 1):
            print(f"step {step:4d}  loss/step {per_step:.4f}  |grad| {grad_norm:.3e}")
    elapsed = time.perf_counter() - start
    norms_after = gradient_norms(model, probe_x)

    x, y, mask = delayed_recall_batch(np.random.default_rng(seed + 3), n_steps, 256, delay)
    pred = model.predict(x) > 0.5
    accuracy = float(((pred == (y > 0.5))[..., 0] * mask).sum() / mask.sum())

    loss_curve = pd.DataFrame(rows)
    distance = np.arange(len(norms_before))[::-1]
    norms = pd.DataFrame({"t": np.arange(len(norms_before)), "T_minus_t": distance,
                          "grad_norm_init": norms_before, "grad_norm_trained": norms_after})
    paths = {"loss_curve": out_dir / "loss_curve.csv", "gradient_norms": out_dir /
             "gradient_norms.csv", "figure": out_dir / "demo.png"}
    loss_curve.to_csv(paths["loss_curve"], index=False)
    norms.to_csv(paths["gradient_norms"], index=False)
    _plot(loss_curve, norms, paths["figure"], delay)
    if verbose:
        print(f"trained {steps} steps in {elapsed:.1f} s; recall accuracy {accuracy:.3f} "
              f"(chance 0.5)")
        for dist in (0, delay, 25, 50, 100, 199):
            row = norms[norms.T_minus_t == dist].iloc[0]
            print(f"  ||dl<T>/da<T-{dist}>||  init {row.grad_norm_init:.3e}  trained "
                  f"{row.grad_norm_trained:.3e}")
        for p in paths.values():
            print(f"wrote {p}")
    return {"paths": paths, "accuracy": accuracy, "seconds": elapsed}


def _plot(loss_curve, norms, path, delay):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax0.plot(loss_curve.step, loss_curve.loss_per_step, lw=1)
    ax0.axhline(np.log(2), color="grey", ls="--", lw=1, label="chance (ln 2)")
    ax0.set(xlabel="gradient step", ylabel="BCE per target step (nats)",
            title=f"delayed recall (delay {delay}), tanh RNN")
    ax0.legend()
    ax1.semilogy(norms.T_minus_t, norms.grad_norm_init, label="at initialisation")
    ax1.semilogy(norms.T_minus_t, norms.grad_norm_trained, label="after training")
    ax1.set(xlabel="distance T - t (steps)", ylabel=r"$\|\partial \ell_T / \partial a_t\|$",
            title="gradient flowing back through time")
    ax1.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
