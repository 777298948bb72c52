"""SGLang's native protocol beyond ``/generate``'s body: the shape of its responses (streamed
chunks with per-chunk logprobs), ``/model_info``, ``/server_info`` and the fork join route its
frontend (``sglang.RuntimeEndpoint``) calls."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request

from plait.runtime.errors import InvalidRequestError
from plait.runtime.server.http_body import GenerateCall
from plait.runtime.server.streams import ServerState, read_json

# meta_info lists that a streamed chunk carries only the new part of (SGLang's
# _INCREMENTAL_STREAMING_META_INFO_KEYS); output_token_logprobs_length counts them all
_INCREMENTAL_KEYS = ("output_token_logprobs", "output_top_logprobs")


def native_out(chunk: Any, with_text: bool = True) -> dict[str, Any]:
    """A response as of ``chunk``: cumulative text, ids and logprobs. The chunk's lists are
    the stream's growing ones, so they are cut to the chunk's own ``completion_tokens``."""
    meta = dict(chunk.meta_info)
    n = meta.get("completion_tokens", len(chunk.output_ids))
    if "output_token_logprobs" in meta:
        for key in _INCREMENTAL_KEYS:
            if key in meta:
                meta[key] = meta[key][:n]
        meta["output_token_logprobs_length"] = len(meta["output_token_logprobs"])
    if not with_text:
        _drop_logprob_text(meta)
    return {"text": chunk.text, "output_ids": chunk.output_ids[:n], "meta_info": meta}


class NativeStream:
    """Turns one request's chunks into SGLang's streamed events.

    Invariants (what ``sglang.RuntimeEndpoint`` and its ``text_async_iter`` rely on): ``text``
    is cumulative; ``output_token_logprobs`` / ``output_top_logprobs`` hold only the entries
    added since the previous event, so their lengths sum to ``output_token_logprobs_length``,
    which equals ``completion_tokens``; with ``stream_interval`` k an event is sent once at
    least k tokens were added (and always for the last chunk). A chunk whose stream is
    ``behind`` (a later chunk already waits: the reader fell behind the worker) sends no event:
    the later one carries its tokens, as SGLang's server sends a request's latest state when
    its handler wakes. Events sent back to back let SGLang's ``text_async_iter`` read two
    events' text with only the last one's logprobs (it keeps the latest ``meta_info`` of a
    variable), which its own test_stream_logprobs then fails.
    """

    def __init__(self, call: GenerateCall) -> None:
        self.with_text = call.return_text_in_logprobs
        self.interval = call.sampling_params.stream_interval or 1
        self.sent_tokens = 0
        self.sent_logprobs = 0

    def event(self, chunk: Any, behind: bool = False) -> dict[str, Any] | None:
        tokens = chunk.meta_info.get("completion_tokens", 0)
        if not chunk.finished and (behind or tokens - self.sent_tokens < self.interval):
            return None
        out = native_out(chunk, self.with_text)
        meta = out["meta_info"]
        if "output_token_logprobs" in meta:
            for key in _INCREMENTAL_KEYS:
                if key in meta:
                    meta[key] = meta[key][self.sent_logprobs :]
            self.sent_logprobs = meta["output_token_logprobs_length"]
        self.sent_tokens = tokens
        return out


def _drop_logprob_text(meta: dict[str, Any]) -> None:
    for key in ("input_token_logprobs", "output_token_logprobs"):
        if key in meta:
            meta[key] = [(v, t, None) for v, t, _ in meta[key]]
    for key in ("input_top_logprobs", "output_top_logprobs"):
        if key in meta:
            meta[key] = [[(v, t, None) for v, t, _ in row] for row in meta[key]]


def model_info(
    state: ServerState, model_dir: str | None, context_len: int, vocab_size: int, chat: Any
) -> dict[str, Any]:
    """SGLang's ``/model_info`` fields (``model_path`` is the loaded directory, as SGLang's is
    the path it loaded) plus plait's ``context_length``, ``vocab_size`` and ``chat_template``
    (the roles' markers, which plait's ``RuntimeEndpoint`` uses)."""
    hf = _hf_config(model_dir)
    return {
        "model_path": model_dir or state.model_name,
        "served_model_name": state.model_name,
        "tokenizer_path": model_dir,
        "is_generation": True,
        "preferred_sampling_params": None,
        "weight_version": None,
        "has_image_understanding": False,
        "has_audio_understanding": False,
        "model_type": hf.get("model_type"),
        "architectures": hf.get("architectures"),
        "context_length": context_len,
        "vocab_size": vocab_size,
        "chat_template": chat,
    }


def _hf_config(model_dir: str | None) -> dict[str, Any]:
    if model_dir is None:
        return {}
    path = Path(model_dir) / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def add_sglang_routes(app: FastAPI, state: ServerState, info: dict[str, Any]) -> None:
    """``/model_info`` (``info``), ``/server_info`` and ``/get_server_info``, and
    ``/concate_and_append_request``."""
    from plait import __version__

    backend = state.backend

    @app.get("/model_info")
    async def get_model_info() -> dict[str, Any]:
        return info

    @app.get("/server_info")
    @app.get("/get_server_info")
    async def server_info() -> dict[str, Any]:
        try:
            internal = [await asyncio.to_thread(backend.stats, 5)]
        except Exception:
            internal = []  # a dead worker still answers what the server was started with
        return {
            "model_path": info["model_path"],
            "served_model_name": state.model_name,
            "context_length": info["context_length"],
            "max_total_num_tokens": backend.info["kv_total"],
            "vocab_size": info["vocab_size"],
            "internal_states": internal,
            "version": __version__,
            "frontend": "plait",
        }

    @app.post("/concate_and_append_request")
    async def concate_and_append(request: Request) -> dict[str, Any]:
        """SGLang's frontend calls this when forks join with ``concate_and_append``: the join's
        text is already the source state's own (the client keeps it), and its next request
        sends that whole text, whose prefix the radix cache holds, so there is no KV to move
        here. The body is checked as SGLang's client sends it."""
        body = await read_json(request)
        src, dst = body.get("src_rids"), body.get("dst_rid")
        if not isinstance(src, list) or not all(isinstance(r, str) for r in src):
            raise InvalidRequestError("src_rids", "must be a list of request ids")
        if not isinstance(dst, str):
            raise InvalidRequestError("dst_rid", "must be a request id")
        return {"success": True}
