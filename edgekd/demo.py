"""`edgekd demo`: the whole pipeline on the built-in HAR data, with a report.

Steps (each reuses its output when a previous demo in the same folder finished it with the same
settings, so an interrupted demo continues): teacher (accel + gyro) -> CE-only student and
distilled student (accel) -> `cpu` int8 bundle -> benchmark of every backend present -> streaming
over one held-out subject's whole recording -> `report.md` with PNG plots and a printed summary.

The two students are one comparison: the same config (data, epochs, batch, learning rate, seed,
hence the same initialisation and batch order, and whatever augmentation the config sets) except
the distillation losses; the demo checks this on their saved configs. One seed of one pair is an
illustration, not evidence: the multi-seed table is `edgekd ablate`'s (docs/results.md).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgekd.config import (
    DEFAULT_EPOCHS,
    TEACHER_EPOCHS,
    RunConfig,
    override,
    resolve_recipe,
    to_dict,
)
from edgekd.errors import ConfigError
from edgekd.io import atomic_write_json, atomic_write_text, make_dirs

STREAM_SUBJECT = 9  # a held-out test subject of the UCI-HAR split
STREAM_CHUNK = 25  # samples per push: 0.5 s at 50 Hz, a typical sensor FIFO read
STUDENT_RECIPES = {"student (CE only)": "ce", "student (distilled)": "default"}
# Distillation settings worth naming in the report (the rest keep their defaults in both recipes).
SHOWN_DISTILL = ("classifier_loss", "feature_loss", "tau", "lambda_task", "lambda_classifier",
                 "lambda_feature", "quality", "logit_standardize")  # fmt: skip
TABLE_POINTER = 'docs/results.md, "Distillation with the defaults, end to end"'


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of the demo; `quick` is for CI (seconds, not meaningful numbers)."""

    teacher_epochs: int
    student_epochs: int
    limit: int | None
    calib: int
    bench_duration_s: float
    stream_seconds: float | None  # None: the whole recording

    @classmethod
    def for_mode(cls, quick: bool) -> DemoSettings:
        if quick:
            return cls(teacher_epochs=1, student_epochs=1, limit=600, calib=64,
                       bench_duration_s=0.05, stream_seconds=60.0)  # fmt: skip
        # The default schedules of `edgekd teacher` and `edgekd distill`.
        return cls(teacher_epochs=TEACHER_EPOCHS, student_epochs=DEFAULT_EPOCHS["timeseries"],
                   limit=None, calib=512, bench_duration_s=2.0, stream_seconds=None)  # fmt: skip


def _say(progress: bool, text: str) -> None:
    if progress:
        from rich.console import Console
        from rich.markup import escape

        Console(stderr=True).print(f"[bold cyan]demo[/] {escape(text)}", soft_wrap=True)


def _saved_config(run: Path) -> dict[str, Any]:
    from edgekd.checkpoint import CONFIG_FILE, json_safe_yaml

    return json_safe_yaml(run / CONFIG_FILE)


def _reusable(run: Path, cfg: RunConfig) -> bool:
    """True when `run` is finished with cfg's training and data settings; ConfigError when it is
    finished with others (a quick demo's runs must not pass for a full demo's)."""
    if not (run / "metrics.json").exists():
        return False
    saved, wanted = _saved_config(run), to_dict(cfg)
    if saved["train"] != wanted["train"] or saved["data"]["limit"] != wanted["data"]["limit"]:
        raise ConfigError(
            f"{run} holds a run with other settings (epochs {saved['train']['epochs']}, limit "
            f"{saved['data']['limit']}) than this demo's (epochs {cfg.train.epochs}, limit "
            f"{cfg.data.limit}); use another --out"
        )
    return True


def _train(out: Path, settings: DemoSettings, progress: bool) -> dict[str, Path]:
    from edgekd.distill.trainer import distill, train_teacher

    base = override(RunConfig(), "train", epochs=settings.student_epochs, seed=0)
    base = override(base, "data", limit=settings.limit)
    # The teacher's own defaults (mixup, modality dropout) are those of `edgekd teacher`.
    teacher_cfg = override(base, "train", epochs=settings.teacher_epochs)
    runs = {
        "teacher": out / "teacher",
        "student (CE only)": out / "student-ce",
        "student (distilled)": out / "student-kd",
    }
    if not _reusable(runs["teacher"], teacher_cfg):
        _say(progress, "training the teacher on accelerometer + gyroscope")
        train_teacher(teacher_cfg, runs["teacher"], progress=progress)
    for name, recipe in STUDENT_RECIPES.items():
        cfg = replace(base, distill=resolve_recipe(recipe))
        if not _reusable(runs[name], cfg):
            _say(progress, f"training the {name} on the accelerometer only (recipe {recipe})")
            distill(cfg, runs["teacher"], runs[name], progress=progress)
    return runs


def student_setup(runs: dict[str, Path]) -> dict[str, Any]:
    """What the two students were trained with, from their saved configs: the shared settings and
    each one's distillation losses. ConfigError when they differ in anything else (then the
    comparison would not isolate distillation)."""
    ce, kd = (_saved_config(runs[name]) for name in STUDENT_RECIPES)
    differ = sorted(k for k in set(ce) | set(kd) if k != "distill" and ce.get(k) != kd.get(k))
    if differ:
        raise ConfigError(
            f"the CE-only and distilled students of {runs['student (CE only)'].parent} differ "
            f"in {', '.join(differ)}, not only in the distillation losses; use another --out"
        )
    return {
        "differences": _plan_differences(runs),
        "shared": {k: v for k, v in ce.items() if k != "distill"},
        "recipes": {
            name: {"recipe": recipe, **{k: cfg["distill"][k] for k in SHOWN_DISTILL}}
            for (name, recipe), cfg in zip(STUDENT_RECIPES.items(), (ce, kd), strict=True)
        },
        "teacher": {k: v for k, v in _saved_config(runs["teacher"]).items() if k != "distill"},
    }


def _bench(
    bundle: Path, student_dir: Path, out: Path, settings: DemoSettings, progress: bool, plots: bool
) -> dict[str, Any]:
    from edgekd.reference import eager_reference, torch_threads
    from edgekd.runtime.bench import plot, run_benchmark, write_json

    with torch_threads(1):  # the same single thread as the runtime rows: an honest reference
        report = run_benchmark(
            bundle,
            batch_sizes=(1, 32),
            duration_s=settings.bench_duration_s,
            threads=1,
            reference=eager_reference(student_dir),
            progress=(lambda msg: _say(progress, f"benchmarking {msg}")),
        )
    write_json(report, out / "bench.json")
    if plots:
        plot(report, out / "latency.png")
    return report


def _stream(bundle: Path, out: Path, settings: DemoSettings, plots: bool) -> dict[str, Any]:
    import edgekd.runtime as rt
    from edgekd.data.har import har_recording
    from edgekd.report import plot_stream

    model = rt.load(bundle, precision="int8")
    spec = model.spec
    accel, truth = har_recording(STREAM_SUBJECT)
    if settings.stream_seconds is not None:
        keep = int(settings.stream_seconds * spec.rate_hz)
        accel, truth = accel[:keep], truth[:keep]
    stream = model.stream(rate_hz=spec.rate_hz)
    events = []
    start = time.perf_counter()
    for i in range(0, len(accel), STREAM_CHUNK):
        events.extend(stream.push(accel[i : i + STREAM_CHUNK]))
    seconds = time.perf_counter() - start
    ends = np.array([e.end_sample for e in events])
    predicted = np.array([e.index for e in events])
    # A window's true label: the activity at its centre sample (-1 where unlabelled).
    expected = truth[ends - spec.window // 2]
    labelled = expected >= 0
    agree = (
        float((predicted[labelled] == expected[labelled]).mean())
        if labelled.any()
        else float("nan")
    )
    if plots:
        plot_stream(
            ends / spec.rate_hz,
            predicted,
            expected,
            np.arange(len(truth)) / spec.rate_hz,
            truth,
            model.labels,
            out / "stream.png",
            f"Subject {STREAM_SUBJECT} streamed in {STREAM_CHUNK}-sample chunks "
            f"({model.backend} {model.precision})",
        )
    return {
        "subject": STREAM_SUBJECT,
        "backend": model.backend,
        "precision": model.precision,
        "recording_s": len(accel) / spec.rate_hz,
        "events": len(events),
        "labelled_events": int(labelled.sum()),
        "agreement": agree,
        "wall_s": seconds,
        "realtime_factor": (len(accel) / spec.rate_hz) / seconds,
    }


def _confusion(bundle: Path, out: Path, plots: bool) -> dict[str, Any]:
    import edgekd.runtime as rt
    from edgekd.data import load_dataset
    from edgekd.metrics import classification_report, confusion_matrix
    from edgekd.report import plot_confusion

    model = rt.load(bundle, precision="int8")
    test = load_dataset("har").splits["test"]
    keep = test.y >= 0
    x, y = test.x[model.spec.name][keep], test.y[keep]
    pred = np.concatenate([model.predict(x[i : i + 512]).index for i in range(0, len(x), 512)])
    k = len(model.labels)
    cm = confusion_matrix(y, pred, k)
    if plots:
        plot_confusion(
            cm,
            model.labels,
            out / "confusion_int8.png",
            f"int8 student ({model.backend}), test subjects",
        )
    return classification_report(y, pred, k)


def run_demo(
    out: Path, *, quick: bool = False, force: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Run every step; write `out/report.md`, `out/summary.json` and the PNGs (without
    matplotlib: no PNGs, said before training and in report.md); return the summary."""
    from edgekd.export.exporter import export_run
    from edgekd.report import plot_training_curves, plots_unavailable

    out = make_dirs(out)
    settings = DemoSettings.for_mode(quick)
    no_plots = plots_unavailable()
    if no_plots:
        _say(True, f"{no_plots}: report.md and summary.json only")
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    runs = _train(out, settings, progress)
    timings["train_s"] = time.perf_counter() - t0
    metrics = {name: json.loads((d / "metrics.json").read_text()) for name, d in runs.items()}
    setup = student_setup(runs)
    histories = {name: json.loads((d / "history.json").read_text()) for name, d in runs.items()}
    if not no_plots:
        plot_training_curves(histories, out / "training.png")

    bundle = out / "har.edgekd"
    t0 = time.perf_counter()
    if force or not (bundle / "manifest.json").exists():
        _say(progress, "exporting the distilled student to a cpu int8 bundle")
        # Quick mode's one-epoch student is too unsettled for the accuracy gate to mean anything.
        max_drop = 100.0 if quick else 1.0
        export_run(
            runs["student (distilled)"],
            bundle,
            target="cpu",
            calib=settings.calib,
            force=True,
            max_drop=max_drop,
            progress=progress,
        )
    timings["export_s"] = time.perf_counter() - t0
    manifest = json.loads((bundle / "manifest.json").read_text())

    t0 = time.perf_counter()
    bench = _bench(bundle, runs["student (distilled)"], out, settings, progress, not no_plots)
    timings["bench_s"] = time.perf_counter() - t0
    _say(progress, f"streaming subject {STREAM_SUBJECT}'s recording through the int8 bundle")
    stream = _stream(bundle, out, settings, not no_plots)
    int8_test = _confusion(bundle, out, not no_plots)

    summary = {
        "mode": "quick" if quick else "full",
        "settings": settings.__dict__,
        "setup": setup,
        "accuracy": {name: m["test"] for name, m in metrics.items()},
        "bundle_accuracy": manifest.get("accuracy", {}),
        "int8_test": int8_test,
        "bundle_bytes": sum(a["size"] for a in manifest["artifacts"]),
        "artifacts": {a["path"]: a["size"] for a in manifest["artifacts"]},
        "bench": [
            {
                "name": r["name"],
                "p50_ms": r["latency"]["p50"],
                "p99_ms": r["latency"]["p99"],
                "throughput": r["throughput"]["value"],
                "batch": r["throughput"]["batch"],
            }
            for r in bench["rows"]
        ],  # fmt: skip
        "bench_skipped": bench["skipped"],
        "stream": stream,
        "timings": timings,
        "environment": bench["environment"],
        "plots_skipped": no_plots,
    }
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "report.md", render_markdown(summary))
    return summary


def _plan_differences(runs: dict[str, Path]) -> list[str] | None:
    """What the distilled student's plan differs in from the CE student's (their plan.json
    files; None where a run has none)."""
    import json

    from edgekd.distill.plan import RunPlan, differences

    paths = [runs[name] / "plan.json" for name in STUDENT_RECIPES]
    if not all(p.is_file() for p in paths):
        return None
    ce, kd = (RunPlan.from_dict(json.loads(p.read_text())) for p in paths)
    return [d.text for d in differences(kd, ce)]


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _setup_line(setup: dict[str, Any]) -> str:
    train = setup["shared"]["train"]
    recipes = " vs ".join(r["recipe"] for r in setup["recipes"].values())
    return f"{train['epochs']} epochs, batch {train['batch_size']}, seed {train['seed']}; {recipes}"


def summary_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """(what, figure) pairs shared by the printed table and report.md."""
    rows = [("students: same settings, losses differ", _setup_line(summary["setup"]))]
    rows += [
        (f"{name} test accuracy / macro-F1 (%)", f"{_pct(m['accuracy'])} / {_pct(m['macro_f1'])}")
        for name, m in summary["accuracy"].items()
    ]
    for key, m in summary["bundle_accuracy"].items():
        rows.append((f"bundle {key} accuracy (%)", _pct(m["accuracy"])))
    for r in summary["bench"]:
        rows.append(
            (f"{r['name']} batch-1 p50 / p99 (ms)", f"{r['p50_ms']:.3f} / {r['p99_ms']:.3f}")
        )
        rows.append(
            (f"{r['name']} throughput at batch {r['batch']} (windows/s)", f"{r['throughput']:.0f}")
        )
    s = summary["stream"]
    rows.append((f"stream subject {s['subject']}: events, agreement with true activity (%)",
                 f"{s['events']}, {_pct(s['agreement'])}"))  # fmt: skip
    rows.append(("stream speed (x real time)", f"{s['realtime_factor']:.0f}"))
    rows.append(("bundle size (kB, all artifacts)", f"{summary['bundle_bytes'] / 1e3:.1f}"))
    return rows


def render_markdown(summary: dict[str, Any]) -> str:
    env = summary["environment"]
    lines = [
        "# edgekd demo report",
        "",
        f"Mode: {summary['mode']}; machine: {env.get('cpu', '?')}, "
        f"{env.get('cores_usable', '?')} usable cores, "
        f"{env.get('platform', '?')}; settings: {summary['settings']}.",
        "",
        "| what | figure |",
        "|---|---|",
        *[f"| {a} | {b} |" for a, b in summary_rows(summary)],
        "",
        *render_setup(summary["setup"]),
        *_figures(summary.get("plots_skipped")),
        f"Timings (s): {', '.join(f'{k} {v:.1f}' for k, v in summary['timings'].items())}.",
        "",
    ]
    if summary["bench_skipped"]:
        lines += [
            "Backends not measured here:",
            *[f"- {s['backend']}: {s['reason']}" for s in summary["bench_skipped"]],
            "",
        ]
    return "\n".join(lines)


FIGURES = (
    ("Training curves", "training"),
    ("Confusion matrix of the int8 student (test subjects)", "confusion_int8"),
    ("Latency distributions per backend and precision (batch 1, one thread)", "latency"),
    ("Streamed predictions against the true activity", "stream"),
)


def _figures(skipped: str | None) -> list[str]:
    """report.md's figure sections; `skipped` (why there are no PNGs) replaces them."""
    if skipped:
        return [f"No figures: {skipped}.", ""]
    return [line for title, png in FIGURES for line in (f"## {title}", f"![{png}]({png}.png)", "")]


def render_setup(setup: dict[str, Any]) -> list[str]:
    """report.md's "Training setup" section: what both students shared and how their losses
    differ, and where the multi-seed comparison is."""
    shared, teacher = setup["shared"], setup["teacher"]
    train, data = shared["train"], shared["data"]
    others = {
        k: v for k, v in shared.items() if k not in ("train", "data", "model", "student_modality")
    }
    lines = [
        "## Training setup",
        "",
        f"Both students: `{shared['model']['arch']}`"
        + (f" {shared['model']['args']}" if shared["model"]["args"] else "")
        + " on "
        f"`{shared['student_modality']}`, {train['epochs']} epochs, batch {train['batch_size']}, "
        f"lr {train['lr']}, seed {train['seed']} (so the same initialisation and batch order), "
        f"training windows: {data['limit'] or 'all'}"
        + "".join(f"; {k}: {v}" for k, v in others.items())
        + ". The distilled student's plan differs from the CE student's in: "
        + ("; ".join(setup.get("differences") or []) or "(no plan.json to compare)")
        + ". Their losses:",
        "",
        "| student | recipe | " + " | ".join(SHOWN_DISTILL) + " |",
        "|---|---|" + "---|" * len(SHOWN_DISTILL),
    ]
    for name, recipe in setup["recipes"].items():
        cells = [name, f"`{recipe['recipe']}`", *(str(recipe[k]) for k in SHOWN_DISTILL)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Teacher: `{teacher['model']['arch']}` on all modalities, {teacher['train']['epochs']} "
        f"epochs, seed {teacher['train']['seed']}.",
        "",
        "One seed of one pair shows the pipeline, not whether distillation pays off: seed-to-seed "
        "spread is larger than the effect. The multi-seed table with 95% intervals and the "
        f"controls (`edgekd ablate`, full schedule) is in {TABLE_POINTER}.",
        "",
    ]
    return lines
