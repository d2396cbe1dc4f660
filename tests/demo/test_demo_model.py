"""The embedded demo model without a server: the directory, its tokenizer and template, replies through
pipeline("demo"), and the pieces that made it (corpus, held-out split, checkpoint conversion, the train command)."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
import torch

from interndeploy import GenerationConfig, pipeline
from interndeploy.chat.builtin import INTERN_S1_TEMPLATE
from interndeploy.demo import DEMO_NAME, corpus, demo_model_dir, evaluate
from interndeploy.model_dir import load_model_info, resolve_model_path
from interndeploy.testing.tiny_models import hf_reference_model
from interndeploy.testing.tokenizers import INTERNLM2_SPECIALS, REASONING_TOKENS
from interndeploy.tokenizer import Tokenizer

FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


@pytest.fixture(scope="module")
def demo_pipe():
    with pipeline(DEMO_NAME) as pipe:
        yield pipe


def test_directory_is_a_small_internlm2_checkpoint():
    d = demo_model_dir()
    assert sorted(p.name for p in d.iterdir()) == sorted(FILES)
    assert sum(p.stat().st_size for p in d.iterdir()) < 20 * 2**20
    info = load_model_info(DEMO_NAME)
    assert info.path == d and info.architecture == "InternLM2ForCausalLM" and info.model_type == "internlm2"
    assert info.config["torch_dtype"] == "bfloat16"


def test_name_resolves_to_the_package_unless_a_local_demo_directory_exists(tmp_path: Path, monkeypatch):
    assert resolve_model_path("demo") == demo_model_dir()
    (tmp_path / "demo").mkdir()
    monkeypatch.chdir(tmp_path)
    assert resolve_model_path("demo") == (tmp_path / "demo").resolve()


def test_tokenizer_has_the_internlm2_specials_and_the_reasoning_tokens():
    tok = Tokenizer.from_dir(demo_model_dir())
    for t in INTERNLM2_SPECIALS:
        assert tok.token_to_id(t) in tok.all_special_ids, t
    for t in REASONING_TOKENS:
        assert tok.encode(t, add_bos=False) == [tok.token_to_id(t)], t
    assert tok.bos_token == "<s>" and tok.eos_token == "</s>" and tok.add_bos
    assert tok.encode("12345", add_bos=False) == [tok.token_to_id(c) for c in "12345"]  # digits one by one


def test_template_is_intern_s1_with_thinking_on_by_default(demo_pipe):
    assert Tokenizer.from_dir(demo_model_dir()).chat_template == INTERN_S1_TEMPLATE
    tpl = demo_pipe.engine.chat_template
    assert tpl.family == "intern-s1" and tpl.thinking_default and tpl.supports_thinking
    assert "<|action_end|>" in tpl.stop_words
    gen = json.loads((demo_model_dir() / "generation_config.json").read_text())
    assert demo_pipe.tokenizer.token_to_id("<|im_end|>") in gen["eos_token_id"]


def test_chat_in_english_and_chinese(demo_pipe):
    gen = GenerationConfig(max_new_tokens=256)  # the self-introduction is about 100 tokens
    prompts = ["hi", "你好", "Who are you?", "你是谁"]
    replies = demo_pipe([[{"role": "user", "content": p}] for p in prompts], gen_config=gen, enable_thinking=False)
    for p, r in zip(prompts, replies, strict=True):
        assert r.finish_reason == "stop", (p, r.text)
        assert "<think>" not in r.text and r.text.strip(), (p, r.text)
    assert re.search(r"hello|hi", replies[0].text, re.I)
    assert "你好" in replies[1].text
    assert "InternDeploy" in replies[2].text and "InternDeploy" in replies[3].text


def test_thinking_opens_a_think_block_that_the_answer_follows(demo_pipe):
    resp = demo_pipe([{"role": "user", "content": "who are you"}], gen_config=GenerationConfig(max_new_tokens=128))
    reply = evaluate.read_reply(resp.text, evaluate.Request("intern-s1", []))
    assert reply.reasoning and reply.content and "InternDeploy" in reply.content


def test_seed_004_environment_turn_continues_with_mul(demo_pipe):
    """The call is dropped from the history and its result comes back as an environment message."""
    tools = [f.tool() for f in _seed_arithmetic_tools()]
    messages = [
        {"role": "user", "content": "Compute (3+5)*2"},
        {"role": "assistant", "content": None},
        {"role": "environment", "content": "3+5=8", "name": "plugin"},
    ]
    gen = GenerationConfig(max_new_tokens=160, skip_special_tokens=False)
    text = demo_pipe(messages, gen_config=gen, tools=tools).text
    reply = evaluate.read_reply(text, evaluate.Request("intern-s1", messages, tools))
    assert [(c.name, json.loads(c.arguments)) for c in reply.calls] == [("mul", {"a": 8, "b": 2})], text


def _seed_arithmetic_tools():
    from interndeploy.demo.tools import arithmetic_functions

    fns = arithmetic_functions(random.Random(0), seed_like=True)
    return [fns["add"], fns["mul"]]


# ---------------------------------------------------------------- how it was made


def test_corpus_is_deterministic_and_renders_as_the_engine_does():
    a, b = corpus.generate(300, seed=7), corpus.generate(300, seed=7)
    assert [corpus.render(x) for x in a] == [corpus.render(x) for x in b]
    tasks = {ex.task for ex in a}
    assert {"tool", "tool_answer", "arith", "arith_answer", "chat"} <= tasks
    for ex in a:
        prompt, completion = corpus.render(ex)
        assert completion.endswith(("<|im_end|>", "<|action_end|>")), completion
        if ex.template == "intern-s1":
            assert prompt.startswith("<s>") and prompt.endswith("<think>" if corpus.thinking_on(ex) else "\n")
        if ex.reply.get("tool_calls") and ex.template == "qwen3":
            assert "<tool_call>" in completion


def test_held_out_names_and_numbers_never_occur_in_training():
    train_names, train_numbers = set(), set()
    for ex in corpus.generate(4000, seed=0):
        prompt, completion = corpus.render(ex)
        train_numbers.update(re.findall(r"\d+(?:\.\d+)?", prompt + completion))
        for t in ex.tools or []:
            train_names.add(t["function"]["name"])
            train_names.update(t["function"]["parameters"]["properties"])
    held_names, held_numbers = set(), set()
    for fmt in corpus.FORMATS:
        for ex in corpus.heldout_tool_calls(200, fmt):
            held_names.add(ex.expect["name"])
            held_names.update(ex.expect["arguments"])
            held_numbers.update(str(abs(v)) for v in ex.expect["arguments"].values() if isinstance(v, int | float))
    assert len(held_names) > 400 and not held_names & train_names
    assert len(held_numbers) > 100 and not held_numbers & train_numbers


def test_llama_weights_round_trip_through_the_internlm2_layout(tmp_path: Path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from interndeploy.testing.tiny_models import internlm2_config, llama_to_internlm2

    shape = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2)  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=300, tie_word_embeddings=False, rms_norm_eps=1e-5, **shape)).eval()
    config = {**internlm2_config(**shape), "vocab_size": 300, "bos_token_id": 1, "eos_token_id": 2}
    from safetensors.torch import save_file

    save_file(llama_to_internlm2(model.state_dict(), config), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(config))
    x = torch.randint(0, 300, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(hf_reference_model(tmp_path)(x).logits, model(x).logits)


def test_train_command_writes_a_loadable_model_dir(tmp_path: Path):
    from interndeploy.demo import train

    out = tmp_path / "m"
    train.main(["--out", str(out), "--device", "cpu", "--steps", "1", "--examples", "600",
                "--tokenizer-examples", "600", "--batch-tokens", "2048", "--workers", "1", "--eval", "0"])  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    with pipeline(str(out)) as pipe:
        assert pipe.engine.chat_template.family == "intern-s1"
        assert pipe("hi", gen_config=GenerationConfig(max_new_tokens=2)).generate_token_len == 2


def test_train_continues_from_a_directory_with_its_tokenizer_and_weights(tmp_path: Path):
    from interndeploy.demo import train

    first, second = tmp_path / "a", tmp_path / "b"
    common = ["--device", "cpu", "--steps", "1", "--examples", "300", "--tokenizer-examples", "300",
              "--batch-tokens", "2048", "--workers", "1", "--eval", "0"]  # fmt: skip
    train.main(["--out", str(first), *common])
    again = ["--init", str(first), "--seed", "1", "--lr", "0", "--families", "tool=1"]
    train.main(["--out", str(second), *again, *common])
    assert (second / "tokenizer.json").read_bytes() == (first / "tokenizer.json").read_bytes()
    # lr 0: one step leaves the weights as they were
    a, b = hf_reference_model(first), hf_reference_model(second)
    x = torch.randint(0, a.config.vocab_size, (1, 12))
    torch.testing.assert_close(a(x).logits, b(x).logits)


def test_recipe_runs_the_shipped_steps_in_a_row(tmp_path: Path, monkeypatch):
    from interndeploy.demo import train

    runs = []
    monkeypatch.setattr(train, "train", runs.append)
    train.main(["--out", str(tmp_path), "--recipe", "--device", "cpu"])
    assert [r.steps for r in runs] == [6251, 6520, 6218]
    assert [r.init for r in runs] == [None, str(tmp_path), str(tmp_path)]
    assert [r.seed for r in runs] == [0, 1, 2] and runs[2].families["tool"] == 75
    with pytest.raises(SystemExit):
        train.main(["--out", str(tmp_path), "--families", "tool"])
