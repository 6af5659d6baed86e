"""The test suite passes outside the developers' setup: on other CPUs, and without the optional extras.

- The memory-estimate test's bound says what it covers: oneDNN's scratch buffers, which the data-free
  trace cannot see, depend on the CPU's instruction set; the test passes with oneDNN restricted to AVX2
  (``ONEDNN_MAX_CPU_ISA=AVX2``, the kernels of an AVX2-only CPU) as on AVX-512.
- ``export`` reports a missing or wrong input before a missing extra (onnx), so the tests of its errors
  pass without onnx; the tests that need onnx skip without it.
- Scripts the tests run use the tests' interpreter (``benchmarks/gpu_smoke.sh`` honours ``PYTHON``).
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reliability_helpers import small_classifier

ROOT = Path(__file__).resolve().parents[2]


def test_the_memory_estimate_test_passes_with_avx2_kernels():
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(ROOT / "tests" / "engine" / "test_memory_estimate.py"), "-k", "within and linear_eval"],
                          capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert proc.returncode == 0 and "1 passed" in proc.stdout, proc.stdout[-3000:]


def test_export_names_a_bad_input_before_a_missing_onnx(tmp_path, monkeypatch):
    from simclrv2.commands import export
    from simclrv2.errors import UserError

    real = importlib.util.find_spec
    monkeypatch.setattr(export.importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real(name, *a))
    with pytest.raises(UserError, match="does not exist"):
        export.export_model(tmp_path / "missing.pt", "onnx", tmp_path / "x.onnx")
    model = small_classifier(tmp_path / "model.pt")
    with pytest.raises(UserError, match="--image-size must be positive"):
        export.export_model(model, "onnx", tmp_path / "x.onnx", image_size=0)
    with pytest.raises(UserError, match="needs the onnx package"):
        export.export_model(model, "onnx", tmp_path / "x.onnx")


def test_gpu_smoke_runs_python_from_the_interpreter_it_is_given(tmp_path):
    script = (ROOT / "benchmarks" / "gpu_smoke.sh").read_text()
    assert 'PYTHON="${PYTHON:-python}"' in script
    code = [line for line in script.splitlines() if not line.lstrip().startswith("#")]
    assert not any(word == "python" for line in code for word in line.replace('"', " ").split()), \
        "a bare `python` in gpu_smoke.sh runs PATH's interpreter, not the tests'"
    assert '"PYTHON": sys.executable' in (ROOT / "tests" / "test_benchmarks.py").read_text()
