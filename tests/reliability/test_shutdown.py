"""SIGTERM with requests in flight, on the real CLI server.

- `--shutdown-timeout 30`: the in-flight requests finish normally; new ones are refused (connection refused, or
  503 on a connection that was already open); the process exits 0 and leaves no child process.
- `--shutdown-timeout 0`: the in-flight requests end at once with finish_reason "abort" (streams with
  `data: [DONE]` after it); the process exits 0 within a few seconds.
"""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx
import psutil

from .harness import ServerProcess

PROMPT = [{"role": "user", "content": "count the stones by the river"}]


class InFlight:
    """Streaming (and one non-streaming) requests running in threads; `started` is set once each has a token."""

    def __init__(self, server: ServerProcess, count: int, max_tokens: int) -> None:
        self.server = server
        self.streams: list[list[str]] = [[] for _ in range(count)]
        self.plain: list[httpx.Response] = []
        self.errors: list[BaseException] = []
        self._started = [threading.Event() for _ in range(count)]
        body = {"model": "m", "messages": PROMPT, "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0}
        self._threads = [threading.Thread(target=self._stream, args=(i, body)) for i in range(count)]
        self._threads.append(threading.Thread(target=self._plain, args=(body,)))

    def _stream(self, i: int, body: dict) -> None:
        try:
            with httpx.stream("POST", self.server.url + "/v1/chat/completions", json={**body, "stream": True},
                              timeout=120) as r:
                for line in r.iter_lines():
                    if line:
                        self.streams[i].append(line)
                        if '"content":"' in line and '"content":""' not in line:
                            self._started[i].set()
        except BaseException as e:  # noqa: B036 - reported by the test
            self.errors.append(e)
        finally:
            self._started[i].set()

    def _plain(self, body: dict) -> None:
        try:
            self.plain.append(httpx.post(self.server.url + "/v1/chat/completions", json=body, timeout=120))
        except BaseException as e:  # noqa: B036 - reported by the test
            self.errors.append(e)

    def __enter__(self) -> InFlight:
        for t in self._threads:
            t.start()
        for event in self._started:
            assert event.wait(60), "a request did not start"
        time.sleep(0.2)  # the non-streaming request is in the engine too
        return self

    def __exit__(self, *exc: object) -> None:
        for t in self._threads:
            t.join(120)

    def finish_reasons(self) -> list[str | None]:
        reasons = []
        for lines in self.streams:
            assert lines and lines[-1] == "data: [DONE]", lines[-3:]
            events = [json.loads(line[6:]) for line in lines[:-1]]
            ends = [c["finish_reason"] for e in events for c in e["choices"] if c["finish_reason"]]
            assert len(ends) == 1, ends
            reasons.append(ends[0])
        for r in self.plain:
            assert r.status_code == 200, r.text
            reasons.append(r.json()["choices"][0]["finish_reason"])
        return reasons


def _refused(url: str) -> bool:
    """True when a new request is turned away: no connection, or a 503 with the envelope."""
    try:
        r = httpx.post(url + "/v1/chat/completions", json={"messages": PROMPT, "max_tokens": 2}, timeout=5)
    except httpx.TransportError:
        return True
    return r.status_code == 503 and r.json()["error"]["code"] == "shutting_down"


def _children(server: ServerProcess) -> list[psutil.Process]:
    return psutil.Process(server.pid).children(recursive=True)


def test_sigterm_lets_requests_finish(tiny_server):
    server = tiny_server("--shutdown-timeout", "30", "--session-len", "1024")
    children = _children(server)
    with InFlight(server, 3, max_tokens=600) as flight:
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert _refused(server.url)
        assert server.proc.poll() is None, "exited with requests in flight"
    assert not flight.errors, flight.errors
    assert flight.finish_reasons() == ["length"] * 4
    assert server.proc.wait(30) == 0, server.output()[-2000:]
    assert not [c for c in children if c.is_running()], "child processes left behind"


def test_sigterm_with_zero_timeout_aborts_at_once(tiny_server):
    server = tiny_server("--shutdown-timeout", "0", "--session-len", "2048")
    children = _children(server)
    with InFlight(server, 3, max_tokens=2000) as flight:
        start = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(30)
        took = time.monotonic() - start
    assert code == 0, server.output()[-2000:]
    assert took < 4.0, f"shutdown took {took:.1f} s"
    assert not flight.errors, flight.errors
    assert flight.finish_reasons() == ["abort"] * 4
    assert not [c for c in children if c.is_running()], "child processes left behind"
