"""Per-modality preprocessing shared by training and the torch-free runtime (numpy only).

A `ModalitySpec` says what one raw window of a modality looks like and how it becomes model
input. The same spec (with its fitted normalisation statistics) is stored in checkpoints and in
the bundle manifest, so the runtime preprocesses exactly as training did.

Raw windows and their model input (B = batch):
- timeseries: `(B, window, channels)` -> `(B, channels, window)`, normalised per channel.
- audio: `(B, window)` or `(B, window, 1)` -> log-mel `(B, n_mels, frames)`, normalised per mel
  bin. Frames are `1 + (window - n_fft) // hop_length` with no padding, so a window's features
  depend on that window only and streaming equals offline. Log-mel: periodic Hann window, rfft
  power spectrum, an HTK mel filterbank (`2595 * log10(1 + f / 700)`, triangles with peak 1 from
  0 Hz to rate/2), then `log(x + 1e-6)`.
- image: `(B, H, W, C)` -> `(B, C, H, W)` in [0, 1] (uint8 is divided by 255), normalised per
  channel.

Integer raw data: timeseries accept any integer dtype as is; audio accepts int16 PCM (scaled by
1/32768); images accept uint8. Empty `mean`/`std` mean "not fitted yet": no normalisation.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgekd.errors import ConfigError, DataError, InputError

KINDS = ("timeseries", "audio", "image")
STD_FLOOR = 1e-6  # keeps a constant feature channel from dividing by zero
LOG_EPS = 1e-6  # log-mel offset: silence maps to log(1e-6) instead of -inf
_AUDIO_CHUNK = 256  # windows per FFT batch: bounds memory of the (B, frames, n_freq) spectrum


@dataclass(frozen=True)
class ModalitySpec:
    """One modality's raw window layout and preprocessing parameters (see module docstring).

    `rate_hz` is in samples per second (0 for images); `window` and `hop` are in raw samples
    (0 for images); `mean`/`std` have one entry per feature channel (timeseries: channels,
    audio: n_mels, image: channels) or are empty before fitting.
    """

    name: str
    kind: str
    rate_hz: float
    channels: int
    window: int
    hop: int
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    n_mels: int = 40
    n_fft: int = 400
    hop_length: int = 160
    size: tuple[int, int] = (0, 0)
    # 3-axis vector channel groups of a timeseries, each with the name of its physical frame:
    # groups in one frame (e.g. accelerometer and gyroscope in the "device" frame) are rotated
    # together by augmentation, across modalities. Serialised as {frame: [[c0, c1, c2], ...]}.
    vectors: tuple[tuple[str, tuple[int, int, int]], ...] = ()

    @functools.cached_property
    def normaliser(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, 1/std) as float32 arrays shaped to broadcast over `(B, *feature_shape)`,
        built once per spec (cached_property writes the instance dict, so frozen is fine)."""
        rank = len(feature_shape(self))
        bshape = (1, -1) + (1,) * (rank - 1)
        mean = np.asarray(self.mean, dtype=np.float32).reshape(bshape)
        inv_std = (1.0 / np.asarray(self.std, dtype=np.float32)).reshape(bshape)
        return mean, inv_std

    def __post_init__(self) -> None:
        where = f"modality {self.name!r}"
        if self.kind not in KINDS:
            raise ConfigError(
                f"{where}: unknown kind {self.kind!r}; expected one of {', '.join(KINDS)}"
            )
        if self.channels < 1:
            raise ConfigError(f"{where}: channels must be >= 1, got {self.channels}")
        if self.kind in ("timeseries", "audio"):
            if self.rate_hz <= 0:
                raise ConfigError(f"{where}: rate_hz must be > 0, got {self.rate_hz}")
            if self.window < 1 or self.hop < 1:
                raise ConfigError(
                    f"{where}: window and hop must be >= 1 sample, got window={self.window}, "
                    f"hop={self.hop}"
                )
        if self.kind == "audio":
            if self.channels != 1:
                raise ConfigError(f"{where}: audio must be mono (channels=1), got {self.channels}")
            if self.n_fft < 2 or self.hop_length < 1 or self.n_mels < 1:
                raise ConfigError(f"{where}: need n_fft >= 2, hop_length >= 1, n_mels >= 1")
            if self.window < self.n_fft:
                raise ConfigError(
                    f"{where}: window ({self.window} samples) is shorter than n_fft ({self.n_fft})"
                )
        if self.kind == "image" and (len(self.size) != 2 or min(self.size) < 1):
            raise ConfigError(f"{where}: image size must be [H, W] with H, W >= 1, got {self.size}")
        n_feat = feature_channels(self)
        if len(self.mean) != len(self.std) or len(self.mean) not in (0, n_feat):
            raise ConfigError(
                f"{where}: mean/std need {n_feat} entries each (or none), got "
                f"{len(self.mean)} and {len(self.std)}"
            )
        if any(not s > 0 for s in self.std):
            raise ConfigError(f"{where}: every std entry must be > 0, got {self.std}")
        if self.vectors and self.kind != "timeseries":
            raise ConfigError(f"{where}: vectors are only for timeseries, not {self.kind}")
        for frame, group in self.vectors:
            if len(group) != 3 or len(set(group)) != 3 or not all(
                0 <= c < self.channels for c in group
            ):
                raise ConfigError(
                    f"{where}: vector group {list(group)} of frame {frame!r} must name 3 distinct "
                    f"channels in 0..{self.channels - 1}"
                )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (tuples become lists); `from_dict` inverts it."""
        out = dataclasses.asdict(self)
        for key in ("mean", "std", "size"):
            out[key] = list(out[key])
        del out["vectors"]
        if self.vectors:  # omitted when empty: specs without vector groups serialise as before
            frames: dict[str, list[list[int]]] = {}
            for frame, group in self.vectors:
                frames.setdefault(frame, []).append(list(group))
            out["vectors"] = frames
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModalitySpec:
        """Rebuild a spec from `to_dict` output; unknown or missing keys raise ConfigError."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"modality spec has unknown key(s): {', '.join(sorted(unknown))}")
        values = dict(d)
        for key in ("mean", "std"):
            if key in values:
                values[key] = tuple(float(v) for v in values[key])
        if "size" in values:
            values["size"] = tuple(int(v) for v in values["size"])
        if "vectors" in values:
            values["vectors"] = parse_vectors(values["vectors"])
        try:
            return cls(**values)
        except TypeError as exc:
            raise ConfigError(f"invalid modality spec {dict(d)!r}: {exc}") from exc


def parse_vectors(frames: Any) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """`{frame: [[c0, c1, c2], ...]}` -> the `ModalitySpec.vectors` tuple (checked by the spec)."""
    if not isinstance(frames, Mapping) or not all(
        isinstance(groups, list | tuple) and all(isinstance(g, list | tuple) for g in groups)
        for groups in frames.values()
    ):
        raise ConfigError(f"vectors must map a frame name to channel triples, got {frames!r}")
    return tuple(
        (str(frame), tuple(int(c) for c in group))
        for frame, groups in frames.items()
        for group in groups
    )


def feature_channels(spec: ModalitySpec) -> int:
    """Number of normalised feature channels (length of `mean`/`std`)."""
    return spec.n_mels if spec.kind == "audio" else spec.channels


def audio_frames(spec: ModalitySpec) -> int:
    """Log-mel frames per audio window (no padding)."""
    return 1 + (spec.window - spec.n_fft) // spec.hop_length


def feature_shape(spec: ModalitySpec) -> tuple[int, ...]:
    """Per-sample model input shape (without the batch axis)."""
    if spec.kind == "timeseries":
        return (spec.channels, spec.window)
    if spec.kind == "audio":
        return (spec.n_mels, audio_frames(spec))
    return (spec.channels, spec.size[0], spec.size[1])


def raw_shape(spec: ModalitySpec) -> tuple[int, ...]:
    """Per-sample raw window shape (without the batch axis) that `preprocess` expects."""
    if spec.kind == "timeseries":
        return (spec.window, spec.channels)
    if spec.kind == "audio":
        return (spec.window,)
    return (spec.size[0], spec.size[1], spec.channels)


def _shape_text(spec: ModalitySpec) -> str:
    text = "(B, " + ", ".join(str(n) for n in raw_shape(spec)) + ")"
    if spec.kind == "audio":
        text += f" or (B, {spec.window}, 1)"
    return text


def validate_raw(spec: ModalitySpec, raw: Any) -> None:
    """Raise InputError unless `raw` is a finite batch of raw windows of `spec`'s shape."""
    # Messages are only built on failure: this runs on every stream push, where µs count.
    if (
        isinstance(raw, np.ndarray)
        and raw.dtype.kind == "f"
        and spec.kind == "timeseries"
        and raw.ndim == 3
        and raw.shape[1] == spec.window
        and raw.shape[2] == spec.channels
        and np.isfinite(raw).all()
    ):
        return
    expected = _shape_text(spec)
    where = f"{spec.name} ({spec.kind})"
    if not isinstance(raw, np.ndarray):
        raise InputError(
            f"{where}: expected a numpy array of shape {expected}, got {type(raw).__name__}"
        )
    if raw.dtype.kind not in "fiu":
        raise InputError(
            f"{where}: raw data has dtype {raw.dtype}; expected a float or integer array of "
            f"shape {expected}"
        )
    if spec.kind == "image" and raw.dtype.kind != "f" and raw.dtype != np.uint8:
        raise InputError(f"{where}: integer images must be uint8, got {raw.dtype}")
    if spec.kind == "audio" and raw.dtype.kind != "f" and raw.dtype != np.int16:
        raise InputError(f"{where}: integer audio must be int16 PCM, got {raw.dtype}")
    per_sample = raw_shape(spec)
    ranks = (2, 3) if spec.kind == "audio" else (1 + len(per_sample),)
    if raw.ndim not in ranks:
        raise InputError(
            f"{where}: expected shape {expected}, got shape {raw.shape} (rank {raw.ndim}); "
            "a single window needs a leading batch axis"
        )
    # (axis, expected size, what it is), checked in this order so the message names one problem.
    checks: list[tuple[int, int, str]]
    if spec.kind == "timeseries":
        checks = [(2, spec.channels, "channels"), (1, spec.window, "samples per window")]
    elif spec.kind == "audio":
        checks = [(1, spec.window, "samples per window")] + [(2, 1, "channel (mono)")] * (
            raw.ndim - 2
        )
    else:
        checks = [
            (3, spec.channels, "channels"),
            (1, spec.size[0], "rows"),
            (2, spec.size[1], "columns"),
        ]
    for axis, want, what in checks:
        if raw.shape[axis] != want:
            hint = "; resize images before calling" if spec.kind == "image" and axis < 3 else ""
            raise InputError(
                f"{where}: expected {want} {what}, got {raw.shape[axis]}: shape {raw.shape}, "
                f"expected {expected}{hint}"
            )
    if raw.dtype.kind == "f":
        bad = ~np.isfinite(raw)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise InputError(
                f"{where}: raw data contains NaN or inf ({int(bad.sum())} values, first at "
                f"index {first}); expected finite values of shape {expected}"
            )


@functools.lru_cache(maxsize=16)
def mel_filterbank(rate_hz: float, n_fft: int, n_mels: int) -> np.ndarray:
    """HTK mel filterbank `(n_mels, n_fft // 2 + 1)` float32, triangles of peak 1, 0..rate/2 Hz.

    Filter i rises from mel point i to a peak at point i + 1 and falls to point i + 2, the
    n_mels + 2 points being equally spaced in mel. Weights are evaluated at the rfft bin
    frequencies `k * rate_hz / n_fft`. The returned array is read-only (it is cached).
    """
    mel_max = 2595.0 * np.log10(1.0 + (rate_hz / 2.0) / 700.0)
    mel_points = np.linspace(0.0, mel_max, n_mels + 2)
    bin_mels = 2595.0 * np.log10(1.0 + np.fft.rfftfreq(n_fft, d=1.0 / rate_hz) / 700.0)
    left, centre, right = mel_points[:-2, None], mel_points[1:-1, None], mel_points[2:, None]
    rising = (bin_mels[None, :] - left) / (centre - left)
    falling = (right - bin_mels[None, :]) / (right - centre)
    fb = np.clip(np.minimum(rising, falling), 0.0, None).astype(np.float32)
    fb.setflags(write=False)
    return fb


@functools.lru_cache(maxsize=16)
def _hann(n_fft: int) -> np.ndarray:
    # Periodic Hann (as torch.hann_window / librosa use): tiles exactly under 50% overlap.
    w = (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)
    w.setflags(write=False)
    return w


def log_mel_frames(spec: ModalitySpec, frames: np.ndarray) -> np.ndarray:
    """Unnormalised log-mel `(N, n_mels)` float32 of N float32 audio frames `(N, n_fft)`.

    One rfft over all N frames. `log_mel` (windows) and the stream (only the frames a new hop
    adds) both call this, so their features agree to float rounding.
    """
    fb = mel_filterbank(float(spec.rate_hz), spec.n_fft, spec.n_mels)
    spectrum = np.fft.rfft(frames * _hann(spec.n_fft), axis=-1)  # complex64 for float32 frames
    power = np.square(spectrum.real) + np.square(spectrum.imag)
    mel = power @ fb.T
    mel += np.float32(LOG_EPS)
    return np.log(mel, out=mel)


def log_mel(spec: ModalitySpec, audio: np.ndarray) -> np.ndarray:
    """Unnormalised log-mel `(B, n_mels, frames)` float32 of float audio windows `(B, window)`."""
    n_frames = audio_frames(spec)
    out = np.empty((audio.shape[0], spec.n_mels, n_frames), dtype=np.float32)
    for start in range(0, audio.shape[0], _AUDIO_CHUNK):
        chunk = audio[start : start + _AUDIO_CHUNK]
        frames = np.lib.stride_tricks.sliding_window_view(chunk, spec.n_fft, axis=1)
        frames = frames[:, : (n_frames - 1) * spec.hop_length + 1 : spec.hop_length]
        mel = log_mel_frames(spec, frames.reshape(-1, spec.n_fft))  # all frames: one rfft
        out[start : start + _AUDIO_CHUNK] = mel.reshape(len(chunk), n_frames, -1).transpose(0, 2, 1)
    return out


def _features(spec: ModalitySpec, raw: np.ndarray, validate: bool = True) -> np.ndarray:
    """Validated raw windows -> unnormalised float32 features `(B, *feature_shape(spec))`."""
    if validate:
        validate_raw(spec, raw)
    if spec.kind == "timeseries":
        # np.array copies: preprocess normalises in place and must not touch the caller's data.
        return np.array(raw.transpose(0, 2, 1), dtype=np.float32, order="C")
    if spec.kind == "audio":
        audio = raw.reshape(raw.shape[0], spec.window)
        scale = 1.0 / 32768.0 if audio.dtype == np.int16 else 1.0
        return log_mel(spec, audio.astype(np.float32) * np.float32(scale))
    image = np.array(raw.transpose(0, 3, 1, 2), dtype=np.float32, order="C")
    if raw.dtype == np.uint8:
        image *= np.float32(1.0 / 255.0)
    return image


def preprocess(spec: ModalitySpec, raw: np.ndarray, *, validate: bool = True) -> np.ndarray:
    """Raw windows -> model input `(B, *feature_shape(spec))` float32, normalised by `spec`.

    Raises InputError (via `validate_raw`) for data that does not match the spec.
    `validate=False` is for callers that already checked every sample (a stream checks each
    chunk as it arrives, so its windows need no second pass).
    """
    x = _features(spec, raw, validate)
    if spec.mean:
        mean, inv_std = spec.normaliser
        x -= mean
        x *= inv_std
    return x


def fit_normalisation(spec: ModalitySpec, raw_train: np.ndarray) -> ModalitySpec:
    """Copy of `spec` with mean/std per feature channel fitted on `raw_train` (training data only).

    Statistics are over the preprocessed, unnormalised features (all windows and positions);
    std is floored at 1e-6. Raises DataError on an empty array.
    """
    if len(raw_train) == 0:
        raise DataError(f"{spec.name}: cannot fit normalisation on zero training windows")
    total = np.zeros(feature_channels(spec), dtype=np.float64)
    total_sq = np.zeros_like(total)
    count = 0
    # Chunks keep audio spectra and float64 copies small for large training sets.
    for start in range(0, len(raw_train), 4096):
        x = _features(spec, raw_train[start : start + 4096]).astype(np.float64)
        axes = (0,) + tuple(range(2, x.ndim))
        total += x.sum(axis=axes)
        total_sq += np.square(x).sum(axis=axes)
        count += x.size // x.shape[1]
    mean = total / count
    std = np.sqrt(np.clip(total_sq / count - mean**2, 0.0, None))
    std = np.maximum(std, STD_FLOOR)
    return dataclasses.replace(
        spec, mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std)
    )
