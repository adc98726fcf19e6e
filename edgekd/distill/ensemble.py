"""Teacher ensembles: several finished teacher runs combined into one teacher run folder.

The ensemble (`edgekd.models.teachers.TeacherEnsemble`, registered as `ensemble`) averages its
members' logits and concatenates their embeddings, so `edgekd distill --teacher ENSEMBLE_DIR`,
`edgekd ablate` and the restricted-teacher control work on it unchanged. Members must share the
labels, the modality specs (normalisation included) and the data split: otherwise they were
trained on different data and their average means nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgekd.checkpoint import CONFIG_FILE, load_run, save_model
from edgekd.distill.trainer import Dist, evaluate, split_tensors
from edgekd.errors import ConfigError
from edgekd.io import (
    atomic_copy_file,
    atomic_write_json,
    hidden_sibling,
    make_dirs,
    remove_tree,
    rename_path,
)
from edgekd.modalities import ModalitySpec

SHARED_KEYS = ("labels", "specs", "data")


def make_ensemble(teacher_dirs: Sequence[Path], out: Path) -> dict[str, Any]:
    """Write an `ensemble` teacher run to `out` from >= 2 teacher runs; returns its metrics."""
    from edgekd.data import load_dataset
    from edgekd.models.teachers import TeacherEnsemble

    if len(teacher_dirs) < 2:
        raise ConfigError(f"an ensemble needs at least 2 teacher runs, got {len(teacher_dirs)}")
    out = Path(out)
    if out.exists():
        raise ConfigError(f"{out} already exists; choose another --out")
    runs = [load_run(d, expect_role="teacher") for d in teacher_dirs]
    first = runs[0].sidecar
    for run in runs[1:]:
        for key in SHARED_KEYS:
            if run.sidecar[key] != first[key]:
                raise ConfigError(
                    f"{run.dir} and {runs[0].dir} differ in {key!r}: ensemble members must be "
                    "trained on the same data, split and labels (same --data and --limit)"
                )
    model = TeacherEnsemble([run.model for run in runs]).eval()
    members = [{"arch": r.sidecar["arch"], "arch_args": r.sidecar["arch_args"]} for r in runs]
    model.arch = "ensemble"
    model.arch_args = {
        "num_classes": len(first["labels"]),
        "input_shapes": first["arch_args"]["input_shapes"],
        "members": members,
    }
    specs = {m: ModalitySpec.from_dict(s) for m, s in first["specs"].items()}
    ds = load_dataset(first["data"]["source"], val_subjects=first["data"]["val_subjects"])
    k = len(first["labels"])
    metrics = {
        split: evaluate(model, *split_tensors(ds, split, specs, Dist()), k)
        for split in ("val", "test")
    }
    metrics["members"] = [str(Path(d).resolve()) for d in teacher_dirs]
    sidecar = {
        **{key: first[key] for key in (*SHARED_KEYS, "default_student")},
        "role": "teacher",
        "arch": "ensemble",
        "arch_args": model.arch_args,
        "params": sum(p.numel() for p in model.parameters()),
        "members": metrics["members"],
        "metrics": {"val": metrics["val"], "test": metrics["test"]},
    }
    staging = hidden_sibling(out, "staging")  # per writer: two ensembles never share one
    make_dirs(staging)
    try:
        atomic_copy_file(runs[0].dir / CONFIG_FILE, staging / CONFIG_FILE)
        save_model(staging, model, sidecar)
        atomic_write_json(staging / "metrics.json", metrics)
        rename_path(staging, out)
    except BaseException:
        remove_tree(staging)
        raise
    return metrics
