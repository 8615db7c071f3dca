"""Backend selection: ``backend="cpu"`` (Numba ``@njit`` kernels) or ``"cuda"`` (``@cuda.jit``).

Models and diagnostics take ``backend=None | "cpu" | "cuda"``; ``None`` means the default, which
is ``"cpu"`` unless the environment variable ``RNNLAB_BACKEND`` says otherwise (so a whole test
suite or experiment can be pointed at the GPU without editing code). Asking for ``"cuda"``
where it cannot run raises :class:`BackendUnavailableError` at once, before any kernel runs;
``import rnnlab`` never needs numba-cuda, the CUDA toolkit or a GPU.
"""

import os

#: The backends rnnlab knows.
BACKENDS = ("cpu", "cuda")

#: Environment variable holding the default backend.
ENV_VAR = "RNNLAB_BACKEND"


class BackendUnavailableError(RuntimeError):
    """``backend="cuda"`` was asked for where no GPU (or simulator) can run the kernels."""


def default_backend():
    """The backend used when none is given: ``$RNNLAB_BACKEND`` or ``"cpu"``."""
    value = os.environ.get(ENV_VAR, "cpu").strip().lower() or "cpu"
    if value not in BACKENDS:
        raise ValueError(f"environment variable {ENV_VAR} must be one of {BACKENDS}, got "
                         f"{value!r}")
    return value


def _cuda_unavailable_reason():
    try:
        from numba import cuda
    except ImportError:
        return ("the numba-cuda package is not installed (pip install 'numba-cuda[cu13]', "
                "or 'rnnlab[cuda]')")
    try:
        if cuda.is_available():
            return None
    except Exception as exc:  # noqa: BLE001 - a broken driver is "unavailable", with its reason
        return f"the CUDA driver failed to start ({type(exc).__name__}: {exc})"
    return ("no CUDA GPU was found (numba.cuda.is_available() is False); set "
            "NUMBA_ENABLE_CUDASIM=1 to run the CUDA kernels in Numba's simulator")


def resolve_backend(backend, name="backend"):
    """Check a ``backend`` argument and return ``"cpu"`` or ``"cuda"``.

    Parameters
    ----------
    backend : {None, "cpu", "cuda"}
        ``None`` gives :func:`default_backend`.
    name : str
        The argument's name, for error messages.

    Raises
    ------
    ValueError
        For an unknown backend.
    BackendUnavailableError
        For ``"cuda"`` without numba-cuda or a GPU (or the simulator).
    """
    if backend is None:
        backend = default_backend()
    if not isinstance(backend, str) or backend.strip().lower() not in BACKENDS:
        raise ValueError(f"{name} must be one of {BACKENDS} (or None for the default), got "
                         f"{backend!r}")
    backend = backend.strip().lower()
    if backend == "cuda":
        reason = _cuda_unavailable_reason()
        if reason is not None:
            raise BackendUnavailableError(f"{name}='cuda' cannot run here: {reason}")
    return backend
