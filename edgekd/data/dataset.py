"""Paired datasets: `load_dataset` picks the loader of a source, built-in HAR or a manifest.

`load_dataset("har" | "path/to/manifest.jsonl")` returns a `PairedDataset` whose splits hold raw
windows (float32, the layout `edgekd.modalities.raw_shape` gives) and whose specs carry
normalisation statistics fitted on the train split only. Labels are class indices into
`PairedDataset.labels`; -1 marks unlabelled windows. Every window has an id, unique within the
dataset and the same on every load whichever split the window lands in. The dataset types and
the loaders' shared steps live in `edgekd.data.split` and are re-exported here.
"""

from __future__ import annotations

from pathlib import Path

from edgekd.data.har import load_har
from edgekd.data.manifest import load_manifest
from edgekd.data.split import (
    SPLITS,
    PairedDataset,
    Split,
    check_limit,
    finish_dataset,
    keep_labelled_share,
    limit_windows,
)
from edgekd.errors import ConfigError

__all__ = [
    "SPLITS",
    "PairedDataset",
    "Split",
    "check_limit",
    "finish_dataset",
    "keep_labelled_share",
    "limit_windows",
    "load_dataset",
]


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
    windows (stratified, deterministic for `seed`). Window ids are "rec{r}#{k}" (window k of HAR
    recording r) or "{sample id}#{k}" (window k of a manifest sample). Raises ConfigError for bad
    options and DataError for bad data.
    """
    check_limit(limit)
    if str(source) == "har":
        return load_har(val_subjects=val_subjects, limit=limit, seed=seed)
    path = Path(source)
    if path.is_dir():
        path = path / "manifest.jsonl"
    if not path.is_file():
        raise ConfigError(
            f"data source {str(source)!r} is neither 'har' nor an existing manifest file"
        )
    return load_manifest(path, val_subjects=val_subjects, limit=limit, seed=seed)
