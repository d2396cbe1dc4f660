"""Schemathesis against the server's own /openapi.json (chat, completions, encode, models), as vLLM's
test_openapi_schema.py does: requests generated from the schema (positive mode, and negative mode: requests that
violate it), sent to the real server on 127.0.0.1; no 5xx, status codes, content types and JSON bodies as
documented, error bodies bounded. Then the server is still healthy and serves nothing.

Examples per operation: 40 in CI; INTERNDEPLOY_FUZZ_EXAMPLES raises it.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from interndeploy.config import EngineConfig
from interndeploy.engine.async_engine import AsyncEngine
from interndeploy.serve.openai import ServerSettings, build_app
from interndeploy.testing.http_server import ServerThread

from .harness import parse_metrics

EXAMPLES = int(os.environ.get("INTERNDEPLOY_FUZZ_EXAMPLES", "40"))
OPERATIONS = ("POST /v1/chat/completions", "POST /v1/completions", "POST /v1/encode", "GET /v1/models")
KEY = "sk-fuzz"


@pytest.fixture(scope="module")
def server(internlm2_dir: Path) -> Iterator[ServerThread]:
    # a short session bounds what a generated max_tokens can cost; keys on, so 401 is documented and exercised
    engine = AsyncEngine(str(internlm2_dir), EngineConfig(block_size=16, cpu_kv_budget_gib=0.05, session_len=96),
                         model_name="m")
    settings = ServerSettings(api_keys=[KEY], max_n=4, max_request_bytes=256 << 10)
    with ServerThread(build_app(engine, settings)) as srv:
        yield srv
    engine.shutdown()


@pytest.mark.parametrize(("operation", "mode"), [(op, mode) for op in OPERATIONS for mode in ("positive", "negative")
                                                 if op != "GET /v1/models" or mode == "positive"])  # no parameters
def test_openapi_fuzz(server: ServerThread, operation: str, mode: str, report: dict):
    auth = {"Authorization": f"Bearer {KEY}"}
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json", headers=auth)
    method, path = operation.split(" ")
    op = schema[path][method]
    statuses: Counter = Counter()

    @given(case=op.as_strategy(generation_mode=GenerationMode(mode)))
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case) -> None:
        case.headers = {**(case.headers or {}), **auth}
        response = case.call(base_url=server.url, timeout=60)
        statuses[response.status_code] += 1
        case.validate_response(response, checks=[not_a_server_error, status_code_conformance,
                                                 content_type_conformance, response_schema_conformance])
        if response.status_code >= 400:
            assert len(response.content) < 32 * 1024, f"{len(response.content)}-byte error body"
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}

    run()
    print(f"\nfuzz {operation} ({mode}): {sum(statuses.values())} cases, statuses {dict(statuses)}")
    fuzz = report.setdefault("fuzz", {})
    fuzz[f"{operation} ({mode})"] = {"cases": sum(statuses.values()),
                                     "5xx": sum(n for s, n in statuses.items() if s >= 500),
                                     "statuses": {str(k): v for k, v in sorted(statuses.items())}}
    assert not [s for s in statuses if s >= 500]
    assert httpx.get(server.url + "/health").status_code == 200
    m = parse_metrics(httpx.get(server.url + "/metrics", headers=auth).text)
    assert m["interndeploy_http_requests_in_flight"] == 0
