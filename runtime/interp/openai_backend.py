"""``OpenAI``: the interpreter's backend over any OpenAI-compatible server (``openai`` SDK)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from plait.ir.sampling import GenParams
from plait.runtime.chat_template import CHATML, ChatTemplate
from plait.runtime.errors import InvalidRequestError
from plait.runtime.interp.backend import Backend, ChoiceResult, GenResult, RoleMarkers
from plait.runtime.interp.select import select_choice

# SGLang's list: the OpenAI models that serve /v1/completions; every other name is a chat model.
COMPLETION_MODEL_NAMES = ("gpt-3.5-turbo-instruct", "davinci-002", "babbage-002")

# GenParams field -> the OpenAI request field; the rest go in the body as SGLang/vLLM extensions.
_OPENAI_FIELDS = {
    "max_new_tokens": "max_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
    "seed": "seed",
    "stop": "stop",
}
_EXTENSION_FIELDS = {
    "top_k": "top_k",
    "min_p": "min_p",
    "repetition_penalty": "repetition_penalty",
    "min_new_tokens": "min_tokens",
    "ignore_eos": "ignore_eos",
    "stop_token_ids": "stop_token_ids",
    # plait's and SGLang's scheduling extensions
    "priority": "priority",
    "tenant": "tenant",
}


class OpenAI(Backend):
    """A model behind ``/v1/completions`` or ``/v1/chat/completions``.

    A chat model sees the program as messages: the text is split back into messages at this
    backend's role markers (``chat_template``, ChatML unless given), so ``gen`` must come right
    after an ``assistant`` role begins, and ``select`` is refused (a chat API returns no prompt
    logprobs). A completion model sees the text; ``select`` is
    ``runtime.interp.select.select_choice`` over completions with ``echo`` and ``logprobs``
    (which the server must support) and one generated token; with no token ids in that API,
    token healing compares token texts.
    """

    def __init__(
        self,
        model_name: str,
        base_url: str | None = None,
        api_key: str | None = None,
        is_chat_model: bool | None = None,
        chat_template: ChatTemplate | None = None,
        **client_kwargs: Any,
    ) -> None:
        import openai

        if api_key is None and base_url is not None and "OPENAI_API_KEY" not in os.environ:
            api_key = "EMPTY"  # a local server without a key
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key, **client_kwargs)
        self.model_name = model_name
        self.is_chat_model = (
            model_name not in COMPLETION_MODEL_NAMES if is_chat_model is None else is_chat_model
        )
        self.chat_template = chat_template or CHATML

    # ---- Backend ------------------------------------------------------------------------

    def generate(self, prompt: str, params: GenParams) -> GenResult:
        with _translated_errors():
            if self.is_chat_model:
                r = self.client.chat.completions.create(
                    model=self.model_name, messages=self._messages(prompt), **self._kw(params)
                )
                choice = r.choices[0]
                text = choice.message.content or ""
            else:
                r = self.client.completions.create(
                    model=self.model_name, prompt=prompt, **self._kw(params)
                )
                choice = r.choices[0]
                text = choice.text
        return GenResult(text, self._meta(r, choice, params))

    def generate_stream(self, prompt: str, params: GenParams) -> Iterator[str]:
        with _translated_errors():
            if self.is_chat_model:
                stream = self.client.chat.completions.create(
                    model=self.model_name,
                    messages=self._messages(prompt),
                    stream=True,
                    **self._kw(params),
                )
            else:
                stream = self.client.completions.create(
                    model=self.model_name, prompt=prompt, stream=True, **self._kw(params)
                )
            try:
                for chunk in stream:
                    if not chunk.choices:
                        continue
                    c = chunk.choices[0]
                    delta = (c.delta.content if self.is_chat_model else c.text) or ""
                    if delta:
                        yield delta
            finally:
                stream.close()  # the server aborts a request whose client went away

    def select(
        self, prompt: str, choices: list[str], temperature: float, choices_method: Any
    ) -> ChoiceResult:
        if self.is_chat_model:
            raise InvalidRequestError(
                "select",
                f"{self.model_name} is used as a chat model, and a chat API returns no prompt "
                "logprobs to score choices with; use a completion model "
                "(OpenAI(..., is_chat_model=False)) on a server that supports echo",
            )
        return select_choice(prompt, choices, temperature, choices_method, self)

    def role_markers(self, role: str) -> RoleMarkers:
        if role not in self.chat_template.markers:
            raise InvalidRequestError("role", f"unknown role {role!r}")
        return RoleMarkers(*self.chat_template.markers[role])

    def cache_prefix(self, prefix: str) -> None:
        """OpenAI-compatible servers cache prefixes by themselves, or not at all."""

    def flush_cache(self) -> None:
        """The OpenAI API has no cache to flush."""

    def shutdown(self) -> None:
        self.client.close()

    def get_model_name(self) -> str:
        return self.model_name

    # ---- select's transport (runtime.interp.select.LogprobSource); a completion model only --

    def prompt_len(self, prompt: str) -> int:
        with _translated_errors():
            r = self.client.completions.create(
                model=self.model_name, prompt=prompt, max_tokens=1, temperature=0
            )
        if r.usage is None:
            raise RuntimeError(f"{self.model_name}: the server reports no prompt_tokens")
        return r.usage.prompt_tokens

    def prompt_logprobs(self, texts: list[str], logprob_start_len: int) -> list[dict[str, Any]]:
        with _translated_errors():
            r = self.client.completions.create(
                model=self.model_name,
                prompt=texts,
                echo=True,
                logprobs=0,
                max_tokens=1,
                temperature=0,
            )
        rows = sorted(r.choices, key=lambda c: c.index)
        if len(rows) != len(texts) or any(row.logprobs is None for row in rows):
            raise RuntimeError(f"{self.model_name}: the server did not echo the prompt logprobs")
        if r.usage is not None and r.usage.completion_tokens != len(rows):
            raise RuntimeError(f"{self.model_name}: expected one generated token per prompt")
        return [_echoed_meta(row.logprobs, logprob_start_len) for row in rows]

    # ---- requests -----------------------------------------------------------------------

    def _messages(self, prompt: str) -> list[dict[str, str]]:
        messages = parse_messages(prompt, self.chat_template)
        if not messages or messages[-1] != {"role": "assistant", "content": None}:
            raise InvalidRequestError(
                "gen",
                f"{self.model_name} is a chat model: gen must come right after an assistant "
                "role begins (s += assistant(gen(...)) or inside `with s.assistant():`)",
            )
        return messages[:-1]

    def _kw(self, params: GenParams) -> dict[str, Any]:
        kw: dict[str, Any] = {}
        extra: dict[str, Any] = dict(params.extra)
        for name, target in _OPENAI_FIELDS.items():
            value = getattr(params, name)
            if value is not None:
                kw[target] = value
        for name, target in _EXTENSION_FIELDS.items():
            value = getattr(params, name)
            if value is not None:
                extra[target] = value
        if params.regex is not None:
            raise InvalidRequestError("regex", "the OpenAI API has no regex constraint")
        if params.stop_regex:
            raise InvalidRequestError("stop_regex", "the OpenAI API has no stop_regex")
        if params.ebnf is not None:
            raise InvalidRequestError("ebnf", "the OpenAI API has no grammar constraint")
        if params.json_schema is not None:
            schema = json.loads(params.json_schema)
            kw["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": schema},
            }
        if params.return_logprob:
            if self.is_chat_model:
                kw["logprobs"] = True
                if params.top_logprobs_num:
                    kw["top_logprobs"] = params.top_logprobs_num
            else:
                kw["logprobs"] = params.top_logprobs_num or 0
        if extra:
            kw["extra_body"] = extra
        return kw

    def _meta(self, r: Any, choice: Any, params: GenParams) -> dict[str, Any]:
        usage = getattr(r, "usage", None)
        meta: dict[str, Any] = {
            "id": r.id,
            "finish_reason": {"type": choice.finish_reason} if choice.finish_reason else None,
        }
        if usage is not None:
            meta["prompt_tokens"] = usage.prompt_tokens
            meta["completion_tokens"] = usage.completion_tokens
            details = getattr(usage, "prompt_tokens_details", None)
            meta["cached_tokens"] = getattr(details, "cached_tokens", 0) or 0
        if params.return_logprob and choice.logprobs is not None:
            if self.is_chat_model:
                entries = choice.logprobs.content or []
                meta["output_token_logprobs"] = [(e.logprob, None, e.token) for e in entries]
            else:
                lp = choice.logprobs
                meta["output_token_logprobs"] = [
                    (v, None, t) for v, t in zip(lp.token_logprobs, lp.tokens)
                ]
        return meta


def parse_messages(text: str, template: ChatTemplate) -> list[dict[str, str | None]]:
    """The messages in ``text`` written with ``template``'s markers; text outside any message
    is dropped (as SGLang's ``messages()`` has only role contents). A message still open at the
    end (no suffix yet) comes last with its content so far, or None when it is empty."""
    messages: list[dict[str, str | None]] = []
    pos = 0
    while True:
        found = [
            (i, role)
            for role, (prefix, _) in template.markers.items()
            if (i := text.find(prefix, pos)) != -1
        ]
        if not found:
            return messages
        start, role = min(found)
        prefix, suffix = template.markers[role]
        start += len(prefix)
        end = text.find(suffix, start) if suffix else -1
        if end == -1:
            messages.append({"role": role, "content": text[start:] or None})
            return messages
        messages.append({"role": role, "content": text[start:end]})
        pos = end + len(suffix)


def _echoed_meta(lp: Any, logprob_start_len: int) -> dict[str, Any]:
    """SGLang's logprob fields from an echoed completion of one generated token: the echo is
    the prompt's tokens, then that token. The API gives no token ids."""
    triples = [(v, None, t) for v, t in zip(lp.token_logprobs, lp.tokens)]
    prompt_len = len(triples) - 1
    return {
        "input_token_logprobs": triples[logprob_start_len:prompt_len],
        "output_token_logprobs": triples[prompt_len:],
    }


@contextmanager
def _translated_errors() -> Iterator[None]:
    import openai

    try:
        yield
    except openai.BadRequestError as e:
        body = e.body if isinstance(e.body, dict) else {}
        raise InvalidRequestError(
            body.get("param") or "request", body.get("message") or str(e)
        ) from None
    except openai.APIConnectionError as e:
        raise ConnectionError(str(e)) from e
