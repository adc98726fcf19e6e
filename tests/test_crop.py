"""The image crop's padding is a fraction of the side: the same strength at every image size,
and the same relative shift for paired images of different sizes."""

from __future__ import annotations

import numpy as np
import pytest

from edgekd.data.augment import crop
from edgekd.errors import ConfigError
from edgekd.modalities import ModalitySpec


def _spec(name: str, side: int) -> ModalitySpec:
    return ModalitySpec(name=name, kind="image", rate_hz=0, channels=1, window=0, hop=0,
                        size=(side, side))  # fmt: skip


def _row_shift(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Per sample, how many rows the centre pixel moved (images hold their row index)."""
    c = x.shape[1] // 2
    return np.rint(out[:, c, c, 0] - x[:, c, c, 0]).astype(int)


def _rows(b: int, side: int) -> np.ndarray:
    return np.broadcast_to(np.arange(side, dtype=np.float32)[None, :, None, None],
                           (b, side, side, 1)).copy()  # fmt: skip


def test_crop_shift_scales_with_the_image_side() -> None:
    b = 400
    x = {"small": _rows(b, 32), "large": _rows(b, 224)}
    specs = {"small": _spec("small", 32), "large": _spec("large", 224)}
    out = dict(x)
    crop(out, specs, np.random.default_rng(0), pad=0.125)
    small, large = _row_shift(x["small"], out["small"]), _row_shift(x["large"], out["large"])
    assert (small.min(), small.max()) == (-4, 4)  # 0.125 x 32
    assert (large.min(), large.max()) == (-28, 28)  # 0.125 x 224
    # Paired: one relative offset per sample for both images, up to the small image's 9 levels.
    assert np.all(np.abs(large / 28 - small / 4) <= 1 / 4)
    assert np.corrcoef(small, large)[0, 1] > 0.99


def test_crop_pad_must_be_a_fraction() -> None:
    x = {"small": _rows(2, 32)}
    with pytest.raises(ConfigError, match="fraction of the image side"):
        crop(x, {"small": _spec("small", 32)}, np.random.default_rng(0), pad=4.0)


def test_a_pixel_pad_from_an_old_config_is_refused_when_the_config_loads() -> None:
    from edgekd.config import build_config

    # pad was pixels before it was a fraction: refused before any data is read, not at the
    # first training batch
    with pytest.raises(ConfigError, match=r"augment.ops.crop.pad is a fraction of the image side"):
        build_config(None, sets=["augment.ops.crop.pad=4"])
    assert build_config(None, sets=["augment.ops.crop.pad=0.25"]).augment.ops == {
        "crop": {"pad": 0.25}
    }
