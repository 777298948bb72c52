"""How ``select`` turns per-choice token logprobs into a decision (SGLang's choice methods).

A method is called with keyword arguments only: ``choices``, ``normalized_prompt_logprobs``
(``mean_logprob`` of each choice's tokens), ``input_token_logprobs`` (per choice, the
``(logprob, token_id, text)`` triples of the choice's tokens given the prompt, every logprob a
float; a row may be empty), ``output_token_logprobs`` and, when
``requires_unconditional_logprobs`` is true, ``unconditional_token_logprobs`` (the choice's text
scored alone; the first logprob is ``None``). ``runtime.interp.select.select_choice`` computes
them the same way on every backend.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


def mean_logprob(values: Sequence[float]) -> float:
    """The mean of ``values``; ``-inf`` for none (a choice with no scored token ranks last)."""
    return sum(values) / len(values) if values else -math.inf


@dataclass(slots=True)
class ChoicesDecision:
    decision: str
    meta_info: dict[str, Any] = field(default_factory=dict)


class ChoicesSamplingMethod:
    @property
    def requires_unconditional_logprobs(self) -> bool:
        return False

    def __call__(self, **kwargs: Any) -> ChoicesDecision:
        raise NotImplementedError


class TokenLengthNormalized(ChoicesSamplingMethod):
    """The choice with the highest mean token logprob."""

    def __call__(
        self, *, choices: list[str], normalized_prompt_logprobs: list[float], **kwargs: Any
    ) -> ChoicesDecision:
        best = max(range(len(choices)), key=lambda i: normalized_prompt_logprobs[i])
        return ChoicesDecision(choices[best], _meta(normalized_prompt_logprobs, kwargs))


class GreedyTokenSelection(ChoicesSamplingMethod):
    """Token by token, keep the choices whose logprob at that position is the highest; a
    shorter choice is padded with its own mean logprob."""

    def __call__(
        self,
        *,
        choices: list[str],
        normalized_prompt_logprobs: list[float],
        input_token_logprobs: list[list[tuple]],
        **kwargs: Any,
    ) -> ChoicesDecision:
        width = max(len(row) for row in input_token_logprobs)
        matrix = []
        for row in input_token_logprobs:
            values = [t[0] for t in row]
            matrix.append(values + [mean_logprob(values)] * (width - len(values)))
        remaining = list(range(len(choices)))
        for j in range(width):
            top = max(matrix[i][j] for i in remaining)
            remaining = [i for i in remaining if matrix[i][j] == top]
            if len(remaining) == 1:
                break
        meta = _meta(normalized_prompt_logprobs, kwargs, input_token_logprobs)
        meta["greedy_logprob_matrix"] = matrix
        return ChoicesDecision(choices[remaining[0]], meta)


class UnconditionalLikelihoodNormalized(ChoicesSamplingMethod):
    """The choice whose tokens gain the most mean logprob from the prompt: mean over its
    tokens of (logprob given the prompt - logprob without it), the two lists aligned at their
    ends; a token with no unconditional logprob (the first, or one missing) counts its
    conditional logprob alone."""

    @property
    def requires_unconditional_logprobs(self) -> bool:
        return True

    def __call__(
        self,
        *,
        choices: list[str],
        normalized_prompt_logprobs: list[float],
        input_token_logprobs: list[list[tuple]],
        unconditional_token_logprobs: list[list[tuple]] | None = None,
        **kwargs: Any,
    ) -> ChoicesDecision:
        if unconditional_token_logprobs is None:
            raise ValueError("unconditional_likelihood_normalized needs unconditional logprobs")
        scores = []
        for cond, uncond in zip(input_token_logprobs, unconditional_token_logprobs):
            # aligned at the end: alone, the choice may split into other tokens than after the
            # prompt (a healed first token, a lost leading space)
            u = [0.0] * len(cond) + [t[0] or 0.0 for t in uncond]
            u = u[len(u) - len(cond) :]
            scores.append(mean_logprob([c[0] - x for c, x in zip(cond, u)]))
        best = max(range(len(choices)), key=lambda i: scores[i])
        meta = _meta(normalized_prompt_logprobs, kwargs, input_token_logprobs)
        meta["unconditional_token_logprobs"] = unconditional_token_logprobs
        meta["normalized_unconditional_scores"] = scores
        return ChoicesDecision(choices[best], meta)


def _meta(
    normalized: list[float], kwargs: dict[str, Any], input_token_logprobs: Any = None
) -> dict[str, Any]:
    meta: dict[str, Any] = {"normalized_prompt_logprobs": normalized}
    if input_token_logprobs is None:
        input_token_logprobs = kwargs.get("input_token_logprobs")
    if input_token_logprobs is not None:
        meta["input_token_logprobs"] = input_token_logprobs
    if kwargs.get("output_token_logprobs") is not None:
        meta["output_token_logprobs"] = kwargs["output_token_logprobs"]
    return meta


token_length_normalized = TokenLengthNormalized()
greedy_token_selection = GreedyTokenSelection()
unconditional_likelihood_normalized = UnconditionalLikelihoodNormalized()
