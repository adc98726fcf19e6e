"""A card's own preprocessing: raw windows of a manifest modality -> one model input.

Order: resample (time series and audio, scipy.signal.resample_poly along time), resize (images,
Pillow bilinear per channel), normalise ((x - mean) / std over the last raw axis: channels; one
value for audio), then the card's layout (a permutation of the raw layout's letters, e.g. NTC ->
NCT), and, with `flatten`, one feature row per window. Output float32, C-contiguous. The
student's own preprocessing is separate and unaffected.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from edgekd.errors import ConfigError
from edgekd.modalities import ModalitySpec
from edgekd.teachers.card import RAW_LAYOUT, CardInput


def _resample(x: np.ndarray, rate_from: float, rate_to: float) -> np.ndarray:
    from scipy.signal import resample_poly

    ratio = Fraction(rate_to / rate_from).limit_denominator(1000)
    return resample_poly(x, ratio.numerator, ratio.denominator, axis=1).astype(np.float32)


def _resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    h, w = size
    out = np.empty((x.shape[0], h, w, x.shape[3]), dtype=np.float32)
    for i in range(x.shape[0]):
        for c in range(x.shape[3]):
            img = Image.fromarray(np.ascontiguousarray(x[i, :, :, c], dtype=np.float32), mode="F")
            out[i, :, :, c] = np.asarray(img.resize((w, h), Image.Resampling.BILINEAR))
    return out


def prepare(card_input: CardInput, spec: ModalitySpec, raw: np.ndarray) -> np.ndarray:
    """The model input of `card_input` from raw windows of the modality `spec` describes."""
    x = np.asarray(raw, dtype=np.float32)
    if spec.kind == "audio" and x.ndim == 3:
        x = x[..., 0]
    if card_input.rate_hz is not None and spec.kind in ("timeseries", "audio"):
        if abs(card_input.rate_hz - spec.rate_hz) > 1e-9:
            x = _resample(x, spec.rate_hz, card_input.rate_hz)
    if card_input.size is not None and spec.kind == "image":
        x = _resize(x, card_input.size)
    if card_input.mean:
        channels = 1 if spec.kind == "audio" else x.shape[-1]
        if len(card_input.mean) not in (1, channels):
            raise ConfigError(
                f"card input {card_input.name}: normalize has {len(card_input.mean)} values, "
                f"but {spec.name} has {channels} channel(s)"
            )
        x = (x - np.asarray(card_input.mean, np.float32)) / np.asarray(card_input.std, np.float32)
    raw_layout = RAW_LAYOUT[spec.kind]
    layout = card_input.layout or raw_layout
    if sorted(layout) != sorted(raw_layout):
        raise ConfigError(
            f"card input {card_input.name}: layout {layout!r} is not a permutation of "
            f"{raw_layout!r} ({spec.name} is {spec.kind})"
        )
    if layout != raw_layout:
        x = x.transpose([raw_layout.index(a) for a in layout])
    if card_input.flatten:
        x = x.reshape(len(x), -1)
    return np.ascontiguousarray(x, dtype=np.float32)
