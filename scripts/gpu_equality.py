"""On a GPU: greedy tokens of a tiny InternLM2 are the same with and without CUDA graphs, batched or not.

fp32, so the check is about the engine's logic: in bf16 a different batch size can pick a different
GEMM algorithm, and random weights have near-ties that flip greedy tokens (as in any engine).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from interndeploy import EngineConfig, GenerationConfig, pipeline
from interndeploy.testing.tiny_models import build_internlm2_dir

d = build_internlm2_dir(Path(tempfile.mkdtemp()) / "m", hidden_size=256, intermediate_size=512, num_attention_heads=8,
                        num_key_value_heads=2, num_hidden_layers=3)
prompts = [f"prompt number {i} " * (1 + i % 7) for i in range(40)]
gen = GenerationConfig(max_new_tokens=48, ignore_eos=True)
results = {}
for name, cfg in {
    "eager": EngineConfig(eager_mode=True, block_size=16, dtype="float32"),
    "graphs": EngineConfig(block_size=16, dtype="float32"),
    "graphs-chunked-prefix": EngineConfig(block_size=16, max_prefill_token_num=64, enable_prefix_caching=True,
                                          dtype="float32"),
}.items():
    with pipeline(str(d), backend_config=cfg) as pipe:
        results[name] = [r.token_ids for r in pipe(prompts, gen_config=gen, do_preprocess=False)]
        results[name + "-single"] = [pipe(prompts[3], gen_config=gen, do_preprocess=False).token_ids]
base = results["eager"]
ok = True
for name, toks in results.items():
    ref = base if not name.endswith("single") else [base[3]]
    same = sum(a == b for a, b in zip(toks, ref, strict=True))
    print(f"{name}: {same}/{len(ref)} sequences identical to eager batched")
    ok &= same == len(ref)
sys.exit(0 if ok else 1)
