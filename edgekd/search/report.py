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


def choose(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The chosen student among trained `rows`: the best validation accuracy; ties go to the
    lower predicted p50, then to fewer parameters, so the choice is always on the Pareto front
    (a tie at 100 % must not ship a slower model than an equal one)."""
    return max(rows, key=lambda r: (r["val_acc"], -(r.get("p50_ms") or float("inf")),
                                    -(r.get("params") or 0)))  # fmt: skip


def _args(args: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(args.items()))


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_table(report: dict[str, Any]) -> str:
    """Markdown: the Pareto front (the chosen student marked), test figures labelled as scored
    once on the front only, and where the p50 figures come from."""
    head = [
        "trial", "arch", "args", "recipe", "params", "int8 KB", "predicted p50 ms",
        "measured p50 ms", "val acc", "test acc*", "test macro-F1*",
    ]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    chosen = (report.get("chosen") or {}).get("trial")
    for row in report["pareto"]:
        recipe = row["recipe"]
        extras = [f"tau {row['tau']:g}" if row.get("tau") else "",
                  f"alpha {row['alpha']:g}" if row.get("alpha") else "", f"lr {row['lr']:g}"]
        recipe += " (" + ", ".join(e for e in extras if e) + ")"
        measured = report["chosen"].get("measured_p50_ms") if row["trial"] == chosen else None
        test = row.get("test") or {}
        cells = [
            f"{row['trial']}" + (" (chosen)" if row["trial"] == chosen else ""),
            row["arch"], _args(row["args"]), recipe, f"{row['params']:,}",
            f"{row['int8_kb']:.1f}", _num(row["p50_ms"], ".4f"), _num(measured, ".4f"),
            f"{row['val_acc']:.2f}", _num(test.get("accuracy"), ".2f"),
            _num(test.get("macro_f1"), ".2f"),
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(
        "\n*test: scored once, for the Pareto set only; selection used validation accuracy. "
        f"Predicted p50: {report['latency_source']}."
    )
    if chosen is not None and report["chosen"].get("measured_p50_ms") is None:
        lines.append(f"Measured p50: {report['chosen'].get('measured_note', 'not measured')}.")
    line = anchor_line(report)
    if line:
        lines.append(line)
    confirm = report.get("confirmation")
    if confirm:
        # the ablation table's own formatting: mean ± s.e., gain [95% CI]
        from edgekd.distill.ablate.stats import format_interval, format_mean_se

        lines.append(f"\nWhat the teacher adds at this size (trial {chosen}'s student, its recipe "
                     f"vs CE only, {confirm['seeds']} seeds, test split, mean ± s.e., gain "
                     "[95% CI] paired by seed; CE trained for as many optimizer steps"
                     + (f"; besides its losses the chosen run differs from CE in: "
                        f"{'; '.join(confirm['differences'])}"
                        if confirm.get("differences") else "") + "):")
        for metric, name in (("accuracy", "accuracy"), ("macro_f1", "macro-F1")):
            c = confirm[metric]
            lines.append(f"- {name}: {format_mean_se(c['chosen'])} vs CE "
                         f"{format_mean_se(c['ce'])}; gain {format_interval(c['teacher_gain'])} "
                         "points")
    return "\n".join(lines)


def anchor_line(report: dict[str, Any]) -> str:
    """The anchor (the default student and recipe, the search's first trial) against the
    chosen student, in one line; "" for a report without an anchor entry."""
    anchor = report.get("anchor")
    if not anchor:
        return ""
    if anchor.get("state") == "none":
        return f"No anchor: {anchor.get('note')}."
    head = (f"Anchor (the default: {anchor.get('arch')} {_args(anchor.get('args') or {})}, "
            f"recipe {anchor.get('recipe')}, lr {anchor.get('lr')})")
    if anchor.get("val_acc") is None:
        why = anchor.get("error") or "no validation accuracy"
        return f"{head}: trial {anchor.get('trial', '-')} {anchor.get('state')} ({why})."
    text = (f"{head}: trial {anchor['trial']}, val acc {anchor['val_acc']:.2f}, predicted p50 "
            f"{_num(anchor.get('p50_ms'), '.4f')} ms")
    if anchor.get("over_budget"):
        text += f", OVER BUDGET ({anchor['over_budget']}): trained and reported, never chosen"
    gain = (report.get("chosen") or {}).get("over_anchor")
    if gain is not None:
        text += f"; the chosen student is {gain:+.2f} points against it (val acc)"
    return text + "."


def plot(report: dict[str, Any], path: Path) -> str:
    """accuracy vs predicted p50 (point size ~ params; the front joined, the chosen student
    ringed) as a PNG at `path`; without matplotlib, a one-line note instead. Returns the line
    to print."""
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
    anchor = report.get("anchor") or {}
    if anchor.get("val_acc") is not None and anchor.get("p50_ms") is not None:
        ax.scatter([anchor["p50_ms"]], [anchor["val_acc"]], marker="x", s=80, color="k",
                   label="anchor (the default)")  # fmt: skip
    chosen = report.get("chosen")
    if chosen:
        ax.scatter([chosen["p50_ms"]], [chosen["val_acc"]], s=250, facecolors="none",
                   edgecolors="k", label="chosen")  # fmt: skip
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
