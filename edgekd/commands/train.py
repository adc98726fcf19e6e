"""`edgekd teacher` and `edgekd distill`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from edgekd.commands import user_errors

if TYPE_CHECKING:
    from edgekd.config import RunConfig

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="YAML config; CLI flags override it.")
]
EpochsOpt = Annotated[int | None, typer.Option(help="Training epochs.")]
SeedOpt = Annotated[
    int | None, typer.Option(help="Random seed (runs are deterministic for a seed).")
]
LimitOpt = Annotated[
    int | None, typer.Option(help="Use at most N training windows (quick trials).")
]
BatchOpt = Annotated[int | None, typer.Option("--batch-size", help="Windows per step.")]
LrOpt = Annotated[float | None, typer.Option("--lr", help="Peak learning rate (cosine decay).")]
ArchOpt = Annotated[
    str | None, typer.Option("--arch", help="Registered model name (see `edgekd models`).")
]
ArgsOpt = Annotated[
    str | None,
    typer.Option("--arch-args", help="Model arguments as JSON, e.g. '{\"width\": 16}'."),
]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue an interrupted run in --out.")]
QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress bars or per-epoch lines.")
]
AugmentOpt = Annotated[
    str | None,
    typer.Option("--augment", help="Augmentation policy: default (safe per kind) | none | custom."),
]
MixOpt = Annotated[str | None, typer.Option("--mix", help="none | mixup | cutmix.")]
ThreadsOpt = Annotated[
    int | None,
    typer.Option(help="CPU threads for training (default: OMP_NUM_THREADS, else all cores)."),
]


def _use_threads(requested: int | None) -> None:
    """Set torch's intra-op threads by the one policy of `edgekd.threads`."""
    import torch

    from edgekd.threads import plan_threads

    torch.set_num_threads(plan_threads(1, requested).per_job)


def _common(
    config: Path | None,
    epochs: int | None,
    seed: int | None,
    limit: int | None,
    batch_size: int | None,
    lr: float | None,
    arch: str | None,
    arch_args: str | None,
    augment: str | None = None,
    mix: str | None = None,
) -> RunConfig:
    """The run config: the YAML file (or defaults) with the CLI's training flags over it."""
    from edgekd.config import ModelConfig, load_config, override
    from edgekd.errors import ConfigError

    cfg = load_config(config)
    cfg = override(cfg, "train", epochs=epochs, seed=seed, batch_size=batch_size, lr=lr)
    cfg = override(cfg, "data", limit=limit)
    cfg = override(cfg, "augment", policy=augment, mix=mix)
    if arch is not None or arch_args is not None:
        try:
            args = json.loads(arch_args) if arch_args else cfg.model.args
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--arch-args is not valid JSON: {exc}") from exc
        from dataclasses import replace

        cfg = replace(cfg, model=ModelConfig(arch=arch or cfg.model.arch, args=args))
    return cfg


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
    @app.command()
    @user_errors
    def teacher(
        out: Annotated[Path, typer.Option(help="Run folder to create.")] = Path("runs/teacher"),
        data: Annotated[
            str | None, typer.Option(help="'har' (built-in UCI HAPT) or PATH/manifest.jsonl.")
        ] = None,
        config: ConfigOpt = None,
        epochs: EpochsOpt = None,
        seed: SeedOpt = None,
        limit: LimitOpt = None,
        batch_size: BatchOpt = None,
        lr: LrOpt = None,
        arch: ArchOpt = None,
        arch_args: ArgsOpt = None,
        modality_dropout: Annotated[
            float | None,
            typer.Option(help="Drop whole modalities with this probability while training."),
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
        """Train the multimodal teacher on the modalities of the data (all unless --modalities)."""
        from dataclasses import replace

        from edgekd.config import override
        from edgekd.distill.trainer import train_teacher

        _use_threads(threads)
        cfg = _common(config, epochs, seed, limit, batch_size, lr, arch, arch_args, augment, mix)
        subset = tuple(m.strip() for m in modalities.split(",")) if modalities else None
        cfg = override(cfg, "data", source=data, modalities=subset)
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
    def distill(
        teacher: Annotated[Path, typer.Option(help="Teacher run folder (from `edgekd teacher`).")],
        out: Annotated[Path, typer.Option(help="Run folder to create.")] = Path("runs/student"),
        recipe: Annotated[
            str | None,
            typer.Option(help="Loss recipe: default, ce, kd, paper, kd_std, dist, dkd, bkd."),
        ] = None,
        modality: Annotated[
            str | None, typer.Option(help="Student modality (default: the dataset's).")
        ] = None,
        config: ConfigOpt = None,
        epochs: EpochsOpt = None,
        seed: SeedOpt = None,
        limit: LimitOpt = None,
        batch_size: BatchOpt = None,
        lr: LrOpt = None,
        arch: ArchOpt = None,
        arch_args: ArgsOpt = None,
        feature_loss: Annotated[
            str | None, typer.Option(help="none | hard_l2 | soft_margin")
        ] = None,
        distance: Annotated[
            str | None, typer.Option(help="soft_margin distance: cosine | l2 | l2sq")
        ] = None,
        margin: Annotated[float | None, typer.Option(help="Feature hinge margin m.")] = None,
        classifier_loss: Annotated[
            str | None, typer.Option(
                help="none | logit_kd | soft_teacher_head | margin_kd | dist | dkd | bkd"
            )
        ] = None,
        tau: Annotated[float | None, typer.Option(help="KD temperature.")] = None,
        quality: Annotated[
            str | None, typer.Option(help="none | teacher_confidence | teacher_norm")
        ] = None,
        lambda_task: Annotated[
            float | None, typer.Option(help="Weight of the cross-entropy term.")
        ] = None,
        lambda_feature: Annotated[
            float | None, typer.Option(help="Weight of the feature term.")
        ] = None,
        lambda_classifier: Annotated[
            float | None, typer.Option(help="Weight of the classifier term.")
        ] = None,
        teacher_view: Annotated[
            str | None, typer.Option(help="all | student (restricted-teacher control).")
        ] = None,
        teacher_mode: Annotated[
            str | None,
            typer.Option(help="online (teacher runs on each augmented batch) | cached (clean)."),
        ] = None,
        data: Annotated[
            str | None,
            typer.Option(help="The teacher's data at a new place (checked against the teacher)."),
        ] = None,
        unlabelled: Annotated[
            bool | None,
            typer.Option(
                "--unlabelled/--no-unlabelled",
                help="Add the data's unlabelled training windows (teacher terms only).",
            ),
        ] = None,
        augment: AugmentOpt = None,
        mix: MixOpt = None,
        threads: ThreadsOpt = None,
        resume: ResumeOpt = False,
        quiet: QuietOpt = False,
    ) -> None:
        """Distill a single-modality student from a teacher (`none` for all losses = CE-only)."""
        from dataclasses import replace

        from edgekd.config import override, resolve_recipe
        from edgekd.distill.trainer import distill as run_distill

        _use_threads(threads)
        cfg = _common(config, epochs, seed, limit, batch_size, lr, arch, arch_args, augment, mix)
        cfg = override(cfg, "data", source=data, unlabelled=unlabelled)
        if recipe is not None:
            # A recipe names the losses; the teacher mode stays as configured.
            mode = cfg.distill.teacher_mode
            cfg = replace(cfg, distill=replace(resolve_recipe(recipe), teacher_mode=mode))
        cfg = override(
            cfg,
            "distill",
            feature_loss=feature_loss,
            distance=distance,
            margin=margin,
            classifier_loss=classifier_loss,
            tau=tau,
            quality=quality,
            lambda_task=lambda_task,
            lambda_feature=lambda_feature,
            lambda_classifier=lambda_classifier,
            teacher_view=teacher_view,
            teacher_mode=teacher_mode,
        )
        if modality is not None:
            cfg = replace(cfg, student_modality=modality)
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
