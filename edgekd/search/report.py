"""The search's outputs: the accuracy/latency Pareto front, its Markdown table and plot.

Units: accuracy and macro-F1 in percent, latency in ms (batch 1), size in KB (1000 bytes).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def pareto_front(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows not dominated in (higher `val_acc`, lower `p50_ms`), fastest first. A row dominates
    another when it is at least as good in both and better in one; rows without a p50 are out."""
    timed = [r for r in rows if r.get("p50_ms") is not None and r.get("val_acc") is not None]
    front = [
        r for r in timed
        if not any(
            o["val_acc"] >= r["val_acc"] and o["p50_ms"] <= r["p50_ms"]
            and (o["val_acc"] > r["val_acc"] or o["p50_ms"] < r["p50_ms"])
            for o in timed
        )
    ]  # fmt: skip
    return sorted(front, key=lambda r: (r["p50_ms"], -r["val_acc"]))


def _args(args: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(args.items()))


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _recipe(row: dict[str, Any]) -> str:
    extras = [f"tau {row['tau']:g}" if row.get("tau") else "",
              f"alpha {row['alpha']:g}" if row.get("alpha") else "", f"lr {row['lr']:g}"]
    return f"{row['recipe']} (" + ", ".join(e for e in extras if e) + ")"


def _final_cells(entry: dict[str, Any]) -> list[str]:
    """Mean ± s.e. of val/test accuracy and test macro-F1, and KD - CE on test, or why not."""
    from edgekd.distill.ablate.stats import format_interval, format_mean_se

    if entry["error"] is not None:
        return [f"failed: {entry['error']}", "-", "-", "-", "-"]
    val, test = entry["val"], entry["test"]
    return [format_mean_se(val["accuracy"]["kd"]), format_mean_se(test["accuracy"]["kd"]),
            format_mean_se(test["macro_f1"]["kd"]),
            format_interval(test["accuracy"]["kd_minus_ce"]),
            format_interval(test["macro_f1"]["kd_minus_ce"])]  # fmt: skip


def format_table(report: dict[str, Any]) -> str:
    """Markdown: the exploration's Pareto front (validation only), the final stage's finalists
    (mean ± s.e. over seeds; test read once, after the choice; KD - CE paired by seed with its
    95% interval), the anchor, and the verdict."""
    head = ["trial", "arch", "args", "recipe", "params", "int8 KB", "predicted p50 ms",
            "val acc"]  # fmt: skip
    epochs = report["spec"]["epochs"]
    lines = [f"Exploration: Pareto front of the trials ({epochs} epochs, one seed, validation "
             "only)", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]  # fmt: skip
    for row in report["pareto"]:
        cells = [f"{row['trial']}" + (" (anchor)" if row["anchor"] else ""), row["arch"],
                 _args(row["args"]), _recipe(row), f"{row['params']:,}", f"{row['int8_kb']:.1f}",
                 _num(row["p50_ms"], ".4f"), f"{row['val_acc']:.2f}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"\nPredicted p50: {report['latency_source']}.")
    final = report.get("final") or {}
    finalists = report.get("finalists") or []
    if finalists:
        chosen = (report.get("chosen") or {}).get("trial")
        lines += [
            "", f"Final stage: {len(finalists)} finalists retrained for "
            f"{finalists[0]['epochs']['kd']} epochs on seeds {final['seeds']}, "
            "each paired with CE over as many optimizer steps (mean ± s.e. over seeds; test read "
            "once, after the choice; KD − CE paired by seed, [95% CI])", "",
        ]  # fmt: skip
        head = ["trial", "arch", "args", "recipe", "predicted p50 ms", "measured p50 ms",
                "peak RSS MB", "val acc", "test acc", "test macro-F1", "KD − CE test acc",
                "KD − CE test macro-F1"]  # fmt: skip
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for e in finalists:
            measured = e.get("measured") or {}
            marks = [m for m, on in (("chosen", e["trial"] == chosen), ("anchor", e["anchor"]),
                                     ("over budget", e["over_budget"])) if on]  # fmt: skip
            cells = [f"{e['trial']}" + (f" ({', '.join(marks)})" if marks else ""), e["arch"],
                     _args(e["args"]), _recipe(e), _num(e["predicted_p50_ms"], ".4f"),
                     _num(measured.get("p50_ms"), ".4f"), _num(measured.get("rss_mb"), ".1f"),
                     *_final_cells(e)]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
        notes = sorted({e["measured_note"] for e in finalists if e.get("measured_note")})
        lines += [f"Measured: {note}." for note in notes]
        lines += [f"Trial {e['trial']} over budget: {e['over_budget']}." for e in finalists
                  if e["over_budget"]]  # fmt: skip
    line = anchor_line(report)
    if line:
        lines.append(line)
    if report.get("verdict"):
        lines.append(f"\n**Verdict:** {report['verdict']}.")
    return "\n".join(lines)


def anchor_line(report: dict[str, Any]) -> str:
    """The anchor (the default student and recipe, the search's first trial) in one line;
    "" for a report without an anchor entry."""
    anchor = report.get("anchor")
    if not anchor:
        return ""
    if anchor.get("state") == "none":
        return f"No anchor: {anchor.get('note')}."
    head = (f"Anchor (the default: {anchor.get('arch')} {_args(anchor.get('args') or {})}, "
            f"recipe {anchor.get('recipe')}, lr {anchor.get('lr')})")
    if "seeds" in anchor:  # its final-stage entry
        text = f"{head}: trial {anchor['trial']}, a finalist"
    elif anchor.get("val_acc") is None:
        why = anchor.get("error") or "no validation accuracy"
        return f"{head}: trial {anchor.get('trial', '-')} {anchor.get('state')} ({why})."
    else:
        text = f"{head}: trial {anchor['trial']}, val acc {anchor['val_acc']:.2f}"
    over = anchor.get("over_budget") or anchor.get("trial_over_budget")
    if over:
        text += f", OVER BUDGET ({over}): trained and reported, never chosen"
    return text + "."


def plot(report: dict[str, Any], path: Path) -> str:
    """The exploration's validation accuracy vs predicted p50 (point size ~ params; the front
    joined, the anchor crossed, the chosen student ringed at its trial) as a PNG at `path`;
    without matplotlib, a one-line note instead. Returns the line to print."""
    try:
        import matplotlib
    except ImportError:
        return "no Pareto plot: matplotlib is not installed (pip install 'edgekd[report]')"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgekd.io import atomic_write_png

    done = [r for r in report["trials"] if r["state"] == "complete" and r["p50_ms"] is not None]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if done:
        biggest = max(r["params"] for r in done)
        ax.scatter([r["p50_ms"] for r in done], [r["val_acc"] for r in done],
                   s=[20 + 300 * r["params"] / biggest for r in done], alpha=0.5,
                   label="trials (size ~ params)")  # fmt: skip
    front = report["pareto"]
    ax.plot([r["p50_ms"] for r in front], [r["val_acc"] for r in front], "r.-", label="Pareto")
    anchor = [r for r in done if r["anchor"]]
    if anchor:
        ax.scatter([anchor[0]["p50_ms"]], [anchor[0]["val_acc"]], marker="x", s=80, color="k",
                   label="anchor (the default)")  # fmt: skip
    chosen = [r for r in done if r["trial"] == (report.get("chosen") or {}).get("trial")]
    if chosen:  # at its trial's point: the plot is of the exploration
        ax.scatter([chosen[0]["p50_ms"]], [chosen[0]["val_acc"]], s=250, facecolors="none",
                   edgecolors="k", label="chosen (final stage)")  # fmt: skip
    if report["budget"].get("ms") is not None:
        ax.axvline(report["budget"]["ms"], ls="--", color="gray", label="budget")
    ax.set_xlabel("predicted p50 at batch 1 (ms)")
    ax.set_title(f"latency: {report['latency_source']}", fontsize=8, wrap=True)
    ax.set_ylabel("validation accuracy (%)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    atomic_write_png(Path(path), fig)
    plt.close(fig)
    return f"wrote {path}"


def read_metrics(folder: Path) -> dict[str, Any] | None:
    path = Path(folder) / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else None
