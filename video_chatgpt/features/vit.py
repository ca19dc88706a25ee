"""The vision tower as the extractor runs it: a CLIP or SigLIP ViT encoder cut after the selected layer.

The same modules, parameter names and operations as transformers' ``CLIPVisionModel`` / ``SiglipVisionModel``
(``embeddings``, ``pre_layrnorm`` for CLIP, ``encoder.layers.N``), so the same weight files load and the features are
bit-equal to transformers' ``hidden_states[select_layer]`` (``tests/features/test_vit.py``). It exists because the
extraction command then never imports transformers' modeling code (4-5 s of every run's start: its import pulls
``torch.distributed.tensor``, ``torch._dynamo`` and ``scipy.optimize``). Not kept: the layers after the selected one,
CLIP's ``post_layernorm``, SigLIP's ``post_layernorm`` and pooling head (none of them is part of the feature).

Shapes: pixel values ``(B, 3, S, S)`` -> patches ``(B, (S / patch) ** 2, C)`` (+ a CLS token in front for CLIP) ->
``layers`` pre-norm encoder layers (attention with ``heads`` heads of ``C / heads``, MLP ``C -> intermediate -> C``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)  # CLIP's activation, as transformers writes it


ACTIVATIONS = {
    "quick_gelu": quick_gelu,
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),  # SigLIP's
}


@dataclass(frozen=True)
class VitShape:
    """What the module needs from a tower's config (``TowerSpec.vit_shape``)."""

    kind: str  # "clip": CLS token, pre-layernorm, patch conv without bias | "siglip": none of these
    image_size: int
    patch_size: int
    width: int
    heads: int
    intermediate: int
    layers: int  # encoder layers kept: up to the selected hidden state
    layer_norm_eps: float
    activation: str
    channels: int = 3

    def __post_init__(self):
        if self.width % self.heads:
            raise ValueError(f"the width {self.width} is not a multiple of the {self.heads} attention heads")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"hidden_act {self.activation!r} is not one of {', '.join(ACTIVATIONS)}")


class Embeddings(nn.Module):
    def __init__(self, shape: VitShape):
        super().__init__()
        self.cls = shape.kind == "clip"
        grid = shape.image_size // shape.patch_size
        self.patch_embedding = nn.Conv2d(
            shape.channels, shape.width, shape.patch_size, stride=shape.patch_size, bias=not self.cls
        )
        if self.cls:
            self.class_embedding = nn.Parameter(torch.zeros(shape.width))
        # _weight: no random initialisation (the weights replace it; on the meta device nn.init.normal_ would
        # import torch._dynamo, 1.5 s of the extraction command's start-up).
        positions = grid * grid + int(self.cls)
        self.position_embedding = nn.Embedding(positions, shape.width, _weight=torch.empty(positions, shape.width))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(pixels.to(self.patch_embedding.weight.dtype))  # (B, C, grid, grid)
        x = patches.flatten(2).transpose(1, 2)  # (B, grid * grid, C)
        if self.cls:
            x = torch.cat([self.class_embedding.expand(x.shape[0], 1, -1), x], dim=1)
        return x + self.position_embedding.weight[None]  # positions 0..N-1, as the embedding of arange(N)


class Attention(nn.Module):
    def __init__(self, shape: VitShape):
        super().__init__()
        self.heads, self.head_dim = shape.heads, shape.width // shape.heads
        self.scale = self.head_dim**-0.5
        self.k_proj, self.v_proj = nn.Linear(shape.width, shape.width), nn.Linear(shape.width, shape.width)
        self.q_proj, self.out_proj = nn.Linear(shape.width, shape.width), nn.Linear(shape.width, shape.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        split = (*x.shape[:-1], -1, self.head_dim)  # (B, L, heads, head_dim)
        q = self.q_proj(x).view(split).transpose(1, 2)
        k = self.k_proj(x).view(split).transpose(1, 2)
        v = self.v_proj(x).view(split).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, scale=self.scale, is_causal=False)
        return self.out_proj(out.transpose(1, 2).reshape(*x.shape[:-1], -1))  # (B, L, C)


class Mlp(nn.Module):
    def __init__(self, shape: VitShape):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(shape.width, shape.intermediate), nn.Linear(shape.intermediate, shape.width)
        self.activation = ACTIVATIONS[shape.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation(self.fc1(x)))


class EncoderLayer(nn.Module):
    def __init__(self, shape: VitShape):
        super().__init__()
        self.self_attn, self.mlp = Attention(shape), Mlp(shape)
        self.layer_norm1 = nn.LayerNorm(shape.width, eps=shape.layer_norm_eps)
        self.layer_norm2 = nn.LayerNorm(shape.width, eps=shape.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class Encoder(nn.Module):
    def __init__(self, shape: VitShape):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(shape) for _ in range(shape.layers))


class VisionTower(nn.Module):
    """``pixel_values (B, 3, S, S)`` -> the selected hidden state ``(B, tokens, C)``: CLS + patches for CLIP."""

    def __init__(self, shape: VitShape):
        super().__init__()
        self.shape = shape
        self.embeddings = Embeddings(shape)
        if shape.kind == "clip":
            self.pre_layrnorm = nn.LayerNorm(shape.width, eps=shape.layer_norm_eps)  # transformers' spelling
        self.encoder = Encoder(shape)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        size = self.shape.image_size
        if pixel_values.shape[1:] != (self.shape.channels, size, size):
            raise ValueError(
                f"pixel values of shape {tuple(pixel_values.shape)}; the tower takes (B, 3, {size}, {size})"
            )
        x = self.embeddings(pixel_values)
        if self.shape.kind == "clip":
            x = self.pre_layrnorm(x)
        for layer in self.encoder.layers:
            x = layer(x)
        return x
