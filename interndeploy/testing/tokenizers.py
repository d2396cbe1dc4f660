"""Tiny tokenizers trained on the fly, for tests and test model directories.

Id layout (both builders), for a total vocabulary of V ids:
  0 ``<unk>``, 1 ``<s>`` (bos), 2 ``</s>`` (eos); then the learned vocabulary; then (padding with
  ``<|reserved_k|>`` if the corpus could not fill the learned part); then the extra tokens; and the
  InternLM2 specials last, in InternLM2's order: ``<|plugin|>`` V-6, ``<|interpreter|>`` V-5,
  ``<|action_end|>`` V-4, ``<|action_start|>`` V-3, ``<|im_end|>`` V-2, ``<|im_start|>`` V-1.
The BPE builder also has ``<think>``, ``</think>``, ``<tool_call>``, ``</tool_call>`` as added
*non-special* tokens (as Qwen3/Intern-S1 do) right before the InternLM2 block, after ``extra_special``.
Use :func:`special_token_ids` to get the ids without hard-coding them.
"""

from __future__ import annotations

import io
import json
import random
import struct
from collections.abc import Sequence
from pathlib import Path

UNK, BOS, EOS = "<unk>", "<s>", "</s>"
# Ascending id order, as in InternLM2's vocabulary (92538..92543 there).
INTERNLM2_SPECIALS: tuple[str, ...] = (
    "<|plugin|>",
    "<|interpreter|>",
    "<|action_end|>",
    "<|action_start|>",
    "<|im_end|>",
    "<|im_start|>",
)
REASONING_TOKENS: tuple[str, ...] = ("<think>", "</think>", "<tool_call>", "</tool_call>")

# GPT-2's pre-tokenizer pattern with digits one by one and Latin letters apart from Han characters: a run of
# letters takes at most a leading space, never punctuation, so a name such as `get_video` is made of the same
# pieces in a question, in a JSON string and in code (what a model copying names needs)
DIGIT_SPLIT_PATTERN = (
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{Latin}+|\p{Han}+| ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
# The same with spaces apart from words: a word is made of the same pieces after a space, an underscore or a
# quote, so "flight price" in a question and `flight_price` in a tools block share their tokens (what a small
# model copying names and values from its context needs most)
BARE_WORD_PATTERN = (
    r"'s|'t|'re|'ve|'m|'ll|'d|\p{Latin}+|\p{Han}+|\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)

CHATML_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_EN_WORDS = (
    "the quick brown fox jumps over lazy dog model token engine server request answer question "
    "hello world deploy inference batch cache memory kernel attention layer weight tensor python "
    "function call tool result system user assistant think reason because therefore however simple "
    "large small fast slow number value string list dict json name parameters arguments weather city "
    "today tomorrow please thank you good great time data train learn language chat stream output"
).split()
_ZH_WORDS = (
    "你好 世界 模型 推理 引擎 服务 请求 回答 问题 书生 浦语 上海 人工 智能 实验室 语言 中文 "
    "今天 明天 天气 城市 工具 调用 结果 系统 用户 助手 思考 因为 所以 但是 快速 简单 数据 "
    "训练 学习 对话 输出 我们 你们 他们 可以 需要 这个 那个 什么 为什么 怎么 谢谢 很好"
).split()
_PUNCT = (".", ",", "!", "?", ":", ";")


def default_corpus(n: int = 600, seed: int = 0) -> list[str]:
    """Deterministic mixed English/Chinese/code lines."""
    rng = random.Random(seed)
    lines: list[str] = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            words = rng.choices(_EN_WORDS, k=rng.randint(4, 14))
            line = " ".join(words).capitalize() + rng.choice(_PUNCT)
        elif kind == 1:
            line = "".join(rng.choices(_ZH_WORDS, k=rng.randint(3, 10))) + rng.choice(("。", "，", "！", "？"))
        elif kind == 2:
            a, b = rng.randint(0, 999), rng.randint(0, 99)
            name = rng.choice(_EN_WORDS)
            line = json.dumps({"name": name, "parameters": {"x": a, "y": b, "q": rng.choice(_ZH_WORDS)}})
            line += f"\n<{name}>{name}({a}, {b}) = {a + b}</{name}> | {name}_{b}"
        else:
            en = " ".join(rng.choices(_EN_WORDS, k=rng.randint(2, 6)))
            zh = "".join(rng.choices(_ZH_WORDS, k=rng.randint(2, 5)))
            line = f"{en} {zh} ({rng.randint(0, 9999)})\n  - {rng.choice(_EN_WORDS)}: {zh}"
        lines.append(line)
    return lines


def special_token_ids(vocab_size: int, extra: Sequence[str] = ()) -> dict[str, int]:
    """Ids of the fixed tokens for a builder called with this vocab_size / extra tokens list."""
    ids = {UNK: 0, BOS: 1, EOS: 2}
    tail = [*extra, *INTERNLM2_SPECIALS]
    for i, tok in enumerate(tail):
        ids[tok] = vocab_size - len(tail) + i
    return ids


def _added_entry(content: str, special: bool) -> dict[str, object]:
    return {
        "content": content,
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
        "special": special,
    }


def _write_config(
    out_dir: Path, added: dict[int, tuple[str, bool]], chat_template: str | None, **extra: object
) -> None:
    config: dict[str, object] = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": {str(i): _added_entry(c, s) for i, (c, s) in sorted(added.items())},
        "additional_special_tokens": list(INTERNLM2_SPECIALS),
        "bos_token": BOS,
        "clean_up_tokenization_spaces": False,
        "eos_token": EOS,
        "model_max_length": 32768,
        "pad_token": EOS,
        "unk_token": UNK,
        **extra,
    }
    if chat_template is not None:
        config["chat_template"] = chat_template
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")


def train_bpe_tokenizer(
    out_dir: Path,
    *,
    vocab_size: int = 512,
    extra_special: Sequence[str] = (),
    chat_template: str | None = None,
    corpus: list[str] | None = None,
    split_digits: bool = False,
    bare_words: bool = False,
    max_token_length: int | None = None,
) -> None:
    """Byte-level BPE (GPT-2/Qwen style) saved as tokenizer.json + tokenizer_config.json.

    `split_digits` pre-splits text with `DIGIT_SPLIT_PATTERN` instead of GPT-2's own: every digit is its own token
    and letters never merge with the punctuation before them; `bare_words` also keeps spaces apart from words
    (`BARE_WORD_PATTERN`); `max_token_length` caps the length of learned tokens (short pieces are all frequent, so a
    word never seen in training is still made of well-trained tokens)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    extra = [*extra_special, *REASONING_TOKENS]
    n_tail = len(extra) + len(INTERNLM2_SPECIALS)
    learned = vocab_size - n_tail
    if learned < 259 + 1:
        raise ValueError(f"vocab_size {vocab_size} too small for a byte-level BPE (need > {259 + n_tail})")

    tok = Tokenizer(models.BPE(unk_token=None))
    if split_digits or bare_words:
        pattern = BARE_WORD_PATTERN if bare_words else DIGIT_SPLIT_PATTERN
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=learned,
        special_tokens=[UNK, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        max_token_length=max_token_length,
    )
    tok.train_from_iterator(corpus if corpus is not None else default_corpus(), trainer=trainer)
    # A small corpus may not fill the learned part: pad so the tail ids stay where documented.
    n_pad = learned - tok.get_vocab_size()
    tok.add_special_tokens([AddedToken(f"<|reserved_{k}|>", special=True, normalized=False) for k in range(n_pad)])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in extra_special])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in REASONING_TOKENS])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in INTERNLM2_SPECIALS])
    assert tok.get_vocab_size() == vocab_size, (tok.get_vocab_size(), vocab_size)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, 1)]
    )
    tok.save(str(out_dir / "tokenizer.json"))

    added: dict[int, tuple[str, bool]] = {0: (UNK, True), 1: (BOS, True), 2: (EOS, True)}
    for k in range(n_pad):
        added[tok.token_to_id(f"<|reserved_{k}|>")] = (f"<|reserved_{k}|>", True)
    for t in (*extra_special, *INTERNLM2_SPECIALS):
        added[tok.token_to_id(t)] = (t, True)
    for t in REASONING_TOKENS:
        added[tok.token_to_id(t)] = (t, False)
    _write_config(out_dir, added, chat_template, tokenizer_class="PreTrainedTokenizerFast")


# --- sentencepiece -------------------------------------------------------------------------------
# ModelProto.pieces is field 1 (repeated SentencePiece{piece=1, score=2, type=3}); repeated fields
# may be appended anywhere in the wire format, so new pieces are added by concatenating bytes.
_USER_DEFINED = 4


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _piece_bytes(piece: str, score: float, kind: int) -> bytes:
    raw = piece.encode("utf-8")
    body = b"\x0a" + _varint(len(raw)) + raw + b"\x15" + struct.pack("<f", score) + b"\x18" + _varint(kind)
    return b"\x0a" + _varint(len(body)) + body


def train_sentencepiece_tokenizer(
    out_dir: Path,
    *,
    vocab_size: int = 1000,
    chat_template: str | None = None,
    corpus: list[str] | None = None,
    extra_special: Sequence[str] = (),
    add_dummy_prefix: bool = False,
) -> None:
    """InternLM2-like sentencepiece BPE saved as tokenizer.model + tokenizer_config.json naming the
    remote ``InternLM2Tokenizer`` (never executed by us). Byte fallback on; like InternLM2's model, no
    dummy prefix by default (``<|im_start|>assistant`` encodes ``assistant`` without a leading ▁)."""
    import sentencepiece as spm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tail = [*extra_special, *INTERNLM2_SPECIALS]
    learned = vocab_size - len(tail)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus if corpus is not None else default_corpus()),
        model_writer=buf,
        model_type="bpe",
        vocab_size=learned,
        hard_vocab_limit=False,
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=add_dummy_prefix,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        max_sentencepiece_length=16,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    proto = buf.getvalue()
    n_learned = spm.SentencePieceProcessor(model_proto=proto).get_piece_size()
    pieces = [f"<|reserved_{k}|>" for k in range(learned - n_learned)] + tail
    proto += b"".join(_piece_bytes(p, 0.0, _USER_DEFINED) for p in pieces)
    sp = spm.SentencePieceProcessor(model_proto=proto)
    assert sp.get_piece_size() == vocab_size, (sp.get_piece_size(), vocab_size)
    (out_dir / "tokenizer.model").write_bytes(proto)

    added: dict[int, tuple[str, bool]] = {0: (UNK, True), 1: (BOS, True), 2: (EOS, True)}
    for p in pieces:
        added[sp.piece_to_id(p)] = (p, True)
    _write_config(
        out_dir,
        added,
        chat_template,
        tokenizer_class="InternLM2Tokenizer",
        auto_map={
            "AutoTokenizer": [
                "tokenization_internlm2.InternLM2Tokenizer",
                "tokenization_internlm2_fast.InternLM2TokenizerFast",
            ]
        },
        decode_with_prefix_space=False,
        sp_model_kwargs=None,
    )
