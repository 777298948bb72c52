"""The interface between the interpreter and whatever runs the model."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from plait.ir.sampling import GenParams
from plait.runtime.token_usage import TokenUsage


@dataclass(slots=True)
class GenResult:
    """One finished ``gen``: the completion text (stop string excluded) and the server's
    ``meta_info`` (id, prompt_tokens, completion_tokens, cached_tokens, finish_reason, and the
    logprobs when asked)."""

    text: str
    meta_info: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class ChoiceResult:
    """One finished ``select``: the chosen string and the per-choice scores behind it.

    ``meta_info`` holds SGLang's keys where the backend has them: ``normalized_prompt_logprobs``
    (one float per choice), ``input_token_logprobs`` and ``output_token_logprobs``.
    """

    decision: str
    meta_info: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class RoleMarkers:
    """The text a chat template puts before and after one message of a role."""

    prefix: str
    suffix: str


class Backend(ABC):
    """What the interpreter needs from a model server. Text in, text out.

    Invariants: every method is thread-safe (each ProgramState runs on its own thread and many
    run at once); ``generate`` never returns text past a stop string; ``select`` returns one of
    ``choices`` exactly; a failure raises (``InvalidRequestError`` for a bad argument,
    ``WorkerDiedError`` / ``ConnectionError`` when the server is gone), it never returns an
    empty result in place of an error.

    How the interpreter (``runtime/interpreter.py``) uses it: ``generate`` per gen, or
    ``generate_stream`` under ``run(stream=True)`` unless the gen asks for logprobs; ``select``
    with the state's whole text as the prompt; ``role_markers`` and ``default_system_prompt``
    for chat roles; ``cache_prefix`` when a state forks (the shared text) and in ``run_batch``
    (the traced constant prefix). ``plait.lang.api.as_backend`` turns what users pass
    (a Backend, or a ``plait.Runtime``, wrapped in ``RuntimeBackend``) into a Backend.
    """

    @abstractmethod
    def generate(self, prompt: str, params: GenParams) -> GenResult:
        """Continues ``prompt`` under ``params`` (already merged with the run's defaults)."""

    @abstractmethod
    def generate_stream(self, prompt: str, params: GenParams) -> Iterator[str]:
        """Yields text deltas of one continuation; their concatenation is ``generate``'s text.
        Closing the iterator early aborts the request."""

    def generate_n(self, prompt: str, params: GenParams) -> list[GenResult]:
        """``params.n`` continuations of ``prompt`` (sample j seeded ``seed + j`` when a seed
        is set); a backend over a model server sends them as one request."""
        n = params.n or 1
        return [
            self.generate(
                prompt,
                replace(params, n=1, seed=None if params.seed is None else params.seed + j),
            )
            for j in range(n)
        ]

    def generate_stream_meta(
        self, prompt: str, params: GenParams
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """``generate_stream`` with the request's ``meta_info`` so far after each delta
        (cumulative: token counts and logprob lists cover the whole output up to that delta);
        a backend without one gives empty dicts. A delta may be empty when tokens came but no
        text yet (a held-back stop-string prefix, a partial character)."""
        for delta in self.generate_stream(prompt, params):
            yield delta, {}

    @property
    def token_usage(self) -> TokenUsage:
        """Prompt and completion tokens of every gen run on this backend (SGLang's
        ``backend.token_usage``)."""
        usage = self.__dict__.get("_token_usage")
        if usage is None:
            usage = self.__dict__.setdefault("_token_usage", TokenUsage())
        return usage

    @abstractmethod
    def select(
        self, prompt: str, choices: list[str], temperature: float, choices_method: Any
    ) -> ChoiceResult:
        """Scores every ``prompt + choice`` in one batched request sharing the prefix; a backend
        over a model server implements ``runtime.interp.select.LogprobSource`` and returns
        ``select_choice(...)``, so every backend scores and decides alike."""

    @abstractmethod
    def role_markers(self, role: str) -> RoleMarkers:
        """Prefix and suffix of a ``system`` / ``user`` / ``assistant`` message in this model's
        chat template."""

    @property
    def default_system_prompt(self) -> str | None:
        """The system message the chat template puts before a conversation that starts with
        another role, or ``None``; the interpreter inserts it as SGLang does (a property, not a
        method; ``runtime.chat_template.chat_template_of`` reads it off a HF template)."""
        return None

    @abstractmethod
    def cache_prefix(self, prefix: str) -> None:
        """Computes ``prefix`` into the server's prefix cache (run_batch's warm-up); a backend
        without a prefix cache does nothing."""

    @abstractmethod
    def flush_cache(self) -> None:
        """Drops the server's prefix cache."""

    @abstractmethod
    def shutdown(self) -> None:
        """Releases what this backend started."""
