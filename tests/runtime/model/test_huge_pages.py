"""Weights moved onto huge pages keep their values, dtypes, shapes and ties, and the module
computes what it did."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from plait.runtime.model import huge_pages

pytestmark = pytest.mark.skipif(not huge_pages.available(), reason="no transparent huge pages")


def test_place_copies_each_tensor_into_one_aligned_mapping():
    tensors = [
        torch.randn(300, 7),
        torch.randn(5, 11).to(torch.bfloat16),
        torch.randint(-128, 127, (33, 3), dtype=torch.int8),
        torch.randn(9, 4).t(),  # not contiguous
    ]
    placed = huge_pages.place(tensors)
    assert placed[0].data_ptr() % huge_pages.HUGE_PAGE == 0
    for t, p in zip(tensors, placed):
        assert p.dtype == t.dtype and p.shape == t.shape and p.is_contiguous()
        assert torch.equal(p, t)
        assert p.data_ptr() % huge_pages.ALIGN == 0
    ends = [p.data_ptr() + p.numel() * p.element_size() for p in placed]
    assert all(e <= n.data_ptr() for e, n in zip(ends, placed[1:]))  # in order, disjoint


def test_adopted_parameters_keep_values_ties_and_outputs():
    torch.manual_seed(0)
    embed = nn.Embedding(1024, 512)  # 2 MiB: adopted
    head = nn.Linear(512, 1024, bias=False)
    head.weight = embed.weight  # tied
    norm = nn.LayerNorm(512)  # small: left where it is
    model = nn.ModuleDict({"embed": embed, "head": head, "norm": norm})
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    norm_ptr = norm.weight.data_ptr()
    x = torch.randint(0, 1024, (4,))
    expected = head(norm(embed(x)))
    moved = huge_pages.adopt_parameters(model)
    assert moved == 1024 * 512 * 4
    assert head.weight is embed.weight and embed.weight.data_ptr() % huge_pages.HUGE_PAGE == 0
    assert norm.weight.data_ptr() == norm_ptr
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n])
    assert torch.equal(head(norm(embed(x))), expected)
