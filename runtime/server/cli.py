"""The ``plait`` command: ``plait serve [--model PATH] [--port 30000] ...``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from plait.runtime.server.app import create_app


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="plait")
    parser.add_argument("command", choices=["serve"], help="serve: start the HTTP server")
    args = parser.parse_args(argv[:1])
    if args.command == "serve":
        serve(argv[1:])


# ---- serve ------------------------------------------------------------------------------


def add_serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "--model-path", dest="model", default=None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=30000)
    p.add_argument("--api-key", default=None)
    p.add_argument(
        "--in-process", action="store_true", help="run the engine on a thread of the server"
    )
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--max-total-tokens", type=int, default=None)
    p.add_argument("--chunked-prefill-size", type=int, default=None)
    p.add_argument("--schedule-policy", choices=["lpm", "fcfs", "dfs-weight"], default=None)
    p.add_argument("--disable-radix-cache", action="store_true")
    p.add_argument(
        "--disable-mixed-chunk",
        action="store_true",
        help="run prefill chunks and decode steps as separate forwards",
    )
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    p.add_argument("--context-length", type=int, default=None)
    p.add_argument("--log-level", default="warning")


def engine_options(args: argparse.Namespace) -> dict[str, Any]:
    opts = {
        "max_total_tokens": args.max_total_tokens,
        "chunked_prefill_size": args.chunked_prefill_size,
        "schedule_policy": args.schedule_policy,
        "dtype": args.dtype,
        "context_length": args.context_length,
    }
    opts = {k: v for k, v in opts.items() if v is not None}
    if args.disable_radix_cache:
        opts["disable_radix_cache"] = True
    if args.disable_mixed_chunk:
        opts["enable_mixed_chunk"] = False
    return opts


def build_app(args: argparse.Namespace) -> tuple[FastAPI, Any]:
    """Starts the model side (a worker process, or with ``--in-process`` an engine on a thread)
    and the app over it; returns the app and a callable that stops the model side."""
    from plait.runtime.model.model_source import DEFAULT_MODEL_NAME

    name = args.served_model_name or (
        DEFAULT_MODEL_NAME if args.model is None else args.model.rstrip("/").split("/")[-1]
    )
    served = {args.model} if args.model else set()
    if args.in_process:
        from plait.runtime.engine import Engine
        from plait.runtime.server.engine_thread import EngineBackend

        engine = Engine(args.model, **engine_options(args))
        backend = EngineBackend(engine)
        tokenizer, info = (
            engine.tokenizer,
            {
                "context_len": engine.context_len,
                "vocab_size": engine.vocab_size,
            },
        )
        stop = backend.close
    else:
        from plait.runtime.client.runtime_client import RuntimeClient
        from plait.runtime.model.loader import load_tokenizer
        from plait.runtime.worker.zmq_worker import start_worker

        worker = start_worker(args.model, **engine_options(args))
        try:
            tokenizer = load_tokenizer(Path(worker.info["model_path"]))
            # a CPU step over a large batch can take seconds; a dead process is caught at once
            # by is_alive, so the ping only needs to catch a hung worker
            backend = RuntimeClient(
                worker.endpoint, tokenizer, is_alive=worker.is_alive, heartbeat_timeout=60.0
            )
        except BaseException:
            worker.stop()
            raise
        info = backend.info

        def stop() -> None:
            backend.close()
            worker.stop()

    app = create_app(
        backend,
        tokenizer,
        name,
        info["context_len"],
        info["vocab_size"],
        api_key=args.api_key,
        served_names=served,
    )
    return app, stop


def serve(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(prog="plait serve", description="Serve a model over HTTP.")
    add_serve_args(parser)
    args = parser.parse_args(argv)
    app, stop = build_app(args)
    print(f"plait: serving on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    finally:
        stop()


if __name__ == "__main__":
    main()
