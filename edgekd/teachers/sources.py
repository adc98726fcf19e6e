"""One small adapter per teacher source, each a callable `model inputs -> named outputs`.

- `onnx`: ONNX Runtime, inputs by name (a model from any framework: torch, skl2onnx, tf2onnx).
- `torch_export`: a `torch.export` `.pt2` file; inputs positional, in the card's order.
- `python`: `factory` ("package.module:function", importable from the card's folder) returns an
  `nn.Module`; `path` (optional) holds its weights (safetensors, or a state dict read with
  `torch.load(weights_only=True)`); inputs positional, in the card's order.
- `outputs`: precomputed outputs in an `.npz` (`keys`: "sample id#window index" per row, and one
  array per output name); looked up by window key, never run.

Torch teachers run in eval mode without gradients on their own device (`device: auto` takes
CUDA where present), whatever device the student trains on; outputs come back as float32 numpy.
A torch model's output is named by a key of a returned dict or a position ("0", "1") in a
returned tuple (a single tensor is "0").
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgekd.errors import ConfigError, MissingExtra
from edgekd.teachers.card import TeacherCard

Named = dict[str, np.ndarray]


def _torch_device(card: TeacherCard) -> Any:
    import torch

    if card.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("the teacher card asks for device: cuda, but torch sees no CUDA device")
    use_cuda = card.device == "cuda" or (card.device == "auto" and torch.cuda.is_available())
    return torch.device("cuda" if use_cuda else "cpu")


def _torch_threads() -> int:
    """torch's intra-op thread count where torch is loaded, else 0 (ONNX Runtime's default)."""
    torch = sys.modules.get("torch")
    return int(torch.get_num_threads()) if torch is not None else 0


def _torch_outputs(value: Any) -> Named:
    import torch

    if isinstance(value, torch.Tensor):
        value = (value,)
    if isinstance(value, Mapping):
        items = value.items()
    elif isinstance(value, tuple | list):
        items = ((str(i), v) for i, v in enumerate(value))
    else:
        raise ConfigError(
            f"the teacher returned {type(value).__name__}; expected a tensor, a tuple or a dict"
        )
    return {
        str(k): v.detach().float().cpu().numpy() for k, v in items if isinstance(v, torch.Tensor)
    }


class OnnxSource:
    """An ONNX model run by ONNX Runtime (CUDA provider where asked for and present)."""

    def __init__(self, card: TeacherCard) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise MissingExtra(
                "an ONNX teacher needs onnxruntime: pip install 'edgekd[onnxruntime]'"
            ) from exc
        assert card.file is not None
        providers = ["CPUExecutionProvider"]
        if card.device != "cpu" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        elif card.device == "cuda":
            raise ConfigError(
                "the teacher card asks for device: cuda, but onnxruntime has no CUDA provider "
                "(pip install onnxruntime-gpu)"
            )
        options = ort.SessionOptions()
        options.log_severity_level = 3
        # As many threads as the training process gives torch (`--threads`): ONNX Runtime's own
        # default, every core, oversubscribes a machine that runs several trainings at once.
        options.intra_op_num_threads = _torch_threads()
        try:
            self.session = ort.InferenceSession(
                card.file.read_bytes(), sess_options=options, providers=providers
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ConfigError(f"{card.file} is not a loadable ONNX model: {exc}") from exc
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.input_types = {i.name: i.type for i in self.session.get_inputs()}

    def __call__(self, inputs: Named) -> Named:
        feed = {
            name: x.astype(np.float64) if self.input_types[name] == "tensor(double)" else x
            for name, x in inputs.items()
        }
        values = self.session.run(None, feed)
        return {n: np.asarray(v, dtype=np.float32) for n, v in zip(self.output_names, values,
                                                                   strict=True)}  # fmt: skip


class TorchSource:
    """An `nn.Module` (built by a factory, or a torch.export program) called positionally."""

    def __init__(self, module: Any, card: TeacherCard, input_names: list[str]) -> None:
        import torch

        self.device = _torch_device(card)
        self.module = module.to(self.device) if hasattr(module, "to") else module
        if hasattr(self.module, "eval"):
            try:
                self.module.eval()
            except NotImplementedError:  # an exported program's module has no train/eval modes
                pass
        if isinstance(self.module, torch.nn.Module):
            for p in self.module.parameters():
                p.requires_grad_(False)
        self.input_names = input_names
        self.output_names: list[str] = []

    def __call__(self, inputs: Named) -> Named:
        import torch

        args = [torch.from_numpy(inputs[n]).to(self.device) for n in self.input_names]
        with torch.inference_mode():
            return _torch_outputs(self.module(*args))


def _torch_export(card: TeacherCard) -> TorchSource:
    import torch

    assert card.file is not None
    try:
        program = torch.export.load(str(card.file))
    except Exception as exc:  # torch raises many kinds for a bad archive
        raise ConfigError(f"{card.file} is not a torch.export program (.pt2): {exc}") from exc
    return TorchSource(program.module(), card, [i.name for i in card.inputs])


def _load_weights(module: Any, file: Path) -> None:
    import torch

    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(file))
    else:
        state = torch.load(str(file), map_location="cpu", weights_only=True)
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise ConfigError(f"{file} does not fit the factory's model: {exc}") from exc


def _python(card: TeacherCard) -> TorchSource:
    module_name, _, attr = str(card.factory).partition(":")
    # A class in the user's repo: importable from the card's folder.
    sys.path.insert(0, str(card.dir))
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"teacher factory {card.factory!r} cannot be imported from {card.dir}: {exc}"
        ) from exc
    finally:
        sys.path.remove(str(card.dir))
    module = factory(**card.kwargs)
    if card.file is not None:
        _load_weights(module, card.file)
    return TorchSource(module, card, [i.name for i in card.inputs])


class OutputsSource:
    """Precomputed outputs looked up by window key ("sample id#window index")."""

    def __init__(self, card: TeacherCard) -> None:
        assert card.file is not None
        try:
            with np.load(card.file, allow_pickle=False) as z:
                self.arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{card.file} is not a readable .npz of teacher outputs: {exc}") \
                from exc  # fmt: skip
        if "keys" not in self.arrays:
            raise ConfigError(f"{card.file} has no `keys` array (one 'id#window' per row)")
        keys = self.arrays.pop("keys").astype(str)
        self.arrays.pop("window_sha", None)  # a cache's content digests, not an output
        self.row = {k: i for i, k in enumerate(keys)}
        if len(self.row) != len(keys):
            raise ConfigError(f"{card.file}: `keys` repeats a window key")
        for name, a in self.arrays.items():
            if len(a) != len(keys):
                raise ConfigError(f"{card.file}: {name} has {len(a)} rows for {len(keys)} keys")
        self.output_names = list(self.arrays)

    def lookup(self, keys: np.ndarray) -> Named:
        missing = [k for k in keys if k not in self.row]
        if missing:
            raise ConfigError(
                f"the teacher's precomputed outputs have no row for {len(missing)} of "
                f"{len(keys)} windows (e.g. {missing[0]!r}): they were computed on other data or "
                "window settings; recompute them (edgekd teacher cache)"
            )
        rows = np.fromiter((self.row[k] for k in keys), dtype=np.int64, count=len(keys))
        return {n: a[rows].astype(np.float32) for n, a in self.arrays.items()}


SOURCES: dict[str, Callable[[TeacherCard], Any]] = {
    "onnx": OnnxSource,
    "torch_export": _torch_export,
    "python": _python,
    "outputs": OutputsSource,
}


def open_source(card: TeacherCard) -> Any:
    """The adapter for `card.source` (its file's sha256 is checked first)."""
    from edgekd.teachers.card import verify_sha256

    verify_sha256(card)
    return SOURCES[card.source](card)
