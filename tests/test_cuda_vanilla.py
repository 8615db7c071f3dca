"""CUDA vanilla kernels: CPU agreement in Numba's CUDA simulator, PTX compilation for sm_90, and
the promise that rnnlab imports without numba-cuda.

No GPU is needed. The simulator runs in a subprocess (tests/cuda_sim_check.py) because
``NUMBA_ENABLE_CUDASIM`` must be set before ``numba.cuda`` is first imported; where a GPU is
present the same script also runs on it, at larger sizes.
"""

import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SIM_CHECK = Path(__file__).with_name("cuda_sim_check.py")
_SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")

cuda = pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")


def _env(simulator):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if simulator:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    else:
        env.pop("NUMBA_ENABLE_CUDASIM", None)
    return env


def _run(args, simulator, timeout=300):
    proc = subprocess.run([sys.executable, *args], env=_env(simulator), cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc.stdout


# --- (a) CPU and CUDA agree ---

def test_simulator_matches_cpu():
    """Every kernel, every activation, float32 and float64, both directions, with and without a
    deep-transition layer, W_hh in shared and in global memory: CPU and CUDA (simulated) agree to
    1e-10 (float64) and 1e-5 (float32)."""
    out = _run([str(SIM_CHECK)], simulator=True)
    assert "FAIL" not in out


def _gpu_present():
    if _SIMULATED:
        return False
    try:
        return bool(cuda.is_available())
    except Exception:  # noqa: BLE001
        return False


@pytest.mark.skipif(not _gpu_present(),
                    reason="no CUDA GPU (the simulator test covers the logic)")
def test_gpu_matches_cpu():
    out = _run([str(SIM_CHECK), "--gpu"], simulator=False)
    assert "FAIL" not in out


# --- (b) every kernel compiles to PTX for sm_90 ---

def _signatures():
    from numba import boolean, float32, float64, int64

    from rnnlab.kernels.cuda import blas, vanilla

    sigs = []
    for ty in (float32, float64):
        a1, a2, a3, a4 = ty[::1], ty[:, ::1], ty[:, :, ::1], ty[:, :, :, ::1]
        f64_2 = float64[:, ::1]
        for kernel, sig in (
            (vanilla.rnn_recurrence, (a2, a3, a2, a2, int64, boolean, a4, boolean)),
            (vanilla.rnn_recurrence_backward,
             (a2, a3, a4, a3, a2, int64, boolean, a4, a2, boolean)),
            # grid-sync kernels compile to PTX here too (linking them needs a driver)
            (vanilla.rnn_recurrence_grid, (a2, a3, a2, a2, int64, boolean, a4, int64, boolean)),
            (vanilla.rnn_recurrence_backward_grid,
             (a2, a3, a4, a3, a2, int64, boolean, a4, a2, int64, boolean)),
            (blas.matmul, (a2, a2, a2, boolean)),
            (blas.matmul_nt, (a2, a2, a2, boolean)),
            (blas.matmul_tn, (a2, a2, a2, boolean)),
            (blas.sum_rows_partial, (a2, int64, f64_2)),
            (blas.sum_rows_finish, (f64_2, a1)),
            (blas.add_bias, (a2, a1)),
            (blas.transpose, (a2, a2)),
        ):
            sigs.append(pytest.param(kernel, sig, id=f"{kernel.py_func.__name__}-{ty}"))
    return sigs


def _ptx_unavailable_reason():
    if _SIMULATED:
        return "NUMBA_ENABLE_CUDASIM is set: compile_ptx needs the real CUDA target"
    try:
        from numba import float32

        def probe(x):
            x[0] = x[0] + float32(1)

        cuda.compile_ptx(probe, (float32[::1],), cc=(9, 0))
    except Exception as exc:  # noqa: BLE001 - NVVM missing, wrong toolkit, ...
        return f"numba.cuda cannot compile PTX here ({type(exc).__name__}: {exc})"
    return None


_NO_PTX = _ptx_unavailable_reason()


@pytest.fixture
def device_free_compile(monkeypatch):
    """compile_ptx of a kernel that calls a device function (every register_jitable helper in
    rnnlab.activations is one) asks the driver for the current device's compute capability
    (numba-cuda 0.30: ``CUDADispatcher.compile_device``), which fails without a GPU. Without a
    driver, answer sm_90 for the duration of the test."""
    if not _gpu_present():
        import numba.cuda.dispatcher as dispatcher

        if hasattr(dispatcher, "get_current_device"):
            monkeypatch.setattr(dispatcher, "get_current_device",
                                lambda: types.SimpleNamespace(compute_capability=(9, 0)))


@pytest.mark.skipif(_NO_PTX is not None, reason=_NO_PTX or "")
@pytest.mark.parametrize("kernel, sig", _signatures())
def test_compiles_to_ptx(kernel, sig, device_free_compile):
    ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=(9, 0))
    assert ".target sm_90" in ptx
    assert ".entry" in ptx
    name = kernel.py_func.__name__
    if name.startswith("rnn_recurrence"):
        # persistent kernels: the time loop is inside; dynamic shared memory, block barriers
        assert "bar.sync" in ptx
        assert ".extern .shared" in ptx
        if name.endswith("_grid"):  # one grid-wide barrier per step (cooperative groups)
            assert "cudaCGSynchronize" in ptx
        if sig[0].dtype.bitwidth == 32:
            # float32 stays in float32 (no silent promotion to double)
            assert not any(".f64" in line for line in ptx.splitlines()
                           if not line.strip().startswith(".reg"))


# --- rnnlab imports without CUDA ---

def test_rnnlab_imports_without_numba_cuda():
    script = textwrap.dedent("""
        import importlib.abc, sys

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name in ("numba.cuda", "numba_cuda") or name.startswith(("numba.cuda.",
                                                                            "numba_cuda.")):
                    raise ImportError("blocked: " + name)

        sys.meta_path.insert(0, Block())
        import rnnlab
        import rnnlab.kernels.cuda as kc
        assert "numba.cuda" not in sys.modules
        assert kc.is_available() is False
        try:
            import rnnlab.kernels.cuda.vanilla
        except ImportError as exc:
            assert "numba-cuda" in str(exc), exc
        else:
            raise AssertionError("importing the CUDA kernels without numba-cuda must fail")
        net = rnnlab.RNN(2, 3, seed=0)
        print("ok")
    """)
    assert _run(["-c", script], simulator=False).strip().endswith("ok")
