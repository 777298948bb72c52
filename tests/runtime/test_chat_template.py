"""Role markers read off Hugging Face chat templates."""

from __future__ import annotations

import copy

import pytest

from plait.runtime.chat_template import CHATML, ChatTemplate, chat_template_of

LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{{ message['content'] | trim }}{{ '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer():
    from plait.runtime.model.model_source import resolve_model_path
    from plait.runtime.tokenizer import load_tokenizer

    return load_tokenizer(resolve_model_path())


@pytest.mark.slow
def test_smollm2_markers_and_default_system_prompt(tokenizer):
    t = chat_template_of(tokenizer)
    assert t.markers == CHATML.markers
    assert t.default_system_prompt == (
        "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    )
    # the markers rebuild exactly what the template renders for a conversation
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
    ]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    system = [{"role": "system", "content": t.default_system_prompt}]
    rebuilt = "".join(
        t.markers[m["role"]][0] + m["content"] + t.markers[m["role"]][1] for m in system + messages
    )
    assert rendered == rebuilt + t.markers["assistant"][0]


@pytest.mark.slow
def test_llama3_style_template_without_default_system(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = LLAMA3
    t = chat_template_of(tok)
    bos = tok.bos_token
    assert t.markers["system"] == (
        f"{bos}<|start_header_id|>system<|end_header_id|>\n\n",
        "<|eot_id|>",
    )
    assert t.markers["user"] == ("<|start_header_id|>user<|end_header_id|>\n\n", "<|eot_id|>")
    assert t.default_system_prompt is None


def test_no_template_is_chatml_and_round_trips_as_a_dict():
    assert chat_template_of(None) is CHATML
    t = ChatTemplate({"user": ("U:", "\n")}, "be nice")
    assert ChatTemplate.from_dict(t.to_dict()) == t
