"""OpenAI's error envelope, `{"error": {"message", "type", "param", "code"}}`, for every failure the server reports.

Handlers installed by `install_error_handlers` turn FastAPI's validation errors (bad fields, malformed JSON,
invalid UTF-8), Starlette's HTTP errors (unknown route, wrong method) and anything unexpected into the envelope,
so no client ever sees a bare text or HTML error.
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

_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
          405: "invalid_request_error", 413: "invalid_request_error", 422: "invalid_request_error",
          429: "rate_limit_error", 503: "server_error"}


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
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


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


def install_error_handlers(app: FastAPI) -> None:
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
