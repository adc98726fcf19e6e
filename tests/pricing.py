"""Test helpers for latency pricing: a machine pinned quiet or busy, and a count of the
candidates the predictor exports (a cached price exports nothing)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from edgekd.search import latency, quiet


def pin_machine(monkeypatch: pytest.MonkeyPatch, *, busy: float = 0.0,
                reference: float | Callable[[], float] = 1.0) -> None:  # fmt: skip
    """The condition readers report `busy` cores in use by other work and the reference kernel
    at `reference` ms (a value, or a reader of successive values) against a quiet 1 ms."""
    monkeypatch.setattr(quiet, "busy_cores", lambda: busy)
    monkeypatch.setattr(quiet, "reference_ms", reference if callable(reference)
                        else lambda: reference)  # fmt: skip
    monkeypatch.setattr(quiet, "_quietest", 1.0)


def count_exports(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The architectures `latency.export_candidate` is called for, from now on."""
    calls: list[str] = []
    real = latency.export_candidate

    def counted(arch: str, *args: object, **kwargs: object) -> latency.Exported:
        calls.append(arch)
        return real(arch, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(latency, "export_candidate", counted)
    return calls
