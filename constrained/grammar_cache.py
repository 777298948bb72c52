"""Compiled grammars keyed by (kind, spec, vocabulary): once per process, on disk across restarts,
compiled on a thread pool so the scheduler loop never waits for one."""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path

from plait.constrained.compiler import (
    JSON_WHITESPACE,
    CompiledGrammar,
    GrammarKey,
    compile_grammar,
)
from plait.constrained.jump_forward import JumpForwardMap
from plait.constrained.vocabulary import TokenVocabulary

_FORMAT = f"1-oc{version('outlines_core')}-ie{version('interegular')}-ws{JSON_WHITESPACE!r}"


def default_cache_dir() -> Path:
    root = os.environ.get("PLAIT_CACHE_DIR") or Path.home() / ".cache" / "plait"
    return Path(root) / "grammars"


class GrammarCache:
    """``get`` returns a future of the compiled grammar for a key; equal keys share one
    compilation. A compilation that fails (InvalidRequestError) is not cached.

    ``vocab`` is built lazily on a pool thread by ``make_vocab`` (it takes ~0.4 s), so an engine
    that never sees a constrained request never pays for it. ``cache_dir`` None disables the
    disk cache. Files on disk are written by this cache only (pickle; the directory is the
    user's own cache).
    """

    def __init__(
        self,
        make_vocab: Callable[[], TokenVocabulary],
        cache_dir: Path | None,
        max_workers: int = 2,
    ) -> None:
        self._make_vocab = make_vocab
        self._vocab: TokenVocabulary | None = None
        self.cache_dir = cache_dir
        self._pool = ThreadPoolExecutor(max_workers, thread_name_prefix="plait-grammar")
        self._futures: dict[GrammarKey, Future[CompiledGrammar]] = {}
        self._lock = threading.Lock()
        self.disk_hits = 0
        self.compiles = 0

    def vocab(self) -> TokenVocabulary:
        with self._lock:
            if self._vocab is None:
                self._vocab = self._make_vocab()
            return self._vocab

    def get(self, key: GrammarKey) -> Future[CompiledGrammar]:
        with self._lock:
            fut = self._futures.get(key)
            if fut is None or (fut.done() and fut.exception() is not None):
                fut = self._futures[key] = self._pool.submit(self._load_or_compile, key)
            return fut

    def compile_now(self, key: GrammarKey) -> CompiledGrammar:
        """Synchronous ``get`` (benchmarks, tests)."""
        return self.get(key).result()

    def clear_memory(self) -> None:
        """Forgets the in-process entries (the disk cache stays)."""
        with self._lock:
            self._futures = {k: f for k, f in self._futures.items() if not f.done()}

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _load_or_compile(self, key: GrammarKey) -> CompiledGrammar:
        vocab = self.vocab()
        path = self._path(key, vocab)
        if path is not None and path.exists():
            loaded = self._load(path, key, vocab)
            if loaded is not None:
                self.disk_hits += 1
                return loaded
        grammar = compile_grammar(key, vocab)
        self.compiles += 1
        if path is not None:
            self._store(path, grammar)
        return grammar

    def _path(self, key: GrammarKey, vocab: TokenVocabulary) -> Path | None:
        if self.cache_dir is None:
            return None
        h = hashlib.sha256(f"{_FORMAT}\0{vocab.fingerprint}\0{key.kind}\0{key.spec}".encode())
        return self.cache_dir / f"{h.hexdigest()[:32]}.pkl"

    def _load(self, path: Path, key: GrammarKey, vocab: TokenVocabulary) -> CompiledGrammar | None:
        try:
            with open(path, "rb") as f:
                saved = pickle.load(f)
            if saved["kind"] != key.kind or saved["spec"] != key.spec:
                return None  # a hash collision or a foreign file: compile instead
            jump_map: JumpForwardMap | None = saved["jump_map"]
            return CompiledGrammar(key, saved["regex"], saved["index"], jump_map, vocab)
        except Exception:
            return None  # unreadable or stale: compile and overwrite

    def _store(self, path: Path, grammar: CompiledGrammar) -> None:
        saved = {
            "kind": grammar.key.kind,
            "spec": grammar.key.spec,
            "regex": grammar.regex,
            "index": grammar.index,
            "jump_map": grammar.jump_map,
        }
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                pickle.dump(saved, f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only cache directory only costs recompilation
