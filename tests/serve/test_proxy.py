"""`serve proxy` with two real api_servers on loopback (each started with --proxy-url, registering itself), and
the routing strategies on the node pool itself."""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from interndeploy.serve.proxy import NodePool
from interndeploy.testing.http_server import free_port

MODEL = "tiny"


# ---- routing decisions ---------------------------------------------------------------------------------------


def test_random_draws_in_proportion_to_speed() -> None:
    pool = NodePool("random", seed=0)
    pool.add("http://a", [MODEL], speed=3)
    pool.add("http://b", [MODEL], speed=1)
    pool.add("http://c", ["other"], speed=100)
    counts = Counter(pool.pick(MODEL) for _ in range(4000))
    assert set(counts) == {"http://a", "http://b"}
    assert 2.6 < counts["http://a"] / counts["http://b"] < 3.4


def test_min_expected_latency_picks_least_unfinished_per_speed() -> None:
    pool = NodePool("min_expected_latency")
    pool.add("http://a", [MODEL], speed=2)
    pool.add("http://b", [MODEL])  # no speed: the mean of the others (2)
    assert pool.pick(MODEL) == "http://a"  # tie: first added
    pool.begin("http://a")
    assert pool.pick(MODEL) == "http://b"
    pool.begin("http://b")
    pool.add("http://a", [MODEL], speed=4)  # re-registering keeps the in-flight count: 1 / 4 < 1 / 2
    assert pool.pick(MODEL) == "http://a"
    assert pool.pick("missing") is None


def test_min_observed_latency_prefers_fast_nodes_and_probes_new_ones() -> None:
    pool = NodePool("min_observed_latency")
    pool.add("http://a", [MODEL])
    pool.add("http://b", [MODEL])
    now = time.monotonic()
    pool.end(pool.begin("http://a"), now - 2.0, ok=True)
    assert pool.pick(MODEL) == "http://b"  # no latency yet counts as 0: it gets measured
    pool.end(pool.begin("http://b"), now - 0.5, ok=True)
    assert pool.pick(MODEL) == "http://b"
    pool.end(pool.begin("http://b"), now - 5.0, ok=True)  # mean 2.75 s > 2 s
    assert pool.pick(MODEL) == "http://a"
    pool.end(pool.begin("http://a"), now - 99.0, ok=False)  # failures are not latencies
    assert pool.pick(MODEL) == "http://a"


def test_dropped_nodes_leave_routing() -> None:
    pool = NodePool("min_expected_latency")
    pool.add("http://a", [MODEL])
    status = pool.begin("http://a")
    pool.drop("http://a", "test")
    assert status.gone.is_set() and pool.pick(MODEL) is None and "http://a" in pool.dropped
    pool.add("http://a", [MODEL])
    assert pool.pick(MODEL) == "http://a" and not pool.dropped


# ---- two api_servers behind a proxy -------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "interndeploy.cli.main", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait(what: str, check, proc: subprocess.Popen | None = None, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited: {proc.stderr.read()[-3000:]}")
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(what)


@pytest.fixture(scope="module")
def cluster(internlm2_dir: Path) -> Iterator[dict]:
    proxy_port = free_port()
    proxy_url = f"http://127.0.0.1:{proxy_port}"
    procs = {"proxy": _cli("serve", "proxy", "--server-name", "127.0.0.1", "--server-port", str(proxy_port),
                           "--routing-strategy", "min_expected_latency", "--health-interval", "1")}
    backends = []
    for name in ("a", "b"):
        port = free_port()
        backends.append(f"http://127.0.0.1:{port}")
        procs[name] = _cli("serve", "api_server", str(internlm2_dir), "--server-name", "127.0.0.1", "--server-port",
                           str(port), "--proxy-url", proxy_url, "--model-name", MODEL, "--device", "cpu",
                           "--cache-block-seq-len", "16", "--cpu-kv-budget-gib", "0.1", "--session-len", "1024")
    try:
        _wait("proxy", lambda: httpx.get(proxy_url + "/health").status_code == 200, procs["proxy"])
        _wait("both nodes registered", lambda: len(httpx.get(proxy_url + "/nodes/status").json()) == 2, procs["a"])
        yield {"proxy": proxy_url, "backends": backends, "procs": procs}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="none", timeout=60.0, max_retries=0)


def test_registration_models_and_forwarding(cluster: dict) -> None:
    proxy = cluster["proxy"]
    status = httpx.get(proxy + "/nodes/status").json()
    assert sorted(status) == sorted(cluster["backends"])
    client = _client(proxy)
    assert [m.id for m in client.models.list().data] == [MODEL]
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=5,
                                           extra_body={"ignore_eos": True})
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 5
    chunks = list(client.completions.create(model=MODEL, prompt="hello", max_tokens=4, stream=True,
                                            extra_body={"ignore_eos": True}))
    assert chunks[-1].choices[0].finish_reason == "length"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])


def test_min_expected_latency_spreads_requests_in_flight(cluster: dict) -> None:
    proxy = cluster["proxy"]
    client = _client(proxy)
    streams = [client.completions.create(model=MODEL, prompt="go", max_tokens=400, stream=True,
                                         extra_body={"ignore_eos": True}) for _ in range(2)]
    try:
        for s in streams:
            next(iter(s))  # both running
        status = httpx.get(proxy + "/nodes/status").json()
        assert [s["unfinished"] for s in status.values()] == [1, 1]
    finally:
        for s in streams:
            s.close()


def test_nodes_add_and_remove(cluster: dict) -> None:
    proxy, b = cluster["proxy"], cluster["backends"][1]
    assert httpx.post(proxy + "/nodes/remove", params={"node_url": b}).status_code == 200
    assert b not in httpx.get(proxy + "/nodes/status").json()
    assert httpx.post(proxy + "/nodes/remove", params={"node_url": b}).status_code == 404
    assert httpx.post(proxy + "/nodes/add", json={"url": "http://127.0.0.1:9"}).status_code == 400
    assert httpx.post(proxy + "/nodes/add", json={"url": b, "status": {"speed": 2}}).status_code == 200
    assert httpx.get(proxy + "/nodes/status").json()[b]["models"] == [MODEL]


def test_killing_a_backend_loses_no_request_silently(cluster: dict) -> None:
    """Requests in flight on the killed node end with an error (502, or an error event in the stream); the
    others finish; the node is dropped and later requests go to the survivor."""
    proxy = cluster["proxy"]
    client = _client(proxy)

    def stream_one() -> str:
        text = ""
        for chunk in client.completions.create(model=MODEL, prompt="go", max_tokens=300, stream=True,
                                               extra_body={"ignore_eos": True}):
            if chunk.choices and chunk.choices[0].finish_reason:
                return "finished"
            text += chunk.choices[0].text if chunk.choices else ""
        return "ended without finish_reason"  # what must never happen

    def plain_one() -> str:
        r = client.completions.create(model=MODEL, prompt="go", max_tokens=300, extra_body={"ignore_eos": True})
        return "finished" if r.choices[0].finish_reason == "length" else "bad"

    with cf.ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(stream_one) for _ in range(4)] + [pool.submit(plain_one) for _ in range(2)]
        _wait("requests on both nodes",
              lambda: all(s["unfinished"] >= 1 for s in httpx.get(proxy + "/nodes/status").json().values()),
              timeout=30)
        cluster["procs"]["a"].kill()
        outcomes = []
        for f in futures:
            try:
                outcomes.append(f.result(timeout=90))
            except (openai.APIError, openai.APIStatusError) as e:
                outcomes.append(f"error: {e}")
    assert "ended without finish_reason" not in outcomes and "bad" not in outcomes, outcomes
    assert any(o.startswith("error") for o in outcomes) and "finished" in outcomes, outcomes
    assert list(httpx.get(proxy + "/nodes/status").json()) == [cluster["backends"][1]]
    reply = client.completions.create(model=MODEL, prompt="again", max_tokens=3)
    assert reply.choices[0].text is not None
