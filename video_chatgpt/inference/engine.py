"""Load a trained model and answer questions about videos: what chat, predict, the demo and benchmark share.

``load_engine(model_name, projection_path)`` takes what users have: a base folder plus a projector file (our
``mm_projector.bin`` or the released ``video_chatgpt-7B.bin``, the original's ``--model-name``/``--projection_path``),
or a training output folder, of any base (``bases.open_base``). The run folder is the truth for the tower, the
frames, the template and the number of video tokens; features with another row count are refused with both numbers.

``prompt_ids="original"`` reproduces the original inference's ids: it tokenized the prompt with the fast tokenizer,
which keeps the ``"\n"`` (id 13) before ``<vid_start>`` and adds a lone ``"▁"`` after ``<vid_end>`` (2 tokens more
than training saw). The default, ``"ours"``, uses the training ids; ``original`` reproduces published numbers of the
released ``video_chatgpt-7B.bin``.

Generation has one path, ``Engine.stream``: the prompt of a (multi-turn) conversation in the model's template, then
``generate`` in a thread of its own, handing out text pieces as they settle; ``answer`` joins them. Chat prints the
pieces, predict keeps the joined answer, the demo shows them growing; a closed stream or a set ``stop`` event ends
generation at the next token.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from video_chatgpt.bases import open_base
from video_chatgpt.constants import PROMPT_IDS
from video_chatgpt.data.conversation import (
    INFERENCE_TEMPLATE,
    TEMPLATES,
    TRAIN_TEMPLATE,
    inference_conversation,
    inference_template,
    render_sample,
)
from video_chatgpt.data.tokenizer import SegmentEncoder, VideoTokenIds
from video_chatgpt.errors import UserError
from video_chatgpt.features.encoder import default_dtype, video_tokens
from video_chatgpt.features.extract import VideoFeatureExtractor
from video_chatgpt.features.towers import resolve_tower
from video_chatgpt.model.loading import load_trained_model
from video_chatgpt.model.video_chatgpt import VideoMixin

ORIGINAL_IDS_NEED = (
    "--prompt_ids original reproduces the original's LLaMA prompts: it needs the document's base (a SentencePiece "
    "tokenizer.model) and the <vid_start>/<vid_end> tokens"
)
DEFAULT_TEMPERATURE = 0.2  # the original inference's (inference.py: do_sample=True, temperature=0.2)
DEFAULT_MAX_NEW_TOKENS = 1024  # the original inference's
GENERATE_THREAD = "video-chatgpt-generate"  # the name of the thread ``Engine.stream`` generates in

Turn = tuple[str, str]  # (question, answer) of a finished turn

logger = logging.getLogger(__name__)


class PromptTooLong(UserError):
    """The conversation's prompt leaves no room for an answer in the model's context."""

    def __init__(self, tokens: int, limit: int):
        super().__init__(f"the prompt is {tokens} tokens long; the model reads at most {limit}")
        self.tokens, self.limit = tokens, limit


def conversation_records(history: Sequence[Turn], question: str) -> list[dict]:
    """The conversation in the training JSON's format, ending in an open answer (the generation prompt).

    As the original demo: ``<video>`` follows the first question (``q + "\\n<video>"``, the inference conversation),
    later questions are plain text, every finished answer is closed by the template's end (``</s>`` for sep style
    TWO). With no history it is ``inference_conversation(question)``, what ``video-chatgpt chat`` renders.
    """
    records: list[dict] = []
    for k, (q, a) in enumerate([*history, (question, None)]):
        value = inference_conversation(q)[0]["value"] if k == 0 else q
        records += [{"from": "human", "value": value}, {"from": "gpt", "value": a}]
    return records


def video_extractor(
    vision_tower: str, num_frames: int, device: torch.device, video_token_len: int | None
) -> VideoFeatureExtractor:
    """The feature extractor a trained model reads from: its tower and frames, float16 on CUDA (float32 on the CPU),
    the spatial pool its training features used (``spatial_pool_for``)."""
    return VideoFeatureExtractor(
        vision_tower,
        num_frames=num_frames,
        device=device,
        dtype=default_dtype(device),
        spatial_pool=spatial_pool_for(vision_tower, num_frames, video_token_len),
    )


def spatial_pool_for(vision_tower: str, num_frames: int, video_token_len: int | None) -> int:
    """The ``--spatial_pool`` k (1-4) whose token count for this tower and ``num_frames`` is ``video_token_len`` (1
    when it is not recorded): what the training features used."""
    if not video_token_len:
        return 1
    spec = resolve_tower(vision_tower)
    return next((k for k in (1, 2, 3, 4) if video_tokens(spec, num_frames, k) == video_token_len), 1)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class Engine:
    model: VideoMixin  # VideoChatGPTForCausalLM or VideoLanguageModel
    tokenizer: object
    encoder: SegmentEncoder
    video_ids: VideoTokenIds
    device: torch.device
    vision_tower: str | None
    num_frames: int
    conv_mode: str = INFERENCE_TEMPLATE
    prompt_ids_style: str = "ours"  # or "original": the original inference's 2 extra tokens (see the module doc)
    _extractor: object = None

    @property
    def extractor(self):
        """The feature extractor (the same computation as the feature files), built on first use."""
        if self._extractor is None:
            if not self.vision_tower:
                raise ValueError("no vision tower: the model config has no mm_vision_tower; pass --vision_tower")
            self._extractor = video_extractor(
                self.vision_tower, self.num_frames, self.device, self.model.config.video_token_len
            )
            expected = self.model.config.video_token_len
            got = self._extractor.num_tokens
            if expected and got != expected:
                raise ValueError(
                    f"the extractor gives {got} video tokens ({self._extractor.num_frames} frames + "
                    f"{self._extractor.num_patches} patches) but the model was trained with {expected}; "
                    f"pass the training run's --num_frames"
                )
        return self._extractor

    def video_features(self, video_path: str | Path) -> np.ndarray:
        """(N, C) float16 features of a video file, computed on the fly."""
        return self.extractor.features_from_video(video_path)

    def _features_tensor(self, features: np.ndarray) -> torch.Tensor:
        width = self.model.config.mm_hidden_size
        if features.ndim != 2 or features.shape[1] != width:
            raise UserError(f"video features have shape {features.shape}; expected (tokens, {width})")
        expected = self.model.config.video_token_len
        if expected and features.shape[0] != expected:
            raise UserError(
                f"the video features have {features.shape[0]} rows (video tokens) but the model was trained with "
                f"{expected}; extract them with the training run's tower, --num_frames and --spatial_pool"
            )
        return torch.from_numpy(np.asarray(features)).to(self.device).unsqueeze(0)  # (1, N, C)

    def prompt_ids(self, question: str, num_video_tokens: int, history: Sequence[Turn] = ()) -> list[int]:
        """The generation prompt for ``question`` after the finished ``history`` turns, in the model's template."""
        records = conversation_records(history, question)
        ids = render_sample(records, self.encoder, self.video_ids, num_video_tokens, template=self.conv_mode).input_ids
        if self.prompt_ids_style == "original":
            ids = original_inference_ids(ids, self.encoder, self.video_ids)
        return ids

    def stream(
        self,
        question: str,
        features: np.ndarray,
        *,
        history: Sequence[Turn] = (),
        temperature: float = DEFAULT_TEMPERATURE,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        seed: int | None = None,
        stop: threading.Event | None = None,
        token_timeout: float | None = None,
    ) -> Iterator[str]:
        """The answer to ``question`` about a video given its (N, C) features, as text pieces while it is generated.

        The pieces joined are exactly ``answer``'s text. ``history``: the finished (question, answer) turns of a
        conversation about the same video (the video goes with the first question). ``temperature`` 0 is greedy;
        otherwise sampling, reproducible with ``seed`` (the global RNG is left as it was). Generation stops at
        ``</s>`` (removed as a token, not with the original's character-set ``rstrip``), after ``max_new_tokens``
        (fewer when the model's context would be exceeded), when ``stop`` is set, or when the iterator is closed.
        ``token_timeout``: seconds to wait for the next token before ``TimeoutError``.

        The prompt and features are checked now (``UserError``; ``PromptTooLong`` when the conversation fills the
        model's context); generation starts at the first ``next()``, in a thread of its own.
        """
        ids, feats, room = self.prepare(question, features, history)
        kwargs = self._generate_kwargs(temperature, 1.0, max_new_tokens if room is None else min(max_new_tokens, room))
        prompt = torch.tensor([ids], device=self.device)  # (1, T)
        return self._pieces(prompt, feats, kwargs, seed, stop, token_timeout)

    def prepare(
        self, question: str, features: np.ndarray, history: Sequence[Turn] = ()
    ) -> tuple[list[int], torch.Tensor, int | None]:
        """(prompt ids, (1, N, C) features on the device, new tokens the context leaves room for or None when the
        model has no recorded limit), checked:
        ``UserError`` for features the model cannot read, ``PromptTooLong`` when the prompt fills the context."""
        feats = self._features_tensor(features)  # (1, N, C)
        ids = self.prompt_ids(question, feats.shape[1], history)
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if not limit:
            return ids, feats, None
        if len(ids) >= limit:
            raise PromptTooLong(len(ids), limit)
        return ids, feats, limit - len(ids)

    def _generate_kwargs(self, temperature: float, top_p: float, max_new_tokens: int) -> dict:
        kwargs = {
            "max_new_tokens": max_new_tokens,
            "eos_token_id": self.tokenizer.eos_token_id,
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs

    def generate_batch(
        self,
        prompts: Sequence[tuple[list[int], torch.Tensor]],
        *,
        streamer: BaseStreamer | None,
        stopping_criteria: StoppingCriteriaList,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        **generate_kwargs,
    ) -> None:
        """One ``generate`` over several prompts of ``prepare`` (ids, (1, N, C) features) at once: what a server's
        batcher runs. The prompts are left-padded, with an attention mask (the position ids follow from it), so at
        temperature 0 each row's tokens are those ``stream`` gives for it alone. ``streamer.put`` receives the
        (B,) new token ids of each step (a finished row gets the pad id); ``stopping_criteria`` may end rows one by
        one. All features have the same shape (N, C). Sampling is reproducible with ``seed`` for the same batch (the
        global RNG is left as it was). ``generate_kwargs`` go to ``generate`` as they are (e.g. a ``logits_processor``)."""
        longest = max(len(ids) for ids, _ in prompts)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.tensor([[pad] * (longest - len(i)) + i for i, _ in prompts], device=self.device)  # (B, T)
        mask = torch.tensor([[0] * (longest - len(i)) + [1] * len(i) for i, _ in prompts], device=self.device)
        feats = torch.cat([f for _, f in prompts])  # (B, N, C)
        kwargs = {**self._generate_kwargs(temperature, top_p, max_new_tokens), **generate_kwargs}
        with self._seeded(seed):
            self.model.generate_with_video(
                ids, feats, attention_mask=mask, streamer=streamer, stopping_criteria=stopping_criteria, **kwargs
            )

    @contextlib.contextmanager
    def _seeded(self, seed: int | None) -> Iterator[None]:
        """Inference mode; with a ``seed``, torch's RNG seeded inside and restored after (the global one untouched)."""
        rng_devices = [self.device] if self.device.type == "cuda" else []
        with torch.inference_mode(), torch.random.fork_rng(devices=rng_devices, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            yield

    def _pieces(self, prompt, feats, kwargs: dict, seed, stop, token_timeout) -> Iterator[str]:
        tokens: queue.Queue = queue.Queue()  # lists of new token ids, then an exception or _END
        finished = threading.Event()  # set when this iterator ends (closed early included)

        def generate() -> None:
            try:
                with self._seeded(seed):
                    self.model.generate_with_video(
                        prompt,
                        feats,
                        streamer=StepStreamer(tokens.put),
                        stopping_criteria=StoppingCriteriaList([_StopWhenSet(finished, stop)]),
                        **kwargs,
                    )
            except Exception as exc:  # raised again in the reading thread, below
                tokens.put(exc)
            finally:
                tokens.put(_END)

        thread = threading.Thread(target=generate, name=GENERATE_THREAD, daemon=True)
        thread.start()
        text = Detokenizer(self.tokenizer)
        try:
            while (item := _next_item(tokens, token_timeout)) is not _END:
                if isinstance(item, Exception):
                    raise item
                piece = text.add(item)
                if piece:
                    yield piece
            piece = text.finish()
            if piece:
                yield piece
        finally:
            finished.set()  # closed early (a page left, a client went away): generation stops at its next token
            thread.join()

    def answer(
        self,
        question: str,
        features: np.ndarray,
        temperature: float = DEFAULT_TEMPERATURE,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        seed: int | None = None,
        history: Sequence[Turn] = (),
    ) -> str:
        """The whole answer of ``stream`` (same arguments) as one string."""
        pieces = self.stream(
            question, features, history=history, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed
        )
        return "".join(pieces)

    @torch.inference_mode()
    def score_answers(self, question: str, features: np.ndarray, answers: list[str]) -> list[float]:
        """Mean log-likelihood per token of each candidate answer (with its ``</s>``) given the video."""
        feats = self._features_tensor(features)
        scores = []
        for answer in answers:
            conv = [inference_conversation(question)[0], {"from": "gpt", "value": answer}]
            r = render_sample(conv, self.encoder, self.video_ids, feats.shape[1], template=self.conv_mode)
            ids = torch.tensor([r.input_ids], device=self.device)
            labels = torch.tensor([r.labels], device=self.device)
            loss = self.model(input_ids=ids, labels=labels, video_spatio_temporal_features=feats).loss
            scores.append(-float(loss))
        return scores


# ------------------------------------------------------------------------------------------ streaming helpers
_END = object()  # put on the token queue when generation is over


def _next_item(tokens: queue.Queue, timeout: float | None):
    try:
        return tokens.get(timeout=timeout)
    except queue.Empty:
        raise TimeoutError(f"no new token for {timeout:g} s; the generation is stuck") from None


class StepStreamer(BaseStreamer):
    """``generate``'s streamer: each step's new token ids ((B,), one per row) as a list to ``on_step``.

    ``generate`` first puts the prompt ids (an empty (1, 0) tensor, as the prompt goes in as embeddings): skipped.
    The end is the caller's to signal (``Engine.stream``'s thread puts _END itself, also when generate raised)."""

    def __init__(self, on_step: Callable[[list[int]], None]):
        self.on_step = on_step
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.on_step(value.reshape(-1).tolist())

    def end(self) -> None:
        pass


class _StopWhenSet(StoppingCriteria):
    """A ``generate`` stopping criterion: stop once any of ``events`` (None ones ignored) is set."""

    def __init__(self, *events: threading.Event | None):
        self.events = [e for e in events if e is not None]

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        stop = any(e.is_set() for e in self.events)
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


_UNSETTLED_END = re.compile(r"[\s\ufffd]+\Z")  # trailing whitespace and half-decoded characters
_LAST_WORD = re.compile(r"\s+\S*\Z")
_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")  # SentencePiece's byte fallback


class Detokenizer:
    """Token ids in, text pieces out; the pieces joined are ``decode(ids up to </s>, skip_special_tokens).strip()``.

    A token can change how the text before it decodes: a byte-fallback sequence completes a character (until then
    ``\ufffd``, one per byte, and a valid byte becomes one when a stray byte follows it), a tokenizer's space clean-up
    joins ``"do n't"`` into ``"don't"``. So text is released only where later tokens cannot change it: never the
    trailing whitespace or half-decoded characters, nothing while the last token is a byte, and, for a tokenizer that
    cleans up spaces, never the last word. Text once released is never taken back (a warning if a tokenizer would).

    Each step decodes only the tokens since the last complete character plus ``CONTEXT`` before them (so the
    SentencePiece leading-space rule and byte sequences decode as in the whole text), not the whole answer: O(T).
    Where that window does not extend the text before it (a clean-up across its start), the whole answer is decoded.
    """

    CONTEXT = 6  # tokens decoded again before the new ones (a UTF-8 character is at most 4 byte tokens)

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.hold_last_word = bool(getattr(tokenizer, "clean_up_tokenization_spaces", False))
        self.ids: list[int] = []
        self.read = 0  # ids[:read] decode to self.decoded, ending in a complete character
        self.decoded = ""
        self.sent = ""  # the text released so far
        self.done = False  # </s> seen: later ids are not part of the answer

    def add(self, new_ids: list[int]) -> str:
        for i in new_ids:
            if self.done:
                break
            if i == self.tokenizer.eos_token_id:
                self.done = True
            else:
                self.ids.append(i)
        text = self._text()
        last = self.tokenizer.convert_ids_to_tokens(self.ids[-1]) if self.ids else ""
        if isinstance(last, str) and _BYTE_TOKEN.fullmatch(last):
            return self._release(text, "")
        settled = _UNSETTLED_END.sub("", text)
        if self.hold_last_word:
            settled = _LAST_WORD.sub("", settled)
        return self._release(text, settled)

    def finish(self) -> str:
        text = self._text().rstrip()
        return self._release(text, text)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _text(self) -> str:
        """``decode(ids).lstrip()``, decoding only the tokens not yet read (and the context before them)."""
        start = max(self.read - self.CONTEXT, 0)
        head, tail = self._decode(self.ids[start : self.read]), self._decode(self.ids[start:])
        if start == 0:
            text = tail
        elif tail.startswith(head):
            text = self.decoded + tail[len(head) :]
        else:
            text = self._decode(self.ids)
        if not text.endswith("\ufffd"):
            self.read, self.decoded = len(self.ids), text
        return text.lstrip()

    def _release(self, text: str, settled: str) -> str:
        """The part of ``settled`` (a prefix of ``text``) not sent yet."""
        if not text.startswith(self.sent):  # text already sent cannot be taken back
            logger.warning("the streamed answer changed after it was sent: %r -> %r", self.sent, text)
            return ""
        if len(settled) <= len(self.sent):  # e.g. a clean-up joined the held word to the one before
            return ""
        piece, self.sent = settled[len(self.sent) :], settled
        return piece


def original_inference_ids(ids: list[int], encoder: SegmentEncoder, video_ids: VideoTokenIds) -> list[int]:
    """The original inference's prompt ids from ours: ``"\n"`` before ``<vid_start>``, ``"▁"`` after ``<vid_end>``.

    Only for the document's templates on a SentencePiece (LLaMA) tokenizer, with the start/end tokens."""
    if not encoder.exact or not video_ids.use_start_end:
        raise UserError(ORIGINAL_IDS_NEED)
    newline, space = encoder.encode("\n")[-1], encoder.sp_piece_id("▁")  # 13 and 29871 in LLaMA's vocabulary
    start, end = ids.index(video_ids.start), ids.index(video_ids.end)
    return [*ids[:start], newline, *ids[start : end + 1], space, *ids[end + 1 :]]


def load_engine(
    model_name: str | Path,
    projection_path: str | Path | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    vision_tower: str | None = None,
    num_frames: int | None = None,
    conv_mode: str = INFERENCE_TEMPLATE,
    prompt_ids: str = "ours",
    lora_path: str | Path | None = None,
) -> Engine:
    """Load a trained model (see the module docstring) in ``dtype`` on ``device``, ready to answer.

    The run folder is the truth for the tower, the frames, the template and the token count; ``vision_tower`` and
    ``num_frames`` override it. ``conv_mode`` applies to a model trained with the document's template; a model
    trained with a chat or plain template uses that one. ``prompt_ids``: ``ours`` (the training ids) or
    ``original`` (the original inference's, see the module doc).
    """
    if prompt_ids not in PROMPT_IDS:
        raise UserError(f"--prompt_ids {prompt_ids!r}: expected one of {', '.join(PROMPT_IDS)}")
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    base = open_base(model_name, projection_path, lora_path)
    trained_template = base.trained_template or TRAIN_TEMPLATE
    template = conv_mode if trained_template in TEMPLATES else inference_template(trained_template)
    if trained_template not in TEMPLATES and conv_mode != INFERENCE_TEMPLATE:
        logger.warning("--conv_mode %s ignored: this model was trained with the %r template", conv_mode, template)
    model, tokenizer, video_ids = load_trained_model(base, dtype)
    model.to(device).eval()
    engine = Engine(
        model, tokenizer, SegmentEncoder(tokenizer), video_ids, device, vision_tower or base.vision_tower,
        num_frames or base.num_frames, template, prompt_ids,
    )  # fmt: skip
    if prompt_ids == "original" and not base.is_llava_v1:
        raise UserError(ORIGINAL_IDS_NEED)
    return engine


__all__ = ["Detokenizer", "Engine", "PromptTooLong", "conversation_records", "load_engine"]
