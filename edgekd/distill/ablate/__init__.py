"""`edgekd ablate`: the distillation table over seeds, by concern: `rows` (the runs and their
controls), `stats` (paired statistics), `jobs` (trainings on an executor), `teachers` (each
seed's teacher), `core` (the ablation itself: plan, run, summarize; its folder layout) and
`report` (table and chart).

    from edgekd.distill.ablate import AblationSpec, ablate, format_table
    print(format_table(ablate(AblationSpec(teacher=Path("runs/teacher"), out=Path("runs/ablate")))))
"""

from edgekd.distill.ablate.core import (
    AblationSpec,
    ablate,
    describe_plan,
    plan,
    read_teacher,
    row_plans,
    unintended,
)
from edgekd.distill.ablate.jobs import Job, JobFailed, execute, run_jobs
from edgekd.distill.ablate.report import format_table
from edgekd.distill.ablate.rows import DEFAULT_RUNS, augmentation_off, run_config, run_names
from edgekd.distill.ablate.stats import (
    format_interval,
    format_mean_se,
    gap_closed,
    paired_interval,
    summarize,
    t_quantile_975,
)
from edgekd.distill.ablate.teachers import teacher_modality_dropout

__all__ = [
    "DEFAULT_RUNS",
    "AblationSpec",
    "Job",
    "JobFailed",
    "ablate",
    "augmentation_off",
    "describe_plan",
    "execute",
    "format_interval",
    "format_mean_se",
    "format_table",
    "gap_closed",
    "paired_interval",
    "plan",
    "read_teacher",
    "row_plans",
    "run_config",
    "run_jobs",
    "run_names",
    "summarize",
    "t_quantile_975",
    "teacher_modality_dropout",
    "unintended",
]
