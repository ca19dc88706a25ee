"""``video-chatgpt data inspect``: one training record exactly as the model sees it, token by token.

Run (the flags that training also has mean the same here)::

    video-chatgpt data inspect --data_path video_chatgpt_training.json --video_folder clip_features \\
        --model_name_or_path LLaVA-7B-Lightening-v1-1 --mm_use_vid_start_end --model_max_length 2048 --index 0
    video-chatgpt data inspect ... --json          # one JSON object: input_ids, labels, video_token_count, ...
    video-chatgpt data inspect ... --color always  # keep the colours when piping into ``less -R``

What is shown comes from the training dataset itself (``SupervisedVideoDataset``'s ``__getitem__`` and ``render``,
built by the same calls as ``train.py``): there is no second renderer, so what you see is what is trained.
Supervised tokens (those with a loss: each answer and its ``</s>``) are green on a terminal; without a terminal they
sit between ``{+`` and ``+}`` (git's word-diff markers) in the prompt and carry ``[+]`` in the token table. The video
span is shown compactly, e.g. ``<vid_start><vid_patch>x356<vid_end>``.

Exit status: 0 when the record renders and its feature file loads, 1 when training would fail on it (missing or
unreadable feature file, a truncation that cuts the video span), 2 for bad flags or an index out of range.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from video_chatgpt.args import command_parser, parse_args_or_status, parse_bool
from video_chatgpt.bases import open_base
from video_chatgpt.constants import (
    DEFAULT_MODEL_MAX_LENGTH,
    IGNORE_INDEX,
    VIDEO_END_TOKEN,
    VIDEO_PATCH_TOKEN,
    VIDEO_START_TOKEN,
)
from video_chatgpt.data.conversation import training_template
from video_chatgpt.data.dataset import SupervisedVideoDataset, first_feature_shape, load_records
from video_chatgpt.data.paths import feature_path
from video_chatgpt.data.tokenizer import SegmentEncoder, VideoTokenIds, load_video_tokenizer
from video_chatgpt.errors import UserError, error_message, run_main, wants_debug
from video_chatgpt.features.store import FeatureFileError, load_features
from video_chatgpt.weights.check import require_tokenizer

PROG = "video-chatgpt data inspect"

GREEN, CYAN, DIM, RESET = "\x1b[1;32m", "\x1b[36m", "\x1b[2m", "\x1b[0m"
PLAIN_OPEN, PLAIN_CLOSE = "{+", "+}"
_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


# ------------------------------------------------------------------------------------------------ one record
@dataclass
class Inspection:
    """Record ``index`` as training sees it. ``input_ids``/``labels``/``tokens`` have one entry per token."""

    index: int
    record_id: object
    num_records: int
    input_ids: list[int]
    labels: list[int]
    tokens: list[str]  # the tokenizer's piece of each id (``▁The``, ``<0x0A>``, ``<vid_patch>``)
    video_ids: VideoTokenIds
    truncated: bool
    full_length: int
    model_max_length: int | None
    feature_file: str | None
    feature_shape: tuple[int, ...] | None
    feature_dtype: str | None
    problems: list[str] = field(default_factory=list)

    @property
    def video_token_count(self) -> int:
        return sum(1 for x in self.input_ids if x == self.video_ids.patch)

    @property
    def video_span(self) -> tuple[int, int] | None:
        """``[start, end)`` positions of the video span, start/end tokens included; None without video."""
        marks = {self.video_ids.patch, self.video_ids.start, self.video_ids.end} - {None}
        at = [i for i, x in enumerate(self.input_ids) if x in marks]
        return (at[0], at[-1] + 1) if at else None

    @property
    def supervised(self) -> list[bool]:
        return [x != IGNORE_INDEX for x in self.labels]

    def to_json(self) -> dict:
        return {
            "index": self.index,
            "id": self.record_id,
            "num_records": self.num_records,
            "input_ids": self.input_ids,
            "labels": self.labels,
            "tokens": self.tokens,
            "total_tokens": len(self.input_ids),
            "video_token_count": self.video_token_count,
            "video_span": list(self.video_span) if self.video_span else None,
            "supervised_tokens": sum(self.supervised),
            "truncated": self.truncated,
            "full_length": self.full_length,
            "model_max_length": self.model_max_length,
            "feature_file": self.feature_file,
            "feature_shape": list(self.feature_shape) if self.feature_shape else None,
            "feature_dtype": self.feature_dtype,
            "problems": self.problems,
        }


def inspect_record(
    data_path: str | Path,
    video_folder: str | Path,
    model_name_or_path: str | Path,
    index: int,
    model_max_length: int | None = DEFAULT_MODEL_MAX_LENGTH,
    mm_use_vid_start_end: bool = False,
    stage: str | None = None,
) -> Inspection:
    """Build the training dataset as ``train.py`` does and read record ``index`` from it.

    The video token count comes from the record's own feature file; the template is the one training uses for
    this base and ``stage`` (``data.conversation.training_template``). Raises ``IndexError`` for an index outside
    the file, ``UserError`` for a ``video`` outside ``video_folder`` and ``ValueError`` when the record cannot be
    rendered (e.g. a truncation that cuts the video span).
    A missing or unreadable feature file is not raised: it is listed in ``problems`` (training would fail on it).
    """
    records = load_records(data_path)
    if not 0 <= index < len(records):
        raise IndexError(f"--index {index} is out of range: {data_path} has {len(records)} records")
    record = records[index]
    if not isinstance(record, dict):
        raise ValueError(f"record {index} is a {type(record).__name__}, not an object")
    base = open_base(model_name_or_path)
    tokenizer, video_ids, _ = load_video_tokenizer(base.folder, mm_use_vid_start_end, model_max_length)

    problems: list[str] = []
    feature_file = array = None
    if record.get("video"):
        feature_file = feature_path(video_folder, record["video"])  # absolute / '..' names: UserError
        try:
            array = load_features(feature_file)
        except FileNotFoundError:
            problems.append(f"feature file {feature_file} is missing: training fails on this record")
        except FeatureFileError as exc:
            problems.append(f"{exc}: training fails on this record")
    # Without a usable file of its own, the record is rendered with the shape training would use.
    try:
        training_shape = first_feature_shape(records, video_folder)
    except (ValueError, OSError) as exc:
        training_shape = None
        if array is None:
            raise ValueError(f"{data_path}: cannot tell the number of video tokens ({exc})") from exc
    shape = tuple(array.shape) if array is not None else training_shape
    if array is not None and training_shape is not None and shape != training_shape:
        problems.append(
            f"feature shape {shape} differs from {training_shape} of the first record's file, which training uses "
            f"when the data check is off: training fails on this record"
        )

    template = training_template(base, tokenizer, stage)
    dataset = SupervisedVideoDataset(  # as train.py builds it: training_dataset(...) with the base's template
        records,
        video_folder,
        SegmentEncoder(tokenizer),
        video_ids,
        feature_shape=shape,
        max_length=model_max_length,
        template=template,
    )
    rendered = dataset.render(index)  # truncation facts; raises ValueError when the span would be cut
    if array is not None or not record.get("video"):
        item = dataset[index]  # the very tensors the collator receives
        input_ids, labels = item["input_ids"].tolist(), item["labels"].tolist()
        if "video_spatio_temporal_features" in item:
            shape = tuple(item["video_spatio_temporal_features"].shape)
    else:
        input_ids, labels = list(rendered.input_ids), list(rendered.labels)
    return Inspection(
        index=index,
        record_id=record.get("id"),
        num_records=len(records),
        input_ids=input_ids,
        labels=labels,
        tokens=tokenizer.convert_ids_to_tokens(input_ids),
        video_ids=video_ids,
        truncated=rendered.truncated,
        full_length=rendered.full_length,
        model_max_length=model_max_length,
        feature_file=None if feature_file is None else str(feature_file),
        feature_shape=shape if record.get("video") else None,
        feature_dtype=None if array is None else str(array.dtype),
        problems=problems,
    )


# -------------------------------------------------------------------------------------------------- rendering
def _pieces_to_text(pieces: list[str]) -> str:
    """SentencePiece pieces -> text: ``▁`` is a space, ``<0xNN>`` a byte (so ``<0x0A>`` is a newline)."""
    data = bytearray()
    for piece in pieces:
        m = _BYTE_PIECE.match(piece)
        data += bytes([int(m.group(1), 16)]) if m else piece.replace("\u2581", " ").encode("utf-8")
    return data.decode("utf-8", errors="replace")


def _runs(insp: Inspection) -> list[tuple[str, bool, str]]:
    """The prompt as runs ``(kind, supervised, text)``; kind is "text" or "video" (one run per video span)."""
    runs: list[tuple[str, bool, list[str]]] = []
    video_marks = {insp.video_ids.patch, insp.video_ids.start, insp.video_ids.end} - {None}
    for tok_id, piece, sup in zip(insp.input_ids, insp.tokens, insp.supervised):
        kind = "video" if tok_id in video_marks else "text"
        new_span = kind == "video" and tok_id == insp.video_ids.start  # two videos stay two runs
        if runs and runs[-1][0] == kind and runs[-1][1] == sup and not new_span:
            runs[-1][2].append(piece)
        else:
            runs.append((kind, sup, [piece]))
    out = []
    for kind, sup, pieces in runs:
        if kind == "video":
            n = pieces.count(VIDEO_PATCH_TOKEN)
            text = "".join(p for p in pieces if p == VIDEO_START_TOKEN)
            text += f"{VIDEO_PATCH_TOKEN}x{n}" + "".join(p for p in pieces if p == VIDEO_END_TOKEN)
        else:
            text = _pieces_to_text(pieces)
        out.append((kind, sup, text))
    return out


def format_prompt(insp: Inspection, colour: bool) -> str:
    """The prompt text with the video span compact; supervised text green (``colour``) or between ``{+ +}``."""
    parts = []
    for kind, sup, text in _runs(insp):
        if sup:
            parts.append(f"{GREEN}{text}{RESET}" if colour else f"{PLAIN_OPEN}{text}{PLAIN_CLOSE}")
        elif kind == "video" and colour:
            parts.append(f"{CYAN}{text}{RESET}")
        else:
            parts.append(text)
    return "".join(parts)


def _show_piece(piece: str) -> str:
    m = _BYTE_PIECE.match(piece)
    if m:
        return f"{piece} ({chr(int(m.group(1), 16))!r})" if int(m.group(1), 16) < 128 else piece
    return piece


def format_tokens(insp: Inspection, colour: bool) -> list[str]:
    """One line per token (``pos id loss token``), the run of ``<vid_patch>`` as one line; ``[+]`` = has a loss."""
    lines = [f"{'pos':>11}  {'id':>6}  loss  token"]
    patch = insp.video_ids.patch
    i, n = 0, len(insp.input_ids)
    while i < n:
        j = i + 1
        if insp.input_ids[i] == patch:
            while j < n and insp.input_ids[j] == patch and insp.supervised[j] == insp.supervised[i]:
                j += 1
        sup = insp.supervised[i]
        pos = f"{i}" if j == i + 1 else f"{i}-{j - 1}"
        token = _show_piece(insp.tokens[i]) if j == i + 1 else f"{insp.tokens[i]} x{j - i}"
        line = f"{pos:>11}  {insp.input_ids[i]:>6}  {'[+]' if sup else '[ ]'}   {token}"
        if colour and sup:
            line = f"{GREEN}{line}{RESET}"
        elif colour and insp.input_ids[i] == patch:
            line = f"{CYAN}{line}{RESET}"
        lines.append(line)
        i = j
    return lines


def format_inspection(insp: Inspection, data_path: str | Path, colour: bool, show_tokens: bool = True) -> str:
    """The whole human-readable view: header, counts, features, prompt, token table, problems."""
    n_sup = sum(insp.supervised)
    span = insp.video_span
    span_len = 0 if span is None else span[1] - span[0]
    if insp.truncated:
        trunc = f"TRUNCATED from {insp.full_length} to model_max_length {insp.model_max_length}"
    else:
        trunc = f"not truncated (model_max_length {insp.model_max_length})"
    if insp.feature_file is None:
        features = "none (the record names no video)"
    elif insp.feature_dtype is None:
        features = f"{insp.feature_file}: NOT USABLE"
    else:
        features = f"{insp.feature_file}: shape {tuple(insp.feature_shape)} {insp.feature_dtype}"
    legend = f"{GREEN}green{RESET} = supervised" if colour else f"{PLAIN_OPEN}...{PLAIN_CLOSE} and [+] = supervised"
    lines = [
        f"record {insp.index} of {insp.num_records} in {data_path} (id {insp.record_id!r})",
        f"features  {features}",
        f"tokens    {len(insp.input_ids)} total: {insp.video_token_count} video"
        + (f" ({span_len} with start/end)" if span_len != insp.video_token_count else "")
        + f", {n_sup} supervised (carry a loss), {len(insp.input_ids) - n_sup - span_len} other masked; {trunc}",
        "",
        f"prompt ({legend}, everything else is masked with {IGNORE_INDEX}):",
        format_prompt(insp, colour),
    ]
    if show_tokens:
        lines += ["", "tokens:", *format_tokens(insp, colour)]
    if n_sup == 0:
        lines += ["", "warning: no token carries a loss; this record trains nothing"]
    lines += [f"problem: {p}" for p in insp.problems]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ command line
def build_parser() -> argparse.ArgumentParser:
    p = command_parser(
        "data inspect",
        "Show one training record exactly as the trainer renders it: tokens, ids, which carry a loss.",
    )
    p.add_argument("--data_path", required=True, help="the training JSON, as in training")
    p.add_argument(
        "--features_dir",
        "--video_folder",
        dest="video_folder",
        required=True,
        help="folder of the .pkl/.npy feature files, as in training",
    )
    p.add_argument("--model_name_or_path", required=True, help="the model folder whose tokenizer training uses")
    p.add_argument("--index", type=int, default=0, help="record to show (0-based position in the JSON list)")
    p.add_argument("--model_max_length", type=int, default=DEFAULT_MODEL_MAX_LENGTH, help="as in training")
    # --mm_use_vid_start_end or --mm_use_vid_start_end True, as the training parser accepts it
    p.add_argument(
        "--mm_use_vid_start_end",
        type=parse_bool,
        nargs="?",
        const=True,
        default=False,
        help="bracket the video tokens with <vid_start> ... <vid_end>, as in training",
    )
    p.add_argument(
        "--stage",
        choices=("pretrain", "finetune"),
        default=None,
        help="as in training: pretrain renders with the plain template (default: the document's)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the text view")
    p.add_argument(
        "--color",
        "--colour",
        choices=("auto", "always", "never"),
        default="auto",
        help="highlight supervised tokens with ANSI colours (auto: when stdout is a terminal)",
    )
    p.add_argument("--no_tokens", action="store_true", help="leave out the token-by-token table")
    return p


def use_colour(mode: str, stream=None) -> bool:
    """``always``/``never``, or ``auto``: a terminal and no ``NO_COLOR`` in the environment."""
    if mode != "auto":
        return mode == "always"
    stream = sys.stdout if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)()) and not os.environ.get("NO_COLOR")


def main(argv: list[str] | None = None) -> int:
    args = parse_args_or_status(build_parser(), argv)
    if isinstance(args, int):  # --help (0) or bad flags (2)
        return args
    try:
        # One line for a folder without a tokenizer (or with an LFS pointer) instead of transformers' hints.
        require_tokenizer(args.model_name_or_path, "--model_name_or_path")
        insp = inspect_record(
            args.data_path,
            args.video_folder,
            args.model_name_or_path,
            args.index,
            model_max_length=args.model_max_length,
            mm_use_vid_start_end=args.mm_use_vid_start_end,
            stage=args.stage,
        )
    except IndexError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError, UserError) as exc:  # one line; `--debug` (errors.run_main) shows the traceback
        if wants_debug(sys.argv):
            raise
        print(f"{PROG}: error: {error_message(exc) or exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(insp.to_json()))
    else:
        print(format_inspection(insp, args.data_path, use_colour(args.color), show_tokens=not args.no_tokens))
    return 1 if insp.problems else 0


if __name__ == "__main__":
    sys.exit(run_main(main, None, PROG))
