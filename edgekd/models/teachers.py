"""Multimodal teachers: one encoder per modality, fused, MLP to `embed_dim`, linear classifier.

Input is a dict `{modality name: (B, *feature_shape(spec))}`. Modalities are fused in sorted name
order, so a rebuild from `arch_args` gives the same weight layout whatever order the specs come in.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.errors import ConfigError, InputError
from edgekd.models.encoders import HeadedModel, _positive, make_encoder
from edgekd.models.registry import register_teacher, teacher_constructor

FUSIONS = ("concat", "mean")


class FusionTeacher(HeadedModel):
    """Late fusion of per-modality encoders.

    embedding = ReLU(Linear(fuse(e_m * k_m for each modality m))), logits = classifier(embedding),
    where e_m is modality m's encoder output (B, width) and k_m in {0, 1} per sample says whether m
    is kept. `concat` concatenates (a dropped modality contributes zeros); `mean` averages over
    the kept modalities only.

    `modality_dropout` = p: in training mode each modality of each sample is dropped with
    probability p, and a sample that would lose all its modalities keeps one chosen uniformly, so
    the teacher learns to classify from any non-empty subset. Eval mode never drops at random.
    """

    def __init__(
        self,
        input_shapes: Mapping[str, Sequence[int]],
        kinds: Mapping[str, str],
        num_classes: int,
        width: int = 64,
        depth: int = 3,
        embed_dim: int = 128,
        fusion: str = "concat",
        modality_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        for name, value in (("width", width), ("depth", depth), ("embed_dim", embed_dim)):
            _positive(name, value, "fusion teacher")
        if fusion not in FUSIONS:
            raise ConfigError(
                f"fusion teacher: fusion={fusion!r} is not one of {', '.join(FUSIONS)}"
            )
        if (
            isinstance(modality_dropout, bool)
            or not isinstance(modality_dropout, int | float)
            or not (0.0 <= modality_dropout < 1.0)
        ):
            raise ConfigError(
                f"fusion teacher: modality_dropout must be in [0, 1), got {modality_dropout!r}"
            )
        bad = [m for m in input_shapes if not m or "." in m]
        if bad:
            raise ConfigError(
                f"fusion teacher: modality names must be non-empty and free of '.', got {bad}"
            )
        self.modalities: list[str] = sorted(input_shapes)
        self.encoders = nn.ModuleDict(
            {m: make_encoder(kinds[m], input_shapes[m], width, depth) for m in self.modalities}
        )
        self.fusion = fusion
        self.modality_dropout = float(modality_dropout)
        fused_dim = width * len(self.modalities) if fusion == "concat" else width
        self.head = nn.Sequential(nn.Linear(fused_dim, embed_dim), nn.ReLU())
        self.embed_dim = embed_dim
        self.classifier = nn.Linear(embed_dim, num_classes)

    def _keep_mask(self, batch: int, drop: Collection[str], device: torch.device) -> torch.Tensor:
        """(B, M) float mask of kept modalities: `drop` removed, then random dropout if training."""
        allowed = torch.tensor([m not in drop for m in self.modalities], device=device)
        keep = allowed.expand(batch, -1)
        if self.training and self.modality_dropout > 0:
            keep = keep & (torch.rand(keep.shape, device=device) >= self.modality_dropout)
            emptied = ~keep.any(dim=1)
            choice = torch.multinomial(allowed.float().expand(batch, -1), 1).squeeze(1)
            rescue = F.one_hot(choice, len(self.modalities)).bool() & emptied[:, None]
            keep = keep | rescue
        return keep.float()

    def forward_features(
        self, x: Mapping[str, torch.Tensor], drop: Collection[str] = ()
    ) -> torch.Tensor:
        """(B, embed_dim) embedding; modalities named in `drop` are zeroed and may be absent from x.

        `drop` is the restricted-teacher control: e.g. `drop={"gyro"}` gives a teacher that sees
        only the accelerometer, like the student.
        """
        drop = set(drop)
        unknown = drop - set(self.modalities)
        if unknown:
            raise ConfigError(
                f"cannot drop unknown modality {', '.join(sorted(unknown))}; "
                f"teacher modalities: {', '.join(self.modalities)}"
            )
        if drop >= set(self.modalities):
            raise ConfigError("cannot drop every modality of the teacher; keep at least one")
        missing = [m for m in self.modalities if m not in drop and m not in x]
        if missing:
            raise InputError(
                f"teacher input lacks modality {', '.join(missing)}; it needs "
                f"{', '.join(self.modalities)} (or name the absent ones in drop=)"
            )
        first = next(x[m] for m in self.modalities if m not in drop)
        keep = self._keep_mask(first.shape[0], drop, first.device)
        feats = []
        for i, m in enumerate(self.modalities):
            if m in drop:
                feats.append(first.new_zeros(first.shape[0], self.encoders[m].out_dim))
            else:
                feats.append(self.encoders[m](x[m]) * keep[:, i : i + 1])
        if self.fusion == "concat":
            fused = torch.cat(feats, dim=1)
        else:
            fused = torch.stack(feats, dim=1).sum(dim=1) / keep.sum(dim=1, keepdim=True)
        return self.head(fused)

    def forward(self, x: Mapping[str, torch.Tensor], drop: Collection[str] = ()) -> torch.Tensor:
        return self.classifier(self.forward_features(x, drop))


@register_teacher("fusion")
def fusion(
    input_shapes: Mapping[str, Sequence[int]],
    kinds: Mapping[str, str],
    num_classes: int,
    width: int = 64,
    depth: int = 3,
    embed_dim: int = 128,
    fusion: str = "concat",
    modality_dropout: float = 0.0,
) -> FusionTeacher:
    """Late-fusion teacher: conv1d encoders for timeseries/audio, conv2d for images."""
    return FusionTeacher(
        input_shapes,
        kinds,
        num_classes,
        width=width,
        depth=depth,
        embed_dim=embed_dim,
        fusion=fusion,
        modality_dropout=modality_dropout,
    )


class TeacherEnsemble(HeadedModel):
    """Mean-logit ensemble of K teachers, exposed as one teacher.

    embedding = concat_k(t_k); logits = mean_k(W_k t_k + b_k) = W concat_k(t_k) + mean_k(b_k) with
    W = [W_1/K, ..., W_K/K]. So the ensemble's classifier is one nn.Linear over the concatenated
    embedding, and every loss that uses the teacher's classifier works unchanged. The members'
    own classifiers are folded into it at construction and removed (they would be dead weights).
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ConfigError(f"an ensemble needs at least 2 teachers, got {len(members)}")
        self.members = nn.ModuleList(members)
        self.embed_dim = sum(m.embed_dim for m in members)
        k = len(members)
        self.classifier = nn.Linear(self.embed_dim, members[0].classifier.out_features)
        with torch.no_grad():
            self.classifier.weight.copy_(torch.cat([m.classifier.weight / k for m in members], 1))
            self.classifier.bias.copy_(torch.stack([m.classifier.bias for m in members]).mean(0))
        for m in self.members:
            m.classifier = None

    def forward_features(
        self, x: Mapping[str, torch.Tensor], drop: Collection[str] = ()
    ) -> torch.Tensor:
        return torch.cat([m.forward_features(x, drop=drop) for m in self.members], dim=1)

    def forward(self, x: Mapping[str, torch.Tensor], drop: Collection[str] = ()) -> torch.Tensor:
        return self.classifier(self.forward_features(x, drop=drop))


@register_teacher("ensemble")
def ensemble(
    input_shapes: Mapping[str, Sequence[int]],
    kinds: Mapping[str, str],
    num_classes: int,
    members: Sequence[Mapping[str, Any]] = (),
) -> TeacherEnsemble:
    """Ensemble of registered teachers; `members` = [{"arch": name, "arch_args": {...}}, ...]."""
    built = []
    for member in members:
        fixed = ("num_classes", "input_shapes")
        args = {k: v for k, v in member["arch_args"].items() if k not in fixed}
        fn = teacher_constructor(member["arch"])
        built.append(fn(input_shapes=input_shapes, kinds=kinds, num_classes=num_classes, **args))
    return TeacherEnsemble(built)
