"""``video-chatgpt export-lm <run> <out>``: a run's language model as a plain Hugging Face causal-LM folder (for vLLM).

    video-chatgpt export-lm ./Video-ChatGPT_7B ./Video-ChatGPT_7B-lm                  # fp16 safetensors shards
    video-chatgpt export-lm ./qwen-run ./qwen-run-lm --dtype bf16 --max_shard_size 2GB
    vllm serve ./Video-ChatGPT_7B-lm --enable-prompt-embeds --served-model-name video-chatgpt   # see docs/vllm.md

``<run>`` is a training output folder (a projector run, a LoRA run, a full fine-tune, a merge-lora folder) of any
base. The model is built as ``chat`` builds it (base + video tokens + projector + adapter, fp32 on the CPU), a LoRA
adapter is merged, and ``<out>`` gets:

* the language model alone, as ``AutoModelForCausalLM`` (and vLLM) load it as it is: safetensors shards with the
  plain causal LM's tensor names (the document's base: ``LlamaForCausalLM``; a chat base: its own class, e.g.
  ``Qwen2ForCausalLM``), the trained ``<vid_start>``/``<vid_end>`` rows in its input embedding, and a
  ``config.json`` of that class with no ``mm_*``/video keys and no projector tensors;
* the tokenizer with the video tokens (``tokenizer.model`` too when the run or its base has one);
* ``mm_projector.bin``: the projector alone (``model.mm_projector.*``, fp32), the file ``load_projector`` reads;
* ``video_chatgpt_export.json`` (``ExportInfo``): what a client needs to rebuild the prompt embeddings that our
  model feeds its decoder: the video token ids, the number of video tokens, the feature width, the tower, the
  frames, the conversation template, the embedding's tensor name, the dtype.

``PromptEmbedder`` computes those embeddings from the folder on the CPU with only the input-embedding table and the
projector (no language model): the token rows with the projected features at the ``<vid_patch>`` positions, through
the same ``place_video`` as the model's own ``decoder_inputs``.

``<out>`` may not be, hold or sit inside the run, its base, its projector or its adapter (``files.check_output_folder``); it
is written into a hidden ``.<out>.partial-*`` folder beside it and renamed into place at the end
(``files.staged_folder``); an existing ``<out>`` is refused unless ``--overwrite`` (replaced whole by rename).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from video_chatgpt.args import command_parser
from video_chatgpt.bases import open_base
from video_chatgpt.constants import BASE_POINTER_FILE, MM_CONFIG_KEYS, PROJECTOR_FILE, PROJECTOR_PREFIX
from video_chatgpt.data.conversation import TRAIN_TEMPLATE, inference_template
from video_chatgpt.errors import UserError, run_main
from video_chatgpt.files import (
    check_output_folder,
    folder_lock,
    read_json,
    recover_killed_folder,
    staged_folder,
    write_json_atomically,
)
from video_chatgpt.model.loading import load_trained_model, read_projector_file, take_meta_buffers
from video_chatgpt.model.lora import has_lora, merge_adapter
from video_chatgpt.model.video_chatgpt import FILE_CONFIG_KEYS, VideoSpan, build_projector, place_video

logger = logging.getLogger(__name__)

EXPORT_INFO_FILE = "video_chatgpt_export.json"
EXPORT_FORMAT = 1
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass(frozen=True)
class ExportInfo:
    """``video_chatgpt_export.json``: how to rebuild the decoder input of the exported model (see the module doc)."""

    format: int
    architecture: str  # the causal LM class in config.json, e.g. LlamaForCausalLM
    dtype: str  # the weights' dtype (torch name: float16, bfloat16, float32)
    hidden_size: int  # H: width of a prompt embedding row
    vocab_size: int  # rows of the embedding table
    embedding_key: str  # the input embedding's tensor name in the safetensors shards
    projector_file: str  # mm_projector.bin
    projector_type: str  # linear | mlp2x_gelu
    feature_width: int  # C: width of the video features the projector takes
    video_token_len: int | None  # N video tokens per video the run trained with (None: the features decide)
    patch_token_id: int
    start_token_id: int | None  # None: the video span is not bracketed
    end_token_id: int | None
    template: str  # the conversation template inference uses (video-chatgpt_v1, chat, plain)
    vision_tower: str | None  # the tower the features come from
    num_frames: int  # frames sampled per video
    max_model_len: int | None  # the model's context (max_position_embeddings)
    exported_from: str  # the run folder

    @property
    def span(self) -> VideoSpan:
        return VideoSpan(self.patch_token_id, self.start_token_id, self.end_token_id, self.feature_width)

    @property
    def use_start_end(self) -> bool:
        return self.start_token_id is not None


def read_export_info(folder: str | Path) -> ExportInfo:
    """The ``ExportInfo`` of an ``export-lm`` folder; one ``UserError`` line naming the file when it is not one."""
    folder = Path(folder)
    path = folder / EXPORT_INFO_FILE
    if not path.is_file():
        raise UserError(f"{folder}: no {EXPORT_INFO_FILE}; name a folder written by video-chatgpt export-lm")
    raw = read_json(path, max_bytes=1 << 20, expect=dict)
    names = ExportInfo.__dataclass_fields__
    missing = [k for k in names if k not in raw]
    if missing or raw.get("format") != EXPORT_FORMAT:
        raise UserError(
            f"{path}: not an export-lm file of format {EXPORT_FORMAT} (format {raw.get('format')!r}, missing "
            f"{missing[:4]}); export the run again"
        )
    ints = ("hidden_size", "vocab_size", "feature_width", "patch_token_id", "num_frames")
    bad = [k for k in ints if not isinstance(raw[k], int) or isinstance(raw[k], bool) or raw[k] < 0]
    bad += [k for k in ("embedding_key", "projector_file", "projector_type", "template", "dtype") if not raw[k]]
    if bad or (raw["start_token_id"] is None) != (raw["end_token_id"] is None):
        raise UserError(f"{path}: bad values for {bad or ['start_token_id/end_token_id']}; export the run again")
    return ExportInfo(**{k: raw[k] for k in names})


# ------------------------------------------------------------------------------------------------ the export
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = command_parser("export-lm", __doc__)
    p.add_argument("run", help="training output folder (mm_projector.bin + video_chatgpt_base.json; LoRA: the adapter)")
    p.add_argument("out", help="folder to write: the plain causal LM, its tokenizer, the projector, the export info")
    p.add_argument("--dtype", default="fp16", choices=list(DTYPES), help="dtype of the LM weights (default fp16)")
    p.add_argument("--max_shard_size", default="5GB", help="largest safetensors shard (default 5GB)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing <out> (by rename, at the end)")
    return p.parse_args(argv)


def plain_language_model(model: nn.Module) -> nn.Module:
    """The video model's language model as a plain ``AutoModelForCausalLM`` of its own class (LoRA merged first by
    the caller): the same tensors (the input embedding with the trained video-token rows folded in), a config with
    no video keys, no projector. Built on the meta device and filled by assignment: no second copy in memory."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    lm = getattr(model, "language_model", None)
    if lm is None:  # the document's base: VideoChatGPTForCausalLM (a LlamaForCausalLM with the projector inside)
        config_class, source, prefix = LlamaConfig, model, ""
    else:
        config_class, source, prefix = type(lm.config), lm, "language_model."
    # Only the fields of the LM's own config class: not the video keys (MM_CONFIG_KEYS, the base kind), nor a LLaVA
    # config's extras (image_aspect_ratio, ...), nor the file's bookkeeping (model_type, architectures, ...).
    known = set(config_class().to_dict()) - {*MM_CONFIG_KEYS, *FILE_CONFIG_KEYS}
    fields = {k: v for k, v in model.config.to_dict().items() if k in known}
    config = config_class(**fields)
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = {k: v for k, v in source.state_dict().items() if not k.startswith(PROJECTOR_PREFIX)}
    state = {k: v for k, v in state.items() if not k.startswith("model.video_token_embed")}
    embed_key = model.input_embedding_key().removeprefix(prefix)
    state[embed_key] = model.full_input_embedding()
    expected = set(plain.state_dict())
    tied = bool(getattr(plain.config, "tie_word_embeddings", False))
    if tied:
        state.pop("lm_head.weight", None)
        expected.discard("lm_head.weight")
    if set(state) != expected:
        raise ValueError(
            f"the language model's tensors do not fit {type(plain).__name__}: extra {sorted(set(state) - expected)[:4]}, "
            f"missing {sorted(expected - set(state))[:4]}"
        )
    plain.load_state_dict(state, strict=False, assign=True)
    if tied:
        plain.tie_weights()
    take_meta_buffers(plain, source, "the plain language model were not filled")
    plain.generation_config = source.generation_config
    return plain


def export_lm(
    run: str | Path, out: str | Path, dtype: str = "fp16", max_shard_size: str = "5GB", overwrite: bool = False
) -> Path:
    """Write ``run``'s language model, tokenizer, projector and export info into ``out`` (see the module doc)."""
    run, out = Path(run), Path(out)
    if not run.is_dir():
        raise UserError(f"<run> {run}: " + ("no such folder" if not run.exists() else "is a file, not a run folder"))
    if not (run / BASE_POINTER_FILE).is_file():
        raise UserError(
            f"<run> {run}: not a training output folder (no {BASE_POINTER_FILE}); export-lm needs the folder a "
            f"training run or merge-lora wrote"
        )
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    base = open_base(run)
    if base.projector_file is None or not base.projector_file.is_file():
        raise UserError(f"<run> {run}: its projector {base.projector_file} is missing; export needs the trained one")
    inputs = {
        "<run>": run,
        "the run's base": base.folder,
        "the run's projector": base.projector_file,
        "the run's adapter": base.adapter,
    }
    with folder_lock(out, logger.info):
        for action in recover_killed_folder(out):
            logger.info(action)
        check_output_folder(out, inputs, "<out>", overwrite)

        model, tokenizer, video_ids = load_trained_model(base, torch.float32)
        if has_lora(model):
            merge_adapter(model)
        model.eval()
        try:
            plain = plain_language_model(model)
        except ValueError as exc:
            raise UserError(f"<run> {run}: {exc}") from exc
        torch_dtype = DTYPES[dtype]
        plain.to(torch_dtype)
        config = model.config
        projector = model.projector_tensors()
        info = ExportInfo(
            format=EXPORT_FORMAT,
            architecture=type(plain).__name__,
            dtype=str(torch_dtype).removeprefix("torch."),
            hidden_size=config.hidden_size,
            vocab_size=plain.get_input_embeddings().weight.shape[0],
            embedding_key=next(n for n, p in plain.named_parameters() if p is plain.get_input_embeddings().weight),
            projector_file=PROJECTOR_FILE,
            projector_type=getattr(config, "mm_projector_type", None) or "linear",
            feature_width=config.mm_hidden_size,
            video_token_len=base.video_token_len,
            patch_token_id=video_ids.patch,
            start_token_id=video_ids.start,
            end_token_id=video_ids.end,
            template=inference_template(base.trained_template or TRAIN_TEMPLATE),
            vision_tower=base.vision_tower,
            num_frames=base.num_frames,
            max_model_len=getattr(config, "max_position_embeddings", None),
            exported_from=str(run.resolve()),
        )
        with staged_folder(out) as tmp:
            plain.save_pretrained(tmp, max_shard_size=max_shard_size)
            tokenizer.save_pretrained(tmp)
            for folder in (run, base.folder):
                if (folder / "tokenizer.model").is_file() and not (tmp / "tokenizer.model").exists():
                    shutil.copyfile(folder / "tokenizer.model", tmp / "tokenizer.model")
            torch.save(projector, tmp / PROJECTOR_FILE)
            write_json_atomically(tmp / EXPORT_INFO_FILE, asdict(info), indent=2)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = export_lm(args.run, args.out, args.dtype, args.max_shard_size, args.overwrite)
    print(f"exported {args.run} -> {out} ({args.dtype}); serve it with: vllm serve {out} --enable-prompt-embeds")
    return 0


# ------------------------------------------------------------------------------------- prompt embeddings (CPU)
class PromptEmbedder:
    """The prompt embeddings of an export-lm folder, on the CPU, from its input-embedding table and projector only.

        embedder = PromptEmbedder.load("runs/qwen-lm")
        embeds = embedder(prompt_ids, features)   # (L, H) in the folder's dtype: what the decoder reads

    ``prompt_ids``: a prompt rendered with the model's template (one video span); ``features``: (N, C). The rows
    are the table's rows with ``place_video`` putting the projected features (projector in fp32) at the span, as
    ``VideoMixin.decoder_inputs`` does.
    """

    def __init__(self, info: ExportInfo, table: torch.Tensor, projector: nn.Module):
        self.info, self.table, self.projector = info, table, projector

    @classmethod
    def load(cls, folder: str | Path) -> PromptEmbedder:
        from safetensors import safe_open

        folder = Path(folder)
        info = read_export_info(folder)
        shard = _shard_holding(folder, info.embedding_key)
        with safe_open(str(shard), framework="pt") as f:
            table = f.get_tensor(info.embedding_key)
        if tuple(table.shape) != (info.vocab_size, info.hidden_size):
            raise UserError(
                f"{shard}: {info.embedding_key} has shape {tuple(table.shape)}, {EXPORT_INFO_FILE} says "
                f"{(info.vocab_size, info.hidden_size)}"
            )
        try:
            projector = build_projector(info.projector_type, info.feature_width, info.hidden_size)
        except ValueError as exc:
            raise UserError(f"{folder / EXPORT_INFO_FILE}: {exc}") from exc
        path = folder / info.projector_file
        state = read_projector_file(path)
        found = {k.removeprefix(PROJECTOR_PREFIX): v for k, v in state.items() if k.startswith(PROJECTOR_PREFIX)}
        own = projector.state_dict()
        shapes = {k: tuple(v.shape) for k, v in found.items()}
        if shapes != {k: tuple(v.shape) for k, v in own.items()}:
            raise UserError(f"{path}: projector tensors {shapes} do not fit a {info.projector_type} projector")
        projector.load_state_dict({k: v.float() for k, v in found.items()})
        return cls(info, table, projector.eval())

    @torch.no_grad()
    def __call__(self, prompt_ids: list[int] | torch.Tensor, features: np.ndarray | torch.Tensor) -> torch.Tensor:
        ids = torch.as_tensor(prompt_ids, dtype=torch.long).reshape(1, -1)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.info.vocab_size):
            raise ValueError(f"token ids outside the vocabulary of {self.info.vocab_size}")
        feats = torch.as_tensor(np.asarray(features) if not torch.is_tensor(features) else features)
        expected = self.info.video_token_len
        if feats.ndim != 2 or feats.shape[1] != self.info.feature_width:
            raise UserError(
                f"video features have shape {tuple(feats.shape)}; expected (tokens, {self.info.feature_width})"
            )
        if expected and feats.shape[0] != expected:
            raise UserError(
                f"the video features have {feats.shape[0]} rows (video tokens) but the model was trained with "
                f"{expected}; extract them with the training run's tower, --num_frames and --spatial_pool"
            )
        embeds = nn.functional.embedding(ids, self.table)  # (1, L, H), the table's dtype
        return place_video(embeds, ids, feats.unsqueeze(0), self.projector, self.info.span)[0]


def _shard_holding(folder: Path, key: str) -> Path:
    """The safetensors file of ``folder`` that holds tensor ``key`` (its index's weight_map, or the one file)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        name = read_json(index, expect=dict).get("weight_map", {}).get(key)
        if not isinstance(name, str) or "/" in name or name.startswith("."):
            raise UserError(f"{index}: no shard named for {key}")
        return folder / name
    single = folder / "model.safetensors"
    if not single.is_file():
        raise UserError(f"{folder}: no model.safetensors or model.safetensors.index.json; export the run again")
    return single


if __name__ == "__main__":
    sys.exit(run_main(main, None, "export-lm"))
