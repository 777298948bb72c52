"""Token ids to text: incremental for streaming (holding back partial UTF-8), and final."""

from __future__ import annotations

from typing import Any

from plait.runtime.sampling_params import SamplingParams


class IncrementalDetokenizer:
    """Yields the text added by each new batch of tokens.

    Invariant: the concatenation of every returned delta is a prefix of ``decode(all ids)``;
    text ending in an incomplete UTF-8 character (U+FFFD) is held back until it completes.
    """

    def __init__(
        self,
        tokenizer: Any,
        skip_special_tokens: bool = True,
        spaces_between_special_tokens: bool = True,
    ) -> None:
        self.tokenizer = tokenizer
        self.decode_options = {
            "skip_special_tokens": skip_special_tokens,
            "spaces_between_special_tokens": spaces_between_special_tokens,
        }
        self.ids: list[int] = []
        self.surr_offset = 0
        self.read_offset = 0

    def feed(self, new_ids: list[int]) -> str:
        self.ids.extend(new_ids)
        opts = self.decode_options
        prev = self.tokenizer.decode(self.ids[self.surr_offset : self.read_offset], **opts)
        full = self.tokenizer.decode(self.ids[self.surr_offset :], **opts)
        if len(full) <= len(prev) or full.endswith("\ufffd"):
            return ""
        self.surr_offset, self.read_offset = self.read_offset, len(self.ids)
        return full[len(prev) :]


class StopHoldBack:
    """Streamed text with stop strings kept out of it.

    ``push(new_text)`` returns the text that became visible: the visible text is cut before the
    first complete stop string and stops short of any tail that could still grow into one. A
    push scans only the new text and a window of the longest stop string before it, so its cost
    does not grow with the text so far. ``hold`` more characters are always held back (the
    longest text a stop regex can match, which the final text may cut).
    """

    def __init__(self, stops: list[str], hold: int = 0) -> None:
        self.stops = [s for s in stops if s]
        self.hold = hold
        self.window = max((len(s) for s in self.stops), default=0)
        self.raw = ""
        self.visible = 0  # length of the text returned so far
        self.cut: int | None = None  # where the first complete stop string begins

    def push(self, new_text: str) -> str:
        if self.cut is not None:
            return ""
        scan_from = max(len(self.raw) - self.window + 1, 0)
        self.raw += new_text
        end = len(self.raw)
        if not self.stops:
            end -= self.hold
        else:
            for s in self.stops:
                at = self.raw.find(s, scan_from)
                if at >= 0 and (self.cut is None or at < self.cut):
                    self.cut = at
            if self.cut is not None:
                end = self.cut
            else:
                end -= self.hold
                hold = 0
                for s in self.stops:
                    for k in range(min(len(s) - 1, end), hold, -1):
                        if self.raw.endswith(s[:k]):
                            hold = k
                            break
                end -= hold
        if end <= self.visible:
            return ""
        delta = self.raw[self.visible : end]
        self.visible = end
        return delta


def final_text(
    tokenizer: Any,
    output_ids: list[int],
    params: SamplingParams,
    finish_reason: dict[str, Any] | None,
) -> str:
    """The final text: special tokens skipped (``params.skip_special_tokens``), a matched stop
    string, stop regex text or stop token cut off unless ``params.no_stop_trim``
    (``finish_reason`` as ``FinishReason.to_dict``)."""
    ids = output_ids
    kind = finish_reason["type"] if finish_reason else None
    matched = finish_reason.get("matched") if finish_reason else None
    trim = kind == "stop" and not params.no_stop_trim
    if trim and isinstance(matched, int):
        ids = ids[:-1]
    text = tokenizer.decode(
        ids,
        skip_special_tokens=params.skip_special_tokens,
        spaces_between_special_tokens=params.spaces_between_special_tokens,
    )
    if trim and isinstance(matched, str):
        cut = text.find(matched)
        if cut >= 0:
            text = text[:cut]
    return text
