"""When a request stops: EOS, stop token ids, stop strings, max_new_tokens, context length."""

from __future__ import annotations

import re
from typing import Any

from plait.runtime.sampling_params import regex_width
from plait.runtime.worker.request import FinishReason, Req

# Extra tokens decoded around a stop string, for tokens that split characters.
_STOP_TAIL_SLACK = 4


class StopChecker:
    """Decides whether a request is done after it appended its newest token.

    Stop conditions take precedence over length, so a sequence that ends with EOS on its last
    allowed token reports "stop". A stop token a request's grammar took as its end always ends
    the output, as SGLang's ``check_finished`` does: after it the grammar allows nothing but
    stop tokens, whatever ``ignore_eos`` or ``min_new_tokens`` say (below ``min_new_tokens``
    the grammar holds its stop tokens back where it allows anything else). Otherwise, below
    ``min_new_tokens`` nothing but length stops it (the sampler also masks EOS and stop ids
    there).
    """

    def __init__(self, tokenizer: Any | None, eos_token_ids: set[int], context_len: int) -> None:
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids
        self.context_len = context_len

    def check(self, req: Req) -> FinishReason | None:
        p = req.sampling_params
        n = len(req.output_ids)
        token = req.output_ids[-1]
        if req.grammar is not None and req.grammar.done:
            return FinishReason("stop", matched=token)
        if n >= p.min_new_tokens:
            if token in p.stop_token_ids:
                return FinishReason("stop", matched=token)
            if not p.ignore_eos and token in self.eos_token_ids:
                return FinishReason("stop", matched=token)
            if p.stop and self.tokenizer is not None:
                matched = self._stop_string(req)
                if matched is not None:
                    return FinishReason("stop", matched=matched)
            if p.stop_regex and self.tokenizer is not None:
                matched = self._stop_regex(req)
                if matched is not None:
                    return FinishReason("stop", matched=matched)
        if n >= p.max_new_tokens:
            return FinishReason("length", matched=None)
        if req.seq_len >= self.context_len:
            return FinishReason("length", matched=None, message="context length reached")
        return None

    def _stop_string(self, req: Req) -> str | None:
        stops = req.sampling_params.stop
        window = max(len(s) for s in stops) + _STOP_TAIL_SLACK
        tail = self.tokenizer.decode(req.output_ids[-window:], skip_special_tokens=False)
        for s in stops:
            if s in tail:
                return s
        return None

    def _stop_regex(self, req: Req) -> str | None:
        """The text a ``stop_regex`` pattern matches in the output's tail (a match first appears
        when its last token arrives, so it lies within the pattern's longest width)."""
        patterns = req.sampling_params.stop_regex
        window = max(regex_width(p) for p in patterns) + _STOP_TAIL_SLACK
        tail = self.tokenizer.decode(req.output_ids[-window:], skip_special_tokens=False)
        for p in patterns:
            m = re.search(p, tail)
            if m is not None and m.group(0):
                return m.group(0)
        return None
