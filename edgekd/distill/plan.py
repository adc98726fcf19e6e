"""The resolved run plan: every value a teacher or distillation run will use, fixed before training.

`resolve_plan(cfg, data, teacher)` is pure (no training, no writes): from the run config, the
loaded dataset and (for a student) the teacher run it reads the data sources and window counts,
the teacher's view and mode and the augmentation it was itself trained with, the augmentation per
modality, the batch composition, the optimizer steps and the learning-rate schedule in steps, the
loss terms with their weights, the selection rule and the seed. The trainer writes the plan as
`plan.json` in the run folder and executes it; `edgekd ablate` compares the plans of its rows, so
that every difference between two runs is visible before either trains.

Units: window counts are windows; steps are optimizer steps (one per batch, per process under
DDP); the learning rate is AdamW's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgekd.config import (
    DEFAULT_EPOCHS,
    LOGIT_LOSSES,
    TEACHER_EPOCHS,
    TEACHER_MIX,
    TEACHER_MODALITY_DROPOUT,
    DistillConfig,
    RunConfig,
    from_dict,
    to_dict,
)
from edgekd.data.augment import Policy, build_policy
from edgekd.errors import ConfigError
from edgekd.modalities import ModalitySpec
from edgekd.teachers.card import TeacherCard

DEFAULT_TEACHER = "fusion"
DEFAULT_STUDENT = {"timeseries": "tcn_tiny", "audio": "dscnn_audio"}
LR_FLOOR = 1 / 20  # the schedule decays to this share of the peak learning rate


# --- the teacher run a student learns from -------------------------------------------------


@dataclass(frozen=True)
class TeacherRun:
    """What a plan needs of a finished teacher run (read without loading its weights):
    its folder, checkpoint sidecar and saved training config (None for an ensemble)."""

    dir: Path
    sidecar: dict[str, Any]
    config: RunConfig | None

    @classmethod
    def read(cls, folder: Path) -> TeacherRun:
        from edgekd.checkpoint import CONFIG_FILE, json_safe_yaml, read_sidecar

        folder = Path(folder)
        sidecar = read_sidecar(folder, expect_role="teacher")
        path = folder / CONFIG_FILE
        config = from_dict(json_safe_yaml(path)) if path.is_file() else None
        return cls(folder, sidecar, config)

    @property
    def specs(self) -> dict[str, ModalitySpec]:
        return {m: ModalitySpec.from_dict(s) for m, s in self.sidecar["specs"].items()}


# --- plan parts ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """Learning rate per optimizer step: cosine from `peak` at step 0 to `floor` at `total_steps`
    (a pure function of the step, so a resumed run follows it exactly)."""

    peak: float
    floor: float
    total_steps: int

    def lr(self, step: int) -> float:
        t = min(step / max(self.total_steps, 1), 1.0)
        return self.floor + 0.5 * (self.peak - self.floor) * (1 + math.cos(math.pi * t))

    def describe(self) -> str:
        return (
            f"cosine {self.peak:g} -> {self.floor:g} over {self.total_steps:,} optimizer steps"
        )


@dataclass(frozen=True)
class LossTerm:
    """One term of the training loss: `weight` x `name`, computed on `windows` (`labelled`:
    supervised terms, which never see an unlabelled window; `all`: teacher terms)."""

    term: str
    name: str
    weight: float
    windows: str


@dataclass(frozen=True)
class TeacherPlan:
    """How the frozen teacher takes part: its run, the modalities it reads (`view`), `mode`
    (online: run on every augmented batch; cached: once on clean windows), the augmentation it
    was trained with, and what of this run's augmentation it never saw (`unseen`)."""

    dir: str
    modalities: tuple[str, ...]
    reads: tuple[str, ...]
    view: str
    mode: str
    trained_augment: str
    unseen: tuple[str, ...]
    # Provenance: `edgekd` for a teacher run of edgekd's, else the card's source (onnx,
    # torch_export, python, outputs) with the weights' sha256, the licence and the card's path.
    source: str = "edgekd"
    sha256: str = ""
    licence: str = ""
    card: str = ""
    outputs: tuple[str, ...] = ("logits", "embedding")  # what the teacher gives distillation


@dataclass(frozen=True)
class RunPlan:
    """A resolved run (see the module docstring). `config` is the run config with every default
    filled in (epochs, architecture, student modality), as saved in config.yaml."""

    role: str
    arch: str
    modality: str | None  # the student's; None for a teacher
    source: str
    split_windows: tuple[tuple[str, int], ...]  # windows per split of the loaded data
    labelled: int  # labelled training windows per epoch
    unlabelled: int  # unlabelled training windows per epoch (teacher terms only)
    held_out: tuple[str, ...]  # subjects of a cross-validation fold's validation split
    teacher: TeacherPlan | None
    augment: tuple[tuple[str, str], ...]  # modality -> its ops; `mix` -> the mixing
    batch_size: int
    world: int
    steps_per_epoch: int
    epochs: int
    schedule: Schedule
    loss: tuple[LossTerm, ...]
    select: str
    seed: int
    filled: tuple[str, ...]  # values no option gave, with where they came from
    config: RunConfig

    @property
    def windows(self) -> int:
        return self.labelled + self.unlabelled

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    @property
    def labelled_per_batch(self) -> float:
        """Expected labelled windows in a batch (the rest are unlabelled)."""
        return self.batch_size * self.labelled / max(self.windows, 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: plain dicts, lists, numbers and strings (derived counts included)."""
        out = to_dict(self)
        out["split_windows"] = dict(self.split_windows)
        out["augment"] = dict(self.augment)
        out["total_steps"] = self.total_steps
        out["labelled_per_batch"] = round(self.labelled_per_batch, 2)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunPlan:
        """The plan `to_dict` wrote (a run folder's plan.json); derived counts are recomputed."""
        t = d["teacher"]
        return cls(
            role=d["role"],
            arch=d["arch"],
            modality=d["modality"],
            source=d["source"],
            split_windows=tuple(d["split_windows"].items()),
            labelled=d["labelled"],
            unlabelled=d["unlabelled"],
            held_out=tuple(d["held_out"]),
            teacher=None if t is None else TeacherPlan(
                **{k: tuple(v) if isinstance(v, list) else v for k, v in t.items()}),
            augment=tuple(d["augment"].items()),
            batch_size=d["batch_size"],
            world=d["world"],
            steps_per_epoch=d["steps_per_epoch"],
            epochs=d["epochs"],
            schedule=Schedule(**d["schedule"]),
            loss=tuple(LossTerm(**term) for term in d["loss"]),
            select=d["select"],
            seed=d["seed"],
            filled=tuple(d["filled"]),
            config=from_dict(d["config"]),
        )  # fmt: skip

    @property
    def warnings(self) -> tuple[str, ...]:
        """What in this plan is likely a mistake (printed even by a quiet run): augmentation the
        teacher never saw, which only `distill.allow_unseen_augment` lets a plan have."""
        if self.teacher is None or not self.teacher.unseen:
            return ()
        return (
            f"the online teacher gets inputs augmented with {', '.join(self.teacher.unseen)}, "
            f"which it never saw in training (it was trained with {self.teacher.trained_augment}); "
            "its outputs on them may be poor targets: train the teacher with the same "
            "augmentation, or distill with the teacher's (--augment/--config)",
        )

    def describe(self) -> str:
        """A few lines for the start of a run, warnings last."""
        who = f"student {self.arch} on {self.modality}" if self.modality else f"teacher {self.arch}"
        data = f"{self.labelled:,} labelled"
        if self.unlabelled:
            data += f" + {self.unlabelled:,} unlabelled"
        share = self.config.data.labelled_share
        if share != 1.0:
            data += f" ({share:.0%} of the labels kept, the rest unlabelled)"
        if self.held_out:
            data += f" (fold: subjects {', '.join(self.held_out)} held out)"
        per_process = f" per process (x{self.world})" if self.world > 1 else ""
        lines = [
            f"plan: {who}, seed {self.seed}, select {self.select}",
            f"  data: {self.source}, {data} training windows",
            f"  batches: {self.batch_size} windows (~{self.labelled_per_batch:.0f} labelled), "
            f"{self.steps_per_epoch} steps/epoch x {self.epochs} epochs = "
            f"{self.total_steps:,} steps{per_process}",
            f"  lr: {self.schedule.describe()}",
            "  augment: " + "; ".join(f"{m}: {ops}" for m, ops in self.augment),
            "  loss: " + " + ".join(f"{t.weight:g} {t.name} ({t.windows})" for t in self.loss),
        ]
        if self.teacher is not None:
            t = self.teacher
            lines.append(
                f"  teacher: {t.mode}, reads {', '.join(t.reads)}, trained with augment "
                f"{t.trained_augment}"
            )
            if t.source != "edgekd":
                lines.append(
                    f"  teacher card: {t.card} ({t.source}, sha256 {t.sha256[:12]}, licence "
                    f"{t.licence or 'not stated'}, gives {' + '.join(t.outputs)})"
                )
        if self.filled:
            lines.append("  defaults: " + "; ".join(self.filled))
        lines += [f"  WARNING: {w}" for w in self.warnings]
        return "\n".join(lines)


# --- resolution ---------------------------------------------------------------------------


def steps_per_epoch(windows: int, batch_size: int, world: int = 1) -> int:
    """Optimizer steps of one epoch over `windows` (`edgekd.data.pipeline.shard_batches`: each
    process takes windows // world, in batches of batch_size, a last batch of one dropped)."""
    per_rank = windows // world
    steps, last = divmod(per_rank, batch_size)
    return steps + (1 if last >= 2 else 0)


def data_config(cfg: RunConfig, teacher: TeacherRun | TeacherCard | None) -> RunConfig:
    """cfg with the data a run reads: har by default for a teacher; for a student the teacher's
    data (or where they moved) with the teacher's split (another split would leak the teacher's
    training subjects into validation)."""
    if teacher is None:
        return cfg if cfg.data.source else replace(cfg, data=replace(cfg.data, source="har"))
    if isinstance(teacher, TeacherCard):
        source = cfg.data.source or teacher.data_source
        if not source:
            raise ConfigError(
                "an outside teacher needs the paired data to distil on: pass --data har or "
                "--data PATH/manifest.jsonl"
            )
        return replace(cfg, data=replace(cfg.data, source=source))
    data = teacher.sidecar["data"]
    return replace(
        cfg,
        data=replace(
            cfg.data, source=cfg.data.source or data["source"], val_subjects=data["val_subjects"]
        ),
    )


def load_data(
    cfg: RunConfig, teacher: TeacherRun | TeacherCard | None, fold: tuple[int, int] | None
) -> Any:
    """The dataset of a run (`data_config`), as fold `fold` (i, k) when given."""
    from edgekd.data import load_dataset
    from edgekd.distill.cv import fold_dataset

    cfg = data_config(cfg, teacher)
    ds = load_dataset(
        cfg.data.source or "har",
        val_subjects=cfg.data.val_subjects,
        limit=cfg.data.limit,
        seed=cfg.train.seed,
    )
    if cfg.data.labelled_share != 1.0:
        from edgekd.data.dataset import keep_labelled_share

        ds = keep_labelled_share(ds, cfg.data.labelled_share)
    return ds if fold is None else fold_dataset(ds, *fold)


def _n_labelled(split: Any) -> int:
    return int(np.count_nonzero(split.y >= 0))


def _augment(policy: Policy, specs: Mapping[str, ModalitySpec]) -> tuple[tuple[str, str], ...]:
    out = []
    for m, spec in specs.items():
        ops = [
            Policy(((op, params),), "none", 1.0, 1.0, 0).describe()
            for op, params in policy.ops
            if spec.kind in op.kinds and (op.name != "rotate" or spec.vectors)
        ]
        out.append((m, " ".join(ops) or "none"))
    if policy.mix != "none":
        out.append(("mix", Policy((), policy.mix, policy.mix_alpha, policy.mix_prob, 0).describe()))
    return tuple(out)


def _unseen(
    policy: Policy, teacher: TeacherRun, specs: Mapping[str, ModalitySpec], classes: int
) -> tuple[str, tuple[str, ...]]:
    """(the teacher's training augmentation, the ops/mixing of `policy` it never trained with)."""
    if teacher.config is None:
        return "unknown (no config.yaml)", ()
    own = build_policy(teacher.config.augment, specs, classes)
    trained = {op.name: params for op, params in own.ops}
    unseen = [
        f"{op.name}" + ("" if op.name not in trained else " (stronger)")
        for op, params in policy.ops
        if op.name not in trained
        or any(abs(v) > abs(trained[op.name].get(k, 0.0)) + 1e-12 for k, v in params.items())
    ]
    if policy.mix != "none" and own.mix != policy.mix:
        unseen.append(policy.mix)
    return own.describe(), tuple(unseen)


def _loss(cfg: RunConfig, role: str) -> tuple[LossTerm, ...]:
    if role == "teacher":
        return (LossTerm("task", "cross-entropy", 1.0, "labelled"),)
    d = cfg.distill
    terms = [LossTerm("task", "cross-entropy", d.lambda_task, "labelled")]
    if d.feature_loss != "none":
        terms.append(
            LossTerm("feature", f"{d.feature_loss}({d.distance}, m={d.margin:g})",
                     d.lambda_feature, "all")  # fmt: skip
        )
    if d.classifier_loss != "none":
        where = "labelled" if d.classifier_loss == "soft_teacher_head" else "all"
        name = f"{d.classifier_loss}(tau={d.tau:g})"
        if d.classifier_loss == "fixmatch":
            where, name = "unlabelled", f"fixmatch(threshold={d.fixmatch_threshold:g})"
        terms.append(LossTerm("classifier", name, d.lambda_classifier, where))
    return tuple(terms)


def _check_specs(
    ours: Mapping[str, ModalitySpec], theirs: Mapping[str, ModalitySpec], what: str
) -> None:
    """ConfigError naming every modality/field where `ours` (the data) differs from `theirs`."""
    layout = ("kind", "rate_hz", "channels", "window", "hop", "n_mels", "n_fft", "hop_length",
              "size")  # fmt: skip
    diffs = []
    for m, spec in theirs.items():
        if m not in ours:
            diffs.append(f"{m}: missing from the data (it has {', '.join(ours)})")
            continue
        for key in layout:
            a, b = getattr(ours[m], key), getattr(spec, key)
            if a != b:
                diffs.append(f"{m}.{key}: data {a!r}, {what} {b!r}")
        if spec.mean and not (
            np.allclose(ours[m].mean, spec.mean, rtol=1e-3, atol=1e-4)
            and np.allclose(ours[m].std, spec.std, rtol=1e-3, atol=1e-4)
        ):
            diffs.append(f"{m}: normalisation fitted on the data differs from the {what}'s")
    if diffs:
        raise ConfigError(f"the data does not match the {what}: " + "; ".join(diffs))


def teacher_data_specs(cfg: RunConfig, data: Any) -> dict[str, ModalitySpec]:
    """The modalities a teacher of `cfg` trains on: `data.modalities` (in that order) of the
    dataset's, or all of them; ConfigError for an unknown or empty selection."""
    specs = dict(data.specs)
    if cfg.data.modalities is None:
        return specs
    unknown = [m for m in cfg.data.modalities if m not in specs]
    if unknown or not cfg.data.modalities:
        raise ConfigError(
            f"data.modalities {list(cfg.data.modalities)}: {', '.join(unknown) or 'empty'} "
            f"not among the dataset's modalities {', '.join(specs)}"
        )
    return {m: specs[m] for m in cfg.data.modalities}


def _takes(teacher_arch: str, argument: str) -> bool:
    """True when the registered teacher `teacher_arch` has a keyword `argument`."""
    import inspect

    from edgekd.models import teacher_constructor

    return argument in inspect.signature(teacher_constructor(teacher_arch)).parameters


def _check_self_training(cfg: RunConfig, policy: Policy) -> None:
    """FixMatch needs an augmented (strong) view that differs from the clean (weak) one, and no
    mixing (a mixed window has no single clean view to take a target from)."""
    if cfg.distill.classifier_loss != "fixmatch":
        return
    if not policy.ops:
        raise ConfigError(
            "classifier_loss=fixmatch learns from augmented views of unlabelled windows, but "
            "augmentation is off: use --augment default (or custom ops)"
        )
    if policy.mix != "none":
        raise ConfigError("classifier_loss=fixmatch takes no mixing: pass --mix none")


def _student_defaults(cfg: RunConfig, spec: ModalitySpec, filled: list[str]) -> RunConfig:
    """cfg with the student's epochs and architecture filled in for its modality kind."""
    if cfg.train.epochs is None:
        cfg = replace(cfg, train=replace(cfg.train, epochs=DEFAULT_EPOCHS[spec.kind]))
        filled.append(f"{cfg.train.epochs} epochs ({spec.kind} students)")
    if not cfg.model.arch:
        if spec.kind not in DEFAULT_STUDENT:
            raise ConfigError(f"no default student for modality kind {spec.kind!r}; pass --arch")
        cfg = replace(cfg, model=replace(cfg.model, arch=DEFAULT_STUDENT[spec.kind]))
        filled.append(f"arch {cfg.model.arch} ({spec.kind} students)")
    return cfg


def card_recipe_problem(d: DistillConfig, card: TeacherCard, labels: list[str]) -> str | None:
    """Why the loss recipe `d` cannot use the card's teacher (None when it can): logit terms
    and confidence weights need logits in the dataset's classes, feature terms and norm weights
    an embedding, soft_teacher_head the teacher's classifier weights (no outside teacher has
    them: the card gives outputs only)."""
    logits = card.class_index(labels) is not None
    if d.classifier_loss == "soft_teacher_head":
        return "soft_teacher_head needs the teacher's classifier weights, which no card gives"
    if (d.classifier_loss in LOGIT_LOSSES or d.quality == "teacher_confidence") and not logits:
        if not card.has_logits:
            why = "it gives no logits"
        elif card.disjoint:
            why = "its classes are disjoint from the data's (disjoint: true)"
        else:
            mapped = {card.label_map.get(t, t) for t in card.labels}
            absent = [x for x in labels if x not in mapped]
            why = (f"its labels (after label_map) do not cover the data's {', '.join(absent)}"
                   if absent else "two of its labels map to one of the data's")  # fmt: skip
        return (
            f"classifier_loss={d.classifier_loss} / quality={d.quality} need the teacher's logits "
            f"in the data's classes, and {why}"
        )
    if (d.feature_loss != "none" or d.quality == "teacher_norm") and not card.has_embedding:
        return f"feature_loss={d.feature_loss} / quality={d.quality} need the teacher's embedding"
    return None


def _card_student(
    cfg: RunConfig, data: Any, card: TeacherCard, filled: list[str]
) -> tuple[RunConfig, str, dict[str, ModalitySpec], Policy, int, TeacherPlan | None]:
    """The student side of a plan whose teacher is a card (see `resolve_plan`)."""
    from edgekd.config import RECIPES

    labels = list(data.labels)
    missing = [m for m in card.modalities if m not in data.specs]
    if missing:
        raise ConfigError(
            f"the teacher card reads modality {', '.join(missing)}, which {data.name} does not "
            f"have (it has {', '.join(data.specs)})"
        )
    modality = cfg.student_modality or data.default_student
    if cfg.student_modality is None:
        filled.append(f"modality {modality} (the data's default student)")
    if modality not in data.specs:
        raise ConfigError(
            f"student modality {modality!r} is not among the data's ({', '.join(data.specs)})"
        )
    cfg = replace(cfg, student_modality=modality)
    if cfg.augment.mix is None:
        cfg = replace(cfg, augment=replace(cfg.augment, mix="none"))
    cfg = _student_defaults(cfg, data.specs[modality], filled)
    d = cfg.distill
    uses_teacher = d.uses_teacher
    if uses_teacher:
        problem = card_recipe_problem(d, card, labels)
        if problem:
            fits = [n for n, r in RECIPES.items() if r.uses_teacher
                    and card_recipe_problem(r, card, labels) is None]  # fmt: skip
            alone = (
                "; or the feature terms alone: --set distill.classifier_loss=none --set "
                "distill.feature_loss=soft_margin (or hard_l2), through the learnable projection "
                "head that export drops"
                if card.has_embedding
                else ""
            )
            raise ConfigError(
                f"this teacher cannot serve the recipe: {problem}. Recipes that apply: "
                + ", ".join(["ce", *fits]) + alone
            )
        if d.teacher_view != "all" or d.teacher_corrupt > 0:
            raise ConfigError(
                "teacher_view=student and teacher_corrupt act on edgekd teachers' modality "
                "inputs; an outside teacher is run as its card says"
            )
    if uses_teacher and card.source == "outputs" and d.teacher_mode == "online":
        cfg = replace(cfg, distill=replace(d, teacher_mode="cached"))
        filled.append("teacher mode cached (precomputed outputs cannot see augmented batches)")
    online = uses_teacher and cfg.distill.teacher_mode == "online"
    reads = card.modalities
    aug_specs = {m: data.specs[m] for m in dict.fromkeys([modality, *reads] if online
                                                         else [modality])}  # fmt: skip
    policy = build_policy(cfg.augment, aug_specs, len(labels))
    # Feature-stage ops (SpecAugment masks) change the student's features after the raw
    # windows the outside teacher gets: on a modality both read, they would see different data.
    masked = [
        m for m in reads if online and any(
            op.stage == "features" and data.specs[m].kind in op.kinds for op, _ in policy.ops)
    ]  # fmt: skip
    if masked:
        raise ConfigError(
            f"the augmentation masks the features of {', '.join(masked)} ({policy.describe()}), "
            "but an outside teacher reads raw windows and would not see the masks: drop the "
            "feature-stage ops (--augment custom), or use --set distill.teacher_mode=cached "
            "--augment none"
        )
    if uses_teacher and not online and policy.active:
        raise ConfigError(
            f"the teacher's outputs are computed once on clean windows (teacher mode cached"
            f"{', precomputed outputs' if card.source == 'outputs' else ''}), but augmentation "
            f"is on ({policy.describe()}): pass --augment none (and --mix none), or give a "
            "teacher that can run online (a model card)"
        )
    uses_unl = cfg.data.unlabelled and cfg.distill.uses_unlabelled
    unlabelled = len(data.splits["unlabelled"]) if uses_unl else 0
    tplan = None
    if uses_teacher:
        prov = card.provenance()
        tplan = TeacherPlan(
            dir=str(card.dir),
            modalities=reads,
            reads=reads,
            view="all",
            mode=cfg.distill.teacher_mode,
            trained_augment="unknown (outside teacher)",
            unseen=(),
            source=card.source,
            sha256=card.sha256,
            licence=card.licence,
            card=prov["card"],
            outputs=tuple(o.kind for o in card.outputs),
        )
    return cfg, modality, aug_specs, policy, unlabelled, tplan


def resolve_plan(
    cfg: RunConfig,
    data: Any,
    teacher: TeacherRun | TeacherCard | None,
    *,
    world: int = 1,
    fold: tuple[int, int] | None = None,
) -> RunPlan:
    """The plan of a teacher run (`teacher` None) or of a student distilled from `teacher`, on
    `data` (a PairedDataset from `load_data`, for `fold` when given) with `world` processes.
    ConfigError for any option that cannot run, before anything is written."""
    filled = []
    if cfg.data.source is None:
        owner = "the cache's" if isinstance(teacher, TeacherCard) else "the teacher's"
        filled.append("data " + ("har" if teacher is None else owner))
    cfg = data_config(cfg, teacher)
    labels = list(data.labels)
    train, unl = data.splits["train"], data.splits["unlabelled"]
    classes = len(labels)
    if isinstance(teacher, TeacherCard):
        role = "student"
        cfg, modality, aug_specs, policy, unlabelled, tplan = _card_student(
            cfg, data, teacher, filled
        )
    elif teacher is None:
        role = "teacher"
        specs = teacher_data_specs(cfg, data)
        if cfg.train.epochs is None:
            cfg = replace(cfg, train=replace(cfg.train, epochs=TEACHER_EPOCHS))
            filled.append(f"{TEACHER_EPOCHS} epochs (teachers)")
        if not cfg.model.arch:
            cfg = replace(cfg, model=replace(cfg.model, arch=DEFAULT_TEACHER))
            filled.append(f"arch {DEFAULT_TEACHER} (teachers)")
        if cfg.augment.mix is None:
            cfg = replace(cfg, augment=replace(cfg.augment, mix=TEACHER_MIX))
            filled.append(f"mix {TEACHER_MIX} (teachers)")
        if (
            len(specs) > 1
            and "modality_dropout" not in cfg.model.args
            and _takes(cfg.model.arch, "modality_dropout")
        ):
            args = {**cfg.model.args, "modality_dropout": TEACHER_MODALITY_DROPOUT}
            cfg = replace(cfg, model=replace(cfg.model, args=args))
            filled.append(f"modality dropout {TEACHER_MODALITY_DROPOUT:g} (teachers)")
        aug_specs, modality, unlabelled, tplan = specs, None, 0, None
        policy = build_policy(cfg.augment, aug_specs, classes)
    else:
        role = "student"
        tside = teacher.sidecar
        teacher_specs = teacher.specs
        modality = cfg.student_modality or tside.get("default_student")
        if cfg.student_modality is None:
            filled.append(f"modality {modality} (the teacher's default student)")
        if modality not in teacher_specs:
            raise ConfigError(
                f"student modality {modality!r} is not among the teacher's modalities "
                f"({', '.join(teacher_specs)})"
            )
        cfg = replace(cfg, student_modality=modality)
        if cfg.augment.mix is None:
            cfg = replace(cfg, augment=replace(cfg.augment, mix="none"))
        if labels != list(tside["labels"]):
            raise ConfigError(
                f"the teacher in {teacher.dir} was trained on other labels than {data.name} has "
                f"now: teacher {list(tside['labels'])}, data {labels}"
            )
        moved = cfg.data.source != tside["data"]["source"]
        uses_teacher = cfg.distill.uses_teacher
        online = uses_teacher and cfg.distill.teacher_mode == "online"
        if uses_teacher:
            # The teacher must get the inputs it was trained on (moved data: also the same
            # normalisation, i.e. the same training windows).
            expected = teacher_specs
            if not moved:
                expected = {m: replace(s, mean=(), std=()) for m, s in teacher_specs.items()}
            _check_specs(data.specs, expected, f"teacher in {teacher.dir}")
        elif moved:
            _check_specs(
                data.specs, {modality: teacher_specs[modality]}, f"teacher in {teacher.dir}"
            )
        cfg = _student_defaults(cfg, data.specs[modality], filled)
        view = cfg.distill.teacher_view
        reads = tuple(m for m in teacher_specs if view == "all" or m == modality)
        aug_specs = {m: data.specs[m] for m in (reads if online else [modality])}
        policy = build_policy(cfg.augment, aug_specs, classes)
        if uses_teacher and not online and policy.active:
            raise ConfigError(
                f"distill.teacher_mode=cached computes the teacher's outputs once on clean "
                f"windows, but augmentation is on ({policy.describe()}); use teacher_mode "
                "online, or augment.policy none and augment.mix none"
            )
        unlabelled = len(unl) if cfg.data.unlabelled and cfg.distill.uses_unlabelled else 0
        tplan = None
        if uses_teacher:
            trained, unseen = _unseen(policy, teacher, aug_specs, classes) if online else ("", ())
            if unseen and not cfg.distill.allow_unseen_augment:
                raise ConfigError(
                    f"the online teacher would get inputs augmented with {', '.join(unseen)}, "
                    f"which it never saw in training (it was trained with {trained}): its "
                    "outputs on them may be poor targets, and a comparison with another recipe "
                    "would differ in more than the loss. Train the teacher with the same "
                    "augmentation, distill with the teacher's (--augment / --config), or pass "
                    "--allow-unseen-augment (the plan records it)"
                )
            tplan = TeacherPlan(
                dir=str(Path(teacher.dir).resolve()),
                modalities=tuple(teacher_specs),
                reads=reads,
                view=view,
                mode=cfg.distill.teacher_mode,
                trained_augment=trained or "n/a (cached on clean windows)",
                unseen=unseen,
            )
    if role == "student":
        _check_self_training(cfg, policy)
    labelled = _n_labelled(train)
    if labelled == 0:
        raise ConfigError(f"the train split of {data.name} has no labelled windows")
    per_epoch = steps_per_epoch(labelled + unlabelled, cfg.train.batch_size, world)
    if per_epoch == 0:
        raise ConfigError(
            f"{labelled + unlabelled} training windows make no batch of --batch-size "
            f"{cfg.train.batch_size} on {world} process(es); lower --batch-size"
        )
    epochs = int(cfg.train.epochs or 1)
    held_out = () if fold is None else tuple(sorted({str(s) for s in data.splits["val"].subject}))
    return RunPlan(
        role=role,
        arch=cfg.model.arch,
        modality=modality,
        source=str(data.source),
        split_windows=tuple((name, len(s)) for name, s in data.splits.items()),
        labelled=labelled,
        unlabelled=unlabelled,
        held_out=held_out,
        teacher=tplan,
        augment=_augment(policy, aug_specs),
        batch_size=cfg.train.batch_size,
        world=world,
        steps_per_epoch=per_epoch,
        epochs=epochs,
        schedule=Schedule(cfg.train.lr, cfg.train.lr * LR_FLOOR, per_epoch * epochs),
        loss=_loss(cfg, role),
        select=cfg.train.select,
        seed=cfg.train.seed,
        filled=tuple(filled),
        config=cfg,
    )


def with_steps(cfg: RunConfig, steps: int, data: Any, teacher: TeacherRun | None) -> RunConfig:
    """`cfg` training for the whole number of epochs whose optimizer-step count comes closest to
    `steps` (at least one): how a control is given another run's step count (the learning-rate
    schedule is per step, so both follow the same shape)."""
    per_epoch = resolve_plan(cfg, data, teacher).steps_per_epoch
    return replace(cfg, train=replace(cfg.train, epochs=max(1, round(steps / per_epoch))))


# --- comparing plans ----------------------------------------------------------------------

# What two plans can differ in, in the order their differences are told.
ASPECTS = ("loss", "teacher", "labelled", "unlabelled", "steps", "epochs", "batch", "augment",
           "schedule", "optimizer", "model", "select", "data", "world", "loader",
           "role")  # fmt: skip

# Fields that never count as a difference: the seed and an edgekd teacher's folder (an ablation
# pairs seeds and teachers itself), and `filled` (where a value came from, not the value).
IGNORED = ("seed", "config.train.seed", "teacher.dir", "filled")

# Every field of a plan (its config included) belongs to one aspect: the first key that is the
# field's dotted path or a prefix of it (a key ending in "." or "_" is a prefix as it stands).
ASPECT_OF = (
    ("config.distill.teacher_", "teacher"), ("config.distill.allow_unseen_augment", "teacher"),
    ("config.distill.", "loss"),
    ("config.augment.", "augment"), ("config.train.epochs", "epochs"),
    ("config.train.batch_size", "batch"), ("config.train.lr", "schedule"),
    ("config.train.weight_decay", "optimizer"), ("config.train.select", "select"),
    ("config.train.num_workers", "loader"), ("config.model.", "model"),
    ("config.student_modality", "model"), ("config.data.limit", "labelled"),
    ("config.data.labelled_share", "labelled"), ("config.data.unlabelled", "unlabelled"),
    ("config.data.modalities", "teacher"), ("config.data.", "data"), ("teacher", "teacher"),
    ("loss", "loss"), ("labelled", "labelled"), ("unlabelled", "unlabelled"),
    ("steps_per_epoch", "steps"), ("schedule.total_steps", "steps"), ("schedule", "schedule"),
    ("epochs", "epochs"), ("batch_size", "batch"), ("labelled_per_batch", "batch"),
    ("augment", "augment"), ("arch", "model"),
    ("modality", "model"), ("select", "select"), ("source", "data"),
    ("split_windows", "data"), ("held_out", "data"), ("world", "world"), ("role", "role"),
)  # fmt: skip


@dataclass(frozen=True)
class Difference:
    """One way a plan differs from a baseline plan: the aspect (one of ASPECTS) and a sentence."""

    aspect: str
    text: str


def aspect_of(path: str, students: tuple[str | None, ...] = ()) -> str:
    """The aspect (one of ASPECTS) of a plan field's dotted path; ValueError for a field no key
    covers (a new plan or config field must be given an aspect here). The resolved augmentation
    of a modality that is not among `students` (the compared plans' student modalities) is the
    teacher's: it follows from the teacher's view."""
    for key, aspect in ASPECT_OF:
        if path == key or path.startswith(key if key[-1] in "._" else key + "."):
            if aspect == "augment" and path.startswith("augment.") and \
                    path.split(".")[1] not in (*students, "mix"):  # fmt: skip
                return "teacher"
            return aspect
    raise ValueError(f"plan field {path!r} has no aspect in edgekd.distill.plan.ASPECT_OF")


def plan_fields(value: Any, path: str = "") -> dict[str, Any]:
    """Every leaf of a plan as {dotted path: value}: dataclass fields, dict keys and the items
    of tuples that hold dataclasses or containers, walked generically (so a field added to any
    plan or config dataclass is compared without being listed anywhere)."""
    import dataclasses

    def join(name: object) -> str:
        return f"{path}.{name}" if path else str(name)

    if isinstance(value, tuple) and value and all(
        isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str) for v in value
    ):
        value = dict(value)  # (name, value) pairs: compared by name, not by position
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(value):
            out.update(plan_fields(getattr(value, f.name), join(f.name)))
        if isinstance(value, RunPlan):  # what a batch holds: derived, but what training sees
            out[join("labelled_per_batch")] = round(value.labelled_per_batch)
        return out
    if isinstance(value, dict) and value:
        out = {}
        for k in sorted(value, key=str):
            out.update(plan_fields(value[k], join(k)))
        return out
    nested = (dict, list, tuple)
    if isinstance(value, list | tuple) and any(
        dataclasses.is_dataclass(v) or isinstance(v, nested) for v in value
    ):
        out = {}
        for i, v in enumerate(value):
            out.update(plan_fields(v, join(i)))
        return out
    return {path: value}


def _loss_text(plan: RunPlan) -> str:
    return " + ".join(f"{t.weight:g} {t.name}" for t in plan.loss)


def _teacher_text(plan: RunPlan) -> str:
    t = plan.teacher
    if t is None:
        return "no teacher"
    who = "" if t.source == "edgekd" else f" ({t.source} {t.sha256[:12]})"
    return f"{t.mode} teacher{who} reading {', '.join(t.reads)}"


def _told(plan: RunPlan, base: RunPlan) -> dict[str, str]:
    """Readable sentences for the aspects that have one (relative to `base`)."""
    out: dict[str, str] = {}
    if plan.loss != base.loss:
        out["loss"] = f"loss {_loss_text(plan)} (instead of {_loss_text(base)})"
    if _teacher_text(plan) != _teacher_text(base):
        out["teacher"] = f"{_teacher_text(plan)} (instead of {_teacher_text(base)})"
    for aspect, mine, theirs in (
        ("labelled", plan.labelled, base.labelled),
        ("unlabelled", plan.unlabelled, base.unlabelled),
    ):
        if mine != theirs:
            out[aspect] = f"{mine - theirs:+,} {aspect} windows"
    if plan.total_steps != base.total_steps:
        out["steps"] = (
            f"x{plan.total_steps / max(base.total_steps, 1):.2f} optimizer steps "
            f"({plan.total_steps:,} instead of {base.total_steps:,})"
        )
    if plan.epochs != base.epochs:
        out["epochs"] = f"{plan.epochs} epochs (instead of {base.epochs})"
    if plan.batch_size != base.batch_size or round(plan.labelled_per_batch) != round(
        base.labelled_per_batch
    ):
        out["batch"] = (
            f"~{plan.labelled_per_batch:.0f} labelled windows per batch of {plan.batch_size} "
            f"(instead of ~{base.labelled_per_batch:.0f} of {base.batch_size})"
        )
    if plan.schedule.describe() != base.schedule.describe():
        out["schedule"] = f"lr {plan.schedule.describe()} (instead of {base.schedule.describe()})"
    if (plan.arch, plan.modality) != (base.arch, base.modality):
        out["model"] = (
            f"{plan.arch} on {plan.modality} (instead of {base.arch} on {base.modality})"
        )
    if plan.select != base.select:
        out["select"] = f"selects by {plan.select} (instead of {base.select})"
    return out


def differences(plan: RunPlan, base: RunPlan) -> tuple[Difference, ...]:
    """Every difference of `plan` from `base`, one per aspect (ASPECTS order): complete by
    construction, since every field of both plans (their configs included) is compared
    (`plan_fields`) and each differing field is told, under its aspect (`aspect_of`), either
    by a readable sentence (e.g. "+3,661 unlabelled windows", "x1.64 optimizer steps") or as
    `field value (instead of value)`. Fields in IGNORED are not compared."""
    mine, theirs = plan_fields(plan), plan_fields(base)
    changed: dict[str, list[str]] = {}
    for path in sorted(set(mine) | set(theirs)):
        if any(path == k or path.startswith(k + ".") for k in IGNORED):
            continue
        a, b = mine.get(path), theirs.get(path)
        if a != b:
            changed.setdefault(aspect_of(path, (plan.modality, base.modality)), []).append(path)
    told = _told(plan, base)
    out = []
    for aspect in ASPECTS:
        if aspect not in changed:
            continue
        # Config fields are told by name too: a sentence shows the effect, not every cause.
        raw = [f"{p.removeprefix('config.')} {mine.get(p)!r} (instead of {theirs.get(p)!r})"
               for p in changed[aspect] if p.startswith("config.") or aspect not in told]
        text = "; ".join(([told[aspect]] if aspect in told else []) + raw)
        out.append(Difference(aspect, text))
    return tuple(out)
