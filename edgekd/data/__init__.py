"""Paired datasets: built-in HAR (UCI HAPT) and user JSONL manifests, split and windowed.

`load_dataset(source, *, val_subjects=None, limit=None, seed=0) -> PairedDataset`.
"""

from edgekd.data.dataset import PairedDataset, Split, load_dataset

__all__ = ["PairedDataset", "Split", "load_dataset"]
