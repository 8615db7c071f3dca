"""Step Jacobians of the vanilla RNN along a trajectory: dense, and matrix-free on blocks.

The state is the joint hidden state of ``L`` stacked unidirectional layers,
``s<t> = (a^1<t>, ..., a^L<t>)`` (``n = L*H``), each layer possibly with ``D`` deep-transition
sublayers. With ``T_l = D_{l,D} W_tr_D ... D_{l,1} W_tr_1 D_{l,0}`` (``D_{l,k}`` the diagonal of
activation derivatives of sublayer k of layer l at step t), a perturbation propagates as::

    da^l<t> = T_l (W_hh^l da^l<t-1> + W_ih^l da^{l-1}<t>)

so ``J_t = ds<t>/ds<t-1>`` is block lower-triangular. Steps are in *processing order*: the
caller hands the states of a backward-direction layer already reversed in time.

Array conventions shared by the kernels:

* ``w_hh`` ``(L, H, H)``; ``w_up`` ``(L, H, H)``: ``w_up[l]`` is layer l's ``W_ih`` (its input
  is layer l-1's state, so it is H x H); ``w_up[0]`` is unused.
* ``w_tr`` ``(L, D, H, H)`` deep-transition weights.
* ``states`` ``(L, D + 1, T, H)``: the activations ``u_k`` of one sequence, ``states[l, D]``
  the hidden states.
* blocks of vectors ``(L, H, k)``: k tangent (or adjoint) vectors of the joint state.
"""

import numpy as np
from numba import njit

from ...activations import derivative_from_output


@njit(cache=True)
def _scale_rows(z, states, l, k, t, act):
    u = states[l, k, t]
    for i in range(z.shape[0]):
        d = derivative_from_output(act, u[i])
        for c in range(z.shape[1]):
            z[i, c] *= d


@njit(cache=True)
def rnn_jacobian_apply(w_hh, w_up, w_tr, states, act, t, q, out):
    """``out = J_t q`` for a block ``q`` of tangent vectors of the joint state.

    Parameters
    ----------
    w_hh, w_up, w_tr, states
        See the module docstring.
    act : int
        Activation code.
    t : int
        Step (processing order); ``J_t`` maps the state after step ``t - 1`` to that after ``t``.
    q : ndarray, shape (L, H, k)
        Tangent vectors at ``s<t-1>``.
    out : ndarray, shape (L, H, k)
        Output: the vectors at ``s<t>``.
    """
    n_layers, depth = w_tr.shape[0], w_tr.shape[1]
    for l in range(n_layers):
        z = np.dot(w_hh[l], q[l])
        if l > 0:
            z += np.dot(w_up[l], out[l - 1])
        _scale_rows(z, states, l, 0, t, act)
        for k in range(1, depth + 1):
            z = np.dot(w_tr[l, k - 1], z)
            _scale_rows(z, states, l, k, t, act)
        out[l] = z


@njit(cache=True)
def rnn_jacobian_apply_transpose(w_hh, w_up, w_tr, states, act, t, v, out):
    """``out = J_t^T v`` for a block ``v`` of adjoint vectors (gradients) of the joint state.

    Parameters
    ----------
    w_hh, w_up, w_tr, states, act, t
        As :func:`rnn_jacobian_apply`.
    v : ndarray, shape (L, H, k)
        Gradients with respect to ``s<t>``.
    out : ndarray, shape (L, H, k)
        Output: gradients with respect to ``s<t-1>`` through step t.
    """
    n_layers, depth = w_tr.shape[0], w_tr.shape[1]
    carry = np.zeros_like(v[0])
    for l in range(n_layers - 1, -1, -1):
        g = v[l] + carry
        for k in range(depth, 0, -1):
            _scale_rows(g, states, l, k, t, act)
            g = np.dot(w_tr[l, k - 1].T, g)
        _scale_rows(g, states, l, 0, t, act)
        out[l] = np.dot(w_hh[l].T, g)
        if l > 0:
            carry = np.dot(w_up[l].T, g)


@njit(cache=True)
def rnn_step_jacobians(w_hh, w_up, w_tr, states, act, t0, out):
    """Dense Jacobians ``J_t`` for ``t = t0, ..., t0 + len(out) - 1``.

    Parameters
    ----------
    w_hh, w_up, w_tr, states, act
        See the module docstring.
    t0 : int
        First step.
    out : ndarray, shape (C, n, n)
        Output, ``n = L*H``.
    """
    n_layers, hidden = w_hh.shape[0], w_hh.shape[1]
    n = n_layers * hidden
    if n_layers == 1 and w_tr.shape[1] == 0:
        # the common case costs O(H^2) a step: J_t = diag(g'(z_t)) W_hh
        for c in range(out.shape[0]):
            a = states[0, 0, t0 + c]
            for i in range(hidden):
                d = derivative_from_output(act, a[i])
                for j in range(hidden):
                    out[c, i, j] = d * w_hh[0, i, j]
        return
    eye = np.zeros((n_layers, hidden, n), dtype=w_hh.dtype)
    for l in range(n_layers):
        for i in range(hidden):
            eye[l, i, l * hidden + i] = 1
    block = np.empty((n_layers, hidden, n), dtype=w_hh.dtype)
    for c in range(out.shape[0]):
        rnn_jacobian_apply(w_hh, w_up, w_tr, states, act, t0 + c, eye, block)
        out[c] = block.reshape(n, n)


# ----------------------------------------------------------------------------- gated cells
# The gated kernels take the stored gate activations of one sequence, stacked over layers, in
# processing order: the joint state of layer l is (h, c) for the LSTM (2H) and h for the GRU.
# ``w_up[l]`` is layer l's W_ih (its input is layer l-1's h); ``w_up[0]`` is unused.


@njit(cache=True)
def _lstm_input_map(w, i_g, f_g, g_g, o_g, c_prev, tc, out):
    """``out (2H, m) = d(h<t>, c<t>)/d(input)`` through ``W (4H, m)`` (W_hh or W_ih)."""
    hidden = i_g.shape[0]
    for r in range(hidden):
        si = i_g[r] * (1 - i_g[r])
        sf = f_g[r] * (1 - f_g[r])
        sg = 1 - g_g[r] * g_g[r]
        so = o_g[r] * (1 - o_g[r])
        dh_dc = o_g[r] * (1 - tc[r] * tc[r])
        for col in range(w.shape[1]):
            dc = (c_prev[r] * sf * w[hidden + r, col] + g_g[r] * si * w[r, col]
                  + i_g[r] * sg * w[2 * hidden + r, col])
            out[hidden + r, col] = dc
            out[r, col] = tc[r] * so * w[3 * hidden + r, col] + dh_dc * dc


@njit(cache=True)
def lstm_step_jacobians(w_hh, w_up, gates, cells, c0, t0, out):
    """Dense joint Jacobians ``∂(h, c)<t> / ∂(h, c)<t-1>`` of a stacked LSTM.

    Parameters
    ----------
    w_hh : ndarray, shape (L, 4H, H)
        Recurrent weights (gate order i, f, g, o).
    w_up : ndarray, shape (L, 4H, H)
        ``W_ih`` of layers 1.. (row 0 unused).
    gates : ndarray, shape (L, T, 4H)
        Gate activations of one sequence, processing order.
    cells : ndarray, shape (L, T, H)
        Cell states.
    c0 : ndarray, shape (L, H)
        Initial cell states.
    t0 : int
        First step.
    out : ndarray, shape (C, 2LH, 2LH)
        Output; the state of layer l occupies rows ``2lH .. 2lH + 2H`` as ``(h, c)``.
    """
    n_layers, hidden = w_hh.shape[0], w_hh.shape[2]
    width = 2 * hidden
    own = np.empty((width, hidden), dtype=w_hh.dtype)
    up = np.empty((width, hidden), dtype=w_hh.dtype)
    tc = np.empty(hidden, dtype=w_hh.dtype)
    for c in range(out.shape[0]):
        t = t0 + c
        out[c] = 0
        for l in range(n_layers):
            g = gates[l, t]
            i_g, f_g, g_g, o_g = g[:hidden], g[hidden:2 * hidden], g[2 * hidden:3 * hidden], \
                g[3 * hidden:]
            c_prev = cells[l, t - 1] if t > 0 else c0[l]
            for r in range(hidden):
                tc[r] = np.tanh(cells[l, t, r])
            _lstm_input_map(w_hh[l], i_g, f_g, g_g, o_g, c_prev, tc, own)
            base = l * width
            for r in range(width):
                for col in range(hidden):
                    out[c, base + r, base + col] = own[r, col]
            for r in range(hidden):  # the cell path: c<t> = f c<t-1> + ...
                out[c, base + hidden + r, base + hidden + r] = f_g[r]
                out[c, base + r, base + hidden + r] = o_g[r] * (1 - tc[r] * tc[r]) * f_g[r]
            if l > 0:
                _lstm_input_map(w_up[l], i_g, f_g, g_g, o_g, c_prev, tc, up)
                below = out[c, base - width:base - hidden]  # d h^{l-1}<t> / d s<t-1>
                out[c, base:base + width] += np.dot(up, below)


@njit(cache=True)
def _gru_maps(w, gates, hn, h_prev, recurrent, out):
    """``out (H, m)``: the gate paths of ``∂h<t>/∂(input)`` through ``W (3H, m)``.

    ``recurrent`` selects W_hh (the n gate reads ``r * (W_hn h + b_hn)``) or W_ih."""
    hidden = h_prev.shape[0]
    for row in range(hidden):
        r, z, n = gates[row], gates[hidden + row], gates[2 * hidden + row]
        dz = (h_prev[row] - n) * z * (1 - z)
        dn = (1 - z) * (1 - n * n)
        dr = dn * hn[row] * r * (1 - r)
        scale_n = dn * r if recurrent else dn
        for col in range(w.shape[1]):
            out[row, col] = (dz * w[hidden + row, col] + scale_n * w[2 * hidden + row, col]
                             + dr * w[row, col])


@njit(cache=True)
def gru_step_jacobians(w_hh, w_up, gates, hn, hidden_states, h0, t0, out):
    """Dense joint Jacobians ``∂h<t>/∂h<t-1>`` of a stacked GRU (PyTorch's form).

    Parameters
    ----------
    w_hh : ndarray, shape (L, 3H, H)
        Recurrent weights (gate order r, z, n).
    w_up : ndarray, shape (L, 3H, H)
        ``W_ih`` of layers 1.. (row 0 unused).
    gates : ndarray, shape (L, T, 3H)
        Gate activations r, z, n of one sequence, processing order.
    hn : ndarray, shape (L, T, H)
        ``W_hn h<t-1> + b_hn``.
    hidden_states : ndarray, shape (L, T, H)
        The hidden states.
    h0 : ndarray, shape (L, H)
        Initial states.
    t0 : int
        First step.
    out : ndarray, shape (C, LH, LH)
        Output.
    """
    n_layers, hidden = w_hh.shape[0], w_hh.shape[2]
    own = np.empty((hidden, hidden), dtype=w_hh.dtype)
    up = np.empty((hidden, hidden), dtype=w_hh.dtype)
    for c in range(out.shape[0]):
        t = t0 + c
        out[c] = 0
        for l in range(n_layers):
            h_prev = hidden_states[l, t - 1] if t > 0 else h0[l]
            _gru_maps(w_hh[l], gates[l, t], hn[l, t], h_prev, True, own)
            base = l * hidden
            for r in range(hidden):
                for col in range(hidden):
                    out[c, base + r, base + col] = own[r, col]
                out[c, base + r, base + r] += gates[l, t, hidden + r]  # h<t> = ... + z h<t-1>
            if l > 0:
                _gru_maps(w_up[l], gates[l, t], hn[l, t], h_prev, False, up)
                out[c, base:base + hidden] += np.dot(up, out[c, base - hidden:base])


@njit(cache=True)
def rnn_derivatives(states, act, out):
    """``out[t, i] = g'(z_t)_i`` from the activations ``states`` ``(T, H)`` (diagonal form)."""
    for t in range(states.shape[0]):
        for i in range(states.shape[1]):
            out[t, i] = derivative_from_output(act, states[t, i])
