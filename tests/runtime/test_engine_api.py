"""What a caller of ``Engine.generate`` relies on: seeds, n, stopping, logprobs, streaming, abort,
prefix caching and dtypes. Token-level behaviour on a tiny random model, text on SmolLM2."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from plait.runtime.engine import Engine

PROMPTS = [[5, 6, 7, 8, 9, 10], [100, 200, 30], [40] * 9, list(range(11, 22))]
GREEDY = {"temperature": 0, "ignore_eos": True}
SAMPLED = {"max_new_tokens": 8, "temperature": 1.0, "ignore_eos": True}
COUNT = "Count: 1, 2, 3, 4,"  # SmolLM2 continues greedily with " 5, 6, 7, 8,"


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return tiny_model_dir("llama")


@pytest.fixture(scope="module")
def engine(tiny):
    return Engine(tiny, max_total_tokens=2048)


@pytest.fixture(scope="module")
def smol():
    return Engine(None, max_total_tokens=4096)


def _ids(outs):
    return [o["output_ids"] for o in outs]


def _gen(engine, prompt, **params):
    return engine.generate(input_ids=prompt, sampling_params=params)


# ---- sampling -----------------------------------------------------------------------------


def test_seed_fixes_the_sample_alone_and_in_a_batch(engine):
    alone = _gen(engine, PROMPTS[0], **SAMPLED, seed=42)["output_ids"]
    batch = engine.generate(
        input_ids=PROMPTS[1:3] + [PROMPTS[0]],
        sampling_params=[SAMPLED, {**SAMPLED, "seed": 7}, {**SAMPLED, "seed": 42}],
    )
    assert batch[2]["output_ids"] == alone
    assert _gen(engine, PROMPTS[0], **SAMPLED, seed=43)["output_ids"] != alone
    engine.check_idle()


def test_n_returns_distinct_seeded_samples_grouped_per_prompt(engine):
    three = _gen(engine, PROMPTS[0], **SAMPLED, n=3, seed=100)
    assert isinstance(three, list) and len(three) == 3
    assert len({tuple(o["output_ids"]) for o in three}) == 3

    four = engine.generate(input_ids=PROMPTS[:2], sampling_params={**SAMPLED, "n": 2, "seed": 5})
    assert [o["meta_info"]["prompt_tokens"] for o in four] == [6, 6, 3, 3]
    # sample j of a prompt uses seed + j
    assert four[1]["output_ids"] == _gen(engine, PROMPTS[0], **SAMPLED, seed=6)["output_ids"]
    assert four[2]["output_ids"] == _gen(engine, PROMPTS[1], **SAMPLED, seed=5)["output_ids"]
    engine.check_idle()


def test_temperature_zero_is_top_k_one(engine):
    greedy = engine.generate(input_ids=PROMPTS, sampling_params={**SAMPLED, **GREEDY})
    top1 = engine.generate(input_ids=PROMPTS, sampling_params={**SAMPLED, "top_k": 1})
    assert _ids(greedy) == _ids(top1)


# ---- stopping -----------------------------------------------------------------------------


def test_max_new_tokens_gives_length(engine):
    out = _gen(engine, PROMPTS[1], max_new_tokens=7, ignore_eos=True)
    assert len(out["output_ids"]) == out["meta_info"]["completion_tokens"] == 7
    assert out["meta_info"]["finish_reason"] == {"type": "length", "matched": None}


def test_stop_token_id_and_min_new_tokens(engine):
    free = _gen(engine, PROMPTS[0], max_new_tokens=8, **GREEDY)["output_ids"]
    stop_id = free[1]
    first = free.index(stop_id)
    out = _gen(engine, PROMPTS[0], max_new_tokens=8, stop_token_ids=[stop_id], **GREEDY)
    assert out["output_ids"] == free[: first + 1]
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop_id}

    held = _gen(
        engine, PROMPTS[0], max_new_tokens=8, min_new_tokens=5, stop_token_ids=[stop_id], **GREEDY
    )
    assert len(held["output_ids"]) >= 5
    assert stop_id not in held["output_ids"][:4]
    engine.check_idle()


@pytest.fixture(scope="module")
def stop_requests(smol):
    stop_7 = smol.encode("7")
    assert len(stop_7) == 1
    params = [
        {"max_new_tokens": 10, "stop": ", 7", **GREEDY},
        {"max_new_tokens": 10, "stop_token_ids": stop_7, **GREEDY},
    ]
    return params, smol.generate([COUNT, COUNT], params)


def test_stop_string_cuts_the_text_before_it(stop_requests):
    _, (by_string, _) = stop_requests
    assert by_string["text"] == " 5, 6"
    assert by_string["meta_info"]["finish_reason"] == {"type": "stop", "matched": ", 7"}


def test_stop_token_id_is_in_output_ids_but_not_in_text(smol, stop_requests):
    _, (_, by_id) = stop_requests
    seven = smol.encode("7")[0]
    assert by_id["output_ids"][-1] == seven
    assert by_id["meta_info"]["finish_reason"] == {"type": "stop", "matched": seven}
    assert by_id["text"] == " 5, 6, "


# ---- logprobs -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_logprobs(tiny):
    hf = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = hf(torch.tensor([PROMPTS[3]])).logits[0]
    return torch.log_softmax(logits, dim=-1)  # [T, V]: row t predicts token t + 1


def _check_prompt_logprobs(out, start, ref):
    prompt = PROMPTS[3]
    lps = out["meta_info"]["input_token_logprobs"]
    assert [t for _, t, _ in lps] == prompt[start:]
    values = lps[1:] if start == 0 else lps
    if start == 0:
        assert lps[0][0] is None
    first = max(start, 1)
    for t, (lp, tid, _) in zip(range(first, len(prompt)), values):
        assert lp == pytest.approx(ref[t - 1, tid].item(), abs=1e-4)


def test_output_logprobs_align_with_greedy_tokens(engine, hf_logprobs):
    out = engine.generate(
        input_ids=PROMPTS[3],
        sampling_params={"max_new_tokens": 6, **GREEDY},
        return_logprob=True,
        top_logprobs_num=3,
    )
    meta = out["meta_info"]
    lps, tops = meta["output_token_logprobs"], meta["output_top_logprobs"]
    assert [t for _, t, _ in lps] == out["output_ids"]
    assert len(tops) == len(lps)
    for (lp, tid, _), top in zip(lps, tops):
        assert lp <= 0
        assert len(top) == 3
        assert [v for v, _, _ in top] == sorted((v for v, _, _ in top), reverse=True)
        assert top[0][1] == tid and top[0][0] == pytest.approx(lp)
    first = out["output_ids"][0]
    assert lps[0][0] == pytest.approx(hf_logprobs[-1, first].item(), abs=1e-4)
    assert "input_token_logprobs" not in meta


def test_prompt_logprobs_match_transformers_even_with_a_cached_prefix(engine, hf_logprobs):
    engine.flush_cache()
    params = {"max_new_tokens": 1, **GREEDY}
    kwargs = dict(input_ids=PROMPTS[3], sampling_params=params, return_logprob=True)
    _check_prompt_logprobs(engine.generate(**kwargs, logprob_start_len=0), 0, hf_logprobs)
    # now the whole prompt is cached
    again = engine.generate(**kwargs, logprob_start_len=0)
    _check_prompt_logprobs(again, 0, hf_logprobs)
    tail = engine.generate(**kwargs, logprob_start_len=5)
    assert 0 < tail["meta_info"]["cached_tokens"] <= 4
    _check_prompt_logprobs(tail, 5, hf_logprobs)
    engine.check_idle()


def test_prompt_logprobs_span_prefill_chunks(tiny, hf_logprobs):
    chunked = Engine(tiny, max_total_tokens=1024, chunked_prefill_size=4)
    out = chunked.generate(
        input_ids=PROMPTS[3],
        sampling_params={"max_new_tokens": 1, **GREEDY},
        return_logprob=True,
        logprob_start_len=0,
        top_logprobs_num=2,
    )
    _check_prompt_logprobs(out, 0, hf_logprobs)
    tops = out["meta_info"]["input_top_logprobs"]
    assert len(tops) == len(PROMPTS[3]) and tops[0] == []
    assert all(len(row) == 2 for row in tops[1:])
    chunked.check_idle()


def test_logprob_triples_carry_token_text(smol):
    out = smol.generate(COUNT, {"max_new_tokens": 3, **GREEDY}, return_logprob=True)
    lps = out["meta_info"]["output_token_logprobs"]
    assert [t for _, t, _ in lps] == out["output_ids"]
    assert [s for _, _, s in lps] == [smol.tokenizer.decode([t]) for t in out["output_ids"]]
    assert all(lp <= 0 for lp, _, _ in lps)


# ---- streaming and abort ------------------------------------------------------------------


def test_stream_deltas_join_to_the_final_text_and_hide_stop_strings(smol, stop_requests):
    params, finals = stop_requests
    chunks = list(smol.generate([COUNT, COUNT], params, stream=True))
    assert {c["index"] for c in chunks} == {0, 1}
    for i, final in enumerate(finals):
        mine = [c for c in chunks if c["index"] == i]
        assert "".join(c["delta"] for c in mine) == mine[-1]["text"] == final["text"]
        assert mine[-1]["output_ids"] == final["output_ids"]
        assert mine[-1]["meta_info"]["finish_reason"]["type"] == "stop"
    assert all(", 7" not in c["text"] for c in chunks if c["index"] == 0)
    smol.check_idle()


def _close_after_two_chunks(engine):
    stream = engine.generate(
        input_ids=PROMPTS[:2], sampling_params={"max_new_tokens": 50}, stream=True
    )
    for i, _ in enumerate(stream):
        if i == 1:
            break
    stream.close()


def test_closing_a_stream_early_frees_its_requests_on_the_next_call(engine):
    _close_after_two_chunks(engine)
    out = _gen(engine, PROMPTS[2], max_new_tokens=4)
    assert len(out["output_ids"]) == 4
    engine.check_idle()


def test_closing_a_stream_leaves_the_engine_idle_at_once(tiny):
    fresh = Engine(tiny, max_total_tokens=1024)
    _close_after_two_chunks(fresh)
    assert fresh.flush_cache()
    fresh.check_idle()


def test_abort_by_rid(engine):
    stream = engine.generate(
        input_ids=PROMPTS[0],
        sampling_params={"max_new_tokens": 50, "ignore_eos": True},
        stream=True,
        rid="victim",
    )
    first = next(stream)
    assert first["meta_info"]["id"] == "victim"
    assert engine.abort("victim")
    last = list(stream)[-1]
    assert last["meta_info"]["finish_reason"]["type"] == "abort"
    assert len(last["output_ids"]) < 50
    assert not engine.abort("victim")
    assert not engine.abort("no-such-request")
    engine.check_idle()


# ---- radix cache --------------------------------------------------------------------------


def test_multi_turn_reuses_prompt_and_generated_tokens(smol):
    smol.flush_cache()
    turn1 = smol.generate(COUNT, {"max_new_tokens": 6, **GREEDY})
    history = smol.encode(COUNT) + turn1["output_ids"]
    prompt2 = COUNT + turn1["text"] + " 7"
    turn2 = smol.generate(prompt2, {"max_new_tokens": 1, **GREEDY})
    # the last generated token's KV was never computed, so it cannot be cached
    assert len(history) - 2 <= turn2["meta_info"]["cached_tokens"] <= len(history) - 1
    assert smol.flush_cache()
    cold = smol.generate(prompt2, {"max_new_tokens": 1, **GREEDY})
    assert cold["meta_info"]["cached_tokens"] == 0
    assert cold["output_ids"] == turn2["output_ids"]
    smol.check_idle()


def test_disabled_radix_cache_caches_nothing_and_changes_nothing(tiny, engine):
    params = {"max_new_tokens": 8, **GREEDY}
    ref = engine.generate(input_ids=PROMPTS, sampling_params=params)
    plain = Engine(tiny, max_total_tokens=2048, disable_radix_cache=True)
    for _ in range(2):
        outs = plain.generate(input_ids=PROMPTS, sampling_params=params)
        assert _ids(outs) == _ids(ref)
        assert [o["meta_info"]["cached_tokens"] for o in outs] == [0] * len(PROMPTS)
    plain.check_idle()


# ---- dtype --------------------------------------------------------------------------------


def test_bfloat16_engine_runs_with_a_bf16_kv_pool(tiny, engine):
    bf16 = Engine(tiny, max_total_tokens=2048, dtype="bfloat16")
    assert bf16.core.cache.kv_pool.dtype == torch.bfloat16
    params = {"max_new_tokens": 8, **GREEDY}
    outs = bf16.generate(input_ids=PROMPTS, sampling_params=params)
    assert all(len(o["output_ids"]) == 8 for o in outs)
    assert all(0 <= t < bf16.vocab_size for o in outs for t in o["output_ids"])
    ref = engine.generate(input_ids=PROMPTS, sampling_params=params)
    agree = sum(o["output_ids"][0] == r["output_ids"][0] for o, r in zip(outs, ref))
    assert agree >= len(PROMPTS) // 2  # bf16 rounding may flip a close first choice
    bf16.check_idle()
