"""Distillation losses, one small module each, combined by DistillCriterion.

Notation: s_i student embedding, p the projector, t_i teacher embedding, z^S_i / z^T_i student /
teacher logits, y_i the label, w_i the per-sample quality weight (default 1), B the batch size,
C the number of classes.

Labels come in two forms, accepted by every term: int64 (B,) class indices with -1 = unlabelled,
or float (B, C) soft targets (mixup), a row of zeros = unlabelled. Internally both become target
rows r_i in R^C (one-hot for an index); a row is labelled when it sums to more than 0.

Every loss returns `LossTerm(value, active)`: `value` is a scalar tensor,
`active` is the share of samples whose hinge is positive for the hinge losses (SoftMargin,
MarginKD) and None for the others.

Teacher tensors are treated as constants: the losses detach them (the teacher is frozen, and a
stray `requires_grad` on its outputs must not make the student's step update it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.config import DISTANCES, QUALITY, DistillConfig
from edgekd.errors import ConfigError, InputError

PROJECTORS = ("linear", "identity")


class LossTerm(NamedTuple):
    """A loss value (scalar tensor) and, for hinge losses, the fraction of active samples."""

    value: torch.Tensor
    active: torch.Tensor | None


def _temperature(tau: float) -> float:
    """tau as a float; ConfigError unless tau > 0."""
    if tau <= 0:
        raise ConfigError(f"tau must be > 0, got {tau}")
    return float(tau)


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
    return tau**2 * _kl_rows(log_pt, log_ps)


def _kl_rows(log_t: torch.Tensor, log_s: torch.Tensor) -> torch.Tensor:
    """KL(t || s) per row from log-probabilities, shape (B,)."""
    return F.kl_div(log_s, log_t, reduction="none", log_target=True).sum(dim=1)


def target_rows(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Labels as float (B, C) target rows: one-hot for an index, zeros for -1, soft rows as given.

    InputError for a shape or value that is neither form (a soft row must be >= 0).
    """
    if y.dtype.is_floating_point:
        if y.dim() != 2 or y.shape[1] != num_classes:
            raise InputError(
                f"soft targets must have shape (batch, {num_classes}), got {tuple(y.shape)}"
            )
        if bool((y < 0).any()):
            raise InputError("soft targets must be >= 0 (a row of zeros marks an unlabelled one)")
        return y
    if y.dim() != 1:
        raise InputError(f"class-index labels must have shape (batch,), got {tuple(y.shape)}")
    bad = (y < -1) | (y >= num_classes)
    if bool(bad.any()):
        found = y[bad].unique().tolist()[:10]
        raise InputError(f"class-index labels must be in [-1, {num_classes}), found {found}")
    return F.one_hot(y.clamp(min=0), num_classes).to(torch.float32) * (y >= 0)[:, None]


def _labelled(rows: torch.Tensor) -> torch.Tensor:
    """(B,) bool: the rows that carry a label."""
    return rows.sum(dim=1) > 0


def _labelled_mean(per_sample: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Mean of per_sample over labelled rows; 0 (keeping the graph) when there are none."""
    mask = _labelled(rows).to(per_sample.dtype)
    return (per_sample * mask).sum() / mask.sum().clamp(min=1.0)


def _cross_entropy(logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Per-sample CE with probability targets, -sum_c r_ic log softmax(z_i)_c; 0 for unlabelled
    rows. For a one-hot row this is the usual CE."""
    return -(rows * F.log_softmax(logits, dim=1)).sum(dim=1)


def _teacher_target_rows(rows: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Target rows normalised to sum 1; an unlabelled row becomes the one-hot of the teacher's top
    class (there is no label, and the teacher's own target is what its logits encode)."""
    labelled = _labelled(rows)
    top = F.one_hot(teacher_logits.detach().argmax(dim=1), rows.shape[1]).to(rows.dtype)
    norm = rows / rows.sum(dim=1, keepdim=True).clamp(min=1e-12)
    return torch.where(labelled[:, None], norm, top)


def standardize_logits(z: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Logit standardisation (Sun et al., CVPR 2024): (z_i - mean(z_i)) / (std(z_i) + eps) per
    sample, std with Bessel's correction as in the authors' code; applied before the tau softmax."""
    return (z - z.mean(dim=1, keepdim=True)) / (z.std(dim=1, keepdim=True) + eps)


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
        self.tau = _temperature(tau)

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


def _pearson(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of the rows of a and b, shape (rows,): cosine of the centred rows."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


class DIST(nn.Module):
    """DIST (Huang et al., NeurIPS 2022): match relations, not exact probabilities.

    With P^S = softmax(z^S/tau), P^T = softmax(z^T/tau) (B x C):
      inter = mean_i w_i (1 - rho(P^S_i, P^T_i))        (per sample, across classes)
      intra = mean_c (1 - rho(P^S_:c, P^T_:c))           (per class, across the batch)
      L = tau^2 * (beta * inter + gamma * intra)
    rho is the Pearson correlation (eps 1e-8 in the denominator, as in the authors' code). Quality
    weights w_i scale the per-sample inter term only: intra compares whole batch columns. Labels
    are not used, so soft targets need nothing special.
    """

    def __init__(self, tau: float = 1.0, beta: float = 1.0, gamma: float = 1.0) -> None:
        super().__init__()
        self.tau, self.beta, self.gamma = _temperature(tau), float(beta), float(gamma)

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        weights: torch.Tensor | None = None,
    ) -> LossTerm:
        ps = F.softmax(student_logits / self.tau, dim=1)
        pt = F.softmax(teacher_logits.detach() / self.tau, dim=1)
        inter = _weighted_mean(1.0 - _pearson(ps, pt), weights)
        intra = (1.0 - _pearson(ps.T, pt.T)).mean()
        return LossTerm(self.tau**2 * (self.beta * inter + self.gamma * intra), None)


def _log_weight(mask: torch.Tensor) -> torch.Tensor:
    """log of class weights in [0, 1], with log 0 taken as -1e4 rather than -inf: exp() of it is
    exactly 0, while 0 * log 0 terms stay finite in a KL and its gradient."""
    return torch.log(mask.clamp(min=0.0)).clamp(min=-1e4)


def _masked_log_softmax(z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log(m_c e^z_c / sum_k m_k e^z_k): softmax(z) restricted to the classes weighted by
    mask in [0, 1], renormalised."""
    return F.log_softmax(z + _log_weight(mask), dim=1)


def _log_binary(z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log(sum_c m_c p_c, sum_c (1 - m_c) p_c) with p = softmax(z), shape (B, 2)."""
    masses = [torch.logsumexp(z + _log_weight(m), dim=1) for m in (mask, 1.0 - mask)]
    return torch.stack(masses, dim=1) - torch.logsumexp(z, dim=1, keepdim=True)


class DKD(nn.Module):
    """Decoupled KD (Zhao et al., CVPR 2022): L = tau^2 * (alpha * TCKD + beta * NCKD).

    For target class t and p = softmax(z/tau):
      TCKD = KL(b^T || b^S) with b = (p_t, 1 - p_t)            (binary: target vs the rest)
      NCKD = KL(q^T || q^S) with q_c = p_c / (1 - p_t), c != t  (among the non-target classes)
    Soft targets: the target mask is the target row r_i normalised to sum 1 (for an index label
    the one-hot, so the definitions above hold exactly): b = (sum_c r_c p_c, sum_c (1 - r_c) p_c)
    and q_c = (1 - r_c) p_c / sum_k (1 - r_k) p_k; a mixup row of classes a and b splits each
    class's mass between "target" and "non-target" by its share. Unlabelled samples take the
    teacher's top class as their target. Averaged over samples with quality weights w_i.
    The paper's linear warm-up of the DKD weight is not applied here.
    """

    def __init__(self, tau: float = 4.0, alpha: float = 1.0, beta: float = 8.0) -> None:
        super().__init__()
        self.tau, self.alpha, self.beta = _temperature(tau), float(alpha), float(beta)

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        targets: torch.Tensor,
        weights: torch.Tensor | None = None,
    ) -> LossTerm:
        """`targets`: the labels y in either form (index or soft rows)."""
        rows = target_rows(targets, student_logits.shape[1])
        r = _teacher_target_rows(rows, teacher_logits)
        zs, zt = student_logits / self.tau, teacher_logits.detach() / self.tau
        tckd = _kl_rows(_log_binary(zt, r), _log_binary(zs, r))
        nckd = _kl_rows(_masked_log_softmax(zt, 1 - r), _masked_log_softmax(zs, 1 - r))
        per_sample = self.tau**2 * (self.alpha * tckd + self.beta * nckd)
        return LossTerm(_weighted_mean(per_sample, weights), None)


def class_balanced_weights(class_counts: Sequence[int], beta: float) -> torch.Tensor:
    """Per-class weights v_c from labelled training counts n_c, shape (C,).

    Effective number of samples (Cui et al., CVPR 2019): E_c = (1 - beta^n_c) / (1 - beta), and
    v_c proportional to 1 / E_c, scaled so that sum_c n_c v_c = sum_c n_c (the average weight
    over the training windows is 1, so the KD term keeps logit_kd's scale). beta = 1 is the limit
    E_c = n_c (inverse frequency: v_c = N / (C n_c)); beta = 0 gives v_c = 1. A class with no
    window counts as one (its weight stays finite for an unlabelled window the teacher puts there).
    """
    if not 0.0 <= beta <= 1.0:
        raise ConfigError(f"bkd_beta must be in [0, 1], got {beta}")
    if len(class_counts) == 0 or any(int(c) < 0 for c in class_counts):
        raise ConfigError(f"class_counts must be non-negative per-class counts, got {class_counts}")
    n = torch.tensor([max(int(c), 1) for c in class_counts], dtype=torch.float64)
    effective = n if beta == 1.0 else (1.0 - beta**n) / (1.0 - beta)
    inverse = 1.0 / effective
    return (inverse * n.sum() / (n * inverse).sum()).to(torch.float32)


class ClassBalancedKD(nn.Module):
    """BKD: logit KD with per-class weights, mean_i w_i v(i) tau^2 KL(p^T_i || p^S_i).

    v(i) = sum_c r_ic v_c over the sample's target row (normalised to sum 1; the one-hot of an
    index label, the mix of a soft target, the teacher's top class for an unlabelled sample), with
    v_c from `class_balanced_weights`, so the rare classes' KD is not drowned by the common ones.
    """

    def __init__(self, class_weights: torch.Tensor, tau: float = 4.0) -> None:
        super().__init__()
        self.kd = LogitKD(tau)
        self.register_buffer("class_weights", class_weights.detach().to(torch.float32))

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        targets: torch.Tensor,
        weights: torch.Tensor | None = None,
    ) -> LossTerm:
        classes = student_logits.shape[1]
        if classes != self.class_weights.shape[0]:
            raise InputError(
                f"bkd has class weights for {self.class_weights.shape[0]} classes, "
                f"the logits have {classes}"
            )
        rows = _teacher_target_rows(target_rows(targets, classes), teacher_logits)
        per_class = rows @ self.class_weights.to(rows.dtype)
        combined = per_class if weights is None else weights.detach() * per_class
        return self.kd(student_logits, teacher_logits, combined)


class SoftTeacherHead(nn.Module):
    """Classifier-level soft constraint: mean over labelled i of w_i * CE(W_T p(s_i) + b_T, r_i).

    CE with probability targets r_i (one-hot for an index label, the soft row for mixup). The
    teacher's classifier is applied with detached weights: the gradient reaches the projected
    student embedding p(s_i) but never W_T or b_T. Unlabelled samples are skipped.
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
        rows = target_rows(y, logits.shape[1])
        ce = _cross_entropy(logits, rows)
        if weights is not None:
            ce = ce * weights.detach()
        return LossTerm(_labelled_mean(ce, rows), None)


@torch.no_grad()
def quality_weights(
    kind: str,
    teacher_logits: torch.Tensor | None,
    teacher_emb: torch.Tensor | None,
    y: torch.Tensor,
    temperature: float = 0.5,
) -> torch.Tensor:
    """Per-sample weights w_i = B * softmax(q / T_q)_i (they average 1), without gradient.

    q_i: `teacher_confidence` = sum_c softmax(z^T_i)_c r_ic, the teacher's probability of the
    label (of the soft target's mix); its top-class probability for an unlabelled sample, as there
    is no label; `teacher_norm` = ||t_i||_2; `none`: w_i = 1.
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
        rows = target_rows(y, probs.shape[1])
        q = torch.where(_labelled(rows), (probs * rows).sum(dim=1), probs.max(dim=1).values)
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

    L_task = CE(z^S_i, r_i) (probability targets) averaged over labelled samples only; quality
    weights never touch it. Unlabelled samples contribute no task loss and no `soft_teacher_head`
    loss (both need a label), but do contribute to the logit terms (`logit_kd`, `margin_kd`,
    `dist`, `dkd`, `bkd`; the last two use the teacher's top class as their target) and the feature
    terms, which only compare the student with the teacher.

    `logit_standardize`: the logit terms see z-scored student and teacher logits
    (`standardize_logits`); the task CE keeps the raw student logits.
    `class_counts`: labelled training windows per class, required by `bkd` (its class weights).

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
        self,
        cfg: DistillConfig,
        student_dim: int,
        teacher_dim: int | None = None,
        class_counts: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        needs_projector = cfg.feature_loss != "none" or cfg.classifier_loss == "soft_teacher_head"
        if needs_projector and teacher_dim is None:
            raise ConfigError(
                f"feature_loss={cfg.feature_loss!r} / classifier_loss={cfg.classifier_loss!r} "
                "project the student into the teacher's space: teacher_dim is required"
            )
        if cfg.classifier_loss == "bkd" and class_counts is None:
            raise ConfigError(
                "classifier_loss='bkd' weighs classes by their training counts: "
                "class_counts (labelled training windows per class) is required"
            )
        self.projector = (
            Projector(student_dim, teacher_dim, cfg.projector) if needs_projector else None
        )
        self.feature_term: nn.Module | None = {
            "none": None,
            "hard_l2": HardL2(),
            "soft_margin": SoftMargin(cfg.margin, cfg.distance),
        }[cfg.feature_loss]
        self.classifier_term: nn.Module | None = _classifier_term(cfg, class_counts)

    def forward(
        self,
        student_logits: torch.Tensor,
        student_emb: torch.Tensor,
        teacher_logits: torch.Tensor | None,
        teacher_emb: torch.Tensor | None,
        teacher_classifier: nn.Linear | None,
        y: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """`y`: int64 (B,) labels with -1 = unlabelled, or float (B, C) soft targets."""
        cfg = self.cfg
        rows = target_rows(y, student_logits.shape[1])
        task = _labelled_mean(_cross_entropy(student_logits, rows), rows)
        zero = task.new_zeros(())
        out = {
            "task": task,
            "feature": zero,
            "classifier": zero,
            "active_feature": zero,
            "active_classifier": zero,
        }
        if isinstance(self.classifier_term, FixMatch):
            _require(teacher_logits, "the clean-view logits", "classifier_loss='fixmatch'")
            term = self.classifier_term(student_logits, teacher_logits, rows)
            out["classifier"], out["active_classifier"] = term.value, _active(term, zero)
        elif cfg.uses_teacher:
            weights = None
            if cfg.quality != "none":
                weights = quality_weights(
                    cfg.quality, teacher_logits, teacher_emb, rows, cfg.quality_temperature
                )
            projected = None if self.projector is None else self.projector(student_emb)
            if self.feature_term is not None:
                _require(teacher_emb, "teacher_emb", f"feature_loss={cfg.feature_loss!r}")
                term = self.feature_term(projected, teacher_emb, weights)
                out["feature"], out["active_feature"] = term.value, _active(term, zero)
            if isinstance(self.classifier_term, SoftTeacherHead):
                _require(teacher_classifier, "teacher_classifier", "soft_teacher_head")
                term = self.classifier_term(projected, teacher_classifier, rows, weights)
                out["classifier"], out["active_classifier"] = term.value, _active(term, zero)
            elif self.classifier_term is not None:
                _require(
                    teacher_logits, "teacher_logits", f"classifier_loss={cfg.classifier_loss!r}"
                )
                zs, zt = student_logits, teacher_logits
                if cfg.logit_standardize:
                    zs, zt = standardize_logits(zs), standardize_logits(zt)
                if isinstance(self.classifier_term, DKD | ClassBalancedKD):
                    term = self.classifier_term(zs, zt, rows, weights)
                else:
                    term = self.classifier_term(zs, zt, weights)
                out["classifier"], out["active_classifier"] = term.value, _active(term, zero)
        out["total"] = (
            cfg.lambda_task * out["task"]
            + cfg.lambda_feature * out["feature"]
            + cfg.lambda_classifier * out["classifier"]
        )
        return out


class FixMatch(nn.Module):
    """FixMatch's unlabelled term (Sohn et al. 2020), with the clean window as the weak view:

        L = (1 / |U|) sum_{i in U} 1[max_c q_ic >= threshold] * CE(z^S_i, argmax_c q_i),
        q_i = softmax(z^W_i)

    U: the unlabelled samples of the batch; z^S the student's logits on the augmented (strong)
    view; z^W its logits on the clean (weak) view, computed without gradient. Labelled samples
    take no part (the task loss has them). active = share of U above the threshold.
    """

    def __init__(self, threshold: float = 0.95) -> None:
        super().__init__()
        self.threshold = threshold

    def forward(
        self, student_logits: torch.Tensor, weak_logits: torch.Tensor, rows: torch.Tensor
    ) -> LossTerm:
        unl = ~_labelled(rows)
        probs = F.softmax(weak_logits.detach().float(), dim=1)
        conf, pseudo = probs.max(dim=1)
        keep = (conf >= self.threshold) & unl
        ce = F.cross_entropy(student_logits, pseudo, reduction="none")
        n = unl.sum().clamp(min=1)
        value = (ce * keep).sum() / n
        return LossTerm(value, keep.sum() / n)


def _classifier_term(cfg: DistillConfig, class_counts: Sequence[int] | None) -> nn.Module | None:
    name = cfg.classifier_loss
    if name == "none":
        return None
    if name == "soft_teacher_head":
        return SoftTeacherHead()
    if name == "margin_kd":
        return MarginKD(cfg.tau, cfg.classifier_margin)
    if name == "dist":
        return DIST(cfg.tau, cfg.dist_beta, cfg.dist_gamma)
    if name == "dkd":
        return DKD(cfg.tau, cfg.dkd_alpha, cfg.dkd_beta)
    if name == "bkd":
        assert class_counts is not None  # checked by DistillCriterion
        return ClassBalancedKD(class_balanced_weights(class_counts, cfg.bkd_beta), cfg.tau)
    if name == "logit_kd":
        return LogitKD(cfg.tau)
    if name == "fixmatch":
        return FixMatch(cfg.fixmatch_threshold)
    raise ConfigError(f"classifier_loss={name!r} has no loss module")


def _active(term: LossTerm, zero: torch.Tensor) -> torch.Tensor:
    return term.active if term.active is not None else zero + 1.0


def _require(value: object, name: str, why: str) -> None:
    if value is None:
        raise ConfigError(f"{why} needs {name}, but None was passed (is the teacher loaded?)")
