"""How many BLAS threads the kernels' matrix products may use.

OpenBLAS worker threads spin for a while after every call. On a small machine they then compete
with Numba's own threads running the recurrence that follows: measured here (2 cores, T = 1000,
B = 1, H = 64) the recurrence ran 3-6x slower right after a two-thread GEMM. Small products gain
nothing from a second thread anyway, so the kernels run them on one; large ones keep the library's
default. threadpoolctl finds the libraries once; the switch then calls their own
set_num_threads (a few microseconds).
"""

import contextlib
import threading

#: Products with fewer multiply-adds than this run on one BLAS thread.
SINGLE_THREAD_WORK = 1 << 24

_libraries = None
_lock = threading.Lock()
_inside = 0  # threads now inside a limiting block
_saved = []  # (library, its thread count before the outermost block)


def _blas_libraries():
    global _libraries
    if _libraries is None:
        # the BLAS the CPU kernels call (kernels/cpu/blas.py) must be loaded before the list
        # is made, or it is never limited: called from Numba's threads with its own threads
        # on, OpenBLAS warns "Detect OpenMP Loop and this application may hang"
        import scipy.linalg.cython_blas  # noqa: F401
        from threadpoolctl import ThreadpoolController

        _libraries = [lib for lib in ThreadpoolController().lib_controllers
                      if lib.user_api == "blas"]
    return _libraries


def _set_threads(lib, n):
    # threadpoolctl >= 3.8 lets only one Python thread at a time set OpenBLAS's process-wide
    # count and silently ignores the others (seen here: a limit entered on a worker thread after
    # the main thread had used one did nothing). Our own counter already coordinates threads,
    # so call the library's setter directly where threadpoolctl has one.
    getattr(lib, "_real_set_num_threads", lib.set_num_threads)(n)


@contextlib.contextmanager
def blas_threads_for(work):
    """Limit BLAS to one thread inside the block when ``work`` (multiply-adds) is small.

    Nested blocks, and blocks entered by several threads at once, share one limit: the
    libraries' thread counts are read when the first block opens and restored when the last one
    closes (a few microseconds; an inner block costs nothing).

    Parameters
    ----------
    work : int
        Multiply-adds of the largest product in the block.
    """
    global _inside, _saved
    if work >= SINGLE_THREAD_WORK:
        yield
        return
    with _lock:
        if _inside == 0:
            _saved = [(lib, lib.num_threads) for lib in _blas_libraries()]
            for lib, n in _saved:
                if n != 1:
                    _set_threads(lib, 1)
        _inside += 1
    try:
        yield
    finally:
        with _lock:
            _inside -= 1
            if _inside == 0:
                for lib, n in _saved:
                    if n != 1:
                        _set_threads(lib, n)
                _saved = []
