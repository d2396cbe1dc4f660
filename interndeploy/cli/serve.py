"""`interndeploy serve api_server MODEL`: the OpenAI-compatible HTTP server, with LMDeploy's flags and defaults."""

from __future__ import annotations

import argparse
import logging
import os

from ..config import ConfigError, VisionConfig
from ..demo import DEMO_MODEL_ID, DEMO_NAME
from ..vl.media import MediaPolicy
from . import dp_launcher, serve_clients, serve_proxy
from .args import add_engine_args, chat_template_config_from_args, engine_config_from_args

logger = logging.getLogger("interndeploy")


def add_parser(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="serve a model over HTTP")
    serve.set_defaults(func=lambda args: (serve.print_help(), 2)[1])
    serve_sub = serve.add_subparsers(dest="serve_command", metavar="SERVER")
    p = serve_sub.add_parser("api_server", help="OpenAI-compatible API server")
    p.add_argument("model_path", nargs="?", default="demo",
                   help="a local model directory, a Hugging Face repo id in the local cache, or `demo` (default)")
    s = p.add_argument_group("server")
    s.add_argument("--server-name", default="0.0.0.0", help="host to bind")
    s.add_argument("--server-port", type=int, default=23333, help="port to bind")
    s.add_argument("--model-name", default=None, help="the model id clients see (default: the model path)")
    s.add_argument("--reasoning-parser", default=None,
                   help="intern-s1 | qwen-qwq | deepseek-r1 | default | qwen3 (default: by chat template)")
    s.add_argument("--tool-call-parser", default=None,
                   help="intern-s1 | internlm | qwen3 | qwen | hermes (default: by chat template)")
    s.add_argument("--api-keys", nargs="+", default=None,
                   help="accepted API keys (Authorization: Bearer KEY), needed on every route but /health")
    s.add_argument("--ssl", action="store_true", help="serve HTTPS with SSL_KEYFILE and SSL_CERTFILE from the env")
    s.add_argument("--allow-origins", nargs="+", default=None, help="CORS allowed origins (CORS is off without)")
    s.add_argument("--allow-credentials", action="store_true", help="CORS: allow credentials")
    s.add_argument("--allow-methods", nargs="+", default=["*"], help="CORS allowed methods")
    s.add_argument("--allow-headers", nargs="+", default=["*"], help="CORS allowed headers")
    s.add_argument("--max-concurrent-requests", type=int, default=None,
                   help="generation requests served at once; more are answered 503")
    s.add_argument("--max-queued-requests", type=int, default=None,
                   help="samples waiting for their first token (n counts n); more are answered 503 (default: no limit)")
    s.add_argument("--max-n", type=int, default=None,
                   help="samples one request may ask for (n; n x prompts for /v1/completions); more are a 400 "
                   "(default: 128)")
    s.add_argument("--max-request-bytes", type=int, default=32 << 20,
                   help="largest request body accepted; larger ones are answered 413 (default: 32 MiB)")
    s.add_argument("--shutdown-timeout", type=float, default=10.0,
                   help="seconds in-flight requests may run on after SIGTERM before they are aborted; 0: abort at once "
                   "(default: 10)")
    s.add_argument("--max-log-len", type=int, default=None, help="characters of each prompt to log (at INFO)")
    s.add_argument("--disable-fastapi-docs", action="store_true", help="no Swagger UI, ReDoc or /openapi.json")
    s.add_argument("--disable-metrics", action="store_true", help="no Prometheus /metrics")
    s.add_argument("--enable-metrics", action="store_true", help="accepted for LMDeploy 0.9; metrics are on")
    s.add_argument("--enable-abort-handling", action="store_true",
                   help="accepted for LMDeploy compatibility; /abort_request is always on")
    d = p.add_argument_group("distributed (see interndeploy/distributed.py for the addresses they bind)")
    d.add_argument("--proxy-url", default=None, help="register with a `serve proxy` at this URL")
    d.add_argument("--nnodes", type=int, default=1, help="nodes of a multi-node deployment")
    d.add_argument("--node-rank", type=int, default=0, help="this node's rank")
    m = p.add_argument_group("images and videos (vision-language models)")
    m.add_argument("--media-io-kwargs", type=_json_object, default=None,
                   help='how media are read, as vLLM takes it: \'{"video": {"num_frames": 32, "fps": 2}}\'')
    m.add_argument("--allowed-media-domains", nargs="+", default=None, metavar="DOMAIN",
                   help="hosts (and their subdomains) image_url / video_url may fetch from; '*' any public host; "
                        "default: none (data: URLs only)")
    m.add_argument("--allow-private-media-addresses", action="store_true",
                   help="let media URLs reach loopback, private and link-local addresses (off: refused)")
    add_engine_args(p)
    p.set_defaults(func=run)
    serve_clients.add_parsers(serve_sub)  # api_client, gradio
    serve_proxy.add_parser(serve_sub)


def _json_object(text: str) -> dict:
    import json

    try:
        value = json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def media_settings(args: argparse.Namespace) -> tuple[VisionConfig, MediaPolicy]:
    """--media-io-kwargs (checked here, so a typo fails at start) and the media URL policy."""
    from ..vl.video import VideoIO

    try:
        VideoIO.from_kwargs(args.media_io_kwargs)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    unknown = set(args.media_io_kwargs or {}) - {"video", "image"}
    if unknown:
        raise ConfigError(f"--media-io-kwargs: unknown media kinds {sorted(unknown)} (known: video)")
    policy = MediaPolicy(allowed_domains=tuple(args.allowed_media_domains or ()),
                         allow_private_addresses=args.allow_private_media_addresses)
    return VisionConfig(media_io_kwargs=args.media_io_kwargs), policy


def check_server_args(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """Fail with one line on flags that cannot work; the (keyfile, certfile) pair for --ssl."""
    from ..chat.reasoning import get_reasoning_parser
    from ..chat.tool_calls import get_tool_parser

    dp_launcher.check_distributed_args(args)
    if args.reasoning_parser:
        get_reasoning_parser(args.reasoning_parser)
    if args.tool_call_parser:
        get_tool_parser(args.tool_call_parser)
    for flag, value, least in (("--max-concurrent-requests", args.max_concurrent_requests, 1),
                               ("--max-queued-requests", args.max_queued_requests, 1), ("--max-n", args.max_n, 1),
                               ("--max-request-bytes", args.max_request_bytes, 1024),
                               ("--shutdown-timeout", args.shutdown_timeout, 0)):
        if value is not None and value < least:
            raise ConfigError(f"{flag} must be >= {least}, got {value}")
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
    from ..engine.async_engine import AsyncEngine
    from ..logger import setup_logging
    from ..serve.openai import ServerSettings, build_app
    from ..serve.openai.shutdown import run_server

    keyfile, certfile = check_server_args(args)
    engine_cfg = engine_config_from_args(args)
    if engine_cfg.dp > 1 and dp_launcher.replica_rank() is None:
        return dp_launcher.launch(args, engine_cfg)  # one server per DP engine, each registering with the proxy
    template_cfg = chat_template_config_from_args(args)
    if args.model_name is None and args.model_path == DEMO_NAME:
        args.model_name = DEMO_MODEL_ID
    setup_logging(args.log_level)
    vision_cfg, media_policy = media_settings(args)
    engine = AsyncEngine(args.model_path, engine_cfg, template_cfg, model_name=args.model_name,
                         vision_config=vision_cfg)
    leave_proxy = None
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
            max_queued_requests=args.max_queued_requests,
            max_n=args.max_n or ServerSettings.max_n,
            max_request_bytes=args.max_request_bytes,
            max_log_len=args.max_log_len,
            disable_docs=args.disable_fastapi_docs,
            enable_metrics=not args.disable_metrics,
            media_policy=media_policy,
        )
        app = build_app(engine, settings)
        leave_proxy = serve_proxy.join_proxy(args, engine.model_name, https=bool(keyfile))
        scheme = "https" if keyfile else "http"
        print(f"interndeploy: serving {engine.model_name} at {scheme}://{args.server_name}:{args.server_port} "
              f"(session_len {engine.session_len}; --backend {args.backend}: pytorch and turbomind both run "
              "interndeploy's own engine)", flush=True)
        run_server(app, host=args.server_name, port=args.server_port, log_level=args.log_level.lower(),
                   shutdown_timeout=args.shutdown_timeout, ssl_keyfile=keyfile, ssl_certfile=certfile)
    finally:
        if leave_proxy is not None:
            leave_proxy()
        engine.shutdown()
    return 0
