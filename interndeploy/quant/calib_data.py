"""Calibration token windows for AWQ: a named dataset from the local `datasets` cache, or a local text file.

    --calib-dataset ptb | wikitext2 | c4 | pileval   LMDeploy's sets, read offline from the datasets cache
    --calib-dataset PATH.txt                          the whole file is one text
    --calib-dataset PATH.jsonl                        one JSON object per line, its "text" field a document

Continuous texts (ptb, wikitext2, .txt) are tokenized whole and `n` windows of `seqlen` tokens start at
seeded random offsets (as LMDeploy samples them); document sets (c4, pileval, .jsonl) take windows from
shuffled documents, joining documents when one is shorter than a window.
"""

from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from interndeploy.tokenizer import Tokenizer

logger = logging.getLogger("interndeploy")


class CalibDataError(ValueError):
    """The calibration set cannot be read; the message names it and says how to get it."""


@dataclass(frozen=True)
class NamedSet:
    repos: tuple[tuple[str, str | None], ...]  # (dataset repo, config) names to try in the cache, LMDeploy's first
    split: str
    field: str  # text column
    documents: bool  # True: sample from shuffled documents; False: one continuous text
    load_kwargs: dict[str, Any] = field(default_factory=dict)


NAMED_SETS: dict[str, NamedSet] = {
    "ptb": NamedSet(
        (("ptb_text_only", "penn_treebank"), ("ptb-text-only/ptb_text_only", "penn_treebank")), "train", "sentence",
        documents=False,
    ),
    "wikitext2": NamedSet(
        (("wikitext", "wikitext-2-raw-v1"), ("Salesforce/wikitext", "wikitext-2-raw-v1")), "train", "text",
        documents=False,
    ),
    "c4": NamedSet(
        (("allenai/c4", None),), "train", "text", documents=True,
        load_kwargs={"data_files": {"train": "en/c4-train.00000-of-01024.json.gz"}},
    ),
    "pileval": NamedSet((("mit-han-lab/pile-val-backup", None),), "validation", "text", documents=True),
}


def _datasets_cache() -> str:
    try:
        import datasets

        return str(datasets.config.HF_DATASETS_CACHE)
    except Exception:  # noqa: BLE001 - only for the message
        return "~/.cache/huggingface/datasets"


def _load_named(name: str) -> tuple[list[str], bool]:
    spec = NAMED_SETS[name]
    repo, config = spec.repos[0]
    args = [repr(repo), *([repr(config)] if config else []), *(f"{k}={v!r}" for k, v in spec.load_kwargs.items())]
    fetch = f"datasets.load_dataset({', '.join(args)}, split={spec.split!r})"
    local_hint = "or pass a local text file: --calib-dataset FILE.txt (or .jsonl)"
    # no network at run time: read the cache only, unless the user has explicitly allowed downloads
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import datasets
    except ImportError:
        raise CalibDataError(
            f"calibration dataset {name!r} needs the `datasets` package: pip install 'interndeploy[lite]', "
            f"{local_hint}"
        ) from None
    last: Exception | None = None
    for repo_id, config in spec.repos:
        try:
            ds = datasets.load_dataset(repo_id, config, split=spec.split, **spec.load_kwargs)
            return [str(t) for t in ds[spec.field]], spec.documents
        except Exception as e:  # noqa: BLE001 - every failure to find it locally means the same to the user
            last = e
    logger.debug("datasets could not load %s: %r", name, last)
    raise CalibDataError(
        f"calibration dataset {name!r} ({repo}) is not in the local datasets cache {_datasets_cache()} "
        f"and interndeploy does not download at run time; fetch it where there is network with "
        f"`python -c \"import datasets; {fetch}\"` and copy the cache here, {local_hint}"
    )


def _load_file(path: Path) -> tuple[list[str], bool]:
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CalibDataError(f"cannot read calibration file {path}: {e}") from None
    if path.suffix in (".jsonl", ".json"):
        rows: list[Any] = []
        try:
            if path.suffix == ".json":
                data = json.loads(raw)
                rows = data if isinstance(data, list) else [data]
            else:
                rows = [json.loads(line) for line in raw.splitlines() if line.strip()]
        except json.JSONDecodeError as e:
            raise CalibDataError(f"calibration file {path} is not valid {path.suffix[1:].upper()}: {e}") from None
        texts = [r if isinstance(r, str) else r.get("text") if isinstance(r, dict) else None for r in rows]
        if not texts or any(not isinstance(t, str) for t in texts):
            raise CalibDataError(f"calibration file {path}: every record must be a string or have a \"text\" string")
        return texts, True
    return [raw], False


def load_calib_texts(dataset: str) -> tuple[list[str], bool]:
    """(texts, are-they-separate-documents) for --calib-dataset."""
    path = Path(dataset).expanduser()
    if path.is_file():
        return _load_file(path)
    if dataset in NAMED_SETS:
        return _load_named(dataset)
    raise CalibDataError(
        f"--calib-dataset {dataset}: not a local file and not one of {', '.join(NAMED_SETS)} "
        "(a local .txt or .jsonl file works too)"
    )


def _encode(tokenizer: Tokenizer, text: str) -> list[int]:
    """Token ids of a long text, without transformers' warning that it exceeds the model's max length."""
    hf_logger = logging.getLogger("transformers")
    level = hf_logger.level
    hf_logger.setLevel(logging.ERROR)
    try:
        return tokenizer.encode(text, add_bos=False)
    finally:
        hf_logger.setLevel(level)


def _windows_from_stream(ids: list[int], n: int, seqlen: int, rng: random.Random) -> list[list[int]]:
    if len(ids) <= seqlen:
        return [ids]
    return [ids[s : s + seqlen] for s in (rng.randint(0, len(ids) - seqlen) for _ in range(n))]


def calib_samples(
    dataset: str, tokenizer: Tokenizer, n_samples: int, seqlen: int, seed: int = 0
) -> torch.Tensor:
    """[n, L] int64 token windows (L = seqlen, or less when the whole calibration text is shorter)."""
    if n_samples < 1 or seqlen < 2:
        raise CalibDataError(f"need --calib-samples >= 1 and --calib-seqlen >= 2, got {n_samples} and {seqlen}")
    texts, documents = load_calib_texts(dataset)
    rng = random.Random(seed)
    if not documents:
        ids = _encode(tokenizer, "\n\n".join(texts))
        windows = _windows_from_stream(ids, n_samples, seqlen, rng)
    else:
        order = list(range(len(texts)))
        rng.shuffle(order)
        stream: list[int] = []
        need = n_samples * seqlen
        for i in order:  # documents in shuffled order until there are enough tokens for every window
            stream += _encode(tokenizer, texts[i])
            if len(stream) >= need:
                break
        windows = [stream[i : i + seqlen] for i in range(0, len(stream) - seqlen + 1, seqlen)][:n_samples]
        if not windows:
            windows = [stream]
    if not windows or not windows[0]:
        raise CalibDataError(f"calibration set {dataset} has no text")
    if len(windows[0]) < seqlen or len(windows) < n_samples:
        logger.warning(
            "calibration set %s gives %d windows of %d tokens (asked for %d of %d)",
            dataset, len(windows), len(windows[0]), n_samples, seqlen,
        )
    return torch.tensor(windows, dtype=torch.int64)
