"""The table of export formats: what each artifact is, how it is built and checked.

A `Format` names one artifact (bundle path, manifest format, the runtime backend and precision
that serve it, its accuracy row), its builder and an optional verifier. Targets list the formats
they get (`edgekd.targets.Target.formats`); `edgekd.export.exporter` builds the wanted ones in
table order and stages them. A new format (say ONNX Runtime with the CUDA execution provider) is
one `Format` entry here plus one builder function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekd.constants import ONNX_OPSET
from edgekd.errors import ExportError
from edgekd.export.quantize import CalibrationRecord, data_sha256

if TYPE_CHECKING:
    import torch

    from edgekd.export.exporter import _Export

EXAMPLE_BATCH = 4  # torch.export needs a batch > 1 to keep the batch dimension symbolic
ONNX_RTOL = 1e-4  # FP32 ONNX vs torch, relative to the largest |log-prob|: reorderings only


@dataclass(frozen=True)
class Built:
    """What a builder made: the file in the work folder and manifest fields for its artifact
    record(s) (an IR's fields go on both its .xml and .bin)."""

    path: Path | bytes
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Format:
    """One kind of artifact export can make.

    `path`: its place in the bundle (`{precision}` is filled in; an .xml brings its .bin);
    `kind`: the manifest's artifact format; `backend`: the runtime backend whose accuracy row
    (`accuracy_key`, `{precision}` filled in) measures it through the probe bundle; `precision`:
    "fp32" (always built), a reduced precision (built when the export has it) or None (built at
    the export precision). `build(job) -> Built | None` (None: not buildable here, a notice says
    why) in table order, so a builder may use an earlier format's file (`job.built`);
    `verify(job, path) -> fields` checks a built file and returns manifest fields for it
    (ExportError when it fails); a builder that returns bytes checks them itself.
    """

    name: str
    path: str
    kind: str
    backend: str
    precision: str | None
    build: Callable[[_Export], Built | None]
    accuracy_key: str
    verify: Callable[[_Export, Path], dict[str, Any]] | None = None

    def precision_for(self, export_precision: str) -> str:
        return self.precision or export_precision

    def wanted(self, export_precision: str) -> bool:
        return self.precision in (None, "fp32", export_precision)


def _build_onnx_fp32(job: _Export) -> Built:
    """FP32 ONNX by the dynamo exporter (dynamic batch), checked to reproduce torch on the
    held-out windows (up to reorderings): an unfaithful export is an ExportError."""
    import torch

    from edgekd.export.onnx import export_onnx, max_abs_diff_vs_torch

    model, feats = job.data.run.model, job.data.features(job.data.eval_x)
    with job.steps.step("onnx", "export FP32 ONNX (dynamo, dynamic batch), check vs torch"):
        path = export_onnx(
            model, torch.from_numpy(feats[:EXAMPLE_BATCH]), job.work / "model.fp32.onnx",
            opset=ONNX_OPSET,
        )  # fmt: skip
        diff = max_abs_diff_vs_torch(model, path, feats)
    allowed = ONNX_RTOL * max(1.0, float(np.abs(job.data.torch_logits).max()))
    if diff > allowed:
        raise ExportError(
            f"the FP32 ONNX differs from torch by {diff:.3g} on the test windows (allowed "
            f"{allowed:.3g}): the export is not faithful to the model"
        )
    return Built(path, {"max_abs_diff_vs_torch": diff})


def _build_openvino_fp32(job: _Export) -> Built:
    """FP32 OpenVINO IR converted from the FP32 ONNX."""
    from edgekd.export.openvino import convert_ir

    with job.steps.step("openvino_fp32", "convert the FP32 OpenVINO IR"):
        return Built(convert_ir(job.built["onnx_fp32"], job.work / "ir" / "model.fp32.xml"))


def _build_onnx_qdq(job: _Export) -> Built:
    """The int8 QDQ ONNX: PTQ, or QAT with the PTQ model as the report's comparison row."""
    from edgekd.export.onnx import onnx_logits
    from edgekd.export.quantize import quantize_ptq

    opts = job.opts
    source = f"{job.data.source}:train"
    qdq = None
    if job.calib:
        calib_x = job.calibration_windows()
        with job.steps.step(
            "ptq", f"PTQ ({opts.ptq}, {len(calib_x)} calibration windows), lint for TensorRT"
        ):
            qdq = quantize_ptq(
                job.built["onnx_fp32"],
                job.work / "model.int8.ptq.onnx",
                calib_x,
                opts.ptq,
                allow_float=opts.allow_float,
            )
        record = CalibrationRecord(opts.ptq, len(calib_x), data_sha256(calib_x), source)
        job.parts.sections["calibration"] = {**record.to_dict(), **job.calib_shortfall}
    quantizer = f"ort-ptq-{opts.ptq}"
    if opts.qat:
        if qdq is not None:  # kept out of the bundle: the report's comparison row
            feats = job.data.features(job.data.eval_x)
            job.accuracy[f"ptq_{opts.ptq}"] = job.data.score(onnx_logits(qdq, feats))
        qdq, record_qat = _qat(job)
        job.parts.sections["calibration"] = {**record_qat, "source": source}
        quantizer = "torchao-qat-pt2e"
    assert qdq is not None  # resolve() demands calibration windows or QAT for int8
    return Built(qdq, {"quantizer": quantizer})


def _build_openvino_int8(job: _Export) -> Built:
    """Int8 IR from the QDQ ONNX, or NNCF's with accuracy control (OpenVINO-only)."""
    from edgekd.export.openvino import convert_ir, nncf_quantize_ir

    if job.opts.backend_quantizer != "nncf":
        with job.steps.step("openvino_int8", "convert the int8 OpenVINO IR from the QDQ ONNX"):
            xml = convert_ir(job.built["onnx_qdq"], job.work / "ir" / "model.int8.xml")
        return Built(xml, {"quantizer": job.extra["onnx_qdq"]["quantizer"]})
    with job.steps.step("nncf", "NNCF PTQ with accuracy control (OpenVINO-only int8 IR)"):
        xml = nncf_quantize_ir(
            job.built["openvino_fp32"],
            job.work / "nncf" / "model.int8.xml",
            job.calibration_windows(),
            job.data.val_features(),
            job.data.val_y,
            max_drop_points=job.opts.max_drop,
        )
    # NNCF's activations after ReLU are uint8: fine for OpenVINO, not for TensorRT.
    return Built(xml, {"quantizer": "nncf-accuracy-control", "backend": "openvino"})


def _verify_openvino_int8(job: _Export, xml: Path) -> dict[str, Any]:
    """Compile the int8 IR and read which precision each conv/matmul runs in (the evidence is
    recorded; layers left in float are a notice, not an error)."""
    from edgekd.export.openvino import int8_evidence

    with job.steps.step("int8_check", "check OpenVINO runs the convs/matmuls in int8"):
        evidence = int8_evidence(xml)
    if not evidence.all_int8:
        why = (
            "NNCF's accuracy control kept the others in float"
            if job.opts.backend_quantizer == "nncf"
            else "this CPU runs the others in float"
        )
        job.notices.append(f"the OpenVINO int8 IR runs {evidence.summary()}; {why}")
    job.evidence = evidence.to_dict()
    return {"int8_check": job.evidence}


def _build_tensorrt(job: _Export) -> Built | None:
    """Build and stamp the engine when TensorRT and a GPU are here; else (None) tell the user the
    device builds it at first load from the bundled ONNX and `tensorrt_build` options."""
    from edgekd.export import tensorrt as trt_export
    from edgekd.modalities import feature_shape
    from edgekd.runtime.backends import cache_dir
    from edgekd.runtime.backends.tensorrt import timing_cache_path

    tgt, prec, frontend = job.tgt, job.prec, job.opts.trt_frontend
    build = tgt.tensorrt_build(prec, dla_core=job.opts.dla_core)
    job.parts.sections["tensorrt_build"] = build
    reason = trt_export.unavailable_reason()
    prof = build["profiles"]
    batch = (f"batch {prof['max']}" if prof["min"] == prof["max"]
             else f"batch {prof['min']}..{prof['max']}")
    if reason is not None:
        source = "model.int8.qdq.onnx" if prec == "int8" else "model.fp32.onnx"
        job.notices.append(
            f"TensorRT engine not built here ({reason}). The bundle carries {source} and "
            f"its build options (manifest tensorrt_build: {prec}, workspace "
            f"{tgt.workspace_mib} MiB, {batch}"
            + ("" if job.opts.dla_core is None else f", DLA core {job.opts.dla_core}")
            + f"); the engine is built on the {tgt.name} device at first load and cached there."
        )
        return None
    feat = feature_shape(job.data.spec)
    stamp = trt_export.engine_stamp(trt_export.require_tensorrt().__version__, job.opts.dla_core)
    extra: dict[str, Any] = {"stamp": stamp, "frontend": frontend, "backend": "tensorrt"}
    with job.steps.step(
        "tensorrt", f"build the TensorRT {prec} engine ({frontend}) for {stamp['gpu']}"
    ):
        if frontend == "torch-tensorrt":
            plan = trt_export.compile_torch_tensorrt(job.data.run.model, prec, build, feat)
        else:
            onnx_path = job.built["onnx_qdq" if prec == "int8" else "onnx_fp32"]
            # the same per-device timing cache the runtime's first-load build uses
            built = trt_export.build_onnx_engine(
                onnx_path, prec, build, "input", feat,
                timing_cache=timing_cache_path(cache_dir(), stamp),
            )  # fmt: skip
            plan = built.plan
            if built.layers is not None:
                extra["layers"] = built.layers
                job.notices.append(
                    f"TensorRT {prec} engine on DLA core {job.opts.dla_core}: "
                    f"{built.layers['dla']} layers on the DLA, {built.layers['gpu']} on the GPU"
                    f" ({batch} per call)"
                )
    return Built(plan, extra)


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("onnx_fp32", "model.fp32.onnx", "onnx", "onnxruntime", "fp32",
               _build_onnx_fp32, "fp32"),
        Format("openvino_fp32", "openvino/model.fp32.xml", "openvino_xml", "openvino", "fp32",
               _build_openvino_fp32, "fp32_openvino"),
        Format("onnx_qdq", "model.int8.qdq.onnx", "onnx", "onnxruntime", "int8",
               _build_onnx_qdq, "int8_onnxruntime"),
        Format("openvino_int8", "openvino/model.int8.xml", "openvino_xml", "openvino", "int8",
               _build_openvino_int8, "int8_openvino", _verify_openvino_int8),
        Format("tensorrt", "tensorrt/model.{precision}.engine", "tensorrt_engine", "tensorrt",
               None, _build_tensorrt, "{precision}_tensorrt"),
    )
}  # fmt: skip


def _qat(job: _Export) -> tuple[Path, dict[str, Any]]:
    """QAT fine-tune with the run's task + classifier-level distillation terms (see
    edgekd.export.qat), at a tenth of the run's peak learning rate and its batch size, on
    its training windows; the QDQ ONNX and its record."""
    import torch

    from edgekd.export.qat import (
        describe_loss,
        export_qat_onnx,
        qat_loss_config,
        quantization_aware_finetune,
    )

    data, epochs = job.data, job.opts.qat_epochs
    cfg = data.run.config

    def features(idx: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(data.train_features(idx))

    with job.steps.step("teacher", "teacher outputs for QAT distillation"):
        t_logits, t_emb = _teacher_outputs(job)
    loss_text = describe_loss(qat_loss_config(cfg.distill, t_logits is not None))

    def on_epoch(epoch: int, terms: dict[str, float]) -> None:
        job.steps.update(f"QAT epoch {epoch + 1}/{epochs}: loss {terms['total']:.4f}")

    with job.steps.step("qat", f"QAT {epochs} epoch(s), loss {loss_text}"):
        result = quantization_aware_finetune(
            data.run.model,
            features,
            torch.from_numpy(data.train_y),
            distill=cfg.distill,
            teacher_logits=t_logits,
            teacher_emb=t_emb,
            epochs=epochs,
            lr=cfg.train.lr / 10,
            batch_size=cfg.train.batch_size,
            seed=job.opts.seed,
            on_epoch=on_epoch,
        )
        path = export_qat_onnx(
            result.quantized,
            features(np.arange(EXAMPLE_BATCH)),
            job.work / "model.int8.qat.onnx",
            opset=ONNX_OPSET,
        )
    with torch.no_grad():
        fake = result.fake_quant(torch.from_numpy(data.features(data.eval_x))).numpy()
    job.accuracy["qat_fake_quant"] = data.score(fake)
    record = {
        "method": "qat",
        "samples": len(data.train),
        "data_sha256": data.train_sha256(),
        "epochs": epochs,
        "loss": loss_text,
        "history": result.history,
    }
    return path, record


def _outside_teacher_outputs(job: _Export) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """An outside teacher's outputs on the labelled training windows, through the card the
    student's sidecar names (its sha256 must still be the one distillation used)."""
    import torch

    from edgekd.teachers import read_card
    from edgekd.teachers.teacher import OutsideTeacher

    info = job.data.run.sidecar.get("teacher") or {}
    card_path = Path(info.get("card") or "")
    if not info.get("card") or not card_path.is_file():
        job.notices.append(
            f"teacher card {info.get('card') or '(none recorded)'} not found: QAT used the task "
            "loss only"
        )
        return None, None
    card = read_card(card_path)
    if card.sha256 != info.get("sha256"):
        job.notices.append(
            f"the teacher card {card_path} now names other weights than distillation used: QAT "
            "used the task loss only"
        )
        return None, None
    teacher = OutsideTeacher(card, job.data.dataset.specs)
    out = teacher.window_outputs(job.data.train)
    logits = teacher.dataset_logits(out, job.data.labels)
    return (
        None if logits is None else torch.from_numpy(logits),
        None if out.embedding is None else torch.from_numpy(out.embedding),
    )


def _teacher_outputs(job: _Export) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Frozen-teacher (logits, embeddings) on the labelled training windows, as distillation
    saw them; (None, None) when the student had no teacher or its run folder is gone."""
    from edgekd.checkpoint import load_run
    from edgekd.distill.teacher_outputs import student_teacher_outputs
    from edgekd.modalities import ModalitySpec

    run = job.data.run
    distill, teacher_dir = run.config.distill, run.sidecar.get("teacher_dir")
    if distill.uses_teacher and not teacher_dir:
        return _outside_teacher_outputs(job)
    if not distill.uses_teacher:
        return None, None
    if not Path(teacher_dir).is_dir():
        job.notices.append(
            f"teacher run {teacher_dir} (named in the student's sidecar) not found: "
            "QAT used the task loss only"
        )
        return None, None
    teacher = load_run(Path(teacher_dir), expect_role="teacher")
    specs = {m: ModalitySpec.from_dict(s) for m, s in teacher.sidecar["specs"].items()}
    # The same function distillation uses: teacher view (restricted control) and corruption.
    return student_teacher_outputs(
        teacher.model,
        specs,
        job.data.train,
        distill,
        run.sidecar["student_modality"],
        run.config.train.seed,
    )
