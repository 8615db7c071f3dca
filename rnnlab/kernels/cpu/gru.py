"""GRU kernels for the CPU: forward recurrence and backpropagation through time.

One layer, one direction, a batch of sequences, PyTorch's cell and gate order (r, z, n)::

    r<t> = σ(W_ir x<t> + b_ir + W_hr h<t-1> + b_hr)
    z<t> = σ(W_iz x<t> + b_iz + W_hz h<t-1> + b_hz)
    n<t> = tanh(W_in x<t> + b_in + r<t> * (W_hn h<t-1> + b_hn))
    h<t> = (1 - z<t>) * n<t> + z<t> * h<t-1>

``b_hn`` sits inside the product with ``r``, so the recurrent part of the ``n`` block,
``W_hn h<t-1> + b_hn``, is kept apart from the input part and stored for the backward pass; and
the gradient with respect to the recurrent pre-activations differs from the one with respect to
the input pre-activations in that block (``dn * r`` against ``dn``).

As for the vanilla cell (:mod:`rnnlab.kernels.cpu.vanilla`), only the step-by-step recurrence is
compiled (:func:`gru_recurrence`, :func:`gru_recurrence_backward`); the input projection before
the loop and the weight gradients after it are single large matrix products
(:func:`gru_layer_forward`, :func:`gru_layer_backward`). Sums run in a fixed order; results are
bitwise reproducible and independent of the thread count.
"""

import numpy as np
from numba import njit, prange

from ...activations import fast_sigmoid, fast_tanh, one_like
from .blas import (accumulate_panels, bind_gemm, gemm_scratch, matmul_tasks, prev_state_tasks,
                   run_products, step_product)
from .lstm import pack_unit_parts, unit_parts
from .vanilla import n_chunks, recurrence_threads

#: Gate blocks stacked in the weights: r, z, n.
GATES = 3

# error_model="numpy" lets the gate loops vectorise, and the gate helpers are inlined into the
# time loops (see rnnlab.kernels.cpu.lstm).


@njit(cache=True, error_model="numpy", inline="always")
def _gru_gate_rows(g, acc, b_ih, h_prev, hn_out, h_out, b0, b1):
    """Rows ``b0:b1`` of one step: ``g`` (B, 3H) holds ``W_ih x<t>`` on entry and the gate
    activations on exit; ``acc`` holds the chunk's rows (row ``b`` at ``b - b0``) of
    ``h<t-1> W_hh^T + b_hh``. Shared by the batch-chunked and the BLAS-step forward."""
    hid = h_out.shape[1]
    for b in range(b0, b1):
        g_b = g[b]
        acc_b = acc[b - b0]
        hn_b = hn_out[b]
        h_b = h_out[b]
        hp = h_prev[b]
        for i in range(hid):
            rg = fast_sigmoid(g_b[i] + b_ih[i] + acc_b[i])
            zg = fast_sigmoid(g_b[hid + i] + b_ih[hid + i] + acc_b[hid + i])
            hn_i = acc_b[2 * hid + i]
            ng = fast_tanh(g_b[2 * hid + i] + b_ih[2 * hid + i] + rg * hn_i)
            g_b[i] = rg
            g_b[hid + i] = zg
            g_b[2 * hid + i] = ng
            hn_b[i] = hn_i
            h_b[i] = ng + zg * (hp[i] - ng)


@njit(cache=True, error_model="numpy", inline="always")
def _gru_gate_grad_rows(g, hn, h_prev, d_out, dh, dz, db_rows, d_hidden, store, b0, b1):
    """Rows ``b0:b1`` of one backward step: ``dh`` holds the chunk's rows (row ``b`` at
    ``b - b0``), on entry the gradient through the step after t, on exit ``dL/dh<t> * z<t>``
    (the direct path to h<t-1>); ``d_hidden`` (B, H) gets dL/dh<t> if ``store``. Shared by the
    batch-chunked and the BLAS-step backward."""
    hid = hn.shape[1]
    one = one_like(g[0, 0])
    for b in range(b0, b1):
        g_b = g[b]
        hn_b = hn[b]
        hp = h_prev[b]
        do_b = d_out[b]
        dz_b = dz[b]
        dh_b = dh[b - b0]
        for i in range(hid):
            rg = g_b[i]
            zg = g_b[hid + i]
            ng = g_b[2 * hid + i]
            dht = do_b[i] + dh_b[i]
            dn = dht * (one - zg) * (one - ng * ng)
            dz_b[i] = dn * hn_b[i] * rg * (one - rg)
            dz_b[hid + i] = dht * (hp[i] - ng) * zg * (one - zg)
            dz_b[2 * hid + i] = dn
            dz_b[3 * hid + i] = dn * rg
            dh_b[i] = dht
        if store:
            d_h = d_hidden[b]
            for i in range(hid):
                d_h[i] = dh_b[i]
        for i in range(hid):
            dh_b[i] = dh_b[i] * g_b[hid + i]
        db_b = db_rows[b]
        for k in range(4 * hid):
            db_b[k] += dz_b[k]


@njit(cache=True, parallel=True, error_model="numpy")
def gru_recurrence(w_hh_t, b_ih, b_hh, h0, reverse, gates, hn, hidden, n_chunks, blas, ilp64):
    """Run the GRU recurrence of one layer in one direction, in place.

    Parameters
    ----------
    w_hh_t : ndarray, shape (H, 3H)
        The *transpose* of ``W_hh`` (C-contiguous), so that the inner loop is a contiguous axpy
        over the three gate blocks.
    b_ih, b_hh : ndarray, shape (3H,)
        Input and recurrent biases (zeros for a model without bias).
    h0 : ndarray, shape (B, H)
        Initial hidden state.
    reverse : bool
        Process the sequence from ``t = T-1`` down to ``0``.
    gates : ndarray, shape (T, B, 3H)
        On entry the input projection ``W_ih x<t>``; on exit the gate activations
        ``[r, z, n]<t>``.
    hn : ndarray, shape (T, B, H)
        Output: ``W_hn h<t-1> + b_hn``, the recurrent part of the ``n`` block.
    hidden : ndarray, shape (T, B, H)
        Output: the hidden states ``h<t>`` (the layer's output).
    n_chunks : int
        Number of batch chunks run in parallel (each runs the whole time loop), at most B.
    blas : bool
        The per-step product as one single-threaded BLAS call on the chunk's rows (for large
        steps, :func:`gru_blas_steps`; BLAS must be limited to one thread), not the compiled
        loops (:func:`~rnnlab.kernels.cpu.blas.step_product`).
    ilp64 : bool
        From :func:`~rnnlab.kernels.cpu.blas.bind_gemm`, which must have run first.
    """
    n_steps, batch, hid = hidden.shape
    width = gates.shape[2]
    for ch in prange(n_chunks):
        b0 = ch * batch // n_chunks
        b1 = (ch + 1) * batch // n_chunks
        nb = b1 - b0
        scratch = gemm_scratch()
        acc = np.empty((nb, width), dtype=gates.dtype)  # W_hh h<t-1> + b_hh of the chunk
        for s in range(n_steps):
            t = n_steps - 1 - s if reverse else s
            h_prev = h0 if s == 0 else hidden[t + 1 if reverse else t - 1]
            for bb in range(nb):
                for i in range(width):
                    acc[bb, i] = b_hh[i]
            step_product(acc, 0, h_prev, b0, 0, w_hh_t, 0, hid, nb, True, blas, ilp64, scratch)
            _gru_gate_rows(gates[t], acc, b_ih, h_prev, hn[t], hidden[t], b0, b1)


@njit(cache=True, parallel=True, error_model="numpy")
def gru_recurrence_backward(w_hh, h0, gates, hn, hidden, d_out, dh_n, reverse, dz, dh0, db_rows,
                            d_hidden, n_chunks, blas, ilp64):
    """Backpropagate through time for one GRU layer in one direction.

    Parameters
    ----------
    w_hh : ndarray, shape (3H, H)
        Recurrent weights (PyTorch layout, not transposed).
    h0 : ndarray, shape (B, H)
        Initial state given to :func:`gru_recurrence`.
    gates, hn, hidden : ndarray
        The gate activations ``(T, B, 3H)``, recurrent ``n`` parts and hidden states
        ``(T, B, H)`` filled by :func:`gru_recurrence`.
    d_out : ndarray, shape (T, B, H)
        Gradient of the loss with respect to the layer's output ``h<t>`` at every step, not
        including the recurrent path.
    dh_n : ndarray, shape (B, H)
        Gradient with respect to the final hidden state.
    reverse : bool
        Direction used in the forward pass.
    dz : ndarray, shape (T, B, 4H)
        Output: pre-activation gradients ``[dr, dz, dn, dn * r]``. Columns ``0:3H`` are the
        gradient with respect to ``W_ih x + b_ih`` (blocks r, z, n); columns ``0:2H`` and
        ``3H:4H`` the one with respect to ``W_hh h + b_hh``.
    dh0 : ndarray, shape (B, H)
        Output: gradient with respect to the initial state.
    db_rows : ndarray, shape (B, 4H), float64
        Zeros on entry; on exit ``sum_t dz<t>`` for every batch row, accumulated in float64
        (the bias gradients are sums of its rows, in row order: independent of the chunking).
    d_hidden : ndarray, shape (T, B, H) or (0, B, H)
        Output, when it has T rows: the total gradient dL/dh<t>. Pass a 0-row array to skip it.
    n_chunks : int
        Number of batch chunks run in parallel, at most B.
    blas, ilp64 : bool
        As for :func:`gru_recurrence`.
    """
    n_steps, batch, hid = hidden.shape
    store_hidden = d_hidden.shape[0] > 0
    for ch in prange(n_chunks):
        b0 = ch * batch // n_chunks
        b1 = (ch + 1) * batch // n_chunks
        nb = b1 - b0
        scratch = gemm_scratch()
        dh = np.empty((nb, hid), dtype=gates.dtype)  # dL/dh<t> through the step after t
        for bb in range(nb):
            for i in range(hid):
                dh[bb, i] = dh_n[b0 + bb, i]
        for s in range(n_steps - 1, -1, -1):
            t = n_steps - 1 - s if reverse else s
            h_prev = h0 if s == 0 else hidden[t + 1 if reverse else t - 1]
            _gru_gate_grad_rows(gates[t], hn[t], h_prev, d_out[t], dh, dz[t], db_rows,
                                d_hidden[t] if store_hidden else dh, store_hidden, b0, b1)
            # dh<t-1> += dz_hh<t> W_hh: gate rows r, z (columns 0:2H of dz), then n (3H:4H)
            step_product(dh, 0, dz[t], b0, 0, w_hh, 0, 2 * hid, nb, True, blas, ilp64, scratch)
            step_product(dh, 0, dz[t], b0, 3 * hid, w_hh, 2 * hid, hid, nb, True, blas, ilp64,
                         scratch)
        for bb in range(nb):
            for i in range(hid):
                dh0[b0 + bb, i] = dh[bb, i]


# ---------------------------------------------------------------- small batch, large H
# As for the LSTM (rnnlab.kernels.cpu.lstm, "small batch, large H", and its rule unit_parts with
# three gate blocks): the hidden units split over the threads, one parallel region a step, each
# thread's columns of W_hh staying in its own cache. The same sums in the same order as the
# batch-chunked kernels: bitwise the same results.


@njit(cache=True, parallel=True, error_model="numpy")
def gru_recurrence_units(w_rows, b_ih, b_hh, h0, reverse, gates, hn, hidden, n_parts):
    """:func:`gru_recurrence` with the hidden units split over ``n_parts`` threads.

    Same results (bitwise) as :func:`gru_recurrence`: part ``p`` owns units
    ``[p*H/n_parts, (p+1)*H/n_parts)`` of every gate and every sequence, one parallel region a
    step; ``w_rows`` (from :func:`~rnnlab.kernels.cpu.lstm.pack_unit_parts`,
    ``forward=True``: panels) replaces ``w_hh_t``.
    """
    n_steps, batch, hid = hidden.shape
    units = -(-hid // n_parts)
    acc = np.zeros((n_parts, batch, w_rows.shape[1] * w_rows.shape[3]), dtype=gates.dtype)
    for s in range(n_steps):
        t = n_steps - 1 - s if reverse else s
        h_prev = h0 if s == 0 else hidden[t + 1 if reverse else t - 1]
        for p in prange(n_parts):
            i0 = p * hid // n_parts
            n = (p + 1) * hid // n_parts - i0
            a_p = acc[p]
            for b in range(batch):
                for g in range(GATES):
                    # slices: loops from 0 vectorise (no negative-index checks)
                    a_g = a_p[b, g * units:g * units + n]
                    b_g = b_hh[g * hid + i0:g * hid + i0 + n]
                    for u in range(n):
                        a_g[u] = b_g[u]
            # W_hh h<t-1> + b_hh for all rows at once, the sums of gru_recurrence
            accumulate_panels(a_p, 0, h_prev, 0, 0, w_rows[p], 0, hid, batch)
            for b in range(batch):
                g_b = gates[t, b]
                a_r = a_p[b, 0:n]
                a_z = a_p[b, units:units + n]
                a_n = a_p[b, 2 * units:2 * units + n]
                g_r = g_b[i0:i0 + n]
                g_z = g_b[hid + i0:hid + i0 + n]
                g_n = g_b[2 * hid + i0:2 * hid + i0 + n]
                bi_r = b_ih[i0:i0 + n]
                bi_z = b_ih[hid + i0:hid + i0 + n]
                bi_n = b_ih[2 * hid + i0:2 * hid + i0 + n]
                hp = h_prev[b, i0:i0 + n]
                hn_b = hn[t, b, i0:i0 + n]
                h_b = hidden[t, b, i0:i0 + n]
                for u in range(n):  # as _gru_gate_rows
                    rg = fast_sigmoid(g_r[u] + bi_r[u] + a_r[u])
                    zg = fast_sigmoid(g_z[u] + bi_z[u] + a_z[u])
                    hn_u = a_n[u]
                    ng = fast_tanh(g_n[u] + bi_n[u] + rg * hn_u)
                    g_r[u] = rg
                    g_z[u] = zg
                    g_n[u] = ng
                    hn_b[u] = hn_u
                    h_b[u] = ng + zg * (hp[u] - ng)


@njit(cache=True, error_model="numpy")
def _gru_dh_units(acc_p, direct, dz_next, w_cols_p, i0, n, hid):
    # dL/dh of units i0:i0+n into acc_p[:, :n], in the order of gru_recurrence_backward: the
    # direct path, then dz<t+1> of the gate rows r, z (columns 0:2H), then of n (3H:4H)
    batch = acc_p.shape[0]
    for b in range(batch):
        for u in range(n):
            acc_p[b, u] = direct[b, i0 + u]
    accumulate_panels(acc_p, 0, dz_next, 0, 0, w_cols_p, 0, 2 * hid, batch)
    accumulate_panels(acc_p, 0, dz_next, 0, 3 * hid, w_cols_p, 2 * hid, hid, batch)


@njit(cache=True, parallel=True, error_model="numpy")
def gru_recurrence_backward_units(w_cols, h0, gates, hn, hidden, d_out, dh_n, reverse, dz, dh0,
                                  db_rows, d_hidden, n_parts):
    """:func:`gru_recurrence_backward` with the hidden units split over ``n_parts`` threads.

    Same results (bitwise) as :func:`gru_recurrence_backward`; ``w_cols`` (from
    :func:`~rnnlab.kernels.cpu.lstm.pack_unit_parts`, ``forward=False``: panels) replaces
    ``w_hh``. One parallel region
    per step: part ``p`` forms ``dL/dh<t>`` of its units from the direct path
    ``dL/dh<t+1> z<t+1>`` and ``dz<t+1>`` (complete since the previous region) with its columns
    of ``W_hh``, then the ``dz<t>`` of its units. ``dz`` must not share memory with ``gates``.
    """
    n_steps, batch, hid = hidden.shape
    store_hidden = d_hidden.shape[0] > 0
    one = one_like(gates[0, 0, 0])
    acc = np.zeros((n_parts, batch, w_cols.shape[1] * w_cols.shape[3]), dtype=gates.dtype)
    direct = np.empty((batch, hid), dtype=gates.dtype)  # dL/dh<t+1> z<t+1>, each part its own
    for s in range(n_steps - 1, -1, -1):
        t = n_steps - 1 - s if reverse else s
        t_next = t - 1 if reverse else t + 1  # the step processed before this one
        h_prev = h0 if s == 0 else hidden[t + 1 if reverse else t - 1]
        for p in prange(n_parts):
            i0 = p * hid // n_parts
            n = (p + 1) * hid // n_parts - i0
            acc_p = acc[p]
            if s == n_steps - 1:
                for b in range(batch):
                    for u in range(n):
                        acc_p[b, u] = dh_n[b, i0 + u]
            else:
                _gru_dh_units(acc_p, direct, dz[t_next], w_cols[p], i0, n, hid)
            for b in range(batch):
                a_b = acc_p[b]
                g_b = gates[t, b]
                g_r = g_b[i0:i0 + n]
                g_z = g_b[hid + i0:hid + i0 + n]
                g_n = g_b[2 * hid + i0:2 * hid + i0 + n]
                dz_b = dz[t, b]
                dz_r = dz_b[i0:i0 + n]
                dz_z = dz_b[hid + i0:hid + i0 + n]
                dz_n = dz_b[2 * hid + i0:2 * hid + i0 + n]
                dz_m = dz_b[3 * hid + i0:3 * hid + i0 + n]
                db_b = db_rows[b]
                db_r = db_b[i0:i0 + n]
                db_z = db_b[hid + i0:hid + i0 + n]
                db_n = db_b[2 * hid + i0:2 * hid + i0 + n]
                db_m = db_b[3 * hid + i0:3 * hid + i0 + n]
                hn_b = hn[t, b, i0:i0 + n]
                hp = h_prev[b, i0:i0 + n]
                do_b = d_out[t, b, i0:i0 + n]
                dir_b = direct[b, i0:i0 + n]
                for u in range(n):  # as _gru_gate_grad_rows
                    rg = g_r[u]
                    zg = g_z[u]
                    ng = g_n[u]
                    dht = do_b[u] + a_b[u]
                    dn = dht * (one - zg) * (one - ng * ng)
                    dz_r[u] = dn * hn_b[u] * rg * (one - rg)
                    dz_z[u] = dht * (hp[u] - ng) * zg * (one - zg)
                    dz_n[u] = dn
                    dz_m[u] = dn * rg
                    a_b[u] = dht
                    dir_b[u] = dht * zg
                    db_r[u] += dz_r[u]
                    db_z[u] += dz_z[u]
                    db_n[u] += dz_n[u]
                    db_m[u] += dz_m[u]
                if store_hidden:
                    d_h = d_hidden[t, b, i0:i0 + n]
                    for u in range(n):
                        d_h[u] = a_b[u]
    # dh0 = the direct path + dz<first step> W_hh
    t = n_steps - 1 if reverse else 0
    for p in prange(n_parts):
        i0 = p * hid // n_parts
        n = (p + 1) * hid // n_parts - i0
        acc_p = acc[p]
        _gru_dh_units(acc_p, direct, dz[t], w_cols[p], i0, n, hid)
        for b in range(batch):
            for u in range(n):
                dh0[b, i0 + u] = acc_p[b, u]


# ------------------------------------------------------------------ large batch x hidden
# As for the LSTM (rnnlab.kernels.cpu.lstm.lstm_blas_steps): when a step is itself a large
# matrix product (B x H by H x 3H), the batch-chunked kernels run the per-step products as
# single-threaded BLAS calls on their chunk's rows (their ``blas`` argument). The sums are
# BLAS's, not bitwise those of the loops.

#: Bytes of multiply-adds a step (B * 3H * H * itemsize) from which the GRU recurrence runs one
#: BLAS product a step per batch chunk, for batches of at least GRU_BLAS_STEP_BATCH. Measured on
#: 2 cores (Intel Xeon, AVX-512; T = 1000, forward + BPTT, compiled loops against BLAS steps):
#: float32 (128, 512) 7.1-7.7 against 5.2-5.4 s, (32, 512) 1.63 against 1.49-1.51 s, but
#: (128, 256) (the same bytes) 1.48-1.49 against 1.52 s; float64 (32, 512) 4.0 against 2.9 s,
#: (128, 256) 4.3-4.4 against 3.4-3.6 s, (32, 256) (2^25.6 bytes) even; float32 (8, 512)
#: 0.50-0.52 against 0.67-0.70 s.
GRU_BLAS_STEP_BYTES = 1 << 26
GRU_BLAS_STEP_BATCH = 32


def gru_blas_steps(batch, hidden, dtype):
    """Whether a GRU layer's recurrence runs one BLAS product a step per batch chunk.

    Parameters
    ----------
    batch, hidden : int
    dtype : dtype
        Of the weights and states.

    Notes
    -----
    From ``B * 3H * H * itemsize >= GRU_BLAS_STEP_BYTES`` (2^26 bytes) and
    ``B >= GRU_BLAS_STEP_BATCH`` (32); the measurements are beside those constants.
    """
    return (batch >= GRU_BLAS_STEP_BATCH and
            batch * GATES * hidden * hidden * np.dtype(dtype).itemsize >= GRU_BLAS_STEP_BYTES)


def gru_layer_forward(x, w_ih, w_hh, b_ih, b_hh, h0, reverse=False, alloc=np.empty):
    """Forward pass of one GRU layer in one direction.

    Parameters
    ----------
    x : ndarray, shape (T, B, I)
        Layer input, C-contiguous, in the model's dtype.
    w_ih : ndarray, shape (3H, I)
        Input weights, gate blocks r, z, n.
    w_hh : ndarray, shape (3H, H)
        Recurrent weights.
    b_ih, b_hh : ndarray, shape (3H,) or None
        Input and recurrent biases (``None``: no bias).
    h0 : ndarray, shape (B, H)
        Initial state.
    reverse : bool, optional
        Read the sequence backwards.
    alloc : callable, optional
        ``alloc(shape, dtype)`` for the gate and ``hn`` arrays (e.g.
        :meth:`~rnnlab._scratch.ScratchBuffers.empty` when the states do not outlive the
        call); the hidden states always get fresh memory.

    Returns
    -------
    states : dict
        ``"gates"`` (T, B, 3H) activations r, z, n; ``"hn"`` (T, B, H) the recurrent part
        ``W_hn h<t-1> + b_hn`` of the n block; ``"hidden"`` (T, B, H), the layer's output. Kept
        for :func:`gru_layer_backward`.
    """
    n_steps, batch, n_in = x.shape
    width = w_hh.shape[0]
    hid = width // GATES
    gates = alloc((n_steps, batch, width), x.dtype)
    # the input projection of every step at once: a GEMM over T*B rows
    run_products(matmul_tasks(x.reshape(n_steps * batch, n_in), w_ih.T, gates.reshape(-1, width)),
                 gates.size * n_in)
    if b_ih is None:
        b_ih = np.zeros(width, dtype=x.dtype)
    if b_hh is None:
        b_hh = np.zeros(width, dtype=x.dtype)
    hn = alloc((n_steps, batch, hid), x.dtype)
    hidden = np.empty((n_steps, batch, hid), dtype=x.dtype)
    blas = gru_blas_steps(batch, hid, x.dtype)
    parts = unit_parts(batch, hid, x.dtype.itemsize, forward=True, gates=GATES,
                       batch_bytes=None, blas=blas)
    if parts:
        gru_recurrence_units(pack_unit_parts(w_hh, parts, batch, True), b_ih, b_hh,
                             np.ascontiguousarray(h0), reverse, gates, hn, hidden, parts)
        return {"gates": gates, "hn": hn, "hidden": hidden}
    chunks = n_chunks(batch)
    with recurrence_threads(chunks, blas):
        gru_recurrence(np.ascontiguousarray(w_hh.T), b_ih, b_hh, np.ascontiguousarray(h0),
                       reverse, gates, hn, hidden, chunks, blas, bind_gemm())
    return {"gates": gates, "hn": hn, "hidden": hidden}


def gru_layer_backward(x, w_ih, w_hh, h0, states, d_out, dh_n, reverse=False,
                       hidden_grads=False, alloc=np.empty):
    """Backward pass (BPTT) of one GRU layer in one direction.

    Parameters
    ----------
    x, w_ih, w_hh, h0, reverse
        As given to :func:`gru_layer_forward`.
    states : dict
        Returned by :func:`gru_layer_forward`.
    d_out : ndarray, shape (T, B, H)
        Gradient with respect to the layer's outputs ``h<t>``.
    dh_n : ndarray, shape (B, H)
        Gradient with respect to the final hidden state.
    hidden_grads : bool, optional
        Also return ``"hidden"``, the total dL/dh<t> (T, B, H).
    alloc : callable, optional
        ``alloc(shape, dtype)`` for ``dz`` (e.g.
        :meth:`~rnnlab._scratch.ScratchBuffers.empty` when the caller does not keep it).

    Returns
    -------
    dict
        ``"input"`` (T, B, I), ``"h0"`` (B, H), ``"weight_ih"``, ``"weight_hh"``, ``"bias_ih"``,
        ``"bias_hh"``, ``"dz"`` (T, B, 4H) (see :func:`gru_recurrence_backward`), and
        ``"hidden"`` if asked.
    """
    gates, hn, hidden = states["gates"], states["hn"], states["hidden"]
    n_steps, batch, width = gates.shape
    hid = width // GATES
    n_in = x.shape[2]
    dz = alloc((n_steps, batch, width + hid), x.dtype)
    dh0 = np.empty_like(h0)
    d_hidden = np.empty((n_steps if hidden_grads else 0, batch, hid), dtype=x.dtype)
    db_rows = np.zeros((batch, width + hid), dtype=np.float64)
    blas = gru_blas_steps(batch, hid, x.dtype)
    parts = unit_parts(batch, hid, x.dtype.itemsize, gates=GATES, blas=blas)
    if parts:
        gru_recurrence_backward_units(pack_unit_parts(w_hh, parts, batch, False), h0, gates, hn,
                                      hidden, d_out, dh_n, reverse, dz, dh0, db_rows, d_hidden,
                                      parts)
    else:
        chunks = n_chunks(batch)
        with recurrence_threads(chunks, blas):
            gru_recurrence_backward(np.ascontiguousarray(w_hh), h0, gates, hn, hidden, d_out,
                                    dh_n, reverse, dz, dh0, db_rows, d_hidden, chunks, blas,
                                    bind_gemm())
    dz_ih = dz.reshape(-1, width + hid)[:, :width]  # a strided view: BLAS takes it as is
    d_x = np.empty_like(x)
    d_w_ih = np.empty_like(w_ih)
    d_w_hh = np.empty_like(w_hh)
    run_products(matmul_tasks(dz_ih, w_ih, d_x.reshape(-1, n_in))
                 + matmul_tasks(dz_ih.T, x.reshape(-1, n_in), d_w_ih)
                 + prev_state_tasks(dz[:, :, :2 * hid], hidden, h0, reverse, d_w_hh[:2 * hid])
                 + prev_state_tasks(dz[:, :, 3 * hid:], hidden, h0, reverse, d_w_hh[2 * hid:]),
                 gates.size * (2 * n_in + hid))
    sums = db_rows.sum(axis=0).astype(x.dtype)
    grads = {
        "input": d_x,
        "h0": dh0,
        "weight_ih": d_w_ih,
        "weight_hh": d_w_hh,
        "bias_ih": sums[:width].copy(),
        "bias_hh": np.concatenate([sums[:2 * hid], sums[3 * hid:]]),
        "dz": dz,
    }
    if hidden_grads:
        grads["hidden"] = d_hidden
    return grads
