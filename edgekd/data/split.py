"""Paired datasets and their splits of raw windows per modality, and the loaders' shared steps.

A `Split` holds raw windows (float32, the layout `edgekd.modalities.raw_shape` gives), labels
(class indices into `PairedDataset.labels`; -1 marks unlabelled windows), subjects and window
ids; a `PairedDataset` holds the splits and specs whose normalisation statistics are fitted on
the train split only. The loaders (`har`, `manifest`) build their splits and end with
`finish_dataset`; `edgekd.data.dataset.load_dataset` picks the loader.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from edgekd.errors import ConfigError, DataError
from edgekd.modalities import ModalitySpec, fit_normalisation, raw_shape

SPLITS = ("train", "val", "test", "unlabelled")


@dataclass(frozen=True)
class Split:
    """One split: raw windows `x[modality]` (N, *raw_shape) float32 (images scaled to [0, 1]),
    labels `y` (N,) int64 (-1 = unlabelled), `subject` (N,) str and window `ids` (N,) str.

    Loaders give stable ids (see `load_dataset`); `ids=None` gives positional ids "#0", "#1", ...
    (unique within this split only), so `ids` is always an array once constructed.
    """

    x: dict[str, np.ndarray]
    y: np.ndarray
    subject: np.ndarray
    ids: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.ids is None:
            object.__setattr__(self, "ids", np.array([f"#{i}" for i in range(len(self.y))], str))
        lengths = {name: len(arr) for name, arr in self.x.items()}
        n = len(self.y)
        if any(k != n for k in lengths.values()) or len(self.subject) != n or len(self.ids) != n:
            raise DataError(
                f"split arrays differ in length: x {lengths}, y {n}, "
                f"subject {len(self.subject)}, ids {len(self.ids)}"
            )

    def __len__(self) -> int:
        return len(self.y)

    def take(self, index: np.ndarray) -> Split:
        """The windows at `index` (integer indices or a boolean mask), as a new Split."""
        return Split(
            x={name: arr[index] for name, arr in self.x.items()},
            y=self.y[index],
            subject=self.subject[index],
            ids=self.ids[index],
        )

    @classmethod
    def empty(cls, specs: Mapping[str, ModalitySpec]) -> Split:
        """A split with zero windows but the right per-modality shapes."""
        return cls(
            x={
                name: np.zeros((0, *raw_shape(spec)), dtype=np.float32)
                for name, spec in specs.items()
            },
            y=np.zeros(0, dtype=np.int64),
            subject=np.zeros(0, dtype=str),
            ids=np.zeros(0, dtype=str),
        )

    @classmethod
    def concat(cls, parts: list[Split]) -> Split:
        """Concatenate splits with the same modalities (at least one part)."""
        return cls(
            x={name: np.concatenate([p.x[name] for p in parts]) for name in parts[0].x},
            y=np.concatenate([p.y for p in parts]),
            subject=np.concatenate([p.subject for p in parts]),
            ids=np.concatenate([p.ids for p in parts]),
        )


@dataclass(frozen=True)
class PairedDataset:
    """Paired windows of several modalities with labels and subject-disjoint splits.

    `specs` hold train-fitted normalisation; `default_student` names the modality a student
    uses unless configured otherwise; `val_subjects` are the subjects held out for validation
    (empty when validation was drawn without subjects).
    """

    name: str
    source: str
    labels: list[str]
    specs: dict[str, ModalitySpec]
    splits: dict[str, Split]
    default_student: str
    val_subjects: tuple[str, ...] = field(default=())

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def modalities(self) -> list[str]:
        return list(self.specs)


def check_limit(limit: int | None) -> None:
    """ConfigError unless `limit` is None or a positive integer."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
        raise ConfigError(f"--limit must be a positive number of training windows (data.limit), "
                          f"got {limit!r}")


def limit_windows(split: Split, limit: int | None, seed: int) -> Split:
    """At most `limit` windows, stratified by label and deterministic for `seed`.

    Each class keeps about its share of `limit`; within a class the kept windows are a seeded
    random subset. The kept windows stay in their original order.
    """
    check_limit(limit)
    if limit is None or limit >= len(split):
        return split
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(split))
    labels = split.y[order]
    # Rank of each window within its class in the random order, as a fraction of the class
    # size: taking the smallest fractions takes every class in proportion.
    sort = np.argsort(labels, kind="stable")
    classes, starts, counts = np.unique(labels[sort], return_index=True, return_counts=True)
    rank = np.empty(len(order), dtype=np.float64)
    rank[sort] = np.arange(len(order)) - np.repeat(starts, counts)
    size = counts[np.searchsorted(classes, labels)]
    fraction = (rank + 0.5) / size
    keep = order[np.argsort(fraction, kind="stable")[:limit]]
    return split.take(np.sort(keep))


def _id_rank(ids: np.ndarray, seed: int) -> np.ndarray:
    """A seeded pseudo-random uint64 per id that depends on nothing but (seed, id)."""
    return np.array(
        [
            int.from_bytes(hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest(), "big")
            for i in ids
        ],
        dtype=np.uint64,
    )


def keep_labelled_share(ds: PairedDataset, share: float, seed: int = 0) -> PairedDataset:
    """`ds` with only `share` of its labelled training windows left in `train`, per class
    `max(1, round(share * n_c))`; the other training windows move to `unlabelled` with label -1
    (raw windows and ids kept). `share` 1 returns `ds` itself.

    The kept windows depend only on (window ids, share, seed): the same for every recipe and
    training seed, and a smaller share keeps a subset of a larger one. `specs` stay those fitted
    on the full train split, so every share is preprocessed alike. ConfigError unless
    0 < share <= 1.
    """
    # NaN fails the range test too.
    number = isinstance(share, (int, float)) and not isinstance(share, bool)
    if not number or not 0 < share <= 1:
        raise ConfigError(f"--labelled-share must be in (0, 1], got {share!r}")
    if share == 1:
        return ds
    train = ds.splits["train"]
    rank = _id_rank(train.ids, seed)
    keep = np.zeros(len(train), dtype=bool)
    for cls in np.unique(train.y[train.y >= 0]):
        members = np.flatnonzero(train.y == cls)
        # Hash rank first, id second: equal hashes (astronomically rare) still order the same.
        order = members[np.lexsort((train.ids[members], rank[members]))]
        keep[order[: max(1, round(share * len(members)))]] = True
    moved = train.take(~keep)
    moved = replace(moved, y=np.full(len(moved), -1, dtype=np.int64))
    splits = {
        **ds.splits,
        "train": train.take(keep),
        "unlabelled": Split.concat([ds.splits["unlabelled"], moved]),
    }
    return replace(ds, splits=splits)


def finish_dataset(
    *,
    name: str,
    source: str,
    labels: list[str],
    specs: dict[str, ModalitySpec],
    splits: dict[str, Split],
    default_student: str,
    val_subjects: tuple[str, ...],
    limit: int | None,
    seed: int,
) -> PairedDataset:
    """Apply `limit` to train, refuse empty train/val/test, fit normalisation on train."""
    for split_name in ("train", "val", "test"):
        if len(splits[split_name]) == 0:
            raise DataError(f"{source}: the {split_name} split is empty")
    splits = {**splits, "train": limit_windows(splits["train"], limit, seed)}
    fitted = {m: fit_normalisation(spec, splits["train"].x[m]) for m, spec in specs.items()}
    if default_student not in fitted:
        raise DataError(
            f"{source}: student modality {default_student!r} is not one of {list(fitted)}"
        )
    return PairedDataset(
        name=name,
        source=source,
        labels=labels,
        specs=fitted,
        splits=splits,
        default_student=default_student,
        val_subjects=val_subjects,
    )
