"""The `interndeploy` command line."""

from __future__ import annotations

import argparse
import logging
import sys

from . import bench, chat, lite, serve


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="interndeploy", description="Deploy and serve InternLM-family models")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chat.add_parser(sub)
    serve.add_parser(sub)
    bench.add_parser(sub)
    lite.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        return 130
    except (ValueError, OSError) as e:
        # user-facing errors (bad flags, missing files, unsupported models) are one line, no traceback
        logging.getLogger("interndeploy").debug("error detail", exc_info=True)
        print(f"interndeploy: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
