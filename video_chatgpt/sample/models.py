"""Tiny offline stand-ins for the real model folders, laid out exactly like them.

* ``make_tiny_llava(path)``: a folder shaped like ``LLaVA-7B-Lightening-v1-1``: a LLaMA-architecture causal LM
  (few layers, small hidden size), ``config.json`` with LLaVA's ``mm_*`` keys and ``model_type: "llava"``,
  weights as PyTorch ``.bin`` shards with ``pytorch_model.bin.index.json`` (or safetensors shards), LLaVA's image
  projector ``model.mm_projector.{weight,bias}``, and the slow SentencePiece tokenizer layout (``tokenizer.model``,
  ``tokenizer_config.json``, ``special_tokens_map.json``, ``added_tokens.json`` with ``<im_patch>``/``<im_start>``/
  ``<im_end>`` = 32000-32002). No ``tokenizer.json``, as in the real folder.
* ``make_tiny_clip(path)``: a ``CLIPVisionModel`` folder with the real ViT-L/14 geometry where it matters for shapes
  (224 px, patch 14, so 16x16 = 256 patch tokens) and the real ``preprocessor_config.json``, but tiny width/depth.

Both are written with ``save_pretrained``/``torch.save`` and are meant to be read back only through the code paths
real weights take. The SentencePiece file is Mistral's v1 vocabulary in LLaMA's format (not LLaMA's own vocabulary),
shipped in the PyPI package ``mistral-common`` (32000 pieces, ``<unk>``/``<s>``/``</s>`` = 0/1/2).

CLI: ``video-chatgpt sample models --out runs/sample/models``
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from video_chatgpt.bases import open_base
from video_chatgpt.constants import IGNORE_INDEX, IMAGE_END_TOKEN, IMAGE_PATCH_TOKEN, IMAGE_START_TOKEN
from video_chatgpt.data.conversation import inference_template, render_sample, training_template
from video_chatgpt.data.tokenizer import SegmentEncoder, add_video_tokens, load_hf_tokenizer
from video_chatgpt.model.video_chatgpt import VideoChatGPTForCausalLM, video_config
from video_chatgpt.sample.world import language_corpus
from video_chatgpt.weights.checkpoint import find_checkpoint, iter_tensors, read_tensor_infos

# The real ViT-L/14 preprocessor_config.json (openai/clip-vit-large-patch14), verbatim in content.
CLIP_PREPROCESSOR_CONFIG = {
    "crop_size": 224,
    "do_center_crop": True,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
    "size": 224,
}


def llama_sentencepiece_file() -> Path:
    """Path of the LLaMA-format SentencePiece model shipped in ``mistral-common`` (without importing that package)."""
    spec = importlib.util.find_spec("mistral_common")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the sample tokenizer needs the PyPI package 'mistral-common' (pip install -e '.[sample]' in the repository, or pip install mistral-common)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "tokenizer.model.v1"
    if not path.is_file():
        raise RuntimeError(f"mistral-common is installed but {path} is missing")
    return path


@dataclass(frozen=True)
class TinyLlavaSpec:
    """Sizes of the tiny LLaVA-like model. Defaults: ~2.5M parameters, most of them the 32003-row embeddings."""

    hidden_size: int = 64
    intermediate_size: int = 172
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    mm_hidden_size: int = 32  # width of the vision tower whose features the projector reads
    max_position_embeddings: int = 2048
    seed: int = 0


@dataclass(frozen=True)
class TinyClipSpec:
    """Sizes of the tiny CLIP vision tower. Image 224 / patch 14 keep the real 16x16 patch grid."""

    hidden_size: int = 32
    intermediate_size: int = 64
    num_hidden_layers: int = 3
    num_attention_heads: int = 4
    image_size: int = 224
    patch_size: int = 14
    seed: int = 0


# The decoder sizes every tiny LM spec has, passed to its transformers config as they are.
LM_SIZES = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")


def spec_kwargs(spec, *names: str) -> dict:
    """A spec's fields as config keyword arguments: ``names``, or all of them but the seed."""
    return {n: getattr(spec, n) for n in names or [f.name for f in fields(spec) if f.name != "seed"]}


def clip_vision_config(spec: TinyClipSpec):
    """The ``CLIPVisionConfig`` of a tiny CLIP spec."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(**spec_kwargs(spec), projection_dim=spec.hidden_size)


def _save_shard(chunk: dict[str, torch.Tensor], path: Path) -> None:
    """One checkpoint file: safetensors (``.safetensors``) or ``torch.save`` (``.bin``)."""
    from safetensors.torch import save_file

    if path.suffix == ".safetensors":
        save_file(chunk, str(path), metadata={"format": "pt"})
    else:
        torch.save(chunk, path)


def write_llava_tokenizer(path: Path) -> None:
    """Write the slow SentencePiece tokenizer layout of LLaVA-7B-Lightening-v1-1 (32003 tokens) into ``path``."""
    path.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(llama_sentencepiece_file(), path / "tokenizer.model")
    (path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "LlamaTokenizer",
                "add_bos_token": True,
                "add_eos_token": False,
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "pad_token": None,
                "clean_up_tokenization_spaces": False,
                "model_max_length": 2048,
                "padding_side": "right",
                "legacy": True,
            },
            indent=2,
        )
    )
    (path / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"}, indent=2)
    )
    (path / "added_tokens.json").write_text(
        json.dumps({IMAGE_PATCH_TOKEN: 32000, IMAGE_START_TOKEN: 32001, IMAGE_END_TOKEN: 32002}, indent=2)
    )


def write_sharded_state_dict(
    state_dict: dict[str, torch.Tensor], path: Path, num_shards: int, safetensors: bool
) -> list[str]:
    """Write ``state_dict`` as ``num_shards`` checkpoint shards plus the HF index file. Returns the shard names.

    ``.bin`` shards are named ``pytorch_model-0000i-of-0000n.bin`` with ``pytorch_model.bin.index.json`` (the
    layout of the 2023 LLaVA folders); safetensors shards ``model-0000i-of-0000n.safetensors`` with
    ``model.safetensors.index.json``. One shard is written without an index, as ``save_pretrained`` does.
    """
    names = list(state_dict)
    num_shards = max(1, min(num_shards, len(names)))
    per = -(-len(names) // num_shards)
    ext, stem, index_name = (
        ("safetensors", "model", "model.safetensors.index.json")
        if safetensors
        else ("bin", "pytorch_model", "pytorch_model.bin.index.json")
    )
    weight_map: dict[str, str] = {}
    shard_files = []
    total = 0
    for i in range(num_shards):
        chunk = {k: state_dict[k].contiguous() for k in names[i * per : (i + 1) * per]}
        if not chunk:
            continue
        fname = f"{stem}.{ext}" if num_shards == 1 else f"{stem}-{i + 1:05d}-of-{num_shards:05d}.{ext}"
        _save_shard(chunk, path / fname)
        shard_files.append(fname)
        for k, v in chunk.items():
            weight_map[k] = fname
            total += v.numel() * v.element_size()
    if num_shards > 1:
        (path / index_name).write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
        )
    return shard_files


def make_tiny_clip(path: str | Path, spec: TinyClipSpec = TinyClipSpec()) -> Path:
    """Create a tiny ``CLIPVisionModel`` folder (config, safetensors weights, real ViT-L/14 preprocessor config)."""
    from transformers import CLIPVisionModel

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(spec.seed)
    CLIPVisionModel(clip_vision_config(spec)).save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps(CLIP_PREPROCESSOR_CONFIG, indent=2))
    return path


def tiny_llava_state_dict(spec: TinyLlavaSpec, vocab_size: int = 32003) -> tuple[dict[str, torch.Tensor], dict]:
    """Random LLaMA weights plus LLaVA's image projector, and the matching LLaMA config dict (no ``mm_*`` keys)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(spec.seed)
    config = LlamaConfig(
        **spec_kwargs(spec, *LM_SIZES, "max_position_embeddings"),
        vocab_size=vocab_size,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    model = LlamaForCausalLM(config)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    projector = torch.nn.Linear(spec.mm_hidden_size, spec.hidden_size)
    state["model.mm_projector.weight"] = projector.weight.detach().clone()
    state["model.mm_projector.bias"] = projector.bias.detach().clone()
    return state, config.to_dict()


def llava_config_dict(llama_config: dict, spec: TinyLlavaSpec, vision_tower: str) -> dict:
    """The config.json of a June-2023 LLaVA checkpoint: LLaMA fields plus LLaVA's keys."""
    keep = {
        k: llama_config[k]
        for k in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "max_position_embeddings",
            "rms_norm_eps",
            "hidden_act",
            "initializer_range",
            "bos_token_id",
            "eos_token_id",
            "pad_token_id",
            "tie_word_embeddings",
        )
        if k in llama_config
    }
    return {
        "_name_or_path": "LLaVA-7B-Lightening-v1-1",
        "architectures": ["LlavaLlamaForCausalLM"],
        "model_type": "llava",
        **keep,
        "torch_dtype": "float16",
        "use_cache": True,
        "mm_vision_tower": vision_tower,
        "mm_hidden_size": spec.mm_hidden_size,
        "mm_use_im_start_end": True,
        "mm_vision_select_layer": -2,
        "use_mm_proj": True,
        "tune_mm_mlp_adapter": False,
        "freeze_mm_mlp_adapter": False,
        "sep_image_conv_front": False,
        "image_aspect_ratio": "square",
    }


def make_tiny_llava(
    path: str | Path,
    vision_tower: str | Path,
    spec: TinyLlavaSpec = TinyLlavaSpec(),
    num_shards: int = 2,
    safetensors: bool = False,
    dtype: torch.dtype = torch.float16,
) -> Path:
    """Create a tiny LLaVA-7B-Lightening-v1-1-shaped folder at ``path``. ``vision_tower`` goes to ``mm_vision_tower``.

    Weights are stored in ``dtype`` (fp16, as the real folder) in ``num_shards`` shards.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state, llama_config = tiny_llava_state_dict(spec)
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    write_sharded_state_dict(state, path, num_shards=num_shards, safetensors=safetensors)
    config = llava_config_dict(llama_config, spec, str(vision_tower))
    (path / "config.json").write_text(json.dumps(config, indent=2))
    (path / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}, indent=2)
    )
    write_llava_tokenizer(path)
    return path


def make_sample_models(out: str | Path, safetensors: bool = False) -> dict[str, Path]:
    """Create ``out/clip-vit-tiny`` and ``out/LLaVA-7B-Lightening-v1-1-tiny``; returns their paths by role."""
    out = Path(out)
    clip = make_tiny_clip(out / "clip-vit-tiny")
    llava = make_tiny_llava(out / "LLaVA-7B-Lightening-v1-1-tiny", vision_tower=clip.resolve(), safetensors=safetensors)
    return {"vision_tower": clip, "llava": llava}


# Video tokens of the sample's features: 100 frames + the tiny tower's 16 x 16 patches (as ViT-L/14 at 224 px).
SAMPLE_VIDEO_TOKENS = 356


def pretrain_language(
    folder: str | Path,
    conversations: list[list[dict]],
    captions: list[str],
    steps: int = 300,
    lr: float = 3e-3,
    batch_size: int = 16,
    seed: int = 0,
    num_video_tokens: int = SAMPLE_VIDEO_TOKENS,
) -> list[float]:
    """Teach a tiny base model the sample's language and to read a video span, in place, without any video.

    LLaVA is a trained LM that reads projected visual tokens from a span of its input; a random LM cannot be
    steered by a projector at all, and one taught only text (the caption written out where the video will be)
    learns to copy from that exact place and wording, not from a span of hundreds of tokens. So here every
    conversation's ``<video>`` becomes a span shaped like the real one: ``num_video_tokens`` embeddings between two
    bracket vectors (the mean of the embedding rows before ``<vid_start>``, where training initialises
    ``<vid_start>``/``<vid_end>``). A random fraction (20-100%) of the span holds the word embeddings of the video's
    caption (``captions[i]``, e.g. "a red square moving left"; words drawn at random, scaled and noised), the rest
    noise around a random common offset (as a projector maps uninformative video tokens to one place). The model
    thus learns the answers' wording and to find the facts anywhere in the span; it never sees a video or a video
    feature: turning the features into something it reads there is what the video projector learns in training.

    ``folder`` is either base the training code takes (``bases.open_base``):

    * a LLaVA-v1 folder (``make_tiny_llava``): the document's training and inference templates (``vicuna_v1_1``,
      ``video-chatgpt_v1``: the chat uses the other system prompt);
    * a causal chat LM (``make_tiny_chat_lm``): the templates of its two training stages, as training renders them
      (``data.conversation.training_template``): ``plain`` (stage 1: the span, then the answer) and the tokenizer's
      own chat template (stage 2 and inference, ``inference_template``).

    One template is drawn at random per conversation. Rendering is the training code's (``render_sample``) with the
    video token ids training gives (added to an in-memory copy of the tokenizer; the folder's is not written).

    Trains the whole LM (not a projector) with AdamW in fp32 (loss on the answers only) and writes the weights
    back into the folder's own shards. Returns the loss of every step.
    """
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    base = open_base(folder)
    if base.is_llava_hf:
        raise ValueError(
            f"{folder}: language pretraining takes a LLaVA-v1 folder or a causal LM, not a llava_hf folder"
        )
    tokenizer = load_hf_tokenizer(folder)
    # The ids training gives <vid_patch>/<vid_start>/<vid_end> (the document's --mm_use_vid_start_end). They may lie
    # beyond the embedding table; their positions are never looked up (span and brackets are put in directly).
    span_ids, _ = add_video_tokens(tokenizer, use_start_end=True)
    encoder = SegmentEncoder(tokenizer)
    # A causal LM trains in two stages (--stage pretrain, then finetune: build_other_base); LLaVA in the document's one.
    stages = ("pretrain", None) if base.is_causal_lm else (None,)
    trained = [training_template(base, tokenizer, stage) for stage in stages]
    templates = tuple(dict.fromkeys(t for train in trained for t in (train, inference_template(train))))
    gen = torch.Generator().manual_seed(seed)
    samples = []
    for conv, caption in zip(conversations, captions, strict=True):
        template = templates[int(torch.randint(len(templates), (), generator=gen))]
        r = render_sample(conv, encoder, span_ids, num_video_tokens, template=template)
        if r.num_video_spans != 1:
            raise ValueError(f"a pretraining conversation must hold one <video>, got {r.num_video_spans}: {conv}")
        samples.append((torch.tensor(r.input_ids), torch.tensor(r.labels), torch.tensor(encoder.encode(caption))))
    if base.is_llava_v1:
        model = VideoChatGPTForCausalLM.from_pretrained(folder, config=video_config(base.config), dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    stored_dtype = {k: info.dtype for k, info in read_tensor_infos(find_checkpoint(folder)).items()}
    body = [p for n, p in model.named_parameters() if "mm_projector" not in n]
    optim = torch.optim.AdamW(body, lr=lr, weight_decay=0.0)
    embed = model.get_input_embeddings()
    losses = []
    model.train()
    from tqdm import tqdm

    for step in tqdm(range(steps), desc="language pretraining", unit="step", mininterval=2.0):
        pick = torch.randint(len(samples), (batch_size,), generator=gen).tolist()
        longest = max(len(samples[i][0]) for i in pick)
        ids = torch.full((batch_size, longest), encoder.pad_id)
        labels = torch.full((batch_size, longest), IGNORE_INDEX)
        mask = torch.zeros((batch_size, longest), dtype=torch.long)
        for b, i in enumerate(pick):
            k = len(samples[i][0])
            ids[b, :k], labels[b, :k], mask[b, :k] = samples[i][0], samples[i][1], 1
        spans = [_caption_span(embed, samples[i][2], num_video_tokens, gen) for i in pick]  # (N, H) each
        is_patch = ids == span_ids.patch  # (B, L)
        is_bracket = ((ids == span_ids.start) | (ids == span_ids.end)).unsqueeze(-1)
        embeds = embed(torch.where(is_patch | is_bracket.squeeze(-1), encoder.pad_id, ids))  # (B, L, H)
        embeds = embeds.masked_scatter(is_patch.unsqueeze(-1), torch.stack(spans))
        # Where <vid_start>/<vid_end> start in training: the mean of the rows before <vid_start> (fit_vocabulary).
        bracket = embed.weight.detach()[: span_ids.start].mean(dim=0)
        embeds = torch.where(is_bracket, bracket, embeds)
        for group in optim.param_groups:  # cosine decay to 10%
            group["lr"] = lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        loss = model(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss  # logits at answer tokens only
        loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
        losses.append(loss.item())
    new_state = {k: v.detach().to(stored_dtype[k]) for k, v in model.state_dict().items() if k in stored_dtype}
    _write_folder_state(folder, new_state)
    return losses


def _caption_span(embed: torch.nn.Embedding, caption_ids: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """(n, H) stand-in for a projected video: the caption's word embeddings at a random 20-100% of the positions
    (at least one), noise around a random common offset elsewhere; scales relative to the caption's embeddings."""
    words = embed(caption_ids)  # (W, H), with gradient: the words are the model's own
    scale = words.detach().pow(2).mean().sqrt()
    hidden = words.shape[1]

    def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(shape, generator=gen)

    offset = torch.randn(hidden, generator=gen) * uniform(0.0, 1.0) * scale
    noise = offset + torch.randn(n, hidden, generator=gen) * uniform(0.0, 1.5) * scale
    informative = torch.rand(n, generator=gen) < uniform(0.2, 1.0)
    informative[torch.randint(n, (1,), generator=gen)] = True
    picked = words[torch.randint(len(caption_ids), (n,), generator=gen)] * uniform(0.5, 1.5, n, 1)
    return torch.where(informative.unsqueeze(1), picked + 0.3 * noise, noise)


def _read_folder_state(folder: Path) -> dict[str, torch.Tensor]:
    ckpt = find_checkpoint(folder)
    infos = read_tensor_infos(ckpt)
    return dict(iter_tensors(ckpt, list(infos), infos))


def _write_folder_state(folder: Path, state: dict[str, torch.Tensor]) -> None:
    """Write ``state`` back into the folder's existing shards (same files, same keys per file)."""
    ckpt = find_checkpoint(folder)
    for shard in ckpt.shards:
        keys = state if ckpt.weight_map is None else [k for k, v in ckpt.weight_map.items() if v == shard]
        _save_shard({k: state[k].contiguous() for k in keys}, ckpt.path(shard))


# ------------------------------------------------------------------------------------------- other bases
# Tiny chat-model families, each in its family's style: tokenizer specials, chat template, architecture class.
# The chat templates are simplified copies of the real ones (same role markers and whitespace around them).
LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
MISTRAL_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% else %}{{ ' ' + message['content'] + eos_token }}"
    "{% endif %}{% endfor %}"
)
QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# The pre-tokenizer split pattern of Llama-3 and Qwen2 (their tokenizer.json), shared by both byte-level families.
BYTE_LEVEL_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


@dataclass(frozen=True)
class ChatFamily:
    """How one family's tokenizer and model look: specials (bos/eos/pad/unk), pre-tokenizer, template, config."""

    name: str
    config_class: str  # transformers config class name
    specials: tuple[str, ...]
    bos: str | None
    eos: str
    pad: str | None
    unk: str | None
    byte_level: bool  # ByteLevel BPE (Llama-3, Qwen2) or SentencePiece-like Metaspace BPE (Mistral)
    chat_template: str
    tie_word_embeddings: bool = False
    pad_vocab_to: int = 1  # Qwen2 pads its embedding table beyond the tokenizer


CHAT_FAMILIES: dict[str, ChatFamily] = {
    "llama3": ChatFamily(
        "llama3",
        "LlamaConfig",
        ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
        bos="<|begin_of_text|>",
        eos="<|eot_id|>",
        pad=None,
        unk=None,
        byte_level=True,
        chat_template=LLAMA3_CHAT_TEMPLATE,
    ),
    "mistral": ChatFamily(
        "mistral",
        "MistralConfig",
        ("<unk>", "<s>", "</s>", "[INST]", "[/INST]"),
        bos="<s>",
        eos="</s>",
        pad=None,
        unk="<unk>",
        byte_level=False,
        chat_template=MISTRAL_CHAT_TEMPLATE,
    ),
    "qwen2": ChatFamily(
        "qwen2",
        "Qwen2Config",
        ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        bos=None,
        eos="<|im_end|>",
        pad="<|endoftext|>",
        unk=None,
        byte_level=True,
        chat_template=QWEN2_CHAT_TEMPLATE,
        tie_word_embeddings=True,
        pad_vocab_to=64,
    ),
}


@dataclass(frozen=True)
class TinyChatSpec:
    """Sizes of a tiny chat LM (hidden 32, 2 layers) and its BPE vocabulary."""

    hidden_size: int = 32
    intermediate_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    vocab_size: int = 600
    max_position_embeddings: int = 1024
    # Larger than the usual 0.02: a random LM initialised that small has flat logits (loss ln V whatever its input),
    # so a projector trained into it could not move the loss; at 0.3 the frozen LM's output depends on its input.
    initializer_range: float = 0.3
    seed: int = 0


# The quickstart's chat base (``--base qwen2``): the tiny LLaVA's width and depth (hidden 64, 2 layers), the usual
# 0.02 init (it is taught the language by ``pretrain_language``, so it needs no large init to react to its input),
# and room for the 356-token video span plus the chat template's turns (~450 tokens).
SAMPLE_CHAT_SPEC = TinyChatSpec(
    hidden_size=64, intermediate_size=172, max_position_embeddings=2048, initializer_range=0.02
)


def tokenizer_corpus() -> list[str]:
    """Text the tiny BPE tokenizers are trained on: the sample world's language plus unicode and role words."""

    conversations, captions = language_corpus(n=200, seed=0)
    lines = [str(t["value"]).replace("<video>", "") for conv in conversations for t in conv] + list(captions)
    lines += [
        "Café naïve déjà vu, 日本語のテキスト, Ünïcödé ✓ — “quotes”.",
        "user assistant system USER: ASSISTANT:",
        "The object is red. The object is green. The object is blue. The object is yellow.",
        "\n\n  \t",
    ]
    return lines


def train_chat_tokenizer(family: ChatFamily, spec: TinyChatSpec = TinyChatSpec()):
    """A tiny BPE tokenizer in ``family``'s style, trained offline with ``tokenizers``; returns a fast HF tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if family.byte_level:
        tok = Tokenizer(models.BPE())
        # Llama-3's / Qwen2's split pattern (newline runs are one piece: "\n\n" before an answer stays one token).
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(BYTE_LEVEL_SPLIT), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tok = Tokenizer(models.BPE(unk_token=family.unk, byte_fallback=False))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        alphabet = sorted(set("".join(tokenizer_corpus())) | {chr(c) for c in range(33, 127)} | {"▁"})
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size, special_tokens=list(family.specials), initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=family.bos,
        eos_token=family.eos,
        pad_token=family.pad,
        unk_token=family.unk,
        chat_template=family.chat_template,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )


def make_tiny_chat_lm(path: str | Path, family: str, spec: TinyChatSpec = TinyChatSpec()) -> Path:
    """Create a tiny chat model folder of ``family`` (``llama3``, ``mistral``, ``qwen2``) with ``save_pretrained``:
    random weights, a BPE tokenizer trained here (``tokenizer.json``) and the family's chat template."""
    import transformers
    from transformers import AutoModelForCausalLM

    fam = CHAT_FAMILIES[family]
    path = Path(path)
    tokenizer = train_chat_tokenizer(fam, spec)
    vocab = -(-len(tokenizer) // fam.pad_vocab_to) * fam.pad_vocab_to
    config = getattr(transformers, fam.config_class)(
        **spec_kwargs(spec, *LM_SIZES, "max_position_embeddings", "initializer_range"),
        vocab_size=vocab,
        tie_word_embeddings=fam.tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(spec.seed)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@dataclass(frozen=True)
class TinySiglipSpec(TinyClipSpec):
    """A tiny SigLIP vision tower, the tiny CLIP's sizes but patch 16 and 64 px (SigLIP-so400m/14-384 and base/16
    geometry, tiny width; no CLS token)."""

    image_size: int = 64
    patch_size: int = 16


def make_tiny_siglip(path: str | Path, spec: TinySiglipSpec = TinySiglipSpec()) -> Path:
    """Create a tiny ``SiglipVisionModel`` folder (config, weights, SigLIP's preprocessor config: mean/std 0.5)."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    path = Path(path)
    torch.manual_seed(spec.seed)
    SiglipVisionModel(SiglipVisionConfig(**spec_kwargs(spec))).save_pretrained(path)
    (path / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "do_normalize": True,
                "do_rescale": True,
                "do_resize": True,
                "image_mean": [0.5, 0.5, 0.5],
                "image_std": [0.5, 0.5, 0.5],
                "image_processor_type": "SiglipImageProcessor",
                "resample": 3,
                "rescale_factor": 1 / 255,
                "size": {"height": spec.image_size, "width": spec.image_size},
            },
            indent=2,
        )
    )
    return path


def make_tiny_llava_hf(path: str | Path, spec: TinyChatSpec = TinyChatSpec(), clip: TinyClipSpec | None = None) -> Path:
    """Create a tiny ``LlavaForConditionalGeneration`` folder (transformers layout, ``save_pretrained``): a Llama
    text model with the Vicuna/LLaMA SentencePiece tokenizer layout, a tiny CLIP tower inside, LLaVA-1.5's GELU
    projector (``multi_modal_projector.linear_1/linear_2``), ``vision_feature_layer -2``, strategy ``default``."""
    from transformers import LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    path = Path(path)
    clip = clip or TinyClipSpec(image_size=56, patch_size=14)
    # Vocabulary: LLaMA's 32000 + <image> (32000) + <pad> (32001), as llava-hf/llava-1.5-7b-hf.
    text = LlamaConfig(
        **spec_kwargs(spec, *LM_SIZES),
        vocab_size=32002,
        max_position_embeddings=2048,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=32001,
        tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=clip_vision_config(clip),
        text_config=text,
        image_token_index=32000,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    torch.manual_seed(spec.seed)
    LlavaForConditionalGeneration(config).save_pretrained(path)
    write_llava_tokenizer(path)
    (path / "added_tokens.json").write_text(json.dumps({"<image>": 32000, "<pad>": 32001}, indent=2))
    special = json.loads((path / "special_tokens_map.json").read_text())
    (path / "special_tokens_map.json").write_text(json.dumps({**special, "pad_token": "<pad>"}, indent=2))
    (path / "preprocessor_config.json").write_text(
        json.dumps({**CLIP_PREPROCESSOR_CONFIG, "crop_size": clip.image_size, "size": clip.image_size}, indent=2)
    )
    return path
