"""The frozen teacher's outputs for distillation: one function for online, cached and QAT use.

`teacher_forward` runs the teacher in eval mode without gradients on normalised inputs, after the
configured restricted view (`teacher_view=student` drops the other modalities) and corruption
(`teacher_corrupt`: a seeded share of the windows get N(0, 1) noise, the data's own scale after
normalisation, in place of every modality but the student's). Online distillation calls it on
each augmented batch; `cached_teacher_outputs` calls it once over clean windows (cached mode and
QAT fine-tuning).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from edgekd.config import DistillConfig
    from edgekd.data.pipeline import Windows
    from edgekd.modalities import ModalitySpec

EVAL_BATCH = 1024
CPU = torch.device("cpu")


@dataclass(frozen=True)
class TeacherView:
    """How the teacher sees a batch: modalities dropped, and the corruption of the others."""

    drop: tuple[str, ...] = ()
    keep: str = ""  # the student's modality, never corrupted
    corrupt: float = 0.0

    @classmethod
    def of(cls, distill: DistillConfig, modalities: list[str], student: str) -> TeacherView:
        drop = (
            tuple(m for m in modalities if m != student)
            if distill.teacher_view == "student"
            else ()
        )
        return cls(drop=drop, keep=student, corrupt=distill.teacher_corrupt)


def corrupt(x: dict[str, torch.Tensor], keep: str, share: float, seed: int) -> None:
    """In place: replace every modality but `keep` by N(0, 1) noise in a seeded random `share`
    (rounded to whole windows) of the windows."""
    n = len(x[keep])
    gen = torch.Generator().manual_seed(seed * 7919 + 17)
    idx = torch.randperm(n, generator=gen)[: round(share * n)].to(x[keep].device)
    for m, t in x.items():
        if m != keep:
            t[idx] = torch.randn(t[idx].shape, generator=gen).to(t.device)


@torch.no_grad()
def teacher_forward(
    teacher: nn.Module,
    x: dict[str, torch.Tensor],
    drop: Collection[str] = (),
    view: TeacherView | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, embeddings) of the frozen teacher in eval mode, EVAL_BATCH windows at a time.

    `view` (when given) supplies drop and corruption; corruption edits `x` in place, seeded
    by `seed`.
    """
    if view is not None:
        drop = view.drop
        if view.corrupt > 0:
            corrupt(x, view.keep, view.corrupt, seed)
    was_training = teacher.training
    teacher.eval()
    n = len(next(iter(x.values())))
    embs = [
        teacher.forward_features({m: t[i : i + EVAL_BATCH] for m, t in x.items()}, drop=drop)
        for i in range(0, n, EVAL_BATCH)
    ]
    teacher.train(was_training)
    emb = torch.cat(embs)
    return teacher.classifier(emb), emb


def cached_teacher_outputs(
    teacher: nn.Module,
    specs: Mapping[str, ModalitySpec],
    windows: Windows,
    view: TeacherView,
    seed: int,
    device: torch.device = CPU,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher outputs for every clean window of `windows`, in order, computed batch by batch
    from raw storage (the corruption seed of batch k is `seed + k`)."""
    from edgekd.data.pipeline import eval_batches

    logits, embs = [], []
    for k, (x, _) in enumerate(eval_batches(windows, specs, device)):
        lo, emb = teacher_forward(teacher, x, view=view, seed=seed + k)
        logits.append(lo)
        embs.append(emb)
    return torch.cat(logits), torch.cat(embs)


def student_teacher_outputs(
    teacher: nn.Module,
    specs: Mapping[str, ModalitySpec],
    windows: Windows,
    distill: DistillConfig,
    student: str,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """QAT's teacher outputs: as `distill` configured them (view, corruption) on the clean raw
    training `windows`, read from storage batch by batch."""
    view = TeacherView.of(distill, list(specs), student)
    return cached_teacher_outputs(teacher, specs, windows, view, seed)
