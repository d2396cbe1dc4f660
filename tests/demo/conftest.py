"""The embedded demo model behind the real OpenAI server (in-process uvicorn), once per session.

- `demo_server`: `serve api_server demo` with no parser flags (parsers picked by the chat template family);
- `demo_s1_server`: the same engine with `--reasoning-parser intern-s1 --tool-call-parser intern-s1`;
- `demo_qwen3_server`: `--chat-template qwen3 --reasoning-parser qwen3 --tool-call-parser qwen3`.
Engines share the process-global forward context, so the tests never send to two engines at once.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from interndeploy.config import ChatTemplateConfig, EngineConfig
from interndeploy.demo import DEMO_MODEL_ID
from interndeploy.engine.async_engine import AsyncEngine
from interndeploy.serve.openai import ServerSettings, build_app
from interndeploy.testing.http_server import ServerThread


def _engine(template: str | None = None) -> AsyncEngine:
    cfg = EngineConfig(cpu_kv_budget_gib=1.0, max_batch_size=128, enable_prefix_caching=True)
    tpl = ChatTemplateConfig(model_name=template) if template else None
    return AsyncEngine("demo", cfg, tpl, model_name=DEMO_MODEL_ID)


@pytest.fixture(scope="session")
def demo_engine() -> Iterator[AsyncEngine]:
    engine = _engine()
    yield engine
    engine.shutdown()


@pytest.fixture(scope="session")
def demo_server(demo_engine: AsyncEngine) -> Iterator[ServerThread]:
    with ServerThread(build_app(demo_engine, ServerSettings())) as srv:
        yield srv


@pytest.fixture(scope="session")
def demo_s1_server(demo_engine: AsyncEngine) -> Iterator[ServerThread]:
    settings = ServerSettings(reasoning_parser="intern-s1", tool_call_parser="intern-s1")
    with ServerThread(build_app(demo_engine, settings)) as srv:
        yield srv


@pytest.fixture(scope="session")
def demo_qwen3_server() -> Iterator[ServerThread]:
    engine = _engine("qwen3")
    settings = ServerSettings(reasoning_parser="qwen3", tool_call_parser="qwen3")
    with ServerThread(build_app(engine, settings)) as srv:
        yield srv
    engine.shutdown()
