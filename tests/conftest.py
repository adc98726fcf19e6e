"""Shared fixtures: small real training runs on the built-in HAR data, made once per session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# A test session shares one converted-HAR cache; the first conversion takes some seconds.
os.environ.setdefault("EDGEKD_CACHE", str(Path.home() / ".cache" / "edgekd"))

# Without modality dropout (a default since teachers drop modalities): the ablate tests need a
# teacher whose restricted view is out of distribution.
TEACHER_ARGS = ["--epochs", "3", "--limit", "1500", "--batch-size", "64", "--seed", "0",
                "--modality-dropout", "0", "--quiet"]  # fmt: skip
STUDENT_ARGS = ["--epochs", "3", "--limit", "1500", "--batch-size", "64", "--seed", "0", "--quiet"]


def run_cli(args: list[str]) -> object:
    from typer.testing import CliRunner

    from edgekd.cli import app

    return CliRunner().invoke(app, args, catch_exceptions=False)


def run_events(output: str) -> list[tuple[float, str]]:
    """(end time s, label) of each `edgekd run` output line `   1.000 s  label  0.9876`."""
    out = []
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[1] == "s":
            out.append((float(parts[0]), parts[2]))
    return out


@pytest.fixture(scope="session")
def teacher_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "teacher"
    result = run_cli(["teacher", "--data", "har", "--out", str(out), *TEACHER_ARGS])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def local_ray() -> Iterator[Any]:
    """The ray module with a local Ray instance of 2 CPUs running, shut down after the test;
    skipped where the 'ray' extra is missing or Ray cannot start (no shared memory or sockets
    in a sandbox)."""
    ray = pytest.importorskip("ray", reason="the 'ray' extra is not installed")
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    except Exception as exc:
        pytest.skip(f"ray cannot start here: {exc}")
    try:
        yield ray
    finally:
        ray.shutdown()


def distill_kd(teacher: Path, out: Path) -> object:
    """`edgekd distill --recipe kd` with the session's small settings."""
    args = ["distill", "--teacher", str(teacher), "--out", str(out), "--recipe", "kd"]
    return run_cli([*args, *STUDENT_ARGS])


@pytest.fixture(scope="session")
def student_run(teacher_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "student"
    result = distill_kd(teacher_run, out)
    assert result.exit_code == 0, result.output
    return out
