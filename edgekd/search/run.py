"""`run_search`: the most accurate student within a device budget, by an Optuna study.

Objective and constraints (why single-objective): Optuna prunes (trial.report / should_prune)
only single-objective studies, and pruning is what makes a search of many 30-epoch trials
affordable. So the study maximises validation accuracy alone and runs as Optuna intends it to,
`study.optimize` with an objective (`_Search.objective`); the budget is a hard constraint on the
predicted batch-1 p50 and int8 size of the untrained candidate (`edgekd.search.latency`), stored
on every trial as the user attr `constraint` (violations, <= 0 within budget) that the sampler's
`constraints_func` reads. A candidate over budget is never trained: it ends FAIL with its reason
in the user attr `rejected` (never PRUNED: pruning means "trained and stopped"). The one
exception is the anchor. Rejections do not count towards `trials`. A draw that repeats an
earlier trial's candidate (training is deterministic for a seed) is not trained again: the study
is told the earlier trial's value (or the same pruned curve), as Optuna's FAQ advises. The
accuracy/latency Pareto front is computed from the finished trials
(`edgekd.search.report.pareto_front`), not by the sampler.

The anchor: the default student (`edgekd.distill.plan.DEFAULT_STUDENT` for the modality kind,
its constructor defaults), recipe `default` and the default lr are enqueued as the study's first
trial (`study.enqueue_trial`, user attr `anchor`). It is always trained to the end (never
pruned, never rejected: over budget it is trained and flagged `over_budget`) and reported as
search.json's `anchor`: the figure the search has to beat.

Two stages. This module is the exploration: short trials (`--epochs`, pruned), one seed,
validation only; they rank candidates. The final stage (`edgekd.search.finals`) retrains the
best `--finalists` trials within budget plus the anchor on the full `distill` schedule over
`--final-seeds` seeds, each paired with CE; chooses on mean validation accuracy (the anchor wins
ties), judges the budget on each finalist's measured bundle, and only then reads the test split,
for the finalists only. What ships (`<out>/chosen.edgekd`) is a final-stage run, never a capped
trial. (Every `distill` run scores its test split when it ends, as `edgekd distill` does; the
search never reads a trial's test score.)

Failures: a trial whose training raises ends FAIL with the error in its user attr `error`, and
the search goes on; MAX_FAILURES_IN_A_ROW failures in a row stop it with a message. A trial whose
worker was lost (JobLost: killed, out of memory) is retried by Optuna's RetryFailedTrialCallback
(a WAITING copy with the same parameters), at most MAX_RETRIES times.

Layout of `out`:
  study.db              the Optuna study (SQLite, heartbeat on); reopened with load_if_exists
  settings.json         what the search was made with; a resume must match it
  latency_cache.json    priced candidates (edgekd.search.latency)
  runs/<arch>-seed<S>-<digest>/  every `distill` run folder (trials and final runs), keyed by
                        the digest of its training config (`plans.plan_digest`): a resumed search
                        can only ever reuse a run of the very same plan
  search.json           every trial (arch, args, recipe, params, int8 size, predicted p50 and its
                        source, val acc, state), the Pareto front of the exploration, the final
                        stage's `finalists`, `anchor` and `chosen`, and the `verdict`
  pareto.md, pareto.png the report as tables and the front as a plot (needs matplotlib)
  finalists/trial<N>.edgekd  each finalist's bundle (its first-seed final run), measured
  chosen.edgekd         the chosen finalist's bundle: what ships (chosen.eval.npz beside it)

Teacher: an edgekd teacher run folder, or an outside teacher as `edgekd distill` takes it (a
teacher.yaml card, a folder holding one such as a `teacher cache`, or a .onnx/.pt2 with the card
beside it), with `--data` (a cache knows its data). For a card the students take the data's
default student modality, and the recipes it cannot serve (e.g. soft_teacher_head: a card gives
no classifier weights) are left out of the space, as planning each recipe with the card tells;
its provenance (source, sha256, licence, card) is in settings.json and search.json's `teacher`.

Resume guarantee: every option is checked before anything is written, so a refused start leaves
nothing behind. A search killed at any point (even SIGKILL) and started again with the same `out`
and options continues the study: complete and pruned trials are kept and never trained again; a
trial that was in flight (RUNNING: its worker is gone, as the lock proves) is failed and retried
by RetryFailedTrialCallback with its drawn parameters, so its plan and run folder are the same
(finished: its metrics are read; interrupted after an epoch: training resumes from its saved
state; before the first epoch: restarted). One search at a time per `out` (a lock).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import Future, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgekd.distill.ablate.jobs import duration
from edgekd.errors import ConfigError, EdgeKDError, MissingExtra
from edgekd.io import atomic_write_json, atomic_write_text
from edgekd.search.latency import Estimate
from edgekd.search.plans import read_teacher, run_folder, train_config
from edgekd.search.space import Candidate

STUDY_NAME = "edgekd-search"
PRUNERS = ("median", "halving", "none")
POLL_S = 1.0
REJECTIONS_PER_TRIAL = 20  # untrainable draws allowed per wanted trial before giving up
MAX_FAILURES_IN_A_ROW = 3  # trials whose training raised, one after another: the search stops
MAX_RETRIES = 3  # retries of a trial whose worker was lost (RetryFailedTrialCallback)
HEARTBEAT_S = 60  # the study's heartbeat (RDBStorage): a trial silent for GRACE_S is stale
GRACE_S = 180


class SearchStopped(EdgeKDError):
    """The search stopped before its trials were done (failures in a row, or nothing left to
    train within the budget); the study keeps what was done, so a rerun continues."""


@dataclass(frozen=True)
class SearchSpec:
    """Options of `edgekd search` (see docs/search.md). Budgets: `budget_ms` on the batch-1 p50
    (ms), `budget_kb` on the int8 QDQ ONNX (KB = 1000 bytes), `budget_rss_mb` on the peak
    resident memory of a process running the loaded bundle (MB = 10^6 bytes; measured here, so
    only for a target timed on this machine); None = no limit. Trials are judged on predicted
    figures, finalists on their measured bundle.
    `archs`: students to search (None: every student for the modality's kind)."""

    teacher: Path
    out: Path
    target: str = "cpu"
    budget_ms: float | None = None
    budget_kb: float | None = None
    budget_rss_mb: float | None = None
    trials: int = 24
    epochs: int = 30
    archs: tuple[str, ...] | None = None
    executor: str = "local"
    address: str | None = None
    jobs: int = 1
    threads: int | None = None
    seed: int = 0
    limit: int | None = None
    unlabelled: bool = True  # add the teacher's unlabelled windows (as `edgekd distill` does)
    batch_size: int = 64
    pruner: str = "median"
    latency_table: Path | None = None
    export: bool = True
    max_drop: float = 1.0  # export: the most int8 may lose against FP32 (points)
    timing_s: float = 1.0  # timing per candidate when latency is measured (s)
    quiet_wait_s: float = 30.0  # the most a timing waits for a quiet machine (s), else noisy
    finalists: int = 3  # the best trials within budget retrained in full (plus the anchor)
    final_seeds: int = 3  # seeds of each final run: the search's seed and the next ones
    final_epochs: int | None = None  # epochs of a final run (None: `distill`'s default)
    data: str | None = None  # the paired data: needed with an outside teacher (as distill's)

    def __post_init__(self) -> None:
        # absolute: the jobs' run folders must name the same place in a Ray worker, whose
        # working directory is not this process's
        object.__setattr__(self, "out", Path(self.out).absolute())
        object.__setattr__(self, "teacher", Path(self.teacher).absolute())

    def check(self) -> None:
        """ConfigError naming the offending option, before anything is created: every option
        (the trials' training config included, as `edgekd distill` would check it)."""
        from edgekd.targets import get_target

        get_target(self.target)
        for flag, value in (("--budget-ms", self.budget_ms), ("--budget-kb", self.budget_kb),
                            ("--budget-rss-mb", self.budget_rss_mb)):  # fmt: skip
            if value is not None and not value > 0:
                raise ConfigError(f"{flag} must be > 0, got {value:g}")
        for flag, count in (("--trials", self.trials), ("--epochs", self.epochs),
                            ("--jobs", self.jobs), ("--batch-size", self.batch_size)):
            if count < 1:
                raise ConfigError(f"{flag} must be at least 1, got {count}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be a positive number of windows, got {self.limit}")
        for flag, count in (("--finalists", self.finalists), ("--final-seeds", self.final_seeds)):
            if count < 1:
                raise ConfigError(f"{flag} must be at least 1, got {count}")
        if self.final_epochs is not None and self.final_epochs < 1:
            raise ConfigError(f"--final-epochs must be at least 1, got {self.final_epochs}")
        if not self.timing_s > 0:
            raise ConfigError(f"--timing-s must be > 0, got {self.timing_s:g}")
        if not self.quiet_wait_s >= 0:
            raise ConfigError(f"--quiet-wait-s must be >= 0 s, got {self.quiet_wait_s:g}")
        if self.max_drop < 0:
            raise ConfigError(f"--max-drop must be >= 0 points, got {self.max_drop:g}")
        if self.pruner not in PRUNERS:
            raise ConfigError(f"--pruner {self.pruner!r} is not one of {', '.join(PRUNERS)}")
        from edgekd.executor import check_executor
        from edgekd.threads import plan_threads

        check_executor(self.executor, self.address)
        plan_threads(self.jobs, self.threads)
        _probe_config(self)  # the trials' TrainConfig checks --seed, --batch-size, --epochs
        if self.latency_table is not None:
            from edgekd.search.latency import LatencyTable

            LatencyTable.load(self.latency_table, self.target)
        if self.budget_rss_mb is not None:
            from edgekd.search.latency import LOCAL_BACKENDS

            if self.latency_table is not None or get_target(self.target).backend not in (
                LOCAL_BACKENDS
            ):  # fmt: skip
                raise ConfigError(
                    f"--budget-rss-mb is measured on this machine, which is not --target "
                    f"{self.target}'s device" + (" (--latency-table names another)"
                                                 if self.latency_table else "")
                    + ": use it with a CPU target timed here (cpu, cpu-ort)"
                )  # fmt: skip
        card = card_of(self.teacher)
        if card is None and not (Path(self.teacher) / "checkpoint.json").is_file():
            raise ConfigError(f"--teacher {self.teacher}: not a finished teacher run folder")
        if card is not None and not (self.data or card.data_source):
            raise ConfigError(
                f"--teacher {self.teacher} is an outside teacher, which needs the paired data to "
                "distil on: pass --data har or --data PATH/manifest.jsonl"
            )

    def settings(self) -> dict[str, Any]:
        """What a resume must match (execution details such as --jobs may change)."""
        keys = ("target", "budget_ms", "budget_kb", "budget_rss_mb", "epochs", "archs", "seed",
                "limit", "unlabelled", "batch_size", "pruner")  # fmt: skip
        out = {k: getattr(self, k) for k in keys}
        out["archs"] = None if self.archs is None else list(self.archs)
        out["teacher"] = str(Path(self.teacher).resolve())
        card = card_of(self.teacher)
        # an outside teacher's provenance: its weights' sha256 binds a resume
        out["teacher_card"] = None if card is None else card.provenance()
        out["data"] = self.data
        out["latency_table"] = None if self.latency_table is None else str(self.latency_table)
        return out


def card_of(teacher: Path) -> Any:
    """The TeacherCard of an outside teacher (`edgekd.teachers.is_card_teacher`), None for an
    edgekd teacher run folder."""
    from edgekd.teachers import is_card_teacher, read_card

    return read_card(teacher) if is_card_teacher(Path(teacher)) else None


def _probe_config(spec: SearchSpec, recipe: str = "ce") -> Any:
    """The trials' run config with `recipe`, the default student and lr: for planning only."""
    from edgekd.config import TrainConfig

    probe = Candidate("", {}, recipe, None, None, TrainConfig().lr)  # "": the default student
    return train_config(spec, probe, epochs=spec.epochs)


def card_recipes(spec: SearchSpec, data: Any, card: Any) -> tuple[tuple[str, ...], dict[str, str]]:
    """(the recipes of the space an outside teacher can serve, {recipe: why not} for the rest),
    each planned with the card as a trial would be; ConfigError when no recipe that uses the
    teacher is left."""
    from edgekd.distill.plan import resolve_plan
    from edgekd.search.space import SEARCH_RECIPES, distill_config

    fits, refused = [], {}
    for recipe in SEARCH_RECIPES:
        try:
            resolve_plan(_probe_config(spec, recipe), data, card)
        except ConfigError as exc:
            refused[recipe] = str(exc)
        else:
            fits.append(recipe)
    if not any(distill_config(r, None, None).uses_teacher for r in fits):
        raise ConfigError(
            f"no recipe of the search space can learn from the outside teacher in {card.dir}: "
            + "; ".join(f"{r}: {why}" for r, why in refused.items())
        )
    return tuple(fits), refused


def student_input(teacher: Path, data: str | None = None) -> tuple[Any, list[str]]:
    """(the students' input modality spec, the classes): an edgekd teacher's default student,
    from its sidecar; for an outside teacher, the data's default student (`data`: as --data)."""
    from edgekd.checkpoint import read_sidecar
    from edgekd.config import DataConfig, RunConfig
    from edgekd.modalities import ModalitySpec
    from edgekd.search.space import distill_config

    if card_of(teacher) is None:
        side = read_sidecar(teacher, expect_role="teacher")
        return ModalitySpec.from_dict(side["specs"][side["default_student"]]), list(side["labels"])
    cfg = RunConfig(data=DataConfig(source=data), distill=distill_config("ce", None, None))
    plan, ds, _ = read_teacher(teacher, cfg)
    return ds.specs[str(plan.modality)], list(ds.labels)


def import_optuna() -> Any:
    try:
        import optuna
    except ImportError as exc:
        raise MissingExtra(
            f"`edgekd search` needs the 'search' extra ({exc}): pip install 'edgekd[search]'"
        ) from exc
    # the search logs each trial's outcome itself (Optuna would log every rejection as a failure)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna


def retry_callback(optuna: Any, max_retry: int | None = MAX_RETRIES) -> Any:
    """Optuna's retry of a failed trial (a WAITING copy with the same parameters and user
    attrs): `RetryFailedTrialCallback`, named RetryHeartbeatStaleTrialCallback since Optuna 4.9."""
    storages = optuna.storages
    cls = getattr(storages, "RetryHeartbeatStaleTrialCallback", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental (and, under its old name, deprecated)
        if cls is None:
            cls = storages.RetryFailedTrialCallback
        return cls(max_retry=max_retry)


def retried_numbers(optuna: Any, trials: list[Any]) -> dict[int, int]:
    """{failed trial number: the number of the trial that retries it}."""
    cls = type(retry_callback(optuna))
    out: dict[int, int] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t in trials:
            history = cls.retry_history(t)
            if history:
                out[history[-1]] = t.number
    return out


def open_study(optuna: Any, spec: SearchSpec) -> Any:
    """The study in `<out>/study.db`: an RDB storage with a heartbeat and Optuna's retry of
    stale trials, the pruner, and a multivariate TPE sampler whose `constraints_func` reads the
    budget constraint of each trial (constant liar when trials run in parallel), seeded with the
    study's history so that a resumed search does not replay the first run's draws."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the heartbeat is experimental
        storage = optuna.storages.RDBStorage(
            url=f"sqlite:///{(Path(spec.out) / 'study.db').resolve()}",
            heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
            **{_retry_keyword(optuna): retry_callback(optuna)},
        )  # fmt: skip
    study = optuna.create_study(storage=storage, study_name=STUDY_NAME, direction="maximize",
                                load_if_exists=True)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # multivariate, group, constraints_func: experimental
        sampler = optuna.samplers.TPESampler(
            seed=spec.seed + len(study.trials), multivariate=True, group=True,
            constant_liar=spec.jobs > 1, constraints_func=budget_constraints,
        )  # fmt: skip
    return optuna.load_study(study_name=STUDY_NAME, storage=storage, sampler=sampler,
                             pruner=_pruner(optuna, spec.pruner, spec.epochs))  # fmt: skip


def _retry_keyword(optuna: Any) -> str:
    import inspect

    params = inspect.signature(optuna.storages.RDBStorage).parameters
    return ("heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in params
            else "failed_trial_callback")  # fmt: skip


def budget_constraints(trial: Any) -> tuple[float, ...]:
    """The sampler's `constraints_func`: the trial's stored constraint (p50 over --budget-ms,
    int8 KB over --budget-kb, peak RSS MB over --budget-rss-mb; <= 0 within budget). A trial
    of a study made before the memory budget existed has two: the third is 0."""
    stored = list(trial.user_attrs.get("constraint", ()))
    return tuple(stored + [0.0] * (3 - len(stored)))


def constraint(spec: SearchSpec, est: Estimate) -> list[float]:
    """[p50 ms - --budget-ms, int8 KB - --budget-kb, peak RSS MB - --budget-rss-mb] (0 without
    that budget); an unknown p50 (or RSS) under its budget counts as a violation of 1."""
    ms = 0.0
    if spec.budget_ms is not None:
        ms = 1.0 if est.p50_ms is None else float(est.p50_ms) - spec.budget_ms
    kb = 0.0 if spec.budget_kb is None else float(est.int8_kb) - spec.budget_kb
    mb = 0.0
    if spec.budget_rss_mb is not None:
        mb = 1.0 if est.rss_mb is None else float(est.rss_mb) - spec.budget_rss_mb
    return [ms, kb, mb]


@contextlib.contextmanager
def _lock(out: Path) -> Iterator[None]:
    """One search per folder: a second one would tell the same trials twice."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".search.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"another `edgekd search` is running in {out}") from None
        yield


def _check_settings(out: Path, settings: dict[str, Any]) -> None:
    path = out / "settings.json"
    if path.is_file():
        old = json.loads(path.read_text())
        clash = sorted(k for k in settings if old.get(k) != settings[k])
        if clash:
            raise ConfigError(
                f"{out} holds a search made with other settings ({', '.join(clash)}); resume "
                "with the same options, or choose another --out"
            )
    atomic_write_json(path, settings)


@dataclass
class _Running:
    trial: Any
    candidate: Candidate
    folder: Path
    future: Future
    started: float
    reported: int = 0
    anchor: bool = False  # the anchor is trained to the end: never pruned


@dataclass
class _Progress:
    """Counts and timings for the progress lines."""

    wanted: int
    done: int = 0
    rejected: int = 0
    pruned: int = 0
    seconds: list[float] = field(default_factory=list)

    @classmethod
    def of_study(cls, study: Any, wanted: int) -> _Progress:
        """The counts of a study so far, so that a resumed search counts on from them."""
        progress = cls(wanted, done=_Search.trained(study))
        for t in study.get_trials(deepcopy=False):
            if _said(t, "rejected") or _said(t, "repeat_of"):
                progress.rejected += 1
            elif t.state.name == "PRUNED":
                progress.pruned += 1
        return progress

    def eta(self, jobs: int) -> str:
        if not self.seconds:
            return "eta unknown"
        left = max(self.wanted - self.done, 0) * sum(self.seconds) / len(self.seconds) / jobs
        return f"eta {duration(left)}"

    def head(self) -> str:
        return (f"[{self.done}/{self.wanted} trained, {self.pruned} pruned, "
                f"{self.rejected} not trained: over budget or repeats]")  # fmt: skip


def _over_budget(spec: SearchSpec, est: Estimate) -> str | None:
    from edgekd.search.finals import budget_breach

    if est.p50_ms is None:
        return f"no latency ({est.detail})"
    if spec.budget_rss_mb is not None and est.rss_mb is None:
        return f"no peak RSS for --budget-rss-mb ({est.detail})"
    return budget_breach(spec, est.p50_ms, est.int8_kb, est.rss_mb)


def _val_history(folder: Path) -> list[float]:
    """Validation accuracy of each finished epoch (history.json, written by the trainer)."""
    try:
        return [float(h["val"]["accuracy"]) for h in json.loads((folder / "history.json")
                                                                .read_text())]
    except (OSError, ValueError):  # not written yet, or caught mid-rename
        return []


def _pruner(optuna: Any, name: str, epochs: int) -> Any:
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=max(1, epochs // 4))
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, epochs // 8))
    return optuna.pruners.NopPruner()


def _error_text(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}"


# a trial's outcome, as user attrs; a retried trial inherits its original's, so each trial
# starts by clearing them (Optuna cannot delete a user attr: None means unsaid)
OUTCOME_ATTRS = ("rejected", "over_budget", "repeat_of", "error", "lost", "interrupted",
                 "pruned_at_epoch")  # fmt: skip


def _said(trial: Any, key: str) -> bool:
    return trial.user_attrs.get(key) is not None


class _Rejected(Exception):
    """The candidate is over budget: the trial ends FAIL, untrained (reason: user attr)."""


class _Interrupted(Exception):
    """The search is stopping (Ctrl-C): the trial ends FAIL and is retried by the next run."""


class _Search:
    """One run of the search: what is searched, and the study's objective."""

    def __init__(self, spec: SearchSpec, log: Callable[[str], None]) -> None:
        from edgekd.checkpoint import read_sidecar
        from edgekd.modalities import ModalitySpec
        from edgekd.models import list_students
        from edgekd.models.registry import student_kinds
        from edgekd.search.space import SEARCH_RECIPES
        from edgekd.threads import plan_threads

        self.spec, self.log = spec, log
        self.out = Path(spec.out)
        self.card = card_of(spec.teacher)
        self.recipes: tuple[str, ...] = SEARCH_RECIPES
        self.not_searched: dict[str, str] = {}
        if self.card is None:
            side = read_sidecar(spec.teacher, expect_role="teacher")
            modality = side["default_student"]
            self.modality = ModalitySpec.from_dict(side["specs"][modality])
            self.labels = list(side["labels"])
        else:  # the data's default student, on the data as distill reads it with the card
            plan, data, self.card = read_teacher(spec.teacher, _probe_config(spec))
            modality = str(plan.modality)
            self.modality = data.specs[modality]
            self.labels = list(data.labels)
            self.recipes, self.not_searched = card_recipes(spec, data, self.card)
        fits = [a for a in list_students() if self.modality.kind in student_kinds(a)]
        archs = list(spec.archs) if spec.archs else fits
        bad = [a for a in archs if a not in fits]
        if bad:
            raise ConfigError(
                f"--archs {', '.join(bad)}: not a registered student for {self.modality.kind} "
                f"modality {modality!r}; choose from {', '.join(fits)}"
            )
        self.archs = archs
        self.threads = plan_threads(spec.jobs, spec.threads)
        from edgekd.search.report import read_metrics

        metrics = read_metrics(Path(spec.teacher)) or {}
        self.teacher_epoch_s = (metrics.get("train") or {}).get("epoch_seconds_mean")
        self.anchor, self.anchor_params, self.anchor_note = self._anchor()
        # run-time state (set by `run`)
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._price_lock = threading.Lock()
        self._inflight: dict[str, threading.Event] = {}
        self.failures: list[str] = []  # errors of the failures in a row so far
        self.rejections = 0
        self.stop_reason: str | None = None

    def _anchor(self) -> tuple[Candidate | None, dict[str, Any], str | None]:
        """(the anchor candidate, its parameters when it lies in the searched space, else {};
        why there is no anchor, when there is none)."""
        from edgekd.config import TrainConfig
        from edgekd.distill.plan import DEFAULT_STUDENT
        from edgekd.search.latency import resolved_args
        from edgekd.search.space import LEARNING_RATES, arch_space, enumerate_space

        arch = DEFAULT_STUDENT.get(self.modality.kind)
        if arch is None:
            return None, {}, f"no default student for {self.modality.kind} modalities"
        if "default" not in self.recipes:
            why = self.not_searched.get("default", "not searched")
            return None, {}, f"the teacher cannot serve the default recipe ({why})"
        points = enumerate_space(arch_space(arch))
        defaults = resolved_args(arch, {}, self.modality, len(self.labels))
        args = {k: defaults[k] for k in points[0]}
        lr = TrainConfig().lr
        cand = Candidate(arch, args, "default", None, None, lr)
        if arch not in self.archs or args not in points or lr not in LEARNING_RATES:
            return cand, {}, None  # trained, but outside the space the sampler models
        params = {"arch": arch, **{f"{arch}.{k}": v for k, v in args.items()},
                  "recipe": "default", "lr": lr}  # fmt: skip
        return cand, params, None

    def plan(self, study: Any, predictor: Any) -> str:
        from edgekd.config import DEFAULT_EPOCHS
        from edgekd.search.space import space_size

        sizes = space_size(self.archs, self.recipes)
        trained = self.trained(study)
        budget = " and ".join(
            b for b in (
                f"p50 <= {self.spec.budget_ms:g} ms" if self.spec.budget_ms else "",
                f"int8 <= {self.spec.budget_kb:g} KB" if self.spec.budget_kb else "",
            ) if b
        ) or "no budget"  # fmt: skip
        per_arch = ", ".join(f"{a} {sizes[a]}" for a in self.archs)
        left = max(self.spec.trials - trained, 0)
        line = (
            f"search: {sizes['total']:,} points ({per_arch} architectures x {sizes['recipes']} "
            f"recipe points x {sizes['schedule']} learning rates); target {self.spec.target}, "
            f"{budget}; latency: {predictor.describe()}; {self.spec.trials} trials of "
            f"{self.spec.epochs} epochs ({trained} already trained, {left} to go), "
            f"{self.spec.pruner} pruner; then the final stage: the best {self.spec.finalists} "
            f"within budget and the anchor retrained for "
            f"{self.spec.final_epochs or DEFAULT_EPOCHS[self.modality.kind]} epochs on "
            f"{self.spec.final_seeds} seeds, "
            f"each with a CE pair (up to {2 * (self.spec.finalists + 1) * self.spec.final_seeds} "
            f"trainings); {self.threads.describe()}"
        )
        if self.anchor is not None:
            a = self.anchor
            line += (f"; anchor (first trial, always trained): the default {a.arch} "
                     f"{_args_text(a.args)}, recipe default, lr {a.lr:g}")  # fmt: skip
        else:
            line += f"; no anchor: {self.anchor_note}"
        if self.card is not None:
            line += (f"; outside teacher {self.card.source} sha256 {self.card.sha256[:12]} on "
                     f"{self.spec.data or self.card.data_source}")  # fmt: skip
            if self.card.source == "outputs":
                line += ("; trials not augmented (the teacher's outputs are precomputed on "
                         "clean windows)")  # fmt: skip
        if self.not_searched:
            line += ("; recipes the teacher cannot serve, not searched: "
                     + ", ".join(self.not_searched))  # fmt: skip
        if left and self.teacher_epoch_s:
            guess = left * self.spec.epochs * self.teacher_epoch_s / self.spec.jobs
            line += f"; about {duration(guess)} (rough: from the teacher's epoch time)"
        elif left:
            line += "; time unknown until the first trial finishes"
        return line

    @staticmethod
    def trained(study: Any) -> int:
        """Trials that count towards --trials: complete, or pruned after training started
        (a repeat, told an earlier trial's outcome, was not trained)."""
        return sum(
            1 for t in study.get_trials(deepcopy=False)
            if t.state.name in ("COMPLETE", "PRUNED")
            and not _said(t, "rejected") and not _said(t, "repeat_of")
        )  # fmt: skip

    # --- the run ---------------------------------------------------------------------------

    def run(self, optuna: Any, study: Any, predictor: Any, executor: Any) -> None:
        """Optimize until `trials` trials are trained; SearchStopped when it cannot go on."""
        self.optuna, self.study = optuna, study
        self.predictor, self.executor = predictor, executor
        self.progress = _Progress.of_study(study, self.spec.trials)
        self._recover(study)
        if self.anchor is not None and not any(
            t.user_attrs.get("anchor") for t in study.get_trials(deepcopy=False)
        ):
            study.enqueue_trial(self.anchor_params, user_attrs={"anchor": True})
        while self.progress.done < self.spec.trials and self.stop_reason is None:
            left = self.spec.trials - self.progress.done
            # Enqueued trials (the anchor, retries) run one at a time: two of optimize's threads
            # can pop the same waiting trial, and the second tell then fails on a finished one.
            waiting = any(t.state.name == "WAITING" for t in study.get_trials(deepcopy=False))
            self._optimize_in_thread(study, 1 if waiting else left, 1 if waiting else None)
        if self.stop_reason is not None:
            raise SearchStopped(self.stop_reason)

    def _recover(self, study: Any) -> None:
        """Trials a killed search left RUNNING: their worker is gone (the lock proves it), so
        they are failed now and retried (RetryFailedTrialCallback: the same parameters, hence
        the same plan and run folder), without waiting for the heartbeat's grace period."""
        state = self.optuna.trial.TrialState
        stale = study.get_trials(deepcopy=False, states=(state.RUNNING,))
        if not stale:
            return
        retry = retry_callback(self.optuna, max_retry=None)
        for t in stale:
            frozen = study.tell(t.number, state=state.FAIL, skip_if_finished=True)
            retry(study, frozen)
        self.log(f"resuming {len(stale)} trial(s) a stopped search left running: "
                 + ", ".join(str(t.number) for t in stale))  # fmt: skip

    def _optimize_in_thread(self, study: Any, left: int, jobs: int | None = None) -> None:
        """`study.optimize` for `left` trials, run in a thread so that Ctrl-C here stops the
        trials (each sees `stopping`, kills its job and ends FAIL, to be retried) instead of
        waiting for them to finish."""
        error: list[BaseException] = []

        def optimize() -> None:
            try:
                study.optimize(self.objective, n_trials=left,
                               n_jobs=min(jobs or self.spec.jobs, left),
                               catch=(Exception,), callbacks=[self.after_trial])  # fmt: skip
            except BaseException as exc:  # re-raised in the caller's thread
                error.append(exc)

        runner = threading.Thread(target=optimize, name="edgekd-search", daemon=True)
        runner.start()
        try:
            while runner.is_alive():
                runner.join(0.5)
        except KeyboardInterrupt:
            self.stopping.set()
            runner.join()
            raise
        if error:
            raise error[0]

    def objective(self, trial: Any) -> float:
        """Draw, price, check the budget, then train (or tell a repeat its earlier outcome)."""
        from edgekd.search.space import draw

        if self.stopping.is_set():
            trial.set_user_attr("interrupted", "the search was stopped before it drew")
            raise _Interrupted("the search is stopping")
        spec, log, progress = self.spec, self.log, self.progress
        for key in OUTCOME_ATTRS:
            if key in trial.user_attrs:
                trial.set_user_attr(key, None)
        anchor = bool(trial.user_attrs.get("anchor"))
        if anchor and self.anchor is not None:
            if self.anchor_params:  # enqueued: every suggest returns the anchor's value
                draw(trial, self.archs, self.recipes)
            cand = self.anchor
        else:
            cand = draw(trial, self.archs, self.recipes)
        with self._price_lock:  # one candidate timed at a time, one writer of the cache
            est = self.predictor.predict(cand.arch, cand.args)
        cfg = train_config(spec, cand, epochs=spec.epochs)
        folder = run_folder(spec.out, cfg, spec.teacher)
        trial.set_user_attr("candidate", cand.to_dict())
        trial.set_user_attr("estimate", est.to_dict())
        trial.set_user_attr("constraint", constraint(spec, est))
        trial.set_user_attr("folder", str(folder))
        why = _over_budget(spec, est)
        if why is not None and not anchor:
            trial.set_user_attr("rejected", why)
            progress.rejected += 1
            log(f"{progress.head()} trial {trial.number} {cand.arch} {cand.args}: "
                f"not trained ({why})")  # fmt: skip
            raise _Rejected(why)
        if why is not None:
            trial.set_user_attr("over_budget", why)
            log(f"trial {trial.number} is the anchor (the default): trained although over "
                f"budget ({why}), and flagged so")  # fmt: skip
        earlier = self._claim(trial, str(folder))
        if earlier is not None:
            return self._repeat(trial, cand, earlier)
        try:
            return self._train(trial, cand, cfg, folder, est, anchor)
        finally:
            with self._lock:
                self._inflight.pop(str(folder)).set()

    def _claim(self, trial: Any, folder: str) -> Any:
        """The earlier trial of the same plan (same run folder) once it has finished, or None
        when this trial is to train it (the plan is then marked in flight here)."""
        state = self.optuna.trial.TrialState
        while True:
            with self._lock:
                busy = self._inflight.get(folder)
                if busy is None:
                    for t in self.study.get_trials(deepcopy=False,
                                                   states=(state.COMPLETE, state.PRUNED)):
                        if (t.number != trial.number and t.user_attrs.get("folder") == folder
                                and not _said(t, "repeat_of")):
                            return t
                    self._inflight[folder] = threading.Event()
                    return None
            busy.wait(POLL_S)  # the same plan is training in another trial: wait for it
            if self.stopping.is_set():
                trial.set_user_attr("interrupted", "the search was stopped")
                raise _Interrupted("the search is stopping")

    def _repeat(self, trial: Any, cand: Candidate, earlier: Any) -> float:
        """A draw of an earlier trial's plan: training is deterministic, so the study is told
        the earlier outcome (its value; or its curve, pruned at the same epoch)."""
        trial.set_user_attr("repeat_of", earlier.number)
        self.progress.rejected += 1
        self.log(f"{self.progress.head()} trial {trial.number} {cand.arch} {cand.args}: repeats "
                 f"trial {earlier.number}, whose outcome it is told (nothing trained)")
        if earlier.state.name == "COMPLETE":
            return float(earlier.value)
        for step, value in sorted(earlier.intermediate_values.items()):
            trial.report(value, step)
        trial.set_user_attr("pruned_at_epoch", earlier.user_attrs.get("pruned_at_epoch"))
        raise self.optuna.TrialPruned(f"repeats trial {earlier.number}, which was pruned")

    def _train(self, trial: Any, cand: Candidate, cfg: Any, folder: Path, est: Estimate,
               anchor: bool) -> float:  # fmt: skip
        from edgekd.distill.ablate.jobs import Job, execute
        from edgekd.executor import JobLost, training_resources

        spec, log, progress = self.spec, self.log, self.progress
        job = Job(f"trial{trial.number}", spec.seed, None, cfg, Path(spec.teacher), folder,
                  self.threads.per_job)  # fmt: skip
        future = self.executor.submit(
            execute, job, resources=training_resources(self.executor, self.threads.per_job)
        )
        run = _Running(trial, cand, folder, future, time.perf_counter(), anchor=anchor)
        p50 = "-" if est.p50_ms is None else f"{est.p50_ms:.4f}"
        log(f"{progress.head()} trial {trial.number} started: {cand.arch} {cand.args}, "
            f"recipe {cand.recipe} tau {cand.tau} alpha {cand.alpha} lr {cand.lr:g}; "
            f"predicted p50 {p50} ms, int8 {est.int8_kb:.1f} KB"
            + (" (the anchor)" if anchor else ""))  # fmt: skip
        try:
            while not wait([future], timeout=POLL_S)[0]:
                if self.stopping.is_set():
                    trial.set_user_attr("interrupted", "the search was stopped")
                    raise _Interrupted("the search is stopping")
                if _prune(run, spec, log, progress):
                    progress.pruned += 1
                    progress.done += 1
                    raise self.optuna.TrialPruned(f"pruned after epoch {run.reported}")
            _report_epochs(run)
            try:
                metrics = future.result()
            except JobLost as exc:
                trial.set_user_attr("lost", _error_text(exc))
                raise
            except Exception as exc:
                trial.set_user_attr("error", _error_text(exc))
                if not isinstance(exc, EdgeKDError):  # a bug, not a user error: its traceback
                    log("".join(traceback.format_exception(exc)).rstrip())
                raise
        finally:
            if not future.done():
                self.executor.kill(future)
        value = float(metrics["val"]["accuracy"])
        progress.done += 1
        progress.seconds.append(time.perf_counter() - run.started)
        log(f"{progress.head()} trial {trial.number} {cand.arch}: val acc "
            f"{100 * value:.2f} %, {progress.seconds[-1]:.0f} s; "
            f"{progress.eta(spec.jobs)}")  # fmt: skip
        return value

    def after_trial(self, study: Any, trial: Any) -> None:
        """Optuna callback after each trial: retry a lost worker's trial, count failures in a
        row and untrainable draws, and stop the study when it cannot go on."""
        attrs = trial.user_attrs
        if trial.state.name == "FAIL" and _said(trial, "rejected"):
            self.rejections += 1
        elif trial.state.name == "FAIL" and _said(trial, "interrupted"):
            if "candidate" in attrs:  # drawn: the next run trains the same candidate
                retry_callback(self.optuna, max_retry=None)(study, trial)
            study.stop()
        elif trial.state.name == "FAIL":
            why = attrs.get("error") or attrs.get("lost") or "failed"
            self.log(f"trial {trial.number} failed ({why})")
            if _said(trial, "lost"):  # its worker was killed: Optuna's retry, as for a stale trial
                retry_callback(self.optuna)(study, trial)
            self.failures.append(f"trial {trial.number}: {why}")
            if len(self.failures) >= MAX_FAILURES_IN_A_ROW:
                self.stop_reason = (
                    f"{len(self.failures)} trials failed in a row ("
                    + "; ".join(self.failures) + "); the search stopped. Fix the cause and "
                    "rerun with the same --out: finished trials are kept"
                )
                study.stop()
        elif _said(trial, "repeat_of"):
            self.rejections += 1
        else:
            self.failures.clear()
        if self.rejections > REJECTIONS_PER_TRIAL * self.spec.trials and not self.stop_reason:
            last = attrs.get("rejected") or f"repeat of trial {attrs.get('repeat_of')}"
            self.stop_reason = (
                f"{self.rejections} drawn candidates could not be trained (last: {last}); "
                "raise --budget-ms / --budget-kb, or search other --archs"
            )
            study.stop()


def _args_text(args: dict[str, Any]) -> str:
    return "(" + ", ".join(f"{k} {v}" for k, v in args.items()) + ")"


def run_search(spec: SearchSpec, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) the search in `spec.out`; returns search.json's content. Every option is
    checked before anything is written: a refused start leaves nothing behind."""
    spec.check()
    optuna = import_optuna()
    from edgekd.executor import make_executor
    from edgekd.search.latency import LatencyPredictor

    out = Path(spec.out)
    search = _Search(spec, log)
    executor = make_executor(spec.executor, workers=spec.jobs, address=spec.address,
                             cpus_per_job=search.threads.per_job, shared=out)  # fmt: skip
    try:
        predictor = LatencyPredictor(
            spec.target, search.modality, len(search.labels), out,
            table=spec.latency_table, executor=executor, duration_s=spec.timing_s,
            max_wait_s=spec.quiet_wait_s,
        )  # fmt: skip
        with _lock(out):
            # recorded only once every option is known to work: a refused start binds nothing
            _check_settings(out, spec.settings())
            study = open_study(optuna, spec)
            log(search.plan(study, predictor))
            search.run(optuna, study, predictor, executor)
            report = _report(study, search, predictor)
            atomic_write_json(out / "search.json", report)
            from edgekd.search.report import format_table, plot

            table = format_table(report)
            atomic_write_text(out / "pareto.md", table + "\n")
            log(table)
            log(plot(report, out / "pareto.png"))
    finally:
        executor.close()
    return report


def _report_epochs(run: _Running) -> list[float]:
    history = _val_history(run.folder)
    for epoch in range(run.reported, len(history)):
        run.trial.report(history[epoch], epoch + 1)
    run.reported = len(history)
    return history


def _prune(run: _Running, spec: SearchSpec, log: Callable[[str], None],
           progress: _Progress) -> bool:
    """Report newly finished epochs; True when the pruner stops the trial (never the anchor)."""
    before = run.reported
    history = _report_epochs(run)
    if len(history) == before or len(history) >= spec.epochs or run.anchor:
        return False
    if not run.trial.should_prune():
        return False
    run.trial.set_user_attr("pruned_at_epoch", len(history))
    log(f"{progress.head()} trial {run.trial.number} pruned after epoch {len(history)}: val acc "
        f"{100 * history[-1]:.2f} %")  # fmt: skip
    return True


STATES = ("complete", "pruned", "rejected", "repeat", "fail", "retried", "interrupted", "running",
          "waiting")  # fmt: skip


def _row(t: Any, retried: dict[int, int]) -> dict[str, Any]:
    attrs = t.user_attrs
    cand = attrs.get("candidate") or {}
    est = attrs.get("estimate") or {}
    state = t.state.name.lower()
    if _said(t, "rejected"):
        state = "rejected"
    elif _said(t, "repeat_of") and state in ("complete", "pruned"):
        state = "repeat"
    elif state == "fail" and t.number in retried:
        state = "retried"
    elif state == "fail" and _said(t, "interrupted"):
        state = "interrupted"
    trained = state in ("complete", "pruned", "repeat")
    return {
        "trial": t.number, "state": state, **cand,
        "params": est.get("params"), "int8_kb": est.get("int8_kb"), "p50_ms": est.get("p50_ms"),
        "p50_source": est.get("source"), "signature": est.get("signature"),
        "rss_mb": est.get("rss_mb"), "price_noisy": est.get("noisy"),
        "val_acc": None if t.value is None else 100 * t.value,
        "anchor": bool(attrs.get("anchor")),
        "over_budget": attrs.get("over_budget"),
        "rejected": attrs.get("rejected"),
        "repeat_of": attrs.get("repeat_of"),
        "error": attrs.get("error") or attrs.get("lost"),
        "retried_by": retried.get(t.number),
        "pruned_at_epoch": attrs.get("pruned_at_epoch"),
        "folder": attrs.get("folder") if trained else None,
    }  # fmt: skip


def _anchor_report(rows: list[dict[str, Any]], search: _Search) -> dict[str, Any]:
    """The anchor's row (the default student and recipe), or why there is none."""
    mine = [r for r in rows if r["anchor"] and r["state"] not in ("retried", "waiting")]
    if search.anchor is None:
        return {"state": "none", "note": search.anchor_note}
    if not mine:
        return {"state": "not run", **search.anchor.to_dict()}
    return mine[-1]


def _report(study: Any, search: _Search, predictor: Any) -> dict[str, Any]:
    """search.json: every trial, the validation Pareto front of the exploration, then the
    final stage (`edgekd.search.finals`): the finalists, the anchor and the chosen student."""
    from edgekd.search.finals import run_final_stage
    from edgekd.search.report import pareto_front

    spec = search.spec
    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(search.optuna, trials)
    rows = [_row(t, retried) for t in trials]
    # trained within budget: the over-budget anchor is reported, never chosen nor on the front
    complete = [r for r in rows if r["state"] == "complete" and not r["over_budget"]]
    final = run_final_stage(search, rows)
    return {
        "unit": {"accuracy": "percent", "latency": "ms at batch 1", "size": "KB (1000 bytes)",
                 "memory": "MB (10^6 bytes)"},
        "target": spec.target,
        "budget": {"ms": spec.budget_ms, "kb": spec.budget_kb,
                   "rss_mb": spec.budget_rss_mb},
        "latency_source": predictor.describe(),
        "modality": search.modality.name,
        "archs": search.archs,
        "teacher": {"source": "edgekd", "dir": str(Path(spec.teacher).resolve())}
        if search.card is None
        else {"dir": str(Path(spec.teacher).resolve()), **search.card.provenance()},
        "recipes": list(search.recipes),
        "recipes_not_searched": search.not_searched,
        "spec": {**asdict(spec), "teacher": str(spec.teacher), "out": str(spec.out),
                 "latency_table": None if spec.latency_table is None
                 else str(spec.latency_table)},  # fmt: skip
        "counts": {s: sum(1 for r in rows if r["state"] == s) for s in STATES},
        "trials": rows,
        "pareto": pareto_front(complete),
        "final": final["final"],
        "finalists": final["finalists"],
        # the anchor's final-stage entry; without one, its trial (or why there is none)
        "anchor": final["anchor_final"] or _anchor_report(rows, search),
        "chosen": final["chosen"],
        "verdict": final["verdict"],
    }  # fmt: skip
