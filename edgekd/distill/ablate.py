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
its share of X's gain over CE. With `--teacher-seeds`, student seed i learns from teacher seed i,
so the intervals include the teacher's seed-to-seed variance.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from contextlib import closing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edgekd.config import (
    RECIPES,
    DistillConfig,
    RunConfig,
    from_dict,
    resolve_recipe,
    to_dict,
)
from edgekd.distill.plan import RunPlan, differences
from edgekd.errors import ConfigError, EdgeKDError
from edgekd.executor import Executor, Resources, check_executor, make_executor
from edgekd.io import atomic_write_json

RESTRICTED = "_restricted"
UNIMODAL = "_unimodal"
CONTROLS = {RESTRICTED: "restricted", UNIMODAL: "unimodal"}
CORRUPT_SHARE = 0.3  # share of windows whose teacher-side modalities become noise (paper_corrupt)
METRICS = ("accuracy", "macro_f1")
POLL_S = 2.0  # how often the running jobs' folders are read for newly finished epochs

# The config values that turn training-time augmentation (and mixing) off: the `ce_plain` row,
# the CE recipe of the earlier no-augmentation regime.
AUGMENTATION_OFF: dict[str, Any] = {"augment": {"policy": "none", "mix": "none"}}

# Two-sided 95% quantiles of Student's t, t_{0.975, df}, df = 1..30 (standard tables).
T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
Z975 = 1.959963984540054


def with_overrides(cfg: RunConfig, overrides: Mapping[str, Mapping[str, Any]]) -> RunConfig:
    """cfg with each `section: {key: value}` of `overrides` set."""
    merged = to_dict(cfg)
    for section, values in overrides.items():
        merged[section] = {**merged[section], **values}
    return from_dict(merged)


def augmentation_off(cfg: RunConfig) -> RunConfig:
    """cfg with training-time augmentation and mixing switched off (`AUGMENTATION_OFF`)."""
    return with_overrides(cfg, AUGMENTATION_OFF)


# Aspects of a run plan (`edgekd.distill.plan.ASPECTS`) a row changes on purpose.
LOSS_CHANGE = ("loss", "teacher")


@dataclass(frozen=True)
class Row:
    """A run of the table: its meaning, losses, the plan aspects it changes against `ce` on
    purpose (`intended`; every other difference is reported, or refused with --strict), the
    base-config values it sets (`overrides`), and `match_steps`: a run whose optimizer-step
    count this one matches by training more epochs."""

    meaning: str
    distill: DistillConfig
    intended: tuple[str, ...] = LOSS_CHANGE
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    match_steps: str | None = None


def _runs_table() -> dict[str, Row]:
    """Run name -> Row; built on call so `default` is current."""
    none = RECIPES["ce"]
    paper = RECIPES["paper"]
    default = resolve_recipe("default")
    return {
        "ce": Row("student, CE only", none, ()),
        "ce_plain": Row(
            "student, CE only, augmentation off", none, ("augment",), AUGMENTATION_OFF
        ),
        "ce_steps": Row(
            "student, CE only, as many optimizer steps as default", none, ("steps", "epochs"),
            match_steps="default",
        ),  # fmt: skip
        "hard_l2": Row("+ hard_l2", replace(none, feature_loss="hard_l2")),
        "logit_kd": Row("+ logit_kd (Hinton, recipe kd)", RECIPES["kd"]),
        "kd_std": Row("logit_kd on standardised logits (recipe kd_std)", RECIPES["kd_std"]),
        "dist": Row("+ DIST relation loss (recipe dist)", RECIPES["dist"]),
        "dkd": Row("+ decoupled KD (recipe dkd)", RECIPES["dkd"]),
        "bkd": Row("+ class-balanced logit KD (recipe bkd)", RECIPES["bkd"]),
        "soft_margin": Row("+ soft_margin", replace(none, feature_loss="soft_margin")),
        "soft_both": Row("+ soft_margin + soft_teacher_head", replace(paper, quality="none")),
        "paper": Row("+ both + quality weights (recipe paper)", paper),
        "paper_corrupt": Row(
            f"paper, {CORRUPT_SHARE:.0%} of teacher-side inputs noise",
            replace(paper, teacher_corrupt=CORRUPT_SHARE),
        ),
        "default": Row("shipped default recipe", default),
        "default_nounl": Row(
            "shipped default recipe without the unlabelled windows",
            default,
            overrides={"data": {"unlabelled": False}},
        ),
    }


DEFAULT_RUNS = (
    "teacher", "ce", "hard_l2", "logit_kd", "soft_margin", "soft_both", "paper", "paper_corrupt",
    "default", "default_restricted",
)  # fmt: skip


def run_names() -> list[str]:
    """Every accepted run name: the table's, `teacher`, and the controls of each KD run X."""
    table = _runs_table()
    kd = [n for n, row in table.items() if row.distill.uses_teacher]
    return ["teacher", *table, *(f"{n}{suffix}" for suffix in CONTROLS for n in kd)]


def split_control(name: str) -> tuple[str, str | None]:
    """(base run, control kind or None): `default_unimodal` -> (`default`, `unimodal`)."""
    for suffix, kind in CONTROLS.items():
        if name.endswith(suffix):
            return name[: -len(suffix)], kind
    return name, None


def run_row(name: str) -> Row:
    """The Row of a run name; ConfigError for an unknown one."""
    table = _runs_table()
    base, control = split_control(name)
    if control is not None and base in table and table[base].distill.uses_teacher:
        row = table[base]
        if control == "restricted":
            return replace(
                row,
                meaning=f"{row.meaning}, teacher sees the student's modality only",
                distill=replace(row.distill, teacher_view="student"),
            )
        meaning = f"{row.meaning}, teacher trained on the student's modality only"
        return replace(row, meaning=meaning)
    if control is None and name in table:
        return table[name]
    raise ConfigError(f"unknown run {name!r}; choose from {', '.join(run_names())}")


def run_config(name: str) -> tuple[str, DistillConfig]:
    """(meaning, DistillConfig) of a run name; ConfigError for an unknown one."""
    row = run_row(name)
    return row.meaning, row.distill


# --- statistics ---------------------------------------------------------------------------


def t_quantile_975(df: int) -> float:
    """t_{0.975, df}: the table for df <= 30, a Cornish-Fisher expansion beyond (error < 1e-3)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(T975):
        return T975[df - 1]
    z = Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def summarize(values: Sequence[float]) -> dict[str, float | int | None]:
    """Mean and standard error (sample s.d. / sqrt(n)); se is None for n = 1."""
    n = len(values)
    if n == 0:
        raise ValueError("no values to summarize")
    mean = sum(values) / n
    if n == 1:
        return {"mean": mean, "se": None, "n": 1}
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return {"mean": mean, "se": math.sqrt(var / n), "n": n}


def paired_interval(a: dict[int, float], b: dict[int, float]) -> dict[str, Any] | None:
    """Mean of a[s] - b[s] over the seeds both have, with its 95% t-interval (None bounds for
    one seed); None when they share no seed."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    stats = summarize([a[s] - b[s] for s in seeds])
    mean, se = stats["mean"], stats["se"]
    half = None if se is None else t_quantile_975(len(seeds) - 1) * se
    return {
        "mean": mean,
        "lo": None if half is None else mean - half,
        "hi": None if half is None else mean + half,
        "n": len(seeds),
    }


def format_mean_se(stat: dict[str, Any]) -> str:
    """`summarize`'s result as "mean ± se" (the mean alone for one value)."""
    se = stat["se"]
    return f"{stat['mean']:.2f}" + ("" if se is None else f" ± {se:.2f}")


def format_interval(stat: dict[str, Any] | None) -> str:
    """`paired_interval`'s result as "+mean [+lo, +hi]" (no bounds for one seed, "-" for none)."""
    if stat is None:
        return "-"
    if stat["lo"] is None:
        return f"{stat['mean']:+.2f}"
    return f"{stat['mean']:+.2f} [{stat['lo']:+.2f}, {stat['hi']:+.2f}]"


def gap_closed(run: float, ce: float, teacher: float) -> float | None:
    """Share of the teacher - CE gap that `run` closes, (run - ce) / (teacher - ce); None when
    the teacher is not better than CE (no gap to close)."""
    gap = teacher - ce
    return None if gap <= 0 else (run - ce) / gap


# --- jobs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One training of the ablation (picklable: it crosses into worker processes). A `teacher`
    job trains a teacher (`teacher` is then None); any other trains a student from `teacher`."""

    run: str
    seed: int
    fold: tuple[int, int] | None
    cfg: RunConfig
    teacher: Path | None
    out: Path
    threads: int
    kind: str = "student"

    @property
    def where(self) -> str:
        if self.kind == "teacher":
            return "training"
        return f"fold {self.fold[0] + 1}/{self.fold[1]}" if self.fold else "final"


def _metrics_of(folder: Path) -> dict[str, Any] | None:
    path = folder / "metrics.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def _epochs_done(folder: Path) -> list[float]:
    """Seconds of each finished epoch of a run folder (from its history.json), [] when none."""
    try:
        history = json.loads((folder / "history.json").read_text())
    except (OSError, ValueError):  # not written yet, or caught between write and rename
        return []
    return [float(h["seconds"]) for h in history]


def execute(job: Job) -> dict[str, Any]:
    """Run (or continue, or reuse) one job; returns its metrics.json content. Runs in an
    executor's process (`edgekd.executor`): its progress is the run folder's history.json."""
    from edgekd.checkpoint import STATE_FILE
    from edgekd.distill.trainer import distill, train_teacher
    from edgekd.reference import torch_threads

    done = _metrics_of(job.out)
    if done is not None:
        return done
    resume = (job.out / STATE_FILE).is_file()
    if not resume and job.out.exists():
        shutil.rmtree(job.out)  # killed before its first epoch finished: nothing to keep
    with torch_threads(job.threads):
        if job.kind == "teacher":
            return train_teacher(job.cfg, job.out, resume=resume, progress=False)
        return distill(job.cfg, job.teacher, job.out, resume=resume, progress=False, fold=job.fold)


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    if minutes < 1:
        return f"{seconds:.0f} s"
    return f"{minutes} min" if minutes < 120 else f"{minutes / 60:.1f} h"


class _Tracker:
    """Progress of a list of jobs, for the lines `run_jobs` logs: which run, seed, epoch, ETAs."""

    def __init__(self, jobs: Sequence[Job], workers: int, epoch_s: float | None) -> None:
        self.jobs, self.workers = jobs, workers
        self.done = [0] * len(jobs)
        self.finished: set[int] = set()
        self.epoch_s = epoch_s  # running estimate of seconds per epoch
        self.measured: list[float] = []

    def _remaining_s(self) -> float | None:
        if self.epoch_s is None:
            return None
        left = sum(
            max(j.cfg.train.epochs - self.done[i], 0)
            for i, j in enumerate(self.jobs)
            if i not in self.finished
        )
        return left * self.epoch_s / self.workers

    def name(self, i: int) -> str:
        job = self.jobs[i]
        return f"{job.run} seed {job.seed} {job.where}"

    def _head(self, i: int) -> str:
        return f"[{len(self.finished)}/{len(self.jobs)} done] {self.name(i)}"

    def event(self, kind: str, i: int, epochs: int, seconds: float) -> str:
        job = self.jobs[i]
        total = job.cfg.train.epochs
        self.done[i] = epochs
        if kind == "start":
            return f"{self._head(i)}: started" + (
                f" (resuming after epoch {epochs})" if epochs else ""
            )
        self.measured.append(seconds)
        self.epoch_s = sum(self.measured) / len(self.measured)
        left = self._remaining_s()
        return (
            f"{self._head(i)}: epoch {epochs}/{total}, {seconds:.1f} s/epoch, "
            f"run eta {_duration((total - epochs) * seconds)}"
            + ("" if left is None else f", all eta {_duration(left)}")
        )

    def finish(self, i: int, metrics: dict[str, Any]) -> str:
        self.finished.add(i)
        self.done[i] = self.jobs[i].cfg.train.epochs
        val, test = metrics["val"], metrics["test"]
        shown = f"val acc {100 * val['accuracy']:.2f}"
        if self.jobs[i].fold is None:
            shown += f"  test acc {100 * test['accuracy']:.2f} f1 {100 * test['macro_f1']:.2f}"
        return f"{self._head(i)}: finished, {shown}"


class JobFailed(EdgeKDError):
    """A training of the ablation failed; the others were stopped. Its cause is the error."""


@dataclass
class _Running:
    index: int  # in the list of jobs
    seen: int  # epochs of its history already logged


def run_jobs(
    jobs: Sequence[Job],
    executor: Executor,
    workers: int,
    log: Callable[[str], None],
    epoch_s: float | None = None,
) -> list[dict]:
    """Execute jobs on `executor`, at most `workers` at once, logging a line when a job starts,
    finishes an epoch and finishes; returns each job's metrics, in the order of `jobs`. A finished
    job (metrics.json) is read, not submitted. `epoch_s`: a first guess of seconds per epoch for
    the overall ETA. Progress is read from each running job's folder (the trainer writes
    history.json per epoch), which is what works on any executor: the folders must be on a
    filesystem this process shares with the workers. On the first failure, or when interrupted,
    the running jobs are killed and JobFailed (or the interrupt) is raised."""
    workers = max(1, min(workers, len(jobs)))
    tracker = _Tracker(jobs, workers, epoch_s)
    results: dict[int, dict] = {}
    waiting: list[int] = []
    for i, job in enumerate(jobs):
        metrics = _metrics_of(job.out)
        if metrics is None:
            waiting.append(i)
        else:
            results[i] = metrics
            log(tracker.finish(i, metrics))

    def log_epochs(run: _Running) -> None:
        # several epochs finished since the last look share one line
        seconds = _epochs_done(jobs[run.index].out)
        if len(seconds) > run.seen:
            run.seen = len(seconds)
            log(tracker.event("epoch", run.index, run.seen, sum(seconds) / run.seen))

    # Submitting no more than `workers` keeps "started" true on Ray too (its futures do not say
    # when a task starts) and leaves nothing queued to cancel when a job fails.
    running: dict[Future, _Running] = {}
    try:
        while waiting or running:
            while waiting and len(running) < workers:
                i = waiting.pop(0)
                job = jobs[i]
                future = executor.submit(execute, job, resources=Resources(cpus=job.threads))
                running[future] = run = _Running(i, len(_epochs_done(job.out)))
                log(tracker.event("start", i, run.seen, 0.0))
            finished, _ = wait(running, timeout=POLL_S, return_when=FIRST_COMPLETED)
            for run in running.values():
                log_epochs(run)
            for future in finished:
                run = running.pop(future)
                try:
                    results[run.index] = future.result()
                except Exception as exc:
                    raise _failure(tracker, run.index, exc, len(running), log) from exc
                log(tracker.finish(run.index, results[run.index]))
    except BaseException:  # a failure or Ctrl-C: no training may go on without its ablation
        for future in running:
            executor.kill(future)
        raise
    return [results[i] for i in range(len(jobs))]


def _failure(
    tracker: _Tracker, i: int, exc: Exception, others: int, log: Callable[[str], None]
) -> JobFailed:
    if not isinstance(exc, EdgeKDError):  # a bug rather than a user error: keep its traceback
        log("".join(traceback.format_exception(exc)).rstrip())
    first = (str(exc).strip().splitlines() or [""])[0]
    return JobFailed(
        f"{tracker.name(i)} failed ({type(exc).__name__}: {first}); stopped "
        f"{others} other running job{'' if others == 1 else 's'}; finished runs are kept, so "
        "the same command resumes"
    )


# --- teachers -----------------------------------------------------------------------------


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


# --- the ablation -------------------------------------------------------------------------


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


def row_plans(spec: AblationSpec, names: Sequence[str]) -> dict[str, RunPlan]:
    """Each run's plan for seed 0's final fit on `spec.teacher`, without training (a `_unimodal`
    run is planned with the fused teacher's data, which its own teacher shares). A row that
    matches another's optimizer steps gets the epochs that come closest."""
    from edgekd.distill.plan import TeacherRun, load_data, resolve_plan

    teacher = TeacherRun.read(spec.teacher)
    data = load_data(spec.base, teacher, None)
    plans = {n: resolve_plan(_run_base(spec, n), data, teacher) for n in names}
    for name in names:
        target = run_row(name).match_steps
        if target is None:
            continue
        goal = plans.get(target) or resolve_plan(_run_base(spec, target), data, teacher)
        cfg = _run_base(spec, name)
        epochs = max(1, round(goal.total_steps / plans[name].steps_per_epoch))
        plans[name] = resolve_plan(replace(cfg, train=replace(cfg.train, epochs=epochs)), data,
                                   teacher)  # fmt: skip
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
    return {
        "teacher": str(Path(spec.teacher).resolve()),
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
    keys = ("teacher", "base", "teacher_seeds", "unimodal_teacher")
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
                out = Path(spec.out) / "runs" / name / f"seed{seed}" / where
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
        line += f"; about {_duration(epochs * epoch_s / spec.jobs)} (from {basis})"
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
    out = Path(spec.out)
    plans = row_plans(spec, names)
    diffs = {n: unintended(n, plans) for n in names}
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
                             cpus_per_job=threads.per_job)  # fmt: skip
    with closing(executor):
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "settings.json", settings)
        log(line)
        run_jobs(teachers.jobs, executor, spec.jobs, log, epoch_s)
        if teachers.unimodal and spec.unimodal_teacher is None:
            for run in dict.fromkeys(teachers.unimodal.values()):
                try:
                    _check_unimodal(run, student_modality(spec), given=False)
                except ConfigError:
                    shutil.rmtree(run)  # a fused teacher under the unimodal name: never reuse
                    raise
        results = run_jobs(jobs, executor, spec.jobs, log, epoch_s)
    report = summarize_runs(jobs, results, teachers, spec)
    for name, row in report["runs"].items():
        row["intended"] = list(run_row(name).intended)
        row["differences"] = diffs[name]
    report["first_seeds"] = _first_seeds(out / "ablate.json", spec.seeds)
    atomic_write_json(out / "ablate.json", report)
    if not no_plot:
        plot(report, out / "ablate.png")
    return report


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
) -> dict[str, Any]:
    """The ablation report (percent units) from finished jobs' metrics (in the order of jobs)."""
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
            m: gap_closed(row["test"][m]["mean"], runs["ce"]["test"][m]["mean"], teacher["test"][m])
            for m in METRICS
        }
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
    }
    if teachers.unimodal:
        report["unimodal_teacher"] = _teacher_summary(teachers.unimodal.values())
    return report


def _col(seeds: dict[int, dict[str, Any]], metric: str) -> dict[int, float]:
    return {s: e["test"][metric] for s, e in seeds.items()}


# --- output -------------------------------------------------------------------------------


def format_table(report: dict[str, Any]) -> str:
    """Markdown table of the report: mean ± s.e. over seeds, gains with 95% intervals, and each
    run's differences from CE besides its intended change."""
    sel = report["selection"]
    head = [
        "run", "seeds", f"{sel} acc", "test acc", "test macro-F1", "Δacc vs CE [95% CI]",
        "ΔF1 vs CE [95% CI]", "gap closed (acc)", "other differences vs CE",
    ]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    teachers = [("teacher (all modalities)", report["teacher"])]
    if "unimodal_teacher" in report:
        teachers.append(("teacher (student's modality only)", report["unimodal_teacher"]))
    for label, teacher in teachers:
        t, n = teacher["test"], teacher.get("n", 1)
        label += f", mean of {n} seeds" if n > 1 else ""
        lines.append(
            f"| {label} | - | - | {t['accuracy']:.2f} | {t['macro_f1']:.2f} | - | - | - | - |"
        )
    first = report.get("first_seeds", report["seeds"])
    added = (
        f" (seeds added after the first result: {first} -> {report['seeds']})"
        if report["seeds"] > first
        else ""
    )
    flagged = False
    for name, row in report["runs"].items():
        gain = row.get("gain", {})
        closed = row.get("gap_closed", {}).get("accuracy")
        flagged |= bool(row.get("ood_teacher"))
        cells = [
            f"{name} (OOD teacher)" if row.get("ood_teacher") else name,
            str(row["test"]["accuracy"]["n"]),
            format_mean_se(row[sel]["accuracy"]) if sel in row else "-",
            format_mean_se(row["test"]["accuracy"]),
            format_mean_se(row["test"]["macro_f1"]),
            format_interval(gain.get("accuracy")) + added if gain else "-",
            format_interval(gain.get("macro_f1")) + added if gain else "-",
            "-" if closed is None else f"{closed:.0%}",
            "; ".join(row.get("differences", [])) or "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if flagged:
        lines.append(
            "\nOOD teacher: the teacher was trained without modality dropout, so its view with "
            "the other modalities zeroed is out of distribution; that control understates what "
            "a teacher of the student's modality can give (prefer the _unimodal control)."
        )
    meaning = {"restricted": "restricted teacher", "unimodal": "unimodal teacher"}
    for name, controls in report["cross_modal"].items():
        for kind, cm in controls.items():
            share = cm["share_of_kd_gain"]
            lines.append(
                f"\ncross-modal gain of {name} (fused teacher - {meaning[kind]}, test acc): "
                f"{format_interval(cm['gain']['accuracy'])} points; "
                f"macro-F1 {format_interval(cm['gain']['macro_f1'])}; "
                + "share of its KD gain: "
                + ("n/a" if share is None else f"{share:.0%}")
            )
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    """Bar chart: test accuracy and macro-F1 per run (mean ± s.e.), teacher as a dashed line."""
    from edgekd.report import pyplot

    plt = pyplot()
    names = list(report["runs"])
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.3 * len(names)), 4), sharey=False)
    for ax, metric in zip(axes, METRICS, strict=True):
        stats = [report["runs"][n]["test"][metric] for n in names]
        means = [s["mean"] for s in stats]
        errs = [s["se"] or 0.0 for s in stats]
        ax.bar(range(len(names)), means, yerr=errs, capsize=3, color="tab:blue")
        teacher = report["teacher"]["test"][metric]
        ax.axhline(teacher, ls="--", color="tab:red", label="teacher")
        low = min(m - e for m, e in zip(means, errs, strict=True))
        ax.set_ylim(max(0.0, low - 3), min(100.0, max(*means, teacher) + 2))
        ax.set_xticks(range(len(names)), names, rotation=40, ha="right")
        ax.set_title(f"test {metric} (%), mean ± s.e.")
        ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
