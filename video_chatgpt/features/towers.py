"""Vision towers for feature extraction: a CLIP folder, a SigLIP folder, or the tower inside a LLaVA folder.

``resolve_tower(name)`` reads a tower's ``config.json`` (a local folder, or a hub id resolved offline from the
Hugging Face cache) and says what it is, with its geometry; ``load_tower_model`` / ``load_tower_processor`` build
the model and the image processor from it. Accepted:

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

from dataclasses import dataclass
from pathlib import Path

import torch

from video_chatgpt.errors import UserError
from video_chatgpt.features.store import hash_files
from video_chatgpt.files import read_json

# The original's select layer (LLaVA's mm_vision_select_layer): the output of the second-to-last encoder layer.
DEFAULT_SELECT_LAYER = -2
SELECT_STRATEGIES = ("default", "full")  # LLaVA's names: default = drop the CLS token, full = keep every token

_CLIP_TYPES = ("clip_vision_model", "clip")
_SIGLIP_TYPES = ("siglip_vision_model", "siglip")
_LLAVA_TYPES = ("llava", "llava_next", "llava_next_video")
# Weight files transformers loads from a folder, in its order of preference (sharded: the index names the shards).
_WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# The tower's tensors inside a LLaVA checkpoint: "vision_tower.*" (transformers 5) or "model.vision_tower.*", and
# in transformers-4.x checkpoints one more "vision_model." level.
_TOWER_PREFIX = "vision_tower."
_INNER_PREFIX = "vision_model."


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
    vision_config: object  # CLIPVisionConfig | SiglipVisionConfig
    select_layer: int  # index into hidden_states (num_layers + 1 entries: embeddings, then each layer)
    select_strategy: str  # "default": drop the CLS token if there is one | "full": keep every token

    @property
    def image_size(self) -> int:
        return int(self.vision_config.image_size)

    @property
    def patch_size(self) -> int:
        return int(self.vision_config.patch_size)

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
        return int(self.vision_config.hidden_size)

    @property
    def num_layers(self) -> int:
        return int(self.vision_config.num_hidden_layers)

    @property
    def layers_kept(self) -> int:
        """Encoder layers up to the selected hidden state (the later ones do not change it and are dropped)."""
        index = self.select_layer if self.select_layer >= 0 else self.num_layers + 1 + self.select_layer
        return index

    def weight_files(self) -> list[Path]:
        """The weight files transformers would load from the folder (shards in the index's order)."""
        for index_name in _WEIGHT_INDEXES:
            index = self.folder / index_name
            if index.is_file():
                shards = sorted(set(read_json(index, expect=dict)["weight_map"].values()))
                return [self.folder / shard for shard in shards]
        for file_name in _WEIGHT_FILES:
            if (self.folder / file_name).is_file():
                return [self.folder / file_name]
        raise UserError(
            f"{self.folder}: no weights ({', '.join(_WEIGHT_FILES)} or a sharded index); is the download complete?"
        )

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


def _vision_config(kind: str, config: dict, path: Path):
    from transformers import CLIPVisionConfig, SiglipVisionConfig

    config_class = CLIPVisionConfig if kind == "clip" else SiglipVisionConfig
    if config.get("model_type") in ("clip", "siglip"):  # a whole CLIP / SigLIP checkpoint: its vision half
        config = config.get("vision_config") or {}
    fields = {k: v for k, v in config.items() if k not in ("model_type", "architectures", "transformers_version")}
    try:
        return config_class(**fields)
    except (ValueError, TypeError) as exc:  # transformers validates the fields (e.g. heads dividing the width)
        raise UserError(f"{path}: not a valid {config_class.__name__} ({exc}); download the tower again") from exc


def _kind_of(model_type: str | None) -> str | None:
    if model_type in _CLIP_TYPES:
        return "clip"
    if model_type in _SIGLIP_TYPES:
        return "siglip"
    return None


def resolve_tower(name: str | Path, select_layer: int | None = None) -> TowerSpec:
    """Read the tower's config and say what it is. ``select_layer``: override the default / the LLaVA folder's."""
    folder = tower_folder(name)
    config = _read_config(folder, str(name))
    model_type = config.get("model_type")
    kind = _kind_of(model_type)
    if kind is not None:
        return TowerSpec(
            name=str(name), folder=folder, kind=kind, source="tower",
            vision_config=_vision_config(kind, config, folder / "config.json"),
            select_layer=DEFAULT_SELECT_LAYER if select_layer is None else select_layer, select_strategy="default",
        )  # fmt: skip
    if model_type in _LLAVA_TYPES and isinstance(config.get("vision_config"), dict):
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
        return TowerSpec(
            name=str(name), folder=folder, kind=kind, source="llava",
            vision_config=_vision_config(kind, vision, folder / "config.json"),
            select_layer=layer if select_layer is None else select_layer, select_strategy=strategy,
        )  # fmt: skip
    if "mm_vision_tower" in config:
        raise UserError(
            f"--vision_tower {name}: is a LLaVA folder in the original layout, whose tower is not inside it; pass "
            f"its tower instead: --vision_tower {config['mm_vision_tower']}"
        )
    raise UserError(
        f"--vision_tower {name}: {folder / 'config.json'} has model_type {model_type!r}; pass a CLIP or SigLIP "
        f"vision tower folder (model_type clip_vision_model / siglip_vision_model) or a LLaVA-1.5/NeXT folder in "
        f"the transformers layout"
    )


def check_select_layer(spec: TowerSpec) -> None:
    if not 0 <= spec.layers_kept <= spec.num_layers:
        raise UserError(
            f"select layer {spec.select_layer} is outside the {spec.num_layers + 1} hidden states of {spec.name}"
        )


def _tower_state_dict(spec: TowerSpec) -> dict[str, torch.Tensor]:
    """The tower's tensors from a LLaVA folder's weights, keyed as in a ``CLIPVisionModel`` / ``SiglipVisionModel``."""
    tensors: dict[str, torch.Tensor] = {}
    for path in spec.weight_files():
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    if _TOWER_PREFIX in key:
                        tensors[key] = f.get_tensor(key)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            tensors.update({k: v for k, v in state.items() if _TOWER_PREFIX in k})
    out = {}
    for key, value in tensors.items():
        inner = key.split(_TOWER_PREFIX, 1)[1]
        out[inner.removeprefix(_INNER_PREFIX)] = value
    return out


def load_tower_model(spec: TowerSpec, device: str | torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The tower in eval mode on ``device``, truncated after the selected layer (``layers_kept`` encoder layers)."""
    from transformers import CLIPVisionModel, SiglipVisionModel

    check_select_layer(spec)
    model_class = CLIPVisionModel if spec.kind == "clip" else SiglipVisionModel
    if spec.source == "tower":
        try:
            model = model_class.from_pretrained(str(spec.folder), dtype=dtype, local_files_only=True)
        except OSError as exc:
            raise UserError(f"{spec.folder}: cannot load the {spec.kind} tower ({exc})") from exc
    else:
        model = model_class(spec.vision_config)
        state = _tower_state_dict(spec)
        if not state:
            raise UserError(f"{spec.folder}: its weights hold no vision_tower.* tensors; is it a LLaVA folder?")
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys:
            raise UserError(
                f"{spec.folder}: the vision tower's weights lack {len(result.missing_keys)} tensors "
                f"(e.g. {result.missing_keys[0]}); is the download complete?"
            )
        model = model.to(dtype)
    body = getattr(model, "vision_model", model)  # transformers 4.x nests it in .vision_model
    # hidden_states has num_layers + 1 entries (embeddings, then each layer's output); the layers after the
    # selected one do not change it. So the encoder keeps layers_kept layers and its output *is* the feature.
    body.encoder.layers = body.encoder.layers[: spec.layers_kept]
    if spec.kind == "siglip":
        # SigLIP's last_hidden_state is post_layernorm(encoder output), and its head pools it: neither is part of
        # hidden_states[select_layer] (what LLaVA reads), so both go.
        body.post_layernorm = torch.nn.Identity()
        body.use_head = False
    return model.to(device).eval().requires_grad_(False)


def load_tower_processor(spec: TowerSpec):
    """The tower's image processor (the PIL one: what the original used), from the folder's preprocessor config."""
    import transformers

    if spec.kind == "clip":
        names = ("CLIPImageProcessorPil", "CLIPImageProcessor")  # transformers 5 name, else the 4.x class
    else:
        names = ("SiglipImageProcessorPil", "SiglipImageProcessor")
    processor_class = next(getattr(transformers, n) for n in names if hasattr(transformers, n))
    if not (spec.folder / "preprocessor_config.json").is_file():
        raise UserError(
            f"{spec.folder}: no preprocessor_config.json (the tower's pixel normalisation); is the download complete?"
        )
    return processor_class.from_pretrained(str(spec.folder), local_files_only=True)
