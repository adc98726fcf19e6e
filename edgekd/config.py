"""Run configuration: frozen dataclasses, loaded from YAML and overridden from the CLI.

The resolved config is saved as `config.yaml` in every run folder, so a run can be repeated from
its folder alone. Unknown keys are errors (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from edgekd.errors import ConfigError

FEATURE_LOSSES = ("none", "hard_l2", "soft_margin")
DISTANCES = ("cosine", "l2", "l2sq")
CLASSIFIER_LOSSES = ("none", "logit_kd", "soft_teacher_head", "margin_kd", "dist", "dkd", "bkd",
                     "fixmatch")  # fmt: skip
# Classifier losses whose targets come from the student itself (no teacher).
SELF_LOSSES = ("fixmatch",)
# Classifier losses that compare the student's and the teacher's logits (logit_standardize applies).
LOGIT_LOSSES = ("logit_kd", "margin_kd", "dist", "dkd", "bkd")
QUALITY = ("none", "teacher_confidence", "teacher_norm")


TEACHER_MODES = ("online", "cached")
SELECTIONS = ("last", "best_val")
MIXES = ("none", "mixup", "cutmix")
AUGMENT_POLICIES = ("none", "default", "custom")
# Shipped defaults, one constant each: the teacher runs on every augmented batch (function
# matching); "cached" with AugmentConfig(policy="none", mix="none") is the earlier regime.
DEFAULT_TEACHER_MODE = "online"
# Epochs when train.epochs is unset: per student modality kind (audio students were still
# improving at 30); teachers use TEACHER_EPOCHS.
DEFAULT_EPOCHS = {"timeseries": 60, "audio": 60, "image": 60}
# A teacher's defaults where its config leaves them unset (chosen on the students' validation
# accuracy, docs/distillation.md): 60 epochs with mixup, and, for a teacher of two or more
# modalities whose architecture takes it, modality dropout, which also makes the teacher's
# student-modality-only view a fair restricted-teacher control.
TEACHER_EPOCHS = 60
TEACHER_MIX = "mixup"
TEACHER_MODALITY_DROPOUT = 0.3


@dataclass(frozen=True)
class DataConfig:
    """Where the paired data comes from and how it is split."""

    source: str | None = None  # "har" or a path to manifest.jsonl; None: har / the teacher's
    val_subjects: tuple[str, ...] | None = None  # None: the dataset's default
    limit: int | None = None  # at most this many training windows (quick trials)
    modalities: tuple[str, ...] | None = None  # teacher: train on these only (None: all)
    unlabelled: bool = True  # students: add the unlabelled training windows (teacher terms only)
    # Keep this class-stratified share of the labelled training windows (the same subset for
    # every recipe and seed); the rest become unlabelled paired windows. 1: all labels.
    labelled_share: float = 1.0


@dataclass(frozen=True)
class AugmentConfig:
    """Paired-consistent augmentation of raw training windows (`edgekd.data.augment`).

    `policy`: none; default (safe per-kind ops, `ops` entries override or add); custom (`ops`
    only). `ops` maps a registered op to its parameters. `mix`: mixup or cutmix with
    lambda ~ Beta(mix_alpha, mix_alpha), applied to a batch with probability `mix_prob`; every
    modality of a sample gets the same lambda and partner. `mix` None is the role's default
    (TEACHER_MIX for teachers, none for students), filled in by the run plan.
    """

    policy: str = "default"
    ops: dict[str, dict[str, float]] = field(default_factory=dict)
    mix: str | None = None
    mix_alpha: float = 1.0
    mix_prob: float = 1.0

    def __post_init__(self) -> None:
        from edgekd.data.augment import check_ops

        if self.policy not in AUGMENT_POLICIES:
            raise ConfigError(
                f"augment.policy={self.policy!r} is not one of {', '.join(AUGMENT_POLICIES)}"
            )
        if self.mix is not None and self.mix not in MIXES:
            raise ConfigError(f"augment.mix={self.mix!r} is not one of {', '.join(MIXES)}")
        if self.mix_alpha <= 0:
            raise ConfigError(f"augment.mix_alpha must be > 0, got {self.mix_alpha}")
        if not 0.0 <= self.mix_prob <= 1.0:
            raise ConfigError(f"augment.mix_prob must be in [0, 1], got {self.mix_prob}")
        if self.policy == "none" and self.ops:
            raise ConfigError("augment.ops given with policy none; use policy custom or default")
        check_ops(self.ops)

    @property
    def active(self) -> bool:
        return self.policy != "none" or self.mix not in (None, "none")


# The shipped augmentation (HAR-safe: rotation <= 15 degrees keeps sitting, standing and lying
# apart by gravity direction). Mixup (mix="mixup") waits for losses that take soft targets.
DEFAULT_AUGMENT = AugmentConfig()
NO_AUGMENT = AugmentConfig(policy="none", mix="none")


def _check_int(name: str, value: Any, low: int, what: str, high: int | None = None) -> None:
    """ConfigError unless `value` is an integer in [low, high] (bools are not integers here)."""
    bound = f"between {low} and {high}" if high is not None else f">= {low}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be a whole number {bound} ({what}), got {value!r}")
    if value < low or (high is not None and value > high):
        raise ConfigError(f"{name} must be {bound} ({what}), got {value}")


def _check_float(name: str, value: Any, what: str, positive: bool) -> None:
    """ConfigError unless `value` is a finite number, > 0 if `positive` else >= 0."""
    bound = "> 0" if positive else ">= 0"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number {bound} ({what}), got {value!r}")
    if value < 0 or (positive and value == 0):
        raise ConfigError(f"{name} must be {bound} ({what}), got {value}")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by teacher and student training."""

    epochs: int | None = None  # None: DEFAULT_EPOCHS / TEACHER_EPOCHS
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    num_workers: int = 0
    # Which epoch's weights the run keeps: "last" (the end of the cosine schedule) or "best_val"
    # (the most accurate epoch on validation). With a few validation subjects the per-epoch
    # accuracy is noisy, and the maximum over many epochs tends to pick a lucky high-lr epoch.
    select: str = "last"

    def __post_init__(self) -> None:
        if self.select not in SELECTIONS:
            raise ConfigError(f"train.select={self.select!r} is not one of {', '.join(SELECTIONS)}")
        if self.epochs is not None:
            _check_int("train.epochs (--epochs)", self.epochs, 1, "epochs to train")
        _check_int("train.batch_size (--batch-size)", self.batch_size, 2,
                   "windows per step (BatchNorm needs 2)")  # fmt: skip
        # numpy and torch seed generators with unsigned 32-bit integers.
        _check_int("train.seed (--seed)", self.seed, 0, "seed", high=2**32 - 1)
        _check_int("train.num_workers", self.num_workers, 0, "worker processes")
        _check_float("train.lr (--lr)", self.lr, "peak learning rate", positive=True)
        _check_float("train.weight_decay", self.weight_decay, "weight decay", positive=False)


@dataclass(frozen=True)
class ModelConfig:
    """Registry name and constructor arguments of the model to train."""

    arch: str = ""
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DistillConfig:
    """Distillation losses (`edgekd.distill.losses`); all `none` gives the CE-only baseline.

    L = lambda_task * CE + lambda_feature * L_feature + lambda_classifier * L_classifier.
    """

    feature_loss: str = "none"
    distance: str = "cosine"
    margin: float = 0.2
    classifier_loss: str = "logit_kd"
    tau: float = 4.0
    classifier_margin: float = 0.0
    quality: str = "none"
    quality_temperature: float = 0.5
    lambda_task: float = 1.0
    lambda_feature: float = 1.0
    lambda_classifier: float = 1.0
    projector: str = "linear"
    teacher_view: str = "all"  # "student": the restricted-teacher control (other modalities zeroed)
    # QAW robustness check: this share of training windows get Gaussian noise (normalised units)
    # instead of their non-student modalities when the teacher's outputs are computed.
    teacher_corrupt: float = 0.0
    # online: the frozen teacher runs on each augmented batch; cached: once, on clean windows.
    teacher_mode: str = DEFAULT_TEACHER_MODE
    # z-score each sample's logits (teacher and student) before the tau softmax (Sun et al. 2024).
    logit_standardize: bool = False
    dist_beta: float = 1.0  # DIST inter-class (per-sample) relation weight
    dist_gamma: float = 1.0  # DIST intra-class (per-class, across the batch) relation weight
    dkd_alpha: float = 1.0  # DKD target-class (binary) KL weight
    dkd_beta: float = 8.0  # DKD non-target-class KL weight
    # BKD class weights 1 / E_c with E_c = (1 - beta^n_c) / (1 - beta) (effective number of
    # samples); 1.0 is plain inverse frequency, 0.0 uniform weights (logit_kd).
    bkd_beta: float = 0.999
    # FixMatch (Sohn et al. 2020): the student's own prediction on the clean window is the target
    # for its augmented view, on unlabelled windows whose top probability reaches this threshold.
    fixmatch_threshold: float = 0.95
    # An online edgekd teacher may get augmentation it never trained with only when allowed (a
    # comparison of recipes would otherwise differ in the teacher's inputs unannounced).
    allow_unseen_augment: bool = False

    def __post_init__(self) -> None:
        for name, allowed in (
            ("feature_loss", FEATURE_LOSSES),
            ("distance", DISTANCES),
            ("classifier_loss", CLASSIFIER_LOSSES),
            ("quality", QUALITY),
        ):
            value = getattr(self, name)
            if value not in allowed:
                raise ConfigError(f"{name}={value!r} is not one of {', '.join(allowed)}")
        if self.teacher_mode not in TEACHER_MODES:
            raise ConfigError(
                f"teacher_mode={self.teacher_mode!r} is not one of {', '.join(TEACHER_MODES)}"
            )
        if self.teacher_view not in ("all", "student"):
            raise ConfigError(f"teacher_view={self.teacher_view!r} is not one of all, student")
        if self.tau <= 0:
            raise ConfigError(f"tau must be > 0, got {self.tau}")
        if not 0.0 <= self.teacher_corrupt <= 1.0:
            raise ConfigError(f"teacher_corrupt must be in [0, 1], got {self.teacher_corrupt}")
        if self.quality_temperature <= 0:
            raise ConfigError(f"quality_temperature must be > 0, got {self.quality_temperature}")
        if self.logit_standardize and self.classifier_loss not in LOGIT_LOSSES:
            raise ConfigError(
                f"logit_standardize needs a logit classifier_loss ({', '.join(LOGIT_LOSSES)}), "
                f"got classifier_loss={self.classifier_loss!r}"
            )
        for name in ("dist_beta", "dist_gamma", "dkd_alpha", "dkd_beta"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.classifier_loss in SELF_LOSSES and (
            self.feature_loss != "none" or self.quality != "none"
        ):
            raise ConfigError(
                f"classifier_loss={self.classifier_loss!r} learns from the student's own "
                "predictions: it takes no teacher terms (feature_loss none, quality none)"
            )
        if not 0.0 < self.fixmatch_threshold <= 1.0:
            raise ConfigError(
                f"fixmatch_threshold must be in (0, 1], got {self.fixmatch_threshold}"
            )
        if not 0.0 <= self.bkd_beta <= 1.0:
            raise ConfigError(f"bkd_beta must be in [0, 1], got {self.bkd_beta}")

    @property
    def uses_teacher(self) -> bool:
        return self.feature_loss != "none" or self.classifier_loss not in ("none", *SELF_LOSSES)

    @property
    def uses_unlabelled(self) -> bool:
        """Whether any term learns from unlabelled windows (teacher terms, FixMatch)."""
        return self.uses_teacher or self.classifier_loss in SELF_LOSSES


# The shipped default of `edgekd distill`: Hinton logit KD (tau 2, alpha = lambda_classifier 0.5,
# lambda_task = 1 - alpha) from the online teacher on augmented batches, with the unlabelled
# training windows; docs/distillation.md has the search and the measured table.
DEFAULT_RECIPE = DistillConfig(
    feature_loss="none", classifier_loss="logit_kd", tau=2.0, lambda_task=0.5, lambda_classifier=0.5
)

_KD = DistillConfig(feature_loss="none", classifier_loss="logit_kd", quality="none")

# `kd` and the logit-loss variants differ from it in one setting each (lambda 1 + 1, tau 4).
RECIPES: dict[str, DistillConfig] = {
    "ce": DistillConfig(feature_loss="none", classifier_loss="none", quality="none"),
    "kd": _KD,
    "kd_std": replace(_KD, logit_standardize=True),
    "dist": replace(_KD, classifier_loss="dist"),
    "dkd": replace(_KD, classifier_loss="dkd"),
    "bkd": replace(_KD, classifier_loss="bkd"),
    # The semi-supervised baseline without a teacher: same unlabelled windows, no teacher terms.
    "fixmatch": DistillConfig(feature_loss="none", classifier_loss="fixmatch", quality="none"),
    "paper": DistillConfig(
        feature_loss="soft_margin",
        distance="cosine",
        margin=0.2,
        classifier_loss="soft_teacher_head",
        quality="teacher_confidence",
    ),
}


def resolve_recipe(name: str) -> DistillConfig:
    """The named loss recipe; `default` is what `edgekd distill` uses without options."""
    if name == "default":
        return DEFAULT_RECIPE
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; choose one of default, {', '.join(RECIPES)}")
    return RECIPES[name]


@dataclass(frozen=True)
class RunConfig:
    """Everything a `teacher` or `distill` run needs besides its input folders."""

    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    distill: DistillConfig = field(default_factory=lambda: DEFAULT_RECIPE)
    augment: AugmentConfig = field(default_factory=lambda: DEFAULT_AUGMENT)
    student_modality: str | None = None  # None: the dataset's default student modality


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        close = _suggest(unknown[0], known) if len(unknown) == 1 else ""
        raise ConfigError(f"unknown key(s) in {where}: {', '.join(unknown)}{close}")
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        factory = known[name].default_factory
        sub = None if factory is dataclasses.MISSING else factory()
        if dataclasses.is_dataclass(sub) and isinstance(value, dict):
            kwargs[name] = _build(type(sub), value, f"{where}.{name}")
        elif isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"invalid {where}: {exc}") from exc


def _read_yaml(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return raw


def load_config(path: Path | None = None, base: RunConfig | None = None) -> RunConfig:
    """Read a YAML config over `base` (default `RunConfig()`); missing keys keep base values."""
    base = base or RunConfig()
    if path is None:
        return base
    return _build(RunConfig, _deep_merge(to_dict(base), _read_yaml(path)), str(path))


def build_config(
    path: Path | None = None,
    *,
    recipe: str | None = None,
    sets: Sequence[str] = (),
    flags: Mapping[str, Any] | None = None,
) -> RunConfig:
    """The one way a command's options become a RunConfig: layers, each over the one before,
    defaults < `recipe` (the distill section of a named recipe) < the YAML file at `path` <
    `sets` (`section.key=value` strings, `--set`) < `flags` ({section: {key: value}} of the
    command's named options; None values are not given). A config file's `distill.tau` thus
    edits the recipe, and a flag beats both."""
    merged = to_dict(RunConfig())
    where = ["defaults"]
    if recipe is not None:
        merged["distill"] = to_dict(resolve_recipe(recipe))
        where.append(f"recipe {recipe}")
    return _layered(RunConfig, merged, where, path, sets, flags)


def build_options(
    cls: type,
    path: Path | None = None,
    *,
    sets: Sequence[str] = (),
    flags: Mapping[str, Any] | None = None,
) -> Any:
    """`build_config` for any options dataclass `cls` (e.g. `ExportOptions`): its defaults <
    the YAML file at `path` (a mapping of its fields) < `sets` (`key=value`, or
    `section.key=value` for a nested dataclass) < `flags` (None values are not given)."""
    return _layered(cls, to_dict(cls()), ["defaults"], path, sets, flags)


def _layered(
    cls: type,
    merged: dict[str, Any],
    where: list[str],
    path: Path | None,
    sets: Sequence[str],
    flags: Mapping[str, Any] | None,
) -> Any:
    """`merged` (the lower layers, as a dict) < the file < `sets` < `flags`, built as `cls`."""
    if path is not None:
        merged = _deep_merge(merged, _typed_file(cls, _read_yaml(path), str(path)))
        where.append(str(path))
    for item in sets:
        keys, value = parse_set(item, cls)
        node = merged
        for part in keys[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item}: {'.'.join(keys[:-1])} is not a mapping")
        node[keys[-1]] = value
    given = {
        k: ({kk: vv for kk, vv in v.items() if vv is not None} if isinstance(v, Mapping) else v)
        for k, v in (flags or {}).items()
        if v is not None
    }
    merged = _deep_merge(merged, given)
    return _build(cls, merged, " + ".join(where) + (" + options" if sets or given else ""))


def _typed_file(cls: type, values: dict[str, Any], where: str, prefix: str = "") -> dict[str, Any]:
    """A config file's `values` checked against the fields of `cls` (nested dataclasses by
    section) and kept as the fields keep them (ints as floats, lists as tuples); ConfigError
    naming the file (`where`) and the key, with close matches for an unknown one."""
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for name, value in values.items():
        key = f"{prefix}{name}"
        if name not in hints:
            section = f": {prefix[:-1]}" if prefix else ""
            raise ConfigError(f"unknown key {name!r} in {where}{section}{_suggest(name, hints)}")
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: {key} is a section: give it a mapping, got {value!r}")
            out[name] = _typed_file(hint, value, where, f"{key}.")
            continue
        fits, kept = _conform(value, hint)
        if not fits:
            raise ConfigError(f"{where}: {key} takes {_type_name(hint)}, got {value!r}")
        out[name] = kept
    return out


def given_keys(path: Path | None, sets: Sequence[str] = (), cls: type = RunConfig) -> list[str]:
    """The keys of `cls` a config file and `--set` items give, as `section.key` (or `key` for a
    field that is no section), in order; checked as `build_config` checks them. For a command
    that sets some fields itself and must refuse them from the user."""
    keys: list[str] = []
    hints = typing.get_type_hints(cls)
    if path is not None:
        for name, value in _typed_file(cls, _read_yaml(path), str(path)).items():
            if isinstance(value, dict) and dataclasses.is_dataclass(hints[name]):
                keys += [f"{name}.{key}" for key in value]
            else:
                keys.append(name)
    for item in sets:
        path_, _ = parse_set(item, cls)
        keys.append(".".join(path_[:2] if len(path_) > 1 else path_))
    return list(dict.fromkeys(keys))


def _suggest(name: str, known: Iterable[str]) -> str:
    import difflib

    known = list(known)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(close)}?" if close else f"; known: {', '.join(known)}"


def _yaml_value(value: str, said: str) -> Any:
    """`value` (text of --set) parsed as YAML; ConfigError starting with `said` if not YAML."""
    if not value.strip():
        return ""
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError as exc:
        why = getattr(exc, "problem", None) or exc  # the one-line reason, without marks
        raise ConfigError(f"{said}: not a valid value ({why})") from None


def _optional_inner(hint: Any) -> tuple[bool, Any]:
    """(whether `hint` admits None, the type besides None: `int | None` -> (True, int))."""
    args = typing.get_args(hint)
    if type(None) not in args:
        return False, hint
    inner = [a for a in args if a is not type(None)]
    return True, inner[0] if len(inner) == 1 else hint


def _type_name(hint: Any) -> str:
    optional, target = _optional_inner(hint)
    shown = getattr(target, "__name__", str(target))
    return f"{shown} or null" if optional else shown


def _conform(value: Any, hint: Any) -> tuple[bool, Any]:
    """(whether the parsed `value` fits the field type `hint`, the value as the field keeps it:
    an int as a float, a list as a tuple of the item type)."""
    optional, target = _optional_inner(hint)
    if value is None:
        return optional, None
    origin = typing.get_origin(target)
    if target is bool:
        return isinstance(value, bool), value
    if target is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if target is float:
        fits = isinstance(value, int | float) and not isinstance(value, bool)
        return fits, float(value) if fits else value
    if target is str:
        return isinstance(value, str), value
    if origin is tuple:
        item = typing.get_args(target)[0]
        if not isinstance(value, list | tuple) or item is not str:
            return False, value
        return True, tuple(str(v).strip() for v in value)
    if origin is dict:
        return isinstance(value, dict), value
    return target is Any, value


_NULLS = ("null", "Null", "NULL", "~")


def _typed(value: str, hint: Any, option: str, said: str | None = None) -> Any:
    """`value` (text of --set) as the field type `hint`; ConfigError naming `option` if not,
    after `said` (how the user gave it; default `--set option=value`)."""
    said = said or f"--set {option}={value}"
    optional, target = _optional_inner(hint)
    if target is str and not (optional and value.strip() in _NULLS):
        return value  # as typed: "1" stays the string "1", "{" is no YAML error
    parsed = _yaml_value(value, said)
    if typing.get_origin(target) is tuple and not isinstance(parsed, list) and parsed is not None:
        parsed = value.split(",")  # a comma list: data.val_subjects=1,3
    fits, kept = _conform(parsed, hint)
    if not fits:
        raise ConfigError(f"{said}: {option} takes {_type_name(hint)}, got {value!r}")
    return kept


def parse_set(
    item: str, root: type = RunConfig, *, said: str | None = None
) -> tuple[tuple[str, ...], Any]:
    """`section.key=value` (`--set`) as (the key's path in `root`, the value typed by its
    field: int, float, bool, str, a comma list for tuples, YAML for dicts, `null` for an
    optional field). A field of `root` that is no section is `key=value`. `model.args.NAME=V` and
    `augment.ops.OP.PARAM=V` reach into those dicts (YAML-typed). ConfigError naming the option
    (`said`: how the user gave it, default `--set ITEM`), with close matches for an unknown
    key."""
    said = said or f"--set {item}"
    hints = typing.get_type_hints(root)
    if "=" not in item:
        sections = any(map(dataclasses.is_dataclass, hints.values()))
        form = "section.key=value" if sections else "key=value"
        raise ConfigError(f"{said}: expected {form}, e.g. {_example(root)}")
    key, value = item.split("=", 1)
    path = tuple(key.strip().split("."))
    if path[0] not in hints:
        raise ConfigError(f"{said}: unknown {'key' if len(path) == 1 else 'section'} "
                          f"{path[0]!r}{_suggest_field(path, hints)}")  # fmt: skip
    hint = hints[path[0]]
    if not dataclasses.is_dataclass(hint):
        if len(path) != 1:
            raise ConfigError(f"{said}: {path[0]} is a single value, not a section")
        return path, _typed(value, hint, key, said)
    fields_ = typing.get_type_hints(hint)
    if len(path) < 2 or path[1] not in fields_:
        name = path[1] if len(path) > 1 else ""
        raise ConfigError(
            f"{said}: unknown key {name!r} in section {path[0]}{_suggest(name, fields_)}"
        )
    if len(path) == 2:
        return path, _typed(value, fields_[path[1]], key, said)
    if typing.get_origin(fields_[path[1]]) is not dict:
        raise ConfigError(f"{said}: {path[0]}.{path[1]} has no keys inside it")
    return path, _yaml_value(value, said)


def _suggest_field(path: tuple[str, ...], hints: Mapping[str, Any]) -> str:
    """Close matches for an unknown first part of a --set key: a top-level name, or for a bare
    `key` a section's field of that name (`tau` -> distill.tau)."""
    if len(path) == 1:
        inside = [f"{section}.{name}" for section, hint in hints.items()
                  if dataclasses.is_dataclass(hint)
                  for name in typing.get_type_hints(hint) if name == path[0]]  # fmt: skip
        if inside:
            return f"; did you mean {' or '.join(inside)}?"
    return _suggest(path[0], hints)


def _example(root: type) -> str:
    """A `--set` example for `root`: its first field with its default."""
    if root is RunConfig:
        return "train.lr=0.001"
    first = fields(root)[0]
    return f"{first.name}={to_dict(root())[first.name]}"


def from_dict(values: dict[str, Any]) -> RunConfig:
    """Rebuild a RunConfig from `to_dict` output (e.g. a run folder's config.yaml)."""
    return _build(RunConfig, values, "config")


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for key, value in b.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "args":
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain JSON/YAML-safe dict (tuples become lists)."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return {k: plain(v) for k, v in dataclasses.asdict(cfg).items()}


def override(cfg: RunConfig, section: str, **values: Any) -> RunConfig:
    """Return cfg with `section`'s fields replaced by the non-None `values` (CLI flags)."""
    given = {k: v for k, v in values.items() if v is not None}
    if not given:
        return cfg
    return replace(cfg, **{section: replace(getattr(cfg, section), **given)})


def save_config(cfg: RunConfig, path: Path) -> None:
    from edgekd.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
