"""Chat templates: OpenAI-style messages -> prompt text.

One mechanism renders everything: a sandboxed Jinja2 environment set up like Hugging Face's
`apply_chat_template` (trim_blocks/lstrip_blocks, loopcontrols, `tojson`, `raise_exception`, `strftime_now`),
fed either the model directory's own template or one of the built-ins in `interndeploy.chat.builtin`.

Built-in names (aliases in brackets): internlm2 [internlm2.5, internlm2_5, internlm2-chat], internlm3,
intern-s1 [interns1, intern-s1-mini], qwen3 [qwen3-moe], intern-s1-pro [interns1-pro]. Intern-S1-Pro is
Qwen3-based: it gets the Qwen3 template (`<tool_call>`/`<tool_response>`, family "qwen3") with thinking on
by default, matching its card's `--tool-call-parser qwen3`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from interndeploy.chat import builtin
from interndeploy.chat.builtin import ALIASES, BUILTINS, INTERNLM_STOPS, MODEL_TYPE_BUILTINS
from interndeploy.config import ChatTemplateConfig


class ChatTemplateError(ValueError):
    """The messages cannot be rendered, or the chat template cannot be chosen; the message says why."""


# model_name values meaning "use the model directory's own template" (LMDeploy: hf)
_MODEL_TEMPLATE_NAMES = ("hf", "model", "auto")
_PIECE_KEYS = ("eosys", "user", "eoh", "assistant", "eoa", "separator", "tool", "eotool")
_ROLES = frozenset({"system", "user", "assistant", "tool", "environment"})
_ROLE_ALIASES = {"developer": "system"}


def canonical_name(name: str) -> str | None:
    """The built-in template `name` (any case, `_` or `-`, or an alias) stands for, or None."""
    key = name.strip().lower().replace("_", "-")
    key = ALIASES.get(key, key)
    return key if key in BUILTINS else None


def known_names() -> list[str]:
    return sorted([*BUILTINS, *ALIASES])


# ---------------------------------------------------------------- Jinja environment (as in transformers)


class _GenerationTag(jinja2.ext.Extension):
    """Accept HF's `{% generation %}...{% endgeneration %}` (assistant-mask marker) and render its body."""

    tags = {"generation"}

    def parse(self, parser: Any) -> list[jinja2.nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


class _Namespace(jinja2.utils.Namespace):
    # no underscore attributes, so a template cannot reach interpreter internals through a namespace
    def __init__(*args: Any, **kwargs: Any) -> None:
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"chat templates cannot set namespace attribute {name!r}")


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@lru_cache(maxsize=1)
def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.globals["dict"] = lambda *a, **k: dict(*a, **k)
    env.globals["namespace"] = _Namespace
    return env


@lru_cache(maxsize=64)
def _compile(source: str) -> jinja2.Template:
    try:
        return _environment().from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise ChatTemplateError(f"chat template does not compile (line {e.lineno}): {e.message}") from e


# ---------------------------------------------------------------- message normalization


def _plain(obj: Any) -> Any:
    """pydantic objects (e.g. the openai client's messages) as plain dicts and lists, unset fields left out."""
    if hasattr(obj, "model_dump") and callable(obj.model_dump):
        obj = obj.model_dump(exclude_none=True)
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


def _text_of(content: Any, role: str, allow_media: bool) -> Any:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ChatTemplateError(f"{role} message content must be a string, null or a list of parts")
    texts = []
    for part in content:
        kind = part.get("type", "text") if isinstance(part, Mapping) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif not allow_media:
            raise ChatTemplateError(f"unsupported content part in a {role} message: {kind or type(part).__name__}")
    if len(texts) < len(content):
        return content  # media parts: the model's own template decides what to do with them
    return "\n".join(texts)  # vLLM's joining of text parts


def _arguments(value: Any) -> Any:
    if isinstance(value, str):
        if not value.strip():
            return {}
        try:
            return json.loads(value)
        except ValueError:
            return value
    return {} if value is None else value


def _tool_call(call: Any) -> dict:
    if not isinstance(call, Mapping):
        raise ChatTemplateError("each tool_calls entry must be an object")
    call = dict(call)
    fn = dict(call.get("function") or {})
    if "name" not in fn:
        raise ChatTemplateError("a tool call has no function name")
    fn["arguments"] = _arguments(fn.pop("arguments", fn.pop("parameters", None)))
    call["function"] = fn
    call.setdefault("type", "function")
    return call


def normalize_messages(
    messages: str | list, *, role_aliases: Mapping[str, str] | None = None, allow_media: bool = False
) -> list[dict]:
    """Plain dicts with known roles, string content (joined text parts; None -> ""), tool-call arguments
    parsed from JSON (as vLLM does, so templates see objects) and `reasoning_content` filled from
    `reasoning`/`thinking` (as transformers does). Null-valued keys are dropped; other extra keys stay."""
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    if not isinstance(messages, list | tuple) or not messages:
        raise ChatTemplateError("messages must be a non-empty list (or a string: one user message)")
    out = []
    for raw in messages:
        msg = _plain(raw)
        if not isinstance(msg, dict):
            raise ChatTemplateError(f"a message must be an object, got {type(raw).__name__}")
        # null fields the openai client echoes back (refusal, audio, function_call...) would read as present
        msg = {k: v for k, v in msg.items() if v is not None}
        role = msg.get("role")
        role = _ROLE_ALIASES.get(role, role)
        if role not in _ROLES:
            raise ChatTemplateError(f"unknown message role {role!r}; expected one of {sorted(_ROLES)}")
        msg["role"] = (role_aliases or {}).get(role, role)
        msg["content"] = _text_of(msg.get("content"), role, allow_media)
        if msg.get("tool_calls"):
            if not isinstance(msg["tool_calls"], list):
                raise ChatTemplateError("tool_calls must be a list")
            msg["tool_calls"] = [_tool_call(c) for c in msg["tool_calls"]]
        else:
            msg.pop("tool_calls", None)
        reasoning = next((msg[k] for k in ("reasoning_content", "reasoning", "thinking") if k in msg), None)
        if reasoning is not None:
            msg = {"thinking": reasoning, **msg, "reasoning_content": reasoning}
        out.append(msg)
    return out


# ---------------------------------------------------------------- the template


@dataclass
class ChatTemplate:
    name: str  # built-in name, "model" (the model directory's), "custom" (user Jinja) or the LMDeploy config name
    source: str
    family: str  # "internlm" | "intern-s1" | "qwen3": picks the tool-call / reasoning parsers
    stop_words: list[str]
    thinking_default: bool = False  # does the model think when the request does not say
    supports_thinking: bool = False  # does `enable_thinking` change the prompt
    default_system: str | None = None  # prepended as a system message when the request has none
    builtin: bool = False
    tool_source: str | None = None  # HF "tool_use" variant of a model template, used when tools are given
    role_aliases: dict[str, str] = field(default_factory=dict)
    extra_vars: dict[str, Any] = field(default_factory=dict)
    raw_completion: bool = False  # capability=completion: a string prompt is sent as is

    @classmethod
    def from_builtin(cls, name: str, *, default_system: str | None = None) -> ChatTemplate:
        canonical = canonical_name(name)
        if canonical is None:
            raise ChatTemplateError(f"unknown chat template {name!r}; known: {', '.join(known_names())}")
        s = BUILTINS[canonical]
        tpl = cls(canonical, s.source, s.family, list(s.stop_words), s.thinking_default, s.supports_thinking)
        tpl.default_system, tpl.builtin, tpl.role_aliases = default_system, True, dict(s.role_aliases)
        return tpl

    @classmethod
    def from_jinja(
        cls,
        source: str | list | dict,
        *,
        name: str = "model",
        model_type: str | None = None,
        default_system: str | None = None,
    ) -> ChatTemplate:
        """A template given as Jinja text (or HF's list of named templates: "default" and "tool_use")."""
        tool_source = None
        if not isinstance(source, str):
            named = source if isinstance(source, Mapping) else {t["name"]: t["template"] for t in source}
            if "default" not in named:
                raise ChatTemplateError(f"named chat templates without 'default': {sorted(named)}")
            source, tool_source = named["default"], named.get("tool_use")
        _compile(source)
        family = _guess_family(source, model_type)
        stops = [s for s in INTERNLM_STOPS if s in source] + (["<|endoftext|>"] if family == "qwen3" else [])
        supports, default = _probe_thinking(source)
        return cls(name, source, family, stops, default, supports, default_system, tool_source=tool_source)

    @classmethod
    def resolve(
        cls,
        model_chat_template: str | list | dict | None,
        config: ChatTemplateConfig | None,
        *,
        model_type: str | None = None,
    ) -> ChatTemplate:
        """Pick the template: user Jinja (config.extra["jinja"]) > config.model_name built-in > LMDeploy piece
        config > the model directory's template > built-in for `model_type` > internlm2."""
        config = config or ChatTemplateConfig()
        extra = config.extra or {}
        system = config.meta_instruction if config.meta_instruction is not None else config.system
        name = config.model_name
        if extra.get("jinja"):
            tpl = cls.from_jinja(extra["jinja"], name="custom", model_type=model_type, default_system=system)
        elif name and canonical_name(name):
            tpl = cls.from_builtin(name, default_system=system)
        elif any(k in extra for k in _PIECE_KEYS):
            tpl = _pieces_template(config)
        elif name and name.strip().lower() not in _MODEL_TEMPLATE_NAMES:
            raise ChatTemplateError(f"unknown chat template {name!r}; known: {', '.join(known_names())}")
        elif model_chat_template:
            tpl = cls.from_jinja(model_chat_template, model_type=model_type, default_system=system)
        else:
            tpl = cls.from_builtin(MODEL_TYPE_BUILTINS.get(model_type or "", "internlm2"), default_system=system)
        tpl.stop_words = list(dict.fromkeys([*tpl.stop_words, *(config.stop_words or [])]))
        tpl.raw_completion = config.capability == "completion"
        return tpl

    def thinking_enabled(self, enable_thinking: bool | None = None) -> bool:
        """Whether the model will think for a request sending `enable_thinking` (None: not sent)."""
        if not self.supports_thinking or enable_thinking is None:
            return self.thinking_default
        return bool(enable_thinking)

    def render(
        self,
        messages: str | list,
        *,
        add_generation_prompt: bool = True,
        tools: list | None = None,
        enable_thinking: bool | None = None,
        bos_token: str | None = None,
        eos_token: str | None = None,
        **template_kwargs: Any,
    ) -> str:
        if self.raw_completion and isinstance(messages, str):
            return messages
        msgs = normalize_messages(messages, role_aliases=self.role_aliases, allow_media=not self.builtin)
        if self.default_system is not None and msgs[0]["role"] != "system":
            msgs.insert(0, {"role": "system", "content": self.default_system})
        tools = _plain(list(tools)) if tools else None
        variables: dict[str, Any] = {**self.extra_vars, "documents": None, **template_kwargs}
        if enable_thinking is None:
            enable_thinking = variables.pop("enable_thinking", None)
        variables.update(messages=msgs, tools=tools, add_generation_prompt=add_generation_prompt)
        for key, value in (("bos_token", bos_token), ("eos_token", eos_token), ("enable_thinking", enable_thinking)):
            if value is not None:  # left undefined otherwise, as transformers does
                variables[key] = value
        source = self.tool_source if tools and self.tool_source else self.source
        try:
            return _compile(source).render(**variables)
        except jinja2.TemplateError as e:
            raise ChatTemplateError(f"chat template {self.name!r}: {e.message or e}") from e
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
            raise ChatTemplateError(f"chat template {self.name!r} cannot render these messages: {e}") from e


def _guess_family(source: str, model_type: str | None) -> str:
    if "<|action_start|>" in source or ("<|im_start|>" in source and "environment" in source):
        return "intern-s1" if "<think>" in source or "enable_thinking" in source else "internlm"
    if "<tool_call>" in source:
        return "qwen3"
    fallback = MODEL_TYPE_BUILTINS.get(model_type or "")
    return BUILTINS[fallback].family if fallback else "internlm"


def _probe_thinking(source: str) -> tuple[bool, bool]:
    """(supports_thinking, thinking_default), found by rendering one user turn three ways."""
    probe = [{"role": "user", "content": "hi"}]
    template = _compile(source)
    try:
        absent, on, off = (
            template.render(messages=probe, tools=None, documents=None, add_generation_prompt=True, **kw)
            for kw in ({}, {"enable_thinking": True}, {"enable_thinking": False})
        )
        absent, on, off = str(absent), str(on), str(off)
    except Exception:  # a template that rejects the probe: fall back to reading it
        supports = "enable_thinking" in source
        return supports, supports
    if on != off:
        return True, absent == on
    return False, absent.rstrip().endswith("<think>")


def _pieces_template(config: ChatTemplateConfig) -> ChatTemplate:
    """LMDeploy's custom template from role prefixes/suffixes (config JSON with user/eoh/assistant/... keys)."""
    pieces = {k: str(config.extra.get(k) or "") for k in _PIECE_KEYS}
    pieces["system"] = config.system or ""
    text = "".join(pieces.values())
    meta = config.meta_instruction if config.meta_instruction is not None else ""
    tpl = ChatTemplate(config.model_name or "custom", builtin.PIECES_TEMPLATE, _guess_family(text, None), [])
    tpl.extra_vars, tpl.builtin = {"pieces": pieces, "meta_instruction": meta}, True
    tpl.role_aliases = {"environment": "tool"}
    return tpl


# ---------------------------------------------------------------- loading


def load_chat_template_config(value: str) -> ChatTemplateConfig:
    """`--chat-template VALUE`: a built-in name, a JSON file or JSON string (LMDeploy's ChatTemplateConfig
    keys; unknown keys go to `extra`), or a Jinja file or Jinja text (vLLM style; kept in extra["jinja"])."""
    text = value.strip()
    path = Path(text).expanduser()
    try:
        from_file = not text.startswith("{") and "\n" not in text and path.is_file()
    except (OSError, ValueError):  # e.g. a long inline JSON string is not a valid file name
        from_file = False
    if from_file:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise ChatTemplateError(f"cannot read chat template file {path}: {e}") from e
    is_jinja = "{%" in text or "{{" in text
    data: Any = None
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except ValueError as e:
            if not is_jinja:
                raise ChatTemplateError(f"chat template config is not valid JSON: {e}") from e
    if data is None:
        if is_jinja or from_file:
            return ChatTemplateConfig(extra={"jinja": text})
        if path.suffix.lower() in (".json", ".jinja", ".j2") or "/" in text:
            raise ChatTemplateError(f"chat template file not found: {value}")
        if canonical_name(text) is None and text.lower() not in _MODEL_TEMPLATE_NAMES:
            raise ChatTemplateError(f"unknown chat template {text!r}; known: {', '.join(known_names())}")
        return ChatTemplateConfig(model_name=text)
    if not isinstance(data, dict):
        raise ChatTemplateError("chat template config JSON must be an object")
    stop_words = data.pop("stop_words", None)
    if stop_words is not None and not (isinstance(stop_words, list) and all(isinstance(s, str) for s in stop_words)):
        raise ChatTemplateError("chat template config: stop_words must be a list of strings")
    known = {
        k: data.pop(k) for k in ("model_name", "system", "meta_instruction", "capability", "model_path") if k in data
    }
    return ChatTemplateConfig(**known, stop_words=stop_words, extra=data)


def read_model_chat_template(model_dir: str | Path) -> str | list | None:
    """The chat template a model directory ships: chat_template.jinja, chat_template.json, or the
    `chat_template` of tokenizer_config.json (a string or HF's list of named templates); None if none."""
    model_dir = Path(model_dir)
    jinja_file = model_dir / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    for name in ("chat_template.json", "tokenizer_config.json"):
        f = model_dir / name
        if f.is_file():
            try:
                template = json.loads(f.read_text(encoding="utf-8")).get("chat_template")
            except (ValueError, AttributeError):
                continue
            if template:
                return template
    return None
