"""Run calibration tokens through a float model one decoder layer at a time, watching each linear's input.

    samples [n, L] --embed--> hidden [n, L, H] on the device
    for each layer:  layer -> device;  hidden = layer(hidden) batch by batch;  layer -> CPU
                     (pre-hooks on its linear layers record per-channel |x| statistics and a token sample)

Only one decoder layer's weights and the hidden states of the calibration set live on the device, so a 7B
model calibrates on one GPU. The layers are our own modules (the same code that serves the model), called
as the Llama-family decoder contract `layer(hidden, residual, cos, sin) -> (hidden, residual)`; attention
sees a prefill-only forward context (no KV cache).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from interndeploy.layers.linear import LinearBase
from interndeploy.layers.rotary import RotaryEmbedding
from interndeploy.worker.forward_context import AttentionMetadata, forward_context


@dataclass
class InputStats:
    """Statistics of the inputs a linear layer saw over the calibration set."""

    absmax: torch.Tensor | None = None  # [in] max |x| per input channel (fp32)
    abssum: torch.Tensor | None = None  # [in] sum |x| per input channel (fp32)
    count: int = 0  # tokens seen
    sample: list[torch.Tensor] = field(default_factory=list)  # token rows kept for searches, [k, in] each

    @property
    def absmean(self) -> torch.Tensor:
        assert self.abssum is not None, "no inputs observed"
        return self.abssum / max(self.count, 1)

    def tokens(self) -> torch.Tensor:
        """The kept token rows [k, in]."""
        return torch.cat(self.sample) if self.sample else torch.empty(0)

    def observe(self, x: torch.Tensor, keep: int, gen: torch.Generator) -> None:
        x = x.reshape(-1, x.shape[-1])
        a = x.detach().abs().float()
        amax, asum = a.amax(0), a.sum(0)
        self.absmax = amax if self.absmax is None else torch.maximum(self.absmax, amax)
        self.abssum = asum if self.abssum is None else self.abssum + asum
        self.count += x.shape[0]
        if keep > 0:
            rows = torch.randperm(x.shape[0], generator=gen)[: min(keep, x.shape[0])].to(x.device)
            self.sample.append(x.detach()[rows].clone())


def decoder_of(model: nn.Module) -> nn.Module:
    """The model's decoder stack (embed_tokens, rotary_emb, layers), checked against the contract we call."""
    core = getattr(model, "model", None)
    if core is None or not all(hasattr(core, a) for a in ("embed_tokens", "rotary_emb", "layers")):
        raise ValueError(f"{type(model).__name__} is not a Llama-family decoder; auto_awq cannot calibrate it")
    return core


def prefill_metadata(batch: int, seqlen: int, device: torch.device) -> AttentionMetadata:
    """A forward context for `batch` fresh sequences of `seqlen` tokens each, with no KV cache attached."""
    lens = [seqlen] * batch
    return AttentionMetadata(
        slot_mapping=torch.full((batch * seqlen,), -1, dtype=torch.int64, device=device),
        query_start_loc=torch.arange(0, (batch + 1) * seqlen, seqlen, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(lens, dtype=torch.int32, device=device),
        block_tables=torch.zeros(batch, 0, dtype=torch.int32, device=device),
        token_seq_lens=torch.full((batch * seqlen,), seqlen, dtype=torch.int64, device=device),
        query_lens_host=lens,
        seq_lens_host=list(lens),
        max_query_len=seqlen,
        max_seq_len=seqlen,
        is_decode_only=seqlen == 1,
    )


class LayerCalibrator:
    """Holds the calibration hidden states and advances them through the decoder one layer at a time."""

    def __init__(
        self,
        model: nn.Module,
        samples: torch.Tensor,
        device: torch.device,
        batch_size: int = 1,
        sample_tokens: int = 0,
        seed: int = 0,
    ) -> None:
        self.core = decoder_of(model)
        self.device = device
        self.batch_size = max(1, batch_size)
        self.n, self.seqlen = samples.shape
        self.sample_tokens = sample_tokens  # token rows to keep per linear input (0: statistics only)
        self.gen = torch.Generator().manual_seed(seed)
        for module in self.core.modules():
            if isinstance(module, RotaryEmbedding):
                module.reserve_positions(self.seqlen)
        self.core.rotary_emb.to(device)
        embed = self.core.embed_tokens
        embed.to(device)
        with torch.inference_mode():
            batches = [samples[i : i + self.batch_size] for i in range(0, self.n, self.batch_size)]
            self.hidden = torch.cat([embed(b.to(device).flatten()) for b in batches]).view(self.n, self.seqlen, -1)
        embed.to("cpu")

    @property
    def num_layers(self) -> int:
        return len(self.core.layers)

    def _batches(self) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor, AttentionMetadata]]:
        for start in range(0, self.n, self.batch_size):
            b = min(self.batch_size, self.n - start)
            meta = prefill_metadata(b, self.seqlen, self.device)
            positions = torch.arange(self.seqlen, device=self.device).repeat(b)
            with forward_context(meta):
                cos, sin = self.core.rotary_emb.cos_sin(positions)
            yield slice(start, start + b), cos, sin, meta

    @torch.inference_mode()
    def run_layer(self, index: int) -> dict[str, InputStats]:
        """Advance the hidden states through layer `index`; the input statistics of each of its linear layers."""
        layer = self.core.layers[index]
        layer.to(self.device)
        stats: dict[str, InputStats] = {}
        hooks = []
        total = self.n * self.seqlen
        keep = -(-self.sample_tokens * self.batch_size * self.seqlen // total) if self.sample_tokens else 0
        for name, module in layer.named_modules():
            if isinstance(module, LinearBase):
                stats[name] = st = InputStats()

                def hook(_m: nn.Module, args: tuple, st: InputStats = st) -> None:
                    st.observe(args[0], keep, self.gen)

                hooks.append(module.register_forward_pre_hook(hook))
        try:
            for rows, cos, sin, meta in self._batches():
                flat = self.hidden[rows].flatten(0, 1)
                with forward_context(meta):
                    out, residual = layer(flat, None, cos, sin)
                self.hidden[rows] = (out + residual).view(-1, self.seqlen, flat.shape[-1])
        finally:
            for h in hooks:
                h.remove()
            layer.to("cpu")
        return stats
