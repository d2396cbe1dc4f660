"""Find a model directory (local path or offline Hugging Face cache) and read what it declares.

A multimodal checkpoint (Intern-S1, Intern-S1-mini, InternVL) is read as its language model plus a vision tower
(`serve_vision`; models/internvit.py), or as its language model alone when `language_model_only` is asked:

    architectures                        language config   checkpoint name -> ours
    InternS1ForConditionalGeneration     text_config       model.language_model.X -> model.X, lm_head.X kept
    InternVLForConditionalGeneration     text_config       (same)
    InternVLChatModel                    llm_config        language_model.X -> X

`ModelInfo.config` is then the language model's config (with the top level's quantization_config,
dtype and token ids where it has none), `root_config` the file as written, and `weight_prefixes` the
renames the loader applies to the language model's tensors (the vision tower and projector load separately).
"""

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
    config: dict[str, Any]  # config.json of the language model (a section of it for a multimodal checkpoint)
    generation_config: dict[str, Any] = field(default_factory=dict)  # generation_config.json, or {}
    root_config: dict[str, Any] | None = None  # config.json as written, when `config` is a section of it
    weight_prefixes: tuple[tuple[str, str], ...] = ()  # (checkpoint prefix, ours) when loading a section
    serve_vision: bool = False  # a multimodal checkpoint whose vision tower runs (images and videos accepted)

    @property
    def language_model_only(self) -> bool:
        """A multimodal checkpoint served as its language model (text only)."""
        return self.root_config is not None and not self.serve_vision

    @property
    def architecture(self) -> str:
        archs = self.config.get("architectures") or []
        if not archs:
            raise ModelDirError(f"{self.path / 'config.json'} names no architectures")
        return archs[0]

    @property
    def model_type(self) -> str | None:
        """The checkpoint's model_type (the multimodal one, e.g. interns1, which picks the chat template)."""
        return (self.root_config or self.config).get("model_type")

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
    if name == "demo":  # the embedded demo model (interndeploy/demo/model); a local ./demo directory wins
        from interndeploy.demo import demo_model_dir

        return demo_model_dir()
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


# multimodal architecture -> (key of the language model's config, checkpoint prefix -> ours, in order)
_HF_VLM_PREFIXES = (("model.language_model.", "model."), ("lm_head.", "lm_head."),
                    ("language_model.model.", "model."), ("language_model.lm_head.", "lm_head."))  # fmt: skip
MULTIMODAL: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    "InternS1ForConditionalGeneration": ("text_config", _HF_VLM_PREFIXES),
    "InternVLForConditionalGeneration": ("text_config", _HF_VLM_PREFIXES),
    "InternVLChatModel": ("llm_config", (("language_model.", ""),)),
}
# model_type -> architecture, for a language config that names none
_ARCH_OF_MODEL_TYPE = {
    "qwen3": "Qwen3ForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "llama": "LlamaForCausalLM",
    "internlm2": "InternLM2ForCausalLM",
    "internlm3": "InternLM3ForCausalLM",
}
# top-level keys a language config inherits when it has none of its own
_INHERITED = ("quantization_config", "torch_dtype", "dtype", "bos_token_id", "eos_token_id", "pad_token_id",
              "tie_word_embeddings")  # fmt: skip


def language_model_section(
    root: dict[str, Any], cfg_path: Path
) -> tuple[dict[str, Any], tuple[tuple[str, str], ...]] | None:
    """(the language model's config, weight prefixes) of a multimodal config.json, or None for any other."""
    arch = next((a for a in root.get("architectures") or [] if a in MULTIMODAL), None)
    if arch is None:
        return None
    key, prefixes = MULTIMODAL[arch]
    section = root.get(key)
    if not isinstance(section, dict):
        raise ModelDirError(f"{cfg_path} is a {arch} config without the {key} of its language model")
    config = dict(section)
    if not config.get("architectures"):
        arch_of_type = _ARCH_OF_MODEL_TYPE.get(str(config.get("model_type")))
        if arch_of_type is None:
            raise ModelDirError(
                f"{cfg_path}: the {key} of {arch} names no architectures and an unknown model_type "
                f"{config.get('model_type')!r}"
            )
        config["architectures"] = [arch_of_type]
    for name in _INHERITED:
        if config.get(name) is None and root.get(name) is not None:
            config[name] = root[name]
    return config, prefixes


def load_model_info(
    model: str | os.PathLike,
    revision: str | None = None,
    allow_no_weights: bool = False,
    language_model_only: bool = False,
) -> ModelInfo:
    """Resolve `model` and read its configs. A multimodal checkpoint comes back as its language model, with its
    vision tower served unless `language_model_only` (see the module docstring)."""
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
    section = language_model_section(config, cfg_path)
    if section is not None:
        lm_config, prefixes = section
        return ModelInfo(path, str(model), lm_config, gen, root_config=config, weight_prefixes=prefixes,
                          serve_vision=not language_model_only)
    return ModelInfo(path=path, name=str(model), config=config, generation_config=gen)
