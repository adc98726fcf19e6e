"""OpenVINO (CPU) backend: the IR of each precision when the bundle has it, else its ONNX.

FP32 is compiled with INFERENCE_PRECISION_HINT=f32 so that it stays an honest FP32 baseline on
bf16-capable CPUs (OpenVINO otherwise runs bf16 silently); `bf16` is offered separately where the
CPU supports it. int8 runs the int8 IR, or the QDQ ONNX (OpenVINO folds Q/DQ into int8 kernels).
PERFORMANCE_HINT=LATENCY, INFERENCE_NUM_THREADS=threads (default 1). Each runner owns one
InferRequest (an InferRequest is not thread-safe).

The model is compiled from the bundle's checked bytes (never reopened by path). OpenVINO's own
CACHE_DIR is not used: it would load blobs it finds there unchecked. Instead the compiled model is
exported and kept in `<cache_dir>/openvino/` sealed with the cache's CacheSeal (bound to the
bundle digest, signer, artifact, CPU, OpenVINO version and compile config); a later load imports
it only when the seal matches, anything else is compiled again (for the int8 test CNN on a busy
2-core x86, importing took a median 27 ms against 96-133 ms compiling; see
benchmarks/openvino_cache.py).
"""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgekd.errors import BackendUnavailable, BundleError
from edgekd.runtime.backends import Engine, Runner, import_or_unavailable
from edgekd.runtime.bundle import Artifact, Bundle
from edgekd.runtime.cache_seal import CacheSeal, context_hash
from edgekd.runtime.ov_int8 import compute_precisions

NAME = "openvino"
PACKAGE_HINT = "pip install 'edgekd[openvino]'"
_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # int8: non-quantized ops stay f32
CACHE_KIND = "openvino-compiled-model"
log = logging.getLogger("edgekd.runtime")


def check_available() -> None:
    import_or_unavailable("openvino", NAME, PACKAGE_HINT)


def _source(bundle: Bundle, precision: str) -> Artifact | None:
    stored = "fp32" if precision == "bf16" else precision  # bf16 runs the FP32 model
    return bundle.find("openvino_xml", stored, NAME) or bundle.find("onnx", stored, NAME)


def _model_bytes(bundle: Bundle, artifact: Artifact) -> tuple[bytes, bytes]:
    """(model, weights): the checked bytes of an IR's .xml and of its .bin (which must be a
    listed file too), or of an ONNX model and no weights."""
    if artifact.format == "openvino_xml":
        weights = artifact.path.removesuffix(".xml") + ".bin"
        if not any(a.path == weights for a in bundle.artifacts):
            raise BundleError(f"{bundle.root}: {artifact.path} has no listed weights {weights}")
        return bundle.read(artifact), bundle.read(weights)
    return bundle.read(artifact), b""


def _cpu_has_bf16() -> bool:
    ov = import_or_unavailable("openvino", NAME, PACKAGE_HINT)
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def precisions(bundle: Bundle) -> list[str]:
    out = [p for p in ("int8", "fp32") if _source(bundle, p) is not None]
    if "fp32" in out and _cpu_has_bf16():
        out.append("bf16")
    return out


class _Runner:
    """One InferRequest whose input tensors wrap preallocated arrays, one per recent batch size.

    `request.infer({0: x})` wraps the caller's array in a new tensor on every call; binding a
    reused buffer once and copying features into it made batch-1 calls ~25 us faster (57 vs
    82 us for a 20k-parameter TCN) and cut p99. The tensor is re-bound only when the batch size
    changes, so a stream (always batch 1 between bursts) never re-binds.
    """

    _MAX_BOUND = 4  # batch sizes kept bound at once: bounds memory for odd predict() sizes

    def __init__(self, ov: Any, request: Any) -> None:
        self._ov, self._request = ov, request
        self._buffers: dict[int, tuple[np.ndarray, Any]] = {}
        self._bound: int | None = None

    def __call__(self, features: np.ndarray) -> np.ndarray:
        b = features.shape[0]
        entry = self._buffers.get(b)
        if entry is None:
            if len(self._buffers) >= self._MAX_BOUND:
                self._buffers.clear()
            buf = np.empty(features.shape, dtype=np.float32)
            entry = self._buffers[b] = (buf, self._ov.Tensor(buf, shared_memory=True))
        if self._bound != b:
            self._request.set_input_tensor(entry[1])
            self._bound = b
        np.copyto(entry[0], features)
        self._request.infer()
        # copy: the request reuses its output buffer on the next call
        return self._request.get_output_tensor(0).data.copy()


def _blob_path(cache: Path, bundle: Bundle, precision: str, context: dict[str, Any]) -> Path:
    name = f"{bundle.digest[:16]}-{precision}-{context_hash(context)[:16]}.blob"
    return cache / "openvino" / name


def _compile(core: Any, model: bytes, weights: bytes, config: dict[str, Any],
             entry: tuple[CacheSeal, Path, dict[str, Any]] | None) -> tuple[Any, str]:
    """(compiled model, "hit" | "miss (why)" | "off"). `entry` (seal, blob path, what the seal
    binds): the blob is imported when its seal matches, else the model is compiled, exported
    and sealed there. Without an entry the model is compiled and nothing is cached."""
    if entry is None:
        return core.compile_model(core.read_model(model, weights), "CPU", config), "off"
    seal, blob, sealed = entry
    payload, why = seal.read(blob, **sealed)
    if payload is not None:
        try:
            return core.import_model(payload, "CPU", config), "hit"
        except RuntimeError as exc:  # e.g. a CPU plugin that refuses its own old format
            why = f"OpenVINO cannot import it ({exc})"
    if why != "missing":
        log.warning("OpenVINO: not using cached %s (%s); compiling", blob, why)
    compiled = core.compile_model(core.read_model(model, weights), "CPU", config)
    stream = io.BytesIO()
    compiled.export_model(stream)
    seal.write(blob, stream.getvalue(), **sealed)
    return compiled, f"miss ({why})"


def open(bundle: Bundle, precision: str, *, threads: int | None, cache_dir: Path | None) -> Engine:
    """Compile (or import from the sealed cache in `cache_dir`; None: no cache) the model of
    `precision` from the bundle's checked bytes. `details["cache"]` says which: "hit",
    "miss (why)" or "off"."""
    ov = import_or_unavailable("openvino", NAME, PACKAGE_HINT)
    artifact = _source(bundle, precision)
    if artifact is None:
        raise BackendUnavailable(f"{bundle.root} has no {precision} model for {NAME}")
    model, weights = _model_bytes(bundle, artifact)  # checked before anything is written
    core = ov.Core()
    config = {
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": threads or 1,
        "INFERENCE_PRECISION_HINT": _HINTS[precision],
    }
    seal = None if cache_dir is None else CacheSeal.for_cache(cache_dir)
    entry = None
    if seal is not None and cache_dir is not None:
        context = {"artifact": artifact.path, "artifact_sha256": artifact.sha256,
                   "precision": precision, "device": "CPU",
                   "cpu": core.get_property("CPU", "FULL_DEVICE_NAME"),
                   "openvino": ov.get_version(), "config": {k: str(v) for k, v in config.items()}}
        entry = (seal, _blob_path(cache_dir, bundle, precision, context),
                 {"kind": CACHE_KIND, "digest": bundle.digest, "signer": bundle.signer,
                  "context": context})
    t0 = time.perf_counter()
    compiled, cache = _compile(core, model, weights, config, entry)
    compile_s = time.perf_counter() - t0

    def new_runner() -> Runner:
        return _Runner(ov, compiled.create_infer_request())

    kernels = compute_precisions(compiled)
    return Engine(
        backend=NAME, precision=precision, artifact=artifact.path, new_runner=new_runner,
        details={"openvino": ov.get_version(), "threads": config["INFERENCE_NUM_THREADS"],
                 "inference_precision": _HINTS[precision], "compile_s": compile_s,
                 "compute_precisions": kernels, "cache": cache,
                 "cache_blob": None if entry is None else str(entry[1])},
    )
