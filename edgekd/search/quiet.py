"""Whether this machine is quiet enough to time a model on, and timing only when it is.

A latency taken while other work shares the cores is too high (measured: 2 of 8 prices 1.5-1.7x
while other trials trained beside them). `sample` takes the machine's conditions:

- busy cores: the CPU time spent on the cores this process may use (`os.sched_getaffinity`)
  over WINDOW_S, from /proc/stat, while this process sleeps; busy when fewer than
  FREE_CORES_NEEDED are left free. The 1-minute load average is recorded beside it and judged
  only where /proc/stat cannot be read: it lags by about a minute (on 2 cores it still reads a
  finished 2-thread trial as busy 40 s later), so judging it would flag quiet timings;
- the reference kernel: a fixed float32 matmul (REFERENCE_N x REFERENCE_N, small enough that
  BLAS runs it on one thread, as the timing runs), median of REFERENCE_RUNS runs of
  REFERENCE_REPEAT products, in ms, against the quietest reference seen (by this process, and
  by the caller's store: see `remember_reference`); busy when REFERENCE_SLOWDOWN times slower.
  It sees what core counts miss: a lowered clock, a sibling hyperthread, memory bandwidth.

`quietly(measure, max_wait_s)` waits (polling every POLL_S) for a quiet sample, measures, samples
again, and measures again while either sample was busy and `max_wait_s` has not run out. Its
`Conditions` are the worse of the two samples around the measurement kept; `noisy` means it was
taken busy all the same.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar

import numpy as np

FREE_CORES_NEEDED = 1.0  # the timing runs on one thread
# A quiet machine repeats the reference within a few percent; the slowdown that spoiled prices
# was 1.5-1.7x: 1.25 sits between the two.
REFERENCE_SLOWDOWN = 1.25
REFERENCE_N = 64  # 64^3 multiply-adds: below OpenBLAS's threshold for a second thread
REFERENCE_REPEAT = 1000  # products per run: about 5 ms on a recent x86 core
REFERENCE_RUNS = 5
WINDOW_S = 0.5  # over which busy cores are counted
POLL_S = 2.0
MAX_WAIT_S = 30.0

T = TypeVar("T")

_quietest: float | None = None  # the quietest reference (ms) this process has seen


@dataclass(frozen=True)
class Conditions:
    """The machine around a timing. `cores`: usable by this process; `busy_cores`: in use by
    other work over WINDOW_S (the 1-min load average where /proc/stat is unreadable);
    `load_1m`: the 1-min load average; `reference_ms` against `quiet_reference_ms`; `noisy` and
    `reason` (empty when quiet); `waited_s`: spent waiting for quiet; `at`: UTC, ISO 8601."""

    cores: int
    busy_cores: float
    load_1m: float
    reference_ms: float
    quiet_reference_ms: float
    noisy: bool
    reason: str
    waited_s: float
    at: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def usable_cores() -> int:
    """Cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def load_1m() -> float:
    return os.getloadavg()[0]


def _cpu_jiffies() -> tuple[int, int] | None:
    """(busy, total) clock ticks of the usable cores since boot; None without /proc/stat."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    try:
        with open("/proc/stat", encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    busy = total = 0
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        if cpus is not None and int(name[3:]) not in cpus:
            continue
        # user nice system idle iowait irq softirq steal (guest time is inside user already)
        ticks = [int(v) for v in fields[:8]]
        total += sum(ticks)
        busy += sum(ticks) - ticks[3] - ticks[4]
    return busy, total


def busy_cores() -> float:
    """Cores in use by other work: CPU time over WINDOW_S while this process sleeps, or the
    1-min load average where /proc/stat is unreadable."""
    first = _cpu_jiffies()
    time.sleep(WINDOW_S)
    last = _cpu_jiffies()
    if first is None or last is None or last[1] <= first[1]:
        return load_1m()
    return usable_cores() * (last[0] - first[0]) / (last[1] - first[1])


def reference_ms() -> float:
    """Median time (ms) of REFERENCE_RUNS runs of the reference kernel."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((REFERENCE_N, REFERENCE_N)).astype(np.float32)
    b = rng.standard_normal((REFERENCE_N, REFERENCE_N)).astype(np.float32)
    runs = []
    for _ in range(REFERENCE_RUNS):
        start = time.perf_counter()
        for _ in range(REFERENCE_REPEAT):
            a @ b
        runs.append((time.perf_counter() - start) * 1e3)
    return float(np.median(runs))


def quiet_reference_ms() -> float | None:
    """The quietest reference (ms) seen by this process, or given to `remember_reference`."""
    return _quietest


def remember_reference(ms: float) -> None:
    """Lower this process's quiet reference to `ms` (a measurement, or a stored one: a store
    keeps it across processes, so a machine busy from the start is still recognised)."""
    global _quietest
    _quietest = ms if _quietest is None else min(_quietest, ms)


def _judge(cores: int, busy: float, load: float, reference: float, waited_s: float,
           at: str) -> Conditions:  # fmt: skip
    quiet = quiet_reference_ms() or reference
    reasons = []
    if cores - busy < FREE_CORES_NEEDED:
        reasons.append(f"{busy:.1f} of {cores} cores busy")
    if reference > REFERENCE_SLOWDOWN * quiet:
        reasons.append(f"reference kernel {reference / quiet:.2f}x its quiet time")
    return Conditions(cores, round(busy, 3), round(load, 3), round(reference, 4),
                      round(quiet, 4), bool(reasons), "; ".join(reasons), round(waited_s, 3),
                      at)  # fmt: skip


def sample(waited_s: float = 0.0) -> Conditions:
    """The machine's conditions now (takes about WINDOW_S)."""
    at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    busy = busy_cores()
    reference = reference_ms()
    remember_reference(reference)
    return _judge(usable_cores(), busy, load_1m(), reference, waited_s, at)


def _worse(before: Conditions, after: Conditions, waited_s: float) -> Conditions:
    """The conditions of a measurement between two samples: the worse figure of each."""
    return _judge(before.cores, max(before.busy_cores, after.busy_cores),
                  max(before.load_1m, after.load_1m),
                  max(before.reference_ms, after.reference_ms), waited_s, before.at)  # fmt: skip


def quietly(measure: Callable[[], T], max_wait_s: float = MAX_WAIT_S) -> tuple[T, Conditions]:
    """`measure()` taken when the machine is quiet, waiting at most `max_wait_s` (s) in all for
    quiet (0: measure once, now); its result and conditions (`noisy` when busy all the same)."""
    deadline = time.monotonic() + max_wait_s
    waited = 0.0

    def pause() -> bool:
        """Sleep one poll (at most the time left); False when none is left."""
        nonlocal waited
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        step = min(POLL_S, left)
        time.sleep(step)
        waited += step
        return True

    while True:
        before = sample(waited)
        while before.noisy and pause():
            before = sample(waited)
        result = measure()
        conditions = _worse(before, sample(), waited)
        # busy during the measurement: let it settle, then take it again
        if not conditions.noisy or not pause():
            return result, conditions
