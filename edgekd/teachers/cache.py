"""`edgekd teacher cache`: a teacher's outputs over every window of the paired data, computed once.

A cache is a folder that is itself an outside teacher (`distill --teacher DIR` takes it):
- `outputs.npz`: `keys` ("sample id#window index"), `window_sha` (blake2b-128 hex of each window's
  raw bytes, the card's modalities in order) and one array per output (`logits`, `embedding`);
- `teacher.yaml`: a card with `source: outputs` over outputs.npz (its sha256), the original
  card's labels, label map, inputs and licence, and `data:` (the data it was computed on);
- `fingerprint.json`: the original teacher's provenance (weights sha256, card sha256), the data
  source, the window settings of the card's modalities, and the window count.

Before a cache is used, `check_fingerprint` compares it with the data as loaded now and refuses
(ConfigError naming what changed) a cache of other window settings, or one that lacks a training
window or holds other bytes for it. The folder is written beside its destination and renamed
into place in one step, so a failed or interrupted run leaves no cache behind.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from edgekd.data.pipeline import Windows
from edgekd.errors import ConfigError
from edgekd.io import atomic_write_bytes, atomic_write_json, atomic_write_text, remove_tree
from edgekd.teachers.card import CARD_FILE, TeacherCard, file_sha256

OUTPUTS_FILE = "outputs.npz"
FINGERPRINT_FILE = "fingerprint.json"
_WINDOW_KEYS = ("kind", "rate_hz", "channels", "window", "hop", "size")


def window_sha(raw: dict[str, np.ndarray], modalities: tuple[str, ...]) -> np.ndarray:
    """blake2b-128 hex digest of each window's raw float32 bytes over `modalities`, in order."""
    n = len(raw[modalities[0]])
    flat = [np.ascontiguousarray(raw[m], dtype=np.float32).reshape(n, -1) for m in modalities]
    out = []
    for i in range(n):
        h = hashlib.blake2b(digest_size=16)
        for part in flat:
            h.update(part[i].tobytes())
        out.append(h.hexdigest())
    return np.array(out)


def _window_settings(ds: Any, modalities: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    out = {}
    for m in modalities:
        spec = ds.specs[m].to_dict()
        out[m] = {k: spec[k] for k in _WINDOW_KEYS if k in spec}
    return out


def all_windows(ds: Any) -> Windows:
    """Every window of every split (labelled and unlabelled), in split order."""
    return Windows.of(*((s, np.arange(len(s))) for s in ds.splits.values()))


def write_cache(card: TeacherCard, ds: Any, out: Path, progress: bool = True) -> dict[str, Any]:
    """Run the teacher of `card` once over every window of `ds` and publish the cache folder
    `out` (which must not exist); returns the fingerprint."""
    from edgekd.teachers.teacher import OutsideTeacher

    out = Path(out)
    if out.exists():
        raise ConfigError(f"{out} already exists; choose another --out or remove it")
    if card.source == "outputs":
        raise ConfigError("this card already holds precomputed outputs; there is nothing to cache")
    teacher = OutsideTeacher(card, ds.specs)
    windows = all_windows(ds)
    modalities = card.modalities
    keys, digests = windows.ids(np.arange(len(windows))), []
    for lo in range(0, len(windows), 4096):
        raw, _ = windows.fetch(np.arange(lo, min(lo + 4096, len(windows))), list(modalities))
        digests.append(window_sha(raw, modalities))
    outputs = teacher.window_outputs(windows)
    arrays = {"keys": keys.astype(str), "window_sha": np.concatenate(digests)}
    out_spec: dict[str, Any] = {}
    if outputs.logits is not None:
        arrays["logits"] = outputs.logits
        out_spec["logits"] = {"name": "logits"}
    if outputs.embedding is not None:
        arrays["embedding"] = outputs.embedding
        out_spec["embedding"] = {"name": "embedding"}
    fingerprint = {
        "teacher": card.provenance(),
        "data": {"source": str(ds.source), "windows": len(windows)},
        "window_settings": _window_settings(ds, modalities),
    }
    staging = out.parent / f".{out.name}.{os.getpid()}.staging"
    remove_tree(staging)
    staging.mkdir(parents=True)
    try:
        import io

        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        atomic_write_bytes(staging / OUTPUTS_FILE, buffer.getvalue())
        cache_card = {
            "source": "outputs",
            "name": card.provenance()["name"],
            "path": OUTPUTS_FILE,
            "sha256": file_sha256(staging / OUTPUTS_FILE),
            "inputs": card.raw["inputs"],
            "outputs": out_spec,
            "labels": list(card.labels),
            "label_map": dict(card.label_map),
            "disjoint": card.disjoint,
            "licence": card.licence,
            "data": str(ds.source),
        }
        atomic_write_text(staging / CARD_FILE, yaml.safe_dump(cache_card, sort_keys=False))
        atomic_write_json(staging / FINGERPRINT_FILE, fingerprint)
        from edgekd.io import rename_path

        rename_path(staging, out)
    except BaseException:
        remove_tree(staging)
        raise
    return fingerprint


def check_fingerprint(card: TeacherCard, ds: Any) -> None:
    """ConfigError when the cache of `card` (a card with a fingerprint beside it) no longer
    matches `ds`: other window settings, or training windows it lacks or holds other bytes for.
    Cards without a fingerprint pass."""
    import json

    path = card.dir / FINGERPRINT_FILE
    if card.source != "outputs" or not path.is_file():
        return
    try:
        fingerprint = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} is not readable JSON: {exc}") from exc
    modalities = card.modalities
    now = _window_settings(ds, modalities)
    then = fingerprint.get("window_settings", {})
    changed = [
        f"{m}.{k}: cache {then.get(m, {}).get(k)!r}, data now {v!r}"
        for m in modalities
        for k, v in now[m].items()
        if then.get(m, {}).get(k) != v
    ]
    if changed:
        raise ConfigError(
            f"the teacher cache in {card.dir} was computed with other window settings ("
            + "; ".join(changed) + "): recompute it with edgekd teacher cache"
        )
    from edgekd.teachers.card import verify_sha256

    verify_sha256(card)
    with np.load(card.file, allow_pickle=False) as z:
        row = {k: i for i, k in enumerate(z["keys"].astype(str))}
        cached_sha = z["window_sha"].astype(str)
    used = Windows.of(*((ds.splits[s], np.arange(len(ds.splits[s])))
                        for s in ("train", "unlabelled")))  # fmt: skip
    ids = used.ids(np.arange(len(used)))
    missing = [k for k in ids if k not in row]
    if missing:
        raise ConfigError(
            f"the teacher cache in {card.dir} (data {fingerprint['data']['source']}) has no "
            f"outputs for {len(missing)} of the {len(ids)} training windows (e.g. {missing[0]}): "
            "the data changed since it was computed; recompute it with edgekd teacher cache"
        )
    raw, _ = used.fetch(np.arange(len(used)), list(modalities))
    now_sha = window_sha(raw, modalities)
    stale = [k for k, h in zip(ids, now_sha, strict=True) if cached_sha[row[k]] != h]
    if stale:
        raise ConfigError(
            f"the teacher cache in {card.dir}: {len(stale)} of the {len(ids)} training windows "
            f"hold other samples than when it was computed (e.g. {stale[0]}): the data files "
            "changed; recompute it with edgekd teacher cache"
        )
