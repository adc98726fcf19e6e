"""FP32 ONNX export: symbolic batch, names, equality with torch on real HAR windows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from export_fixtures import HarFeatures, SmallNet
from onnx import TensorProto, helper

from edgekd.errors import ExportError
from edgekd.export.onnx import check_dynamic_batch, export_onnx, max_abs_diff_vs_torch, onnx_logits


def _dims(value: onnx.ValueInfoProto) -> list[object]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def test_batch_is_symbolic_in_input_and_output(fp32_onnx: Path) -> None:
    model = onnx.load(str(fp32_onnx))
    assert [(v.name, _dims(v)) for v in model.graph.input] == [("input", ["batch", 3, 128])]
    assert [(v.name, _dims(v)) for v in model.graph.output] == [("logits", ["batch", 12])]
    assert not fp32_onnx.with_name(fp32_onnx.name + ".data").exists()  # self-contained
    assert model.opset_import[0].version == 18


def test_onnxruntime_equals_torch_on_real_windows(
    fp32_onnx: Path, trained_net: SmallNet, har: HarFeatures
) -> None:
    assert max_abs_diff_vs_torch(trained_net, fp32_onnx, har.test_x) <= 1e-5
    # Any batch size runs, including 1 (streaming) and an odd one.
    for n in (1, 7):
        with torch.no_grad():
            ref = trained_net(torch.from_numpy(har.test_x[:n])).numpy()
        np.testing.assert_allclose(onnx_logits(fp32_onnx, har.test_x[:n]), ref, atol=1e-5, rtol=0)


def test_static_batch_is_rejected(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 128])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 128])
    model = helper.make_model(
        helper.make_graph([helper.make_node("Relu", ["input"], ["logits"])], "g", [x], [y])
    )
    with pytest.raises(ExportError, match=r"input 'input' has shape \[1, 3, 128\].*not symbolic"):
        check_dynamic_batch(model)
    renamed = helper.make_model(
        helper.make_graph(
            [helper.make_node("Relu", ["x"], ["logits"])],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 3])],
            [y],
        )
    )
    with pytest.raises(ExportError, match=r"ONNX inputs are \['x'\], expected \['input'\]"):
        check_dynamic_batch(renamed)


def test_bad_export_calls(trained_net: SmallNet, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="batch of at least 2"):
        export_onnx(trained_net, torch.zeros(1, 3, 128), tmp_path / "m.onnx")
    training = SmallNet().train()
    with pytest.raises(ExportError, match="eval mode"):
        export_onnx(training, torch.zeros(2, 3, 128), tmp_path / "m.onnx")


def test_no_build_machine_paths_in_the_file(fp32_onnx: Path) -> None:
    model = onnx.load(str(fp32_onnx))
    assert all(not n.metadata_props and not n.doc_string for n in model.graph.node)
    assert b"/site-packages/" not in fp32_onnx.read_bytes()
