"""Random access to a checkpoint's tensors by name, and a sharded safetensors writer.

CheckpointReader   name -> file map over the directory's safetensors (read lazily, one tensor at a time)
                   or pytorch_model*.bin files (each loaded memory-mapped once, kept while in use).
ShardWriter        add(name, tensor) ... close(): model-0000i-of-0000N.safetensors of about `shard_bytes`
                   each, plus model.safetensors.index.json, as `save_pretrained` lays them out.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from interndeploy.models.loader import checkpoint_files

logger = logging.getLogger("interndeploy")


class CheckpointReader:
    def __init__(self, model_dir: Path) -> None:
        self.files: dict[str, Path] = {}
        self._bin: dict[Path, dict[str, torch.Tensor]] = {}
        for path in checkpoint_files(Path(model_dir)):
            if path.suffix == ".safetensors":
                with safe_open(path, framework="pt", device="cpu") as f:
                    keys = list(f.keys())
            else:
                keys = list(self._load_bin(path))
            self.files.update(dict.fromkeys(keys, path))

    @property
    def names(self) -> list[str]:
        return list(self.files)

    def _load_bin(self, path: Path) -> dict[str, torch.Tensor]:
        if path not in self._bin:
            try:
                self._bin[path] = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # legacy (non-zip) format cannot be memory-mapped
                self._bin[path] = torch.load(path, map_location="cpu", weights_only=True)
        return self._bin[path]

    def get(self, name: str) -> torch.Tensor:
        path = self.files[name]
        if path.suffix != ".safetensors":
            return self._load_bin(path)[name]
        with safe_open(path, framework="pt", device="cpu") as f:
            return f.get_tensor(name)


class ShardWriter:
    def __init__(self, out_dir: Path, shard_bytes: int = 2 * 1024**3) -> None:
        self.out_dir = Path(out_dir)
        self.shard_bytes = shard_bytes
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._written: list[tuple[Path, list[str]]] = []
        self._total = 0
        stale = [*self.out_dir.glob("*.safetensors"), *self.out_dir.glob("pytorch_model*.bin"),
                 *self.out_dir.glob("*.index.json")]
        if stale:
            logger.warning("replacing %d weight files already in %s", len(stale), self.out_dir)
        for f in stale:
            f.unlink()

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self._pending and self._pending_bytes + size > self.shard_bytes:
            self._flush()
        self._pending[name] = tensor.detach().to("cpu").contiguous()
        self._pending_bytes += size
        self._total += size

    def _flush(self) -> None:
        path = self.out_dir / f"shard-{len(self._written):05d}.tmp.safetensors"
        save_file(self._pending, str(path), metadata={"format": "pt"})
        self._written.append((path, list(self._pending)))
        self._pending, self._pending_bytes = {}, 0

    def close(self) -> list[Path]:
        """Write the last shard, give the shards their final names and write the index; the shard paths."""
        if self._pending or not self._written:
            self._flush()
        n = len(self._written)
        final: list[Path] = []
        weight_map: dict[str, str] = {}
        for i, (tmp, names) in enumerate(self._written):
            name = "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            tmp.rename(self.out_dir / name)
            final.append(self.out_dir / name)
            weight_map.update(dict.fromkeys(names, name))
        if n > 1:
            index = {"metadata": {"total_size": self._total}, "weight_map": weight_map}
            (self.out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        return final
