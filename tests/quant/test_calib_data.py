"""Calibration windows from local files (.txt, .jsonl) and the errors for unusable sets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from interndeploy.quant.calib_data import CalibDataError, calib_samples


class CharTokenizer:
    """One id per character: window arithmetic is easy to check."""

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        return [ord(c) % 256 for c in text]


def test_txt_windows_are_seeded_slices(tmp_path: Path) -> None:
    path = tmp_path / "calib.txt"
    text = "".join(chr(97 + i % 26) for i in range(1000))
    path.write_text(text)
    a = calib_samples(str(path), CharTokenizer(), 5, 64, seed=0)
    assert a.shape == (5, 64)
    ids = CharTokenizer().encode(text)
    for row in a.tolist():  # each window is a contiguous slice of the text
        start = ids.index(row[0])
        assert any(ids[s : s + 64] == row for s in range(start, len(ids) - 63, 26))
    assert a.equal(calib_samples(str(path), CharTokenizer(), 5, 64, seed=0))


def test_jsonl_documents_and_short_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    warnings: list[str] = []
    monkeypatch.setattr("interndeploy.quant.calib_data.logger.warning", lambda msg, *a: warnings.append(msg % a))
    path = tmp_path / "calib.jsonl"
    path.write_text("\n".join(json.dumps({"text": "x" * 50, "id": i}) for i in range(10)))
    windows = calib_samples(str(path), CharTokenizer(), 4, 100)
    assert windows.shape == (4, 100)  # documents joined until there are enough tokens
    short = tmp_path / "short.txt"
    short.write_text("tiny")
    assert calib_samples(str(short), CharTokenizer(), 8, 64).shape == (1, 4)
    assert any("gives 1 windows of 4 tokens" in w for w in warnings)


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        ("{not json", ".jsonl", "not valid JSONL"),
        ('[{"t": 1}]', ".json", 'have a "text" string'),
        ("", ".txt", "no text"),
    ],
)
def test_bad_files(tmp_path: Path, content: str, suffix: str, message: str) -> None:
    path = tmp_path / f"calib{suffix}"
    path.write_text(content)
    with pytest.raises(CalibDataError, match=message):
        calib_samples(str(path), CharTokenizer(), 2, 8)


def test_unknown_name() -> None:
    with pytest.raises(CalibDataError, match="not a local file and not one of ptb, wikitext2, c4, pileval"):
        calib_samples("openwebtext", CharTokenizer(), 2, 8)
