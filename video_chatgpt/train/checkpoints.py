"""Which ``checkpoint-N`` a run resumes from: only one whose save finished and whose files are whole.

The Trainer writes ``trainer_state.json`` last, so a kill while saving leaves it missing, empty or cut short; a kill
(or a full disk) while the weights were written leaves ``trainable.safetensors`` / ``model*.safetensors`` shorter
than their header says. A damaged or forged file is found before the Trainer loads it: every safetensors header is
checked (length, JSON, offsets within the file, sizes that match dtype and shape); ``optimizer.pt``,
``scheduler.pt``, ``scaler.pt`` and ``rng_state*.pth`` are loaded with ``weights_only`` (no code runs) under a size
bound (``load_torch_data``) and their contents checked against what the Trainer will do with them (an optimizer
state per trainable tensor and of its shape, a scheduler with one learning rate per parameter group, RNG states
that a fresh generator accepts). Such a checkpoint is skipped with one warning naming the file and the cause (the
one before it is used, or a fresh start when none is whole) when the run resumes by itself, and refused in one line
when ``--resume_from_checkpoint`` names it.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch
from transformers import TrainerState
from transformers.trainer_pt_utils import safe_globals

from video_chatgpt.constants import PROJECTOR_FILE, TRAINER_STATE_FILE
from video_chatgpt.errors import UserError
from video_chatgpt.files import read_json
from video_chatgpt.train.trainer import TRAINABLE_FILE
from video_chatgpt.weights.checkpoint import WeightsError, find_checkpoint, read_safetensors_header, read_tensor_infos
from video_chatgpt.weights.torchzip import TorchFileError, load_torch_data

logger = logging.getLogger(__name__)

# The small state files the Trainer loads on resume: a few kB each for any model (an RNG state, a scheduler's numbers).
MAX_SMALL_STATE_BYTES = 16 * 2**20
# optimizer.pt holds at most a few fp32 tensors per trainable element (Adam: a step, exp_avg, exp_avg_sq), plus
# the parameter groups' numbers: a file larger than this many times the weights it trains is not their state.
OPTIMIZER_BYTES_PER_WEIGHT_BYTE = 8
OPTIMIZER_SLACK_BYTES = 16 * 2**20
MAX_PROJECTOR_BYTES = 2**30  # a 7B model's projector is 17 MB (linear) to 100 MB (mlp2x_gelu)


def checkpoint_problem(ckpt: str | Path) -> str | None:
    """Why ``checkpoint-N`` cannot be resumed from, or None when its save finished and its files are whole."""
    ckpt = Path(ckpt)
    state_file = ckpt / TRAINER_STATE_FILE
    if not state_file.is_file():
        return "no trainer_state.json: the run stopped while saving it"
    try:
        state = read_json(state_file)
    except (OSError, UserError) as exc:
        return f"trainer_state.json is empty or cut short ({exc})"
    if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
        return "trainer_state.json has no global_step"
    problem = _trainer_state_problem(state)
    if problem:
        return f"trainer_state.json {problem}"
    try:
        if (ckpt / TRAINABLE_FILE).exists():
            weights = read_safetensors_header(ckpt / TRAINABLE_FILE)
            weight_files = [ckpt / TRAINABLE_FILE]
        else:
            found = find_checkpoint(ckpt, role="checkpoint")
            weights = read_tensor_infos(found)
            weight_files = [found.path(shard) for shard in found.shards]
        for extra in sorted(ckpt.glob("adapter_model*.safetensors")):  # a LoRA run's adapter, read by merge-lora
            read_safetensors_header(extra)
    except (WeightsError, OSError) as exc:
        return f"its weights cannot be read ({exc})"
    shapes = [tuple(info.shape) for info in weights.values()]
    projector = ckpt / PROJECTOR_FILE  # a full fine-tune saves the projector beside the LM: its tensors train too
    if projector.is_file() and not (ckpt / TRAINABLE_FILE).exists():
        try:
            shapes += [tuple(t.shape) for t in load_torch_data(projector, MAX_PROJECTOR_BYTES).values()]
        except (TorchFileError, OSError, AttributeError) as exc:
            return f"{PROJECTOR_FILE}: {exc}"
        weight_files.append(projector)
    weight_bytes = sum(f.stat().st_size for f in weight_files)
    return _state_files_problem(ckpt, shapes, weight_bytes)


def _trainer_state_problem(state: dict) -> str | None:
    """What in trainer_state.json the Trainer's ``TrainerState(**state)`` would trip over, or None."""
    known = {f.name for f in fields(TrainerState)}
    unknown = sorted(set(state) - known)
    if unknown:
        return f"has fields a Trainer state does not have: {unknown[:4]}"
    if state["global_step"] < 0:
        return f"has global_step {state['global_step']}"
    history = state.get("log_history", [])
    if not isinstance(history, list) or not all(isinstance(entry, dict) for entry in history):
        return "has a log_history that is not a list of objects"
    return None


def _state_files_problem(ckpt: Path, shapes: list[tuple[int, ...]], weight_bytes: int) -> str | None:
    """Why the optimizer, scheduler, scaler or RNG state of ``ckpt`` cannot be loaded, or None.

    ``shapes``: the shapes of the checkpoint's weights (each optimizer state must be of one of them)."""
    optimizer = ckpt / "optimizer.pt"
    groups = None
    if optimizer.exists():
        bound = OPTIMIZER_BYTES_PER_WEIGHT_BYTE * weight_bytes + OPTIMIZER_SLACK_BYTES
        try:
            groups = _check_optimizer(load_torch_data(optimizer, bound), shapes)
        except (TorchFileError, OSError) as exc:
            return f"optimizer.pt: {exc}"
    for name in ("scheduler.pt", "scaler.pt"):
        if (ckpt / name).exists():
            try:
                _check_scheduler(load_torch_data(ckpt / name, MAX_SMALL_STATE_BYTES), name, groups)
            except (TorchFileError, OSError) as exc:
                return f"{name}: {exc}"
    for rng in sorted(ckpt.glob("rng_state*.pth")):
        try:
            with safe_globals():  # numpy's arrays, as the Trainer loads them
                _check_rng_state(load_torch_data(rng, MAX_SMALL_STATE_BYTES))
        except (TorchFileError, OSError) as exc:
            return f"{rng.name}: {exc}"
    return None


def _check_optimizer(state: object, shapes: list[tuple[int, ...]]) -> int:
    """A torch optimizer's ``state_dict`` whose tensors are shaped as the weights: returns its number of groups."""
    if not isinstance(state, dict) or not isinstance(state.get("state"), dict):
        raise TorchFileError("not an optimizer state (no 'state' mapping)")
    groups = state.get("param_groups")
    if not isinstance(groups, list) or not groups or not all(isinstance(g, dict) for g in groups):
        raise TorchFileError("not an optimizer state (no list of 'param_groups')")
    ids = [i for g in groups for i in (g.get("params") if isinstance(g.get("params"), list) else [None])]
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids) or len(set(ids)) != len(ids):
        raise TorchFileError("its param_groups do not list distinct parameter numbers")
    if len(ids) > len(shapes):
        raise TorchFileError(f"it is the state of {len(ids)} parameters, the checkpoint's weights are {len(shapes)}")
    free = Counter(shapes)
    for key, entry in state["state"].items():
        if key not in ids or not isinstance(entry, dict):
            raise TorchFileError(f"its state {key!r} belongs to no parameter of its groups")
        tensors = [v for v in entry.values() if isinstance(v, torch.Tensor) and v.dim() > 0]
        if any(not isinstance(v, (torch.Tensor, int, float)) for v in entry.values()):
            raise TorchFileError(f"the state of parameter {key} holds something other than tensors and numbers")
        sizes = sorted({tuple(v.shape) for v in tensors}, key=lambda shape: free[shape])
        if len(sizes) > 1 or (sizes and free[sizes[0]] == 0):
            raise TorchFileError(
                f"the state of parameter {key} has shape {sizes[0]}, which no other weight of the checkpoint has "
                f"(its weights: {sorted(set(shapes))[:4]})"
            )
        if sizes:
            free[sizes[0]] -= 1
    return len(groups)


def _check_scheduler(state: object, name: str, groups: int | None) -> None:
    """A learning-rate scheduler's (or a gradient scaler's) ``state_dict``: a mapping of plain values; a scheduler's
    has one base learning rate per optimizer parameter group."""
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise TorchFileError("not a state (a mapping of names to values)")
    if name != "scheduler.pt":
        return
    base = state.get("base_lrs")
    if not isinstance(state.get("last_epoch"), int) or not isinstance(base, list):
        raise TorchFileError("not a learning-rate scheduler's state (no last_epoch and base_lrs)")
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in base):
        raise TorchFileError("its base_lrs are not numbers")
    if groups is not None and len(base) != groups:
        raise TorchFileError(f"it has {len(base)} learning rates, optimizer.pt {groups} parameter groups")


def _check_rng_state(state: object) -> None:
    """The Trainer's RNG states: each one set on a fresh generator of its kind (the process's own are untouched)."""
    if not isinstance(state, dict):
        raise TorchFileError("not an RNG state (a mapping of generator names to states)")
    try:
        random.Random().setstate(state["python"])
        np.random.RandomState().set_state(state["numpy"])
        torch.Generator().set_state(state["cpu"])
    except KeyError as exc:
        raise TorchFileError(f"has no {exc.args[0]!r} generator state") from None
    except (TypeError, ValueError, RuntimeError, IndexError, OverflowError) as exc:
        raise TorchFileError(
            f"a generator refuses its state ({str(exc).splitlines()[0] if str(exc) else exc!r})"
        ) from None
    for device in ("cuda", "npu", "hpu", "mlu", "musa", "xla"):
        value = state.get(device)
        if value is not None and not all(
            isinstance(v, torch.Tensor) and v.dtype == torch.uint8
            for v in (value if isinstance(value, list) else [value])
        ):
            raise TorchFileError(f"its {device!r} state is not a byte tensor")


def last_complete_checkpoint(output_dir: str | Path) -> str | None:
    """The newest ``checkpoint-N`` that ``checkpoint_problem`` finds whole, else None (each one skipped is logged
    with what is wrong with it)."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    candidates = sorted(
        (p for p in folder.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
        reverse=True,
    )
    for ckpt in candidates:
        problem = checkpoint_problem(ckpt)
        if problem is None:
            return str(ckpt)
        logger.warning("%s cannot be resumed from (%s); skipping it", ckpt, problem)
    if candidates:
        logger.warning("no checkpoint of %s can be resumed from; training starts from step 0", folder)
    return None


def checkpoint_to_resume(asked: str | None, output_dir: str | Path) -> str | None:
    """``--resume_from_checkpoint`` when given (a ``UserError`` when it is damaged), else the newest whole
    ``checkpoint-N`` of ``output_dir``, else None (a fresh start)."""
    if asked is not None:
        problem = checkpoint_problem(asked)
        if problem is not None:
            raise UserError(f"--resume_from_checkpoint {asked}: {problem}; resume from another one")
        return asked
    resume = last_complete_checkpoint(output_dir)
    if resume is not None:
        logger.info("resuming from %s", resume)
    return resume
