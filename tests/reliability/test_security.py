"""Security defaults: API keys on every route but /health (no bypass by OPTIONS, trailing slashes, case or
percent-encoding), CORS off unless configured, no chat template or remote media taken from a request, and no
socket but the HTTP one (so no pickle or other deserializer a client could reach)."""

from __future__ import annotations

import ast
import inspect
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

import interndeploy
from interndeploy.config import EngineConfig
from interndeploy.engine.async_engine import AsyncEngine
from interndeploy.serve.openai import ServerSettings, build_app
from interndeploy.serve.openai.server import APIKeyMiddleware
from interndeploy.testing.http_server import ServerThread

from .harness import envelope

KEY = "sk-reliability"
AUTH = {"Authorization": f"Bearer {KEY}"}
HI = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def engine(internlm2_dir: Path) -> Iterator[AsyncEngine]:
    engine = AsyncEngine(str(internlm2_dir), EngineConfig(block_size=16, cpu_kv_budget_gib=0.05, session_len=256),
                         model_name="m")
    yield engine
    engine.shutdown()


@pytest.fixture(scope="module")
def keyed(engine: AsyncEngine) -> Iterator[ServerThread]:
    with ServerThread(build_app(engine, ServerSettings(api_keys=["sk-other", KEY]))) as srv:
        yield srv


@pytest.fixture(scope="module")
def open_server(engine: AsyncEngine) -> Iterator[ServerThread]:
    with ServerThread(build_app(engine, ServerSettings())) as srv:
        yield srv


def routes(srv: ServerThread) -> list[tuple[str, str]]:
    """(method, path) of every route: the API's from its OpenAPI document, plus metrics and the docs pages."""
    schema = httpx.get(srv.url + "/openapi.json", headers=AUTH).json()
    api = [(method.upper(), path) for path, ops in schema["paths"].items() for method in ops]
    return api + [("GET", "/metrics"), ("GET", "/openapi.json"), ("GET", "/"), ("GET", "/redoc")]


def test_every_route_but_health_needs_the_key(keyed: ServerThread):
    found = routes(keyed)
    assert {"/v1/chat/completions", "/v1/completions", "/v1/encode", "/v1/models", "/abort_request", "/metrics",
            "/openapi.json", "/"} <= {path for _, path in found}
    for method, path in found:
        for headers in ({}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": KEY}, {"Authorization": "Basic x"},
                        {"Authorization": f"Bearer {KEY}x"}, {"Authorization": f"Bearer {KEY[:-1]}"}):
            r = httpx.request(method, keyed.url + path, headers=headers, json={} if method == "POST" else None)
            if path == "/health":
                assert r.status_code == 200
            else:
                assert envelope(r, 401)["code"] == "invalid_api_key", (method, path, headers)
                assert r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(keyed.url + "/v1/models", headers=AUTH).status_code == 200
    assert httpx.get(keyed.url + "/v1/models", headers={"Authorization": "Bearer sk-other"}).status_code == 200


@pytest.mark.parametrize("path", ["/v1/models/", "/health/", "/HEALTH", "/v1/%6dodels", "//v1/models",
                                  "/v1/models?x=/health", "/./v1/models", "/v1/../v1/models", "/docs", "/redoc",
                                  "/v1/chat/completions/"])
@pytest.mark.parametrize("method", ["GET", "POST", "OPTIONS", "HEAD", "PUT", "DELETE"])
def test_no_bypass_by_path_or_method(keyed: ServerThread, method: str, path: str):
    r = httpx.request(method, keyed.url + path, headers={"Origin": "https://evil.example",
                                                         "Access-Control-Request-Method": "POST"})
    assert r.status_code == 401, (method, path, r.status_code)


def test_keys_are_compared_in_constant_time():
    source = inspect.getsource(APIKeyMiddleware._authorized)
    assert "compare_digest" in source and "any(" in source  # every key is compared, digests of equal length


def test_cors_is_off_unless_configured(open_server: ServerThread):
    origin = {"Origin": "https://evil.example"}
    r = httpx.get(open_server.url + "/v1/models", headers=origin)
    assert r.status_code == 200 and not any(h.startswith("access-control-") for h in r.headers)
    preflight = httpx.options(open_server.url + "/v1/chat/completions",
                              headers={**origin, "Access-Control-Request-Method": "POST"})
    assert not any(h.startswith("access-control-") for h in preflight.headers)


def test_no_template_from_the_request(open_server: ServerThread):
    jinja = {"messages": HI, "max_tokens": 2, "chat_template": "{{ raise_exception('ran') }}"}
    assert envelope(httpx.post(open_server.url + "/v1/chat/completions", json=jinja), 400)["param"] == \
        "chat_template"
    # Jinja in message text stays text: the server's template renders it as data, the braces reach the model
    text = "{{ 7 * 7 }} {% for i in range(3) %}x{% endfor %}"
    templated = httpx.post(open_server.url + "/v1/encode", json={"input": text, "do_preprocess": True}).json()
    literal = httpx.post(open_server.url + "/v1/encode", json={"input": text, "add_bos": False}).json()
    inner = literal["input_ids"][1:-1]  # the ends may merge with the template's text around them
    ids = templated["input_ids"]
    assert any(ids[i : i + len(inner)] == inner for i in range(len(ids))), (ids, inner)


def test_no_remote_media_fetch(open_server: ServerThread):
    """An image_url pointing at a server on 127.0.0.1 is refused, and nothing connects to that server."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.5)
    hits: list[object] = []

    def accept() -> None:
        try:
            hits.append(listener.accept())
        except OSError:
            pass

    thread = threading.Thread(target=accept)
    thread.start()
    host, port = listener.getsockname()
    content = [{"type": "text", "text": "what is in the picture?"},
               {"type": "image_url", "image_url": {"url": f"http://{host}:{port}/cat.png"}}]
    r = httpx.post(open_server.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": content}]})
    thread.join()
    listener.close()
    assert envelope(r, 400)["code"] == "unsupported_content"
    assert not hits, "the server fetched a remote image"


def test_no_deserializer_in_the_package():
    """No pickle/marshal/shelve/dill/zmq anywhere in interndeploy, and torch.load only with weights_only=True:
    nothing a socket could feed executes code."""
    root = Path(interndeploy.__file__).parent
    banned_modules = {"pickle", "cPickle", "marshal", "shelve", "dill", "cloudpickle", "zmq", "joblib"}
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not {n.split(".")[0] for n in names} & banned_modules, f"{path}:{node.lineno}"
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "load" and \
                    getattr(node.func.value, "id", None) == "torch":
                kw = {k.arg: k.value for k in node.keywords}
                assert isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True, \
                    f"{path}:{node.lineno}: torch.load without weights_only=True"


def test_the_server_process_listens_on_one_socket(tiny_server):
    server = tiny_server("--api-keys", KEY, headers=AUTH)
    port = int(server.url.rsplit(":", 1)[1])
    procs = [psutil.Process(server.pid), *psutil.Process(server.pid).children(recursive=True)]
    listening = [c for p in procs for c in p.net_connections(kind="all") if c.status == psutil.CONN_LISTEN]
    assert [(c.laddr.ip, c.laddr.port) for c in listening] == [("127.0.0.1", port)], listening
    assert envelope(httpx.get(server.url + "/metrics"), 401)
    assert server.metrics()["interndeploy_kv_blocks_used"] == 0
