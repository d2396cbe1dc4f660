"""The client side of an OpenAI-compatible server, shared by `serve api_client` (terminal) and `serve gradio` (web).

A `Reply` folds the streamed chunks of one chat completion into its three parts, in the order they arrive:

    delta.reasoning_content -> reasoning   (the model's thinking; our server sends it when thinking is on)
    delta.content           -> content     (the answer)
    delta.tool_calls        -> tool_calls  (by index: the name comes once, the arguments in pieces)

`describe_error` turns what the `openai` package raises into the one line a user should read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai

NO_KEY = "EMPTY"  # what the openai client sends when the user gives no key; servers without keys ignore it


def api_base(url: str) -> str:
    """`http://host:port` or `http://host:port/v1` -> `http://host:port/v1`."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    return url if url.endswith("/v1") else url + "/v1"


def make_client(url: str, api_key: str | None = None, timeout: float = 600.0) -> openai.OpenAI:
    # no retries: a server that is down should be reported at once, not after a back-off
    return openai.OpenAI(base_url=api_base(url), api_key=api_key or NO_KEY, max_retries=0,
                         timeout=httpx.Timeout(timeout, connect=5.0))


def load_tools(path: str | None) -> list[dict[str, Any]] | None:
    """OpenAI tool schemas from a JSON file: a list of `{"type": "function", "function": {...}}`, or an object with
    such a list under "tools". None without a path."""
    if not path:
        return None
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise ValueError(f"cannot read the tools file {path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"the tools file {path} is not JSON: {e}") from None
    tools = data.get("tools") if isinstance(data, dict) else data
    if not isinstance(tools, list) or not all(isinstance(t, dict) and "function" in t for t in tools):
        raise ValueError(f"the tools file {path} must hold a list of {{\"type\": \"function\", \"function\": ...}}")
    return tools


def first_model(client: openai.OpenAI) -> str:
    """The id of the first model the server lists (ours serves one)."""
    models = client.models.list().data
    if not models:
        raise openai.OpenAIError("the server lists no models")
    return models[0].id


def describe_error(e: Exception, url: str) -> str:
    """One line saying what went wrong talking to the server at `url` and what to do."""
    if isinstance(e, openai.APITimeoutError):
        return f"the server at {url} did not answer in time; is it overloaded?"
    if isinstance(e, openai.APIConnectionError):
        cause = e.__cause__ or e.__context__
        why = f" ({cause})" if cause and str(cause) else ""
        return f"cannot reach the server at {url}{why}; is `interndeploy serve api_server` running there?"
    if isinstance(e, openai.AuthenticationError):
        return f"the server at {url} rejected the API key ({_message(e)}); pass a key it accepts with --api-key"
    if isinstance(e, openai.NotFoundError):
        return f"{url} answered 404 ({_message(e)}); is it an OpenAI-compatible server?"
    if isinstance(e, openai.APIStatusError):
        return f"the server answered {e.status_code}: {_message(e)}"
    return str(e) if isinstance(e, openai.OpenAIError) else f"{type(e).__name__}: {e}"


def _message(e: openai.APIStatusError) -> str:
    body = e.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return e.message


@dataclass(slots=True)
class ToolCall:
    id: str  # the server's call id ("" until it arrives)
    name: str  # the function's name
    arguments: str = ""  # JSON text, grown piece by piece

    def __str__(self) -> str:
        return f"{self.name}({self.arguments})"


@dataclass(slots=True)
class Reply:
    """One assistant turn as it streams in."""

    reasoning: str = ""  # thinking text (reasoning_content), empty when the server sent none
    content: str = ""  # the answer text
    tool_calls: list[ToolCall] = field(default_factory=list)  # in index order
    finish_reason: str | None = None  # stop | length | tool_calls, once the last chunk came

    def add(self, chunk: Any) -> list[tuple[str, str]]:
        """Fold one ChatCompletionChunk in; returns what it added as (kind, text) pairs, kind being
        "reasoning", "content", "tool_name" (a call begins) or "tool_args" (a piece of its JSON arguments)."""
        events: list[tuple[str, str]] = []
        for choice in chunk.choices[:1]:
            delta = choice.delta
            reasoning = getattr(delta, "reasoning_content", None)
            if reasoning:
                self.reasoning += reasoning
                events.append(("reasoning", reasoning))
            if delta.content:
                self.content += delta.content
                events.append(("content", delta.content))
            for tc in delta.tool_calls or []:
                while len(self.tool_calls) <= tc.index:
                    self.tool_calls.append(ToolCall("", ""))
                call = self.tool_calls[tc.index]
                call.id = tc.id or call.id
                fn = tc.function
                if fn is not None and fn.name:
                    call.name += fn.name
                    events.append(("tool_name", fn.name))
                if fn is not None and fn.arguments:
                    call.arguments += fn.arguments
                    events.append(("tool_args", fn.arguments))
            if choice.finish_reason:
                self.finish_reason = choice.finish_reason
        return events

    def message(self) -> dict[str, Any]:
        """The assistant message to send back as history (reasoning left out, as OpenAI clients do)."""
        msg: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            msg["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in self.tool_calls
            ]
        return msg
