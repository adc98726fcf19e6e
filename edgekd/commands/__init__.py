"""CLI command modules. Each exposes `register(app)`; only typer is imported at module level."""

from __future__ import annotations

import functools
from collections.abc import Callable
from importlib import import_module
from typing import Any, TypeVar

import typer

from edgekd.errors import EdgeKDError

COMMAND_MODULES = ("train", "export", "runtime", "ablate", "demo")

F = TypeVar("F", bound=Callable[..., Any])


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


def register_all(app: typer.Typer) -> None:
    for name in COMMAND_MODULES:
        import_module(f"edgekd.commands.{name}").register(app)
