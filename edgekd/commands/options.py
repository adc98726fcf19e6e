"""The options the commands share, declared once, and the one way they become a config.

`teacher`, `distill`, `ablate` and `search` build a `RunConfig` (`run_config`), `export` its
`ExportOptions` (`edgekd.config.build_options`), by the same layers: defaults < recipe < the
`--config` YAML file < `--set key=value` (typed by the field) < the command's few named flags.
Only typer is imported here at module level (`edgekd --help` stays fast).
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

if TYPE_CHECKING:
    from edgekd.config import RunConfig

F = TypeVar("F", bound=Callable[..., Any])

CONFIG_PANEL = "Config file and --set (flags beat --set, --set beats the file)"

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        metavar="FILE",
        help="YAML run config with sections data, train, model, distill, augment (a run "
        "folder's config.yaml works); over the recipe and the defaults.",
        rich_help_panel=CONFIG_PANEL,
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="SECTION.KEY=VALUE",
        help="Any config field, typed by the field (repeatable), e.g. --set distill.tau=2 "
        "--set train.weight_decay=0 --set augment.ops.rotate.max_deg=30.",
        rich_help_panel=CONFIG_PANEL,
    ),
]
ExportConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        metavar="FILE",
        help="YAML export options: a mapping of the keys --set takes, e.g. 'calib: 256'.",
        rich_help_panel=CONFIG_PANEL,
    ),
]
ExportSetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="KEY=VALUE",
        help="Any export option by its field name, typed by it (repeatable): the flags' names "
        "with _ (target, precision, ptq, calib, qat_epochs, max_drop, ...) and seed (which "
        "windows calibrate and score), e.g. --set calib=256 --set seed=1.",
        rich_help_panel=CONFIG_PANEL,
    ),
]

# The named flags of the training commands: each sets one config field (beats --set and --config).
EpochsOpt = Annotated[int | None, typer.Option(help="Training epochs (train.epochs).")]
SeedOpt = Annotated[
    int | None, typer.Option(help="Random seed (train.seed; runs are deterministic for a seed).")
]
LimitOpt = Annotated[
    int | None, typer.Option(help="Use at most N training windows (data.limit; quick trials).")
]
BatchOpt = Annotated[
    int | None, typer.Option("--batch-size", help="Windows per step (train.batch_size).")
]
LrOpt = Annotated[
    float | None, typer.Option("--lr", help="Peak learning rate, cosine decay (train.lr).")
]
ArchOpt = Annotated[
    str | None, typer.Option("--arch", help="Registered model name (see `edgekd models`).")
]
ArgsOpt = Annotated[
    str | None,
    typer.Option("--arch-args", help="Model arguments as JSON, e.g. '{\"width\": 16}'."),
]
AugmentOpt = Annotated[
    str | None,
    typer.Option("--augment", help="Augmentation policy: default (safe per kind) | none | custom."),
]
MixOpt = Annotated[
    str | None,
    typer.Option("--mix", help="none | mixup | cutmix (default: mixup for teachers, else none)."),
]
DataOpt = Annotated[
    str | None,
    typer.Option(
        help="Paired data: 'har' or PATH/manifest.jsonl (needed with an outside teacher; "
        "with an edgekd teacher, its data at a new place, checked against it)."
    ),
]
UnlabelledOpt = Annotated[
    bool | None,
    typer.Option(
        "--unlabelled/--no-unlabelled",
        help="Add the data's unlabelled training windows (teacher terms only; default on).",
    ),
]
TeacherOpt = Annotated[
    Path,
    typer.Option(
        help="Teacher: a run folder from `edgekd teacher`, or an outside teacher as "
        "`edgekd distill` takes it (a teacher.yaml card, a folder holding one such as a "
        "`teacher cache`, or a .onnx / .pt2 with the card beside it; needs --data)."
    ),
]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue an interrupted run in --out.")]
QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress bars or per-epoch lines.")
]
ThreadsOpt = Annotated[
    int | None,
    typer.Option(help="CPU threads for training (default: OMP_NUM_THREADS, else all cores)."),
]

# Options of the commands that run many trainings (ablate, search) through `edgekd.executor`.
ExecutorOpt = Annotated[
    str,
    typer.Option(
        help="Where trainings run: local (a process each) | ray (Ray tasks; --out and the "
        "teacher on a filesystem every node shares)."
    ),
]
AddressOpt = Annotated[
    str | None, typer.Option(help="Ray cluster address (`ray start --head` prints it).")
]

# Flags of earlier versions, kept as hidden aliases of `--set distill.FIELD=VALUE` with a flag's
# precedence (docs, scripts and error hints name them); `--help` shows --set instead.
DISTILL_ALIASES = ("feature_loss", "distance", "margin", "classifier_loss", "tau", "quality",
                   "lambda_task", "lambda_feature", "lambda_classifier", "teacher_view",
                   "teacher_mode")  # fmt: skip


def distill_aliases(command: F) -> F:
    """The typer command `command` with the hidden options `--FIELD-NAME VALUE` of the
    DISTILL_ALIASES fields; it gets them as its `aliased` argument ({as given: `--set` item},
    for `run_config`)."""
    flags = {name: "--" + name.replace("_", "-") for name in DISTILL_ALIASES}
    hidden = [
        inspect.Parameter(
            f"alias_{name}",
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[str | None, typer.Option(flag, hidden=True)],
        )
        for name, flag in flags.items()
    ]

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        given = {name: kwargs.pop(f"alias_{name}", None) for name in flags}
        aliased = {f"{flags[name]} {value}": f"distill.{name}={value}"
                   for name, value in given.items() if value is not None}  # fmt: skip
        return command(*args, aliased=aliased, **kwargs)

    # typer reads the options from the signature: the command's own, less `aliased`, + hidden.
    signature = inspect.signature(command, eval_str=True)
    shown = [p for p in signature.parameters.values() if p.name != "aliased"]
    wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*shown, *hidden]
    )
    return wrapper  # type: ignore[return-value]


def training_flags(
    epochs: int | None = None,
    seed: int | None = None,
    limit: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    arch: str | None = None,
    arch_args: str | None = None,
    augment: str | None = None,
    mix: str | None = None,
) -> dict[str, Any]:
    """The shared training flags as {`section.key`: value} for `run_config` (None: not given)."""
    from edgekd.errors import ConfigError

    try:
        args = json.loads(arch_args) if arch_args else None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--arch-args is not valid JSON: {exc}") from exc
    return {
        "train.epochs": epochs, "train.seed": seed, "train.batch_size": batch_size,
        "train.lr": lr, "data.limit": limit, "augment.policy": augment, "augment.mix": mix,
        "model.arch": arch, "model.args": args,
    }  # fmt: skip


def run_config(
    config: Path | None,
    sets: Sequence[str] | None,
    flags: Mapping[str, Any],
    *,
    recipe: str | None = None,
    aliased: Mapping[str, str] | None = None,
) -> RunConfig:
    """The run config by `edgekd.config.build_config`: named `flags` ({`section.key` or `key`:
    value}, None = not given) and `aliased` flags ({as given: `--set` item}) > `sets` (--set) >
    the YAML file `config` > `recipe` > defaults."""
    from edgekd.config import build_config, parse_set

    given = {key: value for key, value in flags.items() if value is not None}
    for said, item in (aliased or {}).items():
        path, value = parse_set(item, said=said)
        given[".".join(path)] = value
    return build_config(config, recipe=recipe, sets=sets or (), flags=_nested(given))


def refuse_given(
    config: Path | None,
    sets: Sequence[str] | None,
    command: str,
    refused: Mapping[str, str],
    *,
    only: Collection[str] | None = None,
) -> None:
    """ConfigError if `--config` or `--set` gives a key the command sets itself: one under a
    prefix of `refused` ({`section` or `section.key`: why}), or, with `only`, any other key."""
    from edgekd.config import given_keys
    from edgekd.errors import ConfigError

    for key in given_keys(config, sets or ()):
        for prefix, why in refused.items():
            if key == prefix or key.startswith(prefix + "."):
                raise ConfigError(f"`edgekd {command}` takes no {key} from --config/--set: {why}")
        if only is not None and key not in only:
            raise ConfigError(
                f"`edgekd {command}` takes no {key} from --config/--set: it passes only "
                f"{', '.join(only)} to its trainings"
            )


def _nested(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{"train.lr": 0.1, "student_modality": "x"} -> {"train": {"lr": 0.1}, "student_modality":
    "x"}, the form `build_config` takes for flags."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        section, _, name = key.partition(".")
        if name:
            out.setdefault(section, {})[name] = value
        else:
            out[section] = value
    return out
