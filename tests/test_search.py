"""`edgekd search` end to end: a 2-trial local search, SIGKILL + rerun resume, a search on a
local Ray instance, and errors that name the offending option."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_cli

# 2-epoch trials on 1500 labelled windows, the small TCN space, short timing; a final stage of
# the best trial and the anchor, 2 epochs, 1 seed.
TINY = [
    "--epochs", "2", "--limit", "1500", "--no-unlabelled", "--timing-s", "0.2",
    "--archs", "tcn_tiny", "--seed", "0", "--budget-ms", "5",
    "--finalists", "1", "--final-seeds", "1", "--final-epochs", "2", "--quiet-wait-s", "5",
]  # fmt: skip


def _study(out: Path) -> object:
    import optuna

    from edgekd.search.run import STUDY_NAME

    return optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{out / 'study.db'}")


def test_two_trial_local_search_end_to_end(teacher_run: Path, tmp_path: Path) -> None:
    import edgekd.runtime as rt

    out = tmp_path / "search"
    args = ["search", "--teacher", str(teacher_run), "--out", str(out), "--target", "cpu"]
    result = run_cli([*args, "--trials", "2", "--max-drop", "100", *TINY, "--final-seeds", "2"])
    assert result.exit_code == 0, result.output
    assert re.search(r"search: [\d,]+ points .* 2 trials of 2 epochs", result.output)
    assert "eta" in result.output

    report = json.loads((out / "search.json").read_text())
    trained = [t for t in report["trials"] if t["state"] == "complete"]
    assert len(trained) == 2 and report["counts"]["complete"] == 2
    for t in trained:
        assert t["arch"] == "tcn_tiny" and t["recipe"] and t["lr"] > 0
        assert t["params"] > 1000 and t["int8_kb"] > 1 and 0 < t["p50_ms"] <= 5
        assert t["p50_source"] == "local" and 0 < t["val_acc"] <= 100
        assert (Path(t["folder"]) / "metrics.json").is_file()
    assert "measured on this machine" in report["latency_source"]

    front = report["pareto"]
    assert front and {r["trial"] for r in front} <= {t["trial"] for t in trained}
    for r in front:  # nothing on the front is dominated by another trained trial
        assert not any(
            o["val_acc"] >= r["val_acc"] and o["p50_ms"] < r["p50_ms"] for o in trained
        )
        assert "test" not in r  # the exploration never reads test

    # the final stage: the best trial besides the anchor, and the anchor (trial 0), 2 seeds
    # each, each with CE
    finalists = report["finalists"]
    best = max((t for t in trained if not t["anchor"]), key=lambda t: t["val_acc"])
    assert {e["trial"] for e in finalists} == {best["trial"], 0}
    assert report["final"]["seeds"] == [0, 1]
    chosen = report["chosen"]
    assert chosen["trial"] in {e["trial"] for e in finalists}
    means = {e["trial"]: e["val"]["accuracy"]["kd"]["mean"] for e in finalists}
    assert means[chosen["trial"]] == max(means.values())  # chosen on validation
    measured = chosen["measured"]
    assert measured["p50_ms"] > 0 and measured["rss_mb"] > 0
    assert Path(chosen["bundle"]).parent.name == "finalists"
    assert chosen["shipped"] == str(out / "chosen.edgekd")
    model = rt.load(chosen["shipped"], backend="openvino", precision="int8")
    assert model.bundle.manifest["model"]["arch_args"]["width"] == chosen["args"]["width"]
    held_out, why_not = model.bundle.held_out()  # its eval windows travel with it, checked
    assert why_not is None and held_out is not None
    # what ships is the chosen finalist's first-seed final run, never its capped trial
    shipped_from = model.bundle.manifest["provenance"]["run_dir"]
    assert shipped_from == str(Path(chosen["runs"]["kd"]["0"]).resolve())

    table = (out / "pareto.md").read_text()
    assert table.startswith("Exploration: Pareto front") and "(chosen" in table
    assert "Final stage: " in table and "**Verdict:** " in table

    # the anchor: the default student and recipe, trained first and a finalist
    anchor = report["anchor"]
    assert anchor["trial"] == 0 and anchor["recipe"] == "default" and anchor["lr"] == 0.003
    assert "Anchor (the default: tcn_tiny" in table

    # the teacher's gain at this size: each finalist with its recipe vs CE, paired by seed
    runs = chosen["runs"]  # run folders keyed by their plan's digest
    kd_runs, ce_runs = ([json.loads((Path(runs[k][str(s)]) / "metrics.json").read_text())
                         for s in (0, 1)] for k in ("kd", "ce"))  # fmt: skip
    ce_cfg = (Path(runs["ce"]["1"]) / "config.yaml").read_text()
    assert "classifier_loss: none" in ce_cfg and "seed: 1" in ce_cfg
    gain = chosen["test"]["accuracy"]["kd_minus_ce"]
    assert gain["n"] == 2 and gain["lo"] <= gain["mean"] <= gain["hi"]
    diffs = [100 * (k["test"]["accuracy"] - c["test"]["accuracy"])
             for k, c in zip(kd_runs, ce_runs, strict=True)]  # fmt: skip
    assert gain["mean"] == pytest.approx(sum(diffs) / 2, abs=1e-6)
    assert (out / "pareto.png").stat().st_size > 1000


def test_the_ce_pair_matches_the_optimizer_steps_and_names_what_else_differs(
    teacher_run: Path, tmp_path: Path
) -> None:
    from edgekd.distill.plan import TeacherRun, load_data, resolve_plan
    from edgekd.search.plans import paired_ce_config, train_config
    from edgekd.search.run import SearchSpec
    from edgekd.search.space import Candidate

    spec = SearchSpec(teacher=teacher_run, out=tmp_path, epochs=6, limit=1500)
    cand = Candidate("tcn_tiny", {"width": 16}, "kd", 4.0, 0.5, 0.003)
    chosen = train_config(spec, cand, epochs=6)
    ce, told = paired_ce_config(chosen, teacher_run)
    teacher = TeacherRun.read(teacher_run)
    data = load_data(chosen, teacher, None)
    mine, theirs = resolve_plan(chosen, data, teacher), resolve_plan(ce, data, teacher)
    assert mine.unlabelled > 0 and theirs.unlabelled == 0  # distillation adds the unlabelled
    assert chosen.train.epochs == 6 and ce.train.epochs > 6
    # as many optimizer steps as the nearest whole epoch allows, on the same lr
    assert abs(mine.total_steps - theirs.total_steps) <= theirs.steps_per_epoch / 2
    assert ce.train.lr == chosen.train.lr == 0.003 and ce.model == chosen.model
    assert f"{mine.unlabelled:+,} unlabelled windows" in told
    assert not any("loss" in t or "teacher" in t or "epochs" in t for t in told)


def test_sigkill_then_rerun_continues_the_study(teacher_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "search"
    cmd = [
        sys.executable, "-m", "edgekd", "search", "--teacher", str(teacher_run), "--out",
        str(out), "--trials", "3", "--no-export", *TINY, "--epochs", "1", "--final-epochs", "1",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env)
        deadline = time.monotonic() + 240
        while (not list(out.glob("runs/*/metrics.json")) and proc.poll() is None
               and time.monotonic() < deadline):  # fmt: skip
            time.sleep(0.2)
        done = list(out.glob("runs/*/metrics.json"))
        assert done, (tmp_path / "first.log").read_text()
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    first_done = done[0]
    weights = first_done.parent / "model.safetensors"
    stamp = (weights.stat().st_mtime_ns, first_done.stat().st_mtime_ns)
    left_running = [t.number for t in _study(out).trials if t.state.name == "RUNNING"]  # type: ignore[attr-defined]

    rerun = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    study = _study(out)
    trials = study.trials  # type: ignore[attr-defined]
    assert "RUNNING" not in [t.state.name for t in trials]
    trained = [t for t in trials if t.state.name == "COMPLETE" and "repeat_of" not in t.user_attrs]
    assert len(trained) == 3, [t.state.name for t in trials]
    # none lost, none trained twice: three plans, three run folders
    assert len({t.user_attrs["folder"] for t in trained}) == 3
    assert (weights.stat().st_mtime_ns, first_done.stat().st_mtime_ns) == stamp  # not retrained
    for number in left_running:  # in flight at the kill: failed, then retried with its params
        assert trials[number].state.name == "FAIL"
        retry = next(t for t in trials if t.system_attrs.get("failed_trial") == number)
        assert retry.params == trials[number].params
    if left_running:
        assert f"resuming {len(left_running)} trial(s)" in rerun.stderr
    report = json.loads((out / "search.json").read_text())
    assert report["counts"]["complete"] == 3 and report["chosen"]["bundle"] is None


def test_two_trial_search_on_a_local_ray_instance(
    teacher_run: Path, tmp_path: Path, local_ray: Any
) -> None:
    from edgekd.search import SearchSpec, run_search

    lines: list[str] = []
    spec = SearchSpec(
        teacher=teacher_run, out=tmp_path / "ray", trials=2, epochs=2, limit=1500,
        unlabelled=False, archs=("tcn_tiny",), executor="ray", jobs=2, budget_ms=5,
        timing_s=0.2, export=False, finalists=1, final_seeds=1, final_epochs=2,
    )  # fmt: skip
    report = run_search(spec, log=lines.append)
    assert local_ray.is_initialized()  # the search used the running instance and left it running
    assert report["counts"]["complete"] == 2, "\n".join(lines)
    for t in report["trials"]:
        assert (Path(t["folder"]) / "metrics.json").is_file()
    # The trials ran as Ray tasks (the executor's `_ray_call`), not in local processes: Ray's
    # task events (in its GCS; no dashboard needed) list them, each on a Ray worker.
    tasks: dict[str, str] = {}
    deadline = time.monotonic() + 30  # task events reach the GCS within a second or so
    while len(tasks) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
        tasks = {e["args"]["task_id"]: e["tid"] for e in local_ray.timeline()
                 if str(e.get("name", "")).endswith("executor._ray_call")
                 and "task_id" in e.get("args", {})}  # fmt: skip
    assert len(tasks) >= 2, f"{len(tasks)} Ray task(s) of edgekd.executor._ray_call"
    assert all(str(tid).startswith("worker:") for tid in tasks.values()), tasks


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--budget-ms", "-1"], "--budget-ms must be > 0, got -1"),
        (["--budget-kb", "0"], "--budget-kb must be > 0"),
        (["--trials", "0"], "--trials must be at least 1"),
        (["--target", "mars"], "unknown target 'mars'"),
        (["--target", "jetson-orin-nano"], "--target jetson-orin-nano .*--latency-table FILE"),
        (["--executor", "dask"], "--executor 'dask' is not one of local, ray"),
        (["--archs", "bcresnet_audio"], "--archs bcresnet_audio: not a registered student"),
        (["--pruner", "hyper"], "--pruner 'hyper' is not one of"),
    ],
)
def test_errors_name_the_option(
    teacher_run: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "s"
    result = run_cli(["search", "--teacher", str(teacher_run), "--out", str(out), *args])
    assert result.exit_code == 2
    assert re.search(message, result.output), result.output
    assert not out.exists()  # a refused start leaves nothing behind


def test_resume_with_other_settings_is_refused(teacher_run: Path, tmp_path: Path) -> None:
    from edgekd.errors import ConfigError
    from edgekd.search.run import SearchSpec, _check_settings

    spec = SearchSpec(teacher=teacher_run, out=tmp_path, budget_ms=0.2)
    _check_settings(tmp_path, spec.settings())
    other = SearchSpec(teacher=teacher_run, out=tmp_path, budget_ms=0.3, jobs=2)
    with pytest.raises(ConfigError, match=r"other settings \(budget_ms\)"):
        _check_settings(tmp_path, other.settings())


def test_epochs_are_reported_from_the_run_folder_and_pruned(tmp_path: Path) -> None:
    """The loop reads history.json (written by the trainer each epoch), reports each new epoch's
    validation accuracy once, and stops a trial its pruner rejects."""
    from concurrent.futures import Future

    import optuna

    from edgekd.search.run import SearchSpec, _Progress, _prune, _Running
    from edgekd.search.space import Candidate

    study = optuna.create_study(
        direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=0.7)
    )
    spec = SearchSpec(teacher=tmp_path, out=tmp_path, epochs=4)
    cand = Candidate("tcn_tiny", {"width": 8}, "default", None, None, 3e-3)

    def running(history: list[float]) -> _Running:
        trial = study.ask()
        folder = tmp_path / f"t{trial.number}"
        folder.mkdir()
        rows = [{"epoch": i + 1, "val": {"accuracy": a}} for i, a in enumerate(history)]
        (folder / "history.json").write_text(json.dumps(rows))
        return _Running(trial, cand, folder, Future(), 0.0)

    lines: list[str] = []
    good = running([0.8, 0.9])
    assert not _prune(good, spec, lines.append, _Progress(2))
    assert not _prune(good, spec, lines.append, _Progress(2))  # nothing new: nothing reported
    assert study.trials[0].intermediate_values == {1: 0.8, 2: 0.9}
    bad = running([0.5])
    assert _prune(bad, spec, lines.append, _Progress(2))
    assert bad.trial.user_attrs["pruned_at_epoch"] == 1
    assert "trial 1 pruned after epoch 1: val acc 50.00 %" in lines[-1]
    finished = running([0.5, 0.5, 0.5, 0.5])  # the last epoch is the trainer's to finish
    assert not _prune(finished, spec, lines.append, _Progress(2))


def test_a_resumed_search_counts_on_from_the_study() -> None:
    import optuna

    from edgekd.search.run import _Progress

    study = optuna.create_study(direction="maximize")
    state = optuna.trial.TrialState
    for trial_state, attrs in [(state.COMPLETE, {}), (state.PRUNED, {}), (state.PRUNED, {}),
                               (state.PRUNED, {"rejected": "p50 0.3 ms > --budget-ms 0.25"})]:
        study.add_trial(optuna.trial.create_trial(
            state=trial_state, value=0.9 if trial_state == state.COMPLETE else None,
            user_attrs=attrs))  # fmt: skip
    progress = _Progress.of_study(study, 24)
    # a rejected draw was never trained: it counts neither as trained nor as pruned
    assert (progress.done, progress.pruned, progress.rejected) == (3, 2, 1)
    assert progress.head() == "[3/24 trained, 2 pruned, 1 not trained: over budget or repeats]"


def test_pareto_front_and_plot_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgekd.search.finals import pick_finalists
    from edgekd.search.report import pareto_front, plot

    rows = [
        {"trial": 0, "val_acc": 90.0, "p50_ms": 0.10},
        {"trial": 1, "val_acc": 85.0, "p50_ms": 0.05},
        {"trial": 2, "val_acc": 84.0, "p50_ms": 0.08},  # slower and worse than trial 1
        {"trial": 3, "val_acc": 90.0, "p50_ms": 0.12},  # as accurate as trial 0, slower
        {"trial": 4, "val_acc": 95.0, "p50_ms": None},  # no latency: not placeable
        {"trial": 5, "val_acc": 85.0, "p50_ms": 0.05},  # ties trial 1: neither dominates
    ]
    assert [r["trial"] for r in pareto_front(rows)] == [1, 5, 0]
    # finalists: the best validation accuracy first; a tie goes to the faster, then the
    # smaller student; a candidate drawn twice is one finalist; the anchor joins at the end
    def row(trial: int, val: float, p50: float, params: int, width: int, anchor: bool = False
            ) -> dict[str, Any]:  # fmt: skip
        return {"trial": trial, "state": "complete", "over_budget": None, "val_acc": val,
                "p50_ms": p50, "params": params, "anchor": anchor, "arch": "tcn_tiny",
                "args": {"width": width}, "recipe": "kd", "tau": 4.0, "alpha": 0.5, "lr": 3e-3}
    rows2 = [row(0, 80.0, 0.1, 500, 32, anchor=True), row(1, 90.0, 0.12, 800, 16),
             row(2, 90.0, 0.10, 900, 24), row(3, 90.0, 0.10, 700, 20),
             row(4, 90.0, 0.10, 700, 20), row(5, 95.0, 0.3, 100, 64)]  # fmt: skip
    rows2[5]["over_budget"] = "p50 0.3000 ms > --budget-ms 0.25"
    assert [r["trial"] for r in pick_finalists(rows2, 2)] == [3, 2, 0]
    assert [r["trial"] for r in pick_finalists(rows2, 9)] == [3, 2, 1, 0]
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    note = plot({"trials": [], "pareto": [], "budget": {}}, tmp_path / "p.png")
    assert note.startswith("no Pareto plot: matplotlib is not installed")
    assert not (tmp_path / "p.png").exists()
