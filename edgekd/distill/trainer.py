"""Teacher training and cross-modal distillation: data preparation and the two entry points.

The loop lives in `edgekd.distill.loop`, run folders in `edgekd.distill.runs`, batches in
`edgekd.data.pipeline`, augmentation in `edgekd.data.augment` and the frozen teacher's outputs
in `edgekd.distill.teacher_outputs`. Every option is checked (ConfigError) before a run folder
is created.

Teacher modes: `online` runs the frozen teacher (eval mode, no grad) on each batch's augmented,
mixed paired inputs (function matching); `cached` computes its outputs once on clean windows
and is refused together with augmentation (the cache would not match what the student sees).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgekd.checkpoint import load_run
from edgekd.config import DEFAULT_EPOCHS, TEACHER_EPOCHS, RunConfig, to_dict
from edgekd.data.augment import Policy, build_policy
from edgekd.data.pipeline import Loader, Windows, batch_rng, eval_batches, labelled
from edgekd.distill.loop import (
    Dist,
    EvalSet,
    StudentObjective,
    TeacherObjective,
    evaluate,
    fit,
    init_dist,
)
from edgekd.distill.runs import run_in_folder, seed_all
from edgekd.distill.teacher_outputs import TeacherView, cached_teacher_outputs, teacher_forward
from edgekd.errors import ConfigError
from edgekd.modalities import ModalitySpec

DEFAULT_TEACHER = "fusion"
DEFAULT_STUDENT = {"timeseries": "tcn_tiny", "audio": "dscnn_audio"}
_LAYOUT = ("kind", "rate_hz", "channels", "window", "hop", "n_mels", "n_fft", "hop_length", "size")

__all__ = ["Dist", "distill", "evaluate", "split_tensors", "train_teacher"]


# --- data ---------------------------------------------------------------------------------


def _load_data(cfg: RunConfig) -> Any:
    from edgekd.data import load_dataset

    if cfg.data.limit is not None and cfg.data.limit <= 0:
        raise ConfigError(
            f"--limit must be a positive number of training windows, got {cfg.data.limit}"
        )
    return load_dataset(
        cfg.data.source or "har",
        val_subjects=cfg.data.val_subjects,
        limit=cfg.data.limit,
        seed=cfg.train.seed,
    )


def split_tensors(
    ds: Any, name: str, specs: dict[str, Any], d: Dist
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Labelled windows of split `name`, preprocessed with `specs`, on `d.device` (whole split:
    for small evaluation sets such as an ensemble's)."""
    from edgekd.modalities import preprocess

    split = ds.splits[name]
    keep = labelled(split)
    if keep.size == 0:
        raise ConfigError(f"the {name} split of {ds.name} has no labelled windows")
    x = {
        m: torch.from_numpy(preprocess(s, split.x[m][keep])).to(d.device) for m, s in specs.items()
    }
    return x, torch.from_numpy(split.y[keep]).long().to(d.device)


def _eval_set(
    ds: Any, name: str, view: Mapping[str, ModalitySpec], d: Dist, single: str | None
) -> EvalSet:
    split = ds.splits[name]
    keep = labelled(split)
    if keep.size == 0:
        raise ConfigError(f"the {name} split of {ds.name} has no labelled windows")
    windows = Windows.of((split, keep))
    return EvalSet(lambda: eval_batches(windows, view, d.device), single)


def _check_specs(
    ours: Mapping[str, ModalitySpec], theirs: Mapping[str, ModalitySpec], what: str
) -> None:
    """ConfigError naming every modality/field where `ours` (the data) differs from `theirs`."""
    diffs = []
    for m, spec in theirs.items():
        if m not in ours:
            diffs.append(f"{m}: missing from the data (it has {', '.join(ours)})")
            continue
        for key in _LAYOUT:
            a, b = getattr(ours[m], key), getattr(spec, key)
            if a != b:
                diffs.append(f"{m}.{key}: data {a!r}, {what} {b!r}")
        if spec.mean and not (
            np.allclose(ours[m].mean, spec.mean, rtol=1e-3, atol=1e-4)
            and np.allclose(ours[m].std, spec.std, rtol=1e-3, atol=1e-4)
        ):
            diffs.append(f"{m}: normalisation fitted on the data differs from the {what}'s")
    if diffs:
        raise ConfigError(f"the data does not match the {what}: " + "; ".join(diffs))


def _header(role: str, arch: str, n: int, unlabelled: int, policy: Policy, mode: str) -> str:
    extra = f" (+{unlabelled} unlabelled)" if unlabelled else ""
    return f"{role} {arch}: {n} training windows{extra}, augment {policy.describe()}, {mode}"


def _loader(
    cfg: RunConfig, d: Dist, windows: Windows, views: Any, aug_specs: Any, policy: Policy
) -> Loader:
    """The training loader of a run: batch size and seed from cfg, this rank's shard."""
    return Loader(
        windows,
        views,
        aug_specs=aug_specs,
        policy=policy,
        batch_size=cfg.train.batch_size,
        seed=cfg.train.seed,
        rank=d.rank,
        world=d.world,
        device=d.device,
    )


# --- step sources -------------------------------------------------------------------------


@dataclass
class _LoaderSteps:
    """A step source over a loader: its window count and steps per epoch."""

    loader: Loader

    @property
    def windows(self) -> int:
        return len(self.loader)

    def steps(self, epoch: int) -> int:
        return self.loader.steps(epoch)


@dataclass
class TeacherSteps(_LoaderSteps):
    """(inputs, y) per step for the teacher's own training."""

    def epoch(self, epoch: int) -> Iterator[tuple[Any, ...]]:
        for batch in self.loader.epoch(epoch):
            yield batch.inputs["teacher"], batch.y


@dataclass
class StudentSteps(_LoaderSteps):
    """(x, y, teacher_logits, teacher_emb, teacher_classifier) per step: no teacher, cached
    outputs indexed by window, or the frozen teacher run on the batch's own teacher inputs."""

    modality: str
    teacher: nn.Module | None
    view: TeacherView
    cached: tuple[torch.Tensor, torch.Tensor] | None
    classifier: nn.Linear | None
    seed: int

    def epoch(self, epoch: int) -> Iterator[tuple[Any, ...]]:
        for batch in self.loader.epoch(epoch):
            x = batch.inputs["student"][self.modality]
            if self.teacher is None:
                yield x, batch.y, None, None, None
                continue
            if self.cached is not None:
                idx = torch.from_numpy(batch.idx).to(self.cached[0].device)
                logits, emb = self.cached[0][idx], self.cached[1][idx]
            else:
                rng = batch_rng(self.seed, epoch, batch.step, self.loader.rank)
                seed = int(rng.integers(2**31))
                logits, emb = teacher_forward(
                    self.teacher, batch.inputs["teacher"], view=self.view, seed=seed
                )
            yield x, batch.y, logits, emb, self.classifier


# --- entry points -------------------------------------------------------------------------


def train_teacher(
    cfg: RunConfig, out: Path, *, resume: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Train a teacher on the dataset's modalities (`data.modalities`: a subset); returns
    metrics.json's content."""
    from edgekd.models import create_teacher

    d = init_dist()
    out = Path(out)
    if cfg.data.source is None:
        cfg = replace(cfg, data=replace(cfg.data, source="har"))
    if cfg.train.epochs is None:
        cfg = replace(cfg, train=replace(cfg.train, epochs=TEACHER_EPOCHS))
    ds = _load_data(cfg)
    specs = dict(ds.specs)
    if cfg.data.modalities is not None:
        unknown = [m for m in cfg.data.modalities if m not in specs]
        if unknown or not cfg.data.modalities:
            raise ConfigError(
                f"data.modalities {list(cfg.data.modalities)}: {', '.join(unknown) or 'empty'} "
                f"not among the dataset's modalities {', '.join(specs)}"
            )
        specs = {m: specs[m] for m in cfg.data.modalities}
    if not cfg.model.arch:
        cfg = replace(cfg, model=replace(cfg.model, arch=DEFAULT_TEACHER))
    policy = build_policy(cfg.augment, specs, len(ds.labels))
    seed_all(cfg.train.seed)
    teacher = create_teacher(cfg.model.arch, specs, len(ds.labels), **cfg.model.args).to(d.device)
    train = ds.splits["train"]
    windows = Windows.of((train, labelled(train)))
    loader = _loader(cfg, d, windows, {"teacher": specs}, specs, policy)
    default_student = ds.default_student if ds.default_student in specs else next(iter(specs))
    sidecar = {
        "role": "teacher",
        "arch": teacher.arch,
        "arch_args": teacher.arch_args,
        "labels": list(ds.labels),
        "specs": {m: s.to_dict() for m, s in specs.items()},
        "default_student": default_student,
        "data": {"source": ds.source, "val_subjects": list(cfg.data.val_subjects or []) or None},
        "params": sum(p.numel() for p in teacher.parameters()),
    }
    val = _eval_set(ds, "val", specs, d, None)
    test = _eval_set(ds, "test", specs, d, None)

    def body() -> dict[str, Any]:
        return fit(
            TeacherObjective(teacher),
            TeacherSteps(loader),
            val,
            test,
            cfg,
            out,
            sidecar,
            num_classes=len(ds.labels),
            resume=resume,
            progress=progress,
            d=d,
            header=_header("teacher", teacher.arch, len(loader), 0, policy, "no teacher"),
            summary={"augment": policy.describe()},
        )

    return run_in_folder(out, cfg, resume, d, body)


def _criterion(cfg: RunConfig, student_dim: int, teacher_dim: int, counts: np.ndarray) -> nn.Module:
    from edgekd.distill.losses import DistillCriterion

    return DistillCriterion(
        cfg.distill, student_dim, teacher_dim, class_counts=[int(c) for c in counts]
    )


def distill(
    cfg: RunConfig,
    teacher_dir: Path,
    out: Path,
    *,
    resume: bool = False,
    progress: bool = True,
    fold: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Train a single-modality student from a frozen multimodal teacher.

    The data are the teacher's (`data.source` may name where they moved: they are checked
    against the teacher's labels and modality specs), with the teacher's split (another split
    would leak the teacher's training subjects into validation); teacher inputs use the
    teacher's saved normalisation. `fold=(i, k)`: cross-validation fold i of k over the training
    subjects (`edgekd.distill.cv`); fold i's subjects replace the validation split.
    """
    from edgekd.models import create_student

    d = init_dist()
    out = Path(out)
    teacher_run = load_run(teacher_dir, expect_role="teacher")
    tside = teacher_run.sidecar
    teacher_specs = {m: ModalitySpec.from_dict(s) for m, s in tside["specs"].items()}
    modality = cfg.student_modality or tside.get("default_student")
    if modality not in teacher_specs:
        raise ConfigError(
            f"student modality {modality!r} is not among the teacher's modalities "
            f"({', '.join(teacher_specs)})"
        )
    moved = cfg.data.source is not None and cfg.data.source != tside["data"]["source"]
    data_cfg = replace(
        cfg.data,
        source=cfg.data.source or tside["data"]["source"],
        val_subjects=tside["data"]["val_subjects"],
    )
    cfg = replace(cfg, data=data_cfg, student_modality=modality)
    ds = _load_data(cfg)
    if fold is not None:
        from edgekd.distill.cv import fold_dataset

        ds = fold_dataset(ds, *fold)
    if list(ds.labels) != list(tside["labels"]):
        raise ConfigError(
            f"the teacher in {teacher_dir} was trained on other labels than {ds.name} has now: "
            f"teacher {list(tside['labels'])}, data {list(ds.labels)}"
        )
    uses_teacher = cfg.distill.uses_teacher
    online = uses_teacher and cfg.distill.teacher_mode == "online"
    if uses_teacher:
        # The teacher must get the inputs it was trained on (moved data: also the same
        # normalisation, i.e. the same training windows).
        expected = teacher_specs
        if not moved:
            expected = {m: replace(s, mean=(), std=()) for m, s in teacher_specs.items()}
        _check_specs(ds.specs, expected, f"teacher in {teacher_dir}")
    elif moved:
        _check_specs(ds.specs, {modality: teacher_specs[modality]}, f"teacher in {teacher_dir}")
    spec = ds.specs[modality]
    if cfg.train.epochs is None:
        cfg = replace(cfg, train=replace(cfg.train, epochs=DEFAULT_EPOCHS[spec.kind]))
    if not cfg.model.arch:
        if spec.kind not in DEFAULT_STUDENT:
            raise ConfigError(f"no default student for modality kind {spec.kind!r}; pass --arch")
        cfg = replace(cfg, model=replace(cfg.model, arch=DEFAULT_STUDENT[spec.kind]))
    view = TeacherView.of(cfg.distill, list(teacher_specs), modality)
    # The modalities each step reads (a restricted teacher never sees the dropped ones), with
    # the dataset's raw-data specs for augmentation.
    teacher_reads = {m: s for m, s in teacher_specs.items() if m not in view.drop}
    aug_specs = {m: ds.specs[m] for m in (teacher_reads if online else [modality])}
    policy = build_policy(cfg.augment, aug_specs, len(ds.labels))
    if uses_teacher and not online and policy.active:
        raise ConfigError(
            f"distill.teacher_mode=cached computes the teacher's outputs once on clean windows, "
            f"but augmentation is on ({policy.describe()}); use teacher_mode online, or "
            "augment.policy none and augment.mix none"
        )
    train = ds.splits["train"]
    parts = [(train, labelled(train))]
    unl = ds.splits["unlabelled"]
    n_unlabelled = len(unl) if cfg.data.unlabelled and uses_teacher else 0
    if n_unlabelled:
        parts.append((unl, np.arange(len(unl))))
    windows = Windows.of(*parts)

    seed_all(cfg.train.seed)
    student = create_student(cfg.model.arch, spec, len(ds.labels), **cfg.model.args).to(d.device)
    teacher = teacher_run.model.to(d.device)
    for p in teacher.parameters():
        p.requires_grad_(False)
    counts = np.bincount(train.y[labelled(train)], minlength=len(ds.labels))
    criterion = _criterion(cfg, student.embed_dim, teacher.embed_dim, counts).to(d.device)
    views: dict[str, Mapping[str, ModalitySpec]] = {"student": {modality: spec}}
    if online:
        views["teacher"] = teacher_reads
    loader = _loader(cfg, d, windows, views, aug_specs, policy)
    cached = (
        cached_teacher_outputs(teacher, teacher_specs, windows, view, cfg.train.seed, d.device)
        if uses_teacher and not online
        else None
    )
    classifier = teacher.classifier if cfg.distill.classifier_loss == "soft_teacher_head" else None
    source = StudentSteps(
        loader,
        modality,
        teacher if uses_teacher else None,
        view,
        cached,
        classifier,
        cfg.train.seed,
    )
    sidecar = {
        "role": "student",
        "arch": student.arch,
        "arch_args": student.arch_args,
        "labels": list(ds.labels),
        "specs": {modality: spec.to_dict()},
        "student_modality": modality,
        "data": {"source": ds.source, "val_subjects": tside["data"]["val_subjects"]},
        "teacher_dir": str(Path(teacher_dir).resolve()),
        "teacher_metrics": tside.get("metrics", {}),
        "distill": to_dict(cfg.distill),
        "params": sum(p.numel() for p in student.parameters()),
        "fold": list(fold) if fold is not None else None,
    }
    val = _eval_set(ds, "val", {modality: spec}, d, modality)
    test = _eval_set(ds, "test", {modality: spec}, d, modality)
    mode = f"teacher {cfg.distill.teacher_mode}" if uses_teacher else "no teacher"

    def body() -> dict[str, Any]:
        return fit(
            StudentObjective(student, criterion),
            source,
            val,
            test,
            cfg,
            out,
            sidecar,
            num_classes=len(ds.labels),
            resume=resume,
            progress=progress,
            d=d,
            header=_header("student", student.arch, len(windows), n_unlabelled, policy, mode),
            summary={
                "augment": policy.describe(),
                "teacher_mode": cfg.distill.teacher_mode if uses_teacher else None,
                "unlabelled_windows": n_unlabelled,
            },
        )

    return run_in_folder(out, cfg, resume, d, body)
