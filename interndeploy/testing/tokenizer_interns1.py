"""A tiny Intern-S1-style tokenizer directory, trained on the fly (no downloads).

Files as Intern-S1 ships them: vocab.json + merges.txt (byte-level BPE, Qwen2's pre-tokenizer), three
sentencepiece BPE models (tokenizer_SMILES.model, tokenizer_IUPAC.model, tokenizer_FASTA.model; no byte fallback,
so unknown characters give <unk>, no dummy prefix), tokenizer_config.json naming the remote InternS1Tokenizer
(auto_map), and a tokenization_interns1.py that raises if it is ever run; it holds the offset assignments
(``self.sp_model_SMILES.offset = N``) which interndeploy reads as text. Id layout, as Intern-S1's:

    0 .. B-1                 BPE
    B .. B+6                 <|endoftext|> <|im_start|> <|im_end|> (special), <think> </think> <tool_call>
                             </tool_call> (not special)
    then, per model:         its pieces (offset + k), then its tags (<SMILES> </SMILES> <SELFIES> </SELFIES>
                             after SMILES, <IUPAC> </IUPAC> after IUPAC, <FASTA> </FASTA> after FASTA)
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from interndeploy.testing.tokenizers import default_corpus

__all__ = ["CHATML_NO_BOS", "InternS1Layout", "build_interns1_tokenizer", "science_corpus"]

ADDED = (("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<think>", False),
         ("</think>", False), ("<tool_call>", False), ("</tool_call>", False))  # fmt: skip
TAGS = {"SMILES": ("SMILES", "SELFIES"), "IUPAC": ("IUPAC",), "FASTA": ("FASTA",)}  # model -> its tags
CHATML_NO_BOS = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_SMILES_PARTS = ("C", "CC", "O", "N", "c1ccccc1", "C(=O)O", "Cl", "Br", "[C@@H]", "[NH3+]", "C#N", "S(=O)(=O)",
                 "F", "C=C", "OC", "N(C)C", "c1ccncc1", "C1CCCCC1", "[O-]", "/C=C/", "CO")  # fmt: skip
_IUPAC_PARTS = ("meth", "eth", "prop", "but", "pent", "hex", "yl", "an", "ol", "one", "oic acid", "amine", "2-",
                "3-", "4-", "2,4-di", "chloro", "hydroxy", "amino", "benzene", "phenyl", "cyclo", "(", ")", "N-",
                "tert-butyl", "carbonyl", "oxy", "ene", "yne")  # fmt: skip
AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"


def science_corpus(seed: int = 0, n: int = 300) -> dict[str, list[str]]:
    """Generated SMILES, IUPAC names and protein sequences (deterministic)."""
    rng = random.Random(seed)
    smiles = ["C1=CC=C(C=C1)C=O", "CC1=CC=CC=C1C=O", "CC(C)(C)OC(=O)N[C@@H](CC1=CC=CC=C1)C(=O)O"]
    iupac = ["2-methylpropanoic acid", "N-tert-butyloxycarbonyl-L-phenylalanine", "4-hydroxybenzaldehyde"]
    fasta = []
    for _ in range(n):
        smiles.append("".join(rng.choices(_SMILES_PARTS, k=rng.randint(2, 8))))
        iupac.append("".join(rng.choices(_IUPAC_PARTS, k=rng.randint(2, 7))))
        fasta.append("".join(rng.choices(AMINO_ACIDS, k=rng.randint(20, 60))))
    return {"SMILES": smiles, "IUPAC": iupac, "FASTA": fasta}


@dataclass
class InternS1Layout:
    bpe_size: int  # ids 0 .. bpe_size-1 are the BPE's
    added: dict[str, int] = field(default_factory=dict)  # every added token (tags included) -> id
    offsets: dict[str, int] = field(default_factory=dict)  # model -> id of its piece 0
    sizes: dict[str, int] = field(default_factory=dict)  # model -> number of pieces
    vocab_size: int = 0  # one past the largest id


def _train_sentencepiece(lines: list[str], vocab_size: int) -> bytes:
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buf, model_type="bpe", vocab_size=vocab_size,
        hard_vocab_limit=False, byte_fallback=False, character_coverage=1.0, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=False, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        num_threads=1, minloglevel=2,
    )  # fmt: skip
    return buf.getvalue()


def build_interns1_tokenizer(
    out_dir: Path,
    *,
    bpe_vocab_size: int = 400,
    sp_vocab_sizes: dict[str, int] | None = None,
    tags_special: bool = False,
    chat_template: str | None = CHATML_NO_BOS,
    write_offsets: bool = True,
    seed: int = 0,
) -> InternS1Layout:
    """Write the directory; return its id layout. `tags_special` marks the tags special (Intern-S1's own flag
    is not known here); without `write_offsets` the tokenizer module names no offsets (Intern-S1's are used)."""
    import sentencepiece as spm
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    from interndeploy.tokenizer_interns1 import PRETOKENIZE

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    science = science_corpus(seed)
    sizes = {"SMILES": 64, "IUPAC": 96, "FASTA": 48, **(sp_vocab_sizes or {})}

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=bpe_vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    corpus = default_corpus(seed=seed) + [line for lines in science.values() for line in lines[:40]]
    bpe.train_from_iterator(corpus, trainer=trainer)
    bpe.model.save(str(out_dir))  # vocab.json, merges.txt
    layout = InternS1Layout(bpe_size=bpe.get_vocab_size())

    specials: dict[int, tuple[str, bool]] = {}
    next_id = layout.bpe_size
    for content, special in ADDED:
        specials[next_id] = (content, special)
        next_id += 1
    for model, tags in TAGS.items():
        proto = _train_sentencepiece(science[model], sizes[model])
        (out_dir / f"tokenizer_{model}.model").write_bytes(proto)
        layout.offsets[model] = next_id
        layout.sizes[model] = spm.SentencePieceProcessor(model_proto=proto).get_piece_size()
        next_id += layout.sizes[model]
        for tag in tags:
            for content in (f"<{tag}>", f"</{tag}>"):
                specials[next_id] = (content, tags_special)
                next_id += 1
    layout.added = {content: i for i, (content, _) in specials.items()}
    layout.vocab_size = next_id

    entry = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    config: dict[str, object] = {
        "add_prefix_space": False,
        "added_tokens_decoder": {str(i): {"content": c, **entry, "special": s} for i, (c, s) in specials.items()},
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "auto_map": {"AutoTokenizer": ["tokenization_interns1.InternS1Tokenizer", None]},
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 32768,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "InternS1Tokenizer",
        "unk_token": None,
    }
    if chat_template is not None:
        config["chat_template"] = chat_template
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    lines = ['raise RuntimeError("tokenization_interns1.py was executed: interndeploy must never run it")', ""]
    if write_offsets:
        lines.append("# The assignments interndeploy reads (Intern-S1's module sets them in prepare_extra_tokenizers):")
        lines += [f"# self.sp_model_{m}.offset = {off}" for m, off in layout.offsets.items()]
    (out_dir / "tokenization_interns1.py").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return layout
