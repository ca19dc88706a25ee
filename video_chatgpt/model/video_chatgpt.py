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
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel, LlamaPreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep

from video_chatgpt.constants import (
    EMBED_TOKENS_KEY,
    IGNORE_INDEX,
    PROJECTOR_BIAS_KEY,
    PROJECTOR_WEIGHT_KEY,
)

logger = logging.getLogger(__name__)

# Keys of a LLaVA / Video-ChatGPT config.json that are not LLaMA fields but are kept on our config.
MM_CONFIG_KEYS = (
    "mm_vision_tower",
    "mm_hidden_size",
    "use_mm_proj",
    "mm_use_im_start_end",
    "mm_vision_select_layer",
    "mm_use_vid_start_end",
    "tune_mm_mlp_adapter",
    "freeze_mm_mlp_adapter",
    "sep_video_conv_front",
    "video_token_len",
    "num_video_frames",
    "video_patch_token_id",
    "video_start_token_id",
    "video_end_token_id",
)


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
        **kwargs,
    ):
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


def load_config(folder: str | Path, **overrides) -> VideoChatGPTConfig:
    """Read a LLaVA / Video-ChatGPT / LLaMA ``config.json`` as a ``VideoChatGPTConfig`` (never via AutoConfig).

    Raises ``ValueError`` for a current-transformers nested ``LlavaConfig`` (``text_config``/``vision_config``),
    which is a different model family.
    """
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no config.json; expected a model folder such as LLaVA-7B-Lightening-v1-1")
    raw = json.loads(path.read_text())
    if "text_config" in raw:
        raise ValueError(
            f"{path}: a nested (text_config/vision_config) LLaVA-1.5+ config; Video-ChatGPT needs a June-2023 "
            f"LLaVA-7B-Lightening-v1-1-style folder (a LLaMA config with mm_* keys)"
        )
    for key in ("model_type", "architectures", "_name_or_path", "transformers_version", "torch_dtype", "dtype"):
        raw.pop(key, None)
    raw.update(overrides)
    return VideoChatGPTConfig(**raw)


class VideoChatGPTModel(LlamaModel):
    """``LlamaModel`` with the video projector ``mm_projector`` (Linear ``mm_hidden_size -> hidden_size``)."""

    config_class = VideoChatGPTConfig

    def __init__(self, config: VideoChatGPTConfig):
        super().__init__(config)
        if not config.mm_hidden_size:
            raise ValueError("config.mm_hidden_size (the width of the video features) is not set")
        self.mm_projector = nn.Linear(config.mm_hidden_size, config.hidden_size)


class VideoChatGPTForCausalLM(LlamaForCausalLM):
    config_class = VideoChatGPTConfig
    _keys_to_ignore_on_load_unexpected = [r"model\.vision_tower\..*"]  # LLaVA deltas may carry a CLIP copy

    def __init__(self, config: VideoChatGPTConfig):
        # Build the body once (LlamaForCausalLM.__init__ would build a LlamaModel first, then we would replace it).
        LlamaPreTrainedModel.__init__(self, config)
        self.model = VideoChatGPTModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    # ----------------------------------------------------------------------------------------------------- tokens
    def add_video_token_rows(self, num_new_tokens: int, new_rows_from: int | None = None) -> None:
        """Resize the embeddings to ``len(tokenizer)``-many rows after new tokens were added.

        ``new_rows_from``: first row index (e.g. ``<vid_start>``) whose input and output rows are set to the mean
        of all earlier rows, as the original did; rows before it keep the resize init (``<vid_patch>``, which is
        always replaced by video features).
        """
        if num_new_tokens == 0:
            return
        old = self.get_input_embeddings().weight.shape[0]
        self.resize_token_embeddings(old + num_new_tokens, mean_resizing=False)
        if new_rows_from is not None:
            with torch.no_grad():
                for w in (self.get_input_embeddings().weight, self.get_output_embeddings().weight):
                    w[new_rows_from:] = w[:new_rows_from].float().mean(dim=0, keepdim=True).to(w.dtype)
        self.config.vocab_size = self.get_input_embeddings().weight.shape[0]

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
    def embed_with_video(self, input_ids: torch.LongTensor, video_features: torch.Tensor | None) -> torch.Tensor:
        """(B, L) ids + (B, N, C) features -> (B, L, H) input embeddings with the N patch embeddings replaced.

        Every sample of the batch must hold exactly one video span of N ``<vid_patch>`` tokens (bracketed by
        ``<vid_start>``/``<vid_end>`` when the config uses them); the errors show both counts.
        """
        embeds = self.get_input_embeddings()(input_ids)  # (B, L, H), frozen backbone dtype
        trainable = self._trainable_rows()
        if trainable is not None:
            ids, rows = trainable
            sel = (input_ids.unsqueeze(-1) == ids).to(rows.dtype)  # (B, L, k) one-hot of the trainable tokens
            embeds = torch.where(sel.sum(-1, keepdim=True) > 0, (sel @ rows).to(embeds.dtype), embeds)
        if video_features is None:
            return embeds
        cfg = self.config
        b, n, c = video_features.shape
        if b != input_ids.shape[0]:
            raise ValueError(f"{b} videos for a batch of {input_ids.shape[0]} samples")
        if c != cfg.mm_hidden_size:
            raise ValueError(f"video feature width {c} != config.mm_hidden_size {cfg.mm_hidden_size}")
        is_patch = input_ids == cfg.video_patch_token_id  # (B, L)
        per_sample = is_patch.sum(dim=1)
        if (per_sample != n).any():
            bad = int((per_sample != n).nonzero()[0, 0])
            raise ValueError(
                f"sample {bad} has {int(per_sample[bad])} <vid_patch> tokens but its video has {n} feature tokens"
            )
        if cfg.mm_use_vid_start_end:
            starts = (input_ids == cfg.video_start_token_id).sum(1)
            ends = (input_ids == cfg.video_end_token_id).sum(1)
            if (starts != 1).any() or (ends != 1).any():
                bad = int(((starts != 1) | (ends != 1)).nonzero()[0, 0])
                raise ValueError(
                    f"sample {bad} has {int(starts[bad])} <vid_start> and {int(ends[bad])} <vid_end> tokens; "
                    f"expected one of each around the video"
                )
            start_pos = (input_ids == cfg.video_start_token_id).int().argmax(1)  # (B,)
            after = input_ids.gather(1, (start_pos + n + 1).clamp(max=input_ids.shape[1] - 1).unsqueeze(1))
            if (after.squeeze(1) != cfg.video_end_token_id).any():
                raise ValueError(f"the {n} <vid_patch> tokens are not contiguous between <vid_start> and <vid_end>")
        projector = self.model.mm_projector
        feats = projector(video_features.to(projector.weight.dtype))  # (B, N, H)
        # Row-major masked_scatter puts sample b's N features on its N patch positions, in order.
        return embeds.masked_scatter(is_patch.unsqueeze(-1), feats.to(embeds.dtype))

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
        """
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        if inputs_embeds is None:
            inputs_embeds = self.embed_with_video(input_ids, video_spatio_temporal_features)
        outputs = self.model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            **kwargs,
        )
        hidden = outputs.last_hidden_state  # (B, L, H)
        if labels is None:
            logits = self.lm_head(slice_logits_to_keep(hidden, logits_to_keep))
            return CausalLMOutputWithPast(logits=logits, cache=outputs.cache)
        target = labels[:, 1:]  # position t predicts token t+1
        supervised = target != IGNORE_INDEX  # (B, L-1)
        picked = hidden[:, :-1][supervised]  # (M, H): only M supervised positions get logits
        logits = self.lm_head(picked).float()  # (M, V)
        loss = F.cross_entropy(logits, target[supervised], reduction="sum")
        denom = num_items_in_batch if num_items_in_batch is not None else supervised.sum().clamp(min=1)
        if torch.is_tensor(denom):
            denom = denom.to(loss.device)
        return CausalLMOutputWithPast(loss=loss / denom, logits=None)

    # ----------------------------------------------------------------------------------------------- generation
    @torch.inference_mode()
    def generate_with_video(
        self, input_ids: torch.LongTensor, video_features: torch.Tensor | None, **generate_kwargs
    ) -> torch.LongTensor:
        """Generate from a prompt with a video span; returns only the new token ids (B, T_new)."""
        embeds = self.embed_with_video(input_ids, video_features)
        attention_mask = torch.ones_like(input_ids)
        return self.generate(inputs_embeds=embeds, attention_mask=attention_mask, **generate_kwargs)

    # -------------------------------------------------------------------------------------------------- artefact
    def full_input_embedding(self) -> torch.Tensor:
        """(V, H) fp32 input embedding with the trainable rows folded in."""
        weight = self.get_input_embeddings().weight.detach().float().clone()
        trainable = self._trainable_rows()
        if trainable is not None:
            ids, rows = trainable
            weight[ids.to(weight.device)] = rows.detach().float().to(weight.device)
        return weight

    def projector_state_dict(self) -> dict[str, torch.Tensor]:
        """The saved artefact ``mm_projector.bin``: the original's three keys, fp32, on CPU."""
        proj = self.model.mm_projector
        return {
            PROJECTOR_WEIGHT_KEY: proj.weight.detach().float().cpu().clone(),
            PROJECTOR_BIAS_KEY: proj.bias.detach().float().cpu().clone(),
            EMBED_TOKENS_KEY: self.full_input_embedding().cpu(),
        }

    def load_projector_state_dict(self, state: dict[str, torch.Tensor], source: str = "projector file") -> None:
        """Load an ``mm_projector.bin`` (ours or the released ``video_chatgpt-7B.bin``), checking every shape."""
        proj = self.model.mm_projector
        missing = [k for k in (PROJECTOR_WEIGHT_KEY, PROJECTOR_BIAS_KEY) if k not in state]
        if missing:
            raise KeyError(f"{source}: missing {missing}; keys present: {sorted(state)[:8]}")
        for key, param in ((PROJECTOR_WEIGHT_KEY, proj.weight), (PROJECTOR_BIAS_KEY, proj.bias)):
            if tuple(state[key].shape) != tuple(param.shape):
                raise ValueError(f"{source}: {key} has shape {tuple(state[key].shape)}, model has {tuple(param.shape)}")
        with torch.no_grad():
            proj.weight.copy_(state[PROJECTOR_WEIGHT_KEY].to(proj.weight.dtype))
            proj.bias.copy_(state[PROJECTOR_BIAS_KEY].to(proj.bias.dtype))
            if EMBED_TOKENS_KEY in state:
                emb = self.get_input_embeddings().weight
                src = state[EMBED_TOKENS_KEY]
                if tuple(src.shape) != tuple(emb.shape):
                    raise ValueError(
                        f"{source}: {EMBED_TOKENS_KEY} has shape {tuple(src.shape)}, model embedding has "
                        f"{tuple(emb.shape)} (did the tokenizer get the video tokens?)"
                    )
                emb.copy_(src.to(emb.dtype))
                trainable = self._trainable_rows()
                if trainable is not None:
                    ids, rows = trainable
                    rows.copy_(src[ids.cpu()].to(rows.dtype))
        unexpected = sorted(set(state) - {PROJECTOR_WEIGHT_KEY, PROJECTOR_BIAS_KEY, EMBED_TOKENS_KEY})
        if unexpected:
            logger.warning("%s: ignored unexpected keys %s", source, unexpected[:8])


def projector_state_from_state_dict(state: dict[str, torch.Tensor], trainable_row_ids: list[int] | None) -> dict:
    """The ``mm_projector.bin`` artefact from a (gathered) model state dict, e.g. DeepSpeed ZeRO-3's consolidated one.

    ``trainable_row_ids``: the ids whose rows live in ``model.video_token_embeds`` and are folded into the embedding.
    """
    embed = state[EMBED_TOKENS_KEY].detach().float().cpu().clone()
    rows = state.get("model.video_token_embeds")
    if rows is not None and trainable_row_ids:
        embed[torch.tensor(sorted(set(trainable_row_ids)))] = rows.detach().float().cpu()
    return {
        PROJECTOR_WEIGHT_KEY: state[PROJECTOR_WEIGHT_KEY].detach().float().cpu().clone(),
        PROJECTOR_BIAS_KEY: state[PROJECTOR_BIAS_KEY].detach().float().cpu().clone(),
        EMBED_TOKENS_KEY: embed,
    }


def load_projector_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read an ``mm_projector.bin`` safely (``weights_only``: tensors only, no code)."""
    return torch.load(Path(path), map_location="cpu", weights_only=True)
