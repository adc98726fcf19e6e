"""TensorRT at export: probe, build (ONNX or torch-tensorrt frontend), stamp.

The ONNX builder itself is `edgekd.runtime.trt_build.build_engine`, shared with the runtime's
build at first load on the device; this module adds the export-side pieces around it. Torch-free
at import (`tensorrt`, `torch` and `torch_tensorrt` are imported inside the functions).

TensorRT must never be touched in a process without a CUDA driver: its lean runtime segfaults
instead of raising. `unavailable_reason()` asks `edgekd.runtime.probe.probe_cuda` (a subprocess)
first; every entry point here goes through it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekd.errors import BackendUnavailable, BundleError, ExportError
from edgekd.runtime.probe import probe_cuda
from edgekd.runtime.trt_build import TENSORRT_HINT, BuiltEngine, build_engine, version_problem

if TYPE_CHECKING:
    import torch

TORCH_TENSORRT_HINT = "pip install torch-tensorrt (matching your torch and CUDA versions)"


def unavailable_reason() -> str | None:
    """None when a CUDA GPU and a TensorRT >= 10 with a builder are present, else why not (one
    line)."""
    probe = probe_cuda()
    if not probe.get("cuda"):
        return f"no CUDA GPU: {probe.get('error') or 'the driver reports none'}"
    if not probe.get("tensorrt"):
        return "TensorRT is not installed"
    import tensorrt as trt  # safe now: a driver and a GPU answered in the probe

    if not hasattr(trt, "Builder"):
        return f"the installed TensorRT {trt.__version__} is the lean runtime (no builder)"
    return version_problem(trt.__version__)


def require_tensorrt() -> Any:
    """The `tensorrt` module, or BackendUnavailable saying what is missing and how to get it."""
    reason = unavailable_reason()
    if reason is not None:
        raise BackendUnavailable(f"cannot build a TensorRT engine: {reason}; {TENSORRT_HINT}")
    import tensorrt as trt

    return trt


def engine_stamp(trt_version: str, dla_core: int | None = None) -> dict[str, str]:
    """What an engine built here is valid for (`edgekd.runtime.backends.tensorrt.device_stamp`:
    TensorRT and CUDA runtime versions, GPU name, compute capability, L4T on Jetson, the DLA
    core). The CUDA runtime version comes from cuda-python; without it the stamp says "unknown"
    and the device rebuilds the engine at first load."""
    from edgekd.runtime.backends.tensorrt import _cudart, cuda_runtime_version, device_stamp

    try:
        cuda_runtime = cuda_runtime_version(_cudart())
    except BackendUnavailable:
        cuda_runtime = "unknown"
    return device_stamp(probe_cuda(), trt_version, cuda_runtime, dla_core=dla_core)


def build_onnx_engine(
    onnx_path: Path,
    precision: str,
    build: dict[str, Any],
    input_name: str,
    feature_shape: tuple[int, ...],
    *,
    timing_cache: Path | None = None,
) -> BuiltEngine:
    """Engine from TensorRT's ONNX parser: `edgekd.runtime.trt_build.build_engine` (options,
    precisions, DLA placement and the timing cache are documented there) once the probe has
    shown a GPU and a full TensorRT >= 10. BackendUnavailable when one is missing; ExportError
    when this ONNX cannot become an engine of `precision` (a DLA build with no layer on the DLA
    included). The ONNX file, which the export itself wrote, is read once here and named by its
    path in messages."""
    trt = require_tensorrt()
    try:
        return build_engine(
            trt, Path(onnx_path).read_bytes(), str(onnx_path), precision, build, input_name,
            feature_shape, timing_cache=timing_cache,
        )
    except BundleError as exc:
        raise ExportError(f"export cannot build the TensorRT engine: {exc}") from exc


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
