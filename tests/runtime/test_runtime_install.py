"""A runtime-only install: a fresh venv with `edgekd[onnxruntime]` and nothing else (no torch)
runs `info`, `run --stream` and `bench` on a bundle made by the full environment."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _sh(*args: str | Path, env: dict[str, str], timeout: float = 120
        ) -> subprocess.CompletedProcess[str]:
    # cwd outside the checkout: `python -c` would import edgekd from the current folder
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=env["EDGEKD_CACHE"])
    assert proc.returncode == 0, f"{args}: {proc.stdout[-1500:]}{proc.stderr[-1500:]}"
    return proc


@pytest.mark.slow
def test_runtime_only_install(bundle_path: Path, tmp_path: Path) -> None:
    t0 = time.perf_counter()
    src = tmp_path / "src"  # a copy: building must not write egg-info into the checkout
    src.mkdir()
    shutil.copytree(ROOT / "edgekd", src / "edgekd",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["EDGEKD_CACHE"] = str(tmp_path / "cache")
    (tmp_path / "cache").mkdir()
    venv = tmp_path / "venv"
    _sh(sys.executable, "-m", "venv", venv, env=env)
    py, edgekd = venv / "bin" / "python", venv / "bin" / "edgekd"
    _sh(py, "-m", "pip", "install", "--quiet", f"{src}[onnxruntime]", env=env, timeout=600)
    no_torch = subprocess.run([py, "-c", "import torch"], capture_output=True, text=True, env=env,
                              cwd=tmp_path)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    where = _sh(py, "-c", "import edgekd; print(edgekd.__file__)", env=env).stdout
    assert where.startswith(str(venv))  # the installed copy, not the checkout

    info = _sh(edgekd, "info", bundle_path, env=env).stdout
    assert "all sha256 verified" in info and "still, walk, run, shake" in info
    x = np.load(bundle_path / "golden.npz")["x"]
    np.save(tmp_path / "rec.npy", x.reshape(-1, x.shape[-1]))
    run = _sh(edgekd, "run", bundle_path, "-i", tmp_path / "rec.npy", "--stream", env=env)
    assert "onnxruntime/int8" in run.stderr  # auto: the only backend installed
    assert len(run.stdout.splitlines()) == (len(x) * 128 - 128) // 64 + 1
    bench = _sh(edgekd, "bench", bundle_path, "--iterations", "50", env=env,
                timeout=300).stdout
    assert "onnxruntime/int8" in bench and "onnxruntime/fp32" in bench
    assert "skipped openvino" in bench and "recommended (--precision auto)" in bench
    print(f"runtime-only install test: {time.perf_counter() - t0:.0f} s")
