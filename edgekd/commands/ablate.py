"""`edgekd ablate`: the distillation table of METHOD.md over seeds, with paired statistics."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgekd.commands import user_errors
from edgekd.commands.train import ArchOpt, ArgsOpt, BatchOpt, ConfigOpt, EpochsOpt, LimitOpt, LrOpt


def register(app: typer.Typer) -> None:
    @app.command()
    @user_errors
    def ablate(
        teacher: Annotated[Path, typer.Option(help="Teacher run folder (from `edgekd teacher`).")],
        out: Annotated[
            Path, typer.Option(help="Ablation folder (reused: finished runs are kept).")
        ] = Path("runs/ablate"),
        runs: Annotated[
            str | None,
            typer.Option(
                help="Comma-separated runs: teacher, ce, hard_l2, logit_kd, soft_margin, "
                "soft_both, paper, paper_corrupt, default, and NAME_restricted (the teacher sees "
                "only the student's modality). Default: METHOD.md's table + default(_restricted)."
            ),
        ] = None,
        seeds: Annotated[int, typer.Option(help="Seeds 0..N-1 per run (claims need >= 5).")] = 5,
        folds: Annotated[
            int | None,
            typer.Option(
                help="Also score each run by K-fold leave-subjects-out CV over the training "
                "subjects (K+1 fits per run and seed)."
            ),
        ] = None,
        jobs: Annotated[
            int, typer.Option(help="Runs in parallel processes (threads split the cores).")
        ] = 1,
        config: ConfigOpt = None,
        epochs: EpochsOpt = None,
        limit: LimitOpt = None,
        batch_size: BatchOpt = None,
        lr: LrOpt = None,
        arch: ArchOpt = None,
        arch_args: ArgsOpt = None,
    ) -> None:
        """Run the distillation ablation and print mean ± s.e., paired gains and the control."""
        from edgekd.commands.train import _common
        from edgekd.distill.ablate import DEFAULT_RUNS, AblationSpec, format_table
        from edgekd.distill.ablate import ablate as run_ablation

        base = _common(config, epochs, None, limit, batch_size, lr, arch, arch_args)
        names = DEFAULT_RUNS
        if runs is not None:
            names = tuple(n.strip() for n in runs.split(",") if n.strip())
        spec = AblationSpec(
            teacher=teacher, out=out, runs=names, seeds=seeds, folds=folds, jobs=jobs, base=base
        )
        report = run_ablation(spec, log=lambda line: typer.echo(line, err=True))
        typer.echo(format_table(report))
        typer.echo(f"\nwrote {out / 'ablate.json'} and {out / 'ablate.png'}")
