"""TensorRT backend (NVIDIA GPUs, Jetson): engines built from the bundle's ONNX on this device.

Engines are not portable across GPUs or TensorRT versions, so each is stamped with (TensorRT
version, CUDA runtime version, GPU name, compute capability, the L4T release on Jetson, the DLA
core when built for one). The driver version is not in the stamp: a driver update runs the same
engines and must not force a rebuild. On load: a bundled engine whose stamp matches this device
and whose bytes match the manifest's sha256 is used; else an engine cached in
`<cache_dir>/tensorrt/` whose sidecar stamp, ONNX hash and engine sha256 match; else one is
built from the QDQ (int8) or FP32 ONNX with the manifest's `tensorrt_build` options by
`edgekd.runtime.trt_build.build_engine` (the exporter's builder too; the per-device timing cache
sits beside the cached engines), cached with its sha256, and a notice is logged. A foreign,
stale, altered or undeserializable engine is rebuilt, never a crash; where this TensorRT cannot
build (the lean runtime) that is a BundleError naming why the engine was refused. Nothing
CUDA-related is touched before `probe_cuda` (a subprocess) has seen a GPU: TensorRT segfaults
rather than raising when no driver is present.

Inference uses `tensorrt` with `cuda-python` (`cuda.bindings.runtime`, or the older
`cuda.cudart`) for device memory and streams; each runner owns an execution context, a CUDA
stream and device buffers sized for the profile's largest batch. The I/O tensor names come from
the engine itself: torch-tensorrt names them differently from the manifest's ONNX names.
"""

from __future__ import annotations

import hashlib
import json
import logging
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from edgekd.errors import BackendUnavailable, BundleError
from edgekd.io import atomic_write_bytes, atomic_write_json
from edgekd.runtime.backends import Engine, Runner, import_or_unavailable
from edgekd.runtime.bundle import Artifact, Bundle, sha256_file
from edgekd.runtime.probe import probe_cuda
from edgekd.runtime.trt_build import build_engine, build_options

NAME = "tensorrt"
PACKAGE_HINT = (
    "pip install 'edgekd[tensorrt]' cuda-python (on Jetson, TensorRT comes with JetPack; "
    "install cuda-python matching its CUDA)"
)
# What an engine is valid for; a key a stamp lacks must be absent on the device too (no L4T off
# Jetson, no DLA core for a GPU engine).
STAMP_KEYS = ("tensorrt", "gpu", "compute_capability", "cuda_runtime", "jetpack_l4t", "dla_core")
TIMING_KEYS = ("tensorrt", "gpu", "compute_capability", "cuda_runtime")  # timing cache validity
log = logging.getLogger("edgekd.runtime")


# -- stamps and the engine cache (pure logic, tested without a GPU) ---------------------------
def device_stamp(probe: dict[str, Any], tensorrt_version: str, cuda_runtime: str, *,
                 dla_core: int | None = None) -> dict[str, str]:
    """The stamp an engine built here gets: GPU 0 of the probe, the TensorRT and CUDA runtime
    versions, the L4T release line on Jetson, the DLA core if the engine runs on one."""
    gpu = probe["gpus"][0]
    stamp = {"tensorrt": tensorrt_version, "gpu": gpu["name"],
             "compute_capability": gpu["compute_capability"], "cuda_runtime": cuda_runtime}
    if probe.get("jetpack_l4t"):
        stamp["jetpack_l4t"] = str(probe["jetpack_l4t"])
    if dla_core is not None:
        stamp["dla_core"] = str(dla_core)
    return stamp


def cuda_runtime_version(cudart: Any) -> str:
    """The CUDA runtime version cuda-python reports, e.g. "12.6" ("unknown" if it fails)."""
    err, version = cudart.cudaRuntimeGetVersion()
    if err != cudart.cudaError_t.cudaSuccess:
        return "unknown"
    return f"{version // 1000}.{(version % 1000) // 10}"


def stamp_mismatch(stamp: Any, device: dict[str, str]) -> str | None:
    """None if an engine stamped `stamp` runs on `device`, else why not (for the notice)."""
    if not isinstance(stamp, dict):
        return "it has no stamp"
    diffs = [f"{k} {stamp.get(k)!r} (this device: {device.get(k)!r})" for k in STAMP_KEYS
             if (None if stamp.get(k) is None else str(stamp[k])) != device.get(k)]
    return "built for " + ", ".join(diffs) if diffs else None


def _device_key(device: dict[str, str], keys: tuple[str, ...]) -> str:
    """Short hash of the `keys` a stamp has (other keys ignored)."""
    stamp = {k: device[k] for k in keys if k in device}
    return hashlib.sha256(json.dumps(stamp, sort_keys=True).encode()).hexdigest()[:12]


def engine_cache_path(cache_root: Path, onnx_sha256: str, precision: str,
                      device: dict[str, str]) -> Path:
    """Cache file of the engine for this ONNX, precision and device; its stamp sits beside it
    in `<same name>.json`."""
    return (Path(cache_root) / "tensorrt"
            / f"{onnx_sha256[:16]}-{precision}-{_device_key(device, STAMP_KEYS)}.engine")


def timing_cache_path(cache_root: Path, device: dict[str, str]) -> Path:
    """TensorRT timing cache shared by every build on this device (export and first load):
    keyed by the stamp, since TensorRT refuses a cache made on another GPU or version."""
    return Path(cache_root) / "tensorrt" / f"timing-{_device_key(device, TIMING_KEYS)}.cache"


def onnx_source(bundle: Bundle, precision: str) -> Artifact | None:
    """The ONNX an engine of `precision` is built from: the QDQ model for int8, else FP32."""
    return bundle.find("onnx", "int8" if precision == "int8" else "fp32", NAME)


def resolve_engine(bundle: Bundle, precision: str, device: dict[str, str],
                   cache_root: Path) -> tuple[Path | None, Path | None, list[str]]:
    """(engine to deserialize or None, cache path a (re)build goes to or None, notices).

    Order: a bundled engine of this precision whose stamp matches (its bytes are checked against
    the manifest's sha256 by `bundle.path`: an altered engine is a BundleError, never loaded);
    then the cached engine whose sidecar stamp, ONNX hash and engine sha256 match; else
    (None, cache path): build. The cache path is None only when the bundle has no ONNX to build
    from. Every engine passed over gets a notice saying why.
    """
    notices = []
    source = onnx_source(bundle, precision)
    cached = None if source is None else engine_cache_path(cache_root, source.sha256, precision,
                                                            device)
    for a in bundle.artifacts:
        if a.format == "tensorrt_engine" and a.precision == precision:
            why = stamp_mismatch(a.extra.get("stamp"), device)
            if why is None:
                return bundle.path(a), cached, notices
            notices.append(f"ignoring bundled engine {a.path}: {why}")
    if cached is not None and cached.is_file():
        try:
            meta = json.loads(cached.with_suffix(".json").read_text())
        except (OSError, json.JSONDecodeError):
            meta = {}
        why = stamp_mismatch(meta.get("stamp"), device)
        if why is None and meta.get("onnx_sha256") != source.sha256:
            why = "built from another model"
        if why is None and meta.get("engine_sha256") != sha256_file(cached):
            why = "its bytes do not match the sha256 recorded when it was built"
        if why is None:
            return cached, cached, notices
        notices.append(f"cached engine {cached} is stale ({why})")
    return None, cached, notices


# -- availability ------------------------------------------------------------------------------
def check_available() -> None:
    """BackendUnavailable unless a CUDA GPU, TensorRT and cuda-python are all present."""
    probe = probe_cuda()
    if not probe.get("cuda"):
        raise BackendUnavailable(
            f"TensorRT needs an NVIDIA GPU with its driver; none found ({probe.get('error')})"
        )
    if not probe.get("tensorrt"):
        raise BackendUnavailable(f"TensorRT is not installed; {PACKAGE_HINT}")
    if not probe.get("cuda_python"):
        raise BackendUnavailable(
            "TensorRT inference here needs cuda-python (CUDA memory and streams without torch); "
            "install it with: pip install cuda-python"
        )


def precisions(bundle: Bundle) -> list[str]:
    out = []
    if onnx_source(bundle, "int8") is not None or any(
        a.format == "tensorrt_engine" and a.precision == "int8" for a in bundle.artifacts
    ):
        out.append("int8")
    if bundle.find("onnx", "fp32", NAME) is not None:
        out += ["fp16", "fp32"]
    return out


# -- building and running (needs a GPU) --------------------------------------------------------
def _cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        cudart = import_or_unavailable("cuda.cudart", NAME, "pip install cuda-python")
    return cudart


def _check(cudart: Any, result: Any, what: str) -> Any:
    err, *rest = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        raise BackendUnavailable(f"CUDA call {what} failed: {err}")
    return rest[0] if len(rest) == 1 else rest


def io_tensor_names(trt: Any, engine: Any, where: Path) -> tuple[str, str]:
    """(input, output) tensor names of a deserialized engine, read from the engine: engines
    compiled by torch-tensorrt do not use the manifest's ONNX names. BundleError unless it has
    exactly one float32 input and one float32 output (what the runner feeds and reads)."""
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if n not in inputs]
    if len(inputs) != 1 or len(outputs) != 1:
        raise BundleError(f"{where}: edgekd runs TensorRT engines with one input and one "
                          f"output; this one has inputs {inputs} and outputs {outputs}")
    for name in names:
        if engine.get_tensor_dtype(name) != trt.DataType.FLOAT:
            raise BundleError(f"{where}: TensorRT tensor {name!r} is "
                              f"{engine.get_tensor_dtype(name)}, expected float32 I/O")
    return inputs[0], outputs[0]


class _Runner:
    """One execution context + CUDA stream + device buffers; not thread-safe. TensorRT reports
    a refused shape or address by returning False: each is checked and raised as BundleError."""

    def __init__(self, engine: Any, cudart: Any, in_name: str, out_name: str,
                 feature_shape: tuple[int, ...], num_classes: int, max_batch: int) -> None:
        self._cudart, self._in, self._k, self._engine = cudart, in_name, num_classes, engine
        self._ctx = engine.create_execution_context()
        self._stream = _check(cudart, cudart.cudaStreamCreate(), "cudaStreamCreate")
        self._d_in = _check(cudart, cudart.cudaMalloc(max_batch * int(np.prod(feature_shape)) * 4),
                            "cudaMalloc")
        self._d_out = _check(cudart, cudart.cudaMalloc(max_batch * num_classes * 4), "cudaMalloc")
        weakref.finalize(self, _free, cudart, self._stream, self._d_in, self._d_out)
        for name, buf in ((in_name, self._d_in), (out_name, self._d_out)):
            if not self._ctx.set_tensor_address(name, int(buf)):
                raise BundleError(f"TensorRT refused the device address of tensor {name!r}: "
                                  "the engine has no such I/O tensor")

    def __call__(self, features: np.ndarray) -> np.ndarray:
        cudart = self._cudart
        kind = cudart.cudaMemcpyKind
        if not self._ctx.set_input_shape(self._in, features.shape):
            lo, opt, hi = (tuple(s) for s in self._engine.get_tensor_profile_shape(self._in, 0))
            raise BundleError(f"TensorRT refused input shape {tuple(features.shape)} for "
                              f"{self._in!r}: the engine's profile has min {lo}, opt {opt}, "
                              f"max {hi}")
        _check(cudart, cudart.cudaMemcpyAsync(
            self._d_in, features.ctypes.data, features.nbytes, kind.cudaMemcpyHostToDevice,
            self._stream), "host-to-device copy")
        if not self._ctx.execute_async_v3(int(self._stream)):
            raise BackendUnavailable("TensorRT execute_async_v3 failed (see the TensorRT log)")
        out = np.empty((features.shape[0], self._k), dtype=np.float32)
        _check(cudart, cudart.cudaMemcpyAsync(
            out.ctypes.data, self._d_out, out.nbytes, kind.cudaMemcpyDeviceToHost,
            self._stream), "device-to-host copy")
        _check(cudart, cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return out


def _free(cudart: Any, stream: Any, *buffers: Any) -> None:
    for buf in buffers:
        cudart.cudaFree(buf)
    cudart.cudaStreamDestroy(stream)


def open(bundle: Bundle, precision: str, *, threads: int | None, cache_dir: Path | None) -> Engine:
    """Deserialize (or build and cache) the engine for this device. `threads` is unused."""
    from edgekd.modalities import ModalitySpec, feature_shape
    from edgekd.runtime.backends import cache_dir as default_cache_dir

    check_available()
    trt = import_or_unavailable("tensorrt", NAME, PACKAGE_HINT)
    cudart = _cudart()
    build = build_options(bundle.manifest.get("tensorrt_build"))
    device = device_stamp(probe_cuda(), trt.__version__, cuda_runtime_version(cudart),
                          dla_core=build.get("dla_core"))
    cache_root = cache_dir or default_cache_dir()
    path, build_to, notices = resolve_engine(bundle, precision, device, cache_root)
    for note in notices:
        log.warning("TensorRT: %s", note)
    if path is None and notices and not hasattr(trt, "Builder"):
        raise BundleError(f"{bundle.root}: no usable {precision} TensorRT engine ("
                          f"{'; '.join(notices)}) and TensorRT {trt.__version__} here is the "
                          f"lean runtime, which cannot rebuild it; {PACKAGE_HINT}")
    feat = feature_shape(ModalitySpec.from_dict(bundle.modality))
    logger = trt.Logger(trt.Logger.WARNING)
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(path.read_bytes()) if path is not None else None
    if path is not None and engine is None:
        log.warning("TensorRT: engine %s does not deserialize on this device; rebuilding", path)
    if engine is None:
        source = onnx_source(bundle, precision)
        if source is None or build_to is None:  # both None together; the check narrows types
            raise BundleError(f"{bundle.root}: no {precision} ONNX to build a TensorRT engine from")
        log.warning("TensorRT: building a %s engine for %s from %s (first load on this device; "
                    "cached at %s)", precision, device["gpu"], source.path, build_to)
        plan = build_engine(trt, bundle.path(source), precision, build,
                            bundle.manifest["io"]["input"]["name"], feat,
                            timing_cache=timing_cache_path(cache_root, device))
        atomic_write_bytes(build_to, plan)
        atomic_write_json(build_to.with_suffix(".json"),
                          {"stamp": device, "onnx_sha256": source.sha256, "precision": precision,
                           "engine_sha256": hashlib.sha256(plan).hexdigest()})
        engine = runtime.deserialize_cuda_engine(plan)
        path = build_to
    in_name, out_name = io_tensor_names(trt, engine, path)
    max_batch = build["profiles"]["max"]
    k = len(bundle.labels)

    def new_runner() -> Runner:
        return _Runner(engine, cudart, in_name, out_name, feat, k, max_batch)

    return Engine(backend=NAME, precision=precision, artifact=str(path), new_runner=new_runner,
                  max_batch=max_batch,
                  details={"device": device, "engine": str(path), "io": [in_name, out_name]})
