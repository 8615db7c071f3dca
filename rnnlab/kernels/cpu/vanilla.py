"""Vanilla (Elman) RNN kernels for the CPU: forward recurrence and backpropagation through time.

One layer, one direction, a batch of sequences::

    a<t> = g(W_hh a<t-1> + W_ih x<t> + b_ih + b_hh)

optionally followed by ``D`` extra *deep transition* layers inside the recurrence (Pascanu et al.
2014, "How to construct deep recurrent neural networks")::

    u_0<t> = g(W_hh a<t-1> + W_ih x<t> + b),   u_k<t> = g(W_tr_k u_{k-1}<t> + b_tr_k),   a<t> = u_D<t>

Only the step-by-step recurrence is compiled (:func:`rnn_recurrence`,
:func:`rnn_recurrence_backward`); the input projection before the loop and the weight gradients
after it are single large matrix products (:func:`rnn_layer_forward`, :func:`rnn_layer_backward`).
The batch is split into one chunk per thread *outside* the time loop, and every sum runs in a
fixed order, so results are bitwise reproducible and independent of the thread count.
"""

import contextlib

import numba
import numpy as np
from numba import njit, prange

from ...activations import activate_rows, derivative_from_output
from ..._blas import blas_threads_for
from .blas import (bind_gemm, gemm_scratch, matmul_tasks, prev_state_tasks, run_products,
                   step_product)


@njit(cache=True, parallel=True, error_model="numpy")
def rnn_recurrence(w_hh_t, w_tr_t, b_tr, h0, act, reverse, states, n_chunks, blas, ilp64):
    """Run the recurrence of one layer in one direction, in place.

    Parameters
    ----------
    w_hh_t : ndarray, shape (H, H)
        The *transpose* of ``W_hh`` (C-contiguous), so that the inner loop is a contiguous axpy.
    w_tr_t : ndarray, shape (D, H, H)
        Transposes of the deep-transition weights ``W_tr_k`` (``D = 0`` for a plain cell).
    b_tr : ndarray, shape (D, H)
        Deep-transition biases.
    h0 : ndarray, shape (B, H)
        Initial hidden state.
    act : int
        Activation code (:mod:`rnnlab.activations`).
    reverse : bool
        Process the sequence from ``t = T-1`` down to ``0`` (the backward direction of a
        bidirectional layer).
    states : ndarray, shape (D + 1, T, B, H)
        On entry ``states[0]`` holds the input projection ``W_ih x<t> + b``; on exit
        ``states[k, t]`` is ``u_k<t>`` and ``states[D]`` the hidden states ``a<t>``.
    n_chunks : int
        Number of batch chunks run in parallel (each runs the whole time loop), at most B.
    blas : bool
        Every per-step product as one single-threaded BLAS call on the chunk's rows (for large
        steps, :func:`blas_steps`; BLAS must be limited to one thread), not the compiled loops
        (:func:`~rnnlab.kernels.cpu.blas.step_product`).
    ilp64 : bool
        From :func:`~rnnlab.kernels.cpu.blas.bind_gemm`, which must have run first.
    """
    depth = w_tr_t.shape[0]
    n_steps, batch, hidden = states.shape[1], states.shape[2], states.shape[3]
    for c in prange(n_chunks):
        b0 = c * batch // n_chunks
        b1 = (c + 1) * batch // n_chunks
        scratch = gemm_scratch()
        for s in range(n_steps):
            t = n_steps - 1 - s if reverse else s
            prev = h0 if s == 0 else states[depth, t + 1 if reverse else t - 1]
            z = states[0, t]
            step_product(z, b0, prev, b0, 0, w_hh_t, 0, hidden, b1 - b0, True, blas, ilp64,
                         scratch)
            activate_rows(act, z, b0, b1)
            for k in range(1, depth + 1):
                u_in = states[k - 1, t]
                u = states[k, t]
                for b in range(b0, b1):
                    for i in range(hidden):
                        u[b, i] = b_tr[k - 1, i]
                step_product(u, b0, u_in, b0, 0, w_tr_t[k - 1], 0, hidden, b1 - b0, True, blas,
                             ilp64, scratch)
                activate_rows(act, u, b0, b1)


@njit(cache=True, parallel=True, error_model="numpy")
def rnn_recurrence_backward(w_hh, w_tr, states, d_out, dh_n, act, reverse, dz, dh0, n_chunks,
                            blas, ilp64):
    """Backpropagate through time for one layer in one direction.

    Parameters
    ----------
    w_hh : ndarray, shape (H, H)
        Recurrent weights (PyTorch layout, not transposed).
    w_tr : ndarray, shape (D, H, H)
        Deep-transition weights (PyTorch layout).
    states : ndarray, shape (D + 1, T, B, H)
        The ``states`` filled by :func:`rnn_recurrence`.
    d_out : ndarray, shape (T, B, H)
        Gradient of the loss with respect to the layer's output ``a<t>`` at every step (from the
        loss or the layer above), not including the recurrent path.
    dh_n : ndarray, shape (B, H)
        Gradient with respect to the final hidden state.
    act : int
        Activation code.
    reverse : bool
        Direction used in the forward pass.
    dz : ndarray, shape (D + 1, T, B, H)
        Output: gradient with respect to every pre-activation, ``dz[0]`` for the cell's own and
        ``dz[k]`` for transition layer ``k``. The weight gradients are products of these.
    dh0 : ndarray, shape (B, H)
        Output: gradient with respect to the initial hidden state.
    n_chunks : int
        Number of batch chunks run in parallel, at most B.
    blas, ilp64 : bool
        As for :func:`rnn_recurrence`.
    """
    depth = w_tr.shape[0]
    n_steps, batch, hidden = states.shape[1], states.shape[2], states.shape[3]
    for c in prange(n_chunks):
        b0 = c * batch // n_chunks
        b1 = (c + 1) * batch // n_chunks
        nb = b1 - b0
        scratch = gemm_scratch()
        carry = np.empty((nb, hidden), dtype=states.dtype)  # dL/da<t> through a<t+1>
        g = np.empty((nb, hidden), dtype=states.dtype)  # total dL/da<t>, then dL/du_k<t>
        for bb in range(nb):
            for i in range(hidden):
                carry[bb, i] = dh_n[b0 + bb, i]
        for s in range(n_steps - 1, -1, -1):
            t = n_steps - 1 - s if reverse else s
            for bb in range(nb):
                for i in range(hidden):
                    g[bb, i] = d_out[t, b0 + bb, i] + carry[bb, i]
            for k in range(depth, 0, -1):
                u = states[k, t]
                dz_k = dz[k, t]
                for bb in range(nb):
                    for i in range(hidden):
                        dz_k[b0 + bb, i] = g[bb, i] * derivative_from_output(act, u[b0 + bb, i])
                step_product(g, 0, dz_k, b0, 0, w_tr[k - 1], 0, hidden, nb, False, blas, ilp64,
                             scratch)
            a = states[0, t]
            dz_0 = dz[0, t]
            for bb in range(nb):
                for i in range(hidden):
                    dz_0[b0 + bb, i] = g[bb, i] * derivative_from_output(act, a[b0 + bb, i])
            step_product(carry, 0, dz_0, b0, 0, w_hh, 0, hidden, nb, False, blas, ilp64, scratch)
        for bb in range(nb):
            for i in range(hidden):
                dh0[b0 + bb, i] = carry[bb, i]


def rnn_layer_forward(x, w_ih, w_hh, bias, w_tr, b_tr, h0, act, reverse=False):
    """Forward pass of one vanilla layer in one direction.

    Parameters
    ----------
    x : ndarray, shape (T, B, I)
        Layer input, C-contiguous, in the model's dtype.
    w_ih : ndarray, shape (H, I)
        Input weights.
    w_hh : ndarray, shape (H, H)
        Recurrent weights.
    bias : ndarray, shape (H,) or None
        ``b_ih + b_hh`` (the two PyTorch biases enter only as their sum).
    w_tr : ndarray, shape (D, H, H)
        Deep-transition weights (``D = 0`` for the plain cell).
    b_tr : ndarray, shape (D, H)
        Deep-transition biases.
    h0 : ndarray, shape (B, H)
        Initial state.
    act : int
        Activation code.
    reverse : bool, optional
        Read the sequence backwards.

    Returns
    -------
    states : ndarray, shape (D + 1, T, B, H)
        ``states[D]`` are the hidden states (the layer's output); the others are the
        deep-transition intermediates, kept for :func:`rnn_layer_backward`.
    """
    n_steps, batch, n_in = x.shape
    hidden = w_hh.shape[0]
    depth = w_tr.shape[0]
    states = np.empty((depth + 1, n_steps, batch, hidden), dtype=x.dtype)
    # the input projection of every step at once: one GEMM over T*B rows
    proj = states[0].reshape(-1, hidden)
    run_products(matmul_tasks(x.reshape(n_steps * batch, n_in), w_ih.T, proj), proj.size * n_in)
    if bias is not None:
        states[0] += bias
    w_tr_t = np.ascontiguousarray(w_tr.transpose(0, 2, 1))
    chunks = n_chunks(batch)
    blas = blas_steps(batch, hidden, x.dtype)
    with recurrence_threads(chunks, blas):
        rnn_recurrence(np.ascontiguousarray(w_hh.T), w_tr_t, b_tr, np.ascontiguousarray(h0), act,
                       reverse, states, chunks, blas, bind_gemm())
    return states


# ------------------------------------------------------------------ large batch x hidden
# When a step is itself a large matrix product (B x H by H x H), BLAS does it faster than the
# compiled loops and register tiles. Then the batch-chunked kernels above run every per-step
# product as one single-threaded BLAS call on the chunk's rows (their ``blas`` argument,
# :func:`~rnnlab.kernels.cpu.blas.step_product`): the time loop stays compiled, with no barrier
# between steps, and the activations run in parallel. The sums are BLAS's, not bitwise those of
# the loops.

#: Bytes of multiply-adds a step (B * H * H * itemsize) from which the recurrence runs one BLAS
#: product a step per batch chunk, for batches of at least BLAS_STEP_BATCH. Measured on 2 cores
#: (Intel Xeon, AVX-512; tanh, T = 1000, forward + BPTT, loops against BLAS steps, three runs):
#: float64 (128, 512) 6.4-7.0 against 3.5-3.7 s, (32, 512) 1.31-1.38 against 0.95-1.12 s,
#: (128, 256) 1.06-1.14 against 1.00-1.06 s; float32 (128, 512) 1.68-2.14 against 1.72-1.95 s;
#: at 2^25 bytes and below even (float32 (128, 256), (32, 512), float64 (32, 256)). The
#: one-GEMM-a-step loop in Python that this replaced: float64 (128, 512) 3.7-3.9 s, float32
#: 2.1-2.3 s.
BLAS_STEP_BYTES = 1 << 26
BLAS_STEP_BATCH = 32


def blas_steps(batch, hidden, dtype):
    """Whether a layer's recurrence runs one BLAS product a step per batch chunk (see
    :data:`BLAS_STEP_BYTES`, :data:`BLAS_STEP_BATCH`)."""
    return (batch >= BLAS_STEP_BATCH and
            batch * hidden * hidden * np.dtype(dtype).itemsize >= BLAS_STEP_BYTES)


def n_chunks(batch):
    """Number of batch chunks to run in parallel: one per Numba thread, at most one per row."""
    return max(1, min(batch, numba.get_num_threads()))


# A parallel region with fewer chunks than threads leaves threads idle at its barrier. On a quiet
# machine that costs nothing measurable, but beside one other busy process (a second sweep, a
# dask worker) the idle thread takes CPU time from the working one. Measured (2-core KVM guest,
# Numba's OpenMP layer, one other process spinning), float32 fwd+BPTT T = 1000, B = 1, all
# threads -> one thread: tanh RNN H = 16 1.49 -> 0.47 ms, H = 64 2.32 -> 1.49; LSTM H = 16
# 1.97 -> 0.98; GRU H = 16 1.75 -> 0.80, H = 64 4.49 -> 3.48. Quiet: the same within noise.
@contextlib.contextmanager
def chunk_threads(n):
    """Run Numba's parallel regions in this block on at most ``n`` threads (``n`` chunks).

    Parameters
    ----------
    n : int
        Chunks of the parallel loop (:func:`n_chunks`).
    """
    threads = numba.get_num_threads()
    if n >= threads:
        yield
        return
    numba.set_num_threads(max(1, n))  # per calling thread
    try:
        yield
    finally:
        numba.set_num_threads(threads)


@contextlib.contextmanager
def recurrence_threads(n, blas):
    """:func:`chunk_threads` for ``n`` chunks, and BLAS limited to one thread when the
    recurrence calls it from every chunk (``blas``)."""
    with chunk_threads(n), (blas_threads_for(0) if blas else contextlib.nullcontext()):
        yield


@njit(cache=True, error_model="numpy")
def _sum_rows(a):
    # float32 gradients summed over T*B rows lose digits when accumulated in float32; row by
    # row, as NumPy's a.sum(axis=0, dtype=np.float64) (the same bits), which took 21 us for
    # 1000 x 16 (a tanh RNN's bias at T = 1000, B = 1, H = 16), this 2
    out = np.zeros(a.shape[1], dtype=np.float64)
    for r in range(a.shape[0]):
        a_r = a[r]
        for j in range(a.shape[1]):
            out[j] += a_r[j]
    return out.astype(a.dtype)


def rnn_layer_backward(x, w_ih, w_hh, w_tr, h0, states, d_out, dh_n, act, reverse=False,
                       alloc=np.empty):
    """Backward pass (BPTT) of one vanilla layer in one direction.

    Parameters
    ----------
    x, w_ih, w_hh, w_tr, h0, act, reverse
        As given to :func:`rnn_layer_forward`.
    states : ndarray, shape (D + 1, T, B, H)
        Returned by :func:`rnn_layer_forward`.
    d_out : ndarray, shape (T, B, H)
        Gradient with respect to the layer's outputs.
    dh_n : ndarray, shape (B, H)
        Gradient with respect to the final hidden state.
    alloc : callable, optional
        ``alloc(shape, dtype)`` for ``dz`` (e.g.
        :meth:`~rnnlab._scratch.ScratchBuffers.empty` when the caller does not keep it).

    Returns
    -------
    dict
        ``"input"`` (T, B, I), ``"h0"`` (B, H), ``"weight_ih"``, ``"weight_hh"``, ``"bias"``
        (gradient of ``b_ih``, equal to that of ``b_hh``), ``"weight_tr"`` (D, H, H),
        ``"bias_tr"`` (D, H), and ``"dz"``, the per-step pre-activation gradients.
    """
    depth, n_steps, batch, hidden = states.shape
    depth -= 1
    n_in = x.shape[2]
    dz = alloc(states.shape, states.dtype)
    dh0 = np.empty_like(h0)
    chunks = n_chunks(batch)
    blas = blas_steps(batch, hidden, states.dtype)
    with recurrence_threads(chunks, blas):
        rnn_recurrence_backward(np.ascontiguousarray(w_hh), np.ascontiguousarray(w_tr), states,
                                d_out, dh_n, act, reverse, dz, dh0, chunks, blas, bind_gemm())

    dz0 = dz[0].reshape(-1, hidden)
    rows = dz0.shape[0]
    d_x = np.empty_like(x)
    d_w_ih = np.empty_like(w_ih)
    d_w_hh = np.empty_like(w_hh)
    d_w_tr = np.empty_like(w_tr)
    # every gradient of a weight or of the input is a product over the T*B rows (dW_hh: the
    # first step's product with h0 plus one over the other rows), run as single-threaded BLAS
    # blocks beside each other (see rnnlab.kernels.cpu.blas)
    tasks = (matmul_tasks(dz0, w_ih, d_x.reshape(-1, n_in))
             + matmul_tasks(dz0.T, x.reshape(-1, n_in), d_w_ih)
             + prev_state_tasks(dz[0], states[depth], h0, reverse, d_w_hh))
    for k in range(1, depth + 1):
        tasks += matmul_tasks(dz[k].reshape(-1, hidden).T, states[k - 1].reshape(-1, hidden),
                              d_w_tr[k - 1])
    run_products(tasks, rows * hidden * (2 * n_in + hidden * (1 + depth)))
    d_b_tr = np.empty((depth, hidden), dtype=states.dtype)
    for k in range(1, depth + 1):
        d_b_tr[k - 1] = _sum_rows(dz[k].reshape(-1, hidden))
    return {
        "input": d_x,
        "h0": dh0,
        "weight_ih": d_w_ih,
        "weight_hh": d_w_hh,
        "bias": _sum_rows(dz0),
        "weight_tr": d_w_tr,
        "bias_tr": d_b_tr,
        "dz": dz,
    }
