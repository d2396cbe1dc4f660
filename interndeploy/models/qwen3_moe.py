"""Qwen3-MoE (the language model of Intern-S1): Qwen3's attention, and sparse MoE blocks for the MLP.

Layer i is sparse unless i is in `mlp_only_layers` or (i + 1) is not a multiple of `decoder_sparse_step`
(then a dense SwiGLU MLP of `intermediate_size`). A sparse block routes each token to the
`num_experts_per_tok` of `num_experts` experts (each a SwiGLU MLP of `moe_intermediate_size`) with the
softmax weights of its router, renormalised to sum to 1 when `norm_topk_prob`. No shared expert.

Checkpoint name                              ours
layers.N.mlp.gate.weight [E, H]              layers.N.mlp.gate.weight (router)
layers.N.mlp.experts.E.{gate,up}_proj.*      layers.N.mlp.experts.w13_* [E, 2I, H]  shard (E, "gate" | "up")
layers.N.mlp.experts.E.down_proj.*           layers.N.mlp.experts.w2_*  [E, H, I]   shard (E, "down")
"""

from __future__ import annotations

from typing import Any

from torch import nn

from interndeploy.layers.moe import SparseMoE, expert_checkpoint_name
from interndeploy.models.qwen3 import Qwen3ForCausalLM


def _num_experts(config: Any) -> int:
    return int(getattr(config, "num_experts", None) or getattr(config, "num_local_experts", 0) or 0)


class Qwen3MoeForCausalLM(Qwen3ForCausalLM):
    def is_sparse_layer(self, layer_idx: int) -> bool:
        config = self.config
        step = int(getattr(config, "decoder_sparse_step", 1) or 1)
        only_mlp = set(getattr(config, "mlp_only_layers", None) or [])
        return _num_experts(config) > 0 and layer_idx not in only_mlp and (layer_idx + 1) % step == 0

    def make_layer(self, layer_idx: int, mlp: nn.Module | None = None) -> nn.Module:
        if mlp is None and self.is_sparse_layer(layer_idx):
            config = self.config
            mlp = SparseMoE(
                self.spec.hidden_size,
                _num_experts(config),
                int(config.num_experts_per_tok),
                int(config.moe_intermediate_size),
                renormalize=bool(getattr(config, "norm_topk_prob", False)),
            )
        return super().make_layer(layer_idx, mlp)

    def remap_checkpoint_name(self, name: str) -> str | tuple[str, object]:
        return expert_checkpoint_name(name) or name
