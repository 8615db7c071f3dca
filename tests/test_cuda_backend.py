"""``backend="cpu" | "cuda"`` on models, diagnostics and sweeps.

Without a GPU: clear errors for an unknown backend and for CUDA where it cannot run, raised
before any work; and, in Numba's CUDA simulator (a subprocess: the simulator must be chosen
before ``numba.cuda`` is imported), CPU and CUDA models agree (tests/cuda_sim_models.py) and
PyTorch's own numbers hold on the CUDA backend (the fixture tests rerun with
``RNNLAB_BACKEND=cuda``). With a GPU the same scripts run on it.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import rnnlab
from rnnlab import cli
from rnnlab._backend import ENV_VAR, default_backend, resolve_backend
from rnnlab.diagnostics import trajectories

ROOT = Path(__file__).resolve().parents[1]
_SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def _cuda_runs_here():
    try:
        resolve_backend("cuda")
    except rnnlab.BackendUnavailableError:
        return False
    return True


_HAS_CUDA = _cuda_runs_here()
_GPU = _HAS_CUDA and not _SIMULATED


def _run(args, extra_env, timeout=600):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra_env)
    for key, value in extra_env.items():
        if value is None:
            env.pop(key)
    proc = subprocess.run([sys.executable, *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc.stdout


# --- argument checking ---

@pytest.mark.parametrize("cls", [rnnlab.RNN, rnnlab.LSTM, rnnlab.GRU])
def test_unknown_backend_is_a_clear_error(cls):
    with pytest.raises(ValueError, match=r"backend must be one of \('cpu', 'cuda'\).*'gpu'"):
        cls(2, 3, backend="gpu")
    with pytest.raises(ValueError, match="backend must be one of"):
        cls(2, 3, backend=1)


def test_default_backend_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "cpu")
    assert default_backend() == "cpu"
    assert rnnlab.RNN(2, 3).backend == "cpu"
    monkeypatch.setenv(ENV_VAR, "tpu")
    with pytest.raises(ValueError, match=f"{ENV_VAR} must be one of"):
        rnnlab.RNN(2, 3)
    monkeypatch.delenv(ENV_VAR)
    assert rnnlab.GRU(2, 3).backend == "cpu"


def test_backend_is_case_insensitive_and_shown():
    net = rnnlab.LSTM(2, 3, backend=" CPU ")
    assert net.backend == "cpu"
    assert "backend" not in repr(net)  # the default is not spelled out
    assert net.to("cpu") is net


@pytest.mark.skipif(_HAS_CUDA, reason="a GPU or the simulator is present")
def test_cuda_without_a_gpu_is_a_clear_error_before_any_work():
    for cls in (rnnlab.RNN, rnnlab.LSTM, rnnlab.GRU):
        with pytest.raises(rnnlab.BackendUnavailableError, match="backend='cuda' cannot run"):
            cls(2, 3, backend="cuda")
    net = rnnlab.RNN(2, 3, seed=0)
    with pytest.raises(rnnlab.BackendUnavailableError, match="NUMBA_ENABLE_CUDASIM"):
        net.to("cuda")
    assert net.backend == "cpu"  # unchanged by the failed move
    with pytest.raises(rnnlab.BackendUnavailableError):
        trajectories(net, np.zeros((3, 1, 2)), backend="cuda")


@pytest.mark.skipif(_HAS_CUDA, reason="a GPU or the simulator is present")
def test_cli_backend_cuda_without_a_gpu_stops_before_running(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(SystemExit) as exc:
        cli.main(["run", "gradient_decay", "--backend", "cuda", "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "--backend='cuda' cannot run here" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing was computed or written
    assert ENV_VAR not in os.environ


def test_provenance_names_the_device():
    from rnnlab.harness.provenance import device_name

    assert device_name("cpu").startswith("cpu: ")


# --- CPU and CUDA agree (simulator, or the GPU) ---

@pytest.mark.skipif(_SIMULATED, reason="already inside the simulator")
def test_models_agree_across_backends_in_the_simulator():
    pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")
    out = _run(["tests/cuda_sim_models.py"], {"NUMBA_ENABLE_CUDASIM": "1", ENV_VAR: None})
    assert "FAIL" not in out
    assert out.count("ok  ") >= 11


@pytest.mark.skipif(_SIMULATED, reason="already inside the simulator")
def test_pytorch_fixture_holds_on_the_cuda_backend_in_the_simulator():
    """The suite's PyTorch contract tests, rerun with every model on the CUDA kernels."""
    pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")
    out = _run(["-m", "pytest", "-p", "no:cacheprovider", "tests/test_pytorch_fixture.py"],
               {"NUMBA_ENABLE_CUDASIM": "1", ENV_VAR: "cuda"})
    assert "rnnlab backend: cuda" in out
    assert " passed" in out and "failed" not in out


@pytest.mark.skipif(not _GPU, reason="no CUDA GPU (the simulator tests cover the logic)")
def test_models_agree_across_backends_on_the_gpu():
    out = _run(["tests/cuda_sim_models.py", "--gpu"], {"NUMBA_ENABLE_CUDASIM": None})
    assert "FAIL" not in out


# --- the GPU benchmark script stays runnable ---

@pytest.mark.skipif(_SIMULATED, reason="already inside the simulator")
def test_gpu_benchmark_runs_in_the_simulator():
    pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")
    out = _run(["benchmarks/bench_cuda.py", "--smoke"], {"NUMBA_ENABLE_CUDASIM": "1"})
    assert "device: simulator" in out
    for cell in ("rnn_tanh", "lstm", "gru"):
        assert cell in out


@pytest.mark.skipif(_HAS_CUDA, reason="a GPU or the simulator is present")
def test_gpu_benchmark_without_a_gpu_says_so():
    proc = subprocess.run([sys.executable, "benchmarks/bench_cuda.py"], cwd=ROOT, text=True,
                          capture_output=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2
    assert "no CUDA GPU here" in proc.stderr
