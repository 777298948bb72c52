"""SGLang's frontend surface beyond gen/select/fork, on a scripted backend: what SGLang's own
test programs and users reach for after ``import plait as sgl``."""

from __future__ import annotations

import asyncio

import pytest

import plait as sgl
from plait.ir.sampling import GenParams


def test_the_ir_module_path_sglang_programs_import_patterns_from():
    from plait.lang.ir import REGEX_BOOL, REGEX_FLOAT, REGEX_INT, REGEX_STR

    assert (REGEX_INT, REGEX_FLOAT, REGEX_BOOL, REGEX_STR) == (
        sgl.REGEX_INT,
        sgl.REGEX_FLOAT,
        sgl.REGEX_BOOL,
        sgl.REGEX_STR,
    )


def test_the_default_backend_is_the_object_passed(scripted):
    be = scripted()
    assert sgl.get_server_info() is None and sgl.flush_cache() is None  # no backend yet
    sgl.set_default_backend(be)
    try:
        assert sgl.global_config.default_backend is be
        assert sgl.flush_cache() is True
    finally:
        sgl.global_config.default_backend = None


def test_token_usage_counts_every_gen(scripted):
    be = scripted()

    @sgl.function
    def prog(s):
        s += "a" + sgl.gen("x", max_tokens=3) + sgl.gen("y", max_tokens=4)

    be.token_usage.reset()
    prog.run(backend=be)
    assert be.token_usage.completion_tokens == len("<3>") + len("<4>")


def test_api_speculative_execution_answers_later_gens_from_one_request(scripted):
    reply = " Ann\nBirthday: May 1\nJob: cook\n"
    be = scripted(replies={"Name:": reply})

    def body(s):
        s += "Name:" + sgl.gen("name", stop="\n") + "\nBirthday:" + sgl.gen("birthday", stop="\n")
        s += "\nJob:" + sgl.gen("job", stop="\n") + "\n"

    spec = sgl.function(num_api_spec_tokens=64)(body)
    st = spec.run(backend=be)
    assert (st["name"], st["birthday"], st["job"]) == (" Ann", " May 1", " cook")
    assert [c[0] for c in be.calls] == ["generate"]
    assert be.calls[0][2].max_new_tokens == 128 and be.calls[0][2].stop is None


def test_speculation_asks_again_once_the_text_departs_from_it(scripted):
    be = scripted(replies={"Name:": " Ann\nAge: 3\n", "Town:": " Oslo\n"})

    @sgl.function(num_api_spec_tokens=16)
    def prog(s):
        s += "Name:" + sgl.gen("name", stop="\n") + "\nTown:" + sgl.gen("town", stop="\n")

    st = prog.run(backend=be)
    assert (st["name"], st["town"]) == (" Ann", " Oslo")
    assert len(be.calls) == 2


def test_gen_n_makes_the_variable_a_list_and_the_text_goes_on_with_the_first(scripted):
    be = scripted()

    @sgl.function
    def prog(s):
        s += "a" + sgl.gen("x", max_tokens=2, n=3) + "b"

    st = prog.run(backend=be)
    assert st["x"] == ["<2>", "<2>", "<2>"]
    assert st.text() == "a<2>b"
    st = prog.run(backend=be, n=1)
    assert st["x"] == ["<2>", "<2>", "<2>"]  # the gen's own n wins over run's


def test_run_n_applies_to_every_gen(scripted):
    be = scripted()

    @sgl.function
    def prog(s):
        s += "a" + sgl.gen("x", max_tokens=2)

    assert prog.run(backend=be, n=2)["x"] == ["<2>", "<2>"]


def test_separate_reasoning_splits_the_thinking_off(scripted):
    be = scripted(replies={"<assistant>": "<think>pondering</think>Paris."})

    @sgl.function
    def prog(s):
        s += sgl.user("Capital of France?")
        s += sgl.assistant(sgl.separate_reasoning(sgl.gen("answer"), model_type="qwen3"))

    st = prog.run(backend=be)
    assert st["answer"] == "Paris."
    assert st["answer_reasoning_content"] == "pondering"
    assert st.messages()[-1] == {"role": "assistant", "content": "Paris."}
    assert "think" not in st.text()
    with pytest.raises(ValueError, match="model_type"):
        sgl.separate_reasoning(sgl.gen("a"), model_type="no-such-model")


def test_copy_is_a_one_branch_fork_joined_on_exit(scripted):
    be = scripted()

    @sgl.function
    def prog(s):
        s += "start "
        with s.copy() as c:
            c += "side" + sgl.gen("x", max_tokens=1)
        s += "end"

    st = prog.run(backend=be)
    assert st["x"] == ["<1>"] and st.text() == "start end"
    assert "x" in st


class MetaStreaming:
    """A scripted backend whose stream carries meta_info: one token per character, each with
    a logprob, cumulative as a model server's client gives it."""

    def __init__(self, scripted):
        class Backend(scripted):
            def generate_stream_meta(self, prompt: str, params: GenParams):
                text = self._reply(prompt, params)
                for i, ch in enumerate(text):
                    meta = {
                        "completion_tokens": i + 1,
                        "output_token_logprobs": [(-0.1, 0, c) for c in text[: i + 1]],
                    }
                    yield ("" if ch == "|" else ch), meta

        self.backend = Backend(replies={"A:": "ab|cd"})


def test_text_async_iter_yields_chunks_with_each_ones_new_logprobs(scripted):
    be = MetaStreaming(scripted).backend

    @sgl.function
    def prog(s):
        s += "A:" + sgl.gen("answer", return_logprob=True)

    async def collect(var, meta):
        st = prog.run(backend=be, stream=True)
        return [c async for c in st.text_async_iter(var, return_meta_data=meta)], st

    chunks, st = asyncio.run(collect("answer", True))
    assert "".join(c for c, _ in chunks) == "abcd"
    seen = 0
    for _, meta in chunks:  # the "|" token gave no text: its logprob rides on the next chunk
        assert meta["output_token_logprobs_length"] == meta["completion_tokens"]
        assert len(meta["output_token_logprobs"]) == meta["completion_tokens"] - seen
        seen = meta["completion_tokens"]
    assert len(st.get_meta_info("answer")["output_token_logprobs"]) == 5  # the whole output
    whole, _ = asyncio.run(collect(None, False))
    assert "".join(whole) == "A:abcd"
