"""Token embedding and the LM head (which may share its weight), vocabulary-parallel when tp > 1.

The vocabulary is padded to a multiple of tp and split in contiguous ranges, rank r holding rows
[r * S, (r + 1) * S) with S = ceil(V / tp); rows past V are zeros. The embedding looks up the ids in
its range (others give zeros) and the ranks' partial embeddings are summed; the head computes its
columns of the logits and the ranks' columns are gathered, the padding dropped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from interndeploy.distributed import tp_all_gather, tp_all_reduce
from interndeploy.layers.linear import dense_linear
from interndeploy.layers.weight_loader import tp_rank_and_size


class VocabEmbedding(nn.Module):
    def __init__(self, num_embeddings: int, embedding_dim: int, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.tp_rank, self.tp_size = tp_rank_and_size()
        self.num_embeddings = num_embeddings
        self.shard_size = -(-num_embeddings // self.tp_size)
        self.vocab_start = self.tp_rank * self.shard_size
        self.num_real = max(0, min(num_embeddings - self.vocab_start, self.shard_size))  # rows not padding
        self.weight = nn.Parameter(torch.empty(self.shard_size, embedding_dim, dtype=dtype), requires_grad=False)
        self.weight.weight_loader = self.weight_loader

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: object = None) -> None:
        if loaded.shape != (self.num_embeddings, *param.shape[1:]):
            raise ValueError(f"shape mismatch: parameter {tuple(param.shape)}, checkpoint {tuple(loaded.shape)}")
        param.data[: self.num_real].copy_(loaded.narrow(0, self.vocab_start, self.num_real))
        param.data[self.num_real :].zero_()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return F.embedding(input_ids, self.weight)
        local = input_ids - self.vocab_start
        outside = (local < 0) | (local >= self.num_real)
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        out.masked_fill_(outside.unsqueeze(-1), 0)
        return tp_all_reduce(out)


class LMHead(VocabEmbedding):
    """hidden [N, H] -> logits [N, V] in fp32; the caller passes only the rows it needs logits for."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = dense_linear(hidden, self.weight)
        if self.tp_size > 1:
            logits = tp_all_gather(logits)[:, : self.num_embeddings]
        return logits.float()
