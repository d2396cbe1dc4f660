"""InternS1Tokenizer on a tiny Intern-S1-style directory, against an independent re-statement of the reference.

`Reference` below follows tokenization_interns1.py (InternS1Tokenizer of internlm/Intern-S1; the same code is
transformers PR #39722's tokenization_intern_s1.py) the way it is written: tokenize to token *strings* (trie split,
auto-detection markers, a stack of sub-tokenizers, GPT-2 BPE written out here from vocab.json + merges.txt), then
convert the strings to ids with a second stack; decode maps ids to strings and reads them through the byte-level
table. Only the span detector (a regex + rules, tested on its own in test_tokenizer_interns1_detect.py) is shared.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import unicodedata
from pathlib import Path

import pytest
import regex

from interndeploy.engine.detokenizer import IncrementalDetokenizer
from interndeploy.testing.tokenizer_interns1 import InternS1Layout, build_interns1_tokenizer
from interndeploy.tokenizer import Tokenizer, TokenizerError
from interndeploy.tokenizer_interns1 import INTERN_S1_OFFSETS, InternS1Tokenizer, read_offsets
from interndeploy.tokenizer_interns1_detect import AutoTag, auto_tag

PAT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
PROTEIN = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ"

TEXTS = [
    "Hello world, this is a simple test.",
    "你好，世界！emoji 😀🤖 and accents éàü",
    "Describe <SMILES>C1=CC=C(C=C1)C=O</SMILES> and CC1=CC=CC=C1C=O",
    "<SELFIES>CCO</SELFIES> <IUPAC>2-methylpropanoic acid</IUPAC> <FASTA>MKTAYIAKQRQ</FASTA>",
    f"The protein {PROTEIN} binds CC(C)(C)OC(=O)N[C@@H](CC1=CC=CC=C1)C(=O)O.",
    "<SMILES>CC<|im_end|>O</SMILES> after",  # a special token inside a tag keeps the tag open
    "<|im_start|>user\n<think>C1=CC=C(C=C1)C=O</think><SMILES>CCO</SMILES><|im_end|>",
    "<SMILES>CxC é中 O</SMILES> <FASTA>MKV lower xyz</FASTA> <IUPAC>2-methyl\npropane</IUPAC>",  # unknown pieces
    "<MOLFORMULA>C6H15O6</MOLFORMULA> and <MOLFORMULA>CC1=CC=CC=C1C=O</MOLFORMULA> vs CC1=CC=CC=C1C=O",
    "<SMILES>C<MOLFORMULA>O</MOLFORMULA>C</SMILES>",  # a guard inside a tag
    "<SMILES><IUPAC>methanol</IUPAC>CCO</SMILES>",  # nested tags
    "</SMILES>CCO <SMILES>CCO",  # closing nothing; a tag left open
    "</FASTA><SMILES>CCO</FASTA>CCO",  # mismatched close pops the top anyway
    "<|im_start|><SMILES_AUTO_DETECT><|im_end|>CCO",  # a piece spelled like a virtual tag acts as one
    "C" * 30 + " " + "A" * 27,
    "a▁b ▁",  # the BPE reads U+2581 as a space
    "cafe\u0301 <SMILES>C\u0301C</SMILES>",  # NFC first
    "",
    "\n\n  ",
]


class Reference:
    """InternS1Tokenizer (slow, string based), re-stated."""

    BEGIN = {"<SMILES>": "SMILES", "<SELFIES>": "SMILES", "<IUPAC>": "IUPAC", "<FASTA>": "FASTA"}
    AUTO_BEGIN = {"<SMILES_AUTO_DETECT>": "SMILES", "<FASTA_AUTO_DETECT>": "FASTA"}
    GUARD_BEGIN, GUARD_END = "<MOLFORMULA>", "</MOLFORMULA>"

    def __init__(self, d: Path, offsets: dict[str, int]) -> None:
        import sentencepiece as spm

        self.encoder = json.loads((d / "vocab.json").read_text())
        self.decoder = {i: t for t, i in self.encoder.items()}
        self.merges = [tuple(line.split()) for line in (d / "merges.txt").read_text().splitlines()[1:] if line]
        self.ranks = {m: r for r, m in enumerate(self.merges)}
        config = json.loads((d / "tokenizer_config.json").read_text())
        self.added = {e["content"]: int(i) for i, e in config["added_tokens_decoder"].items()}
        self.special = {t for t in ["<|im_end|>", "<|endoftext|>", *config["additional_special_tokens"]]}
        self.sp = {m: spm.SentencePieceProcessor(model_file=str(d / f"tokenizer_{m}.model")) for m in offsets}
        self.offset = offsets
        for m, sp in self.sp.items():
            self.decoder.update({k + offsets[m]: sp.id_to_piece(k) for k in range(sp.get_piece_size())})
        self.begin = {**self.BEGIN, **self.AUTO_BEGIN}
        self.end = {"</" + t[1:]: m for t, m in self.begin.items()}
        self.auto = {*self.AUTO_BEGIN, *("</" + t[1:] for t in self.AUTO_BEGIN)}  # markers: no ids
        bs = [*range(33, 127), *range(161, 173), *range(174, 256)]
        cs = bs + [256 + k for k in range(256 - len(bs))]
        self.byte_encoder = dict(zip(bs + [b for b in range(256) if b not in bs], map(chr, cs), strict=True))
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}

    def bpe(self, word: str) -> list[str]:
        parts = list(word)
        while len(parts) > 1:
            rank = min(self.ranks.get(pair, float("inf")) for pair in zip(parts, parts[1:], strict=False))
            if rank == float("inf"):
                break
            first, second = self.merges[rank]
            merged, k = [], 0
            while k < len(parts):
                if k < len(parts) - 1 and parts[k] == first and parts[k + 1] == second:
                    merged.append(first + second)
                    k += 2
                else:
                    merged.append(parts[k])
                    k += 1
            parts = merged
        return parts

    def bpe_tokenize(self, text: str) -> list[str]:
        text = text.replace("▁", " ")
        out = []
        for word in regex.findall(PAT, text):
            out += self.bpe("".join(self.byte_encoder[b] for b in word.encode("utf-8")))
        return out

    def tokenize(self, text: str) -> list[str]:
        text = unicodedata.normalize("NFC", text)
        splitters = sorted([*self.added, self.GUARD_BEGIN, self.GUARD_END], key=len, reverse=True)
        pieces = [p for p in regex.split("(" + "|".join(map(regex.escape, splitters)) + ")", text) if p]
        marked, depth = [], 0
        for p in pieces:
            if p in self.added or p in (self.GUARD_BEGIN, self.GUARD_END):
                marked.append(p)
                if p in self.BEGIN or p == self.GUARD_BEGIN:
                    depth += 1
                elif p in ("</SMILES>", "</SELFIES>", "</IUPAC>", "</FASTA>", self.GUARD_END):
                    depth = max(0, depth - 1)
            elif depth:
                marked.append(p)
            else:
                for x in auto_tag(p):
                    marked.append(f"<{'' if x.opening else '/'}{x.kind}_AUTO_DETECT>" if isinstance(x, AutoTag) else x)
        tokens: list[str] = []
        stack: list[str] = []
        for t in marked:
            if t in (self.GUARD_BEGIN, self.GUARD_END):
                tokens += self.bpe_tokenize(t)
            elif t in self.begin:
                tokens.append(t)
                stack.append(self.begin[t])
            elif t in self.end:
                tokens.append(t)
                if stack:
                    stack.pop()
            elif t in self.added:
                tokens.append(t)
            elif stack:
                sp = self.sp[stack[-1]]
                for piece, pid in zip(sp.encode(t, out_type=str), sp.encode(t), strict=True):
                    tokens += self.bpe_tokenize(piece) if pid == 0 else [piece]
            else:
                tokens += self.bpe_tokenize(t)
        return tokens

    def convert_tokens_to_ids(self, tokens: list[str]) -> list[int]:
        ids: list[int] = []
        stack: list[str] = []
        for t in tokens:
            if t not in self.auto:
                if t in self.added:
                    ids.append(self.added[t])
                elif stack and (j := self.sp[stack[-1]].piece_to_id(t)) != self.sp[stack[-1]].unk_id():
                    ids.append(j + self.offset[stack[-1]])
                else:
                    ids.append(self.encoder[t])
            if t in self.begin:
                stack.append(self.begin[t])
            elif t in self.end and stack:
                stack.pop()
        return ids

    def encode(self, text: str) -> list[int]:
        return self.convert_tokens_to_ids(self.tokenize(text))

    def decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        """decode() with its default spaces_between_special_tokens=False: sub-texts joined by ""."""
        by_id = {i: t for t, i in self.added.items()}
        tokens = [by_id.get(i, self.decoder.get(i)) for i in ids]
        if skip_special_tokens:
            tokens = [t for t in tokens if t not in self.special]
        texts, current = [], []
        for t in tokens:
            if t in self.added and t not in self.special:
                texts += [self.to_string(current), t] if current else [t]
                current = []
            else:
                current.append(t)
        return "".join(texts + ([self.to_string(current)] if current else []))

    def to_string(self, tokens: list[str]) -> str:
        text = "".join(tokens).replace("▁", "Ġ").replace("\n", "Ċ")
        return bytearray(self.byte_decoder[c] for c in text).decode("utf-8", errors="replace")


@pytest.fixture(scope="module")
def s1_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, InternS1Layout]:
    d = tmp_path_factory.mktemp("interns1")
    return d, build_interns1_tokenizer(d)


@pytest.fixture(scope="module")
def tok(s1_dir: tuple[Path, InternS1Layout]) -> InternS1Tokenizer:
    t = Tokenizer.from_dir(s1_dir[0])
    assert isinstance(t, InternS1Tokenizer)
    return t


@pytest.fixture(scope="module")
def ref(s1_dir: tuple[Path, InternS1Layout]) -> Reference:
    return Reference(s1_dir[0], s1_dir[1].offsets)


# --- loading ---------------------------------------------------------------------------------------
def test_builder_is_deterministic(tmp_path: Path) -> None:
    layouts = [build_interns1_tokenizer(tmp_path / f"d{k}") for k in range(2)]
    assert layouts[0] == layouts[1]
    for name in ("vocab.json", "merges.txt", *(f"tokenizer_{m}.model" for m in ("SMILES", "IUPAC", "FASTA"))):
        assert (tmp_path / "d0" / name).read_bytes() == (tmp_path / "d1" / name).read_bytes(), name


def test_loads_without_running_remote_code(tok: InternS1Tokenizer, s1_dir: tuple[Path, InternS1Layout]) -> None:
    d, layout = s1_dir
    assert "raise RuntimeError" in (d / "tokenization_interns1.py").read_text()  # would fail if it ran
    assert read_offsets(d, json.loads((d / "tokenizer_config.json").read_text())) == layout.offsets
    assert len(tok) == tok.vocab_size == layout.vocab_size
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == layout.added["<|im_end|>"]
    assert tok.bos_token_id is None and not tok.add_bos
    assert tok.all_special_ids == {layout.added[t] for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")}
    for content, i in layout.added.items():
        assert tok.token_to_id(content) == i
    assert tok.chat_template is not None and tok.model_max_length == 32768
    assert len(tok.hf) == layout.vocab_size  # contiguous ids for llguidance


def test_offsets_default_to_intern_s1(tmp_path: Path) -> None:
    build_interns1_tokenizer(tmp_path, write_offsets=False)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert read_offsets(tmp_path, config) == INTERN_S1_OFFSETS
    t = Tokenizer.from_dir(tmp_path)
    assert t.encode("<SMILES>C</SMILES>")[1] >= INTERN_S1_OFFSETS["SMILES"]


def test_overlapping_offsets_are_an_error(tmp_path: Path) -> None:
    layout = build_interns1_tokenizer(tmp_path)
    (tmp_path / "tokenization_interns1.py").write_text(f"self.sp_model_IUPAC.offset = {layout.offsets['SMILES']}\n")
    with pytest.raises(TokenizerError, match="overlap"):
        Tokenizer.from_dir(tmp_path)


def test_missing_sub_models(tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    build_interns1_tokenizer(tmp_path)
    (tmp_path / "tokenizer_FASTA.model").unlink()
    with pytest.raises(TokenizerError, match="has no tokenizer_FASTA.model"):
        Tokenizer.from_dir(tmp_path)
    # With a tokenizer.json beside it, that one is used (science spans as plain text), with a warning.
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models

    vocab = json.loads((tmp_path / "vocab.json").read_text())
    HFTokenizer(models.BPE(vocab=vocab, merges=[])).save(str(tmp_path / "tokenizer.json"))
    monkeypatch.setattr(logging.getLogger("interndeploy"), "propagate", True)
    with caplog.at_level(logging.WARNING, logger="interndeploy"):
        t = Tokenizer.from_dir(tmp_path)
    assert not isinstance(t, InternS1Tokenizer)
    assert "has no tokenizer_FASTA.model" in caplog.text


# --- encode ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", TEXTS)
def test_encode_matches_reference(tok: InternS1Tokenizer, ref: Reference, text: str) -> None:
    assert tok.encode(text) == tok.encode(text, add_bos=False) == ref.encode(text)


def test_encode_mixtures_match_reference(tok: InternS1Tokenizer, ref: Reference) -> None:
    atoms = ["<SMILES>", "</SMILES>", "<SELFIES>", "</SELFIES>", "<IUPAC>", "</IUPAC>", "<FASTA>", "</FASTA>",
             "<MOLFORMULA>", "</MOLFORMULA>", "<|im_end|>", "<think>", " ", "\n", "hello ", "x", "é", "中文", "▁",
             "<SMILES_AUTO_DETECT>", "</FASTA_AUTO_DETECT>", PROTEIN, "C" * 12, "=", "[", "]", "(", "1", "%12",
             "CCO", "H2O ", "C1=CC=C(C=C1)C=O", "2-methylpropanoic acid", "MKTAYIAKQRQ"]  # fmt: skip
    rng = random.Random(0)
    for _ in range(300):
        text = "".join(rng.choices(atoms, k=rng.randint(1, 8)))
        assert tok.encode(text) == ref.encode(text), text


def test_tags_use_their_sub_model(tok: InternS1Tokenizer, s1_dir: tuple[Path, InternS1Layout], ref: Reference) -> None:
    layout = s1_dir[1]
    cases = [("SMILES", "SMILES", "C1=CC=C(C=C1)C=O"), ("SELFIES", "SMILES", "CCO"),
             ("IUPAC", "IUPAC", "2-methylpropanoic acid"), ("FASTA", "FASTA", "MKTAYIAKQRQ")]  # fmt: skip
    for tag, model, body in cases:
        ids = tok.encode(f"<{tag}>{body}</{tag}>")
        expected = [i + layout.offsets[model] for i in ref.sp[model].encode(body)]
        assert ids == [layout.added[f"<{tag}>"], *expected, layout.added[f"</{tag}>"]], tag
    # untagged: the BPE, whose ids are all below the sentencepiece blocks
    assert all(i < layout.bpe_size for i in tok.encode("CCO and 2-methylpropanoic acid"))
    # an auto-detected span gets the sub-model's ids but no tag ids
    smiles = [i + layout.offsets["SMILES"] for i in ref.sp["SMILES"].encode("CC1=CC=CC=C1C=O")]
    assert tok.encode("CC1=CC=CC=C1C=O") == smiles
    fasta = [i + layout.offsets["FASTA"] for i in ref.sp["FASTA"].encode(PROTEIN)]
    assert tok.encode(PROTEIN) == fasta


def test_special_tokens_inside_and_outside_tags(tok: InternS1Tokenizer, s1_dir: tuple[Path, InternS1Layout]) -> None:
    layout = s1_dir[1]
    im_end, smiles = layout.added["<|im_end|>"], layout.offsets["SMILES"]
    ids = tok.encode("<SMILES>C<|im_end|>C</SMILES><|im_end|>")
    assert ids[2] == im_end and ids[-1] == im_end
    assert all(smiles <= i < smiles + layout.sizes["SMILES"] for i in (ids[1], ids[3]))
    assert tok.decode(ids) == "<SMILES> CC </SMILES>"  # specials go first, as in the base class
    assert tok.decode(ids, spaces_between_special_tokens=False) == "<SMILES>CC</SMILES>"
    assert tok.decode(ids, skip_special_tokens=False, spaces_between_special_tokens=False) == (
        "<SMILES>C<|im_end|>C</SMILES><|im_end|>"
    )


def test_special_tags(tmp_path: Path) -> None:
    layout = build_interns1_tokenizer(tmp_path, tags_special=True)
    t = Tokenizer.from_dir(tmp_path)
    assert layout.added["<SMILES>"] in t.all_special_ids
    assert t.decode(t.encode("x <SMILES>CCO</SMILES>")) == "x CCO"


# --- decode ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("skip", [True, False])
def test_decode_matches_reference(tok: InternS1Tokenizer, ref: Reference, skip: bool) -> None:
    rng = random.Random(0)
    cases = [tok.encode(t) for t in TEXTS] + [[rng.randrange(len(tok)) for _ in range(40)] for _ in range(20)]
    for ids in cases:
        assert tok.decode(ids, skip_special_tokens=skip, spaces_between_special_tokens=False) == ref.decode(ids, skip)


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(tok: InternS1Tokenizer, text: str) -> None:
    # Lossless but for NFC, "▁" (a space to the BPE) and virtual tags spelled out (they have no ids);
    # "2-methyl\npropane" survives through the BPE fallback.
    expected = unicodedata.normalize("NFC", text).replace("▁", " ").replace("<SMILES_AUTO_DETECT>", "")
    assert tok.decode(tok.encode(text), skip_special_tokens=False, spaces_between_special_tokens=False) == expected


def test_convert_ids_to_tokens(tok: InternS1Tokenizer, s1_dir: tuple[Path, InternS1Layout], ref: Reference) -> None:
    layout = s1_dir[1]
    ids = tok.encode("<IUPAC>methyl acid</IUPAC> ok")
    by_id = {i: t for t, i in ref.added.items()}
    assert tok.convert_ids_to_tokens(ids) == [by_id.get(i, ref.decoder.get(i)) for i in ids]
    assert tok.convert_ids_to_tokens([layout.vocab_size + 5, -1]) == ["", ""]
    assert tok.token_to_id("ÿÿ" + str(layout.offsets["SMILES"])) is None  # fillers are not tokens


@pytest.mark.parametrize("skip", [True, False])
@pytest.mark.parametrize("spaces", [True, False])
def test_incremental_detokenizer(tok: InternS1Tokenizer, skip: bool, spaces: bool) -> None:
    rng = random.Random(1)
    for text in TEXTS:
        ids = tok.encode(text)
        for chunks in ([1] * len(ids), [rng.randint(1, 4) for _ in ids]):
            detok = IncrementalDetokenizer(tok, skip_special_tokens=skip, spaces_between_special_tokens=spaces)
            pieces, k = [], 0
            for n in chunks:
                pieces.append(detok.step(ids[k : k + n]))
                k += n
            pieces.append(detok.flush())
            assert "".join(pieces) == tok.decode(ids, skip, spaces) == detok.text, text


def test_stop_string_inside_a_tag(tok: InternS1Tokenizer) -> None:
    ids = tok.encode("<SMILES>C1=CC=C(C=C1)C=O</SMILES> done")
    detok = IncrementalDetokenizer(tok, stop_strings=["(C=C"], spaces_between_special_tokens=False)
    text = "".join(detok.step([i]) for i in ids)
    assert detok.stopped and text == "<SMILES>C1=CC=C"


# --- engine ----------------------------------------------------------------------------------------
def test_pipeline_picks_interns1_tokenizer(tmp_path: Path) -> None:
    from interndeploy import EngineConfig, GenerationConfig, pipeline
    from interndeploy.testing.tiny_models import build_internlm2_dir

    d = build_internlm2_dir(tmp_path / "model", vocab_size=640, num_hidden_layers=1, num_shards=1)
    for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"):
        (d / name).unlink(missing_ok=True)
    layout = build_interns1_tokenizer(d)
    shutil.copy(d / "tokenization_interns1.py", tmp_path / "kept.py")  # the planted module stays in place
    pipe = pipeline(str(d), backend_config=EngineConfig(block_size=16, cpu_kv_budget_gib=0.25))
    try:
        tok = pipe.tokenizer
        assert isinstance(tok, InternS1Tokenizer) and len(tok) == layout.vocab_size
        prompt = "Describe <SMILES>C1=CC=C(C=C1)C=O</SMILES> and MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ"
        for spaces in (True, False):
            gen = GenerationConfig(max_new_tokens=24, ignore_eos=True, spaces_between_special_tokens=spaces)
            (out,) = pipe([prompt], gen_config=gen, do_preprocess=False)
            assert out.input_token_len == len(tok.encode(prompt))
            # (the stream leaves out a dangling incomplete character at the end)
            assert out.text == tok.decode(out.token_ids, True, spaces).rstrip("\ufffd")
    finally:
        pipe.close()
