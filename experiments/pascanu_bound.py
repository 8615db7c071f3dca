"""Pascanu's sufficient condition for vanishing gradients, against measured decay rates.

Pascanu, Mikolov & Bengio (2013), "On the difficulty of training recurrent neural networks":
for a vanilla RNN ``a<t> = g(W_hh a<t-1> + W_ih x<t> + b)`` with ``|g'| <= γ`` every step
Jacobian has norm at most ``σ_max(W_hh)·γ``, so if ``σ_max(W_hh)·γ < 1`` the gradient is
guaranteed to vanish, at least as fast as ``log(σ_max γ)`` nats per step; above 1 explosion is
possible (the condition is necessary for it, not sufficient). γ is 1 for tanh, relu and linear
units and 1/4 for the sigmoid. Networks with Gaussian recurrent weights N(0, g²/H) over a range
of gains, driven by standard-normal inputs, are run for 5,000 steps, and the measured rate of
the gradient of a loss at the last step (the slope of log ‖∂L/∂a<t>‖ over T − t, after the
first 10%) is placed against ``σ_max γ``. The bound holds at every step, so the measured rate
never exceeds ``log(σ_max γ)``; the gap shows how loose it is (σ_max of a random matrix is
about twice its spectral radius, and |g'| is mostly below γ).
"""

from pathlib import Path

import numpy as np
import pandas as pd

import rnnlab
from rnnlab.diagnostics import gradient_decay, pascanu_conditions, trajectories
from rnnlab.harness import Diverged, Grid, figures
from rnnlab.training import initialize

TITLE = "Measured gradient decay rate vs σ_max(W_hh)·γ, with Pascanu's sufficient condition"

#: Features of the standard-normal driving inputs.
INPUT_SIZE = 4
#: Gains for γ = 1 (σ_max ≈ 2g, so σ_max·γ ≈ 0.25 … 4), quarter octaves; the sigmoid
#: (γ = 1/4) gets 4 times these.
GAINS_FULL = [round(2.0 ** (e / 4), 4) for e in range(-12, 5)]
GAINS_QUICK = [0.125, 0.25, 0.5, 1.0, 2.0]


def _grid(gains, T, H, seed):
    return (Grid(activation=["tanh", "relu", "linear"], gain=gains, T=T, H=H, seed=seed)
            + Grid(activation="sigmoid", gain=[4 * g for g in gains], T=T, H=H, seed=seed))


GRIDS = {
    "quick": _grid(GAINS_QUICK, T=1000, H=32, seed=0),
    "full": _grid(GAINS_FULL, T=5000, H=32, seed=[0, 1, 2, 3, 4]),
}

QUANTITIES = ("decay_rate", "fit_residual", "sigma_max", "gamma", "sigma_max_gamma",
              "log_bound_rate")


def model(point):
    """The network and driving inputs of a grid point: ``(net, x)``, x of shape (T, 1, 4)."""
    rng = np.random.default_rng(point["seed"])
    net_seed, w_seed = (int(s) for s in rng.integers(2 ** 32, size=2))
    net = rnnlab.RNN(INPUT_SIZE, point["H"], nonlinearity=point["activation"],
                     dtype=np.float64, seed=net_seed)
    initialize(net, "gaussian", gain=point["gain"], seed=w_seed)
    return net, rng.standard_normal((point["T"], 1, INPUT_SIZE))


def run(point):
    net, x = model(point)
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            tr = trajectories(net, x)[0]
    except ValueError as exc:
        if "not finite" in str(exc):
            raise Diverged(f"forward states overflowed: {exc}") from None
        raise
    fit = gradient_decay(tr, loss="last", seed=point["seed"]).fit()
    cond = pascanu_conditions(net, fit["rate"]).iloc[0]
    values = {"decay_rate": fit["rate"], "fit_residual": fit["residual"],
              **{q: float(cond[q]) for q in QUANTITIES[2:]}}
    return pd.DataFrame({"quantity": list(QUANTITIES),
                         "value": np.array([values[q] for q in QUANTITIES], dtype=np.float64)})


def warmup():
    run({"activation": "tanh", "gain": 1.0, "T": 5, "H": 2, "seed": 0})


# ----------------------------------------------------------------------------------- figure
def _ok(table):
    """The rows of finished points, with every column of run()'s rows (a table of diverged
    points only has none of them)."""
    table = table[table["status"] == "ok"] if "status" in table.columns else table
    missing = {c: np.nan for c in ("quantity", "value") if c not in table.columns}
    return table.assign(**missing) if missing else table


ORDER = ["tanh", "sigmoid", "relu", "linear"]


def figure(table, out_dir):
    table = _ok(table)
    keys = [c for c in ("activation", "gain", "T", "H", "seed") if c in table.columns]
    wide = (table[table.quantity.isin(["decay_rate", "sigma_max_gamma", "log_bound_rate"])]
            .pivot_table(index=keys, columns="quantity", values="value", aggfunc="first")
            .reset_index())
    with figures.style() as plt:
        fig, ax = plt.subplots(figsize=(7.6, 4.8))
        ok = wide.iloc[:0]
        if {"decay_rate", "sigma_max_gamma"} <= set(wide.columns):
            ok = wide[np.isfinite(wide.decay_rate) & np.isfinite(wide.sigma_max_gamma)
                      & (wide.sigma_max_gamma > 0)]
        if len(ok):
            lo, hi = ok.sigma_max_gamma.min() / 1.3, ok.sigma_max_gamma.max() * 1.3
            xs = np.geomspace(min(lo, 0.5), max(hi, 2.0), 200)
            ymin = min(ok.decay_rate.min(), np.log(xs[0])) - 0.3
            ax.fill_between(xs, np.log(xs), np.log(xs[-1]) + 1.0, color="0.85", lw=0,
                            label="excluded by the bound")
            ax.plot(xs, np.log(xs), "-", color="k", lw=1.6,
                    label="bound: rate = log(σ_max γ)")
            acts = sorted(ok.activation.unique(),
                          key=lambda a: ORDER.index(a) if a in ORDER else len(ORDER))
            markers = dict(zip(ORDER, "osD^"))
            for i, act in enumerate(acts):
                sub = ok[ok.activation == act]
                gamma = table[(table.activation == act) & (table.quantity == "gamma")].value
                g_txt = f", γ = {gamma.iloc[0]:g}" if len(gamma) else ""
                ax.plot(sub.sigma_max_gamma, sub.decay_rate, markers.get(act, "o"), ms=5,
                        color=f"C{i}", alpha=0.85, label=f"{act}{g_txt}")
            ax.axvline(1.0, color="0.4", ls="--", lw=1.0)
            ax.axhline(0.0, color="0.6", lw=0.8)
            ax.set_xlim(xs[0], xs[-1])
            ax.set_ylim(ymin, max(np.log(xs[-1]), ok.decay_rate.max()) + 0.3)
            ax.text(1.06, 0.02, "explosion possible →", transform=ax.get_xaxis_transform(),
                    ha="left", va="bottom", fontsize=8, color="0.3")
            ax.text(0.94, 0.02, "← vanishing guaranteed", transform=ax.get_xaxis_transform(),
                    ha="right", va="bottom", fontsize=8, color="0.3")
            ax.legend(loc="upper left")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", transform=ax.transAxes)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("σ_max(W_hh)·γ (per-step bound on ‖∂a⟨t⟩/∂a⟨t−1⟩‖)")
        ax.set_ylabel("measured gradient decay rate (nats/step)")
        sizes = sorted(table.H.dropna().unique()) if "H" in table.columns else []
        lengths = sorted(table["T"].dropna().unique()) if "T" in table.columns else []
        desc = ", ".join(([f"H = {int(sizes[0])}"] if len(sizes) == 1 else [])
                         + ([f"T = {int(lengths[0]):,}"] if len(lengths) == 1 else []))
        ax.set_title(f"Pascanu et al. (2013): vanilla RNN{', ' + desc if desc else ''}, "
                     f"loss at the last step")
        fig.tight_layout()
        return figures.save(fig, Path(out_dir) / "pascanu_bound")
