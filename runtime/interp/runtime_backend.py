"""The interpreter's backend over a local ``plait.Runtime`` (worker process on this machine)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from plait.ir.sampling import GenParams
from plait.runtime.chat_template import ChatTemplate, chat_template_of
from plait.runtime.client.runtime import Runtime
from plait.runtime.errors import InvalidRequestError
from plait.runtime.interp.backend import Backend, ChoiceResult, GenResult, RoleMarkers
from plait.runtime.interp.select import select_choice
from plait.runtime.token_usage import TokenUsage

_GREEDY_ONE = {"max_new_tokens": 1, "temperature": 0.0}


class RuntimeBackend(Backend):
    """Wraps a ``Runtime`` (given, or started from ``model_path`` and ``options``).

    ``select`` is ``runtime.interp.select.select_choice`` over batched Runtime requests, so it
    scores and decides exactly as ``RuntimeEndpoint`` does over HTTP. ``shutdown`` stops the
    Runtime only if this backend started it.
    """

    def __init__(self, runtime: Runtime | str | Path | None = None, **options: Any) -> None:
        self.owned = not isinstance(runtime, Runtime)
        self.runtime: Runtime = Runtime(runtime, **options) if self.owned else runtime
        self.chat_template: ChatTemplate = chat_template_of(self.runtime.tokenizer)

    @classmethod
    def of(cls, obj: Any) -> RuntimeBackend | None:
        """The backend of a ``plait.Runtime`` (made once and kept on it); None for anything
        else."""
        if not isinstance(obj, Runtime):
            return None
        wrapped = getattr(obj, "_plait_backend", None)
        if wrapped is None:
            wrapped = obj._plait_backend = cls(obj)  # type: ignore[attr-defined]
        return wrapped

    # ---- generation -----------------------------------------------------------------------

    def generate(self, prompt: str, params: GenParams) -> GenResult:
        out = self.runtime.generate(prompt, params.to_native(), **params.request_fields())
        return GenResult(out["text"], out["meta_info"])

    def generate_n(self, prompt: str, params: GenParams) -> list[GenResult]:
        outs = self.runtime.generate(prompt, params.to_native(), **params.request_fields())
        outs = outs if isinstance(outs, list) else [outs]
        return [GenResult(o["text"], o["meta_info"]) for o in outs]

    def generate_stream(self, prompt: str, params: GenParams) -> Iterator[str]:
        chunks = self.runtime.generate_stream(prompt, params.to_native(), **params.request_fields())
        try:
            for chunk in chunks:
                if chunk["delta"]:
                    yield chunk["delta"]
        finally:
            chunks.close()

    def generate_stream_meta(
        self, prompt: str, params: GenParams
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        chunks = self.runtime.generate_stream(prompt, params.to_native(), **params.request_fields())
        try:
            for chunk in chunks:
                yield chunk["delta"], snapshot(chunk["meta_info"])
        finally:
            chunks.close()

    @property
    def token_usage(self) -> TokenUsage:
        return self.runtime.token_usage

    def select(
        self, prompt: str, choices: list[str], temperature: float, choices_method: Any
    ) -> ChoiceResult:
        return select_choice(prompt, choices, temperature, choices_method, self)

    # ---- select's transport (runtime.interp.select.LogprobSource) -------------------------

    def prompt_len(self, prompt: str) -> int:
        return self.runtime.generate(prompt, _GREEDY_ONE)["meta_info"]["prompt_tokens"]

    def prompt_logprobs(self, texts: list[str], logprob_start_len: int) -> list[dict[str, Any]]:
        outs = self.runtime.generate(
            texts, _GREEDY_ONE, return_logprob=True, logprob_start_len=logprob_start_len
        )
        return [o["meta_info"] for o in outs]

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
            self.prompt_len(prefix)

    def flush_cache(self) -> None:
        self.runtime.flush_cache()

    def shutdown(self) -> None:
        if self.owned:
            self.runtime.shutdown()

    def get_model_name(self) -> str:
        return self.runtime.get_model_name()

    def get_server_info(self) -> dict[str, Any]:
        return self.runtime.get_server_info()


def snapshot(meta: dict[str, Any]) -> dict[str, Any]:
    """A copy of a streamed chunk's meta_info whose lists stop growing with the stream: the
    output lists cut to the chunk's ``completion_tokens`` (the stream may have run ahead)."""
    n = meta.get("completion_tokens", 0)
    out = {k: list(v) if isinstance(v, list) else v for k, v in meta.items()}
    for key in ("output_token_logprobs", "output_top_logprobs"):
        if key in out:
            out[key] = out[key][:n]
    return out
