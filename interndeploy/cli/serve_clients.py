"""`interndeploy serve api_client URL` and `interndeploy serve gradio URL_OR_MODEL`: chat with a server from the
terminal and from the browser (seed 004, sections 2.1.2 and 2.1.3), with LMDeploy's names and defaults."""

from __future__ import annotations

import argparse

from .args import add_engine_args, chat_template_config_from_args, engine_config_from_args

TOOLS_HELP = "a JSON file of OpenAI tool schemas to offer with every message (replies may then call them)"


def add_parsers(serve_sub: argparse._SubParsersAction) -> None:
    p = serve_sub.add_parser("api_client", help="chat with an OpenAI-compatible server in the terminal")
    p.add_argument("api_server_url", help="the server, e.g. http://localhost:23333")
    p.add_argument("--api-key", default=None, help="sent as `Authorization: Bearer KEY`")
    p.add_argument("--session-id", type=int, default=None, help="sent with each request (for /abort_request)")
    p.add_argument("--max-tokens", type=int, default=None, help="new tokens per reply (default: the server's)")
    p.add_argument("--tools", default=None, help=TOOLS_HELP)
    p.set_defaults(func=run_api_client)

    g = serve_sub.add_parser("gradio", help="a Gradio chat page, over a server URL or a model served in-process")
    g.add_argument("model_path_or_server",
                   help="a server URL (http://localhost:23333), or a model directory / repo id / `demo` to serve")
    g.add_argument("--server-name", default="0.0.0.0", help="host the page binds")
    g.add_argument("--server-port", type=int, default=6006, help="port the page binds")
    g.add_argument("--share", action="store_true", help="also publish the page through a gradio.live link")
    g.add_argument("--api-key", default=None, help="for a server URL: sent as `Authorization: Bearer KEY`")
    g.add_argument("--tools", default=None, help=TOOLS_HELP)
    add_engine_args(g)  # for a model served in-process
    g.set_defaults(func=run_gradio)


def run_api_client(args: argparse.Namespace) -> int:
    from ..serve.api_client import run_client
    from ..serve.client import load_tools

    return run_client(args.api_server_url, args.api_key, args.session_id, args.max_tokens, load_tools(args.tools))


def run_gradio(args: argparse.Namespace) -> int:
    from ..logger import setup_logging
    from ..serve.client import load_tools
    from ..serve.gradio_app import is_url, serve

    target = args.model_path_or_server
    engine_cfg = template_cfg = None
    if not is_url(target):
        engine_cfg = engine_config_from_args(args)
        template_cfg = chat_template_config_from_args(args)
        setup_logging(args.log_level)
    serve(target, api_key=args.api_key, tools=load_tools(args.tools), server_name=args.server_name,
          server_port=args.server_port, share=args.share, engine_config=engine_cfg, chat_template_config=template_cfg)
    return 0
