"""Which teacher each student seed learns from (the given one, or retrained with
`--teacher-seeds`; the `_unimodal` control's, given or trained on the student's modality), the
teacher trainings that needs, and what the controls check of a teacher run; for an outside
teacher (a card), what of the ablation it cannot serve, and its score on the data."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekd.config import RunConfig, from_dict
from edgekd.distill.ablate.jobs import Job
from edgekd.distill.ablate.rows import split_control
from edgekd.errors import ConfigError

if TYPE_CHECKING:
    from edgekd.distill.ablate.core import AblationSpec
    from edgekd.teachers.card import TeacherCard


def teacher_modality_dropout(teacher: Path) -> float:
    """The modality dropout a teacher run was trained with (0 when none; the smallest member's
    for an ensemble), from its checkpoint sidecar."""
    from edgekd.checkpoint import SIDECAR_FILE

    path = Path(teacher) / SIDECAR_FILE
    if not path.is_file():
        raise ConfigError(f"{teacher} is not a teacher run: no {SIDECAR_FILE}")

    def of(args: dict[str, Any]) -> float:
        members = args.get("members")
        if members:
            return min(of(m.get("arch_args", {})) for m in members)
        return float(args.get("modality_dropout", 0.0))

    return of(json.loads(path.read_text()).get("arch_args", {}))


def _sidecar(run: Path) -> dict[str, Any]:
    from edgekd.checkpoint import SIDECAR_FILE

    return json.loads((Path(run) / SIDECAR_FILE).read_text())


def _teacher_config(teacher: Path) -> RunConfig:
    from edgekd.checkpoint import CONFIG_FILE, json_safe_yaml

    path = Path(teacher) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(
            f"retraining the teacher needs its {CONFIG_FILE}, but {teacher} has none "
            "(an ensemble?); pass teacher runs made by `edgekd teacher`"
        )
    return from_dict(json_safe_yaml(path))


def student_modality(spec: AblationSpec) -> str:
    """The students' modality: the base config's, else the teacher's default student."""
    return spec.base.student_modality or _sidecar(spec.teacher).get("default_student")


def _check_unimodal(run: Path, modality: str, given: bool) -> None:
    """A `_unimodal` control teacher must be a finished teacher of `modality` alone."""
    if not (Path(run) / "metrics.json").is_file():
        raise ConfigError(f"--unimodal-teacher {run} is not a finished teacher run")
    specs = sorted(_sidecar(run).get("specs", {}))
    if specs != [modality]:
        why = (
            "pass a teacher trained on that modality alone"
            if given
            else "the teacher trainer ignored data.modalities; pass --unimodal-teacher DIR"
        )
        raise ConfigError(
            f"the unimodal control needs a teacher of the student's modality {modality!r} alone, "
            f"but {run} was trained on {', '.join(specs)}: {why}"
        )


@dataclass(frozen=True)
class Teachers:
    """Which teacher each student seed learns from, and the teacher trainings that needs."""

    fused: dict[int, Path]  # student seed -> fused teacher
    unimodal: dict[int, Path]  # student seed -> unimodal teacher (empty without _unimodal runs)
    jobs: tuple[Job, ...]  # teachers to train (or reuse) before the students


def _teachers(spec: AblationSpec, names: Sequence[str], threads: int) -> Teachers:
    out = Path(spec.out) / "teachers"
    seeds = range(spec.seeds)
    jobs: list[Job] = []
    tseeds = spec.teacher_seeds
    fused = {s: Path(spec.teacher) for s in seeds}
    if tseeds is not None:
        tcfg = _teacher_config(spec.teacher)
        for s, t in zip(seeds, tseeds, strict=True):
            run = out / "fused" / f"seed{t}"
            cfg = replace(tcfg, train=replace(tcfg.train, seed=t))
            jobs.append(Job("teacher_fused", t, None, cfg, None, run, threads, kind="teacher"))
            fused[s] = run
    unimodal: dict[int, Path] = {}
    if any(split_control(n)[1] == "unimodal" for n in names):
        if spec.unimodal_teacher is not None:
            _check_unimodal(spec.unimodal_teacher, student_modality(spec), given=True)
            unimodal = {s: Path(spec.unimodal_teacher) for s in seeds}
        else:
            tcfg = _teacher_config(spec.teacher)
            only = replace(tcfg.data, modalities=(student_modality(spec),))
            for s in seeds:
                t = tcfg.train.seed if tseeds is None else tseeds[s]
                run = out / "unimodal" / f"seed{t}"
                if run not in unimodal.values():
                    cfg = replace(tcfg, data=only, train=replace(tcfg.train, seed=t))
                    jobs.append(
                        Job("teacher_unimodal", t, None, cfg, None, run, threads, "teacher")
                    )
                unimodal[s] = run
    return Teachers(fused=fused, unimodal=unimodal, jobs=tuple(jobs))


# --- an outside teacher (a card) ------------------------------------------------------------


def card_of(teacher: Path) -> TeacherCard | None:
    """The card of an outside teacher (`edgekd.teachers.is_card_teacher`: a card, a folder holding
    teacher.yaml, a model file with the card beside it), None for an edgekd teacher run."""
    from edgekd.teachers import is_card_teacher, read_card

    return read_card(teacher) if is_card_teacher(Path(teacher)) else None


def check_card_spec(spec: AblationSpec, names: Sequence[str], card: TeacherCard) -> None:
    """ConfigError naming every row and option an outside teacher cannot serve: the controls
    and the teacher retraining all act on an edgekd fusion teacher (its modality inputs, its
    saved config); a card's teacher is run as the card says and cannot be retrained here."""
    where = card.provenance()["card"] or str(spec.teacher)
    problems = []
    restricted = [n for n in names if split_control(n)[1] == "restricted"]
    if restricted:
        problems.append(
            f"{', '.join(restricted)}: the restricted control zeroes every modality but the "
            "student's inside an edgekd fusion teacher, and an outside teacher takes the inputs "
            "its card names"
        )
    unimodal = [n for n in names if split_control(n)[1] == "unimodal"]
    if unimodal:
        problems.append(
            f"{', '.join(unimodal)}: the unimodal control trains a teacher of the student's "
            "modality from an edgekd teacher's config, which an outside teacher does not have"
        )
    if spec.teacher_seeds is not None:
        problems.append(
            "--teacher-seeds retrains the teacher from its edgekd config; an outside teacher "
            "cannot be retrained here"
        )
    if spec.unimodal_teacher is not None:
        problems.append(
            "--unimodal-teacher serves the NAME_unimodal control, which needs an edgekd fused "
            "teacher to compare with"
        )
    if problems:
        raise ConfigError(
            f"the outside teacher {where} ({card.source}) cannot serve: "
            + "; ".join(problems)
            + ". Leave these out, or pass an edgekd teacher run (`edgekd teacher`)"
        )


def check_card_scores(card: TeacherCard, data: Any, wanted: bool) -> bool:
    """Whether the card's teacher can be scored on `data` (logits that map onto its classes);
    ConfigError when the `teacher` row was asked for (`wanted`) and it cannot."""
    labels = list(data.labels)
    if card.has_logits and card.class_index(labels) is not None:
        return True
    if wanted:
        why = (
            "it gives no logits" if not card.has_logits
            else "its classes are disjoint from the data's (disjoint: true)" if card.disjoint
            else "its labels (after label_map) do not cover the data's classes"
        )  # fmt: skip
        raise ConfigError(
            "the teacher row scores the teacher's own predictions on the data's val and test "
            f"splits, but the outside teacher in {card.dir} cannot be scored: {why}; leave "
            "teacher out of --runs"
        )
    return False


def score_card(card: TeacherCard, data: Any, scorable: bool = True) -> dict[str, Any]:
    """The report's `teacher` entry for an outside teacher: its provenance (source, sha256,
    licence, card) and, when `scorable`, its accuracy and macro-F1 (percent) on the labelled
    windows of `data`'s val and test splits, scored here (argmax of its logits in the data's
    class order)."""
    entry: dict[str, Any] = {"dir": str(card.dir), **card.provenance(), "n": 1}
    if not scorable:
        entry["scored"] = "not scored: the teacher gives no logits in the data's classes"
        return entry
    from edgekd.data.pipeline import Windows, labelled
    from edgekd.metrics import classification_report
    from edgekd.teachers.teacher import OutsideTeacher

    teacher = OutsideTeacher(card, data.specs)
    labels = list(data.labels)
    for split in ("val", "test"):
        part = data.splits[split]
        keep = labelled(part)
        if keep.size == 0:
            raise ConfigError(f"the {split} split of {data.name} has no labelled windows")
        logits = teacher.dataset_logits(teacher.window_outputs(Windows.of((part, keep))), labels)
        assert logits is not None  # scorable: the logits map onto the data's classes
        scores = classification_report(part.y[keep], logits.argmax(1), len(labels))
        entry[split] = {m: 100 * scores[m] for m in ("accuracy", "macro_f1")}
    entry["scored"] = "by edgekd ablate, on the data's labelled val and test windows"
    return entry
