"""How many CPU threads training may use: one policy for every command that trains.

The budget is `--threads N` when given, else OMP_NUM_THREADS when set, else the cores this process
may run on (its CPU affinity, not the machine's core count); it never exceeds the cores. Work that
runs `jobs` processes in parallel gives each max(1, budget // jobs) threads, so the total stays
within the budget unless there are more jobs than threads (then every job gets one, and
`ThreadPlan.oversubscribed` says so). On a shared machine a thread count above what the user set
makes every run slower, not faster: one busy core stalls a whole OpenMP team.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from edgekd.errors import ConfigError

ENV = "OMP_NUM_THREADS"


def usable_cores() -> int:
    """Cores this process may run on (CPU affinity where the OS has it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _from_env(env: Mapping[str, str]) -> int | None:
    raw = env.get(ENV, "").strip()
    if not raw:
        return None
    # OpenMP allows a comma list (one count per nesting level); the outer level is what we use.
    first = raw.split(",")[0].strip()
    if not first.isdigit() or int(first) < 1:
        raise ConfigError(f"{ENV}={raw!r} is not a positive integer thread count")
    return int(first)


@dataclass(frozen=True)
class ThreadPlan:
    """Threads per job for `jobs` parallel processes; `source` names where the budget came from."""

    budget: int
    jobs: int
    per_job: int
    source: str

    @property
    def oversubscribed(self) -> bool:
        """More jobs than threads in the budget: the total exceeds it (one thread each)."""
        return self.jobs * self.per_job > self.budget

    def describe(self) -> str:
        text = (
            f"{self.jobs} job{'s' if self.jobs > 1 else ''} x {self.per_job} "
            f"thread{'s' if self.per_job > 1 else ''} (budget {self.budget} from {self.source})"
        )
        if self.oversubscribed:
            text += f"; more jobs than threads: {self.jobs * self.per_job} threads in all"
        return text


def plan_threads(
    jobs: int = 1,
    requested: int | None = None,
    *,
    env: Mapping[str, str] | None = None,
    cores: int | None = None,
) -> ThreadPlan:
    """The thread budget (--threads > OMP_NUM_THREADS > cores, capped at the cores) split over
    `jobs` processes. ConfigError for a non-positive --threads, --jobs or OMP_NUM_THREADS."""
    if jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {jobs}")
    if requested is not None and requested < 1:
        raise ConfigError(f"--threads must be at least 1, got {requested}")
    cores = usable_cores() if cores is None else cores
    from_env = _from_env(os.environ if env is None else env)
    if requested is not None:
        budget, source = requested, "--threads"
    elif from_env is not None:
        budget, source = from_env, ENV
    else:
        budget, source = cores, "usable cores"
    if budget > cores:
        budget, source = cores, f"{source}, capped at the {cores} usable cores"
    return ThreadPlan(budget=budget, jobs=jobs, per_job=max(1, budget // jobs), source=source)
