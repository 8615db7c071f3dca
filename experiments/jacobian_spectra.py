"""Singular-value spectra of Jacobian products ∂a<T>/∂a<T−s> against the span s, vanilla vs
gated.

The gradient that reaches a state s steps back is the product of s step Jacobians applied to
the loss gradient; its size in every direction is given by the singular values of that
product. Over short spans they reflect single steps (σ_i(J) ≤ σ_max(W_hh)·γ for a vanilla
cell, Pascanu, Mikolov & Bengio 2013); over long spans the per-step rates (1/s)·log σ_i settle
to the Lyapunov exponents of the driven network (Oseledets' multiplicative ergodic theorem;
the link to exploding and vanishing gradients is drawn by Vogt et al. 2022, "On Lyapunov
exponents for RNNs", and Engelken, Wolf & Abbott 2023). The products span up to 4,096 steps
and their singular values range far beyond float64 (they are computed in log space by QR
sweeps, never formed). A vanilla tanh RNN at several gains of its N(0, g²/H) recurrent weights
is set against an LSTM and a GRU (the same Gaussian recurrent initialisation per gate block,
gain 1, PyTorch's default biases), all driven by standard-normal inputs. The Lyapunov spectrum
of the same trajectory (QR method, 10% warm-up) is recorded beside them: the per-step rates of
the longest products should land on it.
"""

from pathlib import Path

import numpy as np
import pandas as pd

import rnnlab
from rnnlab.diagnostics import jacobian_product_spectra, lyapunov_spectrum, trajectories
from rnnlab.harness import Diverged, Grid, figures
from rnnlab.training import initialize

TITLE = ("Singular-value spectra of Jacobian products vs span: per-step rates settle to the "
         "Lyapunov exponents, vanilla vs gated")

#: Features of the standard-normal driving inputs.
INPUT_SIZE = 4


def _grid(T, H, seed):
    return (Grid(cell="rnn", activation="tanh", gain=[0.8, 1.0, 1.5, 2.0], T=T, H=H, seed=seed)
            + Grid(cell=["lstm", "gru"], activation="gated", gain=1.0, T=T, H=H, seed=seed))


GRIDS = {
    "quick": _grid(T=256, H=32, seed=0),
    "full": _grid(T=4096, H=32, seed=[0, 1]),
}


def model(point):
    """The network and driving inputs of a grid point: ``(net, x)``, x of shape (T, 1, 4)."""
    rng = np.random.default_rng(point["seed"])
    net_seed, w_seed = (int(s) for s in rng.integers(2 ** 32, size=2))
    if point["cell"] == "rnn":
        net = rnnlab.RNN(INPUT_SIZE, point["H"], nonlinearity=point["activation"],
                         dtype=np.float64, seed=net_seed)
    elif point["cell"] in ("lstm", "gru"):
        net = getattr(rnnlab, point["cell"].upper())(INPUT_SIZE, point["H"], dtype=np.float64,
                                                     seed=net_seed)
    else:
        raise ValueError(f"cell must be rnn, lstm or gru, got {point['cell']!r}")
    initialize(net, "gaussian", gain=point["gain"], seed=w_seed)
    return net, rng.standard_normal((point["T"], 1, INPUT_SIZE))


def trajectory(point):
    """The trajectory (joint state) whose Jacobians are analysed."""
    net, x = model(point)
    try:
        return trajectories(net, x)[0]
    except ValueError as exc:
        if "not finite" in str(exc):
            raise Diverged(f"forward states overflowed: {exc}") from None
        raise


def run(point):
    tr = trajectory(point)
    spec = jacobian_product_spectra(tr)
    lyap = lyapunov_spectrum(tr, warmup=point["T"] // 10, seed=point["seed"]).exponents
    conv = spec.groupby("span", sort=True).converged.all()
    n = len(lyap)
    return pd.DataFrame({
        "quantity": (["log_sigma"] * len(spec) + ["lyapunov_exponent"] * n
                     + ["converged"] * len(conv)),
        "value": np.concatenate([spec.log_sigma.to_numpy(), lyap,
                                 conv.to_numpy().astype(np.float64)]).astype(np.float64),
        "span": np.concatenate([spec.span.to_numpy(), np.full(n, np.nan),
                                conv.index.to_numpy()]).astype(np.float64),
        "index": np.concatenate([spec["index"].to_numpy(), np.arange(1, n + 1),
                                 np.full(len(conv), np.nan)]).astype(np.float64),
    })


def warmup():
    for cell, act in [("rnn", "tanh"), ("lstm", "gated"), ("gru", "gated")]:
        run({"cell": cell, "activation": act, "gain": 1.0, "T": 5, "H": 2, "seed": 0})


# ----------------------------------------------------------------------------------- figure
def _ok(table):
    """The rows of finished points, with every column of run()'s rows (a table of diverged
    points only has none of them)."""
    table = table[table["status"] == "ok"] if "status" in table.columns else table
    missing = {c: np.nan for c in ("quantity", "value", "span", "index") if c not in table.columns}
    return table.assign(**missing) if missing else table


def _panel(ax, plt, table, configs, title, style_legend):
    colors = plt.get_cmap("tab10").colors
    drawn = False
    for i, ((cell, act, gain), sub) in enumerate(configs):
        color = colors[i % len(colors)]
        sv = sub[sub.quantity == "log_sigma"]
        sv = sv.assign(rate=sv.value / sv.span)
        sv = sv[np.isfinite(sv.rate)]
        if not len(sv):
            continue
        by = sv.groupby(["span", "index"], as_index=False).rate.mean()  # mean over seeds
        top = by[by["index"] == 1].sort_values("span")
        bottom = by.loc[by.groupby("span")["index"].idxmax()].sort_values("span")
        n = int(sv["index"].max())
        ax.plot(top.span, top.rate, "-o", ms=3, color=color,
                label=f"{cell}, g = {gain:g} (n = {n})")
        ax.plot(bottom.span, bottom.rate, "--", color=color, lw=1.0)
        both = top.merge(bottom, on="span", suffixes=("_top", "_bottom"))
        ax.fill_between(both.span, both.rate_bottom, both.rate_top, color=color, alpha=0.05)
        lyap = sub[(sub.quantity == "lyapunov_exponent") & np.isfinite(sub.value)]
        if len(lyap):
            lam = lyap.groupby("index").value.mean()
            edge = top.span.max() * 1.6
            ax.plot([edge, edge], [lam.iloc[0], lam.iloc[-1]], ls="none", marker="<",
                    color=color, ms=6)
        drawn = True
    ax.set_xscale("log", base=2)
    ax.set_xlabel("span s = T − t (steps)")
    ax.set_ylabel("(1/s) log σᵢ(∂a⟨T⟩/∂a⟨T−s⟩) (nats/step)")
    ax.set_title(title)
    if drawn:
        first = ax.legend(loc="lower right")
    if drawn and style_legend:
        ax.add_artist(first)
        handles = [plt.Line2D([], [], color="0.3", ls="-", marker="o", ms=3),
                   plt.Line2D([], [], color="0.3", ls="--"),
                   plt.Line2D([], [], color="0.3", ls="none", marker="<")]
        ax.legend(handles, ["σ₁ (largest)", "σ_n (smallest)", "Lyapunov λ₁, λ_n (QR)"],
                  loc="center right")
    if drawn:
        ax.axhline(0, color="0.5", lw=0.8)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", transform=ax.transAxes)


def figure(table, out_dir):
    table = _ok(table)
    groups = sorted(table.groupby(["cell", "activation", "gain"]),
                    key=lambda kv: (kv[0][0] != "rnn", kv[0][0], kv[0][2]))
    vanilla = [kv for kv in groups if kv[0][0] == "rnn"]
    gated = [kv for kv in groups if kv[0][0] != "rnn"]
    sizes = sorted(table.H.dropna().unique()) if "H" in table.columns else []
    h_txt = f", H = {int(sizes[0])}" if len(sizes) == 1 else ""
    with figures.style() as plt:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
        _panel(axes[0], plt, table, vanilla, f"vanilla tanh RNN{h_txt}", False)
        _panel(axes[1], plt, table, gated, f"gated cells{h_txt} (LSTM state: (h, c))",
               True)
        fig.suptitle("Per-step rates of the singular values of Jacobian products over the last "
                     "s steps, and the Lyapunov exponents of the same trajectory", fontsize=10)
        fig.tight_layout()
        return figures.save(fig, Path(out_dir) / "jacobian_spectra")
