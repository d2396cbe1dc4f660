"""`interndeploy chat MODEL`: talk to a model in the terminal.

Input ends on an empty line (double Enter); `exit` quits; `end` starts a new session.
"""

from __future__ import annotations

import argparse
import sys

from .args import (
    add_engine_args,
    add_generation_args,
    chat_template_config_from_args,
    engine_config_from_args,
    generation_config_from_args,
)

PROMPT = "\ndouble enter to end input >>> "


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chat", help="chat with a model in the terminal")
    p.add_argument("model_path", help="a local model directory or a Hugging Face repo id in the local cache")
    add_engine_args(p)
    add_generation_args(p)
    p.set_defaults(func=run)


def read_message() -> str | None:
    """Lines until an empty one; None at end of input."""
    print(PROMPT, end="", flush=True)
    lines: list[str] = []
    while True:
        line = sys.stdin.readline()
        if not line:
            return "\n".join(lines) if lines else None
        line = line.rstrip("\n")
        if not line:
            if lines:
                return "\n".join(lines)
            continue
        lines.append(line)


def run(args: argparse.Namespace) -> int:
    from ..api import Session, pipeline

    engine_cfg = engine_config_from_args(args)
    pipe = pipeline(
        args.model_path,
        backend_config=engine_cfg,
        chat_template_config=chat_template_config_from_args(args),
        log_level=args.log_level,
    )
    gen = generation_config_from_args(args, pipe.engine.default_gen_config)
    print(f"chatting with {args.model_path} (session_len {pipe.engine.session_len}); "
          "`end` starts a new session, `exit` quits", flush=True)
    session = Session(1)
    try:
        while True:
            text = read_message()
            if text is None or text.strip() == "exit":
                break
            if text.strip() == "end":
                session = Session(session.session_id + 1)
                print("(new session)", flush=True)
                continue
            try:
                for resp in pipe.chat(text, session=session, gen_config=gen, stream_response=True):
                    print(resp.text, end="", flush=True)
                print(flush=True)
            except ValueError as e:  # e.g. the conversation outgrew session_len
                print(f"error: {e}", flush=True)
    finally:
        pipe.close()
    return 0
