"""Intern-S1's tokenizer without its remote code: a byte-level BPE plus sentencepiece models for science spans.

Intern-S1 and Intern-S1-mini ship ``tokenization_interns1.py`` (class InternS1Tokenizer; remote code, only ever
read here as text), vocab.json + merges.txt (Qwen3's byte-level BPE) and three sentencepiece models. Ids:

    0 .. 151642          BPE (vocab.json)
    151643 .. 151668     added tokens of tokenizer_config.json (<|im_end|>, <think>, ...)
    151669 + k           piece k of tokenizer_SMILES.model, then the tags <SMILES> </SMILES> <SELFIES> </SELFIES>
    151929 + k           piece k of tokenizer_IUPAC.model,  then <IUPAC> </IUPAC>
    152443 + k           piece k of tokenizer_FASTA.model,  then <FASTA> </FASTA>

Those are Intern-S1's numbers. The offsets are written only in tokenization_interns1.py (``sp_model_X.offset =
N``), read from it with a regex, Intern-S1's values when it says nothing; the tags are added tokens of
tokenizer_config.json (a tag that is not one there is plain text, as for the reference).

Encoding, re-stating InternS1Tokenizer.tokenize + convert_tokens_to_ids:
  1. NFC; cut at added tokens (longest first, honouring lstrip/rstrip) and at the guards <MOLFORMULA>
     </MOLFORMULA> (not tokens: BPE-encoded as text, they only switch auto-detection off until closed).
  2. Text outside explicit tags and guards gets virtual tags around untagged SMILES and proteins
     (tokenizer_interns1_detect); they give no ids.
  3. A stack of open tags (explicit or virtual) picks the encoder of each text piece: the top tag's sentencepiece
     model (piece id + offset; a piece it cannot encode (unk) goes to the BPE), or the BPE when none is open. A
     closing tag pops whatever is on top. <SELFIES> uses the SMILES model.
  4. A BPE token made while a tag is open (unknown pieces, guards) takes the open model's id when that model has a
     piece spelled the same: the reference converts token strings with the stack open.
  5. "▁" (U+2581) is a space to the BPE, as in the reference.
Special tokens (added tokens) are cut out everywhere, inside tags too, and leave the stack as it is.

Decoding is context free: an id of a sentencepiece block is its piece ("▁" a space, the other characters read
through the byte-level table as the reference does), any other id decodes as in the base class.
"""

from __future__ import annotations

import json
import logging
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

from .tokenizer import Tokenizer, TokenizerError, _Added, _token_str
from .tokenizer_interns1_detect import AutoTag, auto_tag

__all__ = ["INTERN_S1_OFFSETS", "InternS1Tokenizer", "load_interns1", "names_interns1"]

logger = logging.getLogger("interndeploy")

CLASS_NAME = "InternS1Tokenizer"
SUB_MODELS = ("SMILES", "IUPAC", "FASTA")
INTERN_S1_OFFSETS = {"SMILES": 151669, "IUPAC": 151929, "FASTA": 152443}
TAG_MODEL = {"SMILES": "SMILES", "SELFIES": "SMILES", "IUPAC": "IUPAC", "FASTA": "FASTA"}  # tag -> sub-model
GUARDS = ("<MOLFORMULA>", "</MOLFORMULA>")
# Virtual tags written out: a text piece spelled exactly like one acts as one (the reference compares strings).
_AUTO_TAG_TEXT = {
    f"<{'' if opening else '/'}{kind}_AUTO_DETECT>": AutoTag(kind, opening)
    for kind in ("SMILES", "FASTA")
    for opening in (True, False)
}
# Qwen2's pre-tokenizer split (the reference's PRETOKENIZE_REGEX).
PRETOKENIZE = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
_OFFSET_LINE = re.compile(r"sp_model_(\w+)\.offset\s*=\s*(\d+)")


@cache
def _byte_of_char() -> dict[str, int]:
    """GPT-2's byte-level table, reversed: printable latin-1 bytes stand for themselves, the other 68 bytes for
    chr(256), chr(257), ... in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {chr(b): b for b in printable}
    for k, b in enumerate(b for b in range(256) if b not in set(printable)):
        table[chr(256 + k)] = b
    return table


def _from_byte_level(token: str) -> bytes:
    table = _byte_of_char()
    return b"".join(bytes([table[c]]) if c in table else c.encode("utf-8") for c in token)


@dataclass(frozen=True, slots=True)
class _SubModel:
    name: str  # SMILES / IUPAC / FASTA
    sp: Any  # sentencepiece.SentencePieceProcessor
    offset: int  # id of piece 0
    size: int  # number of pieces: ids offset .. offset + size - 1

    def owns(self, token_id: int) -> bool:
        return self.offset <= token_id < self.offset + self.size


class _Guard(NamedTuple):
    text: str
    opening: bool


def _auto_tokenizer_entries(config: dict[str, Any]) -> list[str]:
    """auto_map's AutoTokenizer entries ("module.Class", "repo--module.Class"; a [slow, fast] pair or one)."""
    auto_map = config.get("auto_map")
    entry = auto_map.get("AutoTokenizer") if isinstance(auto_map, dict) else None
    return [e for e in (entry if isinstance(entry, list) else [entry]) if isinstance(e, str) and "." in e]


def names_interns1(config: dict[str, Any]) -> bool:
    """tokenizer_config.json names InternS1Tokenizer (tokenizer_class or auto_map)."""
    if config.get("tokenizer_class") == CLASS_NAME:
        return True
    return any(e.rsplit(".", 1)[1] == CLASS_NAME for e in _auto_tokenizer_entries(config))


def read_offsets(model_dir: Path, config: dict[str, Any]) -> dict[str, int]:
    """Each sub-model's first id, from the assignments in the checkpoint's tokenizer module (read, never run)."""
    modules = {"tokenization_interns1"}
    # "repo--module.Class" lives in another repository: not here
    modules |= {e.rsplit(".", 1)[0] for e in _auto_tokenizer_entries(config) if "--" not in e}
    offsets = dict(INTERN_S1_OFFSETS)
    for module in sorted(modules):
        path = model_dir / f"{module}.py"
        if path.is_file():
            found = {k: int(v) for k, v in _OFFSET_LINE.findall(path.read_text(encoding="utf-8", errors="replace"))}
            offsets.update({k: v for k, v in found.items() if k in offsets})
    return offsets


def load_interns1(model_dir: Path, config: dict[str, Any]) -> InternS1Tokenizer | None:
    """The InternS1Tokenizer of `model_dir` when its tokenizer_config.json names one and its files are there."""
    if not names_interns1(config):
        return None
    files = ["vocab.json", "merges.txt", *(f"tokenizer_{m}.model" for m in SUB_MODELS)]
    missing = ", ".join(f for f in files if not (model_dir / f).is_file())
    if not missing:
        return InternS1Tokenizer.load(model_dir, config)
    if not (model_dir / "tokenizer.json").is_file():
        raise TokenizerError(f"{model_dir} names {CLASS_NAME} in tokenizer_config.json but has no {missing}: "
                             "copy them from the original checkpoint")  # fmt: skip
    logger.warning("%s names %s but has no %s: using tokenizer.json, which encodes SMILES, IUPAC and FASTA as "
                   "plain text", model_dir, CLASS_NAME, missing)  # fmt: skip
    return None


def _read_bpe(model_dir: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    try:
        vocab = json.loads((model_dir / "vocab.json").read_text(encoding="utf-8"))
        lines = (model_dir / "merges.txt").read_text(encoding="utf-8").splitlines()
    except (OSError, ValueError) as e:
        raise TokenizerError(f"cannot read the BPE of {model_dir}: {e}") from e
    if not isinstance(vocab, dict) or sorted(vocab.values()) != list(range(len(vocab))):
        raise TokenizerError(f"{model_dir / 'vocab.json'} must map tokens to the ids 0 .. n-1")
    if lines and lines[0].startswith("#version:"):
        lines = lines[1:]
    merges = []
    for line in lines:
        pair = line.split()
        if len(pair) == 2:
            merges.append((pair[0], pair[1]))
        elif pair:
            raise TokenizerError(f"{model_dir / 'merges.txt'}: bad merge line {line!r}")
    return vocab, merges


def _bpe_backend(vocab: dict[str, int], merges: list[tuple[str, str]], added: dict[int, _Added], n_ids: int) -> Any:
    """A `tokenizers` byte-level BPE whose ids are the checkpoint's: vocab.json, the added tokens at their ids,
    and, so that the ids stay contiguous (llguidance needs it), a filler at every other id below `n_ids`. A filler
    starts with the byte 0xFF (never in UTF-8 text): no text encodes to it and no grammar accepts it."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    full = dict(vocab)
    for i, a in added.items():
        full.setdefault(a.content, i)
    taken = set(full.values())
    for i in range(n_ids):
        if i not in taken:
            filler = "ÿÿ" + str(i)  # "ÿ" is the byte-level spelling of 0xFF
            while filler in full:
                filler = "ÿ" + filler
            full[filler] = i
    tok = Tokenizer(models.BPE(vocab=full, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    # The contents are in the model's vocabulary, so these keep their ids.
    for special in (True, False):
        tokens = [AddedToken(a.content, special=special, normalized=False, lstrip=a.lstrip, rstrip=a.rstrip)
                  for _, a in sorted(added.items()) if a.special == special]  # fmt: skip
        (tok.add_special_tokens if special else tok.add_tokens)(tokens)
    return tok


class InternS1Tokenizer(Tokenizer):
    """Use :func:`load_interns1` (or ``Tokenizer.from_dir``, which calls it)."""

    def __init__(self, *, bpe_size: int, subs: dict[str, _SubModel], **base: Any) -> None:
        super().__init__(**base)
        self._backend = self._hf.backend_tokenizer  # the BPE, for text outside tags and unknown pieces
        self._bpe_size = bpe_size
        self._subs = subs
        opens = {f"<{tag}>": subs[m] for tag, m in TAG_MODEL.items()}
        closes = {f"</{tag}>" for tag in TAG_MODEL}
        self._opens = {self._by_content[t]: sub for t, sub in opens.items() if t in self._by_content}
        self._closes = {self._by_content[t] for t in closes if t in self._by_content}
        contents = sorted({*(c for c in self._by_content if c), *GUARDS}, key=len, reverse=True)
        self._cut_re = re.compile("(" + "|".join(map(re.escape, contents)) + ")")
        self._vocab_size = max(self._vocab_size, *(s.offset + s.size for s in subs.values()))

    @classmethod
    def load(cls, model_dir: Path, config: dict[str, Any]) -> InternS1Tokenizer:
        import sentencepiece as spm
        from transformers import PreTrainedTokenizerFast

        vocab, merges = _read_bpe(model_dir)
        offsets = read_offsets(model_dir, config)
        subs: dict[str, _SubModel] = {}
        for name in SUB_MODELS:
            path = model_dir / f"tokenizer_{name}.model"
            try:
                sp = spm.SentencePieceProcessor(model_file=str(path))
            except Exception as e:
                raise TokenizerError(f"cannot load {path}: {e}") from e
            subs[name] = _SubModel(name, sp, offsets[name], sp.get_piece_size())

        added: dict[int, _Added] = {}
        for key, entry in (config.get("added_tokens_decoder") or {}).items():
            if (content := _token_str(entry)) is not None:
                opts = entry if isinstance(entry, dict) else {}
                added[int(key)] = _Added(content, bool(opts.get("special")), bool(opts.get("lstrip")),
                                         bool(opts.get("rstrip")))  # fmt: skip
        by_content = {a.content: i for i, a in sorted(added.items(), reverse=True)}

        def resolve(token: str | None) -> int | None:
            return None if token is None else by_content.get(token, vocab.get(token))

        # The reference's defaults: no bos; unk, eos and pad <|endoftext|>.
        defaults = {"bos_token": None, "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
                    "pad_token": "<|endoftext|>"}  # fmt: skip
        named = {k: _token_str(config[k]) if k in config else v for k, v in defaults.items()}
        extra = [t for t in map(_token_str, config.get("additional_special_tokens") or []) if t is not None]
        for tok in [*named.values(), *extra]:
            if (i := resolve(tok)) is not None and tok is not None:
                a = added.get(i)
                added[i] = _Added(tok, True, a.lstrip, a.rstrip) if a is not None else _Added(tok, True)

        _check_layout(model_dir, len(vocab), added, subs)
        n_ids = max(len(vocab), max(added, default=-1) + 1, *(s.offset + s.size for s in subs.values()))
        bos_id, eos_id = resolve(named["bos_token"]), resolve(named["eos_token"])
        return cls(
            bpe_size=len(vocab),
            subs=subs,
            model_dir=model_dir,
            config=config,
            added=added,
            special_ids={i for i, a in added.items() if a.special},
            bos=(named["bos_token"], bos_id) if bos_id is not None else None,  # type: ignore[arg-type]
            eos=(named["eos_token"], eos_id) if eos_id is not None else None,  # type: ignore[arg-type]
            add_bos=False,  # InternS1Tokenizer adds nothing around the text
            hf=PreTrainedTokenizerFast(tokenizer_object=_bpe_backend(vocab, merges, added, n_ids)),
        )

    def __repr__(self) -> str:
        blocks = ", ".join(f"{s.name}@{s.offset}+{s.size}" for s in self._subs.values())
        return f"InternS1Tokenizer({self.model_dir}, vocab_size={self._vocab_size}, {blocks})"

    # --- encode ----------------------------------------------------------------------------------
    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        ids: list[int] = []
        if add_bos and self._add_bos and self._bos is not None:
            ids.append(self._bos[1])
        stack: list[_SubModel] = []  # open tags, explicit or virtual: the top one's model encodes text
        guarded = 0  # explicit tags and guards open: no auto-detection inside
        for item in self._cut(unicodedata.normalize("NFC", text)):
            if isinstance(item, int):
                ids.append(item)
                if item in self._opens:
                    guarded += 1
                    stack.append(self._opens[item])
                elif item in self._closes:
                    guarded = max(0, guarded - 1)
                    if stack:
                        stack.pop()
            elif isinstance(item, _Guard):
                guarded = guarded + 1 if item.opening else max(0, guarded - 1)
                ids += self._bpe(item.text, stack[-1] if stack else None)
            else:
                for piece in auto_tag(item) if not guarded else [item]:
                    tag = piece if isinstance(piece, AutoTag) else _AUTO_TAG_TEXT.get(piece)
                    if tag is None:
                        ids += self._encode_text(piece, stack[-1] if stack else None)  # type: ignore[arg-type]
                    elif tag.opening:
                        stack.append(self._subs[tag.kind])
                    elif stack:
                        stack.pop()
        return ids

    def _cut(self, text: str) -> list[str | int | _Guard]:
        parts: list[Any] = self._cut_re.split(text)
        # Odd positions hold the matches; an added token's lstrip/rstrip eats the spaces next to it.
        for k in range(1, len(parts), 2):
            if parts[k] in GUARDS:
                parts[k] = _Guard(parts[k], parts[k] == GUARDS[0])
                continue
            tid = parts[k] = self._by_content[parts[k]]
            if self._added[tid].lstrip:
                parts[k - 1] = parts[k - 1].rstrip()
            if self._added[tid].rstrip:
                parts[k + 1] = parts[k + 1].lstrip()
        return [p for p in parts if p != ""]

    def _encode_text(self, text: str, sub: _SubModel | None) -> list[int]:
        if sub is None:
            return self._bpe(text, None)
        ids: list[int] = []
        unk = sub.sp.unk_id()
        for piece, pid in zip(sub.sp.encode(text, out_type=str), sub.sp.encode(text), strict=True):
            ids += self._bpe(piece, sub) if pid == unk else [pid + sub.offset]
        return ids

    def _bpe(self, text: str, sub: _SubModel | None) -> list[int]:
        enc = self._backend.encode(text.replace("▁", " "), add_special_tokens=False)
        if sub is None:
            return list(enc.ids)
        unk = sub.sp.unk_id()
        pairs = zip(enc.tokens, enc.ids, strict=True)
        return [sub.offset + j if (j := sub.sp.piece_to_id(t)) != unk else i for t, i in pairs]

    # --- decode ----------------------------------------------------------------------------------
    def _sub_of(self, token_id: int) -> _SubModel | None:
        return next((s for s in self._subs.values() if s.owns(token_id)), None)

    def decode(
        self, ids: Sequence[int], skip_special_tokens: bool = True, spaces_between_special_tokens: bool = True
    ) -> str:
        # As the base class: specials dropped first, text cut at added tokens and joined by " " when asked.
        if skip_special_tokens:
            ids = [i for i in ids if i not in self._special_ids]
        return self._join_runs(ids, spaces_between_special_tokens)

    def _decode_run(self, ids: list[int]) -> str:
        raw = bytearray()
        for i in ids:
            sub = self._sub_of(i)
            if sub is not None:
                raw += _from_byte_level(sub.sp.id_to_piece(i - sub.offset).replace("▁", "Ġ").replace("\n", "Ċ"))
            elif 0 <= i < self._bpe_size:
                raw += _from_byte_level(self._backend.id_to_token(i))
            # other ids (fillers, out of range) decode to nothing
        return raw.decode("utf-8", errors="replace")

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        """Unknown ids give ``""``; a sentencepiece id gives its piece."""
        out: list[str] = []
        for i in ids:
            a, sub = self._added.get(i), self._sub_of(i)
            if a is not None:
                out.append(a.content)
            elif sub is not None:
                out.append(sub.sp.id_to_piece(i - sub.offset))
            else:
                out.append(self._backend.id_to_token(i) if 0 <= i < self._bpe_size else "")
        return out

    def token_to_id(self, token: str) -> int | None:
        if token in self._by_content:
            return self._by_content[token]
        i = self._backend.token_to_id(token)
        return i if i is not None and i < self._bpe_size else None


def _check_layout(model_dir: Path, n_bpe: int, added: dict[int, _Added], subs: dict[str, _SubModel]) -> None:
    """The sentencepiece blocks must not overlap the BPE, an added token or each other."""
    blocks = sorted(subs.values(), key=lambda s: s.offset)
    for a, b in zip(blocks, blocks[1:], strict=False):
        if a.offset + a.size > b.offset:
            raise TokenizerError(f"{model_dir}: the {a.name} ids ({a.offset}+{a.size}) overlap the {b.name} ids "
                                 f"(from {b.offset}); check the offsets in tokenization_interns1.py")  # fmt: skip
    for s in blocks:
        clash = [i for i in added if s.owns(i)]
        if s.offset < n_bpe or clash:
            what = f"the added token {added[clash[0]].content!r} ({clash[0]})" if clash else f"the BPE (< {n_bpe})"
            raise TokenizerError(f"{model_dir}: the {s.name} ids ({s.offset}+{s.size}) overlap {what}; check the "
                                 "offsets in tokenization_interns1.py")  # fmt: skip
