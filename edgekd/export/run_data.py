"""A student run folder and the windows export needs from its dataset: training windows
(calibration, QAT), validation windows (NNCF accuracy control), held-out test windows and the
torch FP32 reference logits on them.

The dataset is the one recorded in the run's sidecar, or the same dataset at a new place
(`data_override`, `edgekd export --data`), checked against the labels and modality layouts the
run was trained on.

Memory: training and validation windows stay in the dataset's storage (memory-mapped for a
manifest) as `Windows` of labelled rows; export picks positions first and reads only those
windows (`train_features`), QAT reads them batch by batch. Held in RAM: the held-out windows (at
most EVAL_CAP) and, for NNCF's accuracy control only, the validation features.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekd.errors import ConfigError
from edgekd.export.accuracy import score

if TYPE_CHECKING:
    from edgekd.checkpoint import Run
    from edgekd.data import PairedDataset
    from edgekd.data.pipeline import Windows
    from edgekd.modalities import ModalitySpec

EVAL_CAP = 1024  # held-out windows kept in eval.npz and used for the accuracy report
SPLITS = ("train", "val", "test")


@dataclass
class RunData:
    """The loaded run and the windows export needs: raw (as the runtime sees them) or features."""

    run: Run
    spec: ModalitySpec
    dataset: PairedDataset
    source: str  # where the windows came from: the sidecar's data source or --data
    train: Windows  # labelled training windows, read on demand (calibration, QAT)
    val: Windows  # labelled validation windows, read on demand (NNCF accuracy control)
    eval_x: np.ndarray  # raw held-out test windows, at most EVAL_CAP
    eval_y: np.ndarray
    torch_logits: np.ndarray  # torch FP32 on eval_x: the reference

    @property
    def labels(self) -> list[str]:
        return list(self.run.sidecar["labels"])

    @property
    def train_y(self) -> np.ndarray:
        """(N,) int64 labels of the labelled training windows."""
        return self.train.y.astype(np.int64)

    @property
    def val_y(self) -> np.ndarray:
        return self.val.y.astype(np.int64)

    def features(self, raw: np.ndarray) -> np.ndarray:
        from edgekd.modalities import preprocess

        return preprocess(self.spec, raw)

    def train_features(self, idx: np.ndarray) -> np.ndarray:
        """float32 features of the labelled training windows at positions `idx`, in that
        order; only those windows are read from storage."""
        return self._features(self.train, idx)

    def train_batches(self, batch: int = 1024) -> Iterator[np.ndarray]:
        """Features of every labelled training window, in order, `batch` at a time."""
        for start in range(0, len(self.train), batch):
            yield self.train_features(np.arange(start, min(start + batch, len(self.train))))

    def train_sha256(self) -> str:
        """`data_sha256` of the features of every labelled training window (read in batches)."""
        from edgekd.export.quantize import chunked_sha256
        from edgekd.modalities import feature_shape

        shape = (len(self.train), *feature_shape(self.spec))
        return chunked_sha256(shape, self.train_batches())

    def val_features(self) -> np.ndarray:
        """float32 features of every labelled validation window, in order."""
        return self._features(self.val, np.arange(len(self.val)))

    def _features(self, windows: Windows, idx: np.ndarray) -> np.ndarray:
        raw, _ = windows.fetch(np.asarray(idx, dtype=np.int64), [self.spec.name])
        return np.ascontiguousarray(self.features(raw[self.spec.name]), dtype=np.float32)

    def score(self, logits: np.ndarray) -> dict[str, Any]:
        return score(logits.argmax(1), self.eval_y, len(self.labels))


# The spec fields that fix a modality's raw window layout and features; mean/std are the run's
# own normalisation and always come from its sidecar.
_LAYOUT_FIELDS = ("kind", "rate_hz", "channels", "window", "hop", "n_mels", "n_fft", "hop_length",
                  "size")  # fmt: skip


def _dataset_differences(
    side: dict[str, Any], labels: list[str], specs: dict[str, ModalitySpec]
) -> list[str]:
    """How a dataset (labels, modality specs) differs from what the run was trained on; [] if
    it matches."""
    from edgekd.modalities import ModalitySpec

    diffs = []
    if labels != list(side["labels"]):
        diffs.append(f"labels {labels} (the run has {list(side['labels'])})")
    for name, stored in side["specs"].items():
        if name not in specs:
            diffs.append(f"no modality {name!r} (it has {', '.join(specs) or 'none'})")
            continue
        trained = ModalitySpec.from_dict(stored)
        diffs += [
            f"{name}.{key} {getattr(specs[name], key)!r} (the run has {getattr(trained, key)!r})"
            for key in _LAYOUT_FIELDS
            if getattr(specs[name], key) != getattr(trained, key)
        ]
    return diffs


def load_run_data(run_dir: Path, seed: int, data_override: str | None) -> RunData:
    """Load a student run, its dataset (as recorded in the sidecar and config, or at
    `data_override`), held-out windows and the torch FP32 reference on them."""
    import torch

    from edgekd.checkpoint import load_run
    from edgekd.data import load_dataset
    from edgekd.data.pipeline import Windows, labelled
    from edgekd.modalities import ModalitySpec, preprocess

    run = load_run(run_dir, expect_role="student")
    side = run.sidecar
    modality = side["student_modality"]
    spec = ModalitySpec.from_dict(side["specs"][modality])  # normalisation as trained
    recorded = side.get("data") or {}
    if data_override is None and "source" not in recorded:
        raise ConfigError(
            f"{run_dir}/checkpoint.json names no data source (data.source); pass --data PATH"
        )
    source = data_override if data_override is not None else str(recorded["source"])
    if data_override is None and source != "har" and not Path(source).exists():
        raise ConfigError(
            f"{run_dir} was trained on {source}, which does not exist any more; pass "
            "--data PATH with the same dataset at its new place"
        )
    # The run's own training windows (its --limit, its seed): calibration and QAT see what the
    # student was trained on.
    cfg = run.config
    ds = load_dataset(
        source, val_subjects=recorded.get("val_subjects"), limit=cfg.data.limit, seed=cfg.train.seed
    )
    diffs = _dataset_differences(side, list(ds.labels), dict(ds.specs))
    if diffs:
        given = "--data " if data_override is not None else ""
        raise ConfigError(
            f"{run_dir} was not trained on the data at {given}{source}: it has " + "; ".join(diffs)
        )
    train, val, test = (Windows.of((ds.splits[s], labelled(ds.splits[s]))) for s in SPLITS)
    if len(test) == 0:
        raise ConfigError(f"{source} has no labelled test windows to measure accuracy on")
    pick = np.arange(len(test))
    if len(test) > EVAL_CAP:
        pick = np.sort(np.random.default_rng(seed).choice(len(test), EVAL_CAP, replace=False))
    raw, test_y = test.fetch(pick, [modality])
    test_x = np.ascontiguousarray(raw[modality], dtype=np.float32)
    with torch.no_grad():
        logits = run.model(torch.from_numpy(preprocess(spec, test_x))).numpy()
    return RunData(
        run=run,
        spec=spec,
        dataset=ds,
        source=source,
        train=train,
        val=val,
        eval_x=test_x,
        eval_y=test_y.astype(np.int64),
        torch_logits=logits,
    )
