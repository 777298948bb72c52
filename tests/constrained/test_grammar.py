"""Vocabulary conversion, compilation and its cache, jump-forward maps and typed regexes, on the
default model's tokenizer (no model weights)."""

from __future__ import annotations

import json
import time

import pytest

from plait.constrained.backends import make_compiler
from plait.constrained.grammar_cache import GrammarCache
from plait.constrained.grammar_state import GrammarState
from plait.constrained.jump_forward import build_jump_forward_map
from plait.constrained.mask import MaskBuilder
from plait.constrained.spec import GrammarKey
from plait.constrained.typed import REGEX_BOOL, REGEX_INT, REGEX_STR, dtype_to_regex
from plait.constrained.vocabulary import build_vocabulary
from plait.runtime.errors import InvalidRequestError
from plait.runtime.model.model_source import resolve_model_path
from plait.runtime.tokenizer import load_tokenizer

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(resolve_model_path(None))


@pytest.fixture(scope="module")
def vocab(tokenizer):
    return build_vocabulary(tokenizer, {0, 2}, 49152)


@pytest.fixture(scope="module", params=["xgrammar", "outlines", "llguidance", "auto"])
def compile_grammar(request, vocab):
    """key -> compiled grammar with one backend, in this process."""
    compiler = make_compiler(request.param, vocab)
    return lambda key: compiler.load(key, compiler.compile_payload(key))


def test_byte_level_vocabulary_maps_tokens_to_their_bytes(tokenizer, vocab):
    assert vocab.eos_token_id == 2 and vocab.stop_ids == [0, 2]
    for special in tokenizer.all_special_ids:
        assert vocab.token_bytes[special] is None
    space_the = tokenizer.encode(" the", add_special_tokens=False)
    assert len(space_the) == 1 and vocab.token_bytes[space_the[0]] == b" the"
    newline = tokenizer.encode("\n", add_special_tokens=False)[0]
    assert vocab.token_bytes[newline] == b"\n"
    for tid in range(17, 49152, 97):
        text = tokenizer.decode([tid])
        if "\ufffd" not in text:
            assert vocab.token_bytes[tid] == text.encode(), tid
    assert sum(b is not None for b in vocab.token_bytes) == 49152 - 17  # the ordinary tokens


def test_sentencepiece_vocabulary_uses_spaces_and_byte_fallback():
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    pieces = {"<unk>": 0, "<s>": 1, "</s>": 2, "<0x0A>": 3, "<0xE2>": 4, "\u2581the": 5, "a": 6}
    backend = Tokenizer(models.BPE(vocab=pieces, merges=[], byte_fallback=True, unk_token="<unk>"))
    backend.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    v = build_vocabulary(tok, {2}, 7)
    assert v.token_bytes == [None, None, None, b"\n", b"\xe2", b" the", b"a"]


def _disallowed(gs: GrammarState):
    return MaskBuilder().build([gs], 49152).disallowed(49152)[0]


def test_compiled_grammar_masks_and_accepts(compile_grammar, vocab, tokenizer):
    g = compile_grammar(GrammarKey("json", json.dumps(SCHEMA)))
    gs = GrammarState(g, vocab, [])
    for t in tokenizer.encode('{"name":"Bob","age":31}', add_special_tokens=False):
        assert not _disallowed(gs)[t]
        gs.accept(t)
    assert gs.is_terminal() and gs.matcher.can_end()
    mask = _disallowed(gs)
    assert not mask[0] and not mask[2] and int((~mask).sum()) == 2  # only the stop ids
    gs.accept(2)
    assert gs.done


def test_invalid_specs_raise_naming_the_field(compile_grammar):
    with pytest.raises(InvalidRequestError) as e:
        compile_grammar(GrammarKey("regex", "(a"))
    assert e.value.field == "regex"
    with pytest.raises(InvalidRequestError) as e:
        compile_grammar(GrammarKey("json", '{"type": 5}'))
    assert e.value.field == "json_schema"


@pytest.mark.parametrize("backend", ["xgrammar", "outlines", "llguidance"])
def test_cache_compiles_once_per_process_and_reloads_from_disk(vocab, tmp_path, backend):
    key = GrammarKey("json", json.dumps(SCHEMA))
    first = GrammarCache(lambda: vocab, tmp_path, backend=backend, isolate=False)
    a = first.compile_now(key)
    assert first.compile_now(key) is a and first.compiles == 1
    second = GrammarCache(lambda: vocab, tmp_path, backend=backend, isolate=False)  # restart
    t0 = time.perf_counter()
    b = second.compile_now(key)
    assert second.compiles == 0 and second.disk_hits == 1
    assert b.matcher().forced_string() == '{"name":"'
    assert time.perf_counter() - t0 < 5
    other_vocab = GrammarCache(
        lambda: build_vocabulary(vocab.tokenizer, {2}, 49152),
        tmp_path,
        backend=backend,
        isolate=False,
    )
    other_vocab.compile_now(key)
    assert other_vocab.compiles == 1  # the vocabulary is part of the key
    for c in (first, second, other_vocab):
        c.shutdown()


def test_jump_forward_map_forces_fixed_text_only():
    jm = build_jump_forward_map(r'\{"a":(true|false),"b":"[a-z]*"\}')
    s = jm.step(jm.initial, "")
    assert jm.forced_string(s) == '{"a":'
    s = jm.step(s, '{"a":t')
    assert jm.forced_string(s) == 'rue,"b":"'
    s = jm.step(s, 'rue,"b":"xy')
    assert jm.forced_string(s) == ""  # more letters or the closing quote
    assert jm.step(s, "Q") is None
    assert build_jump_forward_map(r"\p{L}+") is None  # interegular cannot parse it: no jumps


def test_jump_retokenizes_and_keeps_the_fsm_in_step(compile_grammar, vocab, tokenizer):
    g = compile_grammar(GrammarKey("json", json.dumps(SCHEMA)))
    gs = GrammarState(g, vocab, [])
    jump = gs.try_jump([], sent=0, max_len=64)
    assert tokenizer.decode(jump.new_ids) == '{"name":"' and jump.keep == 0
    out = list(jump.new_ids)
    for t in tokenizer.encode("Bob", add_special_tokens=False) + tokenizer.encode(
        '"', add_special_tokens=False
    ):
        gs.accept(t)
        out.append(t)
    assert gs.try_jump(out, sent=len(out), max_len=64) is None  # the '"' sent: it stays
    jump = gs.try_jump(out, sent=1, max_len=64)
    assert 1 <= jump.keep < len(out)  # '"' + ',"age":' retokenized
    out = out[: jump.keep] + jump.new_ids
    assert tokenizer.decode(out) == '{"name":"Bob","age":'
    assert out == tokenizer.encode('{"name":"Bob","age":', add_special_tokens=False)[-len(out) :]
    assert gs.accepted == len(out)
    for t in tokenizer.encode("31}", add_special_tokens=False):
        gs.accept(t)
    assert gs.is_terminal()


def test_typed_regexes():
    assert dtype_to_regex(int).regex == REGEX_INT and dtype_to_regex("int").stop == [" ", "\n"]
    assert dtype_to_regex(bool).regex == REGEX_BOOL and dtype_to_regex(bool).stop == []
    assert dtype_to_regex(str).regex == REGEX_STR
    assert dtype_to_regex(float).stop == [" ", "\n"]
    with pytest.raises(InvalidRequestError):
        dtype_to_regex(list)


def test_a_stop_token_the_grammar_takes_as_text_is_allowed_only_where_it_may_end(
    compile_grammar, vocab, tokenizer
):
    """``stop_token_ids`` naming a token the grammar also takes as text (a fuzzed request:
    json_object with a stop token the grammar allowed mid-object, sampled there; the worker's
    accept failed): mid-output it is excluded, where the grammar may end it ends the output."""
    (brace,) = tokenizer.encode("{", add_special_tokens=False)
    g = compile_grammar(GrammarKey("json", json.dumps({"type": "object"})))
    gs = GrammarState(g, vocab, [brace])
    assert _disallowed(gs)[brace]  # the grammar would open the object with it
    ids = tokenizer.encode('{"a":1}', add_special_tokens=False)
    assert brace not in ids  # ('{"' is one token)
    for t in ids:
        assert not _disallowed(gs)[t]
        gs.accept(t)
    assert gs.matcher.can_end() and not _disallowed(gs)[brace]  # here it may end the output
    gs.accept(brace)
    assert gs.done and gs.failure is None


def test_a_state_that_allows_only_stop_tokens_fails_the_request_by_name(compile_grammar, vocab):
    (x,) = [i for i, b in enumerate(vocab.token_bytes) if b == b"x"]
    gs = GrammarState(compile_grammar(GrammarKey("regex", "x")), vocab, [x])
    mask = _disallowed(gs)
    assert gs.done and isinstance(gs.failure, InvalidRequestError)
    assert gs.failure.field == "stop_token_ids"
    assert not mask[x] and not mask[2]  # only stop tokens: the request ends on one


def test_below_min_new_tokens_stop_tokens_wait_while_the_grammar_allows_more(
    compile_grammar, vocab, tokenizer
):
    """``hold_stop`` (an output below its ``min_new_tokens``) clears the stop tokens where the
    grammar could also go on, and leaves them where they are all it allows."""
    gs = GrammarState(compile_grammar(GrammarKey("regex", "a+")), vocab, [])
    (a,) = tokenizer.encode("a", add_special_tokens=False)
    gs.accept(a)

    def disallowed(hold: bool):
        return MaskBuilder().build([gs], 49152, [hold]).disallowed(49152)[0]

    assert not disallowed(False)[2] and not disallowed(False)[a]  # "a" may end or go on
    assert disallowed(True)[2] and not disallowed(True)[a]  # held: it goes on
    done = GrammarState(compile_grammar(GrammarKey("regex", "a")), vocab, [])
    done.accept(a)
    mask = MaskBuilder().build([done], 49152, [True]).disallowed(49152)[0]
    assert not mask[2] and mask.sum() == 49152 - 2  # only the stop ids {0, 2}: it ends
