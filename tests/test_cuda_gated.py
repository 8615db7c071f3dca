"""CUDA LSTM and GRU kernels: CPU agreement in Numba's CUDA simulator, PTX compilation for sm_90,
and the shared-memory limits.

No GPU is needed. The simulator runs in a subprocess (tests/cuda_sim_gated.py) because
``NUMBA_ENABLE_CUDASIM`` must be set before ``numba.cuda`` is first imported; where a GPU is
present the same script also runs on it, at larger sizes. The helpers (subprocess runner, GPU and
PTX probes, the ``device_free_compile`` fixture) are those of tests/test_cuda_vanilla.py,
imported rather than copied.
"""

from pathlib import Path

import numpy as np
import pytest

import test_cuda_vanilla as vanilla_tests

cuda = pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")

SIM_GATED = Path(__file__).with_name("cuda_sim_gated.py")

#: The fixture answering sm_90 for compile_ptx without a driver (see tests/test_cuda_vanilla.py).
device_free_compile = vanilla_tests.device_free_compile


# --- (a) CPU and CUDA agree ---

def test_simulator_matches_cpu():
    """LSTM and GRU, forward states and every gradient, float32 and float64, both directions,
    with and without bias and hidden gradients, W_hh in shared and in global memory, host and
    device-resident arguments, the LSTM's dz written over its gates or not: CPU and CUDA
    (simulated) agree to 1e-10 (float64) and 1e-5 (float32)."""
    out = vanilla_tests._run([str(SIM_GATED)], simulator=True)
    assert "FAIL" not in out
    assert out.count("ok  ") == 14, out


@pytest.mark.skipif(not vanilla_tests._gpu_present(),
                    reason="no CUDA GPU (the simulator test covers the logic)")
def test_gpu_matches_cpu():
    out = vanilla_tests._run([str(SIM_GATED), "--gpu"], simulator=False)
    assert "FAIL" not in out


# --- (b) shared-memory limits ---

@pytest.mark.skipif(vanilla_tests._SIMULATED, reason="the simulator is chosen in a subprocess")
@pytest.mark.parametrize("cell, dtype, h_max", [
    ("lstm", np.float32, 54), ("lstm", np.float64, 38),
    ("gru", np.float32, 63), ("gru", np.float64, 44),
])
def test_weights_fit_in_shared(cell, dtype, h_max):
    """The largest H whose W_hh stays in shared memory, and every launch within 48 KB up to
    H = 3000 (the forward's two H-vectors in float64 reach 48 KB at H = 3072)."""
    import importlib

    mod = importlib.import_module(f"rnnlab.kernels.cuda.{cell}")
    assert mod.weights_fit_in_shared(h_max, dtype)
    assert not mod.weights_fit_in_shared(h_max + 1, dtype)
    for hidden in (1, h_max, h_max + 1, 1500, 3000):
        for backward in (False, True):
            threads, shared_bytes, in_shared = mod.launch_config(hidden, dtype, backward)
            assert threads % 32 == 0 and 32 <= threads <= mod.MAX_THREADS
            assert shared_bytes <= mod.SHARED_MEMORY_BYTES
            assert in_shared == (hidden <= h_max)


# --- (c) every kernel compiles to PTX for sm_90 ---

def _signatures():
    from numba import boolean, float32, float64

    from rnnlab.kernels.cuda import blas, gru, lstm

    sigs = []
    for ty in (float32, float64):
        a1, a2, a3 = ty[::1], ty[:, ::1], ty[:, :, ::1]
        strided = ty[:, :]  # the GRU's column blocks of dz
        for kernel, sig in (
            (lstm.lstm_recurrence, (a2, a1, a2, a2, boolean, a3, a3, a3, boolean)),
            (lstm.lstm_recurrence_backward,
             (a2, a2, a2, a3, a3, a3, a2, a2, boolean, a3, a2, a2, a3, a3, boolean)),
            (gru.gru_recurrence, (a2, a1, a1, a2, boolean, a3, a3, a3, boolean)),
            (gru.gru_recurrence_backward,
             (a2, a2, a3, a3, a3, a3, a2, boolean, a3, a2, a3, boolean)),
            (blas.matmul, (strided, a2, a2, boolean)),
            (blas.matmul_tn, (strided, a2, a2, boolean)),
        ):
            tag = "-strided" if sig[0] is strided else ""
            sigs.append(pytest.param(kernel, sig, id=f"{kernel.py_func.__name__}{tag}-{ty}"))
    return sigs


@pytest.mark.skipif(vanilla_tests._NO_PTX is not None, reason=vanilla_tests._NO_PTX or "")
@pytest.mark.parametrize("kernel, sig", _signatures())
def test_compiles_to_ptx(kernel, sig, device_free_compile):
    ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=(9, 0))
    assert ".target sm_90" in ptx
    assert ".entry" in ptx
    name = kernel.py_func.__name__
    if name.startswith(("lstm_recurrence", "gru_recurrence")):
        # persistent kernels: the time loop is inside; dynamic shared memory, block barriers
        assert "bar.sync" in ptx
        assert ".extern .shared" in ptx
        if sig[0].dtype.bitwidth == 32:
            # float32 stays in float32 (no silent promotion to double)
            assert not any(".f64" in line for line in ptx.splitlines()
                           if not line.strip().startswith(".reg"))
