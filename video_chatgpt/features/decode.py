"""Decoding: the sampled frames of one video, found with as little decoding as possible, resized to the tower's size.

The original opens each video with decord, takes ``N = len(vr)`` and seeks to each of the sampled indices
(``vr.get_batch``). Frame ``i`` is the ``i``-th frame the decoder outputs when the whole video is decoded in order
(presentation order, whatever the timestamps say: a variable frame rate changes nothing). On well-formed files
PyAV's RGB frames and frame count equal decord's bit for bit (checked in ``tests/features``). Two ways to reach them:

* **straight through**: every frame is decoded once, in order, and only the sampled ones are converted to RGB,
  resized and kept. ``N`` is needed before decoding (the indices depend on it), so the container's count is used
  first: the header's frame count (mp4), else the number of video packets (mkv / webm headers have none). If the
  decode produces a different number (a truncated download, a wrong header), the video is decoded a second time
  with the indices of the real count and a note says so.
* **located by timestamp** (``method="seek"``): a demux pass (packets only, no decoding: ~1% of a decode) lists
  each packet's timestamp and keyframe flag. Where one packet is one output frame (``SEEKABLE_CODECS``: h264, hevc,
  vp9) and the list is consistent (``_table_problem``), frame ``i`` is the packet with the ``i``-th smallest
  timestamp. Each sampled frame is decoded from the last keyframe before it (in decode order, with a timestamp not
  after the frame's: the frames an open GOP shows before its keyframe come from the keyframe before); nearby frames
  share one forward decode, a far one gets a seek, packets that no kept frame refers to are not decoded
  (``skip_frame="NONREF"``), and after a run's last wanted packet the decoder is drained. ``plan_runs`` costs each
  seek ``SEEK_COST_FRAMES`` decoded frames, so a short or keyframe-dense video comes out as one forward pass; a video
  whose every frame is sampled (``N <= num_frames``) is decoded straight through without the demux pass. Decoding
  from a keyframe gives the same pixels as from the start (that is what a keyframe is; H.264 recovery points and
  HEVC CRA too), checked in ``tests/features/test_seek.py``. Every doubt (a seek that lands after its keyframe, an
  unknown timestamp, frames out of order, a corrupt frame, a sampled frame that never comes out) abandons the plan
  for the straight path, so the frames kept are the same either way, except for damage in the parts the plan does
  not decode: a packet mid-video that the decoder would drop shortens ``N`` straight through but not here. (A
  truncated mp4 has fewer packets than its header says and a packet cut short is marked corrupt, so those go
  straight through.)

Resizing is the original's: ``torch.nn.functional.interpolate(mode="nearest")`` to ``size x size`` (aspect ratio
not kept), which on uint8 input is a pure gather of rows and columns; the row/column indices are taken from
``interpolate`` itself, so they match torch's float rounding exactly.

    >>> from video_chatgpt.features.decode import decode_sampled
    >>> video = decode_sampled("bikes.mp4", num_frames=100, size=224)
    >>> video.frames.shape, video.num_decoded
    ((100, 224, 224, 3), 250)
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch

from video_chatgpt.features.sampling import frame_indices


class VideoDecodeError(Exception):
    """A video that yields no usable frames; the message is the reason shown in the extraction report."""


# What decoding a broken or non-video file can raise: PyAV's errors are FFmpegError (subclasses of OSError /
# ValueError), plus our own reasons. Anything else is a bug and is not swallowed.
DECODE_ERRORS = (VideoDecodeError, av.error.FFmpegError, OSError, ValueError, EOFError)

# Codecs whose every packet decodes to exactly one output frame (an H.264 / HEVC access unit, a VP9 frame or
# superframe), so that frame i is the packet with the i-th smallest timestamp. Others (VP8's hidden alt-ref
# packets, MPEG-4 Part 2's packed or not-coded VOPs, ...) are decoded straight through.
SEEKABLE_CODECS = frozenset({"h264", "hevc", "vp9"})
# What one seek costs, in decoded frames: the demuxer's jump, flushing the decoder and refilling its reorder delay.
# Frames closer than this to the end of the previous forward decode are reached by decoding on instead.
SEEK_COST_FRAMES = 8
METHODS = ("auto", "straight", "seek")


@dataclass(frozen=True)
class SampledVideo:
    """The frames of one video that are encoded, and how they were found."""

    frames: np.ndarray  # (T, size, size, 3) uint8 RGB, T = min(num_decoded, num_frames)
    indices: list[int]  # which decoded frames they are (sorted, may repeat)
    num_decoded: int  # N: frames of the video (straight through: what the decoder produced; seek: its packets)
    container_frames: int  # what the container claimed (header count, else packet count)
    note: str | None = None  # set when the container's count was wrong
    method: str = "straight"  # "straight" (every frame decoded in order) or "seek" (located by timestamp)
    packets_decoded: int = 0  # packets given to the decoder (seek: skipped non-reference ones included)
    seeks: int = 0  # seeks made (seek method)
    fallback: str | None = None  # why a seek plan was abandoned for the straight path


def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source index of each output row for ``interpolate(mode="nearest")`` from ``in_size`` to ``out_size``."""
    # Interpolating the index ramp itself gives torch's own floor(dst * in / out) in float32, edge cases included.
    # (Exact for in_size < 2**24.)
    ramp = torch.arange(in_size, dtype=torch.float32).view(1, 1, in_size, 1)
    picked = torch.nn.functional.interpolate(ramp, size=(out_size, 1), mode="nearest")
    return picked.view(out_size).to(torch.int64).numpy()


class NearestResize:
    """uint8 (..., H, W, 3) -> (..., size, size, 3), equal to the original's float ``interpolate`` + ``.to(uint8)``.

    One per video: the row and column tables are made once per frame size (0.1 ms each; a stream may change size).
    Two ``take`` calls (rows, then columns) are ~4x faster than one 2-D fancy index (0.2 against 0.8 ms a frame).
    """

    def __init__(self, size: int):
        self.size = size
        self._shape: tuple[int, int] | None = None
        self._rows = self._cols = None

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        h, w = frames.shape[-3], frames.shape[-2]
        if (h, w) == (self.size, self.size):
            return frames
        if (h, w) != self._shape:
            self._rows, self._cols = nearest_indices(h, self.size), nearest_indices(w, self.size)
            self._shape = (h, w)
        return frames.take(self._rows, axis=-3).take(self._cols, axis=-2)


def resize_nearest(frames: np.ndarray, size: int) -> np.ndarray:
    """``NearestResize(size)(frames)``: frames of one size at a time."""
    return NearestResize(size)(frames)


def _open_video(path: str | Path, threads: int) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    path = Path(path)
    if path.stat().st_size == 0:
        raise VideoDecodeError("empty file (0 bytes)")
    try:
        container = av.open(str(path))
    except av.error.InvalidDataError as exc:
        raise VideoDecodeError(f"not a video, or a corrupt one: FFmpeg cannot open it ({exc.strerror})") from exc
    if not container.streams.video:
        container.close()
        raise VideoDecodeError("no video stream in the file")
    stream = container.streams.video[0]
    # Frame + slice threads inside the decoder; 0 = FFmpeg picks from the number of cores.
    stream.thread_type = "AUTO"
    stream.codec_context.thread_count = threads
    return container, stream


def container_frame_count(path: str | Path) -> int:
    """Frames the container claims: the header's count (mp4) or, where there is none (mkv, webm), its video packets."""
    container, stream = _open_video(path, threads=1)
    with container:
        if stream.frames > 0:
            return int(stream.frames)
        # Demuxing reads the file without decoding it: a few percent of a decode. Empty packets flush, skip them.
        return sum(1 for packet in container.demux(stream) if packet.size)


def iter_frames(path: str | Path, threads: int = 0) -> Iterator[av.VideoFrame]:
    """Every decoded frame of the first video stream, in order."""
    container, stream = _open_video(path, threads)
    with container:
        yield from container.decode(stream)


# ----------------------------------------------------------------------------------------------------------------
# Locating frames by timestamp


@dataclass(frozen=True)
class PacketTable:
    """The video packets of a file in decode order, from a demux pass (no decoding).

    ``problem`` says why frames cannot be located by timestamp in this file (then it is decoded straight through).
    """

    claimed: int  # the container's frame count: the header's, else the number of packets
    pts: np.ndarray  # (P,) int64 presentation timestamps in decode order
    keyframe: np.ndarray  # (P,) bool
    problem: str | None = None

    @property
    def order(self) -> np.ndarray:
        """(P,) decode position of frame i (= of the packet with the i-th smallest timestamp)."""
        return np.argsort(self.pts, kind="stable")


def read_packet_table(path: str | Path) -> PacketTable:
    """Demux ``path`` (packets only) into a ``PacketTable``; raises ``VideoDecodeError`` for what cannot be opened."""
    container, stream = _open_video(path, threads=1)
    with container:
        header = int(stream.frames)
        codec = stream.codec_context.name
        if codec not in SEEKABLE_CODECS and header > 0:  # decoded straight through: no need to read the packets
            empty = np.zeros(0, dtype=np.int64)
            return PacketTable(header, empty, empty.astype(bool), f"codec {codec}: a packet is not always one frame")
        pts, key, problem = [], [], None
        for packet in container.demux(stream):
            if not packet.size:  # the empty packet that flushes the decoder at the end
                continue
            if problem is None:
                if packet.pts is None:
                    problem = f"packet {len(pts)} has no timestamp"
                elif packet.is_discard or packet.is_corrupt:
                    problem = f"packet {len(pts)} is marked {'discard' if packet.is_discard else 'corrupt'}"
            pts.append(packet.pts if packet.pts is not None else -1)
            key.append(packet.is_keyframe)
    claimed = header if header > 0 else len(pts)
    table = np.asarray(pts, dtype=np.int64), np.asarray(key, dtype=bool)
    if problem is None:
        problem = _table_problem(codec, claimed, *table)
    return PacketTable(claimed, *table, problem=problem)


def _table_problem(codec: str, claimed: int, pts: np.ndarray, key: np.ndarray) -> str | None:
    """Why frame i cannot be taken as the packet with the i-th smallest timestamp, or None."""
    if codec not in SEEKABLE_CODECS:
        return f"codec {codec}: a packet is not always one frame"
    if len(pts) == 0:
        return "no packets"
    if len(pts) != claimed:
        return f"the container says {claimed} frames but holds {len(pts)} packets"
    if len(np.unique(pts)) != len(pts):
        return "two packets have the same timestamp"
    if not key[0]:
        return "the first packet is not a keyframe"
    if pts[0] != pts.min():
        return "frames before the first keyframe (an open GOP at the start)"
    return None


@dataclass(frozen=True)
class Run:
    """One forward decode: from the keyframe at decode position ``start`` until the frames ``wanted`` are out."""

    start: int  # decode position of the keyframe (a seek lands there, or the file's start)
    end: int  # decode position of the last wanted packet
    wanted: tuple[int, ...]  # frame indices (presentation ranks) taken in this run


def plan_runs(table: PacketTable, indices: list[int], seek_cost: int = SEEK_COST_FRAMES) -> list[Run]:
    """The forward decodes that reach the frames at ``indices``, fewest decoded packets + ``seek_cost`` per seek.

    Frame ``i`` needs decoding from the last keyframe whose decode position is at or before its packet's and
    whose timestamp is not after its own (the frames of an open GOP shown before its keyframe need the GOP before).
    Frames whose ranges overlap, or are less than ``seek_cost`` packets apart, share one run.
    """
    order = table.order  # frame index -> decode position
    keys = np.flatnonzero(table.keyframe).tolist()  # decode positions of keyframes, ascending
    spans = []  # (start, end, frame index)
    for i in sorted(set(indices)):
        pos = int(order[i])
        k = bisect.bisect_right(keys, pos) - 1
        while table.pts[keys[k]] > table.pts[pos]:  # keys[0] = 0 has the smallest timestamp (_table_problem)
            k -= 1
        spans.append((keys[k], pos, i))
    spans.sort()
    runs: list[Run] = []
    start, end, wanted = spans[0][0], spans[0][1], [spans[0][2]]
    for s, e, i in spans[1:]:
        if s <= end + seek_cost:  # decoding on from `end` is cheaper than a seek
            end, wanted = max(end, e), [*wanted, i]
        else:
            runs.append(Run(start, end, tuple(wanted)))
            start, end, wanted = s, e, [i]
    runs.append(Run(start, end, tuple(wanted)))
    return runs


class _Doubt(Exception):
    """Something in a seek plan's decode that is not as the packet table said: use the straight path."""


def _decode_runs(
    path: str | Path, table: PacketTable, runs: list[Run], indices: list[int], size: int, threads: int
) -> tuple[np.ndarray, int, int]:
    """Decode the planned runs, keeping the frames at ``indices``. Returns (frames, packets decoded, seeks).

    Raises ``_Doubt`` on anything unexpected; frames are matched to indices by their timestamps.
    """
    order = table.order
    rank_of = {int(table.pts[pos]): rank for rank, pos in enumerate(order.tolist())}  # timestamp -> frame index
    slots_of: dict[int, list[int]] = {}  # frame index -> output slots (an index can repeat)
    for slot, index in enumerate(indices):
        slots_of.setdefault(index, []).append(slot)
    wanted_positions = {int(order[i]) for i in slots_of}  # decode positions of wanted packets: never skipped
    out = np.zeros((len(indices), size, size, 3), dtype=np.uint8)
    resize = NearestResize(size)
    done: set[int] = set()
    packets = seeks = 0
    container, stream = _open_video(path, threads)
    codec = stream.codec_context
    with container:
        for number, run in enumerate(runs):
            if done.issuperset(run.wanted):
                continue
            if number > 0 or run.start > 0:
                # Aim at the keyframe's timestamp, looking backwards: containers index keyframes by pts (mkv) or
                # dts (mp4, where a keyframe's dts <= its pts), so this lands on that keyframe or one before.
                container.seek(int(table.pts[run.start]), backward=True, any_frame=False, stream=stream)
                seeks += 1
            floor = int(table.pts[run.start])  # frames shown before the run's keyframe are not taken from it
            last_rank = -1
            expect = None  # decode position of the next packet
            for packet in container.demux(stream):
                last = False  # the run's last wanted packet
                if packet.size:
                    rank = rank_of.get(packet.pts)
                    if rank is None:
                        raise _Doubt(f"a packet with an unknown timestamp {packet.pts}")
                    pos = int(order[rank])
                    if expect is None and pos > run.start:
                        raise _Doubt(f"the seek to packet {run.start} landed after it, at packet {pos}")
                    if expect is not None and pos != expect:
                        raise _Doubt(f"packet {pos} came after packet {expect - 1}")
                    expect = pos + 1
                    if pos < run.start:
                        continue  # the seek landed on an earlier keyframe: read on, decoding starts at the run's own
                    # Packets of unwanted frames are not decoded where no other frame refers to them.
                    codec.skip_frame = "DEFAULT" if pos in wanted_positions else "NONREF"
                    packets += 1
                    last = pos == run.end
                elif expect is None or expect <= run.start:
                    raise _Doubt(f"the file ended before packet {run.start}")
                frames = packet.decode()  # (the empty packet at the end of the file drains the decoder)
                if last:
                    # Drain rather than decode the next packets only to push the wanted frames out of the decoder's
                    # reordering delay (the next run's seek resets the decoder).
                    frames += codec.decode(None)
                for frame in frames:
                    if frame.pts is not None and frame.pts < floor:
                        continue  # shown before the keyframe (an open GOP): its references were not decoded
                    rank = rank_of.get(frame.pts)
                    if rank is None or rank <= last_rank or frame.is_corrupt:
                        raise _Doubt(f"a decoded frame with timestamp {frame.pts} is out of place or corrupt")
                    last_rank = rank
                    if rank in slots_of and rank not in done:
                        out[slots_of[rank]] = resize(frame.to_ndarray(format="rgb24"))
                        done.add(rank)
                if last or done.issuperset(run.wanted):
                    break
            if not done.issuperset(run.wanted):
                raise _Doubt(f"frames {sorted(set(run.wanted) - done)[:5]} never came out")
        codec.skip_frame = "DEFAULT"
    return out, packets, seeks


# ----------------------------------------------------------------------------------------------------------------
# The straight path and the choice


def _decode_keep(path: str | Path, indices: list[int], size: int, threads: int) -> tuple[np.ndarray, int]:
    """One pass over the video keeping the frames at ``indices`` (resized). Returns (frames, frames decoded)."""
    wanted: dict[int, list[int]] = {}  # decoded frame index -> output slots (an index can repeat)
    for slot, index in enumerate(indices):
        wanted.setdefault(index, []).append(slot)
    out = np.zeros((len(indices), size, size, 3), dtype=np.uint8)
    resize = NearestResize(size)
    count = 0
    try:
        for count, frame in enumerate(iter_frames(path, threads), start=1):
            slots = wanted.get(count - 1)
            if slots:
                out[slots] = resize(frame.to_ndarray(format="rgb24"))
    except av.error.FFmpegError as exc:
        raise VideoDecodeError(f"decoding failed after {count} frames: {exc}") from exc
    return out, count


def _decode_straight(path: str | Path, claimed: int, num_frames: int, size: int, threads: int) -> SampledVideo:
    expected = claimed
    note = None
    for _ in range(2):
        if expected < 1:
            raise VideoDecodeError("the video has no frames" if claimed < 1 else "no frame could be decoded")
        indices = frame_indices(expected, num_frames)
        frames, decoded = _decode_keep(path, indices, size, threads)
        if decoded == expected:
            return SampledVideo(frames, indices, decoded, claimed, note, packets_decoded=decoded)
        # The container was wrong: sample again from the frames that really exist.
        note = f"the container says {claimed} frames but {decoded} decode; sampled from the {decoded}"
        expected = decoded
    raise VideoDecodeError(f"the frame count changes between two decodes ({claimed} claimed, then {expected})")


def decode_sampled(
    path: str | Path, num_frames: int, size: int, threads: int = 0, method: str = "auto"
) -> SampledVideo:
    """The ``min(N, num_frames)`` sampled frames of ``path``, resized to ``size``; raises ``VideoDecodeError``.

    ``method``: ``auto`` locates the frames by timestamp where the file allows it (``PacketTable.problem`` is
    None) and some frames are left out, else decodes straight through; ``straight`` always decodes every frame;
    ``seek`` is ``auto`` even when every frame is wanted (for tests). The frames are the same whichever is used.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "straight":
        return _decode_straight(path, container_frame_count(path), num_frames, size, threads)
    if method == "auto":
        container, stream = _open_video(path, threads=1)
        with container:
            header = int(stream.frames)
        if 0 < header <= num_frames:  # every frame is sampled: no demux pass (a wrong header is seen straight through)
            return _decode_straight(path, header, num_frames, size, threads)
    table = read_packet_table(path)
    if table.problem is not None or (method == "auto" and table.claimed <= num_frames):
        # Every frame is sampled (N <= num_frames), or the packets do not tell which frame is which.
        return _decode_straight(path, table.claimed, num_frames, size, threads)
    indices = frame_indices(table.claimed, num_frames)
    runs = plan_runs(table, indices)
    try:
        frames, packets, seeks = _decode_runs(path, table, runs, indices, size, threads)
    except (_Doubt, av.error.FFmpegError) as exc:
        video = _decode_straight(path, table.claimed, num_frames, size, threads)
        return SampledVideo(**{**video.__dict__, "fallback": str(exc) or type(exc).__name__})
    return SampledVideo(
        frames, indices, table.claimed, table.claimed, method="seek", packets_decoded=packets, seeks=seeks
    )
