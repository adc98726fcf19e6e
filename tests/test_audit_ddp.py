"""DDP resume and sharding, checked on what training did: the batches each rank trained on
(recorded by tests/ddp_check.py's hook on `Loader.epoch`) and the run folder it wrote."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from edgekd.checkpoint import MODEL_FILE
from tests.test_pipeline import _kill_torchrun, _torchrun
from tests.test_trainer import saved_state

REPO = Path(__file__).resolve().parents[1]
WORLD = 2


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}


def test_ddp_resume_trains_only_the_unfinished_epochs_on_disjoint_shards(
    teacher_run: Path, tmp_path: Path
) -> None:
    epochs = 3
    args = ["distill", "--teacher", str(teacher_run), "--recipe", "kd", "--epochs", str(epochs),
            "--limit", "1200", "--no-unlabelled", "--quiet"]  # fmt: skip
    ddp = [_torchrun(), "--standalone", "--nproc-per-node", str(WORLD)]
    out = tmp_path / "killed"
    killed = subprocess.Popen([*ddp, "-m", "edgekd", *args, "--out", str(out)], env=_env(),
                              start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    history = out / "history.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if history.exists() and len(json.loads(history.read_text() or "[]")) >= 1:
            break
        assert killed.poll() is None, "the DDP run ended before it could be killed"
        time.sleep(0.02)
    _kill_torchrun(killed)
    assert not (out / "metrics.json").exists(), "the run finished before it could be killed"
    written = json.loads(history.read_text())
    saved = saved_state(out)
    assert saved["epoch"] in (len(written), len(written) + 1)
    assert 1 <= saved["epoch"] < epochs

    record = tmp_path / "record"
    script = REPO / "tests" / "ddp_check.py"
    proc = subprocess.run(
        [*ddp, str(script), "--record", str(record), "--", *args, "--out", str(out), "--resume"],
        capture_output=True, text=True, timeout=300, env=_env(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((record / f"rank{r}.json").read_text()) for r in range(WORLD)]
    assert [r["world"] for r in ranks] == [WORLD] * WORLD
    # Only the unfinished epochs were trained, on every rank.
    left = list(range(saved["epoch"], epochs))
    for r in ranks:
        assert sorted({e for e, _, _ in r["batches"]}) == left, (r["rank"], left)
    # Each resumed epoch: equal steps per rank, disjoint shards, the epoch covered but for
    # fewer than WORLD windows.
    windows = ranks[0]["windows"]
    for epoch in left:
        shards = [[i for e, _, idx in r["batches"] if e == epoch for i in idx] for r in ranks]
        steps = [sum(e == epoch for e, _, _ in r["batches"]) for r in ranks]
        assert len(set(steps)) == 1 and steps[0] > 0, steps
        seen = [i for shard in shards for i in shard]
        assert len(seen) == len(set(seen)), f"epoch {epoch}: ranks trained on the same windows"
        assert set(seen) <= set(range(windows))
        assert windows - len(set(seen)) < WORLD, (epoch, windows, len(set(seen)))
    # The finished epochs' history is the one written before the kill (their timings too).
    # That the result equals an uninterrupted run's, byte for byte, is
    # tests/test_pipeline.py::test_ddp_resume_is_exact.
    resumed = json.loads(history.read_text())
    assert [h["epoch"] for h in resumed] == list(range(1, epochs + 1))
    assert resumed[: len(written)] == written
    assert resumed[: saved["epoch"]] == saved["history"]
    assert json.loads((out / "metrics.json").read_text())["train"]["world_size"] == WORLD
    assert (out / MODEL_FILE).is_file()
