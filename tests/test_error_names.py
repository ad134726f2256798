"""A wrong, truncated or hostile artifact is refused in one line naming the file and what is
wrong with it: checkpoints given to the wrong loader, truncated arrays, index metadata, YAML
configs that are too deep or not UTF-8 (exit 2, a configuration error)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from srs_core.cli import main
from srs_core.errors import ConfigError, DataError, SrsError
from srs_core.runtime.checkpoint import save_torch


def _one_line(exc: pytest.ExceptionInfo, path: Path | str) -> str:
    text = str(exc.value)
    assert "\n" not in text and str(path) in text, text
    return text


# --- checkpoints -----------------------------------------------------------------------------


def test_a_teacher_given_as_selector_checkpoint_is_named(emotion: tuple[str, str]) -> None:
    from srs_core.inference import load_model
    from srs_core.model.checkpoint import BestCheckpoint

    teacher, _ = emotion
    with pytest.raises(ConfigError) as exc:
        BestCheckpoint.load(teacher)
    text = _one_line(exc, teacher)
    assert "not a selector checkpoint" in text and "teacher" in text
    with pytest.raises(ConfigError, match="not a selector checkpoint"):
        load_model(teacher, "cpu")


def test_a_training_checkpoint_given_as_best_pt_is_named(tmp_path: Path) -> None:
    from srs_core.model.checkpoint import BestCheckpoint

    latest = tmp_path / "latest.pt"
    save_torch({"model": {"w": torch.zeros(2)}, "optimizer": {}, "step": 5}, str(latest))
    with pytest.raises(ConfigError) as exc:
        BestCheckpoint.load(str(latest))
    assert "training checkpoint" in _one_line(exc, latest)
    odd = tmp_path / "odd.pt"
    save_torch([1, 2, 3], str(odd))
    with pytest.raises(ConfigError) as exc:
        BestCheckpoint.load(str(odd))
    _one_line(exc, odd)


def test_a_best_pt_missing_a_key_is_named(tmp_path: Path) -> None:
    from srs_core.model.checkpoint import BestCheckpoint

    broken = tmp_path / "best.pt"
    save_torch({"model": {}, "model_config": {"image_size": 32, "no_such_field": 1},
                "vocab": "", "num_anchor_logits": 14}, str(broken))
    with pytest.raises(ConfigError) as exc:
        BestCheckpoint.load(str(broken))
    assert "no_such_field" in _one_line(exc, broken)


def test_pretrained_init_of_the_wrong_kind_names_the_file(emotion: tuple[str, str]) -> None:
    from srs_core.config import load_config
    from srs_core.train.build import build_selector

    teacher, _ = emotion
    cfg = load_config([], [f"model.vision_init={teacher}"], preset="tiny")
    with pytest.raises(ConfigError) as exc:
        build_selector(cfg, 14, 100, torch.device("cpu"))
    assert "visual_encoder" in _one_line(exc, teacher)


# --- arrays ----------------------------------------------------------------------------------


def _index(root: Path, stickers: int = 3) -> Path:
    root.mkdir()
    (root / "index.json").write_text(json.dumps({"version": 1, "stickers": stickers}))
    ids = {"set_ids": [1] * stickers, "sticker_ids": list(range(stickers)),
           "rows": list(range(stickers))}
    (root / "ids.json").write_text(json.dumps(ids))
    np.save(root / "embeddings.npy", np.ones((stickers, 8), np.float32))
    np.save(root / "emotions.npy", np.ones((stickers, 7), np.float32))
    return root


def test_a_truncated_index_array_is_named(tmp_path: Path) -> None:
    from srs_core.library.index import StickerIndex

    root = _index(tmp_path / "index")
    assert len(StickerIndex.load(str(root))) == 3
    embeddings = root / "embeddings.npy"
    embeddings.write_bytes(embeddings.read_bytes()[:100])
    with pytest.raises(DataError) as exc:
        StickerIndex.load(str(root))
    assert "rebuild" in _one_line(exc, embeddings)


@pytest.mark.parametrize(("name", "content", "says"), [
    ("index.json", "{not json", "not valid JSON"),
    ("index.json", "[1, 2]", "expected a JSON object"),
    ("ids.json", '{"set_ids": []}', "sticker_ids"),
    ("ids.json", '{"set_ids": ["x"], "sticker_ids": [1], "rows": [0]}', "set_ids"),
])
def test_broken_index_metadata_is_named(tmp_path: Path, name: str, content: str,
                                        says: str) -> None:
    from srs_core.library.index import StickerIndex

    root = _index(tmp_path / "index")
    (root / name).write_text(content)
    with pytest.raises(DataError) as exc:
        StickerIndex.load(str(root))
    assert says in _one_line(exc, root / name)


def test_index_arrays_of_the_wrong_shape_are_named(tmp_path: Path) -> None:
    from srs_core.library.index import StickerIndex

    root = _index(tmp_path / "index")
    np.save(root / "embeddings.npy", np.ones(3, np.float32))
    with pytest.raises(DataError) as exc:
        StickerIndex.load(str(root))
    assert "[3]" in _one_line(exc, root / "embeddings.npy")


def test_broken_anchors_are_named(tmp_path: Path, emotion: tuple[str, str]) -> None:
    from srs_core.emotion.anchors import load_anchors

    teacher, anchors = emotion
    assert load_anchors(anchors).shape == (14, 2048)
    truncated = tmp_path / "anchors.npy"
    truncated.write_bytes(Path(anchors).read_bytes()[:200])
    for wrong in (truncated, teacher):  # cut short; a torch checkpoint given as anchors
        with pytest.raises(SrsError) as exc:
            load_anchors(str(wrong))
        assert "anchors" in _one_line(exc, wrong)
    np.save(tmp_path / "flat.npy", np.ones(15, np.float32))
    with pytest.raises(ConfigError) as exc:
        load_anchors(str(tmp_path / "flat.npy"))
    assert "[7*K, D]" in _one_line(exc, tmp_path / "flat.npy")


def test_training_reads_anchors_through_the_named_loader(
    tmp_path: Path, emotion: tuple[str, str]
) -> None:
    from srs_core.config import load_config
    from srs_core.train.build import anchor_logit_count, load_emotion

    teacher, anchors = emotion
    truncated = tmp_path / "anchors.npy"
    truncated.write_bytes(Path(anchors).read_bytes()[:200])
    cfg = load_config([], [f"emotion.teacher={teacher}", f"emotion.anchors={truncated}"],
                      preset="tiny")
    for call in (lambda: load_emotion(cfg, torch.device("cpu")),
                 lambda: anchor_logit_count(cfg, None)):
        with pytest.raises(SrsError) as exc:
            call()
        _one_line(exc, truncated)


# --- YAML configs ----------------------------------------------------------------------------


@pytest.mark.parametrize(("content", "says"), [
    ("train: " + "[" * 5000 + "]" * 5000 + "\n", "nested"),
    ("a:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 3000)), "nested"),
])
def test_a_deeply_nested_config_is_a_config_error(tmp_path: Path, content: str, says: str,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    from srs_core.config import load_config

    path = tmp_path / "deep.yaml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_config([path])
    assert says in _one_line(exc, path)
    caplog.set_level(logging.ERROR)
    assert main(["config", "show", "--config", str(path)]) == 2


def test_a_config_that_is_not_utf8_is_a_config_error(tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    from srs_core.config import load_config

    path = tmp_path / "utf16.yaml"
    path.write_text("train:\n  epochs: 2\n", encoding="utf-16")
    with pytest.raises(ConfigError) as exc:
        load_config([path])
    assert "UTF-8" in _one_line(exc, path)
    assert main(["config", "show", "--config", str(path)]) == 2
    assert str(path) in caplog.text


def test_a_deeply_nested_override_is_a_config_error() -> None:
    from srs_core.config import parse_override

    with pytest.raises(ConfigError, match="nested"):
        parse_override("train.lr=" + "[" * 5000 + "]" * 5000)
