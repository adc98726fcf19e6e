"""Torch -> ONNX with the dynamo exporter: one input "input" (batch, ...), one output "logits".

The batch dimension is a named symbol ("batch") so one file serves batch 1 streaming and large
batches. The exporter silently fixes the batch at the example's size when the dynamic shape is
lost, so every export is checked afterwards.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgekd.constants import ONNX_OPSET
from edgekd.errors import ExportError
from edgekd.io import atomic_write_bytes, make_dirs

if TYPE_CHECKING:
    import onnx
    import torch

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
BATCH_DIM = "batch"


def export_onnx(
    model: torch.nn.Module, example: torch.Tensor, path: Path, *, opset: int = ONNX_OPSET
) -> Path:
    """Export `model` (eval mode: BatchNorm and dropout as at inference) to `path`, self-contained
    (no external-data side file), with a symbolic batch dimension.

    `example` is a (B, *feature_shape) float32 tensor with B >= 2: torch.export specialises a
    size-1 dimension to the constant 1. ExportError if export fails or the batch is not symbolic.
    """
    import torch

    if example.ndim < 1 or example.shape[0] < 2:
        raise ExportError(
            f"export example must have a batch of at least 2, got {tuple(example.shape)}"
        )
    # pt2e models carry their mode in the graph (move_exported_model_to_eval), not in .training.
    if model.training and not isinstance(model, torch.fx.GraphModule):
        raise ExportError("export the model in eval mode (call model.eval() first)")
    path = Path(path)
    make_dirs(path.parent)
    batch = torch.export.Dim(BATCH_DIM)
    log = io.StringIO()
    try:
        # The exporter prints progress to stdout and library deprecation chatter to stderr; the
        # CLI shows its own progress instead (a failure still reports the exporter's log).
        with contextlib.redirect_stdout(log), quiet_toolchain():
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=True,
                external_data=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},),
                verbose=False,
            )
    except Exception as exc:  # the exporter raises many unrelated types
        raise ExportError(
            f"torch.onnx.export failed for {type(model).__name__}: {exc}\n{log.getvalue()[-2000:]}"
        ) from exc
    side_file = path.with_name(path.name + ".data")
    if side_file.exists():
        raise ExportError(
            f"the exporter wrote external data {side_file}; the bundle needs one file"
        )
    strip_node_metadata(path)
    check_dynamic_batch(path)
    return path


def strip_node_metadata(path: Path) -> None:
    """Drop the exporter's per-node debug metadata (Python stack traces with absolute source
    paths, FX node text) in place: it would leak the build machine's file layout into the bundle
    and is about half of a small model's file size. The graph is unchanged."""
    import onnx

    model = onnx.load(str(path))
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    atomic_write_bytes(path, model.SerializeToString())  # rewritten in place: never half of it


# Loggers that talk about the toolchain itself (optional torchvision ops, torchao's CUDA kernels
# on a CPU machine, pytree deprecations, NNCF's progress), not about the user's model.
_CHATTY_LOGGERS = ("torch.onnx", "torchao", "torch.utils._pytree", "nncf")


@contextlib.contextmanager
def quiet_toolchain() -> Iterator[None]:
    """Silence toolchain warnings and log chatter during export / QAT; errors still raise."""
    loggers = [logging.getLogger(name) for name in _CHATTY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            for category in (FutureWarning, DeprecationWarning, UserWarning):
                warnings.simplefilter("ignore", category)
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def check_dynamic_batch(model: onnx.ModelProto | str | Path) -> None:
    """ExportError unless the model has exactly one input "input" and one output "logits" whose
    first dimension is a symbol (not a fixed number)."""
    import onnx

    proto = (
        onnx.load(str(model), load_external_data=False) if isinstance(model, (str, Path)) else model
    )
    graph = proto.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    for kind, values, name in (
        ("input", inputs, INPUT_NAME),
        ("output", graph.output, OUTPUT_NAME),
    ):
        if [v.name for v in values] != [name]:
            raise ExportError(f"ONNX {kind}s are {[v.name for v in values]}, expected [{name!r}]")
        dims = values[0].type.tensor_type.shape.dim
        if not dims or not dims[0].dim_param or dims[0].HasField("dim_value"):
            shown = [d.dim_param or d.dim_value for d in dims]
            raise ExportError(
                f"ONNX {kind} {name!r} has shape {shown}: the batch dimension is not symbolic "
                "(export with dynamic_shapes and a batch of at least 2)"
            )


def ort_session(path: Path, *, threads: int = 1) -> object:
    """A CPU ONNX Runtime session with `threads` intra-op threads (full graph optimisation)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def onnx_logits(path: Path, x: np.ndarray, *, batch: int = 256) -> np.ndarray:
    """Logits (N, K) of the ONNX model at `path` on ONNX Runtime CPU for features x (N, ...)."""
    session = ort_session(path, threads=2)
    x = np.ascontiguousarray(x, dtype=np.float32)
    parts = [
        session.run([OUTPUT_NAME], {INPUT_NAME: x[i : i + batch]})[0]  # type: ignore[attr-defined]
        for i in range(0, len(x), batch)
    ]
    return np.concatenate(parts)


def max_abs_diff_vs_torch(model: torch.nn.Module, path: Path, x: np.ndarray) -> float:
    """max |torch logits - ONNX Runtime logits| over the features x (N, ...)."""
    import torch

    with torch.no_grad():
        ref = model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()
    return float(np.abs(onnx_logits(path, x) - ref).max())
