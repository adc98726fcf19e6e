"""Feature taps by module path (torchdistill style): intermediate outputs without editing models.

    with FeatureTap(model, ["blocks.2", "encoders.accel"]) as tap:
        logits = model(x)
    h = tap["blocks.2"]          # that submodule's output from the last forward pass

Paths are `model.get_submodule` paths (the names `model.named_modules()` prints).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import torch
from torch import nn

from edgekd.errors import ConfigError


class FeatureTap:
    """Context manager: forward hooks on named submodules, collecting each one's latest output.

    Outputs keep their autograd graph unless `detach=True`, so a tapped feature can be used in a
    loss. Each forward pass overwrites the previous one's outputs; hooks are removed on exit.
    """

    def __init__(self, model: nn.Module, paths: Sequence[str], *, detach: bool = False) -> None:
        if isinstance(paths, str):
            raise ConfigError(f"FeatureTap takes a list of module paths, got the string {paths!r}")
        self._modules: dict[str, nn.Module] = {}
        for path in paths:
            try:
                self._modules[path] = model.get_submodule(path)
            except AttributeError as exc:
                names = [n for n, _ in model.named_modules() if n]
                shown = ", ".join(names[:40]) + (" ..." if len(names) > 40 else "")
                raise ConfigError(
                    f"no submodule {path!r} in {type(model).__name__}; module paths: {shown}"
                ) from exc
        self._detach = detach
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self.features: dict[str, Any] = {}

    def _hook(self, path: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if self._detach and isinstance(output, torch.Tensor):
                output = output.detach()
            self.features[path] = output

        return hook

    def __enter__(self) -> FeatureTap:
        if self._handles:
            raise RuntimeError("FeatureTap is already active; it is not re-entrant")
        self.features = {}
        self._handles = [m.register_forward_hook(self._hook(p)) for p, m in self._modules.items()]
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __getitem__(self, path: str) -> Any:
        if path not in self.features:
            known = ", ".join(self._modules)
            raise KeyError(
                f"{path!r} has no output yet (tapped: {known}); "
                "run a forward pass inside the `with`"
            )
        return self.features[path]
