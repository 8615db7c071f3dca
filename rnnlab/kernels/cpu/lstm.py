"""LSTM kernels for the CPU: forward recurrence and backpropagation through time.

One layer, one direction, a batch of sequences, PyTorch's cell and gate order (i, f, g, o)::

    [i, f, g, o]<t> = [σ, σ, tanh, σ](W_ih x<t> + b_ih + W_hh h<t-1> + b_hh)
    c<t> = f<t> * c<t-1> + i<t> * g<t>
    h<t> = o<t> * tanh(c<t>)

As for the vanilla cell (:mod:`rnnlab.kernels.cpu.vanilla`), only the step-by-step recurrence is
compiled (:func:`lstm_recurrence`, :func:`lstm_recurrence_backward`); the input projection before
the loop and the weight gradients after it are single large matrix products
(:func:`lstm_layer_forward`, :func:`lstm_layer_backward`). The batch is split into one chunk per
thread outside the time loop and every sum runs in a fixed order, so results are bitwise
reproducible and independent of the thread count.

Shared with :mod:`rnnlab.kernels.cpu.gru`: :func:`step_product` (the per-step product),
:func:`run_products` with :func:`matmul_tasks` and :func:`prev_state_tasks` (the large products,
on all cores without BLAS's spinning threads); and from this module, the unit-split rule and
packing (:func:`unit_parts`, :func:`pack_unit_parts`). Memory for the arrays that do not outlive
a call comes from :class:`~rnnlab._scratch.ScratchBuffers`.
"""

import functools
import os

import numba
import numpy as np
from numba import njit, prange

from ...activations import fast_sigmoid, fast_tanh, one_like
from .blas import (accumulate_panels, bind_gemm, gemm_scratch, matmul_tasks, panel_columns,
                   prev_state_tasks, run_products, step_product)
from .vanilla import n_chunks, recurrence_threads

#: Gate blocks stacked in the weights: i, f, g, o.
GATES = 4

# The kernels compile with error_model="numpy": with Python's error model every division (the
# rational tanh and sigmoid divide) carries a ZeroDivisionError check, and that branch alone
# keeps LLVM from vectorising the gate loops (measured: scalar vdivss instead of vdivps zmm).
#
# The gate helpers are inlined (inline="always") into the time loops: a call passing ten
# arrays cost more than a step's gates at H = 16. Measured on 2 cores (Intel Xeon), T = 1000,
# B = 1, H = 16, fwd+BPTT, us, called -> inlined: LSTM float32 758 -> 615, float64 1364 ->
# 1093; GRU (rnnlab.kernels.cpu.gru) float32 545 -> 468, float64 1054 -> 927.


@njit(cache=True, error_model="numpy", inline="always")
def _lstm_gate_rows(z, c_prev, c_out, h_out, b0, b1):
    """Rows ``b0:b1`` of one step: the gate activations over the pre-activations ``z`` (B, 4H),
    in place, and ``c<t>``, ``h<t>``. Shared by the batch-chunked and the BLAS-step forward."""
    hid = c_out.shape[1]
    for b in range(b0, b1):
        z_b = z[b]
        # one slice per gate: loops from 0 over disjoint slices vectorise (indexing z_b at i and
        # hid + i in one loop ran scalar, 5x slower: float32 B = 128, H = 512 1.19 -> 0.20 ms
        # a step)
        z_i = z_b[0:hid]
        z_f = z_b[hid:2 * hid]
        z_g = z_b[2 * hid:3 * hid]
        z_o = z_b[3 * hid:4 * hid]
        cp = c_prev[b]
        c_b = c_out[b]
        h_b = h_out[b]
        for i in range(hid):
            ig = fast_sigmoid(z_i[i])
            fg = fast_sigmoid(z_f[i])
            gg = fast_tanh(z_g[i])
            og = fast_sigmoid(z_o[i])
            cc = fg * cp[i] + ig * gg
            z_i[i] = ig
            z_f[i] = fg
            z_g[i] = gg
            z_o[i] = og
            c_b[i] = cc
            h_b[i] = og * fast_tanh(cc)


@njit(cache=True, error_model="numpy", inline="always")
def _lstm_gate_grad_rows(g, c, c_prev, d_out, dh, dc, dz, db_rows, d_hidden, d_cell, store, b0,
                         b1, f_row):
    """Rows ``b0:b1`` of one backward step. ``dh``, ``dc`` hold the chunk's rows (row ``b`` at
    ``b - b0``): on entry the gradients through the step after t, on exit dL/dh<t> and
    dL/dc<t> * f<t>. ``dz`` may be ``g`` (each unit's gates are read before its gradients are
    written; ``f_row`` keeps f). ``d_hidden``, ``d_cell`` (B, H) get dL/dh<t>, dL/dc<t> if
    ``store``. Shared by the batch-chunked and the BLAS-step backward."""
    hid = c.shape[1]
    width = g.shape[1]
    one = one_like(g[0, 0])
    for b in range(b0, b1):
        g_b = g[b]
        dz_b = dz[b]
        c_b = c[b]
        cp = c_prev[b]
        do_b = d_out[b]
        dh_b = dh[b - b0]
        dc_b = dc[b - b0]
        # one slice per gate (see _lstm_gate_rows)
        g_i = g_b[0:hid]
        g_f = g_b[hid:2 * hid]
        g_g = g_b[2 * hid:3 * hid]
        g_o = g_b[3 * hid:4 * hid]
        dz_i = dz_b[0:hid]
        dz_f = dz_b[hid:2 * hid]
        dz_g = dz_b[2 * hid:3 * hid]
        dz_o = dz_b[3 * hid:4 * hid]
        for i in range(hid):
            ig = g_i[i]
            fg = g_f[i]
            gg = g_g[i]
            og = g_o[i]
            tc = fast_tanh(c_b[i])
            dht = do_b[i] + dh_b[i]
            dct = dc_b[i] + dht * og * (one - tc * tc)
            dz_i[i] = dct * gg * ig * (one - ig)
            dz_f[i] = dct * cp[i] * fg * (one - fg)
            dz_g[i] = dct * ig * (one - gg * gg)
            dz_o[i] = dht * tc * og * (one - og)
            dc_b[i] = dct
            dh_b[i] = dht
            f_row[i] = fg
        if store:
            d_h = d_hidden[b]
            d_c = d_cell[b]
            for i in range(hid):
                d_h[i] = dh_b[i]
                d_c[i] = dc_b[i]
        for i in range(hid):
            dc_b[i] = dc_b[i] * f_row[i]
        db_b = db_rows[b]
        for k in range(width):
            db_b[k] += dz_b[k]


@njit(cache=True, parallel=True, error_model="numpy")
def lstm_recurrence(w_hh_t, bias, h0, c0, reverse, gates, cells, hidden, n_chunks, blas, ilp64):
    """Run the LSTM recurrence of one layer in one direction, in place.

    Parameters
    ----------
    w_hh_t : ndarray, shape (H, 4H)
        The *transpose* of ``W_hh`` (C-contiguous), so that the inner loop is a contiguous axpy
        over all four gate blocks.
    bias : ndarray, shape (4H,)
        ``b_ih + b_hh`` (zeros for a model without bias), added step by step.
    h0, c0 : ndarray, shape (B, H)
        Initial hidden and cell states.
    reverse : bool
        Process the sequence from ``t = T-1`` down to ``0`` (the backward direction of a
        bidirectional layer).
    gates : ndarray, shape (T, B, 4H)
        On entry the input projection ``W_ih x<t>``; on exit the gate activations
        ``[i, f, g, o]<t>``.
    cells : ndarray, shape (T, B, H)
        Output: the cell states ``c<t>``.
    hidden : ndarray, shape (T, B, H)
        Output: the hidden states ``h<t>`` (the layer's output).
    n_chunks : int
        Number of batch chunks run in parallel (each runs the whole time loop), at most B.
    blas : bool
        The per-step product as one single-threaded BLAS call on the chunk's rows (for large
        steps, :func:`lstm_blas_steps`; BLAS must be limited to one thread), not the compiled
        loops (:func:`~rnnlab.kernels.cpu.blas.step_product`).
    ilp64 : bool
        From :func:`~rnnlab.kernels.cpu.blas.bind_gemm`, which must have run first.
    """
    n_steps, batch, hid = hidden.shape
    width = gates.shape[2]
    for ch in prange(n_chunks):
        b0 = ch * batch // n_chunks
        b1 = (ch + 1) * batch // n_chunks
        scratch = gemm_scratch()
        for s in range(n_steps):
            t = n_steps - 1 - s if reverse else s
            tp = t + 1 if reverse else t - 1
            h_prev = h0 if s == 0 else hidden[tp]
            c_prev = c0 if s == 0 else cells[tp]
            z = gates[t]
            for b in range(b0, b1):
                z_b = z[b]
                for i in range(width):
                    z_b[i] = z_b[i] + bias[i]
            step_product(z, b0, h_prev, b0, 0, w_hh_t, 0, hid, b1 - b0, True, blas, ilp64,
                         scratch)
            _lstm_gate_rows(z, c_prev, cells[t], hidden[t], b0, b1)


@njit(cache=True, parallel=True, error_model="numpy")
def lstm_recurrence_backward(w_hh, h0, c0, gates, cells, d_out, dh_n, dc_n, reverse, dz, dh0,
                             dc0, db_rows, d_hidden, d_cell, n_chunks, blas, ilp64):
    """Backpropagate through time for one LSTM layer in one direction.

    Parameters
    ----------
    w_hh : ndarray, shape (4H, H)
        Recurrent weights (PyTorch layout, not transposed).
    h0, c0 : ndarray, shape (B, H)
        Initial states given to :func:`lstm_recurrence`.
    gates, cells : ndarray
        The gate activations ``(T, B, 4H)`` and cell states ``(T, B, H)`` filled by
        :func:`lstm_recurrence`.
    d_out : ndarray, shape (T, B, H)
        Gradient of the loss with respect to the layer's output ``h<t>`` at every step (from the
        loss or the layer above), not including the recurrent path.
    dh_n, dc_n : ndarray, shape (B, H)
        Gradients with respect to the final hidden and cell states.
    reverse : bool
        Direction used in the forward pass.
    dz : ndarray, shape (T, B, 4H)
        Output: gradient with respect to the gate pre-activations (the same for the ``ih`` and
        ``hh`` products). The weight gradients are products of these. May be ``gates`` itself:
        each step reads its gates before it writes ``dz`` over them.
    dh0, dc0 : ndarray, shape (B, H)
        Output: gradients with respect to the initial states.
    db_rows : ndarray, shape (B, 4H), float64
        Zeros on entry; on exit ``sum_t dz<t>`` for every batch row, accumulated in float64
        (the bias gradient is its sum over rows, in row order: independent of the chunking).
    d_hidden, d_cell : ndarray, shape (T, B, H) or (0, B, H)
        Outputs, when ``d_hidden`` has T rows: the total gradients dL/dh<t> (from above plus the
        recurrent path) and dL/dc<t> (through h<t> and c<t+1>). Pass 0-row arrays to skip them.
    n_chunks : int
        Number of batch chunks run in parallel, at most B.
    blas, ilp64 : bool
        As for :func:`lstm_recurrence`.
    """
    n_steps, batch, hid = cells.shape
    width = gates.shape[2]
    store_hidden = d_hidden.shape[0] > 0
    for ch in prange(n_chunks):
        b0 = ch * batch // n_chunks
        b1 = (ch + 1) * batch // n_chunks
        nb = b1 - b0
        scratch = gemm_scratch()
        dh = np.empty((nb, hid), dtype=gates.dtype)  # dL/dh<t> through the step after t
        dc = np.empty((nb, hid), dtype=gates.dtype)  # dL/dc<t> through the step after t
        f_row = np.empty(hid, dtype=gates.dtype)  # f<t> of a row, read before dz overwrites it
        for bb in range(nb):
            for i in range(hid):
                dh[bb, i] = dh_n[b0 + bb, i]
                dc[bb, i] = dc_n[b0 + bb, i]
        for s in range(n_steps - 1, -1, -1):
            t = n_steps - 1 - s if reverse else s
            c_prev = c0 if s == 0 else cells[t + 1 if reverse else t - 1]
            _lstm_gate_grad_rows(gates[t], cells[t], c_prev, d_out[t], dh, dc, dz[t], db_rows,
                                 d_hidden[t] if store_hidden else dh,
                                 d_cell[t] if store_hidden else dc, store_hidden, b0, b1,
                                 f_row)
            # dh<t-1> = dz<t> W_hh
            step_product(dh, 0, dz[t], b0, 0, w_hh, 0, width, nb, False, blas, ilp64, scratch)
        for bb in range(nb):
            for i in range(hid):
                dh0[b0 + bb, i] = dh[bb, i]
                dc0[b0 + bb, i] = dc[bb, i]


# ---------------------------------------------------------------- small batch, large H
# With fewer sequences than threads, batch chunks leave cores idle, and every step streams all of
# W_hh (4H x H: 1 MB in float32 at H = 256, as large as a core's L2 here) through one core. The
# variants below split the *hidden units* over the threads instead, one parallel region a step:
# each thread touches only its units' columns of W_hh (which stay in its own cache), for all the
# rows of the batch at once. Every sum runs in the same order as in the batch-chunked kernels, so
# the results are bitwise the same, and forward and backward may choose differently.

#: Multiply-adds a step (GH * H * B, G gate blocks) from which a small batch runs on unit-split
#: kernels: where W_hh outgrows a core's cache. Measured on 2 cores (T = 1000, B = 1,
#: forward + BPTT, batch-chunked -> split): LSTM float32 H = 256 42 -> 33 ms, H = 128 10.9 ->
#: 12.2 (AMD EPYC); GRU (Intel Xeon) float32 H = 512 228 -> 81 ms, H = 256 28 -> 25, H = 128
#: 7.1 -> 10.7, float64 H = 512 499 -> 271, H = 256 58 -> 46, H = 128 14.5 -> 17.3.
UNIT_SPLIT_WORK = 1 << 17
#: At B >= threads the *forward* recurrence splits units too when W_hh has at least this many
#: bytes, or a quarter of it and B times it has UNIT_SPLIT_BATCH_BYTES: batch chunks then stream
#: all of W_hh through every core each step (measured, 2 cores, T = 1000, forward recurrence:
#: float32 (8, 256) 44 -> 34 ms, (8, 512) 176 -> 132, (32, 128) 52 -> 42, float64 (8, 256)
#: 128 -> 105; no gain at float32 (8, 128), (8, 192), (128, 64)). The backward recurrence stays
#: batch-chunked there (measured slower split: float32 (8, 256) 34 -> 49 ms), unless W_hh
#: overflows a core's L2 cache and one thread's part of it fits (:func:`l2_bytes`): then the
#: batch chunks stream all of W_hh from L3 every step, the parts stay in L2. Measured on
#: 2 cores (Intel Xeon, 2 MB L2 a core; T = 1000, fwd+BPTT, chunked -> split backward): float32
#: (8, 512) (4 MB W_hh) 725-746 -> 609-618 ms, (16, 512) 1477-1485 -> 1203-1216; but float64
#: (8, 512) (8 MB, 4 MB a part) 1552-1556 -> 1679-1694, float64 (8, 256) (2 MB) 298-301 ->
#: 296, float32 (8, 256) (1 MB) 117-130 -> 138-142.
UNIT_SPLIT_BYTES = 1 << 20
UNIT_SPLIT_BATCH_BYTES = 1 << 23
#: From B = threads up to this batch, both recurrences split units wherever W_hh fills a
#: core's L2 cache or more (:func:`l2_bytes`), even where the batch-chunked kernels would run
#: BLAS steps: the chunks then stream all of W_hh from L3 every step, the parts half of it each,
#: in order (as panels). Measured on 2 cores (Intel Xeon, 2 MB L2 a core; T = 1000, fwd+BPTT,
#: ms, the rules before -> split both): LSTM float32 (32, 512) 1846 -> 1562 (BLAS steps
#: before), (8, 512) 423 -> 412; float64 (8, 256) 271 -> 257, (8, 512) 1136 -> 906, (32, 256)
#: 1127 -> 976, (32, 512) 4076 -> 3163; GRU float32 (32, 512) 1426 -> 1097, (8, 512) 303 ->
#: 304; float64 (8, 512) 739 -> 670, (32, 512) 2820 -> 2277. Not below one L2: LSTM float32
#: (8, 256) 120 -> 134, (32, 256) 436 -> 482, float64 (8, 128) 96 -> 90; GRU float64 (8, 256)
#: 191 -> 201, (32, 256) 771 -> 772. Not at B = 128: LSTM float32 (128, 512) 6321 -> 6025
#: but float64 13877 -> 14397, float64 (128, 256) 4088 -> 4161; GRU float32 (128, 512) 4914
#: -> 4673.
UNIT_SPLIT_MAX_BATCH = 32


@functools.lru_cache(maxsize=1)
def l2_bytes():
    """One core's L2 cache size, for :func:`unit_parts`.

    Returns
    -------
    int
        Bytes, from Linux's sysfs (CPU 0), or 1 MB where it cannot be read.
    """
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for index in sorted(os.listdir(base)):
            with open(os.path.join(base, index, "level")) as f:
                if f.read().strip() != "2":
                    continue
            with open(os.path.join(base, index, "size")) as f:
                size = f.read().strip().upper()
            scale = {"K": 1 << 10, "M": 1 << 20}.get(size[-1:], 1)
            return int(size.rstrip("KM")) * scale
    except (OSError, ValueError):
        pass
    return 1 << 20


def unit_parts(batch, hidden, itemsize=4, forward=False, gates=GATES,
               batch_bytes=UNIT_SPLIT_BATCH_BYTES, blas=False):
    """Thread count for the unit-split kernels (0: use the batch-chunked ones).

    Unit splitting pays when the batch leaves threads idle and ``W_hh`` is too large for one
    core's cache (see :data:`UNIT_SPLIT_WORK`), for batches up to
    :data:`UNIT_SPLIT_MAX_BATCH` when ``W_hh`` fills a core's L2 (:func:`l2_bytes`), and
    otherwise, unless the batch-chunked kernels run BLAS steps, in the forward pass when
    ``W_hh`` is large whatever the batch (:data:`UNIT_SPLIT_BYTES`) and in the backward pass
    when ``W_hh`` overflows one core's L2 but a thread's part fits; a parallel region a step
    costs about 1 us.

    Parameters
    ----------
    batch, hidden : int
    itemsize : int, optional
        Bytes per weight (4 or 8).
    forward : bool, optional
        For the forward recurrence (else the backward one).
    gates : int, optional
        Gate blocks in ``W_hh`` (4; the GRU's kernels use the same rule with 3).
    batch_bytes : int or None, optional
        :data:`UNIT_SPLIT_BATCH_BYTES`, or None: no forward split by batch bytes (the GRU's:
        measured float32 (1000, 32, 256) fwd+BPTT 346 ms chunked, 359-374 split).
    blas : bool, optional
        Whether the batch-chunked kernels would run BLAS steps (:func:`lstm_blas_steps`).
    """
    threads = numba.get_num_threads()
    parts = min(threads, hidden // 16)  # at least 16 units (4 x 16 columns) a thread
    if parts < 2:
        return 0
    if batch < threads:
        return parts if gates * hidden * hidden * batch >= UNIT_SPLIT_WORK else 0
    w_bytes = gates * hidden * hidden * itemsize
    if batch <= UNIT_SPLIT_MAX_BATCH and w_bytes >= l2_bytes():
        return parts
    if blas:
        return 0
    if forward and (w_bytes >= UNIT_SPLIT_BYTES or (
            batch_bytes is not None and 4 * w_bytes >= UNIT_SPLIT_BYTES and
            batch * w_bytes >= batch_bytes)):
        return parts
    if not forward and l2_bytes() < w_bytes <= parts * l2_bytes():
        return parts
    return 0


def _part_bounds(p, n_parts, hid):
    return p * hid // n_parts, (p + 1) * hid // n_parts


def pack_unit_parts(w_hh, n_parts, batch, forward):
    """Every part's share of ``W_hh``, packed as panels for the unit-split kernels.

    Parameters
    ----------
    w_hh : ndarray, shape (G*H, H)
        Recurrent weights (PyTorch layout), ``G`` gate blocks (4 for the LSTM, 3 for the GRU).
    n_parts : int
    batch : int
        Rows of the per-step products (sets the panel width,
        :func:`~rnnlab.kernels.cpu.blas.panel_columns`).
    forward : bool
        For the forward step (else the backward one).

    Returns
    -------
    ndarray
        Forward, shape ``(n_parts, P, H, C)``: the panels
        (:func:`~rnnlab.kernels.cpu.blas.pack_panels`) of part ``p``'s rows of every gate block,
        the ``(H, G*U)`` matrix ``R[j, g*U + u] = W_hh[g*H + i0 + u, j]`` (``U = ceil(H /
        n_parts)``, the most units in a part; zero padding). Backward, shape
        ``(n_parts, P', G*H, C)``: the panels of part ``p``'s columns, ``Q[k, u] = W_hh[k, i0 +
        u]``.
    """
    width, hid = w_hh.shape
    n_gates = width // hid
    units = -(-hid // n_parts)
    cols = panel_columns(batch, w_hh.itemsize)
    if forward:
        # R transposed, rows padded to whole panels, then one copy that transposes each panel
        n_panels = -(-n_gates * units // cols)
        r_t = np.zeros((n_parts, n_panels * cols, hid), dtype=w_hh.dtype)
        for p in range(n_parts):
            i0, i1 = _part_bounds(p, n_parts, hid)
            for g in range(n_gates):
                r_t[p, g * units:g * units + i1 - i0] = w_hh[g * hid + i0:g * hid + i1]
        return np.ascontiguousarray(
            r_t.reshape(n_parts, n_panels, cols, hid).transpose(0, 1, 3, 2))
    n_panels = -(-units // cols)
    q = np.zeros((n_parts, width, n_panels * cols), dtype=w_hh.dtype)
    for p in range(n_parts):
        i0, i1 = _part_bounds(p, n_parts, hid)
        q[p, :, :i1 - i0] = w_hh[:, i0:i1]
    return np.ascontiguousarray(q.reshape(n_parts, width, n_panels, cols).transpose(0, 2, 1, 3))


@njit(cache=True, parallel=True, error_model="numpy")
def lstm_recurrence_units(w_rows, bias, h0, c0, reverse, gates, cells, hidden, n_parts):
    """:func:`lstm_recurrence` with the hidden units split over ``n_parts`` threads.

    Same results (bitwise) as :func:`lstm_recurrence`: part ``p`` owns units
    ``[p*H/n_parts, (p+1)*H/n_parts)`` of every gate and every sequence, one parallel region a
    step; ``w_rows`` (from :func:`pack_unit_parts`, ``forward=True``) replaces ``w_hh_t``:
    each part's rows of W_hh as panels, streamed in order every step.
    """
    n_steps, batch, hid = hidden.shape
    units = -(-hid // n_parts)
    acc = np.zeros((n_parts, batch, w_rows.shape[1] * w_rows.shape[3]), dtype=gates.dtype)
    for s in range(n_steps):
        t = n_steps - 1 - s if reverse else s
        tp = t + 1 if reverse else t - 1
        h_prev = h0 if s == 0 else hidden[tp]
        c_prev = c0 if s == 0 else cells[tp]
        for p in prange(n_parts):
            i0 = p * hid // n_parts
            n = (p + 1) * hid // n_parts - i0
            a_p = acc[p]
            for b in range(batch):
                z_b = gates[t, b]
                for g in range(GATES):
                    # slices: loops from 0 vectorise (no negative-index checks)
                    a_g = a_p[b, g * units:g * units + n]
                    z_g = z_b[g * hid + i0:g * hid + i0 + n]
                    b_g = bias[g * hid + i0:g * hid + i0 + n]
                    for u in range(n):
                        a_g[u] = z_g[u] + b_g[u]
            # all rows at once (each load of W serves two): the sums of lstm_recurrence, bit
            # for bit
            accumulate_panels(a_p, 0, h_prev, 0, 0, w_rows[p], 0, hid, batch)
            for b in range(batch):
                z_b = gates[t, b]
                a_i = a_p[b, 0:n]
                a_f = a_p[b, units:units + n]
                a_g = a_p[b, 2 * units:2 * units + n]
                a_o = a_p[b, 3 * units:3 * units + n]
                z_i = z_b[i0:i0 + n]
                z_f = z_b[hid + i0:hid + i0 + n]
                z_g = z_b[2 * hid + i0:2 * hid + i0 + n]
                z_o = z_b[3 * hid + i0:3 * hid + i0 + n]
                cp = c_prev[b, i0:i0 + n]
                c_b = cells[t, b, i0:i0 + n]
                h_b = hidden[t, b, i0:i0 + n]
                for u in range(n):
                    ig = fast_sigmoid(a_i[u])
                    fg = fast_sigmoid(a_f[u])
                    gg = fast_tanh(a_g[u])
                    og = fast_sigmoid(a_o[u])
                    cc = fg * cp[u] + ig * gg
                    z_i[u] = ig
                    z_f[u] = fg
                    z_g[u] = gg
                    z_o[u] = og
                    c_b[u] = cc
                    h_b[u] = og * fast_tanh(cc)


@njit(cache=True, parallel=True, error_model="numpy")
def lstm_recurrence_backward_units(w_cols, h0, c0, gates, cells, d_out, dh_n, dc_n, reverse, dz,
                                   dh0, dc0, db_rows, d_hidden, d_cell, n_parts):
    """:func:`lstm_recurrence_backward` with the hidden units split over ``n_parts`` threads.

    Same results (bitwise) as :func:`lstm_recurrence_backward`; ``w_cols`` (from
    :func:`pack_unit_parts`, ``forward=False``) replaces ``w_hh``. One parallel region per
    step: part ``p`` forms ``dL/dh<t>`` of its units from ``dz<t+1>`` (complete since the
    previous region) and its columns of ``W_hh``, then the four ``dz<t>`` of its units.
    """
    n_steps, batch, hid = cells.shape
    width = gates.shape[2]
    units = -(-hid // n_parts)
    store_hidden = d_hidden.shape[0] > 0
    one = one_like(gates[0, 0, 0])
    zero = one - one
    dc = np.empty((batch, hid), dtype=gates.dtype)
    acc = np.zeros((n_parts, batch, w_cols.shape[1] * w_cols.shape[3]), dtype=gates.dtype)
    f_rows = np.empty((n_parts, units), dtype=gates.dtype)  # read before dz overwrites them
    for b in range(batch):
        for i in range(hid):
            dc[b, i] = dc_n[b, i]
    for s in range(n_steps - 1, -1, -1):
        t = n_steps - 1 - s if reverse else s
        t_next = t - 1 if reverse else t + 1  # the step processed before this one
        c_prev = c0 if s == 0 else cells[t + 1 if reverse else t - 1]
        for p in prange(n_parts):
            i0 = p * hid // n_parts
            n = (p + 1) * hid // n_parts - i0
            acc_p = acc[p]
            if s == n_steps - 1:
                for b in range(batch):
                    for u in range(n):
                        acc_p[b, u] = dh_n[b, i0 + u]
            else:
                # dh<t> = dz<t+1> W_hh for all rows at once, as lstm_recurrence_backward
                acc_p[:, :] = zero
                accumulate_panels(acc_p, 0, dz[t_next], 0, 0, w_cols[p], 0, width, batch)
            f_p = f_rows[p]
            for b in range(batch):
                a_p = acc_p[b]
                # slices of this part's units: loops from 0 vectorise
                g_i = gates[t, b, i0:i0 + n]
                g_f = gates[t, b, hid + i0:hid + i0 + n]
                g_g = gates[t, b, 2 * hid + i0:2 * hid + i0 + n]
                g_o = gates[t, b, 3 * hid + i0:3 * hid + i0 + n]
                dz_i = dz[t, b, i0:i0 + n]
                dz_f = dz[t, b, hid + i0:hid + i0 + n]
                dz_g = dz[t, b, 2 * hid + i0:2 * hid + i0 + n]
                dz_o = dz[t, b, 3 * hid + i0:3 * hid + i0 + n]
                db_i = db_rows[b, i0:i0 + n]
                db_f = db_rows[b, hid + i0:hid + i0 + n]
                db_g = db_rows[b, 2 * hid + i0:2 * hid + i0 + n]
                db_o = db_rows[b, 3 * hid + i0:3 * hid + i0 + n]
                c_b = cells[t, b, i0:i0 + n]
                cp = c_prev[b, i0:i0 + n]
                do_b = d_out[t, b, i0:i0 + n]
                dc_b = dc[b, i0:i0 + n]
                for u in range(n):
                    ig = g_i[u]
                    fg = g_f[u]
                    gg = g_g[u]
                    og = g_o[u]
                    tc = fast_tanh(c_b[u])
                    dht = do_b[u] + a_p[u]
                    dct = dc_b[u] + dht * og * (one - tc * tc)
                    dz_i[u] = dct * gg * ig * (one - ig)
                    dz_f[u] = dct * cp[u] * fg * (one - fg)
                    dz_g[u] = dct * ig * (one - gg * gg)
                    dz_o[u] = dht * tc * og * (one - og)
                    a_p[u] = dht
                    dc_b[u] = dct
                    f_p[u] = fg
                if store_hidden:
                    d_h = d_hidden[t, b, i0:i0 + n]
                    d_c = d_cell[t, b, i0:i0 + n]
                    for u in range(n):
                        d_h[u] = a_p[u]
                        d_c[u] = dc_b[u]
                for u in range(n):
                    dc_b[u] = dc_b[u] * f_p[u]
                    db_i[u] += dz_i[u]
                    db_f[u] += dz_f[u]
                    db_g[u] += dz_g[u]
                    db_o[u] += dz_o[u]
    # dh0 = dz<first step> W_hh
    t = n_steps - 1 if reverse else 0
    for p in prange(n_parts):
        i0 = p * hid // n_parts
        n = (p + 1) * hid // n_parts - i0
        acc_p = acc[p]
        acc_p[:, :] = zero
        accumulate_panels(acc_p, 0, dz[t], 0, 0, w_cols[p], 0, width, batch)
        for b in range(batch):
            for u in range(n):
                dh0[b, i0 + u] = acc_p[b, u]
                dc0[b, i0 + u] = dc[b, i0 + u]


# ------------------------------------------------------------------ large batch x hidden
# When a step is itself a large matrix product (B x H by H x 4H), BLAS does it faster than the
# compiled loops and register tiles (one thread here: float32 64 x 512 @ 512 x 2048 at 60-65 G
# multiply-adds/s, the tiles at about 40). Then the batch-chunked kernels run the per-step
# product as one single-threaded BLAS call on the chunk's rows (their ``blas`` argument,
# :func:`~rnnlab.kernels.cpu.blas.step_product`): the whole time loop stays compiled, each
# thread runs its own chunk with no barrier between steps, and the elementwise passes run in
# parallel. The sums are BLAS's, not bitwise those of the loops.

#: Bytes of multiply-adds a step (B * 4H * H * itemsize) from which the LSTM recurrence runs one
#: BLAS product a step per batch chunk, for batches of at least LSTM_BLAS_STEP_BATCH. Measured
#: on 2 cores (Intel Xeon, AVX-512; T = 1000, forward + BPTT, compiled loops against BLAS steps):
#: float32 (128, 256) 2.49-2.52 against 1.75-1.86 s, (32, 512) 3.01-3.08 against 1.77-1.83 s,
#: (32, 256) (2^25 bytes) even at 0.52 s; float64 (32, 256) 1.32 against 1.16 s. With 4 rows a
#: chunk BLAS loses: (8, 512) float32 0.72-0.75 against 0.88 s, float64 1.38-1.40 against 1.78.
#: The one-GEMM-a-step loop in Python that this replaced ran float32 (128, 512) at 7.0-7.3 s,
#: these 6.5-6.9 s (its two GEMM threads and serial elementwise passes: recurrences alone 3.3-3.5
#: against 2.6-2.8 s).
LSTM_BLAS_STEP_BYTES = 1 << 26
LSTM_BLAS_STEP_BATCH = 32


def lstm_blas_steps(batch, hidden, dtype):
    """Whether an LSTM layer's recurrence runs one BLAS product a step per batch chunk.

    Parameters
    ----------
    batch, hidden : int
    dtype : dtype
        Of the weights and states.

    Notes
    -----
    From ``B * 4H * H * itemsize >= LSTM_BLAS_STEP_BYTES`` (2^26 bytes) and
    ``B >= LSTM_BLAS_STEP_BATCH`` (32); the measurements are beside those constants.
    """
    return (batch >= LSTM_BLAS_STEP_BATCH and
            batch * GATES * hidden * hidden * np.dtype(dtype).itemsize >= LSTM_BLAS_STEP_BYTES)


def lstm_layer_forward(x, w_ih, w_hh, bias, h0, c0, reverse=False, alloc=np.empty):
    """Forward pass of one LSTM layer in one direction.

    Parameters
    ----------
    x : ndarray, shape (T, B, I)
        Layer input, C-contiguous, in the model's dtype.
    w_ih : ndarray, shape (4H, I)
        Input weights, gate blocks i, f, g, o.
    w_hh : ndarray, shape (4H, H)
        Recurrent weights.
    bias : ndarray, shape (4H,) or None
        ``b_ih + b_hh`` (the two PyTorch biases enter only as their sum).
    h0, c0 : ndarray, shape (B, H)
        Initial states.
    reverse : bool, optional
        Read the sequence backwards.
    alloc : callable, optional
        ``alloc(shape, dtype)`` for the gate and cell arrays (e.g.
        :meth:`~rnnlab._scratch.ScratchBuffers.empty` when the states do not outlive the call);
        the hidden states always get fresh memory.

    Returns
    -------
    states : dict
        ``"gates"`` (T, B, 4H) activations i, f, g, o; ``"cells"`` (T, B, H); ``"hidden"``
        (T, B, H), the layer's output. Kept for :func:`lstm_layer_backward`.
    """
    n_steps, batch, n_in = x.shape
    width = w_hh.shape[0]
    hid = width // GATES
    gates = alloc((n_steps, batch, width), x.dtype)
    # the input projection of every step at once: a GEMM over T*B rows
    run_products(matmul_tasks(x.reshape(n_steps * batch, n_in), w_ih.T, gates.reshape(-1, width)),
                 gates.size * n_in)
    if bias is None:
        bias = np.zeros(width, dtype=x.dtype)
    cells = alloc((n_steps, batch, hid), x.dtype)
    hidden = np.empty((n_steps, batch, hid), dtype=x.dtype)
    blas = lstm_blas_steps(batch, hid, x.dtype)
    parts = unit_parts(batch, hid, x.dtype.itemsize, forward=True, blas=blas)
    if parts:
        lstm_recurrence_units(pack_unit_parts(w_hh, parts, batch, True), bias, h0, c0, reverse,
                              gates, cells, hidden, parts)
    else:
        chunks = n_chunks(batch)
        with recurrence_threads(chunks, blas):
            lstm_recurrence(np.ascontiguousarray(w_hh.T), bias, np.ascontiguousarray(h0), c0,
                            reverse, gates, cells, hidden, chunks, blas, bind_gemm())
    return {"gates": gates, "cells": cells, "hidden": hidden}


def lstm_layer_backward(x, w_ih, w_hh, h0, c0, states, d_out, dh_n, dc_n, reverse=False,
                        hidden_grads=False, alloc=np.empty, overwrite_states=False):
    """Backward pass (BPTT) of one LSTM layer in one direction.

    Parameters
    ----------
    x, w_ih, w_hh, h0, c0, reverse
        As given to :func:`lstm_layer_forward`.
    states : dict
        Returned by :func:`lstm_layer_forward`.
    d_out : ndarray, shape (T, B, H)
        Gradient with respect to the layer's outputs ``h<t>``.
    dh_n, dc_n : ndarray, shape (B, H)
        Gradients with respect to the final hidden and cell states.
    hidden_grads : bool, optional
        Also return ``"hidden"`` and ``"cell"``, the total dL/dh<t> and dL/dc<t> (T, B, H).
    alloc : callable, optional
        ``alloc(shape, dtype)`` for ``dz`` (e.g. :meth:`~rnnlab._scratch.ScratchBuffers.empty`
        when the caller does not keep it).
    overwrite_states : bool, optional
        Write ``dz`` over ``states["gates"]`` (same shape; each step reads its gates first)
        instead of into new memory: for callers that drop the states after this call. Saves
        ``T * B * 4H`` elements, as much memory as the states themselves, and its page faults.

    Returns
    -------
    dict
        ``"input"`` (T, B, I), ``"h0"``, ``"c0"`` (B, H), ``"weight_ih"``, ``"weight_hh"``,
        ``"bias"`` (gradient of ``b_ih``, equal to that of ``b_hh``), ``"dz"`` (T, B, 4H), the
        per-step gate pre-activation gradients, and ``"hidden"``, ``"cell"`` if asked.
    """
    gates, cells, hidden = states["gates"], states["cells"], states["hidden"]
    n_steps, batch, width = gates.shape
    n_in = x.shape[2]
    dz = gates if overwrite_states else alloc(gates.shape, gates.dtype)
    dh0 = np.empty_like(h0)
    dc0 = np.empty_like(c0)
    d_hidden = np.empty((n_steps if hidden_grads else 0,) + hidden.shape[1:], dtype=x.dtype)
    d_cell = np.empty_like(d_hidden)
    db_rows = np.zeros((batch, width), dtype=np.float64)
    blas = lstm_blas_steps(batch, hidden.shape[2], x.dtype)
    parts = unit_parts(batch, hidden.shape[2], x.dtype.itemsize, blas=blas)
    if parts:
        lstm_recurrence_backward_units(pack_unit_parts(w_hh, parts, batch, False), h0, c0, gates,
                                       cells, d_out, dh_n, dc_n, reverse, dz, dh0, dc0, db_rows,
                                       d_hidden, d_cell, parts)
    else:
        chunks = n_chunks(batch)
        with recurrence_threads(chunks, blas):
            lstm_recurrence_backward(np.ascontiguousarray(w_hh), h0, c0, gates, cells, d_out,
                                     dh_n, dc_n, reverse, dz, dh0, dc0, db_rows, d_hidden, d_cell,
                                     chunks, blas, bind_gemm())
    dz2 = dz.reshape(-1, width)
    d_x = np.empty_like(x)
    d_w_ih = np.empty_like(w_ih)
    d_w_hh = np.empty_like(w_hh)
    run_products(matmul_tasks(dz2, w_ih, d_x.reshape(-1, n_in))
                 + matmul_tasks(dz2.T, x.reshape(-1, n_in), d_w_ih)
                 + prev_state_tasks(dz, hidden, h0, reverse, d_w_hh),
                 dz.size * (2 * n_in + hidden.shape[2]))
    grads = {
        "input": d_x,
        "h0": dh0,
        "c0": dc0,
        "weight_ih": d_w_ih,
        "weight_hh": d_w_hh,
        "bias": db_rows.sum(axis=0).astype(x.dtype),
        "dz": dz,
    }
    if hidden_grads:
        grads["hidden"] = d_hidden
        grads["cell"] = d_cell
    return grads
