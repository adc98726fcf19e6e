"""One seam for running jobs elsewhere: a local process per job (default) or a Ray cluster.

    ex = make_executor("local", workers=2)            # or make_executor("ray", address="auto")
    future = ex.submit(train_one, job, resources=Resources(cpus=1))
    result = future.result()                          # a concurrent.futures.Future
    ex.kill(future)                                   # stop a running job (e.g. a pruned trial)
    ex.close()

Contracts:
- `fn` must be importable by name (a module-level function) and `fn`, its arguments and its
  result picklable: a job runs in another process, on the Ray backend maybe on another machine.
- Each local job gets a fresh process (multiprocessing "spawn": no inherited torch thread pools,
  nothing shared with the parent); `workers` jobs run at once, the others wait in submit order.
  `Resources.cpus` becomes OMP_NUM_THREADS in that process before `fn` is unpickled, so BLAS and
  torch pools start at that size (torch's count can still be set by `fn` itself).
- On Ray, `Resources` become the task's `num_cpus`, `num_gpus` and custom `resources`: a task
  that asks for {"jetson-orin-nano": 1} runs only on a node started with that resource. The local
  backend has no custom resources: asking for one is a ConfigError naming it.
- A training job asks for `training_resources`: one GPU where the Ray cluster has GPUs (the
  trainer takes CUDA wherever it sees a device, and Ray shows a task only the GPUs it was given).
- Jobs that write under a folder (`--out`) need every Ray node to see that folder:
  `check_shared` proves it with a token each node reads and writes back; a node that joins later
  is checked before the next job is submitted, and while it cannot see the folder every job
  submitted fails with the same ConfigError (it would otherwise train into a folder of its own).
- On Ray, a job whose worker process or node died is run again, at most RAY_TASK_RETRIES times,
  possibly on another node (never after an exception in `fn`, nor after `kill`): a training job
  resumes from the checkpoint in its run folder on the shared filesystem. Only then is it
  `JobLost`.
- An exception in `fn` is raised by `future.result()` with the remote traceback as its cause; a
  job whose process died (or was killed) raises `JobLost`. Both backends alike.
- Ray is imported only by the Ray backend; without it the error names `pip install 'edgekd[ray]'`.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import shutil
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from edgekd.errors import ConfigError, EdgeKDError, MissingExtra

EXECUTORS = ("local", "ray")
_KILL_GRACE_S = 5.0  # between SIGTERM and SIGKILL of a local job
_POLL_S = 0.2
# Runs of a Ray job after its worker process or node died (not after an exception in the job):
# enough for a node or two lost in one job's lifetime, few enough that a job which kills its
# worker every time (e.g. out of memory) is reported lost in reasonable time.
RAY_TASK_RETRIES = 3
CHECK_TIMEOUT_S = 120.0  # for every node's answer to `check_shared` (a node may start a worker)


class JobLost(EdgeKDError):
    """A job's process ended without a result: killed, out of memory, or crashed."""


@dataclass(frozen=True)
class Resources:
    """What one job needs: CPU threads, GPUs, and custom Ray resources (name -> amount)."""

    cpus: int = 1
    gpus: float = 0.0
    custom: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.cpus < 1:
            raise ConfigError(f"a job needs at least 1 cpu, got {self.cpus}")
        if self.gpus < 0 or any(v <= 0 for v in self.custom.values()):
            raise ConfigError(f"resource amounts must be positive: {self}")


class Executor(Protocol):
    """Where jobs run. `name`: "local" or "ray"."""

    name: str

    def submit(
        self, fn: Callable[..., Any], *args: Any, resources: Resources = Resources()
    ) -> Future: ...

    def kill(self, future: Future) -> None: ...

    def has_resource(self, name: str) -> bool: ...

    def check_shared(self, path: Path) -> None: ...

    def close(self) -> None: ...


def make_executor(
    kind: str = "local",
    *,
    workers: int = 1,
    address: str | None = None,
    cpus_per_job: int = 1,
    shared: Path | None = None,
) -> Executor:
    """The executor `kind` ("local" | "ray"). `workers`: jobs at once. `address`: a running Ray
    cluster (`ray start --head` prints it; "auto" finds the local one); without it a local Ray
    instance is started with `workers` x `cpus_per_job` CPUs, so that `workers` jobs asking for
    `cpus_per_job` each fit (a task asking for more CPUs than a node has never starts).
    `shared`: the folder the jobs write under, checked by `check_shared` before this returns
    (the executor is closed again when the check fails)."""
    check_executor(kind, address)
    if workers < 1:
        raise ConfigError(f"--jobs must be at least 1, got {workers}")
    executor: Executor = (
        LocalExecutor(workers) if kind == "local" else RayExecutor(address, workers * cpus_per_job)
    )
    if shared is not None:
        try:
            executor.check_shared(shared)
        except BaseException:
            executor.close()
            raise
    return executor


def training_resources(executor: Executor, threads: int) -> Resources:
    """What one training job asks for: `threads` CPUs, and one GPU where the Ray cluster has any.
    The trainer takes CUDA wherever it sees a device, so on a GPU node a job must hold a GPU: Ray
    then shows it that GPU alone (CUDA_VISIBLE_DEVICES) and runs no more trainings at once than
    there are GPUs. On a cluster with GPUs the trainings therefore run on its GPU nodes only.
    Locally a job sees the machine's devices and the jobs share them."""
    return Resources(cpus=threads, gpus=1.0 if executor.has_resource("GPU") else 0.0)


def check_executor(kind: str, address: str | None) -> None:
    """ConfigError naming --executor or --address when they are wrong; starts nothing, so a
    command can refuse them before its slower preparations."""
    if kind not in EXECUTORS:
        raise ConfigError(f"--executor {kind!r} is not one of {', '.join(EXECUTORS)}")
    if kind == "local" and address is not None:
        raise ConfigError("--address names a Ray cluster; use it with --executor ray")


# --- local: one spawned process per job ---------------------------------------------------------


def _exit_with_parent(parent: int) -> None:
    """End this job's process once its parent is gone: a SIGKILLed search must not leave
    orphans training into folders that its next run resumes."""
    while True:
        time.sleep(_POLL_S)
        if os.getppid() != parent:
            os._exit(1)


def _child(payload: bytes, threads: int, conn: Any, parent: int) -> None:
    """Entry point of a local job's process: set the thread env, run, send the outcome."""
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    try:
        fn, args = pickle.loads(payload)
        conn.send(("ok", fn(*args)))
    except BaseException as exc:  # everything goes back to the parent, which decides
        tb = traceback.format_exc()
        try:
            conn.send(("error", exc, tb))
        except Exception:  # an unpicklable exception: send its text
            conn.send(("error", RuntimeError(repr(exc)), tb))
    finally:
        conn.close()


class _RemoteTraceback(Exception):
    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


class LocalExecutor:
    """Jobs in spawned processes on this machine, `workers` at a time."""

    name = "local"

    def __init__(self, workers: int) -> None:
        self._context = multiprocessing.get_context("spawn")
        self._slots = threading.Semaphore(workers)
        self._procs: dict[int, Any] = {}  # id(future) -> its process once started
        self._killed: set[int] = set()
        self._lock = threading.Lock()

    def has_resource(self, name: str) -> bool:
        return False

    def check_shared(self, path: Path) -> None:
        """Nothing to check: a local job is a process on this machine and sees its folders."""

    def submit(
        self, fn: Callable[..., Any], *args: Any, resources: Resources = Resources()
    ) -> Future:
        if resources.custom:
            raise ConfigError(
                f"resource(s) {', '.join(resources.custom)} exist only on a Ray cluster whose "
                "nodes declare them (ray start --resources ...); use --executor ray"
            )
        payload = pickle.dumps((fn, args))  # fail here, in the caller, if it cannot travel
        future: Future = Future()
        threading.Thread(
            target=self._run, args=(future, payload, resources.cpus), daemon=True
        ).start()
        return future

    def _run(self, future: Future, payload: bytes, threads: int) -> None:
        with self._slots:
            if not future.set_running_or_notify_cancel():
                return
            try:
                outcome, why = self._start_and_wait(future, payload, threads)
            except Exception as exc:  # e.g. the process could not start: the caller must know
                future.set_exception(exc)
                return
        if outcome is None:
            future.set_exception(JobLost(f"job lost: {why}"))
        elif outcome[0] == "ok":
            future.set_result(outcome[1])
        else:
            exc = outcome[1]
            exc.__cause__ = _RemoteTraceback(outcome[2])
            future.set_exception(exc)

    def _start_and_wait(
        self, future: Future, payload: bytes, threads: int
    ) -> tuple[tuple[Any, ...] | None, str]:
        """(the child's message, or None; why there is none)."""
        receive, send = self._context.Pipe(duplex=False)
        proc = self._context.Process(target=_child, args=(payload, threads, send, os.getpid()))
        with self._lock:
            if id(future) in self._killed:
                return None, "killed before it started"
            proc.start()
            self._procs[id(future)] = proc
        send.close()  # the child holds the only writer now: EOF when it dies
        outcome = None
        try:
            outcome = receive.recv()
        except EOFError:
            pass
        proc.join()
        with self._lock:
            self._procs.pop(id(future), None)
            if id(future) in self._killed:
                return None, "killed"
        return outcome, f"its process exited with code {proc.exitcode}"

    def kill(self, future: Future) -> None:
        """Cancel a waiting job; terminate a running one (SIGTERM, then SIGKILL) and return once
        its process has ended and its future is settled."""
        if future.cancel():
            return
        with self._lock:
            self._killed.add(id(future))
            proc = self._procs.get(id(future))
        if proc is None:
            return
        proc.terminate()
        # The job's thread alone reaps the process, then settles the future: a second waiter
        # (a join here) races it for the exit status and can see the ended process as alive.
        if not wait([future], _KILL_GRACE_S).done:
            proc.kill()
            wait([future], _KILL_GRACE_S)

    def close(self) -> None:
        with self._lock:
            procs = list(self._procs.values())
        for proc in procs:
            proc.terminate()


# --- Ray ----------------------------------------------------------------------------------------


def import_ray() -> Any:
    """The ray module; MissingExtra naming the pip line when it is not installed."""
    try:
        import ray
    except ImportError as exc:
        raise MissingExtra(
            f"--executor ray needs the 'ray' extra ({exc}): pip install 'edgekd[ray]'"
        ) from exc
    return ray


def _ray_call(fn: Callable[..., Any], args: tuple[Any, ...], threads: int) -> Any:
    # Ray reuses worker processes, so this only sizes pools a fresh worker has not started yet;
    # jobs that train set torch's thread count themselves.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    return fn(*args)


_TOKEN = "token"  # the file of a `check_shared` folder the driver writes


def _answer_check(folder: str, name: str) -> str | None:
    """On one node: copy the driver's token in `folder` to the file `name` beside it; None when
    done, else what this node could not do."""
    here = Path(folder)
    try:
        token = (here / _TOKEN).read_text()
    except OSError as exc:
        why = exc.strerror or exc
        return f"does not see the file this machine wrote, {here / _TOKEN} ({why})"
    try:
        (here / name).write_text(token)
    except OSError as exc:
        return f"cannot write into {here} ({exc.strerror or exc})"
    return None


def _first_missing(folder: Path) -> Path | None:
    """The outermost of `folder` and its parents that does not exist, or None."""
    missing = None
    for d in (folder, *folder.parents):
        if d.exists():
            break
        missing = d
    return missing


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class RayExecutor:
    """Ray tasks with `Resources` as their requirements; connects to `address` or starts a
    local Ray instance with `cpus` CPUs (shut down again by `close`). A task whose worker or
    node died is run again (RAY_TASK_RETRIES), on any node that fits."""

    name = "ray"

    def __init__(self, address: str | None, cpus: int) -> None:
        self._ray = ray = import_ray()
        self._owns = not ray.is_initialized()
        if self._owns:
            try:
                if address is None:
                    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
                else:
                    ray.init(address=address, include_dashboard=False, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = f"the Ray cluster at {address}" if address else "a local Ray instance"
                raise ConfigError(f"--executor ray: cannot start or reach {where}: {exc}") from exc
        self._refs: dict[int, Any] = {}
        # retry_exceptions=False: an exception in `fn` is its answer, not a reason to run it again
        self._task = ray.remote(max_retries=RAY_TASK_RETRIES, retry_exceptions=False)(_ray_call)
        # no CPU asked: the check must not wait behind the jobs that fill a node
        self._answer = ray.remote(num_cpus=0, max_retries=0)(_answer_check)
        self._shared: Path | None = None
        self._checked: set[str] = set()  # ids of the nodes that passed the check
        self._check_lock = threading.Lock()

    def has_resource(self, name: str) -> bool:
        return name in self._ray.cluster_resources()

    def check_shared(self, path: Path) -> None:
        """ConfigError naming every node (address, Ray node id) that cannot read a token this
        process writes under `path`, or write one back that this process reads: each node must
        see this very folder (a shared filesystem mounted at the same path), not a folder of
        its own under the same name. Every alive node that offers CPUs is checked (any of them
        may be given a job), each by a task pinned to it. `path` is created for the check when
        missing and removed again: the check leaves nothing behind. A node that joins later is
        checked by the next `submit`, whose future fails with this ConfigError while that node
        cannot see the folder (Ray could place the job there)."""
        with self._check_lock:
            self._shared, self._checked = path.absolute(), set()
            self._check(self._job_nodes())

    def _job_nodes(self) -> dict[str, str]:
        """The alive nodes that can run a job (they offer CPUs): Ray node id -> a name for it."""
        return {
            n["NodeID"]: f"{n['NodeManagerAddress']} ({n['NodeManagerHostname']}, Ray node "
            f"{n['NodeID']})"
            for n in self._ray.nodes()
            if n["Alive"] and n["Resources"].get("CPU", 0) > 0
        }

    def _check(self, nodes: Mapping[str, str]) -> None:
        """Check `nodes` (id -> name) against `self._shared`; the ones that pass are recorded."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        assert self._shared is not None
        folder = self._shared
        made = _first_missing(folder)
        probe = folder / f".edgekd-check-{uuid.uuid4().hex}"
        token = uuid.uuid4().hex
        try:
            try:
                probe.mkdir(parents=True)
                (probe / _TOKEN).write_text(token)
            except OSError as exc:
                raise ConfigError(f"cannot write into {folder} here: {exc}") from exc
            refs = {
                node: self._answer.options(
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)
                ).remote(str(probe), node)
                for node in nodes
            }
            ready, late = self._ray.wait(
                list(refs.values()), num_returns=len(refs), timeout=CHECK_TIMEOUT_S
            )
            for ref in late:
                self._ray.cancel(ref, force=True)
            alive = self._job_nodes()  # a node that died meanwhile runs no job: not a problem
            problems = []
            for node, ref in refs.items():
                why = self._why_not(ref, ready, probe / node, token)
                if why is None:
                    self._checked.add(node)
                elif node in alive:
                    problems.append(f"{nodes[node]} {why}")
        finally:
            shutil.rmtree(probe, ignore_errors=True)
            if made is not None:  # the folders the check created, innermost first
                for d in (folder, *folder.parents):
                    try:
                        d.rmdir()
                    except OSError:  # something else was written there meanwhile: it stays
                        break
                    if d == made:
                        break
        if problems:
            raise ConfigError(
                f"--executor ray: {len(problems)} node(s) do not share {folder} with this "
                "machine: " + "; ".join(problems) + ". Every node may run jobs that write "
                "there, and this machine reads what they write: mount one shared filesystem "
                "(e.g. NFS) at the same path on every node and put the folder on it, or leave "
                "the nodes that lack it out of the cluster (`ray stop` on them)"
            )

    def _check_joined(self) -> None:
        """After `check_shared`: check the nodes that joined since (ConfigError as it gives)."""
        if self._shared is None:
            return
        with self._check_lock:
            joined = {k: v for k, v in self._job_nodes().items() if k not in self._checked}
            if joined:
                self._check(joined)

    def _why_not(self, ref: Any, ready: Sequence[Any], answer: Path, token: str) -> str | None:
        """None when a node's check task answered and its answer is in the folder seen here."""
        if ref not in ready:
            return f"did not answer within {CHECK_TIMEOUT_S:.0f} s"
        try:
            said = self._ray.get(ref)
        except self._ray.exceptions.RayError as exc:
            return f"could not run the check ({_first_line(exc)})"
        if said is not None:
            return said
        try:
            if answer.read_text() == token:
                return None
        except OSError:
            pass
        return "read the token but wrote its answer into a folder that this machine does not see"

    def submit(
        self, fn: Callable[..., Any], *args: Any, resources: Resources = Resources()
    ) -> Future:
        try:
            self._check_joined()
        except ConfigError as exc:  # settles the future, as a job's own error would
            failed: Future = Future()
            failed.set_exception(exc)
            return failed
        options: dict[str, Any] = {"num_cpus": resources.cpus, "num_gpus": resources.gpus}
        if resources.custom:
            options["resources"] = dict(resources.custom)
        ref = self._task.options(**options).remote(fn, args, resources.cpus)
        future: Future = Future()
        ref.future().add_done_callback(lambda done: self._relay(done, future))
        self._refs[id(future)] = ref
        return future

    def _relay(self, done: Future, future: Future) -> None:
        """Settle `future` as a local job's: fn's own exception with the remote traceback as its
        cause (Ray wraps it in a RayTaskError whose text is the traceback), JobLost when the
        task's worker or node died RAY_TASK_RETRIES + 1 times, ran out of memory, or was
        killed."""
        errors = self._ray.exceptions
        exc = done.exception()
        if exc is None:
            future.set_result(done.result())
        elif isinstance(exc, errors.RayTaskError) and isinstance(exc.cause, Exception):
            exc.cause.__cause__ = _RemoteTraceback(str(exc))
            future.set_exception(exc.cause)
        elif isinstance(
            exc,
            (
                errors.TaskCancelledError,
                errors.WorkerCrashedError,
                errors.NodeDiedError,
                errors.OutOfMemoryError,
            ),
        ):
            future.set_exception(JobLost(f"job lost: {exc}"))
        else:
            future.set_exception(exc)

    def kill(self, future: Future) -> None:
        """Stop the job's task (its worker is killed); Ray never runs a cancelled task again."""
        ref = self._refs.get(id(future))
        if ref is not None:
            self._ray.cancel(ref, force=True)

    def close(self) -> None:
        if self._owns:
            self._ray.shutdown()
