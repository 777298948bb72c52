"""HTTP request bodies to validated generate calls: the server's input boundary.

Every check raises ``InvalidRequestError`` naming the field as the client spelled it, so the
server answers 400 before anything reaches the worker.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from plait.runtime.errors import InvalidRequestError
from plait.runtime.limits import ModelLimits, check_input_ids
from plait.runtime.request_scope import RequestScope
from plait.runtime.sampling_params import MAX_TOP_LOGPROBS, SamplingParams
from plait.runtime.server.tool_calls import (
    ToolRequest,
    check_tool_calls,
    prompt_messages,
    template_reads_tools,
)

# OpenAI field -> SamplingParams field.
_OPENAI_SAMPLING = {
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    # SGLang's extensions of the OpenAI API
    "top_k": "top_k",
    "min_p": "min_p",
    "repetition_penalty": "repetition_penalty",
    "min_tokens": "min_new_tokens",
    "ignore_eos": "ignore_eos",
    "stop_token_ids": "stop_token_ids",
    "skip_special_tokens": "skip_special_tokens",
    "logit_bias": "logit_bias",
    "regex": "regex",
    "ebnf": "ebnf",
}
_CHAT_ROLES = {"system", "user", "assistant", "tool", "developer"}


def openai_extensions() -> tuple[str, ...]:
    """The sampling fields the OpenAI routes read beyond OpenAI's own (SGLang's extensions)."""
    return tuple(_OPENAI_SAMPLING)


@dataclass(slots=True)
class GenerateCall:
    """One prompt to run ``n`` times (``sampling_params.n`` is 1; seeds offset per choice)."""

    input_ids: list[int]
    sampling_params: SamplingParams
    n: int = 1
    rid: str | None = None
    return_text_in_logprobs: bool = True  # SGLang's default is False; plait always sent text


def request_scope(body: dict[str, Any], key_tenant: str | None) -> RequestScope:
    """The body's ``priority``, ``tenant`` and ``cache_salt`` (native fields; extensions on
    the OpenAI routes, as in SGLang and vLLM), read once per request. ``key_tenant`` (the API
    key's name) wins over the body's ``tenant``: a body field never picks another's cache."""
    scope = RequestScope(body.get("priority"), body.get("tenant"), body.get("cache_salt"))
    return scope if key_tenant is None else replace(scope, tenant=key_tenant)


def require_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidRequestError("body", "must be a JSON object")
    return body


def get(body: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise InvalidRequestError(name, f"must be {_names(kinds)}, got a boolean")
    if not isinstance(value, kinds):
        raise InvalidRequestError(name, f"must be {_names(kinds)}, got {type(value).__name__}")
    return value


def _names(kinds: tuple[type, ...]) -> str:
    words = {str: "a string", int: "an integer", float: "a number", bool: "a boolean"}
    words |= {list: "a list", dict: "an object"}
    return " or ".join(words.get(k, k.__name__) for k in kinds)


def finish_params(
    params: SamplingParams, vocab_size: int, renames: dict[str, str] | None = None
) -> tuple[SamplingParams, int]:
    """Verifies ``params`` (reporting the client's field names) and splits off ``n``."""
    try:
        params.verify(vocab_size)
    except TypeError as e:  # a list field given a scalar, say
        raise InvalidRequestError("sampling_params", f"malformed: {e}") from None
    except InvalidRequestError as e:
        field = (renames or {}).get(e.field, e.field)
        raise InvalidRequestError(field, e.message.replace(e.field, field)) from None
    n = params.n
    params.n = 1
    return params, n


def check_prompt_ids(ids: Any, field: str, limits: ModelLimits) -> list[int]:
    if not isinstance(ids, list):
        raise InvalidRequestError(field, "must be a list of token ids")
    check_input_ids(ids, field, limits.vocab_size, limits.context_len, limits.kv_total)
    return ids


def encode(text: str, field: str, limits: ModelLimits) -> list[int]:
    if limits.tokenizer is None:
        raise InvalidRequestError(field, "the model has no tokenizer; pass token ids")
    if text == "":
        raise InvalidRequestError(field, "must not be empty")
    ids = limits.tokenizer.encode(text, add_special_tokens=False)
    return check_prompt_ids(ids, field, limits)


# ---- native /generate -------------------------------------------------------------------------


def native_calls(body: dict[str, Any], limits: ModelLimits) -> tuple[bool, list[GenerateCall]]:
    """SGLang's ``GenerateReqInput``: returns whether the call was a single prompt (and n == 1)
    and one call per prompt."""
    text, input_ids = body.get("text"), body.get("input_ids")
    if (text is None) == (input_ids is None):
        raise InvalidRequestError("text", "give exactly one of text and input_ids")
    if text is not None:
        single = isinstance(text, str)
        texts = [text] if single else text
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise InvalidRequestError("text", "must be a string or a non-empty list of strings")
        prompts = [encode(t, "text", limits) for t in texts]
    else:
        if not isinstance(input_ids, list) or not input_ids:
            raise InvalidRequestError("input_ids", "must be a non-empty list of token ids")
        single = not isinstance(input_ids[0], list)
        rows = [input_ids] if single else input_ids
        prompts = [check_prompt_ids(r, "input_ids", limits) for r in rows]

    raw_params = body.get("sampling_params")
    if isinstance(raw_params, list):
        if len(raw_params) != len(prompts):
            raise InvalidRequestError("sampling_params", f"needs one per prompt ({len(prompts)})")
    elif raw_params is None or isinstance(raw_params, dict):
        raw_params = [raw_params] * len(prompts)
    else:
        raise InvalidRequestError("sampling_params", "must be an object or a list of them")
    rid = body.get("rid")
    rids = [rid] if isinstance(rid, str) else rid
    if rids is not None and (
        not isinstance(rids, list)
        or len(rids) != len(prompts)
        or not all(isinstance(r, str) and r for r in rids)
    ):
        raise InvalidRequestError(
            "rid", f"must be a non-empty string or one per prompt ({len(prompts)})"
        )
    check_unsupported(body)
    count = len(prompts)
    return_logprob = per_prompt(body, "return_logprob", bool, count)
    logprob_start_len = per_prompt(body, "logprob_start_len", int, count)
    top_logprobs_num = per_prompt(body, "top_logprobs_num", int, count)
    with_text = get(body, "return_text_in_logprobs", bool, True)
    get(body, "log_metrics", bool)  # SGLang's switch for its own metrics; the value is checked
    calls = []
    for i, (ids, raw) in enumerate(zip(prompts, raw_params)):
        if raw is not None and not isinstance(raw, dict):
            raise InvalidRequestError("sampling_params", "must be an object")
        try:
            params = SamplingParams.from_dict(raw)
        except TypeError as e:
            raise InvalidRequestError("sampling_params", str(e)) from None
        params.set_logprob_options(return_logprob[i], logprob_start_len[i], top_logprobs_num[i])
        params, n = finish_params(params, limits.vocab_size)
        rid = rids[i] if rids else None
        calls.append(GenerateCall(ids, params, n, rid, with_text))
    return single and calls[0].n == 1, calls


# SGLang's GenerateReqInput fields that need what plait does not have: refused when set.
_UNSUPPORTED = {
    "input_embeds": "input embeddings are not supported; send text or input_ids",
    "image_data": "the model is text-only",
    "video_data": "the model is text-only",
    "audio_data": "the model is text-only",
    "lora_path": "LoRA adapters are not supported",
    "lora_id": "LoRA adapters are not supported",
    "session_id": "sessions are not supported",
    "session_params": "sessions are not supported",
    "custom_logit_processor": "custom logit processors are not supported",
    "token_ids_logprob": "logprobs of chosen token ids are not supported",
    "return_hidden_states": "hidden states are not returned",
    "bootstrap_host": "prefill/decode disaggregation is not supported",
}


def check_unsupported(body: dict[str, Any]) -> None:
    for name, why in _UNSUPPORTED.items():
        if body.get(name) not in (None, False, [], {}):
            raise InvalidRequestError(name, why)


def per_prompt(body: dict[str, Any], name: str, kind: type, count: int) -> list[Any]:
    """A request-level field given once or as one value per prompt (SGLang takes both)."""
    value = body.get(name)
    if isinstance(value, list):
        if len(value) != count:
            raise InvalidRequestError(name, f"needs one value per prompt ({count})")
        return [get({name: v}, name, kind) for v in value]
    return [get(body, name, kind)] * count


# ---- OpenAI ------------------------------------------------------------------------------------


def openai_params(
    body: dict[str, Any], limits: ModelLimits, default_max_tokens: int
) -> tuple[SamplingParams, int]:
    """The sampling fields shared by completions and chat completions."""
    d: dict[str, Any] = {}
    for name, target in _OPENAI_SAMPLING.items():
        if body.get(name) is not None:
            d[target] = body[name]
    max_tokens = get(body, "max_completion_tokens", int)
    if max_tokens is None:
        max_tokens = get(body, "max_tokens", int)
    if max_tokens is not None and max_tokens < 1:  # OpenAI's floor; /generate takes 0
        name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
        raise InvalidRequestError(name, f"must be >= 1, got {max_tokens}")
    d["max_new_tokens"] = default_max_tokens if max_tokens is None else max_tokens
    stop = body.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
            raise InvalidRequestError("stop", "must be a non-empty string or a list of them")
        d["stop"] = stop
    n = get(body, "n", int, 1)
    d["n"] = n
    params = SamplingParams.from_dict(d)
    renames = {v: k for k, v in _OPENAI_SAMPLING.items()}
    renames["max_new_tokens"] = (
        "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    )
    return finish_params(params, limits.vocab_size, renames)


def apply_response_format(body: dict[str, Any], params: SamplingParams) -> None:
    """OpenAI ``response_format``: ``{"type": "text"}``, ``{"type": "json_object"}`` (any JSON
    object) or ``{"type": "json_schema", "json_schema": {"schema": {...}}}``."""
    fmt = body.get("response_format")
    if fmt is None:
        return
    if not isinstance(fmt, dict) or not isinstance(fmt.get("type"), str):
        raise InvalidRequestError("response_format", "must be an object with a string type")
    kind = fmt["type"]
    if kind == "text":
        return
    if kind == "json_object":
        schema: Any = {"type": "object"}
    elif kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), (dict, bool)):
            raise InvalidRequestError(
                "response_format.json_schema", "must be an object with a schema object"
            )
        schema = spec["schema"]
    else:
        raise InvalidRequestError(
            "response_format.type", f"must be text, json_object or json_schema, got {kind!r}"
        )
    params.json_schema = json.dumps(schema)  # compiled (and checked) once, by the worker


def check_model(body: dict[str, Any], served: set[str]) -> None:
    model = body.get("model")
    if model is None:
        return
    if not isinstance(model, str):
        raise InvalidRequestError("model", "must be a string")
    if model not in served:
        raise InvalidRequestError("model", f"model {model!r} is not served here ({sorted(served)})")


def completion_prompts(body: dict[str, Any], limits: ModelLimits) -> list[list[int]]:
    prompt = body.get("prompt")
    if prompt is None:
        raise InvalidRequestError("prompt", "is required")
    if isinstance(prompt, str):
        return [encode(prompt, "prompt", limits)]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return [encode(p, "prompt", limits) for p in prompt]
        if all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
            return [check_prompt_ids(prompt, "prompt", limits)]
        if all(isinstance(p, list) for p in prompt):
            return [check_prompt_ids(p, "prompt", limits) for p in prompt]
    raise InvalidRequestError(
        "prompt", "must be a string, a list of strings, or token ids (a list, or lists)"
    )


def completion_logprobs(body: dict[str, Any]) -> int | None:
    """OpenAI completions' ``logprobs``: how many top alternatives per token, or None."""
    k = get(body, "logprobs", int)
    if k is not None and not 0 <= k <= MAX_TOP_LOGPROBS:
        raise InvalidRequestError("logprobs", f"must be in [0, {MAX_TOP_LOGPROBS}], got {k}")
    return k


def chat_logprobs(body: dict[str, Any]) -> int | None:
    """Chat's ``logprobs`` (bool) and ``top_logprobs`` (int): the top-k to return, or None."""
    want = get(body, "logprobs", bool, False)
    k = get(body, "top_logprobs", int)
    if k is not None and not 0 <= k <= MAX_TOP_LOGPROBS:
        raise InvalidRequestError("top_logprobs", f"must be in [0, {MAX_TOP_LOGPROBS}], got {k}")
    if k is not None and not want:
        raise InvalidRequestError("top_logprobs", "needs logprobs set to true")
    return (k or 0) if want else None


def chat_prompt(
    body: dict[str, Any], limits: ModelLimits, tools: ToolRequest | None = None
) -> list[int]:
    """The conversation (with ``tools`` when the request has some) through the model's chat
    template, as token ids."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError("messages", "is required: a non-empty list of messages")
    clean = [_chat_message(i, m) for i, m in enumerate(messages)]
    if limits.tokenizer is None:
        raise InvalidRequestError("messages", "the model has no tokenizer")
    if getattr(limits.tokenizer, "chat_template", None) is None:
        raise InvalidRequestError("messages", "the model has no chat template; use /v1/completions")
    native = template_reads_tools(limits.tokenizer)
    conversation, definitions = prompt_messages(clean, tools, native)
    extra = {"tools": definitions} if definitions else {}
    try:
        text = limits.tokenizer.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=True, **extra
        )
    except Exception as e:  # the template's own checks (role order, say) speak to the client
        raise InvalidRequestError("messages", f"the chat template rejected them: {e}") from None
    ids = limits.tokenizer.encode(text, add_special_tokens=False)
    return check_prompt_ids(ids, "messages", limits)


def _chat_message(i: int, m: Any) -> dict[str, Any]:
    if not isinstance(m, dict):
        raise InvalidRequestError(f"messages[{i}]", "must be an object")
    role, content = m.get("role"), m.get("content")
    if role not in _CHAT_ROLES:
        raise InvalidRequestError(f"messages[{i}].role", f"must be one of {sorted(_CHAT_ROLES)}")
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise InvalidRequestError(f"messages[{i}].content", "only text parts are supported")
            text = part.get("text", "")
            if not isinstance(text, str):
                raise InvalidRequestError(f"messages[{i}].content", "text must be a string")
            parts.append(text)
        content = "".join(parts)
    if content is None and role == "assistant":
        content = ""
    if not isinstance(content, str):
        raise InvalidRequestError(f"messages[{i}].content", "must be a string or text parts")
    out: dict[str, Any] = {"role": role, "content": content}
    if role == "assistant" and m.get("tool_calls"):
        out["tool_calls"] = check_tool_calls(i, m["tool_calls"])
    if role == "tool" and m.get("tool_call_id") is not None:
        out["tool_call_id"] = str(m["tool_call_id"])
    return out
