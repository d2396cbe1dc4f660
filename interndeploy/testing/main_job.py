"""The README's main job: start `interndeploy serve api_server` and get a chat answer through
the OpenAI client. Until the embedded demo model lands it serves a small RANDOM-WEIGHT
InternLM2 directory built on the spot (its replies are noise, by design)."""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 300.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with code {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the server did not become healthy within {timeout:.0f}s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default=None, help="model to serve (default: build a small random-weight one)")
    p.add_argument("--prompt", default="Please tell me five scenic spots in Shanghai")
    args = p.parse_args(argv)

    from openai import OpenAI

    model = args.model
    if model is None:
        from interndeploy.testing.tiny_models import build_internlm2_dir

        out = Path(tempfile.mkdtemp(prefix="interndeploy-random-"))
        print(f"building a small RANDOM-WEIGHT InternLM2 model in {out} (the trained demo model is a later issue)")
        model = str(build_internlm2_dir(out, hidden_size=128, intermediate_size=256, num_hidden_layers=2))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "interndeploy.cli.main", "serve", "api_server", model,
           "--server-name", "127.0.0.1", "--server-port", str(port), "--log-level", "INFO"]
    print("$", " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd)
    try:
        _wait_healthy(url, proc)
        client = OpenAI(api_key="none", base_url=f"{url}/v1")
        model_id = client.models.list().data[0].id
        print(f"user> {args.prompt}")
        resp = client.chat.completions.create(
            model=model_id, messages=[{"role": "user", "content": args.prompt}], max_tokens=48, temperature=0.8
        )
        choice = resp.choices[0]
        print(f"assistant> {choice.message.content}")
        print(f"(finish_reason={choice.finish_reason}, usage={resp.usage.model_dump()})", flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
