"""Statistics over seeds (percentage points): mean ± s.e., the paired gain with its two-sided
95% t-interval, the share of the teacher-student gap closed, and their text forms."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

METRICS = ("accuracy", "macro_f1")

# Two-sided 95% quantiles of Student's t, t_{0.975, df}, df = 1..30 (standard tables).
T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
Z975 = 1.959963984540054


def t_quantile_975(df: int) -> float:
    """t_{0.975, df}: the table for df <= 30, a Cornish-Fisher expansion beyond (error < 1e-3)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(T975):
        return T975[df - 1]
    z = Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def summarize(values: Sequence[float]) -> dict[str, float | int | None]:
    """Mean and standard error (sample s.d. / sqrt(n)); se is None for n = 1."""
    n = len(values)
    if n == 0:
        raise ValueError("no values to summarize")
    mean = sum(values) / n
    if n == 1:
        return {"mean": mean, "se": None, "n": 1}
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return {"mean": mean, "se": math.sqrt(var / n), "n": n}


def paired_interval(a: dict[int, float], b: dict[int, float]) -> dict[str, Any] | None:
    """Mean of a[s] - b[s] over the seeds both have, with its 95% t-interval (None bounds for
    one seed); None when they share no seed."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    stats = summarize([a[s] - b[s] for s in seeds])
    mean, se = stats["mean"], stats["se"]
    half = None if se is None else t_quantile_975(len(seeds) - 1) * se
    return {
        "mean": mean,
        "lo": None if half is None else mean - half,
        "hi": None if half is None else mean + half,
        "n": len(seeds),
    }


def format_mean_se(stat: dict[str, Any]) -> str:
    """`summarize`'s result as "mean ± se" (the mean alone for one value)."""
    se = stat["se"]
    return f"{stat['mean']:.2f}" + ("" if se is None else f" ± {se:.2f}")


def format_interval(stat: dict[str, Any] | None) -> str:
    """`paired_interval`'s result as "+mean [+lo, +hi]" (no bounds for one seed, "-" for none)."""
    if stat is None:
        return "-"
    if stat["lo"] is None:
        return f"{stat['mean']:+.2f}"
    return f"{stat['mean']:+.2f} [{stat['lo']:+.2f}, {stat['hi']:+.2f}]"


def gap_closed(run: float, ce: float, teacher: float) -> float | None:
    """Share of the teacher - CE gap that `run` closes, (run - ce) / (teacher - ce); None when
    the teacher is not better than CE (no gap to close)."""
    gap = teacher - ce
    return None if gap <= 0 else (run - ce) / gap
