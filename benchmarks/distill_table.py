"""The README's distillation table on the built-in HAR data, with every default.

Trains the acc+gyro teacher with `edgekd teacher`'s defaults (unless --teacher names one), then
runs `edgekd ablate` over the README's rows, student seed i paired with teacher seed i, and
prints a Markdown table headed by the date, the machine and the equivalent commands. Finished
runs in --out are reused, so a killed benchmark continues.

    .venv/bin/python benchmarks/distill_table.py [--teacher DIR] [--out runs/distill_table]
        [--seeds 10] [--runs ce,ce_steps,default,default_nounl,default_unimodal,default_restricted]
        [--jobs 2] [--threads N] [--no-teacher-seeds] [--folds K] [--width 12]

Cost on a 2-core AMD EPYC with `--jobs 2 --threads 2` (2026-12-05): 2 h 15 min for the whole
default table: 19 teacher trainings in 30 min (with a test run beside them), then 50 student
trainings in 103 min; the 10 `default_restricted` students took 26 min more.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

# `--width 12` gives the 3k-parameter student (the shipped one, tcn_tiny, has width 32).
STUDENT_ARCH = "tcn_tiny"
RUNS = "ce,ce_steps,default,default_nounl,default_unimodal,default_restricted"


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--teacher", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("runs/distill_table"))
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--runs", default=RUNS)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--folds", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-teacher-seeds", action="store_true",
                        help="one teacher for every student seed (no teacher variance)")
    parser.add_argument("--width", type=int, default=None, help="student width (default: 32)")
    args = parser.parse_args()

    from edgekd.distill.ablate import format_table

    teacher = args.teacher or args.out / "teacher"
    commands = []
    if args.teacher is None and not (teacher / "metrics.json").is_file():
        resume = ["--resume"] if teacher.is_dir() else []
        commands.append(["teacher", "--data", "har", "--out", str(teacher), *resume])
    ablation = args.out / "ablate"
    command = ["ablate", "--teacher", str(teacher), "--out", str(ablation), "--runs", args.runs,
               "--seeds", str(args.seeds), "--jobs", str(args.jobs)]  # fmt: skip
    if not args.no_teacher_seeds:
        command += ["--teacher-seeds", ",".join(map(str, range(args.seeds)))]
    if args.threads:
        command += ["--threads", str(args.threads)]
    if args.folds:
        command += ["--folds", str(args.folds)]
    if args.width:
        command += ["--arch", STUDENT_ARCH, "--arch-args", json.dumps({"width": args.width})]
    commands.append(command)
    # the CLI itself, so that the table is exactly what the printed commands give
    for argv in commands:
        subprocess.run([sys.executable, "-m", "edgekd", *argv], check=True)
    report = json.loads((ablation / "ablate.json").read_text())
    command = "\n".join(shlex.join(["edgekd", *argv]) for argv in commands)
    print(f"date: {datetime.date.today().isoformat()}")
    print(f"machine: {_machine()}")
    print(f"commands:\n{command}")
    print()
    print(format_table(report))


if __name__ == "__main__":
    main()
