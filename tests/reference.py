"""Naive NumPy reference implementations, written from the math (not from rnnlab's code).

Everything here is deliberately plain: float64, explicit Python loops over time steps,
one small matrix product per step.  It exists only to check rnnlab's Numba kernels.

Conventions (PyTorch's):

* ``x`` is time-major ``(T, B, I)``.
* Per layer ``l`` and direction ``d`` (0 = forward, 1 = reverse, parameter suffix
  ``""`` / ``"_reverse"``)::

      z<t>   = W_ih x<t> + b_ih + W_hh a<t-1> + b_hh
      u_0<t> = g(z<t>)
      u_k<t> = g(W_tr_k u_{k-1}<t> + b_tr_k)      k = 1..D  (deep transition)
      a<t>   = u_D<t>

  the reverse direction processes t = T-1 .. 0, and "a<t-1>" means the state of the
  previously *processed* step (h0 before the first one).
* Layer ``l > 0`` reads the concatenation ``[forward, reverse]`` of layer ``l-1``'s states.
* ``h_n[l * num_dirs + d]`` is the state after the last processed step.
* Gradients are of ``L = sum(output * d_output) + sum(h_n * d_hn)``.

Missing bias entries in a parameter dict are treated as zero (and get no gradient).
"""

import numpy as np

# ----------------------------------------------------------------------------------------
# activations
# ----------------------------------------------------------------------------------------


def sigmoid(z):
    """1 / (1 + e^-z), without overflow for large |z|."""
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def act(name, z):
    """g(z)."""
    z = np.asarray(z, dtype=np.float64)
    if name == "tanh":
        return np.tanh(z)
    if name == "relu":
        return np.where(z > 0.0, z, 0.0)
    if name == "sigmoid":
        return sigmoid(z)
    if name == "linear":
        return z.copy()
    raise ValueError(f"unknown activation {name!r}")


def act_deriv(name, z):
    """g'(z), computed from the pre-activation (relu: 0 at z <= 0)."""
    z = np.asarray(z, dtype=np.float64)
    if name == "tanh":
        return 1.0 - np.tanh(z) ** 2
    if name == "relu":
        return np.where(z > 0.0, 1.0, 0.0)
    if name == "sigmoid":
        s = sigmoid(z)
        return s * (1.0 - s)
    if name == "linear":
        return np.ones_like(z)
    raise ValueError(f"unknown activation {name!r}")


# ----------------------------------------------------------------------------------------
# RNN parameters
# ----------------------------------------------------------------------------------------

SUFFIXES = ("", "_reverse")


def param_shapes(input_size, hidden_size, num_layers=1, bidirectional=False,
                 transition_layers=0, bias=True, transition_bias=True):
    """Name -> shape of every parameter (PyTorch naming, plus the deep-transition ones)."""
    H = hidden_size
    nd = 2 if bidirectional else 1
    shapes = {}
    for layer in range(num_layers):
        in_l = input_size if layer == 0 else nd * H
        for d in range(nd):
            sfx = SUFFIXES[d]
            shapes[f"weight_ih_l{layer}{sfx}"] = (H, in_l)
            shapes[f"weight_hh_l{layer}{sfx}"] = (H, H)
            if bias:
                shapes[f"bias_ih_l{layer}{sfx}"] = (H,)
                shapes[f"bias_hh_l{layer}{sfx}"] = (H,)
            for k in range(1, transition_layers + 1):
                shapes[f"weight_tr{k}_l{layer}{sfx}"] = (H, H)
                if transition_bias:
                    shapes[f"bias_tr{k}_l{layer}{sfx}"] = (H,)
    return shapes


def random_params(shapes, rng, scale=0.5):
    """Random float64 parameters of moderate scale (so relu/linear stacks stay bounded).

    Weights ~ U(-1.5 scale, 1.5 scale) / sqrt(fan_in); biases ~ U(-scale, scale).
    """
    params = {}
    for name, shape in shapes.items():
        if name.startswith("weight"):
            params[name] = rng.uniform(-scale, scale, size=shape) / np.sqrt(shape[1]) * 1.5
        else:
            params[name] = rng.uniform(-scale, scale, size=shape)
    return params


def _dims(params):
    """num_layers, num_dirs, transition layers D, hidden size, inferred from the names."""
    num_layers = 0
    while f"weight_ih_l{num_layers}" in params:
        num_layers += 1
    nd = 2 if "weight_ih_l0_reverse" in params else 1
    D = 0
    while f"weight_tr{D + 1}_l0" in params:
        D += 1
    H = params["weight_hh_l0"].shape[0]
    return num_layers, nd, D, H


def _get(params, name, H):
    """A parameter as float64, or zeros of shape (H,) for a missing bias."""
    if name in params:
        return np.asarray(params[name], dtype=np.float64)
    if name.startswith("bias"):
        return np.zeros(H)
    raise KeyError(name)


# ----------------------------------------------------------------------------------------
# RNN forward
# ----------------------------------------------------------------------------------------


def _direction_forward(params, layer, d, inp, a_init, g, D, H):
    """One layer, one direction.  Returns states (T,B,H) indexed by time and a record per step."""
    sfx = SUFFIXES[d]
    W_ih = _get(params, f"weight_ih_l{layer}{sfx}", H)
    W_hh = _get(params, f"weight_hh_l{layer}{sfx}", H)
    b_ih = _get(params, f"bias_ih_l{layer}{sfx}", H)
    b_hh = _get(params, f"bias_hh_l{layer}{sfx}", H)
    W_tr = [_get(params, f"weight_tr{k}_l{layer}{sfx}", H) for k in range(1, D + 1)]
    b_tr = [_get(params, f"bias_tr{k}_l{layer}{sfx}", H) for k in range(1, D + 1)]

    T, B, _ = inp.shape
    states = np.zeros((T, B, H))
    steps = {}  # t -> dict(a_prev, zs, us)
    order = range(T) if d == 0 else range(T - 1, -1, -1)
    a_prev = a_init.copy()
    for t in order:
        z0 = inp[t] @ W_ih.T + b_ih + a_prev @ W_hh.T + b_hh
        zs = [z0]
        us = [act(g, z0)]
        for k in range(D):
            zk = us[-1] @ W_tr[k].T + b_tr[k]
            zs.append(zk)
            us.append(act(g, zk))
        steps[t] = {"a_prev": a_prev, "zs": zs, "us": us}
        a_prev = us[-1]
        states[t] = a_prev
    return states, a_prev, steps


def rnn_forward(params, x, h0=None, nonlinearity="tanh"):
    """Forward pass.  ``x`` time-major (T, B, I).  Returns ``output, h_n, cache``."""
    params = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    num_layers, nd, D, H = _dims(params)
    x = np.asarray(x, dtype=np.float64)
    T, B, _ = x.shape
    if h0 is None:
        h0 = np.zeros((num_layers * nd, B, H))
    h0 = np.asarray(h0, dtype=np.float64)

    h_n = np.zeros((num_layers * nd, B, H))
    layer_inputs = []
    layer_steps = []
    inp = x
    for layer in range(num_layers):
        layer_inputs.append(inp)
        outs = []
        steps_ld = []
        for d in range(nd):
            states, last, steps = _direction_forward(
                params, layer, d, inp, h0[layer * nd + d], nonlinearity, D, H)
            outs.append(states)
            steps_ld.append(steps)
            h_n[layer * nd + d] = last
        layer_steps.append(steps_ld)
        inp = np.concatenate(outs, axis=-1)
    output = inp
    cache = {"params": params, "x": x, "h0": h0, "nonlinearity": nonlinearity,
             "layer_inputs": layer_inputs, "layer_steps": layer_steps,
             "dims": (num_layers, nd, D, H)}
    return output, h_n, cache


# ----------------------------------------------------------------------------------------
# RNN backward (BPTT)
# ----------------------------------------------------------------------------------------


def rnn_backward(cache, d_output=None, d_hn=None):
    """Gradients of ``sum(output*d_output) + sum(h_n*d_hn)``.

    Returns a dict with every parameter's gradient, ``"input"`` (T,B,I), ``"h0"`` and
    ``"hidden_l{l}{sfx}"`` = total dL/da<t>, (T, B, H) time-major.
    """
    params = cache["params"]
    g = cache["nonlinearity"]
    num_layers, nd, D, H = cache["dims"]
    x = cache["x"]
    T, B, _ = x.shape
    if d_output is None:
        d_output = np.zeros((T, B, nd * H))
    if d_hn is None:
        d_hn = np.zeros((num_layers * nd, B, H))
    d_output = np.asarray(d_output, dtype=np.float64)
    d_hn = np.asarray(d_hn, dtype=np.float64)

    grads = {name: np.zeros_like(val) for name, val in params.items()}
    grads["h0"] = np.zeros((num_layers * nd, B, H))

    d_layer_out = d_output  # gradient wrt this layer's concatenated output (T, B, nd*H)
    for layer in range(num_layers - 1, -1, -1):
        inp = cache["layer_inputs"][layer]
        d_inp = np.zeros_like(inp)
        for d in range(nd):
            sfx = SUFFIXES[d]
            W_ih = _get(params, f"weight_ih_l{layer}{sfx}", H)
            W_hh = _get(params, f"weight_hh_l{layer}{sfx}", H)
            W_tr = [_get(params, f"weight_tr{k}_l{layer}{sfx}", H) for k in range(1, D + 1)]
            steps = cache["layer_steps"][layer][d]

            order = list(range(T)) if d == 0 else list(range(T - 1, -1, -1))
            hidden = np.zeros((T, B, H))
            carry = d_hn[layer * nd + d].copy()  # gradient reaching the last processed state
            for t in reversed(order):
                da = d_layer_out[t][:, d * H:(d + 1) * H] + carry
                hidden[t] = da
                rec = steps[t]
                # back through the deep transition: u_D -> ... -> u_0
                du = da
                for k in range(D, 0, -1):
                    dz = du * act_deriv(g, rec["zs"][k])
                    grads[f"weight_tr{k}_l{layer}{sfx}"] += dz.T @ rec["us"][k - 1]
                    bname = f"bias_tr{k}_l{layer}{sfx}"
                    if bname in grads:
                        grads[bname] += dz.sum(axis=0)
                    du = dz @ W_tr[k - 1]
                dz0 = du * act_deriv(g, rec["zs"][0])
                grads[f"weight_ih_l{layer}{sfx}"] += dz0.T @ inp[t]
                grads[f"weight_hh_l{layer}{sfx}"] += dz0.T @ rec["a_prev"]
                for bname in (f"bias_ih_l{layer}{sfx}", f"bias_hh_l{layer}{sfx}"):
                    if bname in grads:
                        grads[bname] += dz0.sum(axis=0)
                d_inp[t] += dz0 @ W_ih
                carry = dz0 @ W_hh
            grads["h0"][layer * nd + d] = carry
            grads[f"hidden_l{layer}{sfx}"] = hidden
        d_layer_out = d_inp
    grads["input"] = d_layer_out
    return grads


def rnn_loss(params, x, h0, d_output, d_hn, nonlinearity):
    """The scalar ``sum(output*d_output) + sum(h_n*d_hn)`` (for finite differences)."""
    out, h_n, _ = rnn_forward(params, x, h0, nonlinearity)
    return float(np.sum(out * d_output) + np.sum(h_n * d_hn))


# ----------------------------------------------------------------------------------------
# output head (MLP readout)
# ----------------------------------------------------------------------------------------


def head_forward(params, a, hidden_activation="tanh"):
    """``h_0 = a``; ``h_k = g(W_{k-1} h_{k-1} + b_{k-1})``; ``logits = W_K h_K + b_K``.

    ``a`` has any leading dims.  Returns ``logits, cache``.
    """
    K = 0
    while f"weight_{K + 1}" in params:
        K += 1
    Ws = [np.asarray(params[f"weight_{k}"], dtype=np.float64) for k in range(K + 1)]
    bs = [np.asarray(params[f"bias_{k}"], dtype=np.float64) if f"bias_{k}" in params
          else np.zeros(Ws[k].shape[0]) for k in range(K + 1)]
    a = np.asarray(a, dtype=np.float64)
    lead = a.shape[:-1]
    h = a.reshape(-1, a.shape[-1])
    hs = [h]
    zs = []
    for k in range(K):
        z = h @ Ws[k].T + bs[k]
        zs.append(z)
        h = act(hidden_activation, z)
        hs.append(h)
    logits = h @ Ws[K].T + bs[K]
    cache = {"Ws": Ws, "hs": hs, "zs": zs, "lead": lead, "K": K, "g": hidden_activation,
             "in_shape": a.shape, "names": set(params)}
    return logits.reshape(lead + (logits.shape[-1],)), cache


def head_backward(cache, d_logits):
    """Gradients of ``sum(logits * d_logits)``: ``weight_k``, ``bias_k`` and ``"input"``."""
    Ws, hs, zs, K, g = cache["Ws"], cache["hs"], cache["zs"], cache["K"], cache["g"]
    d = np.asarray(d_logits, dtype=np.float64).reshape(-1, Ws[K].shape[0])
    grads = {}
    for k in range(K, -1, -1):
        grads[f"weight_{k}"] = d.T @ hs[k]
        if f"bias_{k}" in cache["names"]:
            grads[f"bias_{k}"] = d.sum(axis=0)
        dh = d @ Ws[k]
        if k > 0:
            d = dh * act_deriv(g, zs[k - 1])
    grads["input"] = dh.reshape(cache["in_shape"])
    return grads


def head_activate(logits, activation):
    """sigmoid, softmax over the last axis, or identity."""
    logits = np.asarray(logits, dtype=np.float64)
    if activation == "sigmoid":
        return sigmoid(logits)
    if activation == "softmax":
        e = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    if activation == "linear":
        return logits.copy()
    raise ValueError(activation)


# ----------------------------------------------------------------------------------------
# losses: each returns (loss, gradient wrt the first argument); mask has shape x.shape[:-1]
# ----------------------------------------------------------------------------------------


def _mask(mask, shape):
    if mask is None:
        return np.ones(shape[:-1] + (1,))
    return np.asarray(mask, dtype=np.float64)[..., None]


def bce_with_logits(logits, target, mask=None):
    """sum mask * [-y log s(l) - (1-y) log(1-s(l))];  d/dl = mask * (s(l) - y)."""
    l = np.asarray(logits, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64)
    m = _mask(mask, l.shape)
    # -log s(l) = log(1 + e^-l) ; -log(1 - s(l)) = log(1 + e^l)
    terms = y * np.logaddexp(0.0, -l) + (1.0 - y) * np.logaddexp(0.0, l)
    loss = float(np.sum(m * terms))
    return loss, m * (sigmoid(l) - y)


def cross_entropy(logits, target, mask=None):
    """-sum mask * sum_c y_c log softmax(l)_c ; target = class indices or probabilities."""
    l = np.asarray(logits, dtype=np.float64)
    target = np.asarray(target)
    if target.shape == l.shape[:-1]:  # integer class indices -> one-hot
        y = np.zeros_like(l)
        C = l.shape[-1]
        flat = y.reshape(-1, C)
        idx = target.reshape(-1).astype(np.int64)
        for i, c in enumerate(idx):
            flat[i, c] = 1.0
        y = flat.reshape(l.shape)
    else:
        y = target.astype(np.float64)
    m = _mask(mask, l.shape)
    mx = l.max(axis=-1, keepdims=True)
    logsumexp = mx + np.log(np.exp(l - mx).sum(axis=-1, keepdims=True))
    logp = l - logsumexp
    loss = float(-np.sum(m * y * logp))
    p = np.exp(logp)
    grad = m * (p * y.sum(axis=-1, keepdims=True) - y)
    return loss, grad


def mse(pred, target, mask=None):
    """sum mask * (pred - target)^2 ; d/dpred = 2 mask (pred - target)."""
    p = np.asarray(pred, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64)
    m = _mask(mask, p.shape)
    diff = p - y
    return float(np.sum(m * diff * diff)), 2.0 * m * diff
