"""The batched vocabulary mask of one sampling step, for the constrained rows only."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from plait.constrained.grammar_state import GrammarState


@dataclass(slots=True)
class VocabMask:
    """``disallowed`` (bool ``[B, V]``): True where a row's token is not allowed; rows of
    unconstrained requests are all False, so their logits pass through bit for bit."""

    disallowed: torch.Tensor

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """A masked copy of ``logits`` (``[B, V]``)."""
        if logits.device.type == "cpu" and logits.dtype == torch.float32:
            # numpy runs this single-threaded: at these sizes torch's thread pool costs more
            # than the work (milliseconds when the cores are shared)
            out = logits.numpy().copy()
            np.copyto(out, -np.inf, where=self.disallowed.numpy())
            return torch.from_numpy(out)
        return torch.where(self.disallowed, float("-inf"), logits)


class MaskBuilder:
    """Stacks each row's cached per-state mask (a shared all-False row for unconstrained
    rows) into one reused buffer."""

    def __init__(self) -> None:
        self._buf = np.empty((0, 0), dtype=np.bool_)
        self._only_stops: dict[tuple[int, ...], torch.Tensor] = {}
        self._none: torch.Tensor | None = None

    def build(
        self, states: list[GrammarState | None], vocab_size: int, device: torch.device
    ) -> VocabMask | None:
        if all(s is None for s in states):
            return None
        if self._none is None or self._none.numel() != vocab_size:
            self._none = torch.zeros(vocab_size, dtype=torch.bool)
        rows = [self._none if s is None else self._row(s) for s in states]
        n = len(rows)
        if self._buf.shape[0] < n or self._buf.shape[1] != vocab_size:
            self._buf = np.empty((max(n, 2 * self._buf.shape[0]), vocab_size), dtype=np.bool_)
        out = self._buf[:n]
        np.stack([r.numpy() for r in rows], out=out)  # single-threaded, see VocabMask.apply
        return VocabMask(torch.from_numpy(out).to(device, non_blocking=True))

    def _row(self, gs: GrammarState) -> torch.Tensor:
        g = gs.grammar
        if gs.done:
            return self._stops_only(g.vocab.size, g.vocab.stop_ids + gs.extra_stop_ids)
        mask = g.disallowed(gs.state)
        if gs.extra_stop_ids and g.is_final(gs.state):
            mask = mask.clone()
            mask[gs.extra_stop_ids] = False
        return mask

    def _stops_only(self, vocab_size: int, ids: list[int]) -> torch.Tensor:
        key = tuple(sorted(set(ids)))
        mask = self._only_stops.get(key)
        if mask is None:
            mask = torch.ones(vocab_size, dtype=torch.bool)
            mask[list(key)] = False
            self._only_stops[key] = mask
        return mask
