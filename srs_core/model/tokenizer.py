"""Context tokenisation (DESIGN.md section 3, "Text input") and vocabularies.

A dialog's text is ``[CLS] u1 [SEP] u2 [SEP] ... un [SEP]`` with the segmentation spaces of each
utterance removed. When it is longer than ``max_tokens`` the *oldest* tokens are dropped, so
the latest utterances (the ones a reply answers) always survive.

The tokenizer is BERT's WordPiece (Hugging Face ``tokenizers`` with BERT's normaliser and
pre-tokeniser, which splits every CJK character), read from a ``vocab.txt`` such as
``bert-base-chinese``'s, or one written by :func:`build_vocab` for runs without it.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordPiece
from transformers import PreTrainedTokenizerFast

from srs_core.errors import ConfigError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def _normalizer(lowercase: bool) -> normalizers.BertNormalizer:
    return normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )


def load_tokenizer(vocab_path: str | Path, lowercase: bool = False) -> PreTrainedTokenizerFast:
    """BERT WordPiece tokenizer from a local ``vocab.txt`` (one token a line, id = line).

    Cased by default, as bert-base-chinese (``do_lower_case=False``): "OK" stays "OK" and
    accents stay. ``lowercase`` also strips accents, as BERT's uncased models do.
    """
    path = Path(vocab_path)
    if not path.is_file():
        raise ConfigError(f"vocabulary {path} does not exist; give model.vocab or model.text_init")
    vocab = path.read_text(encoding="utf-8").splitlines()
    absent = [token for token in SPECIAL_TOKENS if token not in vocab]
    if absent:
        raise ConfigError(f"vocabulary {path} lacks the special tokens {', '.join(absent)}")
    backend = Tokenizer(WordPiece.from_file(str(path), unk_token="[UNK]"))
    backend.normalizer = _normalizer(lowercase)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]",
    )


def build_vocab(
    texts: Iterable[str], path: str | Path, max_size: int = 0, lowercase: bool = False
) -> int:
    """Write a character-level ``vocab.txt`` covering ``texts``; returns its size.

    Special tokens first, then every character seen, most frequent first. A character that
    continues a non-CJK word (latin letters, digits) is also added as ``##c`` so WordPiece can
    spell any such word. ``max_size`` > 0 keeps only that many tokens in all.
    """
    normalizer, pre_tokenizer = _normalizer(lowercase), pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)):
            counts[word[0]] += 1
            counts.update("##" + char for char in word[1:])
    tokens = sorted((t for t in counts if t not in SPECIAL_TOKENS), key=lambda t: (-counts[t], t))
    vocab = list(SPECIAL_TOKENS) + tokens
    if max_size > 0:
        vocab = vocab[:max_size]
    Path(path).write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return len(vocab)


def encode_contexts(
    tokenizer: PreTrainedTokenizerFast, contexts: Sequence[Sequence[str]], max_tokens: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Contexts (lists of utterances) -> ``input_ids, attention_mask`` int64 ``[B, T]``.

    ``T`` is the longest sequence in the batch (at most ``max_tokens``); shorter ones are
    padded with ``[PAD]`` and mask 0.
    """
    if max_tokens < 2:
        raise ConfigError(f"data.max_text_tokens must be at least 2, got {max_tokens}")
    # Utterances arrive normalised by data.stickerchat.utterance_text (the one whitespace rule).
    utterances = [text for context in contexts for text in context]
    pieces = tokenizer(utterances, add_special_tokens=False)["input_ids"] if utterances else []
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    sequences, start = [], 0
    for context in contexts:
        tokens = [t for ids in pieces[start:start + len(context)] for t in (*ids, sep)]
        start += len(context)
        # Drop the oldest tokens: the latest utterances matter most for the reply.
        sequences.append([cls, *tokens[-(max_tokens - 1):]])
    length = max((len(s) for s in sequences), default=1)
    input_ids = torch.full((len(sequences), length), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        input_ids[row, : len(sequence)] = torch.tensor(sequence)
        attention_mask[row, : len(sequence)] = 1
    return input_ids, attention_mask


class ContextTokenizer:
    """Turns a batch of contexts into ``input_ids``/``attention_mask`` ``[B, T]``.

    Built from the vocabulary *text* (as a ``best.pt`` carries it), so that a checkpoint needs
    no ``vocab.txt`` beside it.
    """

    def __init__(self, vocab_text: str, max_tokens: int, lowercase: bool = False) -> None:
        self.vocab_text = vocab_text
        self.max_tokens = max_tokens
        self.lowercase = lowercase
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "vocab.txt"
            path.write_text(vocab_text, encoding="utf-8")
            self._tokenizer = load_tokenizer(path, lowercase=lowercase)

    @property
    def vocab_size(self) -> int:
        return len(self._tokenizer)

    def __call__(self, contexts: Sequence[Sequence[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        return encode_contexts(self._tokenizer, contexts, self.max_tokens)
