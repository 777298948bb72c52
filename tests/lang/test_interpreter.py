"""The interpreter's mechanics through ProgramState, on a scripted backend."""

from __future__ import annotations

import pytest

import plait as sgl
from plait.runtime.errors import InvalidRequestError


def test_run_merges_defaults_and_the_gen_wins(scripted):
    be = scripted()

    @sgl.function
    def prog(s):
        s += "A:" + sgl.gen("a", max_tokens=3, stop="\n") + " B:" + sgl.gen("b")

    st = prog.run(backend=be, temperature=0.25, max_new_tokens=7, top_p=0.5)
    assert st.text() == "A:<3> B:<7>"
    assert (st["a"], st["b"]) == ("<3>", "<7>")
    p_a, p_b = be.calls[0][2], be.calls[1][2]
    assert (p_a.max_new_tokens, p_a.stop, p_a.temperature, p_a.top_p) == (3, ["\n"], 0.25, 0.5)
    assert (p_b.max_new_tokens, p_b.stop) == (7, None)
    assert be.calls[1][1] == "A:<3> B:"  # each gen continues the text so far


def test_control_flow_on_generated_values(scripted):
    be = scripted(picks={"Tool:": " calc"}, replies={"Expr:": "2+3"})

    @sgl.function
    def agent(s):
        s += "Tool:" + sgl.select("tool", choices=[" search", " calc"])
        if s["tool"] == " calc":
            s += "\nExpr:" + sgl.gen("expr", stop="\n")
            s += "\nValue: " + str(eval(s["expr"]))
        return s["tool"]

    st = agent.run(backend=be)
    assert st.text() == "Tool: calc\nExpr:2+3\nValue: 5"
    assert st.ret_value == " calc"


def test_gen_with_choices_is_a_select(scripted):
    be = scripted()

    @sgl.function
    def prog(s):
        s += "x" + sgl.gen("c", choices=["a", "b"])

    assert prog.run(backend=be)["c"] == "b"
    assert be.calls == [("select", "x", ["a", "b"])]


def test_dtype_becomes_a_regex_with_stops(scripted):
    be = scripted(replies={"n=": "42"})

    @sgl.function
    def prog(s):
        s += "n=" + sgl.gen_int("n", stop=";")

    prog.run(backend=be)
    params = be.calls[0][2]
    assert params.regex == sgl.REGEX_INT
    assert params.stop == [";", " ", "\n"]


def test_backend_error_surfaces_on_run_with_the_program_line(scripted):
    be = scripted(fail_on="boom")

    @sgl.function
    def prog(s):
        s += "boom"
        s += sgl.gen("x", max_tokens=2)  # the failing line

    with pytest.raises(InvalidRequestError) as info:
        prog.run(backend=be)
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "Gen(name='x'" in notes
    assert "test_interpreter.py" in notes and "the failing line" in notes


def test_error_in_program_body_keeps_its_traceback(scripted):
    @sgl.function
    def prog(s):
        s += "a" + sgl.gen("x")
        return 1 / 0

    with pytest.raises(ZeroDivisionError) as info:
        prog.run(backend=scripted())
    assert info.traceback[-1].name == "prog"


def test_reading_a_variable_after_a_failure_raises(scripted):
    be = scripted(fail_on="boom")

    @sgl.function
    def prog(s):
        s += "boom" + sgl.gen("x")
        s += s["x"]

    with pytest.raises(InvalidRequestError):
        prog.run(backend=be)


def test_unknown_variable_is_a_key_error(scripted):
    @sgl.function
    def prog(s):
        s += "a"
        return s["nope"]

    with pytest.raises(KeyError, match="nope"):
        prog.run(backend=scripted())


def test_roles_use_markers_and_build_messages(scripted):
    be = scripted(system_prompt="Be nice.")

    @sgl.function
    def chat(s):
        s += sgl.user("hi")
        with s.assistant():
            s += sgl.gen("r", max_tokens=2)
        s.user("bye")

    st = chat.run(backend=be)
    assert st.text() == (
        "<system>Be nice.</system><user>hi</user><assistant><2></assistant><user>bye</user>"
    )
    assert st.messages() == [
        {"role": "system", "content": "Be nice."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "<2>"},
        {"role": "user", "content": "bye"},
    ]


def test_nested_roles_are_an_error(scripted):
    @sgl.function
    def prog(s):
        s += sgl.user_begin() + sgl.assistant_begin()

    with pytest.raises(ValueError, match="nest"):
        prog.run(backend=scripted())


def test_var_scope_and_set_var(scripted):
    @sgl.function
    def prog(s):
        with s.var_scope("part"):
            s += "x=" + sgl.gen("x", max_tokens=1)
        s += "!"
        s.set_var("mine", 5)

    st = prog.run(backend=scripted())
    assert st["part"] == "x=<1>" and st["mine"] == 5 and st.text() == "x=<1>!"


def test_fork_commits_the_prefix_then_gathers_variables(scripted):
    be = scripted(delay=0.01)

    @sgl.function
    def prog(s):
        s += "Q."
        forks = s.fork(3)
        forks += lambda i: f" {i}:" + sgl.gen("ans", max_tokens=i + 1)
        forks.join()
        s += " done"

    st = prog.run(backend=be)
    assert be.calls[0] == ("cache_prefix", "Q.")
    assert st["ans"] == ["<1>", "<2>", "<3>"]
    assert st.text() == "Q. done"


def test_fork_items_and_list_append(scripted):
    @sgl.function
    def prog(s):
        s += "P"
        forks = s.fork(2)
        forks[0] += "-a" + sgl.gen("g", max_tokens=1)
        forks[1] += "-b" + sgl.gen("g", max_tokens=2)
        forks += ["!", "?"]
        texts = [f.text() for f in forks]
        forks.join()
        return texts

    st = prog.run(backend=scripted())
    assert st.ret_value == ["P-a<1>!", "P-b<2>?"]
    assert st["g"] == ["<1>", "<2>"]


def test_join_concate_and_append(scripted):
    @sgl.function
    def prog(s):
        s += "Facts:"
        forks = s.fork(2)
        forks += lambda i: f" f{i}"
        forks.join(mode="concate_and_append")
        s += " end"

    assert prog.run(backend=scripted()).text() == "Facts: f0 f1 end"


def test_bad_join_mode(scripted):
    @sgl.function
    def prog(s):
        s += "x"
        s.fork(2).join(mode="zip")

    with pytest.raises(ValueError, match="join mode"):
        prog.run(backend=scripted())


def test_streaming_text_iter(scripted):
    be = scripted(delay=0.005, replies={"S:": "hello world"})

    @sgl.function
    def prog(s):
        s += "S:" + sgl.gen("out") + "."

    st = prog.run(backend=be, stream=True)
    chunks = list(st.text_iter("out"))
    assert "".join(chunks) == "hello world" and len(chunks) > 1
    assert st.text() == "S:hello world."
    st = prog.run(backend=be, stream=True)
    assert "".join(st.text_iter()) == "S:hello world."
    assert prog.run(backend=be).text_iter("out").__next__() == "hello world"


def test_streaming_error_reaches_the_reader(scripted):
    @sgl.function
    def prog(s):
        s += "boom" + sgl.gen("x")

    st = prog.run(backend=scripted(fail_on="boom"), stream=True)
    with pytest.raises(InvalidRequestError):
        list(st.text_iter())


def test_arguments_bind_and_defaults(scripted):
    @sgl.function
    def prog(s, a, b="B"):
        s += a + b

    be = scripted()
    assert prog.run("x", backend=be).text() == "xB"
    assert prog.bind(b="y").run("x", backend=be).text() == "xy"
    with pytest.raises(TypeError, match="missing"):
        prog.run(backend=be)
    with pytest.raises(TypeError, match="unexpected"):
        prog.run("x", c=1, backend=be)


def test_run_batch_keeps_order_and_warms_the_prefix(scripted):
    be = scripted(delay=0.01)
    head = "A long instruction that every program in the batch starts with. " * 2

    @sgl.function
    def prog(s, q):
        s += head
        s += q + sgl.gen("a", max_tokens=len(q))  # len(q) stops tracing; head was recorded

    states = prog.run_batch([{"q": "x" * i} for i in range(1, 6)], num_threads=3, backend=be)
    assert be.calls[0] == ("cache_prefix", head)
    assert [st["a"] for st in states] == [f"<{i}>" for i in range(1, 6)]
    assert [st.text() for st in states[:2]] == [head + "x<1>", head + "xx<2>"]
    be.calls.clear()
    prog.run_batch([{"q": "x"}], backend=be, progress_bar=True)
    assert [c[0] for c in be.calls] == ["generate"]  # one program: nothing to share


def test_image_and_video_are_rejected():
    with pytest.raises(NotImplementedError, match="not supported by this model"):
        sgl.image("a.png")
    with pytest.raises(NotImplementedError, match="not supported by this model"):
        sgl.video("a.mp4", 4)


def test_repr_and_html(scripted):
    @sgl.function
    def prog(s):
        s += "Say <hi>:" + sgl.gen("greet", return_logprob=True, max_tokens=2)

    st = prog.run(backend=scripted(replies={"<hi>:": "ok"}))
    assert repr(st) == "ProgramState(done, variables=[greet], text='Say <hi>:ok')"
    page = st._repr_html_()
    assert "Say &lt;hi&gt;:" in page
    assert 'class="plait-var" title="greet"' in page
    assert page.count('title="p=0.607"') == 2  # exp(-0.5), one per token


def test_html_dims_the_chat_template(scripted):
    @sgl.function
    def chat(s):
        s += sgl.user("a<b")

    page = chat.run(backend=scripted())._repr_html_()
    assert '<span class="plait-role" title="user">&lt;user&gt;</span>a&lt;b' in page


def test_set_default_backend_requires_a_backend(scripted):
    with pytest.raises(TypeError, match="not a backend"):
        sgl.set_default_backend(object())
    sgl.set_default_backend(scripted())
    try:

        @sgl.function
        def prog(s):
            s += "a" + sgl.gen("x", max_tokens=1)

        assert prog.run().text() == "a<1>"
    finally:
        sgl.global_config.default_backend = None


def test_streaming_readers_wait_for_the_program_body(scripted):
    be = scripted(delay=0.01)

    @sgl.function
    def slow(s):
        import time

        time.sleep(0.1)  # the body has submitted nothing when run() returns
        s += "a" + sgl.gen("x", max_tokens=2)
        s += "b" + s["x"]

    st = slow.run(backend=be, stream=True)
    assert st["x"] == "<2>"
    st = slow.run(backend=be, stream=True)
    assert st.text() == "a<2>b<2>"


def test_run_and_run_batch_carry_priority_and_tenant_to_every_gen(scripted):
    @sgl.function
    def ask(s, q):
        s += q + sgl.gen("a", max_tokens=3)

    be = scripted()
    ask.run(q="x?", priority=7, tenant="team-a", backend=be)
    ask.run_batch([{"q": "y?"}, {"q": "z?"}], priority=-1, backend=be, num_threads=1)
    sent = [call[2] for call in be.calls if call[0] == "generate"]
    assert [(p.priority, p.tenant) for p in sent] == [(7, "team-a"), (-1, None), (-1, None)]
    assert sent[0].request_fields() == {"priority": 7, "tenant": "team-a"}
    with pytest.raises(InvalidRequestError) as e:
        ask.run(q="x?", priority="urgent", backend=be)
    assert e.value.field == "priority"
