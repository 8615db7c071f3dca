"""Vanilla (Elman) RNN kernels for CUDA: forward recurrence and backpropagation through time.

The GPU twin of :mod:`rnnlab.kernels.cpu.vanilla`: the same names, the same argument order and
the same math, including the deep-transition layers (Pascanu et al. 2014)::

    u_0<t> = g(W_hh a<t-1> + W_ih x<t> + b),  u_k<t> = g(W_tr_k u_{k-1}<t> + b_tr_k),  a<t> = u_D<t>

Design (see DESIGN.md, "CUDA habits"):

- **Persistent kernels.** :func:`rnn_recurrence` and :func:`rnn_recurrence_backward` run the whole
  time loop in one launch: one thread block per sequence (batch row), one thread per hidden unit
  (a thread owns units ``tid, tid + blockDim, ...`` when ``H`` exceeds the block), the state
  vector in shared memory, double-buffered so that a step costs one ``cuda.syncthreads()``
  (``D + 1`` with ``D`` deep-transition layers).
- **W_hh in shared memory** (dynamic shared memory, ``H*H + 3H`` elements) when it fits in the
  default 48 KB a block may use without opting in (:data:`SHARED_MEMORY_BYTES`): float32 up to
  ``H = 109``, float64 up to ``H = 76`` (:func:`weights_fit_in_shared`). Above that the same
  kernels read ``W_hh`` from global memory (coalesced; the matrix stays in L1/L2), selected by
  their last argument ``w_in_shared``, which plays the role of the CPU kernels' ``n_chunks``.
  Deep-transition weights are always read from global memory.
- **GEMMs outside the loop.** :func:`rnn_layer_forward` forms the input projection of all ``T*B``
  rows with one device GEMM before the loop; :func:`rnn_layer_backward` forms every weight
  gradient with one device GEMM over ``T*B`` rows after it (:mod:`rnnlab.kernels.cuda.blas`).
  Arrays stay on the device between kernels; the host wrappers copy in at the start and out at
  the end only (and not at all when given device arrays and ``to_host=False``).
- Deterministic: no atomics, every sum in a fixed order.

- **Cooperative grid at large H, small B.** One block per sequence leaves most of a large GPU
  idle at B = 1. :func:`rnn_recurrence_grid` and :func:`rnn_recurrence_backward_grid` spread the
  hidden units over the blocks of a cooperative grid (each block owns ``units`` rows of
  ``W_hh``, their columns of ``W_hh^T`` in its shared memory when they fit) and synchronise the
  grid once per step with ``cuda.cg.this_grid().sync()``. The wrappers pick the variant
  (:func:`choose_algorithm`, ``algorithm="auto"``).

Importing this module needs ``numba-cuda`` (not a GPU): the kernels compile lazily at their first
launch. Set ``NUMBA_ENABLE_CUDASIM=1`` before importing :mod:`numba.cuda` to run them in Numba's
CUDA simulator.
"""

import math

import numpy as np

try:
    from numba import cuda
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "rnnlab.kernels.cuda needs the numba-cuda package (pip install 'numba-cuda[cu13]')"
    ) from exc

from ...activations import activate, derivative_from_output
from . import blas

#: Dynamic shared memory a block may use without opting in (bytes). :func:`rnn_layer_forward`
#: and :func:`rnn_layer_backward` keep W_hh in shared memory only when it fits in this.
SHARED_MEMORY_BYTES = 48 * 1024

#: Most threads per block (one thread per hidden unit up to this).
MAX_THREADS = 1024


@cuda.jit
def rnn_recurrence(w_hh_t, w_tr_t, b_tr, h0, act, reverse, states, w_in_shared):
    """Run the recurrence of one layer in one direction, in place (one launch, all steps).

    Parameters
    ----------
    w_hh_t : device array, shape (H, H)
        The *transpose* of ``W_hh`` (C-contiguous): thread ``i`` reads column ``i``, so a warp
        reads consecutive addresses (no shared-memory bank conflicts).
    w_tr_t : device array, shape (D, H, H)
        Transposes of the deep-transition weights (``D = 0`` for a plain cell).
    b_tr : device array, shape (D, H)
        Deep-transition biases.
    h0 : device array, shape (B, H)
        Initial hidden state.
    act : int
        Activation code (:mod:`rnnlab.activations`).
    reverse : bool
        Process the sequence from ``t = T-1`` down to ``0``.
    states : device array, shape (D + 1, T, B, H)
        On entry ``states[0]`` holds the input projection ``W_ih x<t> + b``; on exit
        ``states[k, t]`` is ``u_k<t>`` and ``states[D]`` the hidden states.
    w_in_shared : bool
        Copy ``W_hh^T`` into dynamic shared memory (the launch must then provide
        ``(H*H + 2H) * itemsize`` bytes; otherwise ``2H * itemsize``).

    Notes
    -----
    Launch with ``grid = B`` (one block per sequence) and any block size (a multiple of 32,
    ideally ``min(roundup(H, 32), 1024)``).
    """
    depth = w_tr_t.shape[0]
    n_steps = states.shape[1]
    batch = states.shape[2]
    hidden = states.shape[3]
    b = cuda.blockIdx.x
    if b >= batch:
        return  # whole block: no thread of it reaches a barrier
    tid = cuda.threadIdx.x
    n_threads = cuda.blockDim.x
    smem = cuda.shared.array(0, dtype=states.dtype)
    # layout: [W_hh^T (H*H, if w_in_shared)] [vector buffer 0 (H)] [vector buffer 1 (H)]
    v_off = hidden * hidden if w_in_shared else 0
    if w_in_shared:
        for e in range(tid, hidden * hidden, n_threads):
            smem[e] = w_hh_t[e // hidden, e % hidden]
    for i in range(tid, hidden, n_threads):
        smem[v_off + i] = h0[b, i]
    cuda.syncthreads()
    # The chain of vectors a<t-1> -> u_0<t> -> ... -> u_D<t> = a<t>: vector number m lives in
    # buffer m % 2. Phase m reads buffer (m-1) % 2 and writes buffer m % 2, then one barrier;
    # a buffer is overwritten only two phases after it was read, i.e. after a barrier.
    m = 0
    for s in range(n_steps):
        t = n_steps - 1 - s if reverse else s
        src = v_off + (m % 2) * hidden
        dst = v_off + ((m + 1) % 2) * hidden
        for i in range(tid, hidden, n_threads):
            z = states[0, t, b, i]
            if w_in_shared:
                for j in range(hidden):
                    z += smem[src + j] * smem[j * hidden + i]
            else:
                for j in range(hidden):
                    z += smem[src + j] * w_hh_t[j, i]
            a = activate(act, z)
            states[0, t, b, i] = a
            smem[dst + i] = a
        m += 1
        cuda.syncthreads()
        for k in range(1, depth + 1):
            src = v_off + (m % 2) * hidden
            dst = v_off + ((m + 1) % 2) * hidden
            for i in range(tid, hidden, n_threads):
                z = b_tr[k - 1, i]
                for j in range(hidden):
                    z += smem[src + j] * w_tr_t[k - 1, j, i]
                u = activate(act, z)
                states[k, t, b, i] = u
                smem[dst + i] = u
            m += 1
            cuda.syncthreads()


@cuda.jit
def rnn_recurrence_backward(w_hh, w_tr, states, d_out, dh_n, act, reverse, dz, dh0, w_in_shared):
    """Backpropagate through time for one layer in one direction (one launch, all steps).

    Parameters
    ----------
    w_hh : device array, shape (H, H)
        Recurrent weights (PyTorch layout, not transposed): thread ``j`` reads column ``j``.
    w_tr : device array, shape (D, H, H)
        Deep-transition weights (PyTorch layout).
    states : device array, shape (D + 1, T, B, H)
        The ``states`` filled by :func:`rnn_recurrence`.
    d_out : device array, shape (T, B, H)
        Gradient of the loss with respect to the layer's output ``a<t>`` at every step, not
        including the recurrent path.
    dh_n : device array, shape (B, H)
        Gradient with respect to the final hidden state.
    act : int
        Activation code.
    reverse : bool
        Direction used in the forward pass.
    dz : device array, shape (D + 1, T, B, H)
        Output: gradient with respect to every pre-activation (``dz[0]`` the cell's own,
        ``dz[k]`` transition layer ``k``).
    dh0 : device array, shape (B, H)
        Output: gradient with respect to the initial hidden state.
    w_in_shared : bool
        Copy ``W_hh`` into dynamic shared memory (the launch must then provide
        ``(H*H + 3H) * itemsize`` bytes; otherwise ``3H * itemsize``).

    Notes
    -----
    Launch with ``grid = B`` and any block size (see :func:`rnn_recurrence`).
    """
    depth = w_tr.shape[0]
    n_steps = states.shape[1]
    batch = states.shape[2]
    hidden = states.shape[3]
    b = cuda.blockIdx.x
    if b >= batch:
        return
    tid = cuda.threadIdx.x
    n_threads = cuda.blockDim.x
    smem = cuda.shared.array(0, dtype=states.dtype)
    # layout: [W_hh (H*H, if w_in_shared)] [dz buffer 0 (H)] [dz buffer 1 (H)] [g (H)]
    # g[i] is owned by the thread of unit i: dL/da<t> through a<t+1> (the carry), then the total
    # dL/da<t>, then dL/du_k<t> going down the transition layers.
    v_off = hidden * hidden if w_in_shared else 0
    g_off = v_off + 2 * hidden
    if w_in_shared:
        for e in range(tid, hidden * hidden, n_threads):
            smem[e] = w_hh[e // hidden, e % hidden]
    for i in range(tid, hidden, n_threads):
        smem[g_off + i] = dh_n[b, i]
    cuda.syncthreads()
    zero = states.dtype.type(0)
    m = 0  # phase counter: phase m writes dz buffer m % 2, one barrier, then reads it
    for s in range(n_steps - 1, -1, -1):
        t = n_steps - 1 - s if reverse else s
        for i in range(tid, hidden, n_threads):
            smem[g_off + i] = d_out[t, b, i] + smem[g_off + i]
        for k in range(depth, 0, -1):
            buf = v_off + (m % 2) * hidden
            for i in range(tid, hidden, n_threads):
                d = smem[g_off + i] * derivative_from_output(act, states[k, t, b, i])
                dz[k, t, b, i] = d
                smem[buf + i] = d
            cuda.syncthreads()
            for j in range(tid, hidden, n_threads):
                acc = zero
                for i in range(hidden):
                    acc += smem[buf + i] * w_tr[k - 1, i, j]
                smem[g_off + j] = acc
            m += 1
        buf = v_off + (m % 2) * hidden
        for i in range(tid, hidden, n_threads):
            d = smem[g_off + i] * derivative_from_output(act, states[0, t, b, i])
            dz[0, t, b, i] = d
            smem[buf + i] = d
        cuda.syncthreads()
        for j in range(tid, hidden, n_threads):
            acc = zero
            if w_in_shared:
                for i in range(hidden):
                    acc += smem[buf + i] * smem[i * hidden + j]
            else:
                for i in range(hidden):
                    acc += smem[buf + i] * w_hh[i, j]
            smem[g_off + j] = acc
        m += 1
    for j in range(tid, hidden, n_threads):
        dh0[b, j] = smem[g_off + j]


# --- cooperative-grid variants (large H, small B) ----------------------------------------------

@cuda.jit
def rnn_recurrence_grid(w_hh_t, w_tr_t, b_tr, h0, act, reverse, states, units, w_in_shared):
    """:func:`rnn_recurrence` on a cooperative grid: every block owns ``units`` hidden units
    (rows of ``W_hh``) of every sequence, and the grid synchronises once per step
    (``cuda.cg.this_grid().sync()``, ``D + 1`` times with ``D`` transition layers).

    For large ``H`` and a small batch, where one block per sequence would leave most of the GPU
    idle. One launch runs all steps; the states array itself carries ``a<t-1>`` between blocks.

    Parameters
    ----------
    w_hh_t, w_tr_t, b_tr, h0, act, reverse, states
        As :func:`rnn_recurrence`.
    units : int
        Hidden units per block: block ``g`` owns units ``[g*units, (g+1)*units)``. Thread
        ``tid`` computes unit ``tid % units`` for the sequences ``tid // units``,
        ``tid // units + lanes``, ... with ``lanes = blockDim // units``.
    w_in_shared : bool
        Copy the block's columns of ``W_hh^T`` (``H * units`` elements) into dynamic shared
        memory.

    Notes
    -----
    Launch with ``ceil(H / units)`` blocks of at least ``units`` threads, all co-resident
    (numba-cuda launches a kernel that uses grid sync cooperatively). In Numba's simulator
    grid sync is only right with a single block (``units = H``).
    """
    depth = w_tr_t.shape[0]
    n_steps = states.shape[1]
    batch = states.shape[2]
    hidden = states.shape[3]
    grid = cuda.cg.this_grid()
    tid = cuda.threadIdx.x
    u = tid % units
    lane = tid // units
    lanes = cuda.blockDim.x // units
    i = cuda.blockIdx.x * units + u
    active = lane < lanes and i < hidden
    smem = cuda.shared.array(0, dtype=states.dtype)
    if w_in_shared:
        i0 = cuda.blockIdx.x * units
        for e in range(tid, hidden * units, cuda.blockDim.x):
            if i0 + e % units < hidden:
                smem[e] = w_hh_t[e // units, i0 + e % units]
        cuda.syncthreads()
    for s in range(n_steps):
        t = n_steps - 1 - s if reverse else s
        tp = t + 1 if reverse else t - 1
        if active:
            for b in range(lane, batch, lanes):
                z = states[0, t, b, i]
                for j in range(hidden):
                    h = h0[b, j] if s == 0 else states[depth, tp, b, j]
                    if w_in_shared:
                        z += h * smem[j * units + u]
                    else:
                        z += h * w_hh_t[j, i]
                states[0, t, b, i] = activate(act, z)
        grid.sync()  # a<t> (or u_0<t>) complete in every block
        for k in range(1, depth + 1):
            if active:
                for b in range(lane, batch, lanes):
                    z = b_tr[k - 1, i]
                    for j in range(hidden):
                        z += states[k - 1, t, b, j] * w_tr_t[k - 1, j, i]
                    states[k, t, b, i] = activate(act, z)
            grid.sync()


@cuda.jit
def rnn_recurrence_backward_grid(w_hh, w_tr, states, d_out, dh_n, act, reverse, dz, carry,
                                 units, w_in_shared):
    """:func:`rnn_recurrence_backward` on a cooperative grid (see :func:`rnn_recurrence_grid`):
    block ``g`` owns units ``[g*units, (g+1)*units)``, one grid sync per step and layer.

    Parameters
    ----------
    w_hh, w_tr, states, d_out, dh_n, act, reverse, dz
        As :func:`rnn_recurrence_backward`.
    carry : device array, shape (B, H)
        Output: ``dL/da<t-1>`` through the recurrence, ending as the gradient with respect to
        the initial state (``dh0``). Entry ``(b, i)`` is only ever touched by the thread that
        owns unit ``i`` of sequence ``b``, so it needs no barrier.
    units, w_in_shared
        As :func:`rnn_recurrence_grid`; the shared copy holds the block's columns of ``W_hh``.
    """
    depth = w_tr.shape[0]
    n_steps = states.shape[1]
    batch = states.shape[2]
    hidden = states.shape[3]
    grid = cuda.cg.this_grid()
    tid = cuda.threadIdx.x
    u = tid % units
    lane = tid // units
    lanes = cuda.blockDim.x // units
    j = cuda.blockIdx.x * units + u
    active = lane < lanes and j < hidden
    smem = cuda.shared.array(0, dtype=states.dtype)
    if w_in_shared:
        j0 = cuda.blockIdx.x * units
        for e in range(tid, hidden * units, cuda.blockDim.x):
            if j0 + e % units < hidden:
                smem[e] = w_hh[e // units, j0 + e % units]
        cuda.syncthreads()
    if active:
        for b in range(lane, batch, lanes):
            carry[b, j] = dh_n[b, j]
    zero = states.dtype.type(0)
    for s in range(n_steps - 1, -1, -1):
        t = n_steps - 1 - s if reverse else s
        # carry[b, j] becomes the total dL/du_k<t> of the owned unit, going down the layers
        if active:
            for b in range(lane, batch, lanes):
                carry[b, j] = d_out[t, b, j] + carry[b, j]
        for k in range(depth, 0, -1):
            if active:
                for b in range(lane, batch, lanes):
                    dz[k, t, b, j] = carry[b, j] * derivative_from_output(act, states[k, t, b, j])
            grid.sync()
            if active:
                for b in range(lane, batch, lanes):
                    acc = zero
                    for i in range(hidden):
                        acc += dz[k, t, b, i] * w_tr[k - 1, i, j]
                    carry[b, j] = acc
        if active:
            for b in range(lane, batch, lanes):
                dz[0, t, b, j] = carry[b, j] * derivative_from_output(act, states[0, t, b, j])
        grid.sync()  # dz<t> complete in every block
        if active:
            for b in range(lane, batch, lanes):
                acc = zero
                for i in range(hidden):
                    if w_in_shared:
                        acc += dz[0, t, b, i] * smem[i * units + u]
                    else:
                        acc += dz[0, t, b, i] * w_hh[i, j]
                carry[b, j] = acc
        # the next step's reads of dz are at another t: no second sync needed


# --- launch configuration -----------------------------------------------------------------------

def weights_fit_in_shared(hidden, dtype):
    """Whether ``W_hh`` (plus the kernels' three H-vectors) fits in :data:`SHARED_MEMORY_BYTES`.

    float32: ``H <= 109``; float64: ``H <= 76``.
    """
    return (hidden * hidden + 3 * hidden) * np.dtype(dtype).itemsize <= SHARED_MEMORY_BYTES


def launch_config(hidden, dtype, n_vectors):
    """Return ``(threads per block, dynamic shared bytes, w_in_shared)`` for a recurrence kernel
    that keeps ``n_vectors`` H-vectors in shared memory (2 forward, 3 backward)."""
    threads = min(MAX_THREADS, 32 * max(1, math.ceil(hidden / 32)))
    shared = weights_fit_in_shared(hidden, dtype)
    n_elem = (hidden * hidden if shared else 0) + n_vectors * hidden
    return threads, n_elem * np.dtype(dtype).itemsize, shared


#: Hidden units per block of the cooperative-grid kernels (one warp's worth).
GRID_UNITS = 32

#: Sequences a grid block works on at once (threads per block = GRID_UNITS * GRID_LANES).
GRID_LANES = 8

ALGORITHMS = ("auto", "block", "grid")


def choose_algorithm(algorithm, hidden, batch, dtype):
    """``"block"`` (one block per sequence) or ``"grid"`` (cooperative grid) for a layer.

    ``"auto"`` takes the grid when ``W_hh`` does not fit in a block's shared memory and the grid
    has more blocks than the batch has sequences (``ceil(H / GRID_UNITS) > B``): large H, small
    B. A first rule, to be tuned on a device.
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    if algorithm != "auto":
        return algorithm
    if not weights_fit_in_shared(hidden, dtype) and math.ceil(hidden / GRID_UNITS) > batch:
        return "grid"
    return "block"


def grid_config(hidden, batch, dtype):
    """``(blocks, threads, units, shared bytes, w_in_shared)`` for a cooperative-grid kernel.

    In Numba's CUDA simulator (where grid sync is only right within one block) a single block
    owns every unit. On a device, the units per block double until there are no more blocks
    than multiprocessors (one block per SM is always co-resident, which a cooperative launch
    needs).
    """
    itemsize = np.dtype(dtype).itemsize
    if _simulator():
        units = hidden
        threads = hidden * max(1, min(batch, MAX_THREADS // max(hidden, 1), GRID_LANES))
    else:
        n_sm = cuda.get_current_device().MULTIPROCESSOR_COUNT
        units = GRID_UNITS
        while math.ceil(hidden / units) > n_sm:
            units *= 2
        lanes = max(1, min(batch, GRID_LANES, MAX_THREADS // units))
        threads = units * lanes
    blocks = math.ceil(hidden / units)
    in_shared = hidden * units * itemsize <= SHARED_MEMORY_BYTES
    return blocks, threads, units, (hidden * units * itemsize if in_shared else 0), in_shared


def _simulator():
    from numba.core import config

    return bool(getattr(config, "ENABLE_CUDASIM", False))


def _dtype_of(x):
    if blas.is_device_array(x) and not getattr(x, "__cuda_ndarray__", False):
        x = cuda.as_cuda_array(x)  # CuPy / PyTorch: read the dtype through the CAI
    dtype = np.dtype(x.dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"the CUDA kernels run in float32 or float64, got {dtype}")
    return dtype


def _result(arrays, to_host):
    if not to_host:
        return arrays
    return {k: a.copy_to_host() for k, a in arrays.items()}


# --- host wrappers ------------------------------------------------------------------------------

def rnn_layer_forward(x, w_ih, w_hh, bias, w_tr, b_tr, h0, act, reverse=False, to_host=True,
                      algorithm="auto"):
    """Forward pass of one vanilla layer in one direction, on the GPU.

    Same arguments and result as :func:`rnnlab.kernels.cpu.vanilla.rnn_layer_forward`; every
    array may be a NumPy array (copied to the device once) or a device array (used in place:
    C-contiguous, of ``x``'s dtype).

    Parameters
    ----------
    x : array, shape (T, B, I)
        Layer input (float32 or float64; fixes the dtype of the computation).
    w_ih : array, shape (H, I)
        Input weights.
    w_hh : array, shape (H, H)
        Recurrent weights.
    bias : array, shape (H,) or None
        ``b_ih + b_hh``.
    w_tr : array, shape (D, H, H)
        Deep-transition weights (``D = 0`` for the plain cell).
    b_tr : array, shape (D, H)
        Deep-transition biases.
    h0 : array, shape (B, H)
        Initial state.
    act : int
        Activation code.
    reverse : bool, optional
        Read the sequence backwards.
    to_host : bool, optional
        Return a NumPy array (default) or leave the result on the device, e.g. to pass it to
        :func:`rnn_layer_backward` without a round trip.
    algorithm : {"auto", "block", "grid"}, optional
        One block per sequence (:func:`rnn_recurrence`) or a cooperative grid over the hidden
        units (:func:`rnn_recurrence_grid`); see :func:`choose_algorithm`.

    Returns
    -------
    states : ndarray or device array, shape (D + 1, T, B, H)
        ``states[D]`` are the hidden states; the others the deep-transition intermediates.
    """
    dtype = _dtype_of(x)
    n_steps, batch, n_in = x.shape
    hidden = w_hh.shape[0]
    depth = w_tr.shape[0]
    algorithm = choose_algorithm(algorithm, hidden, batch, dtype)
    d_x = blas.to_device(x, dtype)
    d_w_ih = blas.to_device(w_ih, dtype)
    d_w_hh = blas.to_device(w_hh, dtype)
    d_w_tr = blas.to_device(w_tr, dtype)
    d_b_tr = blas.to_device(b_tr, dtype)
    d_h0 = blas.to_device(h0, dtype)
    states = cuda.device_array((depth + 1, n_steps, batch, hidden), dtype=dtype)
    if n_steps == 0 or batch == 0 or hidden == 0:
        return states.copy_to_host() if to_host else states
    # the input projection of every step at once: one GEMM over T*B rows
    proj = states[0].reshape(n_steps * batch, hidden)
    blas.gemm(d_x.reshape(n_steps * batch, n_in), d_w_ih, proj, trans_b=True)
    if bias is not None:
        blas.bias_add(proj, blas.to_device(bias, dtype))
    w_hh_t = blas.transposed(d_w_hh)
    w_tr_t = cuda.device_array((depth, hidden, hidden), dtype=dtype)
    for k in range(depth):
        blas.transpose[blas.launch_1d(hidden * hidden)](d_w_tr[k], w_tr_t[k])
    if algorithm == "grid":
        blocks, threads, units, shared_bytes, in_shared = grid_config(hidden, batch, dtype)
        rnn_recurrence_grid[blocks, threads, 0, shared_bytes](
            w_hh_t, w_tr_t, d_b_tr, d_h0, act, bool(reverse), states, units, in_shared)
    else:
        threads, shared_bytes, in_shared = launch_config(hidden, dtype, 2)
        rnn_recurrence[batch, threads, 0, shared_bytes](w_hh_t, w_tr_t, d_b_tr, d_h0, act,
                                                       bool(reverse), states, in_shared)
    return states.copy_to_host() if to_host else states


def rnn_layer_backward(x, w_ih, w_hh, w_tr, h0, states, d_out, dh_n, act, reverse=False,
                       to_host=True, algorithm="auto"):
    """Backward pass (BPTT) of one vanilla layer in one direction, on the GPU.

    Same arguments and result as :func:`rnnlab.kernels.cpu.vanilla.rnn_layer_backward`; arrays
    may be NumPy arrays or device arrays (see :func:`rnn_layer_forward`).

    Parameters
    ----------
    x, w_ih, w_hh, w_tr, h0, act, reverse
        As given to :func:`rnn_layer_forward`.
    states : array, shape (D + 1, T, B, H)
        Returned by :func:`rnn_layer_forward` (keep it on the device with ``to_host=False``).
    d_out : array, shape (T, B, H)
        Gradient with respect to the layer's outputs.
    dh_n : array, shape (B, H)
        Gradient with respect to the final hidden state.
    to_host : bool, optional
        Return NumPy arrays (default) or device arrays.
    algorithm : {"auto", "block", "grid"}, optional
        As :func:`rnn_layer_forward` (:func:`rnn_recurrence_backward_grid` for ``"grid"``).

    Returns
    -------
    dict
        ``"input"`` (T, B, I), ``"h0"`` (B, H), ``"weight_ih"``, ``"weight_hh"``, ``"bias"``,
        ``"weight_tr"`` (D, H, H), ``"bias_tr"`` (D, H) and ``"dz"`` (D + 1, T, B, H), as on
        the CPU. Weight gradients sum over ``T*B`` rows in float64 (also for float32).
    """
    dtype = _dtype_of(x)
    depth, n_steps, batch, hidden = states.shape
    depth -= 1
    n_in = x.shape[2]
    rows = n_steps * batch
    if rows == 0 or hidden == 0:
        raise ValueError("rnn_layer_backward needs T, B and H >= 1")
    algorithm = choose_algorithm(algorithm, hidden, batch, dtype)
    d_x = blas.to_device(x, dtype)
    d_w_ih = blas.to_device(w_ih, dtype)
    d_w_hh = blas.to_device(w_hh, dtype)
    d_w_tr = blas.to_device(w_tr, dtype)
    d_h0 = blas.to_device(h0, dtype)
    d_states = blas.to_device(states, dtype)
    d_d_out = blas.to_device(d_out, dtype)
    d_dh_n = blas.to_device(dh_n, dtype)

    dz = cuda.device_array(d_states.shape, dtype=dtype)
    dh0 = cuda.device_array((batch, hidden), dtype=dtype)
    d_input = cuda.device_array((n_steps, batch, n_in), dtype=dtype)
    d_w_ih_out = cuda.device_array((hidden, n_in), dtype=dtype)
    d_w_hh_out = cuda.device_array((hidden, hidden), dtype=dtype)
    d_bias = cuda.device_array(hidden, dtype=dtype)
    d_w_tr_out = cuda.device_array((depth, hidden, hidden), dtype=dtype)
    d_b_tr = cuda.device_array((depth, hidden), dtype=dtype)
    out = {"input": d_input, "h0": dh0, "weight_ih": d_w_ih_out, "weight_hh": d_w_hh_out,
           "bias": d_bias, "weight_tr": d_w_tr_out, "bias_tr": d_b_tr, "dz": dz}

    if algorithm == "grid":
        blocks, threads, units, shared_bytes, in_shared = grid_config(hidden, batch, dtype)
        rnn_recurrence_backward_grid[blocks, threads, 0, shared_bytes](
            d_w_hh, d_w_tr, d_states, d_d_out, d_dh_n, act, bool(reverse), dz, dh0, units,
            in_shared)
    else:
        threads, shared_bytes, in_shared = launch_config(hidden, dtype, 3)
        rnn_recurrence_backward[batch, threads, 0, shared_bytes](
            d_w_hh, d_w_tr, d_states, d_d_out, d_dh_n, act, bool(reverse), dz, dh0, in_shared)

    dz0 = dz[0].reshape(rows, hidden)
    # a<t-1> for every row: h0 at the first step of the direction, the layer's states elsewhere
    prev = cuda.device_array((n_steps, batch, hidden), dtype=dtype)
    if reverse:
        if n_steps > 1:
            prev[0:n_steps - 1].copy_to_device(d_states[depth, 1:n_steps])
        prev[n_steps - 1].copy_to_device(d_h0)
    else:
        prev[0].copy_to_device(d_h0)
        if n_steps > 1:
            prev[1:n_steps].copy_to_device(d_states[depth, 0:n_steps - 1])
    # every weight gradient is one GEMM over the T*B rows
    blas.gemm(dz0, prev.reshape(rows, hidden), d_w_hh_out, trans_a=True)
    blas.gemm(dz0, d_x.reshape(rows, n_in), d_w_ih_out, trans_a=True)
    blas.gemm(dz0, d_w_ih, d_input.reshape(rows, n_in))
    blas.sum_rows(dz0, d_bias)
    for k in range(1, depth + 1):
        dz_k = dz[k].reshape(rows, hidden)
        blas.gemm(dz_k, d_states[k - 1].reshape(rows, hidden), d_w_tr_out[k - 1], trans_a=True)
        blas.sum_rows(dz_k, d_b_tr[k - 1])
    return _result(out, to_host)
