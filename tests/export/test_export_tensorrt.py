"""TensorRT at export: torch-free import, plain errors without a GPU or with a lean TensorRT, the
ONNX frontend handing the probed module to the runtime's builder (whose calls are tested in
tests/runtime/test_runtime_tensorrt.py) and turning its failures into ExportError, and a real
build where a GPU and TensorRT exist (@pytest.mark.gpu)."""

from __future__ import annotations

import re
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

import edgekd.export.tensorrt as trt_export
from edgekd.errors import BackendUnavailable, BundleError, ExportError
from edgekd.runtime.probe import probe_cuda
from edgekd.targets import get_target

GPU_PROBE = {
    "cuda": True,
    "cuda_version": "12.6",
    "tensorrt": "10.3.0",
    "cuda_python": True,
    "gpus": [{"name": "Orin", "compute_capability": "8.7"}],
    "error": None,
    "jetpack_l4t": "# R36 (release), REVISION: 4.0",
}
NO_GPU = {
    "cuda": False,
    "cuda_version": None,
    "gpus": [],
    "tensorrt": None,
    "error": "no CUDA driver (libcuda.so.1 not loadable)",
}


def test_module_imports_without_torch() -> None:
    code = "import sys, edgekd.export.tensorrt; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_without_a_gpu_the_reason_is_plain_and_building_refuses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(trt_export, "probe_cuda", lambda: NO_GPU)
    assert (
        trt_export.unavailable_reason() == "no CUDA GPU: no CUDA driver (libcuda.so.1 not loadable)"
    )
    with pytest.raises(BackendUnavailable, match="cannot build a TensorRT engine: no CUDA GPU"):
        trt_export.build_onnx_engine(Path("m.onnx"), "int8", {}, "input", (3, 128))
    monkeypatch.setattr(trt_export, "probe_cuda", lambda: {**GPU_PROBE, "tensorrt": None})
    assert trt_export.unavailable_reason() == "TensorRT is not installed"


def test_torch_tensorrt_frontend_names_the_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch_tensorrt", None)  # import fails like an absent package
    with pytest.raises(
        BackendUnavailable, match="needs the torch-tensorrt package.*pip install torch-tensorrt"
    ):
        trt_export.compile_torch_tensorrt(object(), "fp16", {}, (3, 128))  # type: ignore[arg-type]


@pytest.fixture()
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trt_export, "probe_cuda", lambda: GPU_PROBE)


def _tensorrt(monkeypatch: pytest.MonkeyPatch, *, builder: bool = True) -> types.ModuleType:
    """Install a bare `tensorrt` stand-in: a full TensorRT (with a Builder) or the lean runtime.
    What the builder does with it is tested against a recording stand-in in
    tests/runtime/test_runtime_tensorrt.py, where the builder lives."""
    mod = types.ModuleType("tensorrt")
    mod.__version__ = "10.3.0"
    if builder:
        mod.Builder = object
    monkeypatch.setitem(sys.modules, "tensorrt", mod)
    return mod


def test_lean_tensorrt_cannot_export_an_engine(
    fake_gpu: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    _tensorrt(monkeypatch, builder=False)
    assert trt_export.unavailable_reason() == (
        "the installed TensorRT 10.3.0 is the lean runtime (no builder)"
    )
    with pytest.raises(BackendUnavailable, match=r"lean runtime \(no builder\); pip install"):
        trt_export.build_onnx_engine(Path("m.onnx"), "int8", {}, "input", (3, 128))


def test_onnx_frontend_hands_the_probed_module_to_the_runtime_builder(
    fake_gpu: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    mod = _tensorrt(monkeypatch)
    seen: list[tuple[Any, ...]] = []
    monkeypatch.setattr(
        trt_export, "build_engine", lambda *args, **kw: seen.append((*args, kw)) or b"PLAN"
    )
    build = get_target("jetson-orin-nano").tensorrt_build("int8")
    timing = tmp_path / "timing.cache"
    (tmp_path / "m.onnx").write_bytes(b"ONNX written by the export")
    plan = trt_export.build_onnx_engine(
        tmp_path / "m.onnx", "int8", build, "input", (3, 128), timing_cache=timing
    )
    assert plan == b"PLAN"
    # the file's bytes, read once, named by the path for the builder's messages
    assert seen == [
        (mod, b"ONNX written by the export", str(tmp_path / "m.onnx"), "int8", build, "input",
         (3, 128), {"timing_cache": timing})
    ]


def test_a_build_failure_is_an_export_error(
    fake_gpu: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _tensorrt(monkeypatch)
    build = get_target("x86-nvidia").tensorrt_build("fp16")
    (tmp_path / "m.onnx").write_bytes(b"ONNX")
    with pytest.raises(
        ExportError, match="export cannot build the TensorRT engine: .*m.onnx: TensorRT "
        "precision must be one of"
    ) as info:
        trt_export.build_onnx_engine(tmp_path / "m.onnx", "int4", build, "input", (3, 128))
    assert isinstance(info.value.__cause__, BundleError)  # what the runtime builder raised


def test_engine_stamp_names_device_and_versions(
    fake_gpu: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import edgekd.runtime.backends.tensorrt as trt_backend

    class Cudart:
        cudaError_t = types.SimpleNamespace(cudaSuccess=0)

        def cudaRuntimeGetVersion(self) -> tuple[int, int]:
            return 0, 12020

    monkeypatch.setattr(trt_backend, "_cudart", Cudart)
    stamp = {
        "tensorrt": "10.3.0",
        "gpu": "Orin",
        "compute_capability": "8.7",
        "cuda_runtime": "12.2",  # the runtime's, not the driver's 12.6 in the probe
        "jetpack_l4t": "# R36 (release), REVISION: 4.0",
    }
    assert trt_export.engine_stamp("10.3.0") == stamp
    assert trt_export.engine_stamp("10.3.0", dla_core=1) == {**stamp, "dla_core": "1"}

    def missing() -> None:
        raise BackendUnavailable("no cuda-python")

    monkeypatch.setattr(trt_backend, "_cudart", missing)
    assert trt_export.engine_stamp("10.3.0")["cuda_runtime"] == "unknown"


@pytest.mark.gpu
def test_real_int8_engine_from_the_qdq_model(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if trt_export.unavailable_reason() is not None:
        pytest.skip(f"needs a CUDA GPU and TensorRT: {trt_export.unavailable_reason()}")
    ptq_onnx = request.getfixturevalue("ptq_onnx")  # only where it will be used
    build = get_target("x86-nvidia").tensorrt_build("int8")
    built = trt_export.build_onnx_engine(
        ptq_onnx, "int8", build, "input", (3, 128), timing_cache=tmp_path / "timing.cache"
    )
    assert len(built.plan) > 1000 and (tmp_path / "timing.cache").stat().st_size > 0
    assert built.layers is None  # a GPU build: no DLA placement to report
    stamp = trt_export.engine_stamp(probe_cuda()["tensorrt"])
    assert stamp["gpu"] and stamp["compute_capability"]


def test_tensorrt_older_than_10_cannot_export(
    fake_gpu: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    mod = _tensorrt(monkeypatch)
    mod.__version__ = "8.6.1"  # JetPack 5
    expected = "TensorRT 8.6.1 is installed; edgekd needs TensorRT >= 10"
    assert (trt_export.unavailable_reason() or "").startswith(expected)
    with pytest.raises(BackendUnavailable, match=f"cannot build a TensorRT engine: {expected}"):
        trt_export.build_onnx_engine(Path("m.onnx"), "int8", {}, "input", (3, 128))


def _job(dla_core: int | None, notices: list[str], onnx: Path = Path("m.int8.qdq.onnx")) -> Any:
    """The parts of an export job the TensorRT format builder reads (agx, int8, ONNX frontend)."""
    from contextlib import nullcontext

    from edgekd.modalities import ModalitySpec

    spec = ModalitySpec.from_dict({"name": "accel", "kind": "timeseries", "rate_hz": 50,
                                   "channels": 3, "window": 128, "hop": 64})
    return types.SimpleNamespace(
        tgt=get_target("jetson-agx-orin"), prec="int8", notices=notices,
        opts=types.SimpleNamespace(trt_frontend="onnx", dla_core=dla_core),
        parts=types.SimpleNamespace(sections={}), data=types.SimpleNamespace(spec=spec),
        built={"onnx_qdq": onnx},
        steps=types.SimpleNamespace(step=lambda *a: nullcontext()),
    )


def test_dla_export_records_layers_per_device_or_leaves_the_build_to_the_board(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    from edgekd.export.formats import _build_tensorrt
    from tests.runtime.trt_standin import DLA_LAYERS, GPU_LAYERS, FakeTensorRT

    notices: list[str] = []
    monkeypatch.setattr(trt_export, "unavailable_reason", lambda: "no CUDA GPU: none")
    job = _job(1, notices)
    assert _build_tensorrt(job) is None
    assert job.parts.sections["tensorrt_build"]["profiles"] == {"min": 8, "opt": 8, "max": 8}
    assert "batch 8, DLA core 1); the engine is built on the jetson-agx-orin device" in notices[0]

    # a board with TensorRT: the real builder asks can_run_on_DLA of every layer of the network
    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))  # the timing cache goes there
    monkeypatch.setattr(trt_export, "unavailable_reason", lambda: None)
    monkeypatch.setattr(trt_export, "engine_stamp", lambda v, dla: {"gpu": "Orin", "dla": dla})
    onnx = tmp_path / "m.int8.qdq.onnx"
    onnx.write_bytes(b"QDQ")
    rec = FakeTensorRT(layers=DLA_LAYERS)
    monkeypatch.setattr(trt_export, "require_tensorrt", lambda: rec.module)
    notices.clear()
    built = _build_tensorrt(_job(1, notices, onnx))
    assert built is not None and built.path == b"PLAN"
    assert built.extra["layers"] == {"dla": 2, "gpu": 1}
    assert ("config", "DLA_core", 1) in rec.calls and ("parse", b"QDQ") in rec.calls
    assert [c[1] for c in rec.calls if c[0] == "can_run_on_DLA"] == [
        "CONVOLUTION", "ACTIVATION", "SHUFFLE"]
    assert notices == ["TensorRT int8 engine on DLA core 1: 2 layers on the DLA, 1 on the GPU "
                       "(batch 8 per call)"]
    # no layer DLA can run: an export error naming the layer types, before any build
    rec = FakeTensorRT(layers=GPU_LAYERS)
    with pytest.raises(ExportError, match=re.escape(
            f"export cannot build the TensorRT engine: {onnx}: the int8 network has no layer "
            "that can run on DLA core 1: all 2 would fall back to the GPU (layer types: REDUCE, "
            "SHUFFLE)")):
        _build_tensorrt(_job(1, [], onnx))
    assert ("build",) not in rec.calls
