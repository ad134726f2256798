"""Config: presets, YAML files, overrides and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from srs_core.cli import main
from srs_core.config import load_config, parse_override
from srs_core.errors import ConfigError


def test_paper_defaults_follow_the_design() -> None:
    cfg = load_config()
    assert (cfg.model.vision_width, cfg.model.vision_depth, cfg.model.image_size) == (768, 12, 128)
    assert (cfg.model.text_layers, cfg.model.fusion_layers, cfg.model.vocab_size) == (6, 6, 21128)
    assert (cfg.train.lr, cfg.train.weight_decay, cfg.train.epochs) == (1e-4, 0.02, 5)
    assert cfg.emotion.k == 60


def test_layers_apply_in_order(tmp_path: Path) -> None:
    first = tmp_path / "a.yaml"
    first.write_text("preset: tiny\ntrain:\n  epochs: 7\n  lr: 1\n")
    second = tmp_path / "b.yaml"
    second.write_text("train:\n  epochs: 9\n")
    cfg = load_config([first, second], ["train.batch_size=3"])
    assert cfg.model.vision_width == 64  # from the tiny preset the file named
    assert (cfg.train.epochs, cfg.train.batch_size) == (9, 3)
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epoch=2", "unknown key train.epoch"),
        ("trian.epochs=2", "unknown section 'trian'"),
        ("train.epochs=two", "expected int"),
        ("train.epochs=true", "expected int"),
        ("train.precision=fp16", "not one of"),
        ("train.epochs", "section.key=value"),
        ("epochs=3", "section.key"),
        ("train.batch_size=0", "train.batch_size must be > 0"),
        ("model.image_size=100", "multiple of model.patch_size"),
    ],
)
def test_invalid_overrides_are_named(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


def test_bad_files_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config([bad])
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config([listy])
    with pytest.raises(ConfigError, match="cannot read"):
        load_config([tmp_path / "absent.yaml"])
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config(preset="huge")


def test_override_values_are_yaml() -> None:
    assert parse_override("data.stickerchat=s3://b/p") == {"data": {"stickerchat": "s3://b/p"}}
    assert load_config(overrides=["train.lr=2e-4"]).train.lr == 2e-4
    assert parse_override("model.vision_init=") == {"model": {"vision_init": ""}}


def test_cli_config_show(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", "--preset", "tiny", "train.epochs=1"]) == 0
    out = capsys.readouterr().out
    assert "epochs: 1" in out and "vision_width: 64" in out
    assert main(["config", "show", "train.nope=1"]) == 2
