"""``plait.Runtime``: a worker process for this machine and a client in this one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from plait.runtime.client.generate_args import SamplingArg, to_params
from plait.runtime.client.handle import RequestHandle
from plait.runtime.client.runtime_client import RuntimeClient
from plait.runtime.client.supervised_worker import RestartPolicy, SupervisedWorker
from plait.runtime.client.text_api import TextAPI
from plait.runtime.config import EngineConfig
from plait.runtime.errors import InvalidRequestError
from plait.runtime.limits import ModelLimits
from plait.runtime.token_usage import TokenUsage
from plait.runtime.worker.process import WorkerProcess

# With the process handle at hand, death is seen at once; the ping only catches a hung worker.
HEARTBEAT_TIMEOUT_S = 30.0


class Runtime(TextAPI):
    """Starts a worker (``Engine`` options pass through) and generates through it.

    ``generate`` returns what ``Engine.generate`` returns; it is thread-safe, and concurrent
    callers are batched together by the worker. The worker stops on ``shutdown`` (or ``with``
    exit) and by itself when this process dies. When the worker dies, the requests it held fail
    with ``WorkerDiedError`` at once and a new worker is started (``restart_worker=False``: every
    later call raises ``WorkerDiedError``); calls made while it starts raise ``WorkerDiedError``,
    ``wait_ready`` waits for it.
    """

    def __init__(
        self, model_path: str | Path | None = None, *, restart_worker: bool = True, **options: Any
    ) -> None:
        self.config = EngineConfig.from_kwargs(model_path, **options)
        self.supervisor = SupervisedWorker(
            self.config,
            heartbeat_timeout=HEARTBEAT_TIMEOUT_S,
            policy=RestartPolicy(restart=restart_worker),
        )
        self.model_path = Path(self.supervisor.info["model_path"])  # the resolved HF directory
        self.tokenizer = self.supervisor.tokenizer
        self.token_usage = TokenUsage()  # what programs' gens on this runtime used

    @property
    def client(self) -> RuntimeClient:
        """The client of the worker serving now; WorkerDiedError while none does."""
        return self.supervisor.client

    @property
    def worker(self) -> WorkerProcess | None:
        """The worker process serving now (or the one that just died)."""
        return self.supervisor.worker

    def wait_ready(self, timeout: float = 60.0) -> bool:
        """Waits until a worker serves (after a restart); False if none does in ``timeout``."""
        return self.supervisor.wait_ready(timeout)

    # ---- generation -----------------------------------------------------------------------

    def generate(
        self,
        prompt: str | list[str] | None = None,
        sampling_params: SamplingArg | list[SamplingArg] = None,
        input_ids: list[int] | list[list[int]] | None = None,
        return_logprob: bool | None = None,
        logprob_start_len: int | None = None,
        top_logprobs_num: int | None = None,
        rid: str | list[str] | None = None,
        priority: int | None = None,
        tenant: str | None = None,
    ) -> dict[str, Any] | list[dict[str, Any]]:
        """A single prompt with ``n == 1`` gives one dict, otherwise a list (``n`` per prompt).
        ``priority`` (larger is more urgent) and ``tenant``: see ``runtime.sched_fields``."""
        single, handles = self._submit(
            False, prompt, sampling_params, input_ids, return_logprob, logprob_start_len,
            top_logprobs_num, rid, priority, tenant,
        )  # fmt: skip
        try:
            outs = [self._as_dict(h.result()) for h in handles]
        except BaseException:
            for h in handles:
                h.cancel()
            raise
        return outs[0] if single else outs

    def generate_stream(
        self, prompt: str, sampling_params: SamplingArg = None, **kwargs: Any
    ) -> Iterator[dict[str, Any]]:
        """Yields ``{text, delta, output_ids, meta_info}`` chunks of one request (``n == 1``);
        closing the iterator early aborts the request."""
        single, handles = self._submit(True, prompt, sampling_params, **kwargs)
        if not single:
            for h in handles:
                h.cancel()
            raise InvalidRequestError("prompt", "generate_stream takes one prompt with n == 1")
        handle = handles[0]
        try:
            for chunk in handle:
                out = self._as_dict(chunk)
                out["delta"] = chunk.delta
                yield out
        finally:
            handle.cancel()

    def submit(
        self, input_ids: list[int], sampling_params: SamplingArg = None, **kw
    ) -> RequestHandle:
        """Submits one sequence (``n == 1``) of token ids; sampling_params may be a dict."""
        params = to_params(sampling_params)
        _, subs = self._parse(
            sampling_params=params,
            input_ids=list(input_ids),
            priority=kw.pop("priority", None),
            tenant=kw.pop("tenant", None),
        )
        if len(subs) != 1:
            raise InvalidRequestError("n", "submit takes n == 1")
        return self.client.submit(subs[0].input_ids, subs[0].params, **kw, scope=subs[0].scope)

    def abort(self, rid: str) -> None:
        self._live()
        self.client.abort(rid)

    def flush_cache(self) -> bool:
        self._live()
        return self.client.flush_cache()

    def stats(self) -> dict[str, Any]:
        self._live()
        return self.client.stats()

    # ---- SGLang's Runtime surface: ``rt.endpoint`` is the object that answers these ----------

    @property
    def endpoint(self) -> Runtime:
        return self

    def get_model_name(self) -> str:
        return str(self.model_path)

    def get_server_info(self) -> dict[str, Any]:
        """What SGLang's ``/server_info`` reports that applies here: the model, its limits and
        the worker's live counters."""
        info = self.client.info
        return {
            "model_path": str(self.model_path),
            "context_length": info["context_len"],
            "max_total_num_tokens": info["kv_total"],
            "vocab_size": info["vocab_size"],
            "internal_states": [self.stats()],
        }

    # ---- lifetime -------------------------------------------------------------------------

    def shutdown(self) -> None:
        self.supervisor.close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # ---- helpers --------------------------------------------------------------------------

    def _submit(self, stream: bool, *args: Any, **kwargs: Any) -> tuple[bool, list[RequestHandle]]:
        """Parses ``generate``'s arguments and submits every sequence."""
        self._live()
        single, subs = self._parse(*args, **kwargs)
        handles: list[RequestHandle] = []
        try:
            for sub in subs:
                handles.append(
                    self.client.submit(sub.input_ids, sub.params, sub.rid, stream, sub.scope)
                )
        except BaseException:
            for h in handles:
                h.cancel()
            raise
        return single, handles

    @property
    def limits(self) -> ModelLimits:
        info = self.supervisor.info
        return ModelLimits(info["vocab_size"], info["context_len"], info["kv_total"])

    def _live(self) -> None:
        self.client.check_alive()
