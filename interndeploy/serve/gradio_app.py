"""`interndeploy serve gradio URL_OR_MODEL`: a Gradio chat page over an OpenAI-compatible server.

The page is always a client of a server: with a URL (seed 004: `serve gradio http://localhost:23333`) the server
is already running; with a model path (or `demo`) `run` starts our own server in-process on a free loopback port
first, so both modes share one code path (prompts, thinking and tool-call parsing all happen in the server).

    browser --(gradio queue)--> respond() --(openai, stream=True)--> /v1/chat/completions

What the chat shows for one assistant turn, in the order it streams:

    Thinking         collapsible; open with a spinner while it streams, closed once the answer starts
    answer text
    Tool call: name  one collapsible per call, open, with its JSON arguments (tools offered with --tools FILE)

Generation controls (temperature, top-p, top-k, max new tokens, thinking on/off) go with every request; Reset
forgets the conversation. A server that cannot be reached, or that rejects the key, is a message in the chat.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import openai

from .client import Reply, describe_error, first_model, make_client

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no calls home

DEFAULTS = {"temperature": 0.7, "top_p": 0.8, "top_k": 40, "max_new_tokens": 512, "thinking": True}
Messages = list[dict[str, Any]]


class ChatBackend:
    """The server the page talks to, and the model it serves (looked up on first use, so the page can start
    before the server does)."""

    def __init__(self, url: str, api_key: str | None = None, tools: list[dict[str, Any]] | None = None) -> None:
        self.url = url
        self.client = make_client(url, api_key)
        self.tools = tools  # offered with every request (the server parses tool calls only when offered)
        self._model: str | None = None

    def model(self) -> str:
        if self._model is None:
            self._model = first_model(self.client)
        return self._model

    def respond(self, message: str, shown: Messages, history: Messages, temperature: float, top_p: float,
                top_k: int, max_new_tokens: int, thinking: bool) -> Iterator[tuple[str, Messages, Messages]]:
        """The chat handler: yields (text box, chat shown, conversation history) as the reply streams.
        `history` is the OpenAI conversation; `shown` adds the thinking, tool-call and error bubbles."""
        if not message.strip():
            yield message, shown, history
            return
        shown = [*shown, {"role": "user", "content": message}]
        messages = [*history, {"role": "user", "content": message}]
        yield "", shown, history
        reply = Reply()
        stream = None
        try:
            request: dict[str, Any] = {"tools": self.tools} if self.tools else {}
            stream = self.client.chat.completions.create(
                model=self.model(), messages=messages, stream=True, temperature=temperature, top_p=top_p,
                max_tokens=int(max_new_tokens),
                extra_body={"top_k": int(top_k), "chat_template_kwargs": {"enable_thinking": bool(thinking)}},
                **request,
            )
            for chunk in stream:
                if reply.add(chunk):
                    yield "", shown + reply_bubbles(reply, done=False), history
        except openai.OpenAIError as e:
            error = {"role": "assistant", "content": f"Error: {describe_error(e, self.url)}"}
            yield "", shown + reply_bubbles(reply, done=True) + [error], history
            return
        finally:
            if stream is not None:
                stream.close()  # also when the page stops or resets mid-reply: the server aborts the request
        bubbles = reply_bubbles(reply, done=True) or [{"role": "assistant", "content": "(empty reply)"}]
        yield "", shown + bubbles, [*messages, reply.message()]


def reply_bubbles(reply: Reply, done: bool) -> Messages:
    """The chat messages showing `reply` so far."""
    bubbles: Messages = []
    if reply.reasoning:
        thinking_over = done or bool(reply.content or reply.tool_calls)
        bubbles.append({"role": "assistant", "content": reply.reasoning,
                        "metadata": {"title": "Thinking", "status": "done" if thinking_over else "pending"}})
    if reply.content:
        bubbles.append({"role": "assistant", "content": reply.content})
    for call in reply.tool_calls:
        bubbles.append({"role": "assistant", "content": f"```json\n{call.arguments}\n```",
                        "metadata": {"title": f"Tool call: {call.name}"}})
    return bubbles


def build_demo(backend: ChatBackend, what: str) -> Any:
    """The Blocks app; `what` names the server or model in the page's header."""
    import gradio as gr

    with gr.Blocks(title="InternDeploy chat", analytics_enabled=False) as demo:
        gr.Markdown(f"## InternDeploy chat\nTalking to `{what}`")
        history = gr.State([])
        with gr.Row():
            with gr.Column(scale=4):
                chatbot = gr.Chatbot(label="chat", height=520, elem_id="chatbot")
                with gr.Row():
                    box = gr.Textbox(placeholder="Type a message; Enter sends it", show_label=False, scale=6,
                                     elem_id="message", autofocus=True)
                    send = gr.Button("Send", variant="primary", scale=1, elem_id="send")
            with gr.Column(scale=1, min_width=240):
                thinking = gr.Checkbox(value=DEFAULTS["thinking"], label="thinking (models that can think)")
                temperature = gr.Slider(0, 2, value=DEFAULTS["temperature"], step=0.05, label="temperature")
                top_p = gr.Slider(0.05, 1, value=DEFAULTS["top_p"], step=0.05, label="top-p")
                top_k = gr.Slider(0, 100, value=DEFAULTS["top_k"], step=1, label="top-k (0: off)")
                max_new = gr.Slider(1, 8192, value=DEFAULTS["max_new_tokens"], step=1, label="max new tokens")
                with gr.Row():
                    stop = gr.Button("Stop", elem_id="stop")
                    reset = gr.Button("Reset", elem_id="reset")
        inputs = [box, chatbot, history, temperature, top_p, top_k, max_new, thinking]
        outputs = [box, chatbot, history]
        events = [trigger(backend.respond, inputs, outputs) for trigger in (box.submit, send.click)]
        stop.click(None, cancels=events)
        reset.click(lambda: ("", [], []), None, outputs, cancels=events)
    return demo


def is_url(target: str) -> bool:
    return target.startswith(("http://", "https://"))


def serve(target: str, *, api_key: str | None = None, tools: list[dict[str, Any]] | None = None,
          server_name: str = "0.0.0.0", server_port: int = 6006, share: bool = False, engine_config: Any = None,
          chat_template_config: Any = None) -> None:
    """Serve the page until Ctrl-C. `target` is a server URL, or a model (path or `demo`) to serve in-process
    with `engine_config` and `chat_template_config`."""
    engine = server = None
    if is_url(target):
        backend = ChatBackend(target, api_key, tools)
        try:
            backend.model()
        except openai.OpenAIError as e:  # the page starts anyway and says so until the server answers
            print(f"interndeploy: warning: {describe_error(e, target)}", flush=True)
    else:
        from ..engine.async_engine import AsyncEngine
        from ..testing.http_server import ServerThread
        from .openai import ServerSettings, build_app

        engine = AsyncEngine(target, engine_config, chat_template_config)
        try:
            server = ServerThread(build_app(engine, ServerSettings())).start()
        except BaseException:
            engine.shutdown()
            raise
        backend = ChatBackend(server.url, tools=tools)
    try:
        demo = build_demo(backend, target)
        demo.queue().launch(server_name=server_name, server_port=server_port, share=share, show_error=True)
    finally:
        if server is not None:
            server.stop()
        if engine is not None:
            engine.shutdown()
