"""The Video-ChatGPT model: a LLaMA causal LM that reads projected spatio-temporal video tokens. One model, one file.

    features (B, N, C) --mm_projector (Linear C->H)--> (B, N, H) --replace the N <vid_patch> embeddings--> LLaMA

* ``N`` (video tokens, 356 for 100 frames + ViT-L/14's 16x16 patches) comes from the feature files / config
  (``config.video_token_len``), ``C`` is ``config.mm_hidden_size`` (1024), ``H`` is ``config.hidden_size`` (4096).
* The base folder is a June-2023 LLaVA checkpoint (``LLaVA-7B-Lightening-v1-1``): a LLaMA config with extra
  ``mm_*`` keys and ``model_type: "llava"``, which current transformers would map to an unrelated nested config.
  ``load_config`` reads it as a LLaMA config with those keys; LLaVA's image projector
  (``model.mm_projector.*``) loads into the video projector, as in the original.
* Token rows: with ``--tune_mm_mlp_adapter`` only ``<vid_start>``/``<vid_end>`` can learn (the original made the
  whole 32006x4096 embedding trainable and relied on ``.detach()``). Here they are a small fp32 parameter
  ``model.video_token_embeds`` (k, H) that overrides the frozen embedding rows of ``model.video_token_embed_ids``;
  ``projector_state_dict`` folds them back into a full ``model.embed_tokens.weight`` for the saved artefact.
* Loss: logits only at supervised positions (labels != -100), so the (B, L, V) logits tensor is never built.

Two model classes, one per kind of base (``video_chatgpt.bases``; built by ``model/loading.py``):

* the document's base (``llava_v1``): ``VideoChatGPTForCausalLM`` below, a ``LlamaForCausalLM`` subclass, so
  checkpoints, ``trainable.safetensors`` names and ``mm_projector.bin`` stay exactly the original's;
* any other base (``llava_hf``: a LLaVA-1.5/NeXT folder's language model and projector; ``causal_lm``: Llama-3.x,
  Mistral, Qwen2.5, ...): ``VideoLanguageModel``.

``VideoLanguageModel`` composes: ``.language_model`` is the causal LM untouched (its own class and weights; LoRA /
peft goes there), ``.model`` holds the video parts (``mm_projector`` and the trainable token rows), so the projector's
state-dict keys are ``model.mm_projector.*`` for every base, as LLaVA writes them. ``--mm_projector_type``:
``linear`` (the original: ``model.mm_projector.{weight,bias}``) or ``mlp2x_gelu`` (LLaVA-1.5: Linear-GELU-Linear,
``model.mm_projector.0.*`` and ``model.mm_projector.2.*``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel, LlamaPreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep

from video_chatgpt.constants import EMBED_TOKENS_KEY, IGNORE_INDEX, MM_CONFIG_KEYS, PROJECTOR_PREFIX

PROJECTOR_TYPES = ("linear", "mlp2x_gelu")
# config.json keys that describe the file, not the model (transformers sets them itself).
FILE_CONFIG_KEYS = ("model_type", "architectures", "_name_or_path", "transformers_version", "torch_dtype", "dtype")


def build_projector(projector_type: str, in_width: int, out_width: int) -> nn.Module:
    """``linear``: Linear(C -> H) (the original). ``mlp2x_gelu``: Linear(C -> H), GELU, Linear(H -> H) (LLaVA-1.5)."""
    if projector_type == "linear":
        return nn.Linear(in_width, out_width)
    if projector_type == "mlp2x_gelu":
        return nn.Sequential(nn.Linear(in_width, out_width), nn.GELU(), nn.Linear(out_width, out_width))
    raise ValueError(f"--mm_projector_type {projector_type!r}: expected one of {', '.join(PROJECTOR_TYPES)}")


class VideoChatGPTConfig(LlamaConfig):
    """LLaMA config plus the multimodal fields. ``video_token_len`` = temporal + spatial tokens per video."""

    model_type = "video_chatgpt"

    def __init__(
        self,
        mm_vision_tower: str | None = None,
        mm_hidden_size: int | None = None,
        use_mm_proj: bool = True,
        mm_use_vid_start_end: bool = False,
        mm_vision_select_layer: int = -2,
        video_token_len: int | None = None,
        num_video_frames: int | None = None,
        video_patch_token_id: int | None = None,
        video_start_token_id: int | None = None,
        video_end_token_id: int | None = None,
        mm_projector_type: str = "linear",
        conv_template: str | None = None,
        **kwargs,
    ):
        self.mm_projector_type = mm_projector_type
        self.conv_template = conv_template
        self.mm_vision_tower = mm_vision_tower
        self.mm_hidden_size = mm_hidden_size
        self.use_mm_proj = use_mm_proj
        self.mm_use_vid_start_end = mm_use_vid_start_end
        self.mm_vision_select_layer = mm_vision_select_layer
        self.video_token_len = video_token_len
        self.num_video_frames = num_video_frames
        self.video_patch_token_id = video_patch_token_id
        self.video_start_token_id = video_start_token_id
        self.video_end_token_id = video_end_token_id
        super().__init__(**kwargs)


def video_config(raw: dict, **overrides) -> VideoChatGPTConfig:
    """A LLaVA / Video-ChatGPT / LLaMA ``config.json`` (as a dict) as a ``VideoChatGPTConfig`` (never via AutoConfig,
    which would map LLaVA's ``model_type: "llava"`` to an unrelated nested config). ``overrides`` go on top."""
    raw = {k: v for k, v in raw.items() if k not in FILE_CONFIG_KEYS}
    raw.update(overrides)
    return VideoChatGPTConfig(**raw)


@dataclass(frozen=True)
class VideoSpan:
    """Where a video goes in a prompt: the ``<vid_patch>`` id, the ``<vid_start>``/``<vid_end>`` ids (None when the
    model does not bracket the span) and the feature width C the projector takes."""

    patch_id: int
    start_id: int | None
    end_id: int | None
    width: int

    @classmethod
    def of(cls, config) -> VideoSpan:
        """The span of a model config (its ``video_*_token_id``, ``mm_use_vid_start_end``, ``mm_hidden_size``)."""
        bracketed = bool(getattr(config, "mm_use_vid_start_end", False))
        return cls(
            config.video_patch_token_id,
            config.video_start_token_id if bracketed else None,
            config.video_end_token_id if bracketed else None,
            config.mm_hidden_size,
        )


def place_video(
    embeds: torch.Tensor,
    input_ids: torch.LongTensor,
    video_features: torch.Tensor,
    projector: nn.Module,
    span: VideoSpan,
) -> torch.Tensor:
    """(B, L, H) token embeddings -> the same with each sample's N ``<vid_patch>`` rows replaced by its projected
    (B, N, C) ``video_features``, in order. The features go through ``projector`` in its dtype; the result is cast
    to ``embeds``' dtype.

    Every sample must hold exactly one video span of N ``<vid_patch>`` tokens (bracketed by ``<vid_start>``/
    ``<vid_end>`` when ``span`` has them); ``ValueError`` otherwise, showing both counts. A packed batch
    (``--packing``: ids (1, L) holding the B samples one after the other) holds B such spans, filled in order.
    """
    b, n, c = video_features.shape
    if c != span.width:
        raise ValueError(f"video feature width {c} != config.mm_hidden_size {span.width}")
    is_patch = input_ids == span.patch_id  # (B, L)
    if b != input_ids.shape[0]:
        if input_ids.shape[0] != 1:
            raise ValueError(f"{b} videos for a batch of {input_ids.shape[0]} samples")
        check_packed_spans(input_ids[0], b, n, span)  # --packing: one row holding the b samples
    else:
        check_spans(input_ids, is_patch, n, span)
    feats = projector(video_features.to(next(projector.parameters()).dtype))  # (B, N, H)
    # Row-major masked_scatter puts video b's N features on the b-th span of N patch positions, in order (one per row
    # padded, B in one row packed).
    return embeds.masked_scatter(is_patch.unsqueeze(-1), feats.to(embeds.dtype))


def check_spans(input_ids: torch.LongTensor, is_patch: torch.Tensor, n: int, span: VideoSpan) -> None:
    """Each sample (row) holds one span of exactly ``n`` contiguous ``<vid_patch>`` tokens, bracketed by
    ``<vid_start>``/``<vid_end>`` when ``span`` has them; ``ValueError`` showing both counts otherwise."""
    per_sample = is_patch.sum(dim=1)
    if (per_sample != n).any():
        bad = int((per_sample != n).nonzero()[0, 0])
        raise ValueError(
            f"sample {bad} has {int(per_sample[bad])} <vid_patch> tokens but its video has {n} feature tokens"
        )
    if span.start_id is not None:
        starts = (input_ids == span.start_id).sum(1)
        ends = (input_ids == span.end_id).sum(1)
        if (starts != 1).any() or (ends != 1).any():
            bad = int(((starts != 1) | (ends != 1)).nonzero()[0, 0])
            raise ValueError(
                f"sample {bad} has {int(starts[bad])} <vid_start> and {int(ends[bad])} <vid_end> tokens; "
                f"expected one of each around the video"
            )
        start_pos = (input_ids == span.start_id).int().argmax(1)  # (B,)
        after = input_ids.gather(1, (start_pos + n + 1).clamp(max=input_ids.shape[1] - 1).unsqueeze(1))
        if (after.squeeze(1) != span.end_id).any():
            raise ValueError(f"the {n} <vid_patch> tokens are not contiguous between <vid_start> and <vid_end>")


def check_packed_spans(row: torch.LongTensor, num_videos: int, n: int, span: VideoSpan) -> None:
    """A packed row (``--packing``) holds ``num_videos`` separate spans of exactly ``n`` contiguous ``<vid_patch>``
    tokens (each between ``<vid_start>`` and ``<vid_end>`` when ``span`` has them)."""
    edges = torch.diff((row == span.patch_id).int(), prepend=row.new_zeros(1), append=row.new_zeros(1))
    starts, ends = (edges == 1).nonzero().flatten(), (edges == -1).nonzero().flatten()
    if len(starts) != num_videos:
        raise ValueError(f"the packed row has {len(starts)} <vid_patch> spans but {num_videos} videos")
    spans = ends - starts
    if (spans != n).any():
        bad = int((spans != n).nonzero()[0, 0])
        raise ValueError(f"packed sample {bad} has {int(spans[bad])} <vid_patch> tokens but its video has {n}")
    if span.start_id is not None:
        before = row[(starts - 1).clamp(min=0)]
        after = row[ends.clamp(max=len(row) - 1)]
        if (
            (starts == 0).any()
            or (before != span.start_id).any()
            or (ends == len(row)).any()
            or (after != span.end_id).any()
        ):
            raise ValueError(f"the packed row's {n}-token video spans are not between <vid_start> and <vid_end>")


class VideoChatGPTModel(LlamaModel):
    """``LlamaModel`` with the video projector ``mm_projector`` (``mm_hidden_size -> hidden_size``)."""

    config_class = VideoChatGPTConfig

    def __init__(self, config: VideoChatGPTConfig):
        super().__init__(config)
        if not config.mm_hidden_size:
            raise ValueError("config.mm_hidden_size (the width of the video features) is not set")
        self.mm_projector = build_projector(config.mm_projector_type, config.mm_hidden_size, config.hidden_size)


class VideoMixin:
    """The video parts shared by both model classes. Needs ``self.config``, ``self.model`` (holds ``mm_projector``
    and the trainable rows), ``get_input_embeddings``/``get_output_embeddings``/``resize_token_embeddings``,
    ``_decoder()`` (the LM body: embeddings in, hidden states out) and ``_generate(inputs_embeds=...)``."""

    # ----------------------------------------------------------------------------------------------------- tokens
    def train_token_rows(self, token_ids: list[int]) -> None:
        """Make only the input-embedding rows ``token_ids`` trainable, as a separate fp32 parameter (k, H)."""
        ids = torch.tensor(sorted(set(token_ids)), dtype=torch.long)
        weight = self.get_input_embeddings().weight
        self.model.register_buffer("video_token_embed_ids", ids.to(weight.device), persistent=False)
        self.model.video_token_embeds = nn.Parameter(weight.detach()[ids.to(weight.device)].float().clone())

    def _trainable_rows(self) -> tuple[torch.Tensor, nn.Parameter] | None:
        rows = getattr(self.model, "video_token_embeds", None)
        return None if rows is None else (self.model.video_token_embed_ids, rows)

    # ------------------------------------------------------------------------------------------------- embedding
    def token_embeddings(self, input_ids: torch.LongTensor) -> torch.Tensor:
        """(B, L) ids -> (B, L, H): the input embedding, the trainable video-token rows (when training them) in."""
        embeds = self.get_input_embeddings()(input_ids)  # (B, L, H), frozen backbone dtype
        trainable = self._trainable_rows()
        if trainable is not None:
            ids, rows = trainable
            sel = (input_ids.unsqueeze(-1) == ids).to(rows.dtype)  # (B, L, k) one-hot of the trainable tokens
            embeds = torch.where(sel.sum(-1, keepdim=True) > 0, (sel @ rows).to(embeds.dtype), embeds)
        return embeds

    def decoder_inputs(self, input_ids: torch.LongTensor, video_features: torch.Tensor | None) -> torch.Tensor:
        """(B, L) ids + (B, N, C) features -> (B, L, H): exactly what the decoder reads (``inputs_embeds``).

        The token embeddings with the N ``<vid_patch>`` positions replaced by the projected features
        (``place_video``). ``forward`` (training, scoring) and ``generate_with_video`` call this one function, and
        ``export-lm``'s prompt embeddings (``model/export.py``, what vLLM is sent) use ``place_video`` on the exported
        table, so the routes cannot drift apart.
        """
        embeds = self.token_embeddings(input_ids)
        if video_features is None:
            return embeds
        return place_video(embeds, input_ids, video_features, self.model.mm_projector, VideoSpan.of(self.config))

    # --------------------------------------------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        video_spatio_temporal_features: torch.Tensor | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Standard causal-LM forward; ``video_spatio_temporal_features`` (B, N, C) fill the patch positions.

        With ``labels``, only the supervised positions reach ``lm_head``: the loss is the mean (or, when the
        Trainer passes ``num_items_in_batch`` for gradient accumulation, the sum divided by it) of the token
        cross-entropies, and ``logits`` is None.

        A packed batch (``--packing``, ``data.dataset.PackedVideoDataCollator``): ids (1, L) holding B samples,
        ``position_ids`` restarting at 0 per sample, no ``attention_mask``; transformers keeps attention within each
        sample (block-diagonal mask, or flash-attn's varlen kernel), the first label of each sample is ignored, so
        loss and gradients are the padded batch's.
        """
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        if labels is not None:
            # A loss forward needs no cache, and a cache would hide a packed row (--packing) from transformers: it
            # reads the sample boundaries from position_ids only when there is neither attention_mask nor cache.
            use_cache = False
        if inputs_embeds is None:
            inputs_embeds = self.decoder_inputs(input_ids, video_spatio_temporal_features)
        outputs = self._decoder()(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            **kwargs,
        )
        hidden = outputs.last_hidden_state  # (B, L, H)
        if labels is None:
            logits = self.get_output_embeddings()(slice_logits_to_keep(hidden, logits_to_keep))
            return CausalLMOutputWithPast(logits=logits, cache=outputs.cache)
        target = labels[:, 1:]  # position t predicts token t+1
        supervised = target != IGNORE_INDEX  # (B, L-1)
        picked = hidden[:, :-1][supervised]  # (M, H): only M supervised positions get logits
        logits = self.get_output_embeddings()(picked).float()  # (M, V)
        loss = F.cross_entropy(logits, target[supervised], reduction="sum")
        denom = num_items_in_batch if num_items_in_batch is not None else supervised.sum().clamp(min=1)
        if torch.is_tensor(denom):
            denom = denom.to(loss.device)
        return CausalLMOutputWithPast(loss=loss / denom, logits=None)

    # ----------------------------------------------------------------------------------------------- generation
    @torch.inference_mode()
    def generate_with_video(
        self,
        input_ids: torch.LongTensor,
        video_features: torch.Tensor | None,
        attention_mask: torch.Tensor | None = None,
        **generate_kwargs,
    ) -> torch.LongTensor:
        """Generate from a prompt with a video span; returns only the new token ids (B, T_new). ``attention_mask``
        (B, T): 0 on the left padding of a batch of prompts of different lengths (default: all ones)."""
        embeds = self.decoder_inputs(input_ids, video_features)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return self._generate(inputs_embeds=embeds, attention_mask=attention_mask, **generate_kwargs)

    # -------------------------------------------------------------------------------------------------- artefact
    def input_embedding_key(self) -> str:
        """The input embedding's name in this model's state dict (``model.embed_tokens.weight`` for the document's
        base, ``language_model.model.embed_tokens.weight`` for a composed one), e.g. in DeepSpeed's gathered one."""
        weight = self.get_input_embeddings().weight
        return next(name for name, param in self.named_parameters() if param is weight)

    def full_input_embedding(self) -> torch.Tensor:
        """(V, H) fp32 input embedding with the trainable rows folded in."""
        weight = self.get_input_embeddings().weight.detach().float().clone()
        trainable = self._trainable_rows()
        if trainable is not None:
            ids, rows = trainable
            weight[ids.to(weight.device)] = rows.detach().float().to(weight.device)
        return weight

    def projector_tensors(self) -> dict[str, torch.Tensor]:
        """``model.mm_projector.*`` fp32 on CPU (for ``linear`` the original's ``weight``/``bias``)."""
        return {
            PROJECTOR_PREFIX + k: v.detach().float().cpu().clone()
            for k, v in self.model.mm_projector.state_dict().items()
        }

    def projector_state_dict(self) -> dict[str, torch.Tensor]:
        """The saved artefact ``mm_projector.bin``: ``projector_tensors`` and the full fp32
        ``model.embed_tokens.weight`` with the trained rows folded in."""
        return {**self.projector_tensors(), EMBED_TOKENS_KEY: self.full_input_embedding().cpu()}


class VideoChatGPTForCausalLM(VideoMixin, LlamaForCausalLM):
    """The document's base: LLaMA with the video projector (``VideoMixin``), checkpoints exactly the original's."""

    config_class = VideoChatGPTConfig
    _keys_to_ignore_on_load_unexpected = [r"model\.vision_tower\..*"]  # LLaVA deltas may carry a CLIP copy

    def __init__(self, config: VideoChatGPTConfig):
        # Build the body once (LlamaForCausalLM.__init__ would build a LlamaModel first, then we would replace it).
        LlamaPreTrainedModel.__init__(self, config)
        self.model = VideoChatGPTModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def _decoder(self) -> nn.Module:
        return self.model

    def _generate(self, **kwargs):
        return self.generate(**kwargs)


class VideoAdapter(nn.Module):
    """The video parts of a ``VideoLanguageModel``: ``mm_projector`` (and, once ``train_token_rows`` ran, the
    trainable rows ``video_token_embeds`` (k, H) with their ids ``video_token_embed_ids``)."""

    def __init__(self, projector: nn.Module):
        super().__init__()
        self.mm_projector = projector


class VideoLanguageModel(VideoMixin, nn.Module):
    """Any causal LM (``AutoModelForCausalLM``: Llama-3.x, Mistral, Qwen2.5, a LLaVA-1.5 folder's Vicuna) reading
    projected video tokens. Composition: ``language_model`` is the LM itself, ``model`` the ``VideoAdapter``.

    ``config`` is the language model's own config with the multimodal fields of ``MM_CONFIG_KEYS`` set on it (so a
    saved ``config.json`` is the LM's plus those keys). LoRA / peft: wrap ``language_model`` (its linear layers are
    ``language_model.named_modules()`` of type ``nn.Linear``; ``lm_head`` is its output layer).
    """

    main_input_name = "input_ids"
    _keys_to_ignore_on_save = None
    # Name of the input embedding in the base folder's checkpoint (the trainer saves the frozen rows from there).
    base_embedding_key = EMBED_TOKENS_KEY

    def __init__(self, language_model: nn.Module, projector_type: str, mm_hidden_size: int, **mm_fields):
        super().__init__()
        self.language_model = language_model
        self.config = language_model.config
        hidden = self.config.hidden_size
        for key, value in {"mm_hidden_size": mm_hidden_size, "mm_projector_type": projector_type, **mm_fields}.items():
            setattr(self.config, key, value)
        for key in MM_CONFIG_KEYS:
            if not hasattr(self.config, key):
                setattr(self.config, key, None)
        self.model = VideoAdapter(build_projector(projector_type, mm_hidden_size, hidden))
        self.model.to(next(language_model.parameters()).device)

    # What the mixin and the Trainer need, delegated to the language model.
    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def resize_token_embeddings(self, new_num_tokens: int, **kwargs):
        return self.language_model.resize_token_embeddings(new_num_tokens, **kwargs)

    def _decoder(self) -> nn.Module:
        return self.language_model.get_decoder()

    def _generate(self, **kwargs):
        return self.language_model.generate(**kwargs)

    def save_pretrained(self, folder: str | Path, state_dict: dict[str, torch.Tensor] | None = None, **kwargs) -> None:
        """The whole model (full fine-tune, merged LoRA) as a causal-LM folder: the language model's own
        ``save_pretrained`` (its weight names, its config with the ``mm_*`` fields), which ``load_video_model`` reads
        back as kind ``causal_lm`` whatever the base was; the projector goes to ``mm_projector.bin`` (the trainer
        and merge-lora write it). ``state_dict``: this model's (e.g. DeepSpeed's gathered one); the
        ``language_model.`` entries are saved."""
        self.config.video_chatgpt_base_kind = "causal_lm"  # the folder written is a causal LM, not a LLaVA-1.5 one
        if state_dict is not None:
            prefix = "language_model."
            state_dict = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        self.language_model.save_pretrained(folder, state_dict=state_dict, **kwargs)

    @property
    def dtype(self) -> torch.dtype:
        return self.language_model.dtype

    @property
    def device(self) -> torch.device:
        return self.language_model.device

    @property
    def is_activation_checkpointing(self) -> bool:
        return bool(getattr(self.language_model, "is_activation_checkpointing", False))

    def activation_checkpointing_enable(self, **kwargs) -> None:
        self.language_model.activation_checkpointing_enable(**kwargs)

    def activation_checkpointing_disable(self) -> None:
        self.language_model.activation_checkpointing_disable()
