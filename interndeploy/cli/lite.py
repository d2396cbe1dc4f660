"""`interndeploy lite auto_awq MODEL --work-dir DIR`: W4A16 weight quantization (AWQ), LMDeploy's flags and defaults."""

from __future__ import annotations

import argparse


def str2bool(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    v = value.strip().lower()
    if v in ("1", "true", "yes", "y", "on"):
        return True
    if v in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {value!r}")


def add_parser(sub: argparse._SubParsersAction) -> None:
    lite = sub.add_parser("lite", help="compress a model (AWQ int4 weights)").add_subparsers(
        dest="lite_cmd", metavar="KIND"
    )
    p = lite.add_parser("auto_awq", help="quantize weights to int4 with AWQ (W4A16)")
    p.add_argument("model", help="a local model directory or a Hugging Face repo id in the local cache")
    p.add_argument("--work-dir", default="./work_dir", help="where to write the quantized model")
    p.add_argument("--calib-dataset", default="ptb",
                   help="ptb, wikitext2, c4 or pileval (from the local `datasets` cache), or a .txt / .jsonl file")
    p.add_argument("--calib-samples", type=int, default=128, help="number of calibration windows")
    p.add_argument("--calib-seqlen", type=int, default=2048, help="tokens per calibration window")
    p.add_argument("--batch-size", type=int, default=1, help="calibration windows per forward pass")
    p.add_argument("--w-bits", type=int, default=4, help="weight bits (4)")
    p.add_argument("--w-sym", action="store_true", help="symmetric quantization (no zero points)")
    p.add_argument("--w-group-size", type=int, default=128, help="input channels per quantization group")
    p.add_argument("--search-scale", nargs="?", const=True, default=False, type=str2bool, metavar="BOOL",
                   help="grid-search the scale exponent and the clipping range (default: fixed ratio 0.5)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--dtype", choices=["auto", "float16", "bfloat16"], default="auto",
                   help="compute dtype on GPU, and the dtype of the unquantized tensors written (auto: float16)")
    p.add_argument("--revision", default=None, help="Hugging Face cache revision")
    p.add_argument("--download-dir", default=None, help="accepted for LMDeploy compatibility")
    p.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"])
    p.set_defaults(func=_auto_awq)


def _auto_awq(args: argparse.Namespace) -> int:
    from ..logger import setup_logging
    from ..quant.auto_awq import auto_awq

    setup_logging(args.log_level)
    auto_awq(
        args.model,
        work_dir=args.work_dir,
        calib_dataset=args.calib_dataset,
        calib_samples=args.calib_samples,
        batch_size=args.batch_size,
        calib_seqlen=args.calib_seqlen,
        w_bits=args.w_bits,
        w_sym=args.w_sym,
        w_group_size=args.w_group_size,
        search_scale=args.search_scale,
        device=args.device,
        revision=args.revision,
        dtype=args.dtype,
        download_dir=args.download_dir,
    )
    return 0
