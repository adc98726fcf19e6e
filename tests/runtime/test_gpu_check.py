"""benchmarks/gpu_check.py: on a machine without a CUDA GPU / TensorRT it says so and exits 2
(its full run needs a GPU: see the script's docstring)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgekd.runtime.probe import probe_cuda

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


@pytest.mark.skipif(probe_cuda()["cuda"], reason="this machine has a CUDA GPU")
def test_gpu_check_without_a_gpu_says_so_and_exits_2() -> None:
    env = {**os.environ, "PYTHONPATH": str(SCRIPT.parents[1])}
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("gpu_check: no GPU check on this machine: TensorRT needs an "
                                  "NVIDIA GPU with its driver; none found (")
    assert "TensorRT >= 10 and cuda-python (pip install 'edgekd[tensorrt]' cuda-python" in (
        proc.stderr)
    assert proc.stdout == ""


def _gpu_check():  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return gpu_check


def test_gpu_check_rows_and_table_on_a_stand_in_backend(
        bundle_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import edgekd.runtime as rt
    from edgekd.errors import BackendUnavailable

    real_load = rt.load

    def load(bundle: Path, backend: str, precision: str, **kw: object) -> rt.Model:
        if precision == "fp16":  # as on a GPU without fast FP16 kernels, say
            raise BackendUnavailable("no fp16 here")
        # "tensorrt" served by ONNX Runtime: the check's own code path, without a GPU
        return real_load(bundle, backend="onnxruntime", precision=precision, **kw)

    monkeypatch.setattr(rt, "load", load)
    gpu_check = _gpu_check()
    rows = gpu_check.check(bundle_path, tmp_path / "cache", iterations=5)
    assert [r["precision"] for r in rows] == ["fp32", "fp16", "int8"]
    assert rows[0]["max_abs_diff"] == 0.0 and rows[0]["top1_agreement"] == 1.0
    assert rows[0]["n"] == 8 and rows[0]["p50_ms_batch1"] > 0 and rows[0]["layers"] is None
    assert rows[1] == {"precision": "fp16", "error": "no fp16 here"}
    assert gpu_check.failures(rows) == ["fp16: no fp16 here"]
    table = gpu_check.render(rows, {"gpus": [{"name": "Orin", "compute_capability": "8.7"}],
                                    "cuda_version": "12.6", "tensorrt": "10.3.0"})
    assert table.splitlines()[0] == "GPU Orin (compute 8.7), driver CUDA 12.6, TensorRT 10.3.0"
    assert "fp16        did not load: no fp16 here" in table


def test_gpu_check_failures_name_what_broke() -> None:
    gpu_check = _gpu_check()
    rows = [{"precision": "fp32", "max_abs_diff": 3e-3}, {"precision": "fp16", "error": "boom"},
            {"precision": "int8", "max_abs_diff": 0.2}]  # int8 may differ; fp32 may not
    assert gpu_check.failures(rows) == ["fp16: boom",
                                        "fp32 max abs diff 3.00e-03 > 0.001 (TF32 left on?)"]
    assert gpu_check.failures([{"precision": "fp32", "max_abs_diff": 1e-6}]) == []
