"""Rank 0's step messages through shared memory (interndeploy/shm_broadcast.py): the ring alone with several
readers, and broadcast_ints with it inside a 2-rank world (long messages continue over gloo)."""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp

from interndeploy import shm_broadcast
from interndeploy.shm_broadcast import SLOT_WORDS, SLOTS, ShmBroadcast

pytestmark = pytest.mark.skipif(not shm_broadcast.supported(), reason="shared-memory channel is x86-64 only")

MESSAGES = [[1, 2, 3], [], list(range(1000)), [-(2**63), 2**63 - 1], *([[7, i] for i in range(3 * SLOTS)])]


def _reader(index: int, name: str, num_readers: int, results) -> None:
    channel = ShmBroadcast.attach(name, num_readers, index)
    got = []
    while (msg := channel.read()) is not None:
        got.append(msg)
    channel.close()
    results[index] = got


def test_ring_delivers_every_message_in_order_to_every_reader() -> None:
    """More messages than slots: the writer waits for slow readers instead of overwriting their slot."""
    writer = ShmBroadcast.create(num_readers=3)
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        results = manager.dict()
        procs = [ctx.Process(target=_reader, args=(i, writer.name, 3, results)) for i in range(3)]
        for p in procs:
            p.start()
        for msg in MESSAGES:
            assert writer.write(msg)
        assert not writer.write(list(range(SLOT_WORDS + 1)))  # too long: the marker goes, the words do not
        writer.write(None)
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0
        expected = [*MESSAGES, shm_broadcast.OVERFLOW]
        assert [results[i] for i in range(3)] == [expected] * 3
    writer.close()


def test_shutdown_does_not_wait_for_a_reader_that_is_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shm_broadcast, "SHUTDOWN_TIMEOUT_S", 0.2)
    writer = ShmBroadcast.create(num_readers=1)
    for i in range(SLOTS):
        writer.write([i])  # nobody reads: the ring is full
    with pytest.raises(TimeoutError):
        writer.write(None)
    writer.close()


def _world_worker(rank: int, port: int, results) -> None:
    import os

    os.environ["INTERNDEPLOY_TP_CONTROL"] = "shm"
    from interndeploy import distributed

    state = distributed.init_distributed(rank=rank, world_size=2, master_addr="127.0.0.1", master_port=port,
                                         device=torch.device("cpu"), tp_size=2, ep_size=1, ep_tokens_replicated=True)
    try:
        got = []
        for msg in ([5, 6], list(range(SLOT_WORDS + 10)), [], [9], None):
            got.append(distributed.broadcast_ints(msg if rank == 0 else None))
        results[rank] = (state.control is not None, got)
    finally:
        distributed.destroy_distributed()


def test_broadcast_ints_through_the_channel_and_over_gloo_when_long() -> None:
    from interndeploy.distributed import free_port

    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_world_worker, args=(free_port(), results), nprocs=2)
        want = [[5, 6], list(range(SLOT_WORDS + 10)), [], [9], None]
        assert results[0] == results[1] == (True, want)
