"""Teachers edgekd did not train: the card (`card`), its preprocessing (`inputs`), one adapter
per source (`sources`), the loaded teacher (`teacher`), the inspect checks (`checks`) and the
outputs cache (`cache`). `distill` sees only `TeacherOutputs`, whatever the source.
"""

from __future__ import annotations

from pathlib import Path

from edgekd.teachers.card import CARD_FILE, TeacherCard, find_card, read_card


def is_card_teacher(path: Path) -> bool:
    """True when `path` names an outside teacher (a card, a folder holding teacher.yaml, or a
    model file with a card beside it) rather than an edgekd teacher run folder."""
    path = Path(path)
    if path.is_dir():
        return (path / CARD_FILE).is_file()
    return path.suffix in (".yaml", ".yml", ".onnx", ".pt2", ".npz")


__all__ = ["CARD_FILE", "TeacherCard", "find_card", "is_card_teacher", "read_card"]
