"""A writer killed (SIGKILL) at each step of publishing leaves nothing the next export cannot
repair: stale staging is removed, a half-done two-rename swap is restored or finished. Loads
never repair (they change nothing), so a bundle moved aside stays unloadable until then."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edgekd.errors import BundleError
from edgekd.export.bundle import PAUSE_ENV
from edgekd.runtime import read_bundle

# A real BundleWriter publishing a bundle whose model file holds argv[2], with eval beside it;
# argv[3] "renames": as on an OS without RENAME_EXCHANGE.
WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    import numpy as np
    import edgekd.export.bundle
    from edgekd.export.bundle import BundleWriter

    out, payload = Path(sys.argv[1]), sys.argv[2].encode()
    if sys.argv[3] == "renames":
        edgekd.export.bundle.exchange_paths = lambda a, b: False
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


def _write(out: Path, payload: str, pause_at: str | None = None, swap: str = "exchange") -> None:
    """Run the writer in a child; with `pause_at`, SIGKILL it once it reports that step."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    argv = [sys.executable, "-c", WRITER, str(out), payload, swap]
    if pause_at is None:
        env.pop(PAUSE_ENV, None)
        subprocess.run(argv, env=env, check=True, timeout=120)
        return
    env[PAUSE_ENV] = pause_at
    proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
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
@pytest.mark.parametrize(("swap", "step", "left_at_out"), [
    ("exchange", "staged", b"old"), ("exchange", "swapped", b"new"),
    ("renames", "staged", b"old"), ("renames", "moved-aside", None),
    ("renames", "swapped", b"new"),
])
def test_killed_export_is_repaired_by_the_next_export(tmp_path: Path, swap: str, step: str,
                                                      left_at_out: bytes | None) -> None:
    out = tmp_path / "har.edgekd"
    _write(out, "old")
    _write(out, "new", pause_at=step, swap=swap)
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
def test_load_leaves_a_bundle_moved_aside_by_a_killed_export_alone(tmp_path: Path) -> None:
    out = tmp_path / "har.edgekd"
    _write(out, "old")
    _write(out, "new", pause_at="moved-aside", swap="renames")
    before = sorted(tmp_path.iterdir())
    with pytest.raises(BundleError, match="bundle folder not found"):
        read_bundle(out)
    assert sorted(tmp_path.iterdir()) == before and not out.exists()
    _write(out, "newest")
    assert _model(out) == b"newest"
