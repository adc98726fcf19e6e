"""The distillation table on the built-in HAR data with the shipped settings.

Trains the acc+gyro teacher (unless --teacher names one), then runs `edgekd ablate` over seeds and
prints a Markdown table headed by the date, the machine and the equivalent command, ready for
docs/distillation.md. Finished runs in --out are reused, so a killed benchmark continues.

    .venv/bin/python benchmarks/distill_table.py [--teacher DIR] [--out runs/distill_table]
        [--seeds 5] [--runs ce,default,ce_plain,default_restricted] [--jobs 2] [--threads N]
        [--teacher-dropout 0.3] [--teacher-seeds 0,1,2,3,4] [--unimodal-teacher DIR]
        [--allow-ood-restricted] [--width 12]

`--teacher-dropout p` (default 0.3) trains the teacher with modality dropout, so that its
restricted view (the `_restricted` control) is a teacher that has learnt to work without the
gyroscope; `edgekd ablate` refuses that control on a teacher without it unless
`--allow-ood-restricted`. `--teacher-seeds` retrains the teacher per seed (student seed i learns
from teacher seed i), so the intervals include the teacher's variance.
Cost on a 2-core CPU with 2 jobs: about 1.5 min per `ce` / `ce_plain` run and 3.5-4.5 min per
`default` / `_restricted` run (60 epochs; several times that under load), plus about 6 min for the
teacher.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
from dataclasses import replace
from pathlib import Path

from edgekd.config import DEFAULT_EPOCHS, ModelConfig, RunConfig

# The shipped student (`edgekd distill`'s default: tcn_tiny, width 32) and its default epochs;
# the teacher of the README table (60 epochs, mixup); `--width 12` gives the 3k-parameter student.
STUDENT_ARCH = "tcn_tiny"
EPOCHS = DEFAULT_EPOCHS["timeseries"]
TEACHER_EPOCHS, TEACHER_MIX = 60, "mixup"
RUNS = "ce,default,ce_plain,default_restricted"


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
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--runs", default=RUNS)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--folds", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--teacher-dropout", type=float, default=0.3)
    parser.add_argument("--teacher-seeds", default=None, help="comma-separated, one per --seeds")
    parser.add_argument("--unimodal-teacher", type=Path, default=None)
    parser.add_argument("--allow-ood-restricted", action="store_true")
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
            base = RunConfig()
            if args.teacher_dropout:
                model = ModelConfig(args={"modality_dropout": args.teacher_dropout})
                base = replace(base, model=model)
            train = replace(base.train, epochs=TEACHER_EPOCHS)
            cfg = replace(base, train=train, augment=replace(base.augment, mix=TEACHER_MIX))
            train_teacher(cfg, teacher, resume=(teacher / STATE_FILE).is_file())
    teacher_seeds = None
    if args.teacher_seeds:
        teacher_seeds = tuple(int(x) for x in args.teacher_seeds.split(","))
    base = RunConfig(model=student)
    base = replace(base, train=replace(base.train, epochs=EPOCHS))
    spec = AblationSpec(
        teacher=teacher,
        out=args.out / "ablate",
        runs=tuple(args.runs.split(",")),
        seeds=args.seeds,
        folds=args.folds,
        jobs=args.jobs,
        base=base,
        teacher_seeds=teacher_seeds,
        unimodal_teacher=args.unimodal_teacher,
        allow_ood_restricted=args.allow_ood_restricted,
        threads=args.threads,
    )
    report = ablate(spec)
    command = (
        f"edgekd ablate --teacher {teacher} --out {spec.out} --runs {args.runs} "
        f"--seeds {args.seeds} --jobs {args.jobs} --epochs {EPOCHS} --arch {student.arch}"
        + (f" --arch-args {shlex.quote(json.dumps(student.args))}" if student.args else "")
        + (f" --folds {args.folds}" if args.folds else "")
        + (f" --teacher-seeds {args.teacher_seeds}" if args.teacher_seeds else "")
        + (f" --unimodal-teacher {args.unimodal_teacher}" if args.unimodal_teacher else "")
        + (" --allow-ood-restricted" if args.allow_ood_restricted else "")
    )
    print(f"date: {datetime.date.today().isoformat()}")
    print(f"machine: {_machine()}")
    print(f"command: {command}")
    print()
    print(format_table(report))


if __name__ == "__main__":
    main()
