"""A loaded bundle: `predict` on raw windows, `stream()` for live samples, `self_check`.

Thread safety: a `Model` may be shared by threads for `predict` (each thread gets its own
backend runner, e.g. its own OpenVINO InferRequest); a `Stream` belongs to one thread (it owns
its buffer and its own runner).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekd.errors import BackendUnavailable, BundleError, ConfigError, InputError
from edgekd.modalities import ModalitySpec, preprocess, raw_shape
from edgekd.runtime.backends import BACKENDS, Engine, Runner, backend_module, pick_precision
from edgekd.runtime.backends import cache_dir as default_cache_dir
from edgekd.runtime.bundle import (
    MANIFEST,
    PRECISIONS,
    Bundle,
    check_min_version,
    load_npz,
    read_bundle_once,
    retry_if_replaced,
)
from edgekd.runtime.integrity import resolve_trusted_keys

if TYPE_CHECKING:  # stream.py imports this module
    from edgekd.runtime.stream import Stream


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
        from edgekd.runtime.stream import Stream

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


def _check_model_sections(bundle: Bundle) -> ModalitySpec:
    """The bundle's modality spec, and its labels agree with the model output (BundleError)."""
    try:
        spec = ModalitySpec.from_dict(bundle.modality)
    except ConfigError as exc:
        raise BundleError(f"{bundle.root}: bad modality section: {exc}") from exc
    out_shape = bundle.manifest["io"]["output"]["shape"]
    if out_shape and isinstance(out_shape[-1], int) and out_shape[-1] != len(bundle.labels):
        raise BundleError(f"{bundle.root}: the model outputs {out_shape[-1]} classes but the "
                          f"manifest lists {len(bundle.labels)} labels")
    return spec


def _open_engine(name: str, bundle: Bundle, precision: str | None, threads: int | None,
                 cache: Path) -> Engine:
    """Compile `bundle` on backend `name`; BackendUnavailable if it is missing or has no
    artifact of the wanted precision."""
    module = backend_module(name)
    module.check_available()
    offered = module.precisions(bundle)
    chosen = pick_precision(offered, precision, bundle.target)
    if chosen is None:
        raise BackendUnavailable(f"{name} has no {precision or 'usable'} model in {bundle.root} "
                                 f"(it offers: {', '.join(offered) or 'nothing'})")
    return module.open(bundle, chosen, threads=threads, cache_dir=cache)


def _read(bundle: str | Path | Bundle, trusted_keys: Sequence[str | Path] | None,
          min_version: int | None, allow_rollback: bool, cache: Path) -> Bundle:
    """The bundle, digest-checked (and signature-, version- and rollback-checked when they
    apply); files unhashed. A Bundle already read under the same trust is used as it is."""
    keys = resolve_trusted_keys(trusted_keys)
    if isinstance(bundle, Bundle) and (bundle.signer is not None or not keys):
        check_min_version(bundle.version, min_version, bundle.root / MANIFEST)
        return bundle
    root = bundle.root if isinstance(bundle, Bundle) else bundle
    # one attempt: `load` retries the read and the compile together after a publish
    return read_bundle_once(root, verify=False, trusted_keys=keys, min_version=min_version,
                            allow_rollback=allow_rollback, cache_dir=cache)


def load(
    bundle: str | Path | Bundle,
    backend: str = "auto",
    precision: str | None = None,
    threads: int | None = None,
    cache_dir: str | Path | None = None,
    trusted_keys: Sequence[str | Path] | None = None,
    min_version: int | None = None,
    allow_rollback: bool = False,
) -> Model:
    """Check the bundle and compile it on a backend.

    Checks, before anything is compiled: the manifest digest, the signature when trusted keys
    apply, the schema, the version, and the size and sha256 of golden.npz and of each file the
    backend loads (not every artifact: the others are never read). Each file is read once and
    the checked bytes are what the backend compiles. A publish replacing the bundle folder
    during the load makes it start again from the new bundle.
    backend: "auto" (TensorRT if a CUDA GPU and TensorRT are present, else OpenVINO, else ONNX
    Runtime) or one of "tensorrt", "openvino", "onnxruntime".
    precision: None = the manifest target's precision if this backend has it, else the best
    available (int8 > fp16 > fp32); "fp32", "fp16", "bf16", "int8"; or "auto": the fastest
    artifact here within the export's accuracy budget, measured once per bundle and device
    and cached (see `edgekd.runtime.autoselect`).
    threads: CPU inference threads (default 1: lowest, steadiest streaming latency).
    cache_dir: compiled engines, sealed OpenVINO blobs and the rollback record (default
    $EDGEKD_CACHE or XDG cache).
    trusted_keys: Ed25519 public key files (PEM); a bundle not signed by one of them is refused.
    None = $EDGEKD_TRUSTED_KEYS (path list); [] = no signature required.
    min_version: refuse a bundle whose manifest `version` is lower (or that has none).
    allow_rollback: load a signed bundle older than the newest one of its signer read on this
    device (refused by default; see `edgekd.runtime.integrity.check_rollback`): turns the
    rollback guard off, which also refuses a signed bundle where the cache has no usable seal
    key to keep its record.
    Raises BundleError, BackendUnavailable (with the package to install) or ConfigError.
    """
    t0 = time.perf_counter()
    if precision is not None and precision != "auto" and precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose auto or one of "
                          f"{', '.join(PRECISIONS)}")
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be >= 1, got {threads}")
    if backend != "auto":
        backend_module(backend)  # ConfigError for an unknown name before any file is read
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()

    def attempt(n: int) -> Model:
        source = bundle.root if n and isinstance(bundle, Bundle) else bundle
        b = _read(source, trusted_keys, min_version, allow_rollback, cache)
        with b.folder.replacement_check():
            return _compile(b, backend, precision, threads, cache, t0)

    return retry_if_replaced(attempt)


def _compile(b: Bundle, backend: str, precision: str | None, threads: int | None, cache: Path,
             t0: float) -> Model:
    spec = _check_model_sections(b)
    b.read_data("golden")  # checks golden.npz now: self_check and auto timing use these bytes
    if precision == "auto":
        from edgekd.runtime.autoselect import choose

        def open_one(name: str, prec: str) -> Engine:
            return _open_engine(name, b, prec, threads, cache)

        engine, selection = choose(b, backend, threads, cache, open_one)
        return Model(b, engine, spec, time.perf_counter() - t0, selection)
    from edgekd.runtime.probe import driver_library_present

    names = BACKENDS if backend == "auto" else (backend,)
    reasons = []
    for name in names:
        if backend == "auto" and name == "tensorrt" and not driver_library_present():
            reasons.append(f"{name}: no CUDA driver library")  # no probe subprocess needed
            continue
        try:
            engine = _open_engine(name, b, precision, threads, cache)
        except BackendUnavailable as exc:
            if backend != "auto":
                raise
            reasons.append(f"{name}: {exc}")
            continue
        return Model(b, engine, spec, time.perf_counter() - t0)
    raise BackendUnavailable("no backend can run this bundle: " + "; ".join(reasons))
