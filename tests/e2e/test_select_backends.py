"""``select`` chooses identically on every backend: the same programs on a local
``plait.Runtime``, over HTTP with ``RuntimeEndpoint`` against a real ``plait serve``, and over
its OpenAI API, all on the tiny random model with a byte-level BPE tokenizer (tests/conftest.py).

The prompts are the cases where backends used to part ways: a prompt ending in a space or in
the middle of a word (the choice's first token merges with the prompt's last), one ending in a
character split over two byte tokens (whose text alone is not a suffix of the prompt), and an
empty prompt (a one-token choice has no scored token).
"""

from __future__ import annotations

import pytest

import plait as sgl

CASES = {
    "trailing-space": (
        "Answer with yes or no.\nQuestion: Is ice hot?\nAnswer: ",
        ["yes", "no", "maybe"],
    ),
    "mid-word": ("The capital of France is Par", ["is", "rot", "k"]),
    "split-character": ("Temperature: 20°", [" C", " degrees", "F"]),
    "empty-prompt": ("", ["yes", "n"]),
}
METHODS = {
    "token_length_normalized": sgl.token_length_normalized,
    "greedy_token_selection": sgl.greedy_token_selection,
    "unconditional_likelihood_normalized": sgl.unconditional_likelihood_normalized,
}


@sgl.function
def pick(s, prompt, choices, method):
    s += prompt
    s += sgl.select("pick", choices=choices, choices_method=method)


@pytest.fixture(scope="module")
def backends(tiny_lm_dir, tiny_server):
    runtime = sgl.Runtime(tiny_lm_dir, max_total_tokens=4096)
    endpoint = sgl.RuntimeEndpoint(tiny_server)
    completions = sgl.OpenAI(
        tiny_lm_dir.name, base_url=f"{tiny_server}/v1", is_chat_model=False, max_retries=0
    )
    yield {"runtime": runtime, "endpoint": endpoint, "openai": completions}
    runtime.shutdown()
    endpoint.shutdown()
    completions.shutdown()


def _scored_texts(meta: dict) -> list[str]:
    return ["".join(t[2] for t in row) for row in meta["input_token_logprobs"]]


@pytest.mark.parametrize("method", METHODS.values(), ids=METHODS.keys())
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_every_backend_chooses_the_same(backends, case, method):
    prompt, choices = case
    states = {
        name: pick.run(prompt=prompt, choices=choices, method=method, backend=be)
        for name, be in backends.items()
    }
    local = states["runtime"].get_meta_info("pick")
    for name, state in states.items():
        assert state["pick"] == states["runtime"]["pick"], name
        meta = state.get_meta_info("pick")
        assert meta["normalized_prompt_logprobs"] == pytest.approx(
            local["normalized_prompt_logprobs"], abs=1e-4
        ), name
        assert _scored_texts(meta) == _scored_texts(local), name
        if method is sgl.unconditional_likelihood_normalized:
            assert meta["normalized_unconditional_scores"] == pytest.approx(
                local["normalized_unconditional_scores"], abs=1e-4
            ), name


def test_what_each_choice_is_scored_on(backends):
    def scored(case: str) -> list[str]:
        prompt, choices = CASES[case]
        state = pick.run(prompt=prompt, choices=choices, method=None, backend=backends["runtime"])
        return _scored_texts(state.get_meta_info("pick"))

    # the prompt's trailing space merges into each choice's first token
    assert scored("trailing-space") == [" yes", " no", " maybe"]
    # "Par" + "is" re-tokenizes into " Paris"; "Par" + "rot" leaves " Par" to the prompt
    assert scored("mid-word")[:2] == [" Paris", "rot"]
    # the prompt's last byte token (text "\ufffd" alone) stays with the prompt
    assert scored("split-character") == [" C", " degrees", "F"]
    # with no prompt a choice's first token has no logprob: "n" has nothing scored
    prompt, choices = CASES["empty-prompt"]
    state = pick.run(prompt=prompt, choices=choices, method=None, backend=backends["runtime"])
    assert state.get_meta_info("pick")["normalized_prompt_logprobs"][1] == float("-inf")
    assert state["pick"] == "yes"
