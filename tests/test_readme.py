"""The README's claims that a test can check cheaply: its length, the commands and flags it
names, the recipes and registries it lists, the files it links, and what a run folder keeps."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_the_readme_is_a_product_page_of_at_most_250_lines() -> None:
    assert len(README.splitlines()) <= 250
    heads = [line[3:] for line in README.splitlines() if line.startswith("## ")]
    assert heads == ["The two commands", "Quickstart", "Concepts", "CLI at a glance",
                     "Embedding the runtime", "Deploying to a Jetson", "Results",
                     "Limitations"]  # fmt: skip


def _commands() -> list[tuple[str, ...]]:
    """Each `edgekd X [Y]` the README shows, as CLI words (subcommand included)."""
    blocks = re.findall(r"```[a-z]*\n(.*?)```", README, flags=re.S)
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", README, flags=re.S))
    code = "\n".join(blocks + spans)
    pattern = r"(?<![\w./])edgekd ((?:teacher (?:inspect|cache|export))|[a-z][a-z-]*)"
    return sorted({tuple(m.group(1).split()) for m in re.finditer(pattern, code)})


@pytest.mark.parametrize("words", _commands(), ids=" ".join)
def test_every_command_the_readme_names_exists(words: tuple[str, ...]) -> None:
    result = run_cli([*words, "--help"])
    assert result.exit_code == 0, result.output


def test_every_distill_flag_the_readme_names_exists() -> None:
    help_text = run_cli(["distill", "--help"]).output
    lines = [line.split("edgekd distill", 1)[1] for line in README.splitlines()
             if "edgekd distill" in line]  # fmt: skip
    flags = {f for line in lines for f in re.findall(r"(--[a-z][a-z-]+)", line)}
    assert {"--teacher", "--data", "--labelled-share", "--recipe"} <= flags
    for flag in flags:
        assert flag in help_text, flag


def test_the_recipes_and_students_the_readme_names_are_registered() -> None:
    from edgekd.config import RECIPES
    from edgekd.models import list_students

    concepts = README.split("## Concepts")[1].split("## CLI")[0]
    for recipe in ("ce", "kd", "paper", "dist", "dkd", "bkd", "kd_std", "fixmatch"):
        assert f"`{recipe}`" in concepts and recipe in RECIPES
    for student in ("tcn_tiny", "dscnn_audio"):
        assert student in list_students()


def test_the_files_the_readme_links_exist() -> None:
    for link in re.findall(r"\]\(((?:docs/)[^)#]+)\)", README):
        assert (ROOT / link).is_file(), link
    for script in re.findall(r"python (benchmarks/[a-z_]+\.py)", README):
        assert (ROOT / script).is_file(), script


def test_a_run_folder_keeps_the_last_epoch_as_the_readme_says(student_run: Path) -> None:
    import json

    assert "the weights of the **last** epoch" in README
    metrics = json.loads((student_run / "metrics.json").read_text())
    history = json.loads((student_run / "history.json").read_text())
    assert metrics["select"] == "last"
    assert metrics["selected_epoch"] == history[-1]["epoch"] == len(history)
