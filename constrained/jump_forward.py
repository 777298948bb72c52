"""Compressed FSM: the text a regex forces from a state, from interegular's character DFA."""

from __future__ import annotations

import interegular
from interegular.fsm import anything_else


class JumpForwardMap:
    """Singular-transition chains of the character DFA of one regex.

    Invariants: ``forced[s] = (ch, t)`` only when ``s`` is not accepting (EOS is an alternative
    there) and ``ch`` is the one character that leads from ``s`` to a state that can still
    reach an accepting one. interegular's dialect differs from outlines-core's (Rust) in
    places, so a jump must still be checked against the token FSM before it is taken.
    """

    def __init__(self, regex: str) -> None:
        fsm = interegular.parse_pattern(regex).to_fsm().reduce()
        rev: dict[int, set[int]] = {}
        for s, tr in fsm.map.items():
            for n in tr.values():
                rev.setdefault(n, set()).add(s)
        live, stack = set(fsm.finals), list(fsm.finals)
        while stack:
            for p in rev.get(stack.pop(), ()):
                if p not in live:
                    live.add(p)
                    stack.append(p)
        forced: dict[int, tuple[str, int]] = {}
        for s, tr in fsm.map.items():
            if s in fsm.finals:
                continue
            out = [(k, n) for k, n in tr.items() if n in live]
            if len(out) != 1:
                continue
            key, nxt = out[0]
            chars = fsm.alphabet.by_transition[key]
            if len(chars) != 1 or chars[0] is anything_else:
                continue
            forced[s] = (chars[0], nxt)
        self.initial: int = fsm.initial
        self.alphabet = fsm.alphabet
        self.map: dict[int, dict[int, int]] = fsm.map
        self.live = frozenset(live)
        self.forced = forced

    def step(self, state: int | None, text: str) -> int | None:
        """The state after ``text``; None once the text leaves the language (or the dialects
        disagree), after which no jump is offered for the request."""
        for ch in text:
            if state is None:
                return None
            key = self.alphabet[ch]
            state = self.map.get(state, {}).get(key) if key is not None else None
            if state is not None and state not in self.live:
                return None
        return state

    def forced_string(self, state: int | None) -> str:
        if state is None:
            return ""
        out: list[str] = []
        while state in self.forced:
            ch, state = self.forced[state]
            out.append(ch)
        return "".join(out)


def build_jump_forward_map(regex: str) -> JumpForwardMap | None:
    """None when interegular cannot parse the regex: such requests decode without jumps."""
    try:
        return JumpForwardMap(regex)
    except Exception:  # interegular raises several kinds for syntax it does not support
        return None
