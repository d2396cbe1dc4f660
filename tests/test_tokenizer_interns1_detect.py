"""Auto-detection of SMILES and protein spans, checked on cases worked out by hand from the reference
(SmilesCheckModule / FastaCheckModule of Intern-S1's tokenization_interns1.py; the first two are the examples of
transformers' test_tokenization_intern_s1.py::test_auto_detection)."""

from __future__ import annotations

import pytest

from interndeploy.tokenizer_interns1_detect import AutoTag, auto_tag, smiles_is_valid

S, _S = AutoTag("SMILES", True), AutoTag("SMILES", False)
F, _F = AutoTag("FASTA", True), AutoTag("FASTA", False)
PROTEIN = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ"  # 33 capitals


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Describe C1=CC=C(C=C1)C=O", ["Describe ", S, "C1=CC=C(C=C1)C=O", _S]),
        (" and CC1=CC=CC=C1C=O", [" and ", S, "CC1=CC=CC=C1C=O", _S]),
        # an ASCII letter right before or after: part of a word, not tagged; any other character is fine
        ("xC1=CC=C(C=C1)C=O", ["xC1=CC=C(C=C1)C=O"]),
        ("C1=CC=C(C=C1)C=Ox", ["C1=CC=C(C=C1)C=Ox"]),
        ("éC1=CC=C(C=C1)C=O", ["é", S, "C1=CC=C(C=C1)C=O", _S]),
        # a run may not end on '=' ':' '.': it gives the character back
        ("CCCCCCCCCC=", [S, "CCCCCCCCCC", _S, "="]),
        # units are atomic: "Cn" is copernicium, so this is 5 units, not 10
        ("CnCnCnCnCn", ["CnCnCnCnCn"]),
        ("CCCCCCCCC", ["CCCCCCCCC"]),  # 9 units
        ("C6H15O6 is glucose", ["C6H15O6 is glucose"]),
        (f"seq {PROTEIN} end", ["seq ", F, PROTEIN, _F, " end"]),
        (f"abc{PROTEIN}def", ["abc", F, PROTEIN, _F, "def"]),  # proteins need no word boundary
        ("A" * 26, ["A" * 26]),
        ("C" * 30, [S, F, "C" * 30, _F, _S]),  # a protein inside a SMILES span: tagged inside it
        ("", []),
    ],
)
def test_auto_tag(text: str, expected: list) -> None:
    assert auto_tag(text, use_rdkit=False) == expected


@pytest.mark.parametrize(
    ("candidate", "valid"),
    [
        ("C1=CC=C(C=C1)C=O", True),
        ("CC(C)(C)OC(=O)N[C@@H](CC1=CC=CC=C1)C(=O)O", True),
        ("c1ccccc1", True),  # all lower case needs two ring digits
        ("cccccccccc", False),
        ("CCCC", False),  # fewer than 5 letters
        ("C1CCCCC", False),  # ring 1 left open
        ("CCCCC%12CC%12", True),  # two-digit ring label
        ("CCCCCC%1", False),  # '%' needs two digits
        ("CC==CCCCC", False),  # two bonds in a row
        ("=CCCCCC", False),  # a bond at an end
        ("CCCCCC=", False),
        ("CCHCCC", False),  # H only inside brackets
        ("CCCCC(C))", False),  # ')' before its '('
        ("CCCCC[Xyz]", False),  # three letters (not H) in a row inside brackets
        ("CCCCC[C1234]", False),  # four digits inside brackets
        ("CCCCC[]", False),
        ("CC[CH2](C)CCC", True),
        ("CCCCC[(C)]", False),
        # the reference reads each bracket only up to the string's first ']', and a first bracket opening with an
        # element accepts the rest: kept as it is
        ("CC[N]CCC[Xyzw]C", True),
        ("CClCCCBrCC", True),  # Cl and Br outside brackets
    ],
)
def test_smiles_rules(candidate: str, valid: bool) -> None:
    assert smiles_is_valid(candidate, use_rdkit=False) is valid


def test_rdkit_is_optional() -> None:
    try:
        import rdkit  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="rdkit"):
            smiles_is_valid("C1=CC=C(C=C1)C=O", use_rdkit=True)
    else:
        assert smiles_is_valid("C1=CC=C(C=C1)C=O", use_rdkit=True)
        assert not smiles_is_valid("C1=CC=C(C=C1C=O", use_rdkit=True)
