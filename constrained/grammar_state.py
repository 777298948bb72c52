"""One request's grammar: its matcher, stop tokens, and jump-forward with retokenization."""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from plait.constrained.grammar import CompiledGrammar, GrammarStepError
from plait.constrained.vocabulary import TokenVocabulary
from plait.runtime.errors import InvalidRequestError

# Retokenization starts at most this many output tokens before the end.
RETOKENIZE_WINDOW = 8


@dataclass(slots=True)
class Jump:
    """``output_ids[:keep] + new_ids`` is the request's output after the jump."""

    keep: int
    new_ids: list[int]


class GrammarState:
    """Invariant: the matcher has accepted exactly the output tokens so far (``accepted`` of
    them) and ``pending[i]`` is the undecoded UTF-8 tail after the first ``i``. Once a stop
    token is accepted the grammar is ``done``: only stop tokens may follow.

    A matcher that fails a step (``GrammarStepError``, or any error of the backend) leaves
    ``failure`` set and the state ``done``: the scheduler ends that request alone with the
    error, never with an output the grammar did not check.
    """

    def __init__(
        self, grammar: CompiledGrammar, vocab: TokenVocabulary, extra_stop_ids: list[int]
    ) -> None:
        self.grammar = grammar
        self.vocab = vocab
        self.matcher = grammar.matcher()
        self.stop_ids = sorted(set(vocab.stop_ids) | set(extra_stop_ids))
        self.extra_stop_ids = [t for t in extra_stop_ids if t not in vocab.stop_ids]
        self.pending: list[bytes] = [b""]
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.done = False
        self.failure: Exception | None = None

    @property
    def accepted(self) -> int:
        return len(self.pending) - 1

    def is_stop(self, token_id: int) -> bool:
        return token_id in self.stop_ids

    def fill_bitmask(self, bitmask: torch.Tensor, index: int, hold_stop: bool = False) -> None:
        """Row ``index``: the allowed tokens now. This request's own stop ids (``stop_token_ids``)
        end the output, so they are allowed exactly where the grammar may end, even when the
        grammar would also take them as text: sampled mid-output, one would end it unfinished.
        A state whose every allowed token is such a stop id fails the request (on
        ``stop_token_ids``).

        ``hold_stop`` (the output is still below its ``min_new_tokens``) clears the stop ids
        where the grammar also allows other tokens: the output goes on as long as the grammar
        lets it. Where it allows only stop ids they stay, and one ends the output: the
        grammar's end outranks ``min_new_tokens``."""
        if not self.done:
            with self._failing_alone():
                self.matcher.fill_bitmask(bitmask, index)
                words = bitmask[index].numpy().view(np.uint32)
                if self.extra_stop_ids:
                    self._own_stop_ids(words)
                if hold_stop and not self.done:
                    _hold_stop_ids(words, self.stop_ids)
        if self.done:  # ended, or its matcher failed just now
            _set_only(bitmask, index, self.stop_ids)

    def _own_stop_ids(self, words: np.ndarray) -> None:
        if self.matcher.can_end():
            for t in self.extra_stop_ids:
                words[t // 32] |= np.uint32(1 << (t % 32))
            return
        for t in self.extra_stop_ids:
            words[t // 32] &= ~np.uint32(1 << (t % 32))
        if not words.any():
            self.failure = InvalidRequestError(
                "stop_token_ids",
                f"after {self.accepted} output tokens the grammar allows only stop tokens "
                "and cannot end there",
            )
            self.done = True

    def accept(self, token_id: int) -> None:
        """Advances over a sampled token; the mask guarantees it is allowed."""
        if self.done:
            assert self.is_stop(token_id), f"token {token_id} after the grammar ended"
            return
        if self.is_stop(token_id):
            assert self.matcher.can_end(), f"stop token {token_id} before the end"
            self.done = True
            return
        ok = False
        with self._failing_alone():
            ok = self.matcher.accept_token(token_id)
        if self.failure is not None:
            return
        assert ok, f"token {token_id} not allowed by the grammar"
        self._push(token_id)

    @contextmanager
    def _failing_alone(self) -> Iterator[None]:
        """Runs matcher calls; an error of the backend ends this grammar (``_fail``) instead of
        reaching the batch's step."""
        try:
            yield
        except Exception as e:  # noqa: BLE001 - this request fails alone (``failure``)
            self._fail(e)

    def _fail(self, e: Exception) -> None:
        """Ends the grammar after its matcher failed: a backend's step limit is the request's
        grammar's fault (an invalid-request error on its field); anything else is internal."""
        if isinstance(e, GrammarStepError):
            field = self.grammar.key.field
            at = f"after {self.accepted} output tokens"
            self.failure = InvalidRequestError(
                field, f"exceeded the grammar's step limits {at}: {e}"
            )
        else:
            self.failure = RuntimeError(f"grammar matcher failed: {type(e).__name__}: {e}")
        self.done = True

    def _push(self, token_id: int) -> None:
        self._decoder.decode(self.vocab.token_bytes[token_id] or b"")
        self.pending.append(self._decoder.getstate()[0])

    def _pop(self, n: int) -> None:
        if n:
            self.matcher.rollback(n)
            del self.pending[-n:]
            self._decoder.setstate((self.pending[-1], 0))

    def is_terminal(self) -> bool:
        """Nothing but a stop token can follow."""
        return self.done or self.matcher.must_end()

    def try_jump(self, output_ids: list[int], sent: int, max_len: int) -> Jump | None:
        """The retokenized output after appending the forced text at the current state.

        Retokenizes from a clean UTF-8 boundary up to ``RETOKENIZE_WINDOW`` tokens back, so the
        tokens are the ones the tokenizer gives the text; earlier tokens that change are rolled
        back, but never the first ``sent`` (already reported to the client). Commits on
        success; None (nothing changed) when no text is forced, the grammar rejects the
        retokenized text or the jump would roll back a sent token.
        """
        n = len(output_ids)
        if self.done or self.accepted != n or self.pending[n] or self.vocab.tokenizer is None:
            return None
        forced = ""
        with self._failing_alone():
            forced = self.matcher.forced_string()
        if not forced:
            return None
        b = max(0, n - RETOKENIZE_WINDOW)
        while b < n and self.pending[b]:
            b += 1
        try:
            text = self.vocab.decode_bytes(output_ids[b:]).decode("utf-8") + forced
        except UnicodeDecodeError:
            return None
        new_ids = self.vocab.tokenizer.encode(text, add_special_tokens=False)
        old = output_ids[b:]
        k = 0
        while k < min(len(old), len(new_ids)) and old[k] == new_ids[k]:
            k += 1
        keep = b + k
        if keep < sent:
            return None
        tail = new_ids[k:][: max(0, max_len - keep)]
        if not tail:
            return None
        self._pop(n - keep)
        for i, t in enumerate(tail):
            if self.is_stop(t) or not self.matcher.accept_token(t):
                self._pop(i)  # the tokenizer produced what the grammar rejects: restore
                for old_t in output_ids[keep:]:
                    self.matcher.accept_token(old_t)
                    self._push(old_t)
                return None
            self._push(t)
        return Jump(keep, tail)


def _set_only(bitmask: torch.Tensor, index: int, ids: list[int]) -> None:
    words = bitmask[index].numpy().view(np.uint32)
    words[:] = 0
    for t in ids:
        words[t // 32] |= np.uint32(1 << (t % 32))


def _hold_stop_ids(words: np.ndarray, stop_ids: list[int]) -> None:
    """Clears ``stop_ids`` in the packed row ``words`` unless nothing else would be left."""
    held = words.copy()
    for t in stop_ids:
        held[t // 32] &= ~np.uint32(1 << (t % 32))
    if held.any():
        words[:] = held
