"""One request's position in its compiled grammar, per output token, and its jump-forward."""

from __future__ import annotations

import codecs
from dataclasses import dataclass

from plait.constrained.compiler import CompiledGrammar

# Retokenization starts at most this many output tokens before the end.
RETOKENIZE_WINDOW = 8


@dataclass(slots=True)
class Jump:
    """``output_ids[:keep] + new_ids`` is the request's output after the jump."""

    keep: int
    new_ids: list[int]


class GrammarState:
    """Invariant: ``states[i]`` is the token-FSM state after the first ``i`` output tokens (so
    ``len(states) == accepted + 1``); ``char_states[i]`` / ``pending[i]`` are the jump map's
    character state (None: no jumps) and the undecoded UTF-8 bytes at the same point. Once a
    stop token is accepted the grammar is ``done``: only stop tokens may follow.
    """

    def __init__(self, grammar: CompiledGrammar, extra_stop_ids: list[int]) -> None:
        self.grammar = grammar
        self.extra_stop_ids = extra_stop_ids
        self.states: list[int] = [grammar.initial_state]
        jm = grammar.jump_map
        self.char_states: list[int | None] = [jm.initial if jm is not None else None]
        self.pending: list[bytes] = [b""]
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self.done = False

    @property
    def state(self) -> int:
        return self.states[-1]

    def is_stop(self, token_id: int) -> bool:
        return token_id in self.grammar.vocab.stop_ids or token_id in self.extra_stop_ids

    def accept(self, token_id: int) -> None:
        """Advances over a sampled token; the mask guarantees it is allowed."""
        if self.done:
            assert self.is_stop(token_id), f"token {token_id} after the grammar ended"
            return
        if self.is_stop(token_id):
            assert self.grammar.is_final(self.state), f"stop token {token_id} before the end"
            self.done = True
            return
        nxt = self.grammar.next_state(self.state, token_id)
        assert nxt is not None, f"token {token_id} not allowed in state {self.state}"
        self._push(nxt, token_id)

    def _push(self, state: int, token_id: int) -> None:
        self.states.append(state)
        jm, cstate = self.grammar.jump_map, self.char_states[-1]
        if jm is not None and cstate is not None:
            piece = self._decoder.decode(self.grammar.vocab.token_bytes[token_id] or b"")
            cstate = jm.step(cstate, piece)
        self.char_states.append(cstate)
        self.pending.append(self._decoder.getstate()[0])

    def is_terminal(self) -> bool:
        """Nothing but a stop token can follow."""
        return self.done or self.grammar.is_terminal(self.state)

    def try_jump(self, output_ids: list[int], allow_rollback: bool, max_len: int) -> Jump | None:
        """The retokenized output after appending the forced text at the current state.

        Retokenizes from a clean UTF-8 boundary up to ``RETOKENIZE_WINDOW`` tokens back, so the
        tokens are the ones the tokenizer gives the text; earlier tokens that change are rolled
        back (only if ``allow_rollback``). Commits the new states on success; None (nothing
        changed) when no text is forced, the dialects disagree or the jump is not allowed.
        """
        g, jm = self.grammar, self.grammar.jump_map
        n = len(output_ids)
        if self.done or jm is None or len(self.states) != n + 1:
            return None
        if self.char_states[n] is None or self.pending[n]:
            return None
        forced = jm.forced_string(self.char_states[n])
        if not forced:
            return None
        b = max(0, n - RETOKENIZE_WINDOW)
        while b < n and (self.pending[b] or self.char_states[b] is None):
            b += 1
        try:
            text = g.vocab.decode_bytes(output_ids[b:]).decode("utf-8") + forced
        except UnicodeDecodeError:
            return None
        new_ids = g.vocab.tokenizer.encode(text, add_special_tokens=False)
        old = output_ids[b:]
        k = 0
        while k < min(len(old), len(new_ids)) and old[k] == new_ids[k]:
            k += 1
        keep = b + k
        if keep < n and not allow_rollback:
            return None
        tail = new_ids[k:][: max(0, max_len - keep)]
        if not tail:
            return None
        states = [self.states[keep]]
        for t in tail:
            s = g.next_state(states[-1], t)
            if s is None:
                return None  # the tokenizer produced something the token FSM rejects
            states.append(s)
        del self.states[keep + 1 :], self.char_states[keep + 1 :], self.pending[keep + 1 :]
        self._decoder.setstate((self.pending[keep], 0))
        for s, t in zip(states[1:], tail):
            self._push(s, t)
        return Jump(keep, tail)
