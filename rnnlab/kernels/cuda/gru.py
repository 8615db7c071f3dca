"""GRU kernels for CUDA: forward recurrence and backpropagation through time.

The GPU twin of :mod:`rnnlab.kernels.cpu.gru`: the same names, the same argument order (the
CPU's ``n_chunks`` becomes ``w_in_shared``) and the same math, PyTorch's cell and gate order
(r, z, n)::

    r<t> = σ(W_ir x<t> + b_ir + W_hr h<t-1> + b_hr)
    z<t> = σ(W_iz x<t> + b_iz + W_hz h<t-1> + b_hz)
    n<t> = tanh(W_in x<t> + b_in + r<t> * (W_hn h<t-1> + b_hn))
    h<t> = (1 - z<t>) * n<t> + z<t> * h<t-1>

``W_hn h<t-1> + b_hn`` is stored (``hn``) for the backward pass, and ``dz`` has four blocks
``[dr, dz, dn, dn * r]``: columns ``0:3H`` are the gradient with respect to the input
pre-activations, columns ``0:2H`` and ``3H:4H`` the one with respect to the recurrent ones.

Design (as :mod:`rnnlab.kernels.cuda.vanilla` and :mod:`rnnlab.kernels.cuda.lstm`; see
DESIGN.md, "CUDA habits"):

- **Persistent kernels.** :func:`gru_recurrence` and :func:`gru_recurrence_backward` run the
  whole time loop in one launch: one thread block per sequence (batch row), one thread per hidden
  unit (units ``tid, tid + blockDim, ...`` when ``H`` exceeds the block). Forward, the thread of
  unit ``i`` forms the three recurrent sums of ``i`` and the new ``h_i``; the hidden state is
  double-buffered in shared memory, one ``cuda.syncthreads()`` a step. Backward, it forms the
  ``dz`` of ``i``, then, after one barrier, ``dh<t-1>_i`` as a dot product over the ``3H``
  recurrent gate rows (``dz<t>`` double-buffered in shared memory, or read back from global
  memory: one barrier a step).
- **W_hh in shared memory** (dynamic shared memory, ``3H*H + 6H`` elements for the backward
  kernel, ``3H*H + 2H`` forward) when it fits in :data:`SHARED_MEMORY_BYTES` (48 KB): float32
  up to ``H = 63``, float64 up to ``H = 44`` (:func:`weights_fit_in_shared`); above that the
  kernels read ``W_hh`` from global memory, selected by their last argument ``w_in_shared``,
  and the backward kernel reads ``dz<t>`` from global memory too (no shared memory at all).
- **Per-unit state outside shared memory.** The running gradient ``dL/dh`` (kept in the output
  ``dh0``) is read and written only by the thread of its unit: no barrier, no shared copy.
- **GEMMs outside the loop** (:mod:`rnnlab.kernels.cuda.blas`): the input projection before the
  loop, the input and weight gradients after it, and the bias gradients as one fixed-order
  float64 column sum of ``dz`` (the CPU kernel's ``db_rows`` argument is dropped).
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
from .lstm import previous_states
from .vanilla import MAX_THREADS, SHARED_MEMORY_BYTES, _dtype_of, _result

#: Gate blocks stacked in the weights: r, z, n.
GATES = 3

# H-vectors each kernel keeps in shared memory besides W_hh: forward the hidden state (two
# buffers, also without W_hh in shared memory); backward the recurrent dz [dr, dz, dn * r] (two
# buffers of 3H, only with W_hh in shared memory).
_FORWARD_VECTORS = 2
_BACKWARD_VECTORS = 2 * GATES


@cuda.jit
def gru_recurrence(w_hh_t, b_ih, b_hh, h0, reverse, gates, hn, hidden, w_in_shared):
    """Run the GRU recurrence of one layer in one direction, in place (one launch, all steps).

    Parameters
    ----------
    w_hh_t : device array, shape (H, 3H)
        The *transpose* of ``W_hh`` (C-contiguous): the thread of unit ``i`` reads columns
        ``i, H + i, 2H + i``, so a warp reads consecutive addresses.
    b_ih, b_hh : device array, shape (3H,)
        Input and recurrent biases (zeros for a model without bias).
    h0 : device array, shape (B, H)
        Initial hidden state.
    reverse : bool
        Process the sequence from ``t = T-1`` down to ``0``.
    gates : device array, shape (T, B, 3H)
        On entry the input projection ``W_ih x<t>``; on exit the gate activations
        ``[r, z, n]<t>``.
    hn : device array, shape (T, B, H)
        Output: ``W_hn h<t-1> + b_hn``, the recurrent part of the ``n`` block.
    hidden : device array, shape (T, B, H)
        Output: the hidden states ``h<t>`` (the layer's output).
    w_in_shared : bool
        Copy ``W_hh^T`` into dynamic shared memory (the launch must then provide
        ``(3H*H + 2H) * itemsize`` bytes; otherwise ``2H * itemsize``).

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
    # layout: [W_hh^T (H*3H, if w_in_shared)] [h buffer 0 (H)] [h buffer 1 (H)]
    v_off = hid * width if w_in_shared else 0
    if w_in_shared:
        for e in range(tid, hid * width, n_threads):
            smem[e] = w_hh_t[e // width, e % width]
    for i in range(tid, hid, n_threads):
        smem[v_off + i] = h0[b, i]
    cuda.syncthreads()
    # h<t-1> in buffer s % 2, h<t> into the other (one barrier a step)
    for s in range(n_steps):
        t = n_steps - 1 - s if reverse else s
        src = v_off + (s % 2) * hid
        dst = v_off + ((s + 1) % 2) * hid
        for i in range(tid, hid, n_threads):
            # W_hh h<t-1> + b_hh, three independent sums in the CPU's order j = 0, 1, ...
            a_r = b_hh[i]
            a_z = b_hh[hid + i]
            a_n = b_hh[2 * hid + i]
            if w_in_shared:
                for j in range(hid):
                    hj = smem[src + j]
                    row = j * width
                    a_r += hj * smem[row + i]
                    a_z += hj * smem[row + hid + i]
                    a_n += hj * smem[row + 2 * hid + i]
            else:
                for j in range(hid):
                    hj = smem[src + j]
                    a_r += hj * w_hh_t[j, i]
                    a_z += hj * w_hh_t[j, hid + i]
                    a_n += hj * w_hh_t[j, 2 * hid + i]
            rg = fast_sigmoid(gates[t, b, i] + b_ih[i] + a_r)
            zg = fast_sigmoid(gates[t, b, hid + i] + b_ih[hid + i] + a_z)
            ng = fast_tanh(gates[t, b, 2 * hid + i] + b_ih[2 * hid + i] + rg * a_n)
            gates[t, b, i] = rg
            gates[t, b, hid + i] = zg
            gates[t, b, 2 * hid + i] = ng
            hn[t, b, i] = a_n
            h = ng + zg * (smem[src + i] - ng)
            hidden[t, b, i] = h
            smem[dst + i] = h
        cuda.syncthreads()


@cuda.jit
def gru_recurrence_backward(w_hh, h0, gates, hn, hidden, d_out, dh_n, reverse, dz, dh0,
                            d_hidden, w_in_shared):
    """Backpropagate through time for one GRU layer in one direction (one launch, all steps).

    Parameters
    ----------
    w_hh : device array, shape (3H, H)
        Recurrent weights (PyTorch layout, not transposed): the thread of unit ``j`` reads
        column ``j``.
    h0 : device array, shape (B, H)
        Initial state given to :func:`gru_recurrence`.
    gates, hn, hidden : device array
        The gate activations ``(T, B, 3H)``, recurrent ``n`` parts and hidden states
        ``(T, B, H)`` filled by :func:`gru_recurrence`.
    d_out : device array, shape (T, B, H)
        Gradient of the loss with respect to the layer's output ``h<t>`` at every step, not
        including the recurrent path.
    dh_n : device array, shape (B, H)
        Gradient with respect to the final hidden state.
    reverse : bool
        Direction used in the forward pass.
    dz : device array, shape (T, B, 4H)
        Output: pre-activation gradients ``[dr, dz, dn, dn * r]`` (see the module docstring).
    dh0 : device array, shape (B, H)
        Output: gradient with respect to the initial state. It also holds the running gradient
        dL/dh<t> through the step after ``t`` during the loop (entry ``i`` is only touched by
        the thread of unit ``i``).
    d_hidden : device array, shape (T, B, H) or (0, B, H)
        Output, when it has T rows: the total gradient dL/dh<t>. Pass a 0-row array to skip it.
    w_in_shared : bool
        Copy ``W_hh`` into dynamic shared memory, with two ``3H`` buffers for the recurrent
        ``dz<t>`` (the launch must then provide ``(3H*H + 6H) * itemsize`` bytes). Otherwise
        the kernel needs no shared memory: ``dh<t-1>`` reads ``dz<t>`` from ``dz`` itself (the
        barrier makes the block's writes visible), so any ``H`` can run.

    Notes
    -----
    Launch with ``grid = B`` and any block size (see :func:`gru_recurrence`). The bias
    gradients are not formed here (the CPU kernel's ``db_rows``): the host wrapper sums ``dz``
    over its ``T*B`` rows afterwards.
    """
    n_steps = hidden.shape[0]
    batch = hidden.shape[1]
    hid = hidden.shape[2]
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
    # layout (w_in_shared only): [W_hh (3H*H)] [dz_hh buffer 0 (3H)] [dz_hh buffer 1 (3H)], with
    # dz_hh = [dr, dz, dn * r] the gradient of W_hh h + b_hh. The carry dL/dh<t> through the
    # step after t lives in dh0 (where it ends): entry i is only touched by the thread of unit
    # i, so it needs neither a barrier nor shared memory.
    if w_in_shared:
        for e in range(tid, width * hid, n_threads):
            smem[e] = w_hh[e // hid, e % hid]
    for i in range(tid, hid, n_threads):
        dh0[b, i] = dh_n[b, i]
    cuda.syncthreads()
    for s in range(n_steps - 1, -1, -1):
        t = n_steps - 1 - s if reverse else s
        tp = t + 1 if reverse else t - 1
        buf = width * hid + (s % 2) * width
        for i in range(tid, hid, n_threads):
            hp = h0[b, i] if s == 0 else hidden[tp, b, i]
            rg = gates[t, b, i]
            zg = gates[t, b, hid + i]
            ng = gates[t, b, 2 * hid + i]
            dht = d_out[t, b, i] + dh0[b, i]
            dn = dht * (one - zg) * (one - ng * ng)
            d_r = dn * hn[t, b, i] * rg * (one - rg)
            d_z = dht * (hp - ng) * zg * (one - zg)
            d_nr = dn * rg
            dz[t, b, i] = d_r
            dz[t, b, hid + i] = d_z
            dz[t, b, 2 * hid + i] = dn
            dz[t, b, 3 * hid + i] = d_nr
            if w_in_shared:
                smem[buf + i] = d_r
                smem[buf + hid + i] = d_z
                smem[buf + 2 * hid + i] = d_nr
            if store_hidden:
                d_hidden[t, b, i] = dht
            dh0[b, i] = dht * zg
        cuda.syncthreads()
        # dh<t-1> = dh<t> * z<t> + dz_hh<t> W_hh: one partial sum per gate block (independent
        # chains), added in the fixed order r, z, n
        for j in range(tid, hid, n_threads):
            a_r = zero
            a_z = zero
            a_n = zero
            if w_in_shared:
                for k in range(hid):
                    a_r += smem[buf + k] * smem[k * hid + j]
                    a_z += smem[buf + hid + k] * smem[(hid + k) * hid + j]
                    a_n += smem[buf + 2 * hid + k] * smem[(2 * hid + k) * hid + j]
            else:
                for k in range(hid):  # dz columns 0:2H are [dr, dz], 3H:4H are dn * r
                    a_r += dz[t, b, k] * w_hh[k, j]
                    a_z += dz[t, b, hid + k] * w_hh[hid + k, j]
                    a_n += dz[t, b, width + k] * w_hh[2 * hid + k, j]
            dh0[b, j] = dh0[b, j] + ((a_r + a_z) + a_n)
        # no barrier here: the next step writes the other buffer (or another row of dz), and
        # dh0[b, j] belongs to this thread


# --- launch configuration -----------------------------------------------------------------------

def weights_fit_in_shared(hidden, dtype):
    """Whether ``W_hh`` (3H, H) plus the backward kernel's two ``3H`` buffers fits in
    :data:`SHARED_MEMORY_BYTES` (the forward kernel needs less; both kernels decide alike).

    float32: ``H <= 63``; float64: ``H <= 44``.
    """
    n_elem = GATES * hidden * hidden + _BACKWARD_VECTORS * hidden
    return n_elem * np.dtype(dtype).itemsize <= SHARED_MEMORY_BYTES


def launch_config(hidden, dtype, backward):
    """Return ``(threads per block, dynamic shared bytes, w_in_shared)`` for
    :func:`gru_recurrence` (``backward=False``) or :func:`gru_recurrence_backward`.

    One thread per hidden unit: ``min(roundup(H, 32), MAX_THREADS)`` threads. Shared memory:
    ``W_hh`` when :func:`weights_fit_in_shared`, plus the kernel's vectors (forward always
    ``2H``; backward ``6H`` with ``W_hh`` and none without). Without ``W_hh``, the forward fits
    in 48 KB up to ``H = 6144`` (float32) and ``3072`` (float64); the backward for any ``H``.
    """
    threads = min(MAX_THREADS, 32 * max(1, math.ceil(hidden / 32)))
    shared = weights_fit_in_shared(hidden, dtype)
    if backward:
        n_elem = GATES * hidden * hidden + _BACKWARD_VECTORS * hidden if shared else 0
    else:
        n_elem = (GATES * hidden * hidden if shared else 0) + _FORWARD_VECTORS * hidden
    return threads, n_elem * np.dtype(dtype).itemsize, shared


# --- host wrappers ------------------------------------------------------------------------------

def gru_layer_forward(x, w_ih, w_hh, b_ih, b_hh, h0, reverse=False, to_host=True):
    """Forward pass of one GRU layer in one direction, on the GPU.

    Same arguments and result as :func:`rnnlab.kernels.cpu.gru.gru_layer_forward` (without its
    ``alloc``); every array may be a NumPy array (copied to the device once) or a device array
    (used in place: C-contiguous, of ``x``'s dtype).

    Parameters
    ----------
    x : array, shape (T, B, I)
        Layer input (float32 or float64; fixes the dtype of the computation).
    w_ih : array, shape (3H, I)
        Input weights, gate blocks r, z, n.
    w_hh : array, shape (3H, H)
        Recurrent weights.
    b_ih, b_hh : array, shape (3H,) or None
        Input and recurrent biases (``None``: no bias).
    h0 : array, shape (B, H)
        Initial state.
    reverse : bool, optional
        Read the sequence backwards.
    to_host : bool, optional
        Return NumPy arrays (default) or leave the results on the device, e.g. to pass them to
        :func:`gru_layer_backward` without a round trip.

    Returns
    -------
    states : dict
        ``"gates"`` (T, B, 3H) activations r, z, n; ``"hn"`` (T, B, H) the recurrent part
        ``W_hn h<t-1> + b_hn`` of the n block; ``"hidden"`` (T, B, H), the layer's output.
    """
    dtype = _dtype_of(x)
    n_steps, batch, n_in = x.shape
    width = w_hh.shape[0]
    hid = width // GATES
    gates = cuda.device_array((n_steps, batch, width), dtype=dtype)
    hn = cuda.device_array((n_steps, batch, hid), dtype=dtype)
    hidden = cuda.device_array((n_steps, batch, hid), dtype=dtype)
    out = {"gates": gates, "hn": hn, "hidden": hidden}
    if n_steps == 0 or batch == 0 or hid == 0:
        return _result(out, to_host)
    d_x = blas.to_device(x, dtype)
    d_w_ih = blas.to_device(w_ih, dtype)
    d_w_hh = blas.to_device(w_hh, dtype)
    d_h0 = blas.to_device(h0, dtype)
    zeros = np.zeros(width, dtype=dtype)
    d_b_ih = blas.to_device(zeros if b_ih is None else b_ih, dtype)
    d_b_hh = blas.to_device(zeros if b_hh is None else b_hh, dtype)
    # the input projection of every step at once: one GEMM over T*B rows
    blas.gemm(d_x.reshape(n_steps * batch, n_in), d_w_ih, gates.reshape(n_steps * batch, width),
              trans_b=True)
    w_hh_t = blas.transposed(d_w_hh)
    threads, shared_bytes, in_shared = launch_config(hid, dtype, backward=False)
    gru_recurrence[batch, threads, 0, shared_bytes](w_hh_t, d_b_ih, d_b_hh, d_h0, bool(reverse),
                                                   gates, hn, hidden, in_shared)
    return _result(out, to_host)


def gru_layer_backward(x, w_ih, w_hh, h0, states, d_out, dh_n, reverse=False,
                       hidden_grads=False, to_host=True):
    """Backward pass (BPTT) of one GRU layer in one direction, on the GPU.

    Same arguments and result as :func:`rnnlab.kernels.cpu.gru.gru_layer_backward` (without
    its ``alloc``); arrays may be NumPy arrays or device arrays (see :func:`gru_layer_forward`).

    Parameters
    ----------
    x, w_ih, w_hh, h0, reverse
        As given to :func:`gru_layer_forward`.
    states : dict
        Returned by :func:`gru_layer_forward` (NumPy or device arrays).
    d_out : array, shape (T, B, H)
        Gradient with respect to the layer's outputs ``h<t>``.
    dh_n : array, shape (B, H)
        Gradient with respect to the final hidden state.
    hidden_grads : bool, optional
        Also return ``"hidden"``, the total dL/dh<t> (T, B, H).
    to_host : bool, optional
        Return NumPy arrays (default) or device arrays.

    Returns
    -------
    dict
        ``"input"`` (T, B, I), ``"h0"`` (B, H), ``"weight_ih"``, ``"weight_hh"``, ``"bias_ih"``,
        ``"bias_hh"``, ``"dz"`` (T, B, 4H) (see :func:`gru_recurrence_backward`), and
        ``"hidden"`` if asked. Weight and bias gradients sum over ``T*B`` rows in float64 (also
        for float32).
    """
    dtype = _dtype_of(x)
    d_gates = blas.to_device(states["gates"], dtype)
    d_hn = blas.to_device(states["hn"], dtype)
    d_hidden_states = blas.to_device(states["hidden"], dtype)
    n_steps, batch, width = d_gates.shape
    hid = width // GATES
    n_in = x.shape[2]
    rows = n_steps * batch
    if rows == 0 or hid == 0:
        raise ValueError("gru_layer_backward needs T, B and H >= 1")
    d_x = blas.to_device(x, dtype)
    d_w_ih = blas.to_device(w_ih, dtype)
    d_w_hh = blas.to_device(w_hh, dtype)
    d_h0 = blas.to_device(h0, dtype)
    d_d_out = blas.to_device(d_out, dtype)
    d_dh_n = blas.to_device(dh_n, dtype)

    dz = cuda.device_array((n_steps, batch, width + hid), dtype=dtype)
    dh0 = cuda.device_array((batch, hid), dtype=dtype)
    d_hidden = cuda.device_array((n_steps if hidden_grads else 0, batch, hid), dtype=dtype)
    threads, shared_bytes, in_shared = launch_config(hid, dtype, backward=True)
    gru_recurrence_backward[batch, threads, 0, shared_bytes](
        d_w_hh, d_h0, d_gates, d_hn, d_hidden_states, d_d_out, d_dh_n, bool(reverse), dz, dh0,
        d_hidden, in_shared)

    d_input = cuda.device_array((n_steps, batch, n_in), dtype=dtype)
    d_w_ih_out = cuda.device_array((width, n_in), dtype=dtype)
    d_w_hh_out = cuda.device_array((width, hid), dtype=dtype)
    dz2 = dz.reshape(rows, width + hid)
    dz_ih = dz2[:, :width]  # strided column views: the GEMM kernels index them as they are
    prev = previous_states(d_hidden_states, d_h0, reverse).reshape(rows, hid)
    # every weight gradient is one GEMM over the T*B rows; W_hh's n rows pair with dn * r
    blas.gemm(dz_ih, d_x.reshape(rows, n_in), d_w_ih_out, trans_a=True)
    blas.gemm(dz_ih, d_w_ih, d_input.reshape(rows, n_in))
    blas.gemm(dz2[:, :2 * hid], prev, d_w_hh_out[:2 * hid], trans_a=True)
    blas.gemm(dz2[:, width:], prev, d_w_hh_out[2 * hid:], trans_a=True)
    # bias gradients: one column sum of all four dz blocks, then the ih and hh selections
    sums = cuda.device_array(width + hid, dtype=dtype)
    blas.sum_rows(dz2, sums)
    d_b_ih = cuda.device_array(width, dtype=dtype)
    d_b_ih.copy_to_device(sums[:width])
    d_b_hh = cuda.device_array(width, dtype=dtype)
    d_b_hh[:2 * hid].copy_to_device(sums[:2 * hid])
    d_b_hh[2 * hid:].copy_to_device(sums[width:])
    out = {"input": d_input, "h0": dh0, "weight_ih": d_w_ih_out, "weight_hh": d_w_hh_out,
           "bias_ih": d_b_ih, "bias_hh": d_b_hh, "dz": dz}
    if hidden_grads:
        out["hidden"] = d_hidden
    return _result(out, to_host)
