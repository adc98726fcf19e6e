"""The issue's search on the built-in HAR data: the most accurate accelerometer student within
0.25 ms batch-1 p50 (OpenVINO int8, 1 thread, this CPU), 24 trials.

Trains the acc+gyro teacher unless --teacher names one, runs `edgekd search` in --out (a killed
benchmark continues where it stopped: the study is in <out>/study.db), and prints the Pareto
table, the wall time and how many trials were pruned or not trained (over budget, repeats).

    .venv/bin/python benchmarks/search_har.py [--teacher DIR] [--out runs/search_har]
        [--trials 24] [--epochs 30] [--budget-ms 0.25] [--jobs 1] [--limit N]
        [--archs a,b] [--finalists 3] [--final-seeds 3] [--final-epochs N]

A quick check that it runs (2 trials x 2 epochs, 1 finalist + the anchor x 1 seed x 2 epochs):

    .venv/bin/python benchmarks/search_har.py --trials 2 --epochs 2 --limit 1500 \
        --teacher-epochs 3 --finalists 1 --final-seeds 1 --final-epochs 2 \
        --out /tmp/search_har_check
"""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--teacher", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("runs/search_har"))
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--budget-ms", type=float, default=0.25)
    parser.add_argument("--target", default="cpu")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--teacher-epochs", type=int, default=None)  # None: the teacher default
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--archs", default=None, help="comma-separated students (default: all)")
    parser.add_argument("--finalists", type=int, default=3)
    parser.add_argument("--final-seeds", type=int, default=3)
    parser.add_argument("--final-epochs", type=int, default=None)
    args = parser.parse_args()

    from edgekd.config import DataConfig, RunConfig, TrainConfig
    from edgekd.distill.trainer import train_teacher
    from edgekd.search import SearchSpec, run_search
    from edgekd.search.report import format_table

    t0 = time.perf_counter()
    teacher = args.teacher
    if teacher is None:
        teacher = args.out / "teacher"
        if not (teacher / "metrics.json").is_file():
            cfg = RunConfig(
                data=DataConfig(source="har", limit=args.limit),
                train=TrainConfig(epochs=args.teacher_epochs, seed=args.seed),
            )
            train_teacher(cfg, teacher, resume=(teacher / "train_state.safetensors").is_file(),
                          progress=False)  # fmt: skip
    spec = SearchSpec(
        teacher=teacher, out=args.out / "search", target=args.target, budget_ms=args.budget_ms,
        trials=args.trials, epochs=args.epochs, jobs=args.jobs, limit=args.limit, seed=args.seed,
        finalists=args.finalists, final_seeds=args.final_seeds, final_epochs=args.final_epochs,
        archs=tuple(args.archs.split(",")) if args.archs else None,
    )  # fmt: skip
    report = run_search(spec, log=lambda line: print(line, flush=True))
    wall = time.perf_counter() - t0
    counts = report["counts"]
    command = (f"edgekd search --teacher {teacher} --out {spec.out} --target {spec.target} "
               f"--budget-ms {spec.budget_ms:g} --trials {spec.trials} --epochs {spec.epochs}"
               + (f" --limit {spec.limit}" if spec.limit else "")
               + (f" --archs {','.join(spec.archs)}" if spec.archs else "")
               + f" --finalists {spec.finalists} --final-seeds {spec.final_seeds}"
               + (f" --final-epochs {spec.final_epochs}" if spec.final_epochs else ""))  # fmt: skip
    print(f"\n## edgekd search on HAR ({time.strftime('%Y-%m-%d')})\n")
    print(f"`{shlex.join(command.split())}`\n")
    print(format_table(report))
    print(f"\nwall time {wall / 60:.1f} min (this invocation, teacher included: a resumed "
          f"search counts from its restart); trials: {counts['complete']} complete, "
          f"{counts['pruned']} pruned, {counts['fail']} failed, not trained: "
          f"{counts['rejected']} over budget, {counts['repeat']} repeats")  # fmt: skip


if __name__ == "__main__":
    main()
