"""Vision towers for feature extraction: a CLIP folder, a SigLIP folder, or the tower inside a LLaVA folder.

``resolve_tower(name)`` reads a tower's ``config.json`` (a local folder, or a hub id resolved offline from the
Hugging Face cache) and says what it is, with its geometry; ``pixel_settings`` reads its image processor's fields;
``load_tower_model`` builds ``vit.VisionTower`` from the folder's weights, ``load_tower_processor`` the image
processor. The configs are read as JSON, without importing transformers (~4-6 s of a small extraction job's start):
transformers' config object is built only for the defaults of fields a config leaves out
(``TowerSpec.vision_config``), and the processor only where its resize is needed. Accepted:

* a CLIP folder: ``CLIPVisionModel`` (``model_type: clip_vision_model``) or a whole ``CLIPModel`` checkpoint
  (``clip``, as ``openai/clip-vit-large-patch14``), with ``CLIPImageProcessor``; a CLS token then 16 x 16 or
  24 x 24 patches; the feature is ``hidden_states[-2]`` without the CLS token (the original's);
* a SigLIP folder: ``SiglipVisionModel`` (``siglip_vision_model``, or a whole ``siglip`` checkpoint) with
  ``SiglipImageProcessor``; no CLS token (every output token is a patch), e.g. 27 x 27 = 729 for so400m/14-384;
* a LLaVA-1.5 / LLaVA-NeXT folder in the transformers layout (``LlavaForConditionalGeneration`` /
  ``LlavaNextForConditionalGeneration``: ``model_type`` ``llava`` / ``llava_next`` with a nested
  ``vision_config``): its tower, with the folder's ``vision_feature_layer`` as the select layer and its
  ``vision_feature_select_strategy`` (``default`` drops the CLS token, ``full`` keeps it). Only the tower's tensors
  are read from the folder's weights (``vision_tower.*``), not the language model's. LLaVA-NeXT's any-resolution
  tiling is for still images; a video frame is encoded at the tower's base resolution, as LLaVA-NeXT-Video does.

What the extractor keeps per frame (``tokens_per_frame``): the patch grid ``(image_size // patch_size) ** 2``, plus
the CLS token when the strategy is ``full`` and the tower has one.

    >>> spec = resolve_tower("openai/clip-vit-large-patch14")
    >>> spec.kind, spec.grid, spec.has_cls, spec.select_layer, spec.width
    ('clip', 16, True, -2, 1024)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch

from video_chatgpt.errors import UserError
from video_chatgpt.features.store import hash_files
from video_chatgpt.features.vit import VisionTower, VitShape
from video_chatgpt.files import read_json
from video_chatgpt.weights.checkpoint import Checkpoint, find_checkpoint, iter_tensors, read_tensor_infos

# The original's select layer (LLaVA's mm_vision_select_layer): the output of the second-to-last encoder layer.
DEFAULT_SELECT_LAYER = -2
SELECT_STRATEGIES = ("default", "full")  # LLaVA's names: default = drop the CLS token, full = keep every token

_CLIP_TYPES = ("clip_vision_model", "clip")
_SIGLIP_TYPES = ("siglip_vision_model", "siglip")
_LLAVA_TYPES = ("llava", "llava_next", "llava_next_video")
# The tower's tensors inside a LLaVA checkpoint: "vision_tower.*" (transformers 5) or "model.vision_tower.*", and
# in transformers-4.x checkpoints one more "vision_model." level.
_TOWER_PREFIX = "vision_tower."
_INNER_PREFIX = "vision_model."

# What transformers' CLIPImageProcessor / SiglipImageProcessor use for a field their preprocessor_config.json leaves
# out (the released ViT-L/14 config has no do_rescale / rescale_factor). tests/features/test_pixels.py compares these
# with the classes' own defaults.
_OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PIXEL_DEFAULTS = {
    "clip": {
        "do_resize": True, "size": {"shortest_edge": 224}, "do_center_crop": True,
        "crop_size": {"height": 224, "width": 224}, "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": _OPENAI_CLIP_MEAN, "image_std": _OPENAI_CLIP_STD,
    },
    "siglip": {
        "do_resize": True, "size": {"height": 224, "width": 224}, "do_center_crop": False, "crop_size": None,
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": (0.5, 0.5, 0.5), "image_std": (0.5, 0.5, 0.5),
    },
}  # fmt: skip


class TowerNotFoundError(UserError, FileNotFoundError):
    """The vision tower is neither a local folder nor in the Hugging Face cache."""


def _hub_hint(name: str) -> str:
    return (
        f"vision tower {name!r} is neither a local folder nor in the Hugging Face cache (looked up offline). "
        f"Download it once with `hf download {name}` (or `huggingface-cli download {name}`), or pass a folder."
    )


def tower_folder(name: str | Path) -> Path:
    """A local folder as given, or the cached snapshot folder of a hub id (offline); else ``TowerNotFoundError``."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise UserError(f"--vision_tower {name}: is a file; pass the tower's folder (with its config.json)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(str(name), local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, OSError) as exc:
        raise TowerNotFoundError(_hub_hint(str(name))) from exc


@dataclass(frozen=True)
class TowerSpec:
    """What a ``--vision_tower`` is and the geometry of its features (all from its config)."""

    name: str  # as given on the command line (hub id or folder)
    folder: Path  # the local folder it resolved to
    kind: str  # "clip" | "siglip"
    source: str  # "tower" (a CLIP / SigLIP folder) | "llava" (the tower inside a LLaVA folder)
    config: dict = field(repr=False)  # the vision config's fields as config.json has them
    select_layer: int = DEFAULT_SELECT_LAYER  # index into hidden_states (num_layers + 1: embeddings, each layer)
    select_strategy: str = "default"  # "default": drop the CLS token if there is one | "full": keep every token

    @cached_property
    def vision_config(self):
        """The ``CLIPVisionConfig`` / ``SiglipVisionConfig`` of the fields (built on first use: only for the defaults
        of fields config.json leaves out; the released towers' configs have every field the extractor reads)."""
        from huggingface_hub.errors import StrictDataclassError
        from transformers import CLIPVisionConfig, SiglipVisionConfig

        config_class = CLIPVisionConfig if self.kind == "clip" else SiglipVisionConfig
        fields = {
            k: v for k, v in self.config.items() if k not in ("model_type", "architectures", "transformers_version")
        }
        try:
            return config_class(**fields)
        except (ValueError, TypeError, StrictDataclassError) as exc:  # transformers validates the fields
            raise UserError(
                f"{self.folder / 'config.json'}: not a valid {config_class.__name__} ({exc}); download the tower again"
            ) from exc

    def _field(self, key: str, kind: type | tuple[type, ...] = int):
        """A config field as config.json gives it (a positive number, or a name for ``kind=str``); transformers'
        default when it is absent. A field of another type is one line naming it."""
        if key not in self.config:
            return getattr(self.vision_config, key)
        value = self.config[key]
        if kind is str:
            ok = isinstance(value, str)
        else:
            ok = isinstance(value, kind) and not isinstance(value, bool) and value > 0
        if not ok:
            what = "a name" if kind is str else "a positive number"
            raise UserError(f"{self.folder / 'config.json'}: {key} {value!r} is not {what}; download the tower again")
        return value

    @cached_property
    def vit_shape(self) -> VitShape:
        """The shape of the tower the extractor runs (``vit.VisionTower``): checked, a bad config is one line."""
        check_select_layer(self)
        try:
            return VitShape(
                kind=self.kind, image_size=self.image_size, patch_size=self.patch_size, width=self.width,
                heads=self._field("num_attention_heads"), intermediate=self._field("intermediate_size"),
                layers=self.layers_kept, layer_norm_eps=float(self._field("layer_norm_eps", (int, float))),
                activation=self._field("hidden_act", str), channels=self._field("num_channels"),
            )  # fmt: skip
        except ValueError as exc:
            raise UserError(f"{self.folder / 'config.json'}: {exc}; download the tower again") from None

    @property
    def image_size(self) -> int:
        return self._field("image_size")

    @property
    def patch_size(self) -> int:
        return self._field("patch_size")

    @property
    def grid(self) -> int:
        """Patches per side: ``image_size // patch_size`` (16 for ViT-L/14 at 224 px, 24 at 336, 27 for SigLIP-384)."""
        return self.image_size // self.patch_size

    @property
    def has_cls(self) -> bool:
        """CLIP puts a CLS token before the patches; SigLIP has none."""
        return self.kind == "clip"

    @property
    def keeps_cls(self) -> bool:
        return self.has_cls and self.select_strategy == "full"

    @property
    def tokens_per_frame(self) -> int:
        """Tokens the extractor keeps per frame: the patch grid, plus the CLS token when it is kept."""
        return self.grid * self.grid + int(self.keeps_cls)

    @property
    def width(self) -> int:
        return self._field("hidden_size")

    @property
    def num_layers(self) -> int:
        return self._field("num_hidden_layers")

    @property
    def layers_kept(self) -> int:
        """Encoder layers up to the selected hidden state (the later ones do not change it and are dropped)."""
        return self.select_layer if self.select_layer >= 0 else self.num_layers + 1 + self.select_layer

    @cached_property
    def checkpoint(self) -> Checkpoint:
        """The folder's weight files (``weights.checkpoint``: the four layouts ``save_pretrained`` writes, every shard
        present and not a Git LFS pointer; else one line)."""
        return find_checkpoint(self.folder, role=f"--vision_tower {self.name}:")

    def weight_files(self) -> list[Path]:
        """The weight files transformers would load from the folder (shards in the index's order)."""
        return [self.checkpoint.path(shard) for shard in self.checkpoint.shards]

    def sha256(self) -> str:
        """sha256 of the folder's config.json and weight files (names, sizes, contents): what the tower is."""
        return hash_files([self.folder / "config.json", *self.weight_files()])


def _read_config(folder: Path, name: str) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise UserError(
            f"--vision_tower {name}: {folder} has no config.json; pass a CLIP or SigLIP vision tower folder "
            f"or a LLaVA-1.5/NeXT folder in the transformers layout"
        )
    try:
        return read_json(path, expect=dict)
    except UserError as exc:
        raise UserError(f"{exc}; download the tower again") from None


def _vision_fields(config: dict) -> dict:
    """A tower's vision config fields: a whole CLIP / SigLIP checkpoint's vision half, else the config itself."""
    if config.get("model_type") in ("clip", "siglip"):
        vision = config.get("vision_config")
        return vision if isinstance(vision, dict) else {}
    return config


def _kind_of(model_type: str | None) -> str | None:
    if model_type in _CLIP_TYPES:
        return "clip"
    if model_type in _SIGLIP_TYPES:
        return "siglip"
    return None


def resolve_tower(name: str | Path, select_layer: int | None = None, check: bool = True) -> TowerSpec:
    """Read the tower's config and say what it is. ``select_layer``: override the default / the LLaVA folder's.

    ``check=False`` leaves the config's validation to the first use of ``spec.vit_shape`` (the extraction job
    forks its decode workers before it).
    """
    folder = tower_folder(name)
    config = _read_config(folder, str(name))
    model_type = config.get("model_type")
    kind = _kind_of(model_type)
    if kind is not None:
        spec = TowerSpec(
            name=str(name), folder=folder, kind=kind, source="tower", config=_vision_fields(config),
            select_layer=DEFAULT_SELECT_LAYER if select_layer is None else select_layer, select_strategy="default",
        )  # fmt: skip
    elif model_type in _LLAVA_TYPES and isinstance(config.get("vision_config"), dict):
        vision = config["vision_config"]
        kind = _kind_of(vision.get("model_type", "clip_vision_model"))  # transformers' LlavaConfig default: CLIP
        if kind is None:
            raise UserError(
                f"{folder / 'config.json'}: the LLaVA folder's tower is a {vision.get('model_type')!r}; "
                f"only CLIP and SigLIP towers are supported"
            )
        layer = config.get("vision_feature_layer", DEFAULT_SELECT_LAYER)
        if not isinstance(layer, int):
            raise UserError(
                f"{folder / 'config.json'}: vision_feature_layer {layer!r} selects several layers; only one layer "
                f"(an integer) is supported"
            )
        strategy = config.get("vision_feature_select_strategy", "default")
        if strategy not in SELECT_STRATEGIES:
            raise UserError(f"{folder / 'config.json'}: unknown vision_feature_select_strategy {strategy!r}")
        spec = TowerSpec(
            name=str(name), folder=folder, kind=kind, source="llava", config=vision,
            select_layer=layer if select_layer is None else select_layer, select_strategy=strategy,
        )  # fmt: skip
    elif "mm_vision_tower" in config:
        raise UserError(
            f"--vision_tower {name}: is a LLaVA folder in the original layout, whose tower is not inside it; pass "
            f"its tower instead: --vision_tower {config['mm_vision_tower']}"
        )
    else:
        raise UserError(
            f"--vision_tower {name}: {folder / 'config.json'} has model_type {model_type!r}; pass a CLIP or SigLIP "
            f"vision tower folder (model_type clip_vision_model / siglip_vision_model) or a LLaVA-1.5/NeXT folder "
            f"in the transformers layout"
        )
    if check:
        spec.vit_shape  # noqa: B018 (built to validate the config)
    return spec


def check_select_layer(spec: TowerSpec) -> None:
    if not 0 <= spec.layers_kept <= spec.num_layers:
        raise UserError(
            f"select layer {spec.select_layer} is outside the {spec.num_layers + 1} hidden states of {spec.name}"
        )


def _tower_state_dict(spec: TowerSpec, wanted: set[str]) -> dict[str, torch.Tensor]:
    """The tower's tensors named in ``wanted`` (``VisionTower`` names), from the folder's weight files: a tower's
    own (``embeddings.*``, or ``vision_model.embeddings.*`` as transformers 4 and whole CLIP checkpoints write them)
    or a LLaVA folder's (``vision_tower.*`` / ``model.vision_tower.*``); other tensors are not read."""

    def own_name(key: str) -> str | None:
        if spec.source == "llava":
            if _TOWER_PREFIX not in key:
                return None
            key = key.split(_TOWER_PREFIX, 1)[1]
        name = key.split(_INNER_PREFIX, 1)[1] if _INNER_PREFIX in key else key
        return name if name in wanted else None

    # The project's one reader of model folders: each tensor's own bytes, so a whole CLIP or LLaVA checkpoint costs
    # only its tower's tensors; a truncated or damaged file is one line naming it.
    infos = read_tensor_infos(spec.checkpoint)
    names = {key: name for key in infos if (name := own_name(key)) is not None}
    return {names[key]: tensor for key, tensor in iter_tensors(spec.checkpoint, list(names), infos)}


def load_tower_model(spec: TowerSpec, device: str | torch.device, dtype: torch.dtype) -> VisionTower:
    """The tower in eval mode on ``device``: ``vit.VisionTower`` with ``layers_kept`` encoder layers, its output the
    selected hidden state (the layers after it, the post-layernorm and SigLIP's head do not change it)."""
    with torch.device("meta"):  # no random initialisation: every tensor comes from the weights
        model = VisionTower(spec.vit_shape)
    wanted = set(model.state_dict())
    state = _tower_state_dict(spec, wanted)
    if not state and spec.source == "llava":
        raise UserError(f"{spec.folder}: its weights hold no vision_tower.* tensors; is it a LLaVA folder?")
    missing = sorted(wanted - set(state))
    if missing:
        raise UserError(
            f"{spec.folder}: the vision tower's weights lack {len(missing)} tensors (e.g. {missing[0]}); "
            f"is the download complete?"
        )
    try:
        model.load_state_dict(state, assign=True)
    except RuntimeError as exc:  # a tensor of another shape than the config says
        raise UserError(f"{spec.folder}: the weights do not fit its config.json ({exc})") from None
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


@dataclass(frozen=True)
class PixelSettings:
    """The image processor's fields that turn a frame into pixel values, as its ``preprocessor_config.json`` (and
    the processor class's defaults for what it leaves out) give them. ``size`` / ``crop_size``: an int or a dict
    (``shortest_edge`` or ``height`` / ``width``)."""

    do_resize: bool
    size: object
    do_center_crop: bool
    crop_size: object
    do_rescale: bool
    rescale_factor: float
    do_normalize: bool
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]


def _image_processor_fields(spec: TowerSpec) -> dict:
    """The image processor's fields where transformers 5 looks for them: the ``image_processor`` block of
    ``processor_config.json`` (a processor saved by transformers 5 writes only that), else ``preprocessor_config.json``
    (the released towers'). Neither: one line."""
    nested = spec.folder / "processor_config.json"
    if nested.is_file():
        block = read_json(nested, expect=dict).get("image_processor")
        if block is not None:
            if not isinstance(block, dict):
                raise UserError(f"{nested}: its image_processor is not a JSON object; download the tower again")
            return block
    path = spec.folder / "preprocessor_config.json"
    if not path.is_file():
        raise UserError(
            f"{spec.folder}: no preprocessor_config.json (the tower's pixel normalisation) and no image_processor in "
            f"a processor_config.json; is the download complete?"
        )
    return read_json(path, expect=dict)


def pixel_settings(spec: TowerSpec) -> PixelSettings:
    """The tower's pixel settings from its image processor's JSON fields (no transformers import).

    A field of an unexpected type is left to transformers: the processor is loaded and its values are used.
    """
    config = _image_processor_fields(spec)
    values = {}
    for key, default in PIXEL_DEFAULTS[spec.kind].items():
        value = config.get(key, default)
        if key in ("image_mean", "image_std"):
            ok = isinstance(value, (list, tuple)) and len(value) == 3 and all(_is_number(v) for v in value)
            value = tuple(value) if ok else None
        elif key == "rescale_factor":
            ok = _is_number(value)
        elif key in ("size", "crop_size"):
            ok = _is_number(value) or isinstance(value, dict) or value is default is None
        else:
            ok = isinstance(value, bool)
        if not ok:
            return _settings_of(load_tower_processor(spec))
        values[key] = value
    return PixelSettings(**values)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _settings_of(processor) -> PixelSettings:
    names = PixelSettings.__dataclass_fields__
    return PixelSettings(**{n: getattr(processor, n, None) for n in names})


def load_tower_processor(spec: TowerSpec):
    """The tower's image processor (the PIL one: what the original used), from the folder's processor config."""
    import transformers

    if spec.kind == "clip":
        names = ("CLIPImageProcessorPil", "CLIPImageProcessor")  # transformers 5 name, else the 4.x class
    else:
        names = ("SiglipImageProcessorPil", "SiglipImageProcessor")
    processor_class = next(getattr(transformers, n) for n in names if hasattr(transformers, n))
    _image_processor_fields(spec)  # no processor config is one line, not transformers' own error
    return processor_class.from_pretrained(str(spec.folder), local_files_only=True)
