"""Tokenizer for InternLM-family model directories, without remote code.

Two backends:
  * ``tokenizer.json``  -> a Hugging Face fast tokenizer (``AutoTokenizer`` when the configured class is one
    transformers has natively, else the generic ``PreTrainedTokenizerFast``; ``trust_remote_code`` is never set);
  * ``tokenizer.model`` -> sentencepiece used directly, reproducing InternLM2Tokenizer: added/special tokens of
    ``tokenizer_config.json`` are split out of the text first, every other chunk is encoded by sentencepiece.
Intern-S1's InternS1Tokenizer (BPE plus sentencepiece models for SMILES, IUPAC and FASTA) has its own class in
tokenizer_interns1.py, which ``from_dir`` picks when tokenizer_config.json names it.

Decoding follows the slow HF tokenizers (and vLLM/LMDeploy's slow path) for ``spaces_between_special_tokens``:
the output is cut at every added token (special or not), the pieces are decoded separately and joined by " "
when the flag is set. transformers 5 dropped that flag (its fast and sentencepiece decoders ignore it), so it
is implemented here; with the flag off a fast tokenizer decodes exactly like ``hf.decode``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Tokenizer", "TokenizerError", "load_chat_template"]

# transformers writes this for "no limit".
_HUGE_MAX_LENGTH = int(1e29)


class TokenizerError(ValueError):
    pass


@dataclass(frozen=True)
class _Added:
    content: str
    special: bool
    lstrip: bool = False
    rstrip: bool = False


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TokenizerError(f"cannot read {path}: {e}") from e
    return data if isinstance(data, dict) else {}


def _token_str(value: Any) -> str | None:
    # tokenizer_config may hold a plain string or a serialized AddedToken dict.
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _pick_template(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # [{"name": ..., "template": ...}]
        named = {e.get("name"): e.get("template") for e in value if isinstance(e, dict)}
        tpl = named.get("default")
        return tpl if isinstance(tpl, str) else None
    if isinstance(value, dict):
        tpl = value.get("default")
        return tpl if isinstance(tpl, str) else None
    return None


def load_chat_template(model_dir: str | Path, config: dict[str, Any] | None = None) -> str | None:
    """Model's own chat template: chat_template.jinja (as transformers, it wins), else tokenizer_config.json's
    ``chat_template``, else chat_template.json."""
    model_dir = Path(model_dir)
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    if config is None:
        config = _read_json(model_dir / "tokenizer_config.json")
    tpl = _pick_template(config.get("chat_template"))
    if tpl is not None:
        return tpl
    return _pick_template(_read_json(model_dir / "chat_template.json").get("chat_template"))


def _load_hf_fast(model_dir: Path, config: dict[str, Any]) -> Any:
    import warnings

    from transformers.utils import logging as hf_logging

    # transformers reads config.json on the way and warns about model types it does not know
    # (internlm2) and deprecated rope keys: noise for a tokenizer load, so it is silenced here.
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _load_hf_fast_quiet(model_dir, config)
    finally:
        hf_logging.set_verbosity(level)


def _load_hf_fast_quiet(model_dir: Path, config: dict[str, Any]) -> Any:
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    cls_name = config.get("tokenizer_class")
    native = False
    if isinstance(cls_name, str):
        try:
            native = tokenizer_class_from_name(cls_name) is not None
        except Exception:  # an unknown name is just "not native"
            native = False
    if native:
        try:
            hf = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=False, local_files_only=True)
        except Exception:  # fall back to the generic class below
            hf = None
        if getattr(hf, "backend_tokenizer", None) is not None:  # decoding needs the tokenizers backend
            return hf
    if not config:
        return PreTrainedTokenizerFast(tokenizer_file=str(model_dir / "tokenizer.json"))
    # A remote class (e.g. InternLM2TokenizerFast): the generic class reads the same files, no code is run.
    hf = PreTrainedTokenizerFast.from_pretrained(str(model_dir), local_files_only=True)
    # The remote fast classes honour add_bos_token/add_eos_token; the generic one ignores them on load.
    for key in ("add_bos_token", "add_eos_token"):
        if isinstance(config.get(key), bool) and hasattr(hf, "update_post_processor"):
            setattr(hf, key, config[key])
    return hf


class Tokenizer:
    """Use :meth:`from_dir`."""

    def __init__(
        self,
        *,
        model_dir: Path,
        config: dict[str, Any],
        added: dict[int, _Added],
        special_ids: set[int],
        bos: tuple[str, int] | None,
        eos: tuple[str, int] | None,
        add_bos: bool,
        add_eos: bool = False,
        hf: Any = None,
        sp: Any = None,
    ) -> None:
        assert (hf is None) != (sp is None)
        self.model_dir = model_dir
        self._config = config
        self._hf = hf
        self._sp = sp
        self._added = added
        self.added_token_ids = frozenset(added)
        self._special_ids = frozenset(special_ids)
        self._bos = bos
        self._eos = eos
        self._add_bos = add_bos
        self._add_eos = add_eos
        by_content: dict[str, int] = {}
        for i in sorted(added):
            by_content.setdefault(added[i].content, i)
        self._by_content = by_content
        # Longest first: regex alternation takes the first alternative matching at the leftmost position.
        contents = sorted((c for c in by_content if c), key=len, reverse=True)
        self._split_re = re.compile("(" + "|".join(map(re.escape, contents)) + ")") if contents else None
        base = len(hf) if hf is not None else sp.get_piece_size()
        self._vocab_size = max(base, max(added, default=-1) + 1)
        self._chat_template = load_chat_template(model_dir, config)

    # --- loading ---------------------------------------------------------------------------------
    @classmethod
    def from_dir(cls, model_dir: str | Path) -> Tokenizer:
        model_dir = Path(model_dir)
        config = _read_json(model_dir / "tokenizer_config.json")
        from .tokenizer_interns1 import load_interns1  # Intern-S1's science sub-tokenizers (imports this module)

        if (interns1 := load_interns1(model_dir, config)) is not None:
            return interns1
        if (model_dir / "tokenizer.json").is_file():
            try:
                return cls._from_hf(model_dir, config, _load_hf_fast(model_dir, config))
            except TokenizerError:
                raise
            except Exception as e:
                if not (model_dir / "tokenizer.model").is_file():
                    raise TokenizerError(f"cannot load {model_dir / 'tokenizer.json'}: {e}") from e
        if (model_dir / "tokenizer.model").is_file():
            return cls._from_sentencepiece(model_dir, config)
        raise TokenizerError(f"model directory {model_dir} has neither tokenizer.json nor tokenizer.model")

    @classmethod
    def _from_hf(cls, model_dir: Path, config: dict[str, Any], hf: Any) -> Tokenizer:
        added = {
            int(i): _Added(t.content, bool(t.special), bool(t.lstrip), bool(t.rstrip))
            for i, t in hf.added_tokens_decoder.items()
        }
        special_ids = {i for i, a in added.items() if a.special} | {int(i) for i in hf.all_special_ids}
        for i in special_ids - added.keys():
            tok = hf.convert_ids_to_tokens(i)
            if isinstance(tok, str):
                added[i] = _Added(tok, True)
        bos = (hf.bos_token, int(hf.bos_token_id)) if hf.bos_token_id is not None else None
        eos = (hf.eos_token, int(hf.eos_token_id)) if hf.eos_token_id is not None else None
        add_bos = bos is not None and hf.encode("", add_special_tokens=True)[:1] == [bos[1]]
        return cls(
            model_dir=model_dir,
            config=config,
            added=added,
            special_ids=special_ids,
            bos=bos,
            eos=eos,
            add_bos=add_bos,
            hf=hf,
        )

    @classmethod
    def _from_sentencepiece(cls, model_dir: Path, config: dict[str, Any]) -> Tokenizer:
        import sentencepiece as spm

        path = model_dir / "tokenizer.model"
        try:
            sp = spm.SentencePieceProcessor(model_file=str(path))
        except Exception as e:
            raise TokenizerError(f"cannot load {path}: {e}") from e
        n = sp.get_piece_size()
        added: dict[int, _Added] = {}
        for key, entry in (config.get("added_tokens_decoder") or {}).items():
            content = _token_str(entry)
            if content is None:
                continue
            opts = entry if isinstance(entry, dict) else {}
            added[int(key)] = _Added(
                content, bool(opts.get("special", False)), bool(opts.get("lstrip")), bool(opts.get("rstrip"))
            )
        # sentencepiece's own control/unknown pieces are special even if the config forgets them.
        for i in (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()):
            if 0 <= i < n and i not in added:
                added[i] = _Added(sp.id_to_piece(i), True)
        by_content = {a.content: i for i, a in sorted(added.items(), reverse=True)}

        def resolve(token: str | None) -> int | None:
            if token is None:
                return None
            if token in by_content:
                return by_content[token]
            i = sp.piece_to_id(token)
            return i if (i != sp.unk_id() or token == sp.id_to_piece(i)) else None

        named: list[str] = []
        for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
            if (tok := _token_str(config.get(key))) is not None:
                named.append(tok)
        named += [t for t in map(_token_str, config.get("additional_special_tokens") or []) if t is not None]
        for tok in named:
            i = resolve(tok)
            if i is not None:
                a = added.get(i)
                added[i] = _Added(tok, True, a.lstrip, a.rstrip) if a is not None else _Added(tok, True)
        special_ids = {i for i, a in added.items() if a.special}

        # InternLM2Tokenizer defaults: bos <s>, eos </s>, add_bos_token True.
        bos_str = _token_str(config.get("bos_token")) if "bos_token" in config else "<s>"
        eos_str = _token_str(config.get("eos_token")) if "eos_token" in config else "</s>"
        bos_id, eos_id = resolve(bos_str), resolve(eos_str)
        if bos_id is None and bos_str is not None and sp.bos_id() >= 0:
            bos_id = sp.bos_id()
        if eos_id is None and eos_str is not None and sp.eos_id() >= 0:
            eos_id = sp.eos_id()

        def named_pair(i: int | None) -> tuple[str, int] | None:
            return None if i is None else (added[i].content if i in added else sp.id_to_piece(i), i)

        bos, eos = named_pair(bos_id), named_pair(eos_id)
        return cls(
            model_dir=model_dir,
            config=config,
            added=added,
            special_ids=special_ids,
            bos=bos,
            eos=eos,
            add_bos=bool(config.get("add_bos_token", True)) and bos is not None,
            add_eos=bool(config.get("add_eos_token", False)) and eos is not None,
            sp=sp,
        )

    # --- properties ------------------------------------------------------------------------------
    @property
    def hf(self) -> Any:
        return self._hf

    @property
    def bos_token(self) -> str | None:
        return self._bos[0] if self._bos else None

    @property
    def bos_token_id(self) -> int | None:
        return self._bos[1] if self._bos else None

    @property
    def eos_token(self) -> str | None:
        return self._eos[0] if self._eos else None

    @property
    def eos_token_id(self) -> int | None:
        return self._eos[1] if self._eos else None

    @property
    def add_bos(self) -> bool:
        return self._add_bos

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def all_special_ids(self) -> set[int]:
        return set(self._special_ids)

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._by_content)

    @property
    def chat_template(self) -> str | None:
        return self._chat_template

    @property
    def model_max_length(self) -> int | None:
        value = self._config.get("model_max_length")
        return int(value) if isinstance(value, (int, float)) and 0 < value < _HUGE_MAX_LENGTH else None

    def __len__(self) -> int:
        return self._vocab_size

    def __repr__(self) -> str:
        kind = "hf" if self._hf is not None else "sentencepiece"
        return f"Tokenizer({kind}, {self.model_dir}, vocab_size={self._vocab_size})"

    # --- encode ----------------------------------------------------------------------------------
    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        """``add_bos`` adds the tokenizer's own special tokens (BOS, and EOS where configured), as HF's
        ``add_special_tokens``; added-token strings in ``text`` map to their ids."""
        if self._hf is not None:
            return list(self._hf.encode(text, add_special_tokens=add_bos))
        ids: list[int] = []
        if add_bos and self._add_bos and self._bos is not None:
            ids.append(self._bos[1])
        for part in self._split(text):
            if isinstance(part, int):
                ids.append(part)
            elif part:
                ids.extend(self._sp.encode(part))
        if add_bos and self._add_eos and self._eos is not None:
            ids.append(self._eos[1])
        return ids

    def _split(self, text: str) -> list[str | int]:
        if self._split_re is None:
            return [text]
        parts: list[str | int] = list(self._split_re.split(text))
        # Odd positions hold added-token strings; honour their lstrip/rstrip on the neighbouring text.
        for k in range(1, len(parts), 2):
            tid = self._by_content[parts[k]]  # type: ignore[index]
            parts[k] = tid
            a = self._added[tid]
            if a.lstrip:
                parts[k - 1] = parts[k - 1].rstrip()  # type: ignore[union-attr]
            if a.rstrip:
                parts[k + 1] = parts[k + 1].lstrip()  # type: ignore[union-attr]
        return parts

    # --- decode ----------------------------------------------------------------------------------
    def decode(
        self, ids: Sequence[int], skip_special_tokens: bool = True, spaces_between_special_tokens: bool = True
    ) -> str:
        # Skipped tokens are dropped before anything else, so decode(ids, skip=True) equals
        # decode(ids without special ids, skip=False): the incremental detokenizer relies on it.
        if skip_special_tokens:
            special = self._special_ids
            ids = [i for i in ids if i not in special]
        if self._sp is not None:
            n = self._vocab_size
            ids = [i for i in ids if 0 <= i < n]  # unknown ids decode to nothing, as in HF fast
        elif not spaces_between_special_tokens:
            return self._hf.backend_tokenizer.decode(list(ids), skip_special_tokens=False)
        return self._join_runs(ids, spaces_between_special_tokens)

    def decode_plain(self, ids: list[int]) -> str:
        """`decode(ids, skip_special_tokens=False)` for ids none of which is an added token (the streaming
        detokenizer's common case): no cut at added tokens, so no Python loop over the ids."""
        if self._sp is not None:
            n = self._vocab_size
            ids = [i for i in ids if 0 <= i < n]
        return self._decode_run(ids)

    def _join_runs(self, ids: Sequence[int], spaces_between_special_tokens: bool) -> str:
        """Added tokens as their text; the runs between them through `_decode_run`; joined by " " when asked."""
        parts: list[str] = []
        run: list[int] = []
        added = self._added
        for i in ids:
            a = added.get(i)
            if a is None:
                run.append(i)
                continue
            if run:
                parts.append(self._decode_run(run))
                run = []
            parts.append(a.content)
        if run:
            parts.append(self._decode_run(run))
        return (" " if spaces_between_special_tokens else "").join(parts)

    def _decode_run(self, ids: list[int]) -> str:
        if self._sp is not None:
            return self._sp.decode(ids)
        return self._hf.backend_tokenizer.decode(ids, skip_special_tokens=False)

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        """Unknown ids give ``""``."""
        if self._hf is not None:
            return [t if isinstance(t, str) else "" for t in self._hf.convert_ids_to_tokens(list(ids))]
        n = self._sp.get_piece_size()
        out: list[str] = []
        for i in ids:
            a = self._added.get(i)
            out.append(a.content if a is not None else self._sp.id_to_piece(i) if 0 <= i < n else "")
        return out

    def token_to_id(self, token: str) -> int | None:
        if token in self._by_content:
            return self._by_content[token]
        if self._hf is not None:
            return self._hf.backend_tokenizer.token_to_id(token)
        i = self._sp.piece_to_id(token)
        return i if (i != self._sp.unk_id() or self._sp.id_to_piece(i) == token) else None
