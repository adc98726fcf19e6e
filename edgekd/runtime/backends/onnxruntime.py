"""ONNX Runtime (CPU) backend: FP32 ONNX and the int8 QDQ ONNX of the bundle.

Defaults aim at streaming latency on small CPUs: one intra-op thread, one inter-op thread,
sequential execution (more threads made batch-1 p99 10x worse on 2 cores). An InferenceSession's
`run` is thread-safe, so all runners share one session.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekd.errors import BackendUnavailable
from edgekd.runtime.backends import Engine, Runner, import_or_unavailable
from edgekd.runtime.bundle import Bundle

NAME = "onnxruntime"
PACKAGE_HINT = "pip install 'edgekd[onnxruntime]'"
_PRECISIONS = ("int8", "fp32")


def check_available() -> None:
    import_or_unavailable("onnxruntime", NAME, PACKAGE_HINT)


def precisions(bundle: Bundle) -> list[str]:
    return [p for p in _PRECISIONS if bundle.find("onnx", p, NAME) is not None]


def open(bundle: Bundle, precision: str, *, threads: int | None, cache_dir: Path | None) -> Engine:
    """Create the session from the checked bytes of the bundle's ONNX model of `precision`
    (cache_dir is unused: ONNX Runtime compiles in well under a second for edge-sized models)."""
    ort = import_or_unavailable("onnxruntime", NAME, PACKAGE_HINT)
    artifact = bundle.find("onnx", precision, NAME)
    if artifact is None:
        raise BackendUnavailable(f"{bundle.root} has no {precision} ONNX model for {NAME}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # QLinearConv fusion
    opts.log_severity_level = 3
    # the checked bytes themselves: a path would be reopened after the check
    session = ort.InferenceSession(bundle.read(artifact), opts,
                                   providers=["CPUExecutionProvider"])
    in_name = bundle.manifest["io"]["input"]["name"]
    out_name = bundle.manifest["io"]["output"]["name"]

    def run(features: np.ndarray) -> np.ndarray:
        return session.run([out_name], {in_name: features})[0]

    def new_runner() -> Runner:
        return run  # shared: InferenceSession.run may be called from several threads at once

    return Engine(
        backend=NAME, precision=precision, artifact=artifact.path, new_runner=new_runner,
        details={"onnxruntime": ort.__version__, "threads": opts.intra_op_num_threads,
                 "providers": session.get_providers()},
    )
