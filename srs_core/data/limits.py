"""Input limits: how large one dialog line, one image and one context may be.

Without them a single hostile or broken record costs whatever it claims: a 200 MB JSON line
was parsed (50 s, 1.2 GB), an 8000x8000 sticker cost 1.5 GB in ``srs index build``, a 1 MB
utterance took 44 s in ``srs suggest``. Each limit is chosen from the real data's maxima with
a wide margin, so no real record comes near it:

=========================  =========  ==========================================================
limit                      value      real data, and what happens over the limit
=========================  =========  ==========================================================
``MAX_LINE_BYTES``         1 MiB      A StickerChat dialog line is ~1-5 KB (20-30 short
                                      utterances and ids): 200x margin. A longer line is not
                                      parsed: a ``line_too_long`` problem naming ``file:line``,
                                      skipped (an error under ``--strict``), read in bounded
                                      memory (the reader never holds more than the limit of it).
                                      ``srs suggest --dialog`` refuses such a line (exit 2).
``MAX_IMAGE_SIDE``         4096 px    Stickers are <= 512 px, some GIF frames ~1000 px; SER30K
                                      images are of the same kind: 4-8x margin. A larger
                                      sticker/image is an ``image_too_large`` problem, refused
                                      from its header before it is converted or resized (its
                                      set is skipped, as for any broken sticker).
``MAX_UTTERANCE_CHARS``    512        Chat utterances are tens of characters. A longer one is
                                      cut to its *last* 512 characters before tokenisation
                                      (the tokenizer keeps the latest tokens too, and the paper
                                      model reads at most 512 tokens of the whole context, so
                                      the model input is unchanged for CJK text), with an
                                      ``utterance_truncated`` warning that counts them.
``MAX_CONTEXT_UTTERANCES``  50        A dialog has up to ~20-30 utterances. Older ones beyond
                                      the latest 50 are dropped before tokenisation (the
                                      tokenizer would drop the oldest tokens anyway), with a
                                      ``context_truncated`` warning. The server refuses more
                                      than this many per instance (413) instead.
=========================  =========  ==========================================================

The readers and the suggester read these module attributes at call time, so a test can lower
one with ``monkeypatch.setattr(limits, "MAX_LINE_BYTES", 100)``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

MAX_LINE_BYTES = 1 << 20
MAX_IMAGE_SIDE = 4096
MAX_UTTERANCE_CHARS = 512
MAX_CONTEXT_UTTERANCES = 50


@dataclass(frozen=True)
class BoundedContext:
    """A context cut to the limits, and how much was cut."""

    utterances: tuple[str, ...]
    truncated: int = 0  # utterances cut to their last MAX_UTTERANCE_CHARS characters
    dropped: int = 0  # oldest utterances left out beyond MAX_CONTEXT_UTTERANCES

    def warning(self) -> str:
        """One line naming what was cut (``""`` when nothing was)."""
        parts = []
        if self.truncated:
            parts.append(f"utterance_truncated: {self.truncated} utterance(s) longer than "
                         f"{MAX_UTTERANCE_CHARS} characters cut to their last "
                         f"{MAX_UTTERANCE_CHARS} (limits.MAX_UTTERANCE_CHARS)")
        if self.dropped:
            parts.append(f"context_truncated: the {self.dropped} oldest utterance(s) beyond "
                         f"the latest {MAX_CONTEXT_UTTERANCES} left out "
                         "(limits.MAX_CONTEXT_UTTERANCES)")
        return "; ".join(parts)


def bound_context(utterances: Iterable[str]) -> BoundedContext:
    """``utterances`` within :data:`MAX_CONTEXT_UTTERANCES` (the latest kept) and each within
    :data:`MAX_UTTERANCE_CHARS` (its end kept): what the tokenizer may be given."""
    texts = list(utterances)
    dropped = max(0, len(texts) - MAX_CONTEXT_UTTERANCES)
    kept, truncated = [], 0
    for text in texts[dropped:]:
        if len(text) > MAX_UTTERANCE_CHARS:
            text, truncated = text[-MAX_UTTERANCE_CHARS:], truncated + 1
        kept.append(text)
    return BoundedContext(tuple(kept), truncated, dropped)
