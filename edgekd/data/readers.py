"""Readers for user data files: time series (.npy, .csv), audio (.wav), images (.png, .jpg).

`read_recording(path, spec)` returns one recording in the raw layout of `spec`, float32:
timeseries `(T, channels)`, audio `(T,)` in [-1, 1), image `(H, W, channels)` in [0, 1]. It never
resamples, resizes or converts colour: a wav at another rate, an image of another size or another
channel count (greyscale vs colour) is a DataError naming both values. Every error is a DataError
whose message starts with the file path.
"""

from __future__ import annotations

import warnings
import wave
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from edgekd.errors import DataError
from edgekd.modalities import ModalitySpec

_IMAGE_MODES = {1: "L", 3: "RGB"}


def read_npy(path: Path) -> np.ndarray:
    """A numeric .npy array (object arrays are refused: they would need pickle)."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npy file ({exc})") from exc
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiu":
        raise DataError(f"{path}: expected a numeric array, got {getattr(arr, 'dtype', type(arr))}")
    return arr


def read_utf8(path: Path, error: type[Exception] = DataError, what: str = "the file") -> str:
    """The UTF-8 text of `path` without a leading byte-order mark (else a header-less CSV would
    lose its first sample as a "header"). Not UTF-8: `error` naming the file, the first bad
    byte and its offset, and asking to save `what` as UTF-8. OSError passes through."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(
            f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
            f"save {what} as UTF-8"
        ) from None


def read_csv(path: Path) -> np.ndarray:
    """A comma-separated numeric table (T, C) in UTF-8 (`read_utf8`); a non-numeric first line
    is taken as a header."""
    try:
        lines = read_utf8(path, what="the CSV").splitlines()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    rows = [line for line in lines if line.strip()]
    if rows:
        try:
            [float(v) for v in rows[0].split(",")]
        except ValueError:
            rows = rows[1:]
    if not rows:
        raise DataError(f"{path}: no data rows")
    try:
        return np.loadtxt(rows, delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise DataError(f"{path}: not a numeric CSV table ({exc})") from exc


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """16-bit PCM mono .wav -> (samples (T,) float32 in [-1, 1), sample rate in Hz); a file
    without samples is a DataError."""
    try:
        with wave.open(str(path), "rb") as wav:
            channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
            frames = wav.readframes(wav.getnframes())
    except (OSError, EOFError, wave.Error) as exc:
        raise DataError(f"{path}: not a readable PCM .wav file ({wav_failure(path, exc)})") from exc
    if not frames:
        raise DataError(f"{path}: the .wav file holds no samples (a header only)")
    if channels != 1 or width != 2:
        raise DataError(
            f"{path}: expected 16-bit PCM mono, got {channels} channel(s) of {8 * width}-bit "
            "samples; convert it (e.g. ffmpeg -ac 1 -sample_fmt s16)"
        )
    if len(frames) % 2:
        raise DataError(f"{path}: truncated sample data")
    samples = np.frombuffer(frames, dtype="<i2").astype(np.float32) / np.float32(32768.0)
    return samples, rate


def wav_failure(path: Path, exc: BaseException) -> str:
    """Why `wave` could not read `path`, in words: its EOFError on a short file has no message."""
    size = path.stat().st_size if path.is_file() else None
    if size == 0:
        return "the file is empty, 0 bytes"
    if isinstance(exc, EOFError):
        return f"the file ends inside the header, {size} bytes"
    return str(exc) or type(exc).__name__


@contextmanager
def _bomb_checked(path: Path) -> Iterator[None]:
    """PIL's decompression-bomb guard (an image of more pixels than Image.MAX_IMAGE_PIXELS: a
    warning, twice that: an error) as a DataError naming the file; no model reads such images."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            yield
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise DataError(
                f"{path}: image too large to open safely ({exc}); image modalities read files "
                "of exactly their spec's size"
            ) from None


def image_channels(path: Path) -> int:
    """Channels of an image file: 1 for greyscale modes (L, LA, 1, I, F), 3 for colour ones
    (RGB, RGBA, palette, ...). Alpha does not count: it is dropped when read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with _bomb_checked(path), Image.open(path) as img:
            return _mode_channels(img.mode)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from exc


def _mode_channels(mode: str) -> int:
    from PIL import ImageMode

    return 1 if ImageMode.getmode(mode).basemode == "L" else 3


def read_image(path: Path, channels: int, name: str = "the modality") -> np.ndarray:
    """.png/.jpg -> (H, W, channels) uint8, never resized. The file must have `channels`
    channels (alpha is dropped): a greyscale file for a colour modality, or the reverse, is a
    DataError rather than a silent conversion."""
    from PIL import Image, UnidentifiedImageError

    if channels not in _IMAGE_MODES:
        raise DataError(f"{path}: images need 1 or 3 channels, the spec asks for {channels}")
    try:
        with _bomb_checked(path), Image.open(path) as img:
            img.load()
            found = _mode_channels(img.mode)
            if found != channels:
                what = "greyscale" if found == 1 else "colour"
                raise DataError(
                    f"{path}: {what} image (mode {img.mode}, {found} channel{'s' * (found > 1)}) "
                    f"but {name} takes {channels} channel{'s' * (channels > 1)}; convert the "
                    "file, or set the modality's channels in the header to match every image"
                )
            arr = np.asarray(img.convert(_IMAGE_MODES[channels]), dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from exc
    return arr.reshape(arr.shape[0], arr.shape[1], channels)


def _timeseries(path: Path, spec: ModalitySpec) -> np.ndarray:
    reader: Callable[[Path], np.ndarray] = read_npy if path.suffix.lower() == ".npy" else read_csv
    arr = reader(path)
    if arr.ndim != 2 or arr.shape[1] != spec.channels:
        raise DataError(
            f"{path}: expected a (T, {spec.channels}) array for {spec.name!r}, "
            f"got shape {arr.shape}"
        )
    return arr.astype(np.float32)


def _audio(path: Path, spec: ModalitySpec) -> np.ndarray:
    samples, rate = read_wav(path)
    if rate != spec.rate_hz:
        raise DataError(
            f"{path}: sample rate is {rate} Hz but {spec.name!r} expects {spec.rate_hz:g} Hz; "
            "resample the file (edgekd never resamples)"
        )
    return samples


def _image(path: Path, spec: ModalitySpec) -> np.ndarray:
    arr = read_image(path, spec.channels, repr(spec.name))
    if arr.shape[:2] != tuple(spec.size):
        raise DataError(
            f"{path}: image is {arr.shape[0]}x{arr.shape[1]} (H x W) but {spec.name!r} expects "
            f"{spec.size[0]}x{spec.size[1]}; resize the file (edgekd never resizes)"
        )
    return arr.astype(np.float32) / np.float32(255.0)


_READERS: dict[str, tuple[tuple[str, ...], Callable[[Path, ModalitySpec], np.ndarray]]] = {
    "timeseries": ((".npy", ".csv"), _timeseries),
    "audio": ((".wav",), _audio),
    "image": ((".png", ".jpg", ".jpeg"), _image),
}


def read_recording(path: Path, spec: ModalitySpec) -> np.ndarray:
    """One file of modality `spec` in its raw layout (see module docstring), finite float32."""
    suffixes, reader = _READERS[spec.kind]
    if path.suffix.lower() not in suffixes:
        raise DataError(
            f"{path}: {spec.kind} modality {spec.name!r} reads {', '.join(suffixes)} files, "
            f"not {path.suffix or 'files without a suffix'}"
        )
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    arr = reader(path, spec)
    if not np.isfinite(arr).all():
        raise DataError(f"{path}: contains NaN or inf values")
    return arr
