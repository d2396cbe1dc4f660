"""Prometheus metrics of one server (its own registry, so several apps in a process do not collide).

Engine state (requests running/waiting, KV blocks, prefix-cache hit rate, token counters) is read from the engine
when /metrics is scraped; latencies (time to first token, time per output token, end to end) are observed per
request by `RequestTimer`. Reads from the event-loop thread see the engine thread's plain ints and list lengths:
each value is consistent, the set of values is a snapshot taken over a few microseconds.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_P = "interndeploy_"
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0)
_TOKEN_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)


class _EngineCollector:
    def __init__(self, engine: Any) -> None:
        self._engine = engine  # AsyncEngine: .engine is the LLMEngine

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        llm = self._engine.engine
        bm, sched, stats = llm.block_manager, llm.scheduler, llm.stats
        gauges = (
            ("num_requests_running", "Sequences being prefilled or decoded (a request with n samples counts n)",
             len(sched.running)),
            ("num_requests_waiting", "Sequences queued for admission (a request with n samples counts n)",
             len(sched.waiting)),
            ("kv_blocks_used", "KV cache blocks held by sequences", bm.num_used_blocks),
            ("kv_blocks_free", "KV cache blocks allocatable now (free or evictable from the prefix cache)",
             bm.num_free_blocks),
            ("kv_blocks_total", "KV cache blocks", bm.num_blocks),
            ("kv_cache_usage_ratio", "Fraction of KV cache blocks in use", bm.num_used_blocks / max(bm.num_blocks, 1)),
            ("prefix_cache_hit_rate", "Prompt tokens found in the prefix cache / prompt tokens looked up",
             bm.stats.hit_rate),
        )
        for name, doc, value in gauges:
            yield GaugeMetricFamily(_P + name, doc, value=value)
        counters = (
            ("requests_finished", "Requests finished (any reason, aborts included)", stats.num_finished),
            ("prompt_tokens", "Prompt tokens of admitted requests (times n)", stats.prompt_tokens),
            ("generation_tokens", "Tokens generated", stats.generated_tokens),
            ("preemptions", "Sequences preempted for lack of KV blocks", stats.num_preemptions),
        )
        for name, doc, value in counters:
            yield CounterMetricFamily(_P + name, doc, value=value)


class ServerMetrics:
    def __init__(self, engine: Any) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_EngineCollector(engine))
        self.ttft = Histogram(_P + "time_to_first_token_seconds", "Time from request to its first token",
                              buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.tpot = Histogram(_P + "time_per_output_token_seconds", "Mean time between output tokens of a request",
                              buckets=_TOKEN_BUCKETS, registry=self.registry)
        self.e2e = Histogram(_P + "e2e_request_latency_seconds", "Time from request to its last token",
                             buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.http_in_flight = Gauge(_P + "http_requests_in_flight", "Generation requests being served",
                                    registry=self.registry)
        self.queued = Gauge(_P + "http_requests_queued",
                            "Samples admitted by the server that have not produced their first output",
                            registry=self.registry)
        self.aborted = Counter(_P + "requests_aborted", "Generation requests cut before their end (client "
                               "disconnect, /abort_request, shutdown)", registry=self.registry)
        self.rejected = Counter(_P + "requests_rejected", "Generation requests refused with 503, by reason "
                                "(server_busy, queue_full, shutting_down)", ["reason"], registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def timer(self) -> RequestTimer:
        return RequestTimer(self)


class RequestTimer:
    """Latencies of one request: call `output` for each engine output and `finish` when it completed."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics
        self._start = time.perf_counter()
        self._first: float | None = None
        self._tokens = 0  # output tokens of the longest sample so far

    def output(self, num_output_tokens: int) -> None:
        if self._first is None and num_output_tokens > 0:
            self._first = time.perf_counter()
            self._metrics.ttft.observe(self._first - self._start)
        self._tokens = max(self._tokens, num_output_tokens)

    def finish(self) -> None:
        end = time.perf_counter()
        self._metrics.e2e.observe(end - self._start)
        if self._first is not None and self._tokens > 1:
            self._metrics.tpot.observe((end - self._first) / (self._tokens - 1))
