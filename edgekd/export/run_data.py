"""A student run folder and the windows export needs from its dataset: training windows
(calibration, QAT), validation windows (NNCF accuracy control), held-out test windows and the
torch FP32 reference logits on them.

The dataset is the one recorded in the run's sidecar, or the same dataset at a new place
(`data_override`, `edgekd export --data`), checked against the labels and modality layouts the
run was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekd.errors import ConfigError
from edgekd.export.accuracy import score

if TYPE_CHECKING:
    from edgekd.checkpoint import Run
    from edgekd.data import PairedDataset
    from edgekd.modalities import ModalitySpec

EVAL_CAP = 1024  # held-out windows kept in eval.npz and used for the accuracy report


@dataclass
class RunData:
    """The loaded run and the windows export needs: raw (as the runtime sees them) or features."""

    run: Run
    spec: ModalitySpec
    dataset: PairedDataset
    source: str  # where the windows came from: the sidecar's data source or --data
    train_x: np.ndarray  # raw labelled training windows
    train_y: np.ndarray
    val_x: np.ndarray  # raw labelled validation windows (NNCF accuracy control)
    val_y: np.ndarray
    eval_x: np.ndarray  # raw held-out test windows, at most EVAL_CAP
    eval_y: np.ndarray
    torch_logits: np.ndarray  # torch FP32 on eval_x: the reference

    @property
    def labels(self) -> list[str]:
        return list(self.run.sidecar["labels"])

    def features(self, raw: np.ndarray) -> np.ndarray:
        from edgekd.modalities import preprocess

        return preprocess(self.spec, raw)

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
    train, val, test = (ds.splits[s] for s in ("train", "val", "test"))
    test_x, test_y = test.x[modality][test.y >= 0], test.y[test.y >= 0]
    if len(test_y) == 0:
        raise ConfigError(f"{source} has no labelled test windows to measure accuracy on")
    if len(test_y) > EVAL_CAP:
        pick = np.sort(np.random.default_rng(seed).choice(len(test_y), EVAL_CAP, replace=False))
        test_x, test_y = test_x[pick], test_y[pick]
    test_x = np.ascontiguousarray(test_x, dtype=np.float32)
    with torch.no_grad():
        logits = run.model(torch.from_numpy(preprocess(spec, test_x))).numpy()
    return RunData(
        run=run,
        spec=spec,
        dataset=ds,
        source=source,
        train_x=train.x[modality][train.y >= 0],
        train_y=train.y[train.y >= 0],
        val_x=val.x[modality][val.y >= 0],
        val_y=val.y[val.y >= 0],
        eval_x=test_x,
        eval_y=test_y.astype(np.int64),
        torch_logits=logits,
    )
