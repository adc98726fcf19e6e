"""Which teacher each student seed learns from (the given one, or retrained with
`--teacher-seeds`; the `_unimodal` control's, given or trained on the student's modality), the
teacher trainings that needs, and what the controls check of a teacher run."""

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
