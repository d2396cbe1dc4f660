"""The README's main job until the embedded demo model lands: build a small random-weight
InternLM2 directory and chat with it through pipeline(). Its replies are noise, by design."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model-dir", default=None, help="where to build the model (default: a temp dir)")
    p.add_argument("--prompt", default="Please tell me five scenic spots in Shanghai")
    args = p.parse_args(argv)

    from interndeploy import GenerationConfig, pipeline
    from interndeploy.testing.tiny_models import build_internlm2_dir

    out = Path(args.model_dir or tempfile.mkdtemp(prefix="interndeploy-random-"))
    print(f"building a small RANDOM-WEIGHT InternLM2 model in {out} (the trained demo model is a later issue)")
    model_dir = build_internlm2_dir(out, hidden_size=128, intermediate_size=256, num_hidden_layers=2)
    with pipeline(str(model_dir), log_level="INFO") as pipe:
        gen = GenerationConfig(max_new_tokens=24)
        print(f"user> {args.prompt}")
        resp = pipe(args.prompt, gen_config=gen)
        print(f"assistant> {resp.text!r}")
        print(f"({resp.input_token_len} prompt tokens, {resp.generate_token_len} generated, "
              f"finish_reason={resp.finish_reason})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
