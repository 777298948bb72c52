"""The ``plait`` command: ``plait serve [--model PATH] [--port 30000] ...``.

Every flag comes from a field of ``ServerArgs`` / ``EngineConfig`` / ``SchedulerConfig``
(``runtime/config.py``); ``plait serve --help`` lists them.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from plait.runtime.config import ServerArgs
from plait.runtime.server.admission import HttpLimits
from plait.runtime.server.auth import ApiKeys

if TYPE_CHECKING:
    from fastapi import FastAPI

SERVING_ON = "plait: serving on "  # the start-up line, before the URL (``launch`` reads it)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] != "serve":
        sys.exit("usage: plait serve [--help] [options]")
    serve(argv[1:])


def build_app(args: ServerArgs) -> tuple[FastAPI, Callable[[], None]]:
    """Starts the model side (a worker process, or with ``in_process`` an engine on a thread)
    and the app over it; returns the app and a callable that stops the model side."""
    from plait.runtime.model.model_source import DEFAULT_MODEL_NAME

    model = args.engine.model_path
    name = args.served_model_name or (
        DEFAULT_MODEL_NAME if model is None else model.rstrip("/").split("/")[-1]
    )
    served = {model} if model else set()
    keys = ApiKeys.load(args.api_key, args.api_key_file)
    if args.engine.cache_isolation is None:
        isolation = "tenant" if keys is not None and len(keys.tenants) > 1 else "global"
        args = replace(args, engine=replace(args.engine, cache_isolation=isolation))
    backend: Any
    if args.in_process:
        from plait.runtime.server.engine_thread import EngineThread
        from plait.runtime.worker.core import EngineCore

        core = EngineCore(args.engine)
        core.own_process()
        backend = EngineThread(core)
        tokenizer = core.tokenizer
        stop = backend.close
    else:
        from plait.runtime.client.supervised_worker import SupervisedWorker

        # a CPU step over a large batch can take seconds; a dead process is caught at once
        # by its exit, so the ping only needs to catch a hung worker
        backend = SupervisedWorker(
            args.engine, heartbeat_timeout=60.0, while_loading=_import_http_stack
        )
        tokenizer = backend.tokenizer
        stop = backend.close

    from plait.runtime.server.app import create_app

    info = backend.info
    app = create_app(
        backend,
        tokenizer,
        name,
        info["context_len"],
        info["vocab_size"],
        api_keys=keys,
        served_names=served,
        http=HttpLimits(
            max_request_bytes=args.max_request_bytes,
            max_sequences_per_request=args.max_sequences_per_request,
            max_concurrent_sequences=args.max_concurrent_sequences,
            max_queued_tokens=args.max_queued_tokens,
            request_timeout=args.request_timeout,
        ),
    )
    return app, stop


def _import_http_stack() -> None:
    """The app's and uvicorn's imports (about a second), done while the worker loads."""
    import uvicorn  # noqa: F401

    import plait.runtime.server.app  # noqa: F401


def serve(argv: list[str] | None = None) -> None:
    import uvicorn

    args = ServerArgs.from_cli(argv)
    sock = listening_socket(args.host, args.port)  # a taken port fails before the model loads
    app, stop = build_app(args)
    try:
        host, port = sock.getsockname()[:2]
        url_host = f"[{host}]" if ":" in host else host
        # the line launch.serve reads the port from (``--port 0``: the kernel's choice)
        print(f"{SERVING_ON}http://{url_host}:{port}", file=sys.stderr, flush=True)
        # SIGTERM / SIGINT: uvicorn stops accepting, gives open requests shutdown_timeout
        # seconds (a stream that never ends is cut), then the worker is stopped below
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level=args.log_level,
            timeout_graceful_shutdown=args.shutdown_timeout,
        )
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        stop()


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host``:``port`` (0: a free port the kernel picks), as uvicorn
    binds its own. Bound here, before uvicorn runs, so the port in the start-up line is the
    one served: no window in which another process could take it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise SystemExit(
            f"plait serve: cannot bind --host {host} --port {port}: {e.strerror}"
        ) from None
    return sock
