"""Distillation's side of an outside teacher (a card): its outputs as torch tensors, online on
each augmented batch or cached once over clean windows, logits in the dataset's class order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from edgekd.data.pipeline import EVAL_BATCH, Batch, Windows
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


def window_outputs(teacher: OutsideTeacher, windows: Windows) -> TeacherOutputs:
    """The teacher's outputs for every clean window of `windows`, in order."""
    modalities = list(teacher.card.modalities)
    logits, embs = [], []
    for lo in range(0, len(windows), EVAL_BATCH):
        idx = np.arange(lo, min(lo + EVAL_BATCH, len(windows)))
        raw, _ = windows.fetch(idx, modalities)
        out = teacher.outputs(raw, windows.ids(idx))
        logits.append(out.logits)
        embs.append(out.embedding)
    return TeacherOutputs(
        None if logits[0] is None else np.concatenate(logits),
        None if embs[0] is None else np.concatenate(embs),
    )


def outside_feed(
    card: TeacherCard, ds: Any, windows: Windows, online: bool, device: torch.device
) -> tuple[Any, int | None]:
    """(the step feed, the teacher's embedding size or None) of `card` over the training
    `windows` of `ds`. Cached mode computes every window's outputs here, once."""
    from edgekd.distill.trainer import CachedFeed

    teacher = OutsideTeacher(card, ds.specs)
    labels = list(ds.labels)
    if online:
        probe = window_outputs(teacher, Windows.of(*((s, r[:2]) for s, r in windows.parts[:1])))
        dim = None if probe.embedding is None else int(probe.embedding.shape[1])
        return OutsideOnlineFeed(teacher, labels, device), dim
    out = window_outputs(teacher, windows)
    logits, emb = _tensors(teacher, out, labels, device)
    return CachedFeed(logits, emb), None if emb is None else int(emb.shape[1])
