"""The training plans of a search: the run config of a candidate, its CE pair, and the run
folder keyed by the plan's digest (so a resumed search can only reuse a run of the same plan).

Shared by the exploration stage (`edgekd.search.run`) and the final stage
(`edgekd.search.finals`)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from edgekd.search.space import Candidate


def train_config(spec: Any, cand: Candidate, *, epochs: int | None,
                 seed: int | None = None) -> Any:  # fmt: skip
    """The run config that trains `cand` under the search's `spec` (a SearchSpec) for `epochs`
    (an exploration trial: `spec.epochs`; a final run: `spec.final_epochs`, None = the `distill`
    default schedule). `seed`: None = the search's seed."""
    from edgekd.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from edgekd.search.space import distill_config

    return RunConfig(
        data=DataConfig(source=spec.data, limit=spec.limit, unlabelled=spec.unlabelled),
        train=TrainConfig(epochs=epochs, batch_size=spec.batch_size, lr=cand.lr,
                          seed=spec.seed if seed is None else seed),
        model=ModelConfig(arch=cand.arch, args=dict(cand.args)),
        distill=distill_config(cand.recipe, cand.tau, cand.alpha),
        augment=trial_augment(spec.teacher),
    )  # fmt: skip


def trial_augment(teacher: Path) -> Any:
    """The trials' augmentation: the shipped default, or none for a teacher whose outputs are
    precomputed (a card with `source: outputs`, such as a `teacher cache`): they are outputs of
    clean windows and cannot follow an augmented batch, which is why `edgekd distill` takes such
    a teacher only with `--augment none`. Every trial, the anchor and the CE pairs alike."""
    from edgekd.config import DEFAULT_AUGMENT, NO_AUGMENT
    from edgekd.teachers import is_card_teacher, read_card

    if is_card_teacher(Path(teacher)) and read_card(teacher).source == "outputs":
        return NO_AUGMENT
    return DEFAULT_AUGMENT


def read_teacher(teacher: Path, cfg: Any) -> tuple[Any, Any, Any]:
    """(plan, data, teacher) of a training of `cfg`, read as `edgekd distill` reads them
    (`plan_distill`: an edgekd teacher run, or an outside teacher's card, whose cache must still
    match the data); nothing is trained or written."""
    from edgekd.distill.trainer import plan_distill

    return plan_distill(cfg, Path(teacher))


def paired_ce_config(cfg: Any, teacher: Path) -> tuple[Any, list[str]]:
    """The CE pair of the training `cfg`: the same plan with CE only (no teacher, same student,
    lr and seed) trained for as many optimizer steps (the epochs that come closest: the
    learning-rate schedule is per step, so both follow the same shape). Returns (CE config, what
    else still differs between the two plans, as `edgekd.distill.plan.differences` words it,
    e.g. "+3,661 unlabelled windows"): a comparison says everything it differs in, like
    `edgekd ablate`'s `ce_steps` row."""
    from edgekd.config import resolve_recipe
    from edgekd.distill.ablate.rows import LOSS_CHANGE
    from edgekd.distill.plan import differences, resolve_plan, with_steps

    mine, data, outside = read_teacher(teacher, cfg)
    ce = with_steps(replace(cfg, distill=resolve_recipe("ce")), mine.total_steps, data, outside)
    told = [d.text for d in differences(mine, resolve_plan(ce, data, outside))
            if d.aspect not in (*LOSS_CHANGE, "epochs")]  # fmt: skip
    return ce, told


def plan_digest(cfg: Any, teacher: Path) -> str:
    """A stable hash of a training plan: every field of its run config (student and its
    arguments, recipe, schedule, seed, data) and the teacher it learns from."""
    from edgekd.config import to_dict

    blob = json.dumps({"config": to_dict(cfg), "teacher": str(Path(teacher).resolve())},
                      sort_keys=True, default=str)  # fmt: skip
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_folder(out: Path, cfg: Any, teacher: Path) -> Path:
    """The run folder of a training of the search, keyed by its plan's digest: two plans never
    share a folder, so a resumed search cannot take a run of another plan."""
    name = f"{cfg.model.arch}-seed{cfg.train.seed}-{plan_digest(cfg, teacher)}"
    return Path(out) / "runs" / name
