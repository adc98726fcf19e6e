"""One option source: `distill`, `ablate`, `search` and `export` take `--config FILE` and
`--set key=value` the same way (a flag beats --set beats the file), typed by the field, and an
unknown key exits 2 with the close match. Nothing trains: the library call each command ends in
is replaced by one that hands back what the command built."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_cli


class Built(Exception):
    """Raised by the stand-in library call with what the command passed it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__("built")
        self.args_, self.kwargs = args, kwargs


def _stand_in(monkeypatch: pytest.MonkeyPatch, module: str, name: str) -> None:
    import importlib

    def built(*args: Any, **kwargs: Any) -> None:
        raise Built(*args, **kwargs)

    monkeypatch.setattr(importlib.import_module(module), name, built)


def _built(args: list[str]) -> Built:
    with pytest.raises(Built) as caught:
        run_cli(args)
    return caught.value


def _yaml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "options.yaml"
    path.write_text(text)
    return str(path)


def test_distill_layers_flag_over_set_over_file_over_recipe(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from edgekd.config import resolve_recipe

    _stand_in(monkeypatch, "edgekd.distill.trainer", "distill")
    config = _yaml(tmp_path, "distill:\n  tau: 3\n  lambda_task: 0.25\n"
                             "train:\n  epochs: 4\n  batch_size: 16\n")  # fmt: skip
    built = _built([
        "distill", "--teacher", str(tmp_path / "t"), "--recipe", "kd", "--config", config,
        "--set", "distill.tau=5", "--set", "distill.lambda_task=0.75", "--set", "train.epochs=6",
        "--set", "train.weight_decay=0", "--epochs", "7", "--tau", "6", "--threads", "1",
    ])  # fmt: skip
    cfg = built.args_[0]
    assert cfg.train.epochs == 7  # the flag beats --set and the file
    assert cfg.distill.tau == 6.0  # so does a hidden alias flag (--tau = distill.tau)
    assert cfg.distill.lambda_task == 0.75  # --set beats the file
    assert cfg.train.batch_size == 16  # the file beats the defaults
    assert cfg.distill.lambda_classifier == resolve_recipe("kd").lambda_classifier  # the recipe
    assert cfg.train.weight_decay == 0.0 and isinstance(cfg.train.weight_decay, float)


def test_ablate_layers_flag_over_set_over_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _stand_in(monkeypatch, "edgekd.distill.ablate", "ablate")
    config = _yaml(tmp_path, "train:\n  epochs: 4\n  batch_size: 16\n  lr: 0.01\n")
    built = _built(["ablate", "--teacher", str(tmp_path / "t"), "--config", config,
                    "--set", "train.batch_size=32", "--set", "train.lr=0.02", "--lr", "0.05"])
    base = built.args_[0].base
    assert (base.train.epochs, base.train.batch_size, base.train.lr) == (4, 32, 0.05)


def test_search_layers_flag_over_set_over_file_into_its_trials(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _stand_in(monkeypatch, "edgekd.search", "run_search")
    args = ["search", "--teacher", str(tmp_path / "t"), "--out", str(tmp_path / "s")]
    config = _yaml(tmp_path, "train:\n  epochs: 4\n  batch_size: 16\n  seed: 3\n"
                             "data:\n  unlabelled: false\n")  # fmt: skip
    spec = _built([*args, "--config", config, "--set", "train.batch_size=32",
                   "--set", "train.seed=4", "--seed", "5"]).args_[0]  # fmt: skip
    assert (spec.epochs, spec.batch_size, spec.seed, spec.unlabelled) == (4, 32, 5, False)
    spec = _built(args).args_[0]
    assert (spec.epochs, spec.batch_size, spec.seed, spec.unlabelled) == (30, 64, 0, True)


def test_export_layers_flag_over_set_over_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _stand_in(monkeypatch, "edgekd.export.exporter", "export_run")
    config = _yaml(tmp_path, "calib: 64\nptq: entropy\nmax_drop: 2\nallow_float: [conv1]\n")
    built = _built(["export", str(tmp_path / "run"), "--out", str(tmp_path / "b.edgekd"),
                    "--config", config, "--set", "ptq=percentile", "--set", "max_drop=3",
                    "--set", "seed=2", "--max-drop", "4", "-q"])  # fmt: skip
    opts = built.kwargs
    assert (opts["calib"], opts["ptq"], opts["max_drop"], opts["seed"]) == (
        64, "percentile", 4.0, 2,
    )  # fmt: skip
    assert opts["allow_float"] == ("conv1",) and opts["target"] == "cpu"  # a default
    assert opts["progress"] is False


COMMANDS = {
    "distill": ["distill", "--teacher", "no-teacher"],
    "ablate": ["ablate", "--teacher", "no-teacher"],
    "search": ["search", "--teacher", "no-teacher", "--out", "no-search"],
    "export": ["export", "no-run", "--out", "no.edgekd"],
}
UNKNOWN = {"distill": ("distill.tua=2", "did you mean tau?"),
           "ablate": ("train.epoch=2", "did you mean epochs?"),
           "search": ("train.bach_size=2", "did you mean batch_size?"),
           "export": ("calb=2", "unknown key 'calb'; did you mean calib?")}  # fmt: skip
MISTYPED = {"distill": ("distill.tau=warm", "distill.tau takes float, got 'warm'"),
            "ablate": ("train.epochs=two", "train.epochs takes int or null, got 'two'"),
            "search": ("data.unlabelled=maybe", "data.unlabelled takes bool, got 'maybe'"),
            "export": ("calib=many", "calib takes int or null, got 'many'")}  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS)
def test_unknown_set_key_exits_2_with_the_close_match(command: str, tmp_path: Path) -> None:
    item, said = UNKNOWN[command]
    result = run_cli([*COMMANDS[command], "--set", item])
    assert result.exit_code == 2, result.output
    assert f"--set {item}: unknown key" in result.output and said in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_set_values_are_typed_by_the_field(command: str) -> None:
    item, said = MISTYPED[command]
    result = run_cli([*COMMANDS[command], "--set", item])
    assert result.exit_code == 2, result.output
    assert f"--set {item}: {said}" in result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_unknown_config_file_key_exits_2_with_the_close_match(
    command: str, tmp_path: Path
) -> None:
    text = "calb: 2\n" if command == "export" else "train:\n  epoch: 2\n"
    result = run_cli([*COMMANDS[command], "--config", _yaml(tmp_path, text)])
    assert result.exit_code == 2, result.output
    assert ("did you mean calib?" if command == "export" else "did you mean epochs?") in (
        result.output
    )


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_config_and_set_but_not_the_aliases(command: str) -> None:
    result = run_cli([command, "--help"])
    assert result.exit_code == 0
    assert "--config" in result.output and "--set" in result.output
    for alias in ("--feature-loss", "--classifier-loss", "--lambda-task", "--teacher-mode"):
        assert alias not in result.output


def test_distill_alias_flags_are_typed_and_name_themselves() -> None:
    result = run_cli([*COMMANDS["distill"], "--tau", "warm"])
    assert result.exit_code == 2
    assert "--tau warm: distill.tau takes float, got 'warm'" in result.output
    result = run_cli([*COMMANDS["distill"], "--set", "tau=2"])
    assert result.exit_code == 2
    assert "unknown key 'tau'; did you mean distill.tau?" in result.output


@pytest.mark.parametrize(
    ("given", "said"),
    [(["--set", "distill.tau=2"], "takes no distill.tau from --config/--set: the search draws"),
     (["--set", "model.arch=tcn_tiny"], "takes no model.arch from --config/--set"),
     (["--config", "train:\n  lr: 0.1\n"], "takes no train.lr from --config/--set"),
     (["--set", "augment.policy=none"],
      "takes no augment.policy from --config/--set: it passes only data.source")],
)  # fmt: skip
def test_search_refuses_what_it_explores_or_cannot_pass(
    given: list[str], said: str, tmp_path: Path
) -> None:
    if given[0] == "--config":
        given = ["--config", _yaml(tmp_path, given[1])]
    result = run_cli([*COMMANDS["search"], *given])
    assert result.exit_code == 2, result.output
    assert "`edgekd search` " + said in result.output


@pytest.mark.parametrize(
    ("given", "said"),
    [(["--set", "distill.tau=2"], "takes no distill.tau from --config/--set: each ablation run"),
     (["--config", "distill:\n  tau: 2\n"], "takes no distill.tau"),
     (["--set", "train.seed=3"], "takes no train.seed from --config/--set: --seeds")],
)  # fmt: skip
def test_ablate_refuses_what_each_run_sets(given: list[str], said: str, tmp_path: Path) -> None:
    if given[0] == "--config":
        given = ["--config", _yaml(tmp_path, given[1])]
    result = run_cli([*COMMANDS["ablate"], *given])
    assert result.exit_code == 2, result.output
    assert "`edgekd ablate` " + said in result.output
