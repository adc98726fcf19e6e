"""Fixtures: one real bundle (built once per session by runtime_synth.py) and its models."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # `import runtime_synth` from the test modules

import runtime_synth as synth  # noqa: E402

from edgekd.runtime import Model, load  # noqa: E402


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Engine / OpenVINO model cache of these tests (not the user's). EDGEKD_CACHE is left
    alone at session scope: other tests share the converted-HAR cache through it."""
    return tmp_path_factory.mktemp("edgekd-cache")


@pytest.fixture()
def private_cache(cache_root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """For code paths that use the default cache (the CLI): point EDGEKD_CACHE at ours."""
    monkeypatch.setenv("EDGEKD_CACHE", str(cache_root))
    return cache_root


@pytest.fixture(scope="session")
def bundle_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bundle")
    return synth.build_bundle(root / "synth.edgekd", root / "work")


@pytest.fixture()
def bundle_copy(bundle_path: Path, tmp_path: Path) -> Path:
    """A private copy to tamper with."""
    dest = tmp_path / "copy.edgekd"
    shutil.copytree(bundle_path, dest)
    return dest


@pytest.fixture(scope="session")
def model_of(bundle_path: Path, cache_root: Path) -> Callable[[str, str], Model]:
    """`model_of(backend, precision)`: loaded once per session and shared (read-only use)."""
    cache: dict[tuple[str, str], Model] = {}

    def get(backend: str, precision: str) -> Model:
        if (backend, precision) not in cache:
            cache[backend, precision] = load(bundle_path, backend=backend, precision=precision,
                                             cache_dir=cache_root)
        return cache[backend, precision]

    return get
