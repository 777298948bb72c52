"""Compiled grammars keyed by (backend, kind, spec, vocabulary): compiled once in a killable
process, kept in a bounded LRU in memory and a bounded directory on disk."""

from __future__ import annotations

import functools
import hashlib
import os
import queue
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from plait.constrained.backends import library_version, make_compiler
from plait.constrained.compile_process import CompileProcess
from plait.constrained.grammar import CompiledGrammar, GrammarCompiler, compile_stages
from plait.constrained.spec import GrammarKey
from plait.constrained.vocabulary import TokenVocabulary

# Bounds of the in-memory LRU (entries, and the bytes the grammars report holding).
MAX_CACHED_GRAMMARS = 512
MAX_CACHED_BYTES = 512 << 20
# Payload files kept on disk per cache directory; the oldest go first.
MAX_DISK_ENTRIES = 256


@functools.cache
def compiler_digest() -> str:
    """Part of every disk-cache key: a digest of this package's source, so a grammar compiled
    by an older plait (another schema rewrite, another string class) is never loaded."""
    h = hashlib.sha256()
    for f in sorted(Path(__file__).parent.glob("*.py")):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def default_cache_dir() -> Path:
    root = os.environ.get("PLAIT_CACHE_DIR") or Path.home() / ".cache" / "plait"
    return Path(root) / "grammars"


class GrammarCache:
    """``get`` returns a future of the compiled grammar for a key; equal keys share one
    compilation. A compilation that fails (InvalidRequestError) is not cached.

    ``make_vocab`` runs lazily on a pool thread (it takes ~0.4 s), so an engine that never sees
    a constrained request never pays for it. Compiles run in ``workers`` child processes
    (``isolate``; in-thread otherwise, for benchmarks), each stage of a compile (one per backend
    of a chain) killed past ``timeout()`` seconds and capped at ``memory_limit_mb``. ``cache_dir`` None disables the disk cache; files there
    are written by this cache only.
    """

    def __init__(
        self,
        make_vocab: Callable[[], TokenVocabulary],
        cache_dir: Path | None,
        *,
        backend: str = "xgrammar",
        timeout: Callable[[], float] = lambda: 60.0,
        memory_limit_mb: int = 4096,
        workers: int = 2,
        isolate: bool = True,
    ) -> None:
        self._make_vocab = make_vocab
        self._vocab: TokenVocabulary | None = None
        self._compiler: GrammarCompiler | None = None
        self.backend = backend
        self.cache_dir = cache_dir
        self.timeout = timeout
        self.memory_limit_mb = memory_limit_mb
        self.isolate = isolate
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="plait-grammar")
        self._procs: queue.SimpleQueue[CompileProcess | None] = queue.SimpleQueue()
        self._all_procs: list[CompileProcess] = []
        for _ in range(workers):
            self._procs.put(None)  # started on first use
        self._done: OrderedDict[GrammarKey, Future[CompiledGrammar]] = OrderedDict()
        self._inflight: dict[GrammarKey, Future[CompiledGrammar]] = {}
        self._bytes = 0
        self._lock = threading.Lock()
        self.disk_hits = 0
        self.compiles = 0

    def vocab(self) -> TokenVocabulary:
        with self._lock:
            if self._vocab is None:
                self._vocab = self._make_vocab()
                self._compiler = make_compiler(self.backend, self._vocab)
            return self._vocab

    @property
    def compiler(self) -> GrammarCompiler:
        self.vocab()
        assert self._compiler is not None
        return self._compiler

    def get(self, key: GrammarKey) -> Future[CompiledGrammar]:
        with self._lock:
            fut = self._done.get(key)
            if fut is not None:
                self._done.move_to_end(key)
                return fut
            fut = self._inflight.get(key)
            if fut is None:
                fut = self._inflight[key] = self._pool.submit(self._load_or_compile, key)
                fut.add_done_callback(lambda f, k=key: self._settle(k, f))
            return fut

    def compile_now(self, key: GrammarKey) -> CompiledGrammar:
        """Synchronous ``get`` (benchmarks, tests)."""
        return self.get(key).result()

    def __len__(self) -> int:
        return len(self._done)

    def clear_memory(self) -> None:
        """Forgets the in-process entries (the disk cache stays)."""
        with self._lock:
            self._done.clear()
            self._bytes = 0

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        for p in self._all_procs:
            p.kill()

    def _settle(self, key: GrammarKey, fut: Future[CompiledGrammar]) -> None:
        with self._lock:
            self._inflight.pop(key, None)
            if fut.cancelled() or fut.exception() is not None:
                return
            self._done[key] = fut
            self._bytes += fut.result().memory_bytes
            while len(self._done) > MAX_CACHED_GRAMMARS or (
                self._bytes > MAX_CACHED_BYTES and len(self._done) > 1
            ):
                _, old = self._done.popitem(last=False)
                self._bytes -= old.result().memory_bytes

    def _load_or_compile(self, key: GrammarKey) -> CompiledGrammar:
        vocab = self.vocab()
        path = self._path(key, vocab)
        if path is not None and path.exists():
            try:
                grammar = self.compiler.load(key, _read_entry(path, key))
                self.disk_hits += 1
                return grammar
            except Exception:  # noqa: BLE001 - unreadable or stale: compile and overwrite
                pass
        payload = self._compile_payload(key, vocab)
        self.compiles += 1
        grammar = self.compiler.load(key, payload)
        if path is not None:
            _write_entry(path, key, payload)
        return grammar

    def _compile_payload(self, key: GrammarKey, vocab: TokenVocabulary) -> bytes:
        if not self.isolate:
            return self.compiler.compile_payload(key)
        proc = self._procs.get()
        if proc is None:
            proc = CompileProcess(self.backend, vocab, self.memory_limit_mb)
            with self._lock:
                self._all_procs.append(proc)
        try:  # each stage under its own time limit
            return compile_stages(
                key, self.compiler.stages(), lambda k, stage: proc.compile(k, self.timeout(), stage)
            )
        finally:
            self._procs.put(proc)

    def _path(self, key: GrammarKey, vocab: TokenVocabulary) -> Path | None:
        if self.cache_dir is None:
            return None
        fmt = f"{compiler_digest()}-{self.backend}-{library_version(self.backend)}"
        h = hashlib.sha256(f"{fmt}\0{vocab.fingerprint}\0{key.kind}\0{key.spec}".encode())
        return self.cache_dir / f"{h.hexdigest()[:32]}.grammar"


def _read_entry(path: Path, key: GrammarKey) -> bytes:
    data = path.read_bytes()
    header = f"{key.kind}\0{key.spec}\0".encode()
    if not data.startswith(header):
        raise ValueError("a hash collision or a foreign file")
    return data[len(header) :]


def _write_entry(path: Path, key: GrammarKey, payload: bytes) -> None:
    """Atomic write; then the directory is trimmed to ``MAX_DISK_ENTRIES`` (oldest first)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(f"{key.kind}\0{key.spec}\0".encode())
            f.write(payload)
        os.replace(tmp, path)
        entries = sorted(path.parent.glob("*.grammar"), key=lambda p: p.stat().st_mtime)
        for old in entries[: max(0, len(entries) - MAX_DISK_ENTRIES)]:
            old.unlink(missing_ok=True)
    except OSError:
        pass  # a read-only or shared cache directory only costs recompilation
