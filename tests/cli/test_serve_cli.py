"""`interndeploy serve api_server` as users start it: a real process, the openai client, a clean Ctrl-C."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from interndeploy.cli.main import main
from interndeploy.testing.http_server import free_port


def test_api_server_process(internlm2_dir: Path):
    port = free_port()
    cmd = [sys.executable, "-m", "interndeploy.cli.main", "serve", "api_server", str(internlm2_dir),
           "--server-name", "127.0.0.1", "--server-port", str(port), "--model-name", "tiny", "--backend", "pytorch",
           "--session-len", "512", "--cache-max-entry-count", "0.5", "--cpu-kv-budget-gib", "0.1",
           "--api-keys", "k1", "--log-level", "INFO", "--max-log-len", "10"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.2)
        client = openai.OpenAI(api_key="k1", base_url=f"http://127.0.0.1:{port}/v1", max_retries=0)
        assert client.models.list().data[0].id == "tiny"
        r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi there"}],
                                           max_tokens=3, temperature=0)
        assert r.usage.completion_tokens <= 3
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out
    assert "pytorch and turbomind both run interndeploy's own engine" in out
    assert f"http://127.0.0.1:{port}" in out
    assert "prompt=\"[{'role': …\"" in out  # --max-log-len 10 cut the logged prompt


def test_ssl_reads_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from interndeploy.cli.main import build_parser
    from interndeploy.cli.serve import check_server_args

    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    key.write_text("k")
    cert.write_text("c")
    args = build_parser().parse_args(["serve", "api_server", "m", "--ssl"])
    monkeypatch.setenv("SSL_KEYFILE", str(key))
    monkeypatch.setenv("SSL_CERTFILE", str(tmp_path / "missing.pem"))
    with pytest.raises(ValueError, match="SSL_CERTFILE=.*missing.pem is not a file"):
        check_server_args(args)
    monkeypatch.setenv("SSL_CERTFILE", str(cert))
    assert check_server_args(args) == (str(key), str(cert))
    assert check_server_args(build_parser().parse_args(["serve", "api_server", "m"])) == (None, None)


@pytest.mark.parametrize(("flags", "message"), [
    (["--dp", "2"], "--dp 2 starts 2 api_servers; start `interndeploy serve proxy`"),
    (["--ep", "8"], "ep=8 must equal tp x dp = 1"),
    (["--dp", "2", "--ep", "2", "--nnodes", "2", "--proxy-url", "http://127.0.0.1:8000"],
     "--nnodes > 1 with --dp needs INTERNDEPLOY_DP_MASTER_ADDR"),
    (["--tool-call-parser", "nope"], "unknown tool call parser 'nope'"),
    (["--reasoning-parser", "nope"], "unknown reasoning parser 'nope'"),
    (["--ssl"], "--ssl needs the environment variables SSL_KEYFILE and SSL_CERTFILE"),
])
def test_unavailable_flags_fail_with_one_line(
    internlm2_dir: Path, flags: list[str], message: str, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("SSL_KEYFILE", raising=False)
    monkeypatch.delenv("SSL_CERTFILE", raising=False)
    for name in ("INTERNDEPLOY_DP_MASTER_ADDR", "LMDEPLOY_DP_MASTER_ADDR"):
        monkeypatch.delenv(name, raising=False)
    assert main(["serve", "api_server", str(internlm2_dir), *flags]) == 1  # before any model loading
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
