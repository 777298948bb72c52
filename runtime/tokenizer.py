"""Loading a model directory's tokenizer (transformers is imported only when one is loaded)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def load_tokenizer(path: str | Path) -> Any | None:
    """The Hugging Face tokenizer in ``path``, or None when the directory has none.

    The class is the one ``AutoTokenizer`` picks. A directory that names ``TokenizersBackend``
    itself (what transformers 5 writes, so every GGUF plait converts) is loaded through that
    class directly: resolving it through ``AutoTokenizer`` imports transformers' whole model
    registry, about 5 s of every worker start, to arrive at the same class."""
    path = Path(path)
    if not (path / "tokenizer.json").exists() and not (path / "tokenizer_config.json").exists():
        return None
    if _declares_tokenizers_backend(path):
        try:
            from transformers.tokenization_utils_tokenizers import TokenizersBackend
        except ImportError:  # transformers 4 has no such class: AutoTokenizer decides
            pass
        else:
            return TokenizersBackend.from_pretrained(str(path))
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def import_tokenizer_library() -> None:
    """Imports what ``load_tokenizer`` needs of transformers (about a second), so a caller can
    do it while something else waits, such as a worker process loading its model."""
    try:
        import transformers.tokenization_utils_tokenizers  # noqa: F401
    except ImportError:  # transformers 4: AutoTokenizer's module is the one loaded
        import transformers.models.auto.tokenization_auto  # noqa: F401


def _declares_tokenizers_backend(path: Path) -> bool:
    config_file = path / "tokenizer_config.json"
    if not config_file.exists() or not (path / "tokenizer.json").exists():
        return False
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError):
        return False
    return config.get("tokenizer_class") == "TokenizersBackend" and "auto_map" not in config
