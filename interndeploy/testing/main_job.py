"""The README's main job: start `interndeploy serve api_server demo` (the embedded demo model, no network)
and get a chat answer through the OpenAI client."""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time


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
    p.add_argument("--model", default="demo", help="model to serve (default: demo, the embedded demo model)")
    p.add_argument("--prompt", default="Please tell me five scenic spots in Shanghai")
    args = p.parse_args(argv)

    from openai import OpenAI

    model = args.model
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
            model=model_id, messages=[{"role": "user", "content": args.prompt}], max_tokens=256, temperature=0.8
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
