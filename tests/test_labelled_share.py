"""`keep_labelled_share`: a class-stratified, id-hashed, nested share of the labelled training
windows stays in train, the rest become unlabelled paired windows; and the window ids it relies
on (positional defaults, alignment through take / concat / limit, the built-in HAR ids)."""

from __future__ import annotations

import numpy as np
import pytest

from edgekd.data import PairedDataset, load_dataset
from edgekd.data.dataset import Split, finish_dataset, keep_labelled_share, limit_windows
from edgekd.data.har import HOP, load_recordings
from edgekd.errors import ConfigError, DataError
from edgekd.modalities import ModalitySpec

SPEC = ModalitySpec("a", "timeseries", 50.0, 1, 2, 1)


def make_split(y: list[int], prefix: str) -> Split:
    """Window i holds the value i in both of its samples and has the id f"{prefix}{i}"."""
    n = len(y)
    return Split(
        x={"a": np.repeat(np.arange(n, dtype=np.float32), 2).reshape(n, 2, 1)},
        y=np.array(y, dtype=np.int64),
        subject=np.full(n, "u1"),
        ids=np.array([f"{prefix}{i}" for i in range(n)]),
    )


def make_dataset(train: Split) -> PairedDataset:
    return finish_dataset(
        name="toy",
        source="toy",
        labels=["x", "y", "z"],
        specs={"a": SPEC},
        splits={
            "train": train,
            "val": make_split([0, 1, 2], "v"),
            "test": make_split([2, 1, 0], "e"),
            "unlabelled": make_split([-1, -1], "u"),
        },
        default_student="a",
        val_subjects=(),
        limit=None,
        seed=0,
    )


@pytest.fixture
def ds() -> PairedDataset:
    """Train: 20 windows of class 0, 7 of class 1, 1 of class 2, shuffled (ids t0..t27)."""
    y = np.random.default_rng(0).permutation(np.repeat([0, 1, 2], [20, 7, 1]))
    return make_dataset(make_split(y.tolist(), "t"))


def kept(ds: PairedDataset) -> set[str]:
    return set(ds.splits["train"].ids.tolist())


@pytest.mark.parametrize(
    ("share", "counts"),
    # max(1, round(share * n)) for n = 20, 7, 1 (round half to even: 3.5 -> 4, 0.5 -> 0 -> 1)
    [(0.05, [1, 1, 1]), (0.1, [2, 1, 1]), (0.3, [6, 2, 1]), (0.5, [10, 4, 1]), (0.9, [18, 6, 1])],
)
def test_counts_per_class(ds: PairedDataset, share: float, counts: list[int]) -> None:
    out = keep_labelled_share(ds, share)
    assert np.bincount(out.splits["train"].y, minlength=3).tolist() == counts


def test_kept_set_is_deterministic_nested_and_depends_on_ids_only(ds: PairedDataset) -> None:
    shares = (0.05, 0.1, 0.3, 0.5, 0.9)
    sets = [kept(keep_labelled_share(ds, s)) for s in shares]
    assert sets == [kept(keep_labelled_share(ds, s)) for s in shares]
    for smaller, larger in zip(sets[:-1], sets[1:], strict=True):
        assert smaller < larger
    # The same windows in reverse order: the same windows are kept.
    train = ds.splits["train"]
    reversed_ds = make_dataset(train.take(np.arange(len(train))[::-1]))
    assert [kept(keep_labelled_share(reversed_ds, s)) for s in shares] == sets
    # Another seed, another subset (10 of the 20 class-0 windows).
    assert kept(keep_labelled_share(ds, 0.5, seed=1)) != sets[3]


def test_moved_windows_become_unlabelled_and_the_rest_is_untouched(ds: PairedDataset) -> None:
    out = keep_labelled_share(ds, 0.3)
    train, unlabelled = out.splits["train"], out.splits["unlabelled"]
    assert len(train) == 9 and len(unlabelled) == 2 + 19  # 28 + 2 windows, all still there
    assert unlabelled.ids[:2].tolist() == ["u0", "u1"]  # the existing unlabelled windows first
    moved = unlabelled.ids[2:].tolist()
    assert set(moved) | kept(out) == set(ds.splits["train"].ids.tolist())
    assert not set(moved) & kept(out)
    assert unlabelled.y.tolist() == [-1] * 21
    for split in (train, unlabelled):  # raw windows travel with their ids (window i holds i)
        values = [int(i[1:]) for i in split.ids]
        np.testing.assert_array_equal(split.x["a"][:, :, 0], np.repeat([values], 2, axis=0).T)
    before = ds.splits["train"]
    original = dict(zip(before.ids.tolist(), before.y.tolist(), strict=True))
    assert [original[i] for i in train.ids] == train.y.tolist()
    assert out.splits["val"] is ds.splits["val"] and out.splits["test"] is ds.splits["test"]
    assert out.specs == ds.specs and out.specs["a"].mean == ds.specs["a"].mean != ()
    assert len(ds.splits["train"]) == 28  # the input is not modified


def test_share_one_returns_the_dataset_itself(ds: PairedDataset) -> None:
    assert keep_labelled_share(ds, 1) is ds and keep_labelled_share(ds, 1.0) is ds


@pytest.mark.parametrize("share", [0, 0.0, -0.2, 1.5, float("nan"), True, "0.5"])
def test_bad_share_is_refused(ds: PairedDataset, share: object) -> None:
    with pytest.raises(ConfigError, match=r"--labelled-share must be in \(0, 1\], got "):
        keep_labelled_share(ds, share)  # type: ignore[arg-type]


def test_split_ids_default_to_positions_and_stay_aligned() -> None:
    plain = Split(x={"a": np.zeros((3, 2, 1))}, y=np.array([0, 1, 0]), subject=np.full(3, "u"))
    assert plain.ids.tolist() == ["#0", "#1", "#2"]
    with pytest.raises(DataError, match=r"differ in length: .* ids 2"):
        Split(x={}, y=np.array([0, 1, 0]), subject=np.full(3, "u"), ids=np.array(["a", "b"]))
    split = make_split([0, 1, 0, 1, 0, 1, 0, 1], "w")
    parts = [split.take(np.array([5, 1])), Split.empty({"a": SPEC}), split.take(split.y == 0)]
    for part in (*parts, Split.concat(parts), limit_windows(split, 4, seed=3)):
        assert part.ids.tolist() == [f"w{int(v)}" for v in part.x["a"][:, 0, 0]]
    assert Split.concat(parts).ids.tolist() == ["w5", "w1", "w0", "w2", "w4", "w6"]


# --- the built-in HAR data ----------------------------------------------------------------


@pytest.fixture(scope="module")
def har() -> PairedDataset:
    return load_dataset("har")


def test_har_ids_name_the_recording_and_window(har: PairedDataset) -> None:
    ids = np.concatenate([split.ids for split in har.splits.values()])
    assert len(set(ids.tolist())) == len(ids) == 5752 + 1616 + 2993 + 3661
    rec = load_recordings()
    for name, split in har.splits.items():
        for i in (0, len(split) // 2, len(split) - 1):
            recording, window = (int(v) for v in split.ids[i].removeprefix("rec").split("#"))
            start = rec.offsets[recording] + HOP * window
            np.testing.assert_array_equal(
                split.x["gyro"][i], rec.signals[start : start + 128, 3:], err_msg=name
            )
            assert str(rec.subjects[recording]) == split.subject[i]
    # Subjects 1-7 are val or test, so the first train recording is subject 8's first, rec14;
    # its first five windows span no single activity and are unlabelled.
    assert har.splits["train"].ids[:2].tolist() == ["rec14#5", "rec14#6"]
    assert har.splits["unlabelled"].ids[:5].tolist() == [f"rec14#{k}" for k in range(5)]
    np.testing.assert_array_equal(load_dataset("har").splits["train"].ids, har.splits["train"].ids)


def test_har_labelled_share(har: PairedDataset) -> None:
    n_c = np.bincount(har.splits["train"].y, minlength=12)
    small, large = keep_labelled_share(har, 0.05), keep_labelled_share(har, 0.10)
    for out, share in ((small, 0.05), (large, 0.10)):
        expected = [max(1, round(share * n)) if n else 0 for n in n_c]
        assert np.bincount(out.splits["train"].y, minlength=12).tolist() == expected
        moved = len(har.splits["train"]) - len(out.splits["train"])
        unlabelled = out.splits["unlabelled"]
        assert len(unlabelled) == 3661 + moved and (unlabelled.y == -1).all()
        all_train = set(har.splits["train"].ids.tolist())
        assert set(unlabelled.ids[3661:].tolist()) == all_train - kept(out)
        assert out.specs == har.specs
        assert out.splits["val"] is har.splits["val"] and out.splits["test"] is har.splits["test"]
    assert kept(small) < kept(large)
    assert kept(keep_labelled_share(har, 0.05)) == kept(small)
