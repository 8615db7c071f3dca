"""Naive NumPy reference for the gated cells (LSTM and GRU), written from the math only.

Same style and conventions as ``tests/reference.py`` (whose helpers it reuses): float64,
an explicit Python loop over time steps, PyTorch's parameter layout and naming.

* ``x`` is time-major ``(T, B, I)``; states are ``(num_layers * num_dirs, B, H)``.
* Per layer ``l`` and direction ``d`` (0 = forward, 1 = reverse, suffix ``""`` /
  ``"_reverse"``) the parameters are ``weight_ih_l{l}{sfx}`` (G*H, I_l),
  ``weight_hh_l{l}{sfx}`` (G*H, H), ``bias_ih_l{l}{sfx}``, ``bias_hh_l{l}{sfx}`` (G*H,),
  with G = 4 (LSTM, gate blocks i, f, g, o) or G = 3 (GRU, gate blocks r, z, n).

LSTM::

    pre  = W_ih x<t> + b_ih + W_hh h<t-1> + b_hh = [a_i, a_f, a_g, a_o]
    i, f, g, o = s(a_i), s(a_f), tanh(a_g), s(a_o)
    c<t> = f * c<t-1> + i * g
    h<t> = o * tanh(c<t>)

GRU::

    gi = W_ih x<t> + b_ih = [gi_r, gi_z, gi_n]
    gh = W_hh h<t-1> + b_hh = [gh_r, gh_z, gh_n]
    r = s(gi_r + gh_r) ; z = s(gi_z + gh_z)
    n = tanh(gi_n + r * gh_n)
    h<t> = (1 - z) * n + z * h<t-1>

* The reverse direction processes t = T-1 .. 0; "<t-1>" means the previously *processed*
  step (the initial state before the first one).
* Layer ``l > 0`` reads the concatenation ``[forward, reverse]`` of layer ``l-1``'s h.
* ``h_n[l * num_dirs + d]`` (and ``c_n``) is the state after the last processed step.
* Gradients are of ``L = sum(output * d_output) + sum(h_n * d_hn) [+ sum(c_n * d_cn)]``.

Missing bias entries in a parameter dict are treated as zero (and get no gradient).
"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from reference import SUFFIXES, random_params, sigmoid  # noqa: E402,F401

GATES = {"lstm": 4, "gru": 3}


# ----------------------------------------------------------------------------------------
# parameters
# ----------------------------------------------------------------------------------------


def param_shapes(mode, input_size, hidden_size, num_layers=1, bidirectional=False,
                 bias=True):
    """Name -> shape of every parameter of an LSTM (``mode="lstm"``) or GRU (``"gru"``)."""
    G = GATES[mode]
    H = hidden_size
    nd = 2 if bidirectional else 1
    shapes = {}
    for layer in range(num_layers):
        in_l = input_size if layer == 0 else nd * H
        for d in range(nd):
            sfx = SUFFIXES[d]
            shapes[f"weight_ih_l{layer}{sfx}"] = (G * H, in_l)
            shapes[f"weight_hh_l{layer}{sfx}"] = (G * H, H)
            if bias:
                shapes[f"bias_ih_l{layer}{sfx}"] = (G * H,)
                shapes[f"bias_hh_l{layer}{sfx}"] = (G * H,)
    return shapes


def _dims(params, mode):
    """num_layers, num_dirs, hidden size, number of gate blocks, from the names/shapes."""
    G = GATES[mode]
    num_layers = 0
    while f"weight_ih_l{num_layers}" in params:
        num_layers += 1
    nd = 2 if "weight_ih_l0_reverse" in params else 1
    H = params["weight_hh_l0"].shape[1]
    assert params["weight_hh_l0"].shape[0] == G * H, "wrong number of gate rows"
    return num_layers, nd, H, G


def _weights(params, layer, d, G, H):
    """W_ih, W_hh, b_ih, b_hh of one layer/direction as float64 (missing biases -> 0)."""
    sfx = SUFFIXES[d]
    out = []
    for name in (f"weight_ih_l{layer}{sfx}", f"weight_hh_l{layer}{sfx}",
                 f"bias_ih_l{layer}{sfx}", f"bias_hh_l{layer}{sfx}"):
        if name in params:
            out.append(np.asarray(params[name], dtype=np.float64))
        elif name.startswith("bias"):
            out.append(np.zeros(G * H))
        else:
            raise KeyError(name)
    return out


def _blocks(a, H, G):
    """Split the last axis (G*H) into G blocks of H."""
    return [a[..., k * H:(k + 1) * H] for k in range(G)]


# ----------------------------------------------------------------------------------------
# single steps (forward and backward) -- the whole cell math lives here
# ----------------------------------------------------------------------------------------


def lstm_cell(x, h_prev, c_prev, W_ih, W_hh, b_ih, b_hh, c_shift=0.0):
    """One LSTM step for a batch: returns h, c and a record for the backward pass.

    ``c_shift`` is added to c<t> before h<t> is formed (for checking dL/dc<t> numerically).
    """
    H = h_prev.shape[-1]
    pre = x @ W_ih.T + b_ih + h_prev @ W_hh.T + b_hh
    a_i, a_f, a_g, a_o = _blocks(pre, H, 4)
    i, f, g, o = sigmoid(a_i), sigmoid(a_f), np.tanh(a_g), sigmoid(a_o)
    c = f * c_prev + i * g + c_shift
    tc = np.tanh(c)
    h = o * tc
    rec = {"x": x, "h_prev": h_prev, "c_prev": c_prev, "i": i, "f": f, "g": g, "o": o,
           "c": c, "tc": tc}
    return h, c, rec


def lstm_cell_backward(rec, dh, dc_next, W_ih, W_hh):
    """Back through one LSTM step.

    ``dh``: total dL/dh<t>;  ``dc_next``: dL/dc<t> through c<t+1> (and c_n) only.
    Returns dx, dh_prev (through W_hh), dc_prev, dpre (G*H gate pre-activation grads) and
    dc (the total dL/dc<t>).
    """
    i, f, g, o, tc = rec["i"], rec["f"], rec["g"], rec["o"], rec["tc"]
    do = dh * tc
    dc = dc_next + dh * o * (1.0 - tc * tc)
    di = dc * g
    df = dc * rec["c_prev"]
    dg = dc * i
    dc_prev = dc * f
    dpre = np.concatenate([di * i * (1.0 - i), df * f * (1.0 - f), dg * (1.0 - g * g),
                           do * o * (1.0 - o)], axis=-1)
    return dpre @ W_ih, dpre @ W_hh, dc_prev, dpre, dc


def gru_cell(x, h_prev, W_ih, W_hh, b_ih, b_hh):
    """One GRU step for a batch: returns h and a record for the backward pass."""
    H = h_prev.shape[-1]
    gi = x @ W_ih.T + b_ih
    gh = h_prev @ W_hh.T + b_hh
    gi_r, gi_z, gi_n = _blocks(gi, H, 3)
    gh_r, gh_z, gh_n = _blocks(gh, H, 3)
    r = sigmoid(gi_r + gh_r)
    z = sigmoid(gi_z + gh_z)
    n = np.tanh(gi_n + r * gh_n)
    h = (1.0 - z) * n + z * h_prev
    rec = {"x": x, "h_prev": h_prev, "r": r, "z": z, "n": n, "gh_n": gh_n}
    return h, rec


def gru_cell_backward(rec, dh, W_ih, W_hh):
    """Back through one GRU step given the total dL/dh<t>.

    Returns dx, dh_prev (direct z path plus through W_hh), d_gi, d_gh (the gradients of
    W_ih x + b_ih and W_hh h + b_hh).
    """
    r, z, n, h_prev, gh_n = rec["r"], rec["z"], rec["n"], rec["h_prev"], rec["gh_n"]
    dn = dh * (1.0 - z)
    dz = dh * (h_prev - n)
    da_n = dn * (1.0 - n * n)          # grad of the tanh's argument
    dr = da_n * gh_n
    da_r = dr * r * (1.0 - r)
    da_z = dz * z * (1.0 - z)
    d_gi = np.concatenate([da_r, da_z, da_n], axis=-1)
    d_gh = np.concatenate([da_r, da_z, da_n * r], axis=-1)
    dh_prev = dh * z + d_gh @ W_hh
    return d_gi @ W_ih, dh_prev, d_gi, d_gh


# ----------------------------------------------------------------------------------------
# full forward (stacked, bidirectional)
# ----------------------------------------------------------------------------------------


def gated_forward(mode, params, x, h0=None, c0=None, h_shift=None, c_shift=None):
    """Forward pass of an LSTM or GRU stack.  ``x`` time-major (T, B, I).

    Returns ``output, h_n, c_n, cache`` (``c_n`` is None for a GRU).

    ``h_shift`` / ``c_shift`` (tests only): dicts ``(layer, direction) -> (T, B, H)`` of
    offsets added to h<t> / c<t> as soon as they are formed, so that the derivative of the
    loss with respect to them is the total dL/dh<t> / dL/dc<t>.
    """
    h_shift = h_shift or {}
    c_shift = c_shift or {}
    params = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    num_layers, nd, H, G = _dims(params, mode)
    x = np.asarray(x, dtype=np.float64)
    T, B, _ = x.shape
    S = num_layers * nd
    h0 = np.zeros((S, B, H)) if h0 is None else np.asarray(h0, dtype=np.float64)
    if mode == "lstm":
        c0 = np.zeros((S, B, H)) if c0 is None else np.asarray(c0, dtype=np.float64)

    h_n = np.zeros((S, B, H))
    c_n = np.zeros((S, B, H)) if mode == "lstm" else None
    layer_inputs, layer_recs, layer_cells = [], [], []
    inp = x
    for layer in range(num_layers):
        layer_inputs.append(inp)
        outs, recs_l, cells_l = [], [], []
        for d in range(nd):
            W_ih, W_hh, b_ih, b_hh = _weights(params, layer, d, G, H)
            states = np.zeros((T, B, H))
            cells = np.zeros((T, B, H))
            recs = {}
            h = h0[layer * nd + d].copy()
            c = c0[layer * nd + d].copy() if mode == "lstm" else None
            order = range(T) if d == 0 else range(T - 1, -1, -1)
            for t in order:
                if mode == "lstm":
                    cs = c_shift[(layer, d)][t] if (layer, d) in c_shift else 0.0
                    h, c, recs[t] = lstm_cell(inp[t], h, c, W_ih, W_hh, b_ih, b_hh, cs)
                    cells[t] = c
                else:
                    h, recs[t] = gru_cell(inp[t], h, W_ih, W_hh, b_ih, b_hh)
                if (layer, d) in h_shift:
                    h = h + h_shift[(layer, d)][t]
                states[t] = h
            h_n[layer * nd + d] = h
            if mode == "lstm":
                c_n[layer * nd + d] = c
            outs.append(states)
            recs_l.append(recs)
            cells_l.append(cells)
        layer_recs.append(recs_l)
        layer_cells.append(cells_l)
        inp = np.concatenate(outs, axis=-1)
    cache = {"mode": mode, "params": params, "x": x, "layer_inputs": layer_inputs,
             "layer_recs": layer_recs, "layer_cells": layer_cells,
             "dims": (num_layers, nd, H, G)}
    return inp, h_n, c_n, cache


def lstm_forward(params, x, h0=None, c0=None):
    """``output, h_n, c_n, cache``."""
    return gated_forward("lstm", params, x, h0, c0)


def gru_forward(params, x, h0=None):
    """``output, h_n, cache``."""
    out, h_n, _, cache = gated_forward("gru", params, x, h0)
    return out, h_n, cache


# ----------------------------------------------------------------------------------------
# backward (BPTT)
# ----------------------------------------------------------------------------------------


def gated_backward(cache, d_output=None, d_hn=None, d_cn=None):
    """Gradients of ``sum(output*d_output) + sum(h_n*d_hn) [+ sum(c_n*d_cn)]``.

    Returns every parameter's gradient, ``"input"`` (T,B,I), ``"h0"`` (and ``"c0"`` for an
    LSTM), ``"hidden_l{l}{sfx}"`` = total dL/dh<t> (T,B,H) time-major, and for an LSTM
    also ``"cell_l{l}{sfx}"`` = total dL/dc<t> (T,B,H) time-major.
    """
    mode = cache["mode"]
    params = cache["params"]
    num_layers, nd, H, G = cache["dims"]
    T, B, _ = cache["x"].shape
    S = num_layers * nd
    lstm = mode == "lstm"
    d_output = (np.zeros((T, B, nd * H)) if d_output is None
                else np.asarray(d_output, dtype=np.float64))
    d_hn = np.zeros((S, B, H)) if d_hn is None else np.asarray(d_hn, dtype=np.float64)
    if lstm:
        d_cn = np.zeros((S, B, H)) if d_cn is None else np.asarray(d_cn, dtype=np.float64)

    grads = {name: np.zeros_like(val) for name, val in params.items()}
    grads["h0"] = np.zeros((S, B, H))
    if lstm:
        grads["c0"] = np.zeros((S, B, H))

    d_layer_out = d_output
    for layer in range(num_layers - 1, -1, -1):
        inp = cache["layer_inputs"][layer]
        d_inp = np.zeros_like(inp)
        for d in range(nd):
            sfx = SUFFIXES[d]
            W_ih, W_hh, _, _ = _weights(params, layer, d, G, H)
            recs = cache["layer_recs"][layer][d]
            hidden = np.zeros((T, B, H))
            cell = np.zeros((T, B, H))
            order = list(range(T)) if d == 0 else list(range(T - 1, -1, -1))
            dh_carry = d_hn[layer * nd + d].copy()
            dc_carry = d_cn[layer * nd + d].copy() if lstm else None
            for t in reversed(order):
                dh = d_layer_out[t][:, d * H:(d + 1) * H] + dh_carry
                hidden[t] = dh
                rec = recs[t]
                if lstm:
                    dx, dh_carry, dc_carry, dpre, dc = lstm_cell_backward(
                        rec, dh, dc_carry, W_ih, W_hh)
                    cell[t] = dc
                    d_gi = d_gh = dpre
                else:
                    dx, dh_carry, d_gi, d_gh = gru_cell_backward(rec, dh, W_ih, W_hh)
                grads[f"weight_ih_l{layer}{sfx}"] += d_gi.T @ rec["x"]
                grads[f"weight_hh_l{layer}{sfx}"] += d_gh.T @ rec["h_prev"]
                if f"bias_ih_l{layer}{sfx}" in grads:
                    grads[f"bias_ih_l{layer}{sfx}"] += d_gi.sum(axis=0)
                if f"bias_hh_l{layer}{sfx}" in grads:
                    grads[f"bias_hh_l{layer}{sfx}"] += d_gh.sum(axis=0)
                d_inp[t] += dx
            grads["h0"][layer * nd + d] = dh_carry
            grads[f"hidden_l{layer}{sfx}"] = hidden
            if lstm:
                grads["c0"][layer * nd + d] = dc_carry
                grads[f"cell_l{layer}{sfx}"] = cell
        d_layer_out = d_inp
    grads["input"] = d_layer_out
    return grads


def lstm_backward(cache, d_output=None, d_hn=None, d_cn=None):
    return gated_backward(cache, d_output, d_hn, d_cn)


def gru_backward(cache, d_output=None, d_hn=None):
    return gated_backward(cache, d_output, d_hn)


def gated_loss(mode, params, x, h0, c0, d_output, d_hn, d_cn=None, h_shift=None,
               c_shift=None):
    """The scalar loss (for finite differences)."""
    out, h_n, c_n, _ = gated_forward(mode, params, x, h0, c0, h_shift, c_shift)
    loss = np.sum(out * d_output) + np.sum(h_n * d_hn)
    if mode == "lstm" and d_cn is not None:
        loss += np.sum(c_n * d_cn)
    return float(loss)


# ----------------------------------------------------------------------------------------
# the gated identities (single step, W_hh = 0)
# ----------------------------------------------------------------------------------------


def gru_update_gate(params, x, layer=0, d=0):
    """z = s(W_iz x + b_iz + b_hz): the GRU update gate when W_hh = 0 (any h)."""
    H = params["weight_hh_l0"].shape[1]
    W_ih, _, b_ih, b_hh = _weights(params, layer, d, 3, H)
    a = np.asarray(x, dtype=np.float64) @ W_ih.T + b_ih + b_hh
    return sigmoid(a[..., H:2 * H])


def lstm_forget_gate(params, x, layer=0, d=0):
    """f = s(W_if x + b_if + b_hf): the LSTM forget gate when W_hh = 0 (any h)."""
    H = params["weight_hh_l0"].shape[1]
    W_ih, _, b_ih, b_hh = _weights(params, layer, d, 4, H)
    a = np.asarray(x, dtype=np.float64) @ W_ih.T + b_ih + b_hh
    return sigmoid(a[..., H:2 * H])
