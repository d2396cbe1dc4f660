"""OpenAI's error envelope, `{"error": {"message", "type", "param", "code"}}`, for every failure the server reports.

Handlers installed by `install_error_handlers` turn FastAPI's validation errors (bad fields, malformed JSON,
invalid UTF-8), Starlette's HTTP errors (unknown route, wrong method) and anything unexpected into the envelope,
so no client ever sees a bare text or HTML error. Messages are capped at MAX_MESSAGE_CHARS (an error quoting a
huge input must not be huge itself). /openapi.json documents what is really sent: 400 with the envelope instead of
FastAPI's 422, and the other statuses each route can answer (`document_errors`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger("interndeploy")

MAX_MESSAGE_CHARS = 2000

_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
          405: "invalid_request_error", 413: "invalid_request_error", 422: "invalid_request_error",
          429: "rate_limit_error", 503: "server_error"}
_DESCRIPTIONS = {400: "invalid request", 401: "missing or invalid API key", 404: "unknown model or request",
                 413: "request body too large", 503: "busy (concurrency limit, full queue) or shutting down"}


class APIError(Exception):
    """An error to report to the client with `status` and the OpenAI envelope."""

    def __init__(
        self,
        message: str,
        status: int = 400,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.code = code
        self.headers = headers


def error_body(message: str, status: int, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS] + "…"
    if param is not None and len(param) > 200:
        param = param[:200] + "…"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def document_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: these statuses, each with the error envelope."""
    from .protocol import ErrorResponse

    return {status: {"model": ErrorResponse, "description": _DESCRIPTIONS.get(status, HTTPStatus(status).phrase)}
            for status in statuses}


def error_response(err: APIError) -> JSONResponse:
    return JSONResponse(error_body(err.message, err.status, err.param, err.code), err.status, headers=err.headers)


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "dict", "list", "none"})


def _is_union_tag(part: str) -> bool:
    """pydantic names the branch of a union in error locations ("str", "list[str]", "NamedToolChoice",
    "function-after[...]"): not a field."""
    return part in _TYPE_TAGS or part[:1].isupper() or any(c in part for c in "[(-")


def param_path(loc: Sequence[str | int]) -> str | None:
    """A pydantic error location as OpenAI writes a param: ("body", "messages", 0, "role") -> messages[0].role."""
    out = ""
    for part in loc:
        if part == "body" and not out:
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        elif _is_union_tag(part):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or None


def validation_error(errors: Sequence[dict[str, Any]]) -> APIError:
    first = errors[0] if errors else {"msg": "invalid request", "loc": ()}
    loc = tuple(first.get("loc", ()))
    if first.get("type") == "json_invalid":
        ctx = first.get("ctx") or {}
        return APIError(f"request body is not valid JSON: {ctx.get('error', first.get('msg'))}", code="invalid_json")
    if loc in ((), ("body",)):
        return APIError("request body must be a JSON object (Content-Type: application/json)", code="invalid_json")
    param = param_path(loc)
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    message = f"{param}: {msg}" if param else msg
    return APIError(message, param=param, code="invalid_value")


def _fix_openapi(app: FastAPI, document_401: bool) -> None:
    """Validation errors are 400s with the envelope (every route with a body may send them), not FastAPI's 422;
    with API keys, every route but /health may answer 401."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = build()
        errors = document_errors(400, 401, 413)
        for path, ops in schema.get("paths", {}).items():
            for op in ops.values():
                responses = op.setdefault("responses", {})
                had_422 = responses.pop("422", None) is not None
                wanted = ([400, 413] if had_422 else []) + ([401] if document_401 and path != "/health" else [])
                for status in wanted:
                    responses.setdefault(str(status), {
                        "description": errors[status]["description"],
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
                    })
        components = schema.get("components", {}).get("schemas", {})
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        if "ErrorResponse" not in components:
            from .protocol import ErrorInfo, ErrorResponse

            components["ErrorInfo"] = ErrorInfo.model_json_schema()
            components["ErrorResponse"] = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
            components["ErrorResponse"].pop("$defs", None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_error_handlers(app: FastAPI, document_401: bool = False) -> None:
    _fix_openapi(app, document_401)

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        status = exc.status_code
        code = {400: "invalid_json", 404: "not_found", 405: "method_not_allowed"}.get(status)
        if status == 400:  # FastAPI's "There was an error parsing the body" (e.g. bytes that are not UTF-8)
            message = "request body cannot be parsed: it must be JSON encoded in UTF-8"
        elif status == 404:
            message = f"no such endpoint: {request.url.path}"
        elif status == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail) or HTTPStatus(status).phrase
        return JSONResponse(error_body(message, status, None, code), status, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error while serving a request")
        body = error_body(f"internal server error: {type(exc).__name__}", 500, None, "internal_error")
        return JSONResponse(body, 500)
