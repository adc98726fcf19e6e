"""The Ray executor on a local multi-node cluster (`ray.cluster_utils.Cluster`: a head without
CPUs, so that every job runs on a worker node the test can kill): a job whose node dies is run
again on another node and resumes; a killed job is not; every node must share the jobs' folder;
a training job holds a GPU where the cluster has one; and a search whose worker node is killed
mid-trial completes with every finished trial kept.

Skipped where the 'ray' extra is missing or Ray cannot start. The jobs are module-level
functions of this module, which Ray's workers import (`cluster` puts it on their path)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.test_search_trust import _fake_predictor, fake_teacher  # noqa: F401 (a fixture)

STEP_S = 0.5  # one step (an epoch) of a fake job
# A node that stops answering is declared dead after about 3 x 0.5 s instead of Ray's default
# 15 s (a killed node's jobs are retried at once; the scheduler forgets the node only then).
FAST_NODE_DEATH = {"health_check_period_ms": 500, "health_check_failure_threshold": 3}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """A Ray cluster whose head has no CPUs, the driver connected to it; shut down after the
    module. Each test adds the worker nodes it needs (`workers`)."""
    ray = pytest.importorskip("ray", reason="the 'ray' extra is not installed")
    from ray.cluster_utils import Cluster

    try:
        head = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 0, "_system_config": FAST_NODE_DEATH},
        )
    except Exception as exc:
        pytest.skip(f"ray cannot start here: {exc}")
    try:
        # pytest imports this module as `test_executor_ray` (its folder first on sys.path):
        # Ray's workers find it, and the `tests` package it imports, on the same paths
        here = Path(__file__).parent
        paths = os.pathsep.join([str(here), str(here.parent)])
        ray.init(address=head.address, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": paths}})  # fmt: skip
        yield head
    finally:
        ray.shutdown()
        head.shutdown()


@pytest.fixture
def workers(cluster: Any) -> Iterator[list[Any]]:
    """Two worker nodes of one CPU each; the ones still alive are removed after the test."""
    nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
    try:
        yield nodes
    finally:
        for node in nodes:
            if node in cluster.worker_nodes:
                cluster.remove_node(node)


def _executor() -> Any:
    from edgekd.executor import make_executor

    return make_executor("ray", address="auto")  # the driver is connected: the executor uses it


def _node_id() -> str:
    import ray

    return str(ray.get_runtime_context().get_node_id())


def _append(path: Path, line: str) -> None:
    with path.open("a") as fh:  # one short write in append mode: lines never interleave
        fh.write(line + "\n")


def _wait_for(what: str, ready: Any, timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = ready()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.is_file() else []


def count_steps(folder: Path, steps: int) -> list[str]:
    """A job that resumes as a training does: it continues from the steps already recorded in
    `folder`/steps. Each start is logged in `folder`/starts as "<node id> <first step>"."""
    done = folder / "steps"
    first = len(_lines(done))
    _append(folder / "starts", f"{_node_id()} {first}")
    for step in range(first, steps):
        time.sleep(STEP_S)
        _append(done, str(step))
    return _lines(folder / "starts")


def test_a_job_whose_node_dies_runs_again_on_another_node_and_resumes(
    cluster: Any, workers: list[Any], tmp_path: Path
) -> None:
    ex = _executor()
    try:
        future = ex.submit(count_steps, tmp_path, 6)
        _wait_for("the first step", lambda: _lines(tmp_path / "steps"))
        first_node = _lines(tmp_path / "starts")[0].split()[0]
        cluster.remove_node(next(n for n in workers if n.node_id == first_node),
                            allow_graceful=False)  # fmt: skip
        starts = future.result(timeout=90)
    finally:
        ex.close()
    assert len(starts) == 2, starts  # killed once, run again once
    node, resumed_at = starts[1].split()
    assert node != first_node and int(resumed_at) >= 1  # on the other node, from its progress
    assert _lines(tmp_path / "steps") == [str(i) for i in range(6)]  # no step recorded twice


def test_a_killed_job_is_not_run_again(cluster: Any, workers: list[Any], tmp_path: Path) -> None:
    from edgekd.executor import JobLost

    ex = _executor()
    try:
        future = ex.submit(count_steps, tmp_path, 1000)
        _wait_for("the job's start", lambda: _lines(tmp_path / "starts"))
        ex.kill(future)
        with pytest.raises(JobLost):
            future.result(timeout=30)
        steps = len(_lines(tmp_path / "steps"))
        time.sleep(4 * STEP_S)  # a rerun would have started and counted by now
    finally:
        ex.close()
    assert len(_lines(tmp_path / "starts")) == 1
    assert len(_lines(tmp_path / "steps")) == steps


def _start_node_in_own_mount_namespace(address: str, hidden: Path, log: Path) -> Any:
    """`ray start` of a node that sees an empty tmpfs at `hidden` (its own mount namespace),
    with an empty folder at the shared folder's path in it: same path, another filesystem.
    None where this machine cannot do it (no root, no unshare)."""
    unshare = shutil.which("unshare")
    mount = [unshare, "-m", "mount", "-t", "tmpfs", "edgekd-test", str(hidden)]
    if unshare is None or subprocess.run(mount, capture_output=True).returncode != 0:
        return None
    ray_cli = str(Path(sys.executable).with_name("ray"))
    script = (f'mount -t tmpfs edgekd-test "{hidden}" && mkdir -p "{hidden}/shared" && '
              f'exec "{ray_cli}" start --address {address} --num-cpus 1 --block')  # fmt: skip
    with log.open("w") as out:
        return subprocess.Popen([unshare, "-m", "sh", "-c", script], stdout=out, stderr=out)


def test_every_node_must_share_the_jobs_folder(cluster: Any, workers: list[Any],
                                               tmp_path: Path) -> None:  # fmt: skip
    import ray

    from edgekd.errors import ConfigError

    hidden = tmp_path / "hidden"
    shared = hidden / "shared"
    ex = _executor()
    try:
        ex.check_shared(shared)  # both workers see this machine's folder: it passes
        assert not hidden.exists()  # the check created the folder for itself, then removed it
        hidden.mkdir()
        known = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        node = _start_node_in_own_mount_namespace(cluster.address, hidden, tmp_path / "ray.log")
        if node is None:
            pytest.skip("a node with its own mount namespace needs root and unshare")
        try:
            joined = _wait_for("the third node", lambda: [
                n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeID"] not in known
            ])[0]  # fmt: skip
            shared.mkdir()
            # it joined after the check: the next job is refused, naming it and the folder
            future = ex.submit(os.getpid)
            with pytest.raises(ConfigError, match=f"1 node.* do not share {shared}") as err:
                future.result(timeout=5)
            assert f"Ray node {joined}" in str(err.value)
            assert "mount one shared filesystem" in str(err.value)
            assert all(f"Ray node {w.node_id}" not in str(err.value) for w in workers)
            with pytest.raises(ConfigError, match=f"Ray node {joined}.*does not see the file"):
                ex.check_shared(shared)
        finally:
            node.terminate()  # `ray start --block` stops its node's processes on SIGTERM
            node.wait(timeout=60)
    finally:
        ex.close()


def test_a_training_job_holds_a_gpu_where_the_cluster_has_one(
    cluster: Any, workers: list[Any]
) -> None:
    from edgekd.executor import Resources, training_resources

    ex = _executor()
    try:
        assert training_resources(ex, 1) == Resources(cpus=1)
        gpu_node = cluster.add_node(num_cpus=1, num_gpus=1)  # declared: no device is needed
        try:
            wanted = training_resources(ex, 1)
            assert wanted == Resources(cpus=1, gpus=1.0)
            # Ray shows the job the GPU it holds, so the trainer's "CUDA where it sees one" is
            # that GPU and no other job's
            job = ex.submit(os.getenv, "CUDA_VISIBLE_DEVICES", resources=wanted)
            assert job.result(timeout=60) == "0"
        finally:
            cluster.remove_node(gpu_node)
    finally:
        ex.close()


# --- a search whose worker node dies mid-trial ---------------------------------------------


def _events(job: Any) -> Path:
    return job.out.parent / f"{job.out.name}.events"


def slow_execute(job: Any) -> dict[str, Any]:
    """A fake training on a Ray worker: one epoch per STEP_S into the run folder's history.json,
    continued from the epochs already there (as the real one continues from its checkpoint); a
    finished folder is read, not trained. Its starts and its finish go to `_events(job)`."""
    done = job.out / "metrics.json"
    if done.is_file():
        return json.loads(done.read_text())
    job.out.mkdir(parents=True, exist_ok=True)
    history_path = job.out / "history.json"
    history = json.loads(history_path.read_text()) if history_path.is_file() else []
    node = _node_id()
    _append(_events(job), f"start {node} {len(history)}")
    acc = 0.5 + job.cfg.train.lr  # a figure that differs between trials
    for epoch in range(len(history), job.cfg.train.epochs):
        time.sleep(STEP_S)
        history.append({"epoch": epoch + 1, "seconds": STEP_S, "val": {"accuracy": acc}})
        history_path.with_suffix(".tmp").write_text(json.dumps(history))
        history_path.with_suffix(".tmp").replace(history_path)
    metrics = {"val": {"accuracy": acc, "macro_f1": acc},
               "test": {"accuracy": acc, "macro_f1": acc}}  # fmt: skip
    done.with_suffix(".tmp").write_text(json.dumps(metrics))
    done.with_suffix(".tmp").replace(done)
    _append(_events(job), f"finish {node} {job.cfg.train.epochs}")
    return metrics


def test_a_search_completes_when_a_worker_node_dies_mid_trial(
    cluster: Any,
    workers: list[Any],
    fake_teacher: Path,  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import edgekd.distill.ablate.jobs as jobs
    import edgekd.search.latency
    import edgekd.search.plans
    from edgekd.search import SearchSpec, run_search
    from tests.test_search_trust import Fakes

    monkeypatch.setattr(jobs, "execute", slow_execute)  # pickled by name: workers import it
    monkeypatch.setattr(edgekd.search.latency, "LatencyPredictor", _fake_predictor(Fakes()))

    def paired_ce_config(cfg: Any, teacher: Path) -> tuple[Any, list[str]]:
        from edgekd.config import resolve_recipe

        return replace(cfg, distill=resolve_recipe("ce")), []

    # the real one plans with the data; the fake teacher is only a sidecar
    monkeypatch.setattr(edgekd.search.plans, "paired_ce_config", paired_ce_config)

    out = tmp_path / "search"
    killed: list[str] = []  # the run folder whose node was killed

    def kill_a_node_mid_trial() -> None:
        """Remove the node of the first trial to finish an epoch, while it trains."""

        def mid_trial() -> list[tuple[str, str]]:
            found = []
            for events in out.rglob("*.events"):
                starts = [line.split() for line in _lines(events)]
                history = events.with_suffix("") / "history.json"
                # 1 or 2 of its 4 epochs done: a second at least before it finishes
                if starts and history.is_file() and len(json.loads(history.read_text())) <= 2:
                    found.append((events.stem, starts[0][1]))
            return found

        folder, node = _wait_for("a trial mid-way", mid_trial, timeout_s=120)[0]
        killed.append(folder)
        cluster.remove_node(next(n for n in workers if n.node_id == node), allow_graceful=False)

    killer = threading.Thread(target=kill_a_node_mid_trial, daemon=True)
    killer.start()
    lines: list[str] = []
    spec = SearchSpec(
        teacher=fake_teacher, out=out, trials=3, epochs=4, archs=("tcn_tiny",), export=False,
        pruner="none", executor="ray", address=cluster.address, jobs=2, threads=2,
        finalists=1, final_seeds=1, final_epochs=2,
    )  # fmt: skip
    report = run_search(spec, log=lines.append)
    killer.join(timeout=5)
    assert killed, "no node was killed"
    assert report["counts"]["complete"] == 3, "\n".join(lines)
    assert not any(t.get("error") for t in report["trials"]), report["trials"]
    assert killed[0] in {Path(t["folder"]).name for t in report["trials"]}
    for events in out.rglob("*.events"):
        said = [line.split() for line in _lines(events)]
        starts = [s for s in said if s[0] == "start"]
        assert [s[0] for s in said].count("finish") == 1, (events, said)  # trained to the end once
        if events.stem == killed[0]:  # run again on the other node, from the epochs it had done
            assert len(starts) == 2 and starts[1][1] != starts[0][1], said
            assert int(starts[1][2]) >= 1, said
        else:  # every other run (those finished before the kill among them) ran once
            assert len(starts) == 1, (events, said)
