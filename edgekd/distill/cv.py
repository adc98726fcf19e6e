"""Leave-subjects-out cross-validation folds over a dataset's training subjects (numpy only).

Fold i of k holds out every training window of the subjects `sorted(subjects)[i::k]` as its
validation split, and drops their unlabelled windows: no window of a held-out subject, labelled or
not, is trained on by any recipe (otherwise the recipes that use unlabelled windows would train on
the fold's validation subjects and CE would not). The test split is never touched, so selecting
on folds cannot see test subjects.
The teacher was fitted on all training subjects, so a fold's held-out subjects are new to the
student but not to the teacher; the normalisation statistics also stay those of the full training
split. Both are small, shared by every configuration, and do not reach the test split.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from edgekd.errors import ConfigError


def fold_subjects(subjects: np.ndarray, k: int) -> list[list[str]]:
    """The k subject groups: distinct subjects, sorted, dealt round-robin (deterministic)."""
    names = sorted({str(s) for s in subjects if str(s) != ""})
    if k < 2:
        raise ConfigError(f"--folds must be at least 2, got {k}")
    if len(names) < k:
        raise ConfigError(
            f"{k} folds need at least {k} training subjects, the data has {len(names)}; "
            "use fewer --folds, or omit --folds to select on the validation split"
        )
    return [names[i::k] for i in range(k)]


def fold_dataset(ds: Any, index: int, k: int) -> Any:
    """`ds` (a PairedDataset) with fold `index` of k as its val split, the rest as train, and the
    held-out subjects' unlabelled windows removed."""
    if not 0 <= index < k:
        raise ConfigError(f"fold index must be in [0, {k}), got {index}")
    train, unlabelled = ds.splits["train"], ds.splits["unlabelled"]
    held = fold_subjects(train.subject, k)[index]
    mask = np.isin(train.subject.astype(str), held)
    unl_mask = np.isin(unlabelled.subject.astype(str), held)
    splits = {
        **ds.splits,
        "train": train.take(~mask),
        "val": train.take(mask),
        "unlabelled": unlabelled.take(~unl_mask),
    }
    return replace(ds, splits=splits)
