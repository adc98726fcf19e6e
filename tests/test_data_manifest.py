"""User data through a JSONL manifest: windowing, pairing, validation split, and every error
naming the manifest file and line."""

from __future__ import annotations

import json
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from edgekd.data import load_dataset
from edgekd.data.readers import read_recording
from edgekd.errors import ConfigError, DataError
from edgekd.modalities import ModalitySpec
from tests.toy_manifest import make_toy_manifest, write_wav

TS_HEADER: dict[str, Any] = {
    "modalities": {
        "accel": {"kind": "timeseries", "rate_hz": 50, "channels": 2, "window": 4, "hop": 3},
        "cam": {"kind": "image", "size": [2, 2], "channels": 1},
    },
    "student": "accel",
}


def write_ts_manifest(root: Path, samples: list[dict[str, Any]]) -> Path:
    """Manifest of timeseries + 2x2 grey image samples; each dict has label, split, subject
    (optional) and `data` (T, 2); the image of sample i is filled with the value i."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "modalities.json").write_text(json.dumps(TS_HEADER))
    lines = []
    for i, sample in enumerate(samples):
        np.save(root / f"a{i}.npy", sample.pop("data"))
        Image.fromarray(np.full((2, 2), i, dtype=np.uint8)).save(root / f"c{i}.png")
        lines.append(
            json.dumps({"id": f"s{i}", "accel": f"a{i}.npy", "cam": f"c{i}.png", **sample})
        )
    manifest = root / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def ts_samples(n_subjects: int = 3, subjects: bool = True) -> list[dict[str, Any]]:
    """Two labels per subject, one test subject "t" holding both labels."""
    out: list[dict[str, Any]] = []
    for k in range(n_subjects):
        for label in ("up", "down"):
            out.append(
                {"label": label, "subject": f"p{k}", "data": np.full((10, 2), k, np.float32)}
            )
    for label in ("up", "down"):
        out.append({"label": label, "split": "test", "subject": "t", "data": np.ones((10, 2))})
    if not subjects:
        for s in out:
            del s["subject"]
    return out


def edit_line(manifest: Path, line: int, change: Callable[[dict[str, Any]], Any]) -> None:
    """Apply `change` to the JSON record on 1-based `line` of `manifest`."""
    lines = manifest.read_text().splitlines()
    record = json.loads(lines[line - 1])
    change(record)
    lines[line - 1] = json.dumps(record)
    manifest.write_text("\n".join(lines) + "\n")


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    return make_toy_manifest(tmp_path / "toy", n_per_class=6)


def test_toy_dataset_loads_paired_and_split(tmp_path: Path) -> None:
    manifest = make_toy_manifest(tmp_path / "toy")
    ds = load_dataset(manifest)
    assert ds.labels == ["c0", "c1", "c2"] and ds.default_student == "voice"
    assert ds.specs["voice"].window == 8000 and ds.specs["face"].size == (32, 32)
    subjects = {name: set(split.subject.tolist()) for name, split in ds.splits.items()}
    assert subjects["test"] == {"u5"}
    assert len(subjects["val"]) == 1 and subjects["val"] == set(ds.val_subjects)
    assert not subjects["val"] & subjects["train"]
    assert len(ds.splits["unlabelled"]) == 0
    train = ds.splits["train"]
    assert train.x["voice"].shape == (len(train), 8000) and train.x["face"].shape[1:] == (32, 32, 3)
    assert 0.0 <= train.x["face"].min() and train.x["face"].max() <= 1.0
    assert np.bincount(train.y).tolist() == [8, 8, 8]
    assert load_dataset(manifest).val_subjects == ds.val_subjects  # seeded
    assert load_dataset(manifest.parent).val_subjects == ds.val_subjects  # a folder works too
    limited = load_dataset(manifest, limit=6)
    assert np.bincount(limited.splits["train"].y).tolist() == [2, 2, 2]


def test_val_subjects_override(toy: Path) -> None:
    ds = load_dataset(toy, val_subjects=["u1"])
    assert set(ds.splits["val"].subject.tolist()) == {"u1"} and ds.val_subjects == ("u1",)
    with pytest.raises(ConfigError, match=r"val_subjects \['u9'\] must be"):
        load_dataset(toy, val_subjects=["u9"])


def test_timeseries_windows_and_image_pairing(tmp_path: Path) -> None:
    data = np.arange(20, dtype=np.float32).reshape(10, 2)
    samples = ts_samples()
    samples[0]["data"] = data
    ds = load_dataset(write_ts_manifest(tmp_path, samples), val_subjects=["p2"])
    train = ds.splits["train"]
    # T = 10, window 4, hop 3: windows start at 0, 3, 6 (1 + (10 - 4) // 3 = 3).
    assert len(train) == 4 * 3
    np.testing.assert_array_equal(train.x["accel"][:3], [data[0:4], data[3:7], data[6:10]])
    # The image of sample 0 (value 0) and of sample 1 (value 1 / 255) pair with each window.
    assert train.x["cam"].shape == (12, 2, 2, 1)
    np.testing.assert_allclose(train.x["cam"][:6, 0, 0, 0], [0, 0, 0, 1 / 255, 1 / 255, 1 / 255])
    assert ds.labels == ["down", "up"] and train.y[:6].tolist() == [1, 1, 1, 0, 0, 0]


def test_csv_with_header_reads_like_npy(tmp_path: Path) -> None:
    spec = ModalitySpec("accel", "timeseries", 50.0, 2, 4, 3)
    data = np.array([[0.5, -1.0], [2.0, 3.25], [4.0, 5.0]])
    np.save(tmp_path / "x.npy", data)
    (tmp_path / "x.csv").write_text("ax,ay\n0.5,-1\n2,3.25\n4,5\n")
    (tmp_path / "y.csv").write_text("0.5,-1\n2,3.25\n4,5\n")
    for name in ("x.npy", "x.csv", "y.csv"):
        np.testing.assert_array_equal(read_recording(tmp_path / name, spec), data)


def test_csv_with_byte_order_mark_keeps_its_first_sample(tmp_path: Path) -> None:
    spec = ModalitySpec("accel", "timeseries", 50.0, 2, 4, 3)
    data = np.array([[0.5, -1.0], [2.0, 3.25], [4.0, 5.0]])
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf0.5,-1\n2,3.25\n4,5\n")
    (tmp_path / "bomhead.csv").write_bytes(b"\xef\xbb\xbfax,ay\n0.5,-1\n2,3.25\n4,5\n")
    for name in ("bom.csv", "bomhead.csv"):
        np.testing.assert_array_equal(read_recording(tmp_path / name, spec), data)


def test_csv_not_in_utf8_is_named(tmp_path: Path) -> None:
    spec = ModalitySpec("accel", "timeseries", 50.0, 2, 4, 3)
    path = tmp_path / "latin1.csv"
    path.write_bytes("acc\xe9l\u00e9ration,y\n1,2\n".encode("latin-1"))
    with pytest.raises(DataError, match=rf"{path}: not UTF-8 text \(byte 0xe9 at offset 3\)"):
        read_recording(path, spec)


def test_wav_without_samples_or_bytes_says_so(tmp_path: Path) -> None:
    voice = ModalitySpec("voice", "audio", 16000.0, 1, 400, 200)
    header_only = tmp_path / "silent.wav"
    with wave.open(str(header_only), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16000)
    with pytest.raises(DataError, match=rf"{header_only}: the .wav file holds no samples"):
        read_recording(header_only, voice)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=rf"{empty}: .*\(the file is empty, 0 bytes\)$"):
        read_recording(empty, voice)
    short = tmp_path / "short.wav"
    short.write_bytes(header_only.read_bytes()[:20])
    with pytest.raises(DataError, match=r"\(the file ends inside the header, 20 bytes\)$"):
        read_recording(short, voice)


@pytest.mark.parametrize("pixels", [150, 300])  # over MAX_IMAGE_PIXELS: warning; over 2x: error
def test_decompression_bomb_is_a_data_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pixels: int
) -> None:
    from edgekd.data.readers import image_channels

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    path = tmp_path / "huge.png"
    Image.fromarray(np.zeros((1, pixels), dtype=np.uint8)).save(path)
    face = ModalitySpec("face", "image", 0.0, 1, 0, 0, size=(1, pixels))
    for read in (lambda: read_recording(path, face), lambda: image_channels(path)):
        with pytest.raises(DataError, match=rf"{path}: image too large to open safely"):
            read()


def test_manifest_and_header_with_byte_order_mark_load_alike(toy: Path) -> None:
    before = load_dataset(toy)
    for path in (toy, toy.parent / "modalities.yaml"):
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    after = load_dataset(toy)
    assert after.specs == before.specs
    for name, split in before.splits.items():
        np.testing.assert_array_equal(after.splits[name].y, split.y)


def test_wav_and_png_read_exactly(tmp_path: Path) -> None:
    voice = ModalitySpec("voice", "audio", 16000.0, 1, 400, 200)
    pcm = np.array([0, 16384, -32768, 32767], dtype="<i2")
    with wave.open(str(tmp_path / "a.wav"), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes(pcm.tobytes())
    np.testing.assert_array_equal(read_recording(tmp_path / "a.wav", voice), pcm / 32768.0)
    face = ModalitySpec("face", "image", 0.0, 3, 0, 0, size=(1, 2))
    pixels = np.array([[[0, 51, 255], [10, 20, 30]]], dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "f.png")
    np.testing.assert_allclose(read_recording(tmp_path / "f.png", face), pixels / 255.0, atol=1e-7)


def test_val_drawn_by_sample_without_subjects(tmp_path: Path) -> None:
    manifest = write_ts_manifest(tmp_path, ts_samples(n_subjects=4, subjects=False))
    ds = load_dataset(manifest, seed=3)
    assert ds.val_subjects == ()
    n_val, n_train = len(ds.splits["val"]), len(ds.splits["train"])
    assert n_val >= 3 and n_train > n_val  # at least one whole sample of 3 windows
    again = load_dataset(manifest, seed=3)
    np.testing.assert_array_equal(again.splits["val"].x["accel"], ds.splits["val"].x["accel"])


# --- errors: each names the manifest (or header) file and the line -------------------------


def test_missing_file(toy: Path) -> None:
    edit_line(toy, 2, lambda r: r.update(voice="voice/nope.wav"))
    with pytest.raises(DataError, match=rf"{toy}:2: .*nope.wav: file not found"):
        load_dataset(toy)


def test_corrupt_wav_and_png(toy: Path) -> None:
    record = json.loads(toy.read_text().splitlines()[2])
    (toy.parent / record["voice"]).write_bytes(b"RIFF\x00\x00garbage")
    with pytest.raises(DataError, match=rf"{toy}:3: .*not a readable PCM .wav"):
        load_dataset(toy)
    write_wav(toy.parent / record["voice"], np.zeros(8000))
    (toy.parent / record["face"]).write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    with pytest.raises(DataError, match=rf"{toy}:3: .*not a readable image"):
        load_dataset(toy)


def test_bad_json(toy: Path) -> None:
    lines = toy.read_text().splitlines()
    lines[3] = '{"id": "x", '
    toy.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"{toy}:4: invalid JSON: expecting property name"):
        load_dataset(toy)


def test_unknown_modality_kind(toy: Path) -> None:
    header = toy.parent / "modalities.yaml"
    header.write_text(header.read_text().replace("kind: audio", "kind: video"))
    with pytest.raises(
        DataError, match=rf"{header}: modality 'voice': unknown modality kind 'video'"
    ):
        load_dataset(toy)


def test_missing_modality_key(toy: Path) -> None:
    edit_line(toy, 5, lambda r: r.pop("face"))
    with pytest.raises(DataError, match=rf"{toy}:5: missing modality key 'face'"):
        load_dataset(toy)


def test_label_unseen_in_train(toy: Path) -> None:
    test_line = next(
        n for n, text in enumerate(toy.read_text().splitlines(), 1) if '"test"' in text
    )
    edit_line(toy, test_line, lambda r: r.update(label="c9"))
    with pytest.raises(
        DataError, match=rf"{toy}:{test_line}: label 'c9' of this test sample never"
    ):
        load_dataset(toy)


def test_nan_in_data(tmp_path: Path) -> None:
    samples = ts_samples()
    samples[2]["data"] = np.full((10, 2), np.nan)
    manifest = write_ts_manifest(tmp_path, samples)
    with pytest.raises(DataError, match=rf"{manifest}:3: .*a2.npy: contains NaN or inf"):
        load_dataset(manifest)


def test_empty_test_split(tmp_path: Path) -> None:
    samples = [s for s in ts_samples() if s.get("split") != "test"]
    manifest = write_ts_manifest(tmp_path, samples)
    with pytest.raises(DataError, match=rf"{manifest}: the test split is empty"):
        load_dataset(manifest)


def test_wav_with_wrong_rate(toy: Path) -> None:
    record = json.loads(toy.read_text().splitlines()[0])
    write_wav(toy.parent / record["voice"], np.zeros(4000), rate_hz=8000)
    with pytest.raises(
        DataError, match=rf"{toy}:1: .*sample rate is 8000 Hz but 'voice' expects 16000 Hz"
    ):
        load_dataset(toy)


def test_8bit_wav_is_refused(toy: Path) -> None:
    record = json.loads(toy.read_text().splitlines()[0])
    with wave.open(str(toy.parent / record["voice"]), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(1)
        wav.setframerate(16000)
        wav.writeframes(bytes(8000))
    with pytest.raises(
        DataError, match=rf"{toy}:1: .*expected 16-bit PCM mono, got 1 channel\(s\) of 8-bit"
    ):
        load_dataset(toy)


def test_image_with_wrong_size(toy: Path) -> None:
    record = json.loads(toy.read_text().splitlines()[1])
    Image.fromarray(np.zeros((16, 20, 3), dtype=np.uint8)).save(toy.parent / record["face"])
    with pytest.raises(
        DataError, match=rf"{toy}:2: .*image is 16x20 \(H x W\) but 'face' expects 32x32"
    ):
        load_dataset(toy)


def test_window_longer_than_recording(tmp_path: Path) -> None:
    samples = ts_samples()
    samples[1]["data"] = np.zeros((3, 2))
    manifest = write_ts_manifest(tmp_path, samples)
    recording = tmp_path / "a1.npy"
    expected = (
        f"{manifest}:2: window longer than recording: file {recording} has 3 samples, window is 4"
    )
    with pytest.raises(DataError) as info:
        load_dataset(manifest)
    assert str(info.value) == expected


def test_modalities_with_different_window_counts(tmp_path: Path) -> None:
    header = {
        "modalities": {"a": TS_HEADER["modalities"]["accel"], "b": TS_HEADER["modalities"]["accel"]}
    }
    (tmp_path / "modalities.json").write_text(json.dumps(header))
    np.save(tmp_path / "a.npy", np.zeros((10, 2)))
    np.save(tmp_path / "b.npy", np.zeros((13, 2)))
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text(json.dumps({"id": "x", "label": "l", "a": "a.npy", "b": "b.npy"}) + "\n")
    with pytest.raises(
        DataError,
        match=rf"{manifest}:1: the modalities give different numbers of windows "
        r"\{'a': 3, 'b': 4\}",
    ):
        load_dataset(manifest)


def test_unknown_key_duplicate_id_and_bad_split(toy: Path) -> None:
    edit_line(toy, 2, lambda r: r.update(mood="happy"))
    with pytest.raises(DataError, match=rf"{toy}:2: unknown key\(s\) \['mood'\]"):
        load_dataset(toy)
    edit_line(toy, 2, lambda r: (r.pop("mood"), r.update(id="c0_000")))
    with pytest.raises(DataError, match=rf"{toy}:2: id 'c0_000' already used on line 1"):
        load_dataset(toy)
    edit_line(toy, 2, lambda r: r.update(id="fresh", split="holdout"))
    with pytest.raises(
        DataError, match=rf"{toy}:2: split 'holdout' is not one of train, val, test"
    ):
        load_dataset(toy)


def test_missing_header_and_bad_source(toy: Path) -> None:
    (toy.parent / "modalities.yaml").unlink()
    with pytest.raises(DataError, match=rf"{toy}: no modality header beside it"):
        load_dataset(toy)
    with pytest.raises(ConfigError, match="neither 'har' nor an existing manifest"):
        load_dataset(toy.parent / "missing.jsonl")


# --- what a new user ran into -------------------------------------------------------------


def test_source_is_absolute_whatever_the_cwd(toy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(toy.parent.parent)
    ds = load_dataset(Path(toy.parent.name) / toy.name)  # "toy/manifest.jsonl"
    assert ds.source == str(toy.resolve()) and Path(ds.source).is_absolute()
    assert ds.name == "toy"
    monkeypatch.chdir(toy.parent)
    assert load_dataset("manifest.jsonl").source == ds.source


def write_grey_manifest(root: Path, header: str, grey: list[bool]) -> Path:
    """Toy-like audio + image manifest whose image of line i is grey (mode L) when grey[i]."""
    root.mkdir(parents=True)
    (root / "modalities.yaml").write_text(header)
    lines = []
    for i, is_grey in enumerate(grey):
        write_wav(root / f"v{i}.wav", np.zeros(800), rate_hz=8000)
        pixels = np.full((4, 4, 3), 10 * i, np.uint8)
        pixels[0, 0] = (200, 100, 0)
        Image.fromarray(pixels[..., 0] if is_grey else pixels).save(root / f"f{i}.png")
        split = "test" if i == len(grey) - 1 else "train"
        lines.append(json.dumps({"id": f"s{i}", "label": "ab"[i % 2], "split": split,
                                 "subject": f"u{i}", "voice": f"v{i}.wav", "face": f"f{i}.png"}))
    manifest = root / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


GREY_HEADER = """\
modalities:
  voice: {kind: audio, rate_hz: 8000, window: 400, n_fft: 200, hop_length: 80, n_mels: 8}
  face: {kind: image, size: [4, 4]}
"""


def test_image_channels_are_inferred_from_the_first_train_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = write_grey_manifest(tmp_path / "d", GREY_HEADER, [True] * 7)
    with caplog.at_level("WARNING", logger="edgekd.data.manifest"):
        ds = load_dataset(manifest)
    assert ds.specs["face"].channels == 1
    assert ds.splits["train"].x["face"].shape[1:] == (4, 4, 1)
    assert ds.splits["train"].x["face"][0, 0, 0, 0] == pytest.approx(200 / 255)
    logged = [r.getMessage() for r in caplog.records if "channels" in r.getMessage()]
    assert len(logged) == 1 and "inferred channels: 1" in logged[0] and "f0.png" in logged[0]
    # colour files give 3, recorded in the spec too
    colour = load_dataset(write_grey_manifest(tmp_path / "c", GREY_HEADER, [False] * 7))
    assert colour.specs["face"].channels == 3


def test_image_with_other_channel_count_is_an_error(tmp_path: Path) -> None:
    manifest = write_grey_manifest(tmp_path / "d", GREY_HEADER, [True, True, False, True, True])
    with pytest.raises(DataError, match=rf"{manifest}:3: .*f2.png: colour image \(mode RGB, 3 "
                                        r"channels\) but 'face' takes 1 channel"):
        load_dataset(manifest)
    # an explicit channel count is checked the same way: nothing is converted silently
    explicit = write_grey_manifest(
        tmp_path / "e", GREY_HEADER.replace("[4, 4]}", "[4, 4], channels: 3}"), [False, True])
    with pytest.raises(DataError, match=rf"{explicit}:2: .*f1.png: greyscale image \(mode L, 1 "
                                        r"channel\) but 'face' takes 3 channels"):
        load_dataset(explicit)


def test_empty_manifest_says_so(toy: Path) -> None:
    toy.write_text("")
    with pytest.raises(DataError, match=rf"{toy}: the manifest is empty \(no sample lines\)"):
        load_dataset(toy)
    toy.write_text("\n  \n")
    with pytest.raises(DataError, match=r"the manifest is empty"):
        load_dataset(toy)


def test_json_error_message_is_clean(toy: Path) -> None:
    lines = toy.read_text().splitlines()
    lines[1] = lines[1][:-30]  # cut inside a string value
    toy.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as info:
        load_dataset(toy)
    column = len(lines[1]) - lines[1][::-1].index('"')
    assert str(info.value) == (
        f"{toy}:2: invalid JSON: unterminated string starting at column {column}")
    lines[1] = '{"id": "x" "label": "c0"}'
    toy.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as info:
        load_dataset(toy)
    assert str(info.value) == f"{toy}:2: invalid JSON: expecting ',' delimiter at column 12"


# --- window ids and unlabelled paired samples ---------------------------------------------


def test_window_ids_are_stable_and_follow_the_window_across_splits(tmp_path: Path) -> None:
    manifest = write_ts_manifest(tmp_path, ts_samples())
    by_p2 = load_dataset(manifest, val_subjects=["p2"])
    # Lines 1-6: subjects p0, p0, p1, p1, p2, p2 (3 windows each); lines 7-8 are test.
    assert by_p2.splits["train"].ids.tolist() == [f"s{i}#{k}" for i in range(4) for k in range(3)]
    assert by_p2.splits["val"].ids.tolist() == ["s4#0", "s4#1", "s4#2", "s5#0", "s5#1", "s5#2"]
    assert by_p2.splits["test"].ids.tolist() == ["s6#0", "s6#1", "s6#2", "s7#0", "s7#1", "s7#2"]
    by_p1 = load_dataset(manifest, val_subjects=["p1"])
    assert by_p1.splits["val"].ids.tolist() == ["s2#0", "s2#1", "s2#2", "s3#0", "s3#1", "s3#2"]

    def windows(ds: Any) -> dict[str, tuple[int, bytes]]:
        return {
            i: (int(y), x.tobytes())
            for split in ds.splits.values()
            for i, y, x in zip(split.ids, split.y, split.x["accel"], strict=True)
        }

    assert windows(by_p1) == windows(by_p2)  # same id, same window, whichever split holds it


def test_unlabelled_samples_form_the_unlabelled_split(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    samples = ts_samples()
    data = np.arange(20, dtype=np.float32).reshape(10, 2)
    samples.append({"label": None, "subject": "p0", "data": data})  # line 9, id s8
    samples.append({"label": None, "subject": "p2", "data": np.zeros((10, 2))})  # line 10, s9
    manifest = write_ts_manifest(tmp_path, samples)
    with caplog.at_level("WARNING", logger="edgekd.data.manifest"):
        ds = load_dataset(manifest, val_subjects=["p2"])
    assert ds.labels == ["down", "up"]
    unlabelled = ds.splits["unlabelled"]
    assert unlabelled.ids.tolist() == ["s8#0", "s8#1", "s8#2"]
    assert unlabelled.y.tolist() == [-1, -1, -1] and unlabelled.subject.tolist() == ["p0"] * 3
    np.testing.assert_array_equal(unlabelled.x["accel"], [data[0:4], data[3:7], data[6:10]])
    assert unlabelled.x["cam"][:, 0, 0, 0].tolist() == pytest.approx([8 / 255] * 3)
    for name in ("train", "val", "test"):
        assert (ds.splits[name].y >= 0).all(), name
    assert len(ds.splits["train"]) == 12 and len(ds.splits["val"]) == 6
    # The p2 sample would show a validation subject to the unlabelled recipes: left out, said so.
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 1 and "validation subjects ['p2'] left out (lines 10)" in logged[0]


def test_drawn_validation_never_takes_unlabelled_samples(tmp_path: Path) -> None:
    samples = ts_samples(n_subjects=4, subjects=False)
    samples.insert(0, {"label": None, "data": np.zeros((10, 2))})  # id s0, 3 windows
    manifest = write_ts_manifest(tmp_path, samples)
    for seed in range(8):
        ds = load_dataset(manifest, seed=seed)
        assert ds.splits["unlabelled"].ids.tolist() == ["s0#0", "s0#1", "s0#2"], seed
        # 15% of the 24 labelled windows: two whole labelled samples of 3 windows each
        assert len(ds.splits["val"]) == 6 and (ds.splits["val"].y >= 0).all(), seed
        assert len(ds.splits["train"]) + len(ds.splits["val"]) == 8 * 3, seed


@pytest.mark.parametrize("split", ["test", "val"])
def test_null_label_outside_train_is_refused(tmp_path: Path, split: str) -> None:
    samples = ts_samples()
    samples[1].update(label=None, split=split)
    manifest = write_ts_manifest(tmp_path, samples)
    with pytest.raises(DataError) as info:
        load_dataset(manifest)
    assert str(info.value) == (
        f"{manifest}:2: label null (unlabelled) is allowed in train samples only; a {split} "
        "sample needs a label"
    )


def test_missing_label_is_still_an_error(toy: Path) -> None:
    edit_line(toy, 3, lambda r: r.pop("label"))
    with pytest.raises(DataError, match=rf"{toy}:3: missing key 'label'"):
        load_dataset(toy)
