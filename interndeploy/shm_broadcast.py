"""Rank 0's per-step control message to the other ranks of one host, through shared memory.

A tensor-parallel step starts with rank 0 sending the step's inputs (a few hundred to a few thousand int64)
to every worker. Over gloo that is a TCP round through the kernel on each side, 0.3-0.7 ms per step on a
small host, paid on the engine thread of every step. Here rank 0 writes the message into a ring of slots in
one shared-memory segment and the workers poll for it: a write and a copy.

    segment (int64 words):  [acks: one per reader] [slot 0: seq, n, payload ...] [slot 1 ...] ...

Rank 0 publishes message s (s = 1, 2, ...) in slot s % SLOTS: payload first, then its length n, then seq = s;
before reusing a slot it waits until every reader acked the message that held it. A reader waits for
seq == s in its next slot, copies n words and acks s. n = -1 is the shutdown message; n = -2 says the
message was too long for a slot and follows over gloo. Readers spin for a while after each message (the
next step comes within milliseconds while serving) and then sleep between polls with a growing interval
(an idle server costs no core).

Stores become visible to other processes in program order on x86-64 (TSO), which the publish protocol
relies on; other architectures keep gloo. Only ranks of one host share a segment (the caller checks).
"""

from __future__ import annotations

import array
import logging
import platform
import secrets
import sys
import time
from collections.abc import Callable
from multiprocessing import resource_tracker, shared_memory

logger = logging.getLogger("interndeploy")

SLOTS = 4
SLOT_WORDS = 1 << 15  # payload words per slot (256 KiB): a step of 1024 sequences with long block tables fits
SHUTDOWN, OVERFLOW = -1, -2
_SPIN_S = 0.005  # poll without sleeping this long after the last message
_MAX_SLEEP_S = 0.001
SHUTDOWN_TIMEOUT_S = 5.0  # a reader that died must not hold the writer's shutdown


def supported() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def _wait(ready: Callable[[], bool], timeout: float | None = None) -> None:
    start = time.perf_counter()
    pause = 2e-5
    while not ready():
        waited = time.perf_counter() - start
        if timeout is not None and waited > timeout:
            raise TimeoutError(f"no progress from the other ranks in {timeout:.0f} s")
        if waited > _SPIN_S:
            time.sleep(pause)
            pause = min(pause * 2, _MAX_SLEEP_S)


def _attach_untracked(name: str) -> shared_memory.SharedMemory:
    """Open the creator's segment without handing it to this process's resource tracker: the creator unlinks
    it, and a tracker (shared with the creator by multiprocessing children, or a Ray worker's own) must not
    unlink or forget it at this process's exit. Python 3.13 says so with track=False."""
    if sys.version_info >= (3, 13):
        return shared_memory.SharedMemory(name=name, track=False)
    register = resource_tracker.register
    resource_tracker.register = lambda *args, **kwargs: None
    try:
        return shared_memory.SharedMemory(name=name)
    finally:
        resource_tracker.register = register


class ShmBroadcast:
    def __init__(self, shm: shared_memory.SharedMemory, num_readers: int, reader: int | None) -> None:
        self._shm = shm
        self._words = shm.buf.cast("q")
        self._num_readers = num_readers
        self._reader = reader  # None on the writer
        self._seq = 0  # last message written (writer) or read (reader)

    @staticmethod
    def segment_words(num_readers: int) -> int:
        return num_readers + SLOTS * (2 + SLOT_WORDS)

    @classmethod
    def create(cls, num_readers: int) -> ShmBroadcast:
        name = f"interndeploy-{secrets.token_hex(8)}"
        shm = shared_memory.SharedMemory(name=name, create=True, size=8 * cls.segment_words(num_readers))
        shm.buf[:] = bytes(shm.size)
        return cls(shm, num_readers, None)

    @classmethod
    def attach(cls, name: str, num_readers: int, reader: int) -> ShmBroadcast:
        return cls(_attach_untracked(name), num_readers, reader)

    @property
    def name(self) -> str:
        return self._shm.name

    def _slot(self, seq: int) -> int:
        return self._num_readers + (seq % SLOTS) * (2 + SLOT_WORDS)

    def write(self, values: list[int] | None) -> bool:
        """Publish a message (None: shutdown); False when it is too long for a slot (then it must follow over
        the process group, after this call published the OVERFLOW marker)."""
        seq = self._seq + 1
        if seq > SLOTS:  # the slot's previous message must have been read by everyone
            old = seq - SLOTS
            _wait(lambda: all(self._words[r] >= old for r in range(self._num_readers)),
                  SHUTDOWN_TIMEOUT_S if values is None else None)
        base = self._slot(seq)
        if values is None:
            n = SHUTDOWN
        elif len(values) > SLOT_WORDS:
            n = OVERFLOW
        else:
            n = len(values)
            self._words[base + 2 : base + 2 + n] = array.array("q", values)
        self._words[base + 1] = n
        self._words[base] = seq
        self._seq = seq
        return n != OVERFLOW

    def read(self) -> list[int] | None | int:
        """The next message (None: shutdown), or OVERFLOW when it comes over the process group instead."""
        seq = self._seq + 1
        base = self._slot(seq)
        _wait(lambda: self._words[base] == seq)
        n = self._words[base + 1]
        out: list[int] | None | int
        if n == SHUTDOWN:
            out = None
        elif n == OVERFLOW:
            out = OVERFLOW
        else:
            out = self._words[base + 2 : base + 2 + n].tolist()
        self._seq = seq
        self._words[self._reader] = seq
        return out

    def close(self) -> None:
        self._words.release()
        self._shm.close()
        if self._reader is None:
            try:
                self._shm.unlink()
            except FileNotFoundError:
                pass
