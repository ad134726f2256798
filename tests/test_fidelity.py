"""Method fidelity: what the selector trains and how it is scored, against the authors' code.

Each test re-states a piece of github wuyou-xia/Perceive-before-Respond by hand (train.py,
models/model_srs.py, configs/SRS.yaml, dataset/srs_dataset.py, metrics.py) and checks that the
default configuration reproduces it.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from srs_core.config import load_config
from srs_core.data.examples import context_texts, load_examples
from srs_core.data.sticker_cache import PAD_ROW, build_sticker_cache
from srs_core.data.stickerchat import Dialog, Utterance, iter_dialogs, utterance_text
from srs_core.data.synth import synthesize
from srs_core.emotion.teacher import emotion_targets
from srs_core.errors import ConfigError, DataError
from srs_core.metrics import rank_metrics
from srs_core.model.losses import (
    image_polarity,
    mining_similarities,
    negative_weights,
    polarity_affinity,
    text_polarity,
)
from srs_core.model.tokenizer import ContextTokenizer
from srs_core.model.vocab import resolve_lowercase
from srs_core.runtime.schedule import PositionSchedule
from srs_core.train.schedule import global_batch

# ----------------------------------------------------------------------------- 1. fp32 targets


def test_emotion_targets_are_fp32_under_bf16_autocast() -> None:
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(
        torch.nn.Conv2d(3, 256, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
    ).eval()
    images = torch.randn(30, 10, 3, 16, 16)  # 300 candidate rows
    with torch.no_grad():
        scale = 500.0 / (teacher(images.flatten(0, 1)) @ torch.randn(256, 28)).abs().mean()
    anchors = torch.randn(28, 256) * scale  # targets of magnitude ~500, as with real anchors
    reference = emotion_targets(teacher, anchors, images)
    assert reference.dtype == torch.float32 and reference.shape == (30, 10, 28)
    assert reference.abs().mean() > 200
    with torch.autocast("cpu", dtype=torch.bfloat16):
        targets = emotion_targets(teacher, anchors, images)
        with torch.no_grad():  # what the loop computed before: bf16 inside autocast
            naive = teacher(images.flatten(0, 1)).float() @ anchors.T
    torch.testing.assert_close(targets, reference)
    assert torch.equal(targets.argmax(-1), reference.argmax(-1))
    # The case the test guards against is real: bf16 moves these targets by whole units.
    assert (naive.view_as(reference) - reference).abs().max() > 0.5


# ----------------------------------------------------------------------------- 2. hard negatives


def _authors_weights(text_feat, image_feat, temp, counts, student, k):
    """models/model_srs.py, ALBEF.forward, "Hard Example Mining", re-stated."""
    bs = len(text_feat)
    text_senti = counts / (counts.sum(dim=1) + 1e-4).unsqueeze(1)
    image_senti = student.view(-1, 7, k).mean(dim=2)
    image_senti = torch.cat([image_senti[:, :2].max(dim=-1).values.unsqueeze(1),
                             image_senti[:, 2:6].max(dim=-1).values.unsqueeze(1)], 1).softmax(1)
    pos_image_senti = image_senti.view(bs, 10, 2)[:, 0]
    senti_t2i = (text_senti.unsqueeze(1) - image_senti.unsqueeze(0)).abs().sum(-1)
    senti_t2i = (2 - senti_t2i + 1e-4).softmax(dim=1)
    senti_i2t = (pos_image_senti.unsqueeze(1) - text_senti.unsqueeze(0)).abs().sum(-1)
    senti_i2t = (2 - senti_i2t + 1e-4).softmax(dim=1)
    pos_image_feat = image_feat.view(bs, 10, -1)[:, 0]
    sim_i2t = pos_image_feat @ text_feat.t() / temp
    sim_t2i_global = text_feat @ image_feat.t()
    weights_i2t = F.softmax(sim_i2t + senti_i2t + 1e-4, dim=1)
    weights_t2i = F.softmax(sim_t2i_global + senti_t2i + 1e-4, dim=1)
    weights_i2t.masked_fill_(torch.eye(bs).bool(), 0)
    targets = torch.zeros(bs, bs * 10)
    for i in range(bs):
        targets[i, i * 10] = 1
    weights_t2i.masked_fill_(targets.bool(), 0)
    # torch.multinomial normalises each row: compare distributions.
    return (weights_t2i / weights_t2i.sum(1, keepdim=True),
            weights_i2t / weights_i2t.sum(1, keepdim=True))


def test_hard_negative_weights_are_the_authors() -> None:
    torch.manual_seed(3)
    b, k, temp = 4, 3, torch.tensor(0.07)
    text_feat = F.normalize(torch.randn(b, 16), dim=-1)
    image_feat = F.normalize(torch.randn(b * 10, 16), dim=-1)
    counts = torch.randint(0, 4, (b, 2)).float()
    student = torch.randn(b * 10, 7 * k) * 3
    positive = torch.arange(b) * 10

    sim_t2i, sim_i2t = mining_similarities(text_feat, image_feat, positive, temp)
    p_text, p_image = text_polarity(counts), image_polarity(student)
    ours_t2i = negative_weights(sim_t2i, positive, polarity_affinity(p_text, p_image))
    ours_i2t = negative_weights(sim_i2t, torch.arange(b),
                                polarity_affinity(p_image[positive], p_text))
    theirs_t2i, theirs_i2t = _authors_weights(text_feat, image_feat, temp, counts, student, k)
    torch.testing.assert_close(ours_t2i, theirs_t2i)
    torch.testing.assert_close(ours_i2t, theirs_i2t)

    # The ablation divides text->image by the temperature too: a far peakier draw.
    peaky, _ = mining_similarities(text_feat, image_feat, positive, temp, "temperature")
    torch.testing.assert_close(peaky, sim_t2i / temp)
    assert negative_weights(peaky, positive).max() > ours_t2i.max()
    assert load_config().loss.hard_negative_scale == "paper"


# ----------------------------------------------------------------------------- 3. LR schedule


def _schedule(kind: str = "paper", steps_per_epoch: int = 250) -> PositionSchedule:
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    return PositionSchedule(
        optimizer, kind, lr=1e-4, min_lr=1e-5, warmup_lr=1e-5, epochs=5, warmup_epochs=1,
        steps_per_epoch=steps_per_epoch, total_steps=5 * steps_per_epoch,
    )


def test_paper_schedule_values() -> None:
    schedule = _schedule()
    assert schedule.apply(0, 0, 0) == pytest.approx(1e-5)
    assert schedule.apply(0, 100, 100) == pytest.approx(1e-5)
    assert schedule.apply(0, 101, 101) == pytest.approx(1e-4)
    assert schedule.apply(0, 249, 249) == pytest.approx(1e-4)
    for epoch, value in ((1, 9.1406e-5), (2, 6.8906e-5), (3, 4.1094e-5), (4, 1.8594e-5)):
        for iteration in (0, 137, 249):
            step = epoch * 250 + iteration
            assert schedule.apply(epoch, iteration, step) == pytest.approx(value, abs=1e-9)
    assert load_config().train.lr_schedule == "paper"


def test_paper_schedule_replays_the_authors_loop() -> None:
    """train.py: the LR each optimizer step used, with their calls to timm's scheduler."""
    from timm.scheduler import CosineLRScheduler

    steps_per_epoch = 230
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1e-4)
    theirs = CosineLRScheduler(optimizer, t_initial=5, lr_min=1e-5, warmup_t=1,
                               warmup_lr_init=1e-5, warmup_prefix=True, cycle_limit=1,
                               t_in_epochs=True)
    used = []
    for epoch in range(5):
        for i in range(steps_per_epoch):
            used.append(optimizer.param_groups[0]["lr"])  # optimizer.step() uses this
            if epoch == 0 and i % 100 == 0 and i <= 100:
                theirs.step(i // 100)
        theirs.step(epoch + 1 + 1)
    ours = _schedule(steps_per_epoch=steps_per_epoch)
    replay = [ours.apply(s // steps_per_epoch, s % steps_per_epoch, s) for s in range(len(used))]
    np.testing.assert_allclose(replay, used, rtol=1e-12)


def test_per_step_cosine_is_kept_as_an_option() -> None:
    schedule = _schedule("cosine_per_step", steps_per_epoch=100)
    rates = [schedule.apply(s // 100, s % 100, s) for s in range(500)]
    assert rates[0] == pytest.approx(1e-6) and rates[99] == pytest.approx(1e-4)
    assert all(a >= b for a, b in zip(rates[100:], rates[101:], strict=False))
    assert rates[-1] == pytest.approx(1e-5, rel=1e-3)


# ----------------------------------------------------------------------------- 4. global batch


def test_global_batch_is_explicit_and_scales_the_lr(caplog: pytest.LogCaptureFixture) -> None:
    paper = load_config()
    with caplog.at_level(logging.WARNING):
        assert global_batch(paper, 2, True) == (8, 1.0)
    assert "differs from the paper" not in caplog.text
    with caplog.at_level(logging.WARNING):
        assert global_batch(paper, 32, True) == (128, 1.0)
    assert "global batch 128 differs from the paper's 8" in caplog.text
    linear = load_config(overrides=["train.lr_scaling=linear"])
    assert global_batch(linear, 32, False) == (128, 16.0)
    root = load_config(overrides=["train.lr_scaling=sqrt"])
    assert global_batch(root, 32, False) == (128, 4.0)
    pinned = load_config(overrides=["train.global_batch_size=8"])
    with pytest.raises(ConfigError, match="4 dialogs x 4 processes = 16"):
        global_batch(pinned, 4, False)
    with pytest.raises(ConfigError, match="not one of"):
        load_config(overrides=["train.lr_scaling=quadratic"])


def test_global_batch_counts_accumulated_micro_batches() -> None:
    """The paper's global batch 8 on one process: 4 dialogs x 2 accumulated micro-batches."""
    one_gpu = load_config(overrides=["train.global_batch_size=8", "train.grad_accumulation=2"])
    assert one_gpu.train.batch_size == 4
    assert global_batch(one_gpu, 1, False) == (8, 1.0)
    with pytest.raises(ConfigError, match="4 dialogs x 2 processes x 2 micro-batches = 16; "
                                          "set train.grad_accumulation=1"):
        global_batch(one_gpu, 2, False)
    unaccumulated = load_config(overrides=["train.global_batch_size=8"])
    with pytest.raises(ConfigError, match="set train.grad_accumulation=2 to keep"):
        global_batch(unaccumulated, 1, False)
    ragged = load_config(overrides=["train.global_batch_size=6"])
    with pytest.raises(ConfigError, match="change train.batch_size, train.grad_accumulation"):
        global_batch(ragged, 1, False)
    linear = load_config(overrides=["train.lr_scaling=linear", "train.grad_accumulation=4"])
    assert global_batch(linear, 2, False) == (32, 4.0)
    with pytest.raises(ConfigError, match="must be > 0"):
        load_config(overrides=["train.grad_accumulation=0"])


def test_multi_node_overlay_says_what_its_global_batch_does() -> None:
    text = (Path(__file__).parents[1] / "manifests/overlays/multi-node-gpu/kustomization.yaml")
    text = text.read_text()
    assert "global batch" in text.lower() and "train.lr_scaling" in text


# ----------------------------------------------------------------------------- 5. tokenizer


def test_tokenizer_is_cased_like_bert_base_chinese(tmp_path: Path) -> None:
    vocab = "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "OK", "ok", "好"]) + "\n"
    ids, _ = ContextTokenizer(vocab, 16)([["OK好"]])
    assert ids[0].tolist() == [2, 5, 7, 3]  # "OK" keeps its id, not "ok"'s
    ids, _ = ContextTokenizer(vocab, 16, lowercase=True)([["OK好"]])
    assert ids[0].tolist() == [2, 6, 7, 3]
    bert = tmp_path / "bert"
    bert.mkdir()
    cfg = load_config(overrides=[f"model.text_init={bert}"])
    assert resolve_lowercase(cfg) is False  # no tokenizer config: cased
    (bert / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    assert resolve_lowercase(cfg) is True
    (bert / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    assert resolve_lowercase(load_config(overrides=[f"model.text_init={bert}",
                                                    "model.lowercase=true"])) is False


# ----------------------------------------------------------------------------- 6. whitespace


def test_one_whitespace_rule_for_tokenizer_and_sentiment(tmp_path: Path) -> None:
    from srs_core.sentiment.run import run_sentiment
    from srs_core.sentiment.scoring import sentiment_model

    raw = [" 开心\n难过 ", "   ", "我 很 好"]
    assert [utterance_text(t) for t in raw] == ["开心\n难过", "", "我很好"]
    dialog = Dialog(1, tuple(Utterance(t, i, 5, None) for i, t in enumerate(raw)), 7, 70, "😀")
    assert context_texts(dialog) == ("开心\n难过", "我很好")  # empty ones get no [SEP]

    record = {"context": [{"text": t, "reply_to_msg_id": None, "id": i, "from_id": 5}
                          for i, t in enumerate(raw)],
              "current": {"from_id": 6, "reply_to_msg_id": None, "sticker_set_id": 7,
                          "sticker_id": 70, "sticker_alt": "😀"}}
    source = tmp_path / "release_train.json"
    source.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    run_sentiment(str(source), str(tmp_path / "train.jsonl"), workers=1)
    scored = json.loads((tmp_path / "train.jsonl").read_text("utf-8"))["utterances"]
    # The authors scored text.replace(" ", ""): the newline stays and splits the sentences.
    first = sentiment_model().sentiment_calculate("开心\n难过")
    assert (scored[0]["pos"], scored[0]["neg"]) == (first["pos"], first["neg"]) == (1, 1)


# ----------------------------------------------------------------------------- 7. protocols


@pytest.fixture(scope="module")
def odd_sets(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """Demo data where one answer is missing from its set's mapping (its .npy exists)."""
    out = tmp_path_factory.mktemp("odd")
    synthesize(out, seed=4, dialogs=40, sets=6, images=70)
    root = out / "stickerchat"
    dialog = next(iter_dialogs(str(root), "test"))
    mapping = root / "npy_stickers" / str(dialog.sticker_set_id) / "emoji_mapping.txt"
    lines = mapping.read_text("utf-8").splitlines()
    kept = [line for line in lines if not line.startswith(f"{dialog.sticker_id}\t")]
    assert len(kept) == len(lines) - 1
    mapping.write_text("\n".join(kept) + "\n", encoding="utf-8")
    return str(root), out


def test_paper_candidates_keep_the_authors_quirks(odd_sets) -> None:
    root, out = odd_sets
    dialogs = list(iter_dialogs(root, "test"))
    answers = {(d.sticker_set_id, d.sticker_id) for d in dialogs}
    cache = build_sticker_cache(root, {s for s, _ in answers}, str(out / "cache"), 16,
                                answers=answers)
    orphan = dialogs[0]
    with pytest.raises(DataError):
        cache.candidate_rows(orphan.sticker_set_id, orphan.sticker_id)
    rows = cache.candidate_rows(orphan.sticker_set_id, orphan.sticker_id, protocol="paper")
    assert rows[0] == cache.extras[(orphan.sticker_set_id, orphan.sticker_id)]
    start = cache.offsets[orphan.sticker_set_id]
    first = cache.sets[orphan.sticker_set_id][:9]
    assert rows[1:] == [start + i for i in range(len(first))] + [PAD_ROW] * (9 - len(first))
    duplicated = 0
    for d in dialogs[1:]:
        strict = cache.candidate_rows(d.sticker_set_id, d.sticker_id)
        paper = cache.candidate_rows(d.sticker_set_id, d.sticker_id, protocol="paper")
        assert len(set(r for r in strict if r != PAD_ROW)) == sum(r != PAD_ROW for r in strict)
        assert paper[0] == strict[0]
        duplicated += paper[0] in paper[1:]
    assert duplicated > 0  # answers among the first 9 of their set appear twice

    strict_examples = load_examples(root, "test", cache)
    paper_examples = load_examples(root, "test", cache, protocol="paper")
    assert len(paper_examples) == len(strict_examples) + 1


def test_paper_ties_favour_the_positive() -> None:
    tied = np.array([[1.0, 1.0, 0.0], [2.0, 3.0, 2.0]])
    assert rank_metrics(tied)["MAP"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    paper = rank_metrics(tied, ties="favour")
    assert paper["MAP"] == pytest.approx((1 + 1 / 2) / 2)
    assert paper["R2@1"] == 0.0  # strictly above the first negative, as theirs


def test_eval_split_key_is_gone_and_protocol_is_checked() -> None:
    with pytest.raises(ConfigError, match="unknown key eval.split"):
        load_config(overrides=["eval.split=test"])
    with pytest.raises(ConfigError, match="not one of"):
        load_config(overrides=["eval.protocol=lenient"])
    assert load_config().eval.protocol == "strict"


def test_chance_is_the_same_under_both_tie_rules_without_ties() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(2000, 10))
    strict, paper = rank_metrics(scores), rank_metrics(scores, ties="favour")
    assert strict == paper
    assert math.isclose(strict["R10@1"], 0.1, abs_tol=0.02)
