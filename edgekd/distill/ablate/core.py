"""The distillation ablation: every run over several seeds, paired statistics against the
CE-only student, and two controls that separate what is cross-modal from plain KD.

Layout of an ablation folder:
  ablate.json                      results (percent units), written when every job has finished
  ablate.png                       bar chart of test accuracy and macro-F1 (mean +- s.e.)
  settings.json                    what the runs were made with; a resume must match it
  teachers/fused/seed<t>/          `--teacher-seeds`: the teacher retrained from its config
  teachers/unimodal/seed<t>/       the `_unimodal` control's teacher (student's modality alone)
  runs/<run>/seed<s>/final/        a `distill` run folder on the teacher's full training split
  runs/<run>/seed<s>/fold<i>of<k>/ a cross-validation fold (`--folds k`), for model selection

Resume: a run folder with `metrics.json` is finished and reused; one with a train state is
continued; anything else is started afresh. Teachers are jobs like the students (trained first).

Every row declares what it changes against `ce` on purpose (`Row.intended`: aspects of its run
plan, `edgekd.distill.plan`); before anything trains, each row's plan is compared with CE's and
every other difference (e.g. "+3,661 unlabelled windows", "x1.64 optimizer steps") is printed in
the table and kept in ablate.json, or refused with `--strict`. `ce_steps` (CE trained for the
default's optimizer-step count) and `default_nounl` (the default recipe without the unlabelled
windows) separate what the default gains from its losses and from its extra windows and steps.

Controls, for each KD run X:
- `X_restricted`: the same teacher with every modality but the student's zeroed. Refused for a
  teacher trained without modality dropout (its zeroed view is out of distribution, so the
  control would measure a broken teacher) unless allowed; such rows are flagged.
- `X_unimodal`: KD from a teacher trained on the student's modality alone (same config).

Statistics (all in percentage points): per run, mean +- standard error over seeds; the gain over
CE-only as the mean of per-seed differences (paired by seed) with a two-sided 95% t-interval;
the share of the teacher-student gap closed, (run - ce) / (teacher - ce), on means; and, for each
run X with a control, the cross-modal gain X - control (paired by seed, with its interval) and
its share of X's gain over CE; for each row that takes one thing away from another (`ce_steps`
from `default`: the teacher and the unlabelled windows at equal steps; `default_nounl`: the
unlabelled windows), the other minus it, paired by seed (the report's `effects`). With
`--teacher-seeds`, student seed i learns from teacher seed i, so the intervals include the
teacher's seed-to-seed variance.

Outside teachers: `teacher` may be a card (teacher.yaml, a folder holding one such as a `teacher
cache`, or a .onnx/.pt2 with the card beside it), as `edgekd distill` takes it: the rows are
planned and run with the card (`--data` names the paired data; a cache knows its own). Refused
up front: the `_restricted` and `_unimodal` controls, `--teacher-seeds` and `--unimodal-teacher`
(they act on an edgekd fusion teacher), and the `teacher` row when the card's teacher gives no
logits in the data's classes; otherwise the teacher's accuracy is scored here, on the data's val
and test splits. Its provenance (source, sha256, licence, card) is in settings.json and the
report's `teacher`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgekd.config import RunConfig, to_dict
from edgekd.distill.ablate.jobs import Job, _metrics_of, duration, run_jobs
from edgekd.distill.ablate.report import plot
from edgekd.distill.ablate.rows import (
    CONTROLS,
    DEFAULT_RUNS,
    run_config,
    run_row,
    split_control,
    with_overrides,
)
from edgekd.distill.ablate.stats import METRICS, gap_closed, paired_interval, summarize
from edgekd.distill.ablate.teachers import (
    Teachers,
    _check_unimodal,
    _teachers,
    card_of,
    check_card_scores,
    check_card_spec,
    score_card,
    student_modality,
    teacher_modality_dropout,
)
from edgekd.distill.plan import RunPlan, TeacherRun, differences
from edgekd.errors import ConfigError
from edgekd.executor import check_executor, make_executor
from edgekd.io import atomic_write_json
from edgekd.teachers.card import TeacherCard


@dataclass(frozen=True)
class AblationSpec:
    """What to run: run names, seeds 0..seeds-1, optional CV folds, the base run config (its
    train/data/model sections; the distill section is each run's), processes in parallel.

    `teacher_seeds`: retrain the teacher from its config once per listed seed (student seed i
    learns from teacher seed i; as many as `seeds`). `unimodal_teacher`: the `_unimodal` control's
    teacher (else trained from the teacher's config on the student's modality alone).
    `allow_ood_restricted`: run `_restricted` controls on a teacher without modality dropout.
    `threads`: the CPU thread budget (`edgekd.threads`), split over the jobs. `strict`: refuse
    rows whose plans differ from CE's in more than their intended change. `executor` ("local" |
    "ray") and `address` (a Ray cluster): where the trainings run (`edgekd.executor`); not part
    of what is measured, so a resume may use another.
    """

    teacher: Path
    out: Path
    runs: tuple[str, ...] = DEFAULT_RUNS
    seeds: int = 5
    folds: int | None = None
    jobs: int = 1
    base: RunConfig = RunConfig()
    teacher_seeds: tuple[int, ...] | None = None
    unimodal_teacher: Path | None = None
    allow_ood_restricted: bool = False
    threads: int | None = None
    strict: bool = False
    executor: str = "local"
    address: str | None = None


def _check(spec: AblationSpec) -> list[str]:
    """Validated training run names (CE first: every gain is measured against it)."""
    if spec.seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {spec.seeds}")
    if spec.jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {spec.jobs}")
    if spec.folds is not None and spec.folds < 2:
        raise ConfigError(f"--folds must be at least 2 (or omitted), got {spec.folds}")
    check_executor(spec.executor, spec.address)
    card = card_of(spec.teacher)
    if card is not None:  # what of the ablation it cannot serve, before the options' details
        names = [n for n in dict.fromkeys(spec.runs) if n != "teacher"]
        for name in names:
            run_config(name)
        check_card_spec(spec, names, card)
        return ["ce", *(n for n in names if n != "ce")]
    if not (Path(spec.teacher) / "metrics.json").is_file():
        raise ConfigError(f"{spec.teacher} is not a finished teacher run (no metrics.json)")
    if spec.teacher_seeds is not None:
        if len(spec.teacher_seeds) != spec.seeds:
            raise ConfigError(
                f"--teacher-seeds pairs student seed i with teacher seed i: give {spec.seeds} "
                f"teacher seeds (one per --seeds), got {len(spec.teacher_seeds)}"
            )
        if len(set(spec.teacher_seeds)) != len(spec.teacher_seeds):
            raise ConfigError(f"--teacher-seeds repeats a seed: {list(spec.teacher_seeds)}")
    names = [n for n in dict.fromkeys(spec.runs) if n != "teacher"]
    for name in names:
        run_config(name)
    restricted = [n for n in names if split_control(n)[1] == "restricted"]
    dropout = teacher_modality_dropout(spec.teacher)
    if restricted and dropout == 0 and not spec.allow_ood_restricted:
        raise ConfigError(
            f"{', '.join(restricted)}: the teacher in {spec.teacher} was trained without modality "
            "dropout (arch_args.modality_dropout is 0), so its view with the other modalities "
            "zeroed is out of distribution and the control would measure a broken teacher. "
            "Train the teacher with --modality-dropout (e.g. 0.3), use the X_unimodal control, "
            "or pass --allow-ood-restricted to run it anyway (the table flags it)"
        )
    return ["ce", *(n for n in names if n != "ce")]


def _run_base(spec: AblationSpec, name: str) -> RunConfig:
    """The base config of a run: the ablation's with the row's overrides and losses."""
    row = run_row(name)
    return replace(with_overrides(spec.base, row.overrides), distill=row.distill)


def read_teacher(spec: AblationSpec) -> tuple[Any, TeacherRun | TeacherCard]:
    """(the data of seed 0's final fits, the teacher) as `edgekd distill` reads them
    (`plan_distill`: an edgekd teacher run, or an outside teacher's card, whose cache must
    still match the data)."""
    from edgekd.distill.trainer import plan_distill

    _, data, teacher = plan_distill(_run_base(spec, "ce"), Path(spec.teacher))
    return data, teacher


def row_plans(
    spec: AblationSpec,
    names: Sequence[str],
    read: tuple[Any, TeacherRun | TeacherCard] | None = None,
) -> dict[str, RunPlan]:
    """Each run's plan for seed 0's final fit on `spec.teacher`, without training (a `_unimodal`
    run is planned with the fused teacher's data, which its own teacher shares). A row that
    matches another's optimizer steps gets the epochs that come closest. `read`: (data,
    teacher) from `read_teacher`, read here when not given. With an outside teacher, every row
    it cannot serve is named in one ConfigError."""
    from edgekd.distill.plan import resolve_plan, with_steps

    data, teacher = read or read_teacher(spec)
    if isinstance(teacher, TeacherCard):
        plans, refused = {}, {}
        for name in names:
            try:
                plans[name] = resolve_plan(_run_base(spec, name), data, teacher)
            except ConfigError as exc:
                refused[name] = str(exc)
        if refused:
            raise ConfigError(
                f"the outside teacher in {teacher.dir} cannot serve these runs: "
                + "; ".join(f"{n}: {why}" for n, why in refused.items())
            )
    else:
        plans = {n: resolve_plan(_run_base(spec, n), data, teacher) for n in names}
    for name in names:
        target = run_row(name).match_steps
        if target is None:
            continue
        goal = plans.get(target) or resolve_plan(_run_base(spec, target), data, teacher)
        cfg = with_steps(_run_base(spec, name), goal.total_steps, data, teacher)
        plans[name] = resolve_plan(cfg, data, teacher)
    return plans


def unintended(name: str, plans: Mapping[str, RunPlan]) -> list[str]:
    """The differences of run `name`'s plan from CE's besides the row's intended change."""
    intended = run_row(name).intended
    return [d.text for d in differences(plans[name], plans["ce"]) if d.aspect not in intended]


def _settings(spec: AblationSpec, names: Iterable[str]) -> dict[str, Any]:
    base = to_dict(spec.base)
    base.pop("distill")
    runs = {}
    for n in names:
        row = run_row(n)
        runs[n] = to_dict(row.distill)
        if row.overrides:
            runs[n]["base_overrides"] = {k: dict(v) for k, v in row.overrides.items()}
        if row.match_steps:
            runs[n]["match_steps"] = row.match_steps
    card = card_of(spec.teacher)
    return {
        "teacher": str(Path(spec.teacher).resolve()),
        # an outside teacher's provenance: its weights' sha256 binds a resume
        "teacher_card": None if card is None else card.provenance(),
        "base": base,
        "teacher_seeds": None if spec.teacher_seeds is None else list(spec.teacher_seeds),
        "unimodal_teacher": None
        if spec.unimodal_teacher is None
        else str(Path(spec.unimodal_teacher).resolve()),
        "runs": runs,
    }


def _started(out: Path) -> bool:
    """Whether any training of the ablation in `out` got as far as a finished epoch."""
    from edgekd.checkpoint import STATE_FILE

    return any(Path(out).glob(f"*/**/{STATE_FILE}"))


def _check_settings(out: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """Merge with a previous ablation's settings in `out`; ConfigError where they disagree. The
    settings of an ablation that never finished an epoch bind nothing (e.g. one that failed
    before training): they are replaced."""
    path = out / "settings.json"
    if not path.is_file() or not _started(out):
        return settings
    old = json.loads(path.read_text())
    # A config field added since that ablation was made had its default value there.
    defaults = to_dict(RunConfig())
    old["base"] = {
        k: {**defaults[k], **v} if isinstance(v, dict) and isinstance(defaults.get(k), dict) else v
        for k, v in old.get("base", {}).items()
    }
    keys = ("teacher", "teacher_card", "base", "teacher_seeds", "unimodal_teacher")
    clash = [k for k in keys if old.get(k) != settings[k]]
    clash += [n for n, c in settings["runs"].items() if old["runs"].get(n, c) != c]
    if clash:
        raise ConfigError(
            f"{out} holds an ablation made with other settings ({', '.join(clash)}); "
            "use the same options to resume it, or choose another --out"
        )
    return {**settings, "runs": {**old["runs"], **settings["runs"]}}


def plan(
    spec: AblationSpec,
    names: Sequence[str],
    teachers: Teachers | None = None,
    threads: int = 1,
    plans: Mapping[str, RunPlan] | None = None,
) -> list[Job]:
    """Every student job of the ablation, final fits first (so a short ablation reports test
    early); each learns from its seed's teacher (the unimodal one for `_unimodal` runs) for the
    epochs of its row's plan (`row_plans`, made here when not given)."""
    teachers = teachers or Teachers({}, {}, ())
    plans = plans or row_plans(spec, names)
    jobs: list[Job] = []
    folds = [None] if spec.folds is None else [None, *((i, spec.folds) for i in range(spec.folds))]
    for fold in folds:
        for seed in range(spec.seeds):
            for name in names:
                base = _run_base(spec, name)
                train = replace(base.train, seed=seed, epochs=plans[name].epochs)
                cfg = replace(base, train=train)
                unimodal = split_control(name)[1] == "unimodal"
                teacher = (teachers.unimodal if unimodal else teachers.fused).get(
                    seed, Path(spec.teacher)
                )
                where = "final" if fold is None else f"fold{fold[0]}of{fold[1]}"
                out = Path(spec.out).absolute() / "runs" / name / f"seed{seed}" / where
                jobs.append(Job(name, seed, fold, cfg, teacher, out, threads))
    return jobs


def _epoch_guess(jobs: Sequence[Job], teacher: Path) -> tuple[float | None, str]:
    """(seconds per epoch, where from) for the first ETA: finished runs of this ablation when
    there are any, else the teacher's own training (a rough guide: another model)."""
    seen = [m["train"]["epoch_seconds_mean"] for j in jobs if (m := _metrics_of(j.out))]
    seen = [s for s in seen if s]
    if seen:
        return sum(seen) / len(seen), f"{len(seen)} finished runs here"
    metrics = _metrics_of(Path(teacher)) or {}
    guess = metrics.get("train", {}).get("epoch_seconds_mean")
    return (guess, "the teacher's epochs") if guess else (None, "")


def describe_plan(
    spec: AblationSpec, names: Sequence[str], jobs: Sequence[Job], threads: Any
) -> tuple[str, float | None]:
    """The line printed before anything trains, and the seconds-per-epoch guess behind it."""
    students = [j for j in jobs if j.kind == "student"]
    teachers = len(jobs) - len(students)
    todo = [j for j in jobs if _metrics_of(j.out) is None]
    epoch_s, basis = _epoch_guess(jobs, spec.teacher)
    fits = "" if spec.folds is None else f" x {spec.folds + 1} fits"
    line = (
        f"ablation: {len(names)} runs ({', '.join(names)}) x {spec.seeds} seeds{fits} = "
        f"{len(students)} trainings"
        + (f" + {teachers} teacher trainings" if teachers else "")
        + f"; {len(jobs) - len(todo)} already finished; {threads.describe()}"
    )
    if epoch_s is not None and todo:
        epochs = sum(j.cfg.train.epochs for j in todo)
        line += f"; about {duration(epochs * epoch_s / spec.jobs)} (from {basis})"
    return line, epoch_s


def ablate(spec: AblationSpec, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) the ablation; write ablate.json and ablate.png; return the results."""
    from edgekd.report import plots_unavailable
    from edgekd.threads import plan_threads

    threads = plan_threads(spec.jobs, spec.threads)
    names = _check(spec)
    no_plot = plots_unavailable()
    if no_plot:
        log(f"{no_plot}: ablate.json only, no ablate.png")
    out = Path(spec.out).absolute()  # a Ray worker does not share our working directory
    read = read_teacher(spec)
    plans = row_plans(spec, names, read)
    diffs = {n: unintended(n, plans) for n in names}
    card_teacher = None
    if isinstance(read[1], TeacherCard):  # scored before anything is written
        data, card = read
        card_teacher = score_card(card, data, check_card_scores(card, data, "teacher" in spec.runs))
    if spec.strict and any(diffs.values()):
        raise ConfigError(
            "--strict: these runs differ from ce in more than their intended change: "
            + "; ".join(f"{n}: {', '.join(d)}" for n, d in diffs.items() if d)
        )
    teachers = _teachers(spec, names, threads.per_job)
    settings = _check_settings(out, _settings(spec, names))
    jobs = plan(spec, names, teachers, threads.per_job, plans)
    line, epoch_s = describe_plan(spec, names, [*teachers.jobs, *jobs], threads)
    # made before anything is written: a Ray cluster that cannot be reached binds nothing
    executor = make_executor(spec.executor, workers=spec.jobs, address=spec.address,
                             cpus_per_job=threads.per_job, shared=out)  # fmt: skip
    with closing(executor):
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "settings.json", settings)
        log(line)
        if card_teacher is not None:
            log(_card_line(card_teacher))
        run_jobs(teachers.jobs, executor, spec.jobs, log, epoch_s)
        if teachers.unimodal and spec.unimodal_teacher is None:
            for run in dict.fromkeys(teachers.unimodal.values()):
                try:
                    _check_unimodal(run, student_modality(spec), given=False)
                except ConfigError:
                    shutil.rmtree(run)  # a fused teacher under the unimodal name: never reuse
                    raise
        results = run_jobs(jobs, executor, spec.jobs, log, epoch_s)
    report = summarize_runs(jobs, results, teachers, spec, card_teacher)
    for name, row in report["runs"].items():
        row["intended"] = list(run_row(name).intended)
        row["differences"] = diffs[name]
    report["first_seeds"] = _first_seeds(out / "ablate.json", spec.seeds)
    atomic_write_json(out / "ablate.json", report)
    if not no_plot:
        plot(report, out / "ablate.png")
    return report


def _card_line(entry: dict[str, Any]) -> str:
    """The log line naming an outside teacher: its provenance and score."""
    line = (f"teacher: outside, {entry['source']} sha256 {entry['sha256'][:12]} "
            f"(licence {entry['licence'] or 'not stated'}), card {entry['card'] or entry['dir']}")
    if "test" in entry:
        line += f"; scored here: test acc {entry['test']['accuracy']:.2f}"
    return line + ("" if "test" in entry else f"; {entry['scored']}")  # fmt: skip


def _first_seeds(path: Path, seeds: int) -> int:
    """The seed count of the first result written to ablate.json at `path` (`seeds` when none
    was): a table whose seeds were added after a first look says so."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return seeds
    return int(old.get("first_seeds", old.get("seeds", seeds)))


def _pct(metrics: dict[str, Any]) -> dict[str, float]:
    return {m: 100 * metrics[m] for m in METRICS}


def _teacher_summary(dirs: Iterable[Path]) -> dict[str, Any]:
    """Mean test/val of distinct teacher runs (percent), with their folders."""
    unique = list(dict.fromkeys(Path(d) for d in dirs))
    metrics = [json.loads((d / "metrics.json").read_text()) for d in unique]
    mean = {
        split: {m: sum(100 * x[split][m] for x in metrics) / len(metrics) for m in METRICS}
        for split in ("test", "val")
    }
    return {"dir": str(unique[0]) if len(unique) == 1 else [str(d) for d in unique], **mean,
            "n": len(unique)}  # fmt: skip


def summarize_runs(
    jobs: Sequence[Job],
    results: Sequence[dict],
    teachers: Teachers | None,
    spec: AblationSpec,
    card_teacher: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ablation report (percent units) from finished jobs' metrics (in the order of jobs).
    `card_teacher`: an outside teacher's entry (`score_card`), which replaces the teacher run's
    metrics; without its scores the gap closed is None."""
    per: dict[str, dict[int, dict[str, Any]]] = {}
    for job, metrics in zip(jobs, results, strict=True):
        seeds = per.setdefault(job.run, {})
        entry = seeds.setdefault(job.seed, {"folds": []})
        if job.fold is None:
            entry["val"], entry["test"] = _pct(metrics["val"]), _pct(metrics["test"])
        else:
            entry["folds"].append(_pct(metrics["val"]))
    for seeds in per.values():
        for entry in seeds.values():
            folds = entry.pop("folds")
            if folds:
                entry["cv"] = {m: sum(f[m] for f in folds) / len(folds) for m in METRICS}
    teachers = teachers or Teachers({}, {}, ())
    if card_teacher is not None:
        teacher, ood = card_teacher, False
    else:
        teacher = _teacher_summary(teachers.fused.values() or [spec.teacher])
        ood = teacher_modality_dropout(spec.teacher) == 0
    runs: dict[str, Any] = {}
    for name, seeds in per.items():
        row: dict[str, Any] = {"meaning": run_config(name)[0], "per_seed": seeds}
        if split_control(name)[1] == "restricted" and ood:
            row["ood_teacher"] = True
        for split in ("val", "test", "cv"):
            if all(split in e for e in seeds.values()):
                row[split] = {m: summarize([e[split][m] for e in seeds.values()]) for m in METRICS}
        runs[name] = row
    ce = per["ce"]
    for name, row in runs.items():
        if name == "ce":
            continue
        row["gain"] = {m: paired_interval(_col(per[name], m), _col(ce, m)) for m in METRICS}
        row["gap_closed"] = {
            m: None if "test" not in teacher else gap_closed(
                row["test"][m]["mean"], runs["ce"]["test"][m]["mean"], teacher["test"][m])
            for m in METRICS
        }  # fmt: skip
    cross: dict[str, Any] = {}
    for name in runs:
        for suffix, kind in CONTROLS.items():
            control = f"{name}{suffix}"
            if control not in runs:
                continue
            diff = {m: paired_interval(_col(per[name], m), _col(per[control], m)) for m in METRICS}
            gain = runs[name]["gain"]["accuracy"]["mean"]
            share = diff["accuracy"]["mean"] / gain if gain > 0 else None
            cross.setdefault(name, {})[kind] = {"gain": diff, "share_of_kd_gain": share}
    effects: dict[str, Any] = {}
    for name in runs:
        isolates = run_row(name).isolates
        if isolates is not None and isolates[0] in runs:
            whole, what = isolates
            effects[name] = {"run": whole, "measures": what, "gain": {
                m: paired_interval(_col(per[whole], m), _col(per[name], m)) for m in METRICS}}
    best_by = "cv" if spec.folds else "val"
    ranked = sorted(runs, key=lambda n: -runs[n][best_by]["accuracy"]["mean"])
    report = {
        "unit": "percent",
        "teacher": teacher,
        "seeds": spec.seeds,
        "teacher_seeds": None if spec.teacher_seeds is None else list(spec.teacher_seeds),
        "folds": spec.folds,
        "selection": best_by,
        "best": ranked[0],
        "runs": runs,
        "cross_modal": cross,
        "effects": effects,
    }
    if teachers.unimodal:
        report["unimodal_teacher"] = _teacher_summary(teachers.unimodal.values())
    return report


def _col(seeds: dict[int, dict[str, Any]], metric: str) -> dict[int, float]:
    return {s: e["test"][metric] for s, e in seeds.items()}
