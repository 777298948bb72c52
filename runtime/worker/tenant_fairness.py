"""Fair sharing between tenants by virtual token counters (VTC; Sheng et al., "Fairness in
Serving Large Language Models", OSDI'24).

Each tenant has a counter of the service it received: ``input_weight`` per prompt token
computed plus ``output_weight`` per token generated. Admission takes the backlogged tenant with
the smallest counter first. A tenant that becomes backlogged again has its counter lifted to
the smallest counter among the tenants already backlogged (or, when none is, to the counter of
the tenant served last), so time spent idle is not banked as credit. With these rules the
paper bounds the counter difference between two backlogged tenants by a constant (twice the
service one admission can add: a prompt plus its decode reservation).
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Iterable

from plait.runtime.worker.request import Req

ANONYMOUS = ""  # the tenant of a request that names none


def tenant_of(req: Req) -> str:
    return req.tenant if req.tenant is not None else ANONYMOUS


class VirtualTokenCounters:
    """Service counters per tenant, updated as the scheduler computes tokens."""

    def __init__(self, input_weight: float = 1.0, output_weight: float = 2.0) -> None:
        self.input_weight = input_weight
        self.output_weight = output_weight
        self.counters: dict[str, float] = defaultdict(float)
        self._last_served: str | None = None

    def on_arrival(self, req: Req, backlogged: Iterable[str]) -> None:
        """Called when ``req`` joins the queue; ``backlogged`` are the tenants with requests
        waiting before it. The counter lift happens only when its tenant was not among them."""
        tenant = tenant_of(req)
        others = set(backlogged)
        if tenant in others:
            return
        if others:
            floor = min(self.counters[t] for t in others)
        elif self._last_served is not None:
            floor = self.counters[self._last_served]
        else:
            return
        self.counters[tenant] = max(self.counters[tenant], floor)

    def on_prefill(self, req: Req, tokens: int) -> None:
        self._charge(req, self.input_weight * tokens)

    def on_decode(self, req: Req, tokens: int = 1) -> None:
        self._charge(req, self.output_weight * tokens)

    def _charge(self, req: Req, amount: float) -> None:
        tenant = tenant_of(req)
        self.counters[tenant] += amount
        self._last_served = tenant

    def interleave(self, ordered: list[Req]) -> list[Req]:
        """``ordered`` (the base policy's order, kept inside each tenant) re-ordered so that
        the tenant with the smallest counter goes next, each pick charging its tenant's copy of
        the counter with the request's prompt (what admitting it would cost)."""
        by_tenant: dict[str, list[Req]] = defaultdict(list)
        for req in ordered:
            by_tenant[tenant_of(req)].append(req)
        if len(by_tenant) <= 1:
            return ordered
        heap = [(self.counters[t], i, t) for i, t in enumerate(by_tenant)]
        heapq.heapify(heap)
        pos = dict.fromkeys(by_tenant, 0)
        out: list[Req] = []
        while heap:
            counter, i, tenant = heapq.heappop(heap)
            reqs = by_tenant[tenant]
            req = reqs[pos[tenant]]
            out.append(req)
            pos[tenant] += 1
            if pos[tenant] < len(reqs):
                cost = self.input_weight * (req.seq_len - len(req.prefix_indices))
                heapq.heappush(heap, (counter + cost, i, tenant))
        return out
