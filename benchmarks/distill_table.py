"""The README's distillation table on the built-in HAR data, with every default.

Trains the acc+gyro teacher with `edgekd teacher`'s defaults (unless --teacher names one), then
runs `edgekd ablate` over the README's rows, student seed i paired with teacher seed i, and
prints a Markdown table headed by the date, the machine and the equivalent commands. Finished
runs in --out are reused, so a killed benchmark continues.

    .venv/bin/python benchmarks/distill_table.py [--teacher DIR] [--out runs/distill_table]
        [--seeds 10] [--runs ce,ce_steps,default,default_nounl,default_unimodal] [--jobs 2]
        [--threads N] [--no-teacher-seeds] [--folds K] [--width 12]

Cost on a 2-core CPU with 2 jobs (2026-12-05): about 2 min per teacher, 3 min per `ce`,
5 min per `ce_steps` and 5.5 min per `default` / `default_unimodal` run (60 epochs); 10 seeds of
the five rows with paired teacher seeds take about 2.5 h.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
from pathlib import Path

from edgekd.config import ModelConfig, RunConfig

# The shipped student (`edgekd distill`'s default: tcn_tiny, width 32), trained for its plan's
# epochs; `--width 12` gives the 3k-parameter student.
STUDENT_ARCH = "tcn_tiny"
RUNS = "ce,ce_steps,default,default_nounl,default_unimodal"


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
    width = {} if args.width is None else {"width": args.width}
    student = ModelConfig(arch=STUDENT_ARCH, args=width)

    from edgekd.distill.ablate import AblationSpec, ablate, format_table

    teacher = args.teacher
    if teacher is None:
        from edgekd.checkpoint import STATE_FILE
        from edgekd.distill.trainer import train_teacher

        teacher = args.out / "teacher"
        if not (teacher / "metrics.json").is_file():
            train_teacher(RunConfig(), teacher, resume=(teacher / STATE_FILE).is_file())
    teacher_seeds = None if args.no_teacher_seeds else tuple(range(args.seeds))
    spec = AblationSpec(
        teacher=teacher,
        out=args.out / "ablate",
        runs=tuple(args.runs.split(",")),
        seeds=args.seeds,
        folds=args.folds,
        jobs=args.jobs,
        base=RunConfig(model=student),
        teacher_seeds=teacher_seeds,
        threads=args.threads,
    )
    report = ablate(spec)
    command = (
        f"edgekd teacher --data har --out {teacher}\n"
        f"edgekd ablate --teacher {teacher} --out {spec.out} --runs {args.runs} "
        f"--seeds {args.seeds} --jobs {args.jobs} --arch {student.arch}"
        + (f" --arch-args {shlex.quote(json.dumps(student.args))}" if student.args else "")
        + (f" --folds {args.folds}" if args.folds else "")
        + ("" if teacher_seeds is None else f" --teacher-seeds {','.join(map(str, teacher_seeds))}")
    )
    print(f"date: {datetime.date.today().isoformat()}")
    print(f"machine: {_machine()}")
    print(f"commands:\n{command}")
    print()
    print(format_table(report))


if __name__ == "__main__":
    main()
