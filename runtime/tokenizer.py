"""Loading a model directory's tokenizer (transformers is imported only when one is loaded)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load_tokenizer(path: str | Path) -> Any | None:
    """The Hugging Face tokenizer in ``path``, or None when the directory has none."""
    path = Path(path)
    if not (path / "tokenizer.json").exists() and not (path / "tokenizer_config.json").exists():
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))
