from __future__ import annotations

import random

import pytest

from interndeploy.engine.detokenizer import IncrementalDetokenizer
from interndeploy.testing.tokenizers import default_corpus, train_bpe_tokenizer, train_sentencepiece_tokenizer
from interndeploy.tokenizer import Tokenizer

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "你好，世界！书生浦语是上海人工智能实验室的语言模型。",
    "emoji 🤖😀 split over byte tokens, accents éàü, 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "  leading,  double  and trailing spaces  \n\n",
    "<|im_start|>assistant\n<think>\nlet me think</think>The answer<|action_start|><|plugin|>\n"
    '{"name": "add", "parameters": {"a": 3, "b": 5}}<|action_end|><|im_end|>',
    "<s></s><|im_end|>x<|im_start|> <|im_end|>",
]


@pytest.fixture(scope="module", params=["bpe", "sp", "sp_dummy_prefix"])
def tok(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    d = tmp_path_factory.mktemp(request.param)
    if request.param == "bpe":
        train_bpe_tokenizer(d)
    else:
        train_sentencepiece_tokenizer(d, add_dummy_prefix=request.param == "sp_dummy_prefix")
    return Tokenizer.from_dir(d)


def _counting(fn, lengths: list[int]):
    def counted(ids_: list[int], *args: object, **kwargs: object) -> str:
        lengths.append(len(ids_))
        return fn(ids_, *args, **kwargs)

    return counted


def _stream(detok: IncrementalDetokenizer, ids: list[int], chunks: list[int] | None = None) -> list[str]:
    out, i = [], 0
    for n in chunks or [1] * len(ids):
        out.append(detok.step(ids[i : i + n]))
        i += n
    assert i >= len(ids)
    return out


@pytest.mark.parametrize("skip", [True, False])
@pytest.mark.parametrize("spaces", [True, False])
def test_streaming_equals_full_decode(tok: Tokenizer, skip: bool, spaces: bool) -> None:
    rng = random.Random(0)
    for text in TEXTS + default_corpus(20, seed=11):
        ids = tok.encode(text)
        full = tok.decode(ids, skip, spaces)
        for chunks in (None, [rng.randint(1, 5) for _ in ids]):
            detok = IncrementalDetokenizer(tok, skip_special_tokens=skip, spaces_between_special_tokens=spaces)
            pieces = _stream(detok, ids, chunks)
            pieces.append(detok.flush())
            assert "".join(pieces) == full == detok.text, (text, pieces)
            assert not detok.stopped
            assert not any("\ufffd" in p for p in pieces)


def test_multibyte_char_split_over_tokens(tok: Tokenizer) -> None:
    text = "ok 😀🤖 done"
    ids = tok.encode(text, add_bos=False)
    # The emoji really is split: some prefix of the ids decodes to a dangling U+FFFD.
    assert any(tok.decode(ids[:k]).endswith("\ufffd") for k in range(1, len(ids)))
    detok = IncrementalDetokenizer(tok)
    pieces = _stream(detok, ids)
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) + detok.flush() == text


def test_flush_drops_incomplete_char(tok: Tokenizer) -> None:
    ids = tok.encode("abc 😀", add_bos=False)
    detok = IncrementalDetokenizer(tok)
    text = "".join(_stream(detok, ids[:-1])) + detok.flush()
    assert text == "abc " and detok.text == "abc "
    assert detok.flush() == ""


def test_stop_string_spanning_tokens(tok: Tokenizer) -> None:
    text = "The answer is 42. STOP NOW please continue 你好"
    ids = tok.encode(text, add_bos=False)
    stop = "STOP NOW"
    spans = [k for k in range(len(ids) + 1) if stop in tok.decode(ids[:k])]
    assert spans and len(tok.encode(stop, add_bos=False)) > 1
    detok = IncrementalDetokenizer(tok, stop_strings=["never", stop])
    pieces = _stream(detok, ids)
    assert detok.stopped and detok.stop_string == stop
    assert "".join(pieces) == detok.text == "The answer is 42. "
    # Stopped exactly at the token completing the stop string; nothing after it is ever returned.
    assert all(p == "" for p in pieces[spans[0] :])
    assert detok.step(tok.encode(" more", add_bos=False)) == "" and detok.flush() == ""


def test_include_stop_str_in_output(tok: Tokenizer) -> None:
    text = "first line\nEND tail text"
    detok = IncrementalDetokenizer(tok, stop_strings=["END"], include_stop_str_in_output=True)
    out = "".join(_stream(detok, tok.encode(text)))
    assert out == detok.text == "first line\nEND"
    assert detok.stopped and detok.stop_string == "END"


def test_stop_on_special_token_text(tok: Tokenizer) -> None:
    ids = tok.encode("call<|action_start|><|plugin|>\n{}<|action_end|> after", add_bos=False)
    detok = IncrementalDetokenizer(
        tok, skip_special_tokens=False, spaces_between_special_tokens=False, stop_strings=["<|action_end|>"]
    )
    assert "".join(_stream(detok, ids)) == "call<|action_start|><|plugin|>\n{}"
    assert detok.stopped


def test_hold_back_only_possible_stop_prefixes(tok: Tokenizer) -> None:
    ids = tok.encode("a b STO c", add_bos=False)
    detok = IncrementalDetokenizer(tok, stop_strings=["STOP"])
    emitted = ""
    for i, tid in enumerate(ids):
        emitted += detok.step([tid])
        decoded = tok.decode(ids[: i + 1])
        # Held back: at most len("STOP") - 1 chars, and only a suffix that could start "STOP".
        held = decoded[len(emitted) :]
        assert decoded.startswith(emitted) and len(held) <= 3
        assert held == "" or "STOP".startswith(held)
    assert emitted + detok.flush() == "a b STO c"
    assert not detok.stopped


def test_flush_releases_stop_prefix(tok: Tokenizer) -> None:
    detok = IncrementalDetokenizer(tok, stop_strings=["<END>"])
    out = "".join(_stream(detok, tok.encode("value: 12 <EN", add_bos=False)))
    assert out == "value: 12 "
    assert detok.flush() == "<EN" and detok.text == "value: 12 <EN"


def test_earliest_stop_wins(tok: Tokenizer) -> None:
    detok = IncrementalDetokenizer(tok, stop_strings=["cde", "bc", "xyz"])
    out = "".join(detok.step([t]) for t in tok.encode("abcdef xyz", add_bos=False))
    assert out == "a" and detok.stop_string == "bc"
    # Many tokens in one step: same answer as token by token.
    detok = IncrementalDetokenizer(tok, stop_strings=["cde", "bc", "xyz"])
    assert detok.step(tok.encode("abcdef xyz", add_bos=False)) == "a" and detok.stop_string == "bc"


def test_long_stream_is_incremental(tok: Tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = tok.encode(" ".join(default_corpus(200, seed=2)), add_bos=False)
    decoded_lengths: list[int] = []
    monkeypatch.setattr(tok, "decode", _counting(tok.decode, decoded_lengths))
    monkeypatch.setattr(tok, "decode_plain", _counting(tok.decode_plain, decoded_lengths))
    detok = IncrementalDetokenizer(tok, stop_strings=["<never>"])
    text = "".join(_stream(detok, ids)) + detok.flush()
    monkeypatch.undo()
    assert text == tok.decode(ids)
    assert len(ids) > 1000 and max(decoded_lengths) <= 16


def test_ids_past_the_vocab_keep_the_window_short(tok: Tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    # a model whose vocab is padded past the tokenizer's emits ids that decode to nothing: the window must not
    # grow with them (each step's decode would then cost the whole output so far)
    real = tok.encode("hello world, the answer is 42.", add_bos=False)
    unknown = [tok.vocab_size + 1000 + k for k in range(300)]
    ids = real[:3] + unknown + real[3:]
    decoded_lengths: list[int] = []
    monkeypatch.setattr(tok, "decode", _counting(tok.decode, decoded_lengths))
    monkeypatch.setattr(tok, "decode_plain", _counting(tok.decode_plain, decoded_lengths))
    detok = IncrementalDetokenizer(tok)
    text = "".join(_stream(detok, ids)) + detok.flush()
    monkeypatch.undo()
    assert max(decoded_lengths) <= 40
    assert text.replace(" ", "") == tok.decode(ids).replace(" ", "")  # a space at the seam may go
