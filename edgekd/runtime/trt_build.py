"""The one TensorRT engine builder: ONNX -> serialized engine (explicit int8 from the QDQ graph,
FP16, FP32 without TF32; optionally on a DLA core), used by the exporter and by the runtime's
build at first load on the device. TensorRT 10 or newer (MIN_TENSORRT); older ones are refused.

Torch-free, and TensorRT-free at import: callers pass the `tensorrt` module in, imported only
after `edgekd.runtime.probe.probe_cuda` (a subprocess) has seen a driver and a GPU, because
TensorRT segfaults instead of raising without one.

Errors: BackendUnavailable when a piece is missing (a lean TensorRT runtime has no builder, a
TensorRT older than MIN_TENSORRT); BundleError when this ONNX cannot become an engine of this
precision here (bad build options, parse or build failure, a DLA build with no layer that can
run on the DLA, or whose built engine runs none on it). The exporter re-raises the latter as
ExportError.

Where a DLA engine's layers run is read from the built engine itself (`engine_placement`:
`ICudaEngine.create_engine_inspector()`, `get_engine_information(LayerInformationFormat.JSON)`),
not from what the builder was asked (`IBuilderConfig.can_run_on_DLA` is only a pre-flight check):
TensorRT may move a DLA-capable layer to the GPU while building.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekd.constants import PRECISIONS
from edgekd.errors import BackendUnavailable, BundleError
from edgekd.io import atomic_write_bytes

log = logging.getLogger("edgekd.runtime")
TENSORRT_HINT = "pip install 'edgekd[tensorrt]' (on Jetson TensorRT comes with JetPack)"
# TensorRT 10 is the first with only explicit batch and the name-based I/O tensor API
# (set_tensor_address / execute_async_v3) the runner uses; JetPack 6 ships it.
MIN_TENSORRT = 10
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
    (optional) is a core number with a static batch profile (min == opt == max: DLA has no
    dynamic shapes, so a dynamic profile puts every layer on the GPU fallback)."""
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
    if dla is not None and not lo == opt == hi:
        raise BundleError(f"tensorrt_build.dla_core {dla} needs a static batch profile (min == "
                          f"opt == max); got {dict(merged)}: DLA has no dynamic shapes, so every "
                          f"layer would fall back to the GPU. Export again with --dla-core")
    return {**DEFAULT_BUILD, **given, "workspace_mib": workspace,
            "profiles": {"min": lo, "opt": opt, "max": hi},
            "fp16_fallback": bool(given.get("fp16_fallback", DEFAULT_BUILD["fp16_fallback"]))}


@dataclass(frozen=True)
class BuiltEngine:
    """A serialized engine and, for a DLA build, where the built engine's layers run:
    `{"dla": n, "gpu": m}` as its engine inspector reports them (`engine_placement`); None for a
    GPU build, or when the inspector gives no per-layer detail."""

    plan: bytes
    layers: dict[str, int] | None = None


def _runs_on_dla(layer: Mapping[str, Any]) -> bool:
    """Whether one layer of the inspector's detailed JSON runs on the DLA: TensorRT hands the
    DLA its part of the network as one layer of type DLA (named `{ForeignNode[first...last]}`);
    every other layer (the reformats to and from the DLA's memory included) runs on the GPU."""
    return any(str(layer.get(key, "")).upper() == "DLA" for key in ("LayerType", "ParameterType"))


def engine_placement(trt: Any, engine: Any) -> dict[str, int] | None:
    """`{"dla": n, "gpu": m}`: the layers of a deserialized engine by where they run, from its
    engine inspector (`engine.create_engine_inspector().get_engine_information(
    trt.LayerInformationFormat.JSON)`, i.e. `{"Layers": [...], ...}`). Layers are the built
    engine's (a DLA subgraph is one layer), not the network's. None when the inspector gives no
    per-layer detail: an engine built without `ProfilingVerbosity.DETAILED` lists layer names
    only, which do not say where a layer runs."""
    inspector = engine.create_engine_inspector()
    text = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    try:
        info = json.loads(text or "")
    except (TypeError, ValueError):
        return None
    layers = info.get("Layers") if isinstance(info, dict) else None
    if not isinstance(layers, list) or not layers \
            or not all(isinstance(layer, dict) for layer in layers):
        return None
    on_dla = sum(_runs_on_dla(layer) for layer in layers)
    return {"dla": on_dla, "gpu": len(layers) - on_dla}


def version_problem(version: str) -> str | None:
    """None if TensorRT `version` is >= MIN_TENSORRT, else why not."""
    major = version.split(".")[0]
    if major.isdigit() and int(major) >= MIN_TENSORRT:
        return None
    return (f"TensorRT {version} is installed; edgekd needs TensorRT >= {MIN_TENSORRT} "
            f"(explicit batch and the I/O tensor API)")


def check_version(trt: Any) -> None:
    """BackendUnavailable unless `trt` is TensorRT >= MIN_TENSORRT."""
    problem = version_problem(str(getattr(trt, "__version__", "unknown")))
    if problem is not None:
        raise BackendUnavailable(f"{problem}; {TENSORRT_HINT} (JetPack 6 or newer)")


def build_engine(
    trt: Any,
    onnx: bytes,
    name: str,
    precision: str,
    build: Mapping[str, Any] | None,
    input_name: str,
    feature_shape: tuple[int, ...],
    *,
    timing_cache: Path | None = None,
) -> BuiltEngine:
    """Serialized TensorRT engine for the ONNX model `onnx` (its bytes, parsed as given: the
    caller hands over the bytes it checked, nothing is reopened by path; the model has no
    external-data file), with one optimization profile over the batch. `name` names the model
    in error messages.

    `trt`: the imported `tensorrt` module (>= MIN_TENSORRT). `build`: the manifest's
    `tensorrt_build` section (`workspace_mib`, `profiles` {min, opt, max} batch sizes,
    `fp16_fallback`, `dla_core`; defaults from DEFAULT_BUILD). Precisions: fp32 clears TF32
    (on by default in a builder config) so that FP32 engines compute in FP32 like the reference
    they are measured as; fp16 sets FP16; int8 expects a QDQ graph and sets INT8 (TensorRT 10's
    weakly typed networks run the Q/DQ nodes in int8 only with it; the scales all come from the
    graph, no calibrator), plus FP16 for the layers the graph leaves unquantized with
    `fp16_fallback`. TensorRT 11 networks are strongly typed: no precision flags at all.

    With `dla_core` the engine is built for that DLA core (default device DLA, GPU fallback for
    layers DLA cannot run, fp16/int8 only, static batch profile) with detailed profiling
    verbosity. Before building, each network layer is asked `IBuilderConfig.can_run_on_DLA`, a
    pre-flight check only: a network with no DLA-capable layer is a BundleError naming its layer
    types, raised before the build. After it, the plan is deserialized on that core and `layers`
    is `{"dla": n, "gpu": m}` as the built engine's inspector reports them (`engine_placement`;
    TensorRT can move a DLA-capable layer to the GPU); an engine with no layer on the DLA is a
    BundleError, one whose inspector gives no detail has `layers` None. `input_name`: the ONNX input
    the profile shapes as (batch, *feature_shape). `timing_cache`: a file (created if missing,
    rewritten atomically) that makes rebuilds on the same device fast; key it by device,
    TensorRT refuses foreign ones.
    """
    if precision not in PRECISIONS:
        raise BundleError(f"{name}: TensorRT precision must be one of "
                          f"{', '.join(PRECISIONS)}, got {precision!r}")
    check_version(trt)
    if not hasattr(trt, "Builder"):
        raise BackendUnavailable(
            f"cannot build a TensorRT engine: TensorRT {trt.__version__} here is the lean runtime "
            f"(no builder); install the full TensorRT: {TENSORRT_HINT}"
        )
    opts = build_options(build)
    dla = opts.get("dla_core")
    if dla is not None and precision == "fp32":
        raise BundleError(f"{name}: DLA runs fp16 or int8, not fp32 (tensorrt_build "
                          f"dla_core {dla})")
    flags = _network_flags(trt, precision, name)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BundleError(f"TensorRT cannot parse {name}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, opts["workspace_mib"] << 20)
    if _weakly_typed(trt):  # a strongly typed network takes its precisions from the graph
        for flag in _precision_flags(precision, opts["fp16_fallback"]):
            config.set_flag(getattr(trt.BuilderFlag, flag))
    if precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)
    if dla is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = dla
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
        # the inspector says where a built engine's layers run only with detailed verbosity
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
        # asked of the configured builder (precision, core): DLA support depends on both
        _dla_preflight(config, network, f"{name}: the {precision} network", dla)

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
            f"TensorRT could not build a {precision} engine from {name} (see the TensorRT log)"
        )
    if timing_cache is not None:
        atomic_write_bytes(timing_cache, bytes(cache.serialize()))
    plan = bytes(plan)
    layers = None
    if dla is not None:
        layers = _built_placement(trt, logger, plan, f"{name}: the {precision} engine", dla)
    return BuiltEngine(plan, layers)


def _dla_preflight(config: Any, network: Any, what: str, dla: int) -> None:
    """BundleError, naming the layer types, if `config` (default device DLA, its core set) can
    run none of the network's layers on the DLA: a build would put them all on the GPU. Only a
    pre-flight check: where the layers run is read from the built engine (`_built_placement`)."""
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    capable = [bool(config.can_run_on_DLA(layer)) for layer in layers]  # every layer asked
    if not any(capable):
        kinds = sorted({getattr(layer.type, "name", str(layer.type)) for layer in layers})
        raise BundleError(
            f"{what} has no layer that can run on DLA core {dla}: all {len(layers)} would fall "
            f"back to the GPU (layer types: {', '.join(kinds) or 'none'}); build without "
            f"--dla-core, or see the TensorRT log for why DLA refuses them"
        )


def _built_placement(trt: Any, logger: Any, plan: bytes, what: str,
                     dla: int) -> dict[str, int] | None:
    """Where the layers of the engine `plan`, just built for DLA core `dla`, run: deserialized
    by a runtime pointed at that core and asked through its inspector (`engine_placement`).
    BundleError if it does not deserialize or runs no layer on the DLA; None (with a warning)
    when the inspector gives no per-layer detail."""
    runtime = trt.Runtime(logger)
    runtime.DLA_core = dla
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise BundleError(f"{what} just built for DLA core {dla} does not deserialize (see the "
                          "TensorRT log)")
    placement = engine_placement(trt, engine)
    if placement is None:
        log.warning("TensorRT: %s built for DLA core %d: its engine inspector gives no "
                    "per-layer detail, so where its layers run is not known", what, dla)
        return None
    if placement["dla"] == 0:
        raise BundleError(
            f"{what} built for DLA core {dla} runs none of its {placement['gpu']} layers on the "
            f"DLA: TensorRT placed them all on the GPU (its engine inspector says so); build "
            f"without --dla-core, or see the TensorRT log for why DLA refuses them"
        )
    return placement


def _network_flags(trt: Any, precision: str, name: str) -> int:
    """Network creation flags. TensorRT 10: weakly typed, precisions from builder flags (0).
    TensorRT 11 dropped weak typing: int8/fp32 networks are strongly typed (types from the Q/DQ
    graph) and FP16 would need an FP16-typed ONNX, which export does not write."""
    if _weakly_typed(trt):
        return 0
    if precision == "fp16":
        raise BundleError(
            f"TensorRT {trt.__version__} builds FP16 only from an FP16-typed ONNX and "
            f"{name} is not one; use int8 or fp32"
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
