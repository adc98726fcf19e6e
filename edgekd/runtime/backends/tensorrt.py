"""TensorRT backend (NVIDIA GPUs, Jetson): engines built from the bundle's ONNX on this device.

Engines are not portable across GPUs or TensorRT versions, so each is stamped with (TensorRT
version, CUDA runtime version, GPU name, compute capability, the L4T release on Jetson, the DLA
core when built for one). The driver version is not in the stamp: a driver update runs the same
engines and must not force a rebuild. On load: a bundled engine whose stamp matches this device
and whose bytes match the manifest's sha256 is used; else the engine cached in
`<cache_dir>/tensorrt/` if its seal (`edgekd.runtime.cache_seal`: this bundle's digest and
signer, the device stamp, the ONNX sha256, the precision and the build options) matches; else
one is built from the QDQ (int8) or FP32 ONNX with the manifest's `tensorrt_build` options by
`edgekd.runtime.trt_build.build_engine` (the exporter's builder too; the per-device timing cache,
which TensorRT validates itself, sits beside the cached engines), cached sealed, and a notice is
logged. The bytes deserialized are the bytes checked: files are read once, never reopened. A
foreign, stale, altered, unsealed or undeserializable engine is rebuilt, never a crash; where
this TensorRT cannot build (the lean runtime) that is a BundleError naming why the engine was
refused. TensorRT older than 10 is refused (BackendUnavailable). Nothing CUDA-related is touched
before `probe_cuda` (a subprocess) has seen a GPU: TensorRT segfaults rather than raising when no
driver is present.

DLA (`tensorrt_build.dla_core`): the runtime is pointed at that core (`Runtime.DLA_core`) before
it deserializes, and the engine has a static batch (smaller calls are zero-padded to it). The
engine's details have `layers`, `{"dla": n, "gpu": m}`: the layers of the engine deserialized
here (built by this load, cached or bundled) by where they run, read from that engine's
inspector (`trt_build.engine_placement`), never from what a manifest or a builder claims; absent
when the inspector gives no per-layer detail (an engine built without detailed profiling
verbosity).

Inference uses `tensorrt` with `cuda-python` (`cuda.bindings.runtime`, or the older
`cuda.cudart`) for device memory and streams; each runner owns an execution context, a CUDA
stream and device buffers sized for the profile's largest batch. The I/O tensor names come from
the engine itself: torch-tensorrt names them differently from the manifest's ONNX names.
"""

from __future__ import annotations

import logging
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from edgekd.errors import BackendUnavailable, BundleError
from edgekd.runtime.backends import Engine, Runner, import_or_unavailable
from edgekd.runtime.bundle import Artifact, Bundle
from edgekd.runtime.cache_seal import CacheSeal, context_hash
from edgekd.runtime.probe import probe_cuda
from edgekd.runtime.trt_build import (
    build_engine,
    build_options,
    check_version,
    engine_placement,
    version_problem,
)

NAME = "tensorrt"
PACKAGE_HINT = (
    "pip install 'edgekd[tensorrt]' cuda-python (on Jetson, TensorRT comes with JetPack; "
    "install cuda-python matching its CUDA)"
)
# What an engine is valid for; a key a stamp lacks must be absent on the device too (no L4T off
# Jetson, no DLA core for a GPU engine).
STAMP_KEYS = ("tensorrt", "gpu", "compute_capability", "cuda_runtime", "jetpack_l4t", "dla_core")
TIMING_KEYS = ("tensorrt", "gpu", "compute_capability", "cuda_runtime")  # timing cache validity
ENGINE_KIND = "tensorrt_engine"  # the cache seal's kind of a cached engine
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
    return context_hash({k: device[k] for k in keys if k in device})[:12]


def engine_cache_path(cache_root: Path, onnx_sha256: str, precision: str,
                      device: dict[str, str]) -> Path:
    """Cache file of the engine for this ONNX, precision and device; its seal sits beside it
    (`edgekd.runtime.cache_seal.sidecar`)."""
    return (Path(cache_root) / "tensorrt"
            / f"{onnx_sha256[:16]}-{precision}-{_device_key(device, STAMP_KEYS)}.engine")


def timing_cache_path(cache_root: Path, device: dict[str, str]) -> Path:
    """TensorRT timing cache shared by every build on this device (export and first load):
    keyed by the stamp, since TensorRT refuses a cache made on another GPU or version."""
    return Path(cache_root) / "tensorrt" / f"timing-{_device_key(device, TIMING_KEYS)}.cache"


def onnx_source(bundle: Bundle, precision: str) -> Artifact | None:
    """The ONNX an engine of `precision` is built from: the QDQ model for int8, else FP32."""
    return bundle.find("onnx", "int8" if precision == "int8" else "fp32", NAME)


def cache_context(device: dict[str, str], onnx_sha256: str, precision: str,
                  build: dict[str, Any]) -> dict[str, Any]:
    """What a cached engine is sealed with besides the bundle: the device stamp, the ONNX it was
    built from, the precision and the build options (workspace, profile, fallback, DLA core)."""
    return {"device": device, "onnx_sha256": onnx_sha256, "precision": precision,
            "build": build}


def resolve_engine(bundle: Bundle, precision: str, device: dict[str, str], cache_root: Path,
                   seal: CacheSeal | None, build: dict[str, Any],
                   ) -> tuple[bytes | None, str | None, Path | None, list[str]]:
    """(engine bytes to deserialize or None, where they came from, cache path a (re)build goes
    to or None, notices).

    Order: a bundled engine of this precision whose stamp matches (its bytes are checked against
    the manifest's sha256 by `Bundle.read`: an altered engine is a BundleError, never loaded);
    then the cached engine if `seal` (None: the cache is bypassed) vouches for it for this
    bundle, signer and `cache_context`; else (None, None, cache path): build. The cache path is
    None only when the bundle has no ONNX to build from. Every engine passed over gets a notice
    saying why. The bytes returned are the ones checked: deserialize them, never reopen the file.
    """
    notices = []
    source = onnx_source(bundle, precision)
    cached = None if source is None else engine_cache_path(cache_root, source.sha256, precision,
                                                            device)
    for a in bundle.artifacts:
        if a.format == "tensorrt_engine" and a.precision == precision:
            why = stamp_mismatch(a.extra.get("stamp"), device)
            if why is None:
                return bundle.read(a), str(bundle.root / a.path), cached, notices
            notices.append(f"ignoring bundled engine {a.path}: {why}")
    if cached is not None and seal is not None and source is not None:
        plan, why = seal.read(cached, kind=ENGINE_KIND, digest=bundle.digest,
                              signer=bundle.signer,
                              context=cache_context(device, source.sha256, precision, build))
        if plan is not None:
            return plan, str(cached), cached, notices
        if why != "missing":
            notices.append(f"cached engine {cached} is not used ({why})")
    return None, None, cached, notices


# -- availability ------------------------------------------------------------------------------
def check_available() -> None:
    """BackendUnavailable unless a CUDA GPU, TensorRT >= 10 and cuda-python are all present
    (a TensorRT without pip metadata, JetPack's, is version-checked when it is imported)."""
    probe = probe_cuda()
    if not probe.get("cuda"):
        raise BackendUnavailable(
            f"TensorRT needs an NVIDIA GPU with its driver; none found ({probe.get('error')})"
        )
    if not probe.get("tensorrt"):
        raise BackendUnavailable(f"TensorRT is not installed; {PACKAGE_HINT}")
    too_old = (None if probe["tensorrt"] == "unknown"
               else version_problem(str(probe["tensorrt"])))
    if too_old is not None:
        raise BackendUnavailable(f"{too_old}; {PACKAGE_HINT}")
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
    a refused shape or address by returning False: each is checked and raised as BundleError.
    Fewer than `min_batch` windows (a static DLA profile) are zero-padded up to it; the
    padding's outputs are dropped."""

    def __init__(self, engine: Any, cudart: Any, in_name: str, out_name: str,
                 feature_shape: tuple[int, ...], num_classes: int, max_batch: int,
                 min_batch: int = 1) -> None:
        self._cudart, self._in, self._k, self._engine = cudart, in_name, num_classes, engine
        self._min_batch = min_batch
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
        n = features.shape[0]
        if n < self._min_batch:
            pad = np.zeros((self._min_batch - n, *features.shape[1:]), dtype=features.dtype)
            features = np.concatenate([features, pad])
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
        return out[:n]


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
    check_version(trt)
    cudart = _cudart()
    build = build_options(bundle.manifest.get("tensorrt_build"))
    dla = build.get("dla_core")
    device = device_stamp(probe_cuda(), trt.__version__, cuda_runtime_version(cudart),
                          dla_core=dla)
    cache_root = cache_dir or default_cache_dir()
    seal = CacheSeal.for_cache(cache_root)  # None: a warning says why the cache is bypassed
    plan, where, build_to, notices = resolve_engine(bundle, precision, device, cache_root, seal,
                                                    build)
    for note in notices:
        log.warning("TensorRT: %s", note)
    if plan is None and notices and not hasattr(trt, "Builder"):
        raise BundleError(f"{bundle.root}: no usable {precision} TensorRT engine ("
                          f"{'; '.join(notices)}) and TensorRT {trt.__version__} here is the "
                          f"lean runtime, which cannot rebuild it; {PACKAGE_HINT}")
    feat = feature_shape(ModalitySpec.from_dict(bundle.modality))
    logger = trt.Logger(trt.Logger.WARNING)
    runtime = trt.Runtime(logger)
    if dla is not None:
        runtime.DLA_core = dla  # a DLA engine runs on the core its runtime names when it loads
    engine = runtime.deserialize_cuda_engine(plan) if plan is not None else None
    if plan is not None and engine is None:
        log.warning("TensorRT: engine %s does not deserialize on this device; rebuilding", where)
    if engine is None:
        source = onnx_source(bundle, precision)
        if source is None or build_to is None:  # both None together; the check narrows types
            raise BundleError(f"{bundle.root}: no {precision} ONNX to build a TensorRT engine from")
        log.warning("TensorRT: building a %s engine for %s from %s (first load on this device; "
                    "cached at %s)", precision, device["gpu"], source.path,
                    build_to if seal is not None else "nowhere: the cache is bypassed")
        built = build_engine(trt, bundle.read(source), str(bundle.root / source.path), precision,
                             build, bundle.manifest["io"]["input"]["name"], feat,
                             timing_cache=timing_cache_path(cache_root, device))
        if seal is not None:
            seal.write(build_to, built.plan, kind=ENGINE_KIND, digest=bundle.digest,
                       signer=bundle.signer,
                       context=cache_context(device, source.sha256, precision, build))
        engine = runtime.deserialize_cuda_engine(built.plan)
        if engine is None:
            raise BundleError(f"{bundle.root}: the {precision} TensorRT engine just built from "
                              f"{source.path} does not deserialize (see the TensorRT log)")
        where = str(build_to)
    in_name, out_name = io_tensor_names(trt, engine, Path(str(where)))
    prof = build["profiles"]
    k = len(bundle.labels)
    details: dict[str, Any] = {"device": device, "engine": where, "io": [in_name, out_name]}
    # where a DLA engine's layers run: asked of the engine that runs, whatever its source
    layers = engine_placement(trt, engine) if dla is not None else None
    if layers is not None:
        details["layers"] = layers

    def new_runner() -> Runner:
        return _Runner(engine, cudart, in_name, out_name, feat, k, prof["max"], prof["min"])

    return Engine(backend=NAME, precision=precision, artifact=str(where), new_runner=new_runner,
                  max_batch=prof["max"], details=details)
