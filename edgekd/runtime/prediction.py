"""What a model gives back: class probabilities (`softmax` of its logits) and `Prediction`.

Shared by `Model.predict` and `Stream.push`, which must turn logits into probabilities alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Prediction:
    """Result of `Model.predict`.

    probs: (B, K) float32 class probabilities, or (K,) for a single window;
    index: (B,) int64 argmax, or an np.int64 scalar for a single window;
    labels: the argmax label names, a list for a batch or one str for a single window.
    """

    probs: np.ndarray
    index: np.ndarray
    labels: list[str] | str

    @property
    def scores(self) -> np.ndarray:
        """Probability of the predicted class, (B,) or a scalar."""
        return self.probs.max(axis=-1)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float32 (max-subtracted, so large logits do not overflow)."""
    # ufunc reduces directly: the ndarray.max/.sum wrappers cost ~1 us each on a stream push.
    z = logits - np.maximum.reduce(logits, axis=-1, keepdims=True)
    np.exp(z, out=z)
    z /= np.add.reduce(z, axis=-1, keepdims=True)
    return z.astype(np.float32, copy=False)
