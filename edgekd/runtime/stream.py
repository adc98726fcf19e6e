"""Streaming classification: push raw samples in chunks of any length, get one event per hop.

Windows start at stream samples 0, hop, 2*hop, ...; the window starting at s is classified as
soon as sample s + window - 1 has been pushed, with exactly the preprocessing and model of
`Model.predict`, so the events equal `predict` on the same windows whatever the chunking.

Memory and cost are bounded: samples go into one preallocated buffer of
`window + hop * (max_batch - 1)` samples; all windows completed by a push are classified in
batched inference calls of at most `max_batch` windows (strided views, no per-window copies), and
only the unfinished tail (< window samples) is moved back to the buffer start afterwards.

Audio whose `hop` is a whole number of log-mel hops (`hop_length`) has its front end computed
incrementally: consecutive windows then share log-mel frames, so each frame is computed once and
kept in a frame buffer; a window costs only the frames its new samples add (hop / hop_length
frames, all in one rfft). Other hops fall back to the log-mel of whole windows. Either way the
features equal `preprocess` of the same windows up to float rounding.

Not thread-safe: one stream per thread. Each stream owns its runner (e.g. its own OpenVINO
InferRequest), so many streams of one model may run in parallel threads.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from edgekd.errors import InputError
from edgekd.modalities import ModalitySpec, audio_frames, log_mel_frames, preprocess, raw_shape
from edgekd.runtime.prediction import softmax

if TYPE_CHECKING:  # a stream only reads its model's spec, engine and labels; model.py imports us
    from edgekd.runtime.model import Model


class StreamEvent(NamedTuple):
    """One classified window. `t_end_s` = samples consumed at the window's end / rate_hz
    (stream time since creation or `reset`); `end_sample` is that sample count.
    (A NamedTuple: immutable and about 5x cheaper to create than a frozen dataclass.)"""

    label: str
    index: int
    score: float
    probs: np.ndarray  # (K,) float32, read-only
    t_end_s: float
    end_sample: int


class Stream:
    """Stateful window assembler over a `Model`; create it with `Model.stream()`."""

    def __init__(self, model: Model, *, rate_hz: float | None = None, max_batch: int = 64) -> None:
        spec = model.spec
        if spec.kind not in ("timeseries", "audio"):
            raise InputError(f"{spec.name} is a {spec.kind} modality without a time axis: "
                             "use predict() per item, streams need timeseries or audio")
        if rate_hz is not None and not math.isclose(rate_hz, spec.rate_hz, rel_tol=1e-6):
            raise InputError(f"{spec.name}: the stream's samples are at {rate_hz:g} Hz but the "
                             f"model expects {spec.rate_hz:g} Hz; resample the input first")
        if max_batch < 1:
            raise InputError(f"max_batch must be >= 1, got {max_batch}")
        self.model = model
        self.spec = spec
        # all windows of one classification go into one engine call
        self.max_batch = max_batch = min(max_batch, model.engine.max_batch)
        self._run = model.engine.new_runner()
        self._tail = raw_shape(spec)[1:]  # per-sample shape: (C,) timeseries, () audio
        self._capacity = spec.window + spec.hop * (max_batch - 1)
        self._labels = model.labels
        self._buf = np.empty((self._capacity, *self._tail), dtype=np.float32)
        incremental = spec.kind == "audio" and spec.hop % spec.hop_length == 0
        self._mel = _LogMelFrames(spec, max_batch) if incremental else None
        self.reset()

    # -- public ----------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget all buffered samples; stream time restarts at 0."""
        self._n = 0  # valid samples in the buffer; buf[0] is stream sample `_origin`
        self._origin = 0  # stream index of buf[0] == start of the next window
        self._skip = 0  # samples still to drop before the next window (only when hop > window)
        self._consumed = 0
        self._dtype_fixed = False
        if self._mel is not None:
            self._mel.reset()

    @property
    def samples_consumed(self) -> int:
        return self._consumed

    @property
    def pending_samples(self) -> int:
        """Buffered samples that do not yet complete a window (dropped by `flush`)."""
        return self._n

    def push(self, chunk: np.ndarray) -> list[StreamEvent]:
        """Append samples and classify every window they complete, oldest first.

        chunk: timeseries (n, channels); audio (n,) or (n, 1); n >= 1, any length (one sample,
        part of a window, or many windows). InputError (and no change of state) for an empty
        chunk, wrong rank / channels / dtype, or NaN / inf.
        """
        chunk = self._check(chunk)
        events: list[StreamEvent] = []
        pos, total = 0, len(chunk)
        while pos < total:
            if self._skip:
                drop = min(self._skip, total - pos)
                pos += drop
                self._skip -= drop  # `_origin` already points past the skipped samples
                self._consumed += drop
                continue
            take = min(self._capacity - self._n, total - pos)
            self._buf[self._n : self._n + take] = chunk[pos : pos + take]
            self._n += take
            self._consumed += take
            pos += take
            if self._n >= self.spec.window:
                self._classify(events)
        return events

    def flush(self) -> list[StreamEvent]:
        """End of input. Returns the events still pending, which is always [] (push classifies
        every full window before it returns, and a partial window is never padded and
        classified: that would invent samples). Then drops the partial tail and resets, so the
        stream can take the next recording from t = 0."""
        self.reset()
        return []

    # -- internals -------------------------------------------------------------------------------
    def _check(self, chunk: np.ndarray) -> np.ndarray:
        # Runs on every push: error texts are built only when something is wrong.
        spec = self.spec
        if spec.kind == "audio" and isinstance(chunk, np.ndarray) and chunk.ndim == 2 \
                and chunk.shape[1] == 1:
            chunk = chunk[:, 0]
        if not isinstance(chunk, np.ndarray) or chunk.ndim != 1 + len(self._tail) \
                or chunk.shape[1:] != self._tail:
            got = chunk.shape if isinstance(chunk, np.ndarray) else type(chunk).__name__
            raise InputError(f"{self._where()}: expected a chunk of shape {self._want()}, got "
                             f"{got}; a single sample needs a leading axis of length 1")
        if len(chunk) == 0:
            raise InputError(f"{self._where()}: empty chunk; push at least one sample")
        kind = chunk.dtype.kind
        if kind not in "fiu" or (spec.kind == "audio" and kind != "f" and chunk.dtype != np.int16):
            allowed = "float or int16 PCM" if spec.kind == "audio" else "float or integer"
            raise InputError(f"{self._where()}: samples of dtype {chunk.dtype}; expected {allowed}")
        # A float64 sum is finite iff every sample is (float32 data cannot overflow it); the
        # elementwise test runs only to confirm and locate a failure.
        if kind == "f" and not np.isfinite(np.add.reduce(chunk, axis=None, dtype=np.float64)):
            bad = ~np.isfinite(chunk)
            if bad.any():
                first = int(np.argwhere(bad)[0][0])
                raise InputError(f"{self._where()}: chunk contains NaN or inf ({int(bad.sum())} "
                                 f"values, first at sample {first} of the chunk = stream sample "
                                 f"{self._consumed + first}); nothing was consumed")
        # Integer samples are buffered as they are, so that preprocess scales them exactly as
        # predict would (e.g. int16 PCM / 32768); floats are buffered as float32.
        dtype = np.dtype(np.float32) if kind == "f" else chunk.dtype
        if dtype != self._buf.dtype:
            if self._dtype_fixed:
                raise InputError(f"{self._where()}: got {chunk.dtype} samples after "
                                 f"{self._buf.dtype} ones; keep one sample type per stream "
                                 "(or reset())")
            self._buf = np.empty((self._capacity, *self._tail), dtype=dtype)
        self._dtype_fixed = True
        return chunk

    def _where(self) -> str:
        return f"{self.spec.name} ({self.spec.kind}) stream"

    def _want(self) -> str:
        return f"(n, {self.spec.channels})" if self.spec.kind == "timeseries" else "(n,) or (n, 1)"

    def _windows(self, m: int) -> np.ndarray:
        """The m full windows at the buffer start, `hop` apart, as a view (no copy)."""
        window = self.spec.window
        if m == 1:  # the common live case: a plain slice
            return self._buf[None, :window]
        step = self._buf.strides[0]
        return np.ndarray((m, window, *self._tail), self._buf.dtype, self._buf, 0,
                          (self.spec.hop * step, step, *self._buf.strides[1:]))

    def _classify(self, events: list[StreamEvent]) -> None:
        """Classify all full windows in the buffer (<= max_batch by construction), then keep
        only the samples the next window needs."""
        window, hop = self.spec.window, self.spec.hop
        m = (self._n - window) // hop + 1
        # m <= max_batch <= engine.max_batch by construction: one call, no Model.infer split
        if self._mel is not None:
            features = self._mel.features(self._buf, m)
        else:
            # Every buffered sample passed `_check` on its way in: no second validation pass.
            features = preprocess(self.spec, self._windows(m), validate=False)
        probs = softmax(self._run(features))
        probs.flags.writeable = False
        index = probs.argmax(axis=1)
        rate = self.spec.rate_hz
        labels = self._labels
        for j in range(m):
            k = int(index[j])
            end = self._origin + j * hop + window
            events.append(StreamEvent(labels[k], k, float(probs[j, k]), probs[j], end / rate, end))
        advance = m * hop
        if self._mel is not None:
            self._mel.drop(advance // self.spec.hop_length)
        if advance < self._n:
            keep = self._n - advance
            self._buf[:keep] = self._buf[advance : self._n]  # numpy handles the overlap
            self._n = keep
        else:
            self._skip = advance - self._n
            self._n = 0
        self._origin += advance


class _LogMelFrames:
    """The normalised log-mel frames of an audio stream, each computed once. Frames are
    computed when a window needs them, all new ones in one call: per-frame calls as samples
    arrive would cut the latency of the push that completes a window by a few tens of us but
    multiply the total cost by the numpy call overhead of each small call.

    Row r of `rows` holds the frame starting `r * hop_length` samples after the stream buffer's
    first sample (the start of the next window). Needs `hop % hop_length == 0`, so that every
    window's frames lie on that one grid.
    """

    def __init__(self, spec: ModalitySpec, max_batch: int) -> None:
        self.spec = spec
        self.per_window = audio_frames(spec)
        self.step = spec.hop // spec.hop_length  # frames between window starts
        # a full sample buffer (window + hop * (max_batch - 1)) holds exactly this many frames
        capacity = self.per_window + self.step * (max_batch - 1)
        self.rows = np.empty((capacity, spec.n_mels), dtype=np.float32)
        self.reset()

    def reset(self) -> None:
        self.count = 0  # valid rows

    def _compute(self, buf: np.ndarray, ready: int) -> None:
        """Compute rows `count` to `ready` - 1 from the buffered samples."""
        spec = self.spec
        step = buf.strides[0]
        frames = np.ndarray((ready - self.count, spec.n_fft), buf.dtype, buf,
                            self.count * spec.hop_length * step, (spec.hop_length * step, step))
        if buf.dtype != np.float32:  # int16 PCM, scaled as `preprocess` scales it
            frames = frames.astype(np.float32) * np.float32(1.0 / 32768.0)
        new = log_mel_frames(spec, frames)
        if spec.mean:  # the same float32 operations as `preprocess`, frame by frame
            mean, inv_std = spec.normaliser
            new -= mean[0, :, 0]
            new *= inv_std[0, :, 0]
        self.rows[self.count : ready] = new
        self.count = ready

    def features(self, buf: np.ndarray, m: int) -> np.ndarray:
        """Model input `(m, n_mels, frames)` of the m windows starting at `buf[0]`, `hop`
        apart; transforms only the frames not computed for earlier windows."""
        need = (m - 1) * self.step + self.per_window
        if need > self.count:
            self._compute(buf, need)
        row = self.rows.strides[0]
        windows = np.ndarray((m, self.spec.n_mels, self.per_window), np.float32, self.rows, 0,
                             (self.step * row, self.rows.strides[1], row))
        return np.ascontiguousarray(windows)

    def drop(self, frames: int) -> None:
        """Forget the first `frames` rows: the buffer start moved on by that many frames."""
        if frames >= self.count:
            self.count = 0
        else:
            self.rows[: self.count - frames] = self.rows[frames : self.count]
            self.count -= frames
