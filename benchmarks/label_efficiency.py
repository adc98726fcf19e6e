"""Label efficiency on the built-in HAR data: what a teacher adds when most labels are missing.

The teacher is an edgekd teacher trained on all labels (`--teacher-run`, else trained here with
`edgekd teacher`'s defaults), exported with `edgekd teacher export` and used through that card,
so the outside-teacher path is what is measured. For each labelled share F, every row keeps the
same class-stratified F of the labelled training windows (`--labelled-share F`) and sees the
rest as unlabelled paired windows:

- `ce`: cross-entropy on the labelled windows only, trained for as many optimizer steps as
  `default` (its epochs are set to match: the unlabelled windows make default's epochs longer);
- `fixmatch`: the semi-supervised baseline without a teacher, on the same unlabelled windows;
- `default`: the shipped recipe (logit KD) from the card's teacher, on the same windows.

Student seed i for every row (one teacher); everything else is `edgekd distill`'s defaults.
Finished runs in --out are reused and a killed run resumes from its last epoch (its log goes
on), so a killed benchmark continues. Prints a Markdown table per share: mean ± s.e. of test
accuracy and macro-F1 (%), and the paired differences with their 95% t-intervals, plus the plan
differences of each row from `default`.

    .venv/bin/python benchmarks/label_efficiency.py [--out runs/label_efficiency]
        [--shares 0.1,0.05,0.25,1] [--seeds 5] [--jobs 2] [--teacher-run DIR] [--epochs N]

Cost on a 2-core AMD EPYC with `--jobs 2`: about 70 min per share (2026-12-06, beside other
work; docs/teachers.md has the 10 % table).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from edgekd.checkpoint import STATE_FILE

ROWS = ("ce", "fixmatch", "default")


def _edgekd(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "edgekd"), *args]


def _run(cmd: list[str], log: Path) -> None:
    with open(log, "a") as fh:
        code = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT)
    if code != 0:
        raise SystemExit(f"failed ({code}): {shlex.join(cmd)}; see {log}")


def _plan(card: Path, recipe: str, share: float, seed: int, epochs: int | None) -> Any:
    from edgekd.config import build_config
    from edgekd.distill.trainer import plan_distill

    flags: dict[str, Any] = {"data": {"source": "har", "labelled_share": share},
                             "train": {"seed": seed, "epochs": epochs}}  # fmt: skip
    return plan_distill(build_config(None, recipe=recipe, flags=flags), card)[0]


def _ce_epochs(card: Path, share: float, seed: int, epochs: int | None) -> int:
    """CE's epochs whose optimizer steps come closest to default's."""
    default = _plan(card, "default", share, seed, epochs)
    ce = _plan(card, "ce", share, seed, 1)
    return max(1, round(default.total_steps / ce.steps_per_epoch))


def _command(card: Path, recipe: str, share: float, seed: int, epochs: int | None,
             out: Path) -> list[str]:  # fmt: skip
    args = ["distill", "--teacher", str(card), "--data", "har", "--recipe", recipe,
            "--labelled-share", f"{share:g}", "--seed", str(seed), "--threads", "1", "--quiet",
            "--out", str(out)]  # fmt: skip
    if recipe == "ce":
        args += ["--epochs", str(_ce_epochs(card, share, seed, epochs))]
    elif epochs is not None:
        args += ["--epochs", str(epochs)]
    return _edgekd(*args)


def _table(out: Path, share: float, seeds: int, card: Path, epochs: int | None) -> str:
    from edgekd.distill.ablate.stats import (
        format_interval,
        format_mean_se,
        paired_interval,
        summarize,
    )
    from edgekd.distill.plan import differences

    values: dict[str, dict[str, dict[int, float]]] = {}
    for row in ROWS:
        for seed in range(seeds):
            m = json.loads((out / f"share{share:g}" / row / f"seed{seed}" / "metrics.json")
                           .read_text())["test"]  # fmt: skip
            for k in ("accuracy", "macro_f1"):
                values.setdefault(row, {}).setdefault(k, {})[seed] = 100 * m[k]
    lines = [f"### {share:.0%} of the labels ({seeds} seeds, test split)", "",
             "| row | accuracy | macro-F1 | default - row: accuracy | default - row: macro-F1 |",
             "|---|---|---|---|---|"]  # fmt: skip
    for row in ROWS:
        acc = format_mean_se(summarize(list(values[row]["accuracy"].values())))
        f1 = format_mean_se(summarize(list(values[row]["macro_f1"].values())))
        gains = ["-", "-"] if row == "default" else [
            format_interval(paired_interval(values["default"][k], values[row][k]))
            for k in ("accuracy", "macro_f1")
        ]  # fmt: skip
        lines.append(f"| {row} | {acc} | {f1} | {gains[0]} | {gains[1]} |")
    base = _plan(card, "default", share, 0, epochs)
    lines.append("")
    for row in ROWS[:-1]:
        plan = json.loads((out / f"share{share:g}" / row / "seed0" / "plan.json").read_text())
        mine = _plan(card, row, share, 0, plan["epochs"])
        said = "; ".join(d.text for d in differences(mine, base))
        lines.append(f"- {row} differs from default in: {said}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("runs/label_efficiency"))
    parser.add_argument("--shares", default="0.1,0.05,0.25,1")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--teacher-run", type=Path, default=None)
    parser.add_argument("--epochs", type=int, default=None, help="student epochs (default 60)")
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    teacher = args.teacher_run or out / "teacher"
    if not (teacher / "metrics.json").is_file():
        _run(_edgekd("teacher", "--data", "har", "--out", str(teacher), "--seed", "0",
                     "--quiet"), out / "teacher.log")  # fmt: skip
    card = out / "card"
    if not (card / "teacher.yaml").is_file():
        _run(_edgekd("teacher", "export", str(teacher), "--out", str(card)), out / "export.log")
    for share in (float(s) for s in args.shares.split(",")):
        jobs = []
        for seed in range(args.seeds):
            for row in ROWS:
                run = out / f"share{share:g}" / row / f"seed{seed}"
                if (run / "metrics.json").is_file():
                    continue
                cmd = _command(card, row, share, seed, args.epochs, run)
                if (run / STATE_FILE).is_file():  # killed after an epoch: continue it
                    cmd.append("--resume")
                elif run.exists():  # killed before its first epoch ended: start it again
                    shutil.rmtree(run)
                run.parent.mkdir(parents=True, exist_ok=True)
                jobs.append((cmd, run.parent / f"seed{seed}.log"))
        for cmd, _ in jobs:
            print("$", shlex.join(cmd), flush=True)
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(lambda job: _run(*job), jobs))
        print(_table(out, share, args.seeds, card, args.epochs), flush=True)
        print(flush=True)


if __name__ == "__main__":
    main()
