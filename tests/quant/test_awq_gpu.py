"""AWQ on the GPU: `auto_awq --device cuda` and serving the result through the Triton kernels and CUDA graphs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    pytest.importorskip("triton")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from interndeploy.quant.auto_awq import auto_awq
    from interndeploy.testing.tiny_models import build_internlm2_dir

    root = tmp_path_factory.mktemp("awq-gpu")
    fp = build_internlm2_dir(root / "fp", hidden_size=512, intermediate_size=1024, num_hidden_layers=4,
                             num_attention_heads=8, num_key_value_heads=2, torch_dtype="bfloat16")
    calib = root / "calib.txt"
    calib.write_text(" ".join(f"Sentence {i} tells of rivers, foxes and trains." for i in range(2000)))
    q = auto_awq(str(fp), work_dir=str(root / "q"), calib_dataset=str(calib), calib_samples=16, calib_seqlen=256,
                 w_group_size=128, search_scale=True, device="cuda")
    return fp, q


def _prefill_logits(model: torch.nn.Module, prompts: list[list[int]], device: str) -> torch.Tensor:
    from interndeploy.testing.attention import make_prefill_metadata, positions_for
    from interndeploy.worker.forward_context import forward_context

    lens = [len(p) for p in prompts]
    meta = make_prefill_metadata(lens, 16, device=device)
    ids = torch.tensor([t for p in prompts for t in p], device=device)
    with torch.no_grad(), forward_context(meta):
        return model.compute_logits(model(ids, positions_for(lens, lens, device))).float().cpu()


def test_quantized_model_on_cuda_matches_its_cpu_reference(dirs: tuple[Path, Path]) -> None:
    """The same AWQ weights: Triton kernels in bf16 on CUDA vs the dequantize-once path in fp32 on CPU."""
    from interndeploy.testing.compare import load_our_model, random_prompts

    _, q = dirs
    cpu = load_our_model(q, torch.float32)
    gpu = load_our_model(q, torch.bfloat16).to("cuda")
    assert gpu.model.layers[0].mlp.down_proj.qweight.dtype == torch.int32
    prompts = random_prompts(cpu.config.vocab_size, [40, 3, 17])
    ref, out = _prefill_logits(cpu, prompts, "cpu"), _prefill_logits(gpu, prompts, "cuda")
    assert float((ref - out).norm() / ref.norm()) < 6e-2  # bf16 activations through 4 layers


def test_pipeline_on_cuda_with_graphs(dirs: tuple[Path, Path]) -> None:
    """Greedy decode through CUDA graphs (GEMV path) equals eager decode, and the fp model stays close."""
    from interndeploy import EngineConfig, GenerationConfig, pipeline

    fp, q = dirs
    gen = GenerationConfig(max_new_tokens=24, do_sample=False, ignore_eos=True)
    prompts = ["The river carries", "Sentence 7 tells of", "A small fox"]
    outs = {}
    for eager in (False, True):
        pipe = pipeline(str(q), backend_config=EngineConfig(eager_mode=eager, cache_max_entry_count=0.1))
        try:
            assert pipe.engine.engine.runner.weight_format == "awq"
            outs[eager] = [r.token_ids for r in pipe(prompts, gen_config=gen)]
        finally:
            pipe.close()
    assert outs[False] == outs[True]
