"""The head's int8 screen (``head_screen``, ``screened_head`` in kernels/cpu_decode.c): a greedy
step's logits are the full head's bits wherever they are finite, its argmax is the full head's
(the first of tied maxima), and only batches that take nothing but that argmax use it."""

from __future__ import annotations

import pytest
import torch

from plait.kernels import cpu_decode
from plait.runtime.engine import Engine
from plait.runtime.model import head_screen
from plait.runtime.model.fused_decode import SCREEN_TRIAL_ROWS
from plait.runtime.model.models.linear import Linear
from plait.runtime.model.models.quant_linear import Int8Linear
from plait.runtime.worker.sampler import argmax_rows
from tests.runtime.model.test_fused_decode import _State

lib = cpu_decode.library()
pytestmark = pytest.mark.skipif(
    lib is None or not lib.plait_packed_dot(),
    reason="the screen needs the packed int8 kernels (AVX512_VNNI or AVX2)",
)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    from tests.conftest import make_tiny_model

    root = tmp_path_factory.mktemp("screen")
    return {k: make_tiny_model(k, root / k) for k in ("llama", "llama-tied", "llama-hd64")}


def _both(state: _State, which: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    batch = state.decode_batch(which, [7 + i for i in which])
    fused = state.runner.fused
    return fused.forward(batch, 2), fused.forward(batch, 2, argmax_only=True)


def _assert_same_argmax_and_bits(full: torch.Tensor, screened: torch.Tensor) -> None:
    finite = torch.isfinite(screened)
    assert torch.equal(screened[finite], full[finite])
    assert torch.equal(screened.argmax(-1), full.argmax(-1))
    assert bool(torch.isneginf(screened[~finite]).all())


@pytest.mark.parametrize("kind", ["llama", "llama-tied", "llama-hd64"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("rows", [1, 2, 4, 8])
def test_screened_rows_are_the_full_heads_bits_where_finite(dirs, kind, dtype, rows):
    state = _State(dirs[kind], dtype, [5, 17, 1, 40, 3, 9, 22, 11])
    assert state.runner.fused.screen is not None
    full, screened = _both(state, list(range(rows)))
    _assert_same_argmax_and_bits(full, screened)
    if _reads_whole(dtype, rows):  # an AMX host's bfloat16 batch: the whole head
        assert bool(torch.isfinite(screened).all())
        return
    # the screen narrowed every row (a random head's top logit stands out)
    assert (torch.isfinite(screened).sum(-1) < state.cfg.vocab_size // 4).all()


def _reads_whole(dtype: str, rows: int) -> bool:
    """Whether an argmax step of ``rows`` reads the whole head, not its screen: a bfloat16
    head by AMX from ``plait_amx_head_rows()`` rows."""
    amx_rows = lib.plait_amx_head_rows()
    return dtype == "bfloat16" and amx_rows > 0 and rows >= amx_rows


def _with_head_rows(state: _State, edit) -> None:
    head = state.runner.model.lm_head.weight
    with torch.no_grad():
        edit(head)
    state.runner.fused.refresh()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_tied_maxima_keep_the_first(dirs, dtype):
    """Exact copies of the winning row before and after it: every copy is a candidate and the
    first one is the argmax, as the full head's."""
    state = _State(dirs["llama"], dtype, [5, 17])
    full, _ = _both(state, [0, 1])
    wins = full.argmax(-1).tolist()
    lo, hi = min(wins), max(wins)
    assert lo > 0 and hi + 1 < state.cfg.vocab_size

    def copy(head):
        head[lo - 1] = head[wins[0]]
        head[hi + 1] = head[wins[0]]

    _with_head_rows(state, copy)
    full, screened = _both(state, [0, 1])
    _assert_same_argmax_and_bits(full, screened)
    assert torch.isfinite(screened[0, [lo - 1, wins[0], hi + 1]]).all()
    assert int(screened[0].argmax()) == lo - 1 == int(full[0].argmax())


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("rows", [1, 3])
def test_the_steps_argmax_is_the_samplers_on_the_full_head(dirs, dtype, rows):
    """``forward_argmax``: its logits are ``forward(argmax_only=True)``'s, its ids the sampler's
    argmax of the full head's logits, a tie before the winner included."""
    state = _State(dirs["llama"], dtype, [5, 17, 1])
    full, _ = _both(state, list(range(rows)))
    win = int(full[0].argmax())
    assert win > 0

    def tie(head):
        head[win - 1] = head[win]

    _with_head_rows(state, tie)
    batch = state.decode_batch(list(range(rows)), [7 + i for i in range(rows)])
    fused = state.runner.fused
    full = fused.forward(batch, 2)
    logits, ids = (t.clone() for t in fused.forward_argmax(batch, 2))  # the step's buffers
    assert ids.tolist() == argmax_rows(full).tolist() == argmax_rows(logits).tolist()
    assert ids[0] == win - 1
    assert torch.equal(logits, fused.forward(batch, 2, argmax_only=True))


def test_argmax_forwards_of_any_rows_share_one_store(dirs):
    """A server's decode batches take every size up to ``max_rows``: their logits buffers are
    views of one store (grown by doubling), not one buffer per size."""
    state = _State(dirs["llama"], "float32", [5, 17, 1, 40, 3])
    fused = state.runner.fused
    storages = set()
    for rows in (1, 3, 2, 5, 4, 1):
        which = list(range(rows))
        batch = state.decode_batch(which, [7 + i for i in which])
        full = fused.forward(batch, 2)
        logits, ids = fused.forward_argmax(batch, 2)
        assert ids.tolist() == argmax_rows(full).tolist()
        storages.add(logits.untyped_storage().data_ptr())
    assert len(storages) <= 3  # grown at 1, 3 and 6 rows
    assert fused._argmax_rows == 6


def test_a_near_tie_is_decided_by_the_exact_logits(dirs):
    """A copy of the winning row one float32 step larger in one weight: the screen cannot tell
    them apart, the head's exact logits can."""
    state = _State(dirs["llama"], "float32", [5])
    full, _ = _both(state, [0])
    win = int(full[0].argmax())
    other = (win + 7) % state.cfg.vocab_size

    def nudge(head):
        head[other] = head[win]
        i = int(head[win].abs().argmax())
        head[other, i] = torch.nextafter(head[win, i], head[win, i] * 2)

    _with_head_rows(state, nudge)
    full, screened = _both(state, [0])
    _assert_same_argmax_and_bits(full, screened)
    assert torch.isfinite(screened[0, [win, other]]).all()


def test_non_finite_activations_take_the_full_head(dirs):
    state = _State(dirs["llama"], "float32", [5, 17])
    with torch.no_grad():
        state.runner.model.model.norm.weight[3] = float("nan")
    state.runner.fused.refresh()
    full, screened = _both(state, [0, 1])
    torch.testing.assert_close(screened, full, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(screened.argmax(-1), full.argmax(-1))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_rows_past_screen_max_get_the_full_heads_logits(dirs, dtype):
    """With one candidate allowed, every row that kept more gets the whole head's logits (one
    product over those rows: the bits each row gets alone), the others stay screened."""
    state = _State(dirs["llama"], dtype, [5, 17, 1, 40, 3, 9, 22, 11])
    fused = state.runner.fused
    fused.screen_max = 1
    n = 8 if not _reads_whole(dtype, 8) else lib.plait_amx_head_rows() - 1  # still screened
    full, screened = _both(state, list(range(n)))
    whole = torch.isfinite(screened).all(-1)
    kept = torch.isfinite(screened).sum(-1)
    assert whole.any() and not whole.all()  # (this model's rows keep 1-3 candidates)
    assert torch.equal(screened[whole], full[whole])
    _assert_same_argmax_and_bits(full[~whole], screened[~whole])
    assert (kept[~whole] == 1).all()
    assert fused.screen_counts.tolist() == [n, int(whole.sum())]
    with pytest.raises(ValueError, match="screen_max must be at least 1"):
        fused.screen_max = 0


def _identical_head_rows(state: _State) -> None:
    _with_head_rows(state, lambda head: head.copy_(head[7].expand_as(head)))


def test_a_batch_whose_every_row_overflows_is_the_full_head(dirs):
    state = _State(dirs["llama"], "float32", [5, 17, 1, 40])
    _identical_head_rows(state)  # every vocab row ties: all are candidates
    state.runner.fused.screen_max = 64
    full, screened = _both(state, [0, 1, 2, 3])
    assert torch.equal(screened, full)
    assert state.runner.fused.screen_counts.tolist() == [4, 4]


def test_a_screen_that_rows_mostly_pass_turns_itself_off(dirs):
    state = _State(dirs["llama"], "float32", [5, 17, 1, 40, 3, 9, 22, 11])
    fused = state.runner.fused
    _identical_head_rows(state)
    fused.screen_max = 64
    rows = list(range(8))
    for step in range(SCREEN_TRIAL_ROWS // 8):
        assert fused.head_screen, step
        full, screened = _both(state, rows)
        assert torch.equal(screened, full)
    assert not fused.head_screen
    assert fused.screen_counts.tolist() == [SCREEN_TRIAL_ROWS, SCREEN_TRIAL_ROWS]
    _both(state, rows)  # no longer screened: nothing counted
    assert fused.screen_counts.tolist() == [SCREEN_TRIAL_ROWS, SCREEN_TRIAL_ROWS]


def test_a_screen_that_narrows_its_rows_stays_on(dirs):
    state = _State(dirs["llama"], "float32", [5, 17, 1, 40, 3, 9, 22, 11])
    fused = state.runner.fused
    fused.screen_max = 8  # under the vocab (320), so a row could overflow; these keep 1-3
    for _ in range(SCREEN_TRIAL_ROWS // 8 + 2):
        _both(state, list(range(8)))
    assert fused.head_screen
    assert fused.screen_counts.tolist() == [SCREEN_TRIAL_ROWS + 16, 0]


def test_a_rebuilt_screen_starts_its_counts_and_trial_again(dirs):
    state = _State(dirs["llama"], "float32", [5, 17])
    fused = state.runner.fused
    _both(state, [0, 1])
    assert fused.screen_counts.tolist() == [2, 0]
    fused.refresh()  # new weights get a new screen, judged afresh
    assert fused.screen_counts.tolist() == [0, 0] and fused._screen_trial


def test_the_bounds_hold_the_screens_error():
    torch.manual_seed(0)
    head = Linear(64, 48, bias=False)
    head.set_layout(False)
    head.weight.data = torch.randn(48, 64) * 0.3
    screen = head_screen.build(head, packed=True)
    assert screen is not None
    w = head.weight.double()
    q8 = Int8Linear.from_float(head.weight)
    approx = q8.dequantized().double()
    assert (screen.err.double() >= (w - approx).abs().amax(1)).all()
    assert (screen.l1.double() >= w.abs().sum(1)).all()
    assert (screen.l1.double() >= approx.abs().sum(1)).all()


def test_heads_without_a_screen():
    def linear(out: int, inp: int, dtype=torch.float32) -> Linear:
        lin = Linear(inp, out, bias=False, dtype=dtype)
        lin.set_layout(False)
        return lin

    assert head_screen.build(linear(48, 64), packed=False) is None  # no packed kernels
    assert head_screen.build(linear(40, 64), packed=True) is None  # vocab not in sixteens
    assert head_screen.build(linear(48, 40), packed=True) is None  # hidden not in 32s
    bad = linear(48, 64)
    bad.weight.data[3, 5] = float("inf")
    assert head_screen.build(bad, packed=True) is None
    assert head_screen.build(Int8Linear.from_float(torch.randn(48, 64)), packed=True) is None


class _Spy:
    """Records ``argmax_only`` of each runner forward."""

    def __init__(self, engine: Engine) -> None:
        self.runner = engine.core.runner
        self.forward = self.runner.forward
        self.seen: list[bool] = []
        self.runner.forward = self

    def __call__(self, *args, argmax_only: bool = False, **kw):
        self.seen.append(argmax_only)
        return self.forward(*args, argmax_only=argmax_only, **kw)


PROMPTS = [[5, 9, 33, 12, 7], [100, 3, 250, 17, 18, 19, 40, 41]]
CASES = {
    "greedy": ({}, True),
    "logprobs": ({"return_logprob": True, "top_logprobs_num": 3}, False),
    "logit_bias": ({"sampling": {"logit_bias": {"11": 5.0}}}, False),
    "min_new_tokens": ({"sampling": {"min_new_tokens": 12}}, None),  # screened once unbanned
    "repetition_penalty": ({"sampling": {"repetition_penalty": 1.3}}, False),
    "sampled": ({"sampling": {"temperature": 0.8, "seed": 3}}, False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_only_batches_that_take_the_raw_argmax_are_screened(tiny_model_dir, case):
    extra, screened = CASES[case]
    params = {"max_new_tokens": 16, "temperature": 0, **extra.get("sampling", {})}
    kw = {k: v for k, v in extra.items() if k != "sampling"}
    outs = {}
    for disable in (False, True):
        engine = Engine(tiny_model_dir("llama"), max_total_tokens=2048, disable_head_screen=disable)
        spy = _Spy(engine)
        outs[disable] = engine.generate(input_ids=PROMPTS, sampling_params=params, **kw)
        decodes = spy.seen[1:]  # the first forward is the prefill
        if screened is None:  # the first 11 decodes carry the stop-token bans, then none do
            assert decodes[:11] == [False] * 11 and decodes[11:] == [True] * 4, spy.seen
        else:
            assert decodes and all(s == screened for s in decodes), spy.seen
        assert (engine.core.runner.fused.screen is None) == disable
    on, off = outs[False], outs[True]
    assert [o["output_ids"] for o in on] == [o["output_ids"] for o in off]
    if "return_logprob" in kw:
        assert [o["meta_info"]["output_token_logprobs"] for o in on] == [
            o["meta_info"]["output_token_logprobs"] for o in off
        ]


def test_a_grammar_batch_is_not_screened(tiny_lm_dir):
    engine = Engine(tiny_lm_dir, max_total_tokens=2048)
    spy = _Spy(engine)
    out = engine.generate("hello", {"max_new_tokens": 8, "temperature": 0, "regex": "[ab]{2,6}"})
    assert set(out["text"]) <= {"a", "b"}
    assert spy.seen and not any(spy.seen)


@pytest.mark.skipif(lib is None or not lib.plait_amx(-1), reason="no AMX on this CPU")
@pytest.mark.parametrize("extra", [-1, 0, 4])
def test_an_amx_batch_of_amx_head_rows_or_more_reads_the_whole_head(dirs, extra):
    """A bfloat16 head by AMX: from ``plait_amx_head_rows()`` rows the argmax forward's
    logits are the full head's, every one; below, screened. The argmax is the same."""
    rows = lib.plait_amx_head_rows() + extra
    state = _State(dirs["llama"], "bfloat16", [5 + i % 7 for i in range(rows)])
    full, screened = _both(state, list(range(rows)))
    _assert_same_argmax_and_bits(full, screened)
    assert bool(torch.isfinite(screened).all()) == (extra >= 0)
