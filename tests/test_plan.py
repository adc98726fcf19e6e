"""The resolved run plan on the real HAR data: window and step counts, the schedule in optimizer
steps, plan.json in run folders, and the two leaks it closes (mixing, CV folds)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from edgekd.config import RunConfig, resolve_recipe
from edgekd.data.augment import build_policy
from edgekd.data.pipeline import Loader, Windows, labelled, shard_batches
from edgekd.distill.plan import Schedule, TeacherRun, load_data, resolve_plan, steps_per_epoch

HAR_LABELLED = 5752  # labelled windows of HAR's training split (16 subjects)
HAR_UNLABELLED = 3661  # unlabelled (transition) windows of the same subjects


def _cfg(recipe: str, **train: object) -> RunConfig:
    cfg = RunConfig(distill=resolve_recipe(recipe))
    return replace(cfg, train=replace(cfg.train, **train)) if train else cfg


def _plan(teacher_run: Path, recipe: str, fold: tuple[int, int] | None = None, **train: object):
    teacher = TeacherRun.read(teacher_run)
    cfg = _cfg(recipe, **train)
    return resolve_plan(cfg, load_data(cfg, teacher, fold), teacher, fold=fold)


def test_default_and_ce_plans_on_the_full_har_training_split(teacher_run: Path) -> None:
    default = _plan(teacher_run, "default")
    ce = _plan(teacher_run, "ce")
    assert (default.labelled, default.unlabelled) == (HAR_LABELLED, HAR_UNLABELLED)
    assert (ce.labelled, ce.unlabelled) == (HAR_LABELLED, 0)
    # 9,413 windows in batches of 64: 147 full + one of 5; 5,752: 89 full + one of 56.
    assert (default.steps_per_epoch, ce.steps_per_epoch) == (148, 90)
    assert default.epochs == ce.epochs == 60
    assert "60 epochs (timeseries students)" in default.filled  # no option gave the epochs
    assert (default.total_steps, ce.total_steps) == (8880, 5400)
    assert default.schedule.total_steps == 8880
    assert default.labelled_per_batch == pytest.approx(64 * 5752 / 9413)
    assert [t.term for t in default.loss] == ["task", "classifier"]
    assert [t.weight for t in default.loss] == [0.5, 0.5]
    assert [t.term for t in ce.loss] == ["task"]
    assert ce.teacher is None and default.teacher is not None
    assert default.teacher.reads == ("accel", "gyro") and default.teacher.mode == "online"
    assert dict(default.split_windows)["unlabelled"] == HAR_UNLABELLED
    # The student's augmentation is the accelerometer's; the online teacher's inputs get it too.
    assert dict(ce.augment) == {"accel": "rotate(max_deg=15) scale(sigma=0.1) jitter(sigma=0.05)"}
    assert set(dict(default.augment)) == {"accel", "gyro"}
    text = default.describe()
    assert "5,752 labelled + 3,661 unlabelled" in text and "8,880 steps" in text
    assert json.loads(json.dumps(default.to_dict()))["total_steps"] == 8880


def test_teacher_defaults_are_filled_in_and_given_values_win() -> None:
    from edgekd.config import TEACHER_EPOCHS, TEACHER_MIX, TEACHER_MODALITY_DROPOUT

    cfg = RunConfig()
    ds = load_data(cfg, None, None)
    plan = resolve_plan(cfg, ds, None)
    assert (plan.epochs, plan.config.augment.mix) == (TEACHER_EPOCHS, TEACHER_MIX) == (60, "mixup")
    assert plan.config.model.args == {"modality_dropout": TEACHER_MODALITY_DROPOUT}
    filled = {"60 epochs (teachers)", "mix mixup (teachers)", "modality dropout 0.3 (teachers)"}
    assert filled <= set(plan.filled)
    assert dict(plan.augment)["mix"].startswith("mixup")
    given = replace(
        cfg,
        augment=replace(cfg.augment, mix="none"),
        model=replace(cfg.model, args={"modality_dropout": 0.0}),
    )
    plan = resolve_plan(given, ds, None)
    assert plan.config.augment.mix == "none" and plan.config.model.args == {"modality_dropout": 0.0}
    assert not any(f.startswith(("mix", "modality")) for f in plan.filled)
    # One modality: nothing to drop.
    alone = replace(cfg, data=replace(cfg.data, modalities=("accel",)))
    assert resolve_plan(alone, ds, None).config.model.args == {}


def test_a_students_mix_default_is_none(teacher_run: Path) -> None:
    plan = _plan(teacher_run, "default")
    assert plan.config.augment.mix == "none" and "mix" not in dict(plan.augment)


def test_steps_per_epoch_counts_the_loaders_batches() -> None:
    for n in (0, 1, 2, 63, 64, 65, 66, 129, 5752, 9413):
        for batch in (2, 16, 64):
            for world in (1, 2, 3):
                expected = len(shard_batches(n, batch, seed=0, epoch=0, rank=0, world=world))
                assert steps_per_epoch(n, batch, world) == expected, (n, batch, world)


def test_schedule_is_defined_per_optimizer_step() -> None:
    short, long = Schedule(3e-3, 1.5e-4, 5400), Schedule(3e-3, 1.5e-4, 8880)
    assert short.lr(0) == pytest.approx(3e-3)
    assert short.lr(5400) == pytest.approx(1.5e-4) == long.lr(8880)
    assert short.lr(2700) == pytest.approx(long.lr(4440))  # same shape at the same fraction
    lrs = [long.lr(s) for s in range(0, 8881, 37)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))


def test_run_folder_holds_the_plan_it_executed(student_run: Path) -> None:
    plan = json.loads((student_run / "plan.json").read_text())
    history = json.loads((student_run / "history.json").read_text())
    assert plan["role"] == "student" and plan["epochs"] == len(history) == 3
    # --limit 1500 limits the labelled windows; the unlabelled split is kept whole.
    assert (plan["labelled"], plan["unlabelled"]) == (1500, HAR_UNLABELLED)
    assert plan["steps_per_epoch"] == steps_per_epoch(1500 + HAR_UNLABELLED, 64)
    assert plan["total_steps"] == plan["steps_per_epoch"] * 3
    sched = Schedule(**plan["schedule"])
    for h in history:  # each epoch's logged lr is its first optimizer step's
        assert h["lr"] == pytest.approx(sched.lr((h["epoch"] - 1) * plan["steps_per_epoch"]))


def test_mixed_unlabelled_partners_never_reach_the_supervised_terms() -> None:
    from edgekd.distill.trainer import StudentSteps

    ds = load_data(RunConfig(), None, None)
    spec = ds.specs["accel"]
    train, unl = ds.splits["train"], ds.splits["unlabelled"]
    windows = Windows.of((train, labelled(train)[:200]), (unl, np.arange(200)))
    cfg = RunConfig().augment
    policy = build_policy(replace(cfg, mix="mixup"), {"accel": spec}, len(ds.labels))
    loader = Loader(windows, {"student": {"accel": spec}}, aug_specs={"accel": spec},
                    policy=policy, batch_size=64, seed=0)  # fmt: skip
    source = StudentSteps(loader, "accel")
    sums = torch.cat([y.sum(dim=1) for _, y, *_ in source.epoch(0)])
    whole = (sums - 1).abs() < 1e-5
    assert bool((whole | (sums == 0)).all()), "a mixed sample kept part of a label"
    assert 0 < int(whole.sum()) < len(sums)  # labelled pairs stay supervised


def test_a_folds_held_out_subjects_never_train(teacher_run: Path) -> None:
    plan = _plan(teacher_run, "default", fold=(0, 4))
    ds = load_data(plan.config, TeacherRun.read(teacher_run), (0, 4))
    held = set(plan.held_out)
    assert held == {str(s) for s in ds.splits["val"].subject} and len(held) == 4
    for split in ("train", "unlabelled"):
        assert not held & {str(s) for s in ds.splits[split].subject}, split
    assert 0 < plan.unlabelled < HAR_UNLABELLED
    assert plan.labelled + len(ds.splits["val"]) == HAR_LABELLED


def test_teacher_augmentation_it_never_saw_is_refused_unless_allowed(teacher_run: Path) -> None:
    from edgekd.errors import ConfigError

    teacher = TeacherRun.read(teacher_run)
    cfg = _cfg("default")
    ds = load_data(cfg, teacher, None)
    same = resolve_plan(cfg, ds, teacher)
    assert same.teacher is not None and same.teacher.unseen == () and same.warnings == ()
    stronger = replace(cfg, augment=replace(cfg.augment, ops={"rotate": {"max_deg": 45.0}}))
    with pytest.raises(ConfigError, match=r"never saw in training .* --allow-unseen-augment"):
        resolve_plan(stronger, ds, teacher)
    stronger = replace(stronger, distill=replace(stronger.distill, allow_unseen_augment=True))
    plan = resolve_plan(stronger, ds, teacher)
    assert plan.to_dict()["config"]["distill"]["allow_unseen_augment"] is True
    assert plan.teacher is not None and plan.teacher.unseen == ("rotate (stronger)",)
    assert "never saw in training" in plan.warnings[0]
    assert "WARNING" in plan.describe()


def _other(value: object) -> object:
    """A value unlike `value`, of the same kind where there is one."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 2 + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, tuple | list):
        return (*value, "x")
    if isinstance(value, dict):
        return {**value, "x": 1}
    return "x"


def _with_leaf(obj: object, parts: list[str], value: object) -> object:
    """`obj` with the field at dotted `parts` set to `value`, bypassing validation (a plan
    built by hand can hold any value; the comparison must still see it)."""
    import copy
    import dataclasses

    if not parts:
        return value
    head, rest = parts[0], parts[1:]
    if dataclasses.is_dataclass(obj):
        new = copy.copy(obj)
        object.__setattr__(new, head, _with_leaf(getattr(obj, head), rest, value))
        return new
    if isinstance(obj, dict):
        return {**obj, head: _with_leaf(obj[head], rest, value)}
    if not head.isdigit():  # (name, value) pairs, addressed by name
        return tuple((k, _with_leaf(v, rest, value) if k == head else v) for k, v in obj)
    i = int(head)
    return (*obj[:i], _with_leaf(obj[i], rest, value), *obj[i + 1 :])  # type: ignore[index]


def test_every_plan_field_changed_alone_is_one_told_difference(teacher_run: Path) -> None:
    from edgekd.distill.plan import IGNORED, aspect_of, differences, plan_fields

    base = _plan(teacher_run, "paper")
    fields = plan_fields(base)
    assert "config.train.weight_decay" in fields and "config.model.args" in fields
    assert "config.distill.teacher_corrupt" in fields and "teacher.sha256" in fields
    checked = 0
    for path, value in fields.items():
        if path == "labelled_per_batch":  # derived from the window counts, not set alone
            continue
        changed = _with_leaf(base, path.split("."), _other(value))
        said = differences(changed, base)  # type: ignore[arg-type]
        if path in IGNORED or any(path.startswith(k + ".") for k in IGNORED):
            assert said == (), path
            continue
        assert [d.aspect for d in said] == [aspect_of(path, (base.modality,))], (path, said)
        assert said[0].text, path
        checked += 1
    assert checked > 60
    assert differences(base, base) == ()


def test_weight_decay_and_quality_settings_are_told_by_name(teacher_run: Path) -> None:
    from edgekd.distill.plan import differences

    base = _plan(teacher_run, "paper")
    cfg = replace(base.config, train=replace(base.config.train, weight_decay=0.0),
                  distill=replace(base.config.distill, quality_temperature=1.0))  # fmt: skip
    said = {d.aspect: d.text for d in differences(resolve_plan(cfg, load_data(
        cfg, TeacherRun.read(teacher_run), None), TeacherRun.read(teacher_run)), base)}
    assert said == {
        "loss": "distill.quality_temperature 1.0 (instead of 0.5)",
        "optimizer": "train.weight_decay 0.0 (instead of 0.0001)",
    }


def test_a_plan_read_back_from_plan_json_equals_the_plan(teacher_run: Path) -> None:
    from edgekd.distill.plan import RunPlan, differences

    plan = _plan(teacher_run, "paper")
    back = RunPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert back == plan and differences(back, plan) == ()
