"""The training data pipeline: sharding, determinism, storage, and the distill/teacher options
built on it (online/cached teacher, unlabelled windows, moved data, teacher modality subsets,
DDP)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from edgekd.checkpoint import MODEL_FILE, read_sidecar
from edgekd.config import AugmentConfig
from edgekd.data import load_dataset
from edgekd.data.augment import build_policy
from edgekd.data.pipeline import Loader, Windows, eval_batches, labelled, shard_batches, to_inputs
from edgekd.modalities import preprocess
from tests.conftest import run_cli

FAST = ["--epochs", "1", "--limit", "600", "--quiet"]


def _torchrun() -> str:
    found = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert found, "torchrun ships with torch"
    return found


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


@pytest.mark.parametrize("world", [1, 2, 3])
def test_shards_are_disjoint_equal_and_cover_the_epoch(world: int) -> None:
    n = 103
    shards = [np.concatenate(shard_batches(n, 8, seed=4, epoch=2, rank=r, world=world))
              for r in range(world)]  # fmt: skip
    seen = np.concatenate(shards)
    assert len(set(seen.tolist())) == len(seen)  # disjoint
    assert len(seen) >= n - world - 1 * world  # all but < world (+ a dropped 1-window batch)
    assert len({len(s) for s in shards}) == 1  # equal steps on every rank
    again = shard_batches(n, 8, seed=4, epoch=2, rank=0, world=world)
    assert np.array_equal(np.concatenate(again), shards[0])
    assert not np.array_equal(np.concatenate(shard_batches(n, 8, 4, 3, 0, world)), shards[0])


@pytest.fixture(scope="module")
def har() -> object:
    return load_dataset("har", limit=400, seed=0)


def test_loader_is_deterministic_per_seed_and_epoch(har) -> None:  # noqa: ANN001
    spec = har.specs["accel"]
    train = har.splits["train"]
    windows = Windows.of((train, labelled(train)), (har.splits["unlabelled"], np.arange(50)))
    policy = build_policy(AugmentConfig(mix="mixup"), {"accel": spec}, 12)

    def first(epoch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        loader = Loader(windows, {"s": {"accel": spec}}, aug_specs={"accel": spec},
                        policy=policy, batch_size=32, seed=seed)  # fmt: skip
        batch = next(loader.epoch(epoch))
        return batch.inputs["s"]["accel"], batch.y

    x, y = first(1)
    assert x.shape == (32, 3, 128) and y.shape == (32, 12) and y.dtype == torch.float32
    torch.testing.assert_close(first(1), (x, y), rtol=0, atol=0)
    assert not torch.allclose(first(2)[0], x)
    assert not torch.allclose(first(1, seed=1)[0], x)
    assert len(windows) == int((train.y >= 0).sum()) + 50
    assert (windows.y[-50:] == -1).all()


def test_eval_batches_equal_whole_split_preprocessing(har) -> None:  # noqa: ANN001
    val = har.splits["val"]
    view = {m: har.specs[m] for m in ("accel", "gyro")}
    windows = Windows.of((val, labelled(val)))
    parts = list(eval_batches(windows, view, torch.device("cpu"), batch=500))
    assert len(parts) == -(-len(windows) // 500)
    for m, spec in view.items():
        whole = preprocess(spec, val.x[m][labelled(val)])
        np.testing.assert_allclose(torch.cat([p[0][m] for p in parts]).numpy(), whole, atol=1e-6)
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), val.y[labelled(val)])


def test_feature_masks_are_shared_by_student_and_teacher_views(tmp_path: Path) -> None:
    from tests.toy_manifest import make_toy_manifest

    ds = load_dataset(make_toy_manifest(tmp_path / "d", n_per_class=6, classes=2), seed=0)
    voice = ds.specs["voice"]
    other = type(voice)(**{**voice.__dict__, "mean": tuple(m + 1 for m in voice.mean)})
    policy = build_policy(AugmentConfig(policy="custom", ops={"spec_mask": {"time": 6}}),
                          {"voice": voice}, 2)  # fmt: skip
    raw = {"voice": ds.splits["train"].x["voice"][:4]}
    out = to_inputs(raw, {"s": {"voice": voice}, "t": {"voice": other}}, torch.device("cpu"),
                    policy, np.random.default_rng(0), {"voice": voice})  # fmt: skip
    zero_s, zero_t = out["s"]["voice"] == 0, out["t"]["voice"] == 0
    assert zero_s.any() and torch.equal(zero_s, zero_t)


def test_manifest_windows_are_memory_mapped(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    from edgekd.data.storage import spill_root
    from tests.toy_manifest import make_toy_manifest

    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))
    ds = load_dataset(make_toy_manifest(tmp_path / "d", n_per_class=6, classes=2), seed=0)
    for split in ("train", "val", "test"):
        for m in ("voice", "face"):
            assert isinstance(ds.splits[split].x[m], np.memmap), (split, m)
    assert ds.splits["train"].x["voice"].dtype == np.float32
    # Mapped files are unlinked: nothing stays in the cache after the load.
    assert list(spill_root().iterdir()) == []


_SPILL_AND_WAIT = """
import sys, time
import numpy as np
from edgekd.data.storage import WindowSpill
spill = WindowSpill()
spill.append("voice", np.zeros((4, 8), np.float32))
print(spill.dir, flush=True)
time.sleep(600)
"""


def test_spill_folders_of_killed_loads_are_removed_by_the_next(
    tmp_path: Path,
    monkeypatch,  # noqa: ANN001
) -> None:
    import os
    import signal
    import subprocess
    import sys

    from tests.toy_manifest import make_toy_manifest

    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [
        subprocess.Popen([sys.executable, "-c", _SPILL_AND_WAIT], env=env, stdout=subprocess.PIPE,
                         text=True)
        for _ in range(2)
    ]  # fmt: skip
    try:
        killed, live = (Path(p.stdout.readline().strip()) for p in procs)
        assert killed.is_dir() and live.is_dir() and killed.parent == live.parent
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(timeout=30)
        assert (killed / "voice.f32").stat().st_size == 4 * 8 * 4  # left behind by the kill
        ds = load_dataset(make_toy_manifest(tmp_path / "d", n_per_class=6, classes=2), seed=0)
        assert len(ds.splits["train"]) > 0
        assert not killed.exists()
        assert sorted(killed.parent.iterdir()) == [live]  # the live process's folder is kept
    finally:
        for p in procs:
            p.kill()
            p.wait(timeout=30)
            p.stdout.close()


# --- distill / teacher options ------------------------------------------------------------


def test_cached_teacher_with_augmentation_is_refused(teacher_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "s"
    args = ["distill", "--teacher", str(teacher_run), "--out", str(out), "--teacher-mode", "cached"]
    result = run_cli([*args, *FAST])
    assert result.exit_code == 2 and "teacher_mode=cached" in result.output
    assert not out.exists()
    result = run_cli([*args, "--augment", "none", *FAST])  # today's regime runs
    assert result.exit_code == 0, result.output
    assert _metrics(out)["train"]["teacher_mode"] == "cached"
    assert _metrics(out)["train"]["augment"] == "none"


def test_an_op_that_cannot_act_is_refused_before_the_run(teacher_run: Path, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("augment: {policy: custom, ops: {crop: {pad: 0.125}}}\n")
    out = tmp_path / "s"
    args = ["distill", "--teacher", str(teacher_run), "--out", str(out), "--config", str(config)]
    result = run_cli([*args, *FAST])
    assert result.exit_code == 2 and "'crop' acts on image" in result.output
    assert not out.exists()


def test_online_teacher_with_unlabelled_windows(teacher_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "s"
    args = ["distill", "--teacher", str(teacher_run), "--out", str(out), "--unlabelled"]
    result = run_cli([*args, "--recipe", "kd", "--teacher-view", "student", *FAST])
    assert result.exit_code == 0, result.output
    train = _metrics(out)["train"]
    assert train["teacher_mode"] == "online" and train["unlabelled_windows"] > 0
    assert train["windows"] == 600 + train["unlabelled_windows"]
    assert "rotate(max_deg=15)" in train["augment"]
    assert "still_improving" in _metrics(out)
    ce = tmp_path / "ce"  # CE-only runs ignore unlabelled windows
    result = run_cli(["distill", "--teacher", str(teacher_run), "--out", str(ce), "--unlabelled",
                      "--recipe", "ce", *FAST])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert _metrics(ce)["train"]["unlabelled_windows"] == 0


def test_teacher_trains_on_mixed_soft_targets(tmp_path: Path) -> None:
    out = tmp_path / "t"
    result = run_cli(["teacher", "--out", str(out), "--mix", "mixup", "--epochs", "2",
                      "--limit", "600", "--quiet"])  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = _metrics(out)
    assert "mixup(alpha=1, p=1)" in metrics["train"]["augment"]
    assert metrics["val"]["accuracy"] > 0.4  # 12 classes: learns through soft labels


def test_teacher_on_a_modality_subset(tmp_path: Path) -> None:
    out = tmp_path / "t"
    result = run_cli(["teacher", "--out", str(out), "--modalities", "accel", *FAST])
    assert result.exit_code == 0, result.output
    assert set(read_sidecar(out)["specs"]) == {"accel"}
    bad = tmp_path / "bad"
    result = run_cli(["teacher", "--out", str(bad), "--modalities", "accel,magnet", *FAST])
    assert result.exit_code == 2 and "magnet" in result.output and not bad.exists()


def test_distill_from_moved_data(tmp_path: Path) -> None:
    from tests.toy_manifest import make_toy_manifest

    manifest = make_toy_manifest(tmp_path / "data", n_per_class=6, classes=3, seed=0)
    teacher = tmp_path / "teacher"
    fast = ["--epochs", "1", "--batch-size", "16", "--quiet"]
    assert (
        run_cli(["teacher", "--data", str(manifest), "--out", str(teacher), *fast]).exit_code == 0
    )
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / "data", moved)
    shutil.rmtree(tmp_path / "data")
    out = tmp_path / "s"
    args = ["distill", "--teacher", str(teacher), "--out", str(out), *fast]
    result = run_cli([*args, "--data", str(moved / "manifest.jsonl")])
    assert result.exit_code == 0, result.output
    assert read_sidecar(out)["data"]["source"] == str(moved / "manifest.jsonl")
    # ablate's student runs take the moved data the same way
    ablation = tmp_path / "ablate"
    result = run_cli(["ablate", "--teacher", str(teacher), "--out", str(ablation), "--runs", "ce",
                      "--seeds", "1", "--epochs", "1", "--batch-size", "16",
                      "--data", str(moved / "manifest.jsonl")])  # fmt: skip
    assert result.exit_code == 0, result.output
    ran = read_sidecar(ablation / "runs" / "ce" / "seed0" / "final")
    assert ran["data"]["source"] == str(moved / "manifest.jsonl")
    # The same files under another header: the difference is named, nothing is written.
    header = moved / "modalities.yaml"
    header.write_text(header.read_text().replace("window_s: 0.5", "window_s: 0.25"))
    bad = tmp_path / "bad"
    result = run_cli([*args[:4], str(bad), *fast, "--data", str(moved)])
    assert result.exit_code == 2, result.output
    assert "voice.window: data 4000, teacher" in result.output
    assert not bad.exists()


# --- DDP ----------------------------------------------------------------------------------


def test_ddp_ranks_agree_and_shards_cover() -> None:
    script = Path(__file__).with_name("ddp_check.py")
    proc = subprocess.run(
        [_torchrun(), "--standalone", "--nproc-per-node", "2", str(script)],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert facts["disjoint"] and facts["same_weights"]
    assert facts["covered"] >= facts["windows"] - 1  # fewer than world left out


def _children(pid: int) -> list[int]:
    """Direct children of `pid`, from /proc (Linux)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _kill_torchrun(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a torchrun agent and its workers, as a crash or an OOM kill of the job would.

    torchrun starts each worker in its own session, so killing the agent's process group alone
    leaves the workers training on in the same run folder."""
    workers = _children(proc.pid)
    assert len(workers) >= 2, f"torchrun {proc.pid} has no workers yet: {workers}"
    os.killpg(proc.pid, signal.SIGKILL)
    for pid in workers:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    deadline = time.monotonic() + 30
    while any(_running(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_running(pid) for pid in workers), "torchrun's workers outlived SIGKILL"


def _running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (an orphan waits for its reaper as one)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_ddp_resume_is_exact(teacher_run: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["-m", "edgekd", "distill", "--teacher", str(teacher_run), "--recipe", "kd",
            "--epochs", "3", "--limit", "1200", "--quiet"]  # fmt: skip
    ddp = [_torchrun(), "--standalone", "--nproc-per-node", "2"]
    reference = tmp_path / "reference"
    proc = subprocess.run([*ddp, *args, "--out", str(reference)], capture_output=True, text=True,
                          timeout=300, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]

    out = tmp_path / "killed"
    proc = subprocess.Popen([*ddp, *args, "--out", str(out)], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    history = out / "history.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if history.exists() and len(json.loads(history.read_text() or "[]")) >= 1:
            break
        assert proc.poll() is None
        time.sleep(0.02)
    _kill_torchrun(proc)
    assert not (out / "metrics.json").exists(), "the run finished before it could be killed"
    proc = subprocess.run([*ddp, *args, "--out", str(out), "--resume"], capture_output=True,
                          text=True, timeout=300, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _metrics(out)["test"] == _metrics(reference)["test"]
    assert (out / MODEL_FILE).read_bytes() == (reference / MODEL_FILE).read_bytes()


def test_one_teacher_output_function_for_cached_online_and_qat(teacher_run: Path) -> None:
    from edgekd.checkpoint import load_run
    from edgekd.config import DistillConfig
    from edgekd.distill.teacher_outputs import student_teacher_outputs, teacher_forward
    from edgekd.modalities import ModalitySpec

    run = load_run(teacher_run, expect_role="teacher")
    specs = {m: ModalitySpec.from_dict(s) for m, s in run.sidecar["specs"].items()}
    val = load_dataset("har", limit=300, seed=0).splits["val"]
    windows = Windows.of((val, np.arange(50)))
    clean = {m: torch.from_numpy(preprocess(s, val.x[m][:50])) for m, s in specs.items()}
    logits, emb = student_teacher_outputs(run.model, specs, windows, DistillConfig(), "accel", 0)
    torch.testing.assert_close((logits, emb), teacher_forward(run.model, clean))
    corrupted = DistillConfig(teacher_corrupt=0.5)
    noisy, _ = student_teacher_outputs(run.model, specs, windows, corrupted, "accel", 0)
    changed = (noisy - logits).abs().amax(1) > 1e-5
    assert int(changed.sum()) == 25  # round(0.5 * 50) windows saw noise instead of the gyroscope
    restricted = DistillConfig(teacher_view="student")
    blind, _ = student_teacher_outputs(run.model, specs, windows, restricted, "accel", 0)
    torch.testing.assert_close(blind, teacher_forward(run.model, clean, ("gyro",))[0])
