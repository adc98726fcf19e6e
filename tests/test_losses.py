"""Distillation losses (docs/distillation.md, "The method"): golden values worked out by hand
on tiny tensors."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from edgekd.config import RECIPES, DistillConfig
from edgekd.distill.losses import (
    DistillCriterion,
    HardL2,
    LogitKD,
    LossTerm,
    MarginKD,
    Projector,
    SoftMargin,
    SoftTeacherHead,
    quality_weights,
)
from edgekd.errors import ConfigError

LN3 = math.log(3.0)


def t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def close(value: torch.Tensor, want: float) -> None:
    assert value.item() == pytest.approx(want, abs=1e-5)


# Three pairs used by the feature losses:
#   a1 = (1, 0), b1 = (0, 1): orthogonal         cos = 0,      ||a - b||^2 = 2
#   a2 = (1, 1), b2 = (1, 1): identical          cos = 1,      ||a - b||^2 = 0
#   a3 = (1, 0), b3 = (1, 1): 45 degrees apart   cos = 1/sqrt2, ||a - b||^2 = 1
A = t([[1, 0], [1, 1], [1, 0]])
B = t([[0, 1], [1, 1], [1, 1]])


def test_hard_l2() -> None:
    a, b = t([[1, 2], [0, 0]]), t([[0, 0], [3, 4]])
    # ||a1 - b1||^2 = 1 + 4 = 5, ||a2 - b2||^2 = 9 + 16 = 25; mean = 15.
    term = HardL2()(a, b)
    close(term.value, 15.0)
    assert term.active is None
    # weights (0.5, 1.5): (0.5 * 5 + 1.5 * 25) / 2 = (2.5 + 37.5) / 2 = 20.
    close(HardL2()(a, b, t([[0.5, 1.5]])[0]).value, 20.0)


def test_soft_margin_cosine() -> None:
    # d = 1 - cos: (1, 0, 1 - 1/sqrt2 = 0.292893); m = 0.2: hinge (0.8, 0, 0.092893);
    # mean = 0.892893 / 3 = 0.297631; active: samples 1 and 3 -> 2/3.
    term = SoftMargin(0.2, "cosine")(A, B)
    close(term.value, 0.297631)
    close(term.active, 2 / 3)


def test_soft_margin_l2_on_normalised() -> None:
    # Unit vectors: d1 = |e1 - e2| = sqrt2 = 1.414214, d2 = 0,
    # d3 = |(1, 0) - (0.707107, 0.707107)| = sqrt(0.292893^2 + 0.5) = 0.765367.
    # m = 0.5: hinge (0.914214, 0, 0.265367); mean = 1.179581 / 3 = 0.393194; active 2/3.
    term = SoftMargin(0.5, "l2")(A, B)
    close(term.value, 0.393194)
    close(term.active, 2 / 3)
    # Normalised: scaling a vector does not move it.
    close(SoftMargin(0.5, "l2")(A * 7, B * 0.1).value, 0.393194)


def test_soft_margin_l2sq_on_raw_vectors() -> None:
    # d = ||a - b||^2 = (2, 0, 1); m = 0.5: hinge (1.5, 0, 0.5); mean = 2/3; active 2/3.
    term = SoftMargin(0.5, "l2sq")(A, B)
    close(term.value, 2 / 3)
    close(term.active, 2 / 3)
    # weights (3, 0, 0): 3 * 1.5 / 3 = 1.5.
    close(SoftMargin(0.5, "l2sq")(A, B, torch.tensor([3.0, 0.0, 0.0])).value, 1.5)


def test_soft_margin_l2sq_zero_margin_is_hard_l2() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    w = quality_weights("teacher_norm", None, b, torch.zeros(7, dtype=torch.long), 2.0)
    for weights in (None, w):
        soft = SoftMargin(0.0, "l2sq")(a, b, weights).value
        torch.testing.assert_close(soft, HardL2()(a, b, weights).value)


def test_hinge_active_fraction_tracks_the_margin() -> None:
    # cosine distances (1, 0, 0.292893): margin below all positive ones, between, above all.
    assert SoftMargin(0.1, "cosine")(A, B).active.item() == pytest.approx(2 / 3)
    assert SoftMargin(0.5, "cosine")(A, B).active.item() == pytest.approx(1 / 3)
    loose = SoftMargin(1.5, "cosine")(A, B)
    assert loose.active.item() == 0.0 and loose.value.item() == 0.0


# Logits for the classifier losses, tau = 2:
#   sample 1: z^T = (2 ln3, 0) -> softmax(z^T/2) = softmax(ln3, 0) = (3/4, 1/4);
#             z^S = (0, 0)     -> (1/2, 1/2).
#             KL = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.304099 - 0.173287 = 0.130812;
#             tau^2 KL = 0.523248.
#   sample 2: z^S = z^T -> KL = 0.
ZT = t([[2 * LN3, 0], [1, 2]])
ZS = t([[0, 0], [1, 2]])


def test_logit_kd() -> None:
    term = LogitKD(tau=2.0)(ZS, ZT)
    close(term.value, 0.523248 / 2)  # mean over the batch = 0.261624
    assert term.active is None
    # weights (1.5, 0.5): 1.5 * 0.523248 / 2 = 0.392436.
    close(LogitKD(tau=2.0)(ZS, ZT, torch.tensor([1.5, 0.5])).value, 0.392436)


def test_margin_kd() -> None:
    # tau^2 KL = (0.523248, 0); m_c = 0.3: hinge (0.223248, 0); mean 0.111624; active 1/2.
    term = MarginKD(tau=2.0, margin=0.3)(ZS, ZT)
    close(term.value, 0.111624)
    close(term.active, 0.5)
    # m_c = 0 is plain logit KD (KL >= 0).
    torch.testing.assert_close(MarginKD(2.0, 0.0)(ZS, ZT).value, LogitKD(2.0)(ZS, ZT).value)


def _teacher_head() -> torch.nn.Linear:
    head = torch.nn.Linear(2, 2)
    with torch.no_grad():
        head.weight.copy_(torch.eye(2))
        head.bias.copy_(torch.tensor([0.0, LN3]))
    return head


def test_soft_teacher_head() -> None:
    # W_T = I, b_T = (0, ln3): logits = p + b_T.
    #   p1 = (ln3, 0), y1 = 0 -> logits (ln3, ln3): CE = ln2 = 0.693147
    #   p2 = (0, 0),   y2 = 1 -> logits (0, ln3): P(1) = 3/4, CE = -ln(3/4) = 0.287682
    #   p3 = (5, 5),   y3 = -1 (unlabelled): skipped
    # mean over the 2 labelled = 0.980829 / 2 = 0.490415.
    p = t([[LN3, 0], [0, 0], [5, 5]])
    y = torch.tensor([0, 1, -1])
    close(SoftTeacherHead()(p, _teacher_head(), y).value, 0.490415)
    # weights (2, 0.5, 9): (2 * 0.693147 + 0.5 * 0.287682) / 2 = 0.765068.
    close(SoftTeacherHead()(p, _teacher_head(), y, torch.tensor([2.0, 0.5, 9.0])).value, 0.765068)


def test_soft_teacher_head_never_updates_the_teacher() -> None:
    head = _teacher_head()
    before = [p.detach().clone() for p in head.parameters()]
    projector = Projector(3, 2)
    opt = torch.optim.SGD([*projector.parameters(), *head.parameters()], lr=1.0)
    s = torch.randn(4, 3)
    y = torch.tensor([0, 1, 1, 0])
    proj_before = projector.map.weight.detach().clone()
    SoftTeacherHead()(projector(s), head, y).value.backward()
    assert head.weight.grad is None and head.bias.grad is None
    assert projector.map.weight.grad is not None and projector.map.weight.grad.abs().sum() > 0
    opt.step()
    for p, old in zip(head.parameters(), before, strict=True):
        assert torch.equal(p, old)
    assert not torch.equal(projector.map.weight, proj_before)


def test_quality_weights_teacher_confidence() -> None:
    # softmax rows: (3/4, 1/4), (1/2, 1/2), (1/4, 3/4); y = (0, 1, -1).
    # q = (3/4, 1/2, max = 3/4); q / 0.5 = (1.5, 1.0, 1.5);
    # softmax = (e^1.5, e^1, e^1.5) / (2 e^1.5 + e) = (0.383652, 0.232697, 0.383652);
    # w = 3 * that = (1.150955, 0.698090, 1.150955).
    zt = t([[LN3, 0], [0, 0], [0, LN3]])
    w = quality_weights("teacher_confidence", zt, None, torch.tensor([0, 1, -1]), 0.5)
    torch.testing.assert_close(w, torch.tensor([1.150955, 0.698090, 1.150955]), atol=1e-5, rtol=0)
    assert w.mean().item() == pytest.approx(1.0)


def test_quality_weights_teacher_norm_and_none() -> None:
    # ||t|| = (5, 1); T_q = 2: q / T = (2.5, 0.5); softmax = (1 / (1 + e^-2), 1 / (1 + e^2))
    # = (0.880797, 0.119203); w = 2 * that = (1.761594, 0.238406).
    emb = t([[3, 4], [0, 1]])
    w = quality_weights("teacher_norm", None, emb, torch.tensor([0, 0]), 2.0)
    torch.testing.assert_close(w, torch.tensor([1.761594, 0.238406]), atol=1e-5, rtol=0)
    assert torch.equal(quality_weights("none", None, None, torch.tensor([1, 0, -1])), torch.ones(3))


def test_quality_weights_average_one_and_carry_no_gradient() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(9, 4, generator=g, requires_grad=True)
    emb = torch.randn(9, 6, generator=g, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, -1, 0, 1, 2, 3])
    for kind in ("teacher_confidence", "teacher_norm", "none"):
        for temperature in (0.1, 0.5, 3.0):
            w = quality_weights(kind, logits, emb, y, temperature)
            assert w.shape == (9,) and (w > 0).all()
            assert w.mean().item() == pytest.approx(1.0, abs=1e-6)
            assert not w.requires_grad
    with pytest.raises(ConfigError, match="needs the teacher's logits"):
        quality_weights("teacher_confidence", None, emb, y)
    with pytest.raises(ConfigError, match="quality='best' is not one of"):
        quality_weights("best", logits, emb, y)


def test_projector() -> None:
    assert Projector(4, 6)(torch.ones(2, 4)).shape == (2, 6)
    x = torch.randn(2, 5)
    assert torch.equal(Projector(5, 5, "identity")(x), x)
    assert not list(Projector(5, 5, "identity").parameters())
    with pytest.raises(ConfigError, match="identity' needs equal embedding sizes.*4 .*6"):
        Projector(4, 6, "identity")
    with pytest.raises(ConfigError, match="projector='mlp' is not one of linear, identity"):
        Projector(4, 6, "mlp")


# --- the criterion ------------------------------------------------------------------------


def test_criterion_ce_only_needs_no_teacher() -> None:
    crit = DistillCriterion(RECIPES["ce"], student_dim=3)
    assert crit.projector is None and not list(crit.parameters())
    logits = t([[0, 0], [2, 0]])
    out = crit(logits, torch.randn(2, 3), None, None, None, torch.tensor([0, -1]))
    # Only sample 1 is labelled: CE((0, 0), 0) = ln 2.
    close(out["task"], math.log(2))
    close(out["total"], math.log(2))
    for key in ("feature", "classifier", "active_feature", "active_classifier"):
        assert out[key].item() == 0.0
    # An all-unlabelled batch: no task loss, and backward still works (zero gradient).
    logits.requires_grad_(True)
    out = crit(logits, torch.randn(2, 3), None, None, None, torch.tensor([-1, -1]))
    assert out["total"].item() == 0.0
    out["total"].backward()
    assert torch.equal(logits.grad, torch.zeros(2, 2))


def test_criterion_kd_golden_with_unlabelled_sample() -> None:
    cfg = DistillConfig(classifier_loss="logit_kd", tau=2.0, lambda_classifier=0.5)
    crit = DistillCriterion(cfg, student_dim=2, teacher_dim=4)
    assert crit.projector is None  # logit KD does not project
    # task: only sample 1 labelled: CE((0, 0), 0) = ln2 = 0.693147.
    # KD includes the unlabelled sample: mean(0.523248, 0) = 0.261624.
    # total = 0.693147 + 0.5 * 0.261624 = 0.823959.
    out = crit(ZS, torch.zeros(2, 2), ZT, None, None, torch.tensor([0, -1]))
    close(out["task"], math.log(2))
    close(out["classifier"], 0.261624)
    close(out["total"], 0.823959)
    close(out["active_classifier"], 1.0)  # non-hinge term: every sample contributes


def _batch(seed: int = 0, b: int = 6, ds: int = 5, dt: int = 7, k: int = 4) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "student_logits": torch.randn(b, k, generator=g, requires_grad=True),
        "student_emb": torch.randn(b, ds, generator=g, requires_grad=True),
        "teacher_logits": torch.randn(b, k, generator=g) * 3,
        "teacher_emb": torch.randn(b, dt, generator=g),
        "teacher_classifier": torch.nn.Linear(dt, k),
        "y": torch.tensor([0, 1, 2, 3, -1, 1])[:b],
    }


def test_criterion_total_is_the_weighted_sum_of_its_terms() -> None:
    cfg = DistillConfig(
        feature_loss="soft_margin",
        distance="cosine",
        margin=0.1,
        classifier_loss="soft_teacher_head",
        quality="teacher_confidence",
        lambda_task=2.0,
        lambda_feature=0.5,
        lambda_classifier=0.25,
    )
    crit = DistillCriterion(cfg, student_dim=5, teacher_dim=7)
    batch = _batch()
    out = crit(**batch)
    close(
        out["total"],
        2.0 * out["task"].item() + 0.5 * out["feature"].item() + 0.25 * out["classifier"].item(),
    )
    # Each term equals its module on the projected embedding with the quality weights ...
    w = quality_weights("teacher_confidence", batch["teacher_logits"], None, batch["y"], 0.5)
    p = crit.projector(batch["student_emb"])
    feat = SoftMargin(0.1, "cosine")(p, batch["teacher_emb"], w)
    torch.testing.assert_close(out["feature"], feat.value)
    torch.testing.assert_close(out["active_feature"], feat.active)
    head = SoftTeacherHead()(p, batch["teacher_classifier"], batch["y"], w)
    torch.testing.assert_close(out["classifier"], head.value)
    # ... and the task term is plain CE over the labelled samples: no weights.
    labelled = batch["y"] >= 0
    task = F.cross_entropy(batch["student_logits"][labelled], batch["y"][labelled])
    torch.testing.assert_close(out["task"], task)


def test_quality_weights_scale_distillation_terms_only() -> None:
    plain = DistillConfig(feature_loss="hard_l2", classifier_loss="logit_kd", quality="none")
    weighted = DistillConfig(
        feature_loss="hard_l2",
        classifier_loss="logit_kd",
        quality="teacher_norm",
        quality_temperature=1.0,
    )
    batch = _batch(seed=2)
    torch.manual_seed(0)
    a = DistillCriterion(plain, 5, 7)(**batch)
    torch.manual_seed(0)  # the same projector weights
    crit = DistillCriterion(weighted, 5, 7)
    b = crit(**batch)
    torch.testing.assert_close(a["task"], b["task"])
    assert not torch.allclose(a["feature"], b["feature"])
    assert not torch.allclose(a["classifier"], b["classifier"])
    w = quality_weights("teacher_norm", None, batch["teacher_emb"], batch["y"], 1.0)
    want = HardL2()(crit.projector(batch["student_emb"]), batch["teacher_emb"], w)
    torch.testing.assert_close(b["feature"], want.value)


def test_criterion_missing_teacher_tensor_is_an_error() -> None:
    batch = _batch()
    crit = DistillCriterion(RECIPES["paper"], 5, 7)
    with pytest.raises(ConfigError, match="soft_teacher_head needs teacher_classifier"):
        crit(**{**batch, "teacher_classifier": None})
    with pytest.raises(ConfigError, match="teacher_dim is required"):
        DistillCriterion(RECIPES["paper"], 5)


CONFIGS = [
    DistillConfig(feature_loss=f, distance=d, classifier_loss=c, quality=q, projector=proj)
    for (f, d), c, q, proj in itertools.product(
        [
            ("none", "cosine"),
            ("hard_l2", "cosine"),
            ("soft_margin", "cosine"),
            ("soft_margin", "l2"),
            ("soft_margin", "l2sq"),
        ],
        ["none", "logit_kd", "soft_teacher_head", "margin_kd", "dist", "dkd", "bkd"],
        ["none", "teacher_confidence", "teacher_norm"],
        ["linear", "identity"],
    )
]


@pytest.mark.parametrize(
    "cfg",
    CONFIGS,
    ids=lambda c: f"{c.feature_loss}-{c.distance}-{c.classifier_loss}-{c.quality}-{c.projector}",
)
def test_gradients_finite_and_teacher_untouched(cfg: DistillConfig) -> None:
    # Identity projector with the student embedding equal to the teacher's: every distance is 0,
    # the worst case for the gradient of a norm.
    batch = _batch(seed=3, ds=7)
    if cfg.projector == "identity":
        batch["student_emb"] = batch["teacher_emb"].clone().requires_grad_(True)
    batch["teacher_emb"].requires_grad_(True)
    batch["teacher_logits"].requires_grad_(True)
    crit = DistillCriterion(cfg, 7, 7, class_counts=(5, 1, 0, 2))
    out = crit(**batch)
    assert set(out) == {
        "total",
        "task",
        "feature",
        "classifier",
        "active_feature",
        "active_classifier",
    }
    out["total"].backward()
    for name in ("student_logits", "student_emb"):
        grad = batch[name].grad
        assert grad is None or torch.isfinite(grad).all(), name
    assert batch["student_logits"].grad is not None
    for p in crit.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert batch["teacher_emb"].grad is None and batch["teacher_logits"].grad is None
    assert all(p.grad is None for p in batch["teacher_classifier"].parameters())


def test_loss_term_is_a_named_tuple() -> None:
    value, active = SoftMargin(0.2)(A, B)
    assert isinstance(SoftMargin(0.2)(A, B), LossTerm) and active is not None and value.ndim == 0


def test_fixmatch_golden_value_counts_confident_unlabelled_windows_only() -> None:
    from edgekd.distill.losses import FixMatch

    # Weak-view logits: window 0 confident for class 1 (p = e^4 / (e^4 + 2) = 0.9647 >= 0.95),
    # window 1 unsure (uniform), window 2 confident for class 0 but labelled (y = 2).
    weak = t([[0, 4, 0], [0, 0, 0], [9, 0, 0]])
    strong = t([[0, 0, 0], [5, 0, 0], [0, 0, 0]])
    y = torch.tensor([-1, -1, 2])
    term = FixMatch(0.95)(strong, weak, F.one_hot(y.clamp(min=0), 3).float() * (y >= 0)[:, None])
    # U = {0, 1}; only window 0 passes: CE(uniform logits, class 1) = ln 3, over |U| = 2.
    close(term.value, LN3 / 2)
    close(term.active, 0.5)
    assert FixMatch(0.97)(strong, weak, F.one_hot(y.clamp(min=0), 3).float()
                          * (y >= 0)[:, None]).value.item() == 0.0  # fmt: skip


def test_fixmatch_in_the_criterion_needs_no_teacher_and_leaves_the_task_term() -> None:
    crit = DistillCriterion(RECIPES["fixmatch"], student_dim=2)
    assert crit.projector is None and not RECIPES["fixmatch"].uses_teacher
    assert RECIPES["fixmatch"].uses_unlabelled
    student = t([[0, 0, 0], [5, 0, 0]])
    weak = t([[0, 4, 0], [0, 0, 0]])
    out = crit(student, torch.zeros(2, 2), weak, None, None, torch.tensor([-1, 0]))
    # task: CE([5, 0, 0], 0) on the labelled window; fixmatch: ln 3 over the one unlabelled.
    close(out["task"], math.log(1 + 2 * math.exp(-5)))
    close(out["classifier"], LN3)
    close(out["total"], math.log(1 + 2 * math.exp(-5)) + LN3)
    with pytest.raises(ConfigError, match="takes no teacher terms"):
        DistillConfig(classifier_loss="fixmatch", feature_loss="hard_l2")
