"""LLaVA's delta rules, and one streaming engine that applies them in either direction.

The rules (reference-behaviour §1; the original loads both models in fp16 and walks the *source* state dict, which
is the delta for apply-delta and the target for make-delta):

* a tensor in both: ``out = source + base`` (apply) or ``source - base`` (make), same shape;
* ``model.embed_tokens.weight`` / ``lm_head.weight`` with more rows in the source (LLaVA: 32003 vs LLaMA's 32000):
  the base goes into the first rows, the extra rows (LLaVA's image tokens) keep the source's values;
* ``model.mm_projector.*`` exists only in the source and is copied as stored: it is absolute, not a difference;
* any other source tensor missing from the base is an error (the base is not the model the delta was made from);
  base tensors the source lacks are dropped, as the original does, with a warning.

Two kinds of source tensor the original drops (its model class has no place for them) are dropped here too, with
a warning: ``model.vision_tower.*`` (the vision tower is loaded separately from ``mm_vision_tower``) and a
``*.rotary_emb.inv_freq`` buffer that only the source has (recomputed from the config; a source-only value would be
a difference).

Arithmetic: each input is first cast to fp16 (what ``from_pretrained(torch_dtype=float16)`` does), then added or
subtracted as fp16 tensors. PyTorch computes fp16 ``+``/``-`` in fp32 and rounds once to fp16, so the result is
bit-identical to the original's in-place ``param += base`` and to ``(a.float() + b.float()).half()``. Output is fp16.

Memory: everything is planned from the files' headers first (shapes, dtypes, names, so every bad input is reported
before anything is written); then tensors stream one at a time from the source, the matching base tensor is read
by name (base and source shards need not line up), and each result is appended to a streamed safetensors shard and
dropped. Peak: a few tensors for safetensors inputs; one source + one base shard of mapped pages for ``.bin``. The
output is written into a hidden temporary folder next to the target and renamed into place only when complete.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import torch

from video_chatgpt.constants import EMBED_TOKENS_KEY, PROJECTOR_PREFIX
from video_chatgpt.errors import UserError
from video_chatgpt.files import check_output, folder_lock, recover_killed_folder, same_path, staged_folder
from video_chatgpt.weights.checkpoint import (
    TensorInfo,
    TensorReader,
    WeightsError,
    find_checkpoint,
    is_lfs_pointer,
    iter_tensors,
    lfs_pointer_message,
    read_tensor_infos,
)
from video_chatgpt.weights.writer import (
    DEFAULT_MAX_SHARD_SIZE,
    OutputTensor,
    ShardedSafetensorsWriter,
    parse_size,
    plan_shards,
)

LM_HEAD_KEY = "lm_head.weight"
VOCAB_TENSORS = (EMBED_TOKENS_KEY, LM_HEAD_KEY)
VISION_TOWER_PREFIX = "model.vision_tower."
ROTARY_SUFFIX = ".rotary_emb.inv_freq"
OUTPUT_DTYPE = torch.float16

TOKENIZER_FILES = (
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
)
# Files copied from the source folder as they are (config.json gets its torch_dtype set to float16).
SIDE_FILES = ("config.json", "generation_config.json") + TOKENIZER_FILES

# Kinds of step in a plan.
COMBINE = "combine"  # same shape: source +/- base
COMBINE_ROWS = "combine_rows"  # vocabulary tensor with extra source rows: base into the first rows
COPY = "copy"  # projector: taken as stored

# How many problems an error lists before "... and N more".
_MAX_LISTED = 20

Log = Callable[[str], None]


@dataclass(frozen=True)
class Step:
    """What to do for one output tensor."""

    name: str
    kind: str  # COMBINE, COMBINE_ROWS or COPY
    shape: tuple[int, ...]  # output shape = the source's


@dataclass(frozen=True)
class DeltaPlan:
    steps: tuple[Step, ...]  # in source order (grouped by source shard)
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class DeltaResult:
    """What apply-delta / make-delta wrote."""

    output: Path
    shards: tuple[str, ...]
    num_tensors: int
    total_bytes: int
    copied_files: tuple[str, ...]
    warnings: tuple[str, ...]

    def summary(self) -> str:
        return (
            f"wrote {self.output}: {self.num_tensors} tensors, {self.total_bytes / 1e9:.2f} GB fp16 in "
            f"{len(self.shards)} safetensors shard(s) + model.safetensors.index.json; "
            f"copied {', '.join(self.copied_files)}"
        )


def _listing(problems: list[str]) -> str:
    shown = problems[:_MAX_LISTED]
    more = f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
    return "\n".join(f"  - {p}" for p in shown) + more


def plan_delta(
    source: dict[str, TensorInfo],
    base: dict[str, TensorInfo],
    source_role: str = "delta",
    base_role: str = "base",
) -> DeltaPlan:
    """Check names, shapes and dtypes of ``source`` against ``base`` and decide each output tensor. Pure.

    Raises ``WeightsError`` listing every problem (each naming file and tensor).
    """
    steps: list[Step] = []
    problems: list[str] = []
    warnings: list[str] = []
    dropped: list[str] = []
    base_projector = [name for name in base if name.startswith(PROJECTOR_PREFIX)]
    if base_projector:
        # A LLaVA (or Video-ChatGPT) folder passed as the base: its projector would be added to the delta's (apply)
        # or subtracted from the target's (make) and every other tensor would be off by a whole model.
        problems.append(
            f"{base_role} {base[base_projector[0]].file}: holds {len(base_projector)} {PROJECTOR_PREFIX}* tensor(s), "
            f"so it is already a LLaVA model (the result of apply-delta), not the original LLaMA-7B; pass the "
            f"LLaMA-7B folder in Hugging Face format as the {base_role}"
        )
    for name, s in source.items():
        if not s.dtype.is_floating_point:
            problems.append(
                f"{source_role} {s.file}: tensor {name!r} has dtype {s.dtype}; weights must be floating point "
                f"(fp16, bf16 or fp32)"
            )
            continue
        b = base.get(name)
        if b is None:
            if name.startswith(PROJECTOR_PREFIX):
                steps.append(Step(name, COPY, s.shape))
            elif name.startswith(VISION_TOWER_PREFIX) or name.endswith(ROTARY_SUFFIX):
                dropped.append(name)
            else:
                problems.append(
                    f"{source_role} {s.file}: tensor {name!r} is not in the {base_role} and is not the projector "
                    f"({PROJECTOR_PREFIX}*): the {base_role} is not the model this delta belongs to (the LLaVA "
                    f"delta is against the original LLaMA-7B in Hugging Face format, not Vicuna)"
                )
            continue
        if not b.dtype.is_floating_point:
            problems.append(
                f"{base_role} {b.file}: tensor {name!r} has dtype {b.dtype}; weights must be floating point "
                f"(fp16, bf16 or fp32)"
            )
            continue
        if s.shape == b.shape:
            steps.append(Step(name, COMBINE, s.shape))
        elif (
            name in VOCAB_TENSORS
            and len(s.shape) == len(b.shape) == 2
            and s.shape[0] > b.shape[0]
            and s.shape[1] == b.shape[1]
        ):
            steps.append(Step(name, COMBINE_ROWS, s.shape))
        else:
            allowed = (
                f" (only {' and '.join(VOCAB_TENSORS)} may differ, by extra rows in the {source_role})"
                if name not in VOCAB_TENSORS
                else f" (the {source_role} may only have more rows, same width)"
            )
            problems.append(
                f"tensor {name!r} has shape {s.shape} in {source_role} {s.file} but {b.shape} in {base_role} "
                f"{b.file}{allowed}"
            )
    if problems:
        raise WeightsError(f"{len(problems)} problem(s) between {source_role} and {base_role}:\n{_listing(problems)}")
    if not steps:
        raise WeightsError(f"the {source_role} holds no tensor to write")
    if dropped:
        warnings.append(
            f"{len(dropped)} {source_role} tensor(s) not in the {base_role} are dropped, as the original does (vision "
            f"tower weights / rotary inv_freq buffers): {', '.join(dropped[:3])}{' ...' if len(dropped) > 3 else ''}"
        )
    base_only = [k for k in base if k not in source]
    if base_only:
        warnings.append(
            f"{len(base_only)} {base_role} tensor(s) not in the {source_role} are dropped, as the original does: "
            f"{', '.join(base_only[:3])}{' ...' if len(base_only) > 3 else ''}"
        )
    if not any(name.startswith(PROJECTOR_PREFIX) for name in source):
        warnings.append(f"the {source_role} has no {PROJECTOR_PREFIX}* tensors: the output will not be a LLaVA model")
    return DeltaPlan(tuple(steps), tuple(warnings))


def combine(kind: str, source: torch.Tensor, base: torch.Tensor | None, subtract: bool) -> torch.Tensor:
    """One output tensor (fp16) by the rules above. ``source``/``base`` in any float dtype; neither is modified.

    Shapes: COMBINE (r, c) +/- (r, c); COMBINE_ROWS (R, c) with base (r, c), r < R: rows [0, r) combined, rows
    [r, R) = source; COPY: source as fp16.
    """
    if kind == COPY:
        return source.to(OUTPUT_DTYPE).contiguous()
    assert base is not None
    b = base.to(OUTPUT_DTYPE)
    if kind == COMBINE:
        s = source.to(OUTPUT_DTYPE)
        return s - b if subtract else s + b
    if kind == COMBINE_ROWS:
        # copy=True: never write into the input (a .bin input is a private memory map of the file).
        out = source.to(OUTPUT_DTYPE, copy=True).contiguous()
        block = out[: b.shape[0], : b.shape[1]]
        (block.sub_ if subtract else block.add_)(b)
        return out
    raise ValueError(f"unknown step kind {kind!r}")


# --------------------------------------------------------------------------------------------------------------
# Folders.


def read_side_files(folder: Path, role: str) -> dict[str, bytes]:
    """config.json, generation_config.json and tokenizer files of ``folder``, checked (JSON parses, no LFS pointers).

    Raises ``WeightsError`` when config.json or the tokenizer is missing or broken.
    """
    files: dict[str, bytes] = {}
    for name in SIDE_FILES:
        path = folder / name
        if not path.is_file():
            continue
        if is_lfs_pointer(path):
            raise WeightsError(lfs_pointer_message(path))
        files[name] = path.read_bytes()
    if "config.json" not in files:
        raise WeightsError(f"{role} {folder} has no config.json")
    for name in files:
        if name.endswith(".json"):
            try:
                json.loads(files[name])
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise WeightsError(f"{role} {folder / name}: not valid JSON ({exc})") from exc
    if "tokenizer.model" not in files and "tokenizer.json" not in files:
        raise WeightsError(
            f"{role} {folder} has no tokenizer (tokenizer.model or tokenizer.json): the output needs the "
            f"{role}'s tokenizer (LLaVA's, with the image tokens)"
        )
    return files


def fp16_config(raw: bytes) -> tuple[bytes, bool]:
    """config.json bytes with ``torch_dtype`` (and transformers 5's ``dtype``) set to float16, as the original's
    save in fp16 writes it. Returns (bytes, changed). Unchanged bytes when already float16: nothing else is touched,
    ``model_type`` and the ``mm_*`` keys included (never rewritten through ``AutoConfig``)."""
    config = json.loads(raw)
    keys = [k for k in ("torch_dtype", "dtype") if k in config and config[k] != "float16"]
    if not keys:
        return raw, False
    for k in keys:
        config[k] = "float16"
    return (json.dumps(config, indent=2) + "\n").encode(), True


def check_output_path(output: Path, inputs: dict[str, Path], role: str, overwrite: bool) -> None:
    try:
        check_output(output, inputs, role)  # not the same folder as an input, nor around or inside one
    except UserError as exc:
        raise WeightsError(str(exc)) from None
    if output.exists():
        if not output.is_dir():
            raise WeightsError(f"{role} {output} exists and is a file; name a folder (it is created)")
        if any(output.iterdir()) and not overwrite:
            raise WeightsError(f"{role} {output} exists and is not empty; remove it or pass --overwrite")


def combine_folders(
    source_dir: Path,
    base_dir: Path,
    output_dir: Path,
    *,
    subtract: bool,
    roles: tuple[str, str, str] = ("delta", "base", "target"),
    flags: tuple[str, str, str] | None = None,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
    overwrite: bool = False,
    log: Log | None = None,
) -> DeltaResult:
    """``output = source +/- base`` by the delta rules, streamed; side files (config, tokenizer) from ``source``.

    ``roles`` names (source, base, output) in messages about tensors, ``flags`` (default: the roles) in messages
    about folders, e.g. ``("--delta-path", "--base-model-path", "--target-model-path")``. Everything is checked
    before the first byte is written.
    """
    log = log or (lambda _msg: None)
    source_role, base_role, output_role = roles
    source_flag, base_flag, output_flag = flags or roles
    max_bytes = parse_size(max_shard_size)
    source_dir, base_dir, output_dir = Path(source_dir), Path(base_dir), Path(output_dir)

    # 1. Check everything from the headers.
    source_ckpt = find_checkpoint(source_dir, f"{source_flag} ({source_role})")
    base_ckpt = find_checkpoint(base_dir, f"{base_flag} ({base_role})")
    if same_path(source_dir, base_dir):
        raise WeightsError(
            f"{base_flag} and {source_flag} are the same folder ({base_dir.resolve()}): the {output_role} would be "
            f"{'all zeros' if subtract else 'the ' + base_role + ' counted twice'}; pass the original LLaMA-7B as "
            f"{base_flag}"
        )
    side = read_side_files(source_dir, f"{source_flag} ({source_role})")
    check_output_path(output_dir, {source_flag: source_dir, base_flag: base_dir}, output_flag, overwrite)
    log(f"{source_role}: {source_dir} ({source_ckpt.describe()})")
    log(f"{base_role}: {base_dir} ({base_ckpt.describe()})")
    source_infos = read_tensor_infos(source_ckpt)
    base_infos = read_tensor_infos(base_ckpt)
    plan = plan_delta(source_infos, base_infos, source_role, base_role)
    for w in plan.warnings:
        log(f"warning: {w}")
    layout = plan_shards([OutputTensor(s.name, s.shape, OUTPUT_DTYPE) for s in plan.steps], max_bytes)
    total = sum(t.nbytes for shard in layout for t in shard)
    config_bytes, config_changed = fp16_config(side["config.json"])
    warnings = list(plan.warnings)
    if config_changed:
        warnings.append("config.json: torch_dtype set to float16 (the output is fp16)")
        log(f"warning: {warnings[-1]}")

    with folder_lock(output_dir, log):
        # What a killed run left (a half-written folder; the previous output between the renames of --overwrite)
        # is undone first, then the output is checked again: a restored folder needs --overwrite as before.
        for action in recover_killed_folder(output_dir):
            log(action)
        check_output_path(output_dir, {source_flag: source_dir, base_flag: base_dir}, output_flag, overwrite)
        parent = Path(os.path.abspath(output_dir)).parent
        if not os.access(parent, os.W_OK):
            raise WeightsError(
                f"{output_flag} {output_dir}: cannot write into {parent} (read-only or not yours); write elsewhere"
            )
        free = shutil.disk_usage(parent).free
        if free < total + sum(map(len, side.values())):
            raise WeightsError(
                f"{output_flag} {output_dir}: needs {total / 1e9:.2f} GB, only {free / 1e9:.2f} GB free there"
            )

        # 2. Stream: one source tensor, its base tensor, one result at a time.
        with staged_folder(output_dir) as tmp:
            with (
                closing(iter_tensors(source_ckpt, [s.name for s in plan.steps], source_infos)) as source_tensors,
                TensorReader(base_ckpt, base_infos) as base_reader,
                ShardedSafetensorsWriter(tmp, layout) as writer,
            ):
                current_file = None
                for step, (name, tensor) in zip(plan.steps, source_tensors):
                    if source_infos[name].file != current_file:
                        current_file = source_infos[name].file
                        log(f"reading {current_file.name}")
                    base_tensor = None if step.kind == COPY else base_reader.get(name)
                    writer.write(name, combine(step.kind, tensor, base_tensor, subtract))
                    del tensor, base_tensor
            for name, data in side.items():
                (tmp / name).write_bytes(config_bytes if name == "config.json" else data)
    result = DeltaResult(
        output=output_dir,
        shards=tuple(writer.names),
        num_tensors=len(plan.steps),
        total_bytes=total,
        copied_files=tuple(side),
        warnings=tuple(warnings),
    )
    log(result.summary())
    return result
