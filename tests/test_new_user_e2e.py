"""A new user's first hour, end to end through the CLI, on their own small data.

Two datasets are written the way the README describes: 8 kHz speech-like tones paired with
greyscale PNGs (audio + image, no `channels` in the header), and accelerometer + gyroscope CSV
files with a header row. Each goes through `edgekd teacher`, `distill`, `export` and
`run --stream` in subprocesses: the teacher is trained from one working directory with a relative
data path, everything after it runs from another directory, so the run folders must not depend
on the directory they were made in.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import run_events

REPO = Path(__file__).resolve().parents[1]
RATE_HZ = 8000
CLASSES = ("low", "mid", "high")
SUBJECTS = 6  # u5 is the test subject

AV_HEADER = """\
modalities:
  voice: {kind: audio, rate_hz: 8000, window_s: 1.0}
  face: {kind: image, size: [16, 16]}
student: voice
"""
IMU_HEADER = """\
modalities:
  accel: {kind: timeseries, rate_hz: 50, channels: 3, window: 64}
  gyro: {kind: timeseries, rate_hz: 50, channels: 3, window: 64}
student: accel
"""


def tone(cls: int, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """int16 PCM at 8 kHz: a tone of 400, 1000 or 2200 Hz (by class) in noise."""
    t = np.arange(int(seconds * RATE_HZ)) / RATE_HZ
    freq = (400.0, 1000.0, 2200.0)[cls] * rng.uniform(0.97, 1.03)
    x = 0.3 * np.sin(2 * np.pi * freq * t + rng.uniform(0, 6.3)) + rng.normal(0, 0.05, t.shape)
    return np.round(np.clip(x, -1, 1) * 32767).astype(np.int16)


def write_wav(path: Path, pcm: np.ndarray) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(RATE_HZ)
        wav.writeframes(pcm.astype("<i2").tobytes())


def motion(cls: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3) accelerometer (g) and gyroscope (rad/s) samples at 50 Hz; the oscillation
    frequency depends on the class."""
    t = np.arange(n)[:, None] / 50.0
    freq = (0.5, 2.0, 5.0)[cls] * rng.uniform(0.9, 1.1)
    phase = rng.uniform(0, 6.3, 3)
    accel = 0.5 * np.sin(2 * np.pi * freq * t + phase) + rng.normal(0, 0.05, (n, 3))
    accel[:, 2] += 1.0
    gyro = np.cos(2 * np.pi * freq * t + phase) + rng.normal(0, 0.05, (n, 3))
    return accel, gyro


def write_manifest(root: Path, header: str, records: list[dict[str, str]]) -> Path:
    (root / "modalities.yaml").write_text(header)
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records))
    return manifest


def make_av(root: Path, per_class: int = 6) -> Path:
    """1.5 s clips (one 1 s window each, hop 0.5 s: 2 windows) and 16x16 greyscale pictures."""
    (root / "clips").mkdir(parents=True)
    (root / "faces").mkdir()
    rng = np.random.default_rng(0)
    records = []
    for cls, label in enumerate(CLASSES):
        for k in range(per_class):
            sid = f"{label}{k}"
            write_wav(root / "clips" / f"{sid}.wav", tone(cls, 1.5, rng))
            picture = np.full((16, 16), 40 + 80 * cls, np.float64)
            picture[:: 2 + cls] += 60
            picture += rng.normal(0, 8, picture.shape)
            Image.fromarray(np.clip(picture, 0, 255).astype(np.uint8)).save(
                root / "faces" / f"{sid}.png")
            subject = k % SUBJECTS
            records.append({"id": sid, "label": label, "subject": f"u{subject}",
                            "split": "test" if subject == SUBJECTS - 1 else "train",
                            "voice": f"clips/{sid}.wav", "face": f"faces/{sid}.png"})
    return write_manifest(root, AV_HEADER, records)


def write_csv(path: Path, names: str, rows: np.ndarray) -> None:
    np.savetxt(path, rows, delimiter=",", header=names, comments="", fmt="%.5f")


def make_imu(root: Path, per_class: int = 6) -> Path:
    """5.12 s recordings (256 samples: 7 windows of 64, hop 32) as CSV with a header row."""
    (root / "rec").mkdir(parents=True)
    rng = np.random.default_rng(1)
    records = []
    for cls, label in enumerate(CLASSES):
        for k in range(per_class):
            sid = f"{label}{k}"
            accel, gyro = motion(cls, 256, rng)
            write_csv(root / "rec" / f"{sid}-acc.csv", "ax,ay,az", accel)
            write_csv(root / "rec" / f"{sid}-gyr.csv", "gx,gy,gz", gyro)
            subject = k % SUBJECTS
            records.append({"id": sid, "label": label, "subject": f"u{subject}",
                            "split": "test" if subject == SUBJECTS - 1 else "train",
                            "accel": f"rec/{sid}-acc.csv", "gyro": f"rec/{sid}-gyr.csv"})
    return write_manifest(root, IMU_HEADER, records)


def edgekd(cwd: Path, *args: str | Path) -> str:
    """`python -m edgekd ARGS` in `cwd` with this checkout's code; its output (must succeed)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "edgekd", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"edgekd {' '.join(map(str, args))}:\n{proc.stdout}{proc.stderr}"
    return proc.stdout + proc.stderr


def pipeline(tmp: Path, name: str, manifest: Path, recording: Path) -> tuple[str, str]:
    """teacher from one directory (relative data path), the rest from another; the stream and
    offline outputs of `edgekd run` on `recording`."""
    # at different depths: a path relative to the first means another file from the second
    first, second = tmp / f"{name}-cwd1", tmp / "elsewhere" / f"{name}-cwd2"
    first.mkdir()
    second.mkdir(parents=True)
    data = os.path.relpath(manifest, first)
    edgekd(first, "teacher", "--data", data, "--out", "runs/teacher", "--epochs", "3")
    teacher = first / "runs" / "teacher"
    # 4 epochs: the learning rate decays per optimizer step, so 3 epochs of a few steps each
    # leave the IMU student short of the "high" class.
    edgekd(second, "distill", "--teacher", teacher, "--out", "runs/student", "--epochs", "4")
    # the default of 512 calibration windows is more than this data set has: all are used
    export = edgekd(second, "export", "runs/student", "--out", f"{name}.edgekd")
    assert "int8_openvino" in export
    assert "calibration windows" in export
    bundle = f"{name}.edgekd"
    live = edgekd(second, "run", bundle, "--input", recording, "--stream", "--chunk", "100")
    offline = edgekd(second, "run", bundle, "--input", recording)
    return live, offline


@pytest.mark.slow
def test_new_user_audio_image_and_csv_data_end_to_end(tmp_path: Path) -> None:
    av = make_av(tmp_path / "data" / "av")
    imu = make_imu(tmp_path / "data" / "imu")

    speech = tmp_path / "speech.wav"  # 3 s of the "mid" tone: 5 windows (1 s, hop 0.5 s)
    write_wav(speech, tone(1, 3.0, np.random.default_rng(9)))
    live, offline = pipeline(tmp_path, "voice", av, speech)
    assert run_events(live) == run_events(offline)
    assert [t for t, _ in run_events(live)] == pytest.approx([1.0, 1.5, 2.0, 2.5, 3.0])
    assert {label for _, label in run_events(live)} == {"mid"}
    sidecar = json.loads((tmp_path / "voice-cwd1/runs/teacher/checkpoint.json").read_text())
    assert sidecar["data"]["source"] == str(av.resolve())
    assert sidecar["specs"]["face"]["channels"] == 1  # inferred from the greyscale PNGs

    accel, _ = motion(2, 300, np.random.default_rng(9))  # "high": 8 windows of 64, hop 32
    recording = tmp_path / "walk.csv"
    write_csv(recording, "ax,ay,az", accel)
    live, offline = pipeline(tmp_path, "imu", imu, recording)
    assert run_events(live) == run_events(offline)
    assert [t for t, _ in run_events(live)] == pytest.approx([(64 + 32 * k) / 50 for k in range(8)])
    assert {label for _, label in run_events(live)} == {"high"}
