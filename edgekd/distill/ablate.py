"""The distillation ablation of METHOD.md ("What must be shown"): every run over several seeds,
paired statistics against the CE-only student, and the restricted-teacher control.

Layout of an ablation folder:
  ablate.json                      results (percent units), written when every job has finished
  ablate.png                       bar chart of test accuracy and macro-F1 (mean +- s.e.)
  settings.json                    what the runs were made with; a resume must match it
  runs/<run>/seed<s>/final/        a `distill` run folder on the teacher's full training split
  runs/<run>/seed<s>/fold<i>of<k>/ a cross-validation fold (`--folds k`), for model selection

Resume: a run folder with `metrics.json` is finished and reused; one with a train state is
continued (`distill(resume=True)`); anything else is started afresh.

Statistics (all in percentage points): per run, mean +- standard error over seeds; the gain over
CE-only as the mean of per-seed differences (paired by seed) with a two-sided 95% t-interval;
the share of the teacher-student gap closed, (run - ce) / (teacher - ce), on means; and, for each
run X that has its restricted-teacher control X_restricted, the cross-modal gain X - X_restricted
(paired by seed, with its interval) and its share of X's gain over CE.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgekd.config import RECIPES, DistillConfig, RunConfig, resolve_recipe, to_dict
from edgekd.errors import ConfigError
from edgekd.io import atomic_write_json

RESTRICTED = "_restricted"
CORRUPT_SHARE = 0.3  # share of windows whose teacher-side modalities become noise (paper_corrupt)
METRICS = ("accuracy", "macro_f1")

# Two-sided 95% quantiles of Student's t, t_{0.975, df}, df = 1..30 (standard tables).
T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
Z975 = 1.959963984540054


def _runs_table() -> dict[str, tuple[str, DistillConfig]]:
    """Run name -> (meaning, distillation config); built on call so `default` is current."""
    none = RECIPES["ce"]
    paper = RECIPES["paper"]
    return {
        "ce": ("student, CE only", none),
        "hard_l2": ("+ hard_l2", replace(none, feature_loss="hard_l2")),
        "logit_kd": ("+ logit_kd (Hinton, recipe kd)", RECIPES["kd"]),
        "soft_margin": ("+ soft_margin", replace(none, feature_loss="soft_margin")),
        "soft_both": (
            "+ soft_margin + soft_teacher_head",
            replace(paper, quality="none"),
        ),
        "paper": ("+ both + quality weights (recipe paper)", paper),
        "paper_corrupt": (
            f"paper, {CORRUPT_SHARE:.0%} of teacher-side inputs noise",
            replace(paper, teacher_corrupt=CORRUPT_SHARE),
        ),
        "default": ("shipped default recipe", resolve_recipe("default")),
    }


DEFAULT_RUNS = (
    "teacher", "ce", "hard_l2", "logit_kd", "soft_margin", "soft_both", "paper", "paper_corrupt",
    "default", "default_restricted",
)  # fmt: skip


def run_names() -> list[str]:
    """Every accepted run name: the table's, `teacher`, and `X_restricted` for each KD run X."""
    base = list(_runs_table())
    return ["teacher", *base, *(f"{n}{RESTRICTED}" for n in base if n != "ce")]


def run_config(name: str) -> tuple[str, DistillConfig]:
    """(meaning, DistillConfig) of a run name; ConfigError for an unknown one."""
    table = _runs_table()
    if name.endswith(RESTRICTED) and name[: -len(RESTRICTED)] in table:
        base = name[: -len(RESTRICTED)]
        if base != "ce":
            meaning, cfg = table[base]
            return f"{meaning}, teacher sees the student's modality only", replace(
                cfg, teacher_view="student"
            )
    if name in table:
        return table[name]
    raise ConfigError(f"unknown run {name!r}; choose from {', '.join(run_names())}")


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


def gap_closed(run: float, ce: float, teacher: float) -> float | None:
    """Share of the teacher - CE gap that `run` closes, (run - ce) / (teacher - ce); None when
    the teacher is not better than CE (no gap to close)."""
    gap = teacher - ce
    return None if gap <= 0 else (run - ce) / gap


# --- jobs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One `distill` run of the ablation (picklable: it crosses into worker processes)."""

    run: str
    seed: int
    fold: tuple[int, int] | None
    cfg: RunConfig
    teacher: Path
    out: Path
    threads: int


def _metrics_of(folder: Path) -> dict[str, Any] | None:
    path = folder / "metrics.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def execute(job: Job) -> dict[str, Any]:
    """Run (or continue, or reuse) one job; returns its metrics.json content."""
    from edgekd.checkpoint import STATE_FILE
    from edgekd.distill.trainer import distill
    from edgekd.reference import torch_threads

    done = _metrics_of(job.out)
    if done is not None:
        return done
    resume = (job.out / STATE_FILE).is_file()
    if not resume and job.out.exists():
        shutil.rmtree(job.out)  # killed before its first epoch finished: nothing to keep
    with torch_threads(job.threads):
        return distill(job.cfg, job.teacher, job.out, resume=resume, progress=False, fold=job.fold)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def run_jobs(jobs: Sequence[Job], workers: int, log: Callable[[str], None]) -> list[dict]:
    """Execute jobs, `workers` processes at a time (in this process when workers == 1); returns
    each job's metrics, in the order of `jobs`."""
    results: dict[int, dict] = {}
    if workers == 1:
        for i, job in enumerate(jobs):
            results[i] = execute(job)
            log(_done_line(job, results[i], i + 1, len(jobs)))
        return [results[i] for i in range(len(jobs))]
    import multiprocessing

    # spawn: a forked child would inherit torch's thread pools and this process's state
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending = {pool.submit(execute, job): i for i, job in enumerate(jobs)}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_EXCEPTION)
            for future in finished:
                i = pending.pop(future)
                error = future.exception()
                if error is not None:
                    for other in pending:
                        other.cancel()
                    raise error
                results[i] = future.result()
                log(_done_line(jobs[i], results[i], len(results), len(jobs)))
    return [results[i] for i in range(len(jobs))]


def _done_line(job: Job, metrics: dict, i: int, n: int) -> str:
    where = f"fold {job.fold[0] + 1}/{job.fold[1]}" if job.fold else "final"
    val, test = metrics["val"], metrics["test"]
    shown = f"val acc {100 * val['accuracy']:.2f}"
    if job.fold is None:
        shown += f"  test acc {100 * test['accuracy']:.2f} f1 {100 * test['macro_f1']:.2f}"
    return f"[{i}/{n}] {job.run} seed {job.seed} {where}: {shown}"


# --- the ablation -------------------------------------------------------------------------


@dataclass(frozen=True)
class AblationSpec:
    """What to run: run names, seeds 0..seeds-1, optional CV folds, the base run config (its
    train/data/model sections; the distill section is each run's), processes in parallel."""

    teacher: Path
    out: Path
    runs: tuple[str, ...] = DEFAULT_RUNS
    seeds: int = 5
    folds: int | None = None
    jobs: int = 1
    base: RunConfig = RunConfig()


def _check(spec: AblationSpec) -> list[str]:
    """Validated training run names (CE first: every gain is measured against it)."""
    if spec.seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {spec.seeds}")
    if spec.jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {spec.jobs}")
    if spec.folds is not None and spec.folds < 2:
        raise ConfigError(f"--folds must be at least 2 (or omitted), got {spec.folds}")
    if not (Path(spec.teacher) / "metrics.json").is_file():
        raise ConfigError(f"{spec.teacher} is not a finished teacher run (no metrics.json)")
    names = [n for n in dict.fromkeys(spec.runs) if n != "teacher"]
    for name in names:
        run_config(name)
    return ["ce", *(n for n in names if n != "ce")]


def _settings(spec: AblationSpec, names: Iterable[str]) -> dict[str, Any]:
    base = to_dict(spec.base)
    base.pop("distill")
    return {
        "teacher": str(Path(spec.teacher).resolve()),
        "base": base,
        "runs": {n: to_dict(run_config(n)[1]) for n in names},
    }


def _check_settings(out: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """Merge with a previous ablation's settings in `out`; ConfigError where they disagree."""
    path = out / "settings.json"
    if not path.is_file():
        return settings
    old = json.loads(path.read_text())
    clash = [k for k in ("teacher", "base") if old.get(k) != settings[k]]
    clash += [n for n, c in settings["runs"].items() if old["runs"].get(n, c) != c]
    if clash:
        raise ConfigError(
            f"{out} holds an ablation made with other settings ({', '.join(clash)}); "
            "use the same options to resume it, or choose another --out"
        )
    return {**settings, "runs": {**old["runs"], **settings["runs"]}}


def plan(spec: AblationSpec, names: Sequence[str]) -> list[Job]:
    """Every job of the ablation, final fits first (so a short ablation reports test early)."""
    threads = max(1, _cores() // spec.jobs)
    jobs: list[Job] = []
    folds = [None] if spec.folds is None else [None, *((i, spec.folds) for i in range(spec.folds))]
    for fold in folds:
        for seed in range(spec.seeds):
            for name in names:
                cfg = replace(
                    spec.base,
                    distill=run_config(name)[1],
                    train=replace(spec.base.train, seed=seed),
                )
                where = "final" if fold is None else f"fold{fold[0]}of{fold[1]}"
                out = Path(spec.out) / "runs" / name / f"seed{seed}" / where
                jobs.append(Job(name, seed, fold, cfg, Path(spec.teacher), out, threads))
    return jobs


def ablate(spec: AblationSpec, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) the ablation; write ablate.json and ablate.png; return the results."""
    names = _check(spec)
    out = Path(spec.out)
    settings = _check_settings(out, _settings(spec, names))
    atomic_write_json(out / "settings.json", settings)
    jobs = plan(spec, names)
    results = run_jobs(jobs, spec.jobs, log)
    teacher = json.loads((Path(spec.teacher) / "metrics.json").read_text())
    report = summarize_runs(jobs, results, teacher, spec)
    atomic_write_json(out / "ablate.json", report)
    plot(report, out / "ablate.png")
    return report


def _pct(metrics: dict[str, Any]) -> dict[str, float]:
    return {m: 100 * metrics[m] for m in METRICS}


def summarize_runs(
    jobs: Sequence[Job], results: Sequence[dict], teacher: dict[str, Any], spec: AblationSpec
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
    teacher_test = _pct(teacher["test"])
    runs: dict[str, Any] = {}
    for name, seeds in per.items():
        row: dict[str, Any] = {"meaning": run_config(name)[0], "per_seed": seeds}
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
            m: gap_closed(row["test"][m]["mean"], runs["ce"]["test"][m]["mean"], teacher_test[m])
            for m in METRICS
        }
    cross: dict[str, Any] = {}
    for name in runs:
        control = f"{name}{RESTRICTED}"
        if control in runs:
            diff = {m: paired_interval(_col(per[name], m), _col(per[control], m)) for m in METRICS}
            gain = runs[name]["gain"]["accuracy"]["mean"]
            share = diff["accuracy"]["mean"] / gain if gain > 0 else None
            cross[name] = {"gain": diff, "share_of_kd_gain": share}
    best_by = "cv" if spec.folds else "val"
    ranked = sorted(runs, key=lambda n: -runs[n][best_by]["accuracy"]["mean"])
    return {
        "unit": "percent",
        "teacher": {"dir": str(spec.teacher), "test": teacher_test, "val": _pct(teacher["val"])},
        "seeds": spec.seeds,
        "folds": spec.folds,
        "selection": best_by,
        "best": ranked[0],
        "runs": runs,
        "cross_modal": cross,
    }


def _col(seeds: dict[int, dict[str, Any]], metric: str) -> dict[int, float]:
    return {s: e["test"][metric] for s, e in seeds.items()}


# --- output -------------------------------------------------------------------------------


def _ms(stat: dict[str, Any]) -> str:
    se = stat["se"]
    return f"{stat['mean']:.2f}" + ("" if se is None else f" ± {se:.2f}")


def _ci(stat: dict[str, Any] | None) -> str:
    if stat is None:
        return "-"
    if stat["lo"] is None:
        return f"{stat['mean']:+.2f}"
    return f"{stat['mean']:+.2f} [{stat['lo']:+.2f}, {stat['hi']:+.2f}]"


def format_table(report: dict[str, Any]) -> str:
    """Markdown table of the report: mean ± s.e. over seeds, gains with 95% intervals."""
    sel = report["selection"]
    head = [
        "run", "seeds", f"{sel} acc", "test acc", "test macro-F1", "Δacc vs CE [95% CI]",
        "ΔF1 vs CE [95% CI]", "gap closed (acc)",
    ]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    t = report["teacher"]["test"]
    lines.append(
        f"| teacher (all modalities) | - | - | {t['accuracy']:.2f} | {t['macro_f1']:.2f} "
        "| - | - | - |"
    )
    for name, row in report["runs"].items():
        gain = row.get("gain", {})
        closed = row.get("gap_closed", {}).get("accuracy")
        cells = [
            name,
            str(row["test"]["accuracy"]["n"]),
            _ms(row[sel]["accuracy"]) if sel in row else "-",
            _ms(row["test"]["accuracy"]),
            _ms(row["test"]["macro_f1"]),
            _ci(gain.get("accuracy")) if gain else "-",
            _ci(gain.get("macro_f1")) if gain else "-",
            "-" if closed is None else f"{closed:.0%}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    for name, cm in report["cross_modal"].items():
        share = cm["share_of_kd_gain"]
        lines.append(
            f"\ncross-modal gain of {name} (fused teacher - restricted teacher, test acc): "
            f"{_ci(cm['gain']['accuracy'])} points; macro-F1 {_ci(cm['gain']['macro_f1'])}; "
            + "share of its KD gain: "
            + ("n/a" if share is None else f"{share:.0%}")
        )
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    """Bar chart: test accuracy and macro-F1 per run (mean ± s.e.), teacher as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
