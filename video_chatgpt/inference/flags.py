"""The model flags: one definition for every command that loads a trained model (chat, predict, demo, benchmark,
serve).

    parser = argparse.ArgumentParser(...)
    add_model_flags(parser)                     # --model_name_or_path, --projection_path, --lora_path, ... (see MODEL_FLAGS)
    args = parser.parse_args()
    check_model_flags(args)                     # one-line errors for missing/broken files, before minutes of loading
    engine = load_engine(**engine_kwargs(args))

Every spelling the original scripts used keeps working (``--model-name``, ``--model_name``, ``--projection_path``, ``--conv-mode``),
with the underscore forms as aliases. ``tests/inference/test_flags.py`` builds each command's parser and checks that
they all offer these flags with the same defaults and help.
"""

from __future__ import annotations

import argparse
import math
import pickle
import zipfile
from pathlib import Path

import torch

from video_chatgpt.bases import open_base
from video_chatgpt.constants import ADAPTER_WEIGHTS_FILE, PROMPT_IDS
from video_chatgpt.data.conversation import INFERENCE_TEMPLATE, TEMPLATES
from video_chatgpt.errors import UserError
from video_chatgpt.model.loading import read_projector_file
from video_chatgpt.weights.check import require_tokenizer
from video_chatgpt.weights.checkpoint import find_checkpoint, is_lfs_pointer, lfs_pointer_message

DTYPES = ("float16", "bfloat16", "float32")
GROUP_TITLE = "the model (the same flags in chat, predict, demo, benchmark and serve)"

# What torch.load raises on a file that is not a checkpoint (garbage, truncated, HTML error page, text).
_PROJECTOR_LOAD_ERRORS = (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile,
                          AttributeError, ImportError, IndexError, KeyError, TypeError)  # fmt: skip


def add_model_flags(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Add the model flags to ``parser`` (in a group of their own in ``--help``); returns the group."""
    g = parser.add_argument_group(GROUP_TITLE)
    g.add_argument(
        "--model_name_or_path",
        "--model-name",
        "--model_name",
        dest="model_name",
        metavar="FOLDER",
        required=True,
        help="base LLaVA-7B-Lightening-v1-1 (or LLaVA-1.5/NeXT) folder, or a Video-ChatGPT training output folder "
        "(any base; it names its base and holds its projector)",
    )
    g.add_argument(
        "--projection_path",
        default=None,
        help="mm_projector.bin / video_chatgpt-7B.bin (default: a training output folder's own mm_projector.bin)",
    )
    g.add_argument(
        "--lora_path",
        default=None,
        help="a LoRA run folder (adapter_model.safetensors + adapter_config.json) whose adapter is added to "
        "--model_name_or_path (a LoRA run given as the model carries its own)",
    )
    g.add_argument("--vision_tower", default=None, help="default: the model config's mm_vision_tower")
    g.add_argument(
        "--num_frames",
        type=int,
        default=None,
        help="frames sampled per video (default 100); must give the video token count the model was trained with",
    )
    g.add_argument(
        "--conv-mode",
        "--conv_mode",
        dest="conv_mode",
        default=INFERENCE_TEMPLATE,
        choices=sorted(TEMPLATES),
        help="conversation template of the document's base (a model trained with a chat or plain template uses "
        "its own)",
    )
    g.add_argument(
        "--prompt_ids",
        choices=PROMPT_IDS,
        default="ours",
        help="ours: the ids the model was trained on; original: the original inference's (2 tokens longer), to "
        "reproduce published answers",
    )
    g.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    g.add_argument("--dtype", default=None, choices=DTYPES, help="default: float16 on GPU, float32 on CPU")
    return g


def _model_actions() -> list[argparse.Action]:
    parser = argparse.ArgumentParser(add_help=False)
    return add_model_flags(parser)._group_actions


MODEL_FLAGS: tuple[str, ...] = tuple(a.dest for a in _model_actions())  # the argparse names, in --help order


def engine_kwargs(args: argparse.Namespace) -> dict:
    """The parsed model flags as ``load_engine(**...)`` keyword arguments."""
    return {
        "model_name": args.model_name,
        "projection_path": args.projection_path,
        "lora_path": args.lora_path,
        "vision_tower": args.vision_tower,
        "num_frames": args.num_frames,
        "conv_mode": args.conv_mode,
        "prompt_ids": args.prompt_ids,
        "device": args.device,
        "dtype": getattr(torch, args.dtype) if args.dtype else None,
    }


def model_flags_argv(args: argparse.Namespace) -> list[str]:
    """The model flags given (not None) as a command line again, in their first spelling (``--model_name_or_path``), for a
    command that runs another (``benchmark`` runs ``predict``)."""
    out = []
    for action in _model_actions():
        value = getattr(args, action.dest)
        if value is not None:
            out += [action.option_strings[0], str(value)]
    return out


def check_model_flags(args: argparse.Namespace) -> tuple[Path, Path | None]:
    """``check_model_inputs`` for parsed model flags, after ``--device``, ``--num_frames`` and the generation flags
    the command has (``--temperature``, ``--max_new_tokens``): one line each, before anything is loaded."""
    problem = model_flag_problem(args)
    if problem:
        raise UserError(problem)
    return check_model_inputs(args.model_name, args.projection_path, args.lora_path)


def model_flag_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the device, frame count and generation flags of ``args`` (those it has), or None."""
    device = getattr(args, "device", None)
    if device is not None:
        try:
            parsed = torch.device(device)
        except (RuntimeError, ValueError):
            return f"--device {device}: not a device; use cpu, cuda or cuda:N"
        if parsed.type not in ("cpu", "cuda"):
            return f"--device {device}: use cpu, cuda or cuda:N"
        if parsed.type == "cuda" and not torch.cuda.is_available():
            return f"--device {device}: torch sees no CUDA GPU on this machine; use --device cpu"
        if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
            return f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s)"
    frames = getattr(args, "num_frames", None)
    if frames is not None and frames < 1:
        return f"--num_frames {frames}: need at least 1 frame"
    temperature = getattr(args, "temperature", None)
    if temperature is not None and not (math.isfinite(temperature) and temperature >= 0):
        return f"--temperature {temperature}: need a finite number >= 0 (0: greedy)"
    max_new = getattr(args, "max_new_tokens", None)
    if max_new is not None and max_new < 1:
        return f"--max_new_tokens {max_new}: need at least 1"
    return None


def need_file(path: str | Path, flag: str, what: str) -> Path:
    """``path`` as a file; a one-line ``UserError`` naming ``flag`` when it is missing or a folder."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{flag} {path}: no such file; pass {what}")
    if not path.is_file():
        raise UserError(f"{flag} {path}: is a folder, not a file; pass {what}")
    return path


def check_model_inputs(
    model_name: str, projection_path: str | None, lora_path: str | None = None
) -> tuple[Path, Path | None]:
    """(base folder, projector file), checked before the model is loaded (minutes for 7B weights).

    Raises ``UserError`` (one line naming the file) for a missing model folder, a file given as the model, an
    unreadable ``video_chatgpt_base.json``, a base without tokenizer or weights (or with Git LFS pointers instead),
    and a missing, LFS-pointer or unreadable projector file, and a ``lora_path`` without an adapter.
    """
    folder = Path(model_name)
    if not folder.exists():
        raise UserError(
            f"--model_name_or_path {folder}: no such folder; pass the LLaVA-7B-Lightening-v1-1 folder or a training output "
            f"folder"
        )
    if not folder.is_dir():
        raise UserError(
            f"--model_name_or_path {folder}: is a file, not a model folder (a projector such as video_chatgpt-7B.bin goes "
            f"to --projection_path)"
        )
    resolved = open_base(folder, projection_path)  # the pointer's base must be here (one line naming it)
    base, projector = resolved.folder, resolved.projector_file
    require_tokenizer(base, "--model_name_or_path")
    find_checkpoint(base, "--model_name_or_path")  # weight shards present, complete, not LFS pointers
    if projector is not None:
        projector = need_file(projector, "--projection_path", "the trained projector (mm_projector.bin)")
        if is_lfs_pointer(projector):
            raise UserError(lfs_pointer_message(projector))
        try:
            state = read_projector_file(projector)
        except _PROJECTOR_LOAD_ERRORS as exc:  # torch's own text is a paragraph about weights_only: not shown
            raise UserError(
                f"--projection_path {projector}: cannot be read as a PyTorch projector file (torch.load raised "
                f"{type(exc).__name__}; truncated or not a checkpoint); download or copy it again"
            ) from None
        if not isinstance(state, dict) or not state:
            raise UserError(f"--projection_path {projector}: holds no tensors (expected model.mm_projector.*)")
    if lora_path is not None and not Path(lora_path, ADAPTER_WEIGHTS_FILE).is_file():
        raise UserError(
            f"--lora_path {lora_path}: no {ADAPTER_WEIGHTS_FILE}; name the output folder of a "
            f"--lora_enable True training run"
        )
    return base, projector
