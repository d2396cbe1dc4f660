"""What the reliability tests share: the real `serve api_server` as a subprocess, a streaming load generator whose
clients may hang up at random, and the checks that every answer is complete and well-formed.

Everything talks to 127.0.0.1 only, with a bounded number of requests and a timeout on each.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from interndeploy.testing.http_server import free_port

# flags that make the tiny random InternLM2 model a small, fast server
TINY_FLAGS = ("--session-len", "512", "--cache-max-entry-count", "0.5", "--cpu-kv-budget-gib", "0.1")
WORDS = ("alpha", "river", "stone", "cloud", "seven", "paper", "green", "quiet", "lamp", "orbit", "maple", "tide")


def envelope(r: httpx.Response, status: int | tuple[int, ...]) -> dict[str, Any]:
    """The OpenAI error envelope of `r`, checked: the status, the four fields, a bounded body."""
    statuses = (status,) if isinstance(status, int) else status
    assert r.status_code in statuses, f"{r.status_code}: {r.text[:500]}"
    assert len(r.content) < 32 * 1024, f"error body of {len(r.content)} bytes"
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"], error
    return error


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {name (with its labels, e.g. x_total{reason="queue_full"}): value}."""
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(interndeploy_\w+(?:\{[^}]*\})?) (\S+)$", text, re.M)}


# ---------------------------------------------------------------- the server process


@dataclass
class ServerProcess:
    """`interndeploy serve api_server` started as users start it, its output in `log`."""

    proc: subprocess.Popen
    url: str
    log: Path
    headers: dict[str, str] = field(default_factory=dict)  # e.g. the API key

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def rss(self) -> int:
        """Resident memory of the server process, bytes."""
        import psutil

        return psutil.Process(self.pid).memory_info().rss

    def metrics(self) -> dict[str, float]:
        return parse_metrics(httpx.get(self.url + "/metrics", headers=self.headers, timeout=10).text)

    def wait_idle(self, timeout: float = 30.0) -> dict[str, float]:
        """Metrics once nothing runs, waits or holds a KV block; fails with the last metrics after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            m = self.metrics()
            busy = [k for k in ("kv_blocks_used", "num_requests_running", "num_requests_waiting",
                                "http_requests_in_flight", "http_requests_queued") if m[f"interndeploy_{k}"]]
            if not busy:
                return m
            assert time.monotonic() < deadline, f"not idle after {timeout} s: {busy}: {m}"
            time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_server(model: str | Path, *flags: str, log_dir: Path, headers: dict[str, str] | None = None,
                 timeout: float = 180.0) -> ServerProcess:
    port = free_port()
    log = log_dir / f"server-{port}.log"
    cmd = [sys.executable, "-m", "interndeploy.cli.main", "serve", "api_server", str(model), "--server-name",
           "127.0.0.1", "--server-port", str(port), "--model-name", "m", "--log-level", "WARNING", *flags]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True)
    server = ServerProcess(proc, f"http://127.0.0.1:{port}", log, dict(headers or {}))
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.output()[-3000:]}")
        try:
            if httpx.get(server.url + "/health", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            server.stop(signal.SIGKILL)
            raise TimeoutError(f"server did not come up in {timeout} s:\n{server.output()[-3000:]}")
        time.sleep(0.2)


# ---------------------------------------------------------------- streams


def check_stream(lines: list[str], n: int, max_tokens: int, chat: bool) -> str:
    """Assert `lines` (the non-empty SSE lines of one response) are a complete, well-formed stream; the text of
    choice 0. Each choice ends exactly once with stop or length, nothing follows `data: [DONE]`."""
    assert lines and lines[-1] == "data: [DONE]", f"stream does not end with [DONE]: {lines[-3:]}"
    ids, texts = set(), [""] * n
    reasons: list[list[str]] = [[] for _ in range(n)]
    usage = None
    for line in lines[:-1]:
        assert line.startswith("data: "), line
        event = json.loads(line[6:])
        assert "error" not in event, event
        ids.add(event["id"])
        assert event["object"] == ("chat.completion.chunk" if chat else "text_completion")
        for choice in event["choices"]:
            i = choice["index"]
            assert 0 <= i < n, choice
            piece = choice["delta"].get("content") if chat else choice["text"]
            texts[i] += piece or ""
            if choice["finish_reason"] is not None:
                reasons[i].append(choice["finish_reason"])
        if event.get("usage"):
            usage = event["usage"]
    assert len(ids) == 1, ids
    assert all(len(r) == 1 and r[0] in ("stop", "length") for r in reasons), reasons
    assert usage is not None and 0 < usage["completion_tokens"] <= n * max_tokens, usage
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"], usage
    return texts[0]


@dataclass
class LoadReport:
    sent: int = 0
    completed: int = 0  # ended with stop/length, checked well-formed
    failed: int = 0  # an explicit error (status >= 400 or an error event)
    aborted: int = 0  # cut by their own client before the end
    statuses: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)  # what failed (first few)
    output_tokens: int = 0  # of the completed requests
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"sent": self.sent, "completed": self.completed, "failed": self.failed, "aborted": self.aborted,
                "statuses": dict(self.statuses), "output_tokens": self.output_tokens,
                "seconds": round(self.seconds, 1), "errors": self.errors[:5]}


@dataclass
class LoadSpec:
    num_requests: int
    concurrency: int
    disconnect_fraction: float = 0.0  # clients that hang up at a random point
    max_tokens: tuple[int, int] = (8, 48)  # drawn per request
    seed: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float = 120.0  # per request


def _request(rng: random.Random, i: int, max_tokens: int) -> tuple[str, dict[str, Any], int]:
    """(path, body, n): a mix of chat (80 %) and completions, 10 % with n=2, half sharing a system prompt."""
    words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40)))
    n = 2 if rng.random() < 0.1 else 1
    body: dict[str, Any] = {"model": "m", "max_tokens": max_tokens, "n": n, "stream": True,
                            "stream_options": {"include_usage": True}, "temperature": rng.choice([0, 0.7, 1.0]),
                            "seed": i}
    if rng.random() < 0.8:
        messages = [{"role": "user", "content": f"request {i}: {words}"}]
        if rng.random() < 0.5:
            messages.insert(0, {"role": "system", "content": "You are a careful assistant. " * 8})
        return "/v1/chat/completions", {**body, "messages": messages}, n
    return "/v1/completions", {**body, "prompt": f"{i} {words}"}, n


async def run_load(url: str, spec: LoadSpec) -> LoadReport:
    """Send `spec.num_requests` streaming requests, `spec.concurrency` at a time. A client chosen to disconnect
    hangs up before the response starts (a third of them) or after a random number of SSE lines."""
    rng = random.Random(spec.seed)
    report = LoadReport()
    sem = asyncio.Semaphore(spec.concurrency)
    # an idle connection is dropped well before uvicorn's 5 s keep-alive timeout: reusing one that the server is
    # closing at that moment is a client-side race (ReadError), not a server failure
    limits = httpx.Limits(max_connections=spec.concurrency + 4, max_keepalive_connections=spec.concurrency,
                          keepalive_expiry=1.0)
    async with httpx.AsyncClient(base_url=url, timeout=spec.timeout, limits=limits, headers=spec.headers) as client:

        async def one(i: int) -> None:
            max_tokens = rng.randint(*spec.max_tokens)
            path, body, n = _request(rng, i, max_tokens)
            cut = rng.random() < spec.disconnect_fraction
            early = cut and rng.random() < 1 / 3
            cut_after = rng.randint(0, max_tokens)  # SSE lines read before hanging up
            early_delay = rng.uniform(0, 0.05)
            async with sem:
                report.sent += 1
                task = asyncio.ensure_future(_stream(client, path, body, n, max_tokens, None if early or not cut
                                                     else cut_after))
                if early:
                    done, _ = await asyncio.wait({task}, timeout=early_delay)
                    if not done:
                        task.cancel()
                        report.aborted += 1
                        await asyncio.gather(task, return_exceptions=True)
                        return
                try:
                    status, outcome, tokens = await task
                except Exception as e:  # a timeout or a broken connection: a failure the client did not ask for
                    status, outcome, tokens = 0, f"{type(e).__name__}: {e}", 0
                report.statuses[status] += 1
                if outcome == "completed":
                    report.completed += 1
                    report.output_tokens += tokens
                elif outcome == "cut":
                    report.aborted += 1
                else:
                    report.failed += 1
                    report.errors.append(f"{path} {status}: {outcome}"[:300])

        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(spec.num_requests)))
        report.seconds = time.perf_counter() - start
    return report


async def _stream(client: httpx.AsyncClient, path: str, body: dict[str, Any], n: int, max_tokens: int,
                  cut_after: int | None) -> tuple[int, str, int]:
    """(status, "completed" | "cut" | what failed, completion tokens)."""
    lines: list[str] = []
    async with client.stream("POST", path, json=body) as r:
        if r.status_code != 200:
            await r.aread()
            return r.status_code, r.text[:200], 0
        async for line in r.aiter_lines():
            if line:
                lines.append(line)
            if cut_after is not None and len(lines) > cut_after and line != "data: [DONE]":
                return 200, "cut", 0
    try:
        check_stream(lines, n, max_tokens, chat=path.endswith("chat/completions"))
    except AssertionError as e:
        return 200, f"malformed stream: {e}", 0
    usage = json.loads(lines[-2][6:]).get("usage") or {}
    return 200, "completed", usage.get("completion_tokens", 0)
