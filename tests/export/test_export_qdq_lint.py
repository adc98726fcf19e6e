"""TensorRT Q/DQ rules: clean models pass, each kind of bad model names its violation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from export_fixtures import HarFeatures
from onnx import TensorProto, helper, numpy_helper

from edgekd.errors import ExportError
from edgekd.export.onnx import INPUT_NAME
from edgekd.export.qdq_lint import lint_qdq, require_clean


def _rules(model: onnx.ModelProto | Path) -> set[str]:
    return {v.rule for v in lint_qdq(model)}


def _quantize(fp32: Path, out: Path, calib: np.ndarray, **kwargs: object) -> Path:
    """quantize_static with the given settings (ONNX Runtime's defaults unless overridden)."""
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    batches = iter([{INPUT_NAME: calib[i : i + 64]} for i in range(0, len(calib), 64)])

    class Reader(CalibrationDataReader):
        def get_next(self) -> dict | None:
            return next(batches, None)

    quantize_static(str(fp32), str(out), Reader(), **kwargs)
    return out


def test_tensorrt_style_ptq_model_is_clean(ptq_onnx: Path) -> None:
    assert lint_qdq(ptq_onnx) == []
    require_clean(ptq_onnx, "ptq")  # does not raise
    # Independent check of what the lint accepted: int8 zero points, all 0; per-channel weights.
    model = onnx.load(str(ptq_onnx))
    inits = {t.name: t for t in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq
    for node in qdq:
        zp = inits[node.input[2]]
        assert zp.data_type == TensorProto.INT8 and not numpy_helper.to_array(zp).any()
    conv_weights = [n for n in qdq if n.input[0].endswith("weight_quantized")]
    assert len(conv_weights) == 3  # two convs + the classifier
    for node in conv_weights:
        w = numpy_helper.to_array(inits[node.input[0]])
        assert numpy_helper.to_array(inits[node.input[1]]).shape == (w.shape[0],)


def test_onnxruntime_default_quantization_breaks_the_rules(
    fp32_onnx: Path, har: HarFeatures, tmp_path: Path
) -> None:
    # Defaults: asymmetric activations (zero point != 0) and one scale per weight tensor.
    default = _quantize(fp32_onnx, tmp_path / "default.onnx", har.train_x[:128])
    assert {"zero-point-nonzero", "weight-per-tensor"} <= _rules(default)
    with pytest.raises(ExportError) as err:
        require_clean(default, "default PTQ")
    assert "default PTQ breaks TensorRT's explicit-quantization rules" in str(err.value)
    assert "[weight-per-tensor]" in str(err.value)


def test_uint8_and_qoperator_models_are_rejected(
    fp32_onnx: Path, har: HarFeatures, tmp_path: Path
) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType

    uint8 = _quantize(
        fp32_onnx,
        tmp_path / "u8.onnx",
        har.train_x[:128],
        activation_type=QuantType.QUInt8,
        per_channel=True,
    )
    assert "uint8" in _rules(uint8)
    qop = _quantize(
        fp32_onnx, tmp_path / "qop.onnx", har.train_x[:128], quant_format=QuantFormat.QOperator
    )
    violations = lint_qdq(qop)
    assert {v.op_type for v in violations if v.rule == "integer-op"} >= {"QLinearConv"}


# --- hand-built graphs: one rule each --------------------------------------------------------


def _const(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(value, name)


def _conv_model(
    *,
    w_scale: np.ndarray,
    w_axis: int = 0,
    act_zp: np.ndarray | None = None,
    act_scale: np.ndarray | None = None,
    extra_nodes: tuple = (),
    extra_inits: tuple = (),
) -> onnx.ModelProto:
    """input -> Q -> DQ -> Conv(weight: int8 -> DQ) -> logits. 4 output channels."""
    w = np.arange(4 * 3 * 5, dtype=np.int8).reshape(4, 3, 5) - 30
    act_zp = np.array(0, np.int8) if act_zp is None else act_zp
    act_scale = np.array(0.05, np.float32) if act_scale is None else act_scale
    inits = [
        _const("a_scale", act_scale),
        _const("a_zp", act_zp),
        _const("w_q", w),
        _const("w_scale", w_scale),
        _const("w_zp", np.zeros(w_scale.shape, np.int8)),
        *extra_inits,
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "a_scale", "a_zp"], ["xq"], name="q_in"),
        helper.make_node("DequantizeLinear", ["xq", "a_scale", "a_zp"], ["xd"], name="dq_in"),
        helper.make_node(
            "DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], name="dq_w", axis=w_axis
        ),
        helper.make_node("Conv", ["xd", "w"], ["logits"], name="conv"),
        *extra_nodes,
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4, 12])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


PER_CHANNEL = np.full(4, 0.01, np.float32)


def test_hand_built_clean_model_runs_and_passes() -> None:
    import onnxruntime as ort

    model = _conv_model(w_scale=PER_CHANNEL)
    onnx.checker.check_model(model)
    assert lint_qdq(model) == []
    out = ort.InferenceSession(model.SerializeToString()).run(
        None, {"input": np.ones((2, 3, 16), np.float32)}
    )
    assert out[0].shape == (2, 4, 12)


@pytest.mark.parametrize(
    ("kwargs", "rule", "text"),
    [
        (
            {"w_scale": np.array(0.01, np.float32)},
            "weight-per-tensor",
            "one scale for 4 output channels",
        ),
        (
            {"w_scale": np.full(3, 0.01, np.float32), "w_axis": 1},
            "weight-axis",
            "quantized along axis 1 (3 scales); the output-channel axis of Conv is 0",
        ),
        (
            {"w_scale": PER_CHANNEL, "act_zp": np.array(3, np.int8)},
            "zero-point-nonzero",
            "zero point [3] is not 0",
        ),
        (
            {"w_scale": PER_CHANNEL, "act_zp": np.array(0, np.uint8)},
            "uint8",
            "zero point is uint8; TensorRT needs signed int8",
        ),
        (
            {"w_scale": PER_CHANNEL, "act_scale": np.full((1, 3, 1), 0.05, np.float32)},
            "activation-per-channel",
            "activation scale has 3 values",
        ),
    ],
)
def test_each_rule_on_a_hand_built_model(kwargs: dict, rule: str, text: str) -> None:
    violations = lint_qdq(_conv_model(**kwargs))
    assert [v.rule for v in violations if v.rule == rule], violations
    assert any(text in v.message for v in violations), violations


def test_missing_zero_point_int32_bias_domains_and_computed_scales() -> None:
    extra = (
        helper.make_node("QuantizeLinear", ["logits", "a_scale"], ["no_zp"], name="q_no_zp"),
        helper.make_node(
            "DequantizeLinear", ["bias_q", "bias_scale", "bias_zp"], ["bias"], name="dq_bias"
        ),
        helper.make_node("Gelu", ["logits"], ["g"], name="ms_gelu", domain="com.microsoft"),
        helper.make_node("Abs", ["logits"], ["dyn_scale"], name="abs"),
        helper.make_node("QuantizeLinear", ["logits", "dyn_scale", "a_zp"], ["dq"], name="q_dyn"),
    )
    inits = (
        _const("bias_q", np.zeros(4, np.int32)),
        _const("bias_scale", np.float32(0.1)),
        _const("bias_zp", np.zeros((), np.int32)),
    )
    by_node = {
        v.node: v.rule
        for v in lint_qdq(_conv_model(w_scale=PER_CHANNEL, extra_nodes=extra, extra_inits=inits))
    }
    assert by_node == {
        "q_no_zp": "uint8",
        "dq_bias": "not-int8",
        "ms_gelu": "non-standard-domain",
        "q_dyn": "qparams-not-constant",
    }


def test_gemm_and_matmul_weight_axes() -> None:
    """Gemm(transB=1) weights are (N, K): axis 0; MatMul weights are (K, N): axis 1."""

    def model(op: str, axis: int, shape: tuple[int, int], **attrs: int) -> onnx.ModelProto:
        n = shape[0] if op == "Gemm" else shape[1]
        w = np.ones(shape, np.int8)
        nodes = [
            helper.make_node(
                "DequantizeLinear", ["w_q", "w_s", "w_zp"], ["w"], name="dq_w", axis=axis
            ),
            helper.make_node(op, ["input", "w"], ["logits"], **attrs),
        ]
        count = shape[axis]
        graph = helper.make_graph(
            nodes,
            "g",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 8])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", n])],
            [
                _const("w_q", w),
                _const("w_s", np.full(count, 0.1, np.float32)),
                _const("w_zp", np.zeros(count, np.int8)),
            ],
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])

    assert lint_qdq(model("Gemm", 0, (6, 8), transB=1)) == []
    assert _rules(model("Gemm", 1, (6, 8), transB=1)) == {"weight-axis"}
    assert lint_qdq(model("MatMul", 1, (8, 6))) == []
    assert _rules(model("MatMul", 0, (8, 6))) == {"weight-axis"}


# --- the real PTQ graph, edited: weights through layout ops, float weights ----------------------

W = "classifier.weight"  # the PTQ graph's Gemm(transB=1) weight, (12, 32) int8 per row
CONV_W = "features.4.weight"  # the second conv's weight, (32, 16, 5) int8 per output channel


def _inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _set_init(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    for i, t in enumerate(model.graph.initializer):
        if t.name == name:
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(value, name))
            return
    model.graph.initializer.append(numpy_helper.from_array(value, name))


def _node(model: onnx.ModelProto, op_type: str, uses: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.op_type == op_type and uses in n.input)


def _gemm_as_transposed_matmul(ptq: Path, *, quant_axis: int) -> onnx.ModelProto:
    """The PTQ graph with its classifier Gemm(x, W^T) + b rewritten as MatMul(x, Transpose(DQ(W)))
    + b, W re-quantized per row (`quant_axis` 0: the output channels, the correct axis) or per
    column (1: the input features, wrong once transposed)."""
    model = onnx.load(str(ptq))
    inits = _inits(model)
    w = inits[f"{W}_quantized"].astype(np.float32) * inits[f"{W}_scale"][:, None]
    scale = (np.abs(w).max(axis=1 - quant_axis) / 127).astype(np.float32)
    shaped = scale[:, None] if quant_axis == 0 else scale[None, :]
    _set_init(model, f"{W}_quantized", np.round(w / shaped).clip(-127, 127).astype(np.int8))
    _set_init(model, f"{W}_scale", scale)
    _set_init(model, f"{W}_zero_point", np.zeros(scale.shape, np.int8))
    dq = _node(model, "DequantizeLinear", f"{W}_quantized")
    dq.attribute[0].i = quant_axis
    gemm = _node(model, "Gemm", dq.output[0])
    x, _, bias = gemm.input
    nodes = list(model.graph.node)
    at = nodes.index(gemm)
    new = [
        helper.make_node("Transpose", [dq.output[0]], ["w_t"], name="w_transpose", perm=[1, 0]),
        helper.make_node("MatMul", [x, "w_t"], ["mm"], name="classifier_matmul"),
        helper.make_node("Add", ["mm", bias], [gemm.output[0]], name="classifier_bias"),
    ]
    del model.graph.node[:]
    model.graph.node.extend(nodes[:at] + new + nodes[at + 1 :])
    onnx.checker.check_model(model)
    return model


# Logits (magnitudes up to ~10) of two graphs of one function, run unoptimised: the same float
# math but for the summation order of a rewritten op (float32 rounding, ~1e-6 relative). A
# changed quantization step would move logits by ~1e-2.
SAME_FUNCTION = 1e-4


def _run(model: onnx.ModelProto | Path, x: np.ndarray) -> np.ndarray:
    """The graph's logits as written: DequantizeLinear -> float op -> QuantizeLinear, with ONNX
    Runtime's graph optimisations off. Optimised, ONNX Runtime may fuse a QDQ graph into an int8
    kernel or not, depending on the CPU (AMX/VNNI or not) and on the graph's shape around the
    weight, so two graphs of one function could differ by the int8 kernels' rounding."""
    import onnxruntime as ort

    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
    return session.run(None, {INPUT_NAME: x})[0]


def test_weight_through_transpose_maps_the_channel_axis(ptq_onnx: Path, har: HarFeatures) -> None:
    right = _gemm_as_transposed_matmul(ptq_onnx, quant_axis=0)
    # the rewrite computes what the PTQ graph computes
    x = har.test_x[:64]
    np.testing.assert_allclose(_run(right, x), _run(ptq_onnx, x), rtol=0, atol=SAME_FUNCTION)
    assert lint_qdq(right) == []  # per output channel: axis 0 of W is axis 1 of W^T = MatMul's N
    wrong = _gemm_as_transposed_matmul(ptq_onnx, quant_axis=1)
    (violation,) = lint_qdq(wrong)
    assert (violation.node, violation.rule) == (f"{W}_DequantizeLinear", "weight-axis")
    assert violation.message == (
        f"weight '{W}_quantized' (12, 32) is quantized along axis 1 (32 scales), which after "
        "Transpose is axis 0 of (32, 12); the output-channel axis of MatMul is 1"
    )


def _conv_weight_through_reshape(
    ptq: Path, stored: tuple[int, ...], scale_n: int
) -> onnx.ModelProto:
    """The PTQ graph with the second conv's int8 weight stored as `stored` (DQ along axis 0 with
    `scale_n` scales) and reshaped back to (32, 16, 5) before the conv."""
    model = onnx.load(str(ptq))
    inits = _inits(model)
    w = inits[f"{CONV_W}_quantized"].astype(np.float32) * inits[f"{CONV_W}_scale"][:, None, None]
    flat = w.reshape(stored)
    scale = (np.abs(flat.reshape(scale_n, -1)).max(axis=1) / 127).astype(np.float32)
    per_row = scale.reshape((scale_n,) + (1,) * (flat.ndim - 1))
    _set_init(model, f"{CONV_W}_quantized", np.round(flat / per_row).astype(np.int8))
    _set_init(model, f"{CONV_W}_scale", scale if scale_n > 1 else scale.reshape(()))
    _set_init(model, f"{CONV_W}_zero_point", np.zeros(scale.shape if scale_n > 1 else (), np.int8))
    _set_init(model, "conv_w_shape", np.array([32, 16, 5], np.int64))
    dq = _node(model, "DequantizeLinear", f"{CONV_W}_quantized")
    conv = _node(model, "Conv", dq.output[0])
    conv.input[1] = "conv_w"
    reshape = helper.make_node("Reshape", [dq.output[0], "conv_w_shape"], ["conv_w"], name="w_rs")
    nodes = list(model.graph.node)
    nodes.insert(nodes.index(conv), reshape)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.checker.check_model(model)
    return model


def test_weight_through_reshape_keeps_being_checked(ptq_onnx: Path, har: HarFeatures) -> None:
    right = _conv_weight_through_reshape(ptq_onnx, (32, 80), 32)
    x = har.test_x[:64]
    np.testing.assert_allclose(_run(right, x), _run(ptq_onnx, x), rtol=0, atol=SAME_FUNCTION)
    assert lint_qdq(right) == []
    per_tensor = _conv_weight_through_reshape(ptq_onnx, (32, 80), 1)
    assert [(v.node, v.rule) for v in lint_qdq(per_tensor)] == [
        (f"{CONV_W}_DequantizeLinear", "weight-per-tensor")
    ]
    # 160 scales along a (160, 16) weight: the reshape to (32, 16, 5) splits that axis
    split = _conv_weight_through_reshape(ptq_onnx, (160, 16), 160)
    (violation,) = lint_qdq(split)
    assert violation.rule == "weight-axis"
    assert "which after Reshape is split across axes of (32, 16, 5)" in violation.message


def test_float_weight_in_an_int8_graph_is_a_violation_unless_allowed(ptq_onnx: Path) -> None:
    model = onnx.load(str(ptq_onnx))
    inits = _inits(model)
    dq = _node(model, "DequantizeLinear", f"{W}_quantized")
    gemm = _node(model, "Gemm", dq.output[0])
    w = inits[f"{W}_quantized"].astype(np.float32) * inits[f"{W}_scale"][:, None]
    _set_init(model, "classifier_float_w", w)
    gemm.input[1] = "classifier_float_w"
    model.graph.node.remove(dq)
    onnx.checker.check_model(model)
    (violation,) = lint_qdq(model)
    assert (violation.node, violation.op_type, violation.rule) == (
        gemm.name,
        "Gemm",
        "unquantized-weight",
    )
    assert lint_qdq(model, allow_float=[gemm.name]) == []
    with pytest.raises(ExportError, match=r"\[unquantized-weight\]"):
        require_clean(model, "partly float")
    require_clean(model, "partly float", allow_float=[gemm.name])  # does not raise
    (typo,) = lint_qdq(model, allow_float=[gemm.name, "node_linaer"])
    assert (typo.node, typo.rule) == ("node_linaer", "allow-float-unknown")
    assert "node_Conv_23" in typo.message  # the valid names are listed
