"""`bench serve`: HTTP load against a running OpenAI-compatible server, streaming."""

from __future__ import annotations

import asyncio
import json
import random
import time

import httpx

from .stats import RequestTiming, summarize
from .throughput import RandomDataset


async def _one(client: httpx.AsyncClient, url: str, model: str, ids: list[int], out_len: int,
               api_key: str | None) -> RequestTiming:
    t = RequestTiming(start=time.perf_counter(), num_prompt_tokens=len(ids))
    body = {"model": model, "prompt": ids, "max_tokens": out_len, "stream": True, "ignore_eos": True,
            "temperature": 0, "stream_options": {"include_usage": True}}
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        async with client.stream("POST", f"{url}/v1/completions", json=body, headers=headers) as resp:
            if resp.status_code != 200:
                t.ok = False
                return t
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    t.num_output_tokens = chunk["usage"]["completion_tokens"]
                if chunk.get("choices") and chunk["choices"][0].get("text"):
                    t.token_times.append(time.perf_counter())
    except httpx.HTTPError:
        t.ok = False
    return t


async def _bench(url: str, model: str | None, work: list[tuple[list[int], int]], request_rate: float,
                 max_concurrency: int | None, api_key: str | None, seed: int) -> tuple[list[RequestTiming], float]:
    rng = random.Random(seed)
    sem = asyncio.Semaphore(max_concurrency or len(work))
    async with httpx.AsyncClient(timeout=httpx.Timeout(None)) as client:
        if model is None:
            models = (await client.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {api_key}"}
                                       if api_key else {})).json()
            model = models["data"][0]["id"]

        async def limited(ids: list[int], n: int) -> RequestTiming:
            async with sem:
                return await _one(client, url, model, ids, n, api_key)

        tasks = []
        t0 = time.perf_counter()
        for ids, n in work:
            tasks.append(asyncio.create_task(limited(ids, n)))
            if request_rate != float("inf"):
                await asyncio.sleep(rng.expovariate(request_rate))  # Poisson arrivals
        timings = await asyncio.gather(*tasks)
        return timings, time.perf_counter() - t0


def run_serving(url: str, dataset: RandomDataset, vocab: int, model: str | None = None,
                request_rate: float = float("inf"), max_concurrency: int | None = None,
                api_key: str | None = None) -> dict[str, float]:
    work = dataset.sample(vocab)
    timings, duration = asyncio.run(_bench(url.rstrip("/"), model, work, request_rate, max_concurrency, api_key,
                                           dataset.seed))
    return summarize(timings, duration)
