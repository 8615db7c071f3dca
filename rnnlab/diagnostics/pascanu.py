"""Pascanu, Mikolov & Bengio (2013): the sufficient condition for vanishing gradients.

For ``a<t> = g(W_hh a<t-1> + ...)`` with ``|g'| <= γ``, ``‖∂a<t>/∂a<t-1>‖ <= σ_max(W_hh) γ``;
if ``σ_max < 1/γ`` the gradient is guaranteed to vanish exponentially (rate at most
``log(σ_max γ)`` per step). Otherwise explosion is possible (necessary, not sufficient).
"""

import numpy as np
import pandas as pd

from ..activations import DERIVATIVE_BOUND
from ..layers import RNN


def pascanu_conditions(model, measured_rate=None):
    """σ_max(W_hh), γ and the verdict, one row per layer and direction.

    Parameters
    ----------
    model : RNN
        A vanilla RNN (the condition is stated for it; deep transitions multiply in their own
        σ_max, included in ``sigma_max_transition``).
    measured_rate : float or dict, optional
        Measured gradient-decay rate(s) per step to place beside the bound (one value, or a
        dict keyed by (layer, direction)).

    Returns
    -------
    DataFrame
        layer, direction, sigma_max, gamma, bound (1/γ), sigma_max_gamma,
        log_bound_rate (``log(σ_max γ)`` times the transition factors), verdict,
        measured_rate.
    """
    if not isinstance(model, RNN):
        raise TypeError(f"pascanu_conditions applies to the vanilla RNN, got "
                        f"{type(model).__name__}")
    gamma = DERIVATIVE_BOUND[model.nonlinearity]
    p = model.parameters()
    rows = []
    for layer in range(model.num_layers):
        for d in range(model.num_directions):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            sigma = float(np.linalg.svd(p[f"weight_hh{sfx}"].astype(np.float64),
                                        compute_uv=False)[0])
            factor = sigma * gamma
            for k in range(1, model.transition_layers + 1):
                factor *= gamma * float(np.linalg.svd(
                    p[f"weight_tr{k}{sfx}"].astype(np.float64), compute_uv=False)[0])
            rate = measured_rate.get((layer, d)) if isinstance(measured_rate, dict) else \
                measured_rate
            rows.append({"layer": layer, "direction": "backward" if d else "forward",
                         "activation": model.nonlinearity, "sigma_max": sigma, "gamma": gamma,
                         "bound": 1.0 / gamma, "sigma_max_gamma": sigma * gamma,
                         "log_bound_rate": float(np.log(factor)) if factor > 0 else -np.inf,
                         "verdict": "vanishing guaranteed" if factor < 1 else
                         "explosion possible",
                         "measured_rate": np.nan if rate is None else float(rate)})
    return pd.DataFrame(rows)
