"""A writer killed (SIGKILL) at each step of publishing leaves nothing the next export or load
cannot repair: stale staging is removed, a half-done `force` swap is restored or finished."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edgekd.export.bundle import PAUSE_ENV
from edgekd.runtime import read_bundle

# A real BundleWriter publishing a bundle whose model file holds argv[2], with eval beside it.
WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    import numpy as np
    from edgekd.export.bundle import BundleWriter

    out, payload = Path(sys.argv[1]), sys.argv[2].encode()
    with BundleWriter(out, force=True) as w:
        w.add_file("model.fp32.onnx", payload, format="onnx", precision="fp32")
        w.add_npz("golden", x=np.zeros((1, 128, 3), np.float32), probs=np.ones((1, 2)))
        w.add_npz("eval", x=np.zeros((4, 128, 3), np.float32), y=np.zeros(4, np.int64))
        w.set("labels", ["a", "b"])
        w.set("modality", {"name": "accel", "kind": "timeseries", "rate_hz": 50.0,
                           "channels": 3, "window": 128, "hop": 64})
        w.set("io", {"input": {"name": "input", "shape": ["batch", 3, 128]},
                     "output": {"name": "logits", "shape": ["batch", 2]}})
""")


def _write(out: Path, payload: str, pause_at: str | None = None) -> None:
    """Run the writer in a child; with `pause_at`, SIGKILL it once it reports that step."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    if pause_at is None:
        env.pop(PAUSE_ENV, None)
        subprocess.run([sys.executable, "-c", WRITER, str(out), payload], env=env, check=True,
                       timeout=120)
        return
    env[PAUSE_ENV] = pause_at
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(out), payload], env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert line.strip() == f"paused at {pause_at}", line
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def _model(out: Path) -> bytes:
    return (read_bundle(out).root / "model.fp32.onnx").read_bytes()


def _hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.mark.slow
@pytest.mark.parametrize(("step", "left_at_out"), [
    ("staged", b"old"), ("moved-aside", None), ("swapped", b"new"),
])
def test_killed_export_is_repaired_by_the_next_export(tmp_path: Path, step: str,
                                                      left_at_out: bytes | None) -> None:
    out = tmp_path / "har.edgekd"
    _write(out, "old")
    _write(out, "new", pause_at=step)
    assert _hidden(tmp_path)  # the kill left staging or a backup behind
    if left_at_out is None:
        assert not out.exists()  # killed between the two renames
    else:
        assert _model(out) == left_at_out
    _write(out, "newest")
    assert _model(out) == b"newest"
    assert _hidden(tmp_path) == []  # stale staging, eval temp and backup all gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["har.edgekd", "har.eval.npz"]


@pytest.mark.slow
def test_load_restores_a_bundle_moved_aside_by_a_killed_export(tmp_path: Path) -> None:
    out = tmp_path / "har.edgekd"
    _write(out, "old")
    _write(out, "new", pause_at="moved-aside")
    assert not out.exists()
    assert _model(out) == b"old"  # read_bundle (as every load) renamed the backup back
    assert (out / "manifest.json").is_file()
