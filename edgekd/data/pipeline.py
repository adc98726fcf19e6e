"""Training and evaluation input pipeline: raw windows from storage -> batches of model inputs.

Per batch: gather the raw windows (from RAM or a memmap) -> augment (raw stage, mixing) ->
features + normalisation with each consumer's spec -> feature-stage augmentation -> tensors.
Nothing is preprocessed up front and no split is copied to the device whole.

Sampling: epoch e's order is a permutation seeded by (seed, e); under DDP rank r takes every
world-th entry of its first `world * (n // world)` positions, so shards are disjoint, equal in
size (DDP needs the same number of steps on every rank) and together cover the epoch but for
fewer than `world` windows. Augmentation randomness is seeded by (seed, epoch, step, rank).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from edgekd.data.augment import Policy
from edgekd.data.split import Split
from edgekd.modalities import ModalitySpec, preprocess

EVAL_BATCH = 1024
CPU = torch.device("cpu")

Views = Mapping[str, Mapping[str, ModalitySpec]]  # consumer -> modality -> normalising spec


@dataclass(frozen=True)
class Windows:
    """Raw windows of several splits seen as one indexable set: `parts` are (split, rows)."""

    parts: tuple[tuple[Split, np.ndarray], ...]

    @classmethod
    def of(cls, *parts: tuple[Split, np.ndarray]) -> Windows:
        return cls(tuple((split, np.asarray(rows, dtype=np.int64)) for split, rows in parts))

    def __len__(self) -> int:
        return sum(len(rows) for _, rows in self.parts)

    @property
    def y(self) -> np.ndarray:
        return np.concatenate([split.y[rows] for split, rows in self.parts])

    def fetch(
        self, idx: np.ndarray, modalities: Sequence[str]
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Raw windows (float32 copies, in `idx` order) and labels of positions `idx`."""
        order = np.argsort(idx, kind="stable")  # sorted reads: sequential on a memmap
        sorted_idx = idx[order]
        bounds = np.cumsum([0] + [len(rows) for _, rows in self.parts])
        xs: dict[str, list[np.ndarray]] = {m: [] for m in modalities}
        ys: list[np.ndarray] = []
        for (split, rows), lo, hi in zip(self.parts, bounds[:-1], bounds[1:], strict=True):
            pick = rows[sorted_idx[(sorted_idx >= lo) & (sorted_idx < hi)] - lo]
            for m in modalities:
                xs[m].append(np.asarray(split.x[m][pick], dtype=np.float32))
            ys.append(split.y[pick])
        back = np.argsort(order, kind="stable")
        x = {m: np.concatenate(v)[back] for m, v in xs.items()}
        return x, np.concatenate(ys)[back]

    def ids(self, idx: np.ndarray) -> np.ndarray:
        """Window ids ("sample id#window index") of positions `idx`, in order."""
        return np.concatenate([split.ids[rows] for split, rows in self.parts])[idx]


def labelled(split: Split) -> np.ndarray:
    return np.flatnonzero(split.y >= 0)


def shard_batches(
    n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1
) -> list[np.ndarray]:
    """This rank's batches of window positions for `epoch` (see the module docstring)."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=gen).numpy()
    per_rank = n // world
    perm = perm[: per_rank * world][rank::world]
    batches = [perm[i : i + batch_size] for i in range(0, len(perm), batch_size)]
    if batches and len(batches[-1]) < 2:  # BatchNorm cannot train on one sample
        batches.pop()
    return batches


def batch_rng(seed: int, epoch: int, step: int, rank: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, step, rank])


def to_inputs(
    raw: Mapping[str, np.ndarray],
    views: Views,
    device: torch.device,
    policy: Policy | None = None,
    rng: np.random.Generator | None = None,
    aug_specs: Mapping[str, ModalitySpec] | None = None,
) -> dict[str, dict[str, torch.Tensor]]:
    """Model inputs per consumer (view) from raw windows: features computed once per modality,
    normalised with each view's spec; feature-stage augmentation draws once per modality and is
    applied identically in every view."""
    needed = {m for view in views.values() for m in view}
    out: dict[str, dict[str, torch.Tensor]] = {name: {} for name in views}
    feats: dict[str, np.ndarray] = {}
    for m in needed:
        spec = next(view[m] for view in views.values() if m in view)
        feats[m] = preprocess(dataclasses.replace(spec, mean=(), std=()), raw[m], validate=False)
    masks: dict[str, np.ndarray] = {}
    if policy is not None and policy.has_features and rng is not None and aug_specs is not None:
        # Feature ops see ones and turn masked positions to 0; the same mask then applies to
        # every view's normalised features.
        ones = {m: np.ones_like(f) for m, f in feats.items()}
        policy.features(ones, aug_specs, rng)
        masks = {m: v for m, v in ones.items() if not np.all(v == 1)}
    for name, view in views.items():
        for m, spec in view.items():
            x = feats[m].copy() if len(views) > 1 else feats[m]
            if spec.mean:
                mean, inv_std = spec.normaliser
                x -= mean
                x *= inv_std
            if m in masks:
                x *= masks[m]
            out[name][m] = torch.from_numpy(x).to(device)
    return out


@dataclass(frozen=True)
class Batch:
    """One training step's data: inputs per view, labels (int64 (B,) or soft (B, C))."""

    step: int
    idx: np.ndarray  # window positions in the Loader's Windows
    inputs: dict[str, dict[str, torch.Tensor]]
    y: torch.Tensor
    raw: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # `keep_raw` modalities


class Loader:
    """Deterministic, sharded, augmenting batch iterator over `windows` (see module docstring)."""

    def __init__(
        self,
        windows: Windows,
        views: Views,
        *,
        aug_specs: Mapping[str, ModalitySpec],
        policy: Policy,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
        device: torch.device = CPU,
        keep_raw: Sequence[str] = (),
        keep_clean: bool = False,
    ) -> None:
        self.windows, self.views, self.policy = windows, views, policy
        self.aug_specs = aug_specs
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        self.device = device
        # Raw windows after the raw-stage augmentation and mixing, for a teacher that does its
        # own preprocessing (an outside teacher sees the same augmented batch as the student).
        self.keep_raw = tuple(keep_raw)
        # The student's inputs from the unaugmented windows too (FixMatch's weak view).
        self.keep_clean = keep_clean
        self.modalities = sorted({m for view in views.values() for m in view} | set(keep_raw))

    def __len__(self) -> int:
        return len(self.windows)

    def steps(self, epoch: int) -> int:
        return len(
            shard_batches(
                len(self.windows), self.batch_size, self.seed, epoch, self.rank, self.world
            )
        )

    def epoch(self, epoch: int) -> Iterator[Batch]:
        batches = shard_batches(
            len(self.windows), self.batch_size, self.seed, epoch, self.rank, self.world
        )
        for step, idx in enumerate(batches):
            raw, y = self.windows.fetch(idx, self.modalities)
            rng = batch_rng(self.seed, epoch, step, self.rank)
            labels: np.ndarray = y
            clean = raw
            if self.policy.active:
                raw, labels = self.policy.raw(raw, y, self.aug_specs, rng)
            inputs = to_inputs(raw, self.views, self.device, self.policy, rng, self.aug_specs)
            if self.keep_clean:
                inputs["clean"] = to_inputs(clean, {"s": self.views["student"]}, self.device)["s"]
            target = torch.from_numpy(labels)
            target = target.long() if target.ndim == 1 else target
            kept = {m: raw[m] for m in self.keep_raw}
            yield Batch(step, idx, inputs, target.to(self.device), kept)


def eval_batches(
    windows: Windows,
    view: Mapping[str, ModalitySpec],
    device: torch.device,
    batch: int = EVAL_BATCH,
) -> Iterator[tuple[dict[str, torch.Tensor], np.ndarray]]:
    """Clean (unaugmented) inputs and int labels of every window, in order, `batch` at a time."""
    n = len(windows)
    for start in range(0, n, batch):
        raw, y = windows.fetch(np.arange(start, min(start + batch, n)), list(view))
        yield to_inputs(raw, {"x": view}, device)["x"], y
