"""pipeline() end to end on a tiny InternLM2 checkpoint, against transformers' own Llama."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from interndeploy import EngineConfig, GenerationConfig, pipeline

PROMPTS = [
    "Hello there, how are you today?",
    "Tell me a story",
    "上海有哪些好玩的地方？请告诉我五个景点",
    "a",
    "The quick brown fox jumps over the lazy dog and keeps running far away",
]
GREEDY = GenerationConfig(max_new_tokens=10, ignore_eos=True, logprobs=1)


def hf_greedy(model, ids: list[int], steps: int) -> tuple[list[int], list[float]]:
    tokens, logprobs = list(ids), []
    with torch.no_grad():
        for _ in range(steps):
            logits = model(torch.tensor([tokens])).logits[0, -1].float()
            lp = torch.log_softmax(logits, -1)
            nxt = int(torch.argmax(logits))
            tokens.append(nxt)
            logprobs.append(float(lp[nxt]))
    return tokens[len(ids) :], logprobs


@pytest.fixture(scope="module")
def reference(internlm2_dir: Path, internlm2_pipe):
    from interndeploy.testing.tiny_models import hf_reference_model

    model = hf_reference_model(internlm2_dir)
    out = {}
    for p in PROMPTS:
        ids = internlm2_pipe.tokenizer.encode(p)
        out[p] = hf_greedy(model, ids, GREEDY.max_new_tokens)
    return out


def test_do_preprocess_false_tokenizes_like_hf(internlm2_dir: Path, internlm2_pipe):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(internlm2_dir))
    for p in PROMPTS:
        assert internlm2_pipe.tokenizer.encode(p) == hf(p).input_ids


def test_batch_greedy_equals_transformers(internlm2_pipe, reference):
    outs = internlm2_pipe(PROMPTS, gen_config=GREEDY, do_preprocess=False)
    assert len(outs) == len(PROMPTS)
    for p, out in zip(PROMPTS, outs, strict=True):
        ref_tokens, ref_lps = reference[p]
        assert out.token_ids == ref_tokens, p
        assert out.finish_reason == "length"
        assert out.generate_token_len == GREEDY.max_new_tokens
        assert out.input_token_len == len(internlm2_pipe.tokenizer.encode(p))
        ours = [next(iter(d.values())) for d in out.logprobs]
        assert ours == pytest.approx(ref_lps, abs=1e-3)


def test_one_at_a_time_equals_batch(internlm2_pipe, reference):
    for p in PROMPTS[:3]:
        out = internlm2_pipe(p, gen_config=GREEDY, do_preprocess=False)
        assert out.token_ids == reference[p][0]


@pytest.mark.parametrize(
    "cfg",
    [
        EngineConfig(block_size=16, max_prefill_token_num=5, cpu_kv_budget_gib=0.25),  # chunked prefill
        EngineConfig(block_size=16, cache_max_entry_count=4, max_batch_size=8),  # 4 blocks: preemption
        EngineConfig(block_size=16, enable_prefix_caching=True, max_batch_size=2, cpu_kv_budget_gib=0.25),
    ],
    ids=["chunked", "preempt", "prefix-cache"],
)
def test_scheduling_never_changes_greedy_output(internlm2_dir: Path, reference, cfg: EngineConfig):
    with pipeline(str(internlm2_dir), backend_config=cfg) as pipe:
        shared = "Hello there, how are you today? " * 3  # shared prefix spanning full blocks
        prompts = PROMPTS + [shared + "tell me", shared + "go on"]
        for _ in range(2):  # the second round hits the prefix cache
            outs = pipe(prompts, gen_config=GREEDY, do_preprocess=False)
            for p, out in zip(PROMPTS, outs, strict=False):
                assert out.token_ids == reference[p][0], p
        engine = pipe.engine.engine
        if cfg.enable_prefix_caching:
            assert engine.block_manager.stats.hit_tokens > 0
        bm = engine.block_manager
        assert bm.num_free_blocks == bm.num_blocks  # idle: all free or evictable


def test_preemption_happens_with_a_tiny_cache(internlm2_dir: Path, reference):
    cfg = EngineConfig(block_size=16, cache_max_entry_count=6, max_batch_size=8)  # the longest needs 5 blocks
    with pipeline(str(internlm2_dir), backend_config=cfg) as pipe:
        gen = GREEDY.replace(max_new_tokens=24, logprobs=None)
        outs = pipe(PROMPTS, gen_config=gen, do_preprocess=False)
        assert pipe.engine.engine.stats.num_preemptions > 0
        for p, out in zip(PROMPTS, outs, strict=True):
            assert out.token_ids[:10] == reference[p][0]
            assert len(out.token_ids) == 24


def test_seed_reproduces_whatever_the_batch(internlm2_pipe):
    gen = GenerationConfig(max_new_tokens=12, do_sample=True, temperature=1.5, top_k=0, random_seed=1234,
                           ignore_eos=True)
    alone = internlm2_pipe("Tell me a story", gen_config=gen)
    other = GenerationConfig(max_new_tokens=12, do_sample=True, temperature=1.0, ignore_eos=True)
    batch = internlm2_pipe(["Hi", "Tell me a story", "Bye"], gen_config=[other, gen, other])
    assert batch[1].token_ids == alone.token_ids
    different = internlm2_pipe("Tell me a story", gen_config=gen.replace(random_seed=99))
    assert different.token_ids != alone.token_ids


def test_n_samples(internlm2_pipe):
    gen = GenerationConfig(n=3, max_new_tokens=8, do_sample=True, temperature=2.0, top_k=0, ignore_eos=True,
                           random_seed=None)
    outs = internlm2_pipe("Tell me a joke", gen_config=gen)
    assert isinstance(outs, list) and len(outs) == 3
    assert all(len(o.token_ids) == 8 for o in outs)
    assert len({tuple(o.token_ids) for o in outs}) > 1


def test_stop_words_across_tokens(internlm2_pipe):
    gen = GenerationConfig(max_new_tokens=16, ignore_eos=True)
    full = internlm2_pipe("The quick brown fox", gen_config=gen)
    text = full.text
    tok = internlm2_pipe.tokenizer
    pieces = [tok.decode([t]) for t in full.token_ids]
    # a stop string that starts inside one token and ends inside a later one
    start = len(pieces[0]) + len(pieces[1]) - 1 if len(pieces[1]) > 1 else len(pieces[0]) + len(pieces[1])
    stop = text[start : start + 4]
    assert len(stop) == 4
    out = internlm2_pipe("The quick brown fox", gen_config=gen.replace(stop_words=[stop], ignore_eos=False))
    assert out.finish_reason == "stop"
    assert out.text == text[: text.index(stop)]
    assert stop not in out.text


def test_stream_infer_yields_pieces_that_join_to_the_text(internlm2_pipe):
    gen = GenerationConfig(max_new_tokens=12, ignore_eos=True)
    full = internlm2_pipe("Tell me a story", gen_config=gen)
    pieces = list(internlm2_pipe.stream_infer("Tell me a story", gen_config=gen))
    assert "".join(p.text for p in pieces) == full.text
    assert pieces[-1].finish_reason == "length"


def test_abort_midway_frees_every_block(internlm2_dir: Path):
    cfg = EngineConfig(block_size=16, enable_prefix_caching=True, cpu_kv_budget_gib=0.25)
    rng = random.Random(0)
    with pipeline(str(internlm2_dir), backend_config=cfg) as pipe:
        gen = GenerationConfig(max_new_tokens=30, ignore_eos=True)
        for i in range(12):
            stream = pipe.stream_infer([f"prompt {i} " * rng.randint(1, 8), "other"], gen_config=gen)
            for j, _ in enumerate(stream):
                if j == rng.randint(0, 6):
                    break
            stream.close()
        engine = pipe.engine.engine
        import time

        deadline = time.time() + 10
        while engine.requests and time.time() < deadline:
            time.sleep(0.05)
        assert not engine.requests
        bm = engine.block_manager
        assert bm.num_free_blocks == bm.num_blocks
        bm.check([])


def test_chat_template_and_messages(internlm2_pipe):
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    ids = internlm2_pipe.engine.encode_prompt(msgs)
    text = internlm2_pipe.tokenizer.decode(ids, skip_special_tokens=False, spaces_between_special_tokens=False)
    assert "<|im_start|>system\nbe brief<|im_end|>" in text
    assert text.startswith("<s><|im_start|>") and text.endswith("<|im_start|>assistant\n")
    assert ids.count(internlm2_pipe.tokenizer.bos_token_id) == 1
    out = internlm2_pipe(msgs, gen_config=GenerationConfig(max_new_tokens=4))
    assert out.input_token_len == len(ids)


def test_multi_turn_chat_session(internlm2_pipe):
    gen = GenerationConfig(max_new_tokens=4, ignore_eos=True)
    s = internlm2_pipe.chat("hi", gen_config=gen)
    assert len(s.history) == 2 and s.response.generate_token_len == 4
    s = internlm2_pipe.chat("and then?", session=s, gen_config=gen)
    assert [m["role"] for m in s.history] == ["user", "assistant", "user", "assistant"]


def test_generation_config_json_sets_defaults(tmp_path: Path, internlm2_dir: Path):
    import json
    import shutil

    d = tmp_path / "m"
    shutil.copytree(internlm2_dir, d)
    gen = json.loads((d / "generation_config.json").read_text())
    gen.update(do_sample=True, temperature=0.7, top_p=0.8, top_k=40, repetition_penalty=1.005)
    (d / "generation_config.json").write_text(json.dumps(gen))
    with pipeline(str(d), backend_config=EngineConfig(cpu_kv_budget_gib=0.1)) as pipe:
        g = pipe.engine.default_gen_config
        assert (g.do_sample, g.temperature, g.top_p, g.top_k, g.repetition_penalty) == (True, 0.7, 0.8, 40, 1.005)
        assert set(gen["eos_token_id"]) <= set(pipe.engine.eos_token_ids)


def test_builtin_template_by_name(internlm2_dir: Path):
    from interndeploy import ChatTemplateConfig

    cfg = ChatTemplateConfig(model_name="internlm3")
    with pipeline(str(internlm2_dir), backend_config=EngineConfig(cpu_kv_budget_gib=0.1),
                  chat_template_config=cfg) as pipe:
        text = pipe.engine.render_prompt("hi")
        assert "You are an AI assistant whose name is InternLM" in text
        assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
        assert pipe("hi", gen_config=GenerationConfig(max_new_tokens=3)).input_token_len > 20


def test_sentencepiece_checkpoint_matches_transformers(tmp_path: Path):
    from interndeploy.testing.tiny_models import build_internlm2_dir, hf_reference_model

    d = build_internlm2_dir(tmp_path / "sp", tokenizer="sentencepiece", seed=3, num_key_value_heads=4,
                            rope_scaling={"type": "dynamic", "factor": 2.0})
    model = hf_reference_model(d)
    with pipeline(str(d), backend_config=EngineConfig(block_size=16, cpu_kv_budget_gib=0.1)) as pipe:
        for p in ["上海的景点", "hello world, hello again"]:
            ids = pipe.tokenizer.encode(p)
            out = pipe(p, gen_config=GREEDY, do_preprocess=False)
            assert out.token_ids == hf_greedy(model, ids, GREEDY.max_new_tokens)[0]


def test_memory_report_is_printed(internlm2_dir: Path, caplog: pytest.LogCaptureFixture):
    import logging

    from interndeploy.engine.async_engine import AsyncEngine

    logger = logging.getLogger("interndeploy")
    logger.propagate = True
    try:
        with caplog.at_level(logging.INFO, logger="interndeploy"):
            eng = AsyncEngine(str(internlm2_dir), EngineConfig(cache_max_entry_count=0.5, cpu_kv_budget_gib=0.01))
            eng.shutdown()
    finally:
        logger.propagate = False
    report = "\n".join(r.getMessage() for r in caplog.records)
    kv = eng.engine.runner.kv
    assert kv.num_blocks == int(0.01 * (1 << 30) * 0.5) // kv.bytes_per_block
    assert "weights" in report and "kv cache" in report and f"{kv.num_blocks} blocks" in report
