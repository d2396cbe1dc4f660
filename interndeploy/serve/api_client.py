"""`interndeploy serve api_client URL`: chat with an OpenAI-compatible server in the terminal, as LMDeploy's did.

Input ends on an empty line (double Enter); `exit` quits; `end` starts a new conversation. Replies stream as they
come. When the server sends `reasoning_content`, the thinking is printed dimmed under `[thinking]` and the answer
under `[answer]`; tool calls (tools are offered with `--tools FILE`) print as `[tool call] name({...arguments})`.
The conversation is kept here and sent whole with each message. A server that is down or rejects the key is one
line, not a traceback.
"""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO

import openai

from .client import Reply, describe_error, first_model, make_client

PROMPT = "\ndouble enter to end input >>> "
DIM, RESET = "\x1b[2m", "\x1b[0m"


def read_message(stdin: TextIO, out: TextIO) -> str | None:
    """Lines until an empty one; None at end of input."""
    print(PROMPT, end="", file=out, flush=True)
    lines: list[str] = []
    while True:
        line = stdin.readline()
        if not line:
            return "\n".join(lines) if lines else None
        line = line.rstrip("\r\n")
        if not line:
            if lines:
                return "\n".join(lines)
            continue
        lines.append(line)


class ReplyPrinter:
    """Prints one streamed reply, opening a section when the kind of text changes:

        [thinking]               <- only when the server sends reasoning_content; the text is dimmed on a terminal
        ...
        [answer]                 <- only after thinking
        ...
        [tool call] name({...})  <- one line per call
    """

    def __init__(self, out: TextIO, color: bool) -> None:
        self.out = out
        self.color = color
        self.section: str | None = None  # reasoning | content | tool
        self.at_line_start = True

    def write(self, text: str) -> None:
        if text:
            self.out.write(text)
            self.out.flush()
            self.at_line_start = text.endswith("\n")

    def _newline(self) -> None:
        if not self.at_line_start:
            self.write("\n")

    def _close(self) -> None:
        if self.section == "tool":
            self.write(")")
        elif self.section == "reasoning" and self.color:
            self.write(RESET)

    def show(self, kind: str, text: str) -> None:
        if kind == "reasoning":
            if self.section != "reasoning":
                self._close()
                self._newline()
                self.write("[thinking]\n" + (DIM if self.color else ""))
                self.section = "reasoning"
            self.write(text)
        elif kind == "content":
            if self.section != "content":
                self._close()
                if self.section is not None:
                    self._newline()
                    self.write("[answer]\n")
                self.section = "content"
            self.write(text)
        elif kind == "tool_name":
            self._close()
            self._newline()
            self.write(f"[tool call] {text}(")
            self.section = "tool"
        elif kind == "tool_args":
            self.write(text)

    def finish(self) -> None:
        self._close()
        self.section = None
        self._newline()


def stream_reply(client: openai.OpenAI, model: str, messages: list[dict[str, Any]], printer: ReplyPrinter,
                 request: dict[str, Any]) -> Reply:
    """Stream one reply to `printer`; `request` holds the other fields of the chat completion request."""
    reply = Reply()
    stream = client.chat.completions.create(model=model, messages=messages, stream=True, **request)
    try:
        for chunk in stream:
            for kind, text in reply.add(chunk):
                printer.show(kind, text)
    finally:
        stream.close()  # on Ctrl-C too: the server aborts the request when the stream closes
        printer.finish()
    if reply.finish_reason == "length":
        printer.write("(cut off: the reply reached max tokens)\n")
    return reply


def run_client(url: str, api_key: str | None = None, session_id: int | None = None, max_tokens: int | None = None,
               tools: list[dict[str, Any]] | None = None, stdin: TextIO = sys.stdin, out: TextIO = sys.stdout) -> int:
    """The chat loop. Raises ConnectionError (one line, see `describe_error`) when the server cannot be used."""
    client = make_client(url, api_key)
    request: dict[str, Any] = {"max_tokens": max_tokens}
    if tools:
        request["tools"] = tools
    if session_id is not None:
        request["extra_body"] = {"session_id": session_id}
    try:
        model = first_model(client)
    except openai.OpenAIError as e:
        raise ConnectionError(describe_error(e, url)) from None
    color = out.isatty() and "NO_COLOR" not in os.environ
    print(f"chatting with {model} at {url}; `end` starts a new session, `exit` quits", file=out, flush=True)
    messages: list[dict[str, Any]] = []
    while True:
        text = read_message(stdin, out)
        if text is None or text.strip() == "exit":
            return 0
        if text.strip() == "end":
            messages = []
            print("(new session)", file=out, flush=True)
            continue
        messages.append({"role": "user", "content": text})
        try:
            reply = stream_reply(client, model, messages, ReplyPrinter(out, color), request)
        except openai.OpenAIError as e:
            messages.pop()
            print(f"error: {describe_error(e, url)}", file=out, flush=True)
            continue
        except KeyboardInterrupt:
            messages.pop()
            print("(interrupted)", file=out, flush=True)
            continue
        messages.append(reply.message())
