"""Overload: past --max-concurrent-requests and with the waiting queue full (--max-queued-requests), new requests
get 503 with the OpenAI envelope and Retry-After; /health answers 200 all along; the admitted requests complete
well-formed, and each decodes about as fast as without the excess load (the refused traffic does not starve the
engine). Aggregate tokens/s is not compared: with a tiny model the admitted work drains between client retries."""

from __future__ import annotations

import asyncio
import statistics
import time

import httpx

from .harness import ServerProcess, check_stream, envelope

LIMITS = ("--max-batch-size", "4", "--max-queued-requests", "4", "--max-concurrent-requests", "12")
MAX_TOKENS = 24
BODY = {"model": "m", "messages": [{"role": "user", "content": "tell me about rivers"}], "max_tokens": MAX_TOKENS,
        "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}, "temperature": 0}


async def _clients(url: str, workers: int, admitted_target: int, deadline_s: float) -> dict:
    """`workers` clients each send requests back to back (retrying a 503 after its Retry-After, as the openai
    client does) until `admitted_target` requests completed; /health is probed every 50 ms meanwhile. `rates`
    holds each completed request's decode speed (tokens/s from its first token to its last)."""
    stats = {"completed": 0, "rates": [], "rejected": 0, "codes": set(), "health": [], "errors": []}
    done = asyncio.Event()
    limits = httpx.Limits(max_connections=workers + 8, keepalive_expiry=1.0)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def worker() -> None:
            while not done.is_set():
                async with client.stream("POST", "/v1/chat/completions", json=BODY) as r:
                    if r.status_code == 503:
                        await r.aread()
                        error = envelope(r, 503)
                        retry_after = r.headers.get("retry-after", "")
                        assert retry_after.isdigit(), r.headers
                        stats["rejected"] += 1
                        stats["codes"].add(error["code"])
                        await asyncio.sleep(int(retry_after))
                        continue
                    lines, first = [], None
                    async for line in r.aiter_lines():
                        if line:
                            lines.append(line)
                        if first is None and '"content":"' in line and '"content":""' not in line:
                            first = time.perf_counter()
                    last = time.perf_counter()
                if r.status_code != 200:
                    stats["errors"].append(r.status_code)
                    continue
                check_stream(lines, 1, MAX_TOKENS, chat=True)
                stats["completed"] += 1
                if first is not None and last > first:
                    stats["rates"].append((MAX_TOKENS - 1) / (last - first))
                if stats["completed"] >= admitted_target:
                    done.set()

        async def health() -> None:
            while not done.is_set():
                t = time.perf_counter()
                r = await client.get("/health")
                stats["health"].append((r.status_code, time.perf_counter() - t))
                await asyncio.sleep(0.05)

        start = time.perf_counter()
        tasks = [asyncio.ensure_future(worker()) for _ in range(workers)] + [asyncio.ensure_future(health())]
        try:
            await asyncio.wait_for(done.wait(), deadline_s)
        finally:
            done.set()
            await asyncio.gather(*tasks)
        stats["seconds"] = time.perf_counter() - start
    return stats


def test_overload_sheds_with_503_and_keeps_throughput(tiny_server):
    server: ServerProcess = tiny_server(*LIMITS)
    # as many clients as the batch holds (4): never more than 4 samples wait for a first token, nothing is refused
    baseline = asyncio.run(_clients(server.url, 4, 80, 120))
    assert baseline["rejected"] == 0 and not baseline["errors"], baseline
    before = server.metrics()
    flood = asyncio.run(_clients(server.url, 48, 80, 120))  # 4 times the 12 allowed in flight; 4 run, 4 queue
    after = server.wait_idle()
    assert not flood["errors"], flood["errors"]
    assert flood["rejected"] > 0 and flood["codes"] == {"server_busy", "queue_full"}, flood["codes"]
    rejected = {m: after[m] - before.get(m, 0) for m in after if m.startswith("interndeploy_requests_rejected_total")}
    assert sum(rejected.values()) == flood["rejected"], rejected
    base_rate, flood_rate = statistics.median(baseline["rates"]), statistics.median(flood["rates"])
    health_max = max(latency for _, latency in flood["health"])
    print(f"\noverload: decode per request {base_rate:.0f} tok/s alone, {flood_rate:.0f} tok/s under the flood; "
          f"{flood['rejected']} refused ({sorted(flood['codes'])}); {len(flood['health'])} health probes, "
          f"slowest {health_max:.2f} s")
    assert all(status == 200 for status, _ in flood["health"]) and len(flood["health"]) >= 3
    assert health_max < 2.0, "health check stalled under load"
    assert flood_rate >= 0.5 * base_rate, (base_rate, flood_rate)  # admitted requests keep their speed
    assert after["interndeploy_kv_blocks_used"] == 0
