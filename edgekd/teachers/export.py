"""`edgekd teacher export`: an edgekd teacher run folder -> an outside teacher a team can hand on.

The folder written holds `teacher.onnx` (one input per teacher modality, named after it, in the
model's own input layout and already normalised; outputs `logits` and `embedding`, dynamic batch)
and `teacher.yaml`, a card (`edgekd.teachers.card`) whose inputs restate edgekd's preprocessing:
time series `(N, T, C)` are normalised per channel with the run's fitted mean/std and laid out
NCT; images `(N, H, W, C)` in [0, 1] are normalised per channel and laid out NCHW. Audio inputs
are log-mel features, which a card cannot express, so a teacher reading audio is refused.

Before the folder is published, the exported model is run through `OutsideTeacher` on a few
synthetic windows and compared with the torch teacher on the same windows preprocessed the
edgekd way (`edgekd.modalities.preprocess`); a difference over `TOLERANCE` (relative to the
largest output) raises ExportError. The folder is built beside `out` and renamed into place in
one step, so a failed export leaves nothing behind; an existing `out` is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml

from edgekd.errors import ConfigError, ExportError
from edgekd.modalities import ModalitySpec, preprocess, raw_shape
from edgekd.teachers.card import CARD_FILE, RAW_LAYOUT, file_sha256, parse_card

ONNX_FILE = "teacher.onnx"
OPSET = 18
TOLERANCE = 1e-4  # max abs difference, relative to max(1, largest |torch output|)
CHECK_WINDOWS = 5  # not the export example's batch of 2: the check exercises the dynamic batch
_LAYOUT = {"timeseries": "NCT", "image": "NCHW"}


def _wrapper(model: Any, modalities: list[str]) -> Any:
    """An nn.Module taking one (N, *feature_shape) tensor per modality, in `modalities` order,
    and returning (logits, embedding)."""
    import torch

    class ExportedTeacher(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.teacher = model

        def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            embedding = self.teacher.forward_features(dict(zip(modalities, inputs, strict=True)))
            return self.teacher.classifier(embedding), embedding

    return ExportedTeacher().eval()


def card_inputs(specs: dict[str, ModalitySpec]) -> dict[str, dict[str, Any]]:
    """The card's `inputs:` restating edgekd's preprocessing of each modality in `specs`;
    ConfigError for audio (log-mel features are not a card's preprocessing)."""
    audio = [m for m, s in specs.items() if s.kind == "audio"]
    if audio:
        raise ConfigError(
            f"the teacher reads audio ({', '.join(audio)}): its input is log-mel features, which "
            "a teacher card cannot express (a card normalises and lays out raw windows only), so "
            "this teacher cannot be exported as an outside teacher"
        )
    inputs: dict[str, dict[str, Any]] = {}
    for m, spec in specs.items():
        entry: dict[str, Any] = {"modality": m}
        if spec.mean:
            entry["normalize"] = {"mean": [float(v) for v in spec.mean],
                                  "std": [float(v) for v in spec.std]}  # fmt: skip
        entry["layout"] = _LAYOUT[spec.kind]
        assert sorted(entry["layout"]) == sorted(RAW_LAYOUT[spec.kind])
        inputs[m] = entry
    return inputs


def _export_onnx(wrapper: Any, specs: dict[str, ModalitySpec], path: Path) -> None:
    import contextlib
    import io
    import warnings

    import torch

    from edgekd.modalities import feature_shape

    names = list(specs)
    example = tuple(torch.zeros(2, *feature_shape(specs[m])) for m in names)
    batch = torch.export.Dim("batch")
    dynamic = {"inputs": tuple({0: batch} for _ in names)}  # forward(*inputs)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper, example, str(path), input_names=names,
                output_names=["logits", "embedding"], dynamic_shapes=dynamic,
                external_data=False, opset_version=OPSET, dynamo=True, verbose=False,
            )  # fmt: skip
    except Exception as exc:  # the exporter raises many kinds
        raise ExportError(f"the teacher could not be exported to ONNX: {exc}") from exc
    import onnx

    graph = onnx.load(str(path)).graph
    fixed = [i.name for i in graph.input if not i.type.tensor_type.shape.dim[0].dim_param]
    fixed += [o.name for o in graph.output if not o.type.tensor_type.shape.dim[0].dim_param]
    if fixed:
        raise ExportError(f"the exported ONNX has a fixed batch size on {', '.join(fixed)}")


def _check_windows(spec: ModalitySpec, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` synthetic raw windows of `spec`, spread like its training data where fitted."""
    shape = (n, *raw_shape(spec))
    if spec.kind == "image":
        return rng.uniform(0.0, 1.0, shape).astype(np.float32)
    mean = np.asarray(spec.mean or (0.0,) * spec.channels, np.float32)
    std = np.asarray(spec.std or (1.0,) * spec.channels, np.float32)
    return (mean + std * rng.standard_normal(shape)).astype(np.float32)


def _verify(folder: Path, model: Any, specs: dict[str, ModalitySpec]) -> float:
    """Largest relative difference between the exported teacher (through its card) and the torch
    teacher on synthetic windows; ExportError over TOLERANCE."""
    import torch

    from edgekd.teachers.card import read_card
    from edgekd.teachers.teacher import OutsideTeacher

    rng = np.random.default_rng(0)
    raw = {m: _check_windows(s, CHECK_WINDOWS, rng) for m, s in specs.items()}
    outside = OutsideTeacher(read_card(folder), specs).outputs(raw)
    with torch.inference_mode():
        x = {m: torch.from_numpy(preprocess(s, raw[m])) for m, s in specs.items()}
        embedding = model.forward_features(x)
        want = {"logits": model.classifier(embedding).numpy(), "embedding": embedding.numpy()}
    got = {"logits": outside.logits, "embedding": outside.embedding}
    worst = 0.0
    for kind, ref in want.items():
        value = got[kind]
        if value is None or value.shape != ref.shape:
            raise ExportError(
                f"the exported teacher's {kind} have shape "
                f"{None if value is None else value.shape}, the torch teacher's {ref.shape}"
            )
        diff = float(np.max(np.abs(value - ref)) / max(1.0, float(np.max(np.abs(ref)))))
        if not diff <= TOLERANCE:
            raise ExportError(
                f"the exported teacher's {kind} differ from the torch teacher's by {diff:.2e} "
                f"(relative; the limit is {TOLERANCE:g}) on the same windows"
            )
        worst = max(worst, diff)
    return worst


def export_teacher(run: Path, out: Path, *, licence: str = "unspecified") -> Path:
    """Export the edgekd teacher run folder `run` as an outside teacher in the new folder `out`
    (`teacher.onnx` + `teacher.yaml`, see the module docstring); returns the card's path.

    ConfigError: `out` exists, `run` is not a teacher run, or the teacher reads audio.
    ExportError: the ONNX export fails or its outputs differ from the torch teacher's."""
    from edgekd.checkpoint import load_run
    from edgekd.io import (
        atomic_write_text,
        fsync_path,
        hidden_sibling,
        make_dirs,
        remove_tree,
        rename_path,
    )

    run, out = Path(run), Path(out)
    if out.exists() or out.is_symlink():
        raise ConfigError(f"{out} already exists; choose another --out or remove it")
    loaded = load_run(run, expect_role="teacher")
    sidecar = loaded.sidecar
    specs = {m: ModalitySpec.from_dict(d) for m, d in sidecar["specs"].items()}
    inputs = card_inputs(specs)
    make_dirs(out.parent)
    staging = hidden_sibling(out, "staging")
    staging.mkdir()
    try:
        _export_onnx(_wrapper(loaded.model, list(specs)), specs, staging / ONNX_FILE)
        fsync_path(staging / ONNX_FILE)
        card = {
            "source": "onnx",
            "name": run.resolve().name,
            "path": ONNX_FILE,
            "sha256": file_sha256(staging / ONNX_FILE),
            "licence": str(licence),
            "inputs": inputs,
            "outputs": {"logits": {"name": "logits"}, "embedding": {"name": "embedding"}},
            "labels": [str(label) for label in sidecar["labels"]],
        }
        parse_card(card, staging, f"{out / CARD_FILE}")  # the form check a reader will do
        atomic_write_text(staging / CARD_FILE, yaml.safe_dump(card, sort_keys=False))
        _verify(staging, loaded.model, specs)
        if out.exists() or out.is_symlink():
            raise ConfigError(f"{out} appeared while the teacher was exported; nothing written")
        rename_path(staging, out)
    except BaseException:
        remove_tree(staging)
        raise
    return out / CARD_FILE
