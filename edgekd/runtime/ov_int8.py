"""Which precision OpenVINO really ran each conv / matmul in: the proof that an int8 model runs
int8 kernels, read from a compiled model's runtime graph (runtimePrecision / primitiveType of each
executed op), not from the file.

Used by the exporter (the `int8_check` of an int8 IR) and by the runtime's OpenVINO backend
(`Engine.details["compute_precisions"]`). Imports no OpenVINO: it reads a `CompiledModel` the
caller made.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Runtime layer types that carry weights (what int8 must reach to pay off).
WEIGHTED_LAYERS = ("Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul")
INT8_PRECISIONS = ("i8", "u8")


@dataclass(frozen=True)
class LayerPrecision:
    """One executed op of a compiled model: its name, runtime layer type, precision, kernel."""

    name: str
    layer_type: str
    runtime_precision: str
    primitive: str

    @property
    def is_int8(self) -> bool:
        return self.runtime_precision.lower() in INT8_PRECISIONS or self.primitive.upper().endswith(
            "_I8"
        )


@dataclass(frozen=True)
class Int8Evidence:
    """The weighted layers (convs, matmuls) of a compiled model and what precision they ran in."""

    weighted: tuple[LayerPrecision, ...]

    @property
    def int8_layers(self) -> int:
        return sum(layer.is_int8 for layer in self.weighted)

    @property
    def all_int8(self) -> bool:
        return bool(self.weighted) and self.int8_layers == len(self.weighted)

    def summary(self) -> str:
        kernels = sorted({layer.primitive for layer in self.weighted})
        count = f"{self.int8_layers}/{len(self.weighted)}"
        return f"{count} conv/matmul layers int8 ({', '.join(kernels)})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "int8_layers": self.int8_layers,
            "weighted_layers": len(self.weighted),
            "kernels": sorted({layer.primitive for layer in self.weighted}),
        }


def weighted_layers(compiled: Any) -> Int8Evidence:
    """The conv / matmul layers of an OpenVINO `CompiledModel` with the precision and kernel
    each ran in."""
    layers = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()

        def field(key: str, _info: Any = info) -> str:
            return str(_info[key].astype(str)) if key in _info else ""

        layer_type = field("layerType") or op.get_type_name()
        if layer_type in WEIGHTED_LAYERS:
            layers.append(
                LayerPrecision(
                    op.get_friendly_name(),
                    layer_type,
                    field("runtimePrecision"),
                    field("primitiveType"),
                )
            )
    return Int8Evidence(tuple(layers))


def compute_precisions(compiled: Any) -> dict[str, str]:
    """Runtime precision of each conv / matmul of a compiled model, e.g. {'c1': 'u8'}."""
    return {layer.name: layer.runtime_precision for layer in weighted_layers(compiled).weighted}
