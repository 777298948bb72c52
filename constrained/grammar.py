"""The grammar-backend interface: a compiler (in a killable process), a compiled grammar shared by
requests, and one matcher per request. The scheduler, mask and jump-forward code use only this."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch

from plait.constrained.spec import GrammarKey
from plait.runtime.errors import InvalidRequestError


class GrammarStepError(Exception):
    """A matcher could not take a step: a backend's per-step limit (llguidance's Earley items or
    lexer fuel) or its error state. The request it belongs to fails alone; the batch goes on."""


class GrammarMatcher(ABC):
    """One request's position in its grammar, after the output tokens it has accepted.

    Invariants: ``accept_token`` takes ordinary tokens only (the caller handles stop tokens,
    which end the request and never reach the matcher); a token set in the last
    ``fill_bitmask`` is always accepted; ``rollback(n)`` undoes the last ``n`` accepted tokens
    exactly, for any ``n`` up to the number accepted. Any method may raise
    ``GrammarStepError``; the matcher is not used again after it does.
    """

    @abstractmethod
    def fill_bitmask(self, bitmask: torch.Tensor, index: int) -> None:
        """Writes the allowed tokens into row ``index`` of ``bitmask`` (int32 ``[B, ceil(V/32)]``
        on the CPU): bit ``i % 32`` of word ``i // 32`` set iff token ``i`` may come next. The
        grammar's stop ids are set exactly where the output may end (``can_end``)."""

    @abstractmethod
    def accept_token(self, token_id: int) -> bool:
        """Advances over ``token_id``; False (and no change) when the grammar rejects it."""

    @abstractmethod
    def rollback(self, num_tokens: int) -> None: ...

    @abstractmethod
    def can_end(self) -> bool:
        """The output so far is complete: a stop token may come now."""

    @abstractmethod
    def must_end(self) -> bool:
        """Complete and no ordinary token can follow: only a stop token may come."""

    def forced_string(self) -> str:
        """The text every continuation starts with (jump-forward); "" when none or when the
        backend cannot tell. Called only at a UTF-8 character boundary."""
        return ""


class CompiledGrammar(ABC):
    """One compiled constraint over one vocabulary, shared read-only by every request using it.

    ``memory_bytes`` is what it holds (the cache's LRU bound counts it)."""

    key: GrammarKey
    memory_bytes: int

    @abstractmethod
    def matcher(self) -> GrammarMatcher: ...


class GrammarCompiler(ABC):
    """A backend: turns keys into compiled grammars in two steps, so the costly one runs in a
    process that can be killed (time limit, memory cap).

    Invariants: ``compile_payload`` is a pure function of the key and the vocabulary, runs in
    the compile process and returns bytes; ``load`` (the serving process) is cheap and gives a
    grammar equal to compiling in place. A keyword, feature or field the backend cannot enforce
    exactly raises ``InvalidRequestError`` naming the field (and the keyword and its schema
    path): a constraint is enforced exactly or refused, never loosened.
    """

    name: str

    @abstractmethod
    def compile_payload(self, key: GrammarKey) -> bytes: ...

    @abstractmethod
    def load(self, key: GrammarKey, payload: bytes) -> CompiledGrammar: ...

    def stages(self) -> tuple[str, ...]:
        """The compile steps the cache runs one at a time, each under its own time limit: one
        for a single backend; one per backend for a chain (``auto``)."""
        return (self.name,)

    def compile_stage(self, key: GrammarKey, stage: str) -> bytes:
        """One stage's payload (a payload ``load`` takes); raises InvalidRequestError as
        ``compile_payload``. ``compile_payload`` is the stages tried in order."""
        assert stage == self.name, stage
        return self.compile_payload(key)


def compile_stages(
    key: GrammarKey, stages: tuple[str, ...], compile_stage: Callable[[GrammarKey, str], bytes]
) -> bytes:
    """The payload of the first of ``stages`` that accepts ``key`` (``compile_stage(key,
    stage)`` runs one: in place, or in the compile process under its own time limit). Refused by every stage: the
    one error, or each stage's in order."""
    errors: list[InvalidRequestError] = []
    for stage in stages:
        try:
            return compile_stage(key, stage)
        except InvalidRequestError as e:
            errors.append(e)
    if len(errors) == 1:
        raise errors[0]
    raise InvalidRequestError(key.field, "; ".join(e.message for e in errors))
