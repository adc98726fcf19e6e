"""Quantization-aware fine-tuning with torchao's pt2e flow, exported as TensorRT-style QDQ ONNX.

The quantizer puts fake quantization where TensorRT wants Q/DQ: on the activation input
(int8, per tensor, symmetric) and the weight (int8 in [-127, 127], per output channel, symmetric)
of every Conv1d/Conv2d/Linear (torchao's default X86 quantizer gives
uint8 activations and does not annotate Conv1d+BN). BatchNorm is folded into the preceding conv
*before* QAT, its statistics frozen at the trained values (usual for a short QAT fine-tune), so
the fake-quantized weight is exactly the deployed one. This also skips pt2e's conv-BN pattern
matching, which re-traces ~100 patterns and costs 30-40 s on two cores.

Loss (documented choice): QAT repeats the student's *task* and *classifier-level* distillation
terms from its run config, with the teacher named in the student's sidecar. `logit_kd` and
`margin_kd` are used as configured (tau, margin, quality weights). `soft_teacher_head` needs the
projector, which is dropped at export, so QAT uses `logit_kd` at the run's tau in its place.
Feature-level terms are not used (they need the projector too). No teacher: task loss only.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekd.config import DistillConfig
from edgekd.constants import ONNX_OPSET
from edgekd.errors import ExportError
from edgekd.export.onnx import export_onnx, quiet_toolchain
from edgekd.export.qdq_lint import require_clean

if TYPE_CHECKING:
    import torch

EXAMPLE_BATCH = 8  # torch.export specialises a batch of 1 to a constant: trace with more
# Features (B, *feature_shape) float32 of the training windows at positions (B,) int64: QAT reads
# its windows batch by batch through one, so a training set larger than RAM can be fine-tuned.
FeatureFetch = Callable[["np.ndarray"], "torch.Tensor"]
LOGGED_TERMS = ("total", "task", "classifier")  # per-epoch means in QATResult.history


def qat_loss_config(distill: DistillConfig | None, has_teacher: bool) -> DistillConfig:
    """The DistillConfig QAT trains with (see the module docstring for the rule)."""
    base = distill or DistillConfig(classifier_loss="none")
    classifier = base.classifier_loss
    if not has_teacher:
        classifier = "none"
    elif classifier == "soft_teacher_head":
        classifier = "logit_kd"
    quality = base.quality if classifier != "none" else "none"
    return replace(base, feature_loss="none", classifier_loss=classifier, quality=quality)


def describe_loss(cfg: DistillConfig) -> str:
    """One line naming the QAT loss terms, e.g. '0.7 * task + 0.3 * logit_kd (tau=4)'."""
    task = "task" if cfg.lambda_task == 1 else f"{cfg.lambda_task:g} * task"
    if cfg.classifier_loss == "none":
        return f"{task} (cross-entropy)"
    extra = f"tau={cfg.tau:g}"
    if cfg.classifier_loss == "margin_kd":
        extra += f", margin={cfg.classifier_margin:g}"
    if cfg.quality != "none":
        extra += f", quality={cfg.quality}"
    return f"{task} + {cfg.lambda_classifier:g} * {cfg.classifier_loss} ({extra})"


def tensorrt_quantizer() -> Any:
    """A pt2e Quantizer annotating Conv1d/Conv2d/Linear with TensorRT-style int8 fake quant."""
    import torch
    from torchao.quantization.pt2e import (
        FusedMovingAvgObsFakeQuantize,
        MovingAverageMinMaxObserver,
        MovingAveragePerChannelMinMaxObserver,
    )
    from torchao.quantization.pt2e.quantizer import (
        QuantizationAnnotation,
        QuantizationSpec,
        Quantizer,
    )

    eps = 2**-12  # smallest scale: keeps an all-zero channel from dividing by zero
    activation = QuantizationSpec(
        dtype=torch.int8,
        quant_min=-128,
        quant_max=127,
        qscheme=torch.per_tensor_symmetric,
        is_dynamic=False,
        observer_or_fake_quant_ctr=FusedMovingAvgObsFakeQuantize.with_args(
            observer=MovingAverageMinMaxObserver, eps=eps
        ),
    )
    weight = QuantizationSpec(
        dtype=torch.int8,
        quant_min=-127,  # symmetric range: -128 has no positive twin
        quant_max=127,
        qscheme=torch.per_channel_symmetric,
        ch_axis=0,  # output channel of Conv (out, in, k) and Linear (out, in)
        is_dynamic=False,
        observer_or_fake_quant_ctr=FusedMovingAvgObsFakeQuantize.with_args(
            observer=MovingAveragePerChannelMinMaxObserver, eps=eps
        ),
    )
    weighted_ops = (
        torch.ops.aten.conv1d.default,
        torch.ops.aten.conv2d.default,
        torch.ops.aten.linear.default,
    )

    class TensorRTQuantizer(Quantizer):  # type: ignore[misc]
        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            for node in model.graph.nodes:
                if node.op == "call_function" and node.target in weighted_ops:
                    node.meta["quantization_annotation"] = QuantizationAnnotation(
                        input_qspec_map={node.args[0]: activation, node.args[1]: weight},
                        _annotated=True,
                    )
            return model

        def validate(self, model: torch.fx.GraphModule) -> None:
            return None

    return TensorRTQuantizer()


@dataclass
class QATResult:
    """`fake_quant`: the trained model with fake quantization (eval mode); `quantized`: the same
    after convert_pt2e (int8 weights, Q/DQ ops), which is what gets exported."""

    fake_quant: torch.fx.GraphModule
    quantized: torch.fx.GraphModule
    loss: DistillConfig
    history: list[dict[str, float]] = field(default_factory=list)


def quantization_aware_finetune(
    model: torch.nn.Module,
    x: torch.Tensor | FeatureFetch,
    y: torch.Tensor,
    *,
    distill: DistillConfig | None = None,
    teacher_logits: torch.Tensor | None = None,
    teacher_emb: torch.Tensor | None = None,
    epochs: int = 3,
    lr: float = 3e-4,
    batch_size: int = 64,
    seed: int = 0,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> QATResult:
    """Fine-tune a copy of `model` (the caller's model is not changed) with fake quantization.

    x: (N, *feature_shape) float32 training features, or a FeatureFetch giving the features of
    the positions it is asked for (then only one batch of windows is in memory at a time);
    y: (N,) int64 labels (-1 unlabelled); teacher_logits / teacher_emb: (N, K) / (N, D)
    frozen-teacher outputs for the same windows, or None. `on_epoch(epoch, mean_terms)` is
    called after each epoch.
    """
    import torch

    from edgekd.distill.losses import DistillCriterion

    if epochs < 1:
        raise ExportError(f"QAT needs at least one epoch, got {epochs}")
    n = len(x) if isinstance(x, torch.Tensor) else len(y)
    if n < EXAMPLE_BATCH or n != len(y):
        raise ExportError(
            f"QAT needs at least {EXAMPLE_BATCH} labelled windows with one label "
            f"each (x {n}, y {len(y)})"
        )
    features = _fetch_of(x)
    loss_cfg = qat_loss_config(distill, teacher_logits is not None)
    # Only task + classifier terms: no projector is built, so student_dim is only a formality.
    criterion = DistillCriterion(loss_cfg, student_dim=int(getattr(model, "embed_dim", 1)))
    torch.manual_seed(seed)
    prepared = _prepare(model, features(np.arange(EXAMPLE_BATCH)))
    optimizer = torch.optim.Adam(prepared.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(epochs):
        order = torch.randperm(n, generator=generator)
        sums: dict[str, float] = {}
        steps = 0
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            logits = prepared(features(idx.numpy()))
            # Without feature terms the criterion never reads the student embedding.
            terms = criterion(
                logits,
                logits,
                None if teacher_logits is None else teacher_logits[idx],
                None if teacher_emb is None else teacher_emb[idx],
                None,
                y[idx],
            )
            optimizer.zero_grad(set_to_none=True)
            terms["total"].backward()
            optimizer.step()
            for key in LOGGED_TERMS:
                sums[key] = sums.get(key, 0.0) + float(terms[key].detach())
            steps += 1
        means = {k: v / steps for k, v in sums.items()}
        history.append(means)
        if on_epoch is not None:
            on_epoch(epoch, means)
    with quiet_toolchain():
        from torchao.quantization.pt2e import move_exported_model_to_eval
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

        move_exported_model_to_eval(prepared)
        fake_quant = copy.deepcopy(prepared)
        quantized = convert_pt2e(prepared)
    return QATResult(fake_quant=fake_quant, quantized=quantized, loss=loss_cfg, history=history)


def _fetch_of(x: torch.Tensor | FeatureFetch) -> FeatureFetch:
    import torch

    if isinstance(x, torch.Tensor):
        return lambda idx: x[torch.from_numpy(idx)]
    return x


def _prepare(model: torch.nn.Module, example: torch.Tensor) -> torch.fx.GraphModule:
    """Export a copy of `model` with a dynamic batch, fold BatchNorm, insert fake quantization."""
    import torch

    with quiet_toolchain():
        from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e
        from torchao.quantization.pt2e.utils import _fuse_conv_bn_

        student = copy.deepcopy(model).eval()  # eval: BatchNorm folds its running statistics
        batch = torch.export.Dim("batch")
        graph = torch.export.export(student, (example,), dynamic_shapes=({0: batch},)).module()
        _fuse_conv_bn_(graph)  # what prepare_pt2e (the PTQ flow) does first; no public name yet
        return prepare_qat_pt2e(graph, tensorrt_quantizer())


def export_qat_onnx(
    quantized: torch.fx.GraphModule, example: torch.Tensor, path: Path, *, opset: int = ONNX_OPSET
) -> Path:
    """Export a converted QAT model to QDQ ONNX (dynamic batch) and lint it for TensorRT."""
    if example.shape[0] < 2:
        raise ExportError("export the QAT model with an example batch of at least 2")
    export_onnx(quantized, example, path, opset=opset)
    require_clean(path, f"QAT model {Path(path).name}")
    return Path(path)
