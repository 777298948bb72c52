"""A matcher that fails a step ends its own request's grammar with the error, never the batch:
a backend's step limit (``GrammarStepError``) is an invalid-request error on the grammar's field;
anything else an internal error. Other rows of the same mask are filled as usual."""

from __future__ import annotations

import numpy as np
import torch

from plait.constrained.grammar import CompiledGrammar, GrammarMatcher, GrammarStepError
from plait.constrained.grammar_state import GrammarState
from plait.constrained.mask import MaskBuilder
from plait.constrained.spec import GrammarKey
from plait.constrained.vocabulary import TokenVocabulary
from plait.runtime.errors import InvalidRequestError

VOCAB = TokenVocabulary([bytes([i]) for i in range(64)] + [None], 64, [64], "bytes64")


class _Matcher(GrammarMatcher):
    """Allows every byte; fails its ``fail_at``-th mask with ``error``."""

    def __init__(self, fail_at: int, error: Exception) -> None:
        self.fills, self.fail_at, self.error = 0, fail_at, error

    def fill_bitmask(self, bitmask: torch.Tensor, index: int) -> None:
        self.fills += 1
        if self.fills == self.fail_at:
            raise self.error
        bitmask[index] = -1

    def accept_token(self, token_id: int) -> bool:
        return True

    def rollback(self, num_tokens: int) -> None:
        pass

    def can_end(self) -> bool:
        return True

    def must_end(self) -> bool:
        return False


class _Grammar(CompiledGrammar):
    def __init__(self, matcher: _Matcher) -> None:
        self.key, self.memory_bytes, self._m = GrammarKey("regex", "x*"), 0, matcher

    def matcher(self) -> GrammarMatcher:
        return self._m


def _allowed(mask: torch.Tensor, row: int) -> set[int]:
    bits = np.unpackbits(mask[row].numpy().view(np.uint8), count=65, bitorder="little")
    return set(np.flatnonzero(bits).tolist())


def test_a_step_limit_fails_its_request_with_an_invalid_request_error():
    bad = GrammarState(
        _Grammar(_Matcher(2, GrammarStepError("llguidance: too many items"))), VOCAB, []
    )
    ok = GrammarState(_Grammar(_Matcher(99, RuntimeError("never"))), VOCAB, [])
    builder = MaskBuilder()
    builder.build([bad, ok], 65)
    bad.accept(5)
    ok.accept(5)
    mask = builder.build([bad, None, ok], 65).bitmask
    assert _allowed(mask, 0) == {64}  # only the stop token: nothing unchecked is sampled
    assert len(_allowed(mask, 1)) == 65 and len(_allowed(mask, 2)) == 65
    assert isinstance(bad.failure, InvalidRequestError) and bad.failure.field == "regex"
    assert (
        "after 1 output tokens" in bad.failure.message and "too many items" in bad.failure.message
    )
    bad.accept(64)  # the stop token the mask allowed
    assert ok.failure is None


def test_any_other_matcher_error_is_internal():
    gs = GrammarState(_Grammar(_Matcher(1, ValueError("a library bug"))), VOCAB, [])
    MaskBuilder().build([gs], 65)
    assert type(gs.failure) is RuntimeError and "a library bug" in str(gs.failure)
