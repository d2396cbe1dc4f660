"""`interndeploy serve proxy`: route OpenAI requests over api_servers (LMDeploy's flags and defaults), and the
api_server side of it, `--proxy-url`."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

from ..config import ConfigError


def add_parser(serve_sub: argparse._SubParsersAction) -> None:
    p = serve_sub.add_parser("proxy", help="one endpoint routing requests over several api_servers")
    p.add_argument("--server-name", default="0.0.0.0", help="host to bind")
    p.add_argument("--server-port", type=int, default=8000, help="port to bind")
    p.add_argument("--serving-strategy", default="Hybrid", choices=["Hybrid", "DistServe"],
                   help="Hybrid: every node prefills and decodes (DistServe is not supported)")
    p.add_argument("--routing-strategy", default="min_expected_latency",
                   choices=["random", "min_expected_latency", "min_observed_latency"],
                   help="random: weighted by node speed; min_expected_latency: fewest in-flight requests per "
                        "speed; min_observed_latency: lowest mean latency of recent requests")
    p.add_argument("--api-keys", nargs="+", default=None, help="accepted API keys (Authorization: Bearer KEY)")
    p.add_argument("--ssl", action="store_true", help="serve HTTPS with SSL_KEYFILE and SSL_CERTFILE from the env")
    p.add_argument("--health-interval", type=float, default=None,
                   help="seconds between /health probes of the nodes (default 5)")
    p.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"])
    for flag in ("--disable-cache-status", "--dummy-prefill", "--disable-gdr"):
        p.add_argument(flag, action="store_true", help="accepted for LMDeploy compatibility (DistServe only)")
    for flag in ("--migration-protocol", "--link-type"):
        p.add_argument(flag, default=None, help="accepted for LMDeploy compatibility (DistServe only)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from ..logger import setup_logging
    from ..serve.proxy import build_proxy_app

    if args.serving_strategy != "Hybrid":
        raise ConfigError("--serving-strategy DistServe (disaggregated prefill/decode) is not supported; use Hybrid")
    keyfile = certfile = None
    if args.ssl:
        keyfile, certfile = os.environ.get("SSL_KEYFILE"), os.environ.get("SSL_CERTFILE")
        if not keyfile or not certfile:
            raise ConfigError("--ssl needs the environment variables SSL_KEYFILE and SSL_CERTFILE")
    setup_logging(args.log_level)
    app = build_proxy_app(args.routing_strategy, args.api_keys, args.health_interval)
    print(f"interndeploy: proxy at {'https' if keyfile else 'http'}://{args.server_name}:{args.server_port} "
          f"(routing {args.routing_strategy}); api_servers join with --proxy-url", flush=True)
    uvicorn.run(app, host=args.server_name, port=args.server_port, log_level=args.log_level.lower(),
                ssl_keyfile=keyfile, ssl_certfile=certfile)
    return 0


def join_proxy(args: argparse.Namespace, model_name: str, https: bool = False) -> Callable[[], None] | None:
    """With --proxy-url: register this api_server once it answers; returns the deregistration to run at exit."""
    if not getattr(args, "proxy_url", None):
        return None
    from ..serve.registration import deregister, node_url, register_when_up

    url = node_url(args.server_name, args.server_port, args.proxy_url, https)
    key = (args.api_keys or [None])[0]
    register_when_up(args.proxy_url, url, model_name, key)
    return lambda: deregister(args.proxy_url, url, key)
