"""Bring-your-own paired data: a JSONL manifest plus a modality header beside it.

Layout (paths in the manifest are relative to its folder)::

    mydata/manifest.jsonl
    mydata/modalities.yaml        # or modalities.json, same content

Header::

    modalities:
      accel: {kind: timeseries, rate_hz: 50, channels: 3, window: 128, hop: 64}   # .npy / .csv
      voice: {kind: audio, rate_hz: 16000, window_s: 1.0, hop_s: 0.5, n_mels: 40}  # .wav
      face:  {kind: image, size: [64, 64], channels: 3}                           # .png / .jpg
    student: voice      # optional: the default student modality (else the first listed)

Parameters: timeseries and audio need `rate_hz` and `window` (samples) or `window_s` (seconds);
`hop` / `hop_s` default to half the window; audio also takes `n_mels`, `n_fft`, `hop_length`
(log-mel, in samples); timeseries may declare 3-axis vector channel groups per physical frame,
`vectors: {device: [[0, 1, 2]]}`, which augmentation rotates together across modalities.
Images need `size` [H, W]; `channels` (1 = greyscale, 3 = colour) is optional: without it, the
image of the first train line decides, the choice is logged once and recorded in the spec. Every
image must then have that channel count (alpha is dropped): a greyscale file under a colour
modality, or the reverse, is an error, never a silent conversion.

Manifest, one sample a line::

    {"id": "s001", "label": "walk", "split": "train", "subject": "u07", "accel": "x/1.npy", ...}

`split` is train / val / test (missing: train); `subject` is optional; every modality of the
header must have a path. Time series files are `(T, channels)` (.npy, or .csv with an optional
header line); audio is 16-bit PCM mono .wav at exactly `rate_hz`; images must already have
`size`. Nothing is resampled or resized.

Unlabelled paired samples: `"label": null` (train lines only; a missing `label` stays an error)
marks a sample whose windows form the `unlabelled` split (label -1), which only teacher terms
use; its label never joins the label set.

Pairing: each time series or audio file is cut into windows of `window` samples every `hop`
samples (trailing samples that do not fill a window are dropped); all windowed modalities of a
sample must give the same number of windows, and each window inherits the sample's label. An
image is one view of the whole sample and is paired with every window of it (a sample whose
modalities are all images is one window). Window k of sample "s001" has the id "s001#k".

Validation split: the manifest's `val` lines; else, with `val_subjects`, the train samples of
those subjects; else about 15% of the labelled train windows, drawn as whole subjects (seeded)
when every labelled train sample names a subject and there are at least two, else as whole samples
(seeded). Unlabelled samples never move to val; those of a validation subject are left out (with a
warning), as for the built-in data: training on them would show the validation subjects to the
recipes that use unlabelled windows only.

Every problem raises DataError naming the manifest (and line) or header file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from edgekd.data.readers import image_channels, read_recording
from edgekd.data.split import PairedDataset, Split, finish_dataset
from edgekd.data.storage import WindowSpill, stack
from edgekd.errors import ConfigError, DataError
from edgekd.modalities import KINDS, ModalitySpec, parse_vectors, raw_shape

HEADER_NAMES = ("modalities.yaml", "modalities.yml", "modalities.json")
SAMPLE_KEYS = ("id", "label", "split", "subject")
MANIFEST_SPLITS = ("train", "val", "test")
VAL_FRACTION = 0.15

log = logging.getLogger(__name__)

_REQUIRED = {"timeseries": ("rate_hz", "channels"), "audio": ("rate_hz",), "image": ("size",)}
_OPTIONAL = {
    "timeseries": ("window", "window_s", "hop", "hop_s", "vectors"),
    "audio": ("channels", "window", "window_s", "hop", "hop_s", "n_mels", "n_fft", "hop_length"),
    "image": ("channels",),
}


@dataclass(frozen=True)
class Header:
    """A parsed modality header: specs (unfitted) in header order, the student modality, and
    the image modalities whose `channels` the header leaves out (to infer from the data)."""

    path: Path
    specs: dict[str, ModalitySpec]
    student: str
    infer_channels: tuple[str, ...]


@dataclass(frozen=True)
class Sample:
    """One manifest line after reading its files: `windows[modality]` (n, *raw_shape); `label`
    None for an unlabelled sample."""

    line: int
    id: str
    label: str | None
    split: str
    subject: str
    windows: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(next(iter(self.windows.values())))


def find_header(manifest: Path) -> Path:
    """The one modality header file beside `manifest`."""
    found = [manifest.parent / name for name in HEADER_NAMES if (manifest.parent / name).is_file()]
    if not found:
        raise DataError(
            f"{manifest}: no modality header beside it; write "
            f"{manifest.parent / 'modalities.yaml'} naming each modality's kind and parameters"
        )
    if len(found) > 1:
        raise DataError(f"{manifest}: several modality headers {[p.name for p in found]}; keep one")
    return found[0]


def _samples(params: dict[str, Any], seconds_key: str, key: str, rate: float) -> int | None:
    """A length in samples from `key` (samples) or `seconds_key` (seconds), None if neither."""
    if key in params and seconds_key in params:
        raise ValueError(f"give {key} or {seconds_key}, not both")
    if key in params:
        value = params[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{key} must be a whole number of samples, got {value!r}")
        return value
    if seconds_key in params:
        return int(round(float(params[seconds_key]) * rate))
    return None


def _spec_from_header(name: str, params: Any, header: Path) -> ModalitySpec:
    where = f"{header}: modality {name!r}"
    if not isinstance(params, dict):
        raise DataError(f"{where}: expected a mapping of parameters, got {params!r}")
    kind = params.get("kind")
    if kind not in KINDS:
        raise DataError(
            f"{where}: unknown modality kind {kind!r}; expected one of {', '.join(KINDS)}"
        )
    given = set(params) - {"kind"}
    unknown = given - set(_REQUIRED[kind]) - set(_OPTIONAL[kind])
    missing = set(_REQUIRED[kind]) - given
    if unknown or missing:
        raise DataError(
            f"{where}: unknown parameter(s) {sorted(unknown)}, missing {sorted(missing)}; a "
            f"{kind} modality takes {', '.join(_REQUIRED[kind] + _OPTIONAL[kind])}"
        )
    try:
        if kind == "image":
            height, width = params["size"]
            # a header without channels gets them from the first train image (`_infer_channels`)
            return ModalitySpec(
                name=name,
                kind=kind,
                rate_hz=0.0,
                channels=int(params.get("channels", 3)),
                window=0,
                hop=0,
                size=(int(height), int(width)),
            )
        rate = float(params["rate_hz"])
        window = _samples(params, "window_s", "window", rate)
        if window is None:
            raise ValueError("needs window (samples) or window_s (seconds)")
        hop = _samples(params, "hop_s", "hop", rate)
        if hop is None:
            hop = max(1, window // 2)
        extra = {k: int(params[k]) for k in ("n_mels", "n_fft", "hop_length") if k in params}
        if "vectors" in params:
            extra["vectors"] = parse_vectors(params["vectors"])
        return ModalitySpec(
            name=name,
            kind=kind,
            rate_hz=rate,
            channels=int(params.get("channels", 1)),
            window=window,
            hop=hop,
            **extra,
        )
    except (TypeError, ValueError, ConfigError) as exc:
        raise DataError(f"{where}: {exc}") from exc


def read_header(header: Path) -> Header:
    """The modality header at `header` (see the module docstring)."""
    try:
        text = header.read_text(encoding="utf-8-sig")  # editors on Windows may add a BOM
        doc = json.loads(text) if header.suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        raise DataError(f"{header}: cannot parse ({exc})") from exc
    if (
        not isinstance(doc, dict)
        or not isinstance(doc.get("modalities"), dict)
        or not doc["modalities"]
    ):
        raise DataError(f"{header}: expected a mapping with a non-empty 'modalities' mapping")
    unknown = set(doc) - {"modalities", "student"}
    if unknown:
        raise DataError(
            f"{header}: unknown top-level key(s) {sorted(unknown)}; use modalities, student"
        )
    specs: dict[str, ModalitySpec] = {}
    for name, params in doc["modalities"].items():
        if not isinstance(name, str) or not name.isidentifier() or name in SAMPLE_KEYS:
            raise DataError(
                f"{header}: modality name {name!r} must be an identifier other than "
                f"{', '.join(SAMPLE_KEYS)}"
            )
        specs[name] = _spec_from_header(name, params, header)
    student = doc.get("student", next(iter(specs)))
    if student not in specs:
        raise DataError(f"{header}: student {student!r} is not one of the modalities {list(specs)}")
    unset = tuple(
        name
        for name, params in doc["modalities"].items()
        if specs[name].kind == "image" and "channels" not in params
    )
    return Header(path=header, specs=specs, student=student, infer_channels=unset)


def _windows(arr: np.ndarray, spec: ModalitySpec) -> np.ndarray:
    """(T, ...) recording -> (n, window, ...) windows every `hop` samples."""
    view = np.lib.stride_tricks.sliding_window_view(arr, spec.window, axis=0)[:: spec.hop]
    # sliding_window_view puts the window axis last; raw windows want it second.
    return np.moveaxis(view, -1, 1)


def _check_record(record: dict[str, Any], where: str, specs: dict[str, ModalitySpec]) -> str:
    """DataError unless `record` has the keys and value types of a sample line; its split."""
    unknown = set(record) - set(SAMPLE_KEYS) - set(specs)
    if unknown:
        raise DataError(
            f"{where}: unknown key(s) {sorted(unknown)}; expected {', '.join(SAMPLE_KEYS)} and the "
            f"modalities {', '.join(specs)}"
        )
    for key in ("id", "label", *specs):
        if key not in record:
            what = "modality key" if key in specs else "key"
            raise DataError(f"{where}: missing {what} {key!r}")
    split = record.get("split", "train")
    if split not in MANIFEST_SPLITS:
        raise DataError(f"{where}: split {split!r} is not one of {', '.join(MANIFEST_SPLITS)}")
    if record["label"] is None and split != "train":
        raise DataError(
            f"{where}: label null (unlabelled) is allowed in train samples only; a {split} "
            "sample needs a label"
        )
    for key in ("id", "label", "subject"):
        value = record.get(key, "")
        if key == "label" and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise DataError(f"{where}: {key} must be a string or integer, got {value!r}")
    for name in specs:
        if not isinstance(record[name], str):
            raise DataError(f"{where}: {name} must be a file path, got {record[name]!r}")
    return str(split)


def _read_sample(
    record: dict[str, Any], n: int, manifest: Path, specs: dict[str, ModalitySpec]
) -> Sample:
    where = f"{manifest}:{n}"
    split = _check_record(record, where, specs)
    recordings: dict[str, np.ndarray] = {}
    for name, spec in specs.items():
        path = manifest.parent / record[name]
        try:
            recordings[name] = read_recording(path, spec)
        except DataError as exc:
            raise DataError(f"{where}: {exc}") from None
        if spec.kind != "image" and len(recordings[name]) < spec.window:
            raise DataError(
                f"{where}: window longer than recording: file {path} has {len(recordings[name])} "
                f"samples, window is {spec.window}"
            )
    windowed = {m: _windows(r, specs[m]) for m, r in recordings.items() if specs[m].kind != "image"}
    counts = {m: len(w) for m, w in windowed.items()}
    if len(set(counts.values())) > 1:
        raise DataError(
            f"{where}: the modalities give different numbers of windows {counts}; trim the "
            "recordings to the same duration"
        )
    n_windows = next(iter(counts.values()), 1)
    windows = {
        m: windowed[m] if m in windowed else np.broadcast_to(r, (n_windows, *r.shape))
        for m, r in recordings.items()
    }
    return Sample(
        line=n,
        id=str(record["id"]),
        label=None if record["label"] is None else str(record["label"]),
        split=split,
        subject=str(record.get("subject", "")),
        windows=windows,
    )


def _json_error(exc: json.JSONDecodeError) -> str:
    # json's messages end in "at" when they locate something ("Unterminated string starting
    # at"); the column completes the sentence either way.
    text = exc.msg[:1].lower() + exc.msg[1:]
    return f"{text} column {exc.colno}" if text.endswith(" at") else f"{text} at column {exc.colno}"


def read_records(manifest: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, JSON object) of every non-blank line of `manifest`."""
    try:
        lines = manifest.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{manifest}: cannot read ({exc})") from exc
    records: list[tuple[int, dict[str, Any]]] = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{manifest}:{n}: invalid JSON: {_json_error(exc)}") from None
        if not isinstance(record, dict):
            raise DataError(f"{manifest}:{n}: expected a JSON object, got {type(record).__name__}")
        records.append((n, record))
    if not records:
        raise DataError(f"{manifest}: the manifest is empty (no sample lines)")
    return records


def _infer_channels(
    header: Header, records: list[tuple[int, dict[str, Any]]], manifest: Path
) -> dict[str, ModalitySpec]:
    """The header's specs with each image modality that has no `channels` given the channel
    count of its file on the first train line (logged once); later files must match it."""
    specs = dict(header.specs)
    if not header.infer_channels:
        return specs
    n, record = next((n, r) for n, r in records if r.get("split", "train") == "train")
    _check_record(record, f"{manifest}:{n}", specs)
    for name in header.infer_channels:
        path = manifest.parent / record[name]
        try:
            channels = image_channels(path)
        except DataError as exc:
            raise DataError(f"{manifest}:{n}: {exc}") from None
        specs[name] = dataclasses.replace(specs[name], channels=channels)
        log.warning(
            "%s: image modality %r has no channels in %s; inferred channels: %d (%s) from %s "
            "(line %d); every image must have that many",
            manifest, name, header.path.name, channels,
            "greyscale" if channels == 1 else "colour", path, n,
        )
    return specs


def read_samples(
    manifest: Path, records: list[tuple[int, dict[str, Any]]], specs: dict[str, ModalitySpec]
) -> list[Sample]:
    """The `records` of `manifest`, read and windowed; ids must be unique. Windows go to disk as
    they are read and come back memory-mapped: a manifest may exceed RAM."""
    samples: list[Sample] = []
    spans: list[tuple[int, int]] = []
    spill = WindowSpill()
    seen: dict[str, int] = {}
    try:
        for n, record in records:
            sample = _read_sample(record, n, manifest, specs)
            if sample.id in seen:
                raise DataError(
                    f"{manifest}:{n}: id {sample.id!r} already used on line {seen[sample.id]}"
                )
            seen[sample.id] = n
            spans.append(([spill.append(m, w) for m, w in sample.windows.items()][0], len(sample)))
            samples.append(dataclasses.replace(sample, windows={}))
    finally:
        stored = spill.finish()
    return [
        dataclasses.replace(s, windows={m: arr[a : a + k] for m, arr in stored.items()})
        for s, (a, k) in zip(samples, spans, strict=True)
    ]


def _draw_groups(train: list[Sample], key: Callable[[Sample], str], seed: int) -> set[str]:
    """Seeded whole groups (by `key`) holding about VAL_FRACTION of the train windows; at least
    one group is drawn and at least one is left."""
    sizes: dict[str, int] = {}
    for s in train:
        sizes[key(s)] = sizes.get(key(s), 0) + len(s)
    target = VAL_FRACTION * sum(sizes.values())
    chosen: set[str] = set()
    total = 0
    for group in np.random.default_rng(seed).permutation(sorted(sizes))[:-1]:
        chosen.add(str(group))
        total += sizes[str(group)]
        if total >= target:
            break
    return chosen


def _assign_val(
    samples: list[Sample], val_subjects: Iterable[str] | None, seed: int, manifest: Path
) -> tuple[list[Sample], tuple[str, ...]]:
    """Samples with the validation split assigned, and the validation subjects (may be empty).
    Only labelled train samples are drawn and moved: validation needs labels."""
    train = [s for s in samples if _movable(s)]
    subjects = sorted({s.subject for s in train})
    has_val = any(s.split == "val" for s in samples)
    by_subject = "" not in subjects and len(subjects) >= 2
    if val_subjects is not None:
        chosen = {str(v) for v in val_subjects}
        if has_val:
            raise ConfigError(f"{manifest} already has val lines; drop val_subjects")
        if not chosen or not chosen < set(subjects) or "" in subjects:
            raise ConfigError(
                f"val_subjects {sorted(chosen)} must be a non-empty proper subset of the train "
                f"subjects {subjects} of {manifest} (every train line needs a subject)"
            )
        by_subject = True
    elif has_val:
        val = {s.subject for s in samples if s.split == "val" and s.subject}
        return samples, tuple(sorted(val))
    elif len(train) < 2:
        raise DataError(
            f"{manifest}: too few labelled train samples ({len(train)}) to draw a validation split"
        )
    else:
        chosen = _draw_groups(train, _subject_key if by_subject else _id_key, seed)
    key = _subject_key if by_subject else _id_key
    moved = [
        dataclasses.replace(s, split="val") if _movable(s) and key(s) in chosen else s
        for s in samples
    ]
    return moved, tuple(sorted(chosen)) if by_subject else ()


def _movable(sample: Sample) -> bool:
    """Whether `sample` may be drawn for validation: a labelled train sample."""
    return sample.split == "train" and sample.label is not None


def _subject_key(sample: Sample) -> str:
    return sample.subject


def _id_key(sample: Sample) -> str:
    return sample.id


def _split(samples: list[Sample], labels: list[str], specs: dict[str, ModalitySpec]) -> Split:
    if not samples:
        return Split.empty(specs)
    index: dict[str | None, int] = {label: i for i, label in enumerate(labels)}
    index[None] = -1
    return Split(
        x={m: stack([s.windows[m] for s in samples], raw_shape(specs[m])) for m in specs},
        y=np.concatenate([np.full(len(s), index[s.label], dtype=np.int64) for s in samples]),
        subject=np.concatenate([np.full(len(s), s.subject) for s in samples]).astype(str),
        ids=np.array([f"{s.id}#{k}" for s in samples for k in range(len(s))], dtype=str),
    )


def load_manifest(
    manifest: Path,
    *,
    val_subjects: Iterable[str] | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> PairedDataset:
    """A PairedDataset from a JSONL manifest and its header (see the module docstring).

    Labels are the labelled train samples' labels, sorted; `unlabelled` holds the windows of
    the `"label": null` samples (label -1) not left out for belonging to a validation subject.
    """
    # Resolved: the path is recorded in run folders, which must work from any directory.
    manifest = Path(manifest).resolve()
    header = read_header(find_header(manifest))
    records = read_records(manifest)
    if not any(r.get("split", "train") == "train" for _, r in records):
        raise DataError(f"{manifest}: no train samples (every line is val or test)")
    specs = _infer_channels(header, records, manifest)
    samples = read_samples(manifest, records, specs)
    samples, val_subs = _assign_val(samples, val_subjects, seed, manifest)
    left_out = {s.line for s in samples if s.label is None and s.subject in val_subs}
    if left_out:
        log.warning(
            "%s: unlabelled sample(s) of validation subjects %s left out (lines %s): training "
            "on them would show the validation subjects to recipes that use unlabelled windows",
            manifest,
            list(val_subs),
            ", ".join(map(str, sorted(left_out))),
        )
    samples = [s for s in samples if s.line not in left_out]
    labels = sorted({s.label for s in samples if s.split == "train" and s.label is not None})
    for s in samples:
        if s.label is not None and s.label not in labels:
            raise DataError(
                f"{manifest}:{s.line}: label {s.label!r} of this {s.split} sample never appears "
                "in the train split; the model cannot learn it"
            )
    by_split = {
        name: [s for s in samples if s.split == name and s.label is not None]
        for name in MANIFEST_SPLITS
    }
    by_split["unlabelled"] = [s for s in samples if s.label is None]
    splits = {name: _split(group, labels, specs) for name, group in by_split.items()}
    return finish_dataset(
        name=manifest.parent.name or manifest.stem,
        source=str(manifest),
        labels=labels,
        specs=specs,
        splits=splits,
        default_student=header.student,
        val_subjects=val_subs,
        limit=limit,
        seed=seed,
    )
