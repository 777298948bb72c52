"""Memory pools: request rows of the request-to-token table, and the per-layer KV slots."""

from __future__ import annotations

import torch

from plait.runtime.mapped_tensors import mapped_tensors


class ReqToTokenPool:
    """Rows of ``req_to_token`` ``[size, max_context_len]``: row ``r`` belongs to one running
    request and column ``t`` holds the KV slot of its token ``t``.

    A row is either free or owned by exactly one request; ``free`` takes back an owned row.
    """

    def __init__(self, size: int, max_context_len: int, device: str | torch.device = "cpu") -> None:
        if size <= 0 or max_context_len <= 0:
            raise ValueError(
                f"ReqToTokenPool needs size > 0 and max_context_len > 0, "
                f"got size={size}, max_context_len={max_context_len}"
            )
        self.size = size
        self.max_context_len = max_context_len
        self.device = torch.device(device)
        self.req_to_token = torch.zeros(
            (size, max_context_len), dtype=torch.int64, device=self.device
        )
        self.free_slots: list[int] = list(range(size))

    def alloc(self) -> int | None:
        if not self.free_slots:
            return None
        return self.free_slots.pop()

    def free(self, row: int) -> None:
        assert 0 <= row < self.size, f"row {row} outside [0, {self.size})"
        self.free_slots.append(row)

    def available_size(self) -> int:
        return len(self.free_slots)

    def clear(self) -> None:
        self.free_slots = list(range(self.size))


class TokenToKVPool:
    """Per-layer K and V buffers ``[size + 1, num_kv_heads, head_dim]`` indexed by KV slot.

    Slot 0 is a dummy that padded positions write to; it is never handed out. Usable slots are
    ``1..size``, each either in ``free_slots`` or owned by exactly one holder (a request or the
    radix tree), which returns it with ``free``.
    """

    def __init__(
        self,
        size: int,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: str | torch.device = "cpu",
    ) -> None:
        if size <= 0 or num_layers <= 0 or num_kv_heads <= 0 or head_dim <= 0:
            raise ValueError(
                f"TokenToKVPool needs positive sizes, got size={size}, num_layers={num_layers}, "
                f"num_kv_heads={num_kv_heads}, head_dim={head_dim}"
            )
        self.size = size
        self.num_layers = num_layers
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.dtype = dtype
        self.device = torch.device(device)
        shape = (size + 1, num_kv_heads, head_dim)
        if self.device.type == "cpu":
            # zeroed by the kernel as their pages are first written: torch.zeros wrote the
            # whole pool at every worker start (1.2-2.8 s for SmolLM2's default 3.6 GB); on
            # huge pages where Linux has them: a decode step writes one slot in each of the
            # 2 x layers buffers, a TLB miss each on 4 KiB pages with the caches cold (the
            # fused step's KV writes 42-53 -> 13-26 us a token, SmolLM2 int4), and attention
            # reads a row's slots across as many pages. A buffer takes its first 2 MiB at
            # its first write.
            buffers = mapped_tensors([(shape, dtype)] * (2 * num_layers), huge_pages=True)
        else:
            buffers = [
                torch.zeros(shape, dtype=dtype, device=self.device) for _ in range(2 * num_layers)
            ]
        self.k_buffer = buffers[:num_layers]
        self.v_buffer = buffers[num_layers:]
        self.free_slots = self._all_slots()

    @property
    def free_slots(self) -> torch.Tensor:
        """The free slots, in the order ``alloc`` hands them out."""
        return self._slots[self._head :]

    @free_slots.setter
    def free_slots(self, slots: torch.Tensor) -> None:
        # the free slots are _slots[_head:]: ``alloc`` moves the head, one slice and no
        # tensor ``len`` a decode step (cold caches after the fused step)
        self._slots, self._head = slots, 0

    @staticmethod
    def kv_bytes_per_token(
        num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype
    ) -> int:
        """Bytes one token's K and V take over all layers."""
        itemsize = torch.empty((), dtype=dtype).element_size()
        return 2 * num_layers * num_kv_heads * head_dim * itemsize

    def _all_slots(self) -> torch.Tensor:
        return torch.arange(1, self.size + 1, dtype=torch.int64, device=self.device)

    def alloc(self, n: int) -> torch.Tensor | None:
        """``n`` free slots (int64), or None when fewer than ``n`` are free."""
        assert n >= 0, f"alloc of {n} slots"
        head = self._head
        if n > self._slots.shape[0] - head:
            return None
        self._head = head + n
        return self._slots[head : head + n]

    def free(self, indices: torch.Tensor) -> None:
        if indices.numel() == 0:
            return
        slots = self._slots
        self.free_slots = torch.cat((slots[self._head :], indices.to(slots)))

    def available_size(self) -> int:
        return self._slots.shape[0] - self._head

    def clear(self) -> None:
        self.free_slots = self._all_slots()

    def set_kv(self, layer_id: int, loc: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        # loc: [n]; k, v: [n, Hkv, D]
        self.k_buffer[layer_id][loc] = k.to(self.dtype)
        self.v_buffer[layer_id][loc] = v.to(self.dtype)

    def get_kv(self, layer_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k_buffer[layer_id], self.v_buffer[layer_id]
