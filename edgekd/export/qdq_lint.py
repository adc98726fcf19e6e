"""Check a QDQ ONNX model against TensorRT's explicit-quantization rules.

TensorRT builds an int8 engine from Q/DQ pairs only when every pair is *signed int8* with *zero
point 0* (symmetric), activations are quantized per tensor, and weights per output channel. It
rejects the integer-only operator forms (QLinearConv, ConvInteger, ...) and ops from other domains
(com.microsoft), and it runs a conv/matmul whose weight has no Q/DQ in float: an "int8" engine
that is partly float. ONNX Runtime's quantizer and most QAT tools can produce each of those
silently, so every int8 artifact is linted before it goes into a bundle.

Only the main graph is checked (students have no If/Loop subgraphs).
"""

from __future__ import annotations

from collections.abc import Collection
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
# Ops that only move a weight's elements: the lint follows a weight through them (mapping its
# per-channel axis) between its DequantizeLinear and the op that uses it.
LAYOUT_OPS = ("Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Cast")
# Ops that may sit between a weight initializer and its DequantizeLinear / weighted op.
WEIGHT_PATH_OPS = ("QuantizeLinear", "DequantizeLinear", *LAYOUT_OPS)
MAX_WEIGHT_PATH = 8  # ops walked back from a weighted op to its weight
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


def lint_qdq(
    model: onnx.ModelProto | str | Path, *, allow_float: Collection[str] = ()
) -> list[Violation]:
    """All TensorRT explicit-quantization violations in `model` (a ModelProto or a path).

    Rules: no integer-only / QLinear* ops and no non-standard domains; every Q/DQ has constant
    scale and zero point; the zero point is present (a QuantizeLinear without one outputs uint8),
    int8 (not uint8 or int32) and all zeros; activations (non-constant Q/DQ inputs) use one scale;
    the weight of each Conv/ConvTranspose/Gemm/MatMul that goes through a DequantizeLinear has one
    scale per output channel along the output-channel axis, followed through the layout ops
    (Transpose, Reshape, Flatten, Squeeze, Unsqueeze) between the DequantizeLinear and the op;
    every Conv/ConvTranspose/Gemm/MatMul with a constant weight gets it through a
    DequantizeLinear, except the nodes named in `allow_float` (intentionally float layers; a
    name that is no such node is itself a violation, so a typo cannot hide).
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
            violations += _check_weight(node, consts, producer, allow_float)
    weighted = {node.name for node in graph.node if node.op_type in WEIGHT_INPUT}
    violations += [
        Violation(
            name,
            "?",
            "allow-float-unknown",
            "allow_float names no Conv/ConvTranspose/Gemm/MatMul node of this graph "
            f"(weighted nodes: {', '.join(sorted(weighted)) or 'none'})",
        )
        for name in sorted(set(allow_float) - weighted)
    ]
    return violations


def require_clean(
    model: onnx.ModelProto | str | Path, what: str, *, allow_float: Collection[str] = ()
) -> None:
    """ExportError listing every violation if `model` breaks TensorRT's Q/DQ rules
    (`allow_float`: see `lint_qdq`)."""
    violations = lint_qdq(model, allow_float=allow_float)
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


def _check_weight(
    node: onnx.NodeProto, consts: Consts, producer: Producers, allow_float: Collection[str]
) -> list[Violation]:
    """A weight must reach its op through a DequantizeLinear (unless the op is in
    `allow_float`), quantized per output channel along the axis that becomes the op's
    output-channel axis after the layout ops (Transpose, Reshape, ...) between them. Axis and
    scale problems are reported on the weight's DequantizeLinear, a float weight on the op."""
    index = WEIGHT_INPUT[node.op_type]
    if len(node.input) <= index:
        return []
    path = _weight_path(node.input[index], consts, producer)
    if path is None:
        return []  # an activation operand (MatMul of two tensors)
    dq, layout = path
    if dq is None:
        if node.name in allow_float:
            return []
        return [
            _violation(
                node,
                "unquantized-weight",
                f"weight {node.input[index]!r} reaches {node.op_type} in float, without a "
                "DequantizeLinear: TensorRT runs this op in float inside an int8 engine (list "
                "the node in allow_float / --allow-float if that is intended)",
            )
        ]
    if dq.input[1] not in consts:
        return []  # a computed scale is reported by _check_qdq
    shape = _const_shape(dq.input[0], consts, producer)
    if shape is None:
        return []  # _weight_path only returns DQs of constants; kept for the type checker
    scale = consts[dq.input[1]][1]
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
    axis = axis + len(shape) if axis < 0 else axis
    moved = _follow_layout(shape, axis, layout, consts)
    route = "/".join(op.op_type for op in layout)
    if moved is None:
        return [
            _violation(
                dq,
                "weight-path",
                f"weight {dq.input[0]!r} reaches {node.op_type} through {route} with a shape "
                "computed at run time: its per-channel axis cannot be checked",
            )
        ]
    op_shape, op_axis = moved
    want = _output_channel_axis(node, len(op_shape))
    if scale.size == 1:
        if op_shape[want] == 1:
            return []
        return [
            _violation(
                dq,
                "weight-per-tensor",
                f"weight {dq.input[0]!r} has one scale for {op_shape[want]} output channels; "
                "TensorRT wants per-channel weight scales (per_channel=True)",
            )
        ]
    if op_axis != want or scale.size != op_shape[want]:
        after = (
            f", which after {route} is "
            + (f"axis {op_axis}" if op_axis is not None else "split across axes")
            + f" of {tuple(op_shape)}"
            if layout
            else ""
        )
        return [
            _violation(
                dq,
                "weight-axis",
                f"weight {dq.input[0]!r} {tuple(shape)} is quantized along axis {axis} "
                f"({scale.size} scales){after}; the output-channel axis of {node.op_type} is "
                f"{want}",
            )
        ]
    return []


def _weight_path(
    name: str, consts: Consts, producer: Producers
) -> tuple[onnx.NodeProto | None, list[onnx.NodeProto]] | None:
    """Walk from a weighted op's weight input back through LAYOUT_OPS. (the DequantizeLinear of
    a constant or None for a float constant, the layout ops from there to the op in graph order),
    or None when the operand is not a constant (an activation)."""
    layout: list[onnx.NodeProto] = []
    for _ in range(MAX_WEIGHT_PATH):
        if name in consts:
            return None, layout[::-1]
        node = producer.get(name)
        if node is None:
            return None
        if node.op_type == "DequantizeLinear":
            if not _is_constant(node.input[0], consts, producer):
                return None
            return node, layout[::-1]
        if node.op_type not in LAYOUT_OPS:
            return None
        layout.append(node)
        name = node.input[0]
    return None


def _follow_layout(
    shape: tuple[int, ...], axis: int | None, layout: list[onnx.NodeProto], consts: Consts
) -> tuple[tuple[int, ...], int | None] | None:
    """(shape, position of `axis`) after the layout ops; position None when a reshape splits or
    merges that axis; None when a target shape is not a constant."""
    for op in layout:
        attrs = {a.name: a for a in op.attribute}
        if op.op_type == "Transpose":
            perm = list(attrs["perm"].ints) if "perm" in attrs else list(range(len(shape)))[::-1]
            new = tuple(shape[p] for p in perm)
            axis = None if axis is None else perm.index(axis)
        elif op.op_type in ("Identity", "Cast"):
            continue
        else:
            new_shape = _reshaped(op, shape, attrs, consts)
            if new_shape is None:
                return None
            new = new_shape
            axis = _same_axis(shape, new, axis)
        shape = new
    return shape, axis


def _reshaped(
    op: onnx.NodeProto,
    shape: tuple[int, ...],
    attrs: dict[str, onnx.AttributeProto],
    consts: Consts,
) -> tuple[int, ...] | None:
    """Output shape of a Reshape/Flatten/Squeeze/Unsqueeze of a constant of `shape`."""
    import numpy as np

    rank = len(shape)
    if op.op_type == "Flatten":
        k = attrs["axis"].i if "axis" in attrs else 1
        k = k + rank if k < 0 else k
        return (int(np.prod(shape[:k])), int(np.prod(shape[k:])))
    if len(op.input) > 1 and op.input[1]:
        if op.input[1] not in consts:
            return None
        arg = [int(v) for v in consts[op.input[1]][1].reshape(-1)]
    else:
        arg = list(attrs["axes"].ints) if "axes" in attrs else []  # opset < 13 attributes
    if op.op_type == "Reshape":
        allow_zero = "allowzero" in attrs and attrs["allowzero"].i == 1
        dims = [shape[i] if d == 0 and not allow_zero else d for i, d in enumerate(arg)]
        if -1 in dims:
            known = int(np.prod([d for d in dims if d != -1]))
            dims[dims.index(-1)] = int(np.prod(shape)) // max(known, 1)
        return tuple(dims)
    if op.op_type == "Squeeze":
        axes = {a + rank if a < 0 else a for a in arg} or {i for i, d in enumerate(shape) if d == 1}
        return tuple(d for i, d in enumerate(shape) if i not in axes)
    out_rank = rank + len(arg)  # Unsqueeze
    axes = {a + out_rank if a < 0 else a for a in arg}
    rest = iter(shape)
    return tuple(1 if i in axes else next(rest) for i in range(out_rank))


def _same_axis(old: tuple[int, ...], new: tuple[int, ...], axis: int | None) -> int | None:
    """Where axis `axis` of `old` sits in the reshaped `new`: the dimension with the same size
    and the same number of elements before it; None when the reshape splits or merges it."""
    import numpy as np

    if axis is None:
        return None
    before = int(np.prod(old[:axis]))
    for j, size in enumerate(new):
        if size == old[axis] and int(np.prod(new[:j])) == before:
            return j
    return None


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
    for _ in range(MAX_WEIGHT_PATH):
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
