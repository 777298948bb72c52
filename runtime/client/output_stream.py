"""One request's output records -> text: the only place token ids become user-visible text."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from plait.runtime.client.detokenizer import IncrementalDetokenizer, StopHoldBack, final_text
from plait.runtime.messages import ReqOutput
from plait.runtime.sampling_params import SamplingParams, regex_width

TokenText = Callable[[int], "str | None"]


class TokenTextCache:
    """The text of single token ids, for logprob triples; decoded once per id. Without a
    tokenizer every text is None."""

    def __init__(self, tokenizer: Any | None) -> None:
        self.tokenizer = tokenizer
        self._texts: dict[int, str] = {}

    def __call__(self, tid: int) -> str | None:
        if self.tokenizer is None:
            return None
        text = self._texts.get(tid)
        if text is None:
            text = self._texts[tid] = self.tokenizer.decode([tid])
        return text


@dataclass(slots=True)
class OutputChunk:
    """One update of a request.

    ``text`` is cumulative (partial UTF-8 and possible stop-string prefixes held back; on the
    final chunk, the matched stop string or stop token cut), ``delta`` what it added since the
    previous chunk, ``new_ids`` the tokens this update added. ``output_ids`` and the logprob
    lists in ``meta_info`` are the stream's own accumulating lists, shared by every chunk of the
    request (so a chunk costs nothing per earlier token): copy them to keep a snapshot.
    """

    rid: str
    text: str
    delta: str
    new_ids: list[int]
    output_ids: list[int]
    finished: bool
    meta_info: dict[str, Any]


class OutputStream:
    """Accumulates one request's ``ReqOutput`` records and turns each into an ``OutputChunk``.

    Invariants: per record, the work is proportional to the record's new tokens (incremental
    detokenizing, a bounded stop-string scan); the concatenation of the deltas is the final text;
    only the final record decodes the whole output once (to cut a stop string exactly as the
    non-streaming path does). Without a tokenizer the text stays empty.
    """

    def __init__(
        self,
        rid: str,
        params: SamplingParams,
        tokenizer: Any | None,
        token_text: TokenText,
        created: float | None = None,
    ) -> None:
        self.rid = rid
        self.params = params
        self.tokenizer = tokenizer
        self.token_text = token_text
        self.created = time.monotonic() if created is None else created
        self.output_ids: list[int] = []
        self.text = ""
        self.finished = False
        self.meta: dict[str, Any] = {"id": rid}
        self._detok = self._new_detokenizer()
        self._hold = self._new_hold_back()
        self._out_lp: list[tuple] | None = None
        self._out_top: list[list[tuple]] | None = None
        if params.return_logprob:
            self._out_lp = self.meta["output_token_logprobs"] = []
            self._out_top = self.meta["output_top_logprobs"] = []

    def feed(self, out: ReqOutput) -> OutputChunk:
        rolled_back = out.start < len(self.output_ids)
        if rolled_back:  # a jump-forward re-tokenized the tail (never for streamed requests)
            del self.output_ids[out.start :]
        self.output_ids.extend(out.new_ids)
        self._logprobs(out)
        meta = self.meta
        meta["prompt_tokens"] = out.prompt_tokens
        meta["completion_tokens"] = len(self.output_ids)
        meta["cached_tokens"] = out.cached_tokens
        meta["finish_reason"] = out.finish_reason
        meta["e2e_latency"] = time.monotonic() - self.created
        finished = out.finish_reason is not None
        if self.tokenizer is None:
            delta = ""
        elif finished:
            text = final_text(self.tokenizer, self.output_ids, self.params, out.finish_reason)
            delta = text[len(self.text) :] if text.startswith(self.text) else text
            self.text = text
        else:
            if rolled_back:
                self._detok = self._new_detokenizer()
                self._hold = self._new_hold_back()
                self.text = ""
                delta = self._hold.push(self._detok.feed(self.output_ids))
            else:
                delta = self._hold.push(self._detok.feed(out.new_ids))
            self.text += delta
        self.finished = finished
        return OutputChunk(
            self.rid, self.text, delta, out.new_ids, self.output_ids, finished, dict(meta)
        )

    def _logprobs(self, out: ReqOutput) -> None:
        meta, text = self.meta, self.token_text
        if self._out_lp is not None and out.new_logprobs:
            self._out_lp.extend(
                (v, t, text(t)) for v, t in zip(out.new_logprobs, out.new_logprob_ids)
            )
            self._out_top.extend(
                [(v, t, text(t)) for v, t in row] for row in out.new_top_logprobs or ()
            )
        if out.input_logprobs is not None:
            meta["input_token_logprobs"] = [
                (v, t, text(t)) for v, t in zip(out.input_logprobs, out.input_logprob_ids)
            ]
            meta["input_top_logprobs"] = [
                [(v, t, text(t)) for v, t in row] for row in (out.input_top_logprobs or [])
            ]

    def _new_detokenizer(self) -> IncrementalDetokenizer | None:
        if self.tokenizer is None:
            return None
        p = self.params
        return IncrementalDetokenizer(
            self.tokenizer, p.skip_special_tokens, p.spaces_between_special_tokens
        )

    def _new_hold_back(self) -> StopHoldBack:
        p = self.params
        if p.no_stop_trim:
            return StopHoldBack([])
        return StopHoldBack(p.stop, max((regex_width(r) for r in p.stop_regex), default=0))
