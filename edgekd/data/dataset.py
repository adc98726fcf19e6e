"""Paired datasets: splits of raw windows per modality, and the loaders' shared steps.

`load_dataset("har" | "path/to/manifest.jsonl")` returns a `PairedDataset` whose splits hold raw
windows (float32, the layout `edgekd.modalities.raw_shape` gives) and whose specs carry
normalisation statistics fitted on the train split only. Labels are class indices into
`PairedDataset.labels`; -1 marks unlabelled windows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekd.errors import ConfigError, DataError
from edgekd.modalities import ModalitySpec, fit_normalisation, raw_shape

SPLITS = ("train", "val", "test", "unlabelled")


@dataclass(frozen=True)
class Split:
    """One split: raw windows `x[modality]` (N, *raw_shape) float32 (images scaled to [0, 1]),
    labels `y` (N,) int64 (-1 = unlabelled) and `subject` (N,) str."""

    x: dict[str, np.ndarray]
    y: np.ndarray
    subject: np.ndarray

    def __post_init__(self) -> None:
        lengths = {name: len(arr) for name, arr in self.x.items()}
        if any(n != len(self.y) for n in lengths.values()) or len(self.subject) != len(self.y):
            raise DataError(
                f"split arrays differ in length: x {lengths}, y {len(self.y)}, "
                f"subject {len(self.subject)}"
            )

    def __len__(self) -> int:
        return len(self.y)

    def take(self, index: np.ndarray) -> Split:
        """The windows at `index` (integer indices or a boolean mask), as a new Split."""
        return Split(
            x={name: arr[index] for name, arr in self.x.items()},
            y=self.y[index],
            subject=self.subject[index],
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
        )

    @classmethod
    def concat(cls, parts: list[Split]) -> Split:
        """Concatenate splits with the same modalities (at least one part)."""
        return cls(
            x={name: np.concatenate([p.x[name] for p in parts]) for name in parts[0].x},
            y=np.concatenate([p.y for p in parts]),
            subject=np.concatenate([p.subject for p in parts]),
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


def load_dataset(
    source: str | Path,
    *,
    val_subjects: tuple[str, ...] | list[str] | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> PairedDataset:
    """Load `"har"` (built-in UCI HAPT) or a JSONL manifest (a file, or a folder holding
    `manifest.jsonl`).

    `val_subjects` overrides the validation subjects; `limit` keeps at most that many training
    windows (stratified, deterministic for `seed`). Raises ConfigError for bad options and
    DataError for bad data.
    """
    check_limit(limit)
    if str(source) == "har":
        from edgekd.data.har import load_har

        return load_har(val_subjects=val_subjects, limit=limit, seed=seed)
    path = Path(source)
    if path.is_dir():
        path = path / "manifest.jsonl"
    if not path.is_file():
        raise ConfigError(
            f"data source {str(source)!r} is neither 'har' nor an existing manifest file"
        )
    from edgekd.data.manifest import load_manifest

    return load_manifest(path, val_subjects=val_subjects, limit=limit, seed=seed)
