"""A small paired audio + image dataset in the user-manifest format, for tests.

Class c is a tone near 400 * (c + 1) Hz in 0.5 s of 16 kHz noise (the "voice" modality) and a
32x32 RGB picture whose colour and stripe direction depend on c (the "face" modality). Both are
learnable in a few epochs; the image is the cleaner of the two. Subjects u0..u5 each get every
class; u5 is the test subject, validation is left to the loader (drawn from train subjects).
"""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np
from PIL import Image

RATE_HZ = 16000
CLIP_SAMPLES = 8000  # 0.5 s
IMAGE_SIZE = 32
SUBJECTS = 6
HEADER = """\
modalities:
  voice: {kind: audio, rate_hz: 16000, window_s: 0.5}
  face: {kind: image, size: [32, 32], channels: 3}
student: voice
"""


def write_wav(path: Path, samples: np.ndarray, rate_hz: int = RATE_HZ) -> None:
    """Float samples in [-1, 1] -> 16-bit PCM mono .wav."""
    pcm = np.clip(np.round(samples * 32767.0), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate_hz)
        wav.writeframes(pcm.tobytes())


def _tone(cls: int, rng: np.random.Generator) -> np.ndarray:
    freq = 400.0 * (cls + 1) * rng.uniform(0.97, 1.03)
    t = np.arange(CLIP_SAMPLES) / RATE_HZ
    tone = rng.uniform(0.2, 0.4) * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi))
    return tone + rng.normal(0.0, 0.1, CLIP_SAMPLES)


def _picture(cls: int, rng: np.random.Generator) -> np.ndarray:
    img = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 0.2)
    img[..., cls % 3] += 0.4
    stripes = (np.arange(IMAGE_SIZE) // (2 + cls // 3)) % 2 == 0
    if cls % 2:
        img[:, stripes] += 0.3
    else:
        img[stripes] += 0.3
    img += rng.normal(0.0, 0.08, img.shape)
    return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)


def make_toy_manifest(root: Path, n_per_class: int = 12, classes: int = 3, seed: int = 0) -> Path:
    """Write the toy dataset under `root` and return the path of its `manifest.jsonl`.

    Labels are "c0".."c{classes-1}"; each class has `n_per_class` samples spread over six
    subjects (u5 is the test split). Deterministic for `seed`.
    """
    root = Path(root)
    (root / "voice").mkdir(parents=True, exist_ok=True)
    (root / "face").mkdir(exist_ok=True)
    (root / "modalities.yaml").write_text(HEADER)
    rng = np.random.default_rng(seed)
    lines = []
    for cls in range(classes):
        for k in range(n_per_class):
            sid = f"c{cls}_{k:03d}"
            subject = k % SUBJECTS
            write_wav(root / "voice" / f"{sid}.wav", _tone(cls, rng))
            Image.fromarray(_picture(cls, rng)).save(root / "face" / f"{sid}.png")
            record = {
                "id": sid,
                "label": f"c{cls}",
                "split": "test" if subject == SUBJECTS - 1 else "train",
                "subject": f"u{subject}",
                "voice": f"voice/{sid}.wav",
                "face": f"face/{sid}.png",
            }
            lines.append(json.dumps(record))
    manifest = root / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest
