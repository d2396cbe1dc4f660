from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from interndeploy.testing.tokenizers import (
    BOS,
    CHATML_TEMPLATE,
    EOS,
    INTERNLM2_SPECIALS,
    REASONING_TOKENS,
    UNK,
    default_corpus,
    special_token_ids,
    train_bpe_tokenizer,
    train_sentencepiece_tokenizer,
)
from interndeploy.tokenizer import Tokenizer, TokenizerError

BPE_VOCAB = 512
SP_VOCAB = 1000

TEXTS = [
    "Hello world, this is a simple test.",
    "  leading and  double  spaces, trailing ",
    "你好，世界！书生浦语是一个语言模型。",
    "emoji 😀🤖 and accents éàü",
    "<|im_start|>user\nWhat is 3+5?<|im_end|>\n<|im_start|>assistant\n",
    "<think>\nreasoning</think>answer<|action_start|><|plugin|>\n"
    '{"name": "add", "parameters": {"a": 3}}<|action_end|><|im_end|>',
    "<s>inline bos</s> <unk>",
    "",
    "\n\n",
]

# A tokenizer file that must never run.
REMOTE_CODE = "raise RuntimeError('remote code executed')\n"


def _plant_remote_code(d: Path) -> None:
    (d / "tokenization_internlm2.py").write_text(REMOTE_CODE)
    (d / "tokenization_internlm2_fast.py").write_text(REMOTE_CODE)


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("bpe")
    train_bpe_tokenizer(d, vocab_size=BPE_VOCAB, chat_template=CHATML_TEMPLATE)
    return d


@pytest.fixture(scope="module")
def sp_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("sp")
    train_sentencepiece_tokenizer(d, vocab_size=SP_VOCAB, chat_template=CHATML_TEMPLATE)
    _plant_remote_code(d)
    return d


@pytest.fixture(scope="module")
def hf_tok(bpe_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(bpe_dir))


# --- builders --------------------------------------------------------------------------------------
def test_builders_are_deterministic_with_documented_ids(tmp_path: Path) -> None:
    for k in range(2):
        train_bpe_tokenizer(tmp_path / f"bpe{k}", vocab_size=BPE_VOCAB)
        train_sentencepiece_tokenizer(tmp_path / f"sp{k}", vocab_size=SP_VOCAB)
    assert (tmp_path / "bpe0/tokenizer.json").read_bytes() == (tmp_path / "bpe1/tokenizer.json").read_bytes()
    assert (tmp_path / "sp0/tokenizer.model").read_bytes() == (tmp_path / "sp1/tokenizer.model").read_bytes()

    bpe = Tokenizer.from_dir(tmp_path / "bpe0")
    for tok, i in special_token_ids(BPE_VOCAB, REASONING_TOKENS).items():
        assert bpe.token_to_id(tok) == i, tok
    assert bpe.token_to_id("<|im_start|>") == BPE_VOCAB - 1
    sp = Tokenizer.from_dir(tmp_path / "sp0")
    for tok, i in special_token_ids(SP_VOCAB).items():
        assert sp.token_to_id(tok) == i, tok
    for t in (bpe, sp):
        assert (t.token_to_id(UNK), t.bos_token_id, t.eos_token_id) == (0, 1, 2)
        assert t.vocab_size == len(t)


def test_builders_pad_a_small_corpus(tmp_path: Path) -> None:
    train_bpe_tokenizer(tmp_path / "b", vocab_size=400, corpus=["tiny corpus"], extra_special=["<|x|>"])
    tok = Tokenizer.from_dir(tmp_path / "b")
    assert tok.vocab_size == 400
    assert tok.token_to_id("<|x|>") == special_token_ids(400, ["<|x|>", *REASONING_TOKENS])["<|x|>"]
    assert tok.decode(tok.encode("tiny corpus")) == "tiny corpus"


# --- fast (tokenizer.json) ---------------------------------------------------------------------------
def test_bpe_encode_decode_match_autotokenizer(bpe_dir: Path, hf_tok) -> None:
    tok = Tokenizer.from_dir(bpe_dir)
    assert tok.hf is not None
    for text in TEXTS + default_corpus(60, seed=7):
        ids = hf_tok(text).input_ids
        assert tok.encode(text) == ids, text
        assert tok.encode(text, add_bos=False) == hf_tok(text, add_special_tokens=False).input_ids
        for skip in (True, False):
            assert tok.decode(ids, skip, spaces_between_special_tokens=False) == hf_tok.decode(
                ids, skip_special_tokens=skip
            )
    assert tok.encode("hi")[0] == tok.bos_token_id == 1
    assert tok.add_bos


def test_bpe_properties(bpe_dir: Path, hf_tok) -> None:
    tok = Tokenizer.from_dir(bpe_dir)
    assert (tok.bos_token, tok.eos_token) == (BOS, EOS)
    assert tok.vocab_size == len(hf_tok) == BPE_VOCAB
    assert tok.all_special_ids == set(hf_tok.all_special_ids)
    specials = tok.special_tokens
    for t in (*INTERNLM2_SPECIALS, *REASONING_TOKENS, BOS, EOS, UNK):
        assert specials[t] == hf_tok.convert_tokens_to_ids(t)
    # <think> & co. are added but not special: skip_special_tokens keeps them.
    assert specials["<think>"] not in tok.all_special_ids
    assert tok.chat_template == CHATML_TEMPLATE
    ids = tok.encode("<|im_start|>user")
    assert tok.convert_ids_to_tokens(ids) == hf_tok.convert_ids_to_tokens(ids)
    assert tok.token_to_id("<|im_end|>") == BPE_VOCAB - 2
    assert tok.token_to_id("no-such-token") is None
    assert tok.model_max_length == 32768


def test_bpe_with_remote_tokenizer_class(bpe_dir: Path, tmp_path: Path) -> None:
    # Like real InternLM2 dirs: the config names a class transformers lacks, plus auto_map; tokenizer.json wins.
    d = tmp_path / "remote"
    shutil.copytree(bpe_dir, d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["tokenizer_class"] = "InternLM2Tokenizer"
    cfg["auto_map"] = {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]}
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    _plant_remote_code(d)
    ref, tok = Tokenizer.from_dir(bpe_dir), Tokenizer.from_dir(d)
    for text in TEXTS:
        assert tok.encode(text) == ref.encode(text)
    assert tok.chat_template == CHATML_TEMPLATE

    cfg["add_bos_token"] = False  # the remote classes honour it
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = Tokenizer.from_dir(d)
    assert not tok.add_bos and tok.encode("hi") == ref.encode("hi", add_bos=False)


@pytest.mark.parametrize("kind", ["bpe", "sp"])
def test_spaces_between_special_tokens(kind: str, bpe_dir: Path, sp_dir: Path) -> None:
    tok = Tokenizer.from_dir(bpe_dir if kind == "bpe" else sp_dir)
    ids = tok.encode("<|action_start|><|plugin|>", add_bos=False)
    assert len(ids) == 2
    assert tok.decode(ids, skip_special_tokens=False) == "<|action_start|> <|plugin|>"
    assert tok.decode(ids, False, spaces_between_special_tokens=False) == "<|action_start|><|plugin|>"
    assert tok.decode(ids) == ""
    ids = tok.encode('x<|action_start|><|plugin|>\n{"a": 1}<|action_end|>', add_bos=False)
    assert tok.decode(ids, False, True) == 'x <|action_start|> <|plugin|> \n{"a": 1} <|action_end|>'
    assert tok.decode(ids, True, True) == 'x\n{"a": 1}'


# --- sentencepiece (tokenizer.model) -------------------------------------------------------------------
def test_sentencepiece_internlm2_dir(sp_dir: Path) -> None:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(sp_dir / "tokenizer.model"))
    tok = Tokenizer.from_dir(sp_dir)  # the planted remote code would raise if it ran
    assert tok.hf is None
    assert (tok.bos_token, tok.bos_token_id, tok.eos_token, tok.eos_token_id) == (BOS, 1, EOS, 2)
    assert tok.add_bos and tok.vocab_size == SP_VOCAB
    assert tok.all_special_ids == {0, 1, 2, *range(SP_VOCAB - 6, SP_VOCAB)}
    assert tok.chat_template == CHATML_TEMPLATE
    im_start, im_end = tok.token_to_id("<|im_start|>"), tok.token_to_id("<|im_end|>")
    assert (im_start, im_end) == (SP_VOCAB - 1, SP_VOCAB - 2)

    text = "<|im_start|>user\n你好，世界😀<|im_end|>\n"
    assert tok.encode(text) == [1, im_start, *sp.encode("user\n你好，世界😀"), im_end, *sp.encode("\n")]
    # InternLM2's model has no dummy prefix: "assistant" after a special token gets no leading ▁.
    assert tok.convert_ids_to_tokens(tok.encode("<|im_start|>assistant", add_bos=False))[1][0] != "▁"

    emoji_ids = tok.encode("😀", add_bos=False)
    assert tok.convert_ids_to_tokens(emoji_ids) == ["<0xF0>", "<0x9F>", "<0x98>", "<0x80>"]
    for t in TEXTS + default_corpus(40, seed=3):
        ids = tok.encode(t)
        assert tok.decode(ids, skip_special_tokens=False, spaces_between_special_tokens=False) == BOS + t
        if not any(s in t for s in tok.special_tokens):
            assert ids == [1, *sp.encode(t)]
            assert tok.decode(ids) == sp.decode(ids[1:]) == t
    assert tok.decode([1, *sp.encode("中文"), 2, 99999]) == "中文"  # unknown ids decode to nothing


def test_sentencepiece_split_matches_hf_slow_backend(sp_dir: Path) -> None:
    # transformers' own slow sentencepiece backend splits added tokens the same way (it adds no BOS).
    from transformers.tokenization_utils_sentencepiece import SentencePieceBackend

    ref = SentencePieceBackend.from_pretrained(str(sp_dir), local_files_only=True, sp_model_kwargs={})
    tok = Tokenizer.from_dir(sp_dir)
    for t in TEXTS + [" x  <s> y", "<|im_end|><|im_start|>"]:
        assert tok.encode(t, add_bos=False) == ref(t).input_ids, t


def test_sentencepiece_added_token_outside_model(sp_dir: Path, tmp_path: Path) -> None:
    d = tmp_path / "sp"
    shutil.copytree(sp_dir, d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["added_tokens_decoder"][str(SP_VOCAB)] = {"content": "<|new|>", "special": True}
    cfg["add_bos_token"] = False
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = Tokenizer.from_dir(d)
    assert tok.vocab_size == SP_VOCAB + 1
    ids = tok.encode("a<|new|>b")
    assert ids[0] != 1 and SP_VOCAB in ids and not tok.add_bos
    assert tok.decode(ids, skip_special_tokens=False, spaces_between_special_tokens=False) == "a<|new|>b"
    assert tok.convert_ids_to_tokens([SP_VOCAB]) == ["<|new|>"]


def test_sentencepiece_with_dummy_prefix(tmp_path: Path) -> None:
    train_sentencepiece_tokenizer(tmp_path, vocab_size=SP_VOCAB, add_dummy_prefix=True)
    tok = Tokenizer.from_dir(tmp_path)
    for t in ["hello world", "你好 world 😀", " two  spaces"]:
        assert tok.decode(tok.encode(t)) == t


# --- errors & chat templates -----------------------------------------------------------------------
def test_missing_tokenizer_files(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(TokenizerError) as e:
        Tokenizer.from_dir(tmp_path)
    assert isinstance(e.value, ValueError)
    assert str(e.value) == f"model directory {tmp_path} has neither tokenizer.json nor tokenizer.model"


def test_chat_template_sources(sp_dir: Path, tmp_path: Path) -> None:
    d = tmp_path / "sp"
    shutil.copytree(sp_dir, d)
    cfg_path = d / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["chat_template"] = [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]
    cfg_path.write_text(json.dumps(cfg))
    assert Tokenizer.from_dir(d).chat_template == "D"
    (d / "chat_template.jinja").write_text("J")
    assert Tokenizer.from_dir(d).chat_template == "J"
    (d / "chat_template.jinja").unlink()
    del cfg["chat_template"]
    cfg_path.write_text(json.dumps(cfg))
    assert Tokenizer.from_dir(d).chat_template is None
    (d / "chat_template.json").write_text(json.dumps({"chat_template": "F"}))
    assert Tokenizer.from_dir(d).chat_template == "F"
