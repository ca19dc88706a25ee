"""The feature extraction job: a folder of videos -> one ``<video_id>.pkl`` (or ``.npy``) of video tokens each.

Run (the flags of the original ``scripts/save_spatio_temporal_clip_features.py``, plus a few)::

    # one GPU, or the CPU when there is none
    python scripts/save_spatio_temporal_clip_features.py --video_dir_path videos/ --clip_feat_path clip_features/
    video-chatgpt extract-features --video_dir_path videos/ --clip_feat_path clip_features/      # the same
    # 8 GPUs (and several nodes: add --nnodes/--node_rank/--master_addr); one GPU per rank, cuda:LOCAL_RANK
    torchrun --nproc_per_node=8 scripts/save_spatio_temporal_clip_features.py --video_dir_path ... --clip_feat_path ...
    # CPU only, tiny test tower
    python scripts/save_spatio_temporal_clip_features.py --video_dir_path v --clip_feat_path f \\
        --vision_tower tiny_clip/ --device cpu
    # another tower: CLIP-L/14-336 (24 x 24 patches) pooled 2 x 2 -> 100 + 144 tokens; SigLIP; a LLaVA folder's tower
    ... --vision_tower openai/clip-vit-large-patch14-336 --spatial_pool 2
    ... --vision_tower google/siglip-so400m-patch14-384
    ... --vision_tower llava-hf/llava-1.5-7b-hf          # its CLIP-336 tower, vision_feature_layer, select strategy

What a run does:

0. Locks the output folder (``lock_folder``: a second extraction into it stops with one line) and, before anything
   is written, checks its manifest (``prepare_folder``: other settings stop the run with one line naming each
   difference; docs/recipe.md says what is recorded and how a folder without a manifest is taken on).
1. Lists the video folder (sorted, hidden files skipped) and gives rank ``r`` of ``W`` (torchrun's ``RANK`` /
   ``WORLD_SIZE``) the videos ``videos[r::W]``. Of two files with one video id the first is kept, the others fail.
   Videos whose feature file exists and is valid (header read safely: expected shape, float16, not truncated) are
   skipped (resume); a damaged one is extracted again and noted in the report.
2. ``--num_workers`` processes decode the videos (``decode.decode_sampled``) while the main process encodes. The
   workers start before the tower is loaded, so the run's fixed cost (the tower's sha256 and weights) overlaps the
   first videos' decoding (``startup_s`` in the report).
3. Frames of consecutive videos go to the encoder in batches of exactly ``--infer_batch`` (the last one smaller), so
   short videos do not run small forwards (the original batched within one video). Per-frame features are float16,
   as the original's fp16 tower gave them.
4. A video whose frames are all encoded is pooled (``pooling.pool_video_features``) and written atomically
   (``store.save_features``: a temporary file, then a rename; a killed run's temporaries are removed by the next
   run). A video whose features are not finite (an overflowing float16 tower) is not written and fails.
5. A video that cannot be decoded is skipped with its reason; the run goes on. At the end the failures are printed
   and written, with notes and timings, to ``<clip_feat_path>/extraction_report.json`` (several ranks: one file per
   rank, merged by rank 0). The exit status is 1 if any video failed, else 0.

Speed knobs: ``--num_workers`` (decode processes per rank; default: all the rank's cores with a GPU encoder,
half of them with a CPU encoder, which gets the other half as torch threads), ``--decoder_threads`` (FFmpeg threads
per decode process; default cores / workers), ``--infer_batch`` (frames per encoder forward; raise it on a big GPU).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

import video_chatgpt
from video_chatgpt.args import command_parser, parse_args_or_status
from video_chatgpt.constants import DEFAULT_NUM_FRAMES, DEFAULT_VISION_TOWER, VIDEO_SUFFIXES
from video_chatgpt.errors import UserError, run_main
from video_chatgpt.features.decode import DECODE_ERRORS, decode_sampled
from video_chatgpt.features.encoder import FrameEncoder, VideoFeatureExtractor, parse_dtype, video_tokens
from video_chatgpt.features.pooling import pool_video_features
from video_chatgpt.features.store import (
    MANIFEST_NAME,
    MANIFEST_VERSION,
    FeatureFileError,
    index_feature_folder,
    manifest_differences,
    read_feature_header,
    read_manifest,
    save_features,
    video_id_of,
    write_manifest,
)
from video_chatgpt.features.towers import TowerSpec, resolve_tower
from video_chatgpt.files import temporary_path, write_bytes_atomically

__all__ = ["ExtractArgs", "VideoFeatureExtractor", "main", "run"]  # VideoFeatureExtractor: the engine imports it here

REPORT_NAME = "extraction_report.json"
LOCK_NAME = ".extract.lock"
FEATURE_FORMATS = ("pkl", "npy")
# The dtype of every feature file (the original's).
FEATURE_DTYPE = np.float16


# ----------------------------------------------------------------------------------------------------------------
# Settings


@dataclass
class ExtractArgs:
    """Settings of one extraction run (the command-line flags)."""

    video_dir_path: Path  # folder of videos: its files with a video suffix (constants.VIDEO_SUFFIXES)
    clip_feat_path: Path  # output folder (created); one feature file per video, plus the report
    infer_batch: int = 32  # frames per encoder forward (can span several videos)
    vision_tower: str = DEFAULT_VISION_TOWER  # CLIP / SigLIP tower or LLaVA folder, or hub id in the HF cache
    num_frames: int = DEFAULT_NUM_FRAMES  # frames sampled per video = temporal tokens
    spatial_pool: int = 1  # k x k average of the spatial tokens' patch grid (1 = none, the original)
    select_layer: int | None = None  # hidden state to take; None = -2 (the original) or the LLaVA folder's
    overwrite: bool = False  # extract every video again, whatever the folder holds
    feature_format: str = "pkl"  # pkl (pickled bare ndarray, as the original / official files) or npy
    device: str = "auto"  # auto = cuda:LOCAL_RANK if CUDA is available, else cpu
    dtype: str = "auto"  # auto = float16 on CUDA, float32 on CPU; or float16 / bfloat16 / float32
    num_workers: int | None = None  # decode processes per rank; None = from the cores (see module docstring)
    decoder_threads: int | None = None  # FFmpeg threads per decode process; None = cores / workers
    progress: bool = True  # tqdm bar on rank 0

    def __post_init__(self):
        self.video_dir_path, self.clip_feat_path = Path(self.video_dir_path), Path(self.clip_feat_path)
        if self.feature_format not in FEATURE_FORMATS:
            raise ValueError(f"--feature_format must be one of {FEATURE_FORMATS}, got {self.feature_format!r}")
        for name, low in (("infer_batch", 1), ("num_frames", 1), ("num_workers", 0), ("spatial_pool", 1)):
            value = getattr(self, name)
            if value is not None and value < low:  # num_workers None: from the cores
                raise ValueError(f"--{name} must be >= {low}, got {value}")


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(
        "extract-features", "Extract Video-ChatGPT spatio-temporal CLIP features: one <video_id>.pkl per video."
    )
    p.add_argument("--video_dir", "--video_dir_path", dest="video_dir_path", required=True, help="folder of videos")
    p.add_argument(
        "--features_dir",
        "--clip_feat_path",
        dest="clip_feat_path",
        required=True,
        help="output folder of feature files (created)",
    )
    p.add_argument("--infer_batch", type=int, default=32, help="frames per encoder forward (default 32)")
    p.add_argument(
        "--vision_tower",
        "--clip_model",
        dest="vision_tower",
        default=DEFAULT_VISION_TOWER,
        help="CLIP or SigLIP tower folder, LLaVA-1.5/NeXT folder (its tower), or cached hub id",
    )
    p.add_argument("--num_frames", type=int, default=DEFAULT_NUM_FRAMES, help="frames sampled per video")
    p.add_argument("--spatial_pool", type=int, default=1, help="k x k average of the patch grid (default 1: none)")
    p.add_argument(
        "--select_layer",
        type=int,
        default=None,
        help="hidden state to take (default -2, or the LLaVA folder's vision_feature_layer)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="extract every video again, even into a folder made with other settings",
    )
    p.add_argument("--feature_format", choices=FEATURE_FORMATS, default="pkl", help="pkl (default) or npy")
    p.add_argument("--device", default="auto", help="auto (cuda:LOCAL_RANK if available, else cpu), cpu, cuda, cuda:N")
    p.add_argument("--dtype", default="auto", help="auto (float16 on CUDA, float32 on CPU), float16, bfloat16, float32")
    p.add_argument("--num_workers", type=int, default=None, help="decode processes per rank (0 = decode in-process)")
    p.add_argument("--decoder_threads", type=int, default=None, help="FFmpeg threads per decode process")
    p.add_argument("--no_progress", dest="progress", action="store_false", help="no progress bar")
    return p


def parse_args(argv: list[str] | None) -> ExtractArgs | int:
    """The settings, or the exit status of a usage error / ``--help`` (argparse's: 2 / 0), without exiting."""
    parser = build_parser()
    ns = parse_args_or_status(parser, argv)
    if isinstance(ns, int):
        return ns
    try:
        return ExtractArgs(**vars(ns))
    except ValueError as exc:  # a usage error, printed as argparse does (status 2)
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in a torchrun launch (all zeros / ones when run alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> DistEnv:
        world = int(environ.get("WORLD_SIZE", 1))
        return cls(
            rank=int(environ.get("RANK", 0)),
            world_size=world,
            local_rank=int(environ.get("LOCAL_RANK", 0)),
            local_world_size=int(environ.get("LOCAL_WORLD_SIZE", world)),
        )


def resolve_device(name: str, env: DistEnv) -> torch.device:
    """``auto`` -> ``cuda:LOCAL_RANK`` when CUDA is available, else ``cpu``; a bare ``cuda`` also gets LOCAL_RANK."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{env.local_rank}"
    return torch.device(name)


def worker_counts(args: ExtractArgs, device: torch.device, env: DistEnv) -> tuple[int, int, int]:
    """(decode processes, FFmpeg threads each, torch threads of a CPU encoder) from the rank's cores, unless given.

    On GPU the main process mostly waits, so every core decodes. On CPU the cores are shared half and half between
    decoding and encoding; more torch threads than free cores make a loaded machine much slower, not faster.
    """
    cores = max(1, len(os.sched_getaffinity(0)) // max(1, env.local_world_size))
    default_workers = cores if device.type != "cpu" else max(1, cores // 2)
    workers = args.num_workers if args.num_workers is not None else default_workers
    threads = args.decoder_threads if args.decoder_threads is not None else max(1, cores // max(1, workers))
    encoder_threads = max(1, cores - workers)
    return workers, threads, encoder_threads


# ----------------------------------------------------------------------------------------------------------------
# What to do


@dataclass
class Plan:
    """This rank's share of the folder."""

    todo: list[Path]  # videos to extract, in order
    skipped: list[str]  # names of videos whose feature file already exists (and is valid, when checked)
    failed: list[dict]  # {"video", "reason"} known before decoding (duplicate ids)
    stale_tmp: list[Path]  # temporary files of a killed run, for this rank's videos
    damaged: list[dict] = field(default_factory=list)  # {"video", "note"}: an existing file that is not valid


def recorded_tower(name: str | Path) -> str:
    """The tower as the manifest and report record it: a local folder as its absolute path (a relative path means
    nothing once the folder is read from elsewhere), a hub id as given."""
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else str(name)


def list_videos(folder: Path) -> tuple[list[Path], list[str]]:
    """The videos of ``folder`` (regular, non-hidden files with a video suffix, ``constants.VIDEO_SUFFIXES``, in any
    case), sorted by name so all ranks see the same list; and the names of what is left out: other files and
    subfolders (extraction does not recurse)."""
    if not folder.is_dir():
        raise UserError(f"--video_dir {folder}: is not a folder; pass the folder that holds the videos")
    videos, left_out = [], []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_file() and Path(entry.name).suffix.lower() in VIDEO_SUFFIXES:
                videos.append(entry.name)
            else:
                left_out.append(entry.name + ("/" if entry.is_dir() else ""))
    return [folder / name for name in sorted(videos)], sorted(left_out)


def left_out_note(folder: Path, left_out: list[str], shown: int = 5) -> str:
    """One line naming what ``list_videos`` left out of ``folder``."""
    names = ", ".join(left_out[:shown]) + (f" and {len(left_out) - shown} more" if len(left_out) > shown else "")
    return (
        f"{folder}: left out {len(left_out)} entries that are not videos ({names}): only files ending in "
        f"{' '.join(VIDEO_SUFFIXES)} are read, and subfolders are not entered (run once per folder)"
    )


def existing_file_problem(path: Path, expected_shape: tuple[int, int]) -> str | None:
    """Why an existing feature file does not count as done (unreadable, truncated, other shape or dtype), or None.

    Only the header is read (``store.read_feature_header``), so a resume over many files stays cheap.
    """
    try:
        shape, dtype = read_feature_header(path)
    except (FeatureFileError, OSError) as exc:
        return str(exc)
    if shape != tuple(expected_shape) or dtype != FEATURE_DTYPE:
        return f"{path}: holds {dtype} {shape}, expected float16 {tuple(expected_shape)}"
    return None


def plan_videos(
    videos: list[Path],
    out_names: set[str],
    fmt: str,
    out_dir: Path,
    env: DistEnv,
    expected_shape: tuple[int, int] | None = None,
    overwrite: bool = False,
) -> Plan:
    """Split ``videos`` across ranks and drop what is done; ``out_names`` = the file names now in the output folder.

    With ``expected_shape`` an existing feature file counts as done only if its header is valid and of that shape;
    with ``overwrite`` nothing counts as done.
    """
    first_of: dict[str, str] = {}  # video id -> first file name with that id (over all ranks' videos)
    for path in videos:
        first_of.setdefault(video_id_of(path.name), path.name)
    todo, skipped, failed, damaged = [], [], [], []
    for path in videos[env.rank :: env.world_size]:
        vid = video_id_of(path.name)
        if first_of[vid] != path.name:
            reason = f"duplicate video id {vid!r} (also {first_of[vid]}); not extracted"
            failed.append({"video": path.name, "reason": reason})
        elif f"{vid}.{fmt}" in out_names and not overwrite:
            existing = out_dir / f"{vid}.{fmt}"
            problem = None if expected_shape is None else existing_file_problem(existing, expected_shape)
            if problem is None:
                skipped.append(path.name)
            else:
                note = f"existing feature file not valid, extracted again: {problem}"
                damaged.append({"video": path.name, "note": note})
                todo.append(path)
        else:
            todo.append(path)
    mine = {video_id_of(p.name) for p in todo}
    # files.write_atomically names the temporary of "<id>.<fmt>" ".<id>.<fmt>.tmp".
    temporaries = {temporary_path(f"{i}.{fmt}").name for i in mine}
    stale = [out_dir / name for name in out_names if name in temporaries]
    return Plan(todo, skipped, failed, stale, damaged)


# ----------------------------------------------------------------------------------------------------------------
# The output folder: lock and manifest


def lock_folder(folder: Path):
    """Take the folder's extraction lock (``fcntl.flock``; the OS drops it when the process ends, even killed).

    Returns the open lock file (keep it open for the whole run); raises ``UserError`` if another process holds it.
    """
    import fcntl

    path = folder / LOCK_NAME
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise UserError(
            f"{folder}: another extraction is writing into this folder ({holder} holds {path}); wait for it to "
            f"finish, or use another --clip_feat_path"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}\n")
    f.flush()
    return f


def build_manifest(spec: TowerSpec, args: ExtractArgs, feature_shape: list[int], tower_sha256: str) -> dict:
    """What made this folder's files (``store.MANIFEST_SETTINGS`` are the keys a rerun must match)."""
    return {
        "manifest_version": MANIFEST_VERSION,
        "project_version": video_chatgpt.__version__,
        "vision_tower": recorded_tower(args.vision_tower),
        "tower_kind": spec.kind,
        "tower_source": spec.source,
        "tower_sha256": tower_sha256,
        **{k: getattr(spec, k) for k in ("image_size", "patch_size", "has_cls", "select_layer", "select_strategy")},
        "num_frames": args.num_frames,
        "spatial_pool": args.spatial_pool,
        "dtype": str(parse_dtype(args.dtype, resolve_device(args.device, DistEnv()))).removeprefix("torch."),
        "feature_format": args.feature_format,
        "feature_dtype": np.dtype(FEATURE_DTYPE).name,
        "feature_shape": list(feature_shape),
    }


def prepare_folder(args: ExtractArgs, spec: TowerSpec, feature_shape: list[int]) -> dict:
    """Rank 0, under the lock: check the folder against this run's settings, write the manifest, clean temporaries.

    Raises ``UserError`` for a manifest with other settings, or for a manifest-less folder holding feature files of
    another shape (unless ``--overwrite``). Returns the manifest now in the folder.
    """
    out = args.clip_feat_path
    new = build_manifest(spec, args, feature_shape, spec.sha256())
    old = read_manifest(out)
    # Temporaries of the manifest and of the reports from a killed run (files.write_atomically names them
    # ".<final name>.tmp"); the features' own are removed per rank (plan_videos).
    for name in os.listdir(out):
        if name.startswith((f".{MANIFEST_NAME}.", ".extraction_report")) and name.endswith(".tmp"):
            (out / name).unlink(missing_ok=True)
    if old is not None and not args.overwrite:
        differences = manifest_differences(old, new)
        if differences:
            raise UserError(
                f"{out / MANIFEST_NAME}: this folder was extracted with other settings ({'; '.join(differences)}); "
                f"use another --clip_feat_path, or --overwrite to extract every video again with these"
            )
        return old
    if old is None and not args.overwrite:
        existing = [n for n in index_feature_folder(out).values() if n.endswith(f".{args.feature_format}")]
        other = []
        for name in existing:
            try:
                shape, _ = read_feature_header(out / name)
            except FeatureFileError:
                continue  # damaged: extracted again by its rank
            if list(shape) != list(feature_shape):
                other.append((name, shape))
        if other:
            name, shape = other[0]
            raise UserError(
                f"{out}: {len(other)} feature file(s) here (e.g. {name}: {shape}) are not of this run's shape "
                f"{tuple(feature_shape)}: they were made with other settings and the folder has no {MANIFEST_NAME}; "
                f"use another --clip_feat_path, or --overwrite to extract every video again"
            )
        if existing:
            new["adopted_files"] = len(existing)  # found without a manifest: checked by shape only
    write_manifest(out, new)
    return new


# ----------------------------------------------------------------------------------------------------------------
# Decoding in worker processes


@dataclass
class DecodedItem:
    """What a decode worker sends back for one video: its sampled frames, or why there are none."""

    path: Path
    frames: torch.Tensor | None  # (T, S, S, 3) uint8, shared memory between processes
    num_decoded: int = 0
    note: str | None = None
    error: str | None = None
    decode_s: float = 0.0
    packets_decoded: int = 0
    seeks: int = 0


class _DecodeDataset(Dataset):
    """Map-style dataset over video paths; item i = the decoded, sampled, resized frames of video i."""

    def __init__(self, paths: list[Path], num_frames: int, size: int, threads: int):
        self.paths, self.num_frames, self.size, self.threads = paths, num_frames, size, threads

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> DecodedItem:
        path = self.paths[i]
        start = time.perf_counter()
        try:
            video = decode_sampled(path, self.num_frames, self.size, threads=self.threads)
        except DECODE_ERRORS as exc:
            reason = str(exc) or type(exc).__name__
            return DecodedItem(path, None, error=reason, decode_s=time.perf_counter() - start)
        frames = torch.from_numpy(video.frames)
        return DecodedItem(
            path, frames, video.num_decoded, video.note, decode_s=time.perf_counter() - start,
            packets_decoded=video.packets_decoded, seeks=video.seeks,
        )  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# Encoding across videos


@dataclass
class _Pending:
    """A video whose frames are (partly) waiting for the encoder."""

    item: DecodedItem
    frames: torch.Tensor  # (T, S, S, 3) uint8 on the device
    features: torch.Tensor  # (T, P, C) float16 on the device, filled as batches come back
    sent: int = 0  # frames already encoded


@dataclass
class Report:
    """What one rank did; written as JSON next to the features."""

    video_dir: str
    clip_feat_path: str
    vision_tower: str
    num_frames: int
    feature_shape: list[int]
    feature_format: str
    rank: int = 0
    world_size: int = 1
    videos: int = 0  # videos of this rank (done before included)
    extracted: list[str] = field(default_factory=list)
    skipped_existing: int = 0
    failed: list[dict] = field(default_factory=list)  # {"video", "reason"}
    notes: list[dict] = field(default_factory=list)  # {"video", "note"}
    frames_encoded: int = 0
    elapsed_s: float = 0.0
    startup_s: float = 0.0  # before the first video could be encoded: manifest, tower load, workers started
    decode_s: float = 0.0  # summed over decode workers (they run in parallel)
    packets_decoded: int = 0  # video packets given to the decoder (decode.SampledVideo.packets_decoded), summed
    seeks: int = 0  # seeks to a keyframe (decode.SampledVideo.seeks), summed
    wait_for_decode_s: float = 0.0  # main process idle, waiting for a decoded video
    encode_s: float = 0.0
    write_s: float = 0.0
    complete: bool = False  # False when the run was interrupted

    def summary(self) -> str:
        n = len(self.extracted)
        rate = n / self.elapsed_s if self.elapsed_s else 0.0
        fps = self.frames_encoded / self.elapsed_s if self.elapsed_s else 0.0
        return (
            f"extracted {n}, skipped {self.skipped_existing} (already done), failed {len(self.failed)} "
            f"in {self.elapsed_s:.1f}s ({rate:.2f} videos/s, {fps:.1f} frames/s)"
        )


class _Job:
    """The encode side of a run: batches frames of consecutive videos, pools and writes finished ones."""

    def __init__(self, encoder: FrameEncoder, args: ExtractArgs, report: Report, progress):
        self.encoder, self.args, self.report, self.progress = encoder, args, report, progress
        self.pending: deque[_Pending] = deque()
        self.queued = 0  # frames in self.pending not yet encoded

    def add(self, item: DecodedItem) -> None:
        if item.error is not None:
            self.report.failed.append({"video": item.path.name, "reason": item.error})
            self._advance()
            return
        if item.note:
            self.report.notes.append({"video": item.path.name, "note": item.note})
        frames = item.frames.to(self.encoder.device, non_blocking=True)
        t = frames.shape[0]
        # (T, P, C) float16, filled batch by batch
        features = frames.new_empty((t, self.encoder.num_patches, self.encoder.width), dtype=torch.float16)
        self.pending.append(_Pending(item, frames, features))
        self.queued += t
        while self.queued >= self.args.infer_batch:
            self._encode(self.args.infer_batch)

    def flush(self) -> None:
        while self.queued:
            self._encode(min(self.queued, self.args.infer_batch))

    def _encode(self, n: int) -> None:
        """Encode the next ``n`` queued frames (from the front videos) in one forward."""
        start = time.perf_counter()
        parts, owners = [], []
        for pend in self.pending:
            take = min(n, pend.frames.shape[0] - pend.sent)
            if take:
                parts.append(pend.frames[pend.sent : pend.sent + take])
                owners.append((pend, pend.sent, take))
                pend.sent += take
                n -= take
            if n == 0:
                break
        out = self.encoder(torch.cat(parts) if len(parts) > 1 else parts[0])  # (n, P, C) float16
        offset = 0
        for pend, first, take in owners:
            pend.features[first : first + take] = out[offset : offset + take]
            offset += take
        self.queued -= offset
        self.report.frames_encoded += offset
        self.report.encode_s += time.perf_counter() - start
        # Videos complete in order: the front ones whose frames have all been encoded.
        while self.pending and self.pending[0].sent == self.pending[0].frames.shape[0]:
            self._finish(self.pending.popleft())

    def _finish(self, pend: _Pending) -> None:
        start = time.perf_counter()
        # (num_frames + spatial tokens, C) float16; a kept CLS token sits before the grid and is not pooled.
        tokens = pool_video_features(
            pend.features, self.args.num_frames, spatial_pool=self.args.spatial_pool,
            leading=int(self.encoder.spec.keeps_cls),
        ).cpu().numpy()  # fmt: skip
        if list(tokens.shape) != self.report.feature_shape:
            raise RuntimeError(f"{pend.item.path.name}: pooled shape {tokens.shape} != {self.report.feature_shape}")
        if not np.isfinite(tokens).all():
            bad = int(tokens.size - np.isfinite(tokens).sum())
            reason = f"{bad} of {tokens.size} feature values are NaN or inf (try --dtype float32); not written"
            self.report.failed.append({"video": pend.item.path.name, "reason": reason})
            self._advance()
            return
        vid = video_id_of(pend.item.path.name)
        save_features(self.args.clip_feat_path / f"{vid}.{self.args.feature_format}", tokens)
        self.report.extracted.append(pend.item.path.name)
        self.report.write_s += time.perf_counter() - start
        self._advance()

    def _advance(self) -> None:
        if self.progress is not None:
            self.progress.update(1)
            self.progress.set_postfix(failed=len(self.report.failed), refresh=False)


def feature_shape_of(spec: TowerSpec, args: ExtractArgs) -> list[int]:
    """``[num_frames + spatial tokens, width]`` of this run's files, from the tower's config."""
    return [video_tokens(spec, args.num_frames, args.spatial_pool), spec.width]


def make_output_folder(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--clip_feat_path {folder}: is a file; pass a folder (it is created if missing)")
    folder.mkdir(parents=True, exist_ok=True)


def run(args: ExtractArgs, env: DistEnv = DistEnv(), folder_ready: bool = False, lock_fd: int | None = None) -> Report:
    """Extract this rank's share of ``args.video_dir_path``; returns (and writes) the report.

    Alone (``world_size`` 1) it locks the output folder and checks / writes its manifest itself; with several
    ranks ``main`` has rank 0 do that before any rank starts (``folder_ready=True``, ``lock_fd`` its lock file).
    """
    started = time.perf_counter()
    device = resolve_device(args.device, env)
    videos, left_out = list_videos(args.video_dir_path)
    if left_out and env.rank == 0:
        print(f"warning: {left_out_note(args.video_dir_path, left_out)}", file=sys.stderr, flush=True)
    # The config is checked after the decode workers fork: see _start_up.
    spec = resolve_tower(args.vision_tower, args.select_layer, check=False)
    shape = feature_shape_of(spec, args)
    make_output_folder(args.clip_feat_path)
    lock = None if folder_ready else lock_folder(args.clip_feat_path)
    try:
        held = lock.fileno() if lock is not None else lock_fd
        return _run_locked(args, env, spec, shape, device, videos, started, held, prepare=not folder_ready)
    finally:
        if lock is not None:
            lock.close()


def _close_fd(fd: int, worker_id: int) -> None:
    """A decode worker's first act: close its copy of the lock file, so the lock dies with the main process (a forked
    worker shares the open file, and flock holds while any copy is open)."""
    os.close(fd)


def _start_up(args, spec, shape, device, todo, workers, threads, lock_fd, prepare: bool):
    """Start the decode workers, then, while they decode, (``prepare``) check the folder's manifest and load the tower.

    The workers fork before the tower's config is validated, hashed and loaded, so a run's fixed cost (the sha256 of
    the tower's weights for the manifest, reading the weights) overlaps the first videos' decoding instead of coming
    before it. Returns ``(encoder, decoded items)``; on an error the workers are stopped.
    """
    loader = DataLoader(
        _DecodeDataset(todo, args.num_frames, spec.image_size, threads),
        batch_size=None,  # one item = one video; frames are batched across videos by _Job
        num_workers=workers,
        worker_init_fn=functools.partial(_close_fd, lock_fd) if lock_fd is not None and workers else None,
        prefetch_factor=4 if workers else None,  # up to 4 decoded videos waiting per worker
        in_order=False,  # a long video does not hold back the short ones decoded after it
    )
    items = iter(loader)  # forks the workers; each starts on its first videos
    try:
        spec.vit_shape  # noqa: B018 (checks the tower's config: a bad one stops the run before anything is written)
        if prepare:
            # Before anything is written or loaded: a folder made with other settings stops the run here.
            prepare_folder(args, spec, shape)
        encoder = FrameEncoder(spec, device=device, dtype=args.dtype)
    except BaseException:
        del items  # stop the workers now (the traceback would keep the iterator, and them, alive)
        raise
    return encoder, items


def _run_locked(args, env, spec, shape, device, videos, started, lock_fd: int | None, prepare: bool) -> Report:
    out_names = set(os.listdir(args.clip_feat_path))
    plan = plan_videos(
        videos, out_names, args.feature_format, args.clip_feat_path, env, expected_shape=tuple(shape),
        overwrite=args.overwrite,
    )  # fmt: skip
    for tmp in plan.stale_tmp:
        tmp.unlink(missing_ok=True)
    workers, threads, encoder_threads = worker_counts(args, device, env)
    torch_threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(encoder_threads)  # restored at the end
    try:
        encoder, items = _start_up(args, spec, shape, device, plan.todo, workers, threads, lock_fd, prepare)
    except BaseException:
        torch.set_num_threads(torch_threads)
        raise
    report = Report(
        video_dir=str(args.video_dir_path),
        clip_feat_path=str(args.clip_feat_path),
        vision_tower=recorded_tower(args.vision_tower),
        num_frames=args.num_frames,
        feature_shape=shape,
        feature_format=args.feature_format,
        rank=env.rank,
        world_size=env.world_size,
        videos=len(plan.todo) + len(plan.skipped) + len(plan.failed),
        skipped_existing=len(plan.skipped),
        failed=list(plan.failed),
        notes=list(plan.damaged),
        startup_s=time.perf_counter() - started,
    )
    if args.overwrite and env.rank == 0:
        # Files of videos that are not in --video_dir_path are not extracted again: say they keep the old settings.
        ids = {video_id_of(v.name) for v in videos}
        left = sorted(name for vid, name in index_feature_folder(args.clip_feat_path).items() if vid not in ids)
        if left:
            note = f"{len(left)} feature file(s) of videos not in --video_dir_path keep their old settings"
            report.notes.append({"video": left[0], "note": note})
    progress = None
    if args.progress and env.rank == 0 and plan.todo:
        from tqdm import tqdm

        desc = f"features (rank 0 of {env.world_size})"
        progress = tqdm(total=len(plan.todo), unit="video", desc=desc, dynamic_ncols=True)
    job = _Job(encoder, args, report, progress)
    try:
        waited = time.perf_counter()
        for item in items:
            report.wait_for_decode_s += time.perf_counter() - waited
            report.decode_s += item.decode_s
            report.packets_decoded += item.packets_decoded
            report.seeks += item.seeks
            job.add(item)
            waited = time.perf_counter()
        job.flush()
        report.complete = True
    finally:
        torch.set_num_threads(torch_threads)
        if progress is not None:
            progress.close()
        report.elapsed_s = time.perf_counter() - started
        write_report(asdict(report), report_path(args.clip_feat_path, env))
    return report


# ----------------------------------------------------------------------------------------------------------------
# Report


def report_path(out_dir: Path, env: DistEnv) -> Path:
    if env.world_size == 1:
        return out_dir / REPORT_NAME
    return out_dir / f"extraction_report.rank{env.rank:05d}-of-{env.world_size:05d}.json"


def write_report(report: dict, path: Path) -> Path:
    return write_bytes_atomically(path, (json.dumps(report, indent=2) + "\n").encode())


def merge_reports(out_dir: Path, world_size: int) -> dict:
    """Rank 0, after all ranks are done: the per-rank reports as one ``extraction_report.json``."""
    parts = [
        json.loads(report_path(out_dir, DistEnv(rank=r, world_size=world_size)).read_text()) for r in range(world_size)
    ]
    merged = dict(parts[0], rank=None, world_size=world_size)
    for key in ("extracted", "failed", "notes"):
        merged[key] = [x for part in parts for x in part[key]]
    counts = ("videos", "skipped_existing", "frames_encoded", "packets_decoded", "seeks")
    for key in (*counts, "decode_s", "wait_for_decode_s", "encode_s", "write_s"):
        merged[key] = sum(part[key] for part in parts)
    for key in ("elapsed_s", "startup_s"):
        merged[key] = max(part[key] for part in parts)
    merged["complete"] = all(part["complete"] for part in parts)
    write_report(merged, out_dir / REPORT_NAME)
    return merged


def print_outcome(failed: list[dict], notes: list[dict], summary: str, path: Path) -> None:
    for note in notes:
        print(f"note: {note['video']}: {note['note']}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} video(s) failed:", file=sys.stderr)
        for f in failed:
            print(f"  {f['video']}: {f['reason']}", file=sys.stderr)
    print(f"{summary}; report: {path}", file=sys.stderr)


def _prepare_on_rank0(args: ExtractArgs, env: DistEnv):
    """Rank 0 of a launch: lock and prepare the folder. Returns ``(lock file or None, error or None)``."""
    lock = None
    try:
        spec = resolve_tower(args.vision_tower, args.select_layer)
        make_output_folder(args.clip_feat_path)
        lock = lock_folder(args.clip_feat_path)
        prepare_folder(args, spec, feature_shape_of(spec, args))
    except (UserError, OSError) as exc:
        if lock is not None:
            lock.close()
        return None, exc
    return lock, None


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``video-chatgpt extract-features`` and the script; exit status 1 if any video failed.

    Bad input (no video folder, a tower that is not CLIP / SigLIP / LLaVA, a folder made with other settings or
    being written by another extraction) raises ``UserError``: ``errors.run_main`` prints it as one line, exit 1.
    """
    args = parse_args(argv)
    if isinstance(args, int):
        return args
    env = DistEnv.from_environ(os.environ)
    distributed = env.world_size > 1 and "MASTER_ADDR" in os.environ
    if distributed:
        import torch.distributed as dist

        # Only for the start and the end of the run (gloo works with or without GPUs); ranks may finish hours apart.
        dist.init_process_group("gloo", rank=env.rank, world_size=env.world_size, timeout=timedelta(days=7))
    lock = None
    try:
        if env.world_size > 1:
            # Rank 0 locks the folder and checks its manifest before any rank writes into it.
            error = None
            if env.rank == 0:
                lock, error = _prepare_on_rank0(args, env)
            if distributed:
                flag = torch.tensor([int(error is not None)])
                dist.broadcast(flag, src=0)
                if flag.item() and env.rank != 0:
                    return 1  # rank 0 says why
            if error is not None:
                raise error
        report = run(args, env, folder_ready=env.world_size > 1, lock_fd=lock.fileno() if lock is not None else None)
        failed, notes, summary = report.failed, report.notes, report.summary()
        path = report_path(args.clip_feat_path, env)
        any_failed = bool(failed)
        if distributed:
            # Every rank learns whether any video failed, so all exit with the same status (torchrun stops the
            # others as soon as one exits non-zero); rank 0 merges the reports before anyone exits.
            count = torch.tensor([len(failed)])
            dist.all_reduce(count)
            any_failed = bool(count.item())
            if env.rank == 0:
                merged = merge_reports(args.clip_feat_path, env.world_size)
                failed, notes, path = merged["failed"], merged["notes"], args.clip_feat_path / REPORT_NAME
                summary = f"all ranks: extracted {len(merged['extracted'])}, failed {len(failed)}; rank 0: {summary}"
            dist.barrier()
    finally:
        if lock is not None:
            lock.close()  # after the last barrier: the lock covers every rank's writes
        if distributed:
            dist.destroy_process_group()
    if env.rank == 0 or (failed and not distributed):
        print_outcome(failed, notes, summary, path)
    return 1 if any_failed else 0


def cli(argv: list[str] | None = None) -> int:
    """The documented script's entry: ``main`` under the one error path (one line + exit 1; ``--debug``)."""
    return run_main(main, argv, prog="save_spatio_temporal_clip_features.py")
