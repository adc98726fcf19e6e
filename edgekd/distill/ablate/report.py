"""The ablation report (ablate.json's content) as a Markdown table and a bar chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekd.distill.ablate.stats import METRICS, format_interval, format_mean_se
from edgekd.io import atomic_write_png


def format_table(report: dict[str, Any]) -> str:
    """Markdown table of the report: mean ± s.e. over seeds, gains with 95% intervals, each
    run's differences from CE besides its intended change, then the cross-modal gains and the
    effects the rows isolate."""
    sel = report["selection"]
    head = [
        "run", "seeds", f"{sel} acc", "test acc", "test macro-F1", "Δacc vs CE [95% CI]",
        "ΔF1 vs CE [95% CI]", "gap closed (acc)", "other differences vs CE",
    ]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    first_teacher = report["teacher"]
    label = "teacher (all modalities)"
    if first_teacher.get("source", "edgekd") != "edgekd":  # an outside teacher, by its weights
        label = f"teacher ({first_teacher['source']} {first_teacher['sha256'][:12]})"
    teachers = [(label, first_teacher)]
    if "unimodal_teacher" in report:
        teachers.append(("teacher (student's modality only)", report["unimodal_teacher"]))
    for label, teacher in teachers:
        n = teacher.get("n", 1)
        label += f", mean of {n} seeds" if n > 1 else ""
        t = teacher.get("test")
        scores = "- | -" if t is None else f"{t['accuracy']:.2f} | {t['macro_f1']:.2f}"
        lines.append(f"| {label} | - | - | {scores} | - | - | - | - |")
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
    for name, effect in report.get("effects", {}).items():
        lines.append(
            f"\n{effect['measures']} ({effect['run']} - {name}, test): accuracy "
            f"{format_interval(effect['gain']['accuracy'])} points; "
            f"macro-F1 {format_interval(effect['gain']['macro_f1'])}"
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
        tops = list(means)
        if "test" in report["teacher"]:  # an outside teacher without logits is not scored
            teacher = report["teacher"]["test"][metric]
            ax.axhline(teacher, ls="--", color="tab:red", label="teacher")
            tops.append(teacher)
        low = min(m - e for m, e in zip(means, errs, strict=True))
        ax.set_ylim(max(0.0, low - 3), min(100.0, max(tops) + 2))
        ax.set_xticks(range(len(names)), names, rotation=40, ha="right")
        ax.set_title(f"test {metric} (%), mean ± s.e.")
        if "test" in report["teacher"]:
            ax.legend(loc="lower right")
    fig.tight_layout()
    atomic_write_png(path, fig)
    plt.close(fig)
