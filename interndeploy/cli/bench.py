"""`interndeploy bench throughput|latency|serve`."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from .args import add_engine_args, engine_config_from_args

if TYPE_CHECKING:
    from ..engine.async_engine import AsyncEngine


def _dataset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", choices=["random"], default="random")
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=256)
    p.add_argument("--range-ratio", type=float, default=0.0)
    p.add_argument("--num-prompts", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON line instead of a table")


def add_parser(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="measure speed").add_subparsers(dest="bench_cmd", metavar="KIND")
    p = bench.add_parser("throughput", help="offline throughput through the engine")
    p.add_argument("model", help="model directory, or a shape name: internlm2_5-1_8b, internlm2_5-7b, "
                                 "internlm2_5-7b-mha (kv heads = heads), internlm3-8b")
    _dataset_args(p)
    p.add_argument("--concurrency", type=int, default=None, help="requests in flight (default: all)")
    add_engine_args(p)
    p.set_defaults(func=_throughput)
    p = bench.add_parser("latency", help="batch-1 decode latency and roofline fraction")
    p.add_argument("model")
    _dataset_args(p)
    add_engine_args(p)
    p.set_defaults(func=_latency)
    p = bench.add_parser("serve", help="HTTP load against a running server")
    p.add_argument("url")
    _dataset_args(p)
    p.add_argument("--model", default=None, help="model id (default: the server's first)")
    p.add_argument("--request-rate", type=float, default=float("inf"), help="requests/s, Poisson; inf = all at once")
    p.add_argument("--max-concurrency", type=int, default=None)
    p.add_argument("--api-key", default=None)
    p.add_argument("--vocab-size", type=int, default=92544, help="token ids are drawn below this")
    p.set_defaults(func=_serve)


def _print(title: str, figures: dict, as_json: bool) -> None:
    from ..bench.stats import format_table

    print(json.dumps({"bench": title, **figures}) if as_json else format_table(title, figures), flush=True)


def _device_name(engine: AsyncEngine) -> str:
    import torch

    dev = engine.engine.runner.device
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"


def _throughput(args: argparse.Namespace) -> int:
    from ..bench.throughput import RandomDataset, open_engine, run_throughput
    from ..logger import setup_logging

    setup_logging(args.log_level)
    engine = open_engine(args.model, engine_config_from_args(args))
    try:
        data = RandomDataset(args.input_len, args.output_len, args.range_ratio, args.num_prompts, args.seed)
        figures = run_throughput(engine, data, args.concurrency)
        _print(f"throughput {args.model} on {_device_name(engine)}", figures, args.json)
    finally:
        engine.shutdown()
    return 0


def _latency(args: argparse.Namespace) -> int:
    from ..bench.throughput import open_engine, run_latency
    from ..logger import setup_logging

    setup_logging(args.log_level)
    engine = open_engine(args.model, engine_config_from_args(args))
    try:
        figures = run_latency(engine, args.input_len, args.output_len)
        _print(f"latency {args.model} on {_device_name(engine)}", figures, args.json)
    finally:
        engine.shutdown()
    return 0


def _serve(args: argparse.Namespace) -> int:
    from ..bench.serving import run_serving
    from ..bench.throughput import RandomDataset

    data = RandomDataset(args.input_len, args.output_len, args.range_ratio, args.num_prompts, args.seed)
    figures = run_serving(args.url, data, args.vocab_size, args.model, args.request_rate, args.max_concurrency,
                          args.api_key)
    _print(f"serve {args.url}", figures, args.json)
    return 0
