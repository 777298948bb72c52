"""Reasoning / answer split of a thinking model's output (``separate_reasoning``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class ThinkMarkers:
    """``force``: the model starts thinking without writing ``start`` (the chat template
    opens the block), so text before ``end`` is reasoning even with no ``start``."""

    start: str
    end: str
    force: bool = False


# SGLang's reasoning parsers that mark thinking with a start / end pair
MARKERS = {
    "deepseek-r1": ThinkMarkers("<think>", "</think>", force=True),
    "deepseek-v3": ThinkMarkers("<think>", "</think>"),
    "qwen3": ThinkMarkers("<think>", "</think>"),
    "qwen3-thinking": ThinkMarkers("<think>", "</think>", force=True),
    "glm45": ThinkMarkers("<think>", "</think>"),
    "minimax": ThinkMarkers("<think>", "</think>", force=True),
    "step3": ThinkMarkers("<think>", "</think>", force=True),
    "kimi": ThinkMarkers("\u25c1think\u25b7", "\u25c1/think\u25b7"),
}


def markers_for(model_type: str | None) -> ThinkMarkers:
    """The markers of ``model_type`` (None: ``<think>`` ... ``</think>``)."""
    if model_type is None:
        return ThinkMarkers("<think>", "</think>")
    if model_type not in MARKERS:
        raise ValueError(
            f"separate_reasoning: unknown model_type {model_type!r}; one of {sorted(MARKERS)}"
        )
    return MARKERS[model_type]


def split_reasoning(text: str, markers: ThinkMarkers) -> tuple[str, str]:
    """``(reasoning, answer)``; an unclosed block is all reasoning, as in SGLang."""
    body = text.lstrip()
    started = body.startswith(markers.start)
    if not started and not markers.force:
        return "", text
    if started:
        body = body[len(markers.start) :]
    if markers.end not in body:
        return body.strip(), ""
    reasoning, answer = body.split(markers.end, 1)
    return reasoning.strip(), answer.lstrip()
