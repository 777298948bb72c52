"""A scripted Backend for testing the interpreter's mechanics without a model."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from plait.ir.sampling import GenParams
from plait.runtime.interp.backend import Backend, ChoiceResult, GenResult, RoleMarkers


class ScriptedBackend(Backend):
    """``generate`` answers from ``replies`` (prompt substring -> text), else ``"<n>"`` with n
    the max_new_tokens; ``select`` picks the choice named in ``picks`` or the last one.
    Records every call."""

    def __init__(self, replies=None, picks=None, delay=0.0, fail_on=None, system_prompt=None):
        self.replies = replies or {}
        self.picks = picks or {}
        self.delay = delay
        self.fail_on = fail_on
        self.system_prompt = system_prompt
        self.calls: list[tuple] = []
        self.lock = threading.Lock()

    def _record(self, *call) -> None:
        with self.lock:
            self.calls.append(call)

    def _reply(self, prompt: str, params: GenParams) -> str:
        if self.fail_on is not None and self.fail_on in prompt:
            from plait.runtime.errors import InvalidRequestError

            raise InvalidRequestError("max_new_tokens", "scripted failure")
        for key, text in self.replies.items():
            if prompt.endswith(key):
                return text
        return f"<{params.max_new_tokens}>"

    def generate(self, prompt: str, params: GenParams) -> GenResult:
        self._record("generate", prompt, params)
        time.sleep(self.delay)
        text = self._reply(prompt, params)
        meta = {"completion_tokens": len(text)}
        if params.return_logprob:
            meta["output_token_logprobs"] = [(-0.5, 0, ch) for ch in text]
        return GenResult(text, meta)

    def generate_stream(self, prompt: str, params: GenParams) -> Iterator[str]:
        self._record("generate_stream", prompt, params)
        for ch in self._reply(prompt, params):
            time.sleep(self.delay)
            yield ch

    def select(self, prompt, choices, temperature, choices_method) -> ChoiceResult:
        self._record("select", prompt, list(choices))
        for key, pick in self.picks.items():
            if prompt.endswith(key):
                return ChoiceResult(pick, {"normalized_prompt_logprobs": [0.0] * len(choices)})
        return ChoiceResult(choices[-1], {"normalized_prompt_logprobs": [0.0] * len(choices)})

    def role_markers(self, role: str) -> RoleMarkers:
        return RoleMarkers(f"<{role}>", f"</{role}>")

    @property
    def default_system_prompt(self) -> str | None:
        return self.system_prompt

    def cache_prefix(self, prefix: str) -> None:
        self._record("cache_prefix", prefix)

    def flush_cache(self) -> None:
        pass

    def shutdown(self) -> None:
        pass


@pytest.fixture
def scripted():
    return ScriptedBackend
