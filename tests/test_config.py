import re
from pathlib import Path

import pytest

from edgekd.config import (
    DistillConfig,
    RunConfig,
    from_dict,
    load_config,
    override,
    resolve_recipe,
    save_config,
    to_dict,
)
from edgekd.errors import ConfigError


def test_yaml_overrides_only_given_keys(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("train:\n  epochs: 3\ndistill:\n  feature_loss: soft_margin\n  margin: 0.1\n")
    cfg = load_config(path)
    assert cfg.train.epochs == 3
    assert cfg.train.lr == RunConfig().train.lr
    assert cfg.distill.feature_loss == "soft_margin" and cfg.distill.margin == 0.1


def test_unknown_key_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("train:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match="unknown key.*epoch"):
        load_config(path)


def test_invalid_loss_name_is_an_error() -> None:
    with pytest.raises(ConfigError, match="feature_loss='l1'"):
        DistillConfig(feature_loss="l1")
    with pytest.raises(ConfigError, match="tau must be > 0"):
        override(RunConfig(), "distill", tau=0.0)


def test_roundtrip_through_yaml(tmp_path: Path) -> None:
    cfg = override(RunConfig(), "data", val_subjects=("1", "3"), limit=50)
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg
    assert from_dict(to_dict(cfg)) == cfg


def test_recipes() -> None:
    assert not resolve_recipe("ce").uses_teacher
    paper = resolve_recipe("paper")
    assert (paper.feature_loss, paper.classifier_loss, paper.quality) == (
        "soft_margin",
        "soft_teacher_head",
        "teacher_confidence",
    )
    with pytest.raises(ConfigError, match="unknown recipe"):
        resolve_recipe("magic")


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("batch_size", 0, r"train.batch_size \(--batch-size\) must be >= 2"),
        ("batch_size", 1, r"must be >= 2 \(windows per step \(BatchNorm needs 2\)\), got 1"),
        ("seed", -1, r"train.seed \(--seed\) must be between 0 and 4294967295"),
        ("seed", 2**32, r"train.seed \(--seed\) must be between 0 and 4294967295"),
        ("lr", -0.1, r"train.lr \(--lr\) must be > 0 \(peak learning rate\), got -0.1"),
        ("lr", 0.0, r"train.lr \(--lr\) must be > 0"),
        ("lr", float("nan"), r"train.lr \(--lr\) must be a finite number > 0"),
        ("epochs", -1, r"train.epochs \(--epochs\) must be >= 1 \(epochs to train\), got -1"),
        ("epochs", 0, r"train.epochs \(--epochs\) must be >= 1"),
        ("epochs", "3", r"train.epochs \(--epochs\) must be a whole number >= 1"),
        ("weight_decay", -1e-4, r"train.weight_decay must be >= 0"),
        ("num_workers", -2, r"train.num_workers must be >= 0"),
    ],
)
def test_train_settings_out_of_range_are_named(field: str, value: object, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        override(RunConfig(), "train", **{field: value})


def test_train_settings_in_range_are_kept() -> None:
    cfg = override(RunConfig(), "train", batch_size=2, seed=2**32 - 1, lr=1e-5, epochs=1)
    assert (cfg.train.batch_size, cfg.train.seed, cfg.train.lr, cfg.train.epochs) == (
        2,
        2**32 - 1,
        1e-5,
        1,
    )


def test_yaml_with_a_bad_train_value_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  batch_size: 0\n")
    with pytest.raises(ConfigError, match="train.batch_size"):
        load_config(path)


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--batch-size", "0", "train.batch_size (--batch-size) must be >= 2"),
        ("--seed", "-1", "train.seed (--seed) must be between 0 and 4294967295"),
        ("--lr", "-0.001", "train.lr (--lr) must be > 0"),
        ("--epochs", "-1", "train.epochs (--epochs) must be >= 1 (epochs to train), got -1"),
    ],
)
def test_cli_bad_train_option_is_one_line_before_any_work(
    tmp_path: Path, flag: str, value: str, expected: str
) -> None:
    from tests.conftest import run_cli

    out = tmp_path / "teacher"
    result = run_cli(["teacher", "--data", "har", "--out", str(out), flag, value, "--quiet"])
    assert result.exit_code == 2
    assert expected in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


# --- one source of options: flags > --set > config file > recipe > defaults ---------------


def test_recipe_lies_beneath_the_config_file_and_flags(tmp_path: Path) -> None:
    from edgekd.config import build_config

    path = tmp_path / "cfg.yaml"
    path.write_text("distill:\n  tau: 3.0\n  teacher_mode: cached\ntrain:\n  lr: 0.01\n")
    cfg = build_config(path, recipe="kd", flags={"train": {"lr": 0.02, "epochs": None}})
    kd = resolve_recipe("kd")
    assert cfg.distill == DistillConfig(**{**to_dict(kd), "tau": 3.0, "teacher_mode": "cached"})
    assert (cfg.train.lr, cfg.train.epochs) == (0.02, None)  # a None flag was not given
    assert build_config(None, recipe="ce").distill == resolve_recipe("ce")
    assert build_config(None) == RunConfig()


def test_set_reaches_every_field_typed_by_it(tmp_path: Path) -> None:
    from edgekd.config import build_config

    sets = ["train.weight_decay=0", "train.epochs=7", "data.val_subjects=1,3",
            "data.unlabelled=false", "augment.ops.rotate.max_deg=30", "model.args.width=16",
            "student_modality=gyro", "distill.tau=5"]  # fmt: skip
    path = tmp_path / "cfg.yaml"
    path.write_text("train:\n  epochs: 3\nmodel:\n  args:\n    depth: 2\n")
    cfg = build_config(path, recipe="kd", sets=sets, flags={"train": {"epochs": 9}})
    assert cfg.train.weight_decay == 0.0 and isinstance(cfg.train.weight_decay, float)
    assert cfg.train.epochs == 9  # the flag beats --set
    assert cfg.data.val_subjects == ("1", "3") and cfg.data.unlabelled is False
    assert cfg.augment.ops == {"rotate": {"max_deg": 30}}
    assert cfg.model.args == {"depth": 2, "width": 16}  # --set adds to the file's args
    assert (cfg.student_modality, cfg.distill.tau) == ("gyro", 5.0)
    # Every field of every section is reachable: each set to its default text gives the defaults.
    every = []
    for section, values in to_dict(RunConfig()).items():
        for key, value in values.items() if isinstance(values, dict) else [(None, values)]:
            text = ("null" if value is None else str(value).lower() if isinstance(value, bool)
                    else "{}" if isinstance(value, dict) else str(value))  # fmt: skip
            every.append(f"{section}.{key}={text}" if key else f"{section}={text}")
    assert len(every) > 40
    assert build_config(None, sets=every) == RunConfig()


@pytest.mark.parametrize(
    ("item", "message"),
    [("train.lrr=0.1", "unknown key 'lrr' in section train; did you mean lr?"),
     ("trian.lr=0.1", "unknown section 'trian'; did you mean train?"),
     ("train.epochs=abc", "--set train.epochs=abc: train.epochs takes int"),
     ("data.unlabelled=maybe", "data.unlabelled takes bool"),
     ("train.lr", "expected section.key=value"),
     ("train.lr.x=1", "train.lr has no keys inside it"),
     ("train.lr=[", "--set train.lr=[: not a valid value"),
     ("model.args.width=[1,", "--set model.args.width=[1,: not a valid value")],
)  # fmt: skip
def test_set_errors_name_the_option(item: str, message: str) -> None:
    from edgekd.config import build_config

    with pytest.raises(ConfigError, match=re.escape(message)):
        build_config(None, sets=[item])


def test_set_text_fields_take_the_text_as_typed() -> None:
    from edgekd.config import build_config

    assert build_config(None, sets=["model.arch={tcn"]).model.arch == "{tcn"  # no YAML


def test_a_config_file_is_typed_by_the_fields(tmp_path: Path) -> None:
    from edgekd.config import build_config

    path = tmp_path / "cfg.yaml"
    path.write_text("train:\n  lr: 1\ndata:\n  val_subjects: [1, 3]\n")
    cfg = build_config(path)
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.data.val_subjects == ("1", "3")
    for text, message in (
        ("train:\n  epochs: three\n", "train.epochs takes int or null, got 'three'"),
        ("train:\n  lrr: 0.1\n", "unknown key 'lrr' in " + f"{path}: train; did you mean lr?"),
        ("train: 3\n", "train is a section: give it a mapping, got 3"),
        ("distill:\n  allow_unseen_augment: 1\n", "allow_unseen_augment takes bool, got 1"),
    ):
        path.write_text(text)
        with pytest.raises(ConfigError, match=re.escape(message)):
            build_config(path)


def test_build_options_layers_any_options_dataclass(tmp_path: Path) -> None:
    from dataclasses import dataclass

    from edgekd.config import build_options, given_keys

    @dataclass(frozen=True)
    class Options:
        target: str = "cpu"
        calib: int | None = None
        max_drop: float = 1.0
        allow_float: tuple[str, ...] = ()

    path = tmp_path / "opts.yaml"
    path.write_text("calib: 64\nmax_drop: 2\ntarget: jetson\n")
    opts = build_options(Options, path, sets=["max_drop=3", "target=orin", "allow_float=a,b"],
                         flags={"target": "cpu-ort", "calib": None})  # fmt: skip
    assert opts == Options(target="cpu-ort", calib=64, max_drop=3.0, allow_float=("a", "b"))
    assert build_options(Options) == Options()
    assert build_options(Options, sets=["calib=null"]).calib is None
    assert given_keys(path, ["max_drop=3"], Options) == ["calib", "max_drop", "target"]
    with pytest.raises(ConfigError, match=re.escape("--set calb=1: unknown key 'calb'; did you "
                                                    "mean calib?")):  # fmt: skip
        build_options(Options, sets=["calb=1"])
    with pytest.raises(ConfigError, match=re.escape("--set max_drop=x: max_drop takes float")):
        build_options(Options, sets=["max_drop=x"])


def test_given_keys_name_what_the_file_and_set_give(tmp_path: Path) -> None:
    from edgekd.config import given_keys

    path = tmp_path / "cfg.yaml"
    path.write_text("train:\n  lr: 0.1\nmodel:\n  args:\n    width: 8\nstudent_modality: acc\n")
    keys = given_keys(path, ["distill.tau=2", "augment.ops.rotate.max_deg=3", "train.lr=0.2"])
    assert keys == ["train.lr", "model.args", "student_modality", "distill.tau", "augment.ops"]


def test_a_bare_set_key_suggests_its_section() -> None:
    from edgekd.config import build_config

    said = "--set tau=2: unknown key 'tau'; did you mean distill.tau?"
    with pytest.raises(ConfigError, match=re.escape(said)):
        build_config(None, sets=["tau=2"])
