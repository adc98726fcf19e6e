"""The training loop shared by teachers and students: objectives, DDP, epochs, selection.

Contracts:
- Model selection uses the validation split only; the test split is scored once, at the end,
  with the selected weights.
- A run is deterministic for its seed: batches and augmentation are pure functions of (seed,
  epoch, step) and the learning rate of the optimizer step (`RunPlan.schedule`), so `--resume`
  from the last finished epoch reproduces an uninterrupted run exactly.
- Under `torchrun` (WORLD_SIZE > 1) training uses DDP (gloo on CPU, nccl on CUDA); each rank
  takes a disjoint shard of every epoch; only rank 0 writes.
"""

from __future__ import annotations

import math
import os
import resource
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgekd.checkpoint import (
    MODEL_FILE,
    load_train_state,
    load_weights,
    save_model,
    save_train_state,
)
from edgekd.distill.plan import RunPlan
from edgekd.io import atomic_write_json
from edgekd.metrics import classification_report

EVAL_BATCH = 1024
STILL_IMPROVING_SHARE = 0.1  # best epoch within the last 10% of epochs: training was cut short

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


def init_dist() -> Dist:
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


def barrier(d: Dist) -> None:
    if d.world > 1:
        import torch.distributed as dist

        dist.barrier()


# --- evaluation ---------------------------------------------------------------------------


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
    """Accuracy and macro-F1 (fractions) of `model` on labelled windows held as tensors."""
    pred = predict_logits(model, x).argmax(1).cpu().numpy()
    return classification_report(y.cpu().numpy(), pred, num_classes)


@dataclass(frozen=True)
class EvalSet:
    """Labelled windows read from storage batch by batch; `single` names the one modality a
    single-input model takes (None: the model takes the dict)."""

    batches: Callable[[], Iterator[tuple[dict[str, torch.Tensor], np.ndarray]]]
    single: str | None = None

    @torch.no_grad()
    def score(self, model: nn.Module, num_classes: int) -> dict[str, float]:
        was_training = model.training
        model.eval()
        preds, ys = [], []
        for x, y in self.batches():
            preds.append(model(x[self.single] if self.single else x).argmax(1).cpu().numpy())
            ys.append(y)
        model.train(was_training)
        return classification_report(np.concatenate(ys), np.concatenate(preds), num_classes)


# --- objectives ---------------------------------------------------------------------------


class TeacherObjective(nn.Module):
    """Cross-entropy of the fused teacher on its modalities (hard or soft, mixed, targets)."""

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


class StepSource(Protocol):
    """Per-epoch step inputs `(x, y, *extra)` for an objective; `windows` counts the epoch."""

    windows: int

    def steps(self, epoch: int) -> int: ...

    def epoch(self, epoch: int) -> Iterator[tuple[Any, ...]]: ...


# --- the loop -----------------------------------------------------------------------------


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


class Progress:
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
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.progress import Progress as Bar

        progress = Bar(
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


def _format_terms(means: Mapping[str, float]) -> str:
    order = ("total", "task", "feature", "classifier", "active_feature", "active_classifier")
    short = {"active_feature": "hinge_f", "active_classifier": "hinge_c"}
    return " ".join(f"{short.get(k, k)} {means[k]:.3f}" for k in order if k in means)


def still_improving(best_epoch: int, epochs: int) -> bool:
    """True when the best validation epoch lies in the last STILL_IMPROVING_SHARE of the run."""
    return best_epoch > epochs - max(1, math.ceil(STILL_IMPROVING_SHARE * epochs))


def fit(
    objective: nn.Module,
    source: StepSource,
    val: EvalSet,
    test: EvalSet,
    plan: RunPlan,
    out: Path,
    sidecar: dict[str, Any],
    *,
    num_classes: int,
    resume: bool,
    progress: bool,
    d: Dist,
    summary: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train `objective.model` on `source` as `plan` says (epochs, learning rate per optimizer
    step, selection); select on `val`; score `test`; write the run folder.

    The plan's description is logged first; `summary` joins metrics.json's `train` section.
    """
    epochs, select = plan.epochs, plan.select
    model = objective.model
    optimizer = torch.optim.AdamW(
        [p for p in objective.parameters() if p.requires_grad],
        lr=plan.schedule.peak,
        weight_decay=plan.config.train.weight_decay,
    )
    state = {"epoch": 0, "best_val": -1.0, "best_epoch": -1, "selected_epoch": -1, "history": []}
    if resume:
        state = load_train_state(out, {"objective": objective}, optimizer)
    trainable: nn.Module = objective
    if d.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        trainable = DistributedDataParallel(objective)
    bar = Progress(progress and d.is_main, epochs)
    bar.log(plan.describe())
    if d.is_main and not bar.enabled:
        for warning in plan.warnings:
            print(f"warning: {warning}", file=sys.stderr)
    for epoch in range(state["epoch"], epochs):
        start = time.perf_counter()
        trainable.train()
        sums: dict[str, float] = {}
        live = bar.epoch(epoch, source.steps(epoch))
        steps = 0
        first_step = epoch * plan.steps_per_epoch
        for args in source.epoch(epoch):
            for group in optimizer.param_groups:
                group["lr"] = plan.schedule.lr(first_step + steps)
            terms = train_step(trainable, optimizer, *args)
            steps += 1
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + value
            if live is not None:
                live.update(
                    live.task_ids[0],
                    advance=1,
                    terms=_format_terms({k: v / steps for k, v in sums.items()}),
                )
        if live is not None:
            live.stop()
        means = {k: v / max(steps, 1) for k, v in sums.items()}
        val_metrics = val.score(model, num_classes)
        seconds = time.perf_counter() - start
        state["history"].append(
            {
                "epoch": epoch + 1,
                "train": means,
                "val": val_metrics,
                "seconds": seconds,
                "lr": plan.schedule.lr(first_step),
            }
        )
        improved = val_metrics["accuracy"] > state["best_val"]
        if improved:
            state["best_val"], state["best_epoch"] = val_metrics["accuracy"], epoch + 1
        keep = improved if select == "best_val" else True
        if keep:
            state["selected_epoch"] = epoch + 1
        state["epoch"] = epoch + 1
        if d.is_main:
            if keep:
                save_model(
                    out, model, {**sidecar, "epoch": epoch + 1, "metrics": {"val": val_metrics}}
                )
            save_train_state(out, {"objective": objective}, optimizer, state)
            atomic_write_json(out / "history.json", state["history"])
        bar.log(
            f"epoch {epoch + 1}/{epochs}  {_format_terms(means)}  "
            f"val acc {val_metrics['accuracy']:.4f} f1 {val_metrics['macro_f1']:.4f}  "
            f"{seconds:.1f}s" + ("  *" if improved else "")
        )
    barrier(d)
    model.load_state_dict(load_weights(out / MODEL_FILE))
    val_metrics = val.score(model, num_classes)
    test_metrics = test.score(model, num_classes)
    seconds = [h["seconds"] for h in state["history"]]
    improving = still_improving(state["best_epoch"], epochs)
    metrics = {
        "val": val_metrics,
        "test": test_metrics,
        "select": select,
        "selected_epoch": state["selected_epoch"],
        "best_epoch": state["best_epoch"],
        "still_improving": improving,
        "train": {
            "epochs": epochs,
            "windows": source.windows,
            "epoch_seconds_mean": float(np.mean(seconds)) if seconds else None,
            "peak_rss_mb": _peak_rss_mb(),
            "world_size": d.world,
            **(summary or {}),
        },
        "warnings": list(plan.warnings),
    }
    if improving:
        bar.log(
            f"still improving at the last epoch (best epoch {state['best_epoch']} of {epochs}): "
            "more epochs may help"
        )
    if d.is_main:
        save_model(
            out,
            model,
            {
                **sidecar,
                "epoch": state["selected_epoch"],
                "metrics": {"val": val_metrics, "test": test_metrics},
            },
        )
        atomic_write_json(out / "metrics.json", metrics)
    barrier(d)
    return metrics
