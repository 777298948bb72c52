"""The path SGLang programs import the typed-generation patterns from (``sglang.lang.ir``):
``from plait.lang.ir import REGEX_INT`` is the same line after ``import plait as sgl``'s
rename. The IR itself is ``plait.ir``."""

from __future__ import annotations

from plait.constrained.typed import REGEX_BOOL, REGEX_FLOAT, REGEX_INT, REGEX_STR

__all__ = ["REGEX_BOOL", "REGEX_FLOAT", "REGEX_INT", "REGEX_STR"]
