"""``RuntimeEndpoint``: the interpreter's backend over a plait server's native HTTP API."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx

from plait.ir.sampling import GenParams
from plait.runtime.chat_template import ChatTemplate
from plait.runtime.errors import InvalidRequestError, WorkerDiedError
from plait.runtime.interp.backend import Backend, ChoiceResult, GenResult, RoleMarkers
from plait.runtime.interp.select import select_choice

_GREEDY_ONE = {"max_new_tokens": 1, "temperature": 0.0}


class RuntimeEndpoint(Backend):
    """Talks to ``plait serve`` (or ``python -m plait.runtime.server``) at ``base_url``:
    ``POST /generate`` with SGLang's fields, ``/get_model_info``, ``/flush_cache``.

    One ``httpx.Client`` (thread-safe, pooled connections) serves every thread. Construction
    reads the model's info, so an unreachable server fails here. HTTP errors become
    ``InvalidRequestError`` (400, naming the server's field), ``WorkerDiedError`` (503),
    ``PermissionError`` (401) or ``RuntimeError``; a transport failure is a ``ConnectionError``.
    ``select`` is ``runtime.interp.select.select_choice`` over batched ``/generate`` requests.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float | None = None,
        max_connections: int = 256,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=10.0),
            limits=httpx.Limits(max_connections=max_connections),
        )
        try:
            self.model_info = self._call("GET", "/get_model_info").json()
        except BaseException:
            self.client.close()
            raise
        template = self.model_info.get("chat_template")
        self.chat_template = ChatTemplate.from_dict(template) if template else None

    # ---- Backend ------------------------------------------------------------------------

    def generate(self, prompt: str, params: GenParams) -> GenResult:
        out = self._generate({"text": prompt, **_request(params)})
        return GenResult(out["text"], out["meta_info"])

    def generate_n(self, prompt: str, params: GenParams) -> list[GenResult]:
        outs = self._generate({"text": prompt, **_request(params)})
        outs = outs if isinstance(outs, list) else [outs]
        return [GenResult(o["text"], o["meta_info"]) for o in outs]

    def generate_stream(self, prompt: str, params: GenParams) -> Iterator[str]:
        for delta, _ in self.generate_stream_meta(prompt, params):
            if delta:
                yield delta

    def generate_stream_meta(
        self, prompt: str, params: GenParams
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        body = {"text": prompt, **_request(params), "stream": True}
        sent = ""
        meta: dict[str, Any] = {}
        try:
            with self.client.stream("POST", "/generate", json=body) as r:
                if r.status_code != 200:
                    r.read()
                    _raise_for(r)
                for line in r.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    data = line[len("data: ") :]
                    if data == "[DONE]":
                        return
                    event = json.loads(data)
                    if "error" in event:
                        _raise_error(event["error"].get("code", 500), event["error"])
                    text = event["text"]
                    delta = text[len(sent) :] if text.startswith(sent) else text
                    sent = text
                    meta = _accumulate(meta, event["meta_info"])
                    yield delta, meta
        except httpx.TransportError as e:
            raise ConnectionError(f"{self.base_url}: {e}") from e

    def select(
        self, prompt: str, choices: list[str], temperature: float, choices_method: Any
    ) -> ChoiceResult:
        return select_choice(prompt, choices, temperature, choices_method, self)

    def role_markers(self, role: str) -> RoleMarkers:
        if self.chat_template is None:
            raise InvalidRequestError(
                "role", f"the server at {self.base_url} sends no chat template"
            )
        if role not in self.chat_template.markers:
            raise InvalidRequestError("role", f"unknown role {role!r}")
        return RoleMarkers(*self.chat_template.markers[role])

    def cache_prefix(self, prefix: str) -> None:
        if prefix:
            self.prompt_len(prefix)

    def flush_cache(self) -> None:
        r = self._call("POST", "/flush_cache", check=False)
        if r.status_code != 200:
            raise RuntimeError(f"{self.base_url}: cache not flushed: {r.text.strip()}")

    def shutdown(self) -> None:
        self.client.close()

    # ---- select's transport (runtime.interp.select.LogprobSource) ---------------------------

    def prompt_len(self, prompt: str) -> int:
        out = self._generate({"text": prompt, "sampling_params": _GREEDY_ONE})
        return out["meta_info"]["prompt_tokens"]

    def prompt_logprobs(self, texts: list[str], logprob_start_len: int) -> list[dict[str, Any]]:
        body = {
            "text": texts,
            "sampling_params": _GREEDY_ONE,
            "return_logprob": True,
            "logprob_start_len": logprob_start_len,
        }
        return [o["meta_info"] for o in self._generate(body)]

    # ---- SGLang's extras ----------------------------------------------------------------

    def get_model_name(self) -> str:
        return self.model_info.get("served_model_name") or self.model_info["model_path"]

    @property
    def default_system_prompt(self) -> str | None:
        return self.chat_template.default_system_prompt if self.chat_template else None

    def get_server_info(self) -> dict[str, Any]:
        return self._call("GET", "/server_info").json()

    # ---- HTTP ---------------------------------------------------------------------------

    def _generate(self, body: dict[str, Any]) -> Any:
        return self._call("POST", "/generate", json=body).json()

    def _call(self, method: str, path: str, check: bool = True, **kw: Any) -> httpx.Response:
        try:
            r = self.client.request(method, path, **kw)
        except httpx.TransportError as e:
            raise ConnectionError(f"{self.base_url}{path}: {e}") from e
        if check:
            _raise_for(r)
        return r


def _accumulate(meta: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
    """The cumulative meta_info after one streamed event, whose output logprob lists hold only
    the entries new since the previous event (SGLang's streaming protocol)."""
    out = dict(event)
    for key in ("output_token_logprobs", "output_top_logprobs"):
        if key in event:
            out[key] = [*meta.get(key, []), *event[key]]
    return out


def _request(params: GenParams) -> dict[str, Any]:
    return {"sampling_params": params.to_native(), **params.request_fields()}


def _raise_for(r: httpx.Response) -> None:
    if r.status_code == 200:
        return
    try:
        err = r.json()["error"]
    except (ValueError, KeyError, TypeError):
        err = {"message": r.text.strip()}
    _raise_error(r.status_code, err)


def _raise_error(status: int, err: dict[str, Any]) -> None:
    message = err.get("message") or f"HTTP {status}"
    if status == 400:
        raise InvalidRequestError(err.get("param") or "request", message)
    if status == 401:
        raise PermissionError(message)
    if status == 503:
        raise WorkerDiedError(message)
    raise RuntimeError(f"HTTP {status}: {message}")
