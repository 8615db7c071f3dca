"""The remedies compared: gradient clipping, IRNN and gated cells on the classic long-range
tasks, and Pascanu's one-unit "cliff".

Training runs (``task`` = adding, temporal_order, copy): each method trains a fresh network on
fresh batches for a fixed budget of updates (Adam, the same learning rate, batch size and budget
for every method), evaluating on fresh sequences every ``eval_every`` updates and stopping when
the task's success criterion holds (Pascanu et al. 2013: under 1% of sequences wrong; for the
adding problem a sequence is wrong when its squared error exceeds 0.04). Methods:

``tanh``       vanilla tanh RNN, PyTorch's default initialisation, no clipping
``tanh_clip``  the same with global-norm clipping at 1 (Pascanu et al. 2013, Algorithm 1)
``irnn``       relu RNN with identity recurrent weights and zero biases (Le et al. 2015), clipped at 1
``lstm``       LSTM with forget-gate bias 1 (Jozefowicz et al. 2015)
``gru``        GRU (Cho et al. 2014)

A run whose loss or weights become non-finite ends with ``status="diverged"`` in the table.

The cliff (``task`` = cliff): the one-unit network ``x<t> = w σ(x<t-1>) + b`` over 50 steps with
the loss ``(x<50> - 0.7)²`` from ``x<0> = 0.5`` (the setting of Pascanu et al. 2013, Sec. 3 and
Fig. 6, whose exact constants this study chooses): its error surface over (w, b), where a wall
of very high curvature separates two basins (the bifurcation of the map), and plain versus
norm-clipped gradient descent started on the same point: the plain step that hits the wall is
thrown far away; the clipped one is not.
"""

from pathlib import Path

import numpy as np
import pandas as pd

from rnnlab.architectures import make_model
from rnnlab.harness import Diverged, Grid, figures
from rnnlab.training import Trainer, initialize, make_task

TITLE = "success rate and final loss vs T of clipping, IRNN, LSTM and GRU; Pascanu's cliff"

METHODS = ("tanh", "tanh_clip", "irnn", "lstm", "gru")
TASK_NAMES = {"adding": "adding (mean)", "temporal_order": "temporal order",
              "copy": "copy memory"}

# shared by every training point; the grids set T, budget and seeds
_TRAIN = dict(H=[32], lr=[0.01], batch=[32], eval_every=[100])

GRIDS = {
    "quick": Grid(task=["adding"], method=list(METHODS), T=[50, 100], steps=[800], seed=[0],
                  **_TRAIN)
    + Grid(task=["cliff"], method=["surface", "sgd", "sgd_clip"], seed=[0]),
    "full": Grid(task=["adding", "temporal_order"], method=list(METHODS),
                 T=[50, 100, 200, 500, 1000], steps=[3000], seed=[0, 1, 2], **_TRAIN)
    + Grid(task=["copy"], method=list(METHODS), T=[50, 100, 200], steps=[3000],
           seed=[0, 1, 2], **_TRAIN)
    + Grid(task=["cliff"], method=["surface", "sgd", "sgd_clip"], seed=[0]),
}

#: The cliff's constants.
CLIFF_STEPS, CLIFF_X0, CLIFF_TARGET = 50, 0.5, 0.7


# ------------------------------------------------------------------------------- training
def build(point):
    """The task and the model of a training point."""
    task = make_task(point["task"], point["T"], dtype=np.float32, seed=point["seed"])
    cell = {"tanh": "rnn_tanh", "tanh_clip": "rnn_tanh", "irnn": "rnn_relu"}.get(
        point["method"], point["method"])
    model = make_model(task.architecture, cell, task.input_size, point["H"], task.output_size,
                       loss=task.loss, dtype=np.float32, seed=point["seed"] + 1000)
    rnn = model._modules["rnn"]
    if point["method"] == "irnn":
        initialize(rnn, "identity")
    elif point["method"] == "lstm":
        initialize(rnn, "uniform", forget_bias=1.0, seed=point["seed"] + 2000)
    clip = ("norm", 1.0) if point["method"] in ("tanh_clip", "irnn") else None
    return task, model, clip


def train(point):
    task, model, clip = build(point)
    trainer = Trainer(model, task, optimizer="adam", lr=point["lr"], clip=clip,
                      batch_size=point["batch"], eval_every=point["eval_every"],
                      eval_sequences=1000, spectral_every=50, seed=point["seed"])
    res = trainer.fit(point["steps"])
    if res.status == "diverged":
        raise Diverged(res.message)
    final = trainer.evaluate(10_000) if res.status == "solved" else res.final
    log = res.log
    rows = [("final_loss", final["loss"]), ("final_error_rate", final["error_rate"]),
            ("solved", float(res.status == "solved")), ("updates", float(res.steps)),
            ("baseline", task.baseline), ("skipped_updates", float(log.skipped.sum())),
            ("clipped_updates", float(log.clipped.sum())),
            ("median_grad_norm", float(log.grad_norm_before.median())),
            ("max_grad_norm", float(log.grad_norm_before.max())),
            ("final_spectral_radius", float(log.spectral_radius.dropna().iloc[-1])
             if log.spectral_radius.notna().any() else np.nan)]
    frame = pd.DataFrame({"quantity": [q for q, _ in rows], "step": np.nan,
                          "value": [float(v) for _, v in rows]})
    curve = pd.DataFrame({"quantity": "eval_loss", "step": res.evals.step.astype(float),
                          "value": res.evals.loss.astype(float)})
    return pd.concat([frame, curve], ignore_index=True)


# ---------------------------------------------------------------------------------- cliff
def cliff_loss_and_grad(w, b):
    """Loss ``(x<50> - target)²`` and its gradient for arrays of (w, b), by BPTT."""
    w, b = np.broadcast_arrays(np.asarray(w, np.float64), np.asarray(b, np.float64))
    xs = [np.full(w.shape, CLIFF_X0)]
    for _ in range(CLIFF_STEPS):
        xs.append(w / (1 + np.exp(-xs[-1])) + b)
    loss = (xs[-1] - CLIFF_TARGET) ** 2
    d = 2 * (xs[-1] - CLIFF_TARGET)
    gw = np.zeros(w.shape)
    gb = np.zeros(w.shape)
    for t in range(CLIFF_STEPS, 0, -1):
        s = 1 / (1 + np.exp(-xs[t - 1]))
        gw += d * s
        gb += d
        d = d * w * s * (1 - s)
    return loss, gw, gb


#: The region drawn and the descent's start, lr and threshold.
CLIFF_W, CLIFF_B = (-2.0, 14.0), (-8.0, 2.0)
CLIFF_START, CLIFF_LR, CLIFF_CLIP, CLIFF_ITERS = (7.0, -3.5), 0.02, 10.0, 150


def cliff(point):
    if point["method"] == "surface":
        w, b = np.meshgrid(np.linspace(*CLIFF_W, 241), np.linspace(*CLIFF_B, 161))
        loss, _, _ = cliff_loss_and_grad(w, b)
        return pd.DataFrame({"quantity": "error", "w": w.ravel(), "b": b.ravel(), "step": np.nan,
                             "value": loss.ravel()})
    w, b = CLIFF_START
    rows = []
    for step in range(CLIFF_ITERS + 1):
        loss, gw, gb = cliff_loss_and_grad(w, b)
        rows.append((step, w, b, float(loss), float(np.hypot(gw, gb))))
        norm = float(np.hypot(gw, gb))
        scale = min(1.0, CLIFF_CLIP / norm) if point["method"] == "sgd_clip" and norm > 0 else 1
        w, b = w - CLIFF_LR * scale * float(gw), b - CLIFF_LR * scale * float(gb)
    traj = pd.DataFrame(rows, columns=["step", "w", "b", "error", "grad_norm"])
    return traj.melt(id_vars=["step", "w", "b"], var_name="quantity", value_name="value")


def run(point):
    return cliff(point) if point["task"] == "cliff" else train(point)


def warmup():
    for method in ("tanh", "irnn", "lstm", "gru"):
        train({"task": "adding", "method": method, "T": 5, "steps": 1, "seed": 0, "H": 2,
               "lr": 0.01, "batch": 2, "eval_every": 1})


# --------------------------------------------------------------------------------- figure
def figure(table, out_dir):
    out_dir = Path(out_dir)
    written = []
    ok = table[table["status"] == "ok"] if "status" in table.columns else table
    runs = ok[ok["task"] != "cliff"]
    if not runs.empty:
        tasks = [t for t in TASK_NAMES if t in set(runs["task"])]
        with figures.style() as plt:
            fig, axes = plt.subplots(2, len(tasks), figsize=(4.2 * len(tasks), 6.4),
                                     squeeze=False)
            for j, task in enumerate(tasks):
                sub = runs[runs["task"] == task]
                for k, method in enumerate(METHODS):
                    m = sub[sub["method"] == method]
                    if m.empty:
                        continue
                    solved = m[m.quantity == "solved"].groupby("T")["value"].mean()
                    loss = m[m.quantity == "final_loss"].groupby("T")["value"].median()
                    # a small vertical offset per method keeps equal rates apart
                    axes[0, j].plot(solved.index, solved.values + 0.015 * (k - 2), "o-",
                                    label=method)
                    axes[1, j].plot(loss.index, loss.values, "o-", label=method)
                base = sub[sub.quantity == "baseline"].groupby("T")["value"].first()
                axes[1, j].plot(base.index, base.values, "k--", lw=1, label="trivial baseline")
                axes[0, j].set_title(TASK_NAMES[task])
                axes[0, j].set_ylim(-0.05, 1.05)
                axes[0, j].set_ylabel("success rate (fraction of seeds)")
                axes[1, j].set_ylabel("final loss (median over seeds)")
                axes[1, j].set_yscale("log")
                ts = sorted(sub["T"].unique())
                for i in (0, 1):
                    axes[i, j].set_xscale("log")
                    axes[i, j].set_xticks(ts, [f"{t:g}" for t in ts])
                    axes[i, j].minorticks_off()
                    axes[i, j].set_xlabel("sequence length T (steps)")
            axes[0, 0].legend()
            axes[1, 0].legend()
            fig.suptitle("Remedies under one budget: clipping, IRNN, LSTM, GRU")
            fig.tight_layout()
            written += figures.save(fig, out_dir / "remedies")
    surf = ok[(ok["task"] == "cliff") & (ok["method"] == "surface")]
    if not surf.empty:
        with figures.style() as plt:
            fig, ax = plt.subplots(figsize=(6.4, 4.6))
            grid = surf.pivot_table(index="b", columns="w", values="value")
            mesh = ax.pcolormesh(grid.columns, grid.index, np.log10(grid.values + 1e-12),
                                 shading="auto", cmap="viridis")
            fig.colorbar(mesh, ax=ax, label="log10 error (x⟨50⟩ − 0.7)²")
            for method, style in (("sgd", "w.-"), ("sgd_clip", "r.-")):
                tr = ok[(ok["task"] == "cliff") & (ok["method"] == method)
                        & (ok["quantity"] == "error")].sort_values("step")
                if not tr.empty:
                    ax.plot(tr["w"], tr["b"], style, ms=3, lw=1,
                            label={"sgd": "gradient descent",
                                   "sgd_clip": "with norm clipping"}[method])
                    jump = np.hypot(np.diff(tr["w"]), np.diff(tr["b"]))
                    if method == "sgd" and jump.size and jump.max() > 5:
                        k = int(np.argmax(jump))
                        ax.annotate(f"step {k + 1}: thrown to\n(w, b) = ({tr['w'].iloc[k + 1]:.3g}, "
                                    f"{tr['b'].iloc[k + 1]:.3g})",
                                    xy=(tr["w"].iloc[k], tr["b"].iloc[k]), xytext=(8.5, 0.5),
                                    color="w", fontsize=8,
                                    arrowprops=dict(arrowstyle="->", color="w"))
            ax.set_xlim(*CLIFF_W)
            ax.set_ylim(*CLIFF_B)
            ax.set_xlabel("recurrent weight w")
            ax.set_ylabel("bias b")
            ax.set_title("Pascanu's cliff: x⟨t⟩ = w σ(x⟨t−1⟩) + b, 50 steps")
            ax.legend(loc="lower left")
            written += figures.save(fig, out_dir / "remedies_cliff")
    return written
