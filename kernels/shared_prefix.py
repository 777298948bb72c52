"""Decode attention that reads a prefix shared by the whole batch once (cascade attention).

When every request of a decode batch starts with the same KV slots (a few-shot prompt or a
system prompt served from the radix tree), attention splits into the shared part, computed for
all queries with one matmul over a single copy of the prefix KV, and each request's own suffix;
the two partial softmaxes are merged by their log-sum-exp. Same result as attending to the whole
sequence, without gathering the prefix once per request.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Below this many shared tokens the split costs more than it saves.
MIN_SHARED_PREFIX = 32


@dataclass(slots=True)
class SharedPrefixDecode:
    prefix_index: torch.Tensor  # [P] slots shared by every request
    suffix_index: torch.Tensor  # [b, S] each request's remaining slots, padding -> slot 0
    suffix_mask: torch.Tensor  # [b, 1, 1, S] bool, True = attend


def plan_shared_prefix(
    kv_index: torch.Tensor, seq_lens: torch.Tensor, min_shared: int = MIN_SHARED_PREFIX
) -> SharedPrefixDecode | None:
    """Finds the longest run of slots every row starts with; None if shorter than ``min_shared``.

    ``kv_index`` is [b, max_seq] with padding past each row's length; the shared run never
    reaches into a row's padding nor its last token (its suffix keeps at least one slot).
    """
    b = kv_index.shape[0]
    if b < 2:
        return None
    limit = int(seq_lens.min()) - 1
    if limit < min_shared:
        return None
    differs = (kv_index[:, :limit] != kv_index[:1, :limit]).any(0)
    shared = int(differs.to(torch.int8).argmax()) if bool(differs.any()) else limit
    if shared < min_shared:
        return None
    suffix = kv_index[:, shared:].contiguous()
    pos = torch.arange(shared, kv_index.shape[1], device=kv_index.device)
    mask = (pos[None, :] < seq_lens[:, None]).view(b, 1, 1, -1)
    return SharedPrefixDecode(kv_index[0, :shared].clone(), suffix, mask)


def shared_prefix_decode(
    q: torch.Tensor,  # [b, Hq, D], one query per request
    k_buf: torch.Tensor,  # [slots, Hkv, D]
    v_buf: torch.Tensor,
    plan: SharedPrefixDecode,
    scale: float,
) -> torch.Tensor:
    """Returns [b, Hq, D] attention output, computed in float32 and cast back to q's dtype."""
    b, hq, d = q.shape
    hkv = k_buf.shape[1]
    g = hq // hkv
    qf = q.float()

    # shared part: all b*G queries of a KV head against one copy of the prefix
    kp = k_buf.index_select(0, plan.prefix_index).float().permute(1, 2, 0)  # [Hkv, D, P]
    vp = v_buf.index_select(0, plan.prefix_index).float().transpose(0, 1)  # [Hkv, P, D]
    q_heads = qf.view(b, hkv, g, d).permute(1, 0, 2, 3).reshape(hkv, b * g, d)
    s1 = torch.matmul(q_heads, kp) * scale  # [Hkv, b*G, P]
    lse1 = torch.logsumexp(s1, dim=-1, keepdim=True)
    o1 = torch.matmul(torch.exp(s1 - lse1), vp)  # [Hkv, b*G, D]
    o1 = o1.view(hkv, b, g, d).permute(1, 0, 2, 3)  # [b, Hkv, G, D]
    lse1 = lse1.view(hkv, b, g, 1).permute(1, 0, 2, 3)

    # per-request part
    flat = plan.suffix_index.view(-1)
    ks = k_buf.index_select(0, flat).float().view(b, -1, hkv, d).permute(0, 2, 3, 1)  # [b,Hkv,D,S]
    vs = v_buf.index_select(0, flat).float().view(b, -1, hkv, d).transpose(1, 2)  # [b,Hkv,S,D]
    s2 = torch.matmul(qf.view(b, hkv, g, d), ks) * scale  # [b, Hkv, G, S]
    s2 = s2.masked_fill(~plan.suffix_mask, float("-inf"))
    lse2 = torch.logsumexp(s2, dim=-1, keepdim=True)
    o2 = torch.matmul(torch.exp(s2 - lse2), vs)  # [b, Hkv, G, D]

    lse = torch.logaddexp(lse1, lse2)
    out = o1 * torch.exp(lse1 - lse) + o2 * torch.exp(lse2 - lse)
    return out.reshape(b, hq, d).to(q.dtype)
