"""The interpreter's backend over a local ``plait.Runtime`` (worker process on this machine)."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from plait.ir.sampling import GenParams
from plait.runtime.client.runtime import Runtime
from plait.runtime.errors import InvalidRequestError
from plait.runtime.interp.backend import Backend, ChoiceResult, GenResult, RoleMarkers
from plait.runtime.interp.chat_template import ChatTemplate, chat_template_of
from plait.runtime.interp.select import decide

_GREEDY_ONE = {"max_new_tokens": 1, "temperature": 0.0}


class RuntimeBackend(Backend):
    """Wraps a ``Runtime`` (given, or started from ``model_path`` and ``options``).

    ``select`` tokenizes here, so each choice's logprobs start exactly where its tokens diverge
    from the prompt's: when the prompt's last token merges with the choice's first characters,
    the re-tokenized piece is scored as part of the choice. ``shutdown`` stops the Runtime only
    if this backend started it.
    """

    def __init__(self, runtime: Runtime | str | Path | None = None, **options: Any) -> None:
        self.owned = not isinstance(runtime, Runtime)
        self.runtime: Runtime = Runtime(runtime, **options) if self.owned else runtime
        self.chat_template: ChatTemplate = chat_template_of(self.runtime.tokenizer)

    # ---- generation -----------------------------------------------------------------------

    def generate(self, prompt: str, params: GenParams) -> GenResult:
        out = self.runtime.generate(prompt, params.to_native(), **params.request_fields())
        return GenResult(out["text"], out["meta_info"])

    def generate_stream(self, prompt: str, params: GenParams) -> Iterator[str]:
        chunks = self.runtime.generate_stream(prompt, params.to_native(), **params.request_fields())
        try:
            for chunk in chunks:
                if chunk["delta"]:
                    yield chunk["delta"]
        finally:
            chunks.close()

    def select(
        self, prompt: str, choices: list[str], temperature: float, choices_method: Any
    ) -> ChoiceResult:
        if not choices or not all(isinstance(c, str) and c for c in choices):
            raise InvalidRequestError("choices", "must be a non-empty list of non-empty strings")
        rt = self.runtime
        prompt_ids = rt.encode(prompt) if prompt else []
        if prompt_ids:
            self.cache_prefix(prompt)  # every choice below then extends the cached prompt
        params, texts = [], []
        for c in choices:
            ids = rt.encode(prompt + c)
            start = _common_prefix_len(prompt_ids, ids)
            params.append(
                {**_GREEDY_ONE, "return_logprob": True, "logprob_start_len": max(start, 1)}
            )
            texts.append(prompt + c)
        outs = rt.generate(texts, params)
        input_lps = [o["meta_info"]["input_token_logprobs"] for o in outs]
        output_lps = [o["meta_info"]["output_token_logprobs"] for o in outs]
        unconditional = None
        if getattr(choices_method, "requires_unconditional_logprobs", False):
            alone = rt.generate(
                list(choices), _GREEDY_ONE, return_logprob=True, logprob_start_len=0
            )
            unconditional = [o["meta_info"]["input_token_logprobs"][1:] for o in alone]
        means = [sum(t[0] for t in lps) / len(lps) for lps in input_lps]
        result = decide(choices, means, input_lps, output_lps, unconditional, choices_method)
        if temperature and temperature > 1e-6:
            result.decision = _sample(choices, means, temperature)
        return result

    # ---- chat template, cache, lifetime ---------------------------------------------------

    def role_markers(self, role: str) -> RoleMarkers:
        if role not in self.chat_template.markers:
            raise InvalidRequestError("role", f"unknown role {role!r}")
        return RoleMarkers(*self.chat_template.markers[role])

    @property
    def default_system_prompt(self) -> str | None:
        return self.chat_template.default_system_prompt

    def cache_prefix(self, prefix: str) -> None:
        if prefix:
            self.runtime.generate(prefix, _GREEDY_ONE)

    def flush_cache(self) -> None:
        self.runtime.flush_cache()

    def shutdown(self) -> None:
        if self.owned:
            self.runtime.shutdown()

    def get_model_name(self) -> str:
        return str(self.runtime.model_path)


def _common_prefix_len(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _sample(choices: list[str], scores: list[float], temperature: float) -> str:
    top = max(scores)
    weights = [math.exp((s - top) / temperature) for s in scores]
    return random.choices(choices, weights=weights)[0]
