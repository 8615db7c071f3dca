"""Gradient decay: log ‖∂L/∂a<t>‖ against the distance T − t, for T up to 10,000 steps.

The vanishing/exploding gradient problem (Hochreiter 1991; Bengio, Simard & Frasconi 1994;
Pascanu, Mikolov & Bengio 2013) measured directly: a loss at the last step of a long sequence,
and the norm of its gradient with respect to every earlier state of the network, recorded as a
log-norm so that a gradient of 1e-4000 is a number (-9210 nats) rather than an underflowed 0.
Swept over the cell (vanilla RNN with tanh, relu, sigmoid or linear units, LSTM, GRU), the
depth (1, 2, 4, 8 stacked layers, the joint state of the whole stack), and the gain ``g`` of
the recurrent weights (Gaussian N(0, g²/H), per gate block for the gated cells; the other
parameters keep PyTorch's uniform initialisation). The networks are driven by standard-normal
inputs; the loss gradient at the last step is a random unit vector over the joint state.

The log-norm falls (or rises) along a straight line in T − t: the gradient decays
exponentially at a fixed rate per step, the slope of a least-squares fit (``decay_rate``,
nats/step; negative means vanishing). Networks whose forward states overflow (relu or linear
units at large gain) are recorded as diverged.
"""

from pathlib import Path

import numpy as np
import pandas as pd

import rnnlab
from rnnlab.diagnostics import gradient_decay, trajectories
from rnnlab.harness import Diverged, Grid, figures
from rnnlab.training import initialize

TITLE = ("log ‖∂L/∂a⟨t⟩‖ vs T − t for vanilla and gated cells, depth and gain; fitted rate "
         "vs gain")

#: Features of the standard-normal driving inputs.
INPUT_SIZE = 4
#: Every distance up to this one is recorded; beyond it, LOG_POINTS log-spaced ones.
DENSE_UP_TO = 100
LOG_POINTS = 300

VANILLA = ["tanh", "relu", "sigmoid", "linear"]


def _grid(depth, gain, T, H, seed):
    common = dict(depth=depth, gain=gain, T=T, H=H, seed=seed)
    return (Grid(cell="rnn", activation=VANILLA, **common)
            + Grid(cell=["lstm", "gru"], activation="gated", **common))


GRIDS = {
    "quick": _grid(depth=[1, 2], gain=[0.5, 1.0, 1.5, 2.0], T=2000, H=32, seed=0),
    "full": _grid(depth=[1, 2, 4, 8], gain=[0.5, 0.75, 1.0, 1.25, 1.5, 2.0], T=10_000, H=32,
                  seed=0),
}


def model(point):
    """The network and driving inputs of a grid point: ``(net, x)``, x of shape (T, 1, 4)."""
    rng = np.random.default_rng(point["seed"])
    net_seed, w_seed = (int(s) for s in rng.integers(2 ** 32, size=2))
    kw = dict(num_layers=point["depth"], dtype=np.float64, seed=net_seed)
    if point["cell"] == "rnn":
        net = rnnlab.RNN(INPUT_SIZE, point["H"], nonlinearity=point["activation"], **kw)
    elif point["cell"] in ("lstm", "gru"):
        if point["activation"] != "gated":
            raise ValueError(f"a {point['cell']} takes activation='gated', got "
                             f"{point['activation']!r}")
        net = getattr(rnnlab, point["cell"].upper())(INPUT_SIZE, point["H"], **kw)
    else:
        raise ValueError(f"cell must be rnn, lstm or gru, got {point['cell']!r}")
    initialize(net, "gaussian", gain=point["gain"], seed=w_seed)
    x = rng.standard_normal((point["T"], 1, INPUT_SIZE))
    return net, x


def _trajectory(net, x):
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            tr = trajectories(net, x)[0]
    except ValueError as exc:
        if "not finite" in str(exc):
            raise Diverged(f"forward states overflowed: {exc}") from None
        raise
    # trajectories() checks only the top layer's output: in a relu stack a lower layer can
    # overflow (inf, then NaN) while the layers above come out finite. Check every layer.
    arrays = [getattr(tr, "states", None), *getattr(tr, "arrays", ())]
    if not all(np.isfinite(a).all() for a in arrays if a is not None):
        raise Diverged("forward states overflowed in a lower layer (the top layer's output "
                       "stayed finite)")
    return tr


def recorded_distances(n_steps):
    """Distances kept in the table: all up to DENSE_UP_TO, then log-spaced, always T."""
    dense = np.arange(min(DENSE_UP_TO, n_steps) + 1)
    sparse = np.geomspace(max(DENSE_UP_TO, 1), max(n_steps, 1), LOG_POINTS).round()
    dist = np.unique(np.concatenate([dense, sparse, [n_steps]]).astype(np.int64))
    return dist[dist <= n_steps]


def run(point):
    net, x = model(point)
    gd = gradient_decay(_trajectory(net, x), loss="last", seed=point["seed"])
    fit = gd.fit()
    n_steps = point["T"]
    dist = recorded_distances(n_steps)
    log_norms = gd.log_norms[n_steps - dist]  # log_norms[i] is at distance T - i
    n = len(dist)
    return pd.DataFrame({
        "quantity": ["log_grad_norm"] * n + ["decay_rate", "fit_residual"],
        "value": np.concatenate([log_norms, [fit["rate"], fit["residual"]]]).astype(np.float64),
        "distance": np.concatenate([dist, [np.nan, np.nan]]).astype(np.float64),
    })


def warmup():
    tiny = dict(depth=1, gain=1.0, T=5, H=2, seed=0)
    for cell, act in [("rnn", "tanh"), ("lstm", "gated"), ("gru", "gated")]:
        run({**tiny, "cell": cell, "activation": act})
    run({**tiny, "cell": "rnn", "activation": "tanh", "depth": 2})  # the dense (joint) path


# ----------------------------------------------------------------------------------- figure
_DEPTH_STYLE = {1: "-", 2: "--", 4: ":", 8: "-."}


def _ok(table):
    """The rows of finished points, with every column of run()'s rows (a table of diverged
    points only has none of them)."""
    table = table[table["status"] == "ok"] if "status" in table.columns else table
    missing = {c: np.nan for c in ("quantity", "value", "distance") if c not in table.columns}
    return table.assign(**missing) if missing else table


def _label(cell, act):
    return f"{cell} ({act})" if cell == "rnn" else cell


def figure(table, out_dir):
    table = _ok(table)
    curves = table[(table.quantity == "log_grad_norm") & np.isfinite(table.value)]
    rates = table[(table.quantity == "decay_rate") & np.isfinite(table.value)]
    with figures.style() as plt:
        fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.4))
        # left: a representative slice, the longest sequences of one configuration
        if len(curves):
            pref = [("rnn", "tanh"), ("rnn", "sigmoid"), ("lstm", "gated"), ("gru", "gated")]
            have = set(zip(curves.cell, curves.activation))
            cell, act = next((c for c in pref if c in have), sorted(have)[0])
            sl = curves[(curves.cell == cell) & (curves.activation == act)]
            sl = sl[(sl.depth == sl.depth.min()) & (sl["T"] == sl["T"].max())
                    & (sl.seed == sl.seed.min())]
            depth, n_steps = int(sl.depth.iloc[0]), int(sl["T"].iloc[0])
            cmap = plt.get_cmap("viridis")
            gains = sorted(sl.gain.unique())
            for i, gain in enumerate(gains):
                g = sl[sl.gain == gain].sort_values("distance")
                left.plot(g.distance, g.value, color=cmap(i / max(len(gains) - 1, 1)),
                          label=f"g = {gain:g}")
            left.axhline(0, color="0.5", lw=0.8)
            left.set_title(f"{_label(cell, act)}, depth {depth}, H = {int(sl.H.iloc[0])}, "
                           f"T = {n_steps:,}: gradient of a loss at the last step")
            left.legend(title="recurrent gain")
        else:
            left.text(0.5, 0.5, "no finite log-norms", ha="center", transform=left.transAxes)
        left.set_xlabel("distance T − t (steps)")
        left.set_ylabel("log ‖∂L/∂a⟨t⟩‖ (nats)")
        # right: fitted rate vs gain, colour per (cell, activation), line style per depth
        combos = sorted(set(zip(rates.cell, rates.activation)),
                        key=lambda c: (c[0] != "rnn", c[0],
                                       VANILLA.index(c[1]) if c[1] in VANILLA else 9))
        colors = dict(zip(combos, plt.get_cmap("tab10").colors))
        depths = sorted(rates.depth.unique())
        for (cell, act) in combos:
            for depth in depths:
                r = rates[(rates.cell == cell) & (rates.activation == act)
                          & (rates.depth == depth)]
                if not len(r):
                    continue
                r = r.groupby("gain", as_index=False).value.mean()
                main = depth == depths[0]
                right.plot(r.gain, r.value, _DEPTH_STYLE.get(int(depth), "-"),
                           color=colors[(cell, act)], marker="o" if main else None, ms=3,
                           lw=1.6 if main else 1.0, alpha=1.0 if main else 0.7,
                           label=_label(cell, act) if main else None)
        right.axhline(0, color="0.5", lw=0.8)
        right.set_xlabel("recurrent gain g (W_hh ~ N(0, g²/H))")
        right.set_ylabel("fitted decay rate (nats/step)")
        right.set_title("slope of log ‖∂L/∂a⟨t⟩‖ vs T − t (< 0: vanishing)")
        if combos:
            handles, labels = right.get_legend_handles_labels()
            if len(depths) > 1:
                handles += [plt.Line2D([], [], color="0.3", ls=_DEPTH_STYLE.get(int(d), "-"))
                            for d in depths]
                labels += [f"depth {int(d)}" for d in depths]
            right.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        return figures.save(fig, Path(out_dir) / "gradient_decay")
