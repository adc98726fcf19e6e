"""The search's final stage: finalists retrained in full, each paired with CE, chosen on
validation; the test split read once, after the choice.

Exploration trials are short (`--epochs`, pruned) and single-seed: they rank candidates, they
are not what ships. The final stage takes the `--finalists` best trained trials within budget
(validation accuracy; distinct students), plus the anchor (the default student and recipe),
and retrains each on the full `distill` schedule (`--final-epochs`, default `distill`'s) on the
`--final-seeds` seeds fixed before it starts (the search's seed and the next ones). Each run is
paired with a CE run of the same plan but the recipe, trained for as many optimizer steps
(`edgekd.search.plans.paired_ce_config`). Run folders are keyed by their plan's digest, so a
resumed search reuses exactly the runs of the same plans.

Then, in this order:
1. each finalist's first-seed run is exported (`<out>/finalists/trial<N>.edgekd`) and, where the
   target is this machine, measured on the target runtime (p50 at batch 1 and peak RSS); the
   budget is judged on the measured figures where there are some, else on the predicted ones;
2. the chosen finalist is the one within budget with the best mean validation accuracy over the
   seeds; a tie goes to the anchor (the default stays unless beaten), then to the lower p50;
3. only then is the test split read, for the finalists only: per-seed test accuracy and
   macro-F1, each finalist's KD - CE paired difference, and chosen - anchor.
The bundle that ships (`<out>/chosen.edgekd`) is the chosen finalist's first-seed final run,
never a capped trial. Figures are percent; intervals are two-sided 95% t-intervals over seeds.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekd.search.space import Candidate

METRICS = ("accuracy", "macro_f1")
KINDS = ("kd", "ce")  # the finalist's own recipe, and its CE pair
CANDIDATE_KEYS = ("arch", "args", "recipe", "tau", "alpha", "lr")


def budget_breach(spec: Any, p50_ms: float | None, int8_kb: float | None,
                  rss_mb: float | None = None) -> str | None:  # fmt: skip
    """Why figures break the search's budgets (`spec`: a SearchSpec), or None within them. An
    unknown figure breaks no budget here (the caller says whether it is known)."""
    if spec.budget_ms is not None and p50_ms is not None and p50_ms > spec.budget_ms:
        return f"p50 {p50_ms:.4f} ms > --budget-ms {spec.budget_ms:g}"
    if spec.budget_kb is not None and int8_kb is not None and int8_kb > spec.budget_kb:
        return f"int8 {int8_kb:.1f} KB > --budget-kb {spec.budget_kb:g}"
    if spec.budget_rss_mb is not None and rss_mb is not None and rss_mb > spec.budget_rss_mb:
        return f"peak RSS {rss_mb:.1f} MB > --budget-rss-mb {spec.budget_rss_mb:g}"
    return None


def candidate_of(row: dict[str, Any]) -> Candidate:
    return Candidate(**{k: row[k] for k in CANDIDATE_KEYS})


def _same_student(row: dict[str, Any]) -> str:
    return repr([row[k] if k != "args" else sorted(row[k].items()) for k in CANDIDATE_KEYS])


def pick_finalists(rows: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """The trials the final stage retrains: the `k` best complete trials within budget on
    validation accuracy other than the anchor (distinct candidates; ties to the lower predicted
    p50, then fewer parameters), then the anchor when it was trained (over budget too: it is
    reported, never chosen)."""
    anchor = next((r for r in rows if r["anchor"] and r["state"] == "complete"), None)
    trained = [r for r in rows if r["state"] == "complete" and not r["over_budget"]
               and not r["anchor"]]  # fmt: skip
    ranked = sorted(trained, key=lambda r: (-r["val_acc"], r.get("p50_ms") or math.inf,
                                            r.get("params") or 0))  # fmt: skip
    picked: list[dict[str, Any]] = []
    seen = {_same_student(anchor)} if anchor is not None else set()
    for row in ranked:
        if len(picked) < k and _same_student(row) not in seen:
            seen.add(_same_student(row))
            picked.append(row)
    return picked + ([anchor] if anchor is not None else [])


@dataclass
class _Finalist:
    row: dict[str, Any]
    runs: dict[str, dict[str, Path]] = field(default_factory=lambda: {k: {} for k in KINDS})
    configs: dict[str, Any] = field(default_factory=dict)  # run folder -> its run config
    epochs: dict[str, int | None] = field(default_factory=dict)
    told: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def anchor(self) -> bool:
        return bool(self.row.get("anchor"))

    def name(self) -> str:
        return f"trial {self.row['trial']}" + (" (the anchor)" if self.anchor else "")


def _plan_runs(search: Any, picked: list[dict[str, Any]], seeds: list[int]) -> list[_Finalist]:
    """Each finalist's run configs per kind and seed, and the folders they train in."""
    from edgekd.config import DEFAULT_EPOCHS
    from edgekd.search import plans

    spec = search.spec
    finals = []
    for row in picked:
        final = _Finalist(row)
        for seed in seeds:
            cfg = plans.train_config(spec, candidate_of(row), epochs=spec.final_epochs, seed=seed)
            ce, final.told = plans.paired_ce_config(cfg, spec.teacher)
            for kind, c in (("kd", cfg), ("ce", ce)):
                folder = plans.run_folder(spec.out, c, spec.teacher)
                final.runs[kind][str(seed)] = folder
                final.configs[str(folder)] = c
                final.epochs[kind] = c.train.epochs or DEFAULT_EPOCHS[search.modality.kind]
        finals.append(final)
    return finals


def _train_all(search: Any, finals: list[_Finalist]) -> dict[str, dict[str, Any] | str]:
    """Train every final run (one job per distinct folder, through the search's executor, with
    per-epoch progress and ETAs; test figures stay out of the log until the choice); returns
    folder -> metrics.json content, or the error text of a run that failed (its finalist is
    out, the others go on)."""
    from edgekd.distill.ablate.jobs import Job, epoch_seconds, run_jobs

    jobs: dict[str, Job] = {}
    for final in finals:
        for kind in KINDS:
            recipe = final.row["recipe"] if kind == "kd" else "ce"
            for seed, folder in final.runs[kind].items():
                jobs.setdefault(str(folder), Job(
                    f"final-trial{final.row['trial']} {recipe}", int(seed), None,
                    final.configs[str(folder)], Path(search.spec.teacher), Path(folder),
                    search.threads.per_job))  # fmt: skip
    # the trials' own epochs, timed under the same jobs, are the first guess for the ETA
    seconds = [s for final in finals if final.row.get("folder")
               for s in epoch_seconds(Path(final.row["folder"]))]  # fmt: skip
    results = run_jobs(list(jobs.values()), search.executor, search.spec.jobs, search.log,
                       sum(seconds) / len(seconds) if seconds else None, keep_going=True,
                       show_test=False)  # fmt: skip
    return dict(zip(jobs, results, strict=True))


def _per_seed(final: _Finalist, results: dict[str, Any], kind: str, split: str,
              metric: str) -> dict[str, float]:  # fmt: skip
    """{seed: percent} of `metric` on `split` over the finalist's `kind` runs."""
    return {seed: 100 * float(results[str(folder)][split][metric])
            for seed, folder in final.runs[kind].items()}  # fmt: skip


def _scores(final: _Finalist, results: dict[str, Any], split: str) -> dict[str, Any]:
    """Per-seed figures, mean ± s.e. and the KD - CE paired difference, on `split`."""
    from edgekd.distill.ablate.stats import paired_interval, summarize

    out: dict[str, Any] = {}
    for metric in METRICS:
        kd, ce = (_per_seed(final, results, k, split, metric) for k in KINDS)
        out[metric] = {"per_seed": {"kd": kd, "ce": ce}, "kd": summarize(list(kd.values())),
                       "ce": summarize(list(ce.values())),
                       "kd_minus_ce": paired_interval(kd, ce)}  # fmt: skip
    return out


def _measure(search: Any, final: _Finalist, entry: dict[str, Any]) -> None:
    """Export the finalist's first-seed run; measure it where the target is this machine."""
    spec = search.spec
    if not spec.export:
        entry["measured_note"] = "export skipped: the budget is judged on the prediction"
        return
    from edgekd.errors import ExportError
    from edgekd.export.exporter import export_run
    from edgekd.search.latency import measure_bundle
    from edgekd.targets import get_target

    first = next(iter(final.runs["kd"].values()))
    bundle = Path(spec.out) / "finalists" / f"trial{final.row['trial']}.edgekd"
    try:
        export_run(first, bundle, target=spec.target, force=bundle.exists(),
                   max_drop=spec.max_drop, progress=False)  # fmt: skip
    except ExportError as exc:
        final.error = f"export failed: {exc}"
        return
    entry["bundle"] = str(bundle)
    if search.predictor.source != "local":
        entry["measured_note"] = (f"not measured: {spec.target} is not this machine; run "
                                  f"`edgekd bench {bundle}` on the device")  # fmt: skip
        return
    target = get_target(spec.target)
    m = measure_bundle(bundle, target.backend, target.precision, spec.timing_s,
                       max_wait_s=spec.quiet_wait_s)  # fmt: skip
    entry["measured"] = m.to_dict()
    entry["measured_note"] = (f"measured here on {target.backend} {target.precision}"
                              + (" (NOISY: the machine was busy)" if m.noisy else ""))  # fmt: skip


def _entry(final: _Finalist, results: dict[str, Any], seeds: list[int]) -> dict[str, Any]:
    row = final.row
    entry: dict[str, Any] = {
        **{k: row[k] for k in ("trial", "anchor", *CANDIDATE_KEYS, "params", "int8_kb")},
        "predicted_p50_ms": row["p50_ms"], "p50_source": row["p50_source"],
        "predicted_rss_mb": row.get("rss_mb"),
        "trial_val_acc": row["val_acc"], "trial_over_budget": row["over_budget"],
        "seeds": seeds, "epochs": final.epochs, "differences_from_ce": final.told,
        "runs": {k: {s: str(f) for s, f in final.runs[k].items()} for k in KINDS},
        "bundle": None, "measured": None, "measured_note": None, "over_budget": None,
        "error": final.error, "val": None, "test": None,
    }  # fmt: skip
    failed = [r for k in KINDS for r in final.runs[k].values()
              if not isinstance(results.get(str(r)), dict)]  # fmt: skip
    if failed and final.error is None:
        final.error = entry["error"] = f"{Path(failed[0]).name}: {results.get(str(failed[0]))}"
    if final.error is None:
        entry["val"] = _scores(final, results, "val")
    return entry


def _judge(spec: Any, entry: dict[str, Any]) -> None:
    measured = entry["measured"] or {}
    p50 = measured.get("p50_ms", entry["predicted_p50_ms"])
    rss = measured.get("rss_mb", entry["predicted_rss_mb"])
    entry["over_budget"] = budget_breach(spec, p50, entry["int8_kb"], rss)


def _mean_val(entry: dict[str, Any]) -> float:
    return float(entry["val"]["accuracy"]["kd"]["mean"])


def choose_finalist(entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The finalist within budget with the best mean validation accuracy; a tie goes to the
    anchor (the default stays unless beaten), then to the lower p50. None when none is left."""
    fit = [e for e in entries if e["error"] is None and e["over_budget"] is None]
    if not fit:
        return None

    def p50(e: dict[str, Any]) -> float:
        return float((e["measured"] or {}).get("p50_ms") or e["predicted_p50_ms"] or math.inf)

    return max(fit, key=lambda e: (round(_mean_val(e), 9), e["anchor"], -p50(e)))


def _against_anchor(chosen: dict[str, Any], anchor: dict[str, Any]) -> dict[str, Any]:
    from edgekd.distill.ablate.stats import paired_interval

    return {split: {m: paired_interval(chosen[split][m]["per_seed"]["kd"],
                                       anchor[split][m]["per_seed"]["kd"]) for m in METRICS}
            for split in ("val", "test")}  # fmt: skip


def _cost(chosen: dict[str, Any], anchor: dict[str, Any]) -> str:
    """What the chosen student costs against the default, as ratios (a near-tie in accuracy
    can come at several times the size: the verdict says so)."""

    def measured(e: dict[str, Any]) -> float | None:
        return (e.get("measured") or {}).get("p50_ms")

    pairs = [("the default's parameters", chosen.get("params"), anchor.get("params")),
             ("its int8 size", chosen.get("int8_kb"), anchor.get("int8_kb")),
             ("its measured p50", measured(chosen), measured(anchor))]  # fmt: skip
    said = [f"{mine / theirs:.1f}x {what}" for what, mine, theirs in pairs if mine and theirs]
    if not said:
        return ""
    return "; it has " + (", ".join(said[:-1]) + " and " + said[-1] if len(said) > 1 else said[0])


def _verdict(chosen: dict[str, Any] | None, anchor: dict[str, Any] | None,
             anchor_note: str | None, entries: list[dict[str, Any]]) -> str:  # fmt: skip
    from edgekd.distill.ablate.stats import format_interval

    if chosen is None:
        return "no finalist is within budget: nothing ships"
    seeds = len(chosen["seeds"])
    if chosen["anchor"]:
        out = [f"trial {e['trial']} scored higher but {e['over_budget'] or e['error']}"
               for e in entries if e["val"] and not e["anchor"] and (e["over_budget"] or e["error"])
               and _mean_val(e) > _mean_val(chosen)]  # fmt: skip
        return (f"the default stays: no finalist within budget beat the default student "
                f"({chosen['arch']}, recipe {chosen['recipe']}) on mean validation accuracy over "
                f"{seeds} seeds" + (f" ({'; '.join(out)})" if out else ""))
    what = f"trial {chosen['trial']}'s {chosen['arch']} (recipe {chosen['recipe']})"
    if anchor is None or anchor["error"] is not None:
        why = anchor_note or (anchor or {}).get("error") or "the anchor was not trained"
        return f"{what} is chosen; no default to compare with ({why})"
    gain = chosen["over_anchor"]
    text = (f"{what} replaces the default: against it on the same {seeds} seeds, val accuracy "
            f"{format_interval(gain['val']['accuracy'])}, test accuracy "
            f"{format_interval(gain['test']['accuracy'])}, test macro-F1 "
            f"{format_interval(gain['test']['macro_f1'])} points{_cost(chosen, anchor)}")
    if anchor["over_budget"]:
        text += f" (the default is over budget: {anchor['over_budget']})"
    return text


def run_final_stage(search: Any, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Retrain the finalists, choose, then read test; search.json's `final`, `finalists`,
    `anchor` and `chosen` (with `bundle`: the shipped `<out>/chosen.edgekd`, or None)."""
    spec = search.spec
    seeds = list(range(spec.seed, spec.seed + spec.final_seeds))
    picked = pick_finalists(rows, spec.finalists)
    stage = {"seeds": seeds, "epochs": spec.final_epochs, "finalists_wanted": spec.finalists}
    if not picked:
        return {"final": stage, "finalists": [], "chosen": None, "anchor_final": None,
                "verdict": "no trial was trained within the budget: nothing to retrain"}
    finals = _plan_runs(search, picked, seeds)
    n = len({f for final in finals for f in final.configs})
    search.log(f"final stage: {len(finals)} finalists ("
               + ", ".join(f.name() for f in finals)
               + f"), each retrained for {finals[0].epochs['kd']} epochs on seeds "
               f"{seeds} with a CE pair ({finals[0].epochs['ce']} epochs, as many optimizer "
               f"steps): {n} trainings")  # fmt: skip
    results = _train_all(search, finals)
    entries = [_entry(final, results, seeds) for final in finals]
    for final, entry in zip(finals, entries, strict=True):
        if final.error is None:
            _measure(search, final, entry)
            entry["error"] = final.error
        _judge(spec, entry)
    chosen = choose_finalist(entries)
    for final, entry in zip(finals, entries, strict=True):  # after the choice: test, once
        if entry["error"] is None:
            entry["test"] = _scores(final, results, "test")
    anchor = next((e for e in entries if e["anchor"]), None)
    if chosen is not None:
        chosen = {**chosen, "over_anchor": None}
        if anchor is not None and anchor["error"] is None and not chosen["anchor"]:
            chosen["over_anchor"] = _against_anchor(chosen, anchor)
        chosen["shipped"] = _ship(search, chosen)
    verdict = _verdict(chosen, anchor, search.anchor_note, entries)
    search.log(f"final stage: {verdict}")
    return {"final": stage, "finalists": entries, "chosen": chosen, "anchor_final": anchor,
            "verdict": verdict}  # fmt: skip


def _ship(search: Any, chosen: dict[str, Any]) -> str | None:
    """Copy the chosen finalist's bundle to `<out>/chosen.edgekd` (staged, then renamed), with
    its held-out windows (`trial<N>.eval.npz` -> `chosen.eval.npz`: the bundle names them by its
    own stem, so a bundle copied without them reports its eval file missing)."""
    from edgekd.io import atomic_copy_file
    from edgekd.runtime.bundle import beside_eval_path

    if chosen["bundle"] is None:
        return None
    dest = Path(search.spec.out) / "chosen.edgekd"
    staging = dest.with_name(dest.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(chosen["bundle"], staging)
    shutil.rmtree(dest, ignore_errors=True)
    staging.rename(dest)
    evals, dest_evals = beside_eval_path(Path(chosen["bundle"])), beside_eval_path(dest)
    if evals.is_file():
        atomic_copy_file(evals, dest_evals)
    else:  # a choice made again on resume must not keep the windows of an earlier choice
        dest_evals.unlink(missing_ok=True)
    return str(dest)
