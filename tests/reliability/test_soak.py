"""Soak: many streaming requests, 30 % of the clients hanging up at a random point, against the real CLI server.

Every request its client did not cut ends complete and well-formed (or with an explicit error, counted as
failed); completed + failed + cut == sent; at idle no KV block is held; the server's resident memory after the
run stays within 10 % of what it was after a warm-up at the same concurrency.

Fast (CI): 200 requests at concurrency 16 on the tiny random model. Full: `--run-soak` (see the README).
"""

from __future__ import annotations

import asyncio
import datetime
import platform
from pathlib import Path

import pytest

from .conftest import demo_model
from .harness import TINY_FLAGS, LoadSpec, ServerProcess, run_load, start_server

DISCONNECT = 0.3
MAX_RSS_DRIFT = 0.10
# a KV cache of ~100 blocks of 64 tokens: full at concurrency 64, so the scheduler preempts and recomputes
SMALL_CACHE = ("--cache-max-entry-count", "0.05")


def soak(server: ServerProcess, requests: int, concurrency: int, seed: int = 1) -> dict:
    before = server.wait_idle()
    warm = asyncio.run(run_load(server.url, LoadSpec(max(requests // 10, 2 * concurrency), concurrency,
                                                     DISCONNECT, seed=seed + 1000)))
    assert warm.failed == 0, warm.as_dict()
    server.wait_idle()
    rss_warm = server.rss()
    run = asyncio.run(run_load(server.url, LoadSpec(requests, concurrency, DISCONNECT, seed=seed)))
    idle = server.wait_idle(timeout=60)
    rss_after = server.rss()
    aborted_server = idle["interndeploy_requests_aborted_total"] - before["interndeploy_requests_aborted_total"]
    figures = {
        **run.as_dict(),
        "concurrency": concurrency,
        "leaked_blocks": int(idle["interndeploy_kv_blocks_used"]),
        "kv_blocks_total": int(idle["interndeploy_kv_blocks_total"]),
        "preemptions": int(idle["interndeploy_preemptions_total"]),
        "server_aborted": int(aborted_server),
        "rss_after_warmup_mib": round(rss_warm / 2**20, 1),
        "rss_after_run_mib": round(rss_after / 2**20, 1),
        "rss_drift": round((rss_after - rss_warm) / rss_warm, 4),
        "tokens_per_s": round(run.output_tokens / run.seconds, 1),
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()} {__import__('os').cpu_count()} cores",
    }
    print(f"\nsoak: {figures}")
    assert run.failed == 0 and run.completed + run.failed + run.aborted == run.sent == requests, figures
    assert run.aborted > 0 and run.completed > requests // 2, figures
    assert figures["leaked_blocks"] == 0, figures
    assert 0 < aborted_server <= run.aborted + warm.aborted, figures  # the server saw the hang-ups as aborts
    assert abs(figures["rss_drift"]) <= MAX_RSS_DRIFT, figures
    return figures


def test_soak_fast(tiny_server, report: dict):
    server = tiny_server(*SMALL_CACHE)
    figures = soak(server, 200, 16)
    report["soak_fast"] = {**figures, "model": "tiny random InternLM2"}
    assert server.proc.poll() is None


def test_soak_full(request: pytest.FixtureRequest, internlm2_dir: Path, tmp_path: Path, report: dict):
    """2,000 streaming requests at concurrency 64 (by default) on the demo model, or the tiny random one."""
    if not request.config.getoption("--run-soak"):
        pytest.skip("the full soak runs with --run-soak")
    model = request.config.getoption("--soak-model") or demo_model()
    # ~200 KV blocks of 64 tokens either way: full at concurrency 64, so preemption is exercised too
    flags = (*TINY_FLAGS, *SMALL_CACHE) if model is None else (
        "--session-len", "2048", "--cpu-kv-budget-gib", "0.5", "--cache-max-entry-count", "0.2")
    server = start_server(model or internlm2_dir, *flags, log_dir=tmp_path)
    try:
        figures = soak(server, request.config.getoption("--soak-requests"),
                       request.config.getoption("--soak-concurrency"))
    finally:
        code = server.stop()
    assert code == 0, server.output()[-2000:]
    report["soak_full"] = {**figures, "model": model or "tiny random InternLM2"}
