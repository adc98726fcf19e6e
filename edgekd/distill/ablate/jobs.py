"""Trainings as jobs on an executor (`edgekd.executor`), for the ablation and the search's final
stage: each run, continued or reused from its folder, with progress and ETAs read from the run
folders; the first failure stops the rest, unless the caller keeps going past failures."""

from __future__ import annotations

import json
import shutil
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekd.config import RunConfig
from edgekd.errors import EdgeKDError
from edgekd.executor import Executor, training_resources

POLL_S = 2.0  # how often the running jobs' folders are read for newly finished epochs


@dataclass(frozen=True)
class Job:
    """One training (picklable: it crosses into worker processes). A `teacher`
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


def epoch_seconds(folder: Path) -> list[float]:
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


def duration(seconds: float) -> str:
    """A wait for progress lines: "12 s", "50 min", "2.0 h"."""
    minutes = round(seconds / 60)
    if minutes < 1:
        return f"{seconds:.0f} s"
    return f"{minutes} min" if minutes < 120 else f"{minutes / 60:.1f} h"


class _Tracker:
    """Progress of a list of jobs, for the lines `run_jobs` logs: which run, seed, epoch, ETAs."""

    def __init__(
        self,
        jobs: Sequence[Job],
        workers: int,
        epoch_s: float | None,
        show_test: bool = True,
    ) -> None:
        self.jobs, self.workers, self.show_test = jobs, workers, show_test
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
            f"run eta {duration((total - epochs) * seconds)}"
            + ("" if left is None else f", all eta {duration(left)}")
        )

    def finish(self, i: int, metrics: dict[str, Any]) -> str:
        self.finished.add(i)
        self.done[i] = self.jobs[i].cfg.train.epochs
        val, test = metrics["val"], metrics["test"]
        shown = f"val acc {100 * val['accuracy']:.2f}"
        if self.jobs[i].fold is None and self.show_test:
            shown += f"  test acc {100 * test['accuracy']:.2f} f1 {100 * test['macro_f1']:.2f}"
        return f"{self._head(i)}: finished, {shown}"

    def fail(self, i: int, error: str) -> str:
        self.finished.add(i)
        return f"{self._head(i)}: FAILED ({error}); the others go on"


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
    *,
    keep_going: bool = False,
    show_test: bool = True,
) -> list[dict[str, Any] | str]:
    """Execute jobs on `executor`, at most `workers` at once, logging a line when a job starts,
    finishes an epoch and finishes; returns each job's metrics, in the order of `jobs`. A finished
    job (metrics.json) is read, not submitted. `epoch_s`: a first guess of seconds per epoch for
    the overall ETA. Progress is read from each running job's folder (the trainer writes
    history.json per epoch), which is what works on any executor: the folders must be on a
    filesystem this process shares with the workers. On the first failure, or when interrupted,
    the running jobs are killed and JobFailed (or the interrupt) is raised; with `keep_going`, a
    failed job's entry is instead its error ("Type: first line") and the others go on.
    `show_test=False` keeps test figures out of the log (a caller that reads test only after a
    choice made on validation)."""
    workers = max(1, min(workers, len(jobs)))
    tracker = _Tracker(jobs, workers, epoch_s, show_test)
    results: dict[int, dict[str, Any] | str] = {}
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
        seconds = epoch_seconds(jobs[run.index].out)
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
                future = executor.submit(
                    execute, job, resources=training_resources(executor, job.threads)
                )
                running[future] = run = _Running(i, len(epoch_seconds(job.out)))
                log(tracker.event("start", i, run.seen, 0.0))
            finished, _ = wait(running, timeout=POLL_S, return_when=FIRST_COMPLETED)
            for run in running.values():
                log_epochs(run)
            for future in finished:
                run = running.pop(future)
                try:
                    metrics = future.result()
                except Exception as exc:
                    if not keep_going:
                        raise _failure(tracker, run.index, exc, len(running), log) from exc
                    results[run.index] = _error_line(exc)
                    _log_traceback(exc, log)
                    log(tracker.fail(run.index, results[run.index]))
                    continue
                results[run.index] = metrics
                log(tracker.finish(run.index, metrics))
    except BaseException:  # a failure or Ctrl-C: no training may go on without its ablation
        for future in running:
            executor.kill(future)
        raise
    return [results[i] for i in range(len(jobs))]


def _error_line(exc: Exception) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"


def _log_traceback(exc: Exception, log: Callable[[str], None]) -> None:
    if not isinstance(exc, EdgeKDError):  # a bug rather than a user error: keep its traceback
        log("".join(traceback.format_exception(exc)).rstrip())


def _failure(
    tracker: _Tracker, i: int, exc: Exception, others: int, log: Callable[[str], None]
) -> JobFailed:
    _log_traceback(exc, log)
    return JobFailed(
        f"{tracker.name(i)} failed ({_error_line(exc)}); stopped "
        f"{others} other running job{'' if others == 1 else 's'}; finished runs are kept, so "
        "the same command resumes"
    )
