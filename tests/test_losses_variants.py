"""DIST, DKD, class-balanced KD, logit standardisation and soft (mixup) targets: golden values
worked out by hand on tiny tensors (the arithmetic is in the comments)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from edgekd.config import RECIPES, DistillConfig
from edgekd.distill.losses import (
    DIST,
    DKD,
    ClassBalancedKD,
    DistillCriterion,
    LogitKD,
    SoftTeacherHead,
    class_balanced_weights,
    quality_weights,
    standardize_logits,
    target_rows,
)
from edgekd.errors import ConfigError, InputError
from tests.test_losses import close, t

LN2 = math.log(2.0)


# Three classes, tau = 1: teacher probabilities (1/2, 1/4, 1/4) and student (1/4, 1/2, 1/4) are the
# softmax of these log-probabilities.
ZT3 = t([[LN2, 0, 0]])
ZS3 = t([[0, LN2, 0]])
# KL(p^T || p^S) = 1/2 ln 2 + 1/4 ln(1/2) + 1/4 ln 1 = 1/4 ln 2.
KL3 = 0.25 * LN2  # 0.173287


# --- DIST ---------------------------------------------------------------------------------


def test_dist_two_classes_by_hand() -> None:
    # With two classes a centred probability pair is (d, -d), so every Pearson correlation is
    # +1 (same order) or -1 (opposite order). Sample 1: student prefers class 0, teacher class 1
    # -> 1 - rho = 2; sample 2 the same reversed -> 2. inter = 2. Columns across the batch:
    # student's class-0 probability falls from sample 1 to 2, the teacher's rises -> 2 each.
    zs, zt = t([[1, 0], [0, 1]]), t([[0, 1], [1, 0]])
    # tau = 2, beta 1, gamma 0.5: 4 * (1 * 2 + 0.5 * 2) = 12 (less 1e-7 from the eps).
    close(DIST(tau=2.0, beta=1.0, gamma=0.5)(zs, zt).value, 12.0)
    # Student = teacher: both relations are perfectly correlated.
    close(DIST(tau=2.0)(zt, zt).value, 0.0)
    # Sample 1 agrees, sample 2 does not: inter = (0 + 2) / 2 = 1. Columns: the teacher's are
    # constant across the batch (both rows (1, 0)), so rho = 0 (eps keeps 0/0 at 0): intra = 1.
    zs2, zt2 = t([[1, 0], [0, 1]]), t([[1, 0], [1, 0]])
    close(DIST(tau=2.0, beta=1.0, gamma=0.0)(zs2, zt2).value, 4.0 * 1.0)
    close(DIST(tau=2.0, beta=0.0, gamma=1.0)(zs2, zt2).value, 4.0 * 1.0)
    # Quality weights scale the per-sample inter term only: weights (0, 2) -> inter = 2 * 2 / 2.
    weighted = DIST(tau=2.0, beta=1.0, gamma=0.0)(zs2, zt2, torch.tensor([0.0, 2.0]))
    close(weighted.value, 4.0 * 2.0)


def test_dist_three_classes_against_numpy() -> None:
    zs = t([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0], [2.0, 2.0, 1.0]])
    zt = t([[3.0, 1.0, 0.0], [0.5, 0.0, 2.5], [1.0, 2.5, 1.5]])
    tau = 3.0

    def softmax(z: np.ndarray) -> np.ndarray:
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.array([np.corrcoef(x, y)[0, 1] for x, y in zip(a, b, strict=True)])

    ps, pt = softmax(zs.numpy() / tau), softmax(zt.numpy() / tau)
    inter = np.mean(1 - pearson_rows(ps, pt))
    intra = np.mean(1 - pearson_rows(ps.T, pt.T))
    want = tau**2 * (1.0 * inter + 1.0 * intra)
    close(DIST(tau=tau)(zs, zt).value, float(want))


# --- DKD ----------------------------------------------------------------------------------


def test_dkd_by_hand() -> None:
    # Target class 0. TCKD: b^T = (1/2, 1/2), b^S = (1/4, 3/4):
    #   1/2 ln 2 + 1/2 ln(2/3) = 1/2 ln(4/3) = 0.143841.
    # NCKD over classes 1, 2: q^T = (1/2, 1/2), q^S = (2/3, 1/3):
    #   1/2 ln(3/4) + 1/2 ln(3/2) = 1/2 ln(9/8) = 0.058892.
    tckd, nckd = 0.5 * math.log(4 / 3), 0.5 * math.log(9 / 8)
    y = torch.tensor([0])
    close(DKD(tau=1.0, alpha=1.0, beta=0.0)(ZS3, ZT3, y).value, tckd)
    close(DKD(tau=1.0, alpha=0.0, beta=1.0)(ZS3, ZT3, y).value, nckd)
    # Paper defaults alpha 1, beta 8: 0.143841 + 8 * 0.058892 = 0.614977.
    close(DKD(tau=1.0)(ZS3, ZT3, y).value, tckd + 8 * nckd)
    # KD = TCKD + (1 - p^T_t) NCKD (the paper's decomposition): beta = 1/2 gives 1/4 ln 2.
    close(DKD(tau=1.0, alpha=1.0, beta=0.5)(ZS3, ZT3, y).value, KL3)
    # tau = 2 on doubled logits: the same probabilities, times tau^2 = 4.
    close(DKD(tau=2.0)(2 * ZS3, 2 * ZT3, y).value, 4 * (tckd + 8 * nckd))


def test_dkd_label_forms_and_unlabelled() -> None:
    dkd = DKD(tau=1.0)
    want = dkd(ZS3, ZT3, torch.tensor([0])).value
    # The one-hot soft row, an unlabelled index (the teacher's top class, 0) and a zero row.
    for y in (t([[1, 0, 0]]), torch.tensor([-1]), t([[0, 0, 0]])):
        torch.testing.assert_close(dkd(ZS3, ZT3, y).value, want)
    # A soft row sums to 1 after normalisation: (2, 0, 0) is the same target.
    torch.testing.assert_close(dkd(ZS3, ZT3, t([[2, 0, 0]])).value, want)


def test_dkd_soft_target_mask() -> None:
    # r = (1/2, 1/2, 0). Target mass: teacher 1/2 * 1/2 + 1/2 * 1/4 = 3/8, student 1/2 * 1/4 +
    # 1/2 * 1/2 = 3/8 -> TCKD = 0. Non-target q ~ (1 - r) p: teacher (1/4, 1/8, 1/4) / (5/8) =
    # (2/5, 1/5, 2/5), student (1/8, 1/4, 1/4) / (5/8) = (1/5, 2/5, 2/5).
    # NCKD = 2/5 ln 2 + 1/5 ln(1/2) = 1/5 ln 2 = 0.138629; L = 8 * 0.138629 = 1.109035.
    r = t([[0.5, 0.5, 0.0]])
    close(DKD(tau=1.0, alpha=1.0, beta=0.0)(ZS3, ZT3, r).value, 0.0)
    close(DKD(tau=1.0)(ZS3, ZT3, r).value, 8 * 0.2 * LN2)


# --- class-balanced KD --------------------------------------------------------------------


def test_class_balanced_weights_by_hand() -> None:
    # beta = 1: inverse frequency, v_c = N / (C n_c): counts (100, 10, 10), N = 120, C = 3
    # -> (120/300, 120/30, 120/30) = (0.4, 4, 4); sum n_c v_c = 40 + 40 + 40 = 120 = N.
    torch.testing.assert_close(
        class_balanced_weights([100, 10, 10], 1.0), torch.tensor([0.4, 4.0, 4.0])
    )
    # beta = 0.9, counts (1, 2): E = (1 - 0.9) / 0.1 = 1 and (1 - 0.81) / 0.1 = 1.9;
    # 1/E = (1, 0.526316); scale 3 / (1 + 2 * 0.526316) = 1.461538 -> (1.461538, 0.769231).
    torch.testing.assert_close(
        class_balanced_weights([1, 2], 0.9), torch.tensor([1.461538, 0.769231])
    )
    # beta = 0: uniform; an empty class counts as one window.
    torch.testing.assert_close(class_balanced_weights([7, 3], 0.0), torch.ones(2))
    torch.testing.assert_close(class_balanced_weights([0, 1], 1.0), torch.ones(2))
    with pytest.raises(ConfigError, match="bkd_beta"):
        class_balanced_weights([1, 2], 1.5)
    with pytest.raises(ConfigError, match="class_counts"):
        class_balanced_weights([1, -2], 0.5)


def test_class_balanced_kd_by_hand() -> None:
    # v = (0.4, 4, 4). Sample 1 is the KL3 pair, sample 2 has student = teacher (KL 0).
    zs, zt = torch.cat([ZS3, ZT3]), torch.cat([ZT3, ZT3])
    bkd = ClassBalancedKD(class_balanced_weights([100, 10, 10], 1.0), tau=1.0)
    # Sample 1 labelled class 1 -> weight 4: mean(4 * 0.173287, 0) = 0.346574.
    close(bkd(zs, zt, torch.tensor([1, 0])).value, 2 * KL3)
    # Soft row (1/2, 1/2, 0) -> v = 0.2 + 2 = 2.2: 2.2 * 0.173287 / 2 = 0.190616.
    close(bkd(zs, zt, t([[0.5, 0.5, 0], [1, 0, 0]])).value, 1.1 * KL3)
    # Unlabelled -> the teacher's top class 0, weight 0.4: 0.4 * 0.173287 / 2.
    close(bkd(zs, zt, torch.tensor([-1, 0])).value, 0.2 * KL3)
    # Quality weights multiply: (2, 1) -> 2 * 4 * 0.173287 / 2.
    close(bkd(zs, zt, torch.tensor([1, 0]), torch.tensor([2.0, 1.0])).value, 4 * KL3)
    # Uniform weights: plain logit KD.
    uniform = ClassBalancedKD(torch.ones(3), tau=1.0)(zs, zt, torch.tensor([1, 0])).value
    torch.testing.assert_close(uniform, LogitKD(1.0)(zs, zt).value)
    with pytest.raises(InputError, match="class weights for 2 classes, the logits have 3"):
        ClassBalancedKD(torch.ones(2), tau=1.0)(zs, zt, torch.tensor([1, 0]))


def test_bkd_needs_class_counts() -> None:
    with pytest.raises(ConfigError, match="class_counts"):
        DistillCriterion(RECIPES["bkd"], 4, 4)


# --- logit standardisation ----------------------------------------------------------------


def test_standardize_logits_by_hand() -> None:
    # (1, 2, 3): mean 2, sample std 1 -> (-1, 0, 1).
    # (0, 0, 6): mean 2, deviations (-2, -2, 4), sample variance 24 / 2 = 12, std 3.464102
    # -> (-0.577350, -0.577350, 1.154701).
    got = standardize_logits(t([[1, 2, 3], [0, 0, 6]]))
    torch.testing.assert_close(got, t([[-1, 0, 1], [-0.577350, -0.577350, 1.154701]]))


def test_kd_std_compares_shapes_not_scales() -> None:
    y = torch.tensor([0])
    emb = torch.zeros(1, 2)
    std = DistillCriterion(replace(RECIPES["kd_std"], tau=1.0), 2)
    plain = DistillCriterion(replace(RECIPES["kd"], tau=1.0), 2)
    # Teacher (2, 4, 6) and student (1, 2, 3) both standardise to (-1, 0, 1): no KD loss, while
    # plain KD sees different temperatures.
    zs, zt = t([[1, 2, 3]]), t([[2, 4, 6]])
    close(std(zs, emb, zt, None, None, y)["classifier"], 0.0)
    assert plain(zs, emb, zt, None, None, y)["classifier"].item() > 0.1
    # Golden: student (0, 0, 6) -> (-a, -a, 2a), a = 0.577350; teacher (1, 2, 3) -> (-1, 0, 1).
    a = 1 / math.sqrt(3)
    ps = np.exp([-a, -a, 2 * a]) / np.exp([-a, -a, 2 * a]).sum()
    pt = np.exp([-1, 0, 1]) / np.exp([-1, 0, 1]).sum()
    want = float(np.sum(pt * np.log(pt / ps)))
    out = std(t([[0, 0, 6]]), emb, zt / 2, None, None, y)
    close(out["classifier"], want)
    # The task CE keeps the raw logits: CE((0, 0, 6), 0) = ln(2 + e^6) - 0.
    close(out["task"], math.log(2 + math.exp(6)))


def test_logit_standardize_needs_a_logit_loss() -> None:
    with pytest.raises(ConfigError, match="logit_standardize needs a logit classifier_loss"):
        DistillConfig(classifier_loss="soft_teacher_head", logit_standardize=True)
    for name in ("logit_kd", "margin_kd", "dist", "dkd", "bkd"):
        assert DistillConfig(classifier_loss=name, logit_standardize=True).logit_standardize


# --- soft targets -------------------------------------------------------------------------


def test_target_rows_and_bad_labels() -> None:
    torch.testing.assert_close(target_rows(torch.tensor([2, -1]), 3), t([[0, 0, 1], [0, 0, 0]]))
    soft = t([[0.3, 0.7, 0.0]])
    assert target_rows(soft, 3) is soft
    with pytest.raises(InputError, match=r"shape \(batch, 3\), got \(1, 2\)"):
        target_rows(t([[0.5, 0.5]]), 3)
    with pytest.raises(InputError, match=">= 0"):
        target_rows(t([[1.5, -0.5, 0.0]]), 3)
    with pytest.raises(InputError, match=r"in \[-1, 3\), found \[3\]"):
        target_rows(torch.tensor([3]), 3)


def test_task_ce_with_soft_targets() -> None:
    crit = DistillCriterion(RECIPES["ce"], 2)
    # logits (ln 3, 0) -> p = (3/4, 1/4); row (1/2, 1/2): -1/2 ln(3/4) - 1/2 ln(1/4)
    # = 1/2 ln(16/3) = 0.836988. Row 2 is zeros (unlabelled): left out of the mean.
    logits = t([[math.log(3), 0], [5, -5]])
    out = crit(logits, torch.zeros(2, 2), None, None, None, t([[0.5, 0.5], [0, 0]]))
    close(out["task"], 0.5 * math.log(16 / 3))
    # A one-hot row is the index label.
    hard = crit(logits, torch.zeros(2, 2), None, None, None, torch.tensor([0, -1]))
    soft = crit(logits, torch.zeros(2, 2), None, None, None, t([[1, 0], [0, 0]]))
    torch.testing.assert_close(hard["task"], soft["task"])
    close(hard["task"], math.log(4 / 3))


def test_soft_teacher_head_with_soft_targets() -> None:
    head = torch.nn.Linear(2, 2)
    with torch.no_grad():
        head.weight.copy_(torch.eye(2))
        head.bias.zero_()
    # projected (ln 3, 0) -> teacher-head logits (ln 3, 0): row (1/2, 1/2) -> 0.836988;
    # row 2 (zeros) unlabelled -> skipped.
    projected = t([[math.log(3), 0], [0, 0]])
    term = SoftTeacherHead()(projected, head, t([[0.5, 0.5], [0, 0]]))
    close(term.value, 0.5 * math.log(16 / 3))


def test_teacher_confidence_with_soft_targets() -> None:
    # softmax(ln 3, 0) = (3/4, 1/4). Row (1/2, 1/2): q = 1/2; row (0, 1): q = 1/4; zero row:
    # top probability 3/4. Weights 3 * softmax(q / 0.5).
    zt = t([[math.log(3), 0]] * 3)
    q = np.array([0.5, 0.25, 0.75])
    want = 3 * np.exp(q / 0.5) / np.exp(q / 0.5).sum()
    got = quality_weights("teacher_confidence", zt, None, t([[0.5, 0.5], [0, 1], [0, 0]]))
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float32))
    index = quality_weights("teacher_confidence", zt, None, torch.tensor([0, 1, -1]))
    one_hot = quality_weights("teacher_confidence", zt, None, t([[1, 0], [0, 1], [0, 0]]))
    torch.testing.assert_close(index, one_hot)


@pytest.mark.parametrize("recipe", ["ce", "kd", "kd_std", "dist", "dkd", "bkd", "paper"])
def test_index_labels_and_one_hot_rows_agree(recipe: str) -> None:
    g = torch.Generator().manual_seed(1)
    zs, zt = torch.randn(5, 4, generator=g), 3 * torch.randn(5, 4, generator=g)
    emb_s, emb_t = torch.randn(5, 6, generator=g), torch.randn(5, 6, generator=g)
    head = torch.nn.Linear(6, 4)
    y = torch.tensor([0, 3, -1, 2, 1])
    rows = target_rows(y, 4)
    torch.manual_seed(0)
    crit = DistillCriterion(RECIPES[recipe], 6, 6, class_counts=(9, 3, 1, 4))
    a = crit(zs, emb_s, zt, emb_t, head, y)
    b = crit(zs, emb_s, zt, emb_t, head, rows)
    for key in a:
        torch.testing.assert_close(a[key], b[key])
