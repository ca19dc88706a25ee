"""The training dataset over the converted JSON and the feature folder, and the batch collators (padded, packed).

A record ``{"id", "video": "<video_id>.pkl", "conversations": [...]}`` becomes
``{"input_ids": (L,), "labels": (L,), "video_spatio_temporal_features": (N, C) float16}`` through ``render_sample``
(the one renderer; ``data inspect`` and the data check use it too) and ``load_features`` (the one safe loader).

Every record's ``video`` must name a file inside ``--video_folder`` (``feature_path``: no absolute path, no ``..``
climbing out), and every feature file must hold finite numbers: a single NaN would make every trained tensor NaN,
so ``__getitem__`` refuses it, naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from video_chatgpt.constants import IGNORE_INDEX
from video_chatgpt.data.conversation import TRAIN_TEMPLATE, RenderedSample, render_sample
from video_chatgpt.data.paths import feature_path
from video_chatgpt.data.tokenizer import SegmentEncoder, VideoTokenIds
from video_chatgpt.errors import UserError
from video_chatgpt.features.store import load_features
from video_chatgpt.files import read_json


def check_record_paths(records: list[dict], video_folder: str | Path, data_path: str | Path = "training JSON") -> None:
    """Refuse the first record whose ``video`` is absolute or climbs out of ``video_folder`` (before any file is read)."""
    for i, record in enumerate(records):
        if isinstance(record, dict) and record.get("video") is not None:
            try:
                feature_path(video_folder, record["video"])
            except UserError as exc:
                raise UserError(f"{data_path}: record {i} (id {record.get('id')!r}): {exc}") from None


def check_finite(features: np.ndarray, path: Path) -> np.ndarray:
    """``features`` unchanged if every value is finite; else a ``UserError`` naming the file and the first bad row."""
    finite = np.isfinite(features)
    if not finite.all():
        bad = np.argwhere(~finite)
        raise UserError(
            f"{path}: {len(bad)} non-finite value(s) (first at row {int(bad[0][0])}, column {int(bad[0][1])}: "
            f"{features[tuple(bad[0])]}); extract this video's features again or drop its record"
        )
    return features


def load_records(data_path: str | Path) -> list[dict]:
    """The training JSON: a list of records (``files.read_json``: bounded, any nesting). Raises ``UserError`` naming
    the file when it is not one."""
    path = Path(data_path)
    records = read_json(path)
    if not isinstance(records, list):
        raise UserError(f"{path}: expected a JSON list of training records, got {type(records).__name__}")
    return records


class SupervisedVideoDataset(Dataset):
    """Samples of the training JSON, with their video features read from ``video_folder``.

    ``lazy=True`` renders each sample when it is read (the document's ``--lazy_preprocess True``); ``lazy=False``
    renders all token ids once at start (features are always read lazily: 13K x 730 KB do not fit in RAM).
    """

    def __init__(
        self,
        records: list[dict],
        video_folder: str | Path,
        encoder: SegmentEncoder,
        video_ids: VideoTokenIds,
        feature_shape: tuple[int, int],
        max_length: int | None,
        lazy: bool = True,
        template: str = TRAIN_TEMPLATE,
    ):
        self.records = records
        self.video_folder = Path(video_folder)
        self.encoder = encoder
        self.video_ids = video_ids
        self.feature_shape = tuple(feature_shape)
        self.max_length = max_length
        self.template = template
        check_record_paths(records, video_folder)
        self._rendered = None if lazy else [self.render(i) for i in range(len(records))]

    def __len__(self) -> int:
        return len(self.records)

    def render(self, i: int) -> RenderedSample:
        """Token ids and labels of record ``i`` exactly as training sees them."""
        record = self.records[i]
        try:
            return render_sample(
                record["conversations"],
                self.encoder,
                self.video_ids,
                num_video_tokens=self.feature_shape[0],
                template=self.template,
                max_length=self.max_length,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"record {i} (id {record.get('id')!r}): {exc}") from exc

    def lengths(self) -> list[int]:
        """Each sample's length in tokens, for ``--group_by_length``: exact when the samples were rendered at start
        (``--lazy_preprocess False``); else estimated from the record alone (no tokenizer pass over the data):
        the video tokens plus one token per ``CHARS_PER_TOKEN`` characters of text and a few per turn."""
        if self._rendered is not None:
            return [len(r.input_ids) for r in self._rendered]
        return [estimate_length(record, self.feature_shape[0], self.max_length) for record in self.records]

    def feature_file(self, i: int) -> Path | None:
        video = self.records[i].get("video")
        return None if video is None else feature_path(self.video_folder, video)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        rendered = self._rendered[i] if self._rendered is not None else self.render(i)
        item = {
            "input_ids": torch.tensor(rendered.input_ids, dtype=torch.long),
            "labels": torch.tensor(rendered.labels, dtype=torch.long),
        }
        path = self.feature_file(i)
        if path is not None:
            if rendered.num_video_spans != 1:
                raise ValueError(f"record {i}: has a video file but {rendered.num_video_spans} <video> placeholders")
            features = check_finite(load_features(path, expected_shape=self.feature_shape), path)
            item["video_spatio_temporal_features"] = torch.from_numpy(features.astype("float16", copy=False))
        elif rendered.num_video_spans:
            raise ValueError(f"record {i}: has a <video> placeholder but no 'video' file")
        return item


# --group_by_length on lazily rendered data: text tokens estimated from characters (LLaMA / Qwen tokenizers give
# 3.5-4.5 characters per English token), plus a few tokens of template per turn.
CHARS_PER_TOKEN = 4
TOKENS_PER_TURN = 6


def estimate_length(record: dict, num_video_tokens: int, max_length: int | None = None) -> int:
    """A record's length in tokens without tokenizing it (``SupervisedVideoDataset.lengths`` on lazy data)."""
    turns = record.get("conversations") if isinstance(record, dict) else None
    turns = turns if isinstance(turns, list) else []
    chars = sum(len(t.get("value", "")) for t in turns if isinstance(t, dict) and isinstance(t.get("value"), str))
    length = num_video_tokens + chars // CHARS_PER_TOKEN + TOKENS_PER_TURN * (len(turns) + 1)
    return length if max_length is None else min(length, max_length)


def _with_features(batch: dict, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """``batch`` plus the (B, N, C) features of its samples, when they have a video; a mix is refused."""
    with_video = ["video_spatio_temporal_features" in x for x in items]
    if any(with_video) and not all(with_video):
        raise ValueError("a batch mixes samples with and without video; give every record a 'video'")
    if any(with_video):
        batch["video_spatio_temporal_features"] = torch.stack([x["video_spatio_temporal_features"] for x in items])
    return batch


def _sample_labels(x: dict[str, torch.Tensor]) -> torch.Tensor:
    """A sample's labels with its first position ignored: position 0 is never predicted (nothing comes before it);
    in a packed row this is what keeps the shift from predicting a sample's first token from the sample before.
    Both collators do it, so the Trainer's count of supervised tokens (``num_items_in_batch``) is the same."""
    labels = x["labels"].clone()
    labels[:1] = IGNORE_INDEX
    return labels


@dataclass
class VideoDataCollator:
    """Right-pads a batch: ids with ``pad_id``, labels with ``IGNORE_INDEX``; stacks features to (B, N, C).

    ``attention_mask`` comes from the true lengths, not from ``ids != pad`` (the original's rule also masked real
    ``<unk>`` tokens, because pad == unk in LLaMA).
    """

    pad_id: int

    def __call__(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        lengths = torch.tensor([len(x["input_ids"]) for x in items])
        longest = int(lengths.max())
        input_ids = torch.full((len(items), longest), self.pad_id, dtype=torch.long)
        labels = torch.full((len(items), longest), IGNORE_INDEX, dtype=torch.long)
        for b, x in enumerate(items):
            input_ids[b, : len(x["input_ids"])] = x["input_ids"]
            labels[b, : len(x["labels"])] = _sample_labels(x)
        attention_mask = (torch.arange(longest).unsqueeze(0) < lengths.unsqueeze(1)).long()
        return _with_features({"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}, items)


@dataclass
class PackedVideoDataCollator:
    """``--packing``: the B samples of a batch concatenated into ONE row (1, sum of lengths), no padding.

    * ``position_ids`` restart at 0 for every sample, and there is no ``attention_mask``: transformers then reads the
      sample boundaries from the positions (``masking_utils.find_packed_sequence_indices``) and builds a
      block-diagonal causal mask (sdpa, eager), or runs flash-attn's variable-length kernel (flash_attention_2);
    * ``flash_attn_kwargs=True`` adds flash-attn's boundaries explicitly (``cu_seq_lens_q/k``, ``max_length_q/k``,
      as ``DataCollatorWithFlattening(return_flash_attn_kwargs=True)``), so the kernel needs no inference;
    * each sample's first label is ``IGNORE_INDEX``: the shifted loss never predicts a sample's first token from the
      sample before it (the last token of a sample predicts nothing);
    * the features stay (B, N, C), in sample order: the model fills the B video spans of the row in order.
    """

    flash_attn_kwargs: bool = False

    def __call__(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        lengths = [len(x["input_ids"]) for x in items]
        batch = {
            "input_ids": torch.cat([x["input_ids"] for x in items]).unsqueeze(0),
            "labels": torch.cat([_sample_labels(x) for x in items]).unsqueeze(0),
            "position_ids": torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0),
        }
        if self.flash_attn_kwargs:
            cu = torch.tensor([0, *lengths], dtype=torch.int32).cumsum(0, dtype=torch.int32)
            batch.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max(lengths), max_length_k=max(lengths))
        return _with_features(batch, items)


def sample_lengths(batch: dict[str, torch.Tensor]) -> list[int]:
    """The lengths of the samples in a collated batch, padded (from ``attention_mask``) or packed (from the
    positions: a sample starts where ``position_ids`` is 0)."""
    if "attention_mask" in batch:
        return [int(n) for n in batch["attention_mask"].sum(dim=1)]
    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist()
    return [b - a for a, b in zip(starts, starts[1:] + [batch["position_ids"].shape[1]])]


# The construction train.py uses (and data inspect, so that it shows exactly what is trained).
def first_feature_shape(records: list[dict], video_folder: str | Path) -> tuple[int, int]:
    """``(video tokens, width)`` of the first record's feature file: what training uses without the data check."""
    first = next((r for r in records if isinstance(r, dict) and r.get("video")), None)
    if first is None:
        raise ValueError("no record has a 'video' feature file")
    return tuple(load_features(feature_path(video_folder, first["video"])).shape)
