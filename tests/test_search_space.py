"""Search spaces: every student's space (FixedTrial round trip, constructor builds, ranges),
the recipe and schedule spaces, and the enumeration behind space sizes and latency tables."""

from __future__ import annotations

import inspect

import optuna
import pytest

from edgekd.config import DEFAULT_RECIPE, RECIPES
from edgekd.errors import ConfigError
from edgekd.models import create_student, list_students
from edgekd.models.registry import student_space
from edgekd.search.space import (
    SEARCH_RECIPES,
    arch_space,
    distill_config,
    draw,
    enumerate_space,
    recipe_space,
    space_size,
)
from tests.test_models import K, _spec

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.mark.parametrize("name", list_students())
def test_every_point_of_a_student_space_builds(name: str) -> None:
    space = student_space(name)
    points = enumerate_space(space)
    assert len(points) >= 8, "a space with almost no choices is not a search"
    from edgekd.models.registry import _STUDENTS

    accepted = set(inspect.signature(_STUDENTS[name].fn).parameters) - {
        "input_shape", "num_classes",
    }  # fmt: skip
    sizes = set()
    for point in points:
        assert set(point) <= accepted, f"{name} space draws a keyword its constructor lacks"
        # a space is a pure function of the trial: FixedTrial with the point gives the point
        assert space(optuna.trial.FixedTrial(point)) == point
        model = create_student(name, _spec(name), K, **point)
        assert model.arch_args == {**model.arch_args, **point}
        sizes.add(sum(p.numel() for p in model.parameters()))
    assert len(sizes) > len(points) // 4, "the space's choices barely change the model"


def test_sampled_candidates_stay_inside_the_enumerated_space() -> None:
    archs = ["tcn_tiny", "dsres_ts"]
    grids = {a: enumerate_space(arch_space(a)) for a in archs}
    recipes = enumerate_space(recipe_space)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(30):
        trial = study.ask()
        cand = draw(trial, archs)
        assert cand.args in grids[cand.arch]
        assert {"recipe": cand.recipe, "tau": cand.tau, "alpha": cand.alpha} in recipes
        assert set(trial.params) >= {f"{cand.arch}.{k}" for k in cand.args}
        study.tell(trial, 0.0)


def test_recipe_space() -> None:
    assert set(SEARCH_RECIPES) == {"default", *RECIPES} - {"ce", "fixmatch"}
    points = enumerate_space(recipe_space)
    # default (a fixed point) + 5 logit recipes x 4 taus x 4 alphas + paper x 4 alphas
    assert len(points) == 1 + 5 * 4 * 4 + 4
    assert {"recipe": "default", "tau": None, "alpha": None} in points
    assert distill_config("default", None, None) == DEFAULT_RECIPE
    cfg = distill_config("dkd", 8.0, 0.75)
    assert (cfg.classifier_loss, cfg.tau, cfg.lambda_classifier, cfg.lambda_task) == (
        "dkd", 8.0, 0.75, 0.25,
    )  # fmt: skip
    paper = [p for p in points if p["recipe"] == "paper"]
    assert all(p["tau"] is None for p in paper)  # no logit loss: tau does not apply


def test_enumeration_follows_conditional_branches() -> None:
    def space(trial: object) -> tuple[object, ...]:
        a = trial.suggest_categorical("a", ["x", "y"])  # type: ignore[attr-defined]
        if a == "x":
            return (a, trial.suggest_int("n", 1, 3))  # type: ignore[attr-defined]
        return (a,)

    assert sorted(enumerate_space(space), key=str) == [("x", 1), ("x", 2), ("x", 3), ("y",)]

    def floats(trial: object) -> float:
        return trial.suggest_float("lr", 0.1, 1.0)  # type: ignore[attr-defined]

    with pytest.raises(ConfigError, match="'lr' is a float range"):
        enumerate_space(floats)


def test_space_size() -> None:
    sizes = space_size(["tcn_tiny"])
    assert sizes["tcn_tiny"] == 6 * 4 * 3
    assert sizes["total"] == 72 * sizes["recipes"] * sizes["schedule"]
