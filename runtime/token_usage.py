"""Tokens a backend's generations used (SGLang's ``backend.token_usage``)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class TokenUsage:
    """Running totals over every ``gen`` a backend ran (thread-safe: many states add at once).
    ``prompt_tokens`` counts each request's whole prompt, cached or not, as an API bills it."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, meta_info: dict[str, Any]) -> None:
        with self._lock:
            self.prompt_tokens += int(meta_info.get("prompt_tokens") or 0)
            self.completion_tokens += int(meta_info.get("completion_tokens") or 0)

    def reset(self) -> None:
        with self._lock:
            self.prompt_tokens = 0
            self.completion_tokens = 0
