"""Compilation in a child process that can be killed: a time limit frees its CPU and memory at
once, and a per-server cap on its address space stops a grammar bomb before the server swaps."""

from __future__ import annotations

import os
import pickle
import resource
import subprocess
import sys
from multiprocessing.connection import Connection

from plait.constrained.spec import GrammarKey
from plait.constrained.vocabulary import TokenVocabulary
from plait.runtime.errors import InvalidRequestError
from plait.runtime.parent_death import die_with_parent

# Seconds a fresh process may take to import its library and build the vocabulary.
START_TIMEOUT = 300.0


class CompileProcess:
    """A lazily started child that compiles one key at a time with one backend, one stage of
    its compile per call (``GrammarCompiler.stages``).

    Invariants: the child dies with the thread that started it (``die_with_parent``: the
    grammar cache's pool threads live until its shutdown). A ``compile`` that runs past its
    ``timeout``, dies (crash) or reaches the memory cap ends the child (its CPU and memory
    with it) and raises InvalidRequestError naming the key's field; the next ``compile``
    starts a fresh child. Not thread-safe: one caller at a time.
    """

    def __init__(self, backend: str, vocab: TokenVocabulary, memory_limit_mb: int) -> None:
        self.backend = backend
        self.vocab = vocab.without_tokenizer()
        self.memory_limit_mb = memory_limit_mb
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self.starts = 0
        self.killed: list[int] = []  # pids this object killed (and reaped)

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def compile(self, key: GrammarKey, timeout: float, stage: str | None = None) -> bytes:
        """The payload of one stage of the backend's compile (``GrammarCompiler.stages``), or
        with ``stage`` None of the whole compile, every stage under the one ``timeout``."""
        conn = self._ensure_started()
        self._send.send((key, stage))
        if not conn.poll(timeout):
            self.kill()
            raise InvalidRequestError(key.field, f"compilation did not finish within {timeout:g} s")
        try:
            status, *rest = conn.recv()
        except (EOFError, OSError):
            self.kill()
            raise InvalidRequestError(
                key.field,
                f"compilation failed: the compile process died (over the {self.memory_limit_mb} "
                "MiB compile memory cap?)",
            ) from None
        if status == "ok":
            return rest[0]
        field, message = rest
        if status == "exhausted":  # the child exits; reap it now
            self.kill()
        raise InvalidRequestError(field, message)

    def kill(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
                self.killed.append(self._proc.pid)
            self._proc.wait(5)
            self._proc = None
        if self._conn is not None:
            self._conn.close()
            self._send.close()
            self._conn = None

    def _ensure_started(self) -> Connection:
        if self._proc is not None and self._proc.poll() is None and self._conn is not None:
            return self._conn
        self.kill()
        # a fresh interpreter (not fork: the server has threads; not multiprocessing's spawn:
        # it re-runs the caller's __main__), talking over two pipes
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        cmd = [sys.executable, "-m", "plait.constrained.compile_process"]
        cmd += [str(to_child_r), str(from_child_w), str(os.getpid())]
        proc = subprocess.Popen(cmd, pass_fds=(to_child_r, from_child_w), stdin=subprocess.DEVNULL)
        os.close(to_child_r)
        os.close(from_child_w)
        send, conn = (
            Connection(to_child_w, readable=False),
            Connection(from_child_r, writable=False),
        )
        self._proc, self._conn, self._send = proc, conn, send
        self.starts += 1
        send.send_bytes(pickle.dumps((self.backend, self.vocab, self.memory_limit_mb)))
        try:
            ready = conn.poll(START_TIMEOUT) and conn.recv() == "ready"
        except (EOFError, OSError):
            ready = False
        if not ready:
            self.kill()
            raise RuntimeError("the grammar compile process did not start")
        return conn


def _child_main(recv: Connection, conn: Connection) -> None:
    from plait.constrained.backends import make_compiler

    backend, vocab, limit_mb = pickle.loads(recv.recv_bytes())
    compiler = make_compiler(backend, vocab)
    for stage in compiler.stages():  # import and vocabulary costs, now
        compiler.compile_stage(GrammarKey("regex", "a"), stage)
    _cap_memory(limit_mb)
    conn.send("ready")
    while True:
        try:
            key, stage = recv.recv()
        except EOFError:
            return
        try:
            payload = compiler.compile_stage(key, stage) if stage else compiler.compile_payload(key)
            conn.send(("ok", payload))
        except InvalidRequestError as e:
            conn.send(("err", e.field, e.message))
        except Exception as e:  # a library bug on one spec fails that spec only
            if isinstance(e, MemoryError) or "bad_alloc" in str(e):
                # the cap was reached: exit, so the memory the failed compile holds goes too
                msg = f"compilation failed: over the {limit_mb} MiB compile memory cap"
                conn.send(("exhausted", key.field, msg))
                return
            conn.send(("err", key.field, f"compilation failed: {e!r}"))


def _cap_memory(limit_mb: int) -> None:
    """Caps the address space at what the process maps now plus ``limit_mb``."""
    with open("/proc/self/status") as f:
        vm_kb = next(int(ln.split()[1]) for ln in f if ln.startswith("VmSize:"))
    cap = vm_kb * 1024 + limit_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


if __name__ == "__main__":
    die_with_parent(int(sys.argv[3]))  # a compile never outlives its worker
    _child_main(
        Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False)
    )
