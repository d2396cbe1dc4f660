"""Servers for the HTTP tests, started once per session on 127.0.0.1.

- `server`: the tiny InternLM2 model behind the real app, no options;
- `scripted_server`: an engine with the built-in intern-s1 chat template whose `generate` replays a scripted
  reply (random tiny models cannot be made to call tools or think), behind the real app with no parser flags;
- `guarded_server`: the scripted engine behind an app with API keys, CORS, a concurrency limit of 1 and no docs
  (its `gate` holds a request in flight for as long as a test needs).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from interndeploy.config import ChatTemplateConfig, EngineConfig, GenerationConfig
from interndeploy.engine.async_engine import AsyncEngine
from interndeploy.engine.request import RequestOutput
from interndeploy.serve.openai import ServerSettings, build_app
from interndeploy.testing.http_server import ServerThread

MODEL_NAME = "tiny-internlm2"
SESSION_LEN = 1024
API_KEY = "sk-test-key"
ORIGIN = "https://app.example"


def _engine(model_dir: Path, session_len: int = SESSION_LEN, **kwargs: Any) -> AsyncEngine:
    cfg = EngineConfig(block_size=16, cpu_kv_budget_gib=0.1, session_len=session_len)
    return AsyncEngine(str(model_dir), cfg, model_name=MODEL_NAME, **kwargs)


@pytest.fixture(scope="session")
def serve_engine(internlm2_dir: Path) -> Iterator[AsyncEngine]:
    engine = _engine(internlm2_dir)
    yield engine
    engine.shutdown()


@pytest.fixture(scope="session")
def server(serve_engine: AsyncEngine) -> Iterator[ServerThread]:
    with ServerThread(build_app(serve_engine, ServerSettings())) as srv:
        yield srv


@dataclass
class ScriptedEngine:
    """A real AsyncEngine (prompts, templates, validation, metrics) whose replies are scripted.

    Each sample streams `reply` in pieces of `piece_len` characters, one pretend token per piece, and finishes
    with `finish_reason`; no piece goes out while `gate` is clear. `requests` records (prompt text,
    GenerationConfig) of every call, `closed_early` the ids of requests whose stream was closed before its end
    (where the real engine aborts)."""

    inner: AsyncEngine
    reply: str = ""
    piece_len: int = 3
    finish_reason: str = "stop"
    requests: list[tuple[str, GenerationConfig]] = field(default_factory=list)
    gate: threading.Event = field(default_factory=threading.Event)
    closed_early: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.gate.set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    @property
    def last_prompt(self) -> str:
        return self.requests[-1][0]

    @property
    def last_gen(self) -> GenerationConfig:
        return self.requests[-1][1]

    async def generate(
        self, prompt_ids: list[int], gen: GenerationConfig, request_id: str
    ) -> AsyncIterator[RequestOutput]:
        self.inner.make_request(prompt_ids, gen, request_id)  # the real engine's checks
        prompt = self.inner.tokenizer.decode(prompt_ids, skip_special_tokens=False, spaces_between_special_tokens=False)
        self.requests.append((prompt, gen))
        pieces = [self.reply[i : i + self.piece_len] for i in range(0, len(self.reply), self.piece_len)] or [""]
        done = False
        try:
            for k, piece in enumerate(pieces):
                await asyncio.sleep(0)
                while not self.gate.is_set():
                    await asyncio.sleep(0.01)
                last = k == len(pieces) - 1
                for index in range(gen.n):
                    yield RequestOutput(request_id, index, piece, [k], None, len(prompt_ids), k + 1,
                                        finished=last, finish_reason=self.finish_reason if last else None)
            done = True
        finally:
            if not done:
                self.closed_early.append(request_id)


@pytest.fixture(scope="session")
def scripted_engine(internlm2_dir: Path) -> Iterator[ScriptedEngine]:
    # Intern-S1's context (the seeds ask for max_tokens=32768); the scripted engine never runs the model
    engine = _engine(internlm2_dir, 40960, chat_template_config=ChatTemplateConfig(model_name="intern-s1"))
    yield ScriptedEngine(engine)
    engine.shutdown()


@pytest.fixture(scope="session")
def scripted_server(scripted_engine: ScriptedEngine) -> Iterator[ServerThread]:
    with ServerThread(build_app(scripted_engine, ServerSettings())) as srv:
        yield srv


@pytest.fixture(scope="session")
def scripted_qwen3_server(scripted_engine: ScriptedEngine) -> Iterator[ServerThread]:
    """The scripted engine with --tool-call-parser qwen3 and --reasoning-parser deepseek-r1 (Intern-S1-Pro style)."""
    settings = ServerSettings(tool_call_parser="qwen3", reasoning_parser="deepseek-r1")
    with ServerThread(build_app(scripted_engine, settings)) as srv:
        yield srv


@pytest.fixture(scope="session")
def guarded_server(scripted_engine: ScriptedEngine) -> Iterator[ServerThread]:
    settings = ServerSettings(api_keys=["other-key", API_KEY], allow_origins=[ORIGIN], max_concurrent_requests=1,
                              disable_docs=True)
    with ServerThread(build_app(scripted_engine, settings)) as srv:
        yield srv
