"""``video-chatgpt data import``: the field's video instruction formats -> the training JSON that ``convert`` writes.

Run::

    video-chatgpt data import --format llava --input 0_30_s_academic_v0_1_cap_processed.json \\
        --output_json video_chatgpt_training.json [--clip_feature_path clip_features/] [--skip_invalid]
    video-chatgpt data import --format sharegpt --input mllm_video_demo.json --output_json train.json
    video-chatgpt data import --format qwen --input train.jsonl --output_json train.json

A ``.jsonl`` input is read one record per line (blank lines skipped), any other name as one JSON list. Formats:

* ``llava``: LLaVA / LLaVA-Video-178K, ``{"id", "video": path, "conversations": [{"from": "human"|"gpt",
  "value"}]}``. The video's placeholder is ``<video>`` or LLaVA's ``<image>`` (LLaVA-Video-178K writes ``<image>\\n``
  before video questions); a record with an ``image`` key is an image record.
* ``sharegpt``: LLaMA-Factory's ShareGPT (its ``data/README.md``): ``{"messages": [{"role": "user"|"assistant"|
  "system", "content"}], "videos": [path]}`` (the OpenAI tags) or ``{"conversations": [{"from": "human"|"gpt"|
  "system"|"function_call"|"observation", "value"}], "system", "videos": [path]}`` (the default tags). ``<video>``,
  ``<image>``, ``<audio>`` tags go with ``videos``, ``images``, ``audios``; a video may be a list of frames.
* ``qwen``: Qwen2-VL / Qwen2.5-VL fine-tuning data (``qwen-vl-finetune``): ``{"video": path, "image": path(s),
  "conversations": [{"from": "human"|"gpt", "value"}]}`` with ``<video>``/``<image>`` tags (Qwen-VL's
  ``user``/``assistant`` and ``Picture 1: <img>path</img>`` images are read too); or Qwen2-VL's chat messages
  ``{"messages": [{"role", "content": [{"type": "video", "video": path}, {"type": "text", "text"}]}]}`` (a string
  content is text; content items are joined with a newline, a video item becoming ``<video>``).

Every imported record is the shape training reads, the converter's with more turns::

    {"id": <the record's id, else the video id>, "video": "<video id>.pkl",
     "conversations": [{"from": "human", "value": "<video>\\n..."}, {"from": "gpt", "value": "..."}, ...]}

``video`` is the feature file the extractor writes for that video: ``features.store.video_id_of`` of the path's file
name (the text before its first dot) + ``.pkl``; with ``--clip_feature_path`` the name of the file actually in that
folder (``.npy`` too), and records whose video has none are refused, as ``convert`` does. The turns are kept in order,
each placeholder where the source put it (``<image>`` standing for the video becomes ``<video>``).

What is refused (left out and counted by reason in the summary, never a traceback): records with images only, with
no media at all (the trainer cannot batch them with video records), with several videos (the model reads one video
per sample), with images or audio besides the video, with a video given as a list of frames (there is no file to
extract), with tool-call turns; two different video paths that map to one feature file name (the later records).
System prompts (a leading system turn, or ShareGPT's ``system`` field) are dropped and counted: training puts its
template's own system message first.

Malformed records (a missing key, a wrong type, an unknown role, turns that do not alternate user/assistant or end
with a user turn, no placeholder for the video or more than one) stop the import with a ``ConversionError`` (a
``UserError``) naming the file, the record index and the key; nothing is written. ``--skip_invalid`` leaves them out
instead and reports each. The output is written atomically and may not be the input file.
"""

from __future__ import annotations

import argparse
import json
import posixpath
import re
import sys
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from video_chatgpt.args import command_parser, parse_args_or_status
from video_chatgpt.constants import VIDEO_PLACEHOLDER
from video_chatgpt.data.convert import (
    ConversionError,
    _json_type,
    check_written_output,
    feature_index_of,
    nothing_written,
    read_items,
    training_json_text,
)
from video_chatgpt.errors import UserError, run_main
from video_chatgpt.features.store import video_id_of
from video_chatgpt.files import parse_json, write_text_atomically

FORMATS = ("llava", "sharegpt", "qwen")
IMAGE_TAG = "<image>"
# Qwen-VL (the first one) puts images inline: "Picture 1: <img>assets/demo.jpeg</img>\n...".
QWEN_VL_IMAGE = re.compile(r"<img>.*?</img>", re.DOTALL)

# Role names of the three formats -> the training JSON's (plus "system" and "tool", which are never written).
ROLE_NAMES = {
    "human": ("human", "user"),
    "gpt": ("gpt", "assistant"),
    "system": ("system",),
    "tool": ("function_call", "observation", "function", "tool"),
}
ROLES = {name: role for role, names in ROLE_NAMES.items() for name in names}

# Why a record is refused -> the words of the summary. Insertion order is the summary's order.
REFUSALS = {
    "images_only": "images only",
    "no_video": "no video (text only)",
    "several_videos": "several videos",
    "video_frames": "a video given as frames",
    "images_and_video": "images besides the video",
    "audio": "audio",
    "tool_turns": "tool-call turns",
    "no_feature_file": "no feature file",
    "same_feature_name": "another video maps to the same feature file",
    "malformed": "malformed (--skip_invalid)",
}
# Detail lines printed before the summary (the counts are always complete).
SHOWN_DETAILS = 5


@dataclass
class Sample:
    """One source record as read, before any decision. ``turns``: ``(role, text)`` with the source's tags in place.

    ``videos`` holds a path (str) or a list of frame paths per video; ``image_alias``: ``<image>`` is the video's
    placeholder (LLaVA), not an image of its own.
    """

    id: object
    turns: list[tuple[str, str]]
    videos: list[str | list]
    num_images: int = 0
    num_audios: int = 0
    system: bool = False
    image_alias: bool = False
    messages_key: str = "conversations"  # the source keys of the turns and of the video, for error messages
    media_key: str = "video"


@dataclass
class ImportStats:
    """What ``import_records`` did: the counts of the summary line."""

    fmt: str
    num_records: int = 0
    num_written: int = 0
    refused: Counter = field(default_factory=Counter)  # REFUSALS key -> records
    num_system_dropped: int = 0  # among the written records
    filtered: bool = False
    num_feature_files: int = 0
    details: list[str] = field(default_factory=list)  # skipped records and name collisions, first SHOWN_DETAILS

    @property
    def num_refused(self) -> int:
        return sum(self.refused.values())

    def note(self, line: str) -> None:
        if len(self.details) < SHOWN_DETAILS:
            self.details.append(line)


# --------------------------------------------------------------------------------------------------------------
# Reading one record of each format (pure; an error carries the key, the caller adds the file and the index)


def _short(value: object, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _string(value: object, key: str, what: str) -> str:
    if not isinstance(value, str):
        raise ConversionError(f"{what} is a JSON {_json_type(value)}, expected a string", key=key)
    return value


def _media_item(item: object, key: str, what: str) -> str | list:
    """A path (a non-empty string) or one video's frames (a non-empty list of paths)."""
    if isinstance(item, str) and item:
        return item
    if isinstance(item, list) and item and all(isinstance(f, str) for f in item):
        return item
    raise ConversionError(f"{what} is {_short(item)}, expected a non-empty path", key=key)


def _media(record: Mapping, key: str) -> list[str | list]:
    """A media field (a path, or a list of paths / frame lists) as a list; an absent or null field is []."""
    value = record.get(key)
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise ConversionError(f"is a JSON {_json_type(value)}, expected a path or a list of paths", key=key)
    return [_media_item(item, key, f"item {k}") for k, item in enumerate(items)]


def _turns(record: Mapping, key: str, role_key: str, text_key: str) -> list[tuple[str, object]]:
    """``record[key]``, a list of ``{role_key, text_key}`` objects, as ``(role, text)`` with the roles of ``ROLES``."""
    if key not in record:
        raise ConversionError(f"missing (keys present: {sorted(map(str, record))})", key=key)
    turns = record[key]
    if not isinstance(turns, list):
        raise ConversionError(f"is a JSON {_json_type(turns)}, expected a list of turns", key=key)
    out = []
    for k, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise ConversionError(f"turn {k} is a JSON {_json_type(turn)}, expected an object", key=key)
        for inner in (role_key, text_key):
            if inner not in turn:
                raise ConversionError(f"turn {k} has no {inner!r} (keys: {sorted(map(str, turn))})", key=key)
        role = _string(turn[role_key], key, f"turn {k}'s {role_key!r}")
        if role not in ROLES:
            raise ConversionError(f"turn {k}'s {role_key!r} is {role!r}, expected one of {', '.join(ROLES)}", key=key)
        out.append((ROLES[role], turn[text_key]))
    return out


def _text_turns(record: Mapping, key: str, role_key: str, text_key: str) -> list[tuple[str, str]]:
    turns = _turns(record, key, role_key, text_key)
    return [(role, _string(text, key, f"turn {k}'s {text_key!r}")) for k, (role, text) in enumerate(turns)]


def parse_llava(record: Mapping) -> Sample:
    """LLaVA / LLaVA-Video-178K: ``video`` (or ``image``) and ``conversations`` of ``from``/``value``."""
    turns = _text_turns(record, "conversations", "from", "value")
    images = _media(record, "image")
    return Sample(record.get("id"), turns, _media(record, "video"), num_images=len(images), image_alias=True)


def parse_sharegpt(record: Mapping) -> Sample:
    """LLaMA-Factory ShareGPT: ``messages`` (role/content) or ``conversations`` (from/value); ``videos``, ..."""
    key, role_key, text_key = (
        ("messages", "role", "content") if "messages" in record else ("conversations", "from", "value")
    )
    turns = _text_turns(record, key, role_key, text_key)
    system = record.get("system")
    if system is not None:
        _string(system, "system", "the system prompt")
    return Sample(
        record.get("id"),
        turns,
        _media(record, "videos"),
        num_images=len(_media(record, "images")),
        num_audios=len(_media(record, "audios")),
        system=bool(system),
        messages_key=key,
        media_key="videos",
    )


def _qwen_content(content: object, k: int) -> tuple[str, list[str | list], int]:
    """One Qwen2-VL message content -> (text with ``<video>``/``<image>`` tags, its videos, its number of images).

    The content is a string, or a list of items typed ``text``, ``video`` or ``image``/``image_url`` (``qwen_vl_utils``
    also accepts an item with only the ``video``/``image``/``text`` key); items are joined with a newline.
    """
    if isinstance(content, str):
        return content, [], 0
    if not isinstance(content, list):
        what = f"turn {k}'s 'content' is a JSON {_json_type(content)}"
        raise ConversionError(f"{what}, expected a string or a list of typed items", key="messages")
    parts, videos, images = [], [], 0
    for j, item in enumerate(content):
        where = f"turn {k}'s content item {j}"
        kind = None
        if isinstance(item, dict):
            kind = item.get("type") or next((t for t in ("video", "image", "image_url", "text") if t in item), None)
        if kind == "text":
            parts.append(_string(item.get("text"), "messages", f"{where}'s 'text'"))
        elif kind == "video":
            videos.append(_media_item(item.get("video"), "messages", f"{where}'s 'video'"))
            parts.append(VIDEO_PLACEHOLDER)
        elif kind in ("image", "image_url"):
            images += 1
            parts.append(IMAGE_TAG)
        else:
            raise ConversionError(f"{where} is {_short(item)}, expected a text, video or image item", key="messages")
    return "\n".join(parts), videos, images


def parse_qwen(record: Mapping) -> Sample:
    """Qwen2-VL chat ``messages`` with typed content, or qwen-vl-finetune's ``video``/``image`` + ``conversations``."""
    if "messages" in record:
        turns, videos, num_images = [], [], 0
        for k, (role, content) in enumerate(_turns(record, "messages", "role", "content")):
            text, found, images = _qwen_content(content, k)
            turns.append((role, text))
            videos += found
            num_images += images
        return Sample(record.get("id"), turns, videos, num_images, messages_key="messages", media_key="messages")
    turns = _text_turns(record, "conversations", "from", "value")
    inline_images = sum(len(QWEN_VL_IMAGE.findall(text)) for _, text in turns)  # Qwen-VL's <img>path</img>
    num_images = len(_media(record, "image")) + inline_images
    return Sample(record.get("id"), turns, _media(record, "video"), num_images)


PARSERS = {"llava": parse_llava, "sharegpt": parse_sharegpt, "qwen": parse_qwen}


# --------------------------------------------------------------------------------------------------------------
# From a sample to a training record (pure)


def refusal(sample: Sample) -> str | None:
    """Why the sample cannot be one training record of one video (a ``REFUSALS`` key), or None when it can."""
    if not sample.videos:
        return "images_only" if sample.num_images else "no_video"
    if len(sample.videos) > 1:
        return "several_videos"
    if not isinstance(sample.videos[0], str):
        return "video_frames"
    if sample.num_images:
        return "images_and_video"
    if sample.num_audios:
        return "audio"
    if any(role == "tool" for role, _ in sample.turns):
        return "tool_turns"
    return None


_ROLE_WORDS = {"human": "user", "gpt": "assistant", "system": "system", "tool": "tool"}


def training_turns(sample: Sample) -> tuple[list[dict], bool]:
    """The sample's turns as training turns (``from``: ``human``/``gpt``), and whether a system prompt was dropped.

    Raises ``ConversionError`` (with the key of the turns) when the turns do not alternate user, assistant, ... from
    a user turn to an assistant turn, or when the user turns do not hold exactly one video placeholder.
    """
    key = sample.messages_key
    turns, system = sample.turns, sample.system
    if turns and turns[0][0] == "system":
        turns, system = turns[1:], True
    first = len(sample.turns) - len(turns)  # source index of turns[0], for the messages
    if not turns:
        raise ConversionError("has no user or assistant turn", key=key)
    tags = f"{VIDEO_PLACEHOLDER} or {IMAGE_TAG}" if sample.image_alias else VIDEO_PLACEHOLDER
    out, placeholders = [], 0
    for k, (role, text) in enumerate(turns, start=first):
        expected = "human" if (k - first) % 2 == 0 else "gpt"
        if role != expected:
            raise ConversionError(
                f"turn {k} is a {_ROLE_WORDS[role]} turn where a {_ROLE_WORDS[expected]} turn is due "
                "(turns alternate user, assistant, starting with the user)",
                key=key,
            )
        if sample.image_alias:  # LLaVA's <image> stands for the record's video
            text = text.replace(IMAGE_TAG, VIDEO_PLACEHOLDER)
        elif IMAGE_TAG in text:
            raise ConversionError(f"turn {k} has an {IMAGE_TAG} tag but the record has no image", key=key)
        count = text.count(VIDEO_PLACEHOLDER)
        if count and role == "gpt":
            raise ConversionError(f"turn {k} (the assistant's) holds {tags}; the video goes in a user turn", key=key)
        placeholders += count
        out.append({"from": role, "value": text})
    if out[-1]["from"] != "gpt":
        raise ConversionError(f"ends with a user turn (turn {len(sample.turns) - 1}): no answer to train on", key=key)
    if placeholders == 0:
        raise ConversionError(f"no {tags} placeholder for the video; put one in the first user turn", key=key)
    if placeholders > 1:
        raise ConversionError(f"{placeholders} {tags} placeholders for one video; keep one", key=key)
    return out, system


def video_file_name(video: str) -> str:
    """The file name in a video path: the last part of a POSIX or Windows path, ``file://`` or other URL."""
    if "://" in video:
        video = video.split("?", 1)[0].split("#", 1)[0]
    return re.split(r"[\\/]", video)[-1]


def _same_video_key(video: str) -> str:
    """A video path in one spelling (``./a/b.mp4``, ``a//b.mp4`` and ``file://a/b.mp4`` are one video)."""
    video = video.removeprefix("file://").replace("\\", "/")
    return posixpath.normpath(video)


def _record_id(value: object, video_id: str) -> str:
    """The training record's ``id``: the source's id (a string or a number), else the video id as ``convert``."""
    if value is None or value == "":
        return video_id
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise ConversionError(f"is a JSON {_json_type(value)}, expected a string or a number", key="id")


def import_records(
    items: list,
    fmt: str,
    feature_index: Mapping[str, str] | None = None,
    skip_invalid: bool = False,
    source: str | None = None,
    lines: list[int] | None = None,
) -> tuple[list[dict], ImportStats]:
    """Import parsed ``items`` of format ``fmt``. Pure: no files are touched.

    ``feature_index`` (``video_id -> feature file name``, ``index_feature_folder``) names the file actually there and
    refuses records whose video has none; None names ``<video_id>.pkl``. ``source`` and ``lines`` (a JSONL input's
    line number per item) locate errors. A malformed record raises ``ConversionError`` with the file, its index and
    the key, unless ``skip_invalid``, which counts it as refused and notes the error.
    """
    parse = PARSERS[fmt]
    stats = ImportStats(fmt, num_records=len(items), filtered=feature_index is not None)
    stats.num_feature_files = len(feature_index) if feature_index is not None else 0
    first_video: dict[str, str] = {}  # feature file name -> the first video (path) mapped to it
    records = []
    for i, item in enumerate(items):
        try:
            if not isinstance(item, dict):
                raise ConversionError(f"is a JSON {_json_type(item)}, expected an object (one record)")
            sample = parse(item)
            reason = refusal(sample)
            if reason is None:
                turns, system = training_turns(sample)
                video = sample.videos[0]
                video_id = video_id_of(video_file_name(video))
                if not video_id:
                    raise ConversionError(f"{video!r} names no video file", key=sample.media_key)
                record_id = _record_id(sample.id, video_id)
        except ConversionError as exc:
            where = source if lines is None or source is None else f"{source}:{lines[i]}"
            error = ConversionError(exc.reason, i, exc.key, where)
            if not skip_invalid:
                raise error from None
            stats.refused["malformed"] += 1
            stats.note(f"Skipped invalid {error}")
            continue
        if reason is not None:
            stats.refused[reason] += 1
            continue
        name = f"{video_id}.pkl" if feature_index is None else feature_index.get(video_id)
        if name is None:
            stats.refused["no_feature_file"] += 1
            continue
        key = _same_video_key(video)
        first = first_video.setdefault(name, key)
        if first != key:
            # Two different videos would share one feature file: the extractor keeps only one of them.
            stats.refused["same_feature_name"] += 1
            stats.note(f"Refused item {i}: its video {video!r} and {first!r} both map to {name}; rename one of them")
            continue
        stats.num_system_dropped += system
        records.append({"id": record_id, "video": name, "conversations": turns})
    stats.num_written = len(records)
    return records, stats


# --------------------------------------------------------------------------------------------------------------
# Files and the command


def read_input(path: str | Path) -> tuple[list, list[int] | None]:
    """The input's records and, for a ``.jsonl`` file, each record's line number; errors name the file (and line)."""
    path = Path(path)
    if path.suffix.lower() != ".jsonl":
        try:
            items = read_items(path)
        except ConversionError as exc:
            if "Extra data" not in exc.reason:
                raise
            hint = "; a file of one JSON record per line must be named .jsonl"
            raise ConversionError(exc.reason + hint, source=exc.source) from None
        if not isinstance(items, list):
            raise ConversionError(
                f"the top level is a JSON {_json_type(items)}, expected a list of records", source=str(path)
            )
        return items, None
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise ConversionError(f"cannot read the input file ({exc.strerror or exc})", source=str(path)) from exc
    except UnicodeDecodeError as exc:
        raise ConversionError(f"is not UTF-8 text ({exc})", source=str(path)) from exc
    items, lines = [], []
    # split("\n"), not splitlines(): JSON strings may hold U+2028 and other characters splitlines() breaks at.
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            items.append(parse_json(line, f"line {n}"))
        except UserError as exc:
            raise ConversionError(str(exc), source=str(path)) from None
        lines.append(n)
    return items, lines


def refused_text(stats: ImportStats) -> str:
    """``3 refused (images only: 2; several videos: 1)``."""
    reasons = "; ".join(f"{REFUSALS[key]}: {stats.refused[key]}" for key in REFUSALS if stats.refused[key])
    return f"{stats.num_refused} refused" + (f" ({reasons})" if reasons else "")


def summary_line(stats: ImportStats, output_json: str | Path) -> str:
    """The one line printed after an import: records in, written, refused by reason, system prompts dropped."""
    line = f"Imported {stats.fmt}: {stats.num_records} record(s) in, {stats.num_written} written to {output_json}, "
    line += refused_text(stats)
    if stats.filtered:
        line += f"; {stats.num_feature_files} feature files in --clip_feature_path"
    if stats.num_system_dropped:
        line += f"; {stats.num_system_dropped} system prompt(s) dropped (training uses its template's system message)"
    return line


def import_file(
    fmt: str,
    input_path: str | Path,
    output_json: str | Path,
    clip_feature_path: str | Path | None = None,
    skip_invalid: bool = False,
) -> ImportStats:
    """Read, import and atomically write. Raises ``ConversionError`` (message starts with the file) on bad input."""
    if fmt not in PARSERS:
        raise UserError(f"--format {fmt}: unknown; expected one of {', '.join(FORMATS)}")
    # The atomic rename would put the training JSON where the source was: the input would be gone.
    check_written_output(output_json, {"--input": input_path}, "--output_json")
    feature_index = feature_index_of(clip_feature_path)
    items, lines = read_input(input_path)
    records, stats = import_records(items, fmt, feature_index, skip_invalid, str(input_path), lines)
    if not records:
        # An empty training JSON cannot be trained on; say why every record went.
        raise ConversionError(
            f"none of the {stats.num_records} records can be imported as --format {fmt} ({refused_text(stats)})",
            source=str(input_path),
        )
    write_text_atomically(output_json, training_json_text(records))
    return stats


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(
        "data import",
        "Import LLaVA, ShareGPT (LLaMA-Factory) or Qwen-VL video instruction data as the training JSON.",
    )
    p.add_argument("--format", required=True, choices=FORMATS, help="the input's format (see the module docstring)")
    p.add_argument("--input", required=True, help="the input: a JSON list of records, or .jsonl with one per line")
    p.add_argument("--output_json", required=True, help="training JSON to write (atomically)")
    p.add_argument(
        "--clip_feature_path",
        default="",
        help="folder of .pkl/.npy features; name the files there and refuse records whose video has none",
    )
    p.add_argument(
        "--skip_invalid",
        action="store_true",
        help="leave out malformed records (and report them) instead of stopping with an error",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Command line: 0 on success, 2 on bad flags; raises ``UserError`` on bad input (nothing written)."""
    args = parse_args_or_status(build_parser(), argv)
    if isinstance(args, int):  # --help (0) or bad flags (2)
        return args
    with nothing_written(args.output_json):
        stats = import_file(args.format, args.input, args.output_json, args.clip_feature_path, args.skip_invalid)
    for line in stats.details:
        print(line)
    print(summary_line(stats, args.output_json))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, None, "video-chatgpt data import"))
