"""Teacher training and cross-modal distillation: one training loop, two objectives.

Contracts:
- Model selection uses the validation split only; the test split is scored once, at the end, with
  the selected weights.
- A run is deterministic for its seed: the batch order of epoch e is a permutation seeded by
  (seed, e), and the learning rate is a pure function of the epoch, so `--resume` from the last
  finished epoch reproduces an uninterrupted run exactly.
- The frozen teacher's logits and embeddings are computed once per run (eval mode, no grad), not
  once per step.
- Under `torchrun` (WORLD_SIZE > 1) training uses DDP (gloo on CPU, nccl on CUDA); each rank
  takes a disjoint shard of every epoch's permutation; only rank 0 writes.
"""

from __future__ import annotations

import math
import os
import resource
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgekd.checkpoint import (
    CONFIG_FILE,
    MODEL_FILE,
    SIDECAR_FILE,
    STATE_FILE,
    load_run,
    load_train_state,
    load_weights,
    save_model,
    save_train_state,
)
from edgekd.config import RunConfig, save_config, to_dict
from edgekd.errors import ConfigError
from edgekd.io import atomic_write_json
from edgekd.metrics import classification_report

DEFAULT_TEACHER = "fusion"
DEFAULT_STUDENT = {"timeseries": "tcn_tiny", "audio": "dscnn_audio"}
EVAL_BATCH = 1024

Inputs = torch.Tensor | dict[str, torch.Tensor]


# --- distributed --------------------------------------------------------------------------


@dataclass(frozen=True)
class Dist:
    """Process-group facts; world 1 when not launched by torchrun."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _init_dist() -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        device, backend = torch.device("cuda", local), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), device=device)


def _barrier(d: Dist) -> None:
    if d.world > 1:
        import torch.distributed as dist

        dist.barrier()


# --- data ---------------------------------------------------------------------------------


def _to_tensor(spec: Any, raw: np.ndarray, device: torch.device) -> torch.Tensor:
    from edgekd.modalities import preprocess

    return torch.from_numpy(preprocess(spec, raw)).to(device)


def _select(x: Inputs, idx: torch.Tensor) -> Inputs:
    if isinstance(x, dict):
        return {k: v[idx] for k, v in x.items()}
    return x[idx]


def _count(x: Inputs) -> int:
    return len(next(iter(x.values()))) if isinstance(x, dict) else len(x)


@torch.no_grad()
def predict_logits(model: nn.Module, x: Inputs, batch: int = EVAL_BATCH) -> torch.Tensor:
    """Logits for all of `x` in eval mode, in batches of `batch` windows."""
    was_training = model.training
    model.eval()
    n = _count(x)
    out = [model(_select(x, torch.arange(i, min(i + batch, n)))) for i in range(0, n, batch)]
    model.train(was_training)
    return torch.cat(out)


def evaluate(model: nn.Module, x: Inputs, y: torch.Tensor, num_classes: int) -> dict[str, float]:
    """Accuracy and macro-F1 (fractions) of `model` on labelled windows."""
    pred = predict_logits(model, x).argmax(1).cpu().numpy()
    return classification_report(y.cpu().numpy(), pred, num_classes)


# --- objectives ---------------------------------------------------------------------------


class TeacherObjective(nn.Module):
    """Cross-entropy of the fused teacher on all its modalities."""

    def __init__(self, teacher: nn.Module) -> None:
        super().__init__()
        self.model = teacher

    def forward(self, x: dict[str, torch.Tensor], y: torch.Tensor) -> dict[str, torch.Tensor]:
        task = F.cross_entropy(self.model(x), y)
        return {"total": task, "task": task}


class StudentObjective(nn.Module):
    """Student + distillation criterion (which owns the projector) as one trainable module."""

    def __init__(self, student: nn.Module, criterion: nn.Module) -> None:
        super().__init__()
        self.model = student
        self.criterion = criterion

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        teacher_logits: torch.Tensor | None,
        teacher_emb: torch.Tensor | None,
        teacher_classifier: nn.Linear | None,
    ) -> dict[str, torch.Tensor]:
        emb = self.model.forward_features(x)
        logits = self.model.classifier(emb)
        return self.criterion(logits, emb, teacher_logits, teacher_emb, teacher_classifier, y)


@dataclass
class TrainSet:
    """Tensors of one run: training inputs/labels (+ frozen-teacher outputs) and eval splits."""

    x: Inputs
    y: torch.Tensor
    val: tuple[Inputs, torch.Tensor]
    test: tuple[Inputs, torch.Tensor]
    extras: dict[str, torch.Tensor]  # per-window tensors indexed like x (teacher outputs)


# --- the loop -----------------------------------------------------------------------------


def _lr_at(cfg: RunConfig, epoch: int) -> float:
    """Cosine decay from lr to lr/20 over the run; a pure function of the epoch (resume-exact)."""
    t = epoch / max(cfg.train.epochs, 1)
    lo = cfg.train.lr / 20
    return lo + 0.5 * (cfg.train.lr - lo) * (1 + math.cos(math.pi * t))


def _epoch_batches(n: int, cfg: RunConfig, epoch: int, d: Dist) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=gen)
    per_rank = n // d.world  # equal shards: DDP needs the same number of steps on every rank
    perm = perm[: per_rank * d.world][d.rank :: d.world]
    bs = cfg.train.batch_size
    batches = [perm[i : i + bs] for i in range(0, len(perm), bs)]
    if batches and len(batches[-1]) < 2:  # BatchNorm cannot train on one sample
        batches.pop()
    return batches


def train_step(
    trainable: nn.Module, optimizer: torch.optim.Optimizer, x: Inputs, y: torch.Tensor, *extra: Any
) -> dict[str, float]:
    """One optimisation step of an objective; returns each loss term as a float."""
    terms = trainable(x, y, *extra)
    optimizer.zero_grad(set_to_none=True)
    terms["total"].backward()
    optimizer.step()
    return {k: float(v.detach()) for k, v in terms.items()}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _Progress:
    """rich progress bar per epoch showing each loss term and the active-hinge shares."""

    def __init__(self, enabled: bool, total_epochs: int) -> None:
        self.enabled = enabled
        self.total_epochs = total_epochs
        if enabled:
            from rich.console import Console

            self.console = Console(stderr=True)

    def epoch(self, epoch: int, steps: int) -> Any:
        if not self.enabled:
            return None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        progress = Progress(
            TextColumn(f"epoch {epoch + 1}/{self.total_epochs}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[terms]}"),
            console=self.console,
            transient=True,
        )
        progress.start()
        progress.add_task("train", total=steps, terms="")
        return progress

    def log(self, line: str) -> None:
        if self.enabled:
            self.console.print(line, soft_wrap=True)  # one line per epoch, also in logs


def _format_terms(means: dict[str, float]) -> str:
    order = ("total", "task", "feature", "classifier", "active_feature", "active_classifier")
    short = {"active_feature": "hinge_f", "active_classifier": "hinge_c"}
    return " ".join(f"{short.get(k, k)} {means[k]:.3f}" for k in order if k in means)


def fit(
    objective: nn.Module,
    data: TrainSet,
    cfg: RunConfig,
    out: Path,
    sidecar: dict[str, Any],
    *,
    num_classes: int,
    step_args: Callable[[torch.Tensor], tuple[Any, ...]],
    resume: bool,
    progress: bool,
    d: Dist,
) -> dict[str, Any]:
    """Train `objective.model`; select on validation; score test; write the run folder.

    `step_args(idx)` gives the objective's extra positional inputs for a batch of window indices.
    """
    model = objective.model
    optimizer = torch.optim.AdamW(
        [p for p in objective.parameters() if p.requires_grad],
        lr=cfg.train.lr,
        weight_decay=cfg.train.weight_decay,
    )
    state = {"epoch": 0, "best_val": -1.0, "best_epoch": -1, "history": []}
    if resume:
        state = load_train_state(out, {"objective": objective}, optimizer)
    trainable: nn.Module = objective
    if d.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        trainable = DistributedDataParallel(objective)
    bar = _Progress(progress and d.is_main, cfg.train.epochs)
    n = _count(data.x)
    for epoch in range(state["epoch"], cfg.train.epochs):
        start = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(cfg, epoch)
        trainable.train()
        sums: dict[str, float] = {}
        batches = _epoch_batches(n, cfg, epoch, d)
        live = bar.epoch(epoch, len(batches))
        for step, idx in enumerate(batches):
            terms = train_step(
                trainable, optimizer, _select(data.x, idx), data.y[idx], *step_args(idx)
            )
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + value
            if live is not None:
                live.update(
                    live.task_ids[0],
                    advance=1,
                    terms=_format_terms({k: v / (step + 1) for k, v in sums.items()}),
                )
        if live is not None:
            live.stop()
        means = {k: v / max(len(batches), 1) for k, v in sums.items()}
        val = evaluate(model, data.val[0], data.val[1], num_classes)
        seconds = time.perf_counter() - start
        state["history"].append(
            {
                "epoch": epoch + 1,
                "train": means,
                "val": val,
                "seconds": seconds,
                "lr": _lr_at(cfg, epoch),
            }
        )
        improved = val["accuracy"] > state["best_val"]
        if improved:
            state["best_val"], state["best_epoch"] = val["accuracy"], epoch + 1
        state["epoch"] = epoch + 1
        if d.is_main:
            if improved:
                save_model(out, model, {**sidecar, "epoch": epoch + 1, "metrics": {"val": val}})
            save_train_state(out, {"objective": objective}, optimizer, state)
            atomic_write_json(out / "history.json", state["history"])
        bar.log(
            f"epoch {epoch + 1}/{cfg.train.epochs}  {_format_terms(means)}  "
            f"val acc {val['accuracy']:.4f} f1 {val['macro_f1']:.4f}  {seconds:.1f}s"
            + ("  *" if improved else "")
        )
    _barrier(d)
    model.load_state_dict(load_weights(out / MODEL_FILE))
    val = evaluate(model, data.val[0], data.val[1], num_classes)
    test = evaluate(model, data.test[0], data.test[1], num_classes)
    seconds = [h["seconds"] for h in state["history"]]
    metrics = {
        "val": val,
        "test": test,
        "best_epoch": state["best_epoch"],
        "train": {
            "epochs": cfg.train.epochs,
            "windows": n,
            "epoch_seconds_mean": float(np.mean(seconds)) if seconds else None,
            "peak_rss_mb": _peak_rss_mb(),
            "world_size": d.world,
        },
    }
    if d.is_main:
        save_model(
            out,
            model,
            {**sidecar, "epoch": state["best_epoch"], "metrics": {"val": val, "test": test}},
        )
        atomic_write_json(out / "metrics.json", metrics)
    _barrier(d)
    return metrics


# --- run folders --------------------------------------------------------------------------


def _prepare_out(out: Path, resume: bool, d: Dist) -> bool:
    """Check the output folder; return True when this call created it."""
    out = Path(out)
    finished_or_started = (out / STATE_FILE).exists() or (out / SIDECAR_FILE).exists()
    if resume:
        if not (out / STATE_FILE).exists():
            raise ConfigError(
                f"nothing to resume in {out}: no {STATE_FILE} (start without --resume)"
            )
        return False
    if finished_or_started:
        raise ConfigError(
            f"{out} already holds a run: pass --resume to continue it, or choose another --out"
        )
    created = not out.exists()
    _barrier(d)
    if d.is_main:
        out.mkdir(parents=True, exist_ok=True)
    return created


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


def _check_resume_config(out: Path, cfg: RunConfig) -> None:
    from edgekd.checkpoint import json_safe_yaml

    saved = json_safe_yaml(out / CONFIG_FILE)
    if saved != to_dict(cfg):
        raise ConfigError(
            f"--resume with a config that differs from the one saved in {out / CONFIG_FILE}; "
            "resume with the same options (or start a new run)"
        )


def _run(
    out: Path, cfg: RunConfig, resume: bool, d: Dist, body: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """Create/validate the folder, save the config, run; remove a folder this call made if it fails
    before the first epoch finished (bad input leaves no partial run behind)."""
    created = _prepare_out(out, resume, d)
    if resume:
        _check_resume_config(out, cfg)
    elif d.is_main:
        save_config(cfg, out / CONFIG_FILE)
    try:
        return body()
    except BaseException:
        if created and d.is_main and not (out / STATE_FILE).exists():
            shutil.rmtree(out, ignore_errors=True)
        raise


def _load_data(cfg: RunConfig) -> Any:
    from edgekd.data import load_dataset

    if cfg.data.limit is not None and cfg.data.limit <= 0:
        raise ConfigError(
            f"--limit must be a positive number of training windows, got {cfg.data.limit}"
        )
    return load_dataset(
        cfg.data.source,
        val_subjects=cfg.data.val_subjects,
        limit=cfg.data.limit,
        seed=cfg.train.seed,
    )


def _labelled(split: Any) -> np.ndarray:
    return np.flatnonzero(split.y >= 0)


def split_tensors(
    ds: Any, name: str, specs: dict[str, Any], d: Dist
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Labelled windows of split `name`, preprocessed with `specs`, on `d.device`."""
    split = ds.splits[name]
    keep = _labelled(split)
    if keep.size == 0:
        raise ConfigError(f"the {name} split of {ds.name} has no labelled windows")
    x = {m: _to_tensor(spec, split.x[m][keep], d.device) for m, spec in specs.items()}
    return x, torch.from_numpy(split.y[keep]).long().to(d.device)


def train_teacher(
    cfg: RunConfig, out: Path, *, resume: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Train a teacher on every modality of the dataset; returns metrics.json's content."""
    from edgekd.models import create_teacher

    d = _init_dist()
    out = Path(out)
    ds = _load_data(cfg)
    if not cfg.model.arch:
        cfg = replace(cfg, model=replace(cfg.model, arch=DEFAULT_TEACHER))
    _seed_all(cfg.train.seed)
    teacher = create_teacher(cfg.model.arch, ds.specs, len(ds.labels), **cfg.model.args).to(
        d.device
    )
    train_x, train_y = split_tensors(ds, "train", ds.specs, d)
    data = TrainSet(
        x=train_x,
        y=train_y,
        val=split_tensors(ds, "val", ds.specs, d),
        test=split_tensors(ds, "test", ds.specs, d),
        extras={},
    )
    sidecar = {
        "role": "teacher",
        "arch": teacher.arch,
        "arch_args": teacher.arch_args,
        "labels": list(ds.labels),
        "specs": {m: s.to_dict() for m, s in ds.specs.items()},
        "default_student": ds.default_student,
        "data": {"source": ds.source, "val_subjects": list(cfg.data.val_subjects or []) or None},
        "params": sum(p.numel() for p in teacher.parameters()),
    }

    def body() -> dict[str, Any]:
        return fit(
            TeacherObjective(teacher),
            data,
            cfg,
            out,
            sidecar,
            num_classes=len(ds.labels),
            step_args=lambda idx: (),
            resume=resume,
            progress=progress,
            d=d,
        )

    return _run(out, cfg, resume, d, body)


def _teacher_outputs(
    teacher: nn.Module, x: dict[str, torch.Tensor], drop: tuple[str, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen teacher (eval mode): embeddings and logits for every window, computed once."""
    n = _count(x)
    embs = []
    with torch.no_grad():
        for i in range(0, n, EVAL_BATCH):
            idx = torch.arange(i, min(i + EVAL_BATCH, n))
            embs.append(teacher.forward_features(_select(x, idx), drop=drop))
        emb = torch.cat(embs)
        return teacher.classifier(emb), emb


def _corrupt(x: dict[str, torch.Tensor], keep: str, share: float, seed: int) -> None:
    """In place: replace every modality but `keep` by N(0, 1) noise (inputs are normalised, so
    this is noise at the data's own scale) in a seeded random `share` of the windows."""
    n = _count(x)
    gen = torch.Generator().manual_seed(seed * 7919 + 17)
    idx = torch.randperm(n, generator=gen)[: round(share * n)].to(x[keep].device)
    for m, t in x.items():
        if m != keep:
            t[idx] = torch.randn(t[idx].shape, generator=gen).to(t.device)


def distill(
    cfg: RunConfig,
    teacher_dir: Path,
    out: Path,
    *,
    resume: bool = False,
    progress: bool = True,
    fold: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Train a single-modality student from a frozen multimodal teacher (METHOD.md losses).

    The data source and split are the teacher's (a different split would leak the teacher's
    training subjects into validation); teacher inputs use the teacher's saved normalisation.
    `fold=(i, k)`: cross-validation fold i of k over the training subjects (`edgekd.distill.cv`);
    fold i's subjects replace the validation split and leave the training split.
    """
    from edgekd.distill.losses import DistillCriterion
    from edgekd.modalities import ModalitySpec
    from edgekd.models import create_student

    d = _init_dist()
    out = Path(out)
    teacher_run = load_run(teacher_dir, expect_role="teacher")
    tside = teacher_run.sidecar
    teacher_specs = {m: ModalitySpec.from_dict(s) for m, s in tside["specs"].items()}
    modality = cfg.student_modality or tside.get("default_student")
    if modality not in teacher_specs:
        raise ConfigError(
            f"student modality {modality!r} is not among the teacher's modalities "
            f"({', '.join(teacher_specs)})"
        )
    data_cfg = replace(
        cfg.data, source=tside["data"]["source"], val_subjects=tside["data"]["val_subjects"]
    )
    cfg = replace(cfg, data=data_cfg, student_modality=modality)
    ds = _load_data(cfg)
    if fold is not None:
        from edgekd.distill.cv import fold_dataset

        ds = fold_dataset(ds, *fold)
    if list(ds.labels) != list(tside["labels"]):
        raise ConfigError(
            f"the teacher in {teacher_dir} was trained on other labels than {ds.name} has now"
        )
    spec = ds.specs[modality]
    if not cfg.model.arch:
        if spec.kind not in DEFAULT_STUDENT:
            raise ConfigError(f"no default student for modality kind {spec.kind!r}; pass --arch")
        cfg = replace(cfg, model=replace(cfg.model, arch=DEFAULT_STUDENT[spec.kind]))
    _seed_all(cfg.train.seed)
    student = create_student(cfg.model.arch, spec, len(ds.labels), **cfg.model.args).to(d.device)
    teacher = teacher_run.model.to(d.device)
    for p in teacher.parameters():
        p.requires_grad_(False)
    criterion = DistillCriterion(cfg.distill, student.embed_dim, teacher.embed_dim).to(d.device)

    train = ds.splits["train"]
    keep = _labelled(train)
    x = _to_tensor(spec, train.x[modality][keep], d.device)
    y = torch.from_numpy(train.y[keep]).long().to(d.device)
    extras: dict[str, torch.Tensor] = {}
    if cfg.distill.uses_teacher:
        tx = {m: _to_tensor(s, train.x[m][keep], d.device) for m, s in teacher_specs.items()}
        drop = (
            tuple(m for m in teacher_specs if m != modality)
            if cfg.distill.teacher_view == "student"
            else ()
        )
        if cfg.distill.teacher_corrupt > 0:
            _corrupt(tx, modality, cfg.distill.teacher_corrupt, cfg.train.seed)
        extras["teacher_logits"], extras["teacher_emb"] = _teacher_outputs(teacher, tx, drop)
    data = TrainSet(
        x=x,
        y=y,
        val=split_tensors(ds, "val", {modality: spec}, d),
        test=split_tensors(ds, "test", {modality: spec}, d),
        extras=extras,
    )
    data = replace(
        data, val=(data.val[0][modality], data.val[1]), test=(data.test[0][modality], data.test[1])
    )
    sidecar = {
        "role": "student",
        "arch": student.arch,
        "arch_args": student.arch_args,
        "labels": list(ds.labels),
        "specs": {modality: spec.to_dict()},
        "student_modality": modality,
        "data": {"source": ds.source, "val_subjects": tside["data"]["val_subjects"]},
        "teacher_dir": str(Path(teacher_dir).resolve()),
        "teacher_metrics": tside.get("metrics", {}),
        "distill": to_dict(cfg.distill),
        "params": sum(p.numel() for p in student.parameters()),
        "fold": list(fold) if fold is not None else None,
    }
    classifier = teacher.classifier if cfg.distill.classifier_loss == "soft_teacher_head" else None

    def step_args(idx: torch.Tensor) -> tuple[Any, ...]:
        if not extras:
            return (None, None, None)
        return (extras["teacher_logits"][idx], extras["teacher_emb"][idx], classifier)

    def body() -> dict[str, Any]:
        return fit(
            StudentObjective(student, criterion),
            data,
            cfg,
            out,
            sidecar,
            num_classes=len(ds.labels),
            step_args=step_args,
            resume=resume,
            progress=progress,
            d=d,
        )

    return _run(out, cfg, resume, d, body)
