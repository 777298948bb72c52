"""A CPU decode step (or a short prefill) of a Llama-family model in one C call
(``kernels/cpu_decode.c``).

A decode step of a small model in torch is ~1,500 small ops around its products, each with a
dispatch and a thread-pool wake-up: at one token per step that overhead is a third of the step
(bench/RESULTS.md, issue 15). ``FusedDecode`` lays the model's weights, the KV pool's buffers
and the RoPE tables out as address tables once, and each decode forward is then one C call.

Invariants:
- Used only for forwards of at most ``max_rows`` tokens (decode steps, short prefills),
  on the CPU, for weights in float32 or bfloat16 held ``[out, in]`` (``ModelRunner`` re-lays
  float32 weights out before building it) or quantized (``Int8Linear``, ``Int4Linear``: their
  codes, with float32 scales per 32-element block; repacked where the library has the packed
  kernels, by AVX512_VNNI or AVX2, ``cpu_decode.pack_i8_vnni`` / ``pack_i4_vnni``, int4's
  scales and lows then in float16 where every one is a float16 value), and a float32 or
  bfloat16 KV pool;
  ``unsupported`` names what rules a model out.
- The address tables are rebuilt when the storage of any weight or buffer they point at was
  replaced (``param.data = ...``, checked at every call), so a reloaded weight is never read
  stale. A parameter replaced by a new object (``module.weight = Parameter(...)``) is not
  seen by that check (walking the modules each step cost 0.7 ms): call ``refresh()``. A
  process whose model no code outside plait reaches (the worker, ``EngineCore.own_process``),
  or an in-process engine while no caller code runs between its steps (``EngineCore.owned``,
  which checks once on entry), turns the per-call check off (``check_addresses``; ~0.3 ms a
  step, the caches cold after the step before): nothing replaces a storage there, and plait
  code that ever does must call ``refresh()`` before the next forward.
- Logits are float32 ``[M, vocab]``; outputs are the same bits at any thread count and for a
  request whatever else is in its batch (every product sums in one fixed order).
- ``forward(..., argmax_only=True)`` (the caller takes each row's argmax of the raw logits and
  nothing else) reads the head through its int8 screen where it has one (``head_screen``;
  a batch of 8 rows or more whose bfloat16 head runs by AMX reads it whole, ``AMX_HEAD_ROWS``):
  each row's logits are then exact where its maximum can be and -inf elsewhere, so the argmax
  is the full head's. A row with more than ``screen_max`` candidates gets the full head's
  logits (the screen was read for nothing); where more than half of the first
  ``SCREEN_TRIAL_ROWS`` screened rows did, ``head_screen`` turns itself off for good
  (``screen_counts`` counts both).
"""

from __future__ import annotations

import ctypes
import logging

import torch

from plait.kernels import cpu_decode
from plait.radix_cache.memory_pool import TokenToKVPool
from plait.runtime.model import head_screen, huge_pages
from plait.runtime.model.forward_batch import ForwardBatch, ForwardMode
from plait.runtime.model.models.linear import Linear
from plait.runtime.model.models.llama import LlamaForCausalLM
from plait.runtime.model.models.quant_linear import Int4Linear, Int8Linear
from plait.runtime.model.product_weights import DTYPES, ProductWeights, product_weights

# Above this many tokens a forward goes through torch. The C products are register-tiled
# (4 weight rows x 4 activation rows, or 16 rows a vector for the packed formats), so they match
# or beat torch's GEMMs up to decode batches of 64; the int4 kernel unpacked (DT_I4)
# unpacks one row at a time and loses to torch's dense copy past 8 (measured with bench_threads
# at 8 and 32 requests: bench/RESULTS.md, issue 15). A model's limit is its slowest format's.
MAX_ROWS = 64
MAX_ROWS_BY_FORMAT = {cpu_decode.DT_I4: 8}

logger = logging.getLogger(__name__)

_DATA_PTR = torch.Tensor.data_ptr

# The screen's candidates a row keeps at most (SmolLM2-135M's rows kept at most 26 of 49,152),
# and the screened rows after which a model whose rows mostly passed that stops screening.
SCREEN_MAX = 512
SCREEN_TRIAL_ROWS = 256

# The entries of the step's cfg[] (the model's shape), named and ordered as kernels/
# cpu_decode.c's CFG_* enum (a test reads that enum against this).
CFG = (
    "LAYERS",
    "HIDDEN",
    "HEADS",
    "KV_HEADS",
    "HEAD_DIM",
    "INTER",
    "VOCAB",
    "TABLE_DTYPE",
    "KVDTYPE",
    "SCREEN_MAX",
)
_SCREEN_MAX_AT = CFG.index("SCREEN_MAX")


def unsupported(model: torch.nn.Module, kv_pool: TokenToKVPool, device: torch.device) -> str | None:
    """Why the fused step cannot run this model, or None if it can."""
    if device.type != "cpu":
        return f"the fused decode step runs on the CPU, not {device.type}"
    if not isinstance(model, LlamaForCausalLM):
        return f"the fused decode step runs the Llama family, not {type(model).__name__}"
    cfg = model.config
    if cfg.head_dim % 16 or cfg.head_dim > 256:
        return f"head_dim {cfg.head_dim} is not a multiple of 16 up to 256"
    for name, m in model.named_modules():
        if "proj" in name.rsplit(".", 1)[-1] or name == "lm_head":
            if isinstance(m, (Int8Linear, Int4Linear)):
                continue
            if not isinstance(m, Linear):
                return f"{name} is a {type(m).__name__}"
            if m.weight.dtype not in DTYPES:
                return f"{name} holds {m.weight.dtype}, not float32 or bfloat16"
    tables = model.model.embed_tokens.weight.dtype
    if tables not in DTYPES or model.model.rotary.cos.dtype != tables:
        return f"embedding and RoPE tables in {tables} / {model.model.rotary.cos.dtype}"
    if kv_pool.dtype not in DTYPES:
        return f"a {kv_pool.dtype} KV pool (float32 or bfloat16 only)"
    if cpu_decode.library() is None:
        return cpu_decode.build_error()
    return None


def _int64(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a contiguous int64 tensor: ``t`` itself when it is one, as the scheduler's
    batch tensors are (the test costs a tenth of a ``.to()`` that returns ``t``)."""
    if t.dtype is torch.int64 and t.is_contiguous():
        return t
    return t.to(torch.int64).contiguous()


def layer_products(layer: torch.nn.Module) -> tuple[torch.nn.Module, ...]:
    """A decoder layer's products in the order its table row lists them: qkv, o, gate_up,
    down."""
    a, p = layer.self_attn, layer.mlp
    return (a.qkv_proj, a.o_proj, p.gate_up_proj, p.down_proj)


def _repacked_on_huge_pages(prods: list[ProductWeights]) -> None:
    """Moves the tensors the products made (repacked int8 / int4, not the layers' own, which
    the runner placed) onto huge pages, all in one mapping (``huge_pages``)."""
    if not huge_pages.available():
        return
    owned = {id(t) for p in prods for t in p.sources}
    made = [
        (p, i)
        for p in prods
        for i, t in enumerate(p.tensors)
        if t is not None and id(t) not in owned
    ]
    if not made:
        return
    moved = huge_pages.place([p.tensors[i] for p, i in made])
    for (p, i), t in zip(made, moved):
        p.tensors = (*p.tensors[:i], t, *p.tensors[i + 1 :])


class FusedDecode:
    """``forward(batch, threads, sample_index)`` -> float32 logits of the sampled tokens."""

    def __init__(
        self, model: LlamaForCausalLM, kv_pool: TokenToKVPool, head_screen: bool = True
    ) -> None:
        """``head_screen``: build the head's int8 screen (``head_screen.build``), for
        ``argmax_only`` forwards while the attribute stays True."""
        lib = cpu_decode.library()
        assert lib is not None and unsupported(model, kv_pool, torch.device("cpu")) is None
        self.lib = lib
        self.model = model
        self.kv_pool = kv_pool
        cfg = model.config
        self.eps, self.scale = float(cfg.rms_norm_eps), cfg.head_dim**-0.5
        self.vocab = cfg.vocab_size
        tables = model.model.embed_tokens.weight.dtype
        shape = {
            "LAYERS": cfg.num_layers,
            "HIDDEN": cfg.hidden_size,
            "HEADS": cfg.num_heads,
            "KV_HEADS": cfg.num_kv_heads,
            "HEAD_DIM": cfg.head_dim,
            "INTER": cfg.intermediate_size,
            "VOCAB": cfg.vocab_size,
            "TABLE_DTYPE": DTYPES[tables],
            "KVDTYPE": DTYPES[kv_pool.dtype],
            "SCREEN_MAX": SCREEN_MAX,
        }
        assert tuple(shape) == CFG, f"cfg[] entries {tuple(shape)} are not CFG's {CFG}"
        self._cfg = torch.tensor(list(shape.values()), dtype=torch.int64)
        # the screen's rows screened, and of them rows that took the full head (added to by
        # each step; a new screen, ``_build``'s, starts them and its trial again)
        self.screen_counts = torch.zeros(2, dtype=torch.int64)
        self._sources: list[torch.Tensor] = []  # held: a freed address is never reused
        self.check_addresses = True  # False only where nothing replaces a storage unseen
        self.half_scales = True  # packed int4: float16 scales where exact (refresh() after)
        self.head_screen = head_screen
        self.screen: head_screen.HeadScreen | None = None
        # argmax_only forwards' logits and argmax: one store, grown to the most rows seen
        # (at most ``max_rows``), and its views by rows (reused: see ``forward``)
        self._argmax_store: tuple[torch.Tensor, torch.Tensor] | None = None
        self._argmax_views: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._build()

    @property
    def lib(self) -> ctypes.CDLL:
        """The build of the C step this runs; setting another rebuilds the tables where they
        were laid out for a build with other formats (AMX tiles: ``DT_BF16T``)."""
        return self._lib

    @lib.setter
    def lib(self, lib: ctypes.CDLL) -> None:
        rebuild = hasattr(self, "_layers") and bool(lib.plait_amx_granted()) != bool(
            self._lib.plait_amx_granted()
        )
        self._lib = lib
        if rebuild:
            self._build()

    @property
    def screen_max(self) -> int:
        """The most candidates a row keeps through the screen; a row with more gets the full
        head's logits."""
        return int(self._cfg[_SCREEN_MAX_AT])

    @screen_max.setter
    def screen_max(self, n: int) -> None:
        if n < 1:
            raise ValueError(f"screen_max must be at least 1, got {n}")
        self._cfg[_SCREEN_MAX_AT] = n

    def _end_screen_trial(self) -> None:
        """After the first ``SCREEN_TRIAL_ROWS`` screened rows: a model whose rows mostly kept
        more than ``screen_max`` candidates reads the screen and then the head on every step,
        so the screen turns off."""
        screened, full = self.screen_counts.tolist()
        if screened < SCREEN_TRIAL_ROWS:
            return
        self._screen_trial = False
        if 2 * full > screened:
            self.head_screen = False
            logger.warning(
                "the head's int8 screen is off: %d of the first %d screened rows kept more "
                "than %d candidates",
                full,
                screened,
                self.screen_max,
            )

    def refresh(self) -> None:
        """Re-reads every address from the model and the pool (after replacing parameters)."""
        self._build()

    def check(self) -> None:
        """Rebuilds the tables if the storage of a weight or buffer they point at was replaced
        (~1 us a tensor with the caches cold after a step; a list comprehension took a quarter
        longer than this map)."""
        if list(map(_DATA_PTR, self._sources)) != self._addresses:
            self._build()

    def _build(self) -> None:
        """Lays every address out in the tables, and holds each tensor it took one from
        (``_sources``; a float32 copy's source, not the copy) for the per-call check."""
        for lin in self.model.modules():
            if isinstance(lin, Linear) and lin.transposed:
                raise ValueError("the fused decode step needs [out, in] weights")
        m = self.model.model
        self._copies: list[torch.Tensor] = []
        self._sources = []
        self.max_rows = MAX_ROWS  # lowered by the formats read below

        def ptr(t: torch.Tensor) -> int:
            self._sources.append(t)
            return t.data_ptr()

        def f32_copy(t: torch.Tensor | None) -> int:
            if t is None:
                return 0
            self._sources.append(t)
            c = t.detach().float().contiguous()
            self._copies.append(c)
            return c.data_ptr()

        linears = [self.model.lm_head] + [
            lin for layer in m.layers for lin in layer_products(layer)
        ]
        packed, amx = bool(self.lib.plait_packed_dot()), bool(self.lib.plait_amx_granted())
        prods = {id(lin): product_weights(lin, packed, self.half_scales, amx) for lin in linears}
        self.screen = head_screen.build(self.model.lm_head, packed) if self.head_screen else None
        self.screen_counts.zero_()
        self._screen_trial = True  # until SCREEN_TRIAL_ROWS rows decide
        screen = [] if self.screen is None else [self.screen.weights]
        _repacked_on_huge_pages(list(prods.values()) + screen)

        def entries(p: ProductWeights) -> list[int]:
            """The 4 table entries of a product: weight, format, scales, lows (MAT_*)."""
            self.max_rows = min(self.max_rows, MAX_ROWS_BY_FORMAT.get(p.dtype, MAX_ROWS))
            self._sources += p.sources
            self._copies += [t for t in p.tensors if t is not None]  # held: the tables point there
            weight, scales, lows = (0 if t is None else t.data_ptr() for t in p.tensors)
            return [weight, p.dtype, scales, lows]

        def matrix(lin: torch.nn.Module) -> list[int]:
            return entries(prods[id(lin)])

        screen_entries = [0] * 6  # P_SCREEN's matrix, its bounds (none: a 0 weight)
        if self.screen is not None:
            self._copies += [self.screen.err, self.screen.l1]  # held: the tables point there
            bounds = [self.screen.err.data_ptr(), self.screen.l1.data_ptr()]
            screen_entries = entries(self.screen.weights) + bounds
        self._globals = torch.tensor(
            [
                ptr(m.embed_tokens.weight),
                f32_copy(m.norm.weight),
                ptr(m.rotary.cos),
                ptr(m.rotary.sin),
                *matrix(self.model.lm_head),
                *screen_entries,
            ],
            dtype=torch.int64,
        )
        rows = []
        for i, layer in enumerate(m.layers):
            rows.append(
                [
                    f32_copy(layer.input_layernorm.weight),
                    f32_copy(getattr(layer.self_attn.qkv_proj, "bias", None)),
                    f32_copy(layer.post_attention_layernorm.weight),
                    ptr(self.kv_pool.k_buffer[i]),
                    ptr(self.kv_pool.v_buffer[i]),
                    *(entry for lin in layer_products(layer) for entry in matrix(lin)),
                ]
            )
        self._layers = torch.tensor(rows, dtype=torch.int64)
        self._addresses = [t.data_ptr() for t in self._sources]

    def forward(
        self,
        batch: ForwardBatch,
        threads: int,
        sample_index: torch.Tensor | None = None,
        argmax_only: bool = False,
    ) -> torch.Tensor:
        """Logits ``[R, vocab]`` of the flat tokens ``sample_index`` (default: every token),
        for a decode batch or a short prefill: each token attends to its request's slots up
        to its own position (``positions + 1``), so an extend is causal. ``argmax_only``: only
        each row's argmax is read (see the class's invariants); the logits are then a buffer
        of the step's, rewritten by the next such forward of as many rows."""
        return self._run(batch, threads, sample_index, argmax_only)[0]

    def forward_argmax(
        self, batch: ForwardBatch, threads: int, sample_index: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward(..., argmax_only=True)``'s logits and each row's argmax (int64 ``[R]``,
        ``sampler.argmax_rows``'s, taken by the step in C), both rewritten by the next
        ``argmax_only`` forward of as many rows."""
        logits, ids = self._run(batch, threads, sample_index, True)
        assert ids is not None
        return logits, ids

    def _run(
        self,
        batch: ForwardBatch,
        threads: int,
        sample_index: torch.Tensor | None,
        argmax_only: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.check_addresses:
            self.check()
        n = batch.num_tokens
        table = batch.req_to_token
        ids, pos, loc = (
            _int64(batch.input_ids),
            _int64(batch.positions),
            _int64(batch.out_cache_loc),
        )
        if batch.mode == ForwardMode.DECODE:
            rows, seq = batch.req_pool_indices, batch.seq_lens
        else:  # per token: its request's row, and the keys up to its own position
            ext = torch.tensor(batch.extend_lens_cpu, device=batch.req_pool_indices.device)
            rows, seq = batch.req_pool_indices.repeat_interleave(ext), pos + 1
        rows, seq = _int64(rows), _int64(seq)
        sample = _int64(torch.arange(n) if sample_index is None else sample_index)
        rows_out = sample.numel()
        ids_out = None
        if argmax_only:
            logits, ids_out = self._argmax_views.get(rows_out) or self._argmax_view(rows_out)
        else:
            logits = torch.empty(rows_out, self.vocab, dtype=torch.float32)
        assert table.is_contiguous() and table.dtype == torch.int64
        screened = argmax_only and self.head_screen
        rc = self.lib.plait_decode_step(
            self._cfg.data_ptr(),
            self._globals.data_ptr(),
            self._layers.data_ptr(),
            ctypes.c_double(self.eps),
            ctypes.c_double(self.scale),
            n,
            ids.data_ptr(),
            pos.data_ptr(),
            loc.data_ptr(),
            rows.data_ptr(),
            seq.data_ptr(),
            table.data_ptr(),
            table.stride(0),
            sample.data_ptr(),
            sample.numel(),
            logits.data_ptr(),
            threads,
            int(screened),
            self.screen_counts.data_ptr(),
            None if ids_out is None else ids_out.data_ptr(),
        )
        if rc != 0:
            raise MemoryError(f"the fused decode step failed (code {rc}): out of memory or threads")
        if screened and self._screen_trial and self.screen is not None:
            self._end_screen_trial()
        return logits, ids_out

    @property
    def _argmax_rows(self) -> int:
        """The rows the argmax store holds (0 before the first ``argmax_only`` forward)."""
        return 0 if self._argmax_store is None else len(self._argmax_store[1])

    def _argmax_view(self, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``[rows, vocab]`` and ids ``[rows]`` on the argmax store, grown (and its
        views dropped) where it holds fewer rows."""
        held = self._argmax_rows
        if self._argmax_store is None or rows > held:
            grown = max(rows, 2 * held)
            self._argmax_store = (
                torch.empty(grown, self.vocab, dtype=torch.float32),
                torch.empty(grown, dtype=torch.int64),
            )
            self._argmax_views.clear()
        logits, ids = self._argmax_store
        view = self._argmax_views[rows] = (logits[:rows], ids[:rows])
        return view
