"""An outside teacher: a card plus its source adapter, as one call `raw windows -> TeacherOutputs`.

`OutsideTeacher.outputs(raw, keys)` takes raw windows keyed by manifest modality (the runtime's
layout, float32) and, for precomputed outputs, their window keys; it applies each card input's
preprocessing, runs the source `batch_size` windows at a time, pools per-frame outputs, checks
every output's shape, and returns logits in the teacher's own class order plus the embedding.
`dataset_logits` reorders logits into a dataset's classes (`TeacherCard.class_index`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekd.data.pipeline import EVAL_BATCH, Windows
from edgekd.errors import ConfigError
from edgekd.modalities import ModalitySpec
from edgekd.teachers.card import TeacherCard, read_card
from edgekd.teachers.inputs import prepare
from edgekd.teachers.sources import OnnxSource, OutputsSource, open_source


@dataclass(frozen=True)
class TeacherOutputs:
    """What distillation sees of any teacher: logits `(N, classes)` in the teacher's class order
    and/or an embedding `(N, D)`, float32; None where the teacher has no such output."""

    logits: np.ndarray | None
    embedding: np.ndarray | None

    def __len__(self) -> int:
        a = self.logits if self.logits is not None else self.embedding
        return 0 if a is None else len(a)


def _pool(x: np.ndarray, pool: str, name: str) -> np.ndarray:
    if pool == "mean":
        x = x.mean(axis=1)
    elif pool == "max":
        x = x.max(axis=1)
    if x.ndim != 2:
        raise ConfigError(
            f"teacher output {name!r} has shape {x.shape[1:]} per batch; expected (features,) "
            "per window (per-frame outputs need pool: mean or max in the card)"
        )
    return x


class OutsideTeacher:
    """A loaded card teacher (see the module docstring). `specs` are the data's modality specs
    the card's inputs read (their layout decides the preprocessing)."""

    def __init__(self, card: TeacherCard, specs: Mapping[str, ModalitySpec]) -> None:
        missing = [m for m in card.modalities if m not in specs]
        if missing:
            raise ConfigError(
                f"the teacher card reads modality {', '.join(missing)}, which the data does not "
                f"have (it has {', '.join(specs)})"
            )
        self.card = card
        self.specs = {m: specs[m] for m in card.modalities}
        self.source: Any = open_source(card)
        self.precomputed = isinstance(self.source, OutputsSource)
        if isinstance(self.source, OnnxSource):  # torch sources take the card's inputs as given
            names, expected = self.source.input_names, [i.name for i in card.inputs]
            absent = [n for n in names if n not in expected]
            if absent:
                raise ConfigError(
                    f"the model needs input(s) {', '.join(absent)} that the card does not feed "
                    f"(card inputs: {', '.join(expected)})"
                )
            unknown = [n for n in expected if n not in names]
            if unknown:
                raise ConfigError(
                    f"the card feeds input(s) {', '.join(unknown)} the model does not have "
                    f"(model inputs: {', '.join(names)})"
                )
        available = getattr(self.source, "output_names", [])
        for out in card.outputs:
            if available and out.name not in available:
                raise ConfigError(
                    f"the card's {out.kind} output {out.name!r} is not among the teacher's "
                    f"outputs ({', '.join(available)})"
                )

    @classmethod
    def open(cls, path: Path, specs: Mapping[str, ModalitySpec]) -> OutsideTeacher:
        return cls(read_card(path), specs)

    def _named(self, raw: Mapping[str, np.ndarray], keys: np.ndarray | None) -> dict[str, Any]:
        if self.precomputed:
            if keys is None:
                raise ConfigError("precomputed teacher outputs need window keys")
            return self.source.lookup(np.asarray(keys))
        inputs = {i.name: prepare(i, self.specs[i.modality], raw[i.modality])
                  for i in self.card.inputs}  # fmt: skip
        return self.source(inputs)

    def outputs(
        self, raw: Mapping[str, np.ndarray], keys: np.ndarray | None = None
    ) -> TeacherOutputs:
        """Teacher outputs for the windows `raw` (and `keys`), `batch_size` at a time."""
        n = len(keys) if keys is not None else len(next(iter(raw.values())))
        step = self.card.batch_size
        parts: dict[str, list[np.ndarray]] = {o.kind: [] for o in self.card.outputs}
        for lo in range(0, n, step):
            named = self._named(
                {m: x[lo : lo + step] for m, x in raw.items()},
                None if keys is None else keys[lo : lo + step],
            )
            for out in self.card.outputs:
                value = named.get(out.name)
                if value is None:
                    raise ConfigError(
                        f"the teacher returned no output {out.name!r} "
                        f"(it returned {', '.join(named) or 'nothing'})"
                    )
                parts[out.kind].append(_pool(np.asarray(value, np.float32), out.pool, out.name))
        merged = {k: np.concatenate(v) if v else None for k, v in parts.items()}
        logits = merged.get("logits")
        if logits is not None and logits.shape[1] != len(self.card.labels):
            raise ConfigError(
                f"the teacher's logits have {logits.shape[1]} classes, but the card lists "
                f"{len(self.card.labels)} labels"
            )
        for kind, value in merged.items():
            if value is not None and len(value) != n:
                raise ConfigError(f"the teacher returned {len(value)} {kind} rows for {n} windows")
            if value is not None and not np.isfinite(value).all():
                raise ConfigError(f"the teacher's {kind} contain NaN or infinity")
        return TeacherOutputs(logits, merged.get("embedding"))

    def window_outputs(self, windows: Windows) -> TeacherOutputs:
        """Outputs for every clean window of `windows` (read from storage), in order."""
        modalities = list(self.card.modalities)
        logits, embs = [], []
        for lo in range(0, len(windows), EVAL_BATCH):
            idx = np.arange(lo, min(lo + EVAL_BATCH, len(windows)))
            raw, _ = windows.fetch(idx, modalities)
            out = self.outputs(raw, windows.ids(idx))
            logits.append(out.logits)
            embs.append(out.embedding)
        return TeacherOutputs(
            None if logits[0] is None else np.concatenate(logits),
            None if embs[0] is None else np.concatenate(embs),
        )

    def dataset_logits(self, out: TeacherOutputs, labels: list[str]) -> np.ndarray | None:
        """`out.logits` with one column per dataset label, in the dataset's order (None when the
        teacher's classes do not map onto the dataset's)."""
        index = self.card.class_index(labels)
        if index is None or out.logits is None:
            return None
        return np.ascontiguousarray(out.logits[:, index])
