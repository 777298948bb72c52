"""OpenAI tool calling on /v1/chat/completions: the request's tools, how they reach the prompt,
and the constraint that keeps forced calls valid.

Calls use the Hermes / Qwen format: the model writes
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, parsed by ``tool_call_parser``.
A chat template that reads ``tools`` renders them itself (``apply_chat_template(tools=...)``);
for any other template (SmolLM2's, say) the tools go into the system message as
``DEFAULT_TOOL_PROMPT``, assistant calls are written back in the same format and ``tool``
messages become ``<tool_response>`` user turns, as Hermes-style templates render them.

``tool_choice``:
- ``none``: the tools are left out of the prompt and nothing is parsed;
- ``auto``: the model chooses; calls are parsed from its text; when the grammar backend has
  SGLang's ``structural_tag`` the arguments after each ``<tool_call>`` marker are constrained
  by the named function's schema;
- ``required``: the output is constrained to a JSON array of calls (``anyOf`` over the tools,
  one item unless ``parallel_tool_calls``), as SGLang does;
- a named function: the output is constrained to that function's arguments schema.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields
from typing import Any

from plait.runtime.errors import InvalidRequestError
from plait.runtime.sampling_params import SamplingParams

CALL_BEGIN = "<tool_call>"
CALL_END = "</tool_call>"
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ANY_OBJECT: dict[str, Any] = {"type": "object"}

DEFAULT_TOOL_PROMPT = """# Tools

You may call one or more functions to help with the user's request. The functions are \
described as JSON inside <tools></tools>:
<tools>
{tools}
</tools>

To call a function, write a JSON object with its name and arguments inside \
<tool_call></tool_call> tags, one per call:
<tool_call>
{{"name": <function-name>, "arguments": <arguments-json-object>}}
</tool_call>"""


@dataclass(slots=True)
class Tool:
    name: str
    parameters: dict[str, Any]  # the arguments' JSON schema
    definition: dict[str, Any]  # as the client sent it: {"type": "function", "function": {...}}


@dataclass(slots=True)
class ToolRequest:
    """The validated ``tools`` / ``tool_choice`` / ``parallel_tool_calls`` of one request.

    ``choice`` is ``"none"``, ``"auto"``, ``"required"`` or ``"named"`` (then ``forced`` is the
    named tool)."""

    tools: list[Tool]
    choice: str
    parallel: bool
    forced: Tool | None = None

    @property
    def active(self) -> bool:
        return self.choice != "none"


def tool_request(body: dict[str, Any]) -> ToolRequest | None:
    """The request's tools, or None when it has none. 400 naming the field for a bad one."""
    raw = body.get("tools")
    choice = body.get("tool_choice")
    parallel = body.get("parallel_tool_calls", True)
    if parallel is None:
        parallel = True
    if not isinstance(parallel, bool):
        raise InvalidRequestError("parallel_tool_calls", "must be a boolean")
    if raw is None or raw == []:
        if choice not in (None, "none"):
            raise InvalidRequestError("tool_choice", "needs tools")
        return None
    if not isinstance(raw, list):
        raise InvalidRequestError("tools", "must be a list of tools")
    tools = [_tool(i, t) for i, t in enumerate(raw)]
    names = [t.name for t in tools]
    if len(set(names)) != len(names):
        raise InvalidRequestError("tools", "function names must be unique")
    if choice is None:
        return ToolRequest(tools, "auto", parallel)
    if choice in ("none", "auto", "required"):
        return ToolRequest(tools, choice, parallel)
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name")
        for t in tools:
            if t.name == name:
                return ToolRequest(tools, "named", parallel, t)
        raise InvalidRequestError("tool_choice", f"names no tool in tools: {name!r}")
    raise InvalidRequestError(
        "tool_choice",
        'must be "none", "auto", "required" or {"type": "function", "function": {"name": ...}}',
    )


def _tool(i: int, t: Any) -> Tool:
    field = f"tools[{i}]"
    if not isinstance(t, dict) or t.get("type") != "function":
        raise InvalidRequestError(f"{field}.type", 'must be "function" (no other tool kind here)')
    fn = t.get("function")
    if not isinstance(fn, dict):
        raise InvalidRequestError(f"{field}.function", "must be an object")
    name = fn.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidRequestError(
            f"{field}.function.name", "must be 1-64 letters, digits, underscores or dashes"
        )
    params = fn.get("parameters")
    if params is None:
        params = {"type": "object", "properties": {}}
    if not isinstance(params, dict):
        raise InvalidRequestError(f"{field}.function.parameters", "must be a JSON schema object")
    return Tool(name, params, {"type": "function", "function": fn})


# ---- the prompt -------------------------------------------------------------------------------


def template_reads_tools(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template renders a ``tools`` list itself."""
    template = getattr(tokenizer, "chat_template", None)
    return isinstance(template, str) and "tools" in template


def prompt_messages(
    messages: list[dict[str, Any]], tools: ToolRequest | None, native: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The conversation for ``apply_chat_template`` and the ``tools`` argument to pass it.

    ``messages`` are checked messages (``role``, ``content`` str, optional ``tool_calls`` with
    ``arguments`` as JSON text). ``native``: the template renders tools and tool messages."""
    definitions = [t.definition for t in tools.tools] if tools and tools.active else None
    if native:
        return [_native_message(m) for m in messages], definitions
    out = [_plain_message(m) for m in messages]
    if definitions:
        text = DEFAULT_TOOL_PROMPT.format(tools="\n".join(json.dumps(d) for d in definitions))
        if out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{text}"}
        else:
            out.insert(0, {"role": "system", "content": text})
    return out, None


def _native_message(m: dict[str, Any]) -> dict[str, Any]:
    if not m.get("tool_calls"):
        return m
    calls = []
    for c in m["tool_calls"]:
        fn = dict(c["function"])
        try:  # templates write a dict with tojson; a string would be quoted twice
            fn["arguments"] = json.loads(fn["arguments"])
        except ValueError:
            pass
        calls.append({**c, "function": fn})
    return {**m, "tool_calls": calls}


def _plain_message(m: dict[str, Any]) -> dict[str, str]:
    if m["role"] == "tool":
        return {"role": "user", "content": f"<tool_response>\n{m['content']}\n</tool_response>"}
    text = m["content"]
    for c in m.get("tool_calls") or []:
        fn = c["function"]
        call = f'{{"name": {json.dumps(fn["name"])}, "arguments": {fn["arguments"]}}}'
        text += f"{CALL_BEGIN}\n{call}\n{CALL_END}"
    return {"role": m["role"], "content": text}


def check_tool_calls(i: int, calls: Any) -> list[dict[str, Any]]:
    """An assistant message's ``tool_calls``, checked; ``arguments`` stay JSON text."""
    field = f"messages[{i}].tool_calls"
    if not isinstance(calls, list):
        raise InvalidRequestError(field, "must be a list")
    out = []
    for j, c in enumerate(calls):
        fn = c.get("function") if isinstance(c, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise InvalidRequestError(f"{field}[{j}].function", "must have a name")
        args = fn.get("arguments", "{}")
        if not isinstance(args, str):
            raise InvalidRequestError(f"{field}[{j}].function.arguments", "must be JSON text")
        out.append(
            {
                "id": str(c.get("id", "")),
                "type": "function",
                "function": {"name": fn["name"], "arguments": args},
            }
        )
    return out


# ---- the constraint ---------------------------------------------------------------------------


def call_schema(tool: Tool) -> dict[str, Any]:
    """One call of ``tool``: ``{"name": <const>, "arguments": <its schema>}``."""
    return {
        "type": "object",
        "properties": {"name": {"const": tool.name}, "arguments": tool.parameters or _ANY_OBJECT},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def required_schema(tools: ToolRequest) -> dict[str, Any]:
    """``tool_choice: required``: a JSON array of calls of any of the tools (SGLang's shape)."""
    item = (
        call_schema(tools.tools[0])
        if len(tools.tools) == 1
        else {"anyOf": [call_schema(t) for t in tools.tools]}
    )
    schema: dict[str, Any] = {"type": "array", "items": item, "minItems": 1}
    if not tools.parallel:
        schema["maxItems"] = 1
    return schema


def has_structural_tag() -> bool:
    """Whether this build's ``SamplingParams`` takes SGLang's ``structural_tag``."""
    return "structural_tag" in {f.name for f in fields(SamplingParams)}


def structural_tag(tools: ToolRequest) -> dict[str, Any]:
    """SGLang's structural tag for ``auto``: free text until ``<tool_call>``, then a call whose
    arguments follow that function's schema."""
    structures = [
        {
            "begin": f'{CALL_BEGIN}\n{{"name": {json.dumps(t.name)}, "arguments": ',
            "schema": t.parameters or _ANY_OBJECT,
            "end": f"}}\n{CALL_END}",
        }
        for t in tools.tools
    ]
    return {"type": "structural_tag", "structures": structures, "triggers": [CALL_BEGIN]}


def constrain(tools: ToolRequest, params: SamplingParams) -> None:
    """Sets the constraint ``tool_choice`` asks for on ``params`` (see the module docstring)."""
    if tools.choice in ("none", "auto"):
        free = params.json_schema is None and params.regex is None  # response_format wins
        if tools.choice == "auto" and free and has_structural_tag():
            params.structural_tag = json.dumps(structural_tag(tools))  # type: ignore[attr-defined]
        return
    if params.json_schema is not None or params.regex is not None:
        raise InvalidRequestError(
            "tool_choice", "a forced tool call cannot be combined with response_format"
        )
    schema = tools.forced.parameters if tools.forced else required_schema(tools)
    params.json_schema = json.dumps(schema or _ANY_OBJECT)
