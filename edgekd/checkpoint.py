"""Run folders: weights in safetensors, everything else in JSON; never unpickled.

Layout of a run folder (see docs/architecture.md):
- `model.safetensors` + `checkpoint.json`: the selected (best-on-validation) model and its sidecar.
- `train_state.safetensors`: the last finished epoch (model, optimizer, RNG tensors) with its
  scalar state as JSON metadata, in ONE file so that a crash can never pair the weights of one
  epoch with the optimizer of another. `--resume` continues from it.
- `config.yaml`, `metrics.json`, `history.json`.
Every file is written atomically (temp file + rename).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from edgekd import __version__
from edgekd.config import RunConfig, from_dict
from edgekd.errors import ConfigError
from edgekd.io import atomic_write_bytes, atomic_write_json

MODEL_FILE = "model.safetensors"
SIDECAR_FILE = "checkpoint.json"
STATE_FILE = "train_state.safetensors"
CONFIG_FILE = "config.yaml"


@dataclass
class Run:
    """A loaded run folder: the selected model (eval mode), its sidecar and config."""

    dir: Path
    model: torch.nn.Module
    sidecar: dict[str, Any]
    config: RunConfig


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def save_model(run_dir: Path, model: torch.nn.Module, sidecar: dict[str, Any]) -> None:
    """Write weights, then the sidecar that names their sha256 (the sidecar is the commit point)."""
    data = st_save(_contiguous(model.state_dict()))
    atomic_write_bytes(run_dir / MODEL_FILE, data)
    full = {
        **sidecar,
        "edgekd_version": __version__,
        "weights_sha256": hashlib.sha256(data).hexdigest(),
    }
    atomic_write_json(run_dir / SIDECAR_FILE, full)


def read_sidecar(run_dir: Path, expect_role: str | None = None) -> dict[str, Any]:
    """The sidecar of a finished run; ConfigError if the folder is not one (or the wrong role)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"run folder not found: {run_dir}")
    path = run_dir / SIDECAR_FILE
    if not path.is_file():
        raise ConfigError(
            f"{run_dir} holds no {SIDECAR_FILE}: not a finished edgekd run "
            "(train it with `edgekd teacher` / `edgekd distill`, or --resume an interrupted one)"
        )
    try:
        sidecar = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
    if expect_role is not None and sidecar.get("role") != expect_role:
        raise ConfigError(
            f"{run_dir} is a {sidecar.get('role')!r} run, expected a {expect_role} run"
        )
    return sidecar


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return st_load(Path(path).read_bytes())
    except (OSError, SafetensorError) as exc:
        raise ConfigError(f"cannot read weights {path}: {exc}") from exc


def build_model(sidecar: dict[str, Any]) -> torch.nn.Module:
    """Instantiate the architecture a sidecar names (untrained)."""
    from edgekd.modalities import ModalitySpec
    from edgekd.models import create_student, create_teacher

    specs = {name: ModalitySpec.from_dict(d) for name, d in sidecar["specs"].items()}
    num_classes = len(sidecar["labels"])
    if sidecar["role"] == "teacher":
        return create_teacher(sidecar["arch"], specs, num_classes, **sidecar["arch_args"])
    spec = specs[sidecar["student_modality"]]
    return create_student(sidecar["arch"], spec, num_classes, **sidecar["arch_args"])


def load_run(run_dir: Path, expect_role: str | None = None) -> Run:
    """Load a finished run's selected model in eval mode, checking weights against the sidecar."""
    run_dir = Path(run_dir)
    sidecar = read_sidecar(run_dir, expect_role)
    weights_path = run_dir / MODEL_FILE
    if not weights_path.is_file():
        raise ConfigError(f"{run_dir} has a sidecar but no {MODEL_FILE}")
    data = weights_path.read_bytes()
    if hashlib.sha256(data).hexdigest() != sidecar.get("weights_sha256"):
        raise ConfigError(f"{weights_path} does not match the sha256 in {SIDECAR_FILE}")
    model = build_model(sidecar)
    try:
        model.load_state_dict(st_load(data))
    except RuntimeError as exc:
        raise ConfigError(
            f"{weights_path} does not fit architecture {sidecar['arch']!r}: {exc}"
        ) from exc
    model.eval()
    config = from_dict(json_safe_yaml(run_dir / CONFIG_FILE))
    return Run(dir=run_dir, model=model, sidecar=sidecar, config=config)


def json_safe_yaml(path: Path) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        raise ConfigError(f"{path.parent} has no {path.name}")
    return yaml.safe_load(path.read_text()) or {}


# --- resumable training state -------------------------------------------------------------


def save_train_state(
    run_dir: Path,
    modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    scalars: dict[str, Any],
) -> None:
    """One atomic file: module weights, optimizer tensors, torch RNG, and JSON scalars."""
    tensors: dict[str, torch.Tensor] = {}
    for prefix, module in modules.items():
        for key, value in module.state_dict().items():
            tensors[f"module.{prefix}.{key}"] = value
    opt = optimizer.state_dict()
    opt_scalars: dict[str, dict[str, Any]] = {}
    for idx, state in opt["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                opt_scalars.setdefault(str(idx), {})[key] = value
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {
        "scalars": scalars,
        "param_groups": opt["param_groups"],
        "optim_scalars": opt_scalars,
    }
    data = st_save(_contiguous(tensors), metadata={"edgekd": json.dumps(meta)})
    atomic_write_bytes(run_dir / STATE_FILE, data)


def load_train_state(
    run_dir: Path,
    modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
) -> dict[str, Any]:
    """Restore what `save_train_state` wrote (in place) and return its scalars."""
    from safetensors import safe_open

    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        raise ConfigError(f"nothing to resume: {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads(fh.metadata()["edgekd"])
        tensors = load_weights(path)
    except (SafetensorError, KeyError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} is corrupt ({exc}); delete it to restart the run") from exc
    for prefix, module in modules.items():
        head = f"module.{prefix}."
        module.load_state_dict(
            {k[len(head) :]: v for k, v in tensors.items() if k.startswith(head)}
        )
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for idx, values in meta["optim_scalars"].items():
        state.setdefault(int(idx), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    return meta["scalars"]
