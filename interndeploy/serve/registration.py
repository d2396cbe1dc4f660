"""An api_server started with `--proxy-url URL` registers itself with that `serve proxy`, once it answers
/health, and deregisters when it stops. The proxy then asks it for /v1/models and routes to it."""

from __future__ import annotations

import logging
import threading
import time
from urllib.parse import urlparse

import httpx

from ..distributed import local_ip_towards

logger = logging.getLogger("interndeploy")


def node_url(server_name: str, server_port: int, proxy_url: str, https: bool = False) -> str:
    """The URL the proxy should use for this server: its bind address, or, when it binds every interface,
    this machine's address on the interface that routes to the proxy."""
    host = server_name
    if host in ("0.0.0.0", "::", ""):
        host = local_ip_towards(urlparse(proxy_url).hostname or "127.0.0.1")
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if https else 'http'}://{host}:{server_port}"


def register_when_up(proxy_url: str, url: str, model_name: str, api_key: str | None = None,
                     timeout_s: float = 600.0) -> threading.Thread:
    """In the background: wait for `url`/health, then POST /nodes/add to the proxy (retried until it answers)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def run() -> None:
        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=10.0, verify=False) as client:
            while time.monotonic() < deadline:
                try:
                    if client.get(url + "/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
            while time.monotonic() < deadline:
                try:
                    r = client.post(proxy_url.rstrip("/") + "/nodes/add", headers=headers,
                                    json={"url": url, "status": {"models": [model_name]}})
                    if r.status_code == 200:
                        logger.warning("registered %s with the proxy at %s", url, proxy_url)
                        return
                    logger.warning("the proxy at %s refused %s: %s", proxy_url, url, r.text[:500])
                except httpx.HTTPError as e:
                    logger.warning("cannot reach the proxy at %s (%s); retrying", proxy_url, e)
                time.sleep(2.0)
        logger.error("gave up registering %s with the proxy at %s", url, proxy_url)

    thread = threading.Thread(target=run, name="interndeploy-proxy-register", daemon=True)
    thread.start()
    return thread


def deregister(proxy_url: str, url: str, api_key: str | None = None) -> None:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        httpx.post(proxy_url.rstrip("/") + "/nodes/remove", params={"node_url": url}, headers=headers, timeout=5.0)
    except httpx.HTTPError:
        logger.debug("deregistering from %s failed", proxy_url, exc_info=True)
