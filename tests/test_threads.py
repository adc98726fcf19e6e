"""The thread policy: --threads > OMP_NUM_THREADS > usable cores, capped at the cores, split
over parallel jobs."""

from __future__ import annotations

import pytest

from edgekd.errors import ConfigError
from edgekd.threads import plan_threads, usable_cores


def test_budget_precedence_and_cap() -> None:
    env = {"OMP_NUM_THREADS": "2"}
    # The environment beats the cores (the case that slowed a run 20x: it was ignored).
    plan = plan_threads(1, env=env, cores=16)
    assert (plan.budget, plan.per_job, plan.source) == (2, 2, "OMP_NUM_THREADS")
    # --threads beats the environment.
    assert plan_threads(1, 3, env=env, cores=16).budget == 3
    # Neither: the usable cores.
    assert plan_threads(1, env={}, cores=6).budget == 6
    # Never more than the cores, whoever asks.
    capped = plan_threads(1, 64, env=env, cores=4)
    assert capped.budget == 4 and "capped at the 4 usable cores" in capped.source
    assert plan_threads(1, env={"OMP_NUM_THREADS": "8"}, cores=2).budget == 2
    # OpenMP's nested form "outer,inner": the outer level counts.
    assert plan_threads(1, env={"OMP_NUM_THREADS": "3,1"}, cores=8).budget == 3


def test_split_over_jobs() -> None:
    plan = plan_threads(2, env={"OMP_NUM_THREADS": "5"}, cores=16)
    assert plan.per_job == 2 and not plan.oversubscribed  # 2 x 2 <= 5
    assert plan.describe() == "2 jobs x 2 threads (budget 5 from OMP_NUM_THREADS)"
    over = plan_threads(4, env={}, cores=2)
    assert over.per_job == 1 and over.oversubscribed
    assert "more jobs than threads: 4 threads in all" in over.describe()
    assert (
        plan_threads(1, 1, env={}, cores=8).describe()
        == "1 job x 1 thread (budget 1 from --threads)"
    )


@pytest.mark.parametrize(
    ("jobs", "requested", "env", "message"),
    [(0, None, {}, "--jobs must be at least 1"),
     (1, 0, {}, "--threads must be at least 1"),
     (1, None, {"OMP_NUM_THREADS": "zero"}, "OMP_NUM_THREADS='zero' is not a positive integer"),
     (1, None, {"OMP_NUM_THREADS": "0"}, "OMP_NUM_THREADS='0'")],
)  # fmt: skip
def test_bad_settings(jobs: int, requested: int | None, env: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        plan_threads(jobs, requested, env=env, cores=4)


def test_usable_cores_is_positive() -> None:
    assert usable_cores() >= 1
