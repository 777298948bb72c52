"""load_tokenizer: the class and behaviour AutoTokenizer gives, without its registry import."""

from __future__ import annotations

import json

import pytest

from plait.runtime.tokenizer import load_tokenizer

TEXT = "Hello <|im_start|>user\nwhat's 2+2?<|im_end|> ünïcode 日本 Answer: yes"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]


def _same_as_auto(path) -> None:
    from transformers import AutoTokenizer

    ours, auto = load_tokenizer(path), AutoTokenizer.from_pretrained(str(path))
    assert type(ours) is type(auto)
    assert ours(TEXT).input_ids == auto(TEXT).input_ids
    assert ours.decode(ours(TEXT).input_ids) == auto.decode(auto(TEXT).input_ids)
    assert len(ours) == len(auto)
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "chat_template"):
        assert getattr(ours, attr) == getattr(auto, attr), attr
    if auto.chat_template:
        kw = {"tokenize": False, "add_generation_prompt": True}
        assert ours.apply_chat_template(MESSAGES, **kw) == auto.apply_chat_template(MESSAGES, **kw)


def test_tiny_tokenizer_matches_auto_tokenizer(tiny_lm_dir):
    _same_as_auto(tiny_lm_dir)


def test_a_tokenizers_backend_directory_skips_auto_tokenizer(tiny_lm_dir, monkeypatch):
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("AutoTokenizer imported its registry")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)
    assert load_tokenizer(tiny_lm_dir)(TEXT).input_ids


def test_a_declared_auto_map_goes_through_auto_tokenizer(tiny_lm_dir, tmp_path, monkeypatch):
    import shutil

    import transformers

    for f in tiny_lm_dir.iterdir():
        shutil.copy(f, tmp_path / f.name)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": [None, "TokenizersBackend"]}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    calls = []
    real = transformers.AutoTokenizer.from_pretrained
    monkeypatch.setattr(
        transformers.AutoTokenizer, "from_pretrained", lambda p, **k: calls.append(p) or real(p)
    )
    load_tokenizer(tmp_path)
    assert calls == [str(tmp_path)]


def test_no_tokenizer_files_is_none(tmp_path):
    assert load_tokenizer(tmp_path) is None


@pytest.mark.slow
def test_converted_smollm2_matches_auto_tokenizer():
    from plait.runtime.model.model_source import resolve_model_path

    _same_as_auto(resolve_model_path())
