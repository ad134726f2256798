"""Suggesting stickers from the whole library: a sticker index, two-stage search, its metrics.

The protocol's evaluation ranks 10 candidates of the answer's own set; a deployed selector has
to find the sticker among *every* sticker of every set. That is done in two stages:

1. **retrieve** the top ``N`` stickers by ITA similarity (one text encoding, then an inner
   product search over the precomputed, L2-normalised image embeddings of the library);
2. **rerank** those ``N`` with the ITM head (the fusion of the context's tokens with each
   sticker's image tokens), which is what the protocol's scores are.

Index layout under its URI (``index.json`` is written last: an index with it is complete)::

    embeddings.npy  float32 [M, E]   normalised ITA image embedding of each sticker
    emotions.npy    float32 [M, 7]   emotion distribution (EMOTIONS order)
    ids.json        {"set_ids": [M], "sticker_ids": [M], "rows": [M]}  (rows: sticker cache)
    index.json      {"version", "checkpoint", "checkpoint_sha256", "sticker_cache", ...}

Image tokens are not stored: at the paper's size they are 65 x 768 values per sticker (about
17 GB for StickerChat's library in bf16), while re-encoding the ``N`` reranked stickers from
the compact sticker cache costs one ViT batch; :class:`ImageTokens` keeps recent ones.

- :mod:`.index`: :func:`build_index`, :class:`StickerIndex`, :class:`Searcher`;
- :mod:`.suggest`: :class:`Suggester` (retrieve, rerank, explain), :func:`itm_scores`;
- :mod:`.metrics`: :func:`library_metrics`, the library-level Recall@k and MRR.
"""

from srs_core.library.index import (
    INDEX_VERSION,
    SEARCH_KINDS,
    Searcher,
    StickerIndex,
    ann_recall,
    build_index,
    library_sets,
)
from srs_core.library.metrics import (
    LIBRARY_KS,
    RERANK_NS,
    flatten_library_metrics,
    library_metrics,
)
from srs_core.library.suggest import ImageTokens, Query, Suggester, itm_scores, polarity

__all__ = [
    "INDEX_VERSION", "LIBRARY_KS", "RERANK_NS", "SEARCH_KINDS", "ImageTokens", "Query",
    "Searcher", "StickerIndex", "Suggester", "ann_recall", "build_index",
    "flatten_library_metrics", "itm_scores", "library_metrics", "library_sets", "polarity",
]
