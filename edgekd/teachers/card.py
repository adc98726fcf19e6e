"""The teacher card (`teacher.yaml`): the one contract between a teacher edgekd did not train and
edgekd. docs/teachers.md has the full format and a worked example.

```yaml
source: onnx                      # onnx | torch_export | python | outputs
path: model.onnx                  # relative to the card (python: optional weights file)
factory: "pkg.module:make_model"  # python only: returns an nn.Module (kwargs: {...} passed)
inputs:                           # model input -> manifest modality + this teacher's preprocessing
  imu: {modality: accel, normalize: {mean: [0, 0, 9.8], std: [1, 1, 1]}, layout: NCT}
outputs:
  logits: {name: logits}          # and/or embedding: {name: emb}; per-frame outputs: pool: mean
labels: [walking, sitting]        # the teacher's class order (omit for an embedding-only teacher)
label_map: {}                     # teacher label -> dataset label; disjoint: true if none apply
sha256: <hex>                     # of the file at `path`, checked on load
licence: MIT                      # free text, carried into the plan and the bundle
```

Inputs reach a teacher as raw windows of the named manifest modality in the runtime's layout
(time series `(N, T, C)`, audio `(N, T)`, images `(N, H, W, C)`, float32), then the card's own
preprocessing (`edgekd.teachers.inputs`). The student's preprocessing never sees the card.
Reading a card checks its form only (ConfigError naming the key); `verify_sha256` checks the
weights file.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from edgekd.errors import ConfigError

CARD_FILE = "teacher.yaml"
SOURCES = ("onnx", "torch_export", "python", "outputs")
POOLS = ("none", "mean", "max")
OUTPUT_KINDS = ("logits", "embedding")
DEVICES = ("auto", "cpu", "cuda")
# Axis letters of each raw layout: batch, time, channels / height, width.
RAW_LAYOUT = {"timeseries": "NTC", "audio": "NT", "image": "NHWC"}
_CARD_KEYS = {"source", "path", "factory", "kwargs", "inputs", "outputs", "labels", "label_map",
              "disjoint", "sha256", "licence", "device", "batch_size", "name", "data"}  # fmt: skip
_INPUT_KEYS = {"modality", "normalize", "rate_hz", "size", "layout", "flatten"}
_OUTPUT_KEYS = {"name", "pool"}


@dataclass(frozen=True)
class CardInput:
    """One model input: the manifest `modality` it reads and the teacher's own preprocessing.

    `normalize`: (mean, std) per channel, broadcast over the last raw axis (one value each for
    audio); `rate_hz`: resample time series / audio to this rate (None: the data's rate);
    `size`: resize images to (H, W); `layout`: the axis order the model takes, a permutation
    of the raw layout's letters (None: the raw layout); `flatten`: reshape to (N, features)
    last (a scikit-learn model's input).
    """

    name: str
    modality: str
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    rate_hz: float | None = None
    size: tuple[int, int] | None = None
    layout: str | None = None
    flatten: bool = False


@dataclass(frozen=True)
class CardOutput:
    """One model output used for distillation: its `name` (ONNX output name; a key of a returned
    dict, or a position in a returned tuple, for torch) and the pooling of per-frame outputs
    over axis 1 (`none` for `(N, D)` outputs)."""

    kind: str  # logits | embedding
    name: str
    pool: str = "none"


@dataclass(frozen=True)
class TeacherCard:
    """A parsed, form-checked teacher card; `dir` is the card's folder (paths are relative)."""

    dir: Path
    source: str
    path: str | None
    factory: str | None
    kwargs: dict[str, Any]
    inputs: tuple[CardInput, ...]
    outputs: tuple[CardOutput, ...]
    labels: tuple[str, ...]
    label_map: dict[str, str]
    disjoint: bool
    sha256: str
    licence: str
    device: str = "auto"
    batch_size: int = 256
    name: str = ""
    data_source: str = ""  # precomputed outputs: the data they were computed on
    raw: dict[str, Any] = field(default_factory=dict, compare=False)
    # the card's file in `dir`: any name given as the --teacher path (face.yaml), else CARD_FILE
    card_name: str = CARD_FILE

    @property
    def file(self) -> Path | None:
        """The weights (or outputs) file, resolved against the card's folder."""
        return None if self.path is None else (self.dir / self.path).resolve()

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(i.modality for i in self.inputs))

    def output(self, kind: str) -> CardOutput | None:
        return next((o for o in self.outputs if o.kind == kind), None)

    @property
    def has_logits(self) -> bool:
        return self.output("logits") is not None

    @property
    def has_embedding(self) -> bool:
        return self.output("embedding") is not None

    def class_index(self, dataset_labels: list[str]) -> list[int] | None:
        """For each dataset label, the teacher's logit column that means it (after `label_map`);
        None when the teacher's classes are disjoint or do not cover every dataset label (its
        logits then cannot be compared with the student's)."""
        if not self.has_logits or self.disjoint:
            return None
        mapped: dict[str, list[int]] = {}
        for i, label in enumerate(self.labels):
            mapped.setdefault(self.label_map.get(label, label), []).append(i)
        if any(len(mapped.get(label, [])) != 1 for label in dataset_labels):
            return None
        return [mapped[label][0] for label in dataset_labels]

    def provenance(self) -> dict[str, Any]:
        """What a plan, a run folder and a bundle record of this teacher."""
        return {
            "source": self.source,
            "name": self.name or (Path(self.path).stem if self.path else self.factory or ""),
            "sha256": self.sha256,
            "licence": self.licence,
            "card": str(self.dir / self.card_name) if self.raw else "",
            "card_sha256": card_digest(self.raw),
        }


def card_digest(raw: Mapping[str, Any]) -> str:
    """sha256 of the card's content (sorted JSON), independent of its formatting."""
    import json

    return hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _floats(value: Any, where: str) -> tuple[float, ...]:
    values = value if isinstance(value, list | tuple) else [value]
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ConfigError(f"{where}: expected finite numbers, got {value!r}")
        out.append(float(v))
    return tuple(out)


def _input(name: str, spec: Any, where: str) -> CardInput:
    if not isinstance(spec, dict) or "modality" not in spec:
        raise ConfigError(f"{where}: inputs.{name} needs at least {{modality: NAME}}")
    unknown = set(spec) - _INPUT_KEYS
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) in inputs.{name}: {', '.join(sorted(unknown))} "
            f"(known: {', '.join(sorted(_INPUT_KEYS))})"
        )
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    if "normalize" in spec:
        norm = spec["normalize"]
        if not isinstance(norm, dict) or set(norm) != {"mean", "std"}:
            raise ConfigError(f"{where}: inputs.{name}.normalize needs mean and std")
        mean = _floats(norm["mean"], f"{where}: inputs.{name}.normalize.mean")
        std = _floats(norm["std"], f"{where}: inputs.{name}.normalize.std")
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ConfigError(
                f"{where}: inputs.{name}.normalize: mean and std must have the same length and "
                f"std > 0, got mean {list(mean)}, std {list(std)}"
            )
    rate = spec.get("rate_hz")
    if rate is not None:
        rate = _floats(rate, f"{where}: inputs.{name}.rate_hz")[0]
        if rate <= 0:
            raise ConfigError(f"{where}: inputs.{name}.rate_hz must be > 0, got {rate}")
    size = spec.get("size")
    if size is not None:
        if (
            not isinstance(size, list | tuple)
            or len(size) != 2
            or not all(isinstance(s, int) and s > 0 for s in size)
        ):
            raise ConfigError(f"{where}: inputs.{name}.size must be [H, W], got {size!r}")
        size = (int(size[0]), int(size[1]))
    layout = spec.get("layout")
    if layout is not None and (not isinstance(layout, str) or not layout.isalpha()):
        raise ConfigError(f"{where}: inputs.{name}.layout must be letters such as NCT")
    flatten = spec.get("flatten", False)
    if not isinstance(flatten, bool):
        raise ConfigError(f"{where}: inputs.{name}.flatten must be true or false")
    return CardInput(name, str(spec["modality"]), mean, std, rate, size, layout, flatten)


def _outputs(spec: Any, where: str) -> tuple[CardOutput, ...]:
    if not isinstance(spec, dict) or not spec:
        raise ConfigError(f"{where}: outputs needs logits and/or embedding")
    unknown = set(spec) - set(OUTPUT_KINDS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown output(s) {', '.join(sorted(unknown))}; use logits and/or embedding"
        )
    out = []
    for kind, value in spec.items():
        value = {"name": value} if isinstance(value, str | int) else value
        if not isinstance(value, dict) or "name" not in value or set(value) - _OUTPUT_KEYS:
            raise ConfigError(f"{where}: outputs.{kind} must be {{name: NAME[, pool: mean]}}")
        pool = value.get("pool", "none")
        if pool not in POOLS:
            raise ConfigError(f"{where}: outputs.{kind}.pool={pool!r} is not one of "
                              f"{', '.join(POOLS)}")  # fmt: skip
        out.append(CardOutput(kind, str(value["name"]), pool))
    return tuple(out)


def parse_card(raw: Any, folder: Path, where: str) -> TeacherCard:
    """A TeacherCard from the card's mapping; ConfigError naming the first bad key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a teacher card is a mapping (source:, inputs:, outputs:, ...)")
    unknown = set(raw) - _CARD_KEYS
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(sorted(unknown))} "
            f"(known: {', '.join(sorted(_CARD_KEYS))})"
        )
    source = raw.get("source")
    if source not in SOURCES:
        raise ConfigError(f"{where}: source={source!r} is not one of {', '.join(SOURCES)}")
    path = raw.get("path")
    factory = raw.get("factory")
    if source == "python":
        if not isinstance(factory, str) or ":" not in factory:
            raise ConfigError(f"{where}: source python needs factory: \"package.module:function\"")
    elif not path:
        raise ConfigError(f"{where}: source {source} needs path: (relative to the card)")
    inputs_raw = raw.get("inputs")
    if not isinstance(inputs_raw, dict) or not inputs_raw:
        raise ConfigError(f"{where}: inputs needs at least one model input -> {{modality: ...}}")
    inputs = tuple(_input(str(n), s, where) for n, s in inputs_raw.items())
    outputs = _outputs(raw.get("outputs"), where)
    labels = raw.get("labels") or []
    if not isinstance(labels, list) or len(set(map(str, labels))) != len(labels):
        raise ConfigError(f"{where}: labels must be a list of distinct class names")
    if any(o.kind == "logits" for o in outputs) and not labels:
        raise ConfigError(
            f"{where}: a teacher with logits needs labels: (its class order, one per logit)"
        )
    label_map = raw.get("label_map") or {}
    if not isinstance(label_map, dict):
        raise ConfigError(f"{where}: label_map must map teacher labels to dataset labels")
    strange = [k for k in label_map if str(k) not in map(str, labels)]
    if strange:
        raise ConfigError(f"{where}: label_map names labels the teacher does not have: {strange}")
    sha = raw.get("sha256", "")
    if sha and (not isinstance(sha, str) or len(sha) != 64 or not _is_hex(sha)):
        raise ConfigError(f"{where}: sha256 must be 64 hex digits, got {sha!r}")
    device = raw.get("device", "auto")
    if device not in DEVICES:
        raise ConfigError(f"{where}: device={device!r} is not one of {', '.join(DEVICES)}")
    batch = raw.get("batch_size", 256)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"{where}: batch_size must be a whole number >= 1, got {batch!r}")
    kwargs = raw.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ConfigError(f"{where}: kwargs must be a mapping")
    return TeacherCard(
        dir=folder.resolve(),
        source=source,
        path=str(path) if path else None,
        factory=factory,
        kwargs=dict(kwargs),
        inputs=inputs,
        outputs=outputs,
        labels=tuple(str(x) for x in labels),
        label_map={str(k): str(v) for k, v in label_map.items()},
        disjoint=bool(raw.get("disjoint", False)),
        sha256=str(sha).lower(),
        licence=str(raw.get("licence", "")),
        device=device,
        batch_size=batch,
        name=str(raw.get("name", "")),
        data_source=str(raw.get("data", "")),
        raw=dict(raw),
    )


def _is_hex(text: str) -> bool:
    try:
        int(text, 16)
    except ValueError:
        return False
    return True


def find_card(path: Path) -> Path:
    """The card for `path`: a card file itself, a folder holding teacher.yaml, or a model file
    (.onnx, .pt2, .npz) with teacher.yaml beside it; ConfigError otherwise."""
    path = Path(path)
    if path.is_dir():
        card = path / CARD_FILE
    elif path.suffix in (".yaml", ".yml"):
        card = path
    else:
        card = path.parent / CARD_FILE
    if not card.is_file():
        raise ConfigError(
            f"no teacher card for {path}: expected {card} (see docs/teachers.md for the format)"
        )
    return card


def read_card(path: Path) -> TeacherCard:
    """Read and form-check the card of `path` (see `find_card`)."""
    card = find_card(path)
    try:
        raw = yaml.safe_load(card.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{card}: not a readable YAML teacher card: {exc}") from exc
    return replace(parse_card(raw, card.parent, str(card)), card_name=card.name)


def verify_sha256(card: TeacherCard) -> None:
    """ConfigError unless the card's file exists and hashes to the card's sha256 (a card without
    sha256 is refused too, with the file's actual hash to paste in)."""
    file = card.file
    if file is None:
        return
    if not file.is_file():
        raise ConfigError(f"the teacher card names {card.path}, but {file} does not exist")
    actual = file_sha256(file)
    if not card.sha256:
        raise ConfigError(
            f"the teacher card has no sha256; add `sha256: {actual}` after checking that "
            f"{file.name} is the file you mean"
        )
    if actual != card.sha256:
        raise ConfigError(
            f"{file} does not match the card's sha256 (card {card.sha256[:12]}..., file "
            f"{actual[:12]}...): the weights changed since the card was written"
        )
