"""Which ``checkpoint-N`` a run resumes from: only one whose save finished and whose files are whole.

The Trainer writes ``trainer_state.json`` last, so a kill while saving leaves it missing, empty or cut short; a kill
(or a full disk) while the weights were written leaves ``trainable.safetensors`` / ``model*.safetensors`` shorter
than their header says. Such a checkpoint is skipped with a warning (the one before it is used) when the run
resumes by itself, and refused when ``--resume_from_checkpoint`` names it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from video_chatgpt.constants import TRAINER_STATE_FILE
from video_chatgpt.errors import UserError
from video_chatgpt.files import read_json
from video_chatgpt.train.trainer import TRAINABLE_FILE
from video_chatgpt.weights.checkpoint import WeightsError, find_checkpoint, read_safetensors_header, read_tensor_infos

logger = logging.getLogger(__name__)


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
    try:
        if (ckpt / TRAINABLE_FILE).exists():
            read_safetensors_header(ckpt / TRAINABLE_FILE)
        else:
            read_tensor_infos(find_checkpoint(ckpt, role="checkpoint"))
    except (WeightsError, OSError) as exc:
        return f"its weights cannot be read ({exc})"
    return None


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
