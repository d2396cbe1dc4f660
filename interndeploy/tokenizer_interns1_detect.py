"""Untagged molecules and proteins in free text, found the way Intern-S1's tokenizer finds them.

Intern-S1 encodes a SMILES string or a protein sequence with its own sentencepiece model even when the text does
not wrap it in ``<SMILES>`` / ``<FASTA>``: spans that look like one get virtual tags first (``auto_tag``), which
the tokenizer treats like real ones but gives no ids.

    "Describe C1=CC=C(C=C1)C=O" -> ["Describe ", AutoTag("SMILES", True), "C1=CC=C(C=C1)C=O", AutoTag("SMILES", False)]

  * SMILES: a run of at least 10 SMILES units (bracket atom, element symbol, aromatic atom, bond/ring/branch
    character; each unit taken whole, never re-split), not starting or ending with ``: . =``, with no ASCII letter
    right before or after it, at least 5 ASCII letters, and valid: by RDKit when it is installed (as the
    reference does), else by the ring/bracket/bond rules of ``_rules_ok``.
  * protein: a run of at least 27 capital letters, anywhere (also inside a word, and inside a SMILES span: it is
    then tagged FASTA within the SMILES tags, and the innermost tag wins).

Behaviour of InternS1Tokenizer (tokenization_interns1.py of internlm/Intern-S1; the same code is
src/transformers/models/intern_s1/tokenization_intern_s1.py in transformers PR #39722): SmilesCheckModule and
FastaCheckModule, re-stated here.
"""

from __future__ import annotations

from typing import NamedTuple

import regex

__all__ = ["AutoTag", "auto_tag", "smiles_is_valid"]

# fmt: off
ELEMENTS = frozenset("""
    H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr Rb Sr Y Zr
    Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb Lu Hf Ta W Re Os Ir
    Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu Am Cm Bk Cf Es Fm Md No Lr Rf Db Sg Bh Hs Mt Ds Rg Cn Nh Fl
    Mc Lv Ts Og""".split())
# fmt: on
AROMATIC = frozenset("bcnosp")
BONDS = frozenset("-=#:/\\.$")
# What may stand outside brackets in a SMILES string (the rules below): the organic subset, aromatic atoms,
# bonds, brackets, branches and ';'. Two-character entries are tried first.
_BARE_TWO = frozenset({"Cl", "Br"})
_BARE_ONE = frozenset("BCNOPSFI") | AROMATIC | BONDS | frozenset("[]();")

SMILES_MIN_UNITS = 10
FASTA_MIN_LENGTH = 27

# A unit: a bracket atom, an element (two letters before one), or one bond/ring/branch/charge character.
_UNIT = "|".join([r"\[[^\]]+\]", *sorted(ELEMENTS | AROMATIC, key=lambda s: (-len(s), s)), r"[()\.=\-#@\d$%*:+/\\]"])
# Atomic per unit ("Cn" is copernicium, never C then n), not starting or ending on ':' '.' '='.
_SMILES_RUN = regex.compile(rf"(?![:.=])(?>{_UNIT}){{{SMILES_MIN_UNITS},}}(?<![:.=])")
_FASTA_RUN = regex.compile(rf"[A-Z]{{{FASTA_MIN_LENGTH},}}")
_BRACKET_BAN_LETTERS = regex.compile(r"(?:[A-GI-Z]|[a-z]){3,}")  # 3+ letters other than H in a row
_BRACKET_BAN_DIGITS = regex.compile(r"\d{4,}")
_NUMBERS = regex.compile(r"\d+")
_BRACKET_ATOMS = regex.compile(r"\[([^\[\]]*)\]")


class AutoTag(NamedTuple):
    kind: str  # "SMILES" or "FASTA"
    opening: bool


def _ascii_letter(c: str) -> bool:
    return c.isascii() and c.isalpha()


def _bracket_atoms_ok(s: str) -> bool:
    # Brackets in order: one with a parenthesis or nothing inside fails, unless a bracket opening with an
    # element symbol came first (that one decides: valid).
    for inner in _BRACKET_ATOMS.findall(s):
        if not inner or "(" in inner or ")" in inner:
            return False
        if inner[0] in ELEMENTS or inner[0] in AROMATIC or inner[:2] in ELEMENTS:
            return True
    return True


def _rules_ok(s: str) -> bool:
    """The reference's rule-based check (used when RDKit is missing): bonds, brackets, branches, ring closures."""
    n = len(s)
    sq_open = sq_close = par_open = par_close = 0
    ring_open: dict[str, bool] = {}  # ring label ("1", or "12" after %) -> open now
    has_upper = False
    ring_marks = 0
    first_close, last_close = s.find("]"), s.rfind("]")
    i = 0
    while i < n:
        c = s[i]
        has_upper = has_upper or "A" <= c <= "Z"
        if c in BONDS and (i == 0 or i == n - 1 or s[i - 1] in BONDS):
            return False  # a bond at either end, or two in a row
        step = 0
        if c == "[":
            sq_open += 1
            if sq_open > sq_close + 1 or i == n - 1 or last_close < i:
                return False
            inner = s[i + 1 : first_close]  # up to the string's first ']', as the reference reads it
            if _BRACKET_BAN_LETTERS.search(inner) or _BRACKET_BAN_DIGITS.search(inner):
                return False
            if len(_NUMBERS.findall(inner)) > 2:
                return False
            step = 1
        elif c == "]":
            sq_close += 1
            if sq_close > sq_open:
                return False
            step = 1
        elif c == "(":
            par_open += 1
            step = 1
        elif c == ")":
            par_close += 1
            if par_close > par_open:
                return False
            step = 1
        if sq_open == sq_close:  # outside a bracket atom (its inside is not checked character by character)
            if c.isdigit():
                ring_marks += 1
                step = 1
                if "%" not in s[max(0, i - 2) : i]:
                    ring_open[c] = not ring_open.get(c, False)
            elif c == "%":
                if i >= n - 2 or not s[i + 1].isdigit() or not s[i + 2].isdigit():
                    return False
                ring_marks += 1
                step = 3
                label = s[i + 1 : i + 3]
                ring_open[label] = not ring_open.get(label, False)
            if step == 0:
                if i < n - 1 and s[i : i + 2] in _BARE_TWO:
                    step = 2
                elif c in _BARE_ONE:
                    step = 1
                else:
                    return False
        i += step or 1
    if sq_open != sq_close or any(ring_open.values()):
        return False
    if not has_upper and ring_marks < 2:
        return False
    return _bracket_atoms_ok(s)


_rdkit_chem: object | None = None
_rdkit_checked = False


def _rdkit() -> object | None:
    """RDKit's Chem module when installed (its parse errors silenced), else None."""
    global _rdkit_chem, _rdkit_checked
    if not _rdkit_checked:
        _rdkit_checked = True
        try:
            from rdkit import Chem, RDLogger
        except ImportError:
            return None
        RDLogger.DisableLog("rdApp.*")
        _rdkit_chem = Chem
    return _rdkit_chem


def smiles_is_valid(candidate: str, use_rdkit: bool | None = None) -> bool:
    """At least 5 ASCII letters and a valid molecule (RDKit when installed, unless `use_rdkit` says otherwise)."""
    if sum(map(_ascii_letter, candidate)) < 5:
        return False
    chem = _rdkit() if use_rdkit is not False else None
    if chem is not None:
        return chem.MolFromSmiles(candidate) is not None  # type: ignore[attr-defined]
    if use_rdkit:
        raise ImportError("smiles_is_valid(use_rdkit=True) needs RDKit: pip install rdkit")
    return _rules_ok(candidate)


def _tag_runs(text: str, kind: str, use_rdkit: bool | None) -> list[str | AutoTag]:
    out: list[str | AutoTag] = []
    last = 0
    if kind == "SMILES":
        matches = _SMILES_RUN.finditer(text)
    else:
        matches = _FASTA_RUN.finditer(text)
    for m in matches:
        start, end = m.span()
        if kind == "SMILES":
            if not smiles_is_valid(m.group(), use_rdkit):
                continue
            if (start > 0 and _ascii_letter(text[start - 1])) or (end < len(text) and _ascii_letter(text[end])):
                continue  # part of a word
        if start > last:
            out.append(text[last:start])
        out += [AutoTag(kind, True), m.group(), AutoTag(kind, False)]
        last = end
    if last < len(text):
        out.append(text[last:])
    return out


def auto_tag(text: str, use_rdkit: bool | None = None) -> list[str | AutoTag]:
    """`text` cut into plain pieces and tagged SMILES / protein spans (SMILES first, then proteins in every piece,
    tagged spans included). Empty pieces are left out."""
    out: list[str | AutoTag] = []
    for piece in _tag_runs(text, "SMILES", use_rdkit):
        out += [piece] if isinstance(piece, AutoTag) else _tag_runs(piece, "FASTA", use_rdkit)
    return out
