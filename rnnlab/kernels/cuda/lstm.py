"""LSTM kernels for CUDA: forward recurrence and backpropagation through time.

The GPU twin of :mod:`rnnlab.kernels.cpu.lstm`: the same names, the same argument order (the
CPU's ``n_chunks`` becomes ``w_in_shared``) and the same math, PyTorch's cell and gate order
(i, f, g, o)::

    [i, f, g, o]<t> = [σ, σ, tanh, σ](W_ih x<t> + b_ih + W_hh h<t-1> + b_hh)
    c<t> = f<t> * c<t-1> + i<t> * g<t>
    h<t> = o<t> * tanh(c<t>)

Design (as :mod:`rnnlab.kernels.cuda.vanilla`; see DESIGN.md, "CUDA habits"):

- **Persistent kernels.** :func:`lstm_recurrence` and :func:`lstm_recurrence_backward` run the
  whole time loop in one launch: one thread block per sequence (batch row), one thread per hidden
  unit (units ``tid, tid + blockDim, ...`` when ``H`` exceeds the block). The thread of unit
  ``i`` forms all four gate pre-activations of ``i`` (four independent dot products, so the
  cell update needs no extra barrier) and owns ``c_i``; the hidden state is double-buffered in
  shared memory, so a forward step costs one ``cuda.syncthreads()``. Backward, the thread of
  unit ``i`` forms the four ``dz`` of ``i``, then, after one barrier, ``dh<t-1>_i`` as a dot
  product over the ``4H`` gate rows (``dz<t>`` double-buffered in shared memory, or read
  back from global memory: one barrier a step).
- **W_hh in shared memory** (dynamic shared memory, ``4H*H + 8H`` elements for the backward
  kernel, ``4H*H + 2H`` forward) when it fits in :data:`SHARED_MEMORY_BYTES` (48 KB): float32
  up to ``H = 54``, float64 up to ``H = 38`` (:func:`weights_fit_in_shared`). Above that the same
  kernels read ``W_hh`` from global memory (coalesced; the matrix stays in L1/L2), selected by
  their last argument ``w_in_shared``; the backward kernel then reads ``dz<t>`` from global
  memory too and needs no shared memory at all.
- **Per-unit state outside shared memory.** ``c<t-1>`` (forward) and the running gradients
  ``dL/dh``, ``dL/dc`` (backward, kept in the outputs ``dh0``, ``dc0``) are read and written
  only by the thread of their unit, so they live in global memory (L1-resident) without a
  barrier, and shared memory holds only what threads exchange.
- **GEMMs outside the loop.** :func:`lstm_layer_forward` forms the input projection of all
  ``T*B`` rows with one device GEMM before the loop; :func:`lstm_layer_backward` forms the input
  and weight gradients with one device GEMM each over ``T*B`` rows after it, and the bias
  gradient with a fixed-order float64 column sum of ``dz`` (:mod:`rnnlab.kernels.cuda.blas`).
  The CPU kernel's ``db_rows`` argument is therefore dropped.
- Deterministic: no atomics, every sum in a fixed order.

Importing this module needs ``numba-cuda`` (not a GPU): the kernels compile lazily at their first
launch. Set ``NUMBA_ENABLE_CUDASIM=1`` before importing :mod:`numba.cuda` to run them in Numba's
CUDA simulator.
"""

import math

import numpy as np
from numba import cuda

from ...activations import fast_sigmoid, fast_tanh
from . import blas
from .vanilla import MAX_THREADS, SHARED_MEMORY_BYTES, _dtype_of, _result

#: Gate blocks stacked in the weights: i, f, g, o.
GATES = 4

# H-vectors each kernel keeps in shared memory besides W_hh: forward the hidden state (two
# buffers, also without W_hh in shared memory); backward dz<t> (two buffers of 4H, only with
# W_hh in shared memory).
_FORWARD_VECTORS = 2
_BACKWARD_VECTORS = 2 * GATES


@cuda.jit
def lstm_recurrence(w_hh_t, bias, h0, c0, reverse, gates, cells, hidden, w_in_shared):
    """Run the LSTM recurrence of one layer in one direction, in place (one launch, all steps).

    Parameters
    ----------
    w_hh_t : device array, shape (H, 4H)
        The *transpose* of ``W_hh`` (C-contiguous): the thread of unit ``i`` reads columns
        ``i, H + i, 2H + i, 3H + i``, so a warp reads consecutive addresses.
    bias : device array, shape (4H,)
        ``b_ih + b_hh`` (zeros for a model without bias), added step by step as on the CPU.
    h0, c0 : device array, shape (B, H)
        Initial hidden and cell states.
    reverse : bool
        Process the sequence from ``t = T-1`` down to ``0``.
    gates : device array, shape (T, B, 4H)
        On entry the input projection ``W_ih x<t>``; on exit the gate activations
        ``[i, f, g, o]<t>``.
    cells : device array, shape (T, B, H)
        Output: the cell states ``c<t>``.
    hidden : device array, shape (T, B, H)
        Output: the hidden states ``h<t>`` (the layer's output).
    w_in_shared : bool
        Copy ``W_hh^T`` into dynamic shared memory (the launch must then provide
        ``(4H*H + 2H) * itemsize`` bytes; otherwise ``2H * itemsize``).

    Notes
    -----
    Launch with ``grid = B`` (one block per sequence) and any block size (a multiple of 32,
    ideally ``min(roundup(H, 32), 1024)``; see :func:`launch_config`).
    """
    n_steps = hidden.shape[0]
    batch = hidden.shape[1]
    hid = hidden.shape[2]
    width = gates.shape[2]
    b = cuda.blockIdx.x
    if b >= batch:
        return  # whole block: no thread of it reaches a barrier
    tid = cuda.threadIdx.x
    n_threads = cuda.blockDim.x
    smem = cuda.shared.array(0, dtype=gates.dtype)
    # layout: [W_hh^T (H*4H, if w_in_shared)] [h buffer 0 (H)] [h buffer 1 (H)]
    v_off = hid * width if w_in_shared else 0
    if w_in_shared:
        for e in range(tid, hid * width, n_threads):
            smem[e] = w_hh_t[e // width, e % width]
    for i in range(tid, hid, n_threads):
        smem[v_off + i] = h0[b, i]
    cuda.syncthreads()
    # h<t-1> in buffer s % 2, h<t> into the other; a buffer is overwritten only after the
    # barrier that follows its last read
    for s in range(n_steps):
        t = n_steps - 1 - s if reverse else s
        tp = t + 1 if reverse else t - 1
        src = v_off + (s % 2) * hid
        dst = v_off + ((s + 1) % 2) * hid
        for i in range(tid, hid, n_threads):
            # c<t-1>_i was written by this thread: no barrier, no shared copy needed
            cp = c0[b, i] if s == 0 else cells[tp, b, i]
            zi = gates[t, b, i] + bias[i]
            zf = gates[t, b, hid + i] + bias[hid + i]
            zg = gates[t, b, 2 * hid + i] + bias[2 * hid + i]
            zo = gates[t, b, 3 * hid + i] + bias[3 * hid + i]
            # four independent sums, each in the CPU's order j = 0, 1, ...
            if w_in_shared:
                for j in range(hid):
                    hj = smem[src + j]
                    row = j * width
                    zi += hj * smem[row + i]
                    zf += hj * smem[row + hid + i]
                    zg += hj * smem[row + 2 * hid + i]
                    zo += hj * smem[row + 3 * hid + i]
            else:
                for j in range(hid):
                    hj = smem[src + j]
                    zi += hj * w_hh_t[j, i]
                    zf += hj * w_hh_t[j, hid + i]
                    zg += hj * w_hh_t[j, 2 * hid + i]
                    zo += hj * w_hh_t[j, 3 * hid + i]
            ig = fast_sigmoid(zi)
            fg = fast_sigmoid(zf)
            gg = fast_tanh(zg)
            og = fast_sigmoid(zo)
            cc = fg * cp + ig * gg
            gates[t, b, i] = ig
            gates[t, b, hid + i] = fg
            gates[t, b, 2 * hid + i] = gg
            gates[t, b, 3 * hid + i] = og
            cells[t, b, i] = cc
            h = og * fast_tanh(cc)
            hidden[t, b, i] = h
            smem[dst + i] = h
        cuda.syncthreads()


@cuda.jit
def lstm_recurrence_backward(w_hh, h0, c0, gates, cells, d_out, dh_n, dc_n, reverse, dz, dh0,
                             dc0, d_hidden, d_cell, w_in_shared):
    """Backpropagate through time for one LSTM layer in one direction (one launch, all steps).

    Parameters
    ----------
    w_hh : device array, shape (4H, H)
        Recurrent weights (PyTorch layout, not transposed): the thread of unit ``j`` reads
        column ``j``.
    h0 : device array, shape (B, H)
        Initial hidden state given to :func:`lstm_recurrence` (unused, as on the CPU: kept so
        that the arguments mirror :func:`rnnlab.kernels.cpu.lstm.lstm_recurrence_backward`).
    c0 : device array, shape (B, H)
        Initial cell state.
    gates, cells : device array
        The gate activations ``(T, B, 4H)`` and cell states ``(T, B, H)`` filled by
        :func:`lstm_recurrence`.
    d_out : device array, shape (T, B, H)
        Gradient of the loss with respect to the layer's output ``h<t>`` at every step, not
        including the recurrent path.
    dh_n, dc_n : device array, shape (B, H)
        Gradients with respect to the final hidden and cell states.
    reverse : bool
        Direction used in the forward pass.
    dz : device array, shape (T, B, 4H)
        Output: gradient with respect to the gate pre-activations (the same for the ``ih`` and
        ``hh`` products).
    dh0, dc0 : device array, shape (B, H)
        Output: gradients with respect to the initial states. They also hold the running
        gradients dL/dh<t>, dL/dc<t> through the step after ``t`` during the loop (entry ``i``
        is only touched by the thread of unit ``i``).
    d_hidden, d_cell : device array, shape (T, B, H) or (0, B, H)
        Outputs, when ``d_hidden`` has T rows: the total gradients dL/dh<t> and dL/dc<t>.
        Pass 0-row arrays to skip them.
    w_in_shared : bool
        Copy ``W_hh`` into dynamic shared memory, with two ``4H`` buffers for ``dz<t>`` (the
        launch must then provide ``(4H*H + 8H) * itemsize`` bytes). Otherwise the kernel needs
        no shared memory: ``dh<t-1> = dz<t> W_hh`` reads ``dz<t>`` from ``dz`` itself (the
        barrier makes the block's writes visible), so any ``H`` can run.

    Notes
    -----
    Launch with ``grid = B`` and any block size (see :func:`lstm_recurrence`). The bias
    gradient is not formed here (the CPU kernel's ``db_rows``): the host wrapper sums ``dz``
    over its ``T*B`` rows afterwards.
    """
    n_steps = cells.shape[0]
    batch = cells.shape[1]
    hid = cells.shape[2]
    width = gates.shape[2]
    b = cuda.blockIdx.x
    if b >= batch:
        return
    tid = cuda.threadIdx.x
    n_threads = cuda.blockDim.x
    store_hidden = d_hidden.shape[0] > 0
    zero = gates.dtype.type(0)  # typed constants: a bare 1 would promote float32 to float64
    one = gates.dtype.type(1)
    smem = cuda.shared.array(0, dtype=gates.dtype)
    # layout (w_in_shared only): [W_hh (4H*H)] [dz buffer 0 (4H)] [dz buffer 1 (4H)].
    # The carries dL/dh<t>, dL/dc<t> through the step after t live in dh0, dc0 (where they end):
    # entry i is only touched by the thread of unit i, so they need neither a barrier nor
    # shared memory, and large H is limited by nothing but the block size.
    if w_in_shared:
        for e in range(tid, width * hid, n_threads):
            smem[e] = w_hh[e // hid, e % hid]
    for i in range(tid, hid, n_threads):
        dh0[b, i] = dh_n[b, i]
        dc0[b, i] = dc_n[b, i]
    cuda.syncthreads()
    for s in range(n_steps - 1, -1, -1):
        t = n_steps - 1 - s if reverse else s
        tp = t + 1 if reverse else t - 1
        buf = width * hid + (s % 2) * width
        for i in range(tid, hid, n_threads):
            cp = c0[b, i] if s == 0 else cells[tp, b, i]
            ig = gates[t, b, i]
            fg = gates[t, b, hid + i]
            gg = gates[t, b, 2 * hid + i]
            og = gates[t, b, 3 * hid + i]
            tc = fast_tanh(cells[t, b, i])
            dht = d_out[t, b, i] + dh0[b, i]
            dct = dc0[b, i] + dht * og * (one - tc * tc)
            d_i = dct * gg * ig * (one - ig)
            d_f = dct * cp * fg * (one - fg)
            d_g = dct * ig * (one - gg * gg)
            d_o = dht * tc * og * (one - og)
            dz[t, b, i] = d_i
            dz[t, b, hid + i] = d_f
            dz[t, b, 2 * hid + i] = d_g
            dz[t, b, 3 * hid + i] = d_o
            if w_in_shared:
                smem[buf + i] = d_i
                smem[buf + hid + i] = d_f
                smem[buf + 2 * hid + i] = d_g
                smem[buf + 3 * hid + i] = d_o
            if store_hidden:
                d_hidden[t, b, i] = dht
                d_cell[t, b, i] = dct
            dc0[b, i] = dct * fg
        cuda.syncthreads()
        # dh<t-1> = dz<t> W_hh: one partial sum per gate block (four independent chains
        # instead of one of length 4H), added in the fixed order i, f, g, o
        for j in range(tid, hid, n_threads):
            a_i = zero
            a_f = zero
            a_g = zero
            a_o = zero
            if w_in_shared:
                for k in range(hid):
                    a_i += smem[buf + k] * smem[k * hid + j]
                    a_f += smem[buf + hid + k] * smem[(hid + k) * hid + j]
                    a_g += smem[buf + 2 * hid + k] * smem[(2 * hid + k) * hid + j]
                    a_o += smem[buf + 3 * hid + k] * smem[(3 * hid + k) * hid + j]
            else:
                for k in range(hid):
                    a_i += dz[t, b, k] * w_hh[k, j]
                    a_f += dz[t, b, hid + k] * w_hh[hid + k, j]
                    a_g += dz[t, b, 2 * hid + k] * w_hh[2 * hid + k, j]
                    a_o += dz[t, b, 3 * hid + k] * w_hh[3 * hid + k, j]
            dh0[b, j] = ((a_i + a_f) + a_g) + a_o
        # no barrier here: the next step writes the other dz buffer (or another row of dz),
        # and dh0[b, j], dc0[b, j] belong to this thread


# --- launch configuration -----------------------------------------------------------------------

def weights_fit_in_shared(hidden, dtype):
    """Whether ``W_hh`` (4H, H) plus the backward kernel's two ``4H`` buffers fits in
    :data:`SHARED_MEMORY_BYTES` (the forward kernel needs less; both kernels decide alike).

    float32: ``H <= 54``; float64: ``H <= 38``.
    """
    n_elem = GATES * hidden * hidden + _BACKWARD_VECTORS * hidden
    return n_elem * np.dtype(dtype).itemsize <= SHARED_MEMORY_BYTES


def launch_config(hidden, dtype, backward):
    """Return ``(threads per block, dynamic shared bytes, w_in_shared)`` for
    :func:`lstm_recurrence` (``backward=False``) or :func:`lstm_recurrence_backward`.

    One thread per hidden unit: ``min(roundup(H, 32), MAX_THREADS)`` threads. Shared memory:
    ``W_hh`` when :func:`weights_fit_in_shared`, plus the kernel's vectors (forward always
    ``2H``; backward ``8H`` with ``W_hh`` and none without). Without ``W_hh``, the forward fits
    in 48 KB up to ``H = 6144`` (float32) and ``3072`` (float64); the backward for any ``H``.
    """
    threads = min(MAX_THREADS, 32 * max(1, math.ceil(hidden / 32)))
    shared = weights_fit_in_shared(hidden, dtype)
    if backward:
        n_elem = GATES * hidden * hidden + _BACKWARD_VECTORS * hidden if shared else 0
    else:
        n_elem = (GATES * hidden * hidden if shared else 0) + _FORWARD_VECTORS * hidden
    return threads, n_elem * np.dtype(dtype).itemsize, shared


def previous_states(hidden, h0, reverse):
    """``h<t-1>`` for every step as a new ``(T, B, H)`` device array: ``h0`` at the first step
    of the direction, the layer's hidden states elsewhere (the right factor of the ``W_hh``
    gradient). Shared with :mod:`rnnlab.kernels.cuda.gru`.

    Parameters
    ----------
    hidden : device array, shape (T, B, H)
        The hidden states of the layer.
    h0 : device array, shape (B, H)
        The initial state.
    reverse : bool
        Direction of the recurrence (the previous state of ``t`` is ``h<t+1>``).

    Returns
    -------
    device array, shape (T, B, H)
    """
    n_steps = hidden.shape[0]
    prev = cuda.device_array(hidden.shape, dtype=hidden.dtype)
    if reverse:
        if n_steps > 1:
            prev[0:n_steps - 1].copy_to_device(hidden[1:n_steps])
        prev[n_steps - 1].copy_to_device(h0)
    else:
        prev[0].copy_to_device(h0)
        if n_steps > 1:
            prev[1:n_steps].copy_to_device(hidden[0:n_steps - 1])
    return prev


# --- host wrappers ------------------------------------------------------------------------------

def lstm_layer_forward(x, w_ih, w_hh, bias, h0, c0, reverse=False, to_host=True):
    """Forward pass of one LSTM layer in one direction, on the GPU.

    Same arguments and result as :func:`rnnlab.kernels.cpu.lstm.lstm_layer_forward` (without
    its ``alloc``); every array may be a NumPy array (copied to the device once) or a device
    array (used in place: C-contiguous, of ``x``'s dtype).

    Parameters
    ----------
    x : array, shape (T, B, I)
        Layer input (float32 or float64; fixes the dtype of the computation).
    w_ih : array, shape (4H, I)
        Input weights, gate blocks i, f, g, o.
    w_hh : array, shape (4H, H)
        Recurrent weights.
    bias : array, shape (4H,) or None
        ``b_ih + b_hh``.
    h0, c0 : array, shape (B, H)
        Initial states.
    reverse : bool, optional
        Read the sequence backwards.
    to_host : bool, optional
        Return NumPy arrays (default) or leave the results on the device, e.g. to pass them to
        :func:`lstm_layer_backward` without a round trip.

    Returns
    -------
    states : dict
        ``"gates"`` (T, B, 4H) activations i, f, g, o; ``"cells"`` (T, B, H); ``"hidden"``
        (T, B, H), the layer's output.
    """
    dtype = _dtype_of(x)
    n_steps, batch, n_in = x.shape
    width = w_hh.shape[0]
    hid = width // GATES
    gates = cuda.device_array((n_steps, batch, width), dtype=dtype)
    cells = cuda.device_array((n_steps, batch, hid), dtype=dtype)
    hidden = cuda.device_array((n_steps, batch, hid), dtype=dtype)
    out = {"gates": gates, "cells": cells, "hidden": hidden}
    if n_steps == 0 or batch == 0 or hid == 0:
        return _result(out, to_host)
    d_x = blas.to_device(x, dtype)
    d_w_ih = blas.to_device(w_ih, dtype)
    d_w_hh = blas.to_device(w_hh, dtype)
    d_h0 = blas.to_device(h0, dtype)
    d_c0 = blas.to_device(c0, dtype)
    d_bias = blas.to_device(np.zeros(width, dtype=dtype) if bias is None else bias, dtype)
    # the input projection of every step at once: one GEMM over T*B rows
    blas.gemm(d_x.reshape(n_steps * batch, n_in), d_w_ih, gates.reshape(n_steps * batch, width),
              trans_b=True)
    w_hh_t = blas.transposed(d_w_hh)
    threads, shared_bytes, in_shared = launch_config(hid, dtype, backward=False)
    lstm_recurrence[batch, threads, 0, shared_bytes](w_hh_t, d_bias, d_h0, d_c0, bool(reverse),
                                                    gates, cells, hidden, in_shared)
    return _result(out, to_host)


def lstm_layer_backward(x, w_ih, w_hh, h0, c0, states, d_out, dh_n, dc_n, reverse=False,
                        hidden_grads=False, to_host=True, overwrite_states=False):
    """Backward pass (BPTT) of one LSTM layer in one direction, on the GPU.

    Same arguments and result as :func:`rnnlab.kernels.cpu.lstm.lstm_layer_backward` (without
    its ``alloc``); arrays may be NumPy arrays or device arrays (see
    :func:`lstm_layer_forward`).

    Parameters
    ----------
    x, w_ih, w_hh, h0, c0, reverse
        As given to :func:`lstm_layer_forward`.
    states : dict
        Returned by :func:`lstm_layer_forward` (NumPy or device arrays; keep them on the device
        with ``to_host=False``).
    d_out : array, shape (T, B, H)
        Gradient with respect to the layer's outputs ``h<t>``.
    dh_n, dc_n : array, shape (B, H)
        Gradients with respect to the final hidden and cell states.
    hidden_grads : bool, optional
        Also return ``"hidden"`` and ``"cell"``, the total dL/dh<t> and dL/dc<t> (T, B, H).
    to_host : bool, optional
        Return NumPy arrays (default) or device arrays.
    overwrite_states : bool, optional
        Write ``dz`` over the device copy of ``states["gates"]`` (each thread reads its unit's
        four gates before writing their gradients) instead of into new device memory: for
        callers that drop the states after this call. A ``states["gates"]`` that is already a
        device array is itself overwritten.

    Returns
    -------
    dict
        ``"input"`` (T, B, I), ``"h0"``, ``"c0"`` (B, H), ``"weight_ih"``, ``"weight_hh"``,
        ``"bias"`` (gradient of ``b_ih``, equal to that of ``b_hh``), ``"dz"`` (T, B, 4H), and
        ``"hidden"``, ``"cell"`` if asked. Weight and bias gradients sum over ``T*B`` rows in
        float64 (also for float32).
    """
    dtype = _dtype_of(x)
    d_gates = blas.to_device(states["gates"], dtype)
    d_cells = blas.to_device(states["cells"], dtype)
    d_hidden_states = blas.to_device(states["hidden"], dtype)
    n_steps, batch, width = d_gates.shape
    hid = width // GATES
    n_in = x.shape[2]
    rows = n_steps * batch
    if rows == 0 or hid == 0:
        raise ValueError("lstm_layer_backward needs T, B and H >= 1")
    d_x = blas.to_device(x, dtype)
    d_w_ih = blas.to_device(w_ih, dtype)
    d_w_hh = blas.to_device(w_hh, dtype)
    d_h0 = blas.to_device(h0, dtype)
    d_c0 = blas.to_device(c0, dtype)
    d_d_out = blas.to_device(d_out, dtype)
    d_dh_n = blas.to_device(dh_n, dtype)
    d_dc_n = blas.to_device(dc_n, dtype)

    dz = d_gates if overwrite_states else cuda.device_array((n_steps, batch, width), dtype=dtype)
    dh0 = cuda.device_array((batch, hid), dtype=dtype)
    dc0 = cuda.device_array((batch, hid), dtype=dtype)
    d_hidden = cuda.device_array((n_steps if hidden_grads else 0, batch, hid), dtype=dtype)
    d_cell = cuda.device_array(d_hidden.shape, dtype=dtype)
    threads, shared_bytes, in_shared = launch_config(hid, dtype, backward=True)
    lstm_recurrence_backward[batch, threads, 0, shared_bytes](
        d_w_hh, d_h0, d_c0, d_gates, d_cells, d_d_out, d_dh_n, d_dc_n, bool(reverse), dz, dh0,
        dc0, d_hidden, d_cell, in_shared)

    d_input = cuda.device_array((n_steps, batch, n_in), dtype=dtype)
    d_w_ih_out = cuda.device_array((width, n_in), dtype=dtype)
    d_w_hh_out = cuda.device_array((width, hid), dtype=dtype)
    d_bias = cuda.device_array(width, dtype=dtype)
    dz2 = dz.reshape(rows, width)
    prev = previous_states(d_hidden_states, d_h0, reverse)
    # every weight gradient is one GEMM over the T*B rows
    blas.gemm(dz2, prev.reshape(rows, hid), d_w_hh_out, trans_a=True)
    blas.gemm(dz2, d_x.reshape(rows, n_in), d_w_ih_out, trans_a=True)
    blas.gemm(dz2, d_w_ih, d_input.reshape(rows, n_in))
    blas.sum_rows(dz2, d_bias)
    out = {"input": d_input, "h0": dh0, "c0": dc0, "weight_ih": d_w_ih_out,
           "weight_hh": d_w_hh_out, "bias": d_bias, "dz": dz}
    if hidden_grads:
        out["hidden"] = d_hidden
        out["cell"] = d_cell
    return _result(out, to_host)
