"""How many BLAS threads the kernels' matrix products may use.

OpenBLAS worker threads spin for a while after every call. On a small machine they then compete
with Numba's own threads running the recurrence that follows: measured here (2 cores, T = 1000,
B = 1, H = 64) the recurrence ran 3-6x slower right after a two-thread GEMM. Small products gain
nothing from a second thread anyway, so the kernels run them on one; large ones keep the library's
default. threadpoolctl does the switching (about 10 us a call).
"""

import contextlib

#: Products with fewer multiply-adds than this run on one BLAS thread.
SINGLE_THREAD_WORK = 1 << 24

_controller = None


def _get_controller():
    global _controller
    if _controller is None:
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()
    return _controller


@contextlib.contextmanager
def blas_threads_for(work):
    """Limit BLAS to one thread inside the block when ``work`` (multiply-adds) is small.

    Parameters
    ----------
    work : int
        Multiply-adds of the largest product in the block.
    """
    if work >= SINGLE_THREAD_WORK:
        yield
        return
    with _get_controller().limit(limits=1, user_api="blas"):
        yield
