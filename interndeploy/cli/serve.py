"""`interndeploy serve api_server MODEL`: the OpenAI-compatible HTTP server, with LMDeploy's flags and defaults."""

from __future__ import annotations

import argparse
import logging
import os

from ..config import ConfigError
from .args import add_engine_args, chat_template_config_from_args, engine_config_from_args

logger = logging.getLogger("interndeploy")


def add_parser(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="serve a model over HTTP")
    serve.set_defaults(func=lambda args: (serve.print_help(), 2)[1])
    serve_sub = serve.add_subparsers(dest="serve_command", metavar="SERVER")
    p = serve_sub.add_parser("api_server", help="OpenAI-compatible API server")
    p.add_argument("model_path", help="a local model directory or a Hugging Face repo id in the local cache")
    s = p.add_argument_group("server")
    s.add_argument("--server-name", default="0.0.0.0", help="host to bind")
    s.add_argument("--server-port", type=int, default=23333, help="port to bind")
    s.add_argument("--model-name", default=None, help="the model id clients see (default: the model path)")
    s.add_argument("--reasoning-parser", default=None,
                   help="intern-s1 | qwen-qwq | deepseek-r1 | default | qwen3 (default: by chat template)")
    s.add_argument("--tool-call-parser", default=None,
                   help="intern-s1 | internlm | qwen3 | qwen | hermes (default: by chat template)")
    s.add_argument("--api-keys", nargs="+", default=None, help="accepted API keys (Authorization: Bearer KEY)")
    s.add_argument("--ssl", action="store_true", help="serve HTTPS with SSL_KEYFILE and SSL_CERTFILE from the env")
    s.add_argument("--allow-origins", nargs="+", default=None, help="CORS allowed origins (CORS is off without)")
    s.add_argument("--allow-credentials", action="store_true", help="CORS: allow credentials")
    s.add_argument("--allow-methods", nargs="+", default=["*"], help="CORS allowed methods")
    s.add_argument("--allow-headers", nargs="+", default=["*"], help="CORS allowed headers")
    s.add_argument("--max-concurrent-requests", type=int, default=None,
                   help="generation requests served at once; more are answered 503")
    s.add_argument("--max-log-len", type=int, default=None, help="characters of each prompt to log (at INFO)")
    s.add_argument("--disable-fastapi-docs", action="store_true", help="no Swagger UI, ReDoc or /openapi.json")
    s.add_argument("--disable-metrics", action="store_true", help="no Prometheus /metrics")
    s.add_argument("--enable-metrics", action="store_true", help="accepted for LMDeploy 0.9; metrics are on")
    s.add_argument("--enable-abort-handling", action="store_true",
                   help="accepted for LMDeploy compatibility; /abort_request is always on")
    d = p.add_argument_group("distributed (not available yet)")
    d.add_argument("--proxy-url", default=None, help="register with a `serve proxy` at this URL")
    d.add_argument("--nnodes", type=int, default=1, help="nodes of a multi-node deployment")
    d.add_argument("--node-rank", type=int, default=0, help="this node's rank")
    add_engine_args(p)
    p.set_defaults(func=run)


def check_server_args(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """Fail with one line on flags that cannot work; the (keyfile, certfile) pair for --ssl."""
    from ..chat.reasoning import get_reasoning_parser
    from ..chat.tool_calls import get_tool_parser

    if args.proxy_url:
        raise ConfigError("--proxy-url is not available yet in interndeploy (serve proxy); run without it")
    if args.nnodes > 1 or args.node_rank:
        raise ConfigError("--nnodes/--node-rank are not available yet in interndeploy (multi-node); run without it")
    if args.reasoning_parser:
        get_reasoning_parser(args.reasoning_parser)
    if args.tool_call_parser:
        get_tool_parser(args.tool_call_parser)
    if args.max_concurrent_requests is not None and args.max_concurrent_requests < 1:
        raise ConfigError(f"--max-concurrent-requests must be >= 1, got {args.max_concurrent_requests}")
    if not args.ssl:
        return None, None
    keyfile, certfile = os.environ.get("SSL_KEYFILE"), os.environ.get("SSL_CERTFILE")
    if not keyfile or not certfile:
        raise ConfigError("--ssl needs the environment variables SSL_KEYFILE and SSL_CERTFILE")
    for name, path in (("SSL_KEYFILE", keyfile), ("SSL_CERTFILE", certfile)):
        if not os.path.isfile(path):
            raise ConfigError(f"{name}={path} is not a file")
    return keyfile, certfile


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from ..engine.async_engine import AsyncEngine
    from ..logger import setup_logging
    from ..serve.openai import ServerSettings, build_app

    keyfile, certfile = check_server_args(args)
    engine_cfg = engine_config_from_args(args)
    template_cfg = chat_template_config_from_args(args)
    setup_logging(args.log_level)
    engine = AsyncEngine(args.model_path, engine_cfg, template_cfg, model_name=args.model_name)
    try:
        settings = ServerSettings(
            model_name=args.model_name,
            api_keys=list(args.api_keys or []),
            reasoning_parser=args.reasoning_parser,
            tool_call_parser=args.tool_call_parser,
            allow_origins=args.allow_origins,
            allow_credentials=args.allow_credentials,
            allow_methods=args.allow_methods,
            allow_headers=args.allow_headers,
            max_concurrent_requests=args.max_concurrent_requests,
            max_log_len=args.max_log_len,
            disable_docs=args.disable_fastapi_docs,
            enable_metrics=not args.disable_metrics,
        )
        app = build_app(engine, settings)
        scheme = "https" if keyfile else "http"
        print(f"interndeploy: serving {engine.model_name} at {scheme}://{args.server_name}:{args.server_port} "
              f"(session_len {engine.session_len}; --backend {args.backend}: pytorch and turbomind both run "
              "interndeploy's own engine)", flush=True)
        uvicorn.run(
            app,
            host=args.server_name,
            port=args.server_port,
            log_level=args.log_level.lower(),
            ssl_keyfile=keyfile,
            ssl_certfile=certfile,
            timeout_graceful_shutdown=10,
        )
    finally:
        engine.shutdown()
    return 0
