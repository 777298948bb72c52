"""The scheduler's view of constrained decoding: compile, wait, mask, advance, jump; the same
for every grammar backend."""

from __future__ import annotations

import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from plait.constrained.compile_process import START_TIMEOUT
from plait.constrained.grammar import CompiledGrammar
from plait.constrained.grammar_cache import GrammarCache
from plait.constrained.grammar_state import GrammarState, Jump
from plait.constrained.mask import MaskBuilder, VocabMask
from plait.constrained.spec import GrammarKey
from plait.constrained.spec import grammar_key as params_grammar_key
from plait.constrained.vocabulary import build_vocabulary
from plait.runtime.errors import InvalidRequestError
from plait.runtime.worker.request import FinishReason, Req


def grammar_key(req: Req) -> GrammarKey | None:
    return params_grammar_key(req.sampling_params)


@dataclass(slots=True)
class _Waiting:
    req: Req
    key: GrammarKey
    future: Future[CompiledGrammar]
    deadline: float


class GrammarBackend:
    """Gives constrained requests their grammar before they are scheduled.

    Invariants: a constrained request reaches the waiting queue only with ``req.grammar`` set;
    one whose spec is invalid, cannot be enforced exactly by ``backend`` or does not compile
    within ``compile_timeout`` seconds (the compile process is then killed) finishes with
    ``req.error`` set (an InvalidRequestError naming the field) and never runs. Only the
    ``CompiledGrammar`` / ``GrammarMatcher`` interface is used here: no library specifics.
    """

    def __init__(
        self,
        tokenizer: Any,
        eos_token_ids: set[int],
        vocab_size: int,
        *,
        compile_timeout: float = 60.0,
        cache_dir: Path | None = None,
        jump_forward: bool = True,
        backend: str = "xgrammar",
        memory_limit_mb: int = 4096,
    ) -> None:
        self.vocab_size = vocab_size
        self.compile_timeout = compile_timeout
        self.jump_forward = jump_forward
        self.cache = GrammarCache(
            lambda: build_vocabulary(tokenizer, eos_token_ids, vocab_size),
            cache_dir,
            backend=backend,
            timeout=lambda: self.compile_timeout,
            memory_limit_mb=memory_limit_mb,
        )
        self.waiting: list[_Waiting] = []
        self.masks = MaskBuilder()
        self.num_jumps = 0
        self.jumped_tokens = 0

    # ---- compile --------------------------------------------------------------------------

    def add(self, req: Req) -> bool:
        """True when ``req`` may be scheduled now; otherwise it waits here for its grammar."""
        key = grammar_key(req)
        if key is None:
            return True
        fut = self.cache.get(key)
        if fut.done() and fut.exception() is None:
            self._attach(req, fut.result())
            return True
        # the compile process enforces the limit itself; this is a hang guard that also allows
        # for starting that process (importing the library under load takes a while)
        deadline = time.monotonic() + self.compile_timeout + START_TIMEOUT
        self.waiting.append(_Waiting(req, key, fut, deadline))
        return False

    def poll(self) -> tuple[list[Req], list[Req]]:
        """(requests whose grammar is ready, requests that failed with ``req.error`` set)."""
        if not self.waiting:
            return [], []
        now = time.monotonic()
        ready: list[Req] = []
        failed: list[Req] = []
        still: list[_Waiting] = []
        for w in self.waiting:
            if w.future.done():
                err = w.future.exception()
                if err is None:
                    self._attach(w.req, w.future.result())
                    ready.append(w.req)
                    continue
                if not isinstance(err, InvalidRequestError):
                    err = InvalidRequestError(w.key.field, f"compilation failed: {err!r}")
                self._fail(w.req, err)
                failed.append(w.req)
            elif now > w.deadline:
                msg = f"compilation did not finish within {self.compile_timeout:g} s"
                self._fail(w.req, InvalidRequestError(w.key.field, msg))
                failed.append(w.req)
            else:
                still.append(w)
        self.waiting = still
        return ready, failed

    def wait_any(self, timeout: float) -> None:
        """Blocks up to ``timeout`` s for a compilation (call only when nothing else runs)."""
        if self.waiting:
            wait([w.future for w in self.waiting], timeout, FIRST_COMPLETED)

    def abort(self, rid: str) -> Req | None:
        for w in self.waiting:
            if w.req.rid == rid:
                self.waiting.remove(w)
                return w.req
        return None

    def _attach(self, req: Req, grammar: CompiledGrammar) -> None:
        req.grammar = GrammarState(
            grammar, self.cache.vocab(), list(req.sampling_params.stop_token_ids)
        )

    @staticmethod
    def _fail(req: Req, err: InvalidRequestError) -> None:
        req.error = err
        req.finished_reason = FinishReason("abort", message=str(err))

    # ---- decode ---------------------------------------------------------------------------

    def batch_mask(self, reqs: list[Req], device: torch.device) -> VocabMask | None:
        """The mask of this step's constrained rows; None (no cost) when there are none."""
        del device  # the bitmask is filled on the CPU; VocabMask.apply moves what it needs
        hold = [len(r.output_ids) < r.sampling_params.min_new_tokens for r in reqs]
        return self.masks.build([r.grammar for r in reqs], self.vocab_size, hold)

    @staticmethod
    def accept(reqs: list[Req]) -> None:
        """Advances every constrained request over the token it just sampled."""
        for req in reqs:
            if req.grammar is not None:
                req.grammar.accept(req.output_ids[-1])

    @staticmethod
    def eos_token_id(req: Req) -> int:
        return req.grammar.vocab.eos_token_id

    def try_jump(self, req: Req) -> Jump | None:
        """The jump for a running request (state committed), or None. Not for requests that
        report logprobs (forced tokens are not sampled); a retokenization never rolls back a
        token the request's records already carried (``sent_ids``: all of a stream's at one
        token a record; only the first of a non-streamed HTTP request's)."""
        gs = req.grammar
        if not self.jump_forward or gs is None or req.sampling_params.return_logprob:
            return None
        jump = gs.try_jump(req.output_ids, req.sent_ids, req.sampling_params.max_new_tokens)
        if jump is not None:
            self.num_jumps += 1
            self.jumped_tokens += len(jump.new_ids)
        return jump
