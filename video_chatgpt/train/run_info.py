"""``output_dir/run_info.json``: what the training report needs that the Trainer does not record.

Written by the main process at the start of a run (the exact command, versions, world size, trainable tensors, the
data check's summary, the notes) and extended at its end with one entry per run segment (where it resumed from,
wall time, the step reached, loss, peak memory, replica checksums), so a resumed run keeps every segment. Written
atomically; a file cut short by an older run is started again.
"""

from __future__ import annotations

import logging
import resource
import shlex
import sys
from pathlib import Path

import torch
import transformers

from video_chatgpt.errors import UserError
from video_chatgpt.files import read_json, write_json_atomically
from video_chatgpt.train.arguments import TrainingArguments
from video_chatgpt.train.report import RUN_INFO_FILE

logger = logging.getLogger(__name__)


def write_run_info(
    training_args: TrainingArguments, argv: list[str], named: list[tuple[str, int]], data_report, extra: dict
) -> None:
    """The run's start: the exact command, versions, trainables (``named``: (name, count)) and data summary; the
    segments of earlier runs in the same folder are kept."""
    info = {
        "command": shlex.join(sys.argv if sys.argv[1:] == argv else ["video-chatgpt", "train", *argv]),
        "argv": argv,
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": sys.version.split()[0],
        },
        "world_size": training_args.world_size,
        "trainable_parameters": [{"name": n, "count": c} for n, c in named],
        "data": data_report.summary() if data_report is not None and hasattr(data_report, "summary") else None,
        **extra,
    }
    path = Path(training_args.output_dir, RUN_INFO_FILE)
    old = _read_run_info(path)
    if old.get("runs"):
        info["runs"] = old["runs"]
    write_json_atomically(path, info, indent=2)


def append_run(
    training_args: TrainingArguments,
    resumed_from: str | None,
    wall_time_s: float,
    global_step: int,
    result,
    checksums: list[str] | None,
) -> None:
    """The run's end: one segment (``result``: the Trainer's ``TrainOutput``) added to the file's ``runs``."""
    record = {
        "resumed_from": str(resumed_from) if resumed_from else None,
        "wall_time_s": round(wall_time_s, 2),
        "global_step": global_step,
        "train_loss": result.training_loss,
        "metrics": result.metrics,
        "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 3)
        if torch.cuda.is_available()
        else None,
        "peak_rss_gb": peak_rss_gb(),
        "replica_checksums": checksums,
    }
    path = Path(training_args.output_dir, RUN_INFO_FILE)
    info = _read_run_info(path)
    info.setdefault("runs", []).append(record)
    write_json_atomically(path, info, indent=2)


def peak_rss_gb() -> float:
    """This process's peak resident memory so far, in GiB (Linux reports ``ru_maxrss`` in KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)


def _read_run_info(path: Path) -> dict:
    """The run info so far ({} when there is none, or when a pre-atomic run left it cut short: it is rewritten)."""
    if not path.is_file():
        return {}
    try:
        info = read_json(path)
    except UserError:
        logger.warning("%s is not valid JSON (a run stopped while writing it); starting it again", path)
        return {}
    return info if isinstance(info, dict) else {}
