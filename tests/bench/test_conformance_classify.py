"""The conformance bench's classifier: a check of generated text in test_programs.py is model
quality even when the standard library raises it (``json.loads`` on text the model wrote); an
error raised inside plait is an API failure whatever its type."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from plait.bench.sglang_conformance import classify
from plait.lang.api import select


def _raised(source: str, path: Path, env: dict) -> BaseException:
    path.write_text(source)
    code = compile(source, str(path), "exec")
    try:
        exec(code, env)
        env["program"]()
    except BaseException as e:  # noqa: BLE001 - the test inspects it
        return e
    raise AssertionError("the program did not raise")


def test_json_loads_on_generated_text_is_model_quality(tmp_path):
    programs = tmp_path / "test_programs.py"
    src = 'import json\ndef program():\n    json.loads(\'{"a": "x\\n\')\n'
    e = _raised(src, programs, {})
    assert isinstance(e, json.JSONDecodeError)
    outcome = classify("t", e, programs.resolve())
    assert outcome.kind == "model_quality", outcome
    assert "test_programs.py:3" in outcome.detail


def test_assert_in_programs_is_model_quality(tmp_path):
    programs = tmp_path / "test_programs.py"
    e = _raised("def program():\n    assert 1 == 2, 'no'\n", programs, {})
    assert classify("t", e, programs.resolve()).kind == "model_quality"


def test_value_error_from_plait_is_api_failure(tmp_path):
    programs = tmp_path / "test_programs.py"
    # select() refuses empty choices with an InvalidRequestError (a ValueError) inside plait
    e = _raised("def program():\n    select('x', [])\n", programs, {"select": select})
    assert isinstance(e, ValueError)
    assert classify("t", e, programs.resolve()).kind == "api_failure"


def test_error_outside_programs_is_api_failure(tmp_path):
    programs = tmp_path / "test_programs.py"
    with pytest.raises(ValueError) as info:  # raised here, not in test_programs.py
        json.loads("{")
    assert classify("t", info.value, programs.resolve()).kind == "api_failure"
