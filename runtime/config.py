"""The one configuration chain: ``ServerArgs`` -> ``EngineConfig`` -> ``SchedulerConfig``.

Every entry point builds these records (the CLI from flags, ``Engine`` / ``Runtime`` from keyword
arguments) and the worker receives ``EngineConfig`` as a typed message. Each field is declared
once here, with its types and help; the CLI flags are generated from the fields. No torch.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from plait.runtime.errors import InvalidRequestError

SCHEDULE_POLICIES = ("lpm", "fcfs", "dfs-weight", "sjf", "random")
DTYPES = ("float32", "bfloat16", "float16")
ATTENTION_BACKENDS = ("auto", "torch", "triton")
LOAD_FORMATS = ("auto", "dummy")
QUANTIZATIONS = (
    "int8",
    "int4",
)  # = runtime.model.models.quant_linear.QUANTIZATIONS (no torch here)
CACHE_ISOLATIONS = ("tenant", "global")
FLOAT32_MATMULS = ("auto", "openblas", "torch")
DECODE_KERNELS = ("auto", "fused", "torch")
GRAMMAR_BACKENDS = ("auto", "xgrammar", "outlines", "llguidance")

_NONE = type(None)


def _opt(
    default: Any,
    types: tuple[type, ...],
    help: str,
    choices: tuple | None = None,
    secret: bool = False,
) -> Any:
    # a secret (an API key) stays out of repr, so printing or logging a config never shows it
    return field(
        default=default,
        repr=not secret,
        metadata={"types": types, "help": help, "choices": choices},
    )


@dataclass(slots=True)
class SchedulerConfig:
    """How the worker batches: policy, prefill budgets, admission and retraction ratios."""

    schedule_policy: str = _opt(
        "lpm", (str,), "order of the waiting queue", choices=SCHEDULE_POLICIES
    )
    chunked_prefill_size: int | None = _opt(
        1024, (int, _NONE), "prefill tokens per forward for a long prompt (-1 or none: never chunk)"
    )
    enable_mixed_chunk: bool = _opt(
        True, (bool,), "running decodes ride along in each prefill chunk's forward (Sarathi)"
    )
    max_prefill_tokens: int = _opt(4096, (int,), "prefill tokens per forward")
    max_running_requests: int = _opt(256, (int,), "requests decoding at once")
    init_new_token_ratio: float = _opt(
        0.7, (float, int), "share of max_new_tokens reserved per running request at first"
    )
    min_new_token_ratio: float = _opt(0.1, (float, int), "the reservation's floor")
    new_token_ratio_decay: float = _opt(0.001, (float, int), "reservation decay per decode step")
    # SGLang's names and direction: larger priority values run first unless flipped
    enable_priority_scheduling: bool = _opt(
        False, (bool,), "order the queue by request priority first; preempt lower priorities"
    )
    schedule_low_priority_values_first: bool = _opt(
        False, (bool,), "smaller priority values are more urgent (default: larger ones)"
    )
    priority_scheduling_preemption_threshold: int = _opt(
        10, (int,), "a waiting request preempts a running one only if this much more urgent"
    )
    disable_priority_preemption: bool = _opt(
        False, (bool,), "priority orders the queue but never retracts a running request"
    )
    enable_fair_scheduling: bool = _opt(
        False, (bool,), "virtual token counters (VTC): least-served backlogged tenant first"
    )
    fair_input_weight: float = _opt(1.0, (float, int), "VTC cost of one prompt token computed")
    fair_output_weight: float = _opt(2.0, (float, int), "VTC cost of one generated token")
    sjf_ranker_path: str | None = _opt(
        None, (str, _NONE), "sjf: the length ranker (.npz; none: the one shipped)"
    )
    sjf_starvation_steps: int = _opt(
        256, (int,), "sjf/random: a request queued this many steps is promoted ahead"
    )
    schedule_seed: int = _opt(0, (int,), "seed of the random policy")
    # vLLM's --num-scheduler-steps: the scheduling, the worker loop and the records once for
    # several forwards (a decode step of a small model on the CPU spends ~10% outside its forward)
    num_scheduler_steps: int = _opt(
        1,
        (int,),
        "decode forwards per scheduler step, until a record is due or a request arrives",
    )
    # SGLang's --stream-interval: fewer, larger chunks cost the server and client less a token
    stream_interval: int = _opt(
        1, (int,), "a stream's tokens are sent every this many (its first and last at once)"
    )

    def validate(self) -> None:
        _choice(self, "schedule_policy", SCHEDULE_POLICIES)
        if self.chunked_prefill_size is not None:
            _at_least(self, "chunked_prefill_size", 1)
        _at_least(self, "max_prefill_tokens", 1)
        _at_least(self, "max_running_requests", 1)
        _at_least(self, "priority_scheduling_preemption_threshold", 0)
        _at_least(self, "sjf_starvation_steps", 1)
        _at_least(self, "stream_interval", 1)
        _at_least(self, "num_scheduler_steps", 1)
        for name in ("fair_input_weight", "fair_output_weight"):
            if getattr(self, name) < 0:
                raise InvalidRequestError(name, f"must be >= 0, got {getattr(self, name)}")
        for name in ("init_new_token_ratio", "min_new_token_ratio", "new_token_ratio_decay"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise InvalidRequestError(name, f"must be in [0, 1], got {value}")


@dataclass(slots=True)
class EngineConfig:
    """What the worker loads and how: model, dtype, KV pool, attention, grammar; ``scheduler``."""

    model_path: str | None = _opt(
        None, (str, _NONE), "HF directory or .gguf file (default: SmolLM2-135M-Instruct)"
    )
    dtype: str = _opt("float32", (str,), "weight and KV dtype", choices=DTYPES)
    device: str = _opt("cpu", (str,), "torch device")
    max_total_tokens: int | None = _opt(
        None, (int, _NONE), "KV pool size in tokens (default: from mem_fraction_static)"
    )
    mem_fraction_static: float = _opt(
        0.15, (float, int), "fraction of free memory the KV pool may take"
    )
    context_length: int | None = _opt(None, (int, _NONE), "cap on the model's context length")
    attention_backend: str = _opt("auto", (str,), "attention kernels", choices=ATTENTION_BACKENDS)
    load_format: str = _opt(
        "auto", (str,), "dummy: random weights from config.json alone", choices=LOAD_FORMATS
    )
    quantization: str | None = _opt(
        None,
        (str, _NONE),
        "weight-only quantized linear layers (CPU): int8 / int4 per 32 (GGUF Q8_0 / Q4 as stored)",
        choices=QUANTIZATIONS,
    )
    num_threads: int | None = _opt(None, (int, _NONE), "torch CPU threads")
    float32_matmul: str = _opt(
        "auto",
        (str,),
        "float32 products on CPU: openblas (numpy's BLAS; faster than torch's MKL on AMD CPUs) "
        "or torch; auto: openblas where numpy has it, on CPUs other than Intel's",
        choices=FLOAT32_MATMULS,
    )
    decode_kernel: str = _opt(
        "auto",
        (str,),
        "CPU forwards of up to 64 tokens (int4: 8), decode steps and short prefills: fused "
        "(the whole step in one C call, built with the machine's C compiler at first use) or "
        "torch; auto: fused where supported",
        choices=DECODE_KERNELS,
    )
    disable_radix_cache: bool = _opt(False, (bool,), "no prefix reuse between requests")
    disable_head_screen: bool = _opt(
        False,
        (bool,),
        "greedy CPU decode steps read the whole head, not its int8 screen (the same tokens; "
        "the screen reads a quarter of a float32 head's bytes)",
    )
    cache_isolation: str | None = _opt(
        None,
        (str, _NONE),
        "tenant: a cached prefix is reused only by its own tenant (API key); global: by anyone "
        "(default: tenant when the server has more than one API key, else global). A request's "
        "cache_salt always scopes its reuse",
        choices=CACHE_ISOLATIONS,
    )
    grammar_compile_timeout: float = _opt(
        60.0, (float, int), "seconds a regex / JSON schema may take to compile"
    )
    grammar_cache_dir: str | None = _opt(
        "default", (str, _NONE), "where compiled grammars persist ('default': the plait cache)"
    )
    disable_jump_forward: bool = _opt(False, (bool,), "decode forced text token by token")
    grammar_backend: str = _opt(
        "auto",
        (str,),
        "library that compiles and enforces constraints (auto: xgrammar, and llguidance for "
        "what xgrammar refuses)",
        GRAMMAR_BACKENDS,
    )
    grammar_compile_memory_mb: int = _opt(
        4096, (int,), "address-space cap (MiB) of each grammar compile process"
    )
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)

    @classmethod
    def from_kwargs(cls, model_path: Any = None, **kwargs: Any) -> EngineConfig:
        """The flat keyword arguments of ``Engine`` / ``Runtime``: each goes to the level that
        declares it; an unknown one raises ``InvalidRequestError`` naming it."""
        engine_names = _names(cls) - {"scheduler"}
        sched_names = _names(SchedulerConfig)
        eng: dict[str, Any] = {"model_path": None if model_path is None else str(model_path)}
        sched: dict[str, Any] = {}
        for key, value in kwargs.items():
            if key in engine_names:
                eng[key] = value
            elif key in sched_names:
                sched[key] = value
            else:
                raise InvalidRequestError(key, "unknown engine option")
        if "dtype" in eng and not isinstance(eng["dtype"], str):  # a torch.dtype
            eng["dtype"] = str(eng["dtype"]).removeprefix("torch.")
        if eng.get("grammar_cache_dir") is not None:
            eng["grammar_cache_dir"] = str(eng["grammar_cache_dir"])
        if sched.get("chunked_prefill_size") is not None and sched["chunked_prefill_size"] <= 0:
            sched["chunked_prefill_size"] = None  # SGLang's -1
        return cls.from_dict({**eng, "scheduler": sched})

    @classmethod
    def from_dict(cls, d: Any) -> EngineConfig:
        """Builds and validates a config from plain data (the worker's start message)."""
        d = _typed_fields(cls, d, "config")
        sched = _typed_fields(SchedulerConfig, d.pop("scheduler", None) or {}, "scheduler")
        config = cls(**d, scheduler=SchedulerConfig(**sched))
        config.validate()
        return config

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "scheduler"}
        d["scheduler"] = {f.name: getattr(self.scheduler, f.name) for f in fields(SchedulerConfig)}
        return d

    def validate(self) -> None:
        _choice(self, "dtype", DTYPES)
        _choice(self, "attention_backend", ATTENTION_BACKENDS)
        _choice(self, "load_format", LOAD_FORMATS)
        _choice(self, "float32_matmul", FLOAT32_MATMULS)
        _choice(self, "decode_kernel", DECODE_KERNELS)
        if self.quantization is not None:
            _choice(self, "quantization", QUANTIZATIONS)
        if self.cache_isolation is not None:
            _choice(self, "cache_isolation", CACHE_ISOLATIONS)
        for name in ("max_total_tokens", "context_length", "num_threads"):
            if getattr(self, name) is not None:
                _at_least(self, name, 1)
        if not 0 < self.mem_fraction_static <= 1:
            raise InvalidRequestError(
                "mem_fraction_static", f"must be in (0, 1], got {self.mem_fraction_static}"
            )
        _choice(self, "grammar_backend", GRAMMAR_BACKENDS)
        _at_least(self, "grammar_compile_memory_mb", 64)
        if self.grammar_compile_timeout <= 0:
            raise InvalidRequestError("grammar_compile_timeout", "must be > 0")
        self.scheduler.validate()


@dataclass(slots=True)
class ServerArgs:
    """``plait serve``: where to listen, who may call, and the engine behind it."""

    host: str = _opt("127.0.0.1", (str,), "address to bind")
    port: int = _opt(30000, (int,), "port to bind")
    api_key: str | None = _opt(
        None,
        (str, _NONE),
        "required as 'Authorization: Bearer KEY' (tenant 'default')",
        secret=True,
    )
    api_key_file: str | None = _opt(
        None,
        (str, _NONE),
        "API keys, one tenant each: a JSON object {name: key} or lines 'name: key'",
    )
    in_process: bool = _opt(False, (bool,), "run the engine on a thread of the server")
    served_model_name: str | None = _opt(None, (str, _NONE), "the model name clients use")
    log_level: str = _opt("warning", (str,), "uvicorn log level")
    max_request_bytes: int = _opt(
        8 * 1024 * 1024, (int,), "largest request body accepted (413 past it, before reading it)"
    )
    max_sequences_per_request: int = _opt(
        64, (int,), "prompts x n one request may run (400 past it)"
    )
    max_concurrent_sequences: int = _opt(
        1024, (int,), "sequences in flight on the server (429 with Retry-After past it)"
    )
    max_queued_tokens: int = _opt(
        1_000_000, (int,), "prompt tokens in flight on the server (429 with Retry-After past it)"
    )
    request_timeout: float | None = _opt(
        600.0, (float, int, _NONE), "seconds a request may run before it is aborted (504)"
    )
    shutdown_timeout: float = _opt(
        3.0, (float, int), "seconds open requests get after SIGTERM / SIGINT before they are cut"
    )
    engine: EngineConfig = field(default_factory=EngineConfig)

    def validate(self) -> None:
        for name in ("max_request_bytes", "max_sequences_per_request",
                     "max_concurrent_sequences", "max_queued_tokens"):  # fmt: skip
            _at_least(self, name, 1)
        if self.request_timeout is not None and self.request_timeout <= 0:
            raise InvalidRequestError("request_timeout", "must be > 0")
        if self.shutdown_timeout < 0:
            raise InvalidRequestError("shutdown_timeout", "must be >= 0")

    @classmethod
    def parser(cls) -> argparse.ArgumentParser:
        p = argparse.ArgumentParser(prog="plait serve", description="Serve a model over HTTP.")
        for f in fields(cls):
            if f.name != "engine":
                _add_flag(p, f)
        for f in fields(EngineConfig):
            if f.name == "model_path":
                p.add_argument("--model", "--model-path", dest="model_path", default=None,
                               help=f.metadata["help"])  # fmt: skip
            elif f.name != "scheduler":
                _add_flag(p, f)
        for f in fields(SchedulerConfig):
            _add_flag(p, f)
        return p

    @classmethod
    def from_cli(cls, argv: list[str] | None = None) -> ServerArgs:
        ns = vars(cls.parser().parse_args(argv))
        given = {k: v for k, v in ns.items() if v is not None}
        server = {f.name: given.pop(f.name) for f in fields(cls) if f.name in given}
        args = cls(**server, engine=EngineConfig.from_kwargs(**given))
        args.validate()
        return args


# ---- helpers ----------------------------------------------------------------------------------


def _names(cls: type) -> set[str]:
    return {f.name for f in fields(cls)}


def _typed_fields(cls: type, d: Any, where: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise InvalidRequestError(where, f"must be an object, got {type(d).__name__}")
    known = {f.name: f for f in fields(cls)}
    out: dict[str, Any] = {}
    for key, value in d.items():
        f = known.get(key)
        if f is None:
            raise InvalidRequestError(key, f"unknown {where} field")
        types = f.metadata.get("types")
        if types is not None:
            ok = isinstance(value, types) and (bool in types or not isinstance(value, bool))
            if not ok:
                want = " or ".join("null" if t is _NONE else t.__name__ for t in types)
                raise InvalidRequestError(key, f"must be {want}, got {type(value).__name__}")
        out[key] = value
    return out


def _choice(obj: Any, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(obj, name)
    if value not in choices:
        raise InvalidRequestError(name, f"must be one of {list(choices)}, got {value!r}")


def _at_least(obj: Any, name: str, lo: int) -> None:
    value = getattr(obj, name)
    if value < lo:
        raise InvalidRequestError(name, f"must be >= {lo}, got {value}")


def _add_flag(p: argparse.ArgumentParser, f: Any) -> None:
    meta = f.metadata
    flag = "--" + f.name.replace("_", "-")
    default = f.default if f.default is not MISSING else None
    if meta["types"] == (bool,):
        if default is True and f.name.startswith("enable_"):
            neg = "--disable-" + f.name.removeprefix("enable_").replace("_", "-")
            p.add_argument(neg, dest=f.name, action="store_false", default=None,
                           help=f"turn off: {meta['help']}")  # fmt: skip
        else:
            p.add_argument(flag, dest=f.name, action="store_true", default=None, help=meta["help"])
        return
    kind = next(t for t in meta["types"] if t is not _NONE)
    kind = float if kind is float else kind
    p.add_argument(
        flag, dest=f.name, type=kind, default=None, choices=meta["choices"], help=meta["help"]
    )
