"""`edgekd teacher inspect`: what a teacher card says, and whether the teacher behind it works on
the data before a distillation spends hours on it.

`inspect_teacher(card_path, data)` reads the card and opens its source (the sha256 and loading
check). With `data` ('har' or a manifest) it also runs the teacher on labelled windows of the
train, val and test splits (at most `max_windows` each, evenly spaced over the split: the same
windows on every run) and checks, in order:

1. signature: every modality the card reads exists in the data, and the teacher runs on 2
   windows (fail otherwise, with the adapter's message); the raw and model-input shapes are
   reported. Nothing after it runs when it fails.
2. batch invariance: the outputs of 16 windows run as one batch equal those of each window run
   alone: max abs difference <= 1e-4 * (1 + max abs output), else warn (skipped when the
   outputs are not deterministic). On a GPU, TF32 kernels chosen per batch size can exceed
   this; the warning says so when the difference is under 1e-2 * (1 + max abs output).
3. determinism: two runs on the same 16 windows agree within 1e-6 * (1 + max abs output), else
   warn.
4. label order (logits and labels that map onto the data's, `TeacherCard.class_index`): the
   accuracy with the card's order, `a_card` (teacher argmax column -> the dataset label the card
   gives it), against the best one-to-one assignment of columns to dataset labels on the
   confusion matrix (`scipy.optimize.linear_sum_assignment`), `a_best`. Fail (refuse the card)
   when a_best >= a_card + 0.2 and a_best >= 2 / classes, suggesting the `labels:` list that
   gives column j the label the assignment chose. Disjoint or unmappable labels: skipped (ok).
5. normalisation: each card input after the card's preprocessing (`inputs.prepare`), per
   channel over the checked windows: |mean| > 3, std > 10 or std < 0.1 warns. With logits, the
   mean softmax entropy over log(classes) above 0.9 warns (near-uniform outputs); with mapped
   labels, an accuracy at most 1.5 x chance (1 / classes) that the label order does not explain
   warns (normalisation, layout or sampling rate are the likely causes).
6. embedding collapse (with an embedding): total variance < 1e-6 or effective rank (exp of the
   entropy of the normalised singular values of the centred embeddings) < 2 warns.

Check names: "sha256 and loading", "signature", "batch invariance", "determinism", "label
order", "normalisation of <input>" (one per card input), "output entropy", "accuracy vs chance",
"embedding collapse"; a check that cannot apply is ok with a message starting "skipped:".
A report is `refused` when any check failed; warnings do not refuse. Per-split accuracy is that
of the teacher's logits reordered into the data's classes (`OutsideTeacher.dataset_logits`), as
distillation sees them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgekd.errors import ConfigError, MissingExtra
from edgekd.teachers.card import TeacherCard, find_card, read_card

Status = Literal["ok", "warn", "fail"]

CHECKED_SPLITS = ("train", "val", "test")
BATCH_WINDOWS = 16  # windows of the batch-invariance and determinism checks
DRY_RUN_WINDOWS = 2
CHUNK = 1024  # windows read and run at a time
BATCH_TOLERANCE = 1e-4  # relative to 1 + max |output|
DETERMINISM_TOLERANCE = 1e-6
LABEL_ORDER_GAIN = 0.2
MAX_ABS_MEAN, MAX_STD, MIN_STD = 3.0, 10.0, 0.1
MAX_ENTROPY = 0.9  # mean softmax entropy / log(classes)
CHANCE_FACTOR = 1.5
MIN_VARIANCE, MIN_EFFECTIVE_RANK = 1e-6, 2.0


@dataclass(frozen=True)
class Check:
    """One check's outcome: `status` ok | warn | fail and a message saying what to fix."""

    name: str
    status: Status
    message: str


@dataclass(frozen=True)
class InputFacts:
    """A card input: the model input's name, the manifest modality it reads and the card's own
    preprocessing in words ("none" when the raw windows go in as they are)."""

    name: str
    modality: str
    preprocessing: str


@dataclass(frozen=True)
class CardFacts:
    """What the card says (paths resolved against the card's folder)."""

    card: str
    source: str
    file: str | None
    factory: str | None
    sha256: str
    licence: str
    inputs: tuple[InputFacts, ...]
    outputs: tuple[str, ...]  # "logits: NAME" / "embedding: NAME (pool mean)"
    labels: tuple[str, ...]
    label_map: tuple[tuple[str, str], ...]
    disjoint: bool


@dataclass(frozen=True)
class InspectReport:
    """The card's facts and, with data, the checks' outcomes and per-split accuracy.

    `windows`: labelled windows checked per split; `accuracy`: teacher accuracy per split, only
    where the card's labels map onto the data's (and the split has labelled windows).
    """

    card: CardFacts
    data: str | None = None
    checks: tuple[Check, ...] = ()
    windows: Mapping[str, int] = field(default_factory=dict)
    accuracy: Mapping[str, float] = field(default_factory=dict)

    @property
    def refused(self) -> bool:
        """True when any check failed: the teacher must not be distilled from as it is."""
        return any(c.status == "fail" for c in self.checks)

    def check(self, name: str) -> Check | None:
        """The check called `name`, or None when it did not run."""
        return next((c for c in self.checks if c.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (with `refused`)."""
        out = asdict(self)
        out["windows"] = dict(self.windows)
        out["accuracy"] = dict(self.accuracy)
        out["refused"] = self.refused
        return out

    def render(self) -> str:
        """A readable text block: the card, the data's accuracy, each check and the verdict."""
        c = self.card
        lines = [f"teacher card  {c.card}"]
        source = c.source + (f"  file {c.file}" if c.file else "")
        source += f"  factory {c.factory}" if c.factory else ""
        lines.append(f"  source      {source}")
        lines.append(f"  sha256      {c.sha256 or '(none)'}")
        lines.append(f"  licence     {c.licence or '(none)'}")
        for k, i in enumerate(c.inputs):
            head = "  inputs      " if k == 0 else "              "
            lines.append(f"{head}{i.name} <- {i.modality}: {i.preprocessing}")
        lines.append(f"  outputs     {'; '.join(c.outputs)}")
        if c.labels:
            lines.append(f"  labels      {_flow(c.labels)}")
        if c.label_map:
            lines.append(f"  label_map   {', '.join(f'{a} -> {b}' for a, b in c.label_map)}")
        if c.disjoint:
            lines.append("  disjoint    true (its classes are not the data's)")
        if self.data is not None:
            counts = ", ".join(f"{s} {n}" for s, n in self.windows.items())
            lines.append(f"data          {self.data} (labelled windows checked: {counts})")
            if self.accuracy:
                acc = "  ".join(f"{s} {a:.3f}" for s, a in self.accuracy.items())
                lines.append(f"  accuracy    {acc}")
        lines.append("checks")
        width = max((len(ch.name) for ch in self.checks), default=0)
        for ch in self.checks:
            lines.append(f"  {ch.status.upper():<5} {ch.name:<{width}}  {ch.message}")
        warnings = sum(ch.status == "warn" for ch in self.checks)
        if self.refused:
            failed = ", ".join(ch.name for ch in self.checks if ch.status == "fail")
            lines.append(f"refused: fix {failed} before distilling from this teacher")
        elif self.data is None:
            lines.append("loads; run with --data to check it on the data")
        else:
            lines.append(f"usable ({warnings} warning(s))" if warnings else "usable")
        return "\n".join(lines)


def _flow(values: tuple[str, ...] | list[str]) -> str:
    """A YAML flow list, pasteable into the card: [a, b, "c d"]."""
    import yaml

    return str(yaml.safe_dump(list(values), default_flow_style=True, width=1 << 20)).strip()


def _numbers(values: tuple[float, ...], digits: int = 6) -> str:
    return "[" + ", ".join(f"{v:.{digits}g}" for v in values) + "]"


def card_facts(card: TeacherCard, card_file: Path) -> CardFacts:
    """The facts of a parsed card (`card_file`: where it was read from)."""
    inputs = []
    for i in card.inputs:
        steps = []
        if i.rate_hz is not None:
            steps.append(f"resample to {i.rate_hz:g} Hz")
        if i.size is not None:
            steps.append(f"resize to {i.size[0]}x{i.size[1]}")
        if i.mean:
            steps.append(f"normalize mean {_numbers(i.mean)} std {_numbers(i.std)}")
        if i.layout:
            steps.append(f"layout {i.layout}")
        if i.flatten:
            steps.append("flatten")
        inputs.append(InputFacts(i.name, i.modality, ", ".join(steps) or "none"))
    outputs = tuple(
        f"{o.kind}: {o.name}" + (f" (pool {o.pool})" if o.pool != "none" else "")
        for o in card.outputs
    )
    return CardFacts(
        card=str(card_file.resolve()),
        source=card.source,
        file=None if card.file is None else str(card.file),
        factory=card.factory,
        sha256=card.sha256,
        licence=card.licence,
        inputs=tuple(inputs),
        outputs=outputs,
        labels=card.labels,
        label_map=tuple(sorted(card.label_map.items())),
        disjoint=card.disjoint,
    )


def _loading_ok(card: TeacherCard) -> Check:
    if card.file is None:
        what = f"factory {card.factory} built the model (no weights file)"
    else:
        what = f"sha256 {card.sha256[:12]}... matches {card.file.name}; the {card.source} " \
               "source opened"  # fmt: skip
    return Check("sha256 and loading", "ok", what)


def _loading_fail(exc: Exception) -> Check:
    return Check("sha256 and loading", "fail", " ".join(str(exc).split()))


def _open_only(card: TeacherCard) -> Check:
    from edgekd.teachers.sources import open_source

    try:
        open_source(card)
    except (ConfigError, MissingExtra) as exc:
        return _loading_fail(exc)
    return _loading_ok(card)


def inspect_teacher(card_path: Path, data: str | None, max_windows: int = 2048) -> InspectReport:
    """Inspect the teacher card of `card_path` (a card, its folder or its model file; see
    `find_card`), on `data` ('har' or a manifest path) when given. See the module docstring for
    the checks and their thresholds.

    Raises ConfigError for an unreadable card, DataError / ConfigError for unloadable data and
    ConfigError for `max_windows` < 1; a teacher that does not load or run is a failed check.
    """
    if isinstance(max_windows, bool) or not isinstance(max_windows, int) or max_windows < 1:
        raise ConfigError(f"max_windows must be a whole number >= 1, got {max_windows!r}")
    card_file = find_card(Path(card_path))
    card = read_card(card_file)
    facts = card_facts(card, card_file)
    if data is None:
        return InspectReport(facts, None, (_open_only(card),))
    from edgekd.data import load_dataset

    ds = load_dataset(data)
    return _Inspection(card, ds, max_windows).run(facts, str(data))


def _picks(labelled: np.ndarray, max_windows: int) -> np.ndarray:
    """At most `max_windows` of the `labelled` rows, evenly spaced (deterministic)."""
    if len(labelled) <= max_windows:
        return labelled
    return labelled[np.unique(np.linspace(0, len(labelled) - 1, max_windows).round().astype(int))]


def _max_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> tuple[float, float, str]:
    """(max abs difference, max abs value, output kind of the difference) over outputs."""
    worst, scale, where = -1.0, 0.0, next(iter(a), "")
    for kind, x in a.items():
        if not x.size:
            continue
        d = float(np.max(np.abs(x - b[kind])))
        scale = max(scale, float(np.max(np.abs(x))))
        if d > worst:
            worst, where = d, kind
    return max(worst, 0.0), scale, where


class _Channels:
    """Streaming per-channel mean and std (float64 sums)."""

    def __init__(self) -> None:
        self.n = 0
        self.s: np.ndarray | None = None
        self.ss: np.ndarray | None = None

    def add(self, x: np.ndarray) -> None:
        x = x.astype(np.float64)
        s, ss = x.sum(0), (x * x).sum(0)
        self.s = s if self.s is None else self.s + s
        self.ss = ss if self.ss is None else self.ss + ss
        self.n += len(x)

    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        assert self.s is not None and self.ss is not None and self.n
        mean = self.s / self.n
        return mean, np.sqrt(np.maximum(self.ss / self.n - mean * mean, 0.0))


class _Inspection:
    """The data checks of one card on one dataset (see the module docstring)."""

    def __init__(self, card: TeacherCard, ds: Any, max_windows: int) -> None:
        self.card, self.ds, self.max_windows = card, ds, max_windows
        self.modalities = list(card.modalities)
        self.checks: list[Check] = []

    def raw(self, split: Any, rows: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        x = {m: np.asarray(split.x[m][rows], dtype=np.float32) for m in self.modalities}
        return x, split.ids[rows]

    def run(self, facts: CardFacts, data: str) -> InspectReport:
        ds, card = self.ds, self.card
        picks = {s: _picks(np.flatnonzero(ds.splits[s].y >= 0), self.max_windows)
                 for s in CHECKED_SPLITS}  # fmt: skip
        windows = {s: int(len(p)) for s, p in picks.items()}

        def report(accuracy: Mapping[str, float] | None = None) -> InspectReport:
            return InspectReport(facts, data, tuple(self.checks), windows, dict(accuracy or {}))

        teacher = self.open()
        if teacher is None:
            return report()
        # The batch and dry-run windows: the first checked windows of the first split with any.
        first = next((s for s in CHECKED_SPLITS if len(picks[s])), None)
        split = ds.splits[first or "train"]
        rows = picks[first] if first else np.arange(min(len(split), BATCH_WINDOWS))
        batch_raw, batch_keys = self.raw(split, rows[:BATCH_WINDOWS])
        if not self.signature(teacher, batch_raw, batch_keys):
            return report()
        self.batch_checks(teacher, batch_raw, batch_keys)

        logits, embs, ys, norm = [], [], [], {i.name: _Channels() for i in card.inputs}
        accuracy: dict[str, float] = {}
        index = card.class_index(list(ds.labels))
        for s in CHECKED_SPLITS:
            split_logits, split_embs = [], []
            for lo in range(0, len(picks[s]), CHUNK):
                raw, keys = self.raw(ds.splits[s], picks[s][lo : lo + CHUNK])
                out = teacher.outputs(raw, keys)
                split_logits.append(out.logits)
                split_embs.append(out.embedding)
                if not teacher.precomputed:
                    self.add_input_stats(raw, norm)
            if not picks[s].size:
                continue
            y = ds.splits[s].y[picks[s]]
            ys.append(y)
            if card.has_logits:
                logits.append(np.concatenate(split_logits))
                if index is not None:
                    accuracy[s] = float(np.mean(logits[-1][:, index].argmax(1) == y))
            if card.has_embedding:
                embs.append(np.concatenate(split_embs))
        y_all = np.concatenate(ys) if ys else np.zeros(0, np.int64)
        logits_all = np.concatenate(logits) if logits else None
        label_fail = self.label_order(logits_all, y_all, index)
        self.normalisation(teacher, norm, logits_all, y_all, index, label_fail)
        self.collapse(np.concatenate(embs) if embs else None)
        return report(accuracy)

    def open(self) -> Any:
        """The OutsideTeacher, or None after adding the failed check (loading or signature)."""
        from edgekd.teachers.card import verify_sha256
        from edgekd.teachers.sources import open_source
        from edgekd.teachers.teacher import OutsideTeacher

        card, specs = self.card, self.ds.specs
        try:
            verify_sha256(card)
        except ConfigError as exc:
            self.checks.append(_loading_fail(exc))
            return None
        missing = [m for m in self.modalities if m not in specs]
        if missing:
            readers = ", ".join(f"{i.name} <- {i.modality}" for i in card.inputs
                                if i.modality in missing)  # fmt: skip
            self.checks.append(_open_only(card))
            self.checks.append(Check(
                "signature", "fail",
                f"the card reads modality {', '.join(missing)} ({readers}), which the data does "
                f"not have; the data's modalities are {', '.join(specs)}: point each input's "
                "`modality:` at one of them",
            ))  # fmt: skip
            return None
        try:
            teacher = OutsideTeacher(card, specs)
        except (ConfigError, MissingExtra) as exc:
            try:  # a source that does not open is a loading failure; one that opens, signature
                open_source(card)
            except (ConfigError, MissingExtra) as inner:
                self.checks.append(_loading_fail(inner))
                return None
            self.checks.append(_loading_ok(card))
            self.checks.append(Check("signature", "fail", " ".join(str(exc).split())))
            return None
        self.checks.append(_loading_ok(card))
        return teacher

    def signature(self, teacher: Any, raw: dict[str, np.ndarray], keys: np.ndarray) -> bool:
        """The dry run on 2 windows; the shapes in the message. False after a failed check."""
        from edgekd.teachers.inputs import prepare

        n = min(DRY_RUN_WINDOWS, len(keys))
        if n == 0:
            self.checks.append(Check("signature", "fail", "the data has no windows to run on"))
            return False
        dry = {m: x[:n] for m, x in raw.items()}
        shapes = []
        try:
            for i in self.card.inputs:
                shape = f"{i.name} <- {i.modality} {tuple(raw[i.modality].shape[1:])}"
                if not teacher.precomputed:
                    x = prepare(i, teacher.specs[i.modality], dry[i.modality])
                    shape += f" -> model {tuple(x.shape[1:])}"
                shapes.append(shape)
            out = teacher.outputs(dry, keys[:n])
        except Exception as exc:  # any error of the teacher's runtime is the user's to see
            kind = "" if isinstance(exc, ConfigError) else f"{type(exc).__name__}: "
            text = " ".join(str(exc).split())  # runtimes' messages span lines
            self.checks.append(Check(
                "signature", "fail",
                f"the teacher does not run on {n} window(s) of the data: {kind}{text} "
                f"(windows {'; '.join(shapes) or self.raw_shapes(raw)}); check the inputs' "
                "layout, rate_hz / size and the output names in the card",
            ))  # fmt: skip
            return False
        got = [f"{o.kind} {tuple(getattr(out, o.kind).shape[1:])}" for o in self.card.outputs]
        self.checks.append(Check(
            "signature", "ok",
            f"windows {'; '.join(shapes)}; outputs {', '.join(got)} per window",
        ))  # fmt: skip
        return True

    def raw_shapes(self, raw: dict[str, np.ndarray]) -> str:
        return "; ".join(f"{m} {tuple(x.shape[1:])}" for m, x in raw.items())

    def batch_checks(self, teacher: Any, raw: dict[str, np.ndarray], keys: np.ndarray) -> None:
        """Batch invariance and determinism on the (up to) 16 batch windows. Determinism is
        measured first: outputs that change from run to run say nothing about the batch."""
        n = len(keys)

        def named(out: Any) -> dict[str, np.ndarray]:
            return {o.kind: getattr(out, o.kind) for o in self.card.outputs}

        batch = named(teacher.outputs(raw, keys))
        diff, scale, where = _max_diff(batch, named(teacher.outputs(raw, keys)))
        limit = DETERMINISM_TOLERANCE * (1 + scale)
        deterministic = diff <= limit
        if deterministic:
            determinism = Check(
                "determinism", "ok",
                f"two runs on {n} windows agree (max abs difference {diff:.2g} <= {limit:.2g})",
            )  # fmt: skip
        else:
            determinism = Check(
                "determinism", "warn",
                f"two runs on the same {n} windows give different {where} outputs: max abs "
                f"difference {diff:.3g} (tolerance {limit:.2g}); dropout or another random op "
                "left on at inference? Export or build the model in eval mode",
            )  # fmt: skip
        name = "batch invariance"
        if n < 2:
            self.checks.append(Check(name, "ok", "skipped: fewer than 2 windows"))
        elif not deterministic:
            self.checks.append(Check(name, "ok", "skipped: the outputs are not deterministic "
                                     "(see determinism)"))  # fmt: skip
        else:
            alone_parts = [named(teacher.outputs({m: x[i : i + 1] for m, x in raw.items()},
                                                 keys[i : i + 1])) for i in range(n)]  # fmt: skip
            alone = {k: np.concatenate([p[k] for p in alone_parts]) for k in batch}
            diff, scale, where = _max_diff(batch, alone)
            limit = BATCH_TOLERANCE * (1 + scale)
            if diff <= limit:
                self.checks.append(Check(
                    name, "ok",
                    f"{n} windows in one batch match each window alone (max abs difference "
                    f"{diff:.2g} <= {limit:.2g})",
                ))  # fmt: skip
            else:
                small = diff < 1e-2 * (1 + scale)
                self.checks.append(Check(
                    name, "warn",
                    f"the teacher's {where} output for a window depends on the other windows "
                    f"of its batch: max abs difference {diff:.3g} between a batch of {n} and "
                    f"each window alone (tolerance {limit:.2g}, outputs up to {scale:.3g}); "
                    "the usual cause is BatchNorm left in training mode or an op over the "
                    "batch axis (batch statistics, a softmax over dim 0): export or build the "
                    "model in eval mode"
                    + ("; differences this small can also come from GPU kernels (TF32) that "
                       "change with the batch size: `device: cpu` in the card tells the two "
                       "apart" if small else ""),
                ))  # fmt: skip
        self.checks.append(determinism)

    def label_order(self, logits: np.ndarray | None, y: np.ndarray,
                    index: list[int] | None) -> bool:  # fmt: skip
        """The label-order check; True when it failed."""
        card, labels = self.card, list(self.ds.labels)
        name = "label order"
        if logits is None:
            self.checks.append(Check(name, "ok", "skipped: the teacher has no logits"))
            return False
        if index is None:
            why = "the card says disjoint: true" if card.disjoint else (
                f"the card's labels {_flow(card.labels)} (after label_map) do not name each of "
                f"the data's labels {_flow(labels)} exactly once"
            )  # fmt: skip
            self.checks.append(Check(name, "ok", f"skipped: {why}"))
            return False
        if not len(y):
            self.checks.append(Check(name, "ok", "skipped: no labelled windows"))
            return False
        from scipy.optimize import linear_sum_assignment

        k, c = logits.shape[1], len(labels)
        confusion = np.zeros((k, c), dtype=np.int64)
        np.add.at(confusion, (logits.argmax(1), y), 1)
        a_card = float(sum(confusion[index[j], j] for j in range(c)) / len(y))
        cols, classes = linear_sum_assignment(confusion, maximize=True)
        a_best = float(confusion[cols, classes].sum() / len(y))
        if a_best >= a_card + LABEL_ORDER_GAIN and a_best >= 2 / c:
            suggested = self.suggested_order(dict(zip(cols.tolist(), classes.tolist(),
                                                      strict=True)))  # fmt: skip
            self.checks.append(Check(
                name, "fail",
                f"the card's labels order looks wrong: accuracy {a_card:.3f} with it, "
                f"{a_best:.3f} with labels: {_flow(suggested)} (put that list in the card if "
                "the teacher's documentation agrees)",
            ))  # fmt: skip
            return True
        self.checks.append(Check(
            name, "ok",
            f"accuracy {a_card:.3f} with the card's order; the best reordering gives "
            f"{a_best:.3f}",
        ))  # fmt: skip
        return False

    def suggested_order(self, assigned: dict[int, int]) -> list[str]:
        """The card's labels rewritten so each assigned column j names dataset label
        assigned[j] (through label_map: the card label that maps to it); the other columns take
        the remaining card labels in their order."""
        card, labels = self.card, list(self.ds.labels)
        card_name = {card.label_map.get(t, t): t for t in card.labels}
        out: list[str | None] = [None] * len(card.labels)
        for col, cls in assigned.items():
            out[col] = card_name[labels[cls]]
        rest = iter(t for t in card.labels if t not in out)
        return [t if t is not None else next(rest) for t in out]

    def add_input_stats(self, raw: dict[str, np.ndarray], norm: dict[str, _Channels]) -> None:
        """Accumulate each input's per-channel statistics after the card's preprocessing
        (before its layout and flatten, so that channels are the raw layout's last axis)."""
        from edgekd.teachers.inputs import prepare

        for i in self.card.inputs:
            spec = self.ds.specs[i.modality]
            x = prepare(replace(i, layout=None, flatten=False), spec, raw[i.modality])
            norm[i.name].add(x.reshape(-1, 1) if spec.kind == "audio" else
                             x.reshape(-1, x.shape[-1]))  # fmt: skip

    def normalisation(
        self,
        teacher: Any,
        norm: dict[str, _Channels],
        logits: np.ndarray | None,
        y: np.ndarray,
        index: list[int] | None,
        label_fail: bool,
    ) -> None:
        card = self.card
        for i in card.inputs:
            name = f"normalisation of {i.name}"
            if teacher.precomputed or not norm[i.name].n:
                why = "precomputed outputs" if teacher.precomputed else "no windows"
                self.checks.append(Check(name, "ok", f"skipped: {why}"))
                continue
            mean, std = norm[i.name].stats()
            bad = [
                j for j in range(len(mean))
                if abs(mean[j]) > MAX_ABS_MEAN or std[j] > MAX_STD or std[j] < MIN_STD
            ]  # fmt: skip
            observed = f"mean {_numbers(tuple(mean), 3)}, std {_numbers(tuple(std), 3)} per channel"
            if not bad:
                self.checks.append(Check(name, "ok", f"input {i.name}: {observed}"))
                continue
            cause = (
                f"the card has no normalize: for {i.name}; add the mean and std the teacher was "
                "trained with (normalize: {mean: [...], std: [...]})"
                if not i.mean else
                f"the card's normalize for {i.name} does not fit the data: wrong values, or "
                f"the data's {i.modality} is in other units than the teacher's training data "
                "(g vs m/s^2, degrees vs radians, 0-255 vs 0-1)"
            )  # fmt: skip
            self.checks.append(Check(
                name, "warn",
                f"input {i.name} after the card's preprocessing has {observed}; channel(s) "
                f"{', '.join(map(str, bad))} are outside |mean| <= {MAX_ABS_MEAN:g}, "
                f"{MIN_STD:g} <= std <= {MAX_STD:g}: likely {cause}",
            ))  # fmt: skip
        if logits is None:
            self.checks.append(Check("output entropy", "ok", "skipped: no logits"))
        elif logits.shape[1] < 2 or not len(logits):
            self.checks.append(Check("output entropy", "ok", "skipped: fewer than 2 classes"))
        else:
            z = logits.astype(np.float64)
            z = z - z.max(1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(1, keepdims=True)
            h = float(np.mean(-(p * np.log(np.clip(p, 1e-300, None))).sum(1)))
            h /= math.log(logits.shape[1])
            if h > MAX_ENTROPY:
                self.checks.append(Check(
                    "output entropy", "warn",
                    f"outputs near uniform: wrong normalisation or layout? (mean softmax "
                    f"entropy {h:.3f} of the maximum, > {MAX_ENTROPY:g}; probabilities instead "
                    "of logits as the output would do this too)",
                ))  # fmt: skip
            else:
                self.checks.append(Check(
                    "output entropy", "ok", f"mean softmax entropy {h:.3f} of the maximum"
                ))  # fmt: skip
        name = "accuracy vs chance"
        if logits is None or index is None or not len(y):
            self.checks.append(Check(name, "ok", "skipped: no logits mapped onto labelled data"))
            return
        c = len(self.ds.labels)
        accuracy = float(np.mean(logits[:, index].argmax(1) == y))
        if label_fail:
            self.checks.append(Check(name, "ok", f"accuracy {accuracy:.3f}: see label order"))
        elif accuracy <= CHANCE_FACTOR / c:
            self.checks.append(Check(
                name, "warn",
                f"accuracy {accuracy:.3f} on {len(y)} labelled windows is at most "
                f"{CHANCE_FACTOR:g} x chance (1/{c}) and the label order does not explain it: "
                "likely the inputs' normalisation (normalize:), their layout (layout:) or the "
                "sampling rate (rate_hz:) differ from what the teacher was trained on",
            ))  # fmt: skip
        else:
            self.checks.append(Check(
                name, "ok", f"accuracy {accuracy:.3f} (chance {1 / c:.3f})"
            ))  # fmt: skip

    def collapse(self, emb: np.ndarray | None) -> None:
        name = "embedding collapse"
        if emb is None:
            self.checks.append(Check(name, "ok", "skipped: the teacher has no embedding"))
            return
        if len(emb) < 2:
            self.checks.append(Check(name, "ok", "skipped: fewer than 2 windows"))
            return
        centred = emb.astype(np.float64) - emb.mean(0, dtype=np.float64)
        variance = float(centred.var(0).sum())
        s = np.linalg.svd(centred, compute_uv=False)
        total = float(s.sum())
        if total > 0:
            q = s[s > 0] / total
            rank = float(math.exp(-(q * np.log(q)).sum()))
        else:
            rank = 0.0
        if variance < MIN_VARIANCE or rank < MIN_EFFECTIVE_RANK:
            self.checks.append(Check(
                name, "warn",
                f"the embedding has collapsed: total variance {variance:.3g} (minimum "
                f"{MIN_VARIANCE:g}), effective rank {rank:.2f} of {emb.shape[1]} (minimum "
                f"{MIN_EFFECTIVE_RANK:g}) over {len(emb)} windows; check that the card's "
                "embedding output names a feature layer (not a constant, a mask or a pooled "
                "scalar), or distill from logits only",
            ))  # fmt: skip
        else:
            self.checks.append(Check(
                name, "ok",
                f"total variance {variance:.3g}, effective rank {rank:.2f} of {emb.shape[1]}",
            ))  # fmt: skip
