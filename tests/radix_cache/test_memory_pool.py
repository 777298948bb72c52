from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from plait.bench import proc_tree
from plait.radix_cache.memory_pool import ReqToTokenPool, TokenToKVPool
from plait.runtime.model import huge_pages


def make_pool(size: int = 16) -> TokenToKVPool:
    return TokenToKVPool(size, num_layers=2, num_kv_heads=2, head_dim=4, dtype=torch.float32)


def test_req_to_token_pool_hands_out_each_row_once() -> None:
    pool = ReqToTokenPool(3, max_context_len=8)
    assert pool.req_to_token.shape == (3, 8)
    assert pool.req_to_token.dtype == torch.int64
    rows = [pool.alloc() for _ in range(3)]
    assert sorted(rows) == [0, 1, 2]
    assert pool.alloc() is None
    assert pool.available_size() == 0
    pool.free(rows[1])
    assert pool.alloc() == rows[1]
    pool.clear()
    assert pool.available_size() == 3


def test_alloc_never_returns_dummy_slot_and_reports_shortage() -> None:
    pool = make_pool(8)
    assert pool.size == 8
    assert pool.k_buffer[0].shape == (9, 2, 4)
    assert pool.alloc(9) is None
    assert pool.available_size() == 8
    slots = pool.alloc(8)
    assert slots is not None and slots.dtype == torch.int64
    assert sorted(slots.tolist()) == list(range(1, 9))
    assert pool.alloc(1) is None
    empty = pool.alloc(0)
    assert empty is not None and empty.numel() == 0


def test_free_returns_slots_and_accepts_empty() -> None:
    pool = make_pool(8)
    slots = pool.alloc(5)
    assert slots is not None
    pool.free(slots[:0])
    assert pool.available_size() == 3
    pool.free(slots[:2])
    assert pool.available_size() == 5
    again = pool.alloc(5)
    assert again is not None
    assert set(again.tolist()) | set(slots[2:].tolist()) == set(range(1, 9))
    pool.clear()
    assert pool.available_size() == 8


def test_set_kv_writes_rows_of_one_layer() -> None:
    pool = make_pool(8)
    loc = torch.tensor([3, 5])
    k = torch.randn(2, 2, 4)
    v = torch.randn(2, 2, 4)
    pool.set_kv(1, loc, k, v)
    k_buf, v_buf = pool.get_kv(1)
    torch.testing.assert_close(k_buf[loc], k)
    torch.testing.assert_close(v_buf[loc], v)
    assert not pool.get_kv(0)[0].any()
    assert not k_buf[0].any()


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="Linux's /proc")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_cpu_pool_takes_memory_only_for_the_slots_it_writes(dtype) -> None:
    """A 2 GiB pool reads as zeros everywhere and its pages are backed when first written."""
    before = proc_tree.rss(os.getpid())
    pool = TokenToKVPool(1 << 20, num_layers=4, num_kv_heads=2, head_dim=64, dtype=dtype)
    k = torch.randn(3, 2, 64).to(dtype)
    pool.set_kv(3, torch.tensor([1, 500_000, 1 << 20]), k, k)
    assert proc_tree.rss(os.getpid()) - before < 64 << 20
    k_buf, v_buf = pool.get_kv(3)
    assert torch.equal(k_buf[[1, 500_000, 1 << 20]], k) and torch.equal(v_buf[1 << 20], k[2])
    assert not pool.get_kv(0)[1][::4096].any() and not k_buf[2:499_999:4096].any()
    assert all(b.is_contiguous() and b.data_ptr() % 64 == 0 for b in pool.k_buffer + pool.v_buffer)


def _thp_eligible(address: int) -> bool:
    """Whether the mapping holding ``address`` may be backed by huge pages (/proc smaps)."""
    mapping = None
    for line in open("/proc/self/smaps"):
        head = line.split()[0]
        if "-" in head and ":" not in head:
            lo, hi = (int(x, 16) for x in head.split("-"))
            mapping = lo <= address < hi
        elif mapping and head == "THPeligible:":
            return line.split()[1] == "1"
    raise AssertionError(f"no mapping holds {address:#x}")


@pytest.mark.skipif(not huge_pages.available(), reason="no transparent huge pages here")
def test_a_cpu_pool_is_on_huge_pages() -> None:
    """Each decode step writes a slot in every layer's buffers: on 4 KiB pages that is a TLB
    miss per buffer."""
    pool = TokenToKVPool(1 << 16, num_layers=2, num_kv_heads=2, head_dim=64, dtype=torch.bfloat16)
    assert all(_thp_eligible(b.data_ptr()) for b in pool.k_buffer + pool.v_buffer)


def test_kv_bytes_per_token() -> None:
    assert TokenToKVPool.kv_bytes_per_token(30, 3, 64, torch.bfloat16) == 2 * 30 * 3 * 64 * 2
    assert TokenToKVPool.kv_bytes_per_token(1, 1, 1, torch.float32) == 8


def test_invalid_sizes_are_rejected() -> None:
    with pytest.raises(ValueError, match="size"):
        TokenToKVPool(0, 1, 1, 1, torch.float32)
    with pytest.raises(ValueError, match="max_context_len"):
        ReqToTokenPool(4, 0)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 12)), max_size=40))
def test_slots_are_owned_once(ops: list[tuple[bool, int]]) -> None:
    pool = make_pool(32)
    held: list[torch.Tensor] = []
    for is_alloc, n in ops:
        if is_alloc:
            available = pool.available_size()
            slots = pool.alloc(n)
            assert (slots is None) == (n > available)
            if slots is not None:
                held.append(slots)
        elif held:
            pool.free(held.pop(n % len(held)))
        owned = torch.cat(held).tolist() if held else []
        free = pool.free_slots.tolist()
        assert len(owned) + len(free) == pool.size
        assert sorted(owned + free) == list(range(1, pool.size + 1))
