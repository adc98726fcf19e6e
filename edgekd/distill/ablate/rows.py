"""The runs of the ablation table: each row's losses, the change against `ce` it makes on
purpose and its base-config overrides; `teacher`; and the controls of each KD run."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from edgekd.config import (
    RECIPES,
    DistillConfig,
    RunConfig,
    from_dict,
    resolve_recipe,
    to_dict,
)
from edgekd.errors import ConfigError

RESTRICTED = "_restricted"
UNIMODAL = "_unimodal"
CONTROLS = {RESTRICTED: "restricted", UNIMODAL: "unimodal"}
CORRUPT_SHARE = 0.3  # share of windows whose teacher-side modalities become noise (paper_corrupt)

# The config values that turn training-time augmentation (and mixing) off: the `ce_plain` row,
# the CE recipe of the earlier no-augmentation regime.
AUGMENTATION_OFF: dict[str, Any] = {"augment": {"policy": "none", "mix": "none"}}


def with_overrides(cfg: RunConfig, overrides: Mapping[str, Mapping[str, Any]]) -> RunConfig:
    """cfg with each `section: {key: value}` of `overrides` set."""
    merged = to_dict(cfg)
    for section, values in overrides.items():
        merged[section] = {**merged[section], **values}
    return from_dict(merged)


def augmentation_off(cfg: RunConfig) -> RunConfig:
    """cfg with training-time augmentation and mixing switched off (`AUGMENTATION_OFF`)."""
    return with_overrides(cfg, AUGMENTATION_OFF)


# Aspects of a run plan (`edgekd.distill.plan.ASPECTS`) a row changes on purpose.
LOSS_CHANGE = ("loss", "teacher")


@dataclass(frozen=True)
class Row:
    """A run of the table: its meaning, losses, the plan aspects it changes against `ce` on
    purpose (`intended`; every other difference is reported, or refused with --strict), the
    base-config values it sets (`overrides`), `match_steps`: a run whose optimizer-step count
    this one matches by training more epochs, and `isolates`: (run R, what R adds) when this row
    is R with one thing taken away, so that R - this row, paired by seed, measures that thing."""

    meaning: str
    distill: DistillConfig
    intended: tuple[str, ...] = LOSS_CHANGE
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    match_steps: str | None = None
    isolates: tuple[str, str] | None = None


def _runs_table() -> dict[str, Row]:
    """Run name -> Row; built on call so `default` is current."""
    none = RECIPES["ce"]
    paper = RECIPES["paper"]
    default = resolve_recipe("default")
    return {
        "ce": Row("student, CE only", none, ()),
        "ce_plain": Row(
            "student, CE only, augmentation off", none, ("augment",), AUGMENTATION_OFF
        ),
        "ce_steps": Row(
            "student, CE only, as many optimizer steps as default", none, ("steps", "epochs"),
            match_steps="default",
            isolates=("default", "what the teacher and the unlabelled windows add at equal steps"),
        ),  # fmt: skip
        "hard_l2": Row("+ hard_l2", replace(none, feature_loss="hard_l2")),
        "logit_kd": Row("+ logit_kd (Hinton, recipe kd)", RECIPES["kd"]),
        "kd_std": Row("logit_kd on standardised logits (recipe kd_std)", RECIPES["kd_std"]),
        "dist": Row("+ DIST relation loss (recipe dist)", RECIPES["dist"]),
        "dkd": Row("+ decoupled KD (recipe dkd)", RECIPES["dkd"]),
        "bkd": Row("+ class-balanced logit KD (recipe bkd)", RECIPES["bkd"]),
        "soft_margin": Row("+ soft_margin", replace(none, feature_loss="soft_margin")),
        "soft_both": Row("+ soft_margin + soft_teacher_head", replace(paper, quality="none")),
        "paper": Row("+ both + quality weights (recipe paper)", paper),
        "paper_corrupt": Row(
            f"paper, {CORRUPT_SHARE:.0%} of teacher-side inputs noise",
            replace(paper, teacher_corrupt=CORRUPT_SHARE),
        ),
        "default": Row("shipped default recipe", default),
        "default_nounl": Row(
            "shipped default recipe without the unlabelled windows",
            default,
            (*LOSS_CHANGE, "unlabelled"),
            overrides={"data": {"unlabelled": False}},
            isolates=("default", "what the unlabelled windows add"),
        ),
    }


DEFAULT_RUNS = (
    "teacher", "ce", "hard_l2", "logit_kd", "soft_margin", "soft_both", "paper", "paper_corrupt",
    "default", "default_restricted",
)  # fmt: skip


def run_names() -> list[str]:
    """Every accepted run name: the table's, `teacher`, and the controls of each KD run X."""
    table = _runs_table()
    kd = [n for n, row in table.items() if row.distill.uses_teacher]
    return ["teacher", *table, *(f"{n}{suffix}" for suffix in CONTROLS for n in kd)]


def split_control(name: str) -> tuple[str, str | None]:
    """(base run, control kind or None): `default_unimodal` -> (`default`, `unimodal`)."""
    for suffix, kind in CONTROLS.items():
        if name.endswith(suffix):
            return name[: -len(suffix)], kind
    return name, None


def run_row(name: str) -> Row:
    """The Row of a run name; ConfigError for an unknown one."""
    table = _runs_table()
    base, control = split_control(name)
    if control is not None and base in table and table[base].distill.uses_teacher:
        row = table[base]
        if control == "restricted":
            return replace(
                row,
                meaning=f"{row.meaning}, teacher sees the student's modality only",
                distill=replace(row.distill, teacher_view="student"),
            )
        meaning = f"{row.meaning}, teacher trained on the student's modality only"
        return replace(row, meaning=meaning)
    if control is None and name in table:
        return table[name]
    raise ConfigError(f"unknown run {name!r}; choose from {', '.join(run_names())}")


def run_config(name: str) -> tuple[str, DistillConfig]:
    """(meaning, DistillConfig) of a run name; ConfigError for an unknown one."""
    row = run_row(name)
    return row.meaning, row.distill
