"""Where a student's step gets its teacher's outputs: one small feed per kind of teacher, each
`(batch, epoch) -> (logits, embedding)` (either may be None).

- `OnlineFeed`: an edgekd teacher run on the batch's own (augmented) teacher inputs;
- `CachedFeed`: outputs computed once per window, indexed by the batch;
- `SelfFeed`: the student itself on the batch's clean windows (FixMatch's targets);
- `edgekd.distill.outside.OutsideOnlineFeed`: an outside teacher (a card) on raw windows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from edgekd.data.pipeline import Batch, batch_rng
from edgekd.distill.teacher_outputs import TeacherView, teacher_forward


class TeacherFeed(Protocol):
    """A frozen teacher's (logits, embedding) for one training batch, either may be None."""

    def __call__(
        self, batch: Batch, epoch: int
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]: ...


@dataclass
class OnlineFeed:
    """An edgekd teacher run on the batch's own teacher inputs (view and corruption applied;
    the corruption seed is drawn from the batch's seed, epoch and step)."""

    teacher: nn.Module
    view: TeacherView
    seed: int
    rank: int

    def __call__(self, batch: Batch, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = batch_rng(self.seed, epoch, batch.step, self.rank)
        return teacher_forward(
            self.teacher, batch.inputs["teacher"], view=self.view, seed=int(rng.integers(2**31))
        )


@dataclass
class CachedFeed:
    """Outputs computed once per window of the loader's Windows, indexed by the batch."""

    logits: torch.Tensor | None
    emb: torch.Tensor | None

    def __call__(
        self, batch: Batch, epoch: int
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        pick = [None if t is None else t[torch.from_numpy(batch.idx).to(t.device)]
                for t in (self.logits, self.emb)]  # fmt: skip
        return pick[0], pick[1]


@dataclass
class SelfFeed:
    """The student's own logits on the batch's clean windows, without gradient (FixMatch's
    targets), from its weights at this step."""

    student: nn.Module
    modality: str

    def __call__(self, batch: Batch, epoch: int) -> tuple[torch.Tensor, None]:
        was_training = self.student.training
        self.student.eval()
        with torch.no_grad():
            logits = self.student(batch.inputs["clean"][self.modality])
        self.student.train(was_training)
        return logits, None
