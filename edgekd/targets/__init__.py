"""Named deployment targets: which backend a bundle is for, its default precision and build options.

    from edgekd.targets import get_target, list_targets
    t = get_target("jetson-orin-nano")
    t.resolve_precision(None)      # "int8"
    t.tensorrt_build("int8")       # the manifest's `tensorrt_build` section

Pure Python (no torch, no backend library): the CLI lists targets without heavy imports, and the
runtime may read the same definitions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgekd.constants import BACKENDS, ONNX_OPSET, PRECISIONS
from edgekd.errors import ConfigError

# Every target gets the FP32 ONNX and IR (reference, and the source of the rest) and, for int8,
# the QDQ ONNX and int8 IR; TensorRT targets add the engine (built here or on the device).
CPU_FORMATS = ("onnx_fp32", "openvino_fp32", "onnx_qdq", "openvino_int8")
TENSORRT_FORMATS = (*CPU_FORMATS, "tensorrt")


@dataclass(frozen=True)
class Target:
    """One deployment target.

    `formats` names the export formats (`edgekd.export.exporter.FORMATS`) the bundle gets; the
    precision picks among them (FP32 ones always, int8 ones for int8).

    `workspace_mib`, `opt_batch`, `max_batch` and `fp16_fallback` are TensorRT builder options
    (ignored by the CPU backends): the workspace is the scratch memory a tactic may use, sized for
    the board's (shared) memory; the optimization profile covers batches 1..max_batch and is tuned
    at opt_batch; `fp16_fallback` lets layers an int8 graph leaves unquantized run in FP16.
    `dla_cores`: how many Deep Learning Accelerator cores the board has (an engine may be built
    for one of them, with GPU fallback for the layers DLA cannot run; DLA has no dynamic shapes,
    so such an engine takes exactly opt_batch windows per call).
    """

    name: str
    description: str
    backend: str
    precision: str  # default precision
    precisions: tuple[str, ...]  # what this target accepts
    device_family: str
    opset: int = ONNX_OPSET
    workspace_mib: int = 0
    opt_batch: int = 1
    max_batch: int = 32
    fp16_fallback: bool = False
    formats: tuple[str, ...] = CPU_FORMATS
    dla_cores: int = 0

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"target {self.name}: backend {self.backend!r} not in {BACKENDS}")
        bad = [p for p in (self.precision, *self.precisions) if p not in PRECISIONS]
        if bad or self.precision not in self.precisions:
            raise ConfigError(f"target {self.name}: invalid precision(s) {bad or self.precision}")
        if not 1 <= self.opt_batch <= self.max_batch:
            raise ConfigError(f"target {self.name}: need 1 <= opt_batch <= max_batch")

    @property
    def uses_tensorrt(self) -> bool:
        return self.backend == "tensorrt"

    def resolve_precision(self, precision: str | None) -> str:
        """`precision` if this target accepts it, the default for None; else ConfigError."""
        if precision is None:
            return self.precision
        if precision not in self.precisions:
            raise ConfigError(
                f"target {self.name!r} does not support precision {precision!r}; "
                f"choose one of {', '.join(self.precisions)}"
            )
        return precision

    def tensorrt_build(self, precision: str, *, dla_core: int | None = None) -> dict[str, Any]:
        """Engine build options as stored in the manifest (`tensorrt_build`) and read back by the
        on-device build: precision, workspace (MiB), opset, the batch profile (1..max_batch,
        tuned at opt_batch) and, when `dla_core` is given, the DLA core (with GPU fallback) and
        a static profile of opt_batch (min = opt = max: a dynamic one would put every layer on
        the GPU). ConfigError if this target has no such DLA core or the precision cannot run
        on DLA (fp16 and int8 only)."""
        if not self.uses_tensorrt:
            raise ConfigError(f"target {self.name!r} is not a TensorRT target")
        prec = self.resolve_precision(precision)
        build: dict[str, Any] = {
            "precision": prec,
            "workspace_mib": self.workspace_mib,
            "opset": self.opset,
            "profiles": {"min": 1, "opt": self.opt_batch, "max": self.max_batch},
            "fp16_fallback": self.fp16_fallback,
        }
        if dla_core is None:
            return build
        if not 0 <= dla_core < self.dla_cores:
            cores = f"cores 0..{self.dla_cores - 1}" if self.dla_cores else "no DLA core"
            raise ConfigError(f"--dla-core {dla_core}: target {self.name!r} has {cores}")
        if prec == "fp32":
            raise ConfigError("--dla-core needs precision fp16 or int8: DLA does not run fp32")
        static = {"min": self.opt_batch, "opt": self.opt_batch, "max": self.opt_batch}
        return {**build, "profiles": static, "dla_core": dla_core, "gpu_fallback": True}

    def to_dict(self, precision: str) -> dict[str, Any]:
        """The manifest's `target` section."""
        return {
            "name": self.name,
            "backend": self.backend,
            "precision": self.resolve_precision(precision),
            "device_family": self.device_family,
        }


_TARGETS: tuple[Target, ...] = (
    Target(
        name="cpu",
        description="x86 CPU with OpenVINO (int8 via VNNI/AMX where present)",
        backend="openvino",
        precision="int8",
        precisions=("fp32", "int8"),
        device_family="x86",
    ),
    Target(
        name="cpu-ort",
        description="any CPU with ONNX Runtime (portable; int8 QDQ, FP32)",
        backend="onnxruntime",
        precision="int8",
        precisions=("fp32", "int8"),
        device_family="cpu",
    ),
    Target(
        name="x86-nvidia",
        description="x86 server/desktop with an NVIDIA GPU and TensorRT 10",
        backend="tensorrt",
        precision="int8",
        precisions=("fp32", "fp16", "int8"),
        device_family="x86-nvidia",
        workspace_mib=4096,
        opt_batch=8,
        max_batch=256,
        fp16_fallback=True,
        formats=TENSORRT_FORMATS,
    ),
    Target(
        name="jetson-orin-nano",
        description="Jetson Orin Nano (4-8 GB shared memory), TensorRT from JetPack 6",
        backend="tensorrt",
        precision="int8",
        precisions=("fp32", "fp16", "int8"),
        device_family="jetson-orin",
        workspace_mib=512,
        opt_batch=1,
        max_batch=32,
        fp16_fallback=True,
        formats=TENSORRT_FORMATS,
    ),
    Target(
        name="jetson-agx-orin",
        description="Jetson AGX Orin (32-64 GB shared memory), TensorRT from JetPack 6",
        backend="tensorrt",
        precision="int8",
        precisions=("fp32", "fp16", "int8"),
        device_family="jetson-orin",
        workspace_mib=2048,
        opt_batch=8,
        max_batch=128,
        fp16_fallback=True,
        formats=TENSORRT_FORMATS,
        dla_cores=2,
    ),
)
TARGETS: dict[str, Target] = {t.name: t for t in _TARGETS}


def list_targets() -> list[Target]:
    """All targets, in a stable order (CPU first)."""
    return list(_TARGETS)


def get_target(name: str) -> Target:
    """The target called `name`; ConfigError listing the valid names otherwise."""
    try:
        return TARGETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown target {name!r}; valid targets: {', '.join(TARGETS)} (see `edgekd targets`)"
        ) from None
