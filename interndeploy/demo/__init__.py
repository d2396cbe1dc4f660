"""The embedded demo model: a tiny InternLM2-architecture chat model trained by this project.

`interndeploy/demo/model/` is an ordinary InternLM2 checkpoint directory (config.json, model.safetensors,
tokenizer.json, tokenizer_config.json with the Intern-S1 chat template, generation_config.json) that ships
inside the package, so `pipeline("demo")`, `interndeploy chat demo` and `interndeploy serve api_server demo`
work offline. It is made by `python -m interndeploy.demo.train` from the synthetic corpus of
`interndeploy.demo.corpus`; `interndeploy.demo.evaluate` measures it on held-out tool use.
This module stays import-light: `model_dir` resolves the name `demo` through it.
"""

from __future__ import annotations

from pathlib import Path

DEMO_NAME = "demo"  # what users type wherever a model is named
DEMO_MODEL_ID = "interndeploy-demo"  # the model id the server reports for it


def demo_model_dir() -> Path:
    """The directory of the embedded demo model."""
    return Path(__file__).resolve().parent / "model"
