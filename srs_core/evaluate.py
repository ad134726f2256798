"""Scoring dialogs' candidates and computing the protocol's metrics (DESIGN.md section 4).

Candidates of a dialog all come from the answer's sticker set, and sets are shared by many
dialogs. :func:`score_examples` therefore takes dialogs a few whole sets at a time and encodes
every sticker of them once, with its cross-attention keys and values
(:mod:`srs_core.model.scoring`; the reference code re-encodes the same stickers for every
dialog); :func:`score_examples_naive` is the per-dialog computation it must equal.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from srs_core import store
from srs_core.data.examples import Example
from srs_core.data.sticker_cache import PAD_ROW, StickerCache, gather
from srs_core.data.transforms import eval_transform
from srs_core.metrics import rank_metrics
from srs_core.model.scoring import ImageMemory, image_memory, match_scores

log = logging.getLogger(__name__)

IMAGE_BATCH = 32  # stickers per ViT batch when scoring

Tokenize = Callable[[Sequence[Sequence[str]]], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Scores:
    """Per-dialog candidate scores, positive at index 0: ``itm`` and ``ita`` are ``[N, 10]``."""

    itm: np.ndarray
    ita: np.ndarray


def sticker_pixels(cache: StickerCache, rows: Sequence[int], device: torch.device) -> torch.Tensor:
    """The model's input ``[N, 3, S, S]`` for the stickers at ``rows`` of the cache."""
    raw = torch.from_numpy(gather(cache, rows)).permute(0, 3, 1, 2)
    transform = eval_transform()
    return torch.stack([transform(img) for img in raw]).to(device)  # [N, 3, S, S]


def _score_group(
    model, text_tokens, text_mask, text_feat, image_tokens, image_feat, index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Score ``B`` texts against their candidates; ``index [B, C]`` selects encoded images."""
    b, c = index.shape
    tokens = image_tokens[index.flatten()]  # [B*C, 1+P, D]
    itm = model.itm_logits(
        text_tokens.repeat_interleave(c, dim=0), text_mask.repeat_interleave(c, dim=0), tokens
    )[:, 1].view(b, c)
    ita = torch.einsum("be,bce->bc", text_feat, image_feat[index])
    return itm.float(), ita.float()


def sticker_chunks(examples: Sequence[Example], max_images: int) -> list[list[int]]:
    """Dialog indices in chunks of whole sticker sets, each needing at most ``max_images``
    distinct stickers (a set that alone needs more is a chunk of its own)."""
    by_set: dict[int, list[int]] = defaultdict(list)
    for i, example in enumerate(examples):
        by_set[example.set_id].append(i)
    chunks: list[list[int]] = []
    rows: set[int] = set()
    for members in by_set.values():
        needed = {r for i in members for r in examples[i].rows}
        if chunks and len(rows | needed) <= max_images:
            chunks[-1].extend(members)
            rows |= needed
        else:
            chunks.append(list(members))
            rows = needed
    return chunks


def _encode_stickers(
    model, cache: StickerCache, rows: Sequence[int], device: torch.device, batch_size: int
) -> tuple[torch.Tensor, ImageMemory]:
    """ITA features ``[R, E]`` and the fusion encoder's memory of the stickers at ``rows``."""
    features, memories = [], []
    for start in range(0, len(rows), batch_size):
        pixels = sticker_pixels(cache, rows[start:start + batch_size], device)
        tokens, feature = model.encode_image(pixels)
        features.append(feature)
        memories.append(image_memory(model, tokens))
    return torch.cat(features), ImageMemory.concat(memories)


@torch.no_grad()
def score_examples(
    model,
    examples: Sequence[Example],
    cache: StickerCache,
    tokenize: Tokenize,
    device: torch.device,
    batch_size: int = 32,
    progress: bool = True,
    max_images: int = 256,
) -> Scores:
    """Scores of every dialog's candidates, encoding each distinct sticker once.

    Dialogs are taken in chunks of whole sticker sets (:func:`sticker_chunks`); a chunk's
    stickers are encoded in batches of :data:`IMAGE_BATCH` together with their cross-attention
    keys and values (:mod:`srs_core.model.scoring`), then its dialogs, sorted by context
    length to cut padding, are scored ``batch_size`` at a time against their candidates.
    """
    from tqdm import tqdm

    model.eval()
    n, c = len(examples), len(examples[0].rows)
    itm, ita = np.zeros((n, c), np.float32), np.zeros((n, c), np.float32)
    bar = tqdm(total=n, unit="dialog", desc="score", disable=not progress)
    for chunk in sticker_chunks(examples, max_images):
        rows = sorted({r for i in chunk for r in examples[i].rows})
        position = {row: j for j, row in enumerate(rows)}
        image_feat, memory = _encode_stickers(model, cache, rows, device, IMAGE_BATCH)
        ids, mask = tokenize([examples[i].utterances for i in chunk])
        lengths = mask.sum(1)
        order = torch.argsort(lengths, stable=True)
        for start in range(0, len(chunk), batch_size):
            picked = order[start:start + batch_size]
            length = int(lengths[picked].max())
            batch_mask = mask[picked, :length].to(device)
            text_tokens, text_feat = model.encode_text(ids[picked, :length].to(device), batch_mask)
            dialogs = [chunk[j] for j in picked.tolist()]
            index = torch.tensor([[position[r] for r in examples[i].rows] for i in dialogs],
                                 device=device)
            itm[dialogs] = match_scores(model, text_tokens, batch_mask, memory, index).float().cpu()
            ita[dialogs] = torch.einsum("be,bce->bc", text_feat, image_feat[index]).float().cpu()
            bar.update(len(dialogs))
    bar.close()
    return Scores(itm, ita)


@torch.no_grad()
def score_examples_naive(
    model,
    examples: Sequence[Example],
    cache: StickerCache,
    tokenize: Tokenize,
    device: torch.device,
) -> Scores:
    """Reference computation: encode each dialog's 10 candidates from scratch."""
    model.eval()
    itm, ita = [], []
    for example in examples:
        image_tokens, image_feat = model.encode_image(sticker_pixels(cache, example.rows, device))
        ids, mask = tokenize([example.utterances])
        text_tokens, text_feat = model.encode_text(ids.to(device), mask.to(device))
        index = torch.arange(len(example.rows), device=device)[None]
        s_itm, s_ita = _score_group(
            model, text_tokens, mask.to(device), text_feat, image_tokens, image_feat, index
        )
        itm.append(s_itm.cpu().numpy()[0])
        ita.append(s_ita.cpu().numpy()[0])
    return Scores(np.stack(itm), np.stack(ita))


def summarize(scores: Scores, ties: str = "against") -> dict[str, float]:
    """Protocol metrics from the ITM scores, plus the ITA-only ranking's metrics."""
    metrics = rank_metrics(scores.itm, ties=ties)
    metrics.update({f"ITA_{k}": v for k, v in rank_metrics(scores.ita, ties=ties).items()})
    metrics["dialogs"] = float(len(scores.itm))
    return metrics


# What each protocol is, as metrics.json states it next to the numbers.
PROTOCOLS = {
    "strict": "ours: the positive never twice among the 10 candidates, ties ranked against "
              "it, answers missing from their set's mapping skipped; select on val",
    "paper": "the authors' code: the positive plus the first 9 stickers of its set's mapping "
             "(the positive can appear twice), ties ranked in its favour, answers missing from "
             "the mapping kept; they selected on test",
}
TIES = {"strict": "against", "paper": "favour"}


def score_protocols(
    model, examples: dict[str, Sequence[Example]], cache: StickerCache, tokenize: Tokenize,
    device: torch.device, batch_size: int = 32, progress: bool = True,
) -> dict[str, Scores]:
    """Scores of each protocol's examples in one pass (a set's stickers are encoded once)."""
    names = list(examples)
    everything = [ex for name in names for ex in examples[name]]
    scores = score_examples(model, everything, cache, tokenize, device, batch_size, progress)
    out, start = {}, 0
    for name in names:
        end = start + len(examples[name])
        out[name] = Scores(scores.itm[start:end], scores.ita[start:end])
        start = end
    return out


def write_scores(
    out_uri: str, examples: Sequence[Example], scores: Scores, cache: StickerCache,
    name: str = "scores.jsonl",
) -> None:
    """``scores.jsonl``: one line per dialog with its candidates and both scores."""
    extra_ids = {row: sticker for (_, sticker), row in cache.extras.items()}

    def candidate(row: int, set_id: int) -> list:
        if row == PAD_ROW:
            return [set_id, None]
        if row in extra_ids:
            return [set_id, extra_ids[row]]
        return [set_id, cache.sets[set_id][row - cache.offsets[set_id]]]

    with store.open_write(store.join(out_uri, name)) as handle:
        for example, itm, ita in zip(examples, scores.itm, scores.ita, strict=True):
            record = {
                "line": example.line,
                "utterances": list(example.utterances),
                "candidates": [candidate(r, example.set_id) for r in example.rows],
                "scores": [round(float(x), 6) for x in itm],
                "ita": [round(float(x), 6) for x in ita],
            }
            handle.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))


def evaluate(
    cfg, checkpoint_uri: str, split: str, out_uri: str, library: str = ""
) -> dict[str, float]:
    """Score a split with a trained checkpoint under both protocols.

    Writes ``metrics.json`` (``metrics``: strict, ``paper``: the authors' protocol, each
    labelled), ``scores.jsonl`` (strict) and ``scores_paper.jsonl``. Returns the strict
    metrics with the paper protocol's as ``paper_<name>``. With ``library`` (a sticker index
    URI from ``srs index build``), the answer is also ranked among every sticker of the
    index (:func:`srs_core.library.library_metrics`): ``metrics.json`` -> ``library``, and
    ``library_<method>_<metric>`` in the returned dict.
    """
    from srs_core.data.examples import load_examples
    from srs_core.data.report import Report
    from srs_core.inference import open_for_inference

    started = time.time()
    session = open_for_inference(cfg, checkpoint_uri, split)
    paper_report = Report()
    paper_examples = load_examples(cfg.data.stickerchat, split, session.cache, None,
                                   cfg.data.max_dialogs, paper_report, protocol="paper")
    scores = score_protocols(
        session.model, {"strict": session.examples, "paper": paper_examples}, session.cache,
        session.tokenize, session.device, batch_size=cfg.eval.batch_size,
    )
    metrics = summarize(scores["strict"], TIES["strict"])
    paper = summarize(scores["paper"], TIES["paper"])
    metrics["seconds"] = round(time.time() - started, 3)
    scored = len(session.examples) + len(paper_examples)
    metrics["dialogs_per_s"] = round(scored / max(metrics["seconds"], 1e-9), 2)
    write_scores(out_uri, session.examples, scores["strict"], session.cache)
    write_scores(out_uri, paper_examples, scores["paper"], session.cache, "scores_paper.jsonl")
    payload = {
        "split": split, "checkpoint": checkpoint_uri, "protocol": PROTOCOLS["strict"],
        "metrics": metrics, "skipped": session.report.as_dict(),
        "paper": {"protocol": PROTOCOLS["paper"], "metrics": paper,
                  "skipped": paper_report.as_dict()},
    }
    extra: dict[str, float] = {}
    if library:
        payload["library"] = _library(session, checkpoint_uri, library, cfg.eval.batch_size)
        from srs_core.library import flatten_library_metrics

        extra = flatten_library_metrics(payload["library"])
    store.write_text(store.join(out_uri, "metrics.json"), json.dumps(payload, indent=2))
    log.info("%s metrics (strict): %s", split, {k: round(v, 4) for k, v in metrics.items()})
    log.info("%s metrics (paper protocol): %s", split,
             {k: round(v, 4) for k, v in paper.items()})
    return {**metrics, **{f"paper_{k}": v for k, v in paper.items() if not k.startswith("ITA_")},
            **extra}


def _library(session, checkpoint: str, index_uri: str, batch_size: int) -> dict:
    """Library-level metrics of the split's (strict) dialogs, with the session's model."""
    from srs_core.inference import LoadedModel, file_sha256
    from srs_core.library import StickerIndex, Suggester, library_metrics

    loaded = LoadedModel(session.model, session.tokenize, session.device, session.model.cfg,
                         checkpoint, file_sha256(checkpoint))
    suggester = Suggester(loaded, StickerIndex.load(index_uri))
    dialogs = [(ex.utterances, ex.set_id, ex.sticker_id) for ex in session.examples]
    result = library_metrics(suggester, dialogs, batch_size=batch_size)
    result["index"] = index_uri
    log.info("library metrics (%d stickers): ITA R@10 %.4f, rerank@50 R@10 %.4f",
             result["stickers"], result["ita"]["R@10"], result["rerank@50"]["R@10"])
    return result
