"""Outputs cross from the engine thread to the event loops in one wake-up per loop and step."""

from __future__ import annotations

import asyncio

from interndeploy.engine.async_engine import _deliver, _Sink
from interndeploy.engine.request import RequestOutput


def _out(rid: str) -> RequestOutput:
    return RequestOutput(rid, 0, "x", [1], None, 1, 1)


def test_one_call_per_loop_and_every_output_queued() -> None:
    loops = [asyncio.new_event_loop(), asyncio.new_event_loop()]
    calls = {id(lp): 0 for lp in loops}
    try:
        for lp in loops:
            real = lp.call_soon_threadsafe

            def counting(cb, *args, _lp=lp, _real=real):
                calls[id(_lp)] += 1
                return _real(cb, *args)

            lp.call_soon_threadsafe = counting
        sinks = [_Sink(loops[i % 2], asyncio.Queue()) for i in range(6)]
        _deliver([(s, _out(f"r{i}")) for i, s in enumerate(sinks)] + [(sinks[0], _out("r0b"))])
        assert list(calls.values()) == [1, 1]
        for lp in loops:
            lp.run_until_complete(asyncio.sleep(0))
        got = {i: [sinks[i].queue.get_nowait().request_id for _ in range(sinks[i].queue.qsize())] for i in range(6)}
        assert got == {0: ["r0", "r0b"], 1: ["r1"], 2: ["r2"], 3: ["r3"], 4: ["r4"], 5: ["r5"]}
    finally:
        for lp in loops:
            lp.close()


def test_a_closed_loop_is_skipped() -> None:
    gone, alive = asyncio.new_event_loop(), asyncio.new_event_loop()
    gone.close()
    q: asyncio.Queue = asyncio.Queue()
    try:
        _deliver([(_Sink(gone, asyncio.Queue()), _out("a")), (_Sink(alive, q), _out("b"))])
        alive.run_until_complete(asyncio.sleep(0))
        assert q.get_nowait().request_id == "b"
    finally:
        alive.close()
