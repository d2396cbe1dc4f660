"""interndeploy: compress, deploy and serve the InternLM model family.

Names are imported lazily so `import interndeploy.engine.scheduler` (pure Python)
and the CLI's `--help` do not pay for torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "pipeline": "api",
    "Pipeline": "api",
    "Response": "api",
    "Session": "api",
    "ChatTemplateConfig": "config",
    "EngineConfig": "config",
    "GenerationConfig": "config",
    "PytorchEngineConfig": "config",
    "TurbomindEngineConfig": "config",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'interndeploy' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
