"""StepInputs: the message every TP rank gets round-trips, and its device tensors (two packed copies, each
view 16-byte aligned) hold the positions, slots, offsets, tables and deferred ids the attention path reads."""

from __future__ import annotations

import torch

from interndeploy.worker.step_inputs import StepInputs, host_to_device_packed

CPU = torch.device("cpu")


def _step() -> StepInputs:
    # a prefill chunk of 3 tokens (context 5) and two decode rows, one of them waiting for a sampled token
    return StepInputs(
        input_ids=[11, 12, 13, 21, 0],
        seq_lens=[5, 9, 17],
        query_lens=[3, 1, 1],
        block_tables=[[4, 0, 0], [7, 8, 0], [1, 2, 3]],
        last_index=[2, 3, 4],
        deferred=[4],
        deferred_rows=[1],
    )


def test_pack_round_trip() -> None:
    step = _step()
    assert StepInputs.unpack(step.pack()) == step


def test_to_device_values() -> None:
    prev_tokens = torch.tensor([90, 91, 92])
    meta, ids, positions, last_index = _step().to_device(CPU, block_size=8, prev_tokens=prev_tokens)
    assert ids.tolist() == [11, 12, 13, 21, 91]  # the deferred id comes from row 1 of the previous tokens
    assert positions.tolist() == [2, 3, 4, 8, 16]
    # slot = table[pos // 8] * 8 + pos % 8
    assert meta.slot_mapping.tolist() == [4 * 8 + 2, 4 * 8 + 3, 4 * 8 + 4, 8 * 8 + 0, 3 * 8 + 0]
    assert meta.query_start_loc.tolist() == [0, 3, 4, 5]
    assert meta.seq_lens.tolist() == [5, 9, 17]
    assert meta.block_tables.tolist() == [[4, 0, 0], [7, 8, 0], [1, 2, 3]]
    assert meta.token_seq_lens.tolist() == [5, 5, 5, 9, 17]
    assert (meta.query_start_loc.dtype, meta.seq_lens.dtype, meta.block_tables.dtype) == (torch.int32,) * 3
    assert meta.max_query_len == 3 and meta.max_seq_len == 17 and not meta.is_decode_only
    assert last_index == [2, 3, 4]


def test_dummy_step_writes_no_slot() -> None:
    meta, ids, positions, _ = StepInputs.make_dummy().to_device(CPU, block_size=16)
    assert meta.slot_mapping.tolist() == [-1] and ids.tolist() == [0] and positions.tolist() == [0]


def test_packed_views_are_aligned_and_exact() -> None:
    parts = [[1, 2, 3], [], [4], list(range(10))]
    for dtype in (torch.int32, torch.int64):
        views = host_to_device_packed(parts, dtype, CPU)
        assert [v.tolist() for v in views] == parts
        assert all(v.data_ptr() % 16 == 0 and v.dtype == dtype for v in views)
