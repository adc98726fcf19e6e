"""The executor seam: local spawned processes (values, errors, kill, resources) and its errors."""

from __future__ import annotations

import multiprocessing
import os
import re
import sys
import time
from pathlib import Path

import pytest

from edgekd.errors import ConfigError, MissingExtra
from edgekd.executor import JobLost, Resources, make_executor


def test_local_runs_in_another_process_with_its_thread_budget() -> None:
    ex = make_executor("local", workers=2)
    try:
        pid = ex.submit(os.getpid)
        threads = ex.submit(os.getenv, "OMP_NUM_THREADS", resources=Resources(cpus=3))
        assert pid.result(timeout=60) != os.getpid()
        assert threads.result(timeout=60) == "3"
    finally:
        ex.close()


@pytest.mark.parametrize("kind", ["local", "ray"])
def test_the_job_error_comes_back_with_its_traceback(
    kind: str, request: pytest.FixtureRequest
) -> None:
    if kind == "ray":
        request.getfixturevalue("local_ray")
    ex = make_executor(kind)
    try:
        future = ex.submit(int, "not a number")
        # the job's own exception, not Ray's wrapper of it
        with pytest.raises(ValueError, match="^invalid literal") as err:
            future.result(timeout=60)
        remote = str(err.value.__cause__)
        assert re.search(r"line \d+, in ", remote) and "invalid literal" in remote
    finally:
        ex.close()


def _write_pid_and_sleep(path: Path, seconds: float) -> None:
    tmp = path.with_suffix(".tmp")  # renamed: the test never reads a half-written pid
    tmp.write_text(str(os.getpid()))
    tmp.replace(path)
    time.sleep(seconds)


def test_local_kill_stops_a_running_job_and_cancels_a_waiting_one(tmp_path: Path) -> None:
    ex = make_executor("local", workers=1)
    try:
        started = tmp_path / "pid"
        running = ex.submit(_write_pid_and_sleep, started, 120)
        waiting = ex.submit(os.getpid)
        deadline = time.monotonic() + 60
        while not started.is_file() and time.monotonic() < deadline:
            time.sleep(0.05)
        pid = int(started.read_text())
        t0 = time.monotonic()
        ex.kill(waiting)
        ex.kill(running)
        assert running.done()  # kill returns once the process is gone
        assert all(p.pid != pid for p in multiprocessing.active_children())
        with pytest.raises(JobLost, match="killed"):
            running.result(timeout=30)
        assert time.monotonic() - t0 < 20
        assert waiting.cancelled()
    finally:
        ex.close()


def test_errors_name_the_option() -> None:
    with pytest.raises(ConfigError, match="--executor 'dask' is not one of local, ray"):
        make_executor("dask")
    with pytest.raises(ConfigError, match="--jobs must be at least 1"):
        make_executor("local", workers=0)
    with pytest.raises(ConfigError, match="--address names a Ray cluster"):
        make_executor("local", address="auto")
    ex = make_executor("local")
    with pytest.raises(ConfigError, match="jetson-orin-nano exist only on a Ray cluster"):
        ex.submit(os.getpid, resources=Resources(custom={"jetson-orin-nano": 1}))
    with pytest.raises(ConfigError, match="at least 1 cpu"):
        Resources(cpus=0)


def test_local_jobs_share_this_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Locally there is nothing to check or to hold: a job sees this machine's folders and
    devices. An executor whose check fails is closed again."""
    from edgekd.executor import LocalExecutor, training_resources

    ex = make_executor("local", workers=2, shared=tmp_path / "out")
    assert not (tmp_path / "out").exists()  # checking creates nothing
    assert training_resources(ex, 3) == Resources(cpus=3)
    ex.close()

    closed: list[bool] = []

    def refuse(self: LocalExecutor, path: Path) -> None:
        raise ConfigError(f"not shared: {path}")

    monkeypatch.setattr(LocalExecutor, "check_shared", refuse)
    monkeypatch.setattr(LocalExecutor, "close", lambda self: closed.append(True))
    with pytest.raises(ConfigError, match="not shared"):
        make_executor("local", shared=tmp_path)
    assert closed == [True]


def test_ray_backend_without_ray_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(MissingExtra, match=r"pip install 'edgekd\[ray\]'"):
        make_executor("ray")


def test_a_local_ray_instance_fits_its_jobs_cpus() -> None:
    """Started here (no --address), Ray gets room for `workers` jobs of `cpus_per_job` each: a
    task asking for more CPUs than any node has would wait forever."""
    ray = pytest.importorskip("ray", reason="the 'ray' extra is not installed")
    try:
        ex = make_executor("ray", workers=2, cpus_per_job=3)
    except ConfigError as exc:  # e.g. no shared memory or sockets in a sandbox
        pytest.skip(str(exc))
    try:
        assert ray.cluster_resources()["CPU"] == 6
        jobs = [ex.submit(os.getpid, resources=Resources(cpus=3)) for _ in range(2)]
        assert all(job.result(timeout=60) > 0 for job in jobs)
    finally:
        ex.close()
    assert not ray.is_initialized()  # it started the instance, so it stopped it
