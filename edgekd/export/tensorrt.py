"""TensorRT engines: build from ONNX (explicit int8 from the QDQ graph, FP16, FP32), stamp, cache.

Torch-free at import (numpy and the stdlib only; `tensorrt` is imported inside the functions), so
the on-device build at first load can use the same builder without pulling torch in.

TensorRT must never be touched in a process without a CUDA driver: its lean runtime segfaults
instead of raising. `unavailable_reason()` asks `edgekd.runtime.probe.probe_cuda` (a subprocess)
first; every builder entry point goes through it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekd.errors import BackendUnavailable, ExportError
from edgekd.io import atomic_write_bytes
from edgekd.runtime.probe import probe_cuda

if TYPE_CHECKING:
    import torch

TENSORRT_HINT = "pip install 'edgekd[tensorrt]' (on Jetson TensorRT comes with JetPack)"
TORCH_TENSORRT_HINT = "pip install torch-tensorrt (matching your torch and CUDA versions)"
ENGINE_PRECISIONS = ("fp32", "fp16", "int8")


def unavailable_reason() -> str | None:
    """None when a CUDA GPU and a TensorRT with a builder are present, else why not (one line)."""
    probe = probe_cuda()
    if not probe.get("cuda"):
        return f"no CUDA GPU: {probe.get('error') or 'the driver reports none'}"
    if not probe.get("tensorrt"):
        return "TensorRT is not installed"
    import tensorrt as trt  # safe now: a driver and a GPU answered in the probe

    if not hasattr(trt, "Builder"):
        return f"the installed TensorRT {trt.__version__} is the lean runtime (no builder)"
    return None


def require_tensorrt() -> Any:
    """The `tensorrt` module, or BackendUnavailable saying what is missing and how to get it."""
    reason = unavailable_reason()
    if reason is not None:
        raise BackendUnavailable(f"cannot build a TensorRT engine: {reason}; {TENSORRT_HINT}")
    import tensorrt as trt

    return trt


def engine_stamp(trt_version: str) -> dict[str, str]:
    """What an engine built here is valid for: TensorRT version, GPU name, compute capability,
    CUDA version (and the L4T / JetPack release line on Jetson)."""
    from edgekd.runtime.backends.tensorrt import device_stamp

    probe = probe_cuda()
    stamp = device_stamp(probe, trt_version)
    if probe.get("jetpack_l4t"):
        stamp["jetpack_l4t"] = str(probe["jetpack_l4t"])
    return stamp


def build_engine(
    onnx_path: Path,
    precision: str,
    build: dict[str, Any],
    input_name: str,
    feature_shape: tuple[int, ...],
    *,
    timing_cache: Path | None = None,
) -> bytes:
    """Serialized TensorRT engine for `onnx_path`.

    `build` is the manifest's `tensorrt_build` section: `workspace_mib`, `profiles` {min, opt,
    max} (batch sizes of the one optimization profile), `fp16_fallback`. int8 expects a QDQ
    graph: TensorRT takes every scale from the Q/DQ nodes (explicit quantization, no calibrator);
    with `fp16_fallback` the layers left unquantized may run in FP16. `timing_cache` (a file,
    created if missing) makes rebuilds on the same device fast.
    """
    if precision not in ENGINE_PRECISIONS:
        raise ExportError(
            f"TensorRT precision must be one of {ENGINE_PRECISIONS}, got {precision!r}"
        )
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(
        _network_flags(trt, precision)
    )  # explicit batch: TRT 10 default
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT cannot parse {onnx_path}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(build["workspace_mib"]) << 20)
    if _weakly_typed(trt):  # a strongly typed network takes its precisions from the graph
        for flag in _precision_flags(precision, bool(build.get("fp16_fallback", False))):
            config.set_flag(getattr(trt.BuilderFlag, flag))

    profiles = build["profiles"]
    profile = builder.create_optimization_profile()
    shapes = [(int(profiles[k]), *feature_shape) for k in ("min", "opt", "max")]
    profile.set_shape(input_name, *shapes)
    config.add_optimization_profile(profile)

    cache = config.create_timing_cache(
        timing_cache.read_bytes() if timing_cache is not None and timing_cache.is_file() else b""
    )
    config.set_timing_cache(cache, ignore_mismatch=False)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ExportError(
            f"TensorRT could not build a {precision} engine from {onnx_path} (see the TensorRT log)"
        )
    if timing_cache is not None:
        atomic_write_bytes(timing_cache, bytes(cache.serialize()))
    return bytes(plan)


def _network_flags(trt: Any, precision: str) -> int:
    """0 (weakly typed, precision from builder flags) on TensorRT 10; TensorRT 11 dropped weak
    typing, so there int8/fp32 networks are strongly typed (types from the Q/DQ graph) and FP16
    would need an FP16-typed ONNX, which export does not write."""
    if _weakly_typed(trt):
        return 0
    if precision == "fp16":
        raise ExportError(
            f"TensorRT {trt.__version__} builds FP16 only from an FP16-typed ONNX; "
            "export int8 or fp32"
        )
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def _weakly_typed(trt: Any) -> bool:
    return hasattr(trt.BuilderFlag, "INT8")


def _precision_flags(precision: str, fp16_fallback: bool) -> list[str]:
    """BuilderFlag names to set for a weakly typed (TensorRT 10) network."""
    if precision == "fp16":
        return ["FP16"]
    if precision == "int8":
        return ["INT8", "FP16"] if fp16_fallback else ["INT8"]
    return []


def compile_torch_tensorrt(
    model: torch.nn.Module,
    precision: str,
    build: dict[str, Any],
    feature_shape: tuple[int, ...],
) -> bytes:
    """Serialized TensorRT engine compiled by torch-tensorrt's dynamo frontend (FP32/FP16 only:
    its int8 path needs a ModelOpt-quantized model; use the ONNX frontend for int8)."""
    try:
        import torch_tensorrt
    except ImportError as exc:
        raise BackendUnavailable(
            f"--trt-frontend torch-tensorrt needs the torch-tensorrt package ({exc}); "
            f"{TORCH_TENSORRT_HINT}"
        ) from exc
    import torch

    if precision == "int8":
        raise ExportError("torch-tensorrt builds fp16/fp32 here; use --trt-frontend onnx for int8")
    require_tensorrt()
    profiles = build["profiles"]
    spec = torch_tensorrt.Input(
        min_shape=(int(profiles["min"]), *feature_shape),
        opt_shape=(int(profiles["opt"]), *feature_shape),
        max_shape=(int(profiles["max"]), *feature_shape),
        dtype=torch.float32,
    )
    enabled = {torch.float32} | ({torch.float16} if precision == "fp16" else set())
    try:
        plan = torch_tensorrt.convert_method_to_trt_engine(
            model.eval().cuda(),
            ir="dynamo",
            inputs=[spec],
            enabled_precisions=enabled,
            workspace_size=int(build["workspace_mib"]) << 20,
        )
    except Exception as exc:  # torch-tensorrt raises assorted errors per converter
        raise ExportError(f"torch-tensorrt could not compile the model: {exc}") from exc
    return bytes(plan)
