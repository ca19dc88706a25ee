"""A model folder, resolved once: which kind of base it is and what its video parts look like.

    base = open_base("LLaVA-7B-Lightening-v1-1")                 # a base folder
    base = open_base("runs/stage2")                              # a training output folder: it names its base
    base = open_base("LLaVA-7B-Lightening-v1-1", projection_path="video_chatgpt-7B.bin")

Every stage asks this one record (no stage reads ``config.json`` or compares kinds itself); the model is built from
it by ``video_chatgpt.model.loading.load_model``. Plain JSON only: no torch, no transformers.

Kinds of base:

* ``llava_v1``: the document's base, a June-2023 LLaVA / Video-ChatGPT folder (a LLaMA config with ``mm_*`` keys);
* ``llava_hf``: LLaVA-1.5/NeXT in the transformers layout (nested ``text_config``/``vision_config``): its tower and
  its ``mlp2x_gelu`` projector come with it;
* ``causal_lm``: any causal LM (Llama-3.x, Mistral, Qwen2.5, ...): no projector until a stage-1 run trains one.

A training output folder ("run") holds ``video_chatgpt_base.json`` (the base it reads, or itself after a full
fine-tune), ``mm_projector.bin``, its ``config.json`` (what it was trained with: tower, frames, token count, template,
projector type) and, for LoRA, its adapter. The run's settings win over the base's: the run is the truth.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from video_chatgpt.constants import (
    ADAPTER_WEIGHTS_FILE,
    BASE_POINTER_FILE,
    DEFAULT_NUM_FRAMES,
    MM_CONFIG_KEYS,
    PROJECTOR_FILE,
)
from video_chatgpt.errors import UserError
from video_chatgpt.files import read_json

KINDS = ("llava_v1", "llava_hf", "causal_lm")
LLAVA_V1_MODEL_TYPES = ("llava", "VideoChatGPT", "video_chatgpt")
CONFIG_MAX_BYTES = 16 << 20  # a config.json is a few KB


def base_kind_of(config: dict) -> str:
    """The kind of base a ``config.json`` describes (see the module docstring). A run folder of another base records
    its kind in ``video_chatgpt_base_kind`` (a full fine-tune of a composed model saves a causal LM)."""
    if "text_config" in config:
        return "llava_hf"
    if config.get("model_type") in LLAVA_V1_MODEL_TYPES or any(k in config for k in MM_CONFIG_KEYS[:4]):
        recorded = config.get("video_chatgpt_base_kind")
        return recorded if recorded in KINDS else "llava_v1"
    return "causal_lm"


def read_config(folder: str | Path) -> dict:
    """A model folder's ``config.json`` as a dict; one ``UserError`` line when it is missing or not a config."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(
            f"{folder}: no such model folder" if not folder.exists() else f"{folder}: is a file, not a model folder"
        )
    path = folder / "config.json"
    if not path.is_file():
        raise UserError(f"{path}: missing; expected a model folder (LLaVA, LLaVA-1.5 or a causal LM, with config.json)")
    return read_json(path, max_bytes=CONFIG_MAX_BYTES, expect=dict)


@dataclass(frozen=True)
class Base:
    """What one model folder (a base, or a run on a base) is. Build it with ``open_base``."""

    folder: Path  # the folder whose weights and tokenizer are loaded
    kind: str  # llava_v1 | llava_hf | causal_lm
    config: dict  # folder/config.json
    run: Path | None = None  # the training output folder given, when one was
    run_config: dict = field(default_factory=dict)  # run/config.json: what the run trained with
    projector_file: Path | None = None  # the trained projector (mm_projector.bin / video_chatgpt-7B.bin)
    adapter: Path | None = None  # a folder holding a LoRA adapter to add

    def _setting(self, key: str, default=None):
        """A multimodal setting: the run's when it recorded one, else the base's."""
        for source in (self.run_config, self.config):
            if source.get(key) is not None:
                return source[key]
        return default

    # ------------------------------------------------------------------------------------------- video settings
    @property
    def vision_tower(self) -> str | None:
        """The tower whose features the model reads (a LLaVA-1.5/NeXT folder is its own tower)."""
        tower = self._setting("mm_vision_tower")
        if tower is None and self.kind == "llava_hf":
            return str(self.folder.resolve())
        return tower

    @property
    def feature_width(self) -> int | None:
        """Width C of the video features the projector takes; None for a causal LM without one (the features
        decide)."""
        width = self._setting("mm_hidden_size")
        if width is None and self.kind == "llava_hf":
            width = self.config.get("vision_config", {}).get("hidden_size")
        return width if isinstance(width, int) and not isinstance(width, bool) else None

    @property
    def video_token_len(self) -> int | None:
        """Video tokens N per sample the model was trained with (None: not recorded; the features decide)."""
        value = self._setting("video_token_len")
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None

    @property
    def num_frames(self) -> int:
        """Frames sampled per video (the temporal tokens) the run was trained with; the original's 100 otherwise."""
        value = self._setting("num_video_frames")
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else DEFAULT_NUM_FRAMES

    @property
    def projector_type(self) -> str | None:
        """``linear`` or ``mlp2x_gelu`` when the folder says (a LLaVA-1.5 folder's is ``mlp2x_gelu``), else None."""
        value = self._setting("mm_projector_type")
        return "mlp2x_gelu" if value is None and self.kind == "llava_hf" else value

    @property
    def use_start_end(self) -> bool:
        """Whether the video span is bracketed by ``<vid_start>``/``<vid_end>`` at inference: always on the
        document's base (the original's inference hard-codes it), else as the run trained."""
        value = True if self.is_llava_v1 else self.run_config.get("mm_use_vid_start_end")
        return True if value is None else bool(value)

    @property
    def trained_template(self) -> str | None:
        """The conversation template the run trained with (``conv_template``), None when not recorded."""
        return self.run_config.get("conv_template") or None

    @property
    def has_projector(self) -> bool:
        """Whether loading gives a usable projector: the document's base and LLaVA-1.5 carry one, a run has its
        trained one; a plain causal LM has none."""
        return self.kind != "causal_lm" or self.projector_file is not None or bool(self.config.get("mm_hidden_size"))

    @property
    def text_model_type(self) -> str:
        """``model_type`` of the language model (a LLaVA-1.5/NeXT folder's ``text_config``)."""
        if self.kind == "llava_hf":
            return self.config.get("text_config", {}).get("model_type", "llama")
        return self.config.get("model_type", "llama")

    @property
    def is_llava_v1(self) -> bool:
        return self.kind == "llava_v1"

    @property
    def is_llava_hf(self) -> bool:
        return self.kind == "llava_hf"

    @property
    def is_causal_lm(self) -> bool:
        return self.kind == "causal_lm"


def read_pointer(run: Path) -> tuple[Path, str]:
    """(base folder, projector file name) from a run's ``video_chatgpt_base.json``; ``UserError`` when unreadable or
    when the base it names is not a folder here."""
    path = run / BASE_POINTER_FILE
    info = read_json(path, max_bytes=CONFIG_MAX_BYTES, expect=dict)
    base = info.get("base_model")
    projector = info.get("projector", PROJECTOR_FILE)
    if not isinstance(base, str) or not base or not isinstance(projector, str) or not projector:
        raise UserError(f"{path}: needs base_model (a folder) and projector (a file name) as text")
    if not Path(base).is_dir():
        raise UserError(
            f"{path} names the base model {base}, which is not a folder here; fix base_model in that file or pass "
            f"the base as --model_name_or_path"
        )
    return Path(base), projector


def open_base(
    folder: str | Path, projection_path: str | Path | None = None, lora_path: str | Path | None = None
) -> Base:
    """Resolve a base folder or a training output folder (see the module docstring).

    ``projection_path`` overrides a run's own projector; ``lora_path`` adds an adapter (a LoRA run folder carries
    its own). Raises ``UserError`` naming the file for a missing folder, an unreadable config or pointer.
    """
    given = Path(folder)  # not a folder: no pointer file, and read_config below says so in one line
    run, run_config, projector = None, {}, None
    if (given / BASE_POINTER_FILE).is_file():
        base_folder, projector_name = read_pointer(given)
        run, projector = given, given / projector_name
        if (given / "config.json").is_file():
            run_config = read_config(given)
    else:
        base_folder = given
    if projection_path is not None:
        projector = Path(projection_path)
    adapter = Path(lora_path) if lora_path is not None else None
    if adapter is None and run is not None and (run / ADAPTER_WEIGHTS_FILE).is_file():
        adapter = run
    config = read_config(base_folder)
    return Base(base_folder, base_kind_of(config), config, run, run_config, projector, adapter)
