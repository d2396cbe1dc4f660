"""The FastAPI app of `serve api_server`: routes, error envelope, API keys, CORS and the concurrency limit.

Middleware, outermost first (plain ASGI, so streaming responses and client disconnects pass through untouched):

    CORS (only with --allow-origins) -> API keys (401) -> concurrency, queue, draining (503) -> body size (413)
        -> routes

CORS is outermost so that preflight requests and error responses carry its headers; it answers preflights
itself, so no OPTIONS request reaches a route without a key. Every path but /health needs the key (paths are
compared exactly as the router sees them: `/health/` is not `/health`). Past the concurrency limit, the queue
limit and during shutdown, generation requests get 503 with Retry-After (ConcurrencyLimitMiddleware, then
ServerState.generate, exactly, for n samples).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ..metrics import CONTENT_TYPE
from . import chat, completions
from .errors import APIError, document_errors, error_body, install_error_handlers
from .protocol import AbortRequest, ModelCard, ModelList
from .state import ServerSettings, ServerState
from .streaming import ClientGone

# reachable without an API key: liveness only
OPEN_PATHS = frozenset({"/health"})
# what --max-concurrent-requests limits
LIMITED_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})


async def _send_json(send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    response = JSONResponse(body, status, headers=headers)
    await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> dict[str, Any]:
    return {"type": "http.disconnect"}


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


class APIKeyMiddleware:
    """401 unless `Authorization: Bearer <key>` names one of the keys. Keys are compared as SHA-256 digests with
    hmac.compare_digest against every key, so timing reveals neither the key nor which one matched."""

    def __init__(self, app: ASGIApp, api_keys: list[str]) -> None:
        self.app = app
        self._digests = [_digest(k) for k in api_keys]

    def _authorized(self, header: str) -> bool:
        scheme, _, token = header.partition(" ")
        given = _digest(token.strip() if scheme.lower() == "bearer" else "")
        matches = [hmac.compare_digest(given, d) for d in self._digests]
        return any(matches)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        header = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), "")
        if not self._authorized(header):
            message = "missing API key" if not header else "invalid API key"
            body = error_body(f"{message}: send `Authorization: Bearer <key>` with a key given to --api-keys", 401,
                              None, "invalid_api_key")
            await _send_json(send, 401, body, {"WWW-Authenticate": "Bearer"})
            return
        await self.app(scope, receive, send)


class BodySizeLimitMiddleware:
    """413 for a request body over `limit` bytes, by Content-Length or as it streams in (chunked), before the app
    buffers it. The body is read here and replayed to the app; later `receive` calls (disconnects) pass through."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def _too_large(self, send: Send) -> None:
        body = error_body(f"the request body is larger than this server's limit of {self.limit} bytes "
                          "(--max-request-bytes)", 413, None, "request_too_large")
        await _send_json(send, 413, body, {"Connection": "close"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._too_large(send)
            return
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left while sending
                return
            part = message.get("body", b"")
            size += len(part)
            if size > self.limit:
                await self._too_large(send)
                return
            parts.append(part)
            if not message.get("more_body", False):
                break
        replay: list[dict[str, Any]] = [{"type": "http.request", "body": b"".join(parts), "more_body": False}]

        async def replayed() -> dict[str, Any]:
            return replay.pop() if replay else await receive()

        await self.app(scope, replayed, send)


class ConcurrencyLimitMiddleware:
    """503 with Retry-After when `limit` generation requests are already being served (streams count until their
    last byte), when the queue is full or while draining. The check and the increment happen without an await
    between them, so the limit is exact. Refusing here, before the body is read and parsed, keeps a flood of
    refused requests cheap (ServerState.generate checks the queue again, exactly, for n samples)."""

    def __init__(self, app: ASGIApp, limit: int | None, state: ServerState) -> None:
        self.app = app
        self.limit = limit
        self.state = state
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in LIMITED_PATHS:
            await self.app(scope, receive, send)
            return
        if self.limit is not None and self.in_flight >= self.limit:
            self.state.count_rejected("server_busy")
            body = error_body(f"the server is at its limit of {self.limit} concurrent requests "
                              "(--max-concurrent-requests); retry shortly", 503, None, "server_busy")
            await _send_json(send, 503, body, {"Retry-After": "1"})
            return
        refusal = self.state.refusal()
        if refusal is not None:
            await _send_json(send, 503, error_body(refusal.message, 503, None, refusal.code), refusal.headers)
            return
        gauge = self.state.metrics.http_in_flight if self.state.metrics else None
        self.in_flight += 1
        if gauge:
            gauge.inc()
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
            if gauge:
                gauge.dec()


def build_app(engine: Any, settings: ServerSettings | None = None) -> FastAPI:
    """The app serving `engine` (an AsyncEngine). The caller owns the engine and shuts it down."""
    settings = settings or ServerSettings()
    state = ServerState(engine, settings)
    docs = not settings.disable_docs
    app = FastAPI(
        title="interndeploy OpenAI-compatible API",
        docs_url="/" if docs else None,  # LMDeploy shows Swagger UI at the root
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.server = state
    install_error_handlers(app, document_401=bool(settings.api_keys))

    @app.exception_handler(ClientGone)
    async def _gone(_: Request, __: ClientGone) -> Response:
        return Response(status_code=499)  # nobody reads it: the client has left

    app.include_router(chat.router)
    app.include_router(completions.router)

    @app.get("/v1/models", response_model=ModelList)
    async def models() -> ModelList:
        card = ModelCard(id=state.model_name, root=str(engine.info.path), max_model_len=engine.session_len)
        return ModelList(data=[card])

    @app.get("/health", responses={503: {"description": "the server is shutting down"}})
    async def health() -> Response:
        return Response(status_code=503 if state.draining else 200)

    @app.post("/abort_request", responses=document_errors(400, 404))
    async def abort_request(body: AbortRequest) -> dict[str, int]:
        """Abort running requests: all, one `session_id` (LMDeploy) or one response `id` (`request_id`)."""
        if not body.abort_all and body.request_id is None and body.session_id == -1:
            raise APIError("give session_id, request_id or abort_all", param="session_id")
        aborted = state.abort(session_id=body.session_id, request_id=body.request_id, abort_all=body.abort_all)
        if not aborted and not body.abort_all:
            what = f"request {body.request_id!r}" if body.request_id is not None else f"session {body.session_id}"
            raise APIError(f"{what} is not running", 404, param="request_id" if body.request_id else "session_id",
                           code="not_found")
        return {"aborted": aborted}

    if state.metrics is not None:
        metrics = state.metrics

        @app.get("/metrics", include_in_schema=False)
        async def prometheus() -> Response:
            return Response(metrics.render(), media_type=CONTENT_TYPE)

    app.add_middleware(BodySizeLimitMiddleware, limit=settings.max_request_bytes)
    app.add_middleware(ConcurrencyLimitMiddleware, limit=settings.max_concurrent_requests, state=state)
    if settings.api_keys:
        app.add_middleware(APIKeyMiddleware, api_keys=settings.api_keys)
    if settings.allow_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.allow_origins,
            allow_credentials=settings.allow_credentials,
            allow_methods=settings.allow_methods,
            allow_headers=settings.allow_headers,
        )
    return app
