"""Provenance columns of every result row: what computed it, where, and how long it took."""

import functools
import platform
import subprocess
from pathlib import Path


@functools.lru_cache(maxsize=None)
def git_commit():
    """The source tree's commit (``+dirty`` with uncommitted changes), or "unknown"."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@functools.lru_cache(maxsize=None)
def cpu_model():
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def driver_provenance():
    """Columns fixed by the process that launches a sweep."""
    from .. import __version__

    return {"rnnlab_version": __version__, "git_commit": git_commit()}


@functools.lru_cache(maxsize=None)
def worker_provenance():
    """Columns fixed by the process that computes a point."""
    import numba
    import numpy

    from .._backend import default_backend

    return {"numba_version": numba.__version__, "numpy_version": numpy.__version__,
            "device": device_name(default_backend()), "host": platform.node()}


def device_name(backend):
    """``"cpu: <model>"``, or ``"cuda: <GPU name>"`` (``"cuda: simulator"`` in Numba's CUDA
    simulator) for the backend that computes by default in this process."""
    if backend != "cuda":
        return f"cpu: {cpu_model()}"
    from numba import cuda
    from numba.core import config

    if getattr(config, "ENABLE_CUDASIM", False):
        return "cuda: simulator"
    name = cuda.get_current_device().name
    return "cuda: " + (name.decode() if isinstance(name, bytes) else str(name))
