"""A search answer you can trust: the default as the anchor, resume keyed by plan digests with
every option checked before anything is written, and Optuna used as its authors intend
(constraints, repeats told their earlier value, failures recorded, lost workers retried).

The trainer, the executor and the latency predictor are replaced by fakes (these tests are
about the search's bookkeeping, not about training): a fake training writes the run folder's
history.json, metrics.json and the config it was given, at once."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_cli

LABELS = [f"c{i}" for i in range(6)]


@pytest.fixture
def fake_teacher(tmp_path: Path) -> Path:
    """A folder that reads as a finished edgekd teacher run (its sidecar only)."""
    from edgekd.modalities import ModalitySpec

    spec = ModalitySpec(name="acc", kind="timeseries", rate_hz=50.0, channels=3, window=64, hop=32)
    folder = tmp_path / "teacher"
    folder.mkdir()
    sidecar = {"role": "teacher", "specs": {"acc": spec.to_dict()}, "default_student": "acc",
               "labels": LABELS}  # fmt: skip
    (folder / "checkpoint.json").write_text(json.dumps(sidecar))
    return folder


class Fakes:
    """What the fakes saw, and how they behave (set by each test)."""

    def __init__(self) -> None:
        self.trained: list[dict[str, Any]] = []  # each fake trial training's config
        self.finals: list[dict[str, Any]] = []  # each fake final-stage training's config
        self.score: Callable[[dict[str, Any]], float] = lambda cfg: 0.5
        self.fail: Callable[[dict[str, Any], int], BaseException | None] = lambda cfg, n: None
        self.p50: Callable[[str, dict[str, Any]], float] = lambda arch, args: 0.01
        self.rss: Callable[[str, dict[str, Any]], float] = lambda arch, args: 50.0
        self.lock = threading.Lock()


def _fake_execute(fakes: Fakes) -> Callable[[Any], dict[str, Any]]:
    from edgekd.config import to_dict

    def execute(job: Any) -> dict[str, Any]:
        done = job.out / "metrics.json"
        if done.is_file():  # as the real one: a finished run folder is read, not trained
            return json.loads(done.read_text())
        cfg = to_dict(job.cfg)
        with fakes.lock:
            if job.run.startswith("final-"):
                fakes.finals.append(cfg)
                error = None
            else:
                fakes.trained.append(cfg)
                error = fakes.fail(cfg, len(fakes.trained))
        if error is not None:
            raise error
        acc = fakes.score(cfg)
        job.out.mkdir(parents=True, exist_ok=True)
        epochs = job.cfg.train.epochs
        history = [{"epoch": e + 1, "seconds": 0.01, "val": {"accuracy": acc}}
                   for e in range(epochs)]  # fmt: skip
        (job.out / "history.json").write_text(json.dumps(history))
        (job.out / "trained.json").write_text(json.dumps(cfg))
        # test is the validation figure minus 0.1: it tells which split a report read
        metrics = {"val": {"accuracy": acc, "macro_f1": acc},
                   "test": {"accuracy": acc - 0.1, "macro_f1": acc - 0.1}}  # fmt: skip
        done.write_text(json.dumps(metrics))
        return metrics

    return execute


class _InThreadExecutor:
    name = "local"

    def has_resource(self, name: str) -> bool:
        return False

    def submit(self, fn: Callable[..., Any], *args: Any, resources: Any = None) -> Future:
        future: Future = Future()

        def run() -> None:
            try:
                future.set_result(fn(*args))
            except BaseException as exc:
                future.set_exception(exc)

        threading.Thread(target=run, daemon=True).start()
        return future

    def kill(self, future: Future) -> None:
        future.cancel()

    def close(self) -> None:
        pass


def _fake_predictor(fakes: Fakes) -> type:
    from edgekd.search.latency import Estimate

    class Predictor:
        source = "table"

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        def describe(self) -> str:
            return "fake latency"

        def predict(self, arch: str, args: dict[str, Any]) -> Estimate:
            width = int(args.get("width", 32))
            signature = arch + json.dumps(args, sort_keys=True)
            return Estimate(signature, 100 * width, 1000 * width, fakes.p50(arch, args), "table",
                            "fake", rss_mb=fakes.rss(arch, args))  # fmt: skip

    return Predictor


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> Fakes:
    import edgekd.distill.ablate.jobs as jobs
    import edgekd.executor
    import edgekd.search.latency
    import edgekd.search.plans

    found = Fakes()
    monkeypatch.setattr(jobs, "execute", _fake_execute(found))
    monkeypatch.setattr(edgekd.executor, "make_executor", lambda *a, **k: _InThreadExecutor())
    monkeypatch.setattr(edgekd.search.latency, "LatencyPredictor", _fake_predictor(found))

    def paired_ce_config(cfg: Any, teacher: Path) -> tuple[Any, list[str]]:
        from edgekd.config import resolve_recipe

        return replace(cfg, distill=resolve_recipe("ce")), []

    # the real one plans with the data; the fake teacher is only a sidecar
    monkeypatch.setattr(edgekd.search.plans, "paired_ce_config", paired_ce_config)
    return found


def _spec(teacher: Path, out: Path, **kw: Any) -> Any:
    from edgekd.search import SearchSpec

    base = {"trials": 2, "epochs": 2, "archs": ("tcn_tiny",), "export": False, "pruner": "none",
            "finalists": 1, "final_seeds": 1, "final_epochs": 3}  # fmt: skip
    return SearchSpec(teacher=teacher, out=out, **{**base, **kw})


def _study(out: Path) -> Any:
    import optuna

    from edgekd.search.run import STUDY_NAME

    return optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{out / 'study.db'}")


DEFAULT_ANCHOR = {"arch": "tcn_tiny", "args": {"width": 32, "levels": 4, "kernel_size": 5},
                  "recipe": "default", "tau": None, "alpha": None, "lr": 0.003}  # fmt: skip


# --- 1. the default is the anchor ------------------------------------------------------------


def test_the_default_is_the_first_trial_and_is_reported(
    fake_teacher: Path, tmp_path: Path, fakes: Fakes
) -> None:
    from edgekd.search import run_search

    out = tmp_path / "s"
    report = run_search(_spec(fake_teacher, out, trials=2), log=lambda line: None)
    first = _study(out).trials[0]
    assert first.user_attrs["anchor"] is True  # enqueued first, as the default
    assert first.user_attrs["candidate"] == DEFAULT_ANCHOR
    assert first.params["arch"] == "tcn_tiny" and first.params["recipe"] == "default"
    assert first.state.name == "COMPLETE"
    assert fakes.trained[0]["model"] == {"arch": "tcn_tiny", "args": DEFAULT_ANCHOR["args"]}
    anchor = json.loads((out / "search.json").read_text())["anchor"]
    assert anchor == report["anchor"]
    # the anchor's final-stage entry, beside its trial's figure
    assert anchor["trial"] == 0 and anchor["anchor"] and anchor["trial_val_acc"] == 50.0
    assert anchor["val"]["accuracy"]["kd"]["mean"] == 50.0 and not anchor["over_budget"]
    assert "Anchor (the default: tcn_tiny" in (out / "pareto.md").read_text()


def test_an_anchor_over_budget_is_trained_flagged_and_never_chosen(
    fake_teacher: Path, tmp_path: Path, fakes: Fakes
) -> None:
    from edgekd.search import run_search
    from edgekd.search.run import budget_constraints

    out = tmp_path / "s"
    fakes.p50 = lambda arch, args: args["width"] / 10  # the default width 32: 3.2 ms
    fakes.score = lambda cfg: 0.9 if cfg["model"]["args"]["width"] == 32 else 0.6
    lines: list[str] = []
    report = run_search(_spec(fake_teacher, out, trials=3, budget_ms=2.5), log=lines.append)
    anchor = report["anchor"]
    assert anchor["trial"] == 0 and anchor["trial_val_acc"] == 90.0
    assert anchor["trial_over_budget"] == anchor["over_budget"] == "p50 3.2000 ms > --budget-ms 2.5"
    assert fakes.trained[0]["model"]["args"]["width"] == 32  # trained although over budget
    assert any("trained although over budget" in line for line in lines)
    assert budget_constraints(_study(out).trials[0])[0] == pytest.approx(0.7)  # infeasible
    # the best on validation, in the final stage too, but over budget: never chosen
    assert anchor["val"]["accuracy"]["kd"]["mean"] == 90.0
    chosen = report["chosen"]
    assert chosen is not None and chosen["trial"] != 0 and chosen["predicted_p50_ms"] <= 2.5
    assert "the default is over budget" in report["verdict"]
    # what the choice costs against the default (the fake sizes grow with width; nothing was
    # exported, so no measured p50 to compare)
    ratio = chosen["args"]["width"] / 32
    assert ratio != 1.0 and chosen["params"] / anchor["params"] == pytest.approx(ratio)
    assert (f"; it has {ratio:.1f}x the default's parameters and {ratio:.1f}x its int8 size "
            "(the default is over budget") in report["verdict"]  # fmt: skip
    assert all(r["trial"] != 0 for r in report["pareto"])
    assert "OVER BUDGET" in (out / "pareto.md").read_text()


def test_the_verdict_says_what_the_choice_costs_against_the_default() -> None:
    from edgekd.search.finals import _cost

    # the HAR headline's chosen tcn_small against the default tcn_tiny (2026-12-07)
    chosen = {"params": 186_732, "int8_kb": 200.914, "measured": {"p50_ms": 0.1081}}
    anchor = {"params": 21_292, "int8_kb": 34.5, "measured": {"p50_ms": 0.0432}}
    assert _cost(chosen, anchor) == ("; it has 8.8x the default's parameters, 5.8x its int8 size "
                                     "and 2.5x its measured p50")  # fmt: skip
    # a figure missing on either side is left out, never guessed
    assert _cost({"params": 10, "measured": None}, {"params": 5, "int8_kb": 3.0}) == (
        "; it has 2.0x the default's parameters")
    assert _cost({"params": 10}, {}) == ""


def test_the_shipped_bundle_takes_its_own_held_out_windows_and_no_stale_ones(
    tmp_path: Path,
) -> None:
    from types import SimpleNamespace

    from edgekd.search.finals import _ship

    search = SimpleNamespace(spec=SimpleNamespace(out=tmp_path))
    for trial, evals in ((1, b"windows of trial 1"), (2, None)):
        bundle = tmp_path / "finalists" / f"trial{trial}.edgekd"
        bundle.mkdir(parents=True)
        (bundle / "manifest.json").write_text(f'{{"trial": {trial}}}')
        if evals is not None:
            (tmp_path / "finalists" / f"trial{trial}.eval.npz").write_bytes(evals)
    assert _ship(search, {"bundle": str(tmp_path / "finalists/trial1.edgekd")}) == str(
        tmp_path / "chosen.edgekd")
    assert (tmp_path / "chosen.eval.npz").read_bytes() == b"windows of trial 1"
    # chosen again (a resumed search), a finalist without windows beside it: none are kept
    _ship(search, {"bundle": str(tmp_path / "finalists/trial2.edgekd")})
    assert (tmp_path / "chosen.edgekd/manifest.json").read_text() == '{"trial": 2}'
    assert not (tmp_path / "chosen.eval.npz").exists()


# --- 2. correct resume ---------------------------------------------------------------------------


def test_run_folders_are_keyed_by_the_plan_digest(fake_teacher: Path, tmp_path: Path) -> None:
    from edgekd.search.plans import plan_digest, run_folder, train_config
    from edgekd.search.space import Candidate

    spec = _spec(fake_teacher, tmp_path, seed=3)
    a = train_config(spec, Candidate("tcn_tiny", {"width": 8}, "kd", 2.0, 0.5, 0.003), epochs=2)
    b = train_config(spec, Candidate("tcn_tiny", {"width": 16}, "kd", 2.0, 0.5, 0.003), epochs=2)
    assert a.train.seed == b.train.seed == 3
    assert plan_digest(a, fake_teacher) == plan_digest(replace(a), fake_teacher)  # stable
    assert run_folder(tmp_path, a, fake_teacher) != run_folder(tmp_path, b, fake_teacher)
    c = replace(a, train=replace(a.train, seed=4))
    assert run_folder(tmp_path, a, fake_teacher) != run_folder(tmp_path, c, fake_teacher)


def test_a_resumed_search_never_takes_a_run_of_another_plan(
    fake_teacher: Path, tmp_path: Path, fakes: Fakes
) -> None:
    """The final runs for seeds 0 and 1: a resumed search with more trials has another finalist;
    its final and CE runs must be trained for it, not read from the first search's runs of the
    same seeds."""
    from edgekd.search import run_search

    out = tmp_path / "s"
    counter = iter(range(1000))
    scores: dict[str, float] = {}

    def score(cfg: dict[str, Any]) -> float:  # each new student scores higher than the last
        key = json.dumps(cfg["model"], sort_keys=True)
        if key not in scores:
            scores[key] = 0.5 + next(counter) / 100
        return scores[key] + (0.0 if cfg["distill"]["classifier_loss"] == "none" else 0.001)

    fakes.score = score
    first = run_search(_spec(fake_teacher, out, trials=1, final_seeds=2), log=lambda x: None)
    assert first["chosen"]["trial"] == 0  # the anchor
    second = run_search(_spec(fake_teacher, out, trials=2, final_seeds=2), log=lambda x: None)
    chosen = second["chosen"]
    assert chosen["trial"] != first["chosen"]["trial"]
    model = {"arch": chosen["arch"], "args": chosen["args"]}
    # every final run of the second search's chosen finalist is a run of its student
    expected = scores[json.dumps(model, sort_keys=True)]
    acc = chosen["val"]["accuracy"]
    assert acc["ce"]["mean"] == pytest.approx(100 * expected)
    assert acc["kd"]["mean"] == pytest.approx(100 * (expected + 0.001))
    for runs in chosen["runs"].values():
        assert sorted(runs) == ["0", "1"]
        for folder in runs.values():
            trained = json.loads((Path(folder) / "trained.json").read_text())
            assert trained["model"] == model


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seed", "-1"], r"train.seed \(--seed\) must be between 0 and"),
        (["--batch-size", "1"], r"train.batch_size \(--batch-size\) must be >= 2"),
        (["--epochs", "0"], r"train.epochs \(--epochs\) must be >= 1"),
        (["--budget-ms", "-1"], "--budget-ms must be > 0"),
        (["--budget-kb", "nan"], "--budget-kb must be > 0"),
        (["--budget-rss-mb", "0"], "--budget-rss-mb must be > 0"),
        (["--target", "jetson-orin-nano", "--budget-rss-mb", "90"],
         "--budget-rss-mb is measured on this machine, which is not --target jetson-orin-nano"),
        (["--jobs", "0"], "--jobs must be at least 1"),
        (["--threads", "0"], "--threads must be at least 1"),
        (["--archs", "nope"], "--archs nope: not a registered student"),
        (["--address", "x:1"], "--address names a Ray cluster"),
        (["--latency-table", "missing.json"], "--latency-table missing.json: file not found"),
    ],
)
def test_a_refused_start_leaves_nothing_behind_and_the_corrected_rerun_works(
    fake_teacher: Path, tmp_path: Path, fakes: Fakes, args: list[str], message: str
) -> None:
    out = tmp_path / "s"
    base = ["search", "--teacher", str(fake_teacher), "--out", str(out), "--archs", "tcn_tiny",
            "--trials", "1", "--epochs", "1", "--no-export"]  # fmt: skip
    refused = run_cli([*base, *args])
    assert refused.exit_code == 2, refused.output
    assert re.search(message, refused.output), refused.output
    assert not out.exists()  # no settings.json, no study.db, not even the folder
    rerun = run_cli(base)
    assert rerun.exit_code == 0, rerun.output
    assert (out / "search.json").is_file()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"seed": -1}, r"train.seed \(--seed\) must be between 0 and"),
        ({"batch_size": 1}, r"train.batch_size \(--batch-size\) must be >= 2"),
        ({"budget_ms": 0.0}, "--budget-ms must be > 0"),
        ({"archs": ("nope",)}, "--archs nope: not a registered student"),
        ({"executor": "dask"}, "--executor 'dask' is not one of"),
    ],
)
def test_the_api_checks_every_option_before_writing(
    fake_teacher: Path, tmp_path: Path, fakes: Fakes, options: dict[str, Any], message: str
) -> None:
    """`run_search` itself (the Python API takes no CLI checks) refuses before writing."""
    from edgekd.errors import ConfigError
    from edgekd.search import run_search

    out = tmp_path / "s"
    with pytest.raises(ConfigError, match=message):
        run_search(_spec(fake_teacher, out, trials=1, **options), log=lambda x: None)
    assert not out.exists()
    report = run_search(_spec(fake_teacher, out, trials=1), log=lambda x: None)
    assert report["counts"]["complete"] == 1


# --- 3. Optuna as its authors intend -------------------------------------------------------------


def test_the_sampler_is_multivariate_tpe_with_constraints_and_constant_liar_in_parallel(
    fake_teacher: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import optuna

    from edgekd.search.run import budget_constraints, open_study

    made: list[dict[str, Any]] = []
    real = optuna.samplers.TPESampler

    def recording(**kw: Any) -> Any:
        if kw:  # create_study's own default sampler takes no arguments
            made.append(kw)
        return real(**kw)

    monkeypatch.setattr(optuna.samplers, "TPESampler", recording)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    open_study(optuna, _spec(fake_teacher, tmp_path / "a", jobs=2))
    open_study(optuna, _spec(fake_teacher, tmp_path / "b", jobs=1))
    assert made[0]["multivariate"] is True and made[0]["constant_liar"] is True
    assert made[1]["constant_liar"] is False
    assert made[0]["constraints_func"] is budget_constraints


def test_trials_in_parallel_are_each_trained_once(
    fake_teacher: Path, tmp_path: Path, fakes: Fakes
) -> None:
    from edgekd.search import run_search

    out = tmp_path / "s"
    report = run_search(_spec(fake_teacher, out, trials=4, jobs=2), log=lambda x: None)
    trained = [r for r in report["trials"] if r["state"] == "complete"]
    assert len(trained) == 4 and report["anchor"]["trial"] == 0
    assert len({r["folder"] for r in trained}) == len(fakes.trained) == 4


def test_over_budget_draws_fail_with_their_reason_and_constraints_reach_the_sampler(
    fake_teacher: Path, tmp_path: Path, fakes: Fakes
) -> None:
    from edgekd.search import run_search

    out = tmp_path / "s"
    fakes.p50 = lambda arch, args: args["width"] / 10
    report = run_search(_spec(fake_teacher, out, trials=4, budget_ms=2.5), log=lambda x: None)
    trials = _study(out).trials
    rejected = [t for t in trials if "rejected" in t.user_attrs]
    assert rejected, "the space has widths over budget: some draws must have been rejected"
    for t in rejected:
        assert t.state.name == "FAIL" and t.user_attrs["rejected"].startswith("p50 ")
        assert t.user_attrs["constraint"][0] > 0
    assert not any(t.state.name == "PRUNED" for t in trials)
    for t in trials:
        if t.state.name == "COMPLETE":  # Optuna stored what constraints_func returned
            assert list(t.system_attrs["constraints"]) == t.user_attrs["constraint"]
    assert report["counts"]["rejected"] == len(rejected)
    assert len(fakes.trained) == 4


def test_a_repeated_candidate_is_told_the_earlier_value(
    fake_teacher: Path, tmp_path: Path, fakes: Fakes
) -> None:
    import optuna

    from edgekd.search import run_search
    from edgekd.search.run import open_study

    out = tmp_path / "s"
    out.mkdir()
    spec = _spec(fake_teacher, out, trials=3)
    study = open_study(optuna, spec)
    params = {"arch": "tcn_tiny", "tcn_tiny.width": 8, "tcn_tiny.levels": 2,
              "tcn_tiny.kernel_size": 3, "recipe": "kd", "tau": 2.0, "alpha": 0.5, "lr": 0.01}
    study.enqueue_trial(params)
    study.enqueue_trial(params)  # the same candidate again
    fakes.score = lambda cfg: 0.77 if cfg["model"]["args"]["width"] == 8 else 0.5
    report = run_search(spec, log=lambda x: None)
    first, again = _study(out).trials[:2]
    assert first.state.name == again.state.name == "COMPLETE"
    assert again.value == first.value == 0.77 and again.user_attrs["repeat_of"] == 0
    widths = [cfg["model"]["args"]["width"] for cfg in fakes.trained]
    assert widths.count(8) == 1  # trained once
    assert report["counts"]["repeat"] == 1 and report["counts"]["complete"] == 3


def test_a_failing_trial_is_recorded_and_the_search_goes_on(
    fake_teacher: Path, tmp_path: Path, fakes: Fakes
) -> None:
    from edgekd.search import run_search

    out = tmp_path / "s"
    fakes.fail = lambda cfg, n: RuntimeError("boom: out of cheese") if n == 2 else None
    report = run_search(_spec(fake_teacher, out, trials=3), log=lambda x: None)
    failed = [t for t in _study(out).trials if t.state.name == "FAIL"]
    assert len(failed) == 1
    assert failed[0].user_attrs["error"] == "RuntimeError: boom: out of cheese"
    assert report["counts"]["complete"] == 3 and report["counts"]["fail"] == 1
    row = next(r for r in report["trials"] if r["state"] == "fail")
    assert row["error"] == "RuntimeError: boom: out of cheese"


def test_failures_in_a_row_stop_the_search_with_a_clear_message(
    fake_teacher: Path, tmp_path: Path, fakes: Fakes
) -> None:
    from edgekd.search import run_search
    from edgekd.search.run import MAX_FAILURES_IN_A_ROW, SearchStopped

    out = tmp_path / "s"
    fakes.fail = lambda cfg, n: ValueError(f"bad {n}") if n > 1 else None
    with pytest.raises(SearchStopped, match=rf"{MAX_FAILURES_IN_A_ROW} trials failed in a row"):
        run_search(_spec(fake_teacher, out, trials=6), log=lambda x: None)
    states = [t.state.name for t in _study(out).trials]
    assert states == ["COMPLETE"] + ["FAIL"] * MAX_FAILURES_IN_A_ROW


def test_a_lost_worker_is_retried_with_the_same_candidate(
    fake_teacher: Path, tmp_path: Path, fakes: Fakes
) -> None:
    from edgekd.executor import JobLost
    from edgekd.search import run_search

    out = tmp_path / "s"
    fakes.fail = lambda cfg, n: JobLost("job lost: its process exited with code -9") if n == 2 \
        else None  # fmt: skip
    report = run_search(_spec(fake_teacher, out, trials=2), log=lambda x: None)
    trials = _study(out).trials
    lost = next(t for t in trials if t.state.name == "FAIL")
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == lost.number)
    assert retry.state.name == "COMPLETE" and retry.params == lost.params
    assert retry.user_attrs["folder"] == lost.user_attrs["folder"]
    assert report["counts"]["retried"] == 1 and report["counts"]["complete"] == 2


def test_a_trial_a_killed_search_left_running_is_retried_by_optuna(
    fake_teacher: Path, tmp_path: Path, fakes: Fakes
) -> None:
    """As SIGKILL leaves it: a RUNNING trial with its drawn parameters. The rerun fails it and
    Optuna's retry callback re-enqueues the same parameters (public API only; no Trial rebuilt
    from a private trial id), so the same plan and run folder are used."""
    import warnings

    import optuna

    from edgekd.search import run_search
    from edgekd.search.run import _check_settings, open_study

    out = tmp_path / "s"
    out.mkdir()
    spec = _spec(fake_teacher, out, trials=2)
    _check_settings(out, spec.settings())
    study = open_study(optuna, spec)
    params = {"arch": "tcn_tiny", "tcn_tiny.width": 16, "tcn_tiny.levels": 3,
              "tcn_tiny.kernel_size": 7, "recipe": "kd", "tau": 4.0, "alpha": 0.9, "lr": 0.001}
    study.enqueue_trial(params, user_attrs={"anchor": False})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ask() outside optimize with a heartbeat: a warning
        killed = study.ask()
    from edgekd.search.space import draw

    draw(killed, ["tcn_tiny"])
    lines: list[str] = []
    run_search(spec, log=lines.append)
    trials = _study(out).trials
    assert trials[0].state.name == "FAIL"  # the killed one: failed, then retried
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == 0)
    assert retry.state.name == "COMPLETE" and retry.params == params
    assert "resuming 1 trial(s) a stopped search left running: 0" in lines
    source = "".join(p.read_text() for p in Path("edgekd/search").glob("*.py"))
    assert "_trial_id" not in source


# --- 4. two stages: finalists retrained in full, chosen on validation, test read after ---------


def _width(cfg: dict[str, Any]) -> int:
    return int(cfg["model"]["args"]["width"])


def test_finalists_and_the_anchor_are_retrained_in_full_on_fixed_seeds_with_ce_pairs(
    fake_teacher: Path, tmp_path: Path, fakes: Fakes
) -> None:
    from edgekd.search import run_search

    out = tmp_path / "s"
    fakes.score = lambda cfg: _width(cfg) / 100 + (
        0.0 if cfg["distill"]["classifier_loss"] == "none" else 0.005
    )
    lines: list[str] = []
    spec = _spec(fake_teacher, out, trials=4, finalists=2, final_seeds=2, final_epochs=5, seed=7)
    report = run_search(spec, log=lines.append)
    trials = [r for r in report["trials"] if r["state"] == "complete"]
    best = sorted({_width({"model": r}) for r in trials if not r["anchor"]}, reverse=True)
    finalists = report["finalists"]
    assert report["final"]["seeds"] == [7, 8]
    assert sum(e["anchor"] for e in finalists) == 1  # the anchor is always a finalist
    # every finalist: its recipe and CE, each on both seeds, on the full schedule (5 epochs)
    assert len(fakes.finals) == 2 * 2 * len(finalists)
    assert all(cfg["train"]["epochs"] == 5 for cfg in fakes.finals)
    assert sorted(cfg["train"]["seed"] for cfg in fakes.finals) == sorted([7, 8] * 2 * len(
        finalists))  # fmt: skip
    for e in finalists:
        assert sorted(e["runs"]["kd"]) == sorted(e["runs"]["ce"]) == ["7", "8"]
        gain = e["val"]["accuracy"]["kd_minus_ce"]
        assert gain["mean"] == pytest.approx(0.5) and gain["n"] == 2  # 0.005 as percent
        assert e["test"]["accuracy"]["kd"]["mean"] == pytest.approx(e["val"]["accuracy"]["kd"][
            "mean"] - 10)  # fmt: skip
    chosen = report["chosen"]
    assert chosen["arch"] == "tcn_tiny" and chosen["args"]["width"] == max(
        [*best, 32]
    )  # the widest is best here
    assert any(line.startswith("final stage: ") and "trainings" in line for line in lines)
    assert "Final stage:" in (out / "pareto.md").read_text()
    assert ("then the final stage: the best 2 within budget and the anchor retrained for 5 "
            "epochs on 2 seeds, each with a CE pair (up to 12 trainings)") in lines[0]


def test_the_default_stays_when_no_finalist_beats_it_in_full(
    fake_teacher: Path, tmp_path: Path, fakes: Fakes
) -> None:
    """Short trials rank fast starters first: a student that leads after 2 epochs but is
    behind the default on the full schedule must not ship."""
    from edgekd.search import run_search

    out = tmp_path / "s"

    def score(cfg: dict[str, Any]) -> float:
        default = _width(cfg) == 32 and cfg["model"]["args"]["levels"] == 4
        if cfg["train"]["epochs"] == 2:  # the exploration: the default starts slow
            return 0.5 if default else 0.8
        return 0.9 if default else 0.85

    fakes.score = score
    report = run_search(_spec(fake_teacher, out, trials=3, finalists=2, final_seeds=2),
                        log=lambda x: None)  # fmt: skip
    assert report["anchor"]["trial_val_acc"] == 50.0  # last of the trials
    assert report["chosen"]["trial"] == 0 and report["chosen"]["anchor"]
    assert report["verdict"].startswith("the default stays")
    assert "**Verdict:** the default stays" in (out / "pareto.md").read_text()


def test_the_choice_uses_validation_and_test_is_read_only_for_finalists_after_it(
    fake_teacher: Path, tmp_path: Path, fakes: Fakes, monkeypatch: pytest.MonkeyPatch
) -> None:
    import edgekd.search.finals as finals
    from edgekd.search import run_search

    out = tmp_path / "s"
    fakes.score = lambda cfg: _width(cfg) / 100
    order: list[str] = []
    real_choose, real_scores = finals.choose_finalist, finals._scores

    def choose(entries: list[dict[str, Any]]) -> Any:
        assert all(e["test"] is None for e in entries)  # not read yet
        order.append("choose")
        return real_choose(entries)

    def scores(final: Any, results: Any, split: str) -> Any:
        order.append(split)
        return real_scores(final, results, split)

    monkeypatch.setattr(finals, "choose_finalist", choose)
    monkeypatch.setattr(finals, "_scores", scores)
    report = run_search(_spec(fake_teacher, out, trials=3, finalists=1), log=lambda x: None)
    assert order.index("choose") < order.index("test")
    assert order.count("test") == len(report["finalists"])  # once per finalist
    assert all("test" not in row for row in (*report["trials"], *report["pareto"]))
    assert "test acc" not in (out / "pareto.md").read_text().split("Final stage:")[0]


def test_a_finalist_whose_final_run_fails_is_out_and_the_others_are_judged(
    fake_teacher: Path, tmp_path: Path, fakes: Fakes, monkeypatch: pytest.MonkeyPatch
) -> None:
    import edgekd.distill.ablate.jobs as jobs
    from edgekd.search import run_search

    out = tmp_path / "s"

    def default(model: dict[str, Any]) -> bool:
        return model["args"] == DEFAULT_ANCHOR["args"]

    fakes.score = lambda cfg: 0.5 if default(cfg["model"]) else 0.9  # the anchor is not best
    real = jobs.execute

    def execute(job: Any) -> Any:
        if job.run.startswith("final-") and not default({"args": job.cfg.model.args}):
            raise RuntimeError("out of cheese")
        return real(job)

    monkeypatch.setattr(jobs, "execute", execute)
    report = run_search(_spec(fake_teacher, out, trials=3, finalists=1), log=lambda x: None)
    failed = [e for e in report["finalists"] if e["error"]]
    assert failed and all("out of cheese" in e["error"] for e in failed)
    assert report["chosen"]["anchor"]  # the one finalist whose runs finished
    assert "failed: " in (out / "pareto.md").read_text()


def test_final_stage_options_are_checked_before_anything_is_written(
    fake_teacher: Path, tmp_path: Path, fakes: Fakes
) -> None:
    out = tmp_path / "s"
    base = ["search", "--teacher", str(fake_teacher), "--out", str(out), "--archs", "tcn_tiny",
            "--trials", "1", "--epochs", "1", "--no-export"]  # fmt: skip
    for flag, message in (("--finalists", "--finalists must be at least 1"),
                          ("--final-seeds", "--final-seeds must be at least 1"),
                          ("--final-epochs", "--final-epochs must be at least 1")):  # fmt: skip
        refused = run_cli([*base, flag, "0"])
        assert refused.exit_code == 2 and message in refused.output, refused.output
        assert not out.exists()


def test_a_memory_budget_rejects_candidates_by_their_peak_rss(
    fake_teacher: Path, tmp_path: Path, fakes: Fakes
) -> None:
    from edgekd.search import run_search
    from edgekd.search.run import budget_constraints

    out = tmp_path / "s"
    fakes.rss = lambda arch, args: 40.0 + args["width"]  # the default width 32: 72 MB
    report = run_search(_spec(fake_teacher, out, trials=3, budget_rss_mb=60.0),
                        log=lambda x: None)  # fmt: skip
    rejected = [r for r in report["trials"] if r["state"] == "rejected"]
    assert rejected and all(r["rejected"].startswith("peak RSS ") for r in rejected)
    assert all(r["rejected"].endswith("> --budget-rss-mb 60") for r in rejected)
    assert report["anchor"]["over_budget"] == "peak RSS 72.0 MB > --budget-rss-mb 60"
    for t in _study(out).trials:
        assert len(budget_constraints(t)) == 3
        if "rejected" in t.user_attrs:
            assert budget_constraints(t)[2] > 0
    assert report["budget"]["rss_mb"] == 60.0


def test_finalists_are_judged_on_their_measured_bundle_not_the_prediction(
    fake_teacher: Path, tmp_path: Path, fakes: Fakes, monkeypatch: pytest.MonkeyPatch
) -> None:
    import edgekd.search.finals as finals
    from edgekd.search import run_search

    out = tmp_path / "s"
    fakes.score = lambda cfg: 0.5 if cfg["model"]["args"] == DEFAULT_ANCHOR["args"] else 0.9

    def measure(search: Any, final: Any, entry: dict[str, Any]) -> None:
        # every prediction was 0.01 ms; the best trial's trained bundle measures 2 ms
        entry["measured"] = {"p50_ms": 0.01 if final.anchor else 2.0, "rss_mb": 50.0}
        entry["measured_note"] = "measured by the test"

    monkeypatch.setattr(finals, "_measure", measure)
    report = run_search(_spec(fake_teacher, out, trials=3, finalists=1, budget_ms=1.0),
                        log=lambda x: None)  # fmt: skip
    best = next(e for e in report["finalists"] if not e["anchor"])
    assert best["predicted_p50_ms"] == 0.01 and best["trial_val_acc"] == 90.0
    assert best["over_budget"] == "p50 2.0000 ms > --budget-ms 1"
    assert report["chosen"]["anchor"]  # the only finalist within budget, as measured
    assert report["verdict"].endswith(f"(trial {best['trial']} scored higher but p50 2.0000 ms "
                                      "> --budget-ms 1)")  # fmt: skip
    assert "Trial " in (out / "pareto.md").read_text() and "over budget" in (
        out / "pareto.md").read_text()  # fmt: skip
