"""InternViT + MLP projector: the vision side of Intern-S1, Intern-S1-mini and InternVL.

    pixel tiles [T, 3, S, S]
      -> patch_embedding (conv, stride p) -> [T, (S/p)^2, C]; prepend class_embedding; + position_embedding
      -> N x [x + ls1 * attn(norm1(x)); x + ls2 * mlp(norm2(x))]     (attn: fused qkv, optional RMSNorm on q and k
                                                                       over all heads, non-causal SDPA, proj)
      -> drop the class token, view as a (S/p) x (S/p) grid, pixel shuffle by r = downsample_ratio
         ([h, w, C] -> [h r, w r, C / r^2])
      -> mlp1: LayerNorm -> Linear -> GELU -> Linear  -> [T, (S r / p)^2, text hidden]   (256 tokens per 448px tile)

Two checkpoint layouts, one module (names below are ours, the remote-code InternVLChatModel's):

    HF (InternS1ForConditionalGeneration,                  InternVLChatModel (remote code)
        InternVLForConditionalGeneration)
    [model.]vision_tower.embeddings.cls_token              vision_model.embeddings.class_embedding
      .embeddings.patch_embeddings.projection              vision_model.embeddings.patch_embedding
      .embeddings.position_embeddings                      vision_model.embeddings.position_embedding
      .encoder.layer.N.attention.{q,k,v}_proj              vision_model.encoder.layers.N.attn.qkv (packed here)
      .encoder.layer.N.attention.projection_layer          vision_model.encoder.layers.N.attn.proj
      .encoder.layer.N.attention.{q,k}_norm                vision_model.encoder.layers.N.attn.{q,k}_norm
      .encoder.layer.N.layernorm_{before,after}            vision_model.encoder.layers.N.norm{1,2}
      .encoder.layer.N.lambda_{1,2}                        vision_model.encoder.layers.N.ls{1,2}
    [model.]multi_modal_projector.{layer_norm,linear_1,linear_2}   mlp1.{0,1,3}

The features come from layer `select_layer` (-1: the last; layers after it are neither built nor loaded).
Pixel shuffle "v1" (early InternVL) skips the final transpose that "v2" and the HF classes do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def _pair(x: Any) -> int:
    if isinstance(x, list | tuple):
        if len(set(x)) != 1:
            raise ValueError(f"non-square vision sizes are not supported: {x}")
        return int(x[0])
    return int(x)


@dataclass(frozen=True, slots=True)
class VisionSpec:
    layout: str  # "hf" (vision_tower / multi_modal_projector names) | "chat" (vision_model / mlp1 names)
    hidden_size: int
    num_heads: int
    intermediate_size: int
    num_layers: int  # layers run: up to and including select_layer
    image_size: int  # tile side in pixels
    patch_size: int
    qkv_bias: bool
    qk_norm: bool
    norm_type: str  # layer_norm | rms_norm
    eps: float  # of norm1 / norm2
    qk_norm_eps: float
    downsample_ratio: float
    ps_version: str  # v1 | v2
    text_hidden_size: int
    post_layernorm: bool = False  # HF with use_mean_pooling false: a LayerNorm after the last layer

    @property
    def tokens_per_tile(self) -> int:
        side = self.image_size // self.patch_size
        return int(side * self.downsample_ratio) ** 2

    @classmethod
    def from_root_config(cls, root: dict[str, Any], text_hidden_size: int) -> VisionSpec:
        """The spec of a multimodal config.json (either layout)."""
        v = root.get("vision_config") or {}
        chat = "llm_config" in root
        act = v.get("hidden_act", "gelu")
        if act not in ("gelu", "gelu_pytorch_tanh") or root.get("projector_hidden_act", "gelu") != "gelu":
            raise ValueError(f"vision activation {act!r} is not supported (only gelu)")
        layers = int(v["num_hidden_layers"])
        select = int(root.get("select_layer", -1) if chat else root.get("vision_feature_layer", -1))
        if isinstance(root.get("vision_feature_layer"), list):
            raise ValueError("a list of vision_feature_layer values is not supported")
        run = layers + 1 + select if select < 0 else select
        if not 0 < run <= layers:
            raise ValueError(f"vision feature layer {select} is outside the {layers} layers")
        if not chat and root.get("vision_feature_select_strategy", "default") != "default":
            raise ValueError("vision_feature_select_strategy other than 'default' is not supported")
        image_size = root.get("force_image_size") or v.get("image_size", 448) if chat else v.get("image_size", 448)
        return cls(
            layout="chat" if chat else "hf",
            hidden_size=int(v["hidden_size"]),
            num_heads=int(v["num_attention_heads"]),
            intermediate_size=int(v["intermediate_size"]),
            num_layers=run,
            image_size=_pair(image_size),
            patch_size=_pair(v.get("patch_size", 14)),
            qkv_bias=bool(v.get("qkv_bias", True) if chat else v.get("attention_bias", False)),
            qk_norm=bool(v.get("qk_normalization", False) if chat else v.get("use_qk_norm", False)),
            norm_type=str(v.get("norm_type", "layer_norm")),
            eps=float(v.get("layer_norm_eps", 1e-6)),
            qk_norm_eps=float(v.get("layer_norm_eps", 1e-6)) if chat else 1e-6,
            downsample_ratio=float(root.get("downsample_ratio", 0.5)),
            ps_version=str(root.get("ps_version", "v1") if chat else "v2"),
            text_hidden_size=text_hidden_size,
            post_layernorm=not chat and not v.get("use_mean_pooling", True),
        )


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32, as InternViT's (the language model's fused kernel takes 2-D rows only)."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.float()
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * y.to(x.dtype)


def _norm(spec: VisionSpec, size: int) -> nn.Module:
    if spec.norm_type == "rms_norm":
        return RMSNorm(size, spec.eps)
    if spec.norm_type == "layer_norm":
        return nn.LayerNorm(size, eps=spec.eps)
    raise ValueError(f"vision norm_type {spec.norm_type!r} is not supported")


def _load_qkv_shard(size: int, param: nn.Parameter, loaded: torch.Tensor, shard_id: object = None) -> None:
    """qkv rows are [q; k; v], each `size` long; the HF layout stores them as three tensors."""
    if shard_id is None:
        param.data.copy_(loaded)
        return
    index = "qkv".index(str(shard_id))
    param.data.narrow(0, index * size, size).copy_(loaded)


class VisionAttention(nn.Module):
    def __init__(self, spec: VisionSpec) -> None:
        super().__init__()
        c = spec.hidden_size
        self.num_heads = spec.num_heads
        self.qkv = nn.Linear(c, 3 * c, bias=spec.qkv_bias)
        for param in self.qkv.parameters():
            param.weight_loader = partial(_load_qkv_shard, c)
        self.qk_norm = spec.qk_norm
        if spec.qk_norm:
            self.q_norm = RMSNorm(c, spec.qk_norm_eps)
            self.k_norm = RMSNorm(c, spec.qk_norm_eps)
        self.proj = nn.Linear(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.reshape(b, n, self.num_heads, -1).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class VisionMLP(nn.Module):
    def __init__(self, spec: VisionSpec) -> None:
        super().__init__()
        self.fc1 = nn.Linear(spec.hidden_size, spec.intermediate_size)
        self.fc2 = nn.Linear(spec.intermediate_size, spec.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class VisionLayer(nn.Module):
    def __init__(self, spec: VisionSpec) -> None:
        super().__init__()
        c = spec.hidden_size
        self.norm1, self.norm2 = _norm(spec, c), _norm(spec, c)
        self.attn = VisionAttention(spec)
        self.mlp = VisionMLP(spec)
        self.ls1 = nn.Parameter(torch.ones(c))
        self.ls2 = nn.Parameter(torch.ones(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x)) * self.ls1
        return x + self.mlp(self.norm2(x)) * self.ls2


class VisionEmbeddings(nn.Module):
    def __init__(self, spec: VisionSpec) -> None:
        super().__init__()
        c, p = spec.hidden_size, spec.patch_size
        num_patches = (spec.image_size // p) ** 2
        self.class_embedding = nn.Parameter(torch.zeros(1, 1, c))
        self.patch_embedding = nn.Conv2d(3, c, kernel_size=p, stride=p)
        self.position_embedding = nn.Parameter(torch.zeros(1, num_patches + 1, c))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(patches.shape[0], -1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding


class VisionEncoder(nn.Module):
    def __init__(self, spec: VisionSpec) -> None:
        super().__init__()
        self.layers = nn.ModuleList(VisionLayer(spec) for _ in range(spec.num_layers))


class InternVisionModel(nn.Module):
    def __init__(self, spec: VisionSpec) -> None:
        super().__init__()
        self.embeddings = VisionEmbeddings(spec)
        self.encoder = VisionEncoder(spec)
        self.post_layernorm = nn.LayerNorm(spec.hidden_size, eps=spec.eps) if spec.post_layernorm else None

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(pixel_values)
        for layer in self.encoder.layers:
            x = layer(x)
        return self.post_layernorm(x) if self.post_layernorm is not None else x


def pixel_shuffle(x: torch.Tensor, ratio: float, version: str = "v2") -> torch.Tensor:
    """[B, w, h, C] -> [B, w r, h r, C / r^2] (v2; v1 leaves the two spatial axes transposed)."""
    b, w, h, c = x.shape
    x = x.reshape(b, w, int(h * ratio), int(c / ratio)).permute(0, 2, 1, 3)
    x = x.reshape(b, int(h * ratio), int(w * ratio), int(c / (ratio * ratio)))
    return x if version == "v1" else x.permute(0, 2, 1, 3)


class InternVisionTower(nn.Module):
    """Pixel tiles -> language-model input embeddings, `spec.tokens_per_tile` per tile."""

    def __init__(self, spec: VisionSpec) -> None:
        super().__init__()
        self.spec = spec
        self.vision_model = InternVisionModel(spec)
        width = spec.hidden_size * int(1 / spec.downsample_ratio) ** 2
        self.mlp1 = nn.Sequential(
            nn.LayerNorm(width), nn.Linear(width, spec.text_hidden_size), nn.GELU(),
            nn.Linear(spec.text_hidden_size, spec.text_hidden_size),
        )  # fmt: skip

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [T, 3, S, S] -> [T, tokens_per_tile, text hidden]."""
        x = self.vision_model(pixel_values)[:, 1:]
        side = int(x.shape[1] ** 0.5)
        x = pixel_shuffle(x.reshape(x.shape[0], side, side, -1), self.spec.downsample_ratio, self.spec.ps_version)
        return self.mlp1(x.reshape(x.shape[0], -1, x.shape[-1]))

    def remap_checkpoint_name(self, name: str) -> str | tuple[str, object] | None:
        """A checkpoint tensor's (our name, shard id), our name, or None when it is not the vision side's."""
        if self.spec.layout == "hf":
            name = _hf_to_chat(name)
            if name is None:
                return None
        elif not name.startswith(("vision_model.", "mlp1.")):
            return None
        m = re.match(r"vision_model\.encoder\.layers\.(\d+)\.", name)
        if m and int(m.group(1)) >= self.spec.num_layers:
            return None  # after the feature layer: never run
        if name.startswith("vision_model.post_layernorm.") and not self.spec.post_layernorm:
            return None
        m = re.match(r"(.*\.attn\.)([qkv])_proj\.(weight|bias)$", name)
        if m:
            return f"{m.group(1)}qkv.{m.group(3)}", m.group(2)
        return name


_HF_RENAMES = [(re.compile(p), r) for p, r in [
    (r"^(model\.)?vision_tower\.embeddings\.cls_token$", "vision_model.embeddings.class_embedding"),
    (r"^(model\.)?vision_tower\.embeddings\.patch_embeddings\.projection\.",
     "vision_model.embeddings.patch_embedding."),
    (r"^(model\.)?vision_tower\.embeddings\.position_embeddings$", "vision_model.embeddings.position_embedding"),
    (r"^(model\.)?vision_tower\.encoder\.layer\.(\d+)\.attention\.projection_layer\.",
     r"vision_model.encoder.layers.\2.attn.proj."),
    (r"^(model\.)?vision_tower\.encoder\.layer\.(\d+)\.attention\.", r"vision_model.encoder.layers.\2.attn."),
    (r"^(model\.)?vision_tower\.encoder\.layer\.(\d+)\.layernorm_before\.", r"vision_model.encoder.layers.\2.norm1."),
    (r"^(model\.)?vision_tower\.encoder\.layer\.(\d+)\.layernorm_after\.", r"vision_model.encoder.layers.\2.norm2."),
    (r"^(model\.)?vision_tower\.encoder\.layer\.(\d+)\.lambda_1$", r"vision_model.encoder.layers.\2.ls1"),
    (r"^(model\.)?vision_tower\.encoder\.layer\.(\d+)\.lambda_2$", r"vision_model.encoder.layers.\2.ls2"),
    (r"^(model\.)?vision_tower\.encoder\.layer\.(\d+)\.mlp\.", r"vision_model.encoder.layers.\2.mlp."),
    (r"^(model\.)?vision_tower\.layernorm\.", "vision_model.post_layernorm."),
    (r"^(model\.)?multi_modal_projector\.layer_norm\.", "mlp1.0."),
    (r"^(model\.)?multi_modal_projector\.linear_1\.", "mlp1.1."),
    (r"^(model\.)?multi_modal_projector\.linear_2\.", "mlp1.3."),
]]  # fmt: skip

VISION_PREFIXES = ("model.vision_tower.", "vision_tower.", "model.multi_modal_projector.", "multi_modal_projector.",
                   "vision_model.", "mlp1.")  # fmt: skip


def _hf_to_chat(name: str) -> str | None:
    for pattern, replacement in _HF_RENAMES:
        if pattern.match(name):
            return pattern.sub(replacement, name, count=1)
    return None
