"""edgekd's torch-free runtime: load a bundle, classify windows, stream samples, benchmark.

    import edgekd.runtime as rt
    model = rt.load("out/har.edgekd", backend="auto", precision="int8")  # checks before loading
    pred = model.predict(window)           # (T, C) -> Prediction(probs (K,), index, labels)
    stream = model.stream()
    for ev in stream.push(chunk):          # any chunk length
        print(ev.label, ev.score, ev.t_end_s)

`load` checks the manifest digest, the signature when trusted keys are given
(`trusted_keys=[...]` or $EDGEKD_TRUSTED_KEYS), the version (`min_version`, and no rollback of a
signed bundle), and the sha256 of every file it uses; backends compile those checked bytes.
`precision="auto"` picks the fastest artifact here within the export's accuracy budget.

Imports numpy and the standard library only; backend libraries (openvino, onnxruntime,
tensorrt) are imported when a backend is opened, `cryptography` when a key is used, and torch
never.
"""

from edgekd.runtime.backends import BACKENDS, cache_dir
from edgekd.runtime.bundle import Artifact, Bundle, read_bundle, verify_bundle
from edgekd.runtime.loader import load
from edgekd.runtime.model import Model
from edgekd.runtime.prediction import Prediction, softmax
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
