"""QAT: which distillation terms it keeps, TensorRT-clean QDQ export, ONNX close to fake-quant."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from export_fixtures import HarFeatures, SmallNet
from onnx import numpy_helper

from edgekd.config import RECIPES, DistillConfig
from edgekd.errors import ExportError
from edgekd.export.onnx import check_dynamic_batch, onnx_logits
from edgekd.export.qat import (
    QATResult,
    describe_loss,
    export_qat_onnx,
    qat_loss_config,
    quantization_aware_finetune,
)
from edgekd.export.qdq_lint import lint_qdq

QAT_N = 512


def test_loss_terms_follow_the_run_config() -> None:
    paper = qat_loss_config(RECIPES["paper"], has_teacher=True)
    assert (paper.feature_loss, paper.classifier_loss, paper.quality) == (
        "none",
        "logit_kd",
        "teacher_confidence",
    )  # soft_teacher_head needs the dropped projector
    kd = qat_loss_config(RECIPES["kd"], has_teacher=True)
    assert (kd.feature_loss, kd.classifier_loss, kd.tau) == ("none", "logit_kd", 4.0)
    margin = qat_loss_config(
        DistillConfig(classifier_loss="margin_kd", classifier_margin=0.5), True
    )
    assert describe_loss(margin) == "task + 1 * margin_kd (tau=4, margin=0.5)"
    no_teacher = qat_loss_config(RECIPES["kd"], has_teacher=False)
    assert (no_teacher.classifier_loss, no_teacher.quality) == ("none", "none")
    assert describe_loss(no_teacher) == "task (cross-entropy)"
    assert qat_loss_config(None, has_teacher=True).classifier_loss == "none"


@pytest.fixture(scope="module")
def before(trained_net: SmallNet) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trained_net.state_dict().items()}


@pytest.fixture(scope="module")
def qat(trained_net: SmallNet, har: HarFeatures, before: dict[str, torch.Tensor]) -> QATResult:
    x = torch.from_numpy(har.train_x[:QAT_N])
    y = torch.from_numpy(har.train_y[:QAT_N])
    with torch.no_grad():  # the FP32 model stands in for a teacher: logit KD has a real target
        teacher = trained_net(x)
    return quantization_aware_finetune(
        trained_net,
        x,
        y,
        distill=RECIPES["kd"],
        teacher_logits=teacher,
        epochs=2,
        lr=1e-4,
        batch_size=64,
    )


def test_finetune_trains_with_task_and_logit_kd(
    qat: QATResult, trained_net: SmallNet, before: dict[str, torch.Tensor]
) -> None:
    assert qat.loss.classifier_loss == "logit_kd"
    assert len(qat.history) == 2
    first = qat.history[0]
    assert first["classifier"] > 0 and first["task"] > 0
    assert first["total"] == pytest.approx(first["task"] + first["classifier"], rel=1e-6)
    after = trained_net.state_dict()  # the caller's model was copied, not trained
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_qat_onnx_is_tensorrt_clean_and_close_to_fake_quant(
    qat: QATResult, har: HarFeatures, tmp_path: Path
) -> None:
    path = export_qat_onnx(qat.quantized, torch.from_numpy(har.test_x[:4]), tmp_path / "qat.onnx")
    assert lint_qdq(path) == []
    check_dynamic_batch(path)
    model = onnx.load(str(path))
    ops = [n.op_type for n in model.graph.node]
    assert "BatchNormalization" not in ops  # folded before QAT
    assert ops.count("QuantizeLinear") == 3  # one activation input per conv / linear
    weight_dq = [
        n
        for n in model.graph.node
        if n.op_type == "DequantizeLinear"
        and n.input[0] in {t.name for t in model.graph.initializer}
    ]
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert len(weight_dq) == 3
    for node in weight_dq:
        w = inits[node.input[0]]
        assert w.dtype == np.int8 and w.min() >= -127 and w.max() <= 127
        assert inits[node.input[1]].shape == (w.shape[0],)  # per output channel
    with torch.no_grad():
        fake = qat.fake_quant(torch.from_numpy(har.test_x)).numpy()
    exported = onnx_logits(path, har.test_x)
    acc_fake = float((fake.argmax(1) == har.test_y).mean())
    acc_onnx = float((exported.argmax(1) == har.test_y).mean())
    assert abs(acc_fake - acc_onnx) <= 0.01, (acc_fake, acc_onnx)
    assert float((fake.argmax(1) == exported.argmax(1)).mean()) >= 0.98
    # One window at a time (streaming batch) works too.
    np.testing.assert_allclose(onnx_logits(path, har.test_x[:1]), exported[:1], atol=1e-4)


def test_bad_qat_calls(trained_net: SmallNet, qat: QATResult) -> None:
    x, y = torch.zeros(16, 3, 128), torch.zeros(16, dtype=torch.long)
    with pytest.raises(ExportError, match="at least one epoch"):
        quantization_aware_finetune(trained_net, x, y, epochs=0)
    with pytest.raises(ExportError, match="at least 8 labelled windows"):
        quantization_aware_finetune(trained_net, x[:4], y[:4])
    with pytest.raises(ExportError, match="example batch of at least 2"):
        export_qat_onnx(qat.quantized, x[:1], Path("unused.onnx"))


def test_loss_weights_are_described() -> None:
    cfg = DistillConfig(classifier_loss="logit_kd", tau=2.0, lambda_task=0.7, lambda_classifier=0.3)
    assert (
        describe_loss(qat_loss_config(cfg, has_teacher=True))
        == "0.7 * task + 0.3 * logit_kd (tau=2)"
    )


def test_finetune_from_a_fetch_reads_batch_by_batch_and_trains_alike(
    trained_net: SmallNet, har: HarFeatures
) -> None:
    """A FeatureFetch (windows read per batch) trains exactly as the in-memory tensor does."""
    x = torch.from_numpy(har.train_x[:64])
    y = torch.from_numpy(har.train_y[:64])
    asked: list[int] = []

    def fetch(idx: np.ndarray) -> torch.Tensor:
        asked.append(len(idx))
        return x[torch.from_numpy(idx)]

    settings = {"epochs": 2, "lr": 1e-4, "batch_size": 16, "seed": 3}
    from_fetch = quantization_aware_finetune(trained_net, fetch, y, **settings)
    from_tensor = quantization_aware_finetune(trained_net, x, y, **settings)
    assert from_fetch.history == from_tensor.history
    # the example batch that traces the model, then 2 epochs of 4 batches of 16
    assert asked == [8] + [16] * 8
