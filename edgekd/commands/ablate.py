"""`edgekd ablate`: the distillation table over seeds, with paired statistics and controls."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgekd.commands import user_errors
from edgekd.commands.options import (
    AddressOpt,
    ArchOpt,
    ArgsOpt,
    BatchOpt,
    ConfigOpt,
    DataOpt,
    EpochsOpt,
    ExecutorOpt,
    LimitOpt,
    LrOpt,
    SetOpt,
    TeacherOpt,
    refuse_given,
    run_config,
    training_flags,
)


def register(app: typer.Typer) -> None:
    @app.command()
    @user_errors
    def ablate(
        teacher: TeacherOpt,
        out: Annotated[
            Path, typer.Option(help="Ablation folder (reused: finished runs are kept).")
        ] = Path("runs/ablate"),
        runs: Annotated[
            str | None,
            typer.Option(
                help="Comma-separated runs: teacher, ce, ce_plain (augmentation off), ce_steps (CE "
                "with the default's optimizer-step count), hard_l2, logit_kd, kd_std, dist, dkd, "
                "bkd, soft_margin, soft_both, paper, paper_corrupt, default, default_nounl "
                "(without unlabelled windows), and for each KD run NAME_restricted (the teacher "
                "sees only the "
                "student's modality) and NAME_unimodal (a teacher trained on the student's "
                "modality alone; both need an edgekd teacher). With an outside teacher, teacher "
                "scores its own predictions. Default: the method table + default(_restricted)."
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
            int, typer.Option(help="Runs at once (they split the thread budget).")
        ] = 1,
        executor: ExecutorOpt = "local",
        address: AddressOpt = None,
        threads: Annotated[
            int | None,
            typer.Option(
                help="CPU threads for all jobs together (default: OMP_NUM_THREADS, else the "
                "usable cores)."
            ),
        ] = None,
        teacher_seeds: Annotated[
            str | None,
            typer.Option(
                help="Comma-separated seeds: retrain the teacher from its config once per seed; "
                "student seed i learns from teacher seed i (one per --seeds), so the intervals "
                "include teacher variance."
            ),
        ] = None,
        unimodal_teacher: Annotated[
            Path | None,
            typer.Option(
                help="Teacher run of the student's modality alone for the NAME_unimodal runs "
                "(default: trained here from the teacher's config)."
            ),
        ] = None,
        allow_ood_restricted: Annotated[
            bool,
            typer.Option(
                "--allow-ood-restricted",
                help="Run NAME_restricted on a teacher trained without modality dropout "
                "(out of distribution; flagged in the table).",
            ),
        ] = False,
        data: DataOpt = None,
        strict: Annotated[
            bool,
            typer.Option(
                "--strict",
                help="Refuse runs whose plans differ from ce's in more than their intended "
                "change (by default such differences are listed in the table).",
            ),
        ] = False,
        config: ConfigOpt = None,
        set_: SetOpt = None,
        epochs: EpochsOpt = None,
        limit: LimitOpt = None,
        batch_size: BatchOpt = None,
        lr: LrOpt = None,
        arch: ArchOpt = None,
        arch_args: ArgsOpt = None,
    ) -> None:
        """Run the distillation ablation and print mean ± s.e., paired gains and the control.
        --config / --set give the base config of every run, but for its distill section (each
        run sets its own) and train.seed (--seeds)."""
        refuse_given(config, set_, "ablate", {
            "distill": "each ablation run sets its own distill section",
            "train.seed": "--seeds sets the seeds 0..N-1",
        })  # fmt: skip
        flags = training_flags(epochs, None, limit, batch_size, lr, arch, arch_args)
        base = run_config(config, set_, {**flags, "data.source": data})
        from edgekd.distill.ablate import DEFAULT_RUNS, AblationSpec, format_table
        from edgekd.distill.ablate import ablate as run_ablation

        names = DEFAULT_RUNS
        if runs is not None:
            names = tuple(n.strip() for n in runs.split(",") if n.strip())
        spec = AblationSpec(
            teacher=teacher,
            out=out,
            runs=names,
            seeds=seeds,
            folds=folds,
            jobs=jobs,
            base=base,
            teacher_seeds=_seed_list(teacher_seeds),
            unimodal_teacher=unimodal_teacher,
            allow_ood_restricted=allow_ood_restricted,
            threads=threads,
            strict=strict,
            executor=executor,
            address=address,
        )
        report = run_ablation(spec, log=lambda line: typer.echo(line, err=True))
        typer.echo(format_table(report))
        typer.echo(f"\nwrote {out / 'ablate.json'} and {out / 'ablate.png'}")


def _seed_list(text: str | None) -> tuple[int, ...] | None:
    from edgekd.errors import ConfigError

    if text is None:
        return None
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise ConfigError(
            f"--teacher-seeds must be comma-separated integers, got {text!r}"
        ) from exc
