"""Token embedding and the LM head (which may share its weight).

With tp > 1 the vocabulary is split in contiguous ranges across ranks; the hooks are in the weight
loaders, the gather of partial embeddings / logits arrives with distributed.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from interndeploy.layers.weight_loader import tp_rank_and_size


class VocabEmbedding(nn.Module):
    def __init__(self, num_embeddings: int, embedding_dim: int, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.tp_rank, self.tp_size = tp_rank_and_size()
        if num_embeddings % self.tp_size:
            raise ValueError(f"tp={self.tp_size} must divide vocab_size={num_embeddings}")
        self.num_embeddings = num_embeddings
        self.shard_size = num_embeddings // self.tp_size
        self.weight = nn.Parameter(torch.empty(self.shard_size, embedding_dim, dtype=dtype), requires_grad=False)
        self.weight.weight_loader = self.weight_loader

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: object = None) -> None:
        if loaded.shape != (self.num_embeddings, *param.shape[1:]):
            raise ValueError(f"shape mismatch: parameter {tuple(param.shape)}, checkpoint {tuple(loaded.shape)}")
        param.data.copy_(loaded.narrow(0, self.tp_rank * self.shard_size, self.shard_size))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp_size > 1:
            raise NotImplementedError("vocab-parallel embedding arrives with distributed.py")
        return F.embedding(input_ids, self.weight)


class LMHead(VocabEmbedding):
    """hidden [N, H] -> logits [N, V] in fp32; the caller passes only the rows it needs logits for."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.tp_size > 1:
            raise NotImplementedError("vocab-parallel LM head arrives with distributed.py")
        return F.linear(hidden, self.weight).float()
