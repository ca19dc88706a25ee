"""Conversation templates and ``render_sample``: the one function that turns a conversation into ids and labels.

Training uses the ``vicuna_v1_1`` template, inference the ``video-chatgpt_v1`` one (the original's two system
prompts; the second really has no space after "language."). Both are "sep style TWO":

    {system} USER: {q} ASSISTANT: {a}</s>USER: {q2} ASSISTANT: {a2}</s>

``<video>`` in a human turn becomes the video span ``<vid_start> <vid_patch> x N <vid_end>`` (N = the number of
video tokens, from the features and config). Labels follow the original's rule: only the assistant answers and
their closing ``</s>`` are supervised; BOS, system prompt, ``USER:``, questions, the video span and ``ASSISTANT:``
carry ``IGNORE_INDEX``.

Ids are built from segments (see ``tokenizer.py``): text chunks are stripped where they touch a special token and
encoded one chunk at a time; special ids are inserted, never tokenized from text. A literal ``</s>`` or
``<vid_patch>`` typed inside a question or answer is therefore plain text here (the original turned it into a
special token and then, on the length mismatch, masked the whole sample).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from video_chatgpt.bases import Base
from video_chatgpt.constants import (
    IGNORE_INDEX,
    VIDEO_END_TOKEN,
    VIDEO_PATCH_TOKEN,
    VIDEO_PLACEHOLDER,
    VIDEO_START_TOKEN,
)
from video_chatgpt.data.tokenizer import SegmentEncoder, VideoTokenIds


@dataclass(frozen=True)
class Template:
    name: str
    system: str
    roles: tuple[str, str] = ("USER", "ASSISTANT")
    sep: str = " "  # after a user turn (and after the system prompt)
    # after an assistant turn the separator is the EOS token </s>, inserted as an id


TEMPLATES: dict[str, Template] = {
    "vicuna_v1_1": Template(
        "vicuna_v1_1",
        "A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    ),
    "video-chatgpt_v1": Template(
        "video-chatgpt_v1",
        "You are Video-ChatGPT, a large vision-language assistant. "
        "You are able to understand the video content that the user provides, and assist the user with a variety "
        "of tasks using natural language."
        "Follow the instructions carefully and explain your answers in detail based on the provided video.",
    ),
}
TRAIN_TEMPLATE = "vicuna_v1_1"
INFERENCE_TEMPLATE = "video-chatgpt_v1"


@dataclass
class RenderedSample:
    """One rendered sample. ``input_ids`` and ``labels`` have the same length."""

    input_ids: list[int]
    labels: list[int]
    num_video_spans: int
    truncated: bool = False
    full_length: int = 0  # length before truncation

    @property
    def num_supervised(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


@dataclass
class _Piece:
    """A run of the prompt: text to encode, or ids to insert. ``train``: whether its tokens carry a loss."""

    text: str | None = None
    ids: list[int] = field(default_factory=list)
    train: bool = False
    # For text: how many leading tokens are masked although ``train`` is True (the ``ASSISTANT:`` prefix that
    # shares a chunk with the answer), computed the original's way; see _encode_pieces.
    masked_prefix: str | None = None


def video_span_ids(video_ids: VideoTokenIds, num_video_tokens: int) -> list[int]:
    """``[<vid_start>] + [<vid_patch>] * num_video_tokens + [<vid_end>]`` (no start/end without the flag)."""
    if num_video_tokens <= 0:
        raise ValueError(f"num_video_tokens must be positive, got {num_video_tokens}")
    span = [video_ids.patch] * num_video_tokens
    if video_ids.use_start_end:
        span = [video_ids.start, *span, video_ids.end]
    return span


def _normalise_turns(conversations: list[dict]) -> list[tuple[str, str | None]]:
    """``[{"from", "value"}, ...]`` -> ``[("human"|"gpt", value)]``; a leading non-human turn is dropped (original)."""
    turns = []
    for k, turn in enumerate(conversations):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise ValueError(f"turn {k} must be an object with 'from' and 'value', got {turn!r}")
        turns.append((str(turn["from"]), turn["value"]))
    if turns and turns[0][0] != "human":
        turns = turns[1:]
    for k, (who, _) in enumerate(turns):
        expected = "human" if k % 2 == 0 else "gpt"
        if who != expected:
            raise ValueError(f"turn {k} is from {who!r}; turns must alternate human, gpt, human, ...")
    return turns


def _build_pieces(
    turns: list[tuple[str, str | None]], template: Template, span: list[int], eos_id: int
) -> tuple[list[_Piece], int]:
    pieces = [_Piece(text=template.system + template.sep)]
    user, assistant = template.roles
    num_spans = 0
    for who, value in turns:
        if who == "human":
            parts = str(value).split(VIDEO_PLACEHOLDER)
            num_spans += len(parts) - 1
            pieces.append(_Piece(text=f"{user}: {parts[0]}"))
            for part in parts[1:]:
                pieces.append(_Piece(ids=list(span)))
                pieces.append(_Piece(text=part))
            pieces[-1].text += template.sep
        elif value is None:  # generation prompt: "ASSISTANT:" with no trailing space
            pieces.append(_Piece(text=f"{assistant}:"))
        else:
            prefix = f"{assistant}: "
            pieces.append(_Piece(text=prefix + str(value), train=True, masked_prefix=prefix))
            pieces.append(_Piece(ids=[eos_id], train=True))
    return pieces, num_spans


def _encode_pieces(pieces: list[_Piece], encoder: SegmentEncoder) -> tuple[list[int], list[int]]:
    """Merge adjacent text, strip it where it touches inserted ids, encode; returns (ids, labels) without BOS."""
    # 1. Merge adjacent text pieces into one chunk (the original encodes all text between two specials at once).
    chunks: list[_Piece] = []
    for p in pieces:
        if p.text is not None and chunks and chunks[-1].text is not None:
            last = chunks[-1]
            if p.train and not last.train:
                # masked text followed by an answer: the masked prefix grows by the earlier text
                last = _Piece(text=last.text + p.text, train=True, masked_prefix=last.text + (p.masked_prefix or ""))
            elif p.train == last.train:
                last = _Piece(text=last.text + p.text, train=last.train, masked_prefix=last.masked_prefix)
            else:  # an answer followed by masked text cannot happen: the answer is always closed by </s>
                raise AssertionError("answer text directly followed by prompt text")
            chunks[-1] = last
        else:
            chunks.append(_Piece(text=p.text, ids=list(p.ids), train=p.train, masked_prefix=p.masked_prefix))
    # 2. Strip whitespace next to inserted ids, encode, and label.
    ids: list[int] = []
    labels: list[int] = []
    for k, c in enumerate(chunks):
        if c.text is None:
            ids += c.ids
            labels += c.ids if c.train else [IGNORE_INDEX] * len(c.ids)
            continue
        text, prefix = c.text, c.masked_prefix
        if k + 1 < len(chunks):  # followed by a special token: right-strip
            text = text.rstrip()
        if k > 0:  # preceded by a special token: left-strip (the masked prefix loses the same characters)
            stripped = len(text) - len(text.lstrip())
            text = text[stripped:]
            if prefix is not None:
                prefix = prefix[stripped:]
        chunk_ids = encoder.encode(text)
        if not c.train:
            n_masked = len(chunk_ids)
        else:
            # The original's rule: instruction length = len(tokenize(prefix ending in "ASSISTANT: ")) minus the
            # lone "▁" that the trailing space encodes to.
            n_masked = min(len(chunk_ids), max(0, len(encoder.encode(prefix)) - 1))
        ids += chunk_ids
        labels += [IGNORE_INDEX] * n_masked + chunk_ids[n_masked:]
    return ids, labels


def render_sample(
    conversations: list[dict],
    encoder: SegmentEncoder,
    video_ids: VideoTokenIds,
    num_video_tokens: int,
    template: str = TRAIN_TEMPLATE,
    max_length: int | None = None,
) -> RenderedSample:
    """Render one conversation to ``(input_ids, labels)`` with BOS first, as the trainer sees it.

    A final assistant turn whose value is None renders the generation prompt (ending in ``ASSISTANT:``).
    ``template``: ``vicuna_v1_1`` / ``video-chatgpt_v1`` (the document's base), ``chat`` (the tokenizer's own chat
    template, ``render_chat_sample``) or ``plain`` (stage-1 alignment, ``render_plain_sample``).
    ``max_length`` truncates on the right, as the original's tokenizer call did; a truncation that would cut the
    video span raises ``ValueError`` (the model could not place the features).
    """
    if template == CHAT_TEMPLATE:
        return render_chat_sample(conversations, encoder.hf, video_ids, num_video_tokens, max_length)
    if template == PLAIN_TEMPLATE:
        return render_plain_sample(conversations, encoder, video_ids, num_video_tokens, max_length)
    if template not in TEMPLATES:
        raise ValueError(f"unknown conversation template {template!r}; expected one of {', '.join(TEMPLATE_NAMES)}")
    turns = _normalise_turns(conversations)
    tpl = TEMPLATES[template]
    span = video_span_ids(video_ids, num_video_tokens)
    pieces, num_spans = _build_pieces(turns, tpl, span, encoder.eos_id)
    ids, labels = _encode_pieces(pieces, encoder)
    if encoder.bos_id is not None:  # a tokenizer without BOS (Qwen2) starts with the text
        ids, labels = [encoder.bos_id, *ids], [IGNORE_INDEX, *labels]
    return _truncated(ids, labels, num_spans, video_ids, max_length)


def inference_conversation(question: str, video: bool = True) -> list[dict]:
    """The inference conversation: the video after the question (``q + "\\n<video>"``), then an open answer."""
    value = f"{question}\n{VIDEO_PLACEHOLDER}" if video else question
    return [{"from": "human", "value": value}, {"from": "gpt", "value": None}]


# ------------------------------------------------------------------------------------ other bases
CHAT_TEMPLATE = "chat"  # the tokenizer's own chat template (apply_chat_template): Llama-3, Mistral, Qwen2.5, ...
PLAIN_TEMPLATE = "plain"  # stage 1 (alignment), as LLaVA's: the video span, then the caption and EOS
TEMPLATE_NAMES = (*TEMPLATES, CHAT_TEMPLATE, PLAIN_TEMPLATE)

# Private-use characters that mark where message k's content goes when the template is rendered once with
# placeholders (templates never contain them; ``| trim`` and friends leave them alone).
_MARK_OPEN, _MARK_CLOSE = "\ue000", "\ue001"


def training_template(base: Base, tokenizer, stage: str | None = None) -> str:
    """The template training uses for a base: ``plain`` for ``--stage pretrain``; the tokenizer's own chat template
    for a chat model (and a LLaVA-NeXT folder on a non-LLaMA LM); else the document's ``vicuna_v1_1`` (its LLaVA, and
    a LLaVA-1.5 folder: Vicuna-1.5, trained with LLaVA's v1 template). ``data inspect``/``check``, training and the
    sample call this one function, so they render alike."""
    if stage == "pretrain":
        return PLAIN_TEMPLATE
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    if has_chat and (base.is_causal_lm or (base.is_llava_hf and base.text_model_type != "llama")):
        return CHAT_TEMPLATE
    return TRAIN_TEMPLATE


def inference_template(train_template: str) -> str:
    """The template inference uses for a model trained with ``train_template`` (the original: vicuna_v1_1 ->
    video-chatgpt_v1's system prompt; a chat or plain model keeps its own)."""
    return INFERENCE_TEMPLATE if train_template in TEMPLATES else train_template


def _span_text(video_ids: VideoTokenIds) -> str:
    return f"{VIDEO_START_TOKEN}{VIDEO_PATCH_TOKEN}{VIDEO_END_TOKEN}" if video_ids.use_start_end else VIDEO_PATCH_TOKEN


def render_chat_sample(
    conversations: list[dict],
    tokenizer,
    video_ids: VideoTokenIds,
    num_video_tokens: int,
    max_length: int | None = None,
) -> RenderedSample:
    """Render with the tokenizer's own chat template; loss on the assistant turns (content + end-of-turn token).

    How: the template is rendered once with a marker in place of each message's content (contents are stripped
    first, as the templates trim them), so the exact character range of every content is known; the real text is
    then tokenized *once*, as the template's text (``add_special_tokens=False``: the template writes BOS itself),
    with offsets. So the ids are exactly the tokenizer's for the full template text; no chunk boundary can change
    whitespace tokens. A token is supervised when it overlaps an assistant content or the end-of-turn token right
    after it (``<|im_end|>``, ``<|eot_id|>``, ``</s>``). ``<video>`` in a user turn becomes the video token text
    (one added token each) and its ``<vid_patch>`` id is repeated ``num_video_tokens`` times. Special-token text typed
    inside a message (``<|im_start|>``, ``[INST]``, ``<vid_patch>``) stays text: that content is re-encoded with
    ``split_special_tokens``. A template that alters contents otherwise (the rendered text differs from
    ``apply_chat_template`` of the real messages) is refused.
    """
    if not getattr(tokenizer, "is_fast", False) or not getattr(tokenizer, "chat_template", None):
        raise ValueError("the 'chat' template needs a fast tokenizer with a chat_template (tokenizer_config.json)")
    turns = _normalise_turns(conversations)
    generation = bool(turns) and turns[-1][1] is None
    if generation:
        turns = turns[:-1]
    span_text = _span_text(video_ids)
    contents, roles = [], []
    num_spans = 0
    for who, value in turns:
        text = str(value).strip()
        if who == "human":
            num_spans += text.count(VIDEO_PLACEHOLDER)
        contents.append(text)
        roles.append("user" if who == "human" else "assistant")
    marked = [{"role": r, "content": f"{_MARK_OPEN}{k}{_MARK_CLOSE}"} for k, r in enumerate(roles)]
    skeleton = tokenizer.apply_chat_template(marked, tokenize=False, add_generation_prompt=generation)
    # Assemble the real text and the character regions: ("text"|"video", start, end, message index).
    text, regions, pos = "", [], 0
    for k, content in enumerate(contents):
        mark = f"{_MARK_OPEN}{k}{_MARK_CLOSE}"
        at = skeleton.find(mark, pos)
        if at < 0:
            raise ValueError(f"the chat template dropped or repeated message {k}'s content; use another template")
        text += skeleton[pos:at]
        parts = content.split(VIDEO_PLACEHOLDER) if roles[k] == "user" else [content]
        for j, part in enumerate(parts):
            if j:
                regions.append(("video", len(text), len(text) + len(span_text), k))
                text += span_text
            regions.append(("text", len(text), len(text) + len(part), k))
            text += part
        pos = at + len(mark)
    text += skeleton[pos:]
    real = [{"role": r, "content": c.replace(VIDEO_PLACEHOLDER, span_text)} for r, c in zip(roles, contents)]
    if tokenizer.apply_chat_template(real, tokenize=False, add_generation_prompt=generation) != text:
        raise ValueError(
            "the chat template changes message contents (not only around them); it cannot be rendered by segments"
        )
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
    special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    special_text = [t for t in tokenizer.added_tokens_encoder if t]
    # Typed special-token text inside a content region: take that region's tokens from the text tokenized with
    # ``split_special_tokens`` (same context, so the same whitespace tokens), or from the region alone.
    as_text = None
    for kind, start, end, _ in reversed(regions):
        if kind != "text" or not any(t in text[start:end] for t in special_text):
            continue
        inside = [i for i, (a, b) in enumerate(offsets) if a < end and b > start and b > a]
        first, last = inside[0], inside[-1]
        lo, hi = min(offsets[first][0], start), max(offsets[last][1], end)  # whole tokens (a leading "▁" too)
        if as_text is None:
            as_text = tokenizer(text, add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True)
        picked = [i for i, (a, b) in enumerate(as_text["offset_mapping"]) if a >= lo and b <= hi and b > a]
        if picked and as_text["offset_mapping"][picked[0]][0] == lo and as_text["offset_mapping"][picked[-1]][1] == hi:
            new_ids = [as_text["input_ids"][i] for i in picked]
            new_offsets = [as_text["offset_mapping"][i] for i in picked]
        else:
            alone = tokenizer(
                text[lo:hi], add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True
            )
            new_ids, new_offsets = alone["input_ids"], [(a + lo, b + lo) for a, b in alone["offset_mapping"]]
        ids[first : last + 1] = new_ids
        offsets[first : last + 1] = new_offsets
    # Supervised character ranges: each assistant content plus the end-of-turn token right after it.
    supervised = []
    for _kind, start, end, k in regions:
        if roles[k] != "assistant":
            continue
        stop = end
        after = next((i for i, (a, b) in enumerate(offsets) if a >= end and b > a), None)
        if after is not None and ids[after] in special and not text[end : offsets[after][0]].strip():
            stop = offsets[after][1]
        supervised.append((start, stop))
    labels = [
        x if any(a < stop and b > start for start, stop in supervised) else IGNORE_INDEX
        for x, (a, b) in zip(ids, offsets)
    ]
    # The video text must have become exactly the span ids; then the patch id is repeated.
    span = video_span_ids(video_ids, 1)
    out_ids, out_labels = [], []
    for x, y in zip(ids, labels):
        if x == video_ids.patch:
            out_ids += [x] * num_video_tokens
            out_labels += [IGNORE_INDEX] * num_video_tokens
        else:
            out_ids.append(x)
            out_labels.append(y)
    found = sum(1 for x in ids if x == video_ids.patch)
    if found != num_spans or any(
        ids[i : i + len(span)] != span for i in range(len(ids)) if ids[i] == span[0] and video_ids.use_start_end
    ):
        raise ValueError(f"{num_spans} <video> placeholders but {found} video spans after tokenization")
    return _truncated(out_ids, out_labels, num_spans, video_ids, max_length)


def render_plain_sample(
    conversations: list[dict],
    encoder: SegmentEncoder,
    video_ids: VideoTokenIds,
    num_video_tokens: int,
    max_length: int | None = None,
) -> RenderedSample:
    """Stage 1 (alignment): ``[BOS] <video span> caption EOS``, loss on the caption and EOS (LLaVA's "plain").

    The caption is the first assistant answer; the question is not shown (as LLaVA's pretraining). A None answer
    renders the generation prompt (the span alone).
    """
    turns = _normalise_turns(conversations)
    if len(turns) < 2:
        raise ValueError("the plain template needs a human turn with <video> and an answer (the caption)")
    num_spans = str(turns[0][1]).count(VIDEO_PLACEHOLDER)
    if num_spans != 1:
        raise ValueError(f"the plain template needs one <video> in the first turn, got {num_spans}")
    bos = [] if encoder.bos_id is None else [encoder.bos_id]
    span = video_span_ids(video_ids, num_video_tokens)
    ids, labels = bos + span, [IGNORE_INDEX] * (len(bos) + len(span))
    if turns[1][1] is not None:
        caption = encoder.encode(str(turns[1][1]).strip()) + [encoder.eos_id]
        ids, labels = ids + caption, labels + caption
    return _truncated(ids, labels, num_spans, video_ids, max_length)


def _truncated(ids, labels, num_spans, video_ids: VideoTokenIds, max_length) -> RenderedSample:
    """Right-truncate to ``max_length``; ``ValueError`` when that would cut the video span."""
    full = len(ids)
    truncated = max_length is not None and full > max_length
    if truncated:
        last_patch = max((i for i, x in enumerate(ids) if x == video_ids.patch), default=-1)
        span_end = last_patch + (2 if video_ids.use_start_end else 1) if num_spans else 0
        if span_end > max_length:
            raise ValueError(
                f"model_max_length {max_length} cuts the video span: the sample has {full} tokens and its video "
                f"span ends at token {span_end}; raise --model_max_length"
            )
        ids, labels = ids[:max_length], labels[:max_length]
    return RenderedSample(ids, labels, num_video_spans=num_spans, truncated=truncated, full_length=full)
