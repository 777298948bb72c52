"""Every field the OpenAI routes know, and what the server does with it.

A request field is handled (read by the route), accepted with no effect on the output (it
only labels, routes or speeds up the request at OpenAI: ``user``, ``metadata``,
``prompt_cache_key``, ``prediction``, ...), accepted only at the values plait honours, or refused.
A field the server does not know at all is a 400 naming it too: a client never gets output
that silently ignored what it asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from plait.runtime.errors import InvalidRequestError

# value -> None if plait honours it, else why not
Check = Callable[[Any], str | None]


def _kind(kind: type, name: str) -> Check:
    def check(value: Any) -> str | None:
        return None if value is None or isinstance(value, kind) else f"must be {name}"

    return check


def _only(allowed: tuple[Any, ...], why: str) -> Check:
    def check(value: Any) -> str | None:
        return None if value is None or value in allowed else why

    return check


def _refused(why: str) -> Check:
    def check(value: Any) -> str | None:
        return None if value is None else why

    return check


def _text_modalities(value: Any) -> str | None:
    if value is None or value == ["text"]:
        return None
    return 'this model only outputs text: modalities must be ["text"]'


# Fields both routes read themselves (their values are checked where they are used).
_HANDLED = (
    "model",
    "n",
    "temperature",
    "top_p",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "stop",
    "stream",
    "stream_options",
    "logit_bias",
    "logprobs",
    "max_tokens",
    "response_format",
    # plait's extensions: scheduling (runtime.sched_fields) and vLLM's prefix-cache salt
    "priority",
    "tenant",
    "cache_salt",
)
_HANDLED_COMPLETION = ("prompt", "echo", "best_of", "suffix")
_HANDLED_CHAT = (
    "messages",
    "max_completion_tokens",
    "top_logprobs",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
)

# Fields accepted with no effect on the output, or only at the values plait honours.
_LABELS: dict[str, Check] = {
    "user": _kind(str, "a string"),
}
_CHAT_LABELS: dict[str, Check] = {
    "metadata": _kind(dict, "an object"),
    "safety_identifier": _kind(str, "a string"),
    "prompt_cache_key": _kind(
        str, "a string"
    ),  # routing at OpenAI; the radix cache reuses prefixes anyway
    "prediction": _kind(dict, "an object"),  # a latency hint: the output is the same without it
    "store": _only((False,), "this server does not store completions"),
    "service_tier": _only(("auto", "default"), "this server has one service tier: default"),
    "modalities": _text_modalities,
    "verbosity": _only(("medium",), "this model has no verbosity control (medium only)"),
    "reasoning_effort": _only(("none",), "this model does not reason (only none)"),
    "prompt_cache_retention": _only(("in_memory",), "the prompt cache is in memory only"),
    "prompt_cache_options": _refused("explicit prompt cache breakpoints are not supported"),
    "audio": _refused("this model does not output audio"),
    "web_search_options": _refused("this server has no web search"),
    "moderation": _refused("this server runs no moderation model"),
    "functions": _refused("deprecated: use tools"),
    "function_call": _refused("deprecated: use tool_choice"),
}


def check_fields(body: dict[str, Any], chat: bool, extensions: tuple[str, ...]) -> None:
    """400 naming the first field of ``body`` the route would not honour. ``extensions``: the
    non-OpenAI fields the route also reads (SGLang's sampling extensions)."""
    handled = {*_HANDLED, *extensions, *(_HANDLED_CHAT if chat else _HANDLED_COMPLETION)}
    checks = {**_LABELS, **(_CHAT_LABELS if chat else {})}
    for name, value in body.items():
        if name in handled:
            continue
        check = checks.get(name)
        if check is None:
            raise InvalidRequestError(name, "unknown field")
        why = check(value)
        if why is not None:
            raise InvalidRequestError(name, why)


def known_fields(chat: bool) -> set[str]:
    """The OpenAI fields a route knows (handled or checked), for tests and docs."""
    if chat:
        return {*_HANDLED, *_HANDLED_CHAT, *_LABELS, *_CHAT_LABELS}
    return {*_HANDLED, *_HANDLED_COMPLETION, *_LABELS}
