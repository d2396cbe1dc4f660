"""`interndeploy serve proxy`: one OpenAI endpoint in front of several api_servers (LMDeploy's proxy).

    client ──/v1/chat/completions──▶ proxy ──routing strategy──▶ api_server A | B | ...
    api_server --proxy-url URL  ──POST /nodes/add {"url", "status": {"models": [...]}}──▶ proxy

Routing (among the nodes serving the request's model):
    random                 a weighted draw, weight = the node's `speed` (nodes without one: the mean speed, or 1)
    min_expected_latency   the node with the least unfinished / speed (in-flight requests through this proxy)
    min_observed_latency   the node with the lowest mean latency over its last 15 finished requests; a node
                           with none yet counts as 0, so every node gets measured
Ties go to the node added first. Serving strategy: Hybrid (each node prefills and decodes).

Failures never hang a client and never vanish silently:
    node refuses the connection  -> dropped, the request goes to another node (nothing reached the dead one)
    node dies during a request   -> dropped; the client gets 502 (or, once a stream has begun, a final SSE
                                    `data: {"error": {...}}` event, which OpenAI clients raise)
    node stops answering /health -> dropped by the health check (every INTERNDEPLOY_PROXY_HEALTH_INTERVAL s,
                                    default 5); its in-flight requests end with 502 at once
    no node serves the model     -> 404; none left at all -> 503
A dropped node is probed again by the health check and comes back when /health answers. Request bodies are
parsed as JSON and forwarded as JSON; nothing from the HTTP side is ever unpickled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel

from .openai.errors import error_body

logger = logging.getLogger("interndeploy")

STRATEGIES = ("random", "min_expected_latency", "min_observed_latency")
LATENCY_WINDOW = 15  # finished requests per node that min_observed_latency averages


@dataclass
class NodeStatus:
    models: list[str] = field(default_factory=list)
    unfinished: int = 0  # requests in flight through this proxy
    latency: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))  # seconds, last finished
    speed: float | None = None  # relative throughput the node declared (any unit, the same for all nodes)
    gone: asyncio.Event = field(default_factory=asyncio.Event)  # set when the node is dropped

    def to_json(self) -> dict[str, Any]:
        return {"models": self.models, "unfinished": self.unfinished, "latency": list(self.latency),
                "speed": self.speed}


class NodePool:
    """The nodes and the routing decision; pure bookkeeping, no I/O (tests drive it directly)."""

    def __init__(self, strategy: str = "min_expected_latency", seed: int | None = None) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"routing strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
        self.strategy = strategy
        self.nodes: dict[str, NodeStatus] = {}
        self.dropped: dict[str, NodeStatus] = {}  # probed by the health check, re-added when healthy
        self._rng = random.Random(seed)

    def add(self, url: str, models: list[str], speed: float | None = None) -> None:
        self.dropped.pop(url, None)
        old = self.nodes.get(url)
        status = NodeStatus(list(models), speed=speed)
        if old is not None:
            status.unfinished, status.latency, status.gone = old.unfinished, old.latency, old.gone
        self.nodes[url] = status

    def remove(self, url: str) -> bool:
        """Deregister a node (no new requests; those in flight finish, the node drains them)."""
        dropped = self.dropped.pop(url, None)
        return self.nodes.pop(url, None) is not None or dropped is not None

    def drop(self, url: str, reason: str) -> None:
        """Take a failed node out of routing (kept for the health check to bring back)."""
        status = self.nodes.pop(url, None)
        if status is None:
            return
        logger.warning("proxy: dropped node %s: %s", url, reason)
        status.gone.set()
        self.dropped[url] = NodeStatus(status.models, speed=status.speed)

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys(m for s in self.nodes.values() for m in s.models))

    def pick(self, model: str) -> str | None:
        urls = [u for u, s in self.nodes.items() if model in s.models]
        if not urls:
            return None
        if self.strategy == "min_observed_latency":
            means = [sum(lat) / len(lat) if (lat := self.nodes[u].latency) else 0.0 for u in urls]
            return urls[means.index(min(means))]
        known = [s.speed for u in urls if (s := self.nodes[u]).speed]
        default = sum(known) / len(known) if known else 1.0
        speeds = [self.nodes[u].speed or default for u in urls]
        if self.strategy == "random":
            return self._rng.choices(urls, weights=speeds)[0]
        expected = [self.nodes[u].unfinished / speed for u, speed in zip(urls, speeds, strict=True)]
        return urls[expected.index(min(expected))]

    def begin(self, url: str) -> NodeStatus | None:
        status = self.nodes.get(url)
        if status is not None:
            status.unfinished += 1
        return status

    def end(self, status: NodeStatus, started: float, ok: bool) -> None:
        status.unfinished = max(0, status.unfinished - 1)
        if ok:
            status.latency.append(time.monotonic() - started)


class Node(BaseModel):
    url: str
    status: dict[str, Any] | None = None  # {"models": [...], "speed": ...}; models are asked from the node if absent


def _error(message: str, status: int, code: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, status, None, code), status)


def _sse_error(message: str) -> bytes:
    return f"data: {json.dumps(error_body(message, 502, None, 'backend_failed'))}\n\n".encode()


def build_proxy_app(strategy: str = "min_expected_latency", api_keys: list[str] | None = None,
                    health_interval: float | None = None, seed: int | None = None) -> FastAPI:
    pool = NodePool(strategy, seed)
    interval = health_interval or float(os.environ.get("INTERNDEPLOY_PROXY_HEALTH_INTERVAL", "5"))
    timeout = httpx.Timeout(connect=5.0, read=None, write=60.0, pool=None)
    state: dict[str, Any] = {}

    def client() -> httpx.AsyncClient:
        """The upstream client, and the health check beside it, started on first use in the serving loop."""
        if "client" not in state:
            state["client"] = httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=None))
            state["health"] = asyncio.get_running_loop().create_task(_health_loop())
        return state["client"]

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        client()
        try:
            yield
        finally:
            state.pop("health").cancel()
            await state.pop("client").aclose()

    app = FastAPI(title="interndeploy proxy", lifespan=lifespan)
    app.state.pool = pool

    async def _healthy(url: str) -> bool:
        try:
            r = await client().get(url + "/health", timeout=min(interval, 5.0))
            return r.status_code == 200
        except httpx.HTTPError:
            return False

    async def _health_loop() -> None:
        while True:
            await asyncio.sleep(interval)
            for url in list(pool.nodes):
                if not await _healthy(url):
                    pool.drop(url, "no answer from /health")
            for url, status in list(pool.dropped.items()):
                if await _healthy(url):
                    logger.warning("proxy: node %s answers again; routing to it", url)
                    pool.add(url, status.models, status.speed)

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        client()
        return {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "interndeploy", "root": m}
                                           for m in pool.models]}

    @app.get("/nodes/status")
    async def nodes_status() -> dict[str, Any]:
        client()
        return {url: s.to_json() for url, s in pool.nodes.items()}

    @app.post("/nodes/add")
    async def nodes_add(node: Node) -> Any:
        url = node.url.rstrip("/")
        if not url.startswith(("http://", "https://")):
            return _error(f"node url {node.url!r} must start with http:// or https://", 400)
        status = node.status or {}
        models = status.get("models") or []
        try:  # the node must answer, and says which models it serves
            r = await client().get(url + "/v1/models", timeout=10.0)
            r.raise_for_status()
            models = [m["id"] for m in r.json().get("data", [])] or models
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as e:
            return _error(f"cannot reach {url}/v1/models: {type(e).__name__}: {e}", 400)
        speed = status.get("speed")
        pool.add(url, models, float(speed) if isinstance(speed, int | float) and speed > 0 else None)
        logger.info("proxy: added node %s serving %s", url, models)
        return "Added successfully"

    @app.post("/nodes/remove")
    async def nodes_remove(node_url: str) -> Any:
        if not pool.remove(node_url.rstrip("/")):
            return _error(f"node {node_url} is not registered", 404, "not_found")
        return "Deleted successfully"

    async def forward(request: Request, path: str) -> Response:
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError) as e:
            return _error(f"the request body is not valid JSON: {e}", 400)
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return _error("the request needs a `model` (GET /v1/models lists them)", 400)
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type")}
        tried: set[str] = set()
        while True:
            url = pool.pick(body["model"])
            if url is None or url in tried:
                if not pool.nodes:
                    return _error("no api_server is registered with the proxy (or all of them failed)", 503)
                if url is None and not tried:
                    return _error(f"the model `{body['model']}` does not exist", 404, "model_not_found")
                return _error(f"every node serving `{body['model']}` failed", 503)
            tried.add(url)
            status = pool.begin(url)
            started = time.monotonic()
            upstream = client().build_request("POST", url + path, json=body, headers=headers)
            try:
                resp = await _until_gone(client().send(upstream, stream=True), status)
            except httpx.ConnectError as e:  # nothing reached the node: safe to try another
                pool.end(status, started, False)
                pool.drop(url, f"connection failed: {e}")
                continue
            except (httpx.HTTPError, _NodeGone) as e:
                pool.end(status, started, False)
                pool.drop(url, f"{type(e).__name__}: {e}")
                return _error(f"the api_server {url} failed before answering: {type(e).__name__}: {e}", 502,
                              "backend_failed")
            return await _relay(resp, url, status, started, stream=bool(body.get("stream")))

    async def _relay(resp: httpx.Response, url: str, status: NodeStatus, started: float, stream: bool) -> Response:
        media = resp.headers.get("content-type", "application/json")
        if not stream or resp.status_code != 200:
            try:
                content = await _until_gone(resp.aread(), status)
            except (httpx.HTTPError, _NodeGone) as e:
                pool.end(status, started, False)
                pool.drop(url, f"{type(e).__name__}: {e}")
                return _error(f"the api_server {url} failed mid-request: {type(e).__name__}: {e}", 502,
                              "backend_failed")
            finally:
                await resp.aclose()
            pool.end(status, started, resp.status_code == 200)
            return Response(content, resp.status_code, media_type=media)

        async def chunks() -> AsyncIterator[bytes]:
            ok = False
            it = resp.aiter_raw().__aiter__()
            try:
                while True:
                    try:
                        chunk = await _until_gone(it.__anext__(), status)
                    except StopAsyncIteration:
                        ok = True
                        return
                    yield chunk
            except (httpx.HTTPError, _NodeGone) as e:
                pool.drop(url, f"{type(e).__name__}: {e}")
                yield _sse_error(f"the api_server {url} failed mid-stream: {type(e).__name__}: {e}")
            finally:
                pool.end(status, started, ok)
                await resp.aclose()

        return StreamingResponse(chunks(), resp.status_code, media_type=media)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await forward(request, "/v1/chat/completions")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await forward(request, "/v1/completions")

    if api_keys:
        from .openai.server import APIKeyMiddleware

        app.add_middleware(APIKeyMiddleware, api_keys=api_keys)
    return app


class _NodeGone(Exception):
    """The node was dropped (failed health check) while this request waited on it."""


async def _until_gone(awaitable: Any, status: NodeStatus | None) -> Any:
    """Await `awaitable`, unless the node is dropped first (then _NodeGone)."""
    task = asyncio.ensure_future(awaitable)
    if status is None:
        return await task
    gone = asyncio.ensure_future(status.gone.wait())
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        gone.cancel()
    if task.done():
        return task.result()
    task.cancel()
    raise _NodeGone("the node was dropped (it stopped answering /health)")
