"""edgekd's torch-free runtime: load a bundle, classify windows, stream samples, benchmark.

    import edgekd.runtime as rt
    model = rt.load("out/har.edgekd", backend="auto", precision="int8")  # verifies sha256 first
    pred = model.predict(window)           # (T, C) -> Prediction(probs (K,), index, labels)
    stream = model.stream()
    for ev in stream.push(chunk):          # any chunk length
        print(ev.label, ev.score, ev.t_end_s)

Imports numpy and the standard library only; backend libraries (openvino, onnxruntime,
tensorrt) are imported when a backend is opened, and torch never.
"""

from edgekd.runtime.backends import BACKENDS, cache_dir
from edgekd.runtime.bundle import Artifact, Bundle, read_bundle, verify_bundle
from edgekd.runtime.model import Model, Prediction, load, softmax
from edgekd.runtime.stream import Stream, StreamEvent

__all__ = [
    "BACKENDS",
    "Artifact",
    "Bundle",
    "Model",
    "Prediction",
    "Stream",
    "StreamEvent",
    "cache_dir",
    "load",
    "read_bundle",
    "softmax",
    "verify_bundle",
]
