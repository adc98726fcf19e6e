"""The search space of `edgekd search`: which student (and its constructor keywords), which loss
recipe with its temperature and KD weight, and the learning rate, all drawn define-by-run from an
Optuna trial.

Student spaces live beside their constructors (`edgekd.models.students`, registered with
`register_student(..., space=fn)`); the recipe and schedule spaces live here, built from the
recipe names of `edgekd.config`. Every choice is finite (`suggest_categorical` / `suggest_int`),
so `enumerate_space` can list all points: the plan's space size, and the architectures a latency
table must cover. Parameter names are prefixed with the architecture (`tcn_tiny.width`), so two
students' `width` never clash in one study. No torch is imported here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from edgekd.config import LOGIT_LOSSES, RECIPES, DistillConfig, resolve_recipe
from edgekd.errors import ConfigError

# `default` is the shipped recipe as it is (tau 2, alpha 0.5): the anchor the search must beat.
# `ce` and `fixmatch` are not searched: they are the no-teacher controls, not distillation.
SEARCH_RECIPES: tuple[str, ...] = (
    "default", *(r for r in RECIPES if RECIPES[r].uses_teacher)
)  # fmt: skip
TAUS: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
# KD weight alpha: lambda_classifier = alpha, lambda_task = 1 - alpha (Hinton's convex mix).
ALPHAS: tuple[float, ...] = (0.25, 0.5, 0.75, 0.9)
LEARNING_RATES: tuple[float, ...] = (1e-3, 3e-3, 1e-2)


class Prefixed:
    """A trial whose parameter names get `prefix` (the `suggest_*` subset the spaces use)."""

    def __init__(self, trial: Any, prefix: str) -> None:
        self.trial, self.prefix = trial, prefix

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        return self.trial.suggest_categorical(self.prefix + name, list(choices))

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1) -> int:
        return int(self.trial.suggest_int(self.prefix + name, low, high, step=step))


def recipe_space(trial: Any, recipes: Sequence[str] = SEARCH_RECIPES) -> dict[str, Any]:
    """`{"recipe", "tau", "alpha"}`: tau for recipes with a logit loss, alpha for every recipe
    but `default` (which is a fixed point); None where a value does not apply. `recipes`: those
    searched (all of SEARCH_RECIPES but what the teacher cannot serve, e.g. an outside
    teacher's card gives no classifier weights for soft_teacher_head)."""
    recipe = trial.suggest_categorical("recipe", list(recipes))
    if recipe == "default":
        return {"recipe": recipe, "tau": None, "alpha": None}
    logit = resolve_recipe(recipe).classifier_loss in LOGIT_LOSSES
    tau = trial.suggest_categorical("tau", list(TAUS)) if logit else None
    return {"recipe": recipe, "tau": tau, "alpha": trial.suggest_categorical("alpha", list(ALPHAS))}


def train_space(trial: Any) -> dict[str, Any]:
    """The schedule: the peak learning rate of the cosine schedule."""
    return {"lr": trial.suggest_categorical("lr", list(LEARNING_RATES))}


def distill_config(recipe: str, tau: float | None, alpha: float | None) -> DistillConfig:
    """The DistillConfig of a drawn recipe point (None keeps the recipe's own value)."""
    cfg = resolve_recipe(recipe)
    if tau is not None:
        cfg = replace(cfg, tau=float(tau))
    if alpha is not None:
        cfg = replace(cfg, lambda_classifier=float(alpha), lambda_task=1.0 - float(alpha))
    return cfg


@dataclass(frozen=True)
class Candidate:
    """One point of the space: student `arch` with constructor `args`, the recipe point and lr."""

    arch: str
    args: dict[str, Any]
    recipe: str
    tau: float | None
    alpha: float | None
    lr: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": self.arch, "args": dict(self.args), "recipe": self.recipe, "tau": self.tau,
            "alpha": self.alpha, "lr": self.lr,
        }  # fmt: skip


def arch_space(arch: str) -> Callable[[Any], dict[str, Any]]:
    """Student `arch`'s registered space, drawing prefixed parameter names."""
    from edgekd.models.registry import student_space

    space = student_space(arch)
    return lambda trial: space(Prefixed(trial, f"{arch}."))


def draw(trial: Any, archs: Sequence[str], recipes: Sequence[str] = SEARCH_RECIPES) -> Candidate:
    """Draw a candidate from `trial`: the architecture, its keywords, recipe point (one of
    `recipes`) and lr."""
    arch = trial.suggest_categorical("arch", list(archs))
    args = arch_space(arch)(trial)
    return Candidate(arch, args, **recipe_space(trial, recipes), **train_space(trial))


class _GridTrial:
    """Replays a fixed list of choice indices and records each decision's option count."""

    def __init__(self, path: list[int]) -> None:
        self.path = path
        self.counts: list[int] = []
        self.taken: list[int] = []

    def _pick(self, options: list[Any]) -> Any:
        depth = len(self.counts)
        index = self.path[depth] if depth < len(self.path) else 0
        self.counts.append(len(options))
        self.taken.append(index)
        return options[index]

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        return self._pick(list(choices))

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1) -> int:
        return int(self._pick(list(range(low, high + 1, step))))

    def suggest_float(self, name: str, *args: Any, **kwargs: Any) -> float:
        raise ConfigError(f"search space parameter {name!r} is a float range: not enumerable")


def enumerate_space(space: Callable[[Any], Any]) -> list[Any]:
    """Every point of a define-by-run space (depth-first over its decisions; conditional
    decisions are followed only where they are drawn)."""
    points: list[Any] = []
    stack: list[list[int]] = [[]]
    while stack:
        path = stack.pop()
        trial = _GridTrial(path)
        points.append(space(trial))
        for depth in range(len(path), len(trial.counts)):
            for other in range(1, trial.counts[depth]):
                stack.append([*trial.taken[:depth], other])
    return points


def space_size(archs: Sequence[str], recipes: Sequence[str] = SEARCH_RECIPES) -> dict[str, int]:
    """Points per part of the space: each architecture's, the recipes' (of `recipes`), the
    schedule's, and the total (their product summed over architectures)."""
    sizes = {arch: len(enumerate_space(arch_space(arch))) for arch in archs}
    points = len(enumerate_space(lambda trial: recipe_space(trial, recipes)))
    schedule = len(enumerate_space(train_space))
    return {
        **sizes, "recipes": points, "schedule": schedule,
        "total": sum(sizes.values()) * points * schedule,
    }  # fmt: skip
