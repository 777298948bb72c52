"""Turning per-choice token logprobs from a remote server into a ``select`` decision."""

from __future__ import annotations

import math
import random
from typing import Any

from plait.runtime.interp.backend import ChoiceResult

# (logprob, token id, token text); the first prompt token's logprob is None
Triple = tuple[float | None, int, str | None]


def drop_unhealed_token(prompt: str, triples: list[Any]) -> list[Any]:
    """The logprobs of the choice's tokens, given those from one token before the choice.

    The extra leading token belongs to the prompt unless tokenizing ``prompt + choice`` merged
    it with the choice's first characters (token healing); SGLang's test: the prompt ends with
    that token's text.
    """
    if triples and (triples[0][0] is None or _ends_with(prompt, triples[0][2])):
        return triples[1:]
    return triples


def _ends_with(prompt: str, token_text: str | None) -> bool:
    return bool(token_text) and prompt.endswith(token_text)


def mean_logprob(triples: list[Any]) -> float:
    values = [t[0] for t in triples if t[0] is not None]
    return sum(values) / len(values) if values else float("-inf")


def decide(
    choices: list[str],
    normalized_prompt_logprobs: list[float],
    input_token_logprobs: list[list[Any]],
    output_token_logprobs: list[list[Any]],
    unconditional_token_logprobs: list[list[Any]] | None,
    choices_method: Any,
    temperature: float = 0.0,
) -> ChoiceResult:
    """Applies ``choices_method`` (SGLang's ``ChoicesSamplingMethod`` call signature) or, when
    none is given, picks the highest mean token logprob. A ``temperature`` above zero samples
    the decision instead, with weights ``exp(mean logprob / temperature)``."""
    meta = {
        "normalized_prompt_logprobs": normalized_prompt_logprobs,
        "input_token_logprobs": input_token_logprobs,
        "output_token_logprobs": output_token_logprobs,
    }
    if unconditional_token_logprobs is not None:
        meta["unconditional_token_logprobs"] = unconditional_token_logprobs
    if choices_method is None:
        best = max(range(len(choices)), key=lambda i: normalized_prompt_logprobs[i])
        out: Any = choices[best]
    else:
        out = choices_method(
            choices=choices,
            normalized_prompt_logprobs=normalized_prompt_logprobs,
            input_token_logprobs=input_token_logprobs,
            output_token_logprobs=output_token_logprobs,
            unconditional_token_logprobs=unconditional_token_logprobs,
        )
    decision = getattr(out, "decision", out)
    extra = getattr(out, "meta_info", None) or {}
    result = ChoiceResult(decision, {**meta, **extra})
    if temperature > 1e-6:
        result.decision = _sample(choices, normalized_prompt_logprobs, temperature)
    return result


def _sample(choices: list[str], scores: list[float], temperature: float) -> str:
    top = max(scores)
    weights = [math.exp((s - top) / temperature) for s in scores]
    return random.choices(choices, weights=weights)[0]
