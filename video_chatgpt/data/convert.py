"""VideoInstruct JSON (``[{"video_id", "q", "a"}, ...]``) -> the training JSON the trainer reads.

The output is the original ``scripts/convert_instruction_json_to_training_format.py``'s, record for record and byte
for byte, because users train with files that script produced::

    {"id": video_id, "video": f"{video_id}.pkl",
     "conversations": [{"from": "human", "value": q + "\\n<video>"}, {"from": "gpt", "value": a}]}

The ``<video>`` placeholder goes after the question for an even index ``i`` of the *unfiltered* input and before it
(``"<video>\\n" + q``) for an odd one, so filtering never changes which side a sample gets.

With ``--clip_feature_path`` only items whose feature file exists in that folder are kept, and ``video`` is the
name of the file actually there (``<id>.npy`` for ``numpy.save`` features; ``<id>.pkl`` wins when both exist).

What differs from the original, on purpose: bad input (not JSON, not a list, an item without ``video_id``/``q``/``a``
or with a non-string value) stops with an error naming the file, the item index and the key, and writes nothing;
``--skip_invalid`` drops such items instead and reports each. The output is written atomically. The filter uses a
set (the original's list made it O(items x files)) and says what it dropped; a filter that would keep nothing
(almost always a wrong folder) is an error rather than an empty training JSON.

Run::

    python scripts/convert_instruction_json_to_training_format.py \\
        --input_json_file VideoInstruct_Dataset.json --output_json_file video_chatgpt_training.json \\
        [--clip_feature_path clip_features/] [--skip_invalid]
    video-chatgpt convert --input_json_file ... --output_json_file ...   # the same code
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from video_chatgpt.args import command_parser, parse_args_or_status
from video_chatgpt.constants import VIDEO_PLACEHOLDER
from video_chatgpt.errors import UserError, error_message, run_main
from video_chatgpt.features.store import index_feature_folder
from video_chatgpt.files import check_output, read_json, write_text_atomically

REQUIRED_KEYS = ("video_id", "q", "a")
# How many dropped video ids the filter summary names (the full count is always printed).
SHOWN_DROPPED_IDS = 5


class ConversionError(UserError, ValueError):
    """Input the converter cannot use. ``source`` (a file), ``index`` (an item) and ``key`` locate it when known."""

    def __init__(self, reason: str, index: int | None = None, key: str | None = None, source: str | None = None):
        self.reason, self.index, self.key, self.source = reason, index, key, source
        where = "" if source is None else f"{source}: "
        if index is not None:
            where += f"item {index}" + ("" if key is None else f", key {key!r}") + ": "
        super().__init__(where + reason)


@dataclass
class ConversionStats:
    """What ``convert_records`` did. ``skipped`` holds ``(index, reason)`` of the invalid items left out."""

    num_items: int = 0
    num_retained: int = 0
    filtered: bool = False
    num_feature_files: int = 0
    num_dropped_items: int = 0  # valid items without a feature file (filter only)
    dropped_videos: list[str] = field(default_factory=list)  # their distinct ids, first-seen order
    skipped: list[tuple[int, str]] = field(default_factory=list)

    @property
    def num_dropped_videos(self) -> int:
        return len(self.dropped_videos)


def item_error(index: int, item: object) -> ConversionError | None:
    """Why ``item`` (at ``index`` in the input list) cannot be converted, or None when it can."""
    if not isinstance(item, dict):  # what json.load gives for an object
        return ConversionError(f"is a JSON {_json_type(item)}, expected an object with {list(REQUIRED_KEYS)}", index)
    for key in REQUIRED_KEYS:
        if key not in item:
            return ConversionError(f"missing (keys present: {sorted(map(str, item))})", index, key)
        if not isinstance(item[key], str):
            return ConversionError(f"is a JSON {_json_type(item[key])}, expected a string", index, key)
    # An empty id would give the record ``"video": ".pkl"``, a file that cannot belong to any video.
    if not item["video_id"]:
        return ConversionError("is empty", index, "video_id")
    return None


def training_record(index: int, video_id: str, question: str, answer: str, video_file: str | None = None) -> dict:
    """One training record, exactly as the original built it (key order included: it shows in the JSON)."""
    # The placeholder side alternates with the input index ("This is critical" in the original): half the
    # samples show the video before the question, half after.
    human = f"{question}\n{VIDEO_PLACEHOLDER}" if index % 2 == 0 else f"{VIDEO_PLACEHOLDER}\n{question}"
    return {
        "id": video_id,
        "video": video_file if video_file is not None else f"{video_id}.pkl",
        "conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": answer}],
    }


def convert_records(
    items: object, feature_index: Mapping[str, str] | None, skip_invalid: bool = False
) -> tuple[list[dict], ConversionStats]:
    """Convert parsed VideoInstruct ``items`` to training records. Pure: no files are touched.

    ``feature_index`` (``video_id -> feature file name``, from ``index_feature_folder``) keeps only the items whose
    video has a feature file and names that file in ``video``; None keeps everything (``<video_id>.pkl``).
    An invalid item raises ``ConversionError`` with its index and key, unless ``skip_invalid``, which leaves it out
    and records it in ``stats.skipped``. Parity always follows the index in the unfiltered ``items``.
    """
    if not isinstance(items, (list, tuple)):
        raise ConversionError(f"the top level is a JSON {_json_type(items)}, expected a list of {{video_id, q, a}}")
    stats = ConversionStats(num_items=len(items), filtered=feature_index is not None)
    if feature_index is not None:
        stats.num_feature_files = len(feature_index)
    dropped: dict[str, None] = {}  # an insertion-ordered set of the dropped ids
    records = []
    for i, item in enumerate(items):
        error = item_error(i, item)
        if error is not None:
            if not skip_invalid:
                raise error
            stats.skipped.append((i, str(error)))
            continue
        vid = item["video_id"]
        video_file = None
        if feature_index is not None:
            video_file = feature_index.get(vid)
            if video_file is None:
                stats.num_dropped_items += 1
                dropped[vid] = None
                continue
        records.append(training_record(i, vid, item["q"], item["a"], video_file))
    stats.num_retained = len(records)
    stats.dropped_videos = list(dropped)
    return records, stats


def training_json_text(records: list[dict]) -> str:
    """The training JSON text, exactly as the original's ``json.dump(records, f)`` wrote it (all defaults).

    The defaults include ``ensure_ascii=True``: non-ASCII text is written as ``\\uXXXX`` escapes. That keeps the
    file byte-identical to the original's, and the text itself unchanged: ``json.load`` gives back the very same
    strings (lone surrogates included, which ``ensure_ascii=False`` could not even encode to UTF-8).
    ``json.dumps`` gives the same text as ``json.dump`` but uses the C encoder (2-3x faster on 100K records).
    """
    return json.dumps(records)


def check_written_output(output: str | Path, inputs: dict, flag: str) -> None:
    """``files.check_output`` as a ``ConversionError`` (so the command adds "nothing was written")."""
    try:
        check_output(output, inputs, flag)
    except UserError as exc:
        raise ConversionError(str(exc)) from None


def feature_index_of(clip_feature_path: str | Path | None) -> dict[str, str] | None:
    """``index_feature_folder`` of ``--clip_feature_path`` (None when not given); a ``ConversionError`` for a
    path that is not a folder."""
    if not clip_feature_path:
        return None
    if not Path(clip_feature_path).is_dir():
        raise ConversionError("--clip_feature_path is not a folder", source=str(clip_feature_path))
    return index_feature_folder(clip_feature_path)


@contextlib.contextmanager
def nothing_written(output: str | Path) -> Iterator[None]:
    """A command's bad input (``ConversionError``) or failed write (``OSError``: the temporary file is already gone)
    as one ``UserError`` line saying that nothing was written."""
    try:
        yield
    except ConversionError as exc:
        raise UserError(f"{exc}; nothing was written") from exc
    except OSError as exc:  # e.g. a read-only output folder or a full disk
        raise UserError(f"{error_message(exc)}; nothing was written to {output}") from exc


def read_items(path: str | Path) -> object:
    """Parse the input JSON (``files.read_json``: UTF-8/16/32, bounded, any nesting); any failure becomes
    ``ConversionError`` naming the file and what is wrong."""
    path = Path(path)
    try:
        return read_json(path)
    except OSError as exc:
        raise ConversionError(f"cannot read the input file ({exc.strerror or exc})", source=str(path)) from exc
    except UserError as exc:
        raise ConversionError(str(exc)) from None


def convert_file(
    input_json_file: str | Path,
    output_json_file: str | Path,
    clip_feature_path: str | Path | None = None,
    skip_invalid: bool = False,
) -> ConversionStats:
    """Read, convert and atomically write. Raises ``ConversionError`` (message starts with the file) on bad input."""
    # The atomic rename would put the training JSON where the VideoInstruct JSON was: the input would be gone.
    check_written_output(output_json_file, {"--input_json_file": input_json_file}, "--output_json_file")
    feature_index = feature_index_of(Path(clip_feature_path) if clip_feature_path else None)  # names it as a Path
    items = read_items(input_json_file)
    try:
        records, stats = convert_records(items, feature_index, skip_invalid=skip_invalid)
    except ConversionError as exc:
        raise ConversionError(exc.reason, exc.index, exc.key, source=str(input_json_file)) from None
    if feature_index is not None and stats.num_retained == 0 and stats.dropped_videos:
        # An empty training JSON cannot be trained on; this is almost always a wrong --clip_feature_path.
        example = next(iter(feature_index), None)
        found = f"{len(feature_index)} .pkl/.npy files" + (f", e.g. {feature_index[example]!r}" if example else "")
        raise ConversionError(
            f"none of the {stats.num_items} items has a feature file there ({found}); "
            f"the first item's video_id is {stats.dropped_videos[0]!r}",
            source=str(clip_feature_path),
        )
    write_text_atomically(output_json_file, training_json_text(records))
    return stats


def summary_lines(stats: ConversionStats, clip_feature_path: str | Path | None = None) -> list[str]:
    """The lines printed after a conversion; the last is the original's ``Total annotations retained: N``."""
    lines = [f"Skipped invalid {reason}" for _, reason in stats.skipped]
    if stats.skipped:
        lines.append(f"Skipped {len(stats.skipped)} invalid item(s) of {stats.num_items}")
    if stats.filtered:
        shown = ", ".join(stats.dropped_videos[:SHOWN_DROPPED_IDS])
        more = " ..." if stats.num_dropped_videos > SHOWN_DROPPED_IDS else ""
        lines.append(
            f"Feature filter {clip_feature_path}: {stats.num_feature_files} feature files; dropped "
            f"{stats.num_dropped_items} item(s) of {stats.num_items} for {stats.num_dropped_videos} distinct "
            f"video(s) without a feature file" + (f" ({shown}{more})" if shown else "")
        )
    lines.append(f"Total annotations retained: {stats.num_retained}")
    return lines


PROG = "convert_instruction_json_to_training_format.py"


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("convert", "Convert the VideoInstruct JSON to the Video-ChatGPT training JSON.")
    parser.add_argument("--input_json_file", required=True, help="VideoInstruct JSON: a list of {video_id, q, a}")
    parser.add_argument("--output_json_file", required=True, help="training JSON to write (atomically)")
    parser.add_argument(
        "--features_dir",
        "--clip_feature_path",
        dest="clip_feature_path",
        default="",
        help="folder of .pkl/.npy features; keep only items whose video has a feature file there",
    )
    parser.add_argument(
        "--skip_invalid",
        action="store_true",
        help="leave out invalid items (and report each index) instead of stopping with an error",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command line: returns 0 on success, 2 on bad flags; raises ``UserError`` on bad input (nothing written),
    which ``run_main`` (the console command, the script) prints as one line with exit status 1."""
    args = parse_args_or_status(build_parser(), argv)
    if isinstance(args, int):  # --help (0) or bad flags (2)
        return args
    with nothing_written(args.output_json_file):
        stats = convert_file(args.input_json_file, args.output_json_file, args.clip_feature_path, args.skip_invalid)
    for line in summary_lines(stats, args.clip_feature_path):
        print(line)
    return 0


def _json_type(value: object) -> str:
    """The JSON name of a parsed value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


if __name__ == "__main__":
    sys.exit(run_main(main, None, PROG))
