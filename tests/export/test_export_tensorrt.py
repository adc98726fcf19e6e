"""TensorRT engine building: torch-free import, plain errors without a GPU, the builder calls
(checked against a recording stand-in for the `tensorrt` module, which cannot be installed
here), and a real build where a GPU and TensorRT exist (@pytest.mark.gpu)."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

import edgekd.export.tensorrt as trt_export
from edgekd.errors import BackendUnavailable, ExportError
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
        trt_export.build_engine(Path("m.onnx"), "int8", {}, "input", (3, 128))
    monkeypatch.setattr(trt_export, "probe_cuda", lambda: {**GPU_PROBE, "tensorrt": None})
    assert trt_export.unavailable_reason() == "TensorRT is not installed"


def test_torch_tensorrt_frontend_names_the_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch_tensorrt", None)  # import fails like an absent package
    with pytest.raises(
        BackendUnavailable, match="needs the torch-tensorrt package.*pip install torch-tensorrt"
    ):
        trt_export.compile_torch_tensorrt(object(), "fp16", {}, (3, 128))  # type: ignore[arg-type]


class _Recorder:
    """A stand-in for the `tensorrt` module that records every builder call it receives."""

    def __init__(
        self, *, parse_ok: bool = True, plan: bytes | None = b"PLAN", trt10: bool = True
    ) -> None:
        self.calls: list[tuple[Any, ...]] = []
        rec = self
        mod = types.ModuleType("tensorrt")
        mod.__version__ = "10.3.0" if trt10 else "11.0.0"

        class Logger:
            WARNING = "warning"

            def __init__(self, level: str) -> None:
                rec.calls.append(("logger", level))

        class Cache:
            def __init__(self, data: bytes) -> None:
                self.data = data

            def serialize(self) -> bytes:
                return self.data + b"+new"

        class Profile:
            def set_shape(self, name: str, *shapes: tuple[int, ...]) -> None:
                rec.calls.append(("set_shape", name, *shapes))

        class Config:
            def set_memory_pool_limit(self, pool: str, size: int) -> None:
                rec.calls.append(("pool", pool, size))

            def set_flag(self, flag: str) -> None:
                rec.calls.append(("flag", flag))

            def add_optimization_profile(self, profile: Profile) -> None:
                rec.calls.append(("profile",))

            def create_timing_cache(self, data: bytes) -> Cache:
                rec.calls.append(("timing_cache_in", data))
                return Cache(data)

            def set_timing_cache(self, cache: Cache, ignore_mismatch: bool) -> None:
                rec.calls.append(("set_timing_cache", ignore_mismatch))

        class Builder:
            def __init__(self, logger: Logger) -> None:
                pass

            def create_network(self, flags: int) -> str:
                rec.calls.append(("network_flags", flags))
                return "network"

            def create_builder_config(self) -> Config:
                return Config()

            def create_optimization_profile(self) -> Profile:
                return Profile()

            def build_serialized_network(self, network: str, config: Config) -> bytes | None:
                return plan

        class OnnxParser:
            num_errors = 0 if parse_ok else 1

            def __init__(self, network: str, logger: Logger) -> None:
                pass

            def parse_from_file(self, path: str) -> bool:
                rec.calls.append(("parse", path))
                return parse_ok

            def get_error(self, i: int) -> str:
                return "Unsupported ONNX op QLinearConv"

        mod.Logger, mod.Builder, mod.OnnxParser = Logger, Builder, OnnxParser
        mod.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
        mod.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=3)
        mod.BuilderFlag = (
            types.SimpleNamespace(INT8="INT8", FP16="FP16")
            if trt10
            else types.SimpleNamespace(STRIP_PLAN="STRIP_PLAN")
        )
        self.module = mod


@pytest.fixture()
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trt_export, "probe_cuda", lambda: GPU_PROBE)


def _install(monkeypatch: pytest.MonkeyPatch, recorder: _Recorder) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", recorder.module)


def test_int8_build_for_orin_nano_sets_what_the_target_says(
    fake_gpu: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    rec = _Recorder()
    _install(monkeypatch, rec)
    build = get_target("jetson-orin-nano").tensorrt_build("int8")
    cache = tmp_path / "timing.cache"
    plan = trt_export.build_engine(
        tmp_path / "m.int8.onnx", "int8", build, "input", (3, 128), timing_cache=cache
    )
    assert plan == b"PLAN"
    calls = rec.calls
    assert ("network_flags", 0) in calls  # TensorRT 10: explicit batch by default, weakly typed
    assert ("parse", str(tmp_path / "m.int8.onnx")) in calls
    assert ("pool", "WORKSPACE", 512 * 2**20) in calls
    assert [c[1] for c in calls if c[0] == "flag"] == ["INT8", "FP16"]  # fp16 fallback on
    assert ("set_shape", "input", (1, 3, 128), (1, 3, 128), (32, 3, 128)) in calls
    assert ("timing_cache_in", b"") in calls and ("set_timing_cache", False) in calls
    assert cache.read_bytes() == b"+new"
    # A second build starts from the saved timing cache.
    trt_export.build_engine(
        tmp_path / "m.int8.onnx", "int8", build, "input", (3, 128), timing_cache=cache
    )
    assert ("timing_cache_in", b"+new") in rec.calls


def test_fp16_fp32_flags_and_failures(
    fake_gpu: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    build = get_target("x86-nvidia").tensorrt_build("fp16")
    for precision, flags in (("fp16", ["FP16"]), ("fp32", [])):
        rec = _Recorder()
        _install(monkeypatch, rec)
        trt_export.build_engine(tmp_path / "m.onnx", precision, build, "input", (3, 128))
        assert [c[1] for c in rec.calls if c[0] == "flag"] == flags
        assert ("set_shape", "input", (1, 3, 128), (8, 3, 128), (256, 3, 128)) in rec.calls
    _install(monkeypatch, _Recorder(parse_ok=False))
    with pytest.raises(
        ExportError, match="TensorRT cannot parse .*Unsupported ONNX op QLinearConv"
    ):
        trt_export.build_engine(tmp_path / "m.onnx", "int8", build, "input", (3, 128))
    _install(monkeypatch, _Recorder(plan=None))
    with pytest.raises(ExportError, match="could not build a int8 engine"):
        trt_export.build_engine(tmp_path / "m.onnx", "int8", build, "input", (3, 128))
    with pytest.raises(ExportError, match="precision must be one of"):
        trt_export.build_engine(tmp_path / "m.onnx", "int4", build, "input", (3, 128))


def test_tensorrt_11_builds_strongly_typed(
    fake_gpu: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    rec = _Recorder(trt10=False)
    _install(monkeypatch, rec)
    build = get_target("jetson-agx-orin").tensorrt_build("int8")
    trt_export.build_engine(tmp_path / "m.onnx", "int8", build, "input", (3, 128))
    assert ("network_flags", 1 << 3) in rec.calls and not [c for c in rec.calls if c[0] == "flag"]
    with pytest.raises(ExportError, match="FP16 only from an FP16-typed ONNX"):
        trt_export.build_engine(tmp_path / "m.onnx", "fp16", build, "input", (3, 128))


def test_engine_stamp_names_device_and_versions(fake_gpu: None) -> None:
    assert trt_export.engine_stamp("10.3.0") == {
        "tensorrt": "10.3.0",
        "gpu": "Orin",
        "compute_capability": "8.7",
        "cuda": "12.6",
        "jetpack_l4t": "# R36 (release), REVISION: 4.0",
    }


@pytest.mark.gpu
def test_real_int8_engine_from_the_qdq_model(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if trt_export.unavailable_reason() is not None:
        pytest.skip(f"needs a CUDA GPU and TensorRT: {trt_export.unavailable_reason()}")
    ptq_onnx = request.getfixturevalue("ptq_onnx")  # only where it will be used
    build = get_target("x86-nvidia").tensorrt_build("int8")
    plan = trt_export.build_engine(
        ptq_onnx, "int8", build, "input", (3, 128), timing_cache=tmp_path / "timing.cache"
    )
    assert len(plan) > 1000 and (tmp_path / "timing.cache").stat().st_size > 0
    stamp = trt_export.engine_stamp(probe_cuda()["tensorrt"])
    assert stamp["gpu"] and stamp["compute_capability"]
