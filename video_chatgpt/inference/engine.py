"""Load a trained Video-ChatGPT for inference and answer questions about videos.

``load_engine(model_name, projection_path)`` accepts what users have:

* the base ``LLaVA-7B-Lightening-v1-1`` folder + a projector file (our ``mm_projector.bin`` or the released
  ``video_chatgpt-7B.bin``: same keys), as the original's ``--model-name``/``--projection_path``;
* or one of our training output folders (it names its base in ``video_chatgpt_base.json`` and holds
  ``mm_projector.bin``), with no projector flag needed.

The video span is always bracketed by ``<vid_start>``/``<vid_end>`` (the original's inference hard-codes it), the
number of video tokens is the extractor's ``num_frames + patches`` and must match what the model was trained with
(``config.video_token_len`` when the training run recorded it): features with another row count are refused with
both numbers.

Other bases (issue 13): a training output folder whatever its base (a Llama-3 / Mistral / Qwen2.5 chat model, a
LLaVA-1.5 folder), or a LLaVA-1.5/NeXT folder itself; prompts are rendered with the template the run trained with
(``config.conv_template``: the tokenizer's chat template, ``plain`` after stage 1, else the document's
``video-chatgpt_v1``), and the span is bracketed as in training (``mm_use_vid_start_end``).

``prompt_ids="original"`` (issue 16) reproduces the original's *inference* ids exactly: it tokenized the prompt
with the fast tokenizer, which keeps the ``"\n"`` (id 13) before ``<vid_start>`` and adds a lone ``"▁"`` after
``<vid_end>``, so its prompts are 2 tokens longer than the ids it trained on. The default (``"ours"``) uses the
training ids; ``original`` is for reproducing published numbers of the released ``video_chatgpt-7B.bin``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

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
from video_chatgpt.model.loading import load_trained_model
from video_chatgpt.model.video_chatgpt import VideoMixin

ORIGINAL_IDS_NEED = (
    "--prompt_ids original reproduces the original's LLaMA prompts: it needs the document's base (a SentencePiece "
    "tokenizer.model) and the <vid_start>/<vid_end> tokens"
)

logger = logging.getLogger(__name__)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """fp16 on GPU (as the original's inference), fp32 on CPU."""
    return torch.float16 if device.type == "cuda" else torch.float32


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
            from video_chatgpt.features.extract import VideoFeatureExtractor

            if not self.vision_tower:
                raise ValueError("no vision tower: the model config has no mm_vision_tower; pass --vision_tower")
            self._extractor = VideoFeatureExtractor(
                self.vision_tower,
                num_frames=self.num_frames,
                device=self.device,
                dtype=torch.float16 if self.device.type == "cuda" else torch.float32,
                spatial_pool=self.spatial_pool(),
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

    def spatial_pool(self) -> int:
        """The ``--spatial_pool`` the training features used: the k (1-4) whose token count for this tower and
        ``num_frames`` equals the model's ``video_token_len`` (1 when the model does not record it)."""
        from video_chatgpt.features.encoder import video_tokens
        from video_chatgpt.features.towers import resolve_tower

        expected = self.model.config.video_token_len
        if not expected:
            return 1
        spec = resolve_tower(self.vision_tower)
        return next((k for k in (1, 2, 3, 4) if video_tokens(spec, self.num_frames, k) == expected), 1)

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

    def prompt_ids(self, question: str, num_video_tokens: int) -> list[int]:
        conv = inference_conversation(question)
        ids = render_sample(conv, self.encoder, self.video_ids, num_video_tokens, template=self.conv_mode).input_ids
        if self.prompt_ids_style == "original":
            ids = original_inference_ids(ids, self.encoder, self.video_ids)
        return ids

    def answer(
        self,
        question: str,
        features: np.ndarray,
        temperature: float = 0.2,
        max_new_tokens: int = 1024,
        seed: int | None = None,
    ) -> str:
        """Generate the answer to ``question`` about a video given its (N, C) features.

        ``temperature`` 0 is greedy (deterministic); otherwise sampling, reproducible with ``seed``. Generation stops
        at ``</s>``, which is removed as a token (not with the original's character-set ``rstrip``).
        """
        feats = self._features_tensor(features)
        ids = torch.tensor([self.prompt_ids(question, feats.shape[1])], device=self.device)
        kwargs = {
            "max_new_tokens": max_new_tokens,
            "eos_token_id": self.tokenizer.eos_token_id,
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature, top_p=1.0, top_k=0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        generator_state = None
        if seed is not None:
            generator_state = torch.random.get_rng_state()
            torch.manual_seed(seed)
        try:
            new = self.model.generate_with_video(ids, feats, **kwargs)[0]
        finally:
            if generator_state is not None:
                torch.random.set_rng_state(generator_state)
        new = new.tolist()
        if self.tokenizer.eos_token_id in new:
            new = new[: new.index(self.tokenizer.eos_token_id)]
        return self.tokenizer.decode(new, skip_special_tokens=True).strip()

    @torch.inference_mode()
    def score_answers(self, question: str, features: np.ndarray, answers: list[str]) -> list[float]:
        """Mean log-likelihood per token of each candidate answer (with its ``</s>``) given the video."""
        feats = self._features_tensor(features)
        scores = []
        for answer in answers:
            conv = [
                {"from": "human", "value": inference_conversation(question)[0]["value"]},
                {"from": "gpt", "value": answer},
            ]
            r = render_sample(conv, self.encoder, self.video_ids, feats.shape[1], template=self.conv_mode)
            ids = torch.tensor([r.input_ids], device=self.device)
            labels = torch.tensor([r.labels], device=self.device)
            loss = self.model(input_ids=ids, labels=labels, video_spatio_temporal_features=feats).loss
            scores.append(-float(loss))
        return scores


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


__all__ = ["Engine", "load_engine"]
