"""Trajectories of the gated cells (LSTM: joint (h, c) state; GRU: h)."""

import numpy as np

from ..kernels.cpu import jacobian as jac_kernels
from ..gated import LSTM
from .trajectory import Trajectory, base_config


class GatedTrajectory(Trajectory):
    """Step Jacobians of an LSTM or GRU recurrence (joint stack or one layer/direction)."""

    def __init__(self, lstm, w_hh, w_up, arrays, config):
        super().__init__(config)
        self.lstm = lstm
        self.w_hh, self.w_up, self.arrays = w_hh, w_up, arrays
        n_layers, hidden = w_hh.shape[0], w_hh.shape[2]
        self.n = n_layers * hidden * (2 if lstm else 1)
        self.n_steps = arrays[0].shape[1]

    def jacobians(self, t0, t1):
        out = np.empty((t1 - t0, self.n, self.n))
        if self.lstm:
            jac_kernels.lstm_step_jacobians(self.w_hh, self.w_up, *self.arrays, t0, out)
        else:
            jac_kernels.gru_step_jacobians(self.w_hh, self.w_up, *self.arrays, t0, out)
        return out


def gated_trajectories(model, cache, joint):
    """Trajectories of an LSTM or GRU from its forward cache (see ``trajectories``)."""
    lstm = isinstance(model, LSTM)
    p, H = model.parameters(), model.hidden_size
    width = model.gate_count * H
    init = cache["init"]

    def layer_arrays(layer, d, b):
        st = cache["states"][layer, d]
        order = slice(None, None, -1) if d else slice(None)
        idx = layer * model.num_directions + d
        if lstm:
            return (st["gates"][order, b], st["cells"][order, b], init[1][idx, b])
        return (st["gates"][order, b], st["hn"][order, b], st["hidden"][order, b],
                init[0][idx, b])

    def stack(parts):
        return tuple(np.ascontiguousarray(np.stack(a)) for a in zip(*parts))

    out = []
    for b in range(cache["batch"]):
        groups = ([[(layer, 0) for layer in range(model.num_layers)]] if joint else
                  [[(layer, d)] for layer in range(model.num_layers)
                   for d in range(model.num_directions)])
        for group in groups:
            sfx = [f"_l{layer}" + ("_reverse" if d else "") for layer, d in group]
            w_hh = np.stack([p[f"weight_hh{s}"] for s in sfx])
            w_up = np.stack([np.zeros((width, H))] + [p[f"weight_ih{s}"] for s in sfx[1:]])
            arrays = stack([layer_arrays(layer, d, b) for layer, d in group])
            layer = "all" if joint else group[0][0]
            direction = "backward" if group[0][1] else "forward"
            config = {**base_config(model), "sequence": b, "layer": layer,
                      "direction": direction}
            out.append(GatedTrajectory(lstm, w_hh, w_up, arrays, config))
    return out
