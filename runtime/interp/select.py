"""``select``: one scoring algorithm for every backend; a backend only supplies the transport.

The algorithm (SGLang's ``RuntimeEndpoint.select``, with one healing rule everywhere):

1. ``prompt_len(prompt)`` computes the prompt into the server's prefix cache and tells its
   length ``n`` in tokens, so every request below extends a cached prefix.
2. One batched ``prompt_logprobs`` over ``[prompt] + [prompt + choice for each choice]``, each
   scored from position ``n - 1``: the prompt's own row gives its last token; every choice's
   row gives its tokens plus the one before them (token healing, below).
3. With ``requires_unconditional_logprobs``, one more batched request scores each choice's
   text alone from position 0.
4. ``choices_method`` decides; a ``temperature`` above 0 then samples the decision instead.

Token healing: tokenizing ``prompt + choice`` may merge the prompt's last token with the
choice's first characters ("Answer: " + "yes" is "Answer:", " yes"). The token at position
``n - 1`` of ``prompt + choice`` belongs to the choice exactly when it is not the prompt's own
last token (the same id; by text where the server gives no ids), so a merged token is scored
as the choice's first token and an unchanged one is not scored. Only that one prompt token is
re-examined; a tokenizer that re-splits earlier prompt tokens is not healed further back.

A token with no context (position 0, only when the prompt is empty or one token long) has no
logprob and is not scored. A choice with no scored token has the score ``-inf`` (it ranks below
every scored choice; when none is scored, every score ties and the first choice wins).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from plait.lang.choices import ChoicesSamplingMethod, mean_logprob, token_length_normalized
from plait.runtime.errors import InvalidRequestError
from plait.runtime.interp.backend import ChoiceResult

# (logprob, token id, token text): SGLang's logprob triple; id or text is None where the server
# does not say, logprob is None for the token at position 0
Triple = tuple[float | None, int | None, str | None]


class LogprobSource(Protocol):
    """The two requests ``select_choice`` needs from a backend's server.

    Invariants: both tokenize text exactly as the server does (the same tokens, the same
    positions, counted from the text's first token); neither samples (temperature 0).
    """

    def prompt_len(self, prompt: str) -> int:
        """Computes the non-empty ``prompt`` into the server's prefix cache, where it has one,
        and returns its number of tokens."""
        ...

    def prompt_logprobs(self, texts: list[str], logprob_start_len: int) -> list[dict[str, Any]]:
        """Scores ``texts`` in one batched request; returns one ``meta_info`` per text, in order.

        ``input_token_logprobs``: a triple for each token of the text from position
        ``logprob_start_len`` on (none if the text is shorter); ``output_token_logprobs``: the
        triples of the tokens generated after the text (one greedy token, or none).
        """
        ...


def check_choices(choices: object) -> list[str]:
    """``choices`` as a list, or ``InvalidRequestError`` naming "choices"."""
    if (
        not isinstance(choices, (list, tuple))
        or not choices
        or not all(isinstance(c, str) and c for c in choices)
    ):
        raise InvalidRequestError("choices", "must be a non-empty list of non-empty strings")
    return list(choices)


def select_choice(
    prompt: str,
    choices: list[str],
    temperature: float,
    choices_method: ChoicesSamplingMethod | Callable[..., Any] | None,
    source: LogprobSource,
    rng: random.Random | None = None,
) -> ChoiceResult:
    """The choice to append after ``prompt`` and the scores behind it (module docstring).

    ``choices_method`` None is ``token_length_normalized``. ``meta_info`` holds
    ``normalized_prompt_logprobs`` (the mean logprob of each choice's scored tokens),
    ``input_token_logprobs`` (those tokens' triples), ``output_token_logprobs``,
    ``unconditional_token_logprobs`` when the method needs them, and the method's own keys.
    """
    choices = check_choices(choices)
    method = choices_method or token_length_normalized
    prompt_len = source.prompt_len(prompt) if prompt else 0
    texts = [prompt + c for c in choices]
    if prompt_len:
        texts.insert(0, prompt)
    rows = source.prompt_logprobs(texts, max(prompt_len - 1, 0))
    assert len(rows) == len(texts), (len(rows), len(texts))
    prompt_last = _triples(rows.pop(0)["input_token_logprobs"])[0] if prompt_len else None

    input_lps = [_choice_tokens(_triples(r["input_token_logprobs"]), prompt_last) for r in rows]
    output_lps = [_triples(r.get("output_token_logprobs") or []) for r in rows]
    normalized = [mean_logprob([t[0] for t in row]) for row in input_lps]
    unconditional = None
    if getattr(method, "requires_unconditional_logprobs", False):
        alone = source.prompt_logprobs(list(choices), 0)
        unconditional = [_triples(r["input_token_logprobs"]) for r in alone]

    out = method(
        choices=choices,
        normalized_prompt_logprobs=normalized,
        input_token_logprobs=input_lps,
        output_token_logprobs=output_lps,
        unconditional_token_logprobs=unconditional,
    )
    decision = getattr(out, "decision", out)  # a plain function may return the string alone
    if decision not in choices:
        raise InvalidRequestError("choices_method", f"decided {decision!r}, not one of choices")
    meta: dict[str, Any] = {
        "normalized_prompt_logprobs": normalized,
        "input_token_logprobs": input_lps,
        "output_token_logprobs": output_lps,
    }
    if unconditional is not None:
        meta["unconditional_token_logprobs"] = unconditional
    meta.update(getattr(out, "meta_info", None) or {})
    if temperature > 0:
        decision = sample_choice(choices, normalized, temperature, rng)
    return ChoiceResult(decision, meta)


def sample_choice(
    choices: list[str],
    scores: Sequence[float],
    temperature: float,
    rng: random.Random | None = None,
) -> str:
    """One of ``choices`` drawn with weights ``exp(score / temperature)``; scores of ``-inf``
    weigh nothing unless every score is ``-inf`` (then all tie)."""
    top = max(scores)
    if top == -math.inf:
        weights = [1.0] * len(choices)
    else:
        weights = [math.exp((s - top) / temperature) for s in scores]
    draw = rng.choices if rng is not None else random.choices
    return draw(choices, weights=weights)[0]


def _choice_tokens(row: list[Triple], prompt_last: Triple | None) -> list[Triple]:
    """The scored tokens of a choice, given its row from the prompt's last token on (the
    token-healing rule of the module docstring)."""
    if prompt_last is not None and row and _same_token(row[0], prompt_last):
        row = row[1:]
    return [t for t in row if t[0] is not None]


def _same_token(a: Triple, b: Triple) -> bool:
    if a[1] is not None and b[1] is not None:
        return a[1] == b[1]
    return a[2] == b[2]


def _triples(row: list[Any]) -> list[Triple]:
    # JSON turns the triples into lists; tuples make every backend's meta_info compare equal
    return [tuple(t) for t in row]  # type: ignore[misc]
