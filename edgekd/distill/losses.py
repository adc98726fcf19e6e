"""Distillation losses of METHOD.md ("Losses"), one small module each, combined by DistillCriterion.

Notation: s_i student embedding, p the projector, t_i teacher embedding, z^S_i / z^T_i student /
teacher logits, y_i the label (-1 = unlabelled), w_i the per-sample quality weight (default 1),
B the batch size. Every loss returns `LossTerm(value, active)`: `value` is a scalar tensor,
`active` is the share of samples whose hinge is positive for the hinge losses (SoftMargin,
MarginKD) and None for the others.

Teacher tensors are treated as constants: the losses detach them (the teacher is frozen, and a
stray `requires_grad` on its outputs must not make the student's step update it).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.config import DISTANCES, QUALITY, DistillConfig
from edgekd.errors import ConfigError

PROJECTORS = ("linear", "identity")


class LossTerm(NamedTuple):
    """A loss value (scalar tensor) and, for hinge losses, the fraction of active samples."""

    value: torch.Tensor
    active: torch.Tensor | None


def _weighted_mean(per_sample: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """mean_i w_i * l_i (plain mean when weights is None)."""
    if weights is None:
        return per_sample.mean()
    return (weights.detach() * per_sample).mean()


def _hinge(distance: torch.Tensor, margin: float, weights: torch.Tensor | None) -> LossTerm:
    """mean_i w_i max(0, d_i - m); active = share of samples with d_i > m."""
    excess = distance - margin
    return LossTerm(_weighted_mean(F.relu(excess), weights), (excess > 0).float().mean())


def _kl_per_sample(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float
) -> torch.Tensor:
    """tau^2 * KL(softmax(z^T/tau) || softmax(z^S/tau)) per sample, shape (B,)."""
    log_ps = F.log_softmax(student_logits / tau, dim=1)
    log_pt = F.log_softmax(teacher_logits.detach() / tau, dim=1)
    return tau**2 * F.kl_div(log_ps, log_pt, reduction="none", log_target=True).sum(dim=1)


def _labelled_mean(per_sample: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean of per_sample over samples with y >= 0; 0 (keeping the graph) when there are none."""
    mask = (y >= 0).to(per_sample.dtype)
    return (per_sample * mask).sum() / mask.sum().clamp(min=1.0)


def _cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample CE, 0 for unlabelled samples (y == -1)."""
    return F.cross_entropy(logits, y, reduction="none", ignore_index=-1)


class HardL2(nn.Module):
    """FitNets feature loss: mean_i w_i * ||a_i - b_i||_2^2 (sum of squares over features)."""

    def forward(
        self, student: torch.Tensor, teacher: torch.Tensor, weights: torch.Tensor | None = None
    ) -> LossTerm:
        sq = (student - teacher.detach()).pow(2).sum(dim=1)
        return LossTerm(_weighted_mean(sq, weights), None)


class SoftMargin(nn.Module):
    """Feature-level soft constraint: mean_i w_i * max(0, d(a_i, b_i) - m).

    d: `cosine` = 1 - cos(a, b) in [0, 2]; `l2` = ||a/|a| - b/|b|||_2 in [0, 2] (Euclidean
    distance of L2-normalised vectors); `l2sq` = ||a - b||_2^2 on the raw vectors, so that
    `l2sq` with m = 0 is exactly HardL2.
    """

    def __init__(self, margin: float, distance: str = "cosine") -> None:
        super().__init__()
        if distance not in DISTANCES:
            raise ConfigError(f"distance={distance!r} is not one of {', '.join(DISTANCES)}")
        self.margin = float(margin)
        self.distance = distance

    def distances(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per-sample distance d(a_i, b_i), shape (B,)."""
        b = b.detach()
        if self.distance == "cosine":
            return 1.0 - F.cosine_similarity(a, b, dim=1)
        if self.distance == "l2":
            return torch.linalg.vector_norm(F.normalize(a, dim=1) - F.normalize(b, dim=1), dim=1)
        return (a - b).pow(2).sum(dim=1)

    def forward(
        self, student: torch.Tensor, teacher: torch.Tensor, weights: torch.Tensor | None = None
    ) -> LossTerm:
        return _hinge(self.distances(student, teacher), self.margin, weights)


class LogitKD(nn.Module):
    """Hinton KD: mean_i w_i * tau^2 * KL(softmax(z^T_i/tau) || softmax(z^S_i/tau))."""

    def __init__(self, tau: float = 4.0) -> None:
        super().__init__()
        if tau <= 0:
            raise ConfigError(f"tau must be > 0, got {tau}")
        self.tau = float(tau)

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        weights: torch.Tensor | None = None,
    ) -> LossTerm:
        kl = _kl_per_sample(student_logits, teacher_logits, self.tau)
        return LossTerm(_weighted_mean(kl, weights), None)


class MarginKD(LogitKD):
    """Logit KD with a margin: mean_i w_i * max(0, tau^2 * KL_i - m_c)."""

    def __init__(self, tau: float = 4.0, margin: float = 0.0) -> None:
        super().__init__(tau)
        self.margin = float(margin)

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        weights: torch.Tensor | None = None,
    ) -> LossTerm:
        return _hinge(
            _kl_per_sample(student_logits, teacher_logits, self.tau), self.margin, weights
        )


class SoftTeacherHead(nn.Module):
    """Classifier-level soft constraint: mean over labelled i of w_i * CE(W_T p(s_i) + b_T, y_i).

    The teacher's classifier is applied with detached weights: the gradient reaches the projected
    student embedding p(s_i) but never W_T or b_T. Samples with y_i = -1 are skipped.
    """

    def forward(
        self,
        projected: torch.Tensor,
        teacher_classifier: nn.Linear,
        y: torch.Tensor,
        weights: torch.Tensor | None = None,
    ) -> LossTerm:
        bias = None if teacher_classifier.bias is None else teacher_classifier.bias.detach()
        logits = F.linear(projected, teacher_classifier.weight.detach(), bias)
        ce = _cross_entropy(logits, y)
        if weights is not None:
            ce = ce * weights.detach()
        return LossTerm(_labelled_mean(ce, y), None)


@torch.no_grad()
def quality_weights(
    kind: str,
    teacher_logits: torch.Tensor | None,
    teacher_emb: torch.Tensor | None,
    y: torch.Tensor,
    temperature: float = 0.5,
) -> torch.Tensor:
    """Per-sample weights w_i = B * softmax(q / T_q)_i (they average 1), without gradient.

    q_i: `teacher_confidence` = softmax(z^T_i)[y_i] (the teacher's top-class probability when
    y_i = -1, as there is no label); `teacher_norm` = ||t_i||_2; `none`: w_i = 1.
    """
    if kind not in QUALITY:
        raise ConfigError(f"quality={kind!r} is not one of {', '.join(QUALITY)}")
    if temperature <= 0:
        raise ConfigError(f"quality temperature must be > 0, got {temperature}")
    if kind == "none":
        return torch.ones(y.shape[0], device=y.device)
    if kind == "teacher_confidence":
        if teacher_logits is None:
            raise ConfigError("quality='teacher_confidence' needs the teacher's logits")
        probs = F.softmax(teacher_logits.float(), dim=1)
        labelled = probs.gather(1, y.clamp(min=0)[:, None]).squeeze(1)
        q = torch.where(y >= 0, labelled, probs.max(dim=1).values)
    else:
        if teacher_emb is None:
            raise ConfigError("quality='teacher_norm' needs the teacher's embeddings")
        q = torch.linalg.vector_norm(teacher_emb.float(), dim=1)
    return q.shape[0] * F.softmax(q / temperature, dim=0)


class Projector(nn.Module):
    """Student embedding -> teacher embedding space; trained with the student, dropped at export.

    `linear`: nn.Linear(in_dim, out_dim); `identity`: no parameters, needs in_dim == out_dim.
    """

    def __init__(self, in_dim: int, out_dim: int, kind: str = "linear") -> None:
        super().__init__()
        if kind not in PROJECTORS:
            raise ConfigError(f"projector={kind!r} is not one of {', '.join(PROJECTORS)}")
        if kind == "identity" and in_dim != out_dim:
            raise ConfigError(
                f"projector='identity' needs equal embedding sizes, but the student has {in_dim} "
                f"and the teacher {out_dim}; use projector='linear'"
            )
        self.map: nn.Module = nn.Linear(in_dim, out_dim) if kind == "linear" else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.map(x)


class DistillCriterion(nn.Module):
    """L = lambda_task * L_task + lambda_feature * L_feature + lambda_classifier * L_classifier.

    L_task = CE(z^S_i, y_i) averaged over labelled samples (y_i >= 0) only; quality weights never
    touch it. Unlabelled samples (y_i = -1) contribute no task loss and no `soft_teacher_head`
    loss (both need a label), but do contribute to `logit_kd`, `margin_kd` and the feature terms,
    which only compare the student with the teacher.

    The projector exists only when a term uses it (feature losses, soft_teacher_head); otherwise
    `self.projector` is None and the criterion has no parameters (DDP would reject unused ones).
    With feature_loss and classifier_loss both `none` (the CE-only baseline) the teacher arguments
    may be None.

    Output keys: `total`, `task`, `feature`, `classifier` (0 where a term is `none`), and
    `active_feature` / `active_classifier`: the share of samples that contribute a non-zero
    gradient through the term's hinge; 1 for the non-hinge terms (every sample contributes),
    0 where the term is `none`.
    """

    def __init__(
        self, cfg: DistillConfig, student_dim: int, teacher_dim: int | None = None
    ) -> None:
        super().__init__()
        self.cfg = cfg
        needs_projector = cfg.feature_loss != "none" or cfg.classifier_loss == "soft_teacher_head"
        if needs_projector and teacher_dim is None:
            raise ConfigError(
                f"feature_loss={cfg.feature_loss!r} / classifier_loss={cfg.classifier_loss!r} "
                "project the student into the teacher's space: teacher_dim is required"
            )
        self.projector = (
            Projector(student_dim, teacher_dim, cfg.projector) if needs_projector else None
        )
        self.feature_term: nn.Module | None = {
            "none": None,
            "hard_l2": HardL2(),
            "soft_margin": SoftMargin(cfg.margin, cfg.distance),
        }[cfg.feature_loss]
        self.classifier_term: nn.Module | None = {
            "none": None,
            "logit_kd": LogitKD(cfg.tau),
            "soft_teacher_head": SoftTeacherHead(),
            "margin_kd": MarginKD(cfg.tau, cfg.classifier_margin),
        }[cfg.classifier_loss]

    def forward(
        self,
        student_logits: torch.Tensor,
        student_emb: torch.Tensor,
        teacher_logits: torch.Tensor | None,
        teacher_emb: torch.Tensor | None,
        teacher_classifier: nn.Linear | None,
        y: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        task = _labelled_mean(_cross_entropy(student_logits, y), y)
        zero = task.new_zeros(())
        out = {
            "task": task,
            "feature": zero,
            "classifier": zero,
            "active_feature": zero,
            "active_classifier": zero,
        }
        if cfg.uses_teacher:
            weights = None
            if cfg.quality != "none":
                weights = quality_weights(
                    cfg.quality, teacher_logits, teacher_emb, y, cfg.quality_temperature
                )
            projected = None if self.projector is None else self.projector(student_emb)
            if self.feature_term is not None:
                _require(teacher_emb, "teacher_emb", f"feature_loss={cfg.feature_loss!r}")
                term = self.feature_term(projected, teacher_emb, weights)
                out["feature"], out["active_feature"] = term.value, _active(term, zero)
            if isinstance(self.classifier_term, SoftTeacherHead):
                _require(teacher_classifier, "teacher_classifier", "soft_teacher_head")
                term = self.classifier_term(projected, teacher_classifier, y, weights)
                out["classifier"], out["active_classifier"] = term.value, _active(term, zero)
            elif self.classifier_term is not None:
                _require(
                    teacher_logits, "teacher_logits", f"classifier_loss={cfg.classifier_loss!r}"
                )
                term = self.classifier_term(student_logits, teacher_logits, weights)
                out["classifier"], out["active_classifier"] = term.value, _active(term, zero)
        out["total"] = (
            cfg.lambda_task * out["task"]
            + cfg.lambda_feature * out["feature"]
            + cfg.lambda_classifier * out["classifier"]
        )
        return out


def _active(term: LossTerm, zero: torch.Tensor) -> torch.Tensor:
    return term.active if term.active is not None else zero + 1.0


def _require(value: object, name: str, why: str) -> None:
    if value is None:
        raise ConfigError(f"{why} needs {name}, but None was passed (is the teacher loaded?)")
