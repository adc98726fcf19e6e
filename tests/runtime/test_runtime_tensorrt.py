"""TensorRT: stamp matching, engine cache resolution, the CUDA probe and clear errors (CPU); the
one engine builder and the backend's build / cache / run path, checked against recording
stand-ins for `tensorrt` and cuda-python (neither installs here); plus GPU tests that run only
where a CUDA GPU, TensorRT and cuda-python are present."""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import re
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import runtime_synth as synth

import edgekd.runtime.probe as probe_mod
from edgekd.errors import BackendUnavailable, BundleError
from edgekd.export.bundle import BundleWriter
from edgekd.runtime import Model, load, read_bundle
from edgekd.runtime.backends import tensorrt as trt_backend
from edgekd.runtime.cache_seal import CacheSeal, sidecar
from edgekd.runtime.probe import probe_cuda
from edgekd.runtime.trt_build import DEFAULT_BUILD, build_engine, build_options
from edgekd.targets import get_target
from tests.runtime.trt_standin import (
    DLA_LAYERS,
    FUSED_DLA_ENGINE,
    GPU_LAYERS,
    ONNX,
    FakeTensorRT,
)

ORIN = {"tensorrt": "10.3.0", "gpu": "Orin", "compute_capability": "8.7", "cuda_runtime": "12.6"}
H100 = {"tensorrt": "10.3.0", "gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0",
        "cuda_runtime": "12.8"}
GPU_PROBE = {"cuda": True, "cuda_version": "12.8", "tensorrt": "10.3.0", "cuda_python": True,
             "gpus": [{"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}],
             "error": None}


def test_device_stamp_and_mismatch_reasons() -> None:
    assert trt_backend.device_stamp(GPU_PROBE, "10.3.0", "12.8") == H100
    # the driver version (the probe's cuda_version) is not in the stamp: an update keeps engines
    newer_driver = {**GPU_PROBE, "cuda_version": "13.1"}
    assert trt_backend.device_stamp(newer_driver, "10.3.0", "12.8") == H100
    assert trt_backend.stamp_mismatch(dict(H100), H100) is None
    why = trt_backend.stamp_mismatch(ORIN, H100)
    assert why == ("built for gpu 'Orin' (this device: 'NVIDIA H100 80GB HBM3'), "
                   "compute_capability '8.7' (this device: '9.0'), "
                   "cuda_runtime '12.6' (this device: '12.8')")
    assert "tensorrt '10.0.1'" in trt_backend.stamp_mismatch({**H100, "tensorrt": "10.0.1"}, H100)
    assert trt_backend.stamp_mismatch(None, H100) == "it has no stamp"
    # Jetson: the L4T release and the DLA core are part of the stamp, on both sides
    jetson = {**GPU_PROBE, "jetpack_l4t": "# R36 (release), REVISION: 4.0"}
    dla0 = trt_backend.device_stamp(jetson, "10.3.0", "12.6", dla_core=0)
    assert dla0["jetpack_l4t"] == "# R36 (release), REVISION: 4.0" and dla0["dla_core"] == "0"
    gpu_only = trt_backend.device_stamp(jetson, "10.3.0", "12.6")
    assert "dla_core" not in gpu_only
    why = trt_backend.stamp_mismatch(gpu_only, dla0)
    assert why == "built for dla_core None (this device: '0')"
    r35 = {**dla0, "jetpack_l4t": "# R35 (release), REVISION: 5.0"}
    assert "jetpack_l4t '# R35" in trt_backend.stamp_mismatch(r35, dla0)
    # engines for GPU and DLA core 0 are cached apart; they share the device's timing cache
    cache = Path("cache")
    assert (trt_backend.engine_cache_path(cache, "ab" * 32, "int8", dla0)
            != trt_backend.engine_cache_path(cache, "ab" * 32, "int8", gpu_only))
    assert (trt_backend.timing_cache_path(cache, dla0)
            == trt_backend.timing_cache_path(cache, gpu_only))


def engine_bundle(out: Path, *stamps: dict, plan: bytes = b"plan", fp32: bool = False,
                  build: dict | None = None, **entry: Any) -> Path:
    """A bundle with a (fake) QDQ ONNX, optionally a (fake) FP32 ONNX and `tensorrt_build`, and
    one int8 engine per stamp (`plan` + its index; `entry`: more keys of its manifest entry)."""
    with BundleWriter(out) as w:
        w.add_file("model.int8.qdq.onnx", b"qdq", format="onnx", precision="int8")
        if fp32:
            w.add_file("model.fp32.onnx", b"fp32", format="onnx", precision="fp32")
        for i, stamp in enumerate(stamps):
            w.add_file(f"tensorrt/model.int8.{i}.engine", plan + str(i).encode(),
                       format="tensorrt_engine", precision="int8", stamp=stamp, **entry)
        if build is not None:
            w.set("tensorrt_build", build)
        w.set("labels", ["a", "b"])
        w.set("modality", {"name": "accel", "kind": "timeseries", "rate_hz": 50, "channels": 3,
                           "window": 128, "hop": 64})
        w.set("io", {"input": {"name": "input", "shape": ["batch", 3, 128]},
                     "output": {"name": "logits", "shape": ["batch", 2]}})
    return out


def _resolve(b: Any, cache: Path, device: dict = H100, precision: str = "int8") -> tuple:
    """`resolve_engine` as `open` calls it: this cache's seal, the manifest's build options."""
    return trt_backend.resolve_engine(b, precision, device, cache, CacheSeal.for_cache(cache),
                                      build_options(b.manifest.get("tensorrt_build")))


def _seal_entry(b: Any, cache: Path, plan: bytes = b"plan", **over: Any) -> Path:
    """Write `plan` into the engine cache as `open` does after a build (`over` replaces the
    seal's digest / signer / context) and return its path."""
    onnx_sha = b.find("onnx", "int8").sha256
    path = trt_backend.engine_cache_path(cache, onnx_sha, "int8", H100)
    args = {"kind": trt_backend.ENGINE_KIND, "digest": b.digest, "signer": b.signer,
            "context": trt_backend.cache_context(
                H100, onnx_sha, "int8", build_options(b.manifest.get("tensorrt_build")))}
    args.update(over)
    CacheSeal.for_cache(cache).write(path, plan, **args)
    return path


def test_matching_bundled_engine_is_used(tmp_path: Path) -> None:
    b = read_bundle(engine_bundle(tmp_path / "b.edgekd", ORIN, H100))
    plan, where, build_to, notices = _resolve(b, tmp_path / "cache")
    assert plan == b"plan1" and where == str(b.root / "tensorrt/model.int8.1.engine")
    assert notices == ["ignoring bundled engine tensorrt/model.int8.0.engine: built for gpu 'Orin'"
                       " (this device: 'NVIDIA H100 80GB HBM3'), compute_capability '8.7' (this "
                       "device: '9.0'), cuda_runtime '12.6' (this device: '12.8')"]
    assert build_to is not None and build_to.parent == tmp_path / "cache" / "tensorrt"


def test_foreign_engine_means_build_then_cache_hit(tmp_path: Path) -> None:
    b = read_bundle(engine_bundle(tmp_path / "b.edgekd", ORIN))
    cache = tmp_path / "cache"
    plan, where, build_to, notices = _resolve(b, cache)
    assert plan is None and where is None and len(notices) == 1 and "Orin" in notices[0]
    onnx_sha = b.find("onnx", "int8").sha256
    assert build_to == trt_backend.engine_cache_path(cache, onnx_sha, "int8", H100)
    assert build_to.name.startswith(onnx_sha[:16] + "-int8-")
    # what `open` does after a build: the engine sealed for this bundle, device and options
    assert _seal_entry(b, cache) == build_to
    assert _resolve(b, cache)[:2] == (b"plan", str(build_to))
    # another device gets another cache file: engines of two GPUs never overwrite each other
    assert trt_backend.engine_cache_path(cache, onnx_sha, "int8", ORIN) != build_to
    # one timing cache per device, whatever extra keys (JetPack) the exporter's stamp carries
    timing = trt_backend.timing_cache_path(cache, H100)
    assert timing.parent == cache / "tensorrt" and timing.name.startswith("timing-")
    assert trt_backend.timing_cache_path(cache, {**H100, "jetpack_l4t": "R36"}) == timing
    assert trt_backend.timing_cache_path(cache, ORIN) != timing


SEAL_MISMATCH = "its seal does not match this bundle, signer and device, or the file changed"


@pytest.mark.parametrize("tamper", ["edited on disk", "another bundle", "another signer",
                                    "another TensorRT", "other build options",
                                    "self-written sha256 sidecar"])
def test_cached_engine_not_sealed_for_this_load_is_rebuilt(tmp_path: Path, tamper: str) -> None:
    b = read_bundle(engine_bundle(tmp_path / "b.edgekd"))
    cache = tmp_path / "cache"
    onnx_sha = b.find("onnx", "int8").sha256
    build = build_options(None)
    over: dict[str, Any] = {
        "another bundle": {"digest": "0" * 64},
        "another signer": {"signer": "someone-else"},
        "another TensorRT": {"context": trt_backend.cache_context(
            {**H100, "tensorrt": "10.0.1"}, onnx_sha, "int8", build)},
        "other build options": {"context": trt_backend.cache_context(
            H100, onnx_sha, "int8", {**build, "workspace_mib": 64})},
    }.get(tamper, {})
    path = _seal_entry(b, cache, b"PLAN-old", **over)
    if tamper == "edited on disk":
        path.write_bytes(b"PLAN-swapped")  # anyone who can write the cache
    if tamper == "self-written sha256 sidecar":  # what the cache trusted before seals
        path.write_bytes(b"PLAN-swapped")
        sidecar(path).write_text(json.dumps({"stamp": H100, "onnx_sha256": onnx_sha,
                                             "engine_sha256": hashlib.sha256(
                                                 b"PLAN-swapped").hexdigest()}))
    plan, where, build_to, notices = _resolve(b, cache)
    assert plan is None and where is None and build_to == path
    assert notices == [f"cached engine {path} is not used ({SEAL_MISMATCH} after it was written)"]


def test_precisions_offered(bundle_path: Path, tmp_path: Path) -> None:
    assert trt_backend.precisions(read_bundle(bundle_path)) == ["int8", "fp16", "fp32"]
    assert trt_backend.precisions(read_bundle(engine_bundle(tmp_path / "e.edgekd"))) == ["int8"]


@pytest.mark.parametrize(("probe", "message"), [
    ({**GPU_PROBE, "cuda": False, "gpus": [], "error": "no CUDA driver (libcuda.so.1 missing)"},
     r"needs an NVIDIA GPU with its driver; none found \(no CUDA driver"),
    ({**GPU_PROBE, "tensorrt": None},
     r"TensorRT is not installed; pip install 'edgekd\[tensorrt\]'"),
    ({**GPU_PROBE, "cuda_python": False}, r"needs cuda-python .* pip install cuda-python"),
    ({**GPU_PROBE, "tensorrt": "8.6.2"}, r"TensorRT 8.6.2 is installed; edgekd needs TensorRT "
                                         r">= 10 .*pip install 'edgekd\[tensorrt\]'"),
])
def test_clear_error_when_a_piece_is_missing(monkeypatch: pytest.MonkeyPatch, probe: dict,
                                             message: str) -> None:
    monkeypatch.setattr(trt_backend, "probe_cuda", lambda: probe)
    with pytest.raises(BackendUnavailable, match=message):
        trt_backend.check_available()


@pytest.mark.skipif(probe_cuda()["cuda"], reason="this machine has a CUDA GPU")
def test_tensorrt_on_a_machine_without_gpu(bundle_path: Path) -> None:
    result = probe_cuda()
    assert result["cuda"] is False and result["gpus"] == [] and result["error"]
    with pytest.raises(BackendUnavailable, match="TensorRT needs an NVIDIA GPU"):
        load(bundle_path, backend="tensorrt")


@pytest.mark.parametrize(("script", "timeout", "message"), [
    ("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)", 30, r"crashed \(signal 11\)"),
    ("import time; time.sleep(30)", 0.5, r"timed out after 0.5 s"),
    ("print('no json')", 30, r"printed no result"),
])
def test_probe_survives_crash_and_hang(monkeypatch: pytest.MonkeyPatch, script: str,
                                       timeout: float, message: str) -> None:
    monkeypatch.setattr(probe_mod, "_PROBE_SCRIPT", script)
    result = probe_mod._run_probe(timeout)
    assert result["cuda"] is False
    assert re.search(message, result["error"])


def test_probe_runs_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(probe_mod, "_cache", None)
    monkeypatch.setattr(probe_mod, "_run_probe", lambda t: calls.append(t) or {"cuda": False})
    assert probe_cuda() == probe_cuda() == {"cuda": False}
    assert len(calls) == 1
    probe_cuda(refresh=True)
    assert len(calls) == 2


# -- the builder and the backend against stand-ins for tensorrt and cuda-python ----------------
class FakeCudart:
    """cuda-python's runtime API on host memory: a 'device' buffer is a numpy byte array, and a
    copy past its end fails the test instead of corrupting memory."""

    cudaError_t = types.SimpleNamespace(cudaSuccess=0)
    cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)

    def __init__(self) -> None:
        self.buffers: dict[int, np.ndarray] = {}

    def cudaRuntimeGetVersion(self) -> tuple[int, int]:
        return 0, 12080

    def cudaStreamCreate(self) -> tuple[int, int]:
        return 0, 7

    def cudaMalloc(self, size: int) -> tuple[int, int]:
        buf = np.zeros(size, np.uint8)
        self.buffers[buf.ctypes.data] = buf
        return 0, buf.ctypes.data

    def cudaMemcpyAsync(self, dst: int, src: int, n: int, kind: int, stream: int) -> tuple[int]:
        device = dst if kind == self.cudaMemcpyKind.cudaMemcpyHostToDevice else src
        assert n <= self.buffers[device].nbytes
        ctypes.memmove(dst, src, n)
        return (0,)

    def cudaStreamSynchronize(self, stream: int) -> tuple[int]:
        return (0,)

    def cudaFree(self, ptr: int) -> tuple[int]:
        self.buffers.pop(ptr, None)
        return (0,)

    def cudaStreamDestroy(self, stream: int) -> tuple[int]:
        return (0,)


def _install(monkeypatch: pytest.MonkeyPatch, fake: FakeTensorRT) -> FakeTensorRT:
    monkeypatch.setitem(sys.modules, "tensorrt", fake.module)
    return fake


@pytest.fixture()
def fake_device(monkeypatch: pytest.MonkeyPatch) -> FakeCudart:
    """The probe sees an H100 with TensorRT and cuda-python; CUDA calls go to FakeCudart."""
    cudart = FakeCudart()
    monkeypatch.setattr(trt_backend, "probe_cuda", lambda: GPU_PROBE)
    monkeypatch.setattr(trt_backend, "_cudart", lambda: cudart)
    return cudart


def test_int8_build_for_orin_nano_sets_what_the_target_says(tmp_path: Path) -> None:
    rec = FakeTensorRT()
    build = get_target("jetson-orin-nano").tensorrt_build("int8")
    cache = tmp_path / "timing.cache"
    built = build_engine(rec.module, ONNX, "m.int8.onnx", "int8", build, "input", (3, 128),
                         timing_cache=cache)
    assert built.plan == b"PLAN" and built.layers is None  # a GPU engine: nothing to inspect
    calls = rec.calls
    assert ("network_flags", 0) in calls  # TensorRT 10: explicit batch by default, weakly typed
    assert ("parse", ONNX) in calls  # the bytes handed in, not a file reopened
    assert ("pool", "WORKSPACE", 512 * 2**20) in calls
    assert rec.flags() == ["INT8", "FP16"]  # fp16 fallback on
    assert not [c for c in calls if c[0] == "clear_flag"]  # TF32 only matters for fp32
    assert ("set_shape", "input", (1, 3, 128), (1, 3, 128), (32, 3, 128)) in calls
    assert ("timing_cache_in", b"") in calls and ("set_timing_cache", False) in calls
    assert cache.read_bytes() == b"+new"
    # A second build starts from the saved timing cache.
    build_engine(rec.module, ONNX, "m.int8.onnx", "int8", build, "input", (3, 128),
                 timing_cache=cache)
    assert ("timing_cache_in", b"+new") in rec.calls


def test_fp16_fp32_flags_and_failures(tmp_path: Path) -> None:
    build = get_target("x86-nvidia").tensorrt_build("fp16")
    for precision, flags, cleared in (("fp16", ["FP16"], []), ("fp32", [], ["TF32"])):
        rec = FakeTensorRT()
        build_engine(rec.module, ONNX, "m.onnx", precision, build, "input", (3, 128))
        assert rec.flags() == flags
        # TF32 is on in a fresh builder config: an fp32 engine must compute in FP32
        assert [c[1] for c in rec.calls if c[0] == "clear_flag"] == cleared
        assert ("set_shape", "input", (1, 3, 128), (8, 3, 128), (256, 3, 128)) in rec.calls
    with pytest.raises(BundleError,
                       match="TensorRT cannot parse m.onnx: Unsupported ONNX op QLinearConv"):
        build_engine(FakeTensorRT(parse_ok=False).module, ONNX, "m.onnx", "int8", build,
                     "input", (3, 128))
    with pytest.raises(BundleError, match="could not build a int8 engine"):
        build_engine(FakeTensorRT(plan=None).module, ONNX, "m.onnx", "int8", build, "input",
                     (3, 128))
    with pytest.raises(BundleError, match="precision must be one of fp32, fp16, int8, got 'int4'"):
        build_engine(FakeTensorRT().module, ONNX, "m.onnx", "int4", build, "input", (3, 128))


@pytest.mark.parametrize("version", ["8.6.2", "8.5.2.2", "7.1.3"])
def test_tensorrt_older_than_10_is_refused(tmp_path: Path, version: str) -> None:
    rec = FakeTensorRT(version=version)  # JetPack 5 ships TensorRT 8.5/8.6
    with pytest.raises(BackendUnavailable, match=re.escape(
            f"TensorRT {version} is installed; edgekd needs TensorRT >= 10")):
        build_engine(rec.module, ONNX, "m.onnx", "int8", None, "input", (3, 128))
    assert rec.calls == []
    build_engine(FakeTensorRT(version="10.0.1").module, ONNX, "m.onnx", "int8", None,
                 "input", (3, 128))


def test_runtime_refuses_a_tensorrt_older_than_10_before_loading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_device: FakeCudart,
) -> None:
    # JetPack's TensorRT has no pip metadata: the probe says "unknown", the module tells
    monkeypatch.setattr(trt_backend, "probe_cuda", lambda: {**GPU_PROBE, "tensorrt": "unknown"})
    b = read_bundle(engine_bundle(tmp_path / "b.edgekd", H100))
    rec = _install(monkeypatch, FakeTensorRT(version="8.5.2"))
    with pytest.raises(BackendUnavailable, match="TensorRT 8.5.2 is installed; edgekd needs "
                                                 "TensorRT >= 10"):
        trt_backend.open(b, "int8", threads=None, cache_dir=tmp_path / "cache")
    assert not [c for c in rec.calls if c[0] == "deserialize"]


def test_tensorrt_10_network_is_weakly_typed_with_builder_flags(tmp_path: Path) -> None:
    rec = FakeTensorRT(version="10.3.0")
    build_engine(rec.module, ONNX, "m.onnx", "int8", None, "input", (3, 128))
    assert ("network_flags", 0) in rec.calls and rec.flags() == ["INT8"]


def test_tensorrt_11_builds_strongly_typed(tmp_path: Path) -> None:
    rec = FakeTensorRT(version="11.0.0")
    build = get_target("jetson-agx-orin").tensorrt_build("int8")
    build_engine(rec.module, ONNX, "m.onnx", "int8", build, "input", (3, 128))
    assert ("network_flags", 1 << 3) in rec.calls and not rec.flags()
    fp32 = FakeTensorRT(version="11.0.0")
    build_engine(fp32.module, ONNX, "m.onnx", "fp32", build, "input", (3, 128))
    assert ("clear_flag", "TF32") in fp32.calls and not fp32.flags()
    with pytest.raises(BundleError, match="FP16 only from an FP16-typed ONNX"):
        build_engine(rec.module, ONNX, "m.onnx", "fp16", build, "input", (3, 128))


def test_lean_runtime_cannot_build(tmp_path: Path) -> None:
    rec = FakeTensorRT(lean=True)
    with pytest.raises(BackendUnavailable,
                       match=r"TensorRT 10.3.0 here is the lean runtime .*edgekd\[tensorrt\]"):
        build_engine(rec.module, ONNX, "m.onnx", "int8", {}, "input", (3, 128))
    assert rec.calls == []


def test_build_options_fill_defaults_and_refuse_nonsense() -> None:
    assert build_options(None) == DEFAULT_BUILD
    opts = build_options({"opset": 18, "profiles": {"max": "8"}, "fp16_fallback": 1})
    assert opts == {"workspace_mib": 1024, "profiles": {"min": 1, "opt": 1, "max": 8},
                    "fp16_fallback": True, "opset": 18}
    with pytest.raises(BundleError, match=r"1 <= profiles min <= opt <= max .*'min': 4"):
        build_options({"profiles": {"min": 4, "opt": 4, "max": 2}})
    with pytest.raises(BundleError, match="non-integer batch size or workspace"):
        build_options({"workspace_mib": "lots"})
    with pytest.raises(BundleError, match="profiles must be an object"):
        build_options({"profiles": [1, 1, 32]})


def test_first_load_builds_with_the_manifest_options_then_hits_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_device: FakeCudart,
    caplog: pytest.LogCaptureFixture,
) -> None:
    build = {"precision": "int8", "workspace_mib": 256, "profiles": {"max": 8},
             "fp16_fallback": True}
    b = read_bundle(engine_bundle(tmp_path / "b.edgekd", ORIN, fp32=True, build=build))
    rec = _install(monkeypatch, FakeTensorRT())
    cache = tmp_path / "cache"
    with caplog.at_level(logging.WARNING, "edgekd.runtime"):
        engine = trt_backend.open(b, "int8", threads=None, cache_dir=cache)
    assert "ignoring bundled engine" in caplog.text and "building a int8 engine" in caplog.text
    assert ("parse", (b.root / "model.int8.qdq.onnx").read_bytes()) in rec.calls
    assert ("pool", "WORKSPACE", 256 << 20) in rec.calls
    assert rec.flags() == ["INT8", "FP16"]  # the manifest's fp16_fallback
    # the manifest's ONNX input name; default min/opt batch, the manifest's max
    assert ("set_shape", "input", (1, 3, 128), (1, 3, 128), (8, 3, 128)) in rec.calls
    timing = trt_backend.timing_cache_path(cache, H100)
    assert ("timing_cache_in", b"") in rec.calls and timing.read_bytes() == b"+new"
    cached = trt_backend.engine_cache_path(cache, b.find("onnx", "int8").sha256, "int8", H100)
    assert cached.read_bytes() == b"PLAN"
    seal = json.loads(sidecar(cached).read_text())
    assert seal["bundle_digest"] == b.digest and seal["context"]["device"] == H100
    assert seal["context"]["build"]["workspace_mib"] == 256
    assert engine.artifact == str(cached) and engine.max_batch == 8
    x = np.stack([np.full((3, 128), 0.5), np.arange(384).reshape(3, 128)]).astype(np.float32)
    np.testing.assert_array_equal(engine.new_runner()(x), [[192, 0.5], [73536, 383]])

    rec.calls.clear()
    again = trt_backend.open(b, "int8", threads=None, cache_dir=cache)
    assert again.artifact == str(cached) and not [c for c in rec.calls if c[0] == "parse"]
    assert ("deserialize", b"PLAN") in rec.calls  # the sealed bytes, read once
    # another build on this device starts from the timing cache the first one left
    trt_backend.open(b, "fp32", threads=None, cache_dir=cache)
    assert ("parse", (b.root / "model.fp32.onnx").read_bytes()) in rec.calls
    assert ("timing_cache_in", b"+new") in rec.calls and rec.flags() == []


def test_runner_uses_the_engines_own_tensor_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_device: FakeCudart,
) -> None:
    # named the way torch-tensorrt names them, not the manifest's "input" / "logits"
    b = read_bundle(engine_bundle(tmp_path / "b.edgekd", H100, plan=b"PLAN"))
    rec = _install(monkeypatch, FakeTensorRT(io=("input_0", "output_0")))
    engine = trt_backend.open(b, "int8", threads=None, cache_dir=tmp_path / "cache")
    assert engine.artifact == str(b.root / "tensorrt/model.int8.0.engine")
    assert ("deserialize", b"PLAN0") in rec.calls and not [c for c in rec.calls if c[0] == "parse"]
    assert engine.details["io"] == ["input_0", "output_0"]
    runner = engine.new_runner()
    x = np.stack([np.ones((3, 128)), -np.arange(384).reshape(3, 128)]).astype(np.float32)
    np.testing.assert_array_equal(runner(x), [[384, 1], [-73536, 0]])
    np.testing.assert_array_equal(runner(x[1:]), [[-73536, 0]])  # a smaller batch after a larger


@pytest.mark.parametrize(("fake", "message"), [
    (FakeTensorRT(io=("x", "y", "z")), r"one input and one output; this one has inputs \['x'\] "
                                       r"and outputs \['y', 'z'\]"),
    (FakeTensorRT(out_dtype="HALF"), "tensor 'y' is HALF, expected float32 I/O"),
])
def test_engine_io_must_be_one_float_input_and_output(fake: FakeTensorRT, message: str) -> None:
    engine = fake.module.Runtime(None).deserialize_cuda_engine(b"PLAN")
    with pytest.raises(BundleError, match=message):
        trt_backend.io_tensor_names(fake.module, engine, Path("m.engine"))


# -- on a GPU ---------------------------------------------------------------------------------
def _gpu_ready() -> str | None:
    p = probe_cuda()
    if not p["cuda"]:
        return f"no CUDA GPU ({p['error']})"
    if not p["tensorrt"] or not p["cuda_python"]:
        return "TensorRT and cuda-python are needed"
    return None


gpu = pytest.mark.skipif(_gpu_ready() is not None, reason=str(_gpu_ready()))


@pytest.mark.gpu
@gpu
def test_tensorrt_matches_cpu_and_caches_the_engine(
    bundle_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    model_of: Callable[[str, str], Model],
) -> None:
    x, _ = synth.make_windows(40, seed=11)
    with caplog.at_level(logging.WARNING, "edgekd.runtime"):
        fp32 = load(bundle_path, backend="tensorrt", precision="fp32", cache_dir=tmp_path)
    assert "building a fp32 engine" in caplog.text
    cpu = model_of("onnxruntime", "fp32")
    # TF32 is off in fp32 engines: only reorderings separate them from ONNX Runtime's FP32
    # (TF32 rounds matmul inputs to 10-bit mantissas: relative errors of order 1e-3)
    np.testing.assert_allclose(fp32.predict(x).probs, cpu.predict(x).probs, atol=1e-4)
    caplog.clear()
    with caplog.at_level(logging.WARNING, "edgekd.runtime"):
        int8 = load(bundle_path, backend="tensorrt", precision="int8", cache_dir=tmp_path)
        again = load(bundle_path, backend="tensorrt", precision="int8", cache_dir=tmp_path)
    assert caplog.text.count("building a int8 engine") == 1  # the second load hit the cache
    assert (int8.predict(x).index == fp32.predict(x).index).mean() >= 0.95
    events = again.stream().push(np.concatenate(list(x[:4])))
    assert len(events) == (4 * 128 - 128) // 64 + 1


# -- engine integrity, refused shapes and addresses, DLA ---------------------------------------
def test_altered_bundled_engine_is_not_deserialized(tmp_path: Path) -> None:
    root = engine_bundle(tmp_path / "b.edgekd", H100)
    (root / "tensorrt/model.int8.0.engine").write_bytes(b"PLAN1")  # same size, other bytes
    with pytest.raises(BundleError, match="sha256 does not match the manifest"):
        read_bundle(root)  # a verified read refuses the bundle outright
    b = read_bundle(root, verify=False)  # an unverified one: the engine is checked before use
    with pytest.raises(BundleError, match="model.int8.0.engine: sha256 does not match"):
        _resolve(b, tmp_path / "cache")


def test_files_swapped_after_the_check_are_not_what_tensorrt_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_device: FakeCudart,
) -> None:
    """The engine and the ONNX are checked and loaded as one read: a file swapped on disk right
    after its check (by another process) is never what TensorRT deserializes or parses."""
    from edgekd.runtime.bundle import BundleDir

    checked = BundleDir.checked
    swapped: list[str] = []

    def check_then_swap(self: BundleDir, rel: str, sha256: str, size: int) -> bytes:
        data = checked(self, rel, sha256, size)
        (self.path / rel).write_bytes(b"PLAN swapped in")  # what a reopen by path would get
        swapped.append(rel)
        return data

    b = read_bundle(engine_bundle(tmp_path / "b.edgekd", H100, plan=b"PLAN"), verify=False)
    other = read_bundle(engine_bundle(tmp_path / "o.edgekd", ORIN), verify=False)
    monkeypatch.setattr(BundleDir, "checked", check_then_swap)
    rec = _install(monkeypatch, FakeTensorRT())
    engine = trt_backend.open(b, "int8", threads=None, cache_dir=tmp_path / "cache")
    assert swapped == ["tensorrt/model.int8.0.engine"]
    assert engine.artifact == str(b.root / "tensorrt/model.int8.0.engine")
    assert [c for c in rec.calls if c[0] == "deserialize"] == [("deserialize", b"PLAN0")]
    # the first-load build parses the checked ONNX bytes, not the file swapped after the check
    rec.calls.clear()
    swapped.clear()
    trt_backend.open(other, "int8", threads=None, cache_dir=tmp_path / "cache")
    assert swapped == ["model.int8.qdq.onnx"]
    assert [c for c in rec.calls if c[0] == "parse"] == [("parse", b"qdq")]


def _corrupt_cached_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                           fake: FakeTensorRT) -> tuple[Any, Path, FakeTensorRT]:
    """A bundle with no engine, opened once (build + sealed cache entry), then its cached
    engine altered on disk."""
    b = read_bundle(engine_bundle(tmp_path / "b.edgekd", fp32=True))
    _install(monkeypatch, FakeTensorRT())
    first = trt_backend.open(b, "int8", threads=None, cache_dir=tmp_path / "cache")
    cached = Path(first.artifact)
    assert sidecar(cached).is_file()
    cached.write_bytes(b"PLAN, but not the one that was built")
    return b, cached, _install(monkeypatch, fake)


def test_altered_cached_engine_is_rebuilt_with_a_notice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_device: FakeCudart,
    caplog: pytest.LogCaptureFixture,
) -> None:
    b, cached, rec = _corrupt_cached_engine(tmp_path, monkeypatch, FakeTensorRT())
    with caplog.at_level(logging.WARNING, "edgekd.runtime"):
        engine = trt_backend.open(b, "int8", threads=None, cache_dir=tmp_path / "cache")
    assert f"cached engine {cached} is not used ({SEAL_MISMATCH}" in caplog.text
    assert ("parse", (b.root / "model.int8.qdq.onnx").read_bytes()) in rec.calls  # rebuilt
    assert ("deserialize", b"PLAN, but not the one that was built") not in rec.calls
    assert engine.artifact == str(cached) and cached.read_bytes() == b"PLAN"


def test_cached_engine_of_another_bundle_is_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_device: FakeCudart,
) -> None:
    # two bundles with the same QDQ ONNX share the cache path, not the sealed entry
    first = read_bundle(engine_bundle(tmp_path / "a.edgekd", fp32=True))
    rec = _install(monkeypatch, FakeTensorRT())
    cache = tmp_path / "cache"
    a = trt_backend.open(first, "int8", threads=None, cache_dir=cache)
    other = read_bundle(engine_bundle(tmp_path / "b.edgekd", fp32=True,
                                      build={"workspace_mib": 1024}))
    assert other.digest != first.digest
    rec.calls.clear()
    b = trt_backend.open(other, "int8", threads=None, cache_dir=cache)
    assert b.artifact == a.artifact  # same path ...
    assert ("parse", (other.root / "model.int8.qdq.onnx").read_bytes()) in rec.calls  # ... rebuilt
    assert json.loads(sidecar(Path(b.artifact)).read_text())["bundle_digest"] == other.digest


def test_altered_cached_engine_without_a_builder_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_device: FakeCudart,
) -> None:
    b, cached, rec = _corrupt_cached_engine(tmp_path, monkeypatch, FakeTensorRT(lean=True))
    with pytest.raises(BundleError, match=r"no usable int8 TensorRT engine \(cached engine .* is "
                       r"not used \(its seal does not match .*lean runtime, which cannot rebuild"):
        trt_backend.open(b, "int8", threads=None, cache_dir=tmp_path / "cache")
    assert not [c for c in rec.calls if c[0] == "deserialize"]


def test_unusable_cache_key_means_build_without_caching(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_device: FakeCudart,
    caplog: pytest.LogCaptureFixture,
) -> None:
    b = read_bundle(engine_bundle(tmp_path / "b.edgekd", fp32=True))
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "seal.key").write_bytes(b"k" * 32)
    (cache / "seal.key").chmod(0o644)  # readable by others: not a secret any more
    rec = _install(monkeypatch, FakeTensorRT())
    with caplog.at_level(logging.WARNING, "edgekd.runtime"):
        engine = trt_backend.open(b, "int8", threads=None, cache_dir=cache)
    assert "cache is bypassed" in caplog.text and ("deserialize", b"PLAN") in rec.calls
    assert not Path(engine.artifact).exists()  # built, used, not cached unsealed


def test_refused_input_shape_names_the_profile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_device: FakeCudart,
) -> None:
    # the manifest allows batch 32, the engine's profile only 8 (e.g. an engine built elsewhere)
    b = read_bundle(engine_bundle(tmp_path / "b.edgekd", H100, plan=b"PLAN"))
    _install(monkeypatch, FakeTensorRT(profile_max=8))
    engine = trt_backend.open(b, "int8", threads=None, cache_dir=tmp_path / "cache")
    runner = engine.new_runner()
    x = np.ones((9, 3, 128), np.float32)
    with pytest.raises(BundleError, match=re.escape(
            "TensorRT refused input shape (9, 3, 128) for 'x': the engine's profile has min "
            "(1, 3, 128), opt (1, 3, 128), max (8, 3, 128)")):
        runner(x)
    np.testing.assert_array_equal(runner(x[:8])[:, 0], np.full(8, 384))  # within the profile


def test_refused_tensor_address_is_an_error(fake_device: FakeCudart) -> None:
    fake = FakeTensorRT(io=("x", "y"))
    engine = fake.module.Runtime(None).deserialize_cuda_engine(b"PLAN")
    with pytest.raises(BundleError, match="refused the device address of tensor 'logits'"):
        trt_backend._Runner(engine, fake_device, "x", "logits", (3, 128), 2, 8)


def test_dla_core_is_a_target_build_option_with_a_static_profile() -> None:
    from edgekd.errors import ConfigError

    agx = get_target("jetson-agx-orin")
    build = agx.tensorrt_build("int8", dla_core=1)
    # DLA has no dynamic shapes: the target's batch (opt_batch) is min, opt and max
    assert build == {**agx.tensorrt_build("int8"), "profiles": {"min": 8, "opt": 8, "max": 8},
                     "dla_core": 1, "gpu_fallback": True}
    assert build_options(build)["profiles"] == {"min": 8, "opt": 8, "max": 8}
    with pytest.raises(ConfigError, match="--dla-core 2: target 'jetson-agx-orin' has cores 0..1"):
        agx.tensorrt_build("int8", dla_core=2)
    with pytest.raises(ConfigError, match="'jetson-orin-nano' has no DLA core"):
        get_target("jetson-orin-nano").tensorrt_build("int8", dla_core=0)
    with pytest.raises(ConfigError, match="DLA does not run fp32"):
        agx.tensorrt_build("fp32", dla_core=0)
    with pytest.raises(BundleError, match="dla_core must be a DLA core number >= 0, got -1"):
        build_options({"dla_core": -1})
    # what export wrote before: DLA with the dynamic 1..128 profile, i.e. all on the GPU
    with pytest.raises(BundleError, match=r"dla_core 0 needs a static batch profile \(min == "
                       r"opt == max\); got \{'min': 1, 'opt': 8, 'max': 128\}"):
        build_options({"dla_core": 0, "profiles": {"min": 1, "opt": 8, "max": 128}})


def test_dla_build_targets_the_core_and_reads_placement_from_the_built_engine() -> None:
    build = get_target("jetson-agx-orin").tensorrt_build("int8", dla_core=1)
    rec = FakeTensorRT(layers=DLA_LAYERS)
    built = build_engine(rec.module, ONNX, "m.onnx", "int8", build, "input", (3, 128))
    assert ("config", "default_device_type", "DLA") in rec.calls
    assert ("config", "DLA_core", 1) in rec.calls and "GPU_FALLBACK" in rec.flags()
    assert ("set_shape", "input", (8, 3, 128), (8, 3, 128), (8, 3, 128)) in rec.calls
    # every layer is asked, of the config already pointed at the core, before the build: a
    # pre-flight check only
    asked = [i for i, c in enumerate(rec.calls) if c[0] == "can_run_on_DLA"]
    assert [rec.calls[i][1] for i in asked] == ["CONVOLUTION", "ACTIVATION", "SHUFFLE"]
    assert rec.calls.index(("config", "DLA_core", 1)) < asked[0]
    assert asked[-1] < rec.calls.index(("build",))
    # built with detailed verbosity, deserialized on the core, asked through its inspector
    build_at = rec.calls.index(("build",))
    assert rec.calls.index(("config", "profiling_verbosity", "DETAILED")) < build_at
    assert build_at < rec.calls.index(("runtime", "DLA_core", 1)) \
        < rec.calls.index(("deserialize", b"PLAN")) < rec.calls.index(("inspect", "JSON"))
    assert built.plan == b"PLAN" and built.layers == {"dla": 2, "gpu": 1}
    gpu = FakeTensorRT(layers=DLA_LAYERS)
    plain = build_engine(gpu.module, ONNX, "m.onnx", "int8",
                         get_target("jetson-agx-orin").tensorrt_build("int8"), "input", (3, 128))
    assert not [c for c in gpu.calls if c[0] in ("config", "runtime", "deserialize", "inspect",
                                                 "can_run_on_DLA")]
    assert "GPU_FALLBACK" not in gpu.flags() and plain.layers is None


def test_dla_placement_is_what_the_built_engine_says_not_what_the_builder_was_asked() -> None:
    """can_run_on_DLA says 2 of 3 network layers; TensorRT fused the DLA's part into one layer
    and runs the copies to and from the DLA's memory on the GPU: the inspector's count it is."""
    build = get_target("jetson-agx-orin").tensorrt_build("int8", dla_core=1)
    rec = FakeTensorRT(layers=DLA_LAYERS, engine_layers=FUSED_DLA_ENGINE)
    built = build_engine(rec.module, ONNX, "m.onnx", "int8", build, "input", (3, 128))
    assert built.layers == {"dla": 1, "gpu": 4}
    # every layer capable, yet TensorRT put the whole built engine on the GPU: refused
    on_gpu = [("input to nvm", "Reformat"), ("/conv/Conv + /relu/Relu", "CaskConvolution"),
              ("/head/Reshape", "Shuffle")]
    rec = FakeTensorRT(layers=[("CONVOLUTION", True)], engine_layers=on_gpu)
    with pytest.raises(BundleError, match=re.escape(
            "m.onnx: the int8 engine built for DLA core 1 runs none of its 3 layers on the DLA: "
            "TensorRT placed them all on the GPU (its engine inspector says so); build without "
            "--dla-core")):
        build_engine(rec.module, ONNX, "m.onnx", "int8", build, "input", (3, 128))
    assert ("build",) in rec.calls  # the pre-flight check let it through


def test_engine_placement_reads_the_inspector_json_as_tensorrt_writes_it() -> None:
    from edgekd.runtime.trt_build import engine_placement

    rec = FakeTensorRT(engine_layers=FUSED_DLA_ENGINE)
    engine = rec.module.Runtime(None).deserialize_cuda_engine(b"PLAN")
    info = json.loads(engine.create_engine_inspector().get_engine_information("JSON"))
    assert set(info) == {"Layers", "Bindings"}
    assert info["Layers"][1]["Name"] == "{ForeignNode[/conv/Conv.../relu/Relu]}"
    assert info["Layers"][1]["LayerType"] == "DLA"
    assert engine_placement(rec.module, engine) == {"dla": 1, "gpu": 4}
    # built without detailed verbosity: layer names only, which say nothing about the device
    for verbosity in ("LAYER_NAMES_ONLY", "NONE"):
        rec.built_with = {"verbosity": verbosity, "dla": True}
        engine = rec.module.Runtime(None).deserialize_cuda_engine(b"PLAN")
        assert engine_placement(rec.module, engine) is None


def test_dla_build_with_every_layer_on_the_gpu_is_an_error() -> None:
    build = get_target("jetson-agx-orin").tensorrt_build("fp16", dla_core=0)
    rec = FakeTensorRT(layers=GPU_LAYERS)
    with pytest.raises(BundleError, match=re.escape(
            "m.onnx: the fp16 network has no layer that can run on DLA core 0: all 2 would fall "
            "back to the GPU (layer types: REDUCE, SHUFFLE); build without --dla-core")):
        build_engine(rec.module, ONNX, "m.onnx", "fp16", build, "input", (3, 128))
    assert ("build",) not in rec.calls  # refused before TensorRT spends a build on it
    with pytest.raises(BundleError, match="all 0 would fall back .*layer types: none"):
        build_engine(FakeTensorRT(layers=[]).module, ONNX, "m.onnx", "fp16", build,
                     "input", (3, 128))


def test_dla_engine_loads_on_its_core_with_a_padded_static_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_device: FakeCudart,
) -> None:
    build = get_target("jetson-agx-orin").tensorrt_build("int8", dla_core=1)
    b = read_bundle(engine_bundle(tmp_path / "b.edgekd", H100, build=build))
    rec = _install(monkeypatch, FakeTensorRT(layers=DLA_LAYERS, profile_min=8, profile_max=8))
    cache = tmp_path / "cache"
    engine = trt_backend.open(b, "int8", threads=None, cache_dir=cache)
    assert engine.artifact != str(b.root / "tensorrt/model.int8.0.engine")  # a GPU engine
    seal = json.loads(sidecar(Path(engine.artifact)).read_text())
    assert seal["context"]["device"] == {**H100, "dla_core": "1"}
    assert engine.details["layers"] == {"dla": 2, "gpu": 1} and engine.max_batch == 8
    x = np.arange(3 * 384, dtype=np.float32).reshape(3, 3, 128)
    out = engine.new_runner()(x)  # 3 windows into an engine that takes exactly 8
    np.testing.assert_array_equal(out, np.stack([x.reshape(3, -1).sum(1),
                                                 x.reshape(3, -1).max(1)], axis=1))
    # the cached engine is deserialized by a runtime pointed at the core first, and where its
    # layers run is read from it
    rec.calls.clear()
    cached = trt_backend.open(b, "int8", threads=None, cache_dir=cache)
    assert rec.calls.index(("runtime", "DLA_core", 1)) < rec.calls.index(("deserialize", b"PLAN"))
    assert not [c for c in rec.calls if c[0] == "parse"]
    assert cached.details["layers"] == {"dla": 2, "gpu": 1}
    assert rec.calls.index(("deserialize", b"PLAN")) < rec.calls.index(("inspect", "JSON"))
    # so is an engine that came in the bundle, built for this board's DLA core: what its
    # manifest entry claims is not what is reported, the engine's inspector is
    dla_bundle = read_bundle(engine_bundle(tmp_path / "d.edgekd", {**H100, "dla_core": "1"},
                                           plan=b"PLAN", build=build,
                                           layers={"dla": 5, "gpu": 2}))
    rec.calls.clear()
    bundled = trt_backend.open(dla_bundle, "int8", threads=None, cache_dir=cache)
    assert bundled.artifact == str(dla_bundle.root / "tensorrt/model.int8.0.engine")
    assert bundled.details["layers"] == {"dla": 2, "gpu": 1}
    assert rec.calls.index(("runtime", "DLA_core", 1)) < rec.calls.index(("deserialize", b"PLAN0"))
    # an engine whose inspector lists names only (no detailed verbosity): no placement claimed
    rec.built_with = {"verbosity": "LAYER_NAMES_ONLY", "dla": True}
    assert "layers" not in trt_backend.open(dla_bundle, "int8", threads=None,
                                            cache_dir=cache).details
