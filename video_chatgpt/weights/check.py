"""``video-chatgpt check-weights <folder>``: is this a usable LLaVA-7B-Lightening-v1-1 (or other LLaVA base) folder?

Run::

    video-chatgpt check-weights LLaVA-7B-Lightening-v1-1          # readable report; exit 0 = usable, 1 = not
    video-chatgpt check-weights LLaVA-7B-Lightening-v1-1 --json   # the same as JSON

Training calls the same check before it loads a base model::

    from video_chatgpt.weights.check import check_weights
    check_weights(model_path).raise_if_bad()      # ValueError listing every problem

What is checked, reading only small files and checkpoint headers (no weight data is loaded):

* ``config.json`` parses and has ``mm_vision_tower``, ``use_mm_proj: true``, ``mm_hidden_size``, ``hidden_size``,
  ``vocab_size``. It is read as plain JSON (a LLaMA config with LLaVA's keys), never through ``AutoConfig``:
  current transformers maps ``model_type: "llava"`` to a different, nested config.
* every shard named by the index exists, is not a Git LFS pointer, and is complete: a safetensors header parses and
  matches the file size; a ``.bin`` opens as a PyTorch zip (its pickle and zip directory are read, no data); every
  tensor the index names is in its shard; all tensors are floating point; every decoder layer is there.
* ``model.embed_tokens.weight`` / ``lm_head.weight`` are ``(vocab_size, hidden_size)``; the projector
  ``model.mm_projector.weight`` is ``(hidden_size, mm_hidden_size)`` and its bias ``(hidden_size,)``.
* a tokenizer is present (``tokenizer.model`` loads with SentencePiece, or ``tokenizer.json`` parses) with the image
  tokens ``<im_patch>``, ``<im_start>``, ``<im_end>``, all with ids below ``vocab_size``.
* warning only: the vision tower named by ``mm_vision_tower`` is not found locally (feature extraction and
  inference need it; training on precomputed features does not).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from video_chatgpt.args import command_parser, parse_args_or_status
from video_chatgpt.constants import (
    EMBED_TOKENS_KEY,
    IMAGE_END_TOKEN,
    IMAGE_PATCH_TOKEN,
    IMAGE_START_TOKEN,
    PROJECTOR_BIAS_KEY,
    PROJECTOR_PREFIX,
    PROJECTOR_WEIGHT_KEY,
)
from video_chatgpt.errors import UserError, run_main
from video_chatgpt.files import read_json
from video_chatgpt.weights.checkpoint import (
    TensorInfo,
    WeightsError,
    find_checkpoint,
    indexed_tensors,
    is_lfs_pointer,
    lfs_pointer_message,
    read_shard_infos,
)
from video_chatgpt.weights.delta import LM_HEAD_KEY
from video_chatgpt.weights.hub import looks_like_hub_id, resolve_model_folder

IMAGE_TOKENS = (IMAGE_PATCH_TOKEN, IMAGE_START_TOKEN, IMAGE_END_TOKEN)
REQUIRED_INT_KEYS = ("mm_hidden_size", "hidden_size", "vocab_size")


@dataclass
class WeightsReport:
    """Outcome of ``check_weights``: ``ok`` when there are no problems; warnings do not make a folder unusable."""

    folder: Path
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    facts: dict[str, str] = field(default_factory=dict)  # what was found, for the report ("config", "weights", ...)

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_if_bad(self) -> None:
        """Raise ``WeightsError`` (a ``ValueError``) listing every problem, if there is any."""
        if self.problems:
            listing = "\n".join(f"  - {p}" for p in self.problems)
            raise WeightsError(
                f"{self.folder} is not a usable LLaVA model folder ({len(self.problems)} problem(s)):\n{listing}"
            )

    def to_dict(self) -> dict:
        return {
            "folder": str(self.folder),
            "ok": self.ok,
            "problems": self.problems,
            "warnings": self.warnings,
            "facts": self.facts,
        }

    def format(self) -> str:
        verdict = (
            "OK, usable as a LLaVA base for training" if self.ok else f"NOT USABLE ({len(self.problems)} problem(s))"
        )
        lines = [f"check-weights {self.folder}: {verdict}"]
        width = max((len(k) for k in self.facts), default=0)
        lines += [f"  {k:<{width}}  {v}" for k, v in self.facts.items()]
        if self.problems:
            lines += ["problems:"] + [f"  - {p}" for p in self.problems]
        if self.warnings:
            lines += ["warnings:"] + [f"  - {w}" for w in self.warnings]
        return "\n".join(lines)


def _read_json(path: Path, report: WeightsReport) -> dict | None:
    if is_lfs_pointer(path):
        report.problems.append(lfs_pointer_message(path))
        return None
    try:
        data = read_json(path)
    except OSError as exc:
        report.problems.append(f"{path}: not valid JSON ({exc})")
        return None
    except UserError as exc:
        report.problems.append(str(exc))
        return None
    if not isinstance(data, dict):
        report.problems.append(f"{path}: expected a JSON object")
        return None
    return data


def check_config(folder: Path, report: WeightsReport) -> dict | None:
    """Check config.json's LLaVA keys; returns the config dict (None when unreadable)."""
    path = folder / "config.json"
    if not path.is_file():
        report.problems.append(f"{path} is missing")
        return None
    config = _read_json(path, report)
    if config is None:
        return None
    for key in REQUIRED_INT_KEYS:
        value = config.get(key)
        if key not in config:
            report.problems.append(f"{path}: key {key!r} is missing (a LLaVA config has it)")
        elif not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            report.problems.append(f"{path}: {key!r} = {value!r}, expected a positive integer")
    tower = config.get("mm_vision_tower")
    if not isinstance(tower, str) or not tower:
        report.problems.append(
            f"{path}: key 'mm_vision_tower' is missing or empty (a LLaVA config names its CLIP tower)"
        )
    if config.get("use_mm_proj") is not True:
        report.problems.append(
            f"{path}: 'use_mm_proj' is {config.get('use_mm_proj')!r}, expected true (the model needs its projector)"
        )
    report.facts["config"] = ", ".join(
        f"{k} {config.get(k)}" for k in ("model_type", "hidden_size", "vocab_size", "mm_hidden_size", "mm_vision_tower")
    )
    return config


def check_checkpoint(folder: Path, report: WeightsReport) -> dict[str, TensorInfo]:
    """Check every shard (present, real, complete) and return the tensor infos that could be read."""
    try:
        ckpt = find_checkpoint(folder, "model folder")
    except WeightsError as exc:
        report.problems.extend(str(exc).splitlines())
        return {}
    infos: dict[str, TensorInfo] = {}
    for shard in ckpt.shards:
        try:
            shard_infos = read_shard_infos(ckpt, shard)
        except WeightsError as exc:
            report.problems.append(str(exc))
            continue
        kept, missing = indexed_tensors(ckpt, shard, shard_infos)
        if missing:
            report.problems.append(
                f"{ckpt.path(shard)}: {ckpt.index_file} lists tensor {missing[0]!r} ({len(missing)} in all) "
                f"but the shard does not hold it: incomplete or from another model"
            )
        infos.update(kept)
    not_float = [i for i in infos.values() if not i.dtype.is_floating_point]
    for i in not_float[:5]:
        report.problems.append(f"{i.file}: tensor {i.name!r} has dtype {i.dtype}; weights must be floating point")
    dtypes = sorted({str(i.dtype).replace("torch.", "") for i in infos.values()})
    size = sum(i.nbytes for i in infos.values())
    report.facts["weights"] = f"{ckpt.describe()}: {len(infos)} tensors, {size / 1e6:.1f} MB, {'/'.join(dtypes)}"
    return infos


def check_tensors(config: dict, infos: dict[str, TensorInfo], folder: Path, report: WeightsReport) -> None:
    """Shapes of the vocabulary tensors and the projector against the config; all decoder layers present."""
    hidden, vocab, mm_hidden = (config.get(k) for k in ("hidden_size", "vocab_size", "mm_hidden_size"))
    ints = all(isinstance(v, int) for v in (hidden, vocab, mm_hidden))
    expected = {
        EMBED_TOKENS_KEY: ((vocab, hidden), "(vocab_size, hidden_size)"),
        LM_HEAD_KEY: ((vocab, hidden), "(vocab_size, hidden_size)"),
        PROJECTOR_WEIGHT_KEY: ((hidden, mm_hidden), "(hidden_size, mm_hidden_size)"),
        PROJECTOR_BIAS_KEY: ((hidden,), "(hidden_size,)"),
    }
    for name, (shape, why) in expected.items():
        info = infos.get(name)
        if info is None:
            if name == LM_HEAD_KEY and config.get("tie_word_embeddings"):
                continue
            what = "the image projector" if name.startswith(PROJECTOR_PREFIX) else "a LLaMA weight"
            report.problems.append(f"{folder}: tensor {name!r} ({what}) is not in the checkpoint")
        elif ints and info.shape != shape:
            report.problems.append(
                f"{info.file}: tensor {name!r} has shape {info.shape}, but config.json says {shape} {why}"
            )
    if PROJECTOR_WEIGHT_KEY in infos:
        report.facts["projector"] = f"{PROJECTOR_WEIGHT_KEY} {infos[PROJECTOR_WEIGHT_KEY].shape}"
    layers = config.get("num_hidden_layers")
    if isinstance(layers, int) and infos:
        missing = [i for i in range(layers) if not any(k.startswith(f"model.layers.{i}.") for k in infos)]
        if missing:
            report.problems.append(
                f"{folder}: config.json has {layers} layers but the checkpoint has no weights for layer(s) "
                f"{missing[:5]}{' ...' if len(missing) > 5 else ''}"
            )


# Where a tokenizer folder lists its added tokens: file -> its (token, id) pairs.
_ADDED_TOKEN_SOURCES = {
    "added_tokens.json": lambda d: {k: v for k, v in d.items() if isinstance(v, int)},
    "tokenizer_config.json": lambda d: {
        v["content"]: int(k)
        for k, v in (d.get("added_tokens_decoder") or {}).items()
        if isinstance(v, dict) and "content" in v
    },
    "tokenizer.json": lambda d: ((e["content"], int(e["id"])) for e in d.get("added_tokens") or []),
}


def _added_tokens(folder: Path) -> dict[str, int]:
    """token -> id for added tokens, from added_tokens.json, tokenizer_config.json and tokenizer.json."""
    found: dict[str, int] = {}
    for name, pairs in _ADDED_TOKEN_SOURCES.items():
        path = folder / name
        if path.is_file() and not is_lfs_pointer(path):
            try:
                found.update(pairs(read_json(path)))
            except (OSError, UserError, AttributeError, KeyError, TypeError, ValueError):
                pass  # reported by check_tokenizer when the file is unreadable
    return found


def require_tokenizer(folder: str | Path, flag: str) -> None:
    """Raise ``WeightsError`` (one line) unless ``folder`` holds a tokenizer transformers can load: a real
    ``tokenizer.model`` (not a Git LFS pointer) or a ``tokenizer.json``. Without this, transformers reports a
    missing tokenizer as a multi-line hint about the hub and tiktoken, and an LFS pointer inside a traceback."""
    folder = Path(folder)
    sp_path, json_path = folder / "tokenizer.model", folder / "tokenizer.json"
    if not folder.is_dir():
        raise WeightsError(f"{flag} {folder}: no such folder; pass the model folder")
    for path in (sp_path, json_path):
        if path.is_file() and is_lfs_pointer(path):
            raise WeightsError(lfs_pointer_message(path))
    if not sp_path.is_file() and not json_path.is_file():
        raise WeightsError(
            f"{flag} {folder}: no tokenizer (tokenizer.model or tokenizer.json); copy the base model's tokenizer "
            f"files into it or pass the base model folder"
        )


def check_tokenizer(folder: Path, config: dict | None, report: WeightsReport) -> None:
    """A tokenizer that loads, with the three image tokens at ids below vocab_size."""
    sp_path, json_path = folder / "tokenizer.model", folder / "tokenizer.json"
    if not sp_path.is_file() and not json_path.is_file():
        report.problems.append(f"{folder}: no tokenizer (tokenizer.model or tokenizer.json)")
        return
    pieces = None
    if sp_path.is_file():
        if is_lfs_pointer(sp_path):
            report.problems.append(lfs_pointer_message(sp_path))
            return
        import sentencepiece

        try:
            pieces = sentencepiece.SentencePieceProcessor(model_file=str(sp_path)).get_piece_size()
        except (RuntimeError, OSError) as exc:
            report.problems.append(f"{sp_path}: does not load as a SentencePiece model ({exc})")
            return
    elif _read_json(json_path, report) is None:
        return
    for name in ("tokenizer_config.json", "added_tokens.json", "special_tokens_map.json"):
        if (folder / name).is_file():
            _read_json(folder / name, report)
    added = _added_tokens(folder)
    missing = [t for t in IMAGE_TOKENS if t not in added]
    if missing:
        report.problems.append(
            f"{folder}: the tokenizer lacks {', '.join(missing)} (LLaVA's image tokens, in added_tokens.json): this "
            f"is not a LLaVA tokenizer"
        )
    vocab = (config or {}).get("vocab_size")
    if isinstance(vocab, int):
        too_big = {t: i for t, i in added.items() if i >= vocab}
        if too_big:
            report.problems.append(
                f"{folder}: tokenizer ids {too_big} are >= vocab_size {vocab} in config.json (no embedding row)"
            )
    kind = f"tokenizer.model ({pieces} pieces)" if pieces is not None else "tokenizer.json"
    shown = " ".join(f"{t}={added[t]}" for t in IMAGE_TOKENS if t in added)
    report.facts["tokenizer"] = f"{kind}; image tokens {shown or 'none'}"


def check_vision_tower(config: dict, report: WeightsReport) -> None:
    """Warning only: is ``mm_vision_tower`` a local folder or a cached hub model?"""
    tower = config.get("mm_vision_tower")
    if not isinstance(tower, str) or not tower:
        return
    try:
        resolve_model_folder(tower, "mm_vision_tower", local_files_only=True)
    except WeightsError:
        report.warnings.append(
            f"mm_vision_tower {tower!r} is not found locally (not a folder, not in the Hugging Face cache): feature "
            f"extraction and inference need it (`hf download {tower}`); training on precomputed features does not"
        )


def check_weights(folder: str | Path, check_tower: bool = True) -> WeightsReport:
    """Check that ``folder`` is a usable LLaVA model folder (see the module docstring). Never raises for a bad
    folder: the problems are in the report; call ``raise_if_bad()`` to turn them into an exception."""
    folder = Path(folder)
    report = WeightsReport(folder)
    if not folder.exists():
        report.problems.append(f"{folder} does not exist")
        return report
    if not folder.is_dir():
        report.problems.append(
            f"{folder} is a file, not a model folder (a model folder holds config.json, weight shards and the "
            f"tokenizer; video_chatgpt-7B.bin is the trained projector, given to inference as --projection_path)"
        )
        return report
    config = check_config(folder, report)
    infos = check_checkpoint(folder, report)
    if config is not None:
        check_tensors(config, infos, folder, report)
    check_tokenizer(folder, config, report)
    if config is not None and check_tower:
        check_vision_tower(config, report)
    return report


def main(argv: list[str] | None = None) -> int:
    p = command_parser(
        "check-weights",
        "check that a folder is a usable LLaVA-7B-Lightening-v1-1 (or other LLaVA) base for training",
    )
    p.add_argument("folder", help="model folder, or a hub id found in the local Hugging Face cache")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-vision-tower", action="store_true", help="do not look for the mm_vision_tower model")
    args = parse_args_or_status(p, argv)
    if isinstance(args, int):  # --help (0) or bad flags (2)
        return args
    folder = Path(args.folder)
    if not folder.exists():
        if looks_like_hub_id(args.folder):
            folder = resolve_model_folder(args.folder, "folder", local_files_only=True)  # WeightsError: one line
    report = check_weights(folder, check_tower=not args.no_vision_tower)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(run_main(main, None, "video-chatgpt check-weights"))
