"""Teacher training and cross-modal distillation: the two entry points, each "resolve the plan
(`edgekd.distill.plan`), write it as plan.json in the run folder, execute it".

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgekd.checkpoint import load_run
from edgekd.config import RunConfig, to_dict
from edgekd.data.augment import Policy, build_policy
from edgekd.data.pipeline import Loader, Windows, eval_batches, labelled
from edgekd.distill.feeds import CachedFeed, OnlineFeed, SelfFeed, TeacherFeed
from edgekd.distill.loop import (
    Dist,
    EvalSet,
    StudentObjective,
    TeacherObjective,
    evaluate,
    fit,
    init_dist,
)
from edgekd.distill.plan import (
    RunPlan,
    TeacherRun,
    load_data,
    resolve_plan,
    teacher_data_specs,
)
from edgekd.distill.runs import run_in_folder, seed_all
from edgekd.distill.teacher_outputs import TeacherView, cached_teacher_outputs
from edgekd.errors import ConfigError
from edgekd.modalities import ModalitySpec
from edgekd.teachers.card import TeacherCard

__all__ = ["Dist", "distill", "evaluate", "plan_distill", "split_tensors", "train_teacher"]


# --- data ---------------------------------------------------------------------------------


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


def _loader(
    plan: RunPlan,
    d: Dist,
    windows: Windows,
    views: Any,
    aug_specs: Any,
    policy: Policy,
    keep_raw: tuple[str, ...] = (),
    keep_clean: bool = False,
) -> Loader:
    """The training loader of a run: batch size and seed from the plan, this rank's shard."""
    return Loader(
        windows,
        views,
        aug_specs=aug_specs,
        policy=policy,
        batch_size=plan.batch_size,
        seed=plan.seed,
        rank=d.rank,
        world=d.world,
        device=d.device,
        keep_raw=keep_raw,
        keep_clean=keep_clean,
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


def supervised_targets(y: torch.Tensor) -> torch.Tensor:
    """`y` with every mixed sample that has an unlabelled partner turned unlabelled (a zero row).

    With mixing, a labelled window mixed with an unlabelled one gets the soft row lam * onehot(y),
    which the criterion would count as labelled: cross-entropy on an input that is partly an
    unlabelled window. Such a row sums to lam or 1 - lam, a labelled pair's row to 1 (float32
    error ~1e-7), so rows off 1 by more than 1e-5 are dropped from the supervised terms; the
    teacher terms still see the mixed window (with the teacher's top class as its target where a
    term needs one). Why here rather than by pairing labelled windows only with labelled
    partners: the inputs stay exactly what the augmentation made (`edgekd.data.augment`: one
    partner permutation per batch), and only what the supervised terms count changes. The cost:
    of a batch's labelled share p, about p^2 stays supervised."""
    if y.ndim == 1:
        return y
    whole = (y.sum(dim=1, keepdim=True) - 1).abs() < 1e-5
    return y * whole


@dataclass
class StudentSteps(_LoaderSteps):
    """(x, y, teacher_logits, teacher_emb, teacher_classifier) per step: the teacher's outputs
    from `feed` (None: no teacher). Targets pass through `supervised_targets`."""

    modality: str
    feed: TeacherFeed | None = None
    classifier: nn.Linear | None = None

    def epoch(self, epoch: int) -> Iterator[tuple[Any, ...]]:
        for batch in self.loader.epoch(epoch):
            x = batch.inputs["student"][self.modality]
            y = supervised_targets(batch.y)
            if self.feed is None:
                yield x, y, None, None, None
                continue
            logits, emb = self.feed(batch, epoch)
            yield x, y, logits, emb, self.classifier


# --- entry points -------------------------------------------------------------------------


def _sidecar(plan: RunPlan, ds: Any, model: nn.Module, specs: Mapping[str, ModalitySpec]) -> dict:
    return {
        "role": plan.role,
        "arch": model.arch,
        "arch_args": model.arch_args,
        "labels": list(ds.labels),
        "specs": {m: s.to_dict() for m, s in specs.items()},
        "data": {
            "source": ds.source,
            "val_subjects": list(plan.config.data.val_subjects or []) or None,
        },
        "params": sum(p.numel() for p in model.parameters()),
    }


def train_teacher(
    cfg: RunConfig, out: Path, *, resume: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Train a teacher on the dataset's modalities (`data.modalities`: a subset); returns
    metrics.json's content. The run folder gets the resolved `plan.json` first."""
    from edgekd.models import create_teacher

    d = init_dist()
    ds = load_data(cfg, None, None)
    plan = resolve_plan(cfg, ds, None, world=d.world)
    cfg = plan.config
    specs = teacher_data_specs(cfg, ds)
    policy = build_policy(cfg.augment, specs, len(ds.labels))
    seed_all(plan.seed)
    teacher = create_teacher(cfg.model.arch, specs, len(ds.labels), **cfg.model.args).to(d.device)
    train = ds.splits["train"]
    loader = _loader(plan, d, Windows.of((train, labelled(train))), {"teacher": specs}, specs,
                     policy)  # fmt: skip
    default = ds.default_student if ds.default_student in specs else next(iter(specs))
    sidecar = {**_sidecar(plan, ds, teacher, specs), "default_student": default}

    def body() -> dict[str, Any]:
        return fit(
            TeacherObjective(teacher),
            TeacherSteps(loader),
            _eval_set(ds, "val", specs, d, None),
            _eval_set(ds, "test", specs, d, None),
            plan,
            Path(out),
            sidecar,
            num_classes=len(ds.labels),
            resume=resume,
            progress=progress,
            d=d,
            summary={"augment": policy.describe()},
        )

    return run_in_folder(Path(out), plan, resume, d, body)


def _criterion(
    cfg: RunConfig, student_dim: int, teacher_dim: int | None, counts: np.ndarray
) -> nn.Module:
    from edgekd.distill.losses import DistillCriterion

    return DistillCriterion(
        cfg.distill, student_dim, teacher_dim, class_counts=[int(c) for c in counts]
    )


def plan_distill(
    cfg: RunConfig, teacher: Path, *, fold: tuple[int, int] | None = None, world: int = 1
) -> tuple[RunPlan, Any, TeacherRun | TeacherCard]:
    """(plan, dataset, teacher) of `distill`, resolved without training or writing. `teacher`:
    an edgekd teacher run folder, or an outside teacher's card (a card file, a folder holding
    teacher.yaml, or a model file with the card beside it; a `teacher cache` folder is one)."""
    from edgekd.teachers import is_card_teacher, read_card

    tref: TeacherRun | TeacherCard
    tref = read_card(teacher) if is_card_teacher(teacher) else TeacherRun.read(teacher)
    ds = load_data(cfg, tref, fold)
    if isinstance(tref, TeacherCard):
        from edgekd.teachers.cache import check_fingerprint

        check_fingerprint(tref, ds)
    return resolve_plan(cfg, ds, tref, world=world, fold=fold), ds, tref


def distill(
    cfg: RunConfig,
    teacher_dir: Path,
    out: Path,
    *,
    resume: bool = False,
    progress: bool = True,
    fold: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Train a single-modality student from a frozen teacher (`plan_distill` says which forms
    `teacher_dir` may take).

    With an edgekd teacher the data are the teacher's (`data.source` may name where they moved:
    they are checked against the teacher's labels and modality specs), with the teacher's split
    (another split would leak the teacher's training subjects into validation); teacher inputs
    use the teacher's saved normalisation. An outside teacher needs `data.source` (a cache knows
    its own) and preprocesses its raw windows as its card says. `fold=(i, k)`: cross-validation
    fold i of k over the training subjects (`edgekd.distill.cv`); fold i's subjects replace the
    validation split and leave training, labelled and unlabelled windows alike. The run folder
    gets `plan.json` first.
    """
    from edgekd.models import create_student

    d = init_dist()
    plan, ds, tref = plan_distill(cfg, teacher_dir, fold=fold, world=d.world)
    cfg = plan.config
    modality = str(plan.modality)
    spec = ds.specs[modality]
    tplan = plan.teacher
    online = tplan is not None and tplan.mode == "online"
    reads = {m: ds.specs[m] for m in tplan.reads} if tplan is not None else {}
    aug_specs = {m: ds.specs[m] for m in dict.fromkeys([modality, *reads] if online
                                                       else [modality])}  # fmt: skip
    policy = build_policy(cfg.augment, aug_specs, len(ds.labels))
    train, unl = ds.splits["train"], ds.splits["unlabelled"]
    parts = [(train, labelled(train))]
    if plan.unlabelled:
        parts.append((unl, np.arange(len(unl))))
    windows = Windows.of(*parts)

    seed_all(plan.seed)
    student = create_student(cfg.model.arch, spec, len(ds.labels), **cfg.model.args).to(d.device)
    counts = np.bincount(train.y[labelled(train)], minlength=len(ds.labels))
    views: dict[str, Mapping[str, ModalitySpec]] = {"student": {modality: spec}}
    feed: TeacherFeed | None = None
    classifier = None
    self_training = cfg.distill.classifier_loss == "fixmatch"  # its feed needs clean views
    if isinstance(tref, TeacherCard):
        from edgekd.distill.outside import outside_feed

        teacher_dim = None
        if tplan is not None:
            feed, teacher_dim = outside_feed(tref, ds, windows, online, d.device)
        loader = _loader(plan, d, windows, views, aug_specs, policy,
                         keep_raw=tplan.reads if online and tplan else (),
                         keep_clean=self_training)  # fmt: skip
        teacher_info = {"teacher": tref.provenance(), "teacher_metrics": {}}
    else:
        teacher = load_run(teacher_dir, expect_role="teacher").model.to(d.device)
        for p in teacher.parameters():
            p.requires_grad_(False)
        teacher_dim = teacher.embed_dim
        teacher_specs = tref.specs
        if online:
            views["teacher"] = {m: teacher_specs[m] for m in reads}
        loader = _loader(plan, d, windows, views, aug_specs, policy, keep_clean=self_training)
        view = TeacherView.of(cfg.distill, list(teacher_specs), modality)
        if tplan is not None:
            feed = (
                OnlineFeed(teacher, view, plan.seed, d.rank)
                if online
                else CachedFeed(*cached_teacher_outputs(
                    teacher, teacher_specs, windows, view, plan.seed, d.device))
            )  # fmt: skip
        if cfg.distill.classifier_loss == "soft_teacher_head":
            classifier = teacher.classifier
        teacher_info = {
            "teacher_dir": str(Path(teacher_dir).resolve()),
            "teacher": {"source": "edgekd", "dir": str(Path(teacher_dir).resolve())},
            "teacher_metrics": tref.sidecar.get("metrics", {}),
        }
    if self_training:
        feed = SelfFeed(student, modality)
    criterion = _criterion(cfg, student.embed_dim, teacher_dim, counts).to(d.device)
    source = StudentSteps(loader, modality, feed, classifier)
    sidecar = {
        **_sidecar(plan, ds, student, {modality: spec}),
        "student_modality": modality,
        **teacher_info,
        "distill": to_dict(cfg.distill),
        "fold": list(fold) if fold is not None else None,
    }

    def body() -> dict[str, Any]:
        return fit(
            StudentObjective(student, criterion),
            source,
            _eval_set(ds, "val", {modality: spec}, d, modality),
            _eval_set(ds, "test", {modality: spec}, d, modality),
            plan,
            Path(out),
            sidecar,
            num_classes=len(ds.labels),
            resume=resume,
            progress=progress,
            d=d,
            summary={
                "augment": policy.describe(),
                "teacher_mode": tplan.mode if tplan else None,
                "teacher": teacher_info["teacher"] if tplan else None,
                "unlabelled_windows": plan.unlabelled,
            },
        )

    return run_in_folder(Path(out), plan, resume, d, body)
