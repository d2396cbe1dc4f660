"""What one step computes, as plain integers: built by rank 0 from the SchedulerOutput, sent to the other
tensor-parallel ranks as one int64 message, turned into device tensors by every rank the same way.

    input_ids    [T]  the scheduled tokens of all sequences, flattened in batch order
    seq_lens     [B]  context length of each sequence after this step
    query_lens   [B]  its tokens computed this step (the last query_lens of its context)
    block_tables [B, W] cache block ids (padded with 0)
    last_index   [S]  flattened index of the last token of each sequence that samples this step

    deferred     [D]  flattened indices of input ids the host does not have yet (async scheduling): each is
                      the token the previous step sampled for that sequence, row deferred_rows[d] of its
                      sampled-token tensor, copied on the device (no host round trip before the launch)

Positions and cache slots follow from those (token j of a sequence sits at seq_len - query_len + j, in
slot table[pos // block_size] * block_size + pos % block_size), so they are not sent.

Message layout: [T, B, W, S, D, input_ids..., seq_lens..., query_lens..., tables (row-major)..., last_index...,
deferred..., deferred_rows...]; with async scheduling every tensor-parallel rank holds rank 0's sampled tokens
(broadcast after each sampling step), so deferred ids resolve the same way on all of them
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import chain

import torch

from ..engine.scheduler import SchedulerOutput
from .forward_context import AttentionMetadata


@dataclass(slots=True)
class StepInputs:
    input_ids: list[int]  # [T] token ids
    seq_lens: list[int]  # [B] tokens of context after this step
    query_lens: list[int]  # [B] tokens computed this step
    block_tables: list[list[int]]  # [B][W] cache block ids, padded with 0
    last_index: list[int]  # [S] flattened index of each sampling sequence's last token
    dummy: bool = False  # a DP engine's filler step: writes no cache slot, its output is dropped
    deferred: list[int] = field(default_factory=list)  # [D] indices into input_ids (placeholders 0 there)
    deferred_rows: list[int] = field(default_factory=list)  # [D] rows of the previous step's sampled tokens

    @classmethod
    def from_scheduler_output(cls, sched: SchedulerOutput, prev_rows: dict[int, int] | None = None) -> StepInputs:
        """`prev_rows` maps seq_id -> row of the previous step's sampled tokens: where a pending token is."""
        input_ids: list[int] = []
        seq_lens: list[int] = []
        query_lens: list[int] = []
        last_index: list[int] = []
        deferred: list[int] = []
        deferred_rows: list[int] = []
        for item in sched.scheduled:
            seq = item.seq
            start, end = seq.num_computed_tokens, seq.num_computed_tokens + item.num_new_tokens
            known = len(seq.token_ids)
            input_ids.extend(seq.token_ids[start:end])
            for _ in range(max(start, known), end):  # sampled by the previous step, still on the device
                row = (prev_rows or {}).get(seq.seq_id)
                if row is None:
                    raise RuntimeError(
                        f"sequence {seq.seq_id} has a pending token that the previous step did not "
                        "sample; the engine must read a step's tokens before the next-but-one"
                    )
                deferred.append(len(input_ids))
                deferred_rows.append(row)
                input_ids.append(0)
            seq_lens.append(end)
            query_lens.append(end - start)
            if item.samples:
                last_index.append(len(input_ids) - 1)
        width = max(len(item.seq.block_table) for item in sched.scheduled)
        tables = [item.seq.block_table + [0] * (width - len(item.seq.block_table)) for item in sched.scheduled]
        return cls(input_ids, seq_lens, query_lens, tables, last_index, deferred=deferred, deferred_rows=deferred_rows)

    @classmethod
    def make_dummy(cls) -> StepInputs:
        """One token of one sequence, stored nowhere (slot -1): lets an idle DP engine join its peers' MoE
        collectives. Attention reads block 0, whatever it holds; the output is discarded."""
        return cls([0], [1], [1], [[0]], [], dummy=True)

    def pack(self) -> list[int]:
        width = len(self.block_tables[0]) if self.block_tables else 0
        head = [len(self.input_ids), len(self.seq_lens), width, len(self.last_index), len(self.deferred)]
        flat = [b for row in self.block_tables for b in row]
        return (head + self.input_ids + self.seq_lens + self.query_lens + flat + self.last_index + self.deferred
                + self.deferred_rows)

    @classmethod
    def unpack(cls, msg: list[int]) -> StepInputs:
        t, b, w, s, d = msg[:5]
        pos = 5
        ids = msg[pos : pos + t]
        pos += t
        seq_lens = msg[pos : pos + b]
        pos += b
        query_lens = msg[pos : pos + b]
        pos += b
        flat = msg[pos : pos + b * w]
        pos += b * w
        tables = [flat[i * w : (i + 1) * w] for i in range(b)]
        last_index = msg[pos : pos + s]
        pos += s
        deferred = msg[pos : pos + d]
        pos += d
        return cls(ids, seq_lens, query_lens, tables, last_index, deferred=deferred, deferred_rows=msg[pos : pos + d])

    def to_device(
        self, device: torch.device, block_size: int, prev_tokens: torch.Tensor | None = None
    ) -> tuple[AttentionMetadata, torch.Tensor, torch.Tensor, list[int]]:
        """(attention metadata, input_ids [T], positions [T], last_index) on `device`; the deferred input ids
        are taken from `prev_tokens` [S'] (the previous step's sampled tokens, on `device`)."""
        positions: list[int] = []
        slots: list[int] = []
        token_seq_lens: list[int] = []
        query_start = [0]
        for table, end, q in zip(self.block_tables, self.seq_lens, self.query_lens, strict=True):
            start = end - q
            positions.extend(range(start, end))
            slots.extend(table[p // block_size] * block_size + p % block_size for p in range(start, end))
            token_seq_lens.extend([end] * q)
            query_start.append(query_start[-1] + q)
        if self.dummy:
            slots = [-1] * len(slots)

        b = len(self.seq_lens)
        width = len(self.block_tables[0]) if self.block_tables else 0
        # two host-to-device copies per step (int64, int32) instead of one per field: fewer launches
        slot_mapping, token_seq_lens_d, input_ids, positions_d, deferred_rows, deferred = host_to_device_packed(
            [slots, token_seq_lens, self.input_ids, positions, self.deferred_rows, self.deferred], torch.int64, device
        )
        flat_tables = list(chain.from_iterable(self.block_tables))
        query_start_loc, seq_lens, tables = host_to_device_packed(
            [query_start, self.seq_lens, flat_tables], torch.int32, device
        )
        meta = AttentionMetadata(
            slot_mapping=slot_mapping,
            query_start_loc=query_start_loc,
            seq_lens=seq_lens,
            block_tables=tables.view(b, width),
            token_seq_lens=token_seq_lens_d,
            query_lens_host=list(self.query_lens),
            seq_lens_host=list(self.seq_lens),
            max_query_len=max(self.query_lens),
            max_seq_len=max(self.seq_lens),
            is_decode_only=max(self.query_lens) == 1,
        )
        if self.deferred:
            if prev_tokens is None:
                raise RuntimeError("the step has deferred input ids but no previous sampled tokens were given")
            input_ids.index_copy_(0, deferred, prev_tokens.index_select(0, deferred_rows))
        return meta, input_ids, positions_d, self.last_index


def host_to_device(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A host list as a tensor on `device`, without waiting for the device: on CUDA it goes through pinned
    memory with a non-blocking copy (a pageable copy would synchronise the stream)."""
    t = torch.tensor(values, dtype=dtype, pin_memory=device.type == "cuda")
    return t.to(device, non_blocking=True)


def host_to_device_packed(parts: list[list[int]], dtype: torch.dtype, device: torch.device) -> list[torch.Tensor]:
    """Host lists as device tensors through one copy: views of one buffer, each starting 16-byte aligned (as
    Triton specialises pointers, an unaligned one would compile another kernel variant)."""
    step = 16 // torch.empty((), dtype=dtype).element_size()
    flat: list[int] = []
    starts: list[int] = []
    for part in parts:
        starts.append(len(flat))
        flat.extend(part)
        flat.extend([0] * (-len(part) % step))
    buf = host_to_device(flat, dtype, device)
    return [buf[start : start + len(part)] for start, part in zip(starts, parts, strict=True)]
