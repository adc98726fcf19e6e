"""TensorRT: stamp matching, engine cache resolution, the CUDA probe and clear errors (CPU), plus
GPU tests that run only where a CUDA GPU, TensorRT and cuda-python are present."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import runtime_synth as synth

import edgekd.runtime.probe as probe_mod
from edgekd.errors import BackendUnavailable
from edgekd.export.bundle import BundleWriter
from edgekd.runtime import Model, load, read_bundle
from edgekd.runtime.backends import tensorrt as trt_backend
from edgekd.runtime.probe import probe_cuda

ORIN = {"tensorrt": "10.3.0", "gpu": "Orin", "compute_capability": "8.7", "cuda": "12.6"}
H100 = {"tensorrt": "10.3.0", "gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0",
        "cuda": "12.8"}
GPU_PROBE = {"cuda": True, "cuda_version": "12.8", "tensorrt": "10.3.0", "cuda_python": True,
             "gpus": [{"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}],
             "error": None}


def test_device_stamp_and_mismatch_reasons() -> None:
    assert trt_backend.device_stamp(GPU_PROBE, "10.3.0") == H100
    assert trt_backend.stamp_mismatch(dict(H100), H100) is None
    why = trt_backend.stamp_mismatch(ORIN, H100)
    assert why == ("built for gpu 'Orin' (this device: 'NVIDIA H100 80GB HBM3'), "
                   "compute_capability '8.7' (this device: '9.0'), "
                   "cuda '12.6' (this device: '12.8')")
    assert "tensorrt '10.0.1'" in trt_backend.stamp_mismatch({**H100, "tensorrt": "10.0.1"}, H100)
    assert trt_backend.stamp_mismatch(None, H100) == "it has no stamp"


def engine_bundle(out: Path, *stamps: dict) -> Path:
    """A bundle with a (fake) QDQ ONNX and one int8 engine per stamp."""
    with BundleWriter(out) as w:
        w.add_file("model.int8.qdq.onnx", b"qdq", format="onnx", precision="int8")
        for i, stamp in enumerate(stamps):
            w.add_file(f"tensorrt/model.int8.{i}.engine", f"plan{i}".encode(),
                       format="tensorrt_engine", precision="int8", stamp=stamp)
        w.set("labels", ["a", "b"])
        w.set("modality", {"name": "accel", "kind": "timeseries", "rate_hz": 50, "channels": 3,
                           "window": 128, "hop": 64})
        w.set("io", {"input": {"name": "input", "shape": ["batch", 3, 128]},
                     "output": {"name": "logits", "shape": ["batch", 2]}})
    return out


def test_matching_bundled_engine_is_used(tmp_path: Path) -> None:
    b = read_bundle(engine_bundle(tmp_path / "b.edgekd", ORIN, H100))
    path, build_to, notices = trt_backend.resolve_engine(b, "int8", H100, tmp_path / "cache")
    assert path == b.root / "tensorrt/model.int8.1.engine"
    assert notices == ["ignoring bundled engine tensorrt/model.int8.0.engine: built for gpu 'Orin'"
                       " (this device: 'NVIDIA H100 80GB HBM3'), compute_capability '8.7' (this "
                       "device: '9.0'), cuda '12.6' (this device: '12.8')"]
    assert build_to is not None and build_to.parent == tmp_path / "cache" / "tensorrt"


def test_foreign_engine_means_build_then_cache_hit(tmp_path: Path) -> None:
    b = read_bundle(engine_bundle(tmp_path / "b.edgekd", ORIN))
    cache = tmp_path / "cache"
    path, build_to, notices = trt_backend.resolve_engine(b, "int8", H100, cache)
    assert path is None and len(notices) == 1 and "Orin" in notices[0]
    onnx_sha = b.find("onnx", "int8").sha256
    assert build_to == trt_backend.engine_cache_path(cache, onnx_sha, "int8", H100)
    assert build_to.name.startswith(onnx_sha[:16] + "-int8-")
    # what `open` does after a build: the engine and its stamp, side by side
    build_to.parent.mkdir(parents=True)
    build_to.write_bytes(b"plan")
    build_to.with_suffix(".json").write_text(json.dumps({"stamp": H100, "onnx_sha256": onnx_sha}))
    assert trt_backend.resolve_engine(b, "int8", H100, cache)[0] == build_to
    # another device gets another cache file: engines of two GPUs never overwrite each other
    assert trt_backend.engine_cache_path(cache, onnx_sha, "int8", ORIN) != build_to


@pytest.mark.parametrize(("sidecar", "reason"), [
    ({"stamp": {**H100, "tensorrt": "10.0.1"}}, "tensorrt '10.0.1'"),
    ({"stamp": H100, "onnx_sha256": "0" * 64}, "built from another model"),
    (None, "it has no stamp"),
])
def test_stale_cached_engine_is_rebuilt(tmp_path: Path, sidecar: dict | None, reason: str) -> None:
    b = read_bundle(engine_bundle(tmp_path / "b.edgekd"))
    cache = tmp_path / "cache"
    cached = trt_backend.engine_cache_path(cache, b.find("onnx", "int8").sha256, "int8", H100)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"old plan")
    if sidecar is not None:
        sidecar.setdefault("onnx_sha256", b.find("onnx", "int8").sha256)
        cached.with_suffix(".json").write_text(json.dumps(sidecar))
    path, build_to, notices = trt_backend.resolve_engine(b, "int8", H100, cache)
    assert path is None and build_to == cached
    assert len(notices) == 1 and notices[0].startswith(f"cached engine {cached} is stale (")
    assert reason in notices[0]


def test_precisions_offered(bundle_path: Path, tmp_path: Path) -> None:
    assert trt_backend.precisions(read_bundle(bundle_path)) == ["int8", "fp16", "fp32"]
    assert trt_backend.precisions(read_bundle(engine_bundle(tmp_path / "e.edgekd"))) == ["int8"]


@pytest.mark.parametrize(("probe", "message"), [
    ({**GPU_PROBE, "cuda": False, "gpus": [], "error": "no CUDA driver (libcuda.so.1 missing)"},
     r"needs an NVIDIA GPU with its driver; none found \(no CUDA driver"),
    ({**GPU_PROBE, "tensorrt": None},
     r"TensorRT is not installed; pip install 'edgekd\[tensorrt\]'"),
    ({**GPU_PROBE, "cuda_python": False}, r"needs cuda-python .* pip install cuda-python"),
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
    np.testing.assert_allclose(fp32.predict(x).probs, cpu.predict(x).probs, atol=1e-3)
    caplog.clear()
    with caplog.at_level(logging.WARNING, "edgekd.runtime"):
        int8 = load(bundle_path, backend="tensorrt", precision="int8", cache_dir=tmp_path)
        again = load(bundle_path, backend="tensorrt", precision="int8", cache_dir=tmp_path)
    assert caplog.text.count("building a int8 engine") == 1  # the second load hit the cache
    assert (int8.predict(x).index == fp32.predict(x).index).mean() >= 0.95
    events = again.stream().push(np.concatenate(list(x[:4])))
    assert len(events) == (4 * 128 - 128) // 64 + 1
