"""The built-in chat templates: Jinja sources (Python strings, so they ship with the package) and their specs.

Every template reads the variables a Hugging Face chat template reads (`messages`, `tools`,
`add_generation_prompt`, `bos_token`, `enable_thinking`) and expects messages already normalized by
`interndeploy.chat.templates` (string content, tool-call arguments parsed into objects where they were JSON).
The InternLM family renders the functions of `tools` (without the OpenAI `{"type": "function"}` wrapper),
as LMDeploy does. Output is byte-exact per shared/FORMATS.md.
"""

from __future__ import annotations

from dataclasses import dataclass

INTERNLM2_SYSTEM = (
    "You are an AI assistant whose name is InternLM (书生·浦语).\n"
    "- InternLM (书生·浦语) is a conversational language model that is developed by Shanghai AI Laboratory "
    "(上海人工智能实验室). It is designed to be helpful, honest, and harmless.\n"
    "- InternLM (书生·浦语) can understand and communicate fluently in the language chosen by the user such as "
    "English and 中文."
)

INTERN_S1_THINKING_SYSTEM = (
    "You are an expert reasoner with extensive experience in all areas. You approach problems through "
    "systematic thinking and rigorous reasoning. Your response should reflect deep understanding and precise "
    "logical thinking, making your solution path and reasoning clear to others. Please put your thinking "
    "process within <think>...</think> tags."
)

INTERN_S1_TOOL_INSTRUCTION = (
    "Your response should consist of a reasoning step (**thought**) followed immediately by a function call in "
    "valid JSON format. Wrap each function call using the `<|action_start|><|plugin|>` and `<|action_end|>` tags."
    "\n\n**Format example:**\n\n```\n(Your thought goes here...)\n\n<|action_start|><|plugin|>\n{\n"
    '    "name": "tool_name",\n    "parameters": {\n        "parameter1": "value1",\n'
    '        "parameter2": "value2"\n    }\n}\n<|action_end|>\n```\n\n# External Tools\n'
    "You have access to these tools:\n"
)


def _jinja_str(text: str) -> str:
    """`text` as a Jinja string literal."""
    escaped = text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
    return f"'{escaped}'"


# Shared pieces of the InternLM-family templates: the OpenAI `tool` role becomes an `environment` turn
# named <|plugin|> (or <|interpreter|>); any role may carry name=plugin|interpreter as in LMDeploy/lagent.
_INTERNLM_PRELUDE = """
{%- if bos_token is defined and bos_token %}{{- bos_token }}{%- endif %}
{%- set names = {'plugin': '<|plugin|>', 'interpreter': '<|interpreter|>'} %}
{%- set has_system = messages | length > 0 and messages[0].role == 'system' %}
{%- set fns = namespace(items=[]) %}
{%- for tool in tools or [] %}
    {%- set fns.items = fns.items + [tool.function if tool.function is defined else tool] %}
{%- endfor %}
{%- macro header(message) %}
    {%- if message.role == 'tool' %}
        {{- '<|im_start|>environment name=' + (names.interpreter if message.name == 'interpreter' else names.plugin) }}
    {%- elif message.name is defined and message.name in names %}
        {{- '<|im_start|>' + message.role + ' name=' + names[message.name] }}
    {%- else %}
        {{- '<|im_start|>' + message.role }}
    {%- endif %}
    {{- '\\n' }}
{%- endmacro %}
"""

INTERNLM2_TEMPLATE = (
    _INTERNLM_PRELUDE
    + "{%- set default_system = "
    + _jinja_str(INTERNLM2_SYSTEM)
    + " %}"
    + """
{%- set tools_turn = '<|im_start|>system name=<|plugin|>\\n' + fns.items | tojson + '<|im_end|>\\n' %}
{%- if not has_system %}
    {{- '<|im_start|>system\\n' + default_system + '<|im_end|>\\n' }}
    {%- if tools %}{{- tools_turn }}{%- endif %}
{%- endif %}
{%- for message in messages %}
    {{- header(message) + message.content }}
    {%- if message.role == 'assistant' and message.tool_calls %}
        {%- for tool_call in message.tool_calls %}
            {%- set fn = tool_call.function if tool_call.function is defined else tool_call %}
            {{- '<|action_start|><|plugin|>\\n' + {'name': fn.name, 'parameters': fn.arguments} | tojson }}
            {{- '<|action_end|>' }}
        {%- endfor %}
    {%- endif %}
    {{- '<|im_end|>\\n' }}
    {%- if loop.first and has_system and tools %}{{- tools_turn }}{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}
"""
)

INTERN_S1_TEMPLATE = (
    _INTERNLM_PRELUDE
    + "{%- set default_system = "
    + _jinja_str(INTERN_S1_THINKING_SYSTEM)
    + " %}{%- set tool_instruction = "
    + _jinja_str(INTERN_S1_TOOL_INSTRUCTION)
    + " %}"
    + """
{%- set thinking = enable_thinking is not defined or enable_thinking %}
{%- if tools %}
    {%- set tool_text = tool_instruction + fns.items | tojson(indent=2) %}
    {%- if has_system %}
        {%- set tool_text = messages[0].content + '\\n\\n' + tool_text %}
    {%- elif thinking %}
        {%- set tool_text = default_system + '\\n\\n' + tool_text %}
    {%- endif %}
    {{- '<|im_start|>system name=<|plugin|>\\n' + tool_text + '<|im_end|>\\n' }}
{%- elif not has_system and thinking %}
    {{- '<|im_start|>system\\n' + default_system + '<|im_end|>\\n' }}
{%- endif %}
{%- set ns = namespace(last_user=-1) %}
{%- for message in messages %}
    {%- if message.role == 'user' %}{%- set ns.last_user = loop.index0 %}{%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if not (loop.first and has_system and tools) %}
        {{- header(message) }}
        {%- if ns.last_user >= 0 and loop.index0 > ns.last_user and message.reasoning_content is string %}
            {{- '<think>\\n' + message.reasoning_content + '\\n</think>\\n' }}
        {%- endif %}
        {{- message.content }}
        {%- if message.role == 'assistant' and message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- set fn = tool_call.function if tool_call.function is defined else tool_call %}
                {{- '<|action_start|><|plugin|>\\n' + {'name': fn.name, 'parameters': fn.arguments} | tojson }}
                {{- '\\n<|action_end|>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if thinking %}{{- '<think>' }}{%- endif %}
{%- endif %}
"""
)

# Qwen3's official chat template (the revision that tolerates non-string content), unchanged.
QWEN3_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\\n\\n' }}
    {%- endif %}
    {{- "# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}"""  # noqa: E501

# LMDeploy's piece-wise custom template (`--chat-template config.json` with user/eoh/assistant/... keys):
# `pieces` holds the role prefixes and suffixes, `meta_instruction` the default system text.
PIECES_TEMPLATE = """
{%- if meta_instruction is not none and messages | length > 0 and messages[0].role != 'system' %}
    {{- pieces.system + meta_instruction + pieces.eosys }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == 'user' %}{{- pieces.user + message.content + pieces.eoh }}
    {%- elif message.role == 'assistant' %}{{- pieces.assistant + message.content + pieces.eoa + pieces.separator }}
    {%- elif message.role == 'system' %}{{- pieces.system + message.content + pieces.eosys }}
    {%- else %}{{- pieces.tool + message.content + pieces.eotool }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- pieces.assistant }}{%- endif %}
"""


@dataclass(frozen=True)
class BuiltinSpec:
    """A built-in template and what the engine needs to know about it (see ChatTemplate's fields)."""

    source: str
    family: str
    stop_words: tuple[str, ...]
    thinking_default: bool
    supports_thinking: bool
    role_aliases: tuple[tuple[str, str], ...] = ()


INTERNLM_STOPS = ("<|im_end|>", "<|action_end|>")
QWEN3_STOPS = ("<|im_end|>", "<|endoftext|>")
_QWEN3 = BuiltinSpec(QWEN3_TEMPLATE, "qwen3", QWEN3_STOPS, True, True, (("environment", "tool"),))
BUILTINS: dict[str, BuiltinSpec] = {
    "internlm2": BuiltinSpec(INTERNLM2_TEMPLATE, "internlm", INTERNLM_STOPS, False, False),
    "internlm3": BuiltinSpec(INTERNLM2_TEMPLATE, "internlm", INTERNLM_STOPS, False, False),
    "intern-s1": BuiltinSpec(INTERN_S1_TEMPLATE, "intern-s1", INTERNLM_STOPS, True, True),
    "qwen3": _QWEN3,
    "intern-s1-pro": _QWEN3,
}
ALIASES: dict[str, str] = {
    "internlm2.5": "internlm2",
    "internlm2-5": "internlm2",
    "internlm2-chat": "internlm2",
    "interns1": "intern-s1",
    "intern-s1-mini": "intern-s1",
    "interns1-mini": "intern-s1",
    "interns1-pro": "intern-s1-pro",
    "qwen3-moe": "qwen3",
}
# config.json model_type -> built-in, used when the model directory ships no template
MODEL_TYPE_BUILTINS: dict[str, str] = {
    "internlm2": "internlm2",
    "internlm3": "internlm3",
    "qwen3": "qwen3",
    "qwen3_moe": "qwen3",
    "interns1": "intern-s1",
}
