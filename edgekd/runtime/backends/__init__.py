"""Inference backends behind one small interface; each lives in its own lazily imported module.

A backend module exposes:
- `NAME`, `PACKAGE_HINT` (what to pip install),
- `check_available() -> None` (BackendUnavailable with the reason and the install hint),
- `precisions(bundle) -> list[str]` (what this bundle offers on this backend, best first),
- `open(bundle, precision, *, threads, cache_dir) -> Engine`.
Nothing here imports a backend library; `edgekd.runtime` stays importable with numpy alone.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from edgekd.constants import BACKENDS
from edgekd.errors import BackendUnavailable, ConfigError

PRECISION_PREFERENCE = ("int8", "fp16", "fp32")  # bf16 only when asked for by name
DEFAULT_CPU_MAX_BATCH = 256  # windows per inference call: bounds memory for huge inputs

# features (B, *feature_shape) float32 C-contiguous -> logits (B, K) float32. A runner is NOT
# thread-safe unless its backend says so; each stream and each predicting thread gets its own.
Runner = Callable[[np.ndarray], np.ndarray]


@dataclass
class Engine:
    """A compiled model on one backend, from which per-thread runners are made."""

    backend: str
    precision: str
    artifact: str  # bundle-relative path of what was loaded
    new_runner: Callable[[], Runner]
    max_batch: int = DEFAULT_CPU_MAX_BATCH
    details: dict[str, Any] = field(default_factory=dict)  # device, threads, compile options


def backend_module(name: str) -> ModuleType:
    """The module of backend `name` (imports no backend library)."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; choose auto or one of {', '.join(BACKENDS)}")
    return import_module(f"edgekd.runtime.backends.{name}")


def cache_dir() -> Path:
    """Where compiled engines and OpenVINO's model cache go: $EDGEKD_CACHE, else
    $XDG_CACHE_HOME/edgekd, else ~/.cache/edgekd."""
    if os.environ.get("EDGEKD_CACHE"):
        return Path(os.environ["EDGEKD_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "edgekd"


def pick_precision(available: list[str], wanted: str | None, target: dict[str, Any]) -> str | None:
    """`wanted` if available; for None the target's precision if available, else the first of
    PRECISION_PREFERENCE available. None when nothing fits."""
    if wanted is not None:
        return wanted if wanted in available else None
    if target.get("precision") in available:
        return str(target["precision"])
    return next((p for p in PRECISION_PREFERENCE if p in available), None)


def import_or_unavailable(module: str, backend: str, hint: str) -> ModuleType:
    """Import a backend library; BackendUnavailable naming the pip command if it is missing."""
    try:
        return import_module(module)
    except ImportError as exc:
        raise BackendUnavailable(
            f"backend {backend!r} needs the {module!r} package, which is not installed "
            f"({exc}); install it with: {hint}"
        ) from exc
