"""CUDA ensemble Lyapunov kernel, block-level QR and Jacobian kernels: CPU agreement in Numba's
CUDA simulator, PTX compilation for sm_90, and lazy import of numba.cuda.

No GPU is needed. The simulator runs in a subprocess (tests/cuda_sim_lyapunov.py) because
``NUMBA_ENABLE_CUDASIM`` must be set before ``numba.cuda`` is first imported; where a GPU is
present the same script also runs on it, at larger sizes (n = k = 128 included).

The subprocess runner and the PTX helpers (``_NO_PTX``, the ``device_free_compile`` fixture)
are those of tests/test_cuda_vanilla.py, imported.
"""

import os
import re
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SIM_SCRIPT = Path(__file__).with_name("cuda_sim_lyapunov.py")
_SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")

cuda = pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")

import test_cuda_vanilla as vanilla_tests  # noqa: E402  (after the skip: it needs numba.cuda)

_NO_PTX = vanilla_tests._NO_PTX
device_free_compile = vanilla_tests.device_free_compile
_run, _gpu_present = vanilla_tests._run, vanilla_tests._gpu_present


# --- CPU and CUDA agree ---

def test_simulator_matches_cpu():
    """Ensemble kernel (every activation, k < n and k = n, m > 1, warm-up, shared/per-network/
    zero drive, frame in shared and global memory, odd block sizes), the QR (random,
    rank-deficient, zero-vector, badly scaled frames) and J_t q, J_t^T v: CUDA (simulated)
    agrees with the CPU kernels to 1e-10."""
    out = _run([str(SIM_SCRIPT)], simulator=True)
    assert "FAIL" not in out
    assert out.count("ok  ") >= 20, out


@pytest.mark.skipif(not _gpu_present(), reason="no CUDA GPU (the simulator test covers the logic)")
def test_gpu_matches_cpu():
    out = _run([str(SIM_SCRIPT), "--gpu"], simulator=False)
    assert "FAIL" not in out


# --- every new kernel compiles to PTX for sm_90 ---

def _signatures():
    from numba import boolean, float32, float64, int64

    from rnnlab.kernels.cuda import jacobian, lyapunov, qr

    f2, f3 = float64[:, ::1], float64[:, :, ::1]
    sigs = [
        pytest.param(lyapunov.lyapunov_ensemble,
                     (f3, f3, f2, int64, f2, int64, int64, int64, int64, f2, f2, int64[::1],
                      boolean), id="lyapunov_ensemble-float64"),
        pytest.param(qr.householder_qr_rows_batched, (f2, int64, int64, f2),
                     id="householder_qr_rows_batched-float64"),
    ]
    for ty in (float32, float64):
        a3, a4 = ty[:, :, ::1], ty[:, :, :, ::1]
        for kernel in (jacobian.rnn_jacobian_apply, jacobian.rnn_jacobian_apply_transpose):
            sigs.append(pytest.param(kernel, (a3, a3, a4, a4, int64, int64, a3, a3),
                                     id=f"{kernel.py_func.__name__}-{ty}"))
    return sigs


@pytest.mark.skipif(_NO_PTX is not None, reason=_NO_PTX or "")
@pytest.mark.parametrize("kernel, sig", _signatures())
def test_compiles_to_ptx(kernel, sig, device_free_compile):
    ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=(9, 0))
    assert ".target sm_90" in ptx
    assert ".entry" in ptx
    assert "bar.sync" in ptx  # block-level cooperation
    assert ".extern .shared" in ptx  # dynamic shared memory
    # deterministic: no atomic or reduction instructions
    assert not re.search(r"^\s*(@%p\d+\s+)?(atom|red)\.", ptx, re.MULTILINE)
    assert ".local" not in ptx  # nothing spilled to local memory
    if sig[-1] is not None and getattr(sig[-1], "dtype", None) is not None \
            and sig[-1].dtype.bitwidth == 32:
        # float32 stays in float32 (no silent promotion to double)
        assert not any(".f64" in line for line in ptx.splitlines()
                       if not line.strip().startswith(".reg"))


# --- import rnnlab without numba.cuda; clear error without a GPU ---

def test_cpu_path_never_imports_numba_cuda():
    script = textwrap.dedent("""
        import sys
        import numpy as np
        import rnnlab
        from rnnlab.diagnostics import lyapunov_ensemble
        res = lyapunov_ensemble(np.eye(3)[None] * 0.5, n_steps=5, nonlinearity="linear",
                                backend="cpu")
        assert abs(res.exponents - np.log(0.5)).max() < 1e-12
        assert "numba.cuda" not in sys.modules, "the CPU path imported numba.cuda"
        print("ok")
    """)
    assert _run(["-c", script], simulator=False).strip().endswith("ok")


@pytest.mark.skipif(_gpu_present(), reason="a GPU is present")
def test_cuda_backend_error_in_plain_process():
    """backend='cuda' in a process without GPU or simulator: BackendUnavailableError, clear."""
    script = textwrap.dedent("""
        import numpy as np
        import rnnlab
        from rnnlab.diagnostics import lyapunov_ensemble
        try:
            lyapunov_ensemble(np.zeros((2, 3, 3)), n_steps=5, backend="cuda")
        except rnnlab.BackendUnavailableError as exc:
            assert "backend='cuda' cannot run here" in str(exc), exc
            print("ok")
    """)
    assert _run(["-c", script], simulator=False).strip().endswith("ok")
