"""Run folders: create or resume, save the config and the plan, and leave nothing behind on early
failure."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgekd.checkpoint import CONFIG_FILE, SIDECAR_FILE, STATE_FILE
from edgekd.config import RunConfig, save_config, to_dict
from edgekd.distill.loop import Dist, barrier
from edgekd.distill.plan import RunPlan
from edgekd.errors import ConfigError
from edgekd.io import atomic_write_json

PLAN_FILE = "plan.json"


def prepare_out(out: Path, resume: bool, d: Dist) -> bool:
    """Check the output folder; return True when this call created it."""
    out = Path(out)
    finished_or_started = (out / STATE_FILE).exists() or (out / SIDECAR_FILE).exists()
    if resume:
        if not (out / STATE_FILE).exists():
            raise ConfigError(
                f"nothing to resume in {out}: no {STATE_FILE} (start without --resume)"
            )
        return False
    if finished_or_started:
        raise ConfigError(
            f"{out} already holds a run: pass --resume to continue it, or choose another --out"
        )
    created = not out.exists()
    barrier(d)
    if d.is_main:
        out.mkdir(parents=True, exist_ok=True)
    return created


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


def check_resume_config(out: Path, cfg: RunConfig) -> None:
    from edgekd.checkpoint import json_safe_yaml

    saved = json_safe_yaml(out / CONFIG_FILE)
    if saved != to_dict(cfg):
        raise ConfigError(
            f"--resume with a config that differs from the one saved in {out / CONFIG_FILE}; "
            "resume with the same options (or start a new run)"
        )


def run_in_folder(
    out: Path, plan: RunPlan, resume: bool, d: Dist, body: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """Create/validate the folder, save the resolved config and `plan.json`, run; remove a folder
    this call made if it fails before the first epoch finished (bad input leaves no partial run
    behind)."""
    created = prepare_out(out, resume, d)
    if resume:
        check_resume_config(out, plan.config)
    elif d.is_main:
        save_config(plan.config, out / CONFIG_FILE)
    if d.is_main:
        atomic_write_json(out / PLAN_FILE, plan.to_dict())
    try:
        return body()
    except BaseException:
        if created and d.is_main and not (out / STATE_FILE).exists():
            shutil.rmtree(out, ignore_errors=True)
        raise
