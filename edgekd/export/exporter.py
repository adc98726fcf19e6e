"""`export_run`: a trained student run folder -> a verified, measured bundle for a target.

Steps: load the run and its data; FP32 ONNX (checked against torch); int8 by PTQ or QAT (linted
for TensorRT's Q/DQ rules); OpenVINO IRs (int8 execution checked); a TensorRT engine when
TensorRT and a GPU are here (else the build options travel in the manifest); golden and eval
windows. Everything is then written as a probe bundle in a temporary folder and loaded through
`edgekd.runtime` on every backend present: golden self-check and accuracy on held-out test
windows. Only if every reduced-precision artifact is within `max_drop` points of torch FP32 is
the real bundle written (atomically, by BundleWriter): a failed export leaves nothing at `out`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekd.errors import BackendUnavailable, ConfigError, ExportError
from edgekd.export.accuracy import REFERENCE, format_table, over_limit, score
from edgekd.export.quantize import PTQ_METHODS, CalibrationRecord, data_sha256
from edgekd.targets import Target, get_target

if TYPE_CHECKING:
    import torch

    from edgekd.checkpoint import Run
    from edgekd.data import PairedDataset
    from edgekd.modalities import ModalitySpec

BACKEND_QUANTIZERS = ("ort", "nncf")
TRT_FRONTENDS = ("onnx", "torch-tensorrt")
EVAL_CAP = 1024  # held-out windows kept in eval.npz and used for the accuracy report
GOLDEN_N = 8
EXAMPLE_BATCH = 4  # torch.export needs a batch > 1 to keep the batch dimension symbolic
ONNX_RTOL = 1e-4  # FP32 ONNX vs torch, relative to the largest |log-prob|: reorderings only
GOLDEN_ATOL = 1e-4  # FP32 probabilities on any backend vs torch, on golden windows


@dataclass(frozen=True)
class ExportOptions:
    """The knobs of `edgekd export` (see `export_run` for their meaning)."""

    target: str = "cpu"
    precision: str | None = None
    ptq: str = "minmax"
    calib: int = 512
    qat: bool = False
    qat_epochs: int = 3
    max_drop: float = 1.0
    force: bool = False
    backend_quantizer: str = "ort"
    trt_frontend: str = "onnx"
    seed: int = 0

    def resolve(self, out: Path) -> tuple[Target, str]:
        """(target, precision), checking everything that needs no model: fail in milliseconds."""
        tgt = get_target(self.target)
        prec = tgt.resolve_precision(self.precision)
        choices = (
            ("--ptq", self.ptq, PTQ_METHODS),
            ("--backend-quantizer", self.backend_quantizer, BACKEND_QUANTIZERS),
            ("--trt-frontend", self.trt_frontend, TRT_FRONTENDS),
        )
        for flag, value, allowed in choices:
            if value not in allowed:
                raise ConfigError(f"{flag} {value!r} is not one of {', '.join(allowed)}")
        if self.max_drop < 0:
            raise ConfigError(f"--max-drop must be >= 0 points, got {self.max_drop:g}")
        if self.calib < 0:
            raise ConfigError(f"--calib must be >= 0 windows, got {self.calib}")
        if prec == "int8" and not self.qat and self.calib == 0:
            raise ConfigError(
                "int8 needs calibration data, but --calib is 0; pass --calib N (e.g. 512), "
                "use --qat, or --precision fp32"
            )
        if self.qat and prec != "int8":
            raise ConfigError(f"--qat trains for int8, but the precision is {prec}")
        if self.qat and self.qat_epochs < 1:
            raise ConfigError(f"--qat-epochs must be >= 1, got {self.qat_epochs}")
        if self.backend_quantizer == "nncf" and (prec != "int8" or self.calib == 0):
            raise ConfigError(
                "--backend-quantizer nncf quantizes to int8 from calibration windows: it needs "
                f"precision int8 (here {prec}) and --calib N >= 1 (here {self.calib})"
            )
        if self.trt_frontend == "torch-tensorrt":
            if not tgt.uses_tensorrt:
                raise ConfigError(f"--trt-frontend applies to TensorRT targets, not {tgt.name!r}")
            if importlib.util.find_spec("torch_tensorrt") is None:
                from edgekd.export.tensorrt import TORCH_TENSORRT_HINT

                raise BackendUnavailable(
                    "--trt-frontend torch-tensorrt needs the torch-tensorrt package, which is "
                    f"not installed; {TORCH_TENSORRT_HINT}"
                )
        if (out.exists() or out.is_symlink()) and not self.force:
            raise ConfigError(f"{out} already exists; pass --force to replace it")
        return tgt, prec


@dataclass
class ExportResult:
    """What `export_run` produced: the bundle path, its manifest, the accuracy report, notices
    for the user (e.g. the on-device TensorRT build), step timings (s), OpenVINO int8 evidence."""

    out: Path
    manifest: dict[str, Any]
    accuracy: dict[str, dict[str, Any]]
    notices: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    int8_evidence: dict[str, Any] | None = None

    @property
    def sizes(self) -> dict[str, int]:
        """Bytes per bundled file (artifacts, golden, eval)."""
        out = {a["path"]: int(a["size"]) for a in self.manifest["artifacts"]}
        for kind in ("golden", "eval"):
            if kind in self.manifest:
                out[self.manifest[kind]["path"]] = int(self.manifest[kind]["size"])
        return out


def export_run(
    run_dir: Path,
    out: Path,
    *,
    target: str = "cpu",
    precision: str | None = None,
    ptq: str = "minmax",
    calib: int = 512,
    qat: bool = False,
    qat_epochs: int = 3,
    max_drop: float = 1.0,
    force: bool = False,
    backend_quantizer: str = "ort",
    trt_frontend: str = "onnx",
    seed: int = 0,
    progress: bool = True,
    with_eval: bool = False,
    sign_key: Path | None = None,
) -> ExportResult:
    """Export the student in `run_dir` to the bundle folder `out` for `target`.

    precision: None = the target's default. int8 takes `calib` calibration windows from the
    training split for PTQ (`ptq` = minmax | percentile | entropy), or fine-tunes `qat_epochs`
    epochs with fake quantization (`qat`; the PTQ model then stays as a comparison row).
    `max_drop`: the most accuracy (percentage points) an int8/fp16 artifact may lose against
    torch FP32 on held-out windows. `backend_quantizer="nncf"` replaces the OpenVINO int8 IR by
    NNCF's accuracy-controlled one. `trt_frontend`: "onnx" (TensorRT's ONNX parser) or
    "torch-tensorrt". `seed` picks calibration and held-out windows. `progress`: rich step lines
    on stderr. `with_eval`: keep the held-out windows inside the bundle (default: beside it as
    `<stem>.eval.npz`). `sign_key`: Ed25519 private key (PEM) to sign the bundle with.
    Raises ConfigError (options, run folder), DataError, BackendUnavailable,
    ExportError (lint, accuracy, a backend failing).
    """
    opts = ExportOptions(
        target=target,
        precision=precision,
        ptq=ptq,
        calib=calib,
        qat=qat,
        qat_epochs=qat_epochs,
        max_drop=max_drop,
        force=force,
        backend_quantizer=backend_quantizer,
        trt_frontend=trt_frontend,
        seed=seed,
    )
    out = Path(out)
    tgt, prec = opts.resolve(out)
    from edgekd.export.bundle import writer_options

    with writer_options(with_eval=with_eval, sign_key=sign_key):
        return _Export(Path(run_dir), out, opts, tgt, prec, _Steps(progress)).run()


class _Steps:
    """One line per finished step with its duration (rich, on stderr); silent when disabled."""

    def __init__(self, enabled: bool) -> None:
        from rich.console import Console

        self.console = Console(stderr=True, soft_wrap=True) if enabled else None
        self.timings: dict[str, float] = {}
        self._status: Any = None

    @contextlib.contextmanager
    def step(self, key: str, text: str) -> Iterator[None]:
        t0 = time.perf_counter()
        if self.console is None:
            yield
        else:
            with self.console.status(text) as status:
                self._status = status
                yield
            self._status = None
        seconds = time.perf_counter() - t0
        self.timings[key] = self.timings.get(key, 0.0) + seconds
        if self.console is not None:
            self.console.print(f"[green]✓[/green] {text} [dim]({seconds:.1f} s)[/dim]")

    def update(self, text: str) -> None:
        if self._status is not None:
            self._status.update(text)

    def show(self, text: str, *, notice: bool = False) -> None:
        if self.console is not None:
            self.console.print(f"[yellow]![/yellow] {text}" if notice else text, markup=notice)


@dataclass
class _Parts:
    """Everything that goes into a bundle, gathered before anything is published."""

    files: list[tuple[str, Path | bytes, str, str, dict[str, Any]]] = field(default_factory=list)
    sections: dict[str, Any] = field(default_factory=dict)
    npz: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def add(self, rel: str, source: Path | bytes, fmt: str, precision: str, **extra: Any) -> None:
        self.files.append((rel, source, fmt, precision, extra))

    def add_ir(
        self, xml: Path, precision: str, xml_only: dict[str, Any] | None = None, **extra: Any
    ) -> None:
        """An IR pair as openvino/model.<precision>.xml/.bin; `xml_only` keys go on the .xml."""
        stem = f"openvino/model.{precision}"
        self.add(f"{stem}.xml", xml, "openvino_xml", precision, **extra, **(xml_only or {}))
        self.add(f"{stem}.bin", xml.with_suffix(".bin"), "openvino_bin", precision, **extra)

    def write(self, out: Path, force: bool) -> dict[str, Any]:
        """Publish through BundleWriter (staged, hashed, read back, renamed); the manifest."""
        from edgekd.export.bundle import BundleWriter

        with BundleWriter(out, force=force) as writer:
            for rel, source, fmt, precision, extra in self.files:
                writer.add_file(rel, source, format=fmt, precision=precision, **extra)
            for kind, arrays in self.npz.items():
                writer.add_npz(kind, **arrays)
            for key, value in self.sections.items():
                writer.set(key, value)
        assert writer.manifest is not None  # set on a clean exit
        return writer.manifest


@dataclass
class _Data:
    """The loaded run and the windows export needs: raw (as the runtime sees them) or features."""

    run: Run
    spec: ModalitySpec
    dataset: PairedDataset
    train_x: np.ndarray  # raw labelled training windows
    train_y: np.ndarray
    val_x: np.ndarray  # raw labelled validation windows (NNCF accuracy control)
    val_y: np.ndarray
    eval_x: np.ndarray  # raw held-out test windows, at most EVAL_CAP
    eval_y: np.ndarray
    torch_logits: np.ndarray  # torch FP32 on eval_x: the reference

    @property
    def labels(self) -> list[str]:
        return list(self.run.sidecar["labels"])

    @property
    def source(self) -> str:
        return str(self.run.sidecar["data"]["source"])

    def features(self, raw: np.ndarray) -> np.ndarray:
        from edgekd.modalities import preprocess

        return preprocess(self.spec, raw)

    def score(self, logits: np.ndarray) -> dict[str, Any]:
        return score(logits.argmax(1), self.eval_y, len(self.labels))


def _load(run_dir: Path, seed: int) -> _Data:
    """Load a student run, its dataset (as recorded in the sidecar and config), held-out windows
    and the torch FP32 reference on them."""
    import torch

    from edgekd.checkpoint import load_run
    from edgekd.data import load_dataset
    from edgekd.modalities import ModalitySpec, preprocess

    run = load_run(run_dir, expect_role="student")
    side = run.sidecar
    modality = side["student_modality"]
    spec = ModalitySpec.from_dict(side["specs"][modality])  # normalisation as trained
    data = side.get("data") or {}
    if "source" not in data:
        raise ConfigError(f"{run_dir}/checkpoint.json names no data source (data.source)")
    # The run's own training windows (its --limit, its seed): calibration and QAT see what the
    # student was trained on.
    cfg = run.config
    ds = load_dataset(
        data["source"],
        val_subjects=data.get("val_subjects"),
        limit=cfg.data.limit,
        seed=cfg.train.seed,
    )
    if list(ds.labels) != list(side["labels"]):
        raise ConfigError(f"{run_dir} was trained on other labels than {data['source']} has now")
    train, val, test = (ds.splits[s] for s in ("train", "val", "test"))
    test_x, test_y = test.x[modality][test.y >= 0], test.y[test.y >= 0]
    if len(test_y) == 0:
        raise ConfigError(f"{data['source']} has no labelled test windows to measure accuracy on")
    if len(test_y) > EVAL_CAP:
        pick = np.sort(np.random.default_rng(seed).choice(len(test_y), EVAL_CAP, replace=False))
        test_x, test_y = test_x[pick], test_y[pick]
    test_x = np.ascontiguousarray(test_x, dtype=np.float32)
    with torch.no_grad():
        logits = run.model(torch.from_numpy(preprocess(spec, test_x))).numpy()
    return _Data(
        run=run,
        spec=spec,
        dataset=ds,
        train_x=train.x[modality][train.y >= 0],
        train_y=train.y[train.y >= 0],
        val_x=val.x[modality][val.y >= 0],
        val_y=val.y[val.y >= 0],
        eval_x=test_x,
        eval_y=test_y.astype(np.int64),
        torch_logits=logits,
    )


class _Export:
    """One export: builds the artifacts into `work`, gathers them in `parts`, measures, writes."""

    def __init__(
        self, run_dir: Path, out: Path, opts: ExportOptions, tgt: Target, prec: str, steps: _Steps
    ) -> None:
        self.run_dir, self.out, self.opts = run_dir, out, opts
        self.tgt, self.prec, self.steps = tgt, prec, steps
        self.parts = _Parts()
        self.notices: list[str] = []
        self.accuracy: dict[str, dict[str, Any]] = {}
        self.evidence: dict[str, Any] | None = None
        self.work = Path()  # set in run()
        self.data: _Data

    def run(self) -> ExportResult:
        t_start = time.perf_counter()
        opts, steps = self.opts, self.steps
        with steps.step("load", f"load run {self.run_dir} and its data"):
            self.data = _load(self.run_dir, opts.seed)
        if self.prec == "int8" and opts.calib > len(self.data.train_x):
            raise ConfigError(
                f"--calib {opts.calib} is more than the {len(self.data.train_x)} training "
                f"windows of {self.data.source}; use at most {len(self.data.train_x)}"
            )
        self.accuracy[REFERENCE] = self.data.score(self.data.torch_logits)
        with tempfile.TemporaryDirectory(prefix="edgekd-export-") as tmp:
            self.work = Path(tmp)
            fp32_onnx = self._fp32()
            qdq_onnx = self._int8() if self.prec == "int8" else None
            if self.tgt.uses_tensorrt:
                self.parts.sections["tensorrt_build"] = self.tgt.tensorrt_build(self.prec)
                self._tensorrt(fp32_onnx, qdq_onnx)
            self.parts.npz["golden"] = {
                "x": self.data.eval_x[:GOLDEN_N],
                "probs": _softmax(self.data.torch_logits[:GOLDEN_N]),
            }
            self.parts.npz["eval"] = {"x": self.data.eval_x, "y": self.data.eval_y}
            self.parts.sections.update(self._sections())
            with steps.step("accuracy", "load the bundle on every backend: golden check, accuracy"):
                probe = self.work / "probe.edgekd"
                self._measure(probe, self.parts.write(probe, force=False))
            table = format_table(self.accuracy, opts.max_drop)
            failing = over_limit(self.accuracy, opts.max_drop)
            if failing:
                raise ExportError(
                    f"accuracy drop over --max-drop {opts.max_drop:g} points for "
                    f"{', '.join(failing)}; no bundle written.\n{table}\n"
                    "Try --ptq percentile or entropy, more --calib windows, --qat, "
                    "or a larger --max-drop."
                )
            self.parts.sections["accuracy"] = self.accuracy
            self.parts.sections["export"] = {
                "options": {**asdict(opts), "precision": self.prec},
                "timings_s": {k: round(v, 3) for k, v in steps.timings.items()},
            }
            with steps.step("write", f"write {self.out}"):
                manifest = self.parts.write(self.out, force=opts.force)
        steps.timings["total"] = time.perf_counter() - t_start
        steps.show(table)
        for notice in self.notices:
            steps.show(notice, notice=True)
        return ExportResult(
            out=self.out,
            manifest=manifest,
            accuracy=self.accuracy,
            notices=self.notices,
            timings=dict(steps.timings),
            int8_evidence=self.evidence,
        )

    # -- artifacts ---------------------------------------------------------------------------

    def _fp32(self) -> Path:
        """FP32 ONNX, checked against torch on the held-out windows, and its OpenVINO IR."""
        import torch

        from edgekd.export.onnx import export_onnx, max_abs_diff_vs_torch
        from edgekd.export.openvino import convert_ir

        model = self.data.run.model
        feats = self.data.features(self.data.eval_x)
        with self.steps.step("onnx", "export FP32 ONNX (dynamo, dynamic batch), check vs torch"):
            path = export_onnx(
                model, torch.from_numpy(feats[:EXAMPLE_BATCH]), self.work / "model.fp32.onnx"
            )
            diff = max_abs_diff_vs_torch(model, path, feats)
        allowed = ONNX_RTOL * max(1.0, float(np.abs(self.data.torch_logits).max()))
        if diff > allowed:
            raise ExportError(
                f"the FP32 ONNX differs from torch by {diff:.3g} on the test windows (allowed "
                f"{allowed:.3g}): the export is not faithful to the model"
            )
        self.parts.add("model.fp32.onnx", path, "onnx", "fp32", max_abs_diff_vs_torch=diff)
        with self.steps.step("openvino_fp32", "convert the FP32 OpenVINO IR"):
            xml = convert_ir(path, self.work / "ir" / "model.fp32.xml")
        self.parts.add_ir(xml, "fp32")
        return path

    def _int8(self) -> Path:
        """The QDQ ONNX (PTQ, or QAT with PTQ as the comparison row) and the int8 IR."""
        from edgekd.export.onnx import onnx_logits
        from edgekd.export.quantize import quantize_ptq

        opts = self.opts
        source = f"{self.data.source}:train"
        qdq = None
        if opts.calib:
            calib_x = self._calibration_windows()
            with self.steps.step(
                "ptq", f"PTQ ({opts.ptq}, {opts.calib} calibration windows), lint for TensorRT"
            ):
                qdq = quantize_ptq(
                    self.work / "model.fp32.onnx",
                    self.work / "model.int8.ptq.onnx",
                    calib_x,
                    opts.ptq,
                )
            record = CalibrationRecord(opts.ptq, opts.calib, data_sha256(calib_x), source)
            self.parts.sections["calibration"] = record.to_dict()
        quantizer = f"ort-ptq-{opts.ptq}"
        if opts.qat:
            if qdq is not None:  # kept out of the bundle: the report's comparison row
                feats = self.data.features(self.data.eval_x)
                self.accuracy[f"ptq_{opts.ptq}"] = self.data.score(onnx_logits(qdq, feats))
            qdq, record_qat = self._qat()
            self.parts.sections["calibration"] = {**record_qat, "source": source}
            quantizer = "torchao-qat-pt2e"
        assert qdq is not None  # resolve() demands calibration windows or QAT for int8
        self.parts.add("model.int8.qdq.onnx", qdq, "onnx", "int8", quantizer=quantizer)
        self._openvino_int8(qdq, quantizer)
        return qdq

    def _calibration_windows(self) -> np.ndarray:
        """`calib` seeded training windows as model features (float32)."""
        n, data = self.opts.calib, self.data
        pick = np.sort(
            np.random.default_rng(self.opts.seed).choice(len(data.train_x), n, replace=False)
        )
        return np.ascontiguousarray(data.features(data.train_x[pick]), dtype=np.float32)

    def _qat(self) -> tuple[Path, dict[str, Any]]:
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

        data, epochs = self.data, self.opts.qat_epochs
        cfg = data.run.config
        x = torch.from_numpy(data.features(data.train_x))
        with self.steps.step("teacher", "teacher outputs for QAT distillation"):
            t_logits, t_emb = self._teacher_outputs()
        loss_text = describe_loss(qat_loss_config(cfg.distill, t_logits is not None))

        def on_epoch(epoch: int, terms: dict[str, float]) -> None:
            self.steps.update(f"QAT epoch {epoch + 1}/{epochs}: loss {terms['total']:.4f}")

        with self.steps.step("qat", f"QAT {epochs} epoch(s), loss {loss_text}"):
            result = quantization_aware_finetune(
                data.run.model,
                x,
                torch.from_numpy(data.train_y.astype(np.int64)),
                distill=cfg.distill,
                teacher_logits=t_logits,
                teacher_emb=t_emb,
                epochs=epochs,
                lr=cfg.train.lr / 10,
                batch_size=cfg.train.batch_size,
                seed=self.opts.seed,
                on_epoch=on_epoch,
            )
            path = export_qat_onnx(
                result.quantized, x[:EXAMPLE_BATCH], self.work / "model.int8.qat.onnx"
            )
        with torch.no_grad():
            fake = result.fake_quant(torch.from_numpy(data.features(data.eval_x))).numpy()
        self.accuracy["qat_fake_quant"] = data.score(fake)
        record = {
            "method": "qat",
            "samples": len(x),
            "data_sha256": data_sha256(x.numpy()),
            "epochs": epochs,
            "loss": loss_text,
            "history": result.history,
        }
        return path, record

    def _teacher_outputs(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Frozen-teacher (logits, embeddings) on the labelled training windows, as distillation
        saw them; (None, None) when the student had no teacher or its run folder is gone."""
        import torch

        from edgekd.checkpoint import load_run
        from edgekd.modalities import ModalitySpec, preprocess

        run = self.data.run
        distill, teacher_dir = run.config.distill, run.sidecar.get("teacher_dir")
        if not distill.uses_teacher or not teacher_dir:
            return None, None
        if not Path(teacher_dir).is_dir():
            self.notices.append(
                f"teacher run {teacher_dir} (named in the student's sidecar) not found: "
                "QAT used the task loss only"
            )
            return None, None
        teacher = load_run(Path(teacher_dir), expect_role="teacher")
        specs = {m: ModalitySpec.from_dict(s) for m, s in teacher.sidecar["specs"].items()}
        student = run.sidecar["student_modality"]
        # The restricted-teacher control zeroes the modalities the student lacks.
        drop = tuple(m for m in specs if m != student) if distill.teacher_view == "student" else ()
        train = self.data.dataset.splits["train"]
        raw = {m: train.x[m][train.y >= 0] for m in specs}
        logits, embs = [], []
        with torch.no_grad():
            for i in range(0, len(self.data.train_y), 512):
                batch = {
                    m: torch.from_numpy(preprocess(s, raw[m][i : i + 512]))
                    for m, s in specs.items()
                }
                emb = teacher.model.forward_features(batch, drop=drop)
                embs.append(emb)
                logits.append(teacher.model.classifier(emb))
        return torch.cat(logits), torch.cat(embs)

    def _openvino_int8(self, qdq: Path, quantizer: str) -> None:
        """Int8 IR (from the QDQ ONNX, or NNCF's with accuracy control), with proof it runs int8."""
        from edgekd.export.openvino import convert_ir, int8_evidence, nncf_quantize_ir

        extra: dict[str, Any] = {"quantizer": quantizer}
        if self.opts.backend_quantizer == "nncf":
            with self.steps.step("nncf", "NNCF PTQ with accuracy control (OpenVINO-only int8 IR)"):
                xml = nncf_quantize_ir(
                    self.work / "ir" / "model.fp32.xml",
                    self.work / "nncf" / "model.int8.xml",
                    self._calibration_windows(),
                    self.data.features(self.data.val_x),
                    self.data.val_y,
                    max_drop_points=self.opts.max_drop,
                )
            # NNCF's activations after ReLU are uint8: fine for OpenVINO, not for TensorRT.
            extra = {"quantizer": "nncf-accuracy-control", "backend": "openvino"}
        else:
            with self.steps.step("openvino_int8", "convert the int8 OpenVINO IR from the QDQ ONNX"):
                xml = convert_ir(qdq, self.work / "ir" / "model.int8.xml")
        with self.steps.step("int8_check", "check OpenVINO runs the convs/matmuls in int8"):
            evidence = int8_evidence(xml)
        if not evidence.all_int8:
            why = (
                "NNCF's accuracy control kept the others in float"
                if self.opts.backend_quantizer == "nncf"
                else "this CPU runs the others in float"
            )
            self.notices.append(f"the OpenVINO int8 IR runs {evidence.summary()}; {why}")
        self.evidence = evidence.to_dict()
        self.parts.add_ir(xml, "int8", xml_only={"int8_check": self.evidence}, **extra)

    def _tensorrt(self, fp32_onnx: Path, qdq_onnx: Path | None) -> None:
        """Build and stamp the engine when TensorRT and a GPU are here; else tell the user the
        device builds it at first load from the bundled ONNX and `tensorrt_build` options."""
        from edgekd.export import tensorrt as trt_export
        from edgekd.modalities import feature_shape
        from edgekd.runtime.backends import cache_dir
        from edgekd.runtime.backends.tensorrt import timing_cache_path

        tgt, prec, frontend = self.tgt, self.prec, self.opts.trt_frontend
        reason = trt_export.unavailable_reason()
        if reason is not None:
            source = "model.int8.qdq.onnx" if prec == "int8" else "model.fp32.onnx"
            self.notices.append(
                f"TensorRT engine not built here ({reason}). The bundle carries {source} and "
                f"its build options (manifest tensorrt_build: {prec}, workspace "
                f"{tgt.workspace_mib} MiB, batch 1..{tgt.max_batch}); the engine is built on the "
                f"{tgt.name} device at first load and cached there."
            )
            return
        build = tgt.tensorrt_build(prec)
        feat = feature_shape(self.data.spec)
        stamp = trt_export.engine_stamp(trt_export.require_tensorrt().__version__)
        with self.steps.step(
            "tensorrt", f"build the TensorRT {prec} engine ({frontend}) for {stamp['gpu']}"
        ):
            if frontend == "torch-tensorrt":
                plan = trt_export.compile_torch_tensorrt(self.data.run.model, prec, build, feat)
            else:
                onnx_path = qdq_onnx if prec == "int8" else fp32_onnx
                assert onnx_path is not None  # int8 always made a QDQ model first
                # the same per-device timing cache the runtime's first-load build uses
                plan = trt_export.build_onnx_engine(
                    onnx_path, prec, build, "input", feat,
                    timing_cache=timing_cache_path(cache_dir(), stamp),
                )
        self.parts.add(
            f"tensorrt/model.{prec}.engine",
            plan,
            "tensorrt_engine",
            prec,
            stamp=stamp,
            frontend=frontend,
            backend="tensorrt",
        )

    # -- manifest, measurement -----------------------------------------------------------------

    def _sections(self) -> dict[str, Any]:
        from edgekd.modalities import feature_shape

        run = self.data.run
        side = run.sidecar
        k = len(self.data.labels)
        return {
            "model": {
                "name": run.dir.name,
                "arch": side["arch"],
                "arch_args": side["arch_args"],
                "params": int(sum(p.numel() for p in run.model.parameters())),
                "run_metrics": side.get("metrics", {}),
            },
            "labels": self.data.labels,
            "modality": self.data.spec.to_dict(),
            "io": {
                "input": {
                    "name": "input",
                    "shape": ["batch", *feature_shape(self.data.spec)],
                    "dtype": "float32",
                },
                "output": {"name": "logits", "shape": ["batch", k], "dtype": "float32"},
            },
            "target": self.tgt.to_dict(self.prec),
            "provenance": {
                **_versions(),
                "git_commit": _git_commit(),
                "run_dir": str(run.dir.resolve()),
                "run_weights_sha256": side.get("weights_sha256"),
            },
        }

    def _measure(self, probe: Path, manifest: dict[str, Any]) -> None:
        """Load the probe bundle on each (precision, backend) it offers, through edgekd.runtime:
        FP32 must reproduce torch on the golden windows; every one is scored on eval windows."""
        import edgekd.runtime as rt

        combos = [("fp32", "onnxruntime", "fp32"), ("fp32", "openvino", "fp32_openvino")]
        if any(a["precision"] == "int8" for a in manifest["artifacts"]):
            combos += [
                ("int8", "onnxruntime", "int8_onnxruntime"),
                ("int8", "openvino", "int8_openvino"),
            ]
        combos += [
            (a["precision"], "tensorrt", f"{a['precision']}_tensorrt")
            for a in manifest["artifacts"]
            if a["format"] == "tensorrt_engine"
        ]
        for precision, backend, key in combos:
            try:
                model = rt.load(
                    probe, backend=backend, precision=precision, cache_dir=self.work / "cache"
                )
            except BackendUnavailable as exc:
                self.notices.append(f"{key}: not measured ({exc})")
                continue
            golden = model.self_check()
            if precision == "fp32" and (
                golden["top1_agreement"] < 1.0 or golden["max_abs_diff"] > GOLDEN_ATOL
            ):
                raise ExportError(
                    f"FP32 on {backend} does not reproduce torch on the golden windows: {golden}"
                )
            probs = model.predict(self.data.eval_x).probs
            self.accuracy[key] = {
                **self.data.score(probs),
                "golden_max_abs_diff": golden["max_abs_diff"],
            }


def _softmax(logits: np.ndarray) -> np.ndarray:
    from edgekd.runtime import softmax

    return softmax(logits)


def _versions() -> dict[str, str | None]:
    """Installed versions of the toolchain that made the bundle (None: not installed)."""
    from importlib import metadata

    out: dict[str, str | None] = {}
    for dist in ("torch", "onnx", "onnxruntime", "onnxscript", "openvino", "nncf", "torchao"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _git_commit() -> str | None:
    """HEAD of the repository edgekd runs from, if it is a git checkout with a commit."""
    git = shutil.which("git")
    if git is None:
        return None
    try:
        proc = subprocess.run(
            [git, "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    return proc.stdout.strip() or None
