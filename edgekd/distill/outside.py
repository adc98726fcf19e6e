"""Distillation's side of an outside teacher (a card): its outputs as torch tensors, online on
each augmented batch or cached once over clean windows, logits in the dataset's class order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from edgekd.data.pipeline import Batch, Windows
from edgekd.distill.feeds import CachedFeed
from edgekd.teachers.card import TeacherCard
from edgekd.teachers.teacher import OutsideTeacher, TeacherOutputs


def _tensors(
    teacher: OutsideTeacher, out: TeacherOutputs, labels: list[str], device: torch.device
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    logits = teacher.dataset_logits(out, labels)
    return (
        None if logits is None else torch.from_numpy(logits).to(device),
        None if out.embedding is None else torch.from_numpy(out.embedding).to(device),
    )


@dataclass
class OutsideOnlineFeed:
    """The outside teacher run on the batch's raw windows (after the same raw-stage
    augmentation and mixing as the student's)."""

    teacher: OutsideTeacher
    labels: list[str]
    device: torch.device

    def __call__(
        self, batch: Batch, epoch: int
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return _tensors(self.teacher, self.teacher.outputs(batch.raw), self.labels, self.device)


def outside_feed(
    card: TeacherCard, ds: Any, windows: Windows, online: bool, device: torch.device
) -> tuple[Any, int | None]:
    """(the step feed, the teacher's embedding size or None) of `card` over the training
    `windows` of `ds`. Cached mode computes every window's outputs here, once."""
    teacher = OutsideTeacher(card, ds.specs)
    labels = list(ds.labels)
    if online:
        probe = teacher.window_outputs(Windows.of(*((s, r[:2]) for s, r in windows.parts[:1])))
        dim = None if probe.embedding is None else int(probe.embedding.shape[1])
        return OutsideOnlineFeed(teacher, labels, device), dim
    out = teacher.window_outputs(windows)
    logits, emb = _tensors(teacher, out, labels, device)
    return CachedFeed(logits, emb), None if emb is None else int(emb.shape[1])
