"""Find a model directory (local path or offline Hugging Face cache) and read what it declares."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any


class ModelDirError(ValueError):
    """The model cannot be found or read; the message says where we looked and what to do."""


@dataclass
class ModelInfo:
    path: Path  # the resolved local directory
    name: str  # the name the user gave (path or repo id)
    config: dict[str, Any]  # config.json of the language model
    generation_config: dict[str, Any] = field(default_factory=dict)  # generation_config.json, or {}

    @property
    def architecture(self) -> str:
        archs = self.config.get("architectures") or []
        if not archs:
            raise ModelDirError(f"{self.path / 'config.json'} names no architectures")
        return archs[0]

    @property
    def model_type(self) -> str | None:
        return self.config.get("model_type")

    @property
    def hf_config(self) -> SimpleNamespace:
        """config.json as attributes (no remote code, no transformers class needed)."""
        return SimpleNamespace(**self.config)

    @property
    def quant_method(self) -> str | None:
        qc = self.config.get("quantization_config") or {}
        return qc.get("quant_method")

    @property
    def max_position_embeddings(self) -> int:
        return int(self.config.get("max_position_embeddings") or self.config.get("seq_length") or 4096)


def _hf_cache_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("HF_HUB_CACHE"):
        dirs.append(Path(os.environ["HF_HUB_CACHE"]))
    hf_home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    dirs.append(hf_home / "hub")
    return dirs


def _find_in_hf_cache(repo_id: str, revision: str | None) -> Path | None:
    """The snapshot directory of `repo_id` in the local HF cache, never touching the network."""
    for cache in _hf_cache_dirs():
        repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
        if not repo_dir.is_dir():
            continue
        ref = repo_dir / "refs" / (revision or "main")
        snapshots = repo_dir / "snapshots"
        if ref.is_file():
            snap = snapshots / ref.read_text().strip()
            if snap.is_dir():
                return snap
        if revision and (snapshots / revision).is_dir():
            return snapshots / revision
        candidates = sorted(snapshots.glob("*"), key=lambda p: p.stat().st_mtime) if snapshots.is_dir() else []
        if candidates:
            return candidates[-1]
    return None


def resolve_model_path(model: str | os.PathLike, revision: str | None = None) -> Path:
    path = Path(model).expanduser()
    if path.is_dir():
        return path.resolve()
    name = str(model)
    if path.exists():
        raise ModelDirError(f"model path {name} is a file, not a model directory")
    looks_like_repo = name.count("/") == 1 and not name.startswith((".", "/", "~"))
    if looks_like_repo:
        snap = _find_in_hf_cache(name, revision)
        if snap is not None:
            return snap
        where = ", ".join(str(d) for d in _hf_cache_dirs())
        raise ModelDirError(
            f"model {name} is not a local directory and not in the Hugging Face cache ({where}); "
            f"download it first, e.g. `huggingface-cli download {name}`, or pass its local path"
        )
    raise ModelDirError(f"model directory {name} does not exist")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelDirError(f"cannot read {path}: {e}") from None


def load_model_info(model: str | os.PathLike, revision: str | None = None, allow_no_weights: bool = False) -> ModelInfo:
    path = resolve_model_path(model, revision)
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise ModelDirError(f"model directory {path} has no config.json")
    config = _read_json(cfg_path)
    gen_path = path / "generation_config.json"
    gen = _read_json(gen_path) if gen_path.is_file() else {}
    has_weights = any(path.glob("*.safetensors")) or any(path.glob("*.bin")) or any(path.glob("*.pt"))
    if not has_weights and not allow_no_weights:
        raise ModelDirError(f"model directory {path} has no *.safetensors or *.bin weights")
    return ModelInfo(path=path, name=str(model), config=config, generation_config=gen)
