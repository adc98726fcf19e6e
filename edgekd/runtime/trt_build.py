"""The one TensorRT engine builder: ONNX -> serialized engine (explicit int8 from the QDQ graph,
FP16, FP32), used by the exporter and by the runtime's build at first load on the device.

Torch-free, and TensorRT-free at import: callers pass the `tensorrt` module in, imported only
after `edgekd.runtime.probe.probe_cuda` (a subprocess) has seen a driver and a GPU, because
TensorRT segfaults instead of raising without one.

Errors: BackendUnavailable when a piece is missing (a lean TensorRT runtime has no builder);
BundleError when this ONNX cannot become an engine of this precision here (bad build options,
parse or build failure). The exporter re-raises the latter as ExportError.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgekd.constants import PRECISIONS
from edgekd.errors import BackendUnavailable, BundleError
from edgekd.io import atomic_write_bytes

TENSORRT_HINT = "pip install 'edgekd[tensorrt]' (on Jetson TensorRT comes with JetPack)"
# What a bundle without (parts of) `tensorrt_build` gets: batch 1..32, tuned for batch 1
# (streaming), int8 strictly in int8.
DEFAULT_BUILD: dict[str, Any] = {
    "workspace_mib": 1024,
    "profiles": {"min": 1, "opt": 1, "max": 32},
    "fp16_fallback": False,
}


def build_options(build: Mapping[str, Any] | None) -> dict[str, Any]:
    """The manifest's `tensorrt_build` with DEFAULT_BUILD filling in what it lacks (`profiles`
    merged key by key), values normalised to int / bool; other keys are kept as they are.
    BundleError unless `workspace_mib` >= 1, 1 <= profiles min <= opt <= max and `dla_core`
    (optional) is a core number."""
    given = dict(build or {})
    profiles = given.get("profiles", {})
    if not isinstance(profiles, Mapping):
        raise BundleError(f"tensorrt_build.profiles must be an object with min/opt/max batch "
                          f"sizes, got {profiles!r}")
    merged = {**DEFAULT_BUILD["profiles"], **profiles}
    try:
        lo, opt, hi = (int(merged[k]) for k in ("min", "opt", "max"))
        workspace = int(given.get("workspace_mib", DEFAULT_BUILD["workspace_mib"]))
    except (TypeError, ValueError) as exc:
        raise BundleError(f"tensorrt_build holds a non-integer batch size or workspace: {exc}"
                          ) from exc
    if not 1 <= lo <= opt <= hi or workspace < 1:
        raise BundleError(f"tensorrt_build needs 1 <= profiles min <= opt <= max and "
                          f"workspace_mib >= 1; got profiles {dict(merged)}, workspace_mib "
                          f"{workspace}")
    dla = given.get("dla_core")
    if dla is not None and (isinstance(dla, bool) or not isinstance(dla, int) or dla < 0):
        raise BundleError(f"tensorrt_build.dla_core must be a DLA core number >= 0, got {dla!r}")
    return {**DEFAULT_BUILD, **given, "workspace_mib": workspace,
            "profiles": {"min": lo, "opt": opt, "max": hi},
            "fp16_fallback": bool(given.get("fp16_fallback", DEFAULT_BUILD["fp16_fallback"]))}


def build_engine(
    trt: Any,
    onnx_path: Path,
    precision: str,
    build: Mapping[str, Any] | None,
    input_name: str,
    feature_shape: tuple[int, ...],
    *,
    timing_cache: Path | None = None,
) -> bytes:
    """Serialized TensorRT engine for `onnx_path`, with one optimization profile over the batch.

    `trt`: the imported `tensorrt` module. `build`: the manifest's `tensorrt_build` section
    (`workspace_mib`, `profiles` {min, opt, max} batch sizes, `fp16_fallback`; defaults from
    DEFAULT_BUILD). int8 expects a QDQ graph: TensorRT takes every scale from the Q/DQ nodes
    (explicit quantization, no calibrator); with `fp16_fallback` the layers the graph leaves
    unquantized may run in FP16. With `dla_core` the engine runs on that DLA core, layers DLA
    cannot run falling back to the GPU (fp16/int8 only). `input_name`: the ONNX input the
    profile shapes as (batch, *feature_shape). `timing_cache`: a file (created if missing,
    rewritten atomically) that makes rebuilds on the same device fast; key it by device,
    TensorRT refuses foreign ones.
    """
    if precision not in PRECISIONS:
        raise BundleError(f"{onnx_path}: TensorRT precision must be one of "
                          f"{', '.join(PRECISIONS)}, got {precision!r}")
    if not hasattr(trt, "Builder"):
        raise BackendUnavailable(
            f"cannot build a TensorRT engine: TensorRT {trt.__version__} here is the lean runtime "
            f"(no builder); install the full TensorRT: {TENSORRT_HINT}"
        )
    opts = build_options(build)
    flags = _network_flags(trt, precision, onnx_path)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BundleError(f"TensorRT cannot parse {onnx_path}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, opts["workspace_mib"] << 20)
    if _weakly_typed(trt):  # a strongly typed network takes its precisions from the graph
        for flag in _precision_flags(precision, opts["fp16_fallback"]):
            config.set_flag(getattr(trt.BuilderFlag, flag))

    if opts.get("dla_core") is not None:
        if precision == "fp32":
            raise BundleError(f"{onnx_path}: DLA runs fp16 or int8, not fp32 (tensorrt_build "
                              f"dla_core {opts['dla_core']})")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = opts["dla_core"]
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)

    prof = opts["profiles"]
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, *[(prof[k], *feature_shape) for k in ("min", "opt", "max")])
    config.add_optimization_profile(profile)

    cache = config.create_timing_cache(
        timing_cache.read_bytes() if timing_cache is not None and timing_cache.is_file() else b""
    )
    config.set_timing_cache(cache, ignore_mismatch=False)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BundleError(
            f"TensorRT could not build a {precision} engine from {onnx_path} (see the TensorRT log)"
        )
    if timing_cache is not None:
        atomic_write_bytes(timing_cache, bytes(cache.serialize()))
    return bytes(plan)


def _network_flags(trt: Any, precision: str, onnx_path: Path) -> int:
    """Network creation flags. TensorRT < 10: explicit batch must be asked for (the only mode
    from 10 on). TensorRT 10: weakly typed, precisions from builder flags (0). TensorRT 11
    dropped weak typing: int8/fp32 networks are strongly typed (types from the Q/DQ graph) and
    FP16 would need an FP16-typed ONNX, which export does not write."""
    if not _weakly_typed(trt):
        if precision == "fp16":
            raise BundleError(
                f"TensorRT {trt.__version__} builds FP16 only from an FP16-typed ONNX and "
                f"{onnx_path} is not one; use int8 or fp32"
            )
        return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    if int(trt.__version__.split(".")[0]) < 10:
        return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    return 0


def _weakly_typed(trt: Any) -> bool:
    return hasattr(trt.BuilderFlag, "INT8")


def _precision_flags(precision: str, fp16_fallback: bool) -> list[str]:
    """BuilderFlag names to set for a weakly typed (TensorRT <= 10) network."""
    if precision == "fp16":
        return ["FP16"]
    if precision == "int8":
        return ["INT8", "FP16"] if fp16_fallback else ["INT8"]
    return []
