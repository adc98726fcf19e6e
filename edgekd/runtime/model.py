"""A loaded bundle: `predict` on raw windows, `stream()` for live samples, `self_check`.

Thread safety: a `Model` may be shared by threads for `predict` (each thread gets its own
backend runner, e.g. its own OpenVINO InferRequest); a `Stream` belongs to one thread (it owns
its buffer and its own runner). A `Model` is built by `edgekd.runtime.load` (`loader`).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from edgekd.errors import BundleError, InputError
from edgekd.modalities import ModalitySpec, preprocess, raw_shape
from edgekd.runtime.backends import Engine, Runner
from edgekd.runtime.bundle import Bundle, load_npz
from edgekd.runtime.prediction import Prediction, softmax
from edgekd.runtime.stream import Stream

__all__ = ["Model", "Prediction", "softmax"]


class Model:
    """A verified bundle compiled on one backend. Build it with `edgekd.runtime.load`."""

    def __init__(self, bundle: Bundle, engine: Engine, spec: ModalitySpec, load_s: float,
                 selection: dict[str, Any] | None = None) -> None:
        self.bundle = bundle
        self.engine = engine
        self.spec = spec
        self.load_s = load_s  # seconds: read + verify what is loaded + compile (+ auto timing)
        self.selection = selection  # how precision="auto" chose, else None
        self.labels = bundle.labels
        self._local = threading.local()

    @property
    def manifest(self) -> dict[str, Any]:
        return self.bundle.manifest

    @property
    def backend(self) -> str:
        return self.engine.backend

    @property
    def precision(self) -> str:
        return self.engine.precision

    @property
    def info(self) -> dict[str, Any]:
        """Backend, precision, artifact, load time and backend details (JSON-safe)."""
        out = {"backend": self.backend, "precision": self.precision,
               "artifact": self.engine.artifact, "load_s": self.load_s, **self.engine.details}
        if self.selection is not None:
            out["auto"] = self.selection
        return out

    def runner(self) -> Runner:
        """This thread's runner (features -> logits), created on first use."""
        run = getattr(self._local, "runner", None)
        if run is None:
            run = self._local.runner = self.engine.new_runner()
        return run

    def infer(self, features: np.ndarray, runner: Runner | None = None) -> np.ndarray:
        """Model-only path: preprocessed features (B, *feature_shape) -> probabilities (B, K),
        in calls of at most `engine.max_batch` windows."""
        run = runner or self.runner()
        step = self.engine.max_batch
        if len(features) <= step:
            return softmax(run(features))
        return np.concatenate([softmax(run(features[i : i + step]))
                               for i in range(0, len(features), step)])

    def predict(self, x: np.ndarray) -> Prediction:
        """Classify raw windows: one window `raw_shape(spec)` (timeseries (T, C), audio (T,))
        or a batch (B, *raw_shape). Preprocessing follows the manifest's modality spec.
        InputError for wrong dtype / rank / channels / window length, NaN or inf, empty batch."""
        if not isinstance(x, np.ndarray):
            raise InputError(f"predict expects a numpy array, got {type(x).__name__}")
        single = x.ndim == len(raw_shape(self.spec))
        batch = x[None] if single else x
        if batch.ndim == 0:
            raise InputError(f"predict expects windows of shape {raw_shape(self.spec)} or a "
                             "batch of them, got a scalar")
        if batch.shape[0] == 0:
            raise InputError("predict got an empty batch (0 windows)")
        run = self.runner()
        step = self.engine.max_batch
        # Preprocess per chunk: memory stays bounded however many windows are passed.
        probs = np.concatenate([self.infer(preprocess(self.spec, batch[i : i + step]), run)
                                for i in range(0, len(batch), step)])
        index = probs.argmax(axis=1)
        if single:
            return Prediction(probs[0], index[0], self.labels[int(index[0])])
        return Prediction(probs, index, [self.labels[i] for i in index])

    def stream(self, *, rate_hz: float | None = None, max_batch: int = 64) -> Stream:
        """A new independent stream (its own buffer and runner); see `edgekd.runtime.stream`.
        `rate_hz`: the caller's sample rate, checked against the manifest's."""
        return Stream(self, rate_hz=rate_hz, max_batch=max_batch)

    def self_check(self) -> dict[str, float]:
        """Compare predictions on golden.npz with the FP32 probabilities stored at export:
        `{"max_abs_diff", "top1_agreement", "n"}`. BundleError if the bundle has no golden."""
        data = self.bundle.read_data("golden")
        if data is None:
            raise BundleError(f"{self.bundle.root} has no golden.npz to check against")
        golden = load_npz(data)
        x, ref = golden["x"], golden["probs"]
        probs = self.predict(x).probs
        return {"max_abs_diff": float(np.abs(probs - ref).max()),
                "top1_agreement": float((probs.argmax(1) == ref.argmax(1)).mean()),
                "n": int(len(x))}
