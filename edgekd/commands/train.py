"""`edgekd teacher` and `edgekd distill`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from edgekd.commands import user_errors

if TYPE_CHECKING:
    from edgekd.config import RunConfig

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", help="YAML config over the recipe; --set and flags override it."),
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
MixOpt = Annotated[
    str | None,
    typer.Option("--mix", help="none | mixup | cutmix (default: mixup for teachers, else none)."),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="section.key=value for any config field, typed by the field (repeatable), e.g. "
        "--set train.weight_decay=0 --set augment.ops.rotate.max_deg=30.",
    ),
]
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
    *,
    recipe: str | None = None,
    sets: list[str] | None = None,
    flags: dict[str, Any] | None = None,
) -> RunConfig:
    """The run config by `edgekd.config.build_config`: flags > --set > the YAML file > the
    recipe > defaults. `flags` adds the command's own named options ({section: {key: value}})."""
    from edgekd.config import build_config
    from edgekd.errors import ConfigError

    try:
        args = json.loads(arch_args) if arch_args else None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--arch-args is not valid JSON: {exc}") from exc
    named: dict[str, Any] = {
        "train": {"epochs": epochs, "seed": seed, "batch_size": batch_size, "lr": lr},
        "data": {"limit": limit},
        "augment": {"policy": augment, "mix": mix},
        "model": {"arch": arch, "args": args},
    }
    for section, values in (flags or {}).items():
        merged = {**named.get(section, {}), **values} if isinstance(values, dict) else values
        named[section] = merged
    return build_config(config, recipe=recipe, sets=sets or (), flags=named)


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
        set_: SetOpt = None,
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

        _use_threads(threads)
        subset = tuple(m.strip() for m in modalities.split(",")) if modalities else None
        cfg = _common(
            config, epochs, seed, limit, batch_size, lr, arch, arch_args, augment, mix,
            sets=set_, flags={"data": {"source": data, "modalities": subset}},
        )  # fmt: skip
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
                "teacher: the semi-supervised baseline) (beneath "
                "--config, --set and flags: a config file's distill.tau edits the recipe)."
            ),
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
                help="none | logit_kd | soft_teacher_head | margin_kd | dist | dkd | bkd | fixmatch"
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
            typer.Option(
                help="Paired data: 'har' or PATH/manifest.jsonl (needed with an outside teacher; "
                "with an edgekd teacher, its data at a new place, checked against it)."
            ),
        ] = None,
        labelled_share: Annotated[
            float | None,
            typer.Option(
                help="Keep this class-stratified share of the labelled training windows (the "
                "same for every recipe and seed); the rest become unlabelled paired windows."
            ),
        ] = None,
        unlabelled: Annotated[
            bool | None,
            typer.Option(
                "--unlabelled/--no-unlabelled",
                help="Add the data's unlabelled training windows (teacher terms only).",
            ),
        ] = None,
        allow_unseen_augment: Annotated[
            bool | None,
            typer.Option(
                "--allow-unseen-augment",
                help="Let the online teacher get augmentation it never trained with (refused "
                "otherwise; the plan records it).",
            ),
        ] = None,
        augment: AugmentOpt = None,
        mix: MixOpt = None,
        set_: SetOpt = None,
        threads: ThreadsOpt = None,
        resume: ResumeOpt = False,
        quiet: QuietOpt = False,
    ) -> None:
        """Distill a single-modality student from a teacher (`none` for all losses = CE-only)."""
        from edgekd.distill.trainer import distill as run_distill

        _use_threads(threads)
        distill_flags = {
            "feature_loss": feature_loss,
            "distance": distance,
            "margin": margin,
            "classifier_loss": classifier_loss,
            "tau": tau,
            "quality": quality,
            "lambda_task": lambda_task,
            "lambda_feature": lambda_feature,
            "lambda_classifier": lambda_classifier,
            "teacher_view": teacher_view,
            "teacher_mode": teacher_mode,
            "allow_unseen_augment": allow_unseen_augment,
        }
        cfg = _common(
            config, epochs, seed, limit, batch_size, lr, arch, arch_args, augment, mix,
            recipe=recipe, sets=set_,
            flags={"data": {"source": data, "unlabelled": unlabelled,
                            "labelled_share": labelled_share},
                   "distill": distill_flags,
                   "student_modality": modality},
        )  # fmt: skip
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
