"""Mixture-of-experts layers: top-k routing in torch, the experts through the fused MoE kernel.

    SparseMoE   router `gate` [E, H] (never quantized) -> softmax -> top-k (-> renormalise) -> FusedMoE
    FusedMoE    every expert's weights stacked in two parameters (per tensor-parallel rank):
                    w13_weight [E, 2 * I_r, H]   rows [gate_e | up_e]
                    w2_weight  [E, H, I_r]       down_e
                I_r = moe_intermediate_size / tp: each rank holds a slice of every expert's intermediate
                dim (like a column layer for gate/up, a row layer for down) and the outputs are summed.
                With expert parallelism (ep > 1) rank r instead holds whole experts [r E/ep, (r+1) E/ep)
                (E above is then E/ep): with tokens replicated on the ranks (EP inside TP) it runs the
                routes to its experts and the outputs are summed; with each rank's own tokens (DP + EP)
                routes are dispatched to their expert's rank and combined back with all_to_all_single.

Checkpoints name experts one by one (`mlp.experts.7.up_proj.weight`); `expert_checkpoint_name` maps
such a name to (our stacked parameter, shard id (expert, "gate" | "up" | "down")), which the
parameter's weight loader places. Quantized formats swap the quant method (create_weights / apply),
as for linear layers; a parameter whose elements each cover a block of the weight (FP8 scales) says
so with `block_shape`.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from interndeploy import distributed
from interndeploy.kernels import reference_moe
from interndeploy.kernels._triton import use_triton
from interndeploy.layers.linear import LinearMethod, ReplicatedLinear, linear_method_factory
from interndeploy.layers.weight_loader import tp_rank_and_size

_EXPERT_NAME = re.compile(r"^(?P<prefix>.*\.experts)\.(?P<expert>\d+)\.(?P<part>gate|up|down)_proj\.(?P<suffix>\w+)$")


def expert_checkpoint_name(name: str) -> tuple[str, tuple[int, str]] | None:
    """`...experts.7.up_proj.weight` -> (`...experts.w13_weight`, (7, "up")); None for any other name."""
    m = _EXPERT_NAME.match(name)
    if m is None:
        return None
    stacked = "w2" if m["part"] == "down" else "w13"
    return f"{m['prefix']}.{stacked}_{m['suffix']}", (int(m["expert"]), m["part"])


def select_experts(router_logits: torch.Tensor, top_k: int, renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """router_logits [T, E] -> (weights [T, k] fp32, expert ids [T, k]): softmax over all experts in fp32,
    the k largest, rescaled to sum to 1 when `renormalize` (Qwen3-MoE's norm_topk_prob)."""
    probs = torch.softmax(router_logits, dim=-1, dtype=torch.float32)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids


class MoEMethod:
    """Strategy for the stacked expert weights; the unquantized one holds them in the model dtype."""

    def create_weights(
        self, layer: nn.Module, num_experts: int, hidden_size: int, intermediate_size: int, dtype: torch.dtype | None
    ) -> None:
        e, h, i = num_experts, hidden_size, intermediate_size
        layer.register_parameter("w13_weight", nn.Parameter(torch.empty(e, 2 * i, h, dtype=dtype), requires_grad=False))
        layer.register_parameter("w2_weight", nn.Parameter(torch.empty(e, h, i, dtype=dtype), requires_grad=False))

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        """Repack loaded weights for the kernel (no-op when unquantized)."""

    def apply(
        self, layer: nn.Module, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor
    ) -> torch.Tensor:
        if use_triton(x):
            from interndeploy.kernels.fused_moe import fused_moe
        else:
            fused_moe = reference_moe.fused_moe
        return fused_moe(x, layer.w13_weight, layer.w2_weight, topk_weights, topk_ids)


class FusedMoE(nn.Module):
    """The experts of one layer: x [T, H] with its routing (weights, ids [T, k]) -> [T, H]."""

    def __init__(
        self,
        num_experts: int,
        hidden_size: int,
        intermediate_size: int,
        quant_method: MoEMethod | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.ep_rank, self.ep_size = distributed.ep_rank_and_size()
        # with expert parallelism every rank holds whole experts: no slice of the intermediate dim
        self.tp_rank, self.tp_size = tp_rank_and_size() if self.ep_size == 1 else (0, 1)
        if intermediate_size % self.tp_size:
            raise ValueError(f"tp={self.tp_size} must divide moe_intermediate_size={intermediate_size}")
        if num_experts % self.ep_size:
            raise ValueError(f"ep={self.ep_size} must divide num_experts={num_experts}")
        self.num_experts = num_experts
        self.num_local_experts = num_experts // self.ep_size
        self.expert_start = self.ep_rank * self.num_local_experts  # global id of local expert 0
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size // self.tp_size  # this rank's slice
        if quant_method is None:
            factory = linear_method_factory()  # the checkpoint format's, when the model is built for one
            quant_method = factory(self) if factory is not None else None
            if quant_method is not None and not isinstance(quant_method, MoEMethod):
                raise ValueError(f"the weight format's {type(quant_method).__name__} cannot hold MoE experts")
        self.quant_method = quant_method or MoEMethod()
        self.quant_method.create_weights(self, self.num_local_experts, hidden_size, self.intermediate_size, dtype)
        for name, param in self.named_parameters(recurse=False):
            param.weight_loader = self.weight_loader
            parts = ("down",) if name.startswith("w2") else ("gate", "up")
            param.expected_shards = {(e, p) for e in range(num_experts) for p in parts}

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: object = None) -> None:
        """Place one expert's gate / up [I, H] or down [H, I] (full size; this rank takes its slice of I)."""
        if not (isinstance(shard_id, tuple) and len(shard_id) == 2 and shard_id[1] in ("gate", "up", "down")):
            raise ValueError(f"expert weights load one expert at a time, shard id (expert, part), got {shard_id!r}")
        expert, part = shard_id
        if not 0 <= expert < self.num_experts:
            raise ValueError(f"expert {expert} is out of range: the model has {self.num_experts} experts")
        if not 0 <= expert - self.expert_start < self.num_local_experts:
            return  # another expert-parallel rank's expert
        rows_per, cols_per = getattr(param, "block_shape", (1, 1))  # weight elements per parameter element
        dst = param.data[expert - self.expert_start]
        if part == "down":  # [H, I]: this rank's columns
            size = dst.shape[1]
            src_dim = 1
        else:  # [I, H] into rows [0, I_r) (gate) or [I_r, 2 I_r) (up)
            size = -(-self.intermediate_size // rows_per)
            dst = dst.narrow(0, 0 if part == "gate" else size, size)
            src_dim = 0
        if loaded.dim() != 2 or loaded.shape[src_dim] != size * self.tp_size:
            raise ValueError(
                f"expert {expert} {part}_proj {tuple(loaded.shape)} does not fit parameter {tuple(param.shape)} "
                f"({self.tp_size} ranks, block {rows_per}x{cols_per})"
            )
        src = loaded.narrow(src_dim, self.tp_rank * size, size)
        if dst.shape != src.shape:
            raise ValueError(f"shape mismatch: expert slice {tuple(dst.shape)}, checkpoint {tuple(src.shape)}")
        dst.copy_(src)

    def forward(self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
        if self.ep_size > 1 and not distributed.ep_tokens_replicated():
            return self._dispatch_combine(x, topk_weights, topk_ids)
        if self.ep_size > 1:
            # routes to other ranks' experts: weight 0 on local expert 0 (the kernel needs ids in range)
            local = topk_ids - self.expert_start
            here = (local >= 0) & (local < self.num_local_experts)
            topk_weights = torch.where(here, topk_weights, torch.zeros_like(topk_weights))
            topk_ids = torch.where(here, local, torch.zeros_like(local))
        out = self.quant_method.apply(self, x, topk_weights, topk_ids)
        if self.tp_size > 1 or self.ep_size > 1:
            out = distributed.tp_all_reduce(out)
        return out

    def _dispatch_combine(self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
        """DP + EP: each route (token, j) travels to the rank holding its expert, is computed there with
        weight 1, comes back, and the routes of a token are summed with their weights here.

            routes sorted by rank --all_to_all--> [rows from rank 0 | rows from rank 1 | ...] -> experts
            outputs             <--all_to_all--- (same layout, back to where each row came from)
        """
        num_tokens, top_k = topk_ids.shape
        flat = topk_ids.reshape(-1).long()
        dest = torch.div(flat, self.num_local_experts, rounding_mode="floor")
        order = torch.argsort(dest, stable=True)
        send = torch.bincount(dest, minlength=self.ep_size)
        recv = distributed.ep_exchange_counts(send.cpu())  # counts travel on the host: gloo and NCCL both take them
        send_counts, recv_counts = send.tolist(), recv.tolist()
        rows = distributed.ep_all_to_all(x[order // top_k], send_counts, recv_counts)
        local_ids = distributed.ep_all_to_all((flat[order] - dest[order] * self.num_local_experts).view(-1, 1),
                                              send_counts, recv_counts)
        if rows.shape[0]:
            ones = torch.ones(local_ids.shape, dtype=topk_weights.dtype, device=x.device)
            y = self.quant_method.apply(self, rows, ones, local_ids)
        else:
            y = rows
        back = distributed.ep_all_to_all(y, recv_counts, send_counts)
        routed = torch.empty_like(back)
        routed[order] = back
        weighted = routed.view(num_tokens, top_k, -1).float() * topk_weights.unsqueeze(-1).float()
        return weighted.sum(dim=1).to(x.dtype)


class SparseMoE(nn.Module):
    """Qwen3-MoE's sparse block: `gate` routes each token to `top_k` of `experts`; no shared expert."""

    def __init__(
        self, hidden_size: int, num_experts: int, top_k: int, intermediate_size: int, renormalize: bool
    ) -> None:
        super().__init__()
        if not 0 < top_k <= num_experts:
            raise ValueError(f"num_experts_per_tok={top_k} must be in 1..num_experts={num_experts}")
        self.top_k = top_k
        self.renormalize = renormalize
        # the router stays in high precision whatever the checkpoint format
        self.gate = ReplicatedLinear(hidden_size, num_experts, bias=False, quant_method=LinearMethod())
        self.experts = FusedMoE(num_experts, hidden_size, intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [T, H] -> [T, H]."""
        weights, ids = select_experts(self.gate(x), self.top_k, self.renormalize)
        return self.experts(x, weights, ids)
