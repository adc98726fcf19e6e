"""`run_search`: the most accurate student within a device budget, by an Optuna study.

Objective and constraints (why single-objective): Optuna prunes (trial.report / should_prune)
only single-objective studies, and pruning is what makes a search of many 30-epoch trials
affordable. So the study maximises validation accuracy alone; the budget is a hard constraint
checked BEFORE training (`edgekd.search.latency`: predicted batch-1 p50 and int8 size of the
untrained candidate): a candidate over budget is told PRUNED with `rejected` set and is never
trained (rejections do not count towards `trials`); so is a draw that repeats an earlier
trial's candidate (training is deterministic for a seed). The accuracy/latency Pareto front is then
computed from the finished trials (`edgekd.search.report.pareto_front`), not by the sampler.

Selection uses validation accuracy only. Test accuracy is read once, for the Pareto set, and is
labelled so. The chosen student is the complete trial with the best validation accuracy; it is
exported to `<out>/chosen.edgekd` by `edgekd.export.export_run` and, for a CPU target, its batch-1
p50 is measured again on the trained bundle beside the prediction.

Layout of `out`:
  study.db              the Optuna study (SQLite); reopened with load_if_exists
  settings.json         what the search was made with; a resume must match it
  latency_cache.json    priced candidates (edgekd.search.latency)
  trials/NNNN/          each trained trial's `distill` run folder
  search.json           every trial (arch, args, recipe, params, int8 size, predicted p50 and its
                        source, val acc, state), the Pareto front, the chosen student
  pareto.md, pareto.png the front as a table and a plot (the plot needs matplotlib)
  chosen.edgekd         the chosen student's bundle

Teacher: an edgekd teacher run folder, or an outside teacher as `edgekd distill` takes it (a
teacher.yaml card, a folder holding one such as a `teacher cache`, or a .onnx/.pt2 with the card
beside it), with `--data` (a cache knows its data). For a card the students take the data's
default student modality, and the recipes it cannot serve (e.g. soft_teacher_head: a card gives
no classifier weights) are left out of the space, as planning each recipe with the card tells;
its provenance (source, sha256, licence, card) is in settings.json and search.json's `teacher`.

Resume guarantee: a search killed at any point (even SIGKILL) and started again with the same
`out` and options continues the study: complete and pruned trials are kept and never trained
again; a trial that was in flight is re-attached with its drawn parameters and its run folder
is reused (finished: its metrics are read; interrupted after an epoch: training resumes from
its saved state; before the first epoch: restarted). One search at a time per `out` (a lock).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgekd.errors import ConfigError, MissingExtra
from edgekd.io import atomic_write_json, atomic_write_text
from edgekd.search.latency import Estimate
from edgekd.search.space import Candidate

STUDY_NAME = "edgekd-search"
PRUNERS = ("median", "halving", "none")
POLL_S = 1.0
REJECTIONS_PER_TRIAL = 20  # untrainable draws allowed per wanted trial before giving up


@dataclass(frozen=True)
class SearchSpec:
    """Options of `edgekd search` (see docs/search.md). Budgets: `budget_ms` on the predicted
    batch-1 p50 (ms), `budget_kb` on the int8 QDQ ONNX (KB = 1000 bytes); None = no limit.
    `archs`: students to search (None: every student for the modality's kind)."""

    teacher: Path
    out: Path
    target: str = "cpu"
    budget_ms: float | None = None
    budget_kb: float | None = None
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
    confirm_seeds: int = 0  # retrain the chosen student with N seeds, and with CE only
    data: str | None = None  # the paired data: needed with an outside teacher (as distill's)

    def check(self) -> None:
        """ConfigError naming the offending option; nothing is created."""
        from edgekd.targets import get_target

        get_target(self.target)
        for flag, value in (("--budget-ms", self.budget_ms), ("--budget-kb", self.budget_kb)):
            if value is not None and not value > 0:
                raise ConfigError(f"{flag} must be > 0, got {value:g}")
        for flag, count in (("--trials", self.trials), ("--epochs", self.epochs),
                            ("--jobs", self.jobs), ("--batch-size", self.batch_size)):
            if count < 1:
                raise ConfigError(f"{flag} must be at least 1, got {count}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be a positive number of windows, got {self.limit}")
        if self.confirm_seeds < 0:
            raise ConfigError(f"--confirm-seeds must be >= 0, got {self.confirm_seeds}")
        if not self.timing_s > 0:
            raise ConfigError(f"--timing-s must be > 0, got {self.timing_s:g}")
        if self.max_drop < 0:
            raise ConfigError(f"--max-drop must be >= 0 points, got {self.max_drop:g}")
        if self.pruner not in PRUNERS:
            raise ConfigError(f"--pruner {self.pruner!r} is not one of {', '.join(PRUNERS)}")
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
        keys = ("target", "budget_ms", "budget_kb", "epochs", "archs", "seed", "limit",
                "unlabelled", "batch_size", "pruner")  # fmt: skip
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
    """The trials' run config with `recipe` and the default student: for planning only."""
    from edgekd.config import DataConfig, RunConfig, TrainConfig
    from edgekd.search.space import distill_config

    return RunConfig(
        data=DataConfig(source=spec.data, limit=spec.limit, unlabelled=spec.unlabelled),
        train=TrainConfig(epochs=spec.epochs, batch_size=spec.batch_size, seed=spec.seed),
        distill=distill_config(recipe, None, None),
    )


def read_teacher(teacher: Path, cfg: Any) -> tuple[Any, Any, Any]:
    """(plan, data, teacher) of a trial of `cfg`, read as `edgekd distill` reads them
    (`plan_distill`: an edgekd teacher run, or an outside teacher's card, whose cache must still
    match the data); nothing is trained or written."""
    from edgekd.distill.trainer import plan_distill

    return plan_distill(cfg, Path(teacher))


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
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


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
            if "rejected" in t.user_attrs:
                progress.rejected += 1
            elif t.state.name == "PRUNED":
                progress.pruned += 1
        return progress

    def eta(self, jobs: int) -> str:
        if not self.seconds:
            return "eta unknown"
        left = max(self.wanted - self.done, 0) * sum(self.seconds) / len(self.seconds) / jobs
        return f"eta {_duration(left)}"

    def head(self) -> str:
        return (f"[{self.done}/{self.wanted} trained, {self.pruned} pruned, "
                f"{self.rejected} not trained: over budget or repeats]")  # fmt: skip


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _over_budget(spec: SearchSpec, est: Estimate) -> str | None:
    if est.p50_ms is None:
        return f"no latency ({est.detail})"
    if spec.budget_ms is not None and est.p50_ms > spec.budget_ms:
        return f"p50 {est.p50_ms:.4f} ms > --budget-ms {spec.budget_ms:g}"
    if spec.budget_kb is not None and est.int8_kb > spec.budget_kb:
        return f"int8 {est.int8_kb:.1f} KB > --budget-kb {spec.budget_kb:g}"
    return None


def _duplicate(study: Any, trial: Any, cand: Candidate) -> str | None:
    """'duplicate of trial N' when an earlier trial drew the same candidate: training is
    deterministic for a seed, so it would only repeat that trial."""
    drawn = cand.to_dict()
    for t in study.get_trials(deepcopy=False):
        if t.number != trial.number and "rejected" not in t.user_attrs and (
            t.user_attrs.get("candidate") == drawn
        ):
            return f"duplicate of trial {t.number}"
    return None


def _train_config(spec: SearchSpec, cand: Candidate) -> Any:
    from edgekd.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from edgekd.search.space import distill_config

    return RunConfig(
        data=DataConfig(source=spec.data, limit=spec.limit, unlabelled=spec.unlabelled),
        train=TrainConfig(epochs=spec.epochs, batch_size=spec.batch_size, lr=cand.lr,
                          seed=spec.seed),
        model=ModelConfig(arch=cand.arch, args=dict(cand.args)),
        distill=distill_config(cand.recipe, cand.tau, cand.alpha),
    )  # fmt: skip


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


class _Search:
    """One run of the search loop over an open study."""

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

    def plan(self, study: Any, predictor: Any) -> str:
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
            f"{self.spec.pruner} pruner; {self.threads.describe()}"
        )
        if self.card is not None:
            line += (f"; outside teacher {self.card.source} sha256 {self.card.sha256[:12]} on "
                     f"{self.spec.data or self.card.data_source}")  # fmt: skip
        if self.not_searched:
            line += ("; recipes the teacher cannot serve, not searched: "
                     + ", ".join(self.not_searched))  # fmt: skip
        if left and self.teacher_epoch_s:
            guess = left * self.spec.epochs * self.teacher_epoch_s / self.spec.jobs
            line += f"; about {_duration(guess)} (rough: from the teacher's epoch time)"
        elif left:
            line += "; time unknown until the first trial finishes"
        return line

    @staticmethod
    def trained(study: Any) -> int:
        """Trials that count towards --trials: complete, or pruned after training started."""
        return sum(
            1 for t in study.get_trials(deepcopy=False)
            if t.state.name == "COMPLETE"
            or (t.state.name == "PRUNED" and "rejected" not in t.user_attrs)
        )  # fmt: skip


def _stale_trials(optuna: Any, study: Any) -> list[tuple[Any, int]]:
    """Trials a killed search left RUNNING, re-attached (their drawn parameters are stored, so
    drawing again returns the same candidate), with how many epochs they had reported."""
    return [
        (optuna.trial.Trial(study, t._trial_id), len(t.intermediate_values))
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    ]


def run_search(spec: SearchSpec, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) the search in `spec.out`; returns search.json's content."""
    spec.check()
    optuna = import_optuna()
    from edgekd.executor import make_executor
    from edgekd.search.latency import LatencyPredictor

    out = Path(spec.out)
    with _lock(out):
        search = _Search(spec, log)
        executor = make_executor(spec.executor, workers=spec.jobs, address=spec.address,
                                 cpus_per_job=search.threads.per_job)  # fmt: skip
        try:
            predictor = LatencyPredictor(
                spec.target, search.modality, len(search.labels), out,
                table=spec.latency_table, executor=executor, duration_s=spec.timing_s,
            )  # fmt: skip
            # recorded only once every option is known to work: a refused start binds nothing
            _check_settings(out, spec.settings())
            study = optuna.create_study(
                storage=f"sqlite:///{(out / 'study.db').resolve()}", study_name=STUDY_NAME,
                direction="maximize", load_if_exists=True,
                pruner=_pruner(optuna, spec.pruner, spec.epochs),
            )  # fmt: skip
            # offset by the history: a resumed search must not replay the first run's draws
            study.sampler = optuna.samplers.TPESampler(seed=spec.seed + len(study.trials))
            log(search.plan(study, predictor))
            _loop(optuna, study, search, predictor, executor)
            report = _report(study, search, predictor)
            if spec.confirm_seeds and report["chosen"]:
                report["confirmation"] = _confirm(report["chosen"], search, executor)
        finally:
            executor.close()
        atomic_write_json(out / "search.json", report)
        from edgekd.search.report import format_table, plot

        table = format_table(report)
        atomic_write_text(out / "pareto.md", table + "\n")
        log(table)
        log(plot(report, out / "pareto.png"))
    return report


def _loop(optuna: Any, study: Any, search: _Search, predictor: Any, executor: Any) -> None:
    from edgekd.distill.ablate.jobs import Job, execute
    from edgekd.executor import JobLost, Resources
    from edgekd.search.space import draw

    spec, log = search.spec, search.log
    state = optuna.trial.TrialState
    progress = _Progress.of_study(study, spec.trials)
    stale = _stale_trials(optuna, study)
    if stale:
        log(f"resuming {len(stale)} trial(s) a stopped search left running: "
            + ", ".join(str(t.number) for t, _ in stale))  # fmt: skip
    running: dict[Future, _Running] = {}
    rejections = 0
    while progress.done + len(running) < spec.trials or running:
        while len(running) < spec.jobs and progress.done + len(running) < spec.trials:
            trial, reported = stale.pop(0) if stale else (study.ask(), 0)
            cand = draw(trial, search.archs, search.recipes)
            est = predictor.predict(cand.arch, cand.args)
            trial.set_user_attr("candidate", cand.to_dict())
            trial.set_user_attr("estimate", est.to_dict())
            why = _duplicate(study, trial, cand) or _over_budget(spec, est)
            if why is not None:
                trial.set_user_attr("rejected", why)
                study.tell(trial, state=state.PRUNED)
                progress.rejected += 1
                rejections += 1
                log(f"{progress.head()} trial {trial.number} {cand.arch} {cand.args}: "
                    f"not trained ({why})")  # fmt: skip
                if rejections > REJECTIONS_PER_TRIAL * spec.trials:
                    raise ConfigError(
                        f"{rejections} drawn candidates could not be trained (last: {why}); "
                        "raise --budget-ms / --budget-kb, or search other --archs"
                    )
                continue
            folder = Path(spec.out) / "trials" / f"{trial.number:04d}"
            job = Job(f"trial{trial.number}", spec.seed, None, _train_config(spec, cand),
                      Path(spec.teacher), folder, search.threads.per_job)  # fmt: skip
            future = executor.submit(execute, job,
                                     resources=Resources(cpus=search.threads.per_job))
            running[future] = _Running(trial, cand, folder, future, time.perf_counter(),
                                       reported)  # fmt: skip
            log(f"{progress.head()} trial {trial.number} started: {cand.arch} {cand.args}, "
                f"recipe {cand.recipe} tau {cand.tau} alpha {cand.alpha} lr {cand.lr:g}; "
                f"predicted p50 {est.p50_ms:.4f} ms, int8 {est.int8_kb:.1f} KB")
        finished, _ = wait(list(running), timeout=POLL_S, return_when=FIRST_COMPLETED)
        for future, run in list(running.items()):
            if future not in finished and _prune(run, spec, log, progress):
                executor.kill(future)
                study.tell(run.trial, state=state.PRUNED)
                progress.pruned += 1
                progress.done += 1
                del running[future]
        for future in finished:
            run = running.pop(future, None)
            if run is None:
                continue
            try:
                metrics = future.result()
            except JobLost:  # not killed by us: left RUNNING, so a rerun resumes it
                raise
            except Exception:
                study.tell(run.trial, state=state.FAIL)
                raise
            _report_epochs(run)
            value = float(metrics["val"]["accuracy"])
            study.tell(run.trial, value)
            progress.done += 1
            progress.seconds.append(time.perf_counter() - run.started)
            log(f"{progress.head()} trial {run.trial.number} {run.candidate.arch}: val acc "
                f"{100 * value:.2f} %, {progress.seconds[-1]:.0f} s; "
                f"{progress.eta(spec.jobs)}")  # fmt: skip


def _report_epochs(run: _Running) -> list[float]:
    history = _val_history(run.folder)
    for epoch in range(run.reported, len(history)):
        run.trial.report(history[epoch], epoch + 1)
    run.reported = len(history)
    return history


def _prune(run: _Running, spec: SearchSpec, log: Callable[[str], None],
           progress: _Progress) -> bool:
    """Report newly finished epochs; True when the pruner stops the trial."""
    before = run.reported
    history = _report_epochs(run)
    if len(history) == before or len(history) >= spec.epochs:
        return False
    if not run.trial.should_prune():
        return False
    run.trial.set_user_attr("pruned_at_epoch", len(history))
    log(f"{progress.head()} trial {run.trial.number} pruned after epoch {len(history)}: val acc "
        f"{100 * history[-1]:.2f} %")  # fmt: skip
    return True


def _row(t: Any, out: Path) -> dict[str, Any]:
    cand = t.user_attrs.get("candidate") or {}
    est = t.user_attrs.get("estimate") or {}
    state = t.state.name.lower()
    if "rejected" in t.user_attrs:
        state = "rejected"
    return {
        "trial": t.number, "state": state, **cand,
        "params": est.get("params"), "int8_kb": est.get("int8_kb"), "p50_ms": est.get("p50_ms"),
        "p50_source": est.get("source"), "signature": est.get("signature"),
        "val_acc": None if t.value is None else 100 * t.value,
        "rejected": t.user_attrs.get("rejected"),
        "pruned_at_epoch": t.user_attrs.get("pruned_at_epoch"),
        "folder": str(out / "trials" / f"{t.number:04d}") if state == "complete" else None,
    }  # fmt: skip


def _report(study: Any, search: _Search, predictor: Any) -> dict[str, Any]:
    from edgekd.search.report import choose, pareto_front, read_metrics

    spec = search.spec
    out = Path(spec.out)
    rows = [_row(t, out) for t in study.get_trials(deepcopy=False)]
    complete = [r for r in rows if r["state"] == "complete"]
    front = pareto_front(complete)
    for row in front:  # test: scored once by the trainer, read here for the front only
        metrics = read_metrics(Path(row["folder"])) or {}
        test = metrics.get("test") or {}
        row["test"] = {k: 100 * test[k] for k in ("accuracy", "macro_f1") if k in test}
    report: dict[str, Any] = {
        "unit": {"accuracy": "percent", "latency": "ms at batch 1", "size": "KB (1000 bytes)"},
        "target": spec.target,
        "budget": {"ms": spec.budget_ms, "kb": spec.budget_kb},
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
        "counts": {s: sum(1 for r in rows if r["state"] == s)
                   for s in ("complete", "pruned", "rejected", "fail", "running")},
        "trials": rows,
        "pareto": front,
        "chosen": None,
    }
    if complete:
        best = choose(complete)
        report["chosen"] = {**best, **_deliver(best, search, predictor)}
    return report


def confirm_configs(spec: SearchSpec, cand: Candidate) -> tuple[Any, Any, list[str]]:
    """The confirmation's two trainings: `cand` with its recipe, and the same student with CE
    only (no teacher, same lr) trained for as many optimizer steps (the epochs that come
    closest: the learning-rate schedule is per step, so both follow the same shape). Returns
    (chosen config, CE config, what else still differs between their plans, as
    `edgekd.distill.plan.differences` words it, e.g. "+3,661 unlabelled windows"): a
    comparison says everything it differs in, like `edgekd ablate`'s `ce_steps` row."""
    from dataclasses import replace

    from edgekd.config import resolve_recipe
    from edgekd.distill.ablate.rows import LOSS_CHANGE
    from edgekd.distill.plan import differences, resolve_plan, with_steps

    chosen = _train_config(spec, cand)
    mine, data, teacher = read_teacher(spec.teacher, chosen)
    ce = with_steps(replace(chosen, distill=resolve_recipe("ce")), mine.total_steps, data, teacher)
    told = [d.text for d in differences(mine, resolve_plan(ce, data, teacher))
            if d.aspect not in (*LOSS_CHANGE, "epochs")]  # fmt: skip
    return chosen, ce, told


def _confirm(chosen: dict[str, Any], search: _Search, executor: Any) -> dict[str, Any]:
    """How much the teacher adds at the chosen size: the chosen candidate and the same student
    with CE only over as many optimizer steps (`confirm_configs`), each over `confirm_seeds`
    seeds (the first is the search's own seed: the chosen trial's run is reused), compared on
    the test split by the ablation's paired statistics (`edgekd.distill.ablate.stats`; percent;
    a 95% t-interval over seeds). The test split was not used to choose: this is the report's
    confirmation, not a selection."""
    from dataclasses import replace

    from edgekd.distill.ablate.jobs import Job, execute
    from edgekd.distill.ablate.stats import paired_interval, summarize
    from edgekd.executor import Resources
    from edgekd.search.space import Candidate

    spec = search.spec
    keys = ("arch", "args", "recipe", "tau", "alpha", "lr")
    cand = Candidate(**{k: chosen[k] for k in keys})
    base, ce, told = confirm_configs(spec, cand)
    plans = {"chosen": base, "ce": ce}
    futures = {}
    for kind, cfg in plans.items():
        for i in range(spec.confirm_seeds):
            seed = spec.seed + i
            folder = Path(spec.out) / "confirm" / kind / f"seed{seed}"
            if kind == "chosen" and i == 0:
                folder = Path(chosen["folder"])
            job = Job(f"confirm-{kind}", seed, None,
                      replace(cfg, train=replace(cfg.train, seed=seed)), Path(spec.teacher),
                      folder, search.threads.per_job)  # fmt: skip
            futures[kind, seed] = executor.submit(
                execute, job, resources=Resources(cpus=search.threads.per_job)
            )
    search.log(f"confirmation: trial {chosen['trial']}'s student with its recipe "
               f"({base.train.epochs} epochs) and with CE only ({ce.train.epochs} epochs, as many "
               f"optimizer steps), {spec.confirm_seeds} seeds each ({len(futures)} trainings)"
               + (f"; besides its losses the chosen run differs from CE in: {'; '.join(told)}"
                  if told else ""))  # fmt: skip
    test: dict[str, dict[str, dict[int, float]]] = {"chosen": {}, "ce": {}}
    for (kind, seed), future in futures.items():
        metrics = future.result()["test"]
        for metric in ("accuracy", "macro_f1"):
            test[kind].setdefault(metric, {})[seed] = 100 * metrics[metric]
    out: dict[str, Any] = {"seeds": spec.confirm_seeds, "split": "test", "unit": "percent",
                           "epochs": {"chosen": base.train.epochs, "ce": ce.train.epochs},
                           "differences": told}  # fmt: skip
    for metric in ("accuracy", "macro_f1"):
        out[metric] = {
            "chosen": summarize(list(test["chosen"][metric].values())),
            "ce": summarize(list(test["ce"][metric].values())),
            "teacher_gain": paired_interval(test["chosen"][metric], test["ce"][metric]),
        }
    return out


def _deliver(best: dict[str, Any], search: _Search, predictor: Any) -> dict[str, Any]:
    """Export the chosen trial's bundle; measure its p50 here when the target is this CPU."""
    spec = search.spec
    if not spec.export:
        return {"bundle": None, "measured_p50_ms": None, "measured_note": "export skipped"}
    from edgekd.errors import ExportError
    from edgekd.export.exporter import export_run
    from edgekd.search.latency import time_bundle
    from edgekd.targets import get_target

    bundle = Path(spec.out) / "chosen.edgekd"
    try:
        export_run(Path(best["folder"]), bundle, target=spec.target, force=bundle.exists(),
                   max_drop=spec.max_drop, progress=False)  # fmt: skip
    except ExportError as exc:  # the search's results stand; say why there is no bundle
        search.log(f"chosen trial {best['trial']}: export failed: {exc}")
        return {"bundle": None, "measured_p50_ms": None, "measured_note": f"export failed: {exc}"}
    target = get_target(spec.target)
    if predictor.source != "local":
        return {"bundle": str(bundle), "measured_p50_ms": None,
                "measured_note": f"not measured: {spec.target} is not this machine; run "
                                 f"`edgekd bench {bundle}` on the device"}  # fmt: skip
    measured = time_bundle(bundle, target.backend, target.precision, spec.timing_s)
    search.log(f"chosen trial {best['trial']}: predicted p50 {best['p50_ms']:.4f} ms, measured "
               f"{measured:.4f} ms on the trained bundle ({target.backend} {target.precision})")
    return {"bundle": str(bundle), "measured_p50_ms": measured}
