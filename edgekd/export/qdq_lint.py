"""Check a QDQ ONNX model against TensorRT's explicit-quantization rules.

TensorRT builds an int8 engine from Q/DQ pairs only when every pair is *signed int8* with *zero
point 0* (symmetric), activations are quantized per tensor, and weights per output channel. It
rejects the integer-only operator forms (QLinearConv, ConvInteger, ...) and ops from other domains
(com.microsoft). ONNX Runtime's quantizer and most QAT tools can produce each of those silently, so
every int8 artifact is linted before it goes into a bundle.

Only the main graph is checked (students have no If/Loop subgraphs).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgekd.errors import ExportError

if TYPE_CHECKING:
    import numpy as np
    import onnx

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# Integer-arithmetic ONNX ops: TensorRT's parser does not implement them (it wants Q/DQ around
# float ops and fuses them itself). Every op named QLinear* is also refused.
INTEGER_OPS = frozenset(
    {
        "ConvInteger",
        "MatMulInteger",
        "DynamicQuantizeLinear",
        "DynamicQuantizeMatMul",
        "MatMulIntegerToFloat",
        "QGemm",
        "QAttention",
        "QOrderedMatMul",
    }
)
# Which input of a weighted op is its weight (the output-channel axis: _output_channel_axis).
WEIGHT_INPUT = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}
STANDARD_DOMAINS = ("", "ai.onnx")
# Ops that may sit between a weight initializer and its DequantizeLinear / weighted op.
WEIGHT_PATH_OPS = ("QuantizeLinear", "DequantizeLinear", "Cast", "Identity", "Reshape", "Transpose")
Consts = dict[str, tuple[int, "np.ndarray"]]  # name -> (ONNX element type, value)
Producers = dict[str, "onnx.NodeProto"]  # tensor name -> the node that outputs it


@dataclass(frozen=True)
class Violation:
    """One broken rule: the node (name or first output), its op, a rule id and an explanation."""

    node: str
    op_type: str
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.node} ({self.op_type}): {self.message} [{self.rule}]"


def lint_qdq(model: onnx.ModelProto | str | Path) -> list[Violation]:
    """All TensorRT explicit-quantization violations in `model` (a ModelProto or a path).

    Rules: no integer-only / QLinear* ops and no non-standard domains; every Q/DQ has constant
    scale and zero point; the zero point is present (a QuantizeLinear without one outputs uint8),
    int8 (not uint8 or int32) and all zeros; activations (non-constant Q/DQ inputs) use one scale;
    the weight of each Conv/ConvTranspose/Gemm/MatMul that goes through a DequantizeLinear has one
    scale per output channel along the output-channel axis.
    """
    import onnx

    proto = onnx.load(str(model)) if isinstance(model, (str, Path)) else model
    graph = proto.graph
    consts = _constants(graph)
    producer = {out: node for node in graph.node for out in node.output}
    violations: list[Violation] = []
    for node in graph.node:
        if node.domain not in STANDARD_DOMAINS:
            violations.append(
                _violation(
                    node,
                    "non-standard-domain",
                    f"op from domain {node.domain!r}; TensorRT parses standard ONNX ops only",
                )
            )
        elif node.op_type.startswith("QLinear") or node.op_type in INTEGER_OPS:
            violations.append(
                _violation(
                    node,
                    "integer-op",
                    "integer-only operator; TensorRT needs QuantizeLinear/DequantizeLinear around "
                    "float ops (quantize with QDQ format, not QOperator)",
                )
            )
        elif node.op_type in QDQ_OPS:
            violations += _check_qdq(node, consts, producer)
        elif node.op_type in WEIGHT_INPUT:
            violations += _check_weight(node, consts, producer)
    return violations


def require_clean(model: onnx.ModelProto | str | Path, what: str) -> None:
    """ExportError listing every violation if `model` breaks TensorRT's Q/DQ rules."""
    violations = lint_qdq(model)
    if violations:
        shown = "\n  ".join(str(v) for v in violations[:20])
        more = f"\n  ... and {len(violations) - 20} more" if len(violations) > 20 else ""
        raise ExportError(
            f"{what} breaks TensorRT's explicit-quantization rules "
            f"({len(violations)} violation(s)):\n  {shown}{more}"
        )


# --- rules ---------------------------------------------------------------------------------------


def _violation(node: onnx.NodeProto, rule: str, message: str) -> Violation:
    return Violation(
        node.name or (node.output[0] if node.output else "?"), node.op_type, rule, message
    )


def _check_qdq(node: onnx.NodeProto, consts: Consts, producer: Producers) -> list[Violation]:
    import onnx

    scale_name = node.input[1] if len(node.input) > 1 else ""
    zp_name = node.input[2] if len(node.input) > 2 else ""
    if scale_name not in consts:
        return [
            _violation(
                node,
                "qparams-not-constant",
                f"scale {scale_name!r} is computed at run time; TensorRT needs constant scales",
            )
        ]
    found = []
    if not zp_name:
        if node.op_type == "QuantizeLinear":
            out_type = next((a.i for a in node.attribute if a.name == "output_dtype"), 0)
            if out_type != onnx.TensorProto.INT8:
                found.append(
                    _violation(
                        node,
                        "uint8",
                        "no zero point and no output_dtype: QuantizeLinear then outputs uint8; "
                        "TensorRT needs int8 with zero point 0",
                    )
                )
        else:
            x_type = _elem_type(node.input[0], consts, producer)
            if x_type is not None and x_type != onnx.TensorProto.INT8:
                found.append(
                    _violation(
                        node,
                        "not-int8",
                        f"dequantizes {_type_name(x_type)} data; TensorRT accepts int8 Q/DQ only",
                    )
                )
    elif zp_name not in consts:
        found.append(
            _violation(
                node, "qparams-not-constant", f"zero point {zp_name!r} is computed at run time"
            )
        )
    else:
        zp_type, zp = consts[zp_name]
        if zp_type != onnx.TensorProto.INT8:
            is_uint8 = zp_type == onnx.TensorProto.UINT8
            hint = {
                onnx.TensorProto.UINT8: " (quantize activations as QInt8)",
                onnx.TensorProto.INT32: " (int32 bias quantization: keep biases float)",
            }
            found.append(
                _violation(
                    node,
                    "uint8" if is_uint8 else "not-int8",
                    f"zero point is {_type_name(zp_type)}; TensorRT needs signed int8"
                    f"{hint.get(zp_type, '')}",
                )
            )
        if zp.size and (zp != 0).any():
            found.append(
                _violation(
                    node,
                    "zero-point-nonzero",
                    f"zero point {_brief(zp)} is not 0: TensorRT quantization is symmetric "
                    "(set ActivationSymmetric/WeightSymmetric)",
                )
            )
    scale = consts[scale_name][1]
    if not _is_constant(node.input[0], consts, producer) and scale.size != 1:
        found.append(
            _violation(
                node,
                "activation-per-channel",
                f"activation scale has {scale.size} values; TensorRT quantizes activations "
                "per tensor",
            )
        )
    return found


def _check_weight(node: onnx.NodeProto, consts: Consts, producer: Producers) -> list[Violation]:
    """A DQ'd weight must be quantized per output channel, along the output-channel axis.
    Reported on the weight's DequantizeLinear."""
    index = WEIGHT_INPUT[node.op_type]
    dq = producer.get(node.input[index]) if len(node.input) > index else None
    if (
        dq is None
        or dq.op_type != "DequantizeLinear"
        or not _is_constant(dq.input[0], consts, producer)
        or dq.input[1] not in consts  # a computed scale is reported by _check_qdq
    ):
        return []  # a float weight, or an activation operand (MatMul of two tensors)
    shape = _const_shape(dq.input[0], consts, producer)
    if shape is None:
        return []
    scale = consts[dq.input[1]][1]
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
    axis = axis + len(shape) if axis < 0 else axis
    want = _output_channel_axis(node, len(shape))
    if scale.size == 1:
        if shape[want] == 1:
            return []
        return [
            _violation(
                dq,
                "weight-per-tensor",
                f"weight {dq.input[0]!r} has one scale for {shape[want]} output channels; "
                "TensorRT wants per-channel weight scales (per_channel=True)",
            )
        ]
    if axis != want or scale.size != shape[want]:
        return [
            _violation(
                dq,
                "weight-axis",
                f"weight {dq.input[0]!r} {tuple(shape)} is quantized along axis {axis} "
                f"({scale.size} scales); the output-channel axis of {node.op_type} is {want}",
            )
        ]
    return []


def _output_channel_axis(node: onnx.NodeProto, rank: int) -> int:
    if node.op_type == "Conv":
        return 0  # (out, in/group, *k)
    if node.op_type == "ConvTranspose":
        return 1  # (in, out/group, *k)
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return rank - 1  # MatMul: (..., K, N)


# --- graph helpers -------------------------------------------------------------------------------


def _constants(graph: onnx.GraphProto) -> Consts:
    """name -> (ONNX element type, value) for initializers and Constant-node outputs."""
    from onnx import numpy_helper

    out = {t.name: (t.data_type, numpy_helper.to_array(t)) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in STANDARD_DOMAINS:
            for attr in node.attribute:
                if attr.name == "value":
                    out[node.output[0]] = (attr.t.data_type, numpy_helper.to_array(attr.t))
    return out


def _is_constant(name: str, consts: Consts, producer: Producers) -> bool:
    """A constant, or a short Q/DQ/Cast/Reshape/Transpose chain ending in one (a weight path)."""
    for _ in range(8):
        if name in consts:
            return True
        node = producer.get(name)
        if node is None or node.op_type not in WEIGHT_PATH_OPS:
            return False
        name = node.input[0]
    return name in consts


def _const_shape(name: str, consts: Consts, producer: Producers) -> tuple[int, ...] | None:
    """Shape of the constant a weight DQ reads (directly or through a QuantizeLinear)."""
    if name in consts:
        return tuple(consts[name][1].shape)
    node = producer.get(name)
    if node is not None and node.op_type == "QuantizeLinear" and node.input[0] in consts:
        return tuple(consts[node.input[0]][1].shape)
    return None


def _elem_type(name: str, consts: Consts, producer: Producers) -> int | None:
    """Element type of a DequantizeLinear input when it can be read from the graph."""
    if name in consts:
        return int(consts[name][0])
    node = producer.get(name)
    if node is not None and node.op_type == "QuantizeLinear" and len(node.input) > 2:
        zp = consts.get(node.input[2])
        return None if zp is None else int(zp[0])
    return None


def _type_name(elem_type: int) -> str:
    import onnx

    return onnx.TensorProto.DataType.Name(elem_type).lower()


def _brief(arr: np.ndarray) -> str:
    flat = arr.reshape(-1)
    return str(flat.tolist()) if flat.size <= 4 else f"{flat[:4].tolist()}... ({flat.size} values)"
