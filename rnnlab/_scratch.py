"""Scratch memory for the CPU kernels: buffers reused between calls for the arrays that do not
outlive a call (gate activations, cell states, ``dz``).

Fresh memory costs a page fault per page on first touch; in a run of T = 1000, B = 1, H = 64
that was a quarter of the time of a forward + backward pass. In a virtual machine that hands
freed memory back to its host it costs far more: here (2-core KVM guest), float32 LSTM
T = 1000, B = 128, H = 256, the backward recurrence took 0.5-0.6 s with its 0.5 GB dz
already touched but 1.1-1.4 s (of which 0.5-1.4 s system time) into fresh memory, whenever
another allocation had been freed in between (as every peer's call in a benchmark does).
Buffers that never leave a call (gate activations, cell states, dz) come from a per-thread
pool instead, kept between calls up to SCRATCH_BYTES.

The pool is sized for the largest calls of the benchmark grid: GRU float64, T = 1000, B = 128,
H = 512 has 4.2 GB of gates, ``hn`` and dz; with a pool of 1 GiB they were faulted in afresh
every call and its backward recurrence took 3.5 s, against 1.9 s reusing them (fwd+BPTT 12.1
against 10.6 s). Holding the pool costs no more than the calls' own peak: a request the pool
cannot serve (the shapes changed) frees what it kept before new memory is taken.
"""

import os
import threading

import numpy as np


def _default_scratch_bytes():
    """``RNNLAB_SCRATCH_BYTES`` if set, else a quarter of the machine's memory."""
    env = os.environ.get("RNNLAB_SCRATCH_BYTES", "").strip()
    if env:
        try:
            value = int(float(env))
        except ValueError:
            value = -1
        if value < 0:
            raise ValueError("RNNLAB_SCRATCH_BYTES must be a number of bytes >= 0 (e.g. 0, "
                             f"1e9), got {env!r}")
        return value
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        physical = 1 << 31
    return physical // 4


#: Most bytes of scratch buffers each thread keeps between calls (0: none). Set by the
#: environment variable ``RNNLAB_SCRATCH_BYTES`` when rnnlab is imported, or assign it;
#: :func:`release_scratch` frees what the calling thread keeps.
SCRATCH_BYTES = _default_scratch_bytes()

_scratch = threading.local()


class ScratchBuffers:
    """Context manager handing out reusable buffers for arrays that do not outlive a call.

    Inside ``with ScratchBuffers() as scratch:``, ``scratch.empty(shape, dtype)`` behaves as
    ``np.empty`` but may return (uninitialised) memory used by an earlier call on this thread.
    On exit every buffer handed out goes back to the thread's pool (the most recent ones first,
    then those kept but not asked for, up to :data:`SCRATCH_BYTES`): none of them may be
    referenced after the block. A request of a shape and dtype the pool has none of frees the
    whole pool first, so that a change of shapes never holds the old buffers beside the new.
    """

    def __enter__(self):
        # take the thread's pool: a nested block starts from an empty one
        self._free = getattr(_scratch, "free", None) or {}
        _scratch.free = {}
        self._used = []
        return self

    def empty(self, shape, dtype):
        """An uninitialised array, as ``np.empty(shape, dtype)``."""
        key = (tuple(shape), np.dtype(dtype))
        stack = self._free.get(key)
        if stack:
            arr = stack.pop()
        else:
            self._free.clear()  # before np.empty: the old pool must not add to this call's peak
            arr = np.empty(key[0], dtype=key[1])
        self._used.append(arr)
        return arr

    def __exit__(self, *exc):
        keep, total = {}, 0
        unused = [arr for stack in self._free.values() for arr in stack]
        for arr in self._used[::-1] + unused:
            if total + arr.nbytes <= SCRATCH_BYTES:
                keep.setdefault((arr.shape, arr.dtype), []).append(arr)
                total += arr.nbytes
        _scratch.free = keep
        self._used = self._free = None
        return False


def release_scratch():
    """Free the scratch buffers kept by this thread (see :class:`ScratchBuffers`)."""
    _scratch.free = {}
