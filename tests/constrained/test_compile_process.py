"""The compile process: results equal in-process compiles, a time limit kills it, a memory cap
stops a grammar bomb, and the next compile gets a fresh process."""

from __future__ import annotations

import json
import os

import pytest

from plait.constrained.compile_process import CompileProcess
from plait.constrained.grammar_cache import GrammarCache
from plait.constrained.spec import GrammarKey
from plait.constrained.vocabulary import TokenVocabulary
from plait.runtime.errors import InvalidRequestError

# the 256 bytes and a few multi-byte tokens (the bomb's cost is in their masks), then EOS
TOKENS = [bytes([i]) for i in range(256)] + [b"ab", b"abc", b"aaaa", b'{"', b'":']
BYTES = TokenVocabulary([*TOKENS, None], len(TOKENS), [len(TOKENS)], "bytes+")
# a grammar bomb by size: xgrammar needs minutes for these 3000 patterned properties
BOMB_FIELDS = {
    f"p{i}": {"type": "string", "pattern": "^[a-z]{1,40}[0-9]{1,40}$"} for i in range(3000)
}
BOMB = GrammarKey("json", json.dumps({"type": "object", "properties": BOMB_FIELDS}))
SCHEMA = GrammarKey(
    "json", json.dumps({"type": "object", "properties": {"a": {"type": "integer"}}})
)


def test_time_limit_kills_the_process_and_the_next_compile_gets_a_fresh_one():
    proc = CompileProcess("xgrammar", BYTES, memory_limit_mb=4096)
    try:
        assert proc.compile(SCHEMA, timeout=60)
        first = proc.pid
        with pytest.raises(InvalidRequestError, match="did not finish within 1 s") as info:
            proc.compile(BOMB, timeout=1)
        assert info.value.field == "json_schema" and proc.killed == [first]
        with pytest.raises(ProcessLookupError):
            os.kill(first, 0)
        with pytest.raises(InvalidRequestError, match="cannot be compiled"):
            proc.compile(GrammarKey("regex", "(a"), timeout=60)  # an error keeps the process
        assert proc.starts == 2 and proc.pid is not None
    finally:
        proc.kill()


def test_a_grammar_bomb_under_a_small_memory_cap_fails_alone():
    proc = CompileProcess("xgrammar", BYTES, memory_limit_mb=32)
    try:
        assert proc.compile(SCHEMA, timeout=60)
        first = proc.pid
        # the cap either stops the allocation or pushes xgrammar's work into the first mask,
        # which the time limit then stops; either way the process and its memory are gone
        with pytest.raises(InvalidRequestError, match="memory cap|did not finish") as info:
            proc.compile(BOMB, timeout=5)
        assert info.value.field == "json_schema"
        with pytest.raises(ProcessLookupError):
            os.kill(first, 0)
        assert proc.compile(SCHEMA, timeout=60)
        assert proc.starts == 2
    finally:
        proc.kill()


def test_cache_keeps_a_bounded_lru_and_never_caches_failures(monkeypatch):
    import plait.constrained.grammar_cache as gc

    monkeypatch.setattr(gc, "MAX_CACHED_GRAMMARS", 2)
    cache = GrammarCache(lambda: BYTES, None, isolate=False)
    keys = [GrammarKey("regex", f"[a-c]{{{i}}}") for i in range(1, 4)]
    first = cache.compile_now(keys[0])
    cache.compile_now(keys[1])
    assert cache.compile_now(keys[0]) is first  # a hit moves it to the back
    cache.compile_now(keys[2])
    assert len(cache) == 2 and cache.compile_now(keys[0]) is first
    assert cache.compiles == 3
    cache.compile_now(keys[1])
    assert cache.compiles == 4  # it was the least recently used
    for _ in range(2):
        with pytest.raises(InvalidRequestError):
            cache.compile_now(GrammarKey("regex", "(a"))
    assert len(cache) == 2
    cache.shutdown()


def test_auto_gives_each_backend_its_own_time_limit(monkeypatch):
    """A stage that runs out of time (here llguidance, made to) leaves xgrammar its whole limit
    in a fresh process: the chain is not one limit shared by both."""
    calls: list[tuple[str | None, float]] = []
    real = CompileProcess.compile

    def compile_stage(self, key, timeout, stage=None):
        calls.append((stage, timeout))
        if stage == "llguidance":
            self.kill()  # what a real time limit does to the process
            raise InvalidRequestError(key.field, f"compilation did not finish within {timeout} s")
        return real(self, key, timeout, stage)

    monkeypatch.setattr(CompileProcess, "compile", compile_stage)
    cache = GrammarCache(lambda: BYTES, None, backend="auto", timeout=lambda: 7.0, workers=1)
    try:
        grammar = cache.compile_now(SCHEMA)
        assert calls == [("llguidance", 7.0), ("xgrammar", 7.0)]
        assert type(grammar).__name__ == "XGrammar"
        calls.clear()
        with pytest.raises(InvalidRequestError) as info:
            cache.compile_now(GrammarKey("regex", "(a"))
        assert [s for s, _ in calls] == ["llguidance", "xgrammar"]
        assert "did not finish within 7.0 s" in info.value.message
        assert "cannot be compiled" in info.value.message  # xgrammar's own refusal, after it
    finally:
        cache.shutdown()
