"""SGLang's API speculative execution (``@function(num_api_spec_tokens=N)``) for completion
backends: one request generates ``N`` tokens past the first gen with no stop, and the gens and
constant text that follow are matched against that text before any new request is sent."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from plait.ir.sampling import GenParams
from plait.runtime.interp.backend import Backend


class Speculation:
    """The text generated ahead for one program state.

    Invariants (SGLang's semantics): a gen with stop strings takes the speculated text up to
    its earliest stop string (or ``max_new_tokens`` characters when none occurs); a gen without
    stop takes ``max_new_tokens`` characters; constant text appended after a gen is consumed
    from the speculated text when it matches, and otherwise drops it, so the next gen asks the
    model again from the real text.
    """

    def __init__(self, backend: Backend, num_tokens: int) -> None:
        self.backend = backend
        self.num_tokens = num_tokens
        self.text = ""

    def fill(self, value: str) -> None:
        self.text = self.text[len(value) :] if self.text.startswith(value) else ""

    def gen(self, prompt: str, params: GenParams) -> tuple[str, dict[str, Any]]:
        limit = params.max_new_tokens or self.num_tokens
        stops = params.stop or []
        meta: dict[str, Any] = {}
        if not stops:
            if len(self.text) < limit:
                meta = self._regenerate(prompt, params, limit)
            value, self.text = self.text[:limit], self.text[limit:]
            return value, meta
        if not self.text:
            meta = self._regenerate(prompt, params, limit)
        hits = [at for at in (self.text.find(s) for s in stops) if at >= 0]
        cut = min(hits) if hits else min(limit, len(self.text))
        value, self.text = self.text[:cut], self.text[cut:]
        return value, meta

    def _regenerate(self, prompt: str, params: GenParams, limit: int) -> dict[str, Any]:
        ahead = replace(params, max_new_tokens=max(limit, self.num_tokens), stop=None)
        result = self.backend.generate(prompt, ahead)
        self.text = result.text
        return result.meta_info
