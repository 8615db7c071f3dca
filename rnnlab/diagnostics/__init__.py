"""Gradient-flow diagnostics: step Jacobians, Jacobian-product spectra, Lyapunov spectra,
gradient decay and Pascanu's conditions, as tidy pandas tables.

>>> import numpy as np, rnnlab
>>> from rnnlab.diagnostics import diagnose
>>> net = rnnlab.RNN(1, 32, dtype=np.float64, seed=0)
>>> tables = diagnose(net, np.zeros((500, 1, 1)), k=4)
>>> sorted(tables)
['gradient_decay', 'gradient_decay_fit', 'lyapunov', 'pascanu', 'spectra']
"""

import numpy as np
import pandas as pd

from .. import _validation as v
from ..gated import GRU, LSTM
from ..layers import RNN, RecurrentLayer
from .gradient_decay import GradientDecay, gradient_decay
from .lyapunov import (LyapunovEnsembleResult, LyapunovResult, lyapunov_ensemble,
                       lyapunov_spectrum)
from .pascanu import pascanu_conditions
from .spectra import default_spans, jacobian_product_spectra
from .trajectory import JacobianSequence, Trajectory, trajectories

__all__ = ["GradientDecay", "JacobianSequence", "LyapunovEnsembleResult", "LyapunovResult",
           "Trajectory", "diagnose", "default_spans", "gradient_decay", "jacobian_product_spectra",
           "lyapunov_ensemble", "lyapunov_spectrum",
           "model_from_state_dict", "pascanu_conditions", "step_jacobians", "trajectories"]

DIAGNOSTICS = ("lyapunov", "gradient_decay", "spectra", "pascanu")


def step_jacobians(model, x, h0=None, joint=None, backend=None):
    """Dense step Jacobians ``J_t = ∂s<t>/∂s<t-1>`` of every trajectory (for small T).

    Returns
    -------
    list of (dict, ndarray)
        The trajectory's configuration and its ``(T, n, n)`` Jacobians.
    """
    return [(tr.config, tr.jacobians(0, tr.n_steps))
            for tr in trajectories(model, x, h0, joint, backend)]


def model_from_state_dict(state_dict, nonlinearity="tanh", dtype=np.float64):
    """Build the rnnlab layer that a PyTorch ``state_dict`` describes, and load it.

    The cell is read from the gate count (``weight_hh_l0`` is ``(G*H, H)``: 1 RNN, 3 GRU,
    4 LSTM), the depth from the largest ``_l{k}``, the direction from ``_reverse`` keys and the
    deep transition from ``weight_tr`` keys. PyTorch never needs to be installed.

    Parameters
    ----------
    state_dict : mapping
        Parameter name to array or tensor.
    nonlinearity : str
        The vanilla RNN's activation (not recorded in a state_dict).
    dtype : numpy dtype
        Precision of the model.
    """
    if not hasattr(state_dict, "keys") or "weight_hh_l0" not in state_dict:
        raise ValueError("state_dict must be a mapping with PyTorch RNN/LSTM/GRU names "
                         "('weight_hh_l0', ...)")
    w_hh = v.to_numpy(state_dict["weight_hh_l0"], "state_dict['weight_hh_l0']")
    w_ih = v.to_numpy(state_dict["weight_ih_l0"], "state_dict['weight_ih_l0']")
    hidden = w_hh.shape[1]
    gates = w_hh.shape[0] // hidden
    layers = 1 + max(int(k.split("_l")[1].split("_")[0]) for k in state_dict
                     if k.startswith("weight_hh_l"))
    kw = {"num_layers": layers, "bidirectional": any(k.endswith("_reverse") for k in state_dict),
          "bias": "bias_ih_l0" in state_dict, "dtype": dtype}
    if gates == 1:
        depth = sum(1 for k in state_dict if k.startswith("weight_tr") and k.endswith("_l0"))
        model = RNN(w_ih.shape[1], hidden, nonlinearity=nonlinearity, transition_layers=depth,
                    **kw)
    elif gates == 3:
        model = GRU(w_ih.shape[1], hidden, **kw)
    elif gates == 4:
        model = LSTM(w_ih.shape[1], hidden, **kw)
    else:
        raise ValueError(f"weight_hh_l0 has {w_hh.shape[0]} rows for hidden size {hidden}: "
                         f"{gates} gate blocks match no cell (1 RNN, 3 GRU, 4 LSTM)")
    model.load_state_dict(state_dict)
    return model


def diagnose(model, x, h0=None, diagnostics=DIAGNOSTICS, k=None, m=1, warmup=0, spans=None,
             fit=None, seed=0, joint=None, nonlinearity="tanh", backend=None, **config):
    """Every diagnostic of a model driven by ``x``, one tidy DataFrame each.

    Parameters
    ----------
    model : RNN, LSTM, GRU or mapping
        A model, or a (PyTorch) state_dict from which one is built
        (:func:`model_from_state_dict`).
    x : array_like
        Driving inputs in the model's layout (a batch gives one trajectory per sequence).
    h0 : array_like or tuple, optional
        Initial state.
    diagnostics : sequence of str
        Any of ``"lyapunov"``, ``"gradient_decay"``, ``"spectra"``, ``"pascanu"``.
    k : int, optional
        Leading Lyapunov exponents (default: all).
    m : int
        QR interval of the Lyapunov spectrum.
    warmup : int
        Steps discarded by the Lyapunov spectrum.
    spans : sequence of int, optional
        Spans of the Jacobian-product spectra (default: powers of two).
    fit : (int, int), optional
        Distance window of the gradient-decay fit.
    seed : int
        Seed of the random frames and gradient directions.
    joint : bool, optional
        See :func:`trajectories`.
    nonlinearity : str
        For a state_dict of a vanilla RNN.
    backend : {None, "cpu", "cuda"}, optional
        Where the model's float64 forward pass runs (default: the model's own backend; see
        :func:`trajectories`). The analyses of each trajectory run on the CPU; for the spectra
        of many networks on the GPU see :func:`lyapunov_ensemble`.
    **config
        Extra constant columns (e.g. ``gain=0.9``).

    Returns
    -------
    dict of str to DataFrame
        ``"lyapunov"``, ``"gradient_decay"`` and ``"gradient_decay_fit"``, ``"spectra"``,
        ``"pascanu"`` (vanilla RNN only), each with the configuration columns (cell,
        activation, H, layers, direction, T, seed, dtype, m, ...).
    """
    if not isinstance(model, RecurrentLayer):
        model = model_from_state_dict(model, nonlinearity)
    unknown = set(diagnostics) - set(DIAGNOSTICS)
    if unknown:
        raise ValueError(f"diagnostics must be among {list(DIAGNOSTICS)}, got {sorted(unknown)}")
    extra = {**config, "dtype": "float64", "model_dtype": model.dtype.name}
    trajs = trajectories(model, x, h0, joint, backend)
    tables = {}
    if "lyapunov" in diagnostics:
        tables["lyapunov"] = pd.concat([lyapunov_spectrum(tr, k, m, warmup, seed).to_frame()
                                        for tr in trajs], ignore_index=True)
    rates = {}
    if "gradient_decay" in diagnostics:
        decays, fits = [], []
        for tr in trajs:
            gd = gradient_decay(tr, seed=seed)
            decays.append(gd.to_frame())
            f = gd.fit(*(fit or (None, None)))
            fits.append({**gd.config, **f})
            if tr.config.get("sequence") == 0 and tr.config.get("layer") in (0, "all"):
                rates[(0, 0 if tr.config["direction"] == "forward" else 1)] = f["rate"]
        tables["gradient_decay"] = pd.concat(decays, ignore_index=True)
        tables["gradient_decay_fit"] = pd.DataFrame(fits)
    if "spectra" in diagnostics:
        tables["spectra"] = pd.concat([jacobian_product_spectra(tr, spans) for tr in trajs],
                                      ignore_index=True)
    if "pascanu" in diagnostics and isinstance(model, RNN):
        tables["pascanu"] = pascanu_conditions(model, rates or None)
    for name, table in tables.items():
        for c, val in extra.items():
            table[c] = val
        if name != "pascanu":
            table["seed"] = seed
    return tables
