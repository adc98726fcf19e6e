"""`edgekd teacher` and `edgekd distill`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgekd.commands import user_errors
from edgekd.commands.options import (
    ArchOpt,
    ArgsOpt,
    AugmentOpt,
    BatchOpt,
    ConfigOpt,
    DataOpt,
    EpochsOpt,
    LimitOpt,
    LrOpt,
    MixOpt,
    QuietOpt,
    ResumeOpt,
    SeedOpt,
    SetOpt,
    ThreadsOpt,
    UnlabelledOpt,
    distill_aliases,
    run_config,
    training_flags,
)


def _use_threads(requested: int | None) -> None:
    """Set torch's intra-op threads by the one policy of `edgekd.threads`."""
    import torch

    from edgekd.threads import plan_threads

    torch.set_num_threads(plan_threads(1, requested).per_job)


def _print_metrics(metrics: dict, out: Path) -> None:
    from rich.console import Console

    console = Console()
    val, test = metrics["val"], metrics["test"]
    console.print(
        f"[bold]{out}[/bold]  val acc {val['accuracy']:.4f} f1 {val['macro_f1']:.4f}  "
        f"test acc {test['accuracy']:.4f} f1 {test['macro_f1']:.4f}  "
        f"(weights of epoch {metrics['selected_epoch']} by {metrics['select']}, "
        f"best val epoch {metrics['best_epoch']}"
        + (", still improving at the last epoch)" if metrics.get("still_improving") else ")")
    )


def register(app: typer.Typer) -> None:
    from edgekd.commands import require_extra
    from edgekd.commands.teachers import register_teacher_tools

    teacher_app = typer.Typer(
        help="Train the multimodal teacher (no subcommand), or inspect, cache and export a "
        "teacher for `distill --teacher`.",
        invoke_without_command=True,
    )
    app.add_typer(teacher_app, name="teacher")
    register_teacher_tools(teacher_app)

    @teacher_app.callback()
    @user_errors
    def teacher(
        ctx: typer.Context,
        out: Annotated[Path, typer.Option(help="Run folder to create.")] = Path("runs/teacher"),
        data: Annotated[
            str | None, typer.Option(help="'har' (built-in UCI HAPT) or PATH/manifest.jsonl.")
        ] = None,
        config: ConfigOpt = None,
        set_: SetOpt = None,
        epochs: EpochsOpt = None,
        seed: SeedOpt = None,
        limit: LimitOpt = None,
        batch_size: BatchOpt = None,
        lr: LrOpt = None,
        arch: ArchOpt = None,
        arch_args: ArgsOpt = None,
        modality_dropout: Annotated[
            float | None,
            typer.Option(
                help="Drop whole modalities with this probability while training (default: 0.3 "
                "with two or more modalities; 0 turns it off)."
            ),
        ] = None,
        modalities: Annotated[
            str | None,
            typer.Option(help="Comma-separated subset of the data's modalities (default: all)."),
        ] = None,
        augment: AugmentOpt = None,
        mix: MixOpt = None,
        threads: ThreadsOpt = None,
        resume: ResumeOpt = False,
        quiet: QuietOpt = False,
    ) -> None:
        """Train the multimodal teacher on the modalities of the data (all unless --modalities);
        with a subcommand (inspect, cache, export), work with a teacher instead."""
        from dataclasses import replace

        if ctx.invoked_subcommand is not None:
            return
        require_extra("train", "`edgekd teacher`")

        from edgekd.distill.trainer import train_teacher

        subset = tuple(m.strip() for m in modalities.split(",")) if modalities else None
        flags = training_flags(epochs, seed, limit, batch_size, lr, arch, arch_args, augment, mix)
        cfg = run_config(config, set_, {**flags, "data.source": data, "data.modalities": subset})
        _use_threads(threads)
        if modality_dropout is not None:
            cfg = replace(
                cfg,
                model=replace(
                    cfg.model, args={**cfg.model.args, "modality_dropout": modality_dropout}
                ),
            )
        _print_metrics(train_teacher(cfg, out, resume=resume, progress=not quiet), out)

    @app.command()
    @user_errors
    @distill_aliases
    def distill(
        teacher: Annotated[
            Path,
            typer.Option(
                help="An edgekd teacher run folder, or an outside teacher: its teacher.yaml card "
                "(or a .onnx / .pt2 with the card beside it), or a `teacher cache` folder."
            ),
        ],
        out: Annotated[Path, typer.Option(help="Run folder to create.")] = Path("runs/student"),
        recipe: Annotated[
            str | None,
            typer.Option(
                help="Loss recipe: default, ce, kd, paper, kd_std, dist, dkd, bkd, fixmatch (no "
                "teacher: the semi-supervised baseline); the distill section beneath --config, "
                "--set and flags: --set distill.tau=3 edits it."
            ),
        ] = None,
        data: DataOpt = None,
        modality: Annotated[
            str | None, typer.Option(help="Student modality (default: the dataset's).")
        ] = None,
        config: ConfigOpt = None,
        set_: SetOpt = None,
        epochs: EpochsOpt = None,
        seed: SeedOpt = None,
        limit: LimitOpt = None,
        batch_size: BatchOpt = None,
        lr: LrOpt = None,
        arch: ArchOpt = None,
        arch_args: ArgsOpt = None,
        augment: AugmentOpt = None,
        mix: MixOpt = None,
        labelled_share: Annotated[
            float | None,
            typer.Option(
                help="Keep this class-stratified share of the labelled training windows (the "
                "same for every recipe and seed); the rest become unlabelled paired windows."
            ),
        ] = None,
        unlabelled: UnlabelledOpt = None,
        allow_unseen_augment: Annotated[
            bool | None,
            typer.Option(
                "--allow-unseen-augment",
                help="Let the online teacher get augmentation it never trained with (refused "
                "otherwise; the plan records it).",
            ),
        ] = None,
        threads: ThreadsOpt = None,
        resume: ResumeOpt = False,
        quiet: QuietOpt = False,
        aliased: dict[str, str] | None = None,  # the hidden alias flags (`distill_aliases`)
    ) -> None:
        """Distill a single-modality student from a teacher. The losses come from --recipe and
        --set distill.KEY=VALUE (feature_loss, classifier_loss, tau, lambda_task, teacher_mode,
        ...; classifier_loss none and feature_loss none = CE only)."""
        flags = training_flags(epochs, seed, limit, batch_size, lr, arch, arch_args, augment, mix)
        cfg = run_config(
            config, set_,
            {**flags, "data.source": data, "data.unlabelled": unlabelled,
             "data.labelled_share": labelled_share, "student_modality": modality,
             "distill.allow_unseen_augment": allow_unseen_augment},
            recipe=recipe, aliased=aliased,
        )  # fmt: skip
        from edgekd.distill.trainer import distill as run_distill

        _use_threads(threads)
        _print_metrics(run_distill(cfg, teacher, out, resume=resume, progress=not quiet), out)

    @app.command()
    @user_errors
    def ensemble(
        teachers: Annotated[list[Path], typer.Argument(help="Two or more teacher run folders.")],
        out: Annotated[Path, typer.Option(help="Run folder to create.")] = Path("runs/ensemble"),
    ) -> None:
        """Combine teacher runs into one mean-logit ensemble teacher (use it with --teacher)."""
        from edgekd.distill.ensemble import make_ensemble

        metrics = make_ensemble(teachers, out)
        typer.echo(
            f"{out}: ensemble of {len(teachers)} teachers, val acc {metrics['val']['accuracy']:.4f}"
            f", test acc {metrics['test']['accuracy']:.4f}"
        )

    @app.command()
    def models() -> None:
        """List the registered teacher and student architectures."""
        from edgekd.models import list_students, list_teachers

        typer.echo("teachers: " + ", ".join(list_teachers()))
        typer.echo("students: " + ", ".join(list_students()))
