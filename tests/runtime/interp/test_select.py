"""``select_choice`` over a scripted server: a longest-match tokenizer and a bigram logprob
table, so every score below can be computed by hand."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from plait.lang.choices import (
    greedy_token_selection,
    token_length_normalized,
    unconditional_likelihood_normalized,
)
from plait.runtime.errors import InvalidRequestError
from plait.runtime.interp.select import check_choices, sample_choice, select_choice

VOCAB = ["Answer:", " yes", " no", " maybe", " Paris", " Par", " ", "is", "rot", "y", "es", "no"]


class ScriptedServer:
    """``LogprobSource`` of a toy model. A token's logprob: ``bigrams[(previous token, token)]``,
    else ``prompted[token]`` once "Answer:" came before, else ``unigrams[token]``, else -5.
    ``with_ids=False`` answers as an OpenAI echo does (no token ids)."""

    def __init__(
        self,
        unigrams: dict[str, float] | None = None,
        bigrams: dict[tuple[str, str], float] | None = None,
        prompted: dict[str, float] | None = None,
        with_ids: bool = True,
    ) -> None:
        self.unigrams = unigrams or {}
        self.bigrams = bigrams or {}
        self.prompted = prompted or {}
        self.with_ids = with_ids
        self.requests: list[tuple[Any, ...]] = []

    def tokenize(self, text: str) -> list[str]:
        out, i = [], 0
        while i < len(text):
            tok = max((v for v in VOCAB if text.startswith(v, i)), key=len, default=text[i])
            out.append(tok)
            i += len(tok)
        return out

    def logprob(self, context: list[str], tok: str) -> float:
        if (context[-1], tok) in self.bigrams:
            return self.bigrams[context[-1], tok]
        if "Answer:" in context and tok in self.prompted:
            return self.prompted[tok]
        return self.unigrams.get(tok, -5.0)

    def triple(self, toks: list[str], pos: int) -> tuple[float | None, int | None, str]:
        value = None if pos == 0 else self.logprob(toks[:pos], toks[pos])
        tid = VOCAB.index(toks[pos]) if toks[pos] in VOCAB else 1000 + ord(toks[pos][0])
        return (value, tid if self.with_ids else None, toks[pos])

    def prompt_len(self, prompt: str) -> int:
        self.requests.append(("prompt_len", prompt))
        return len(self.tokenize(prompt))

    def prompt_logprobs(self, texts: list[str], logprob_start_len: int) -> list[dict[str, Any]]:
        self.requests.append(("prompt_logprobs", list(texts), logprob_start_len))
        metas = []
        for text in texts:
            toks = self.tokenize(text)
            metas.append(
                {
                    "input_token_logprobs": [
                        self.triple(toks, p) for p in range(logprob_start_len, len(toks))
                    ],
                    "output_token_logprobs": [(-0.5, 2, "</s>")],
                }
            )
        return metas


def scored_texts(result) -> list[str]:
    return ["".join(t[2] for t in row) for row in result.meta_info["input_token_logprobs"]]


# ---- token healing --------------------------------------------------------------------------


def test_a_token_merged_across_the_prompt_end_is_scored_as_the_choice():
    server = ScriptedServer({" yes": -1.0, " no": -2.0, "y": -9.0})
    result = select_choice("Answer: ", ["yes", "no"], 0.0, None, server)
    # "Answer: yes" tokenizes as "Answer:", " yes": the prompt's " " merged into the choice
    assert scored_texts(result) == [" yes", " no"]
    assert result.meta_info["normalized_prompt_logprobs"] == [-1.0, -2.0]
    assert result.decision == "yes"


def test_an_unchanged_last_prompt_token_is_not_scored():
    server = ScriptedServer({" yes": -1.0, " no": -2.0, "Answer:": -0.1})
    result = select_choice("Answer:", [" yes", " no"], 0.0, None, server)
    assert scored_texts(result) == [" yes", " no"]
    assert result.meta_info["normalized_prompt_logprobs"] == [-1.0, -2.0]


def test_healing_mid_word_and_not_side_by_side():
    server = ScriptedServer({" Paris": -1.0, "rot": -3.0, " Par": -0.2})
    result = select_choice("It is Par", ["is", "rot"], 0.0, None, server)
    # "Par" + "is" re-tokenizes into " Paris"; "Par" + "rot" keeps " Par" and adds "rot"
    assert scored_texts(result) == [" Paris", "rot"]
    assert result.meta_info["normalized_prompt_logprobs"] == [-1.0, -3.0]


def test_the_rule_compares_token_texts_when_the_server_gives_no_ids():
    with_ids = select_choice("It is Par", ["is", "rot"], 0.0, None, ScriptedServer())
    no_ids = select_choice("It is Par", ["is", "rot"], 0.0, None, ScriptedServer(with_ids=False))
    assert scored_texts(no_ids) == scored_texts(with_ids) == [" Paris", "rot"]
    assert no_ids.meta_info["normalized_prompt_logprobs"] == pytest.approx(
        with_ids.meta_info["normalized_prompt_logprobs"]
    )


def test_the_prompt_is_cached_then_every_choice_scored_in_one_request():
    server = ScriptedServer()
    select_choice("Answer: ", ["yes", "no"], 0.0, None, server)
    # prompt_len: 2 tokens ("Answer:", " "); scores start one token before the choice
    assert server.requests == [
        ("prompt_len", "Answer: "),
        ("prompt_logprobs", ["Answer: ", "Answer: yes", "Answer: no"], 1),
    ]


# ---- choices with no scored token -----------------------------------------------------------


def test_a_choice_with_no_scored_token_scores_minus_infinity():
    server = ScriptedServer({"es": -2.0})
    # no prompt: a choice's first token has no context, so "no" (one token) has nothing scored
    result = select_choice("", ["yes", "no"], 0.0, None, server)
    assert scored_texts(result) == ["es", ""]
    assert result.meta_info["normalized_prompt_logprobs"] == [-2.0, -math.inf]
    assert result.decision == "yes"
    assert server.requests == [("prompt_logprobs", ["yes", "no"], 0)]


@pytest.mark.parametrize(
    "method", [token_length_normalized, greedy_token_selection, unconditional_likelihood_normalized]
)
def test_every_method_is_defined_when_no_choice_has_a_scored_token(method):
    result = select_choice("", ["no", "y"], 0.0, method, ScriptedServer())
    assert result.decision == "no"  # every score ties at -inf: the first choice
    assert result.meta_info["normalized_prompt_logprobs"] == [-math.inf, -math.inf]


# ---- the three methods ----------------------------------------------------------------------

PROMPT = "Answer:"
# " maybe" starts unlikely but its second token is near certain; " yes" is fair throughout
FIRST_TOKEN_TRAP = {
    ("Answer:", " yes"): -1.0,
    (" yes", " yes"): -1.5,
    ("Answer:", " maybe"): -3.0,
    (" maybe", " no"): -0.01,
}


def test_token_length_normalized_takes_the_best_mean():
    server = ScriptedServer(bigrams=FIRST_TOKEN_TRAP)
    result = select_choice(PROMPT, [" yes yes", " maybe no"], 0.0, token_length_normalized, server)
    assert result.meta_info["normalized_prompt_logprobs"] == pytest.approx([-1.25, -1.505])
    assert result.decision == " yes yes"


def test_greedy_token_selection_takes_the_best_first_token():
    # " maybe" now leads, but its second token is unlikely: the best mean is still " yes yes"
    server = ScriptedServer(
        bigrams={**FIRST_TOKEN_TRAP, ("Answer:", " maybe"): -0.9, (" maybe", " no"): -3.0}
    )
    choices = [" yes yes", " maybe no"]
    assert select_choice(PROMPT, choices, 0.0, None, server).decision == " yes yes"
    result = select_choice(PROMPT, choices, 0.0, greedy_token_selection, server)
    assert result.decision == " maybe no"
    assert result.meta_info["greedy_logprob_matrix"] == [[-1.0, -1.5], [-0.9, -3.0]]


def test_greedy_token_selection_pads_a_shorter_choice_with_its_mean():
    server = ScriptedServer(bigrams={("Answer:", " yes"): -1.0, (" yes", " no"): -3.0})
    result = select_choice(PROMPT, [" yes", " yes no"], 0.0, greedy_token_selection, server)
    assert result.meta_info["greedy_logprob_matrix"] == [[-1.0, -1.0], [-1.0, -3.0]]
    assert result.decision == " yes"


def test_unconditional_likelihood_normalized_rewards_what_the_prompt_adds():
    # " no" is likely anywhere; " maybe" is unlikely alone but much likelier after the prompt
    server = ScriptedServer(
        unigrams={" no": -1.0, " maybe": -6.0}, prompted={" no": -0.9, " maybe": -2.0}
    )
    choices = [" no no", " maybe maybe"]
    plain = select_choice(PROMPT, choices, 0.0, token_length_normalized, server)
    assert plain.decision == " no no"
    assert plain.meta_info["normalized_prompt_logprobs"] == [-0.9, -2.0]
    server.requests.clear()
    result = select_choice(PROMPT, choices, 0.0, unconditional_likelihood_normalized, server)
    # alone, a choice's first token has no context
    assert result.meta_info["unconditional_token_logprobs"] == [
        [(None, 2, " no"), (-1.0, 2, " no")],
        [(None, 3, " maybe"), (-6.0, 3, " maybe")],
    ]
    # the mean of (given the prompt - alone), None counting as 0
    assert result.meta_info["normalized_unconditional_scores"] == pytest.approx(
        [(-0.9 + (-0.9 + 1.0)) / 2, (-2.0 + (-2.0 + 6.0)) / 2]
    )
    assert result.decision == " maybe maybe"
    assert server.requests == [
        ("prompt_len", PROMPT),
        ("prompt_logprobs", [PROMPT, *(PROMPT + c for c in choices)], 0),
        ("prompt_logprobs", choices, 0),
    ]


def test_no_method_is_token_length_normalized():
    server = ScriptedServer(bigrams=FIRST_TOKEN_TRAP)
    default = select_choice(PROMPT, [" yes yes", " maybe no"], 0.0, None, server)
    named = select_choice(PROMPT, [" yes yes", " maybe no"], 0.0, token_length_normalized, server)
    assert default.decision == named.decision
    assert default.meta_info == named.meta_info


# ---- temperature ----------------------------------------------------------------------------


def test_a_temperature_samples_with_weights_exp_mean_over_temperature():
    server = ScriptedServer({" yes": -1.0, " no": -2.0})
    rng = random.Random(0)
    draws = [
        select_choice("Answer:", [" yes", " no"], 0.5, None, server, rng).decision
        for _ in range(2000)
    ]
    expected = 1 / (1 + math.exp((-2.0 + 1.0) / 0.5))  # weight of " yes" over both
    assert draws.count(" yes") / len(draws) == pytest.approx(expected, abs=0.03)


def test_sampling_never_draws_an_unscored_choice_unless_all_are():
    rng = random.Random(0)
    scores = [-1.0, -math.inf]
    assert {sample_choice(["a", "b"], scores, 1.0, rng) for _ in range(200)} == {"a"}
    all_unscored = [-math.inf, -math.inf]
    assert {sample_choice(["a", "b"], all_unscored, 1.0, rng) for _ in range(200)} == {"a", "b"}


def test_temperature_zero_is_the_method_decision():
    server = ScriptedServer({" yes": -1.0, " no": -1.01})
    decisions = {select_choice("Answer:", [" yes", " no"], 0.0, None, server).decision}
    assert decisions == {" yes"}


# ---- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize("choices", [[], [""], ["a", 3], "ab", None])
def test_bad_choices_name_the_field_before_any_request(choices):
    server = ScriptedServer()
    with pytest.raises(InvalidRequestError) as e:
        select_choice("Answer:", choices, 0.0, None, server)
    assert e.value.field == "choices"
    assert server.requests == []
    with pytest.raises(InvalidRequestError):
        check_choices(choices)


def test_a_method_deciding_outside_the_choices_is_an_error():
    def stray(**kwargs):
        return "perhaps"

    with pytest.raises(InvalidRequestError) as e:
        select_choice("Answer:", [" yes", " no"], 0.0, stray, ScriptedServer())
    assert e.value.field == "choices_method"


def test_a_plain_function_may_return_the_decision_alone():
    def last(*, choices, **kwargs):
        return choices[-1]

    assert select_choice("Answer:", [" yes", " no"], 0.0, last, ScriptedServer()).decision == " no"
