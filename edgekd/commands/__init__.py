"""CLI command modules. Each exposes `register(app)`; only typer is imported at module level.

A core install is the runtime (info, run, bench, keygen, sign). Commands that need an optional
extra are listed in COMMAND_EXTRAS; `register_all` wraps them so that, when the extra is not
installed, they exit 2 with one line naming the pip command, instead of an ImportError deep
inside. `edgekd --help` lists every command either way. The options several commands share
are declared once, in `edgekd.commands.options`.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from importlib import import_module
from typing import Any, TypeVar

import typer

from edgekd.errors import EdgeKDError, MissingExtra

COMMAND_MODULES = ("train", "export", "runtime", "sign", "ablate", "demo")

# Extra -> import names that must be findable (the ones every command of the extra needs; the
# rest of an extra, e.g. nncf or torchao, is checked by the code path that uses it).
EXTRAS: dict[str, tuple[str, ...]] = {
    "train": ("torch", "safetensors"),
    "export": ("torch", "safetensors", "onnx", "onnxscript", "onnxruntime", "openvino"),
}
COMMAND_EXTRAS: dict[str, str] = {
    "teacher": "train", "distill": "train", "ensemble": "train", "models": "train",
    "ablate": "train", "export": "export", "demo": "export",
}

F = TypeVar("F", bound=Callable[..., Any])

def require_extra(extra: str, what: str) -> None:
    """MissingExtra naming `pip install 'edgekd[<extra>]'` unless the extra's modules exist.

    Uses `find_spec` only: nothing is imported, so the check costs microseconds."""
    missing = [m for m in EXTRAS[extra] if not _findable(m)]
    if missing:
        raise MissingExtra(f"{what} needs the '{extra}' extra ({', '.join(missing)} not "
                           f"installed): pip install 'edgekd[{extra}]'")


def _findable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # e.g. a broken install or a blocked import
        return False


def user_errors(fn: F) -> F:
    """Turn an `EdgeKDError` into `error: <message>` on stderr and exit code 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EdgeKDError as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(code=2) from None

    return wrapper  # type: ignore[return-value]


def _needs(extra: str, command: str, fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        require_extra(extra, f"`edgekd {command}`")
        return fn(*args, **kwargs)

    return user_errors(wrapper)  # type: ignore[return-value]


def register_all(app: typer.Typer) -> None:
    for name in COMMAND_MODULES:
        import_module(f"edgekd.commands.{name}").register(app)
    for info in app.registered_commands:
        command = info.name or (info.callback.__name__.replace("_", "-") if info.callback else "")
        extra = COMMAND_EXTRAS.get(command)
        if extra is not None and info.callback is not None:
            info.callback = _needs(extra, command, info.callback)
