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
