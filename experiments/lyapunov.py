"""Lyapunov spectra of random tanh networks across the transition to chaos at g = 1.

Sompolinsky, Crisanti & Sommers (1988): an autonomous network ``h<t> = tanh(W h<t-1>)`` with
Gaussian weights ``W_ij ~ N(0, g²/H)`` has the silent fixed point h = 0 as its attractor for
g < 1 (every trajectory decays to it, and the leading Lyapunov exponent is log of the spectral
radius of W, about log g by the circular law), and becomes chaotic for g > 1 (λ₁ > 0; in
finite networks the transition passes through limit cycles and quasi-periodic orbits with
λ₁ = 0, Doyon et al. 1993). The leading ``k`` exponents are computed by the QR (Benettin)
method over 10,000 steps after a warm-up of 10% of them, from a random initial state
h<0> ~ N(0, 1), zero input and zero biases.

The gradient of a loss at the last step, back-propagated through the same trajectory, grows or
decays at the rate λ₁ (its log-norm's slope over the distance T − t, fitted on the steps after
the warm-up and at least a warm-up away from the loss): the exploding/vanishing gradient
problem is the sign of the leading Lyapunov exponent (Engelken, Wolf & Abbott 2023; Vogt et al.
2022).
"""

from pathlib import Path

import numpy as np
import pandas as pd

import rnnlab
from rnnlab.diagnostics import gradient_decay, lyapunov_spectrum, trajectories
from rnnlab.harness import Diverged, Grid, figures
from rnnlab.training import initialize

TITLE = ("λ₁…λ_k vs gain g for random tanh networks (transition to chaos at g = 1), with "
         "the measured gradient-decay rate on λ₁")

#: Steps discarded before measuring, as a fraction of T.
WARMUP_FRACTION = 0.1

GRIDS = {
    "quick": Grid(gain=[0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0], H=64, T=2000, k=8, seed=0),
    "full": Grid(gain=[round(0.5 + 0.05 * i, 2) for i in range(31)], H=128, T=10_000, k=8,
                 seed=[0, 1, 2]),
}


def model(point):
    """The autonomous network and its initial state: ``(net, x, h0)`` (x is zero input)."""
    rng = np.random.default_rng(point["seed"])
    net_seed, w_seed = (int(s) for s in rng.integers(2 ** 32, size=2))
    H = point["H"]
    net = rnnlab.RNN(1, H, nonlinearity="tanh", dtype=np.float64, seed=net_seed)
    initialize(net, "gaussian", gain=point["gain"], seed=w_seed)
    for name, p in net.parameters().items():
        if not name.startswith("weight_hh"):
            p[...] = 0.0  # zero biases; the (zero) input is disconnected too
    h0 = rng.standard_normal((1, 1, H))
    return net, np.zeros((point["T"], 1, 1)), h0


def run(point):
    net, x, h0 = model(point)
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            tr = trajectories(net, x, h0)[0]
    except ValueError as exc:
        if "not finite" in str(exc):
            raise Diverged(f"forward states overflowed: {exc}") from None
        raise
    n_steps = point["T"]
    warm = int(WARMUP_FRACTION * n_steps)
    k = min(point["k"], point["H"])
    lyap = lyapunov_spectrum(tr, k=k, warmup=warm, seed=point["seed"]).exponents
    fit = gradient_decay(tr, loss="last", seed=point["seed"]).fit(warm, n_steps - warm)
    w = net.parameters()["weight_hh_l0"]
    log_rho = float(np.log(np.abs(np.linalg.eigvals(w)).max()))
    return pd.DataFrame({
        "quantity": ["lyapunov_exponent"] * k + ["decay_rate", "fit_residual",
                                                 "log_spectral_radius"],
        "value": np.concatenate([lyap, [fit["rate"], fit["residual"], log_rho]]).astype(
            np.float64),
        "index": np.concatenate([np.arange(1, k + 1), [np.nan] * 3]).astype(np.float64),
    })


def warmup():
    run({"gain": 1.0, "H": 2, "T": 10, "k": 2, "seed": 0})


# ----------------------------------------------------------------------------------- figure
def _ok(table):
    """The rows of finished points, with every column of run()'s rows (a table of diverged
    points only has none of them)."""
    table = table[table["status"] == "ok"] if "status" in table.columns else table
    missing = {c: np.nan for c in ("quantity", "value", "index") if c not in table.columns}
    return table.assign(**missing) if missing else table


def figure(table, out_dir):
    table = _ok(table)
    lyap = table[(table.quantity == "lyapunov_exponent") & np.isfinite(table.value)]
    rates = table[(table.quantity == "decay_rate") & np.isfinite(table.value)]
    sizes = sorted(table.H.dropna().unique()) if "H" in table.columns else []
    lengths = sorted(table["T"].dropna().unique()) if "T" in table.columns else []
    desc = ", ".join(([f"H = {int(sizes[0])}"] if len(sizes) == 1 else [])
                     + ([f"T = {int(lengths[0]):,}"] if len(lengths) == 1 else []))
    n_seeds = table.seed.nunique() if "seed" in table.columns else 0
    with figures.style() as plt:
        fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6),
                                          gridspec_kw={"width_ratios": [1.6, 1]})
        # left: the spectrum vs g, λ1 bold, the gradient-decay rate on it
        indices = sorted(lyap["index"].unique())
        cmap = plt.get_cmap("viridis")
        for j, i in enumerate(indices[::-1]):
            sub = lyap[lyap["index"] == i].groupby("gain").value
            mean = sub.mean()
            if i == 1:
                left.fill_between(mean.index, sub.min(), sub.max(), color="C3", alpha=0.2,
                                  lw=0)
                left.plot(mean.index, mean, "-", color="C3", lw=2.4,
                          label=f"λ₁ (mean over {n_seeds} seeds; band: min–max)"
                          if n_seeds > 1 else "λ₁")
            else:
                left.plot(mean.index, mean, "-", lw=0.9,
                          color=cmap(0.15 + 0.7 * (i - 2) / max(len(indices) - 2, 1)),
                          label=f"λ₂ … λ_{int(max(indices))}" if i == indices[-1] else None)
        if len(rates):
            left.plot(rates.gain, rates.value, "o", mfc="none", color="k", ms=5,
                      label="gradient decay rate (each seed)")
        if len(lyap) or len(rates):
            gains = np.sort(np.asarray(pd.concat([lyap.gain, rates.gain]).unique(), float))
            ordered = gains[gains <= 1.0]
            if len(ordered):
                left.plot(ordered, np.log(ordered), ":", color="0.3",
                          label="log g (λ₁ at the zero fixed point, H → ∞)")
        left.axhline(0, color="0.5", lw=0.8)
        left.axvline(1.0, color="0.5", lw=0.8, ls="--")
        left.set_xlabel("gain g (W_hh ~ N(0, g²/H))")
        left.set_ylabel("Lyapunov exponent (nats/step)")
        left.set_title(f"Autonomous tanh network{', ' + desc if desc else ''}: "
                       f"ordered (g < 1) vs chaotic (λ₁ > 0)")
        if left.get_legend_handles_labels()[0]:
            left.legend(loc="lower right")
        else:
            left.text(0.5, 0.5, "no data", ha="center", transform=left.transAxes)
        # right: the gradient decay rate against λ1, point by point
        lam1 = lyap[lyap["index"] == 1]
        keys = [c for c in ("gain", "H", "T", "k", "seed") if c in table.columns]
        both = lam1.merge(rates, on=keys, suffixes=("_lam", "_rate"))
        if len(both):
            sc = right.scatter(both.value_lam, both.value_rate, c=both.gain, s=18,
                               cmap="viridis")
            fig.colorbar(sc, ax=right, label="gain g")
            lo = min(both.value_lam.min(), both.value_rate.min())
            hi = max(both.value_lam.max(), both.value_rate.max())
            pad = 0.05 * (hi - lo) + 1e-3
            right.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "--", color="0.4",
                       label="rate = λ₁")
            right.legend(loc="upper left")
        else:
            right.text(0.5, 0.5, "no data", ha="center", transform=right.transAxes)
        right.set_xlabel("λ₁ (nats/step)")
        right.set_ylabel("fitted gradient decay rate (nats/step)")
        right.set_title("the gradient grows/decays at λ₁")
        fig.tight_layout()
        return figures.save(fig, Path(out_dir) / "lyapunov")
