"""The batched vocabulary mask of one sampling step: a packed bitmask, filled by the grammars."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from plait.constrained.grammar_state import GrammarState


@dataclass(slots=True)
class VocabMask:
    """``bitmask`` (int32 ``[B, ceil(V/32)]``, CPU): bit ``i % 32`` of word ``i // 32`` of a
    row set iff token ``i`` is allowed; rows of unconstrained requests are all ones, so their
    logits pass through bit for bit."""

    bitmask: torch.Tensor

    def disallowed(self, vocab_size: int) -> np.ndarray:
        """bool ``[B, vocab_size]``, True where a token is not allowed."""
        bits = np.unpackbits(
            self.bitmask.numpy().view(np.uint8), axis=1, count=vocab_size, bitorder="little"
        )
        return bits == 0

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """A masked copy of ``logits`` (``[B, V]``)."""
        banned = self.disallowed(logits.shape[-1])
        if logits.device.type == "cpu" and logits.dtype == torch.float32:
            # numpy runs this single-threaded: at these sizes torch's thread pool costs more
            # than the work (milliseconds when the cores are shared)
            out = logits.numpy().copy()
            np.copyto(out, -np.inf, where=banned)
            return torch.from_numpy(out)
        mask = torch.from_numpy(banned).to(logits.device, non_blocking=True)
        return torch.where(mask, float("-inf"), logits)


class MaskBuilder:
    """Fills one reused bitmask buffer: each constrained row by its grammar, the others with
    all bits set."""

    def __init__(self) -> None:
        self._buf = torch.empty((0, 0), dtype=torch.int32)

    def build(
        self,
        states: list[GrammarState | None],
        vocab_size: int,
        hold_stop: list[bool] | None = None,
    ) -> VocabMask | None:
        """``hold_stop[i]``: row ``i`` is below its ``min_new_tokens``
        (``GrammarState.fill_bitmask``)."""
        if all(s is None for s in states):
            return None
        n, words = len(states), (vocab_size + 31) // 32
        if self._buf.shape[0] < n or self._buf.shape[1] != words:
            self._buf = torch.empty((max(n, 2 * self._buf.shape[0]), words), dtype=torch.int32)
        out = self._buf[:n]
        for i, s in enumerate(states):
            if s is None:
                out[i] = -1
            else:
                s.fill_bitmask(out, i, hold_stop=hold_stop is not None and hold_stop[i])
        return VocabMask(out)
