"""Check the training data before training: everything that would make a run die hours in, found in seconds.

The command is ``video-chatgpt data check`` (``data.cli``). From Python (the trainer calls this before step 1 and
stops with ``report.format()`` when ``report.fatal``)::

    report = check_training_data("video_chatgpt_training.json", "clip_features/", base=open_base(model_dir),
                                 model_max_length=2048, deep=True)

What is reported, and whether training would fail on it (``fatal``) or only learn less well (a warning):

* fatal: an unreadable training JSON; malformed records (missing keys, non-alternating turns); a record whose
  ``<video>`` placeholders do not match its video (a video needs exactly one; the dataset raises otherwise);
  records without a video among records with one (a batch cannot mix them); records whose ``video`` is an absolute
  path or climbs out of the video folder (``data.paths``; such a file is never opened); records whose feature file
  is missing (the original's most reported crash); feature files that cannot be read, that do not share one shape,
  whose width is not ``expected_width``, or that hold NaN/inf; a feature folder whose manifest (written by our
  extraction) gives another width or token count than the model's; a ``model_max_length`` that would cut a span;
* warnings: feature files whose dtype is not ``expected_dtype`` (the dataset casts them to float16), a manifest
  naming another vision tower than the model's ``mm_vision_tower``, empty questions or answers, duplicate records
  (same video and conversations), records longer than ``model_max_length`` (truncated on the right), and records
  left with no answer token to train on.

How feature files are checked. First every file the data names is checked from its *header*, without reading its
data (``features.store.read_feature_header``: ``.npy`` header / restricted unpickler with the data seeked over,
every length bounded by the file size, so a forged tiny pickle cannot allocate gigabytes). Then the values are
read for NaN/inf: every file with ``deep=True`` (what ``data check`` does unless ``--quick``; one pass that loads
each file, its header parsed on the way), else a spread-out sample of ``sample_size`` files. One NaN in one file is
enough to make every projector weight NaN, so the command reads them all by default: on 13,000 cached files of
356 x 1024 fp16 (VideoInstruct-100K's count; 9.5 GB) 10.4 CPU-s against 5.8 for ``--quick`` (which reads 16 and
says so); uncached, the disk bounds it (~20 s on a local SSD, minutes on a network file system).
Token lengths use ``render_sample`` with the training template, i.e. the very ids the trainer builds; records are
rendered in ``num_workers`` threads (SentencePiece releases the GIL while encoding).
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np

from video_chatgpt.bases import Base
from video_chatgpt.constants import VIDEO_PLACEHOLDER
from video_chatgpt.data.conversation import render_sample, training_template
from video_chatgpt.data.paths import unsafe_video_reason
from video_chatgpt.data.tokenizer import SegmentEncoder, load_video_tokenizer
from video_chatgpt.errors import UserError
from video_chatgpt.features.store import FeatureFileError, check_features_match, index_feature_folder, load_features
from video_chatgpt.features.store import read_feature_header as store_read_feature_header
from video_chatgpt.files import parse_json, read_bytes_bounded
from video_chatgpt.weights.check import require_tokenizer

# The dtype the original wrote and the official downloads hold.
DEFAULT_FEATURE_DTYPE = "float16"
# How many records/files a report lists per kind in ``format()`` (all of them are in ``to_dict()``).
DEFAULT_MAX_LISTED = 10
# Feature files loaded fully (values checked) when not ``deep``.
DEFAULT_SAMPLE_SIZE = 16
# Records per rendering task and files per header task: large enough that thread hand-off costs nothing.
_RENDER_CHUNK = 512
_FILE_CHUNK = 128


@dataclass(frozen=True)
class Kind:
    fatal: bool
    title: str


# Every kind of problem, in the order reports list them. Read-only: it is shared by every report.
KINDS: Mapping[str, Kind] = MappingProxyType(
    {
        "data_file": Kind(True, "the training JSON cannot be used"),
        "malformed": Kind(True, "malformed records (the dataset would raise on them)"),
        "video_placeholder": Kind(True, "records whose <video> placeholders do not match their video"),
        "no_video": Kind(True, "records without a video among records with one (a batch cannot mix them)"),
        "unsafe_path": Kind(True, "records whose video is an absolute path or climbs out of --video_folder"),
        "feature_manifest": Kind(True, "the feature folder's manifest does not fit the model"),
        "manifest_tower": Kind(False, "the feature folder was made with another vision tower than the model's"),
        "missing_feature": Kind(True, "records whose feature file is missing"),
        "unreadable_feature": Kind(True, "feature files that cannot be read as a 2-D numeric array"),
        "wrong_shape": Kind(True, "feature files of the wrong shape"),
        "wrong_dtype": Kind(False, "feature files of another dtype (the dataset casts them to float16)"),
        "non_finite": Kind(True, "feature files holding NaN or inf (among the files whose values were read)"),
        "video_span_cut": Kind(True, "records whose video span model_max_length would cut"),
        "empty_question": Kind(False, "records with an empty question"),
        "empty_answer": Kind(False, "records with an empty answer"),
        "duplicate": Kind(False, "duplicate records (same video and conversations as an earlier record)"),
        "truncated": Kind(False, "records longer than model_max_length (truncated on the right)"),
        "no_supervised_tokens": Kind(False, "records with no answer token left to train on"),
    }
)


@dataclass(frozen=True)
class Problem:
    """One finding. ``index``: the record in the training JSON; ``file``: the feature file (when about one)."""

    kind: str
    message: str
    index: int | None = None
    file: str | None = None


@dataclass(frozen=True)
class FeatureInfo:
    """Shape and dtype of a feature file, from its header or a full load (then also its NaN/inf count)."""

    shape: tuple[int, ...]
    dtype: str
    non_finite: int | None = None  # None: the values were not read


@dataclass
class TokenLengths:
    """Distribution of rendered sample lengths (BOS, prompt, video span, answer, ``</s>``) in tokens."""

    count: int
    min: int
    median: int
    p95: int
    p99: int
    max: int
    num_video_tokens: int
    model_max_length: int | None = None
    num_truncated: int = 0


@dataclass
class DataReport:
    """What ``check_training_data`` found. ``fatal``: training would fail on this data."""

    data_path: str
    video_folder: str
    num_records: int = 0
    num_videos: int = 0  # distinct feature files the records name
    num_feature_files: int = 0  # .pkl/.npy files in the folder
    num_headers_checked: int = 0
    num_files_loaded: int = 0
    deep: bool = False
    feature_shape: tuple[int, ...] | None = None  # the most common shape among the readable files
    feature_dtype: str | None = None
    num_video_tokens: int | None = None  # rows the model places per video (used for token lengths)
    token_lengths: TokenLengths | None = None
    problems: dict[str, list[Problem]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase

    def values_checked(self) -> str:
        """ "all N files", or "k of N files only (...)" when only a sample was read."""
        if self.deep or self.num_files_loaded >= self.num_headers_checked:
            return f"all {self.num_files_loaded} files"
        return (
            f"{self.num_files_loaded} of {self.num_headers_checked} files only (a sample; without --quick every "
            f"file is read; NaN/inf in the others stop training when it loads them)"
        )

    def add(self, problems: Iterable[Problem]) -> None:
        for p in problems:
            self.problems.setdefault(p.kind, []).append(p)

    @property
    def counts(self) -> dict[str, int]:
        return {kind: len(self.problems[kind]) for kind in KINDS if self.problems.get(kind)}

    @property
    def fatal_kinds(self) -> list[str]:
        return [kind for kind in self.counts if KINDS[kind].fatal]

    @property
    def fatal(self) -> bool:
        return bool(self.fatal_kinds)

    def format(self, max_listed: int = DEFAULT_MAX_LISTED) -> str:
        """Human-readable report: summary lines, then per kind its count and the first ``max_listed`` findings."""
        lines = [
            f"Training data: {self.data_path} ({self.num_records} records, {self.num_videos} distinct videos)",
            f"Feature folder: {self.video_folder} ({self.num_feature_files} .pkl/.npy files)",
        ]
        if self.feature_shape is not None:
            lines.append(
                f"Features: shape {self.feature_shape} {self.feature_dtype}; {self.num_headers_checked} files "
                f"checked from their header; values (NaN/inf) read in {self.values_checked()}"
            )
        t = self.token_lengths
        if t is not None:
            over = ""
            if t.model_max_length is not None:
                over = f"; {t.num_truncated} over model_max_length {t.model_max_length}"
            lines.append(
                f"Token lengths ({t.count} records, {t.num_video_tokens} video tokens): min {t.min}, median "
                f"{t.median}, p95 {t.p95}, p99 {t.p99}, max {t.max}{over}"
            )
        lines += [f"Note: {n}" for n in self.notes]
        for kind, n in self.counts.items():
            items = self.problems[kind]
            files = {p.file for p in items if p.file is not None}
            distinct = f" ({len(files)} distinct files)" if kind == "missing_feature" else ""
            lines.append(f"{'FATAL' if KINDS[kind].fatal else 'warning'} {kind}: {n} {KINDS[kind].title}{distinct}")
            lines += [f"  {_where(p)}{p.message}" for p in items[:max_listed]]
            if n > max_listed:
                lines.append(f"  ... and {n - max_listed} more")
        if "missing_feature" in self.counts:
            lines.append(
                "Hint: features of corrupted videos were never extracted; keep only the records that have one with "
                "the converter's --clip_feature_path <video folder>"
            )
        if self.fatal:
            lines.append(f"Result: training would fail ({', '.join(self.fatal_kinds)})")
        else:
            warned = sum(self.counts.values())
            lines.append("Result: OK" + (f" ({warned} warnings)" if warned else ""))
        return "\n".join(lines)

    def summary(self) -> dict:
        """Compact JSON-serialisable summary (counts, shapes, token lengths, notes; no per-finding lists)."""
        out = self.to_dict()
        out.pop("problems")
        return out

    def to_dict(self) -> dict:
        """Machine-readable report (every finding, not only the first ones); JSON-serialisable."""
        out = asdict(self)
        out["problems"] = {kind: [asdict(p) for p in self.problems[kind]] for kind in self.counts}
        out["counts"] = self.counts
        out["fatal"] = self.fatal
        out["fatal_kinds"] = self.fatal_kinds
        return out


def _where(p: Problem) -> str:
    if p.index is not None:
        return f"record {p.index}: "
    return f"{p.file}: " if p.file is not None else ""


# --------------------------------------------------------------------------------------------------------------
# Records (pure)


@dataclass(frozen=True)
class RecordCheck:
    """What ``check_record`` found in one record. ``renderable``: it can go through ``render_sample``."""

    problems: list[Problem]
    video: str | None
    renderable: bool


def check_record(index: int, record: object) -> RecordCheck:
    """Check one training record's structure and content (no files are touched)."""

    def bad(kind: str, message: str) -> Problem:
        return Problem(kind, message, index=index)

    def malformed(message: str) -> RecordCheck:
        return RecordCheck([bad("malformed", message)], None, False)

    if not isinstance(record, Mapping):
        return malformed(f"is a {type(record).__name__}, expected an object")
    video = record.get("video")
    if "video" in record and (not isinstance(video, str) or not video):
        return malformed(f"'video' is {video!r}, expected a file name")
    conv = record.get("conversations")
    if not isinstance(conv, list) or not conv:
        return malformed(f"'conversations' is {_short(conv)}, expected a non-empty list of turns")
    for k, turn in enumerate(conv):
        if not (isinstance(turn, Mapping) and isinstance(turn.get("from"), str) and isinstance(turn.get("value"), str)):
            return malformed(f"turn {k} is {_short(turn)}, expected {{'from': str, 'value': str}}")
    # render_sample drops a leading non-human turn, then needs human, gpt, human, ... (the original asserted it).
    turns = conv[1:] if conv[0]["from"] != "human" else conv
    for k, turn in enumerate(turns):
        expected = "human" if k % 2 == 0 else "gpt"
        if turn["from"] != expected:
            return malformed(f"turn {k} is from {turn['from']!r}, expected {expected!r} (turns alternate human, gpt)")

    problems = []
    if video is not None and (reason := unsafe_video_reason(video)) is not None:
        problems.append(bad("unsafe_path", f"video {video!r} {reason}"))
    # One video fills exactly one span: the renderer turns every <video> into one, and the dataset raises on a
    # record whose number of spans differs from its number of videos (0 or 1).
    placeholders = sum(t["value"].count(VIDEO_PLACEHOLDER) for t in turns if t["from"] == "human")
    if video is None and placeholders:
        problems.append(bad("video_placeholder", f"{placeholders} <video> placeholder(s) but no 'video' file"))
    elif video is not None and placeholders != 1:
        problems.append(bad("video_placeholder", f"video {video!r} but {placeholders} <video> placeholders"))
    for k, turn in enumerate(turns):
        text = turn["value"].replace(VIDEO_PLACEHOLDER, "").strip()
        if not text:
            kind = "empty_question" if turn["from"] == "human" else "empty_answer"
            problems.append(bad(kind, f"turn {k} ({turn['from']}) is {turn['value']!r}"))
    if not any(t["from"] == "gpt" for t in turns):
        problems.append(bad("no_supervised_tokens", "no gpt turn"))
    return RecordCheck(problems, video, renderable=True)


def find_duplicates(records: Sequence[object], renderable: Sequence[bool]) -> list[Problem]:
    """Records with the same video and the same conversations as an earlier record."""
    first: dict[tuple, int] = {}
    found = []
    for i, (rec, ok) in enumerate(zip(records, renderable)):
        if not ok:
            continue
        key = (rec.get("video"), tuple((t["from"], t["value"]) for t in rec["conversations"]))
        j = first.setdefault(key, i)
        if j != i:
            found.append(Problem("duplicate", f"same video and conversations as record {j}", index=i, file=key[0]))
    return found


def _text_only_among_video(checks: Sequence[RecordCheck]) -> list[Problem]:
    """Well-formed records without a video when others have one: the collator cannot batch them together."""
    text_only = [i for i, c in enumerate(checks) if c.renderable and c.video is None]
    if not text_only or len(text_only) == sum(c.renderable for c in checks):
        return []
    return [Problem("no_video", "no 'video' key, while other records have one", index=i) for i in text_only]


def length_stats(lengths: Sequence[int], num_video_tokens: int, model_max_length: int | None) -> TokenLengths:
    """Summary of rendered lengths (quantiles are actual lengths: the nearest rank)."""
    a = np.asarray(lengths, dtype=np.int64)
    median, p95, p99 = (int(x) for x in np.quantile(a, [0.5, 0.95, 0.99], method="nearest"))
    truncated = 0 if model_max_length is None else int((a > model_max_length).sum())
    return TokenLengths(
        count=len(a),
        min=int(a.min()),
        median=median,
        p95=p95,
        p99=p99,
        max=int(a.max()),
        num_video_tokens=num_video_tokens,
        model_max_length=model_max_length,
        num_truncated=truncated,
    )


# --------------------------------------------------------------------------------------------------------------
# Feature files

# Errors that a malformed or hostile feature file can raise while being parsed; anything else is a bug here.
_PARSE_ERRORS = (
    pickle.UnpicklingError, ValueError, EOFError, OSError, AttributeError, TypeError, IndexError, KeyError,
    MemoryError, OverflowError,
)  # fmt: skip


def read_feature_header(path: str | Path) -> FeatureInfo:
    """Shape and dtype of a feature file without reading its data (``features.store.read_feature_header``, whose
    lengths are bounded by the file's size); ``FileNotFoundError`` or ``FeatureFileError`` as ``load_features``."""
    shape, dtype = store_read_feature_header(path)
    return FeatureInfo(tuple(shape), str(dtype))


def _load_values(path: Path) -> FeatureInfo:
    """Full, safe load with ``load_features`` (the same bounded opcode scan as the header check comes first, so a
    forged length cannot allocate more than the file holds); counts the NaN/inf values."""
    array = load_features(path)
    bad = 0 if _all_finite(array) else int(array.size - np.isfinite(array).sum())
    return FeatureInfo(tuple(array.shape), str(array.dtype), non_finite=bad)


def _all_finite(array: np.ndarray) -> bool:
    if array.dtype == np.float16:
        # numpy's isfinite on float16 is ~10x slower than the load itself; NaN and inf are the values whose 5
        # exponent bits are all ones.
        exponent = np.uint16(0x7C00)
        return bool(((array.view(np.uint16) & exponent) != exponent).all())
    return array.dtype.kind != "f" or bool(np.isfinite(array).all())


def _run_chunked(fn: Callable, items: Sequence, chunk: int, pool: ThreadPoolExecutor | None) -> list:
    """``[fn(x) for x in items]``, in chunks on ``pool`` when there is one (results in order)."""
    chunks = [items[k : k + chunk] for k in range(0, len(items), chunk)]

    def run(part: Sequence) -> list:
        return [fn(x) for x in part]

    results = pool.map(run, chunks) if pool is not None else map(run, chunks)
    return [r for part in results for r in part]


def _check_files(names: list[str], folder: Path, loader: Callable, pool) -> list[tuple[str, object]]:
    """``(name, FeatureInfo | exception)`` per file; unexpected exceptions are re-raised naming the file."""

    def one(name: str):
        try:
            return name, loader(folder / name)
        except (FileNotFoundError, FeatureFileError) as exc:
            return name, exc
        except _PARSE_ERRORS as exc:  # load_features lets a few through (e.g. MemoryError on a huge length)
            return name, FeatureFileError(f"{folder / name}: cannot be read ({type(exc).__name__}: {exc})")
        except Exception as exc:  # a bug here, not a bad file: stop, but say which file
            raise RuntimeError(f"{folder / name}: unexpected error while checking it: {exc!r}") from exc

    return _run_chunked(one, names, _FILE_CHUNK, pool)


def _spread(items: Sequence, k: int) -> list:
    """``k`` items spread evenly over ``items`` (first and last included), in order."""
    n = len(items)
    if k >= n:
        return list(items)
    if k <= 1:
        return list(items[:k])
    return [items[round(j * (n - 1) / (k - 1))] for j in range(k)]


# --------------------------------------------------------------------------------------------------------------
# The check


def check_training_data(
    data_path: str | Path,
    video_folder: str | Path,
    base: Base | None = None,
    model_max_length: int | None = None,
    expected_width: int | None = None,
    deep: bool = False,
    num_workers: int | None = None,
    *,
    num_video_tokens: int | None = None,
    expected_dtype: str | None = DEFAULT_FEATURE_DTYPE,
    use_vid_start_end: bool = True,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    vision_tower: str | None = None,
    stage: str | None = None,
) -> DataReport:
    """Check a training JSON and its feature folder; see the module docstring for what is reported.

    ``base``: the model folder (``bases.open_base``); gives the token-length distribution (and truncation against
    ``model_max_length``). ``expected_width``: the feature width the projector reads (``mm_hidden_size``).
    ``num_video_tokens``: rows per feature file the model expects (default: what the files hold).
    ``expected_dtype``: None accepts any dtype that all files share. ``deep``: read every feature file's values
    (NaN/inf); otherwise only a spread-out sample of ``sample_size`` files (the ``data check`` command reads all
    unless ``--quick``). ``vision_tower``: the model config's ``mm_vision_tower``; with ``expected_width``, the
    feature folder's manifest (when it has one) is checked against them (``features.store.check_features_match``).
    ``stage``: training's ``--stage``; token lengths use the template training uses for this base and stage
    (``data.conversation.training_template``: plain, the tokenizer's chat template, or the document's).
    ``num_workers``: threads for the feature files and the rendering (default: the CPU count, at most 16).
    """
    workers = num_workers if num_workers is not None else min(16, os.cpu_count() or 1)
    report = DataReport(str(data_path), str(video_folder), deep=deep)
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        report.timings[name] = round(now - clock, 4)
        clock = now

    records = _read_records(Path(data_path), report)
    lap("read_json")
    if records is None:
        return report
    report.num_records = len(records)
    checks = [check_record(i, r) for i, r in enumerate(records)]
    for c in checks:
        report.add(c.problems)
    renderable = [c.renderable for c in checks]
    report.add(find_duplicates(records, renderable))
    report.add(_text_only_among_video(checks))
    lap("records")

    expected = (num_video_tokens, expected_width, expected_dtype)
    if expected_width is not None:
        _check_manifest(report, Path(video_folder), vision_tower, expected_width, num_video_tokens)
    with ThreadPoolExecutor(workers) if workers > 1 else contextlib.nullcontext() as pool:
        _check_features(report, checks, Path(video_folder), expected, deep, sample_size, pool, lap)
        if base is not None:
            rows = report.num_video_tokens or num_video_tokens
            if rows is None:
                report.notes.append(
                    "token lengths not computed: no feature file was readable and num_video_tokens was not given"
                )
            else:
                _check_lengths(
                    report, records, renderable, base, model_max_length, rows, use_vid_start_end, pool, stage
                )
            lap("tokens")
    return report


def _read_records(path: Path, report: DataReport) -> list | None:
    def fail(message: str) -> None:
        report.add([Problem("data_file", message, file=str(path))])

    try:
        data = parse_json(read_bytes_bounded(path), "it")  # the bounded reader: any nesting is one problem line
    except OSError as exc:
        return fail(f"cannot read it ({exc.strerror or exc})")
    except UserError as exc:
        return fail(f"is {str(exc).removeprefix('it: ')}")
    if not isinstance(data, list):
        return fail(f"the top level is a {type(data).__name__}, expected a list of records")
    if not data:
        return fail("holds no records")
    return data


def _check_manifest(report: DataReport, folder: Path, tower: str | None, width: int, rows: int | None) -> None:
    """The feature folder's manifest against the model: a width/token-count mismatch is fatal, another tower a
    warning; a folder without a manifest (the original's) passes."""
    if not folder.is_dir():
        return
    try:
        warnings = check_features_match(folder, tower_name=tower, width=width, num_tokens=rows)
    except UserError as exc:
        report.add([Problem("feature_manifest", str(exc), file=str(folder))])
        return
    report.add(Problem("manifest_tower", w, file=str(folder)) for w in warnings)


def _check_features(report, checks, folder, expected, deep, sample_size, pool, lap) -> None:
    rows, width, dtype = expected
    wanted: dict[str, list[int]] = {}  # feature file -> records naming it
    for i, c in enumerate(checks):
        # An absolute or climbing name is an unsafe_path problem already: never look outside the folder.
        if c.video is not None and unsafe_video_reason(c.video) is None:
            wanted.setdefault(c.video, []).append(i)
    report.num_videos = len(wanted)
    if not wanted:
        return
    if not folder.is_dir():
        report.add([Problem("missing_feature", "the video folder does not exist", file=str(folder))])
        return
    # One directory listing instead of a stat per record; names the listing does not cover (a .npy next to a
    # .pkl of the same id, sub-folders, other suffixes) are looked up one by one.
    index = index_feature_folder(folder)
    report.num_feature_files = len(index)
    listed = set(index.values())
    present = [v for v in wanted if v in listed or (folder / v).is_file()]
    present_set = set(present)
    report.add(
        Problem("missing_feature", f"{v} is not in the video folder", index=i, file=v)
        for v, idx in wanted.items()
        if v not in present_set
        for i in idx
    )
    report.problems.get("missing_feature", []).sort(key=lambda p: p.index)
    lap("index_folder")

    # deep: one pass that loads every file (its header is parsed on the way); else headers, then a sample.
    infos: dict[str, FeatureInfo] = {}
    for name, res in _check_files(present, folder, _load_values if deep else read_feature_header, pool):
        if isinstance(res, FeatureInfo):
            infos[name] = res
        else:
            report.add([Problem("unreadable_feature", str(res), file=name)])
    report.num_headers_checked = len(present)
    lap("loads" if deep else "headers")

    if infos:
        shape_counts = Counter(info.shape for info in infos.values())
        report.feature_shape = shape_counts.most_common(1)[0][0]
        report.feature_dtype = Counter(info.dtype for info in infos.values()).most_common(1)[0][0]
        want_shape = (rows or report.feature_shape[0], width or report.feature_shape[1])
        want_dtype = dtype or report.feature_dtype
        report.num_video_tokens = want_shape[0]
        for name, info in infos.items():
            if info.shape != want_shape:
                why = "files must share one shape" if info.shape != report.feature_shape else "the model expects it"
                message = f"has shape {info.shape}, expected {want_shape} ({why})"
                report.add([Problem("wrong_shape", message, file=name)])
            if info.dtype != want_dtype:
                report.add([Problem("wrong_dtype", f"has dtype {info.dtype}, expected {want_dtype}", file=name)])

    if deep:
        loaded = list(infos.items())
    else:
        loaded = _check_files(_spread(sorted(infos), sample_size), folder, _load_values, pool)
        lap("loads")
    for name, res in loaded:
        if not isinstance(res, FeatureInfo):  # the header passed but the data does not load
            report.add([Problem("unreadable_feature", str(res), file=name)])
        elif res.non_finite:
            total = math.prod(res.shape)
            report.add([Problem("non_finite", f"{res.non_finite} of {total} values are NaN or inf", file=name)])
    report.num_files_loaded = len(loaded)


def _check_lengths(report, records, renderable, base, max_length, rows, use_vid_start_end, pool, stage) -> None:
    require_tokenizer(base.folder, "--model_name_or_path")  # one line instead of transformers' hints
    tokenizer, video_ids, _ = load_video_tokenizer(base.folder, use_vid_start_end, max_length)
    encoder = SegmentEncoder(tokenizer)
    template = training_template(base, tokenizer, stage)  # the one training renders with

    def one(i: int) -> tuple[int, int | None, Problem | None]:
        conv = records[i]["conversations"]
        try:  # exactly the trainer's call: the same ids, the same truncation, the same error on a cut span
            sample = render_sample(conv, encoder, video_ids, rows, template, max_length=max_length)
        except ValueError as exc:
            try:  # without the limit: the record itself renders, so the limit cut its video span
                full = render_sample(conv, encoder, video_ids, rows, template).full_length
            except ValueError as bad:  # a structure check_record let through
                return i, None, Problem("malformed", str(bad), index=i)
            return i, full, Problem("video_span_cut", str(exc), index=i)
        if sample.num_supervised == 0:
            what = "truncation to model_max_length cuts the whole answer" if sample.truncated else "nothing to train"
            return i, sample.full_length, Problem("no_supervised_tokens", what, index=i)
        return i, sample.full_length, None

    results = _run_chunked(one, [i for i, ok in enumerate(renderable) if ok], _RENDER_CHUNK, pool)
    for i, full, problem in results:
        if full is not None and max_length is not None and full > max_length:
            report.add([Problem("truncated", f"{full} tokens > model_max_length {max_length}", index=i)])
        if problem is not None:
            report.add([problem])
    lengths = [full for _, full, _ in results if full is not None]
    if lengths:
        report.token_lengths = length_stats(lengths, rows, max_length)


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
