"""The sampling info of the running batch, kept from one step to the next."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from plait.runtime.worker.penalties import count_new_tokens_, mark_new_tokens_, token_counts
from plait.runtime.worker.sampling_info import SamplingBatchInfo, penalized_rows

if TYPE_CHECKING:
    from plait.runtime.worker.request import Req


class SamplingBatch:
    """The ``SamplingBatchInfo`` of the batch sampled last, kept for the next step.

    Invariant: ``prepare(reqs)`` returns an info equal, tensor for tensor, to
    ``SamplingBatchInfo.build`` over the requests' current parameters, outputs, prompts and
    ``sampling_seed``s. While the batch is the same requests in the same order, a step costs
    ``advance``: ``steps`` moves on, one scatter per penalty tensor adds the sampled tokens,
    and min-new-tokens bans are dropped as rows reach their minimum. When the batch changes,
    the info is rebuilt; the penalty rows of requests sampled in the previous step are
    gathered from its tensors and only the others count their history. A row is carried over
    only while its request's ``output_epoch``, ``retractions`` and output length are those
    the tensors were advanced to, so rewritten (jump-forward) or retracted requests recount.
    """

    def __init__(self, eos_token_ids: list[int], vocab_size: int, device: torch.device) -> None:
        self.eos_token_ids = eos_token_ids
        self.vocab_size = vocab_size
        self.device = device
        self.info: SamplingBatchInfo | None = None
        self.reqs: list[Req] = []  # the rows of ``info``
        self._keys: list[tuple[int, int, int]] = []  # _row_key of each row at the rebuild
        self._advanced = 0  # steps since the rebuild
        self._count_rows: torch.Tensor | None = None  # float32 [B, 1]: 1 where outputs count
        self._seen_rows: torch.Tensor | None = None  # bool [B, 1]: True where tokens are seen
        self._ban_limits: torch.Tensor | None = None  # int64 [N]: each ban's min_new_tokens
        self._steps_to_unban = 0  # until the first ban expires
        self._steps: np.ndarray | None = None  # ``info.steps``' memory, where it is the CPU's

    def prepare(self, reqs: list[Req]) -> SamplingBatchInfo:
        """The info of ``reqs`` this step (``vocab_mask`` unset)."""
        if self.info is None or not self._same_batch(reqs):
            self._rebuild(reqs)
        assert self.info is not None
        self.info.vocab_mask = None
        return self.info

    def advance(self, next_ids: torch.Tensor) -> None:
        """After each row's sampled token (``next_ids``, int64 ``[B]``) joined its outputs."""
        info = self.info
        assert info is not None and next_ids.shape == info.steps.shape
        if self._steps is not None:
            self._steps += 1
        else:
            info.steps += 1
        self._advanced += 1
        if info.output_counts is not None:
            count_new_tokens_(info.output_counts, next_ids, self._count_rows)
        if info.repetition_seen is not None:
            mark_new_tokens_(info.repetition_seen, next_ids, self._seen_rows)
        if info.min_tokens_rows is not None:
            self._steps_to_unban -= 1
            if self._steps_to_unban == 0:
                self._drop_expired_bans(info)

    def _same_batch(self, reqs: list[Req]) -> bool:
        if len(reqs) != len(self.reqs):
            return False
        adv = self._advanced
        return all(r is q and _row_key(r, adv) == k for r, q, k in zip(reqs, self.reqs, self._keys))

    def _rebuild(self, reqs: list[Req]) -> None:
        adv, prev = self._advanced, self.info
        carried = {
            id(q): j for j, (q, k) in enumerate(zip(self.reqs, self._keys)) if _row_key(q, adv) == k
        }
        old_rows = [carried.get(id(r), -1) for r in reqs]
        params = [r.sampling_params for r in reqs]
        freq_pres, repetition = penalized_rows(params)
        output_counts = repetition_seen = None
        if any(freq_pres):
            output_counts = self._gather_or_count(
                prev.output_counts if prev else None, old_rows, freq_pres, reqs, False
            )
        if any(repetition):
            repetition_seen = self._gather_or_count(
                prev.repetition_seen if prev else None, old_rows, repetition, reqs, True
            )
        seeds = torch.tensor([r.sampling_seed for r in reqs], dtype=torch.int64)
        output_lens = [len(r.output_ids) for r in reqs]
        info = SamplingBatchInfo.from_rows(
            params,
            output_lens,
            seeds,
            output_counts,
            repetition_seen,
            eos_token_ids=self.eos_token_ids,
            vocab_size=self.vocab_size,
            device=self.device,
        )
        self.info, self.reqs, self._advanced = info, list(reqs), 0
        # on the CPU, ``info.steps`` through numpy (its memory): half a torch add's time a step,
        # with the caches cold after the fused step
        self._steps = info.steps.numpy() if info.steps.device.type == "cpu" else None
        self._keys = [_row_key(r) for r in reqs]
        self._count_rows = torch.tensor(freq_pres, dtype=torch.float32, device=self.device)[:, None]
        self._seen_rows = torch.tensor(repetition, device=self.device)[:, None]
        if info.min_tokens_rows is not None:
            min_new = torch.tensor([p.min_new_tokens for p in params], device=self.device)
            self._ban_limits = min_new[info.min_tokens_rows]
            self._steps_to_unban = int((self._ban_limits - info.steps[info.min_tokens_rows]).min())
        else:
            self._ban_limits = None

    def _gather_or_count(
        self,
        prev: torch.Tensor | None,
        old_rows: list[int],
        wanted: list[bool],
        reqs: list[Req],
        seen: bool,
    ) -> torch.Tensor:
        """Output counts (``seen``: the bool mask of prompt and output tokens) ``[B, V]`` of the
        rows in ``wanted``: carried rows from ``prev``, the others counted from their history."""
        dtype = torch.bool if seen else torch.float32
        out = torch.zeros(len(reqs), self.vocab_size, dtype=dtype, device=self.device)
        dst = [i for i, (j, w) in enumerate(zip(old_rows, wanted)) if w and j >= 0]
        fresh = [i for i, (j, w) in enumerate(zip(old_rows, wanted)) if w and j < 0]
        if dst:
            assert prev is not None, "a carried penalized row comes from a penalized batch"
            src = torch.tensor([old_rows[i] for i in dst], device=self.device)
            out[torch.tensor(dst, device=self.device)] = prev[src]
        if fresh:
            history = [reqs[i].fill_ids if seen else reqs[i].output_ids for i in fresh]
            counts = token_counts(history, self.vocab_size, self.device)
            out[torch.tensor(fresh, device=self.device)] = counts > 0 if seen else counts
        return out

    def _drop_expired_bans(self, info: SamplingBatchInfo) -> None:
        assert info.min_tokens_rows is not None and self._ban_limits is not None
        left = self._ban_limits - info.steps[info.min_tokens_rows]  # [N], steps until expiry
        keep = left > 0
        if not bool(keep.any()):
            info.min_tokens_rows = info.min_tokens_ids = self._ban_limits = None
            info.need_min_tokens = False
            return
        info.min_tokens_rows = info.min_tokens_rows[keep]
        info.min_tokens_ids = info.min_tokens_ids[keep]
        self._ban_limits = self._ban_limits[keep]
        self._steps_to_unban = int(left[keep].min())


def _row_key(req: Req, advanced: int = 0) -> tuple[int, int, int]:
    # what a row's penalty state was counted from: a rewrite (jump-forward), a retraction or
    # any output not sampled through this batch (``advanced`` steps so far) changes it
    return req.output_epoch, req.retractions, len(req.output_ids) - advanced
