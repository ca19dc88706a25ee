"""Tokenizer loading, the video tokens, and text encoding that gives the original's token ids.

The original trained with the *slow* SentencePiece ``LlamaTokenizer`` of transformers 4.29. Two of its habits
decide the ids, and current transformers (5.x, a ``tokenizers`` backend) has neither:

1. text between added/special tokens is encoded chunk by chunk with ``sp_model.encode(chunk)``, which prepends
   SentencePiece's dummy ``▁`` to every chunk;
2. whitespace next to an added special token is stripped on both sides (so the ``\\n`` before ``<vid_start>`` and
   the space after ``<vid_end>`` give no token).

So we never tokenize a string containing special tokens. Samples are rendered as *segments* (see
``conversation.py``): each text chunk is stripped where it touches a special token and encoded with the folder's
own ``tokenizer.model`` through ``sentencepiece`` (exactly what the slow tokenizer did); special ids are inserted
directly. The Hugging Face tokenizer is still used for the vocabulary, added tokens, padding, decoding and saving.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from video_chatgpt.constants import VIDEO_END_TOKEN, VIDEO_PATCH_TOKEN, VIDEO_START_TOKEN

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoTokenIds:
    """Ids of the video tokens in the tokenizer (``start``/``end`` are None without ``mm_use_vid_start_end``)."""

    patch: int
    start: int | None
    end: int | None

    @property
    def use_start_end(self) -> bool:
        return self.start is not None


def load_hf_tokenizer(folder: str | Path, model_max_length: int | None = None):
    """Load the folder's tokenizer (slow SentencePiece layout or ``tokenizer.json``), padding on the right.

    A tokenizer saved without a pad token gets ``pad = unk`` (what LLaVA v1 did; id 0 in LLaMA), or ``pad = eos``
    when it has no unk token either (Llama-3), with a warning.
    """
    from transformers import AutoTokenizer

    kwargs = {"padding_side": "right"}
    if model_max_length is not None:
        kwargs["model_max_length"] = model_max_length
    tok = AutoTokenizer.from_pretrained(str(folder), **kwargs)
    if tok.pad_token is None:
        # Padding positions are masked (attention from true lengths, labels IGNORE_INDEX): any id serves.
        fallback = tok.unk_token if tok.unk_token is not None else tok.eos_token
        if fallback is None:
            raise ValueError(f"{folder}: the tokenizer has no pad, unk or eos token to pad with")
        logger.warning("%s: tokenizer has no pad token; using %r as pad", folder, fallback)
        tok.pad_token = fallback
    return tok


def add_video_tokens(tokenizer, use_start_end: bool) -> tuple[VideoTokenIds, int]:
    """Add ``<vid_patch>`` (and ``<vid_start>``, ``<vid_end>``) as special tokens, in the original's order.

    Returns the ids and the number of tokens that were new (0 when the tokenizer already had them, e.g. when it
    was saved by a Video-ChatGPT run).
    """
    before = len(tokenizer)
    tokenizer.add_tokens([VIDEO_PATCH_TOKEN], special_tokens=True)
    if use_start_end:
        tokenizer.add_tokens([VIDEO_START_TOKEN, VIDEO_END_TOKEN], special_tokens=True)
    ids = VideoTokenIds(
        patch=tokenizer.convert_tokens_to_ids(VIDEO_PATCH_TOKEN),
        start=tokenizer.convert_tokens_to_ids(VIDEO_START_TOKEN) if use_start_end else None,
        end=tokenizer.convert_tokens_to_ids(VIDEO_END_TOKEN) if use_start_end else None,
    )
    return ids, len(tokenizer) - before


def load_video_tokenizer(
    folder: str | Path, use_start_end: bool, model_max_length: int | None = None
) -> tuple[object, VideoTokenIds, int]:
    """The folder's tokenizer with the video tokens, as training and inference use it.

    Returns ``(tokenizer, video token ids, number of tokens that were new)``; the model needs the last to fit its
    embedding rows (``model.loading.load_model``), so call this once, before building the model.
    """
    tokenizer = load_hf_tokenizer(folder, model_max_length=model_max_length)
    video_ids, num_new = add_video_tokens(tokenizer, use_start_end)
    return tokenizer, video_ids, num_new


class SegmentEncoder:
    """Encodes text chunks to ids as the original's slow LLaMA tokenizer did (one chunk = one ``sp.encode``).

    Uses the ``tokenizer.model`` SentencePiece file of the model folder when there is one; a folder with only a
    ``tokenizer.json`` falls back to the Hugging Face tokenizer (``add_special_tokens=False``), with a warning that
    ids can then differ from the original's around whitespace.
    """

    def __init__(self, hf_tokenizer, sentencepiece_file: str | Path | None = None):
        self.hf = hf_tokenizer
        self._sp = None
        if sentencepiece_file is None:
            vocab_file = getattr(hf_tokenizer, "vocab_file", None)
            name_or_path = Path(getattr(hf_tokenizer, "name_or_path", "") or ".")
            for candidate in (vocab_file, name_or_path / "tokenizer.model"):
                if candidate and Path(candidate).is_file():
                    sentencepiece_file = candidate
                    break
        if sentencepiece_file is not None:
            import sentencepiece

            self._sp = sentencepiece.SentencePieceProcessor(model_file=str(sentencepiece_file))
        elif not getattr(hf_tokenizer, "chat_template", None):  # chat models render with their own template
            logger.warning(
                "no tokenizer.model next to the tokenizer: encoding text with the fast tokenizer; token ids around "
                "whitespace can differ from the original's slow SentencePiece tokenizer"
            )

    @property
    def exact(self) -> bool:
        """True when text is encoded with SentencePiece itself (the original's ids)."""
        return self._sp is not None

    def encode(self, text: str) -> list[int]:
        """Ids of one text chunk, without BOS/EOS. The empty string gives no ids."""
        if not text:
            return []
        if self._sp is not None:
            return self._sp.encode(text)
        return self.hf.encode(text, add_special_tokens=False)

    def sp_piece_id(self, piece: str) -> int:
        """Id of a SentencePiece piece (e.g. ``"▁"``); needs ``tokenizer.model``."""
        if self._sp is None:
            raise ValueError("no SentencePiece model: piece ids need the folder's tokenizer.model")
        return self._sp.piece_to_id(piece)

    @property
    def bos_id(self) -> int:
        return self.hf.bos_token_id

    @property
    def eos_id(self) -> int:
        return self.hf.eos_token_id

    @property
    def pad_id(self) -> int:
        return self.hf.pad_token_id
