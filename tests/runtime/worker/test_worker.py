"""The worker process over a real ZMQ socket: message encoding, validation at the socket,
abort, stats, and the ways it exits (shutdown, SIGTERM, parent death)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import pytest
import zmq

from plait.runtime import messages as m
from plait.runtime.worker.process import WorkerStartError, start_worker

GREEDY = {"temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def worker(tiny_model_dir):
    w = start_worker(tiny_model_dir("llama"), max_total_tokens=2048)
    yield w
    w.stop()


@pytest.fixture
def sock(worker):
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(worker.endpoint)
    yield s
    s.close(0)


def _send(sock, msg) -> None:
    sock.send(m.encode(msg))


def _recv(sock, timeout_ms: int = 10_000):
    assert sock.poll(timeout_ms), "the worker did not answer"
    return m.decode(sock.recv())


def _until_finished(sock, rid: str) -> list[m.ReqOutput]:
    outs = []
    while True:
        frame = _recv(sock)
        assert isinstance(frame, m.BatchOut), frame
        for out in frame.outputs:
            assert out.rid == rid, out
            outs.append(out)
            if out.finish_reason is not None:
                return outs


def _stats(sock) -> dict:
    _send(sock, m.StatsReq())
    out = _recv(sock)
    assert isinstance(out, m.StatsOut)
    return out.stats


# ---- messages -----------------------------------------------------------------------------

ALL = [
    m.GenerateReq("r1", [1, 2, 3], {"max_new_tokens": 4, "stop": ["x"]}, True),
    m.GenerateReq("r2", [1], {}, False, priority=-3, tenant="team-a"),
    m.AbortReq("r1"),
    m.FlushCacheReq(),
    m.StatsReq(),
    m.PingReq(),
    m.ShutdownReq(),
    m.BatchOut([m.ReqOutput("r1", 0, [7, 8], {"type": "length", "matched": None}, 3, 1)]),
    m.BatchOut(
        [
            m.ReqOutput("a", 2, [9], None, 3, 0, [-0.5], [9], [[[-0.5, 9]]]),
            m.ReqOutput("b", 0, [], {"type": "abort"}, 4, 0, error=["regex", "bad", "x"]),
        ]
    ),
    m.StartWorker({"model_path": None, "scheduler": {}}),
    m.ErrorOut("r1", "max_new_tokens", "must be >= 1", "invalid_request"),
    m.FlushCacheOut(True),
    m.StatsOut({"running": 0, "kv_usage": 0.5}),
    m.Pong({"vocab_size": 320}),
]


@pytest.mark.parametrize("msg", ALL, ids=lambda x: type(x).__name__)
def test_every_message_round_trips(msg):
    assert m.decode(m.encode(msg)) == msg


@pytest.mark.parametrize(
    "data, error",
    [
        (b"\xc1garbage", "undecodable"),
        (msgpack.packb({"tag": "PingReq"}), "array"),
        (msgpack.packb(["Pickle", 1]), "unknown message tag 'Pickle'"),
        (msgpack.packb(["AbortReq"]), "AbortReq takes 1 fields, got 0"),
        (msgpack.packb(["GenerateReq", 5, [1], {}, False]), "GenerateReq.rid must be str"),
        (msgpack.packb(["GenerateReq", "r", [1], {}, 1]), "GenerateReq.stream must be bool"),
        (
            msgpack.packb(["GenerateReq", "r", [1], {}, False, "hi", None]),
            "GenerateReq.priority must be int or NoneType",
        ),
        (msgpack.packb(["GenerateReq", "r", [1], {}, False, 1, 2]), "GenerateReq.tenant must be"),
        (
            msgpack.packb(["GenerateReq", "r", [1], {}, False, None, None, ["s"]]),
            "GenerateReq.cache_salt must be str or NoneType, got list",
        ),
        (msgpack.packb(["BatchOut", {}]), "BatchOut.outputs must be list"),
        (msgpack.packb(["BatchOut", [["r", 0, [1]]]]), "a ReqOutput takes 13 fields"),
        (
            msgpack.packb(["BatchOut", [["r", "0", [1], None, 1, 0, *[None] * 7]]]),
            "ReqOutput.start has type str",
        ),
    ],
)
def test_decode_rejects_malformed_frames_by_name(data, error):
    with pytest.raises(m.MessageError, match=error):
        m.decode(data)


# ---- serving ------------------------------------------------------------------------------


def test_garbage_is_answered_with_an_error_and_the_worker_keeps_serving(sock):
    for bad in [b"\xc1garbage", msgpack.packb(["Nope"]), msgpack.packb(["AbortReq", 3])]:
        sock.send(bad)
        err = _recv(sock)
        assert isinstance(err, m.ErrorOut) and err.kind == "invalid_request"
        assert err.field == "message"
    _send(sock, m.GenerateReq("ok", [5, 6, 7], {"max_new_tokens": 3, **GREEDY}, False))
    (out,) = _until_finished(sock, "ok")
    assert len(out.new_ids) == 3
    assert out.finish_reason == {"type": "length", "matched": None}


@pytest.mark.parametrize(
    "params, field",
    [
        ({"max_new_tokens": -1}, "max_new_tokens"),
        ({"temperature": -1}, "temperature"),
        ({"bogus": 1}, "bogus"),
        ({"n": 2}, "n"),
        # wrong types and 64-bit overflows reach the socket from any client
        ({"skip_special_tokens": "no"}, "skip_special_tokens"),
        ({"ignore_eos": "yes"}, "ignore_eos"),
        ({"stop_token_ids": 5}, "stop_token_ids"),
        ({"stop": [1]}, "stop"),
        ({"max_new_tokens": "8"}, "max_new_tokens"),
        ({"top_k": 2**64 - 1}, "top_k"),
        ({"regex": ["a"]}, "regex"),
    ],
)
def test_a_bad_request_gets_an_error_naming_its_field(sock, params, field):
    _send(sock, m.GenerateReq("bad", [5, 6], params, False))
    err = _recv(sock)
    assert err == m.ErrorOut("bad", field, err.message, "invalid_request")


def test_a_bad_tenant_or_cache_salt_is_rejected_by_name(sock):
    for tenant, salt, field in [("", None, "tenant"), (None, "s" * 1000, "cache_salt")]:
        _send(sock, m.GenerateReq("scope", [5, 6], {}, False, None, tenant, salt))
        err = _recv(sock)
        assert err == m.ErrorOut("scope", field, err.message, "invalid_request")
    _send(sock, m.GenerateReq("ok", [5, 6, 7], {"max_new_tokens": 2}, False, None, "t", "salt"))
    (out,) = _until_finished(sock, "ok")
    assert len(out.new_ids) == 2


def test_bad_token_ids_are_rejected(sock):
    for ids in [[], [5, 10_000], [5, "x"], [1] * 600]:
        _send(sock, m.GenerateReq("ids", ids, {}, False))
        err = _recv(sock)
        assert isinstance(err, m.ErrorOut) and err.field == "input_ids", err


def test_stream_sends_every_token_and_plain_sends_once(sock):
    _send(sock, m.GenerateReq("s", [9, 8, 7], {"max_new_tokens": 5, **GREEDY}, True))
    streamed = _until_finished(sock, "s")
    assert [len(o.new_ids) for o in streamed] == [1] * 5
    _send(sock, m.GenerateReq("p", [9, 8, 7], {"max_new_tokens": 5, **GREEDY}, False))
    (plain,) = _until_finished(sock, "p")
    assert plain.new_ids == [t for o in streamed for t in o.new_ids]
    assert plain.cached_tokens > 0


def test_logprobs_are_sent_as_increments(sock):
    params = {"max_new_tokens": 4, "return_logprob": True, "logprob_start_len": 0, **GREEDY}
    _send(sock, m.GenerateReq("lp", [3, 4, 5], params, True))
    outs = _until_finished(sock, "lp")
    assert [len(o.new_logprobs) for o in outs] == [1] * 4
    assert outs[0].input_logprobs is not None and len(outs[0].input_logprob_ids) == 3
    assert all(o.input_logprobs is None for o in outs[1:])
    assert [t for o in outs for t in o.new_logprob_ids] == [t for o in outs for t in o.new_ids]


def test_abort_running_and_queued_requests_frees_their_kv(sock):
    _send(sock, m.GenerateReq("long", [5, 6, 7], {"max_new_tokens": 400, **GREEDY}, True))
    (first,) = _recv(sock).outputs
    assert first.rid == "long" and first.finish_reason is None
    _send(sock, m.AbortReq("long"))
    last = _until_finished(sock, "long")[-1]
    assert last.finish_reason["type"] == "abort"
    assert last.start + len(last.new_ids) < 400
    _send(sock, m.AbortReq("no-such-request"))  # ignored
    stats = _stats(sock)
    assert (stats["running"], stats["queued"], stats["kv_used_tokens"]) == (0, 0, 0)
    assert stats["kv_idle_ok"] is True
    _send(sock, m.FlushCacheReq())
    assert _recv(sock) == m.FlushCacheOut(True)
    assert _stats(sock)["kv_cached_tokens"] == 0


def test_duplicate_live_rid_is_rejected(sock):
    _send(sock, m.GenerateReq("dup", [5, 6], {"max_new_tokens": 300, **GREEDY}, False))
    _send(sock, m.GenerateReq("dup", [5, 6], {"max_new_tokens": 3}, False))
    err = _recv(sock)
    assert isinstance(err, m.ErrorOut) and err.field == "rid"
    _send(sock, m.AbortReq("dup"))
    (out,) = _until_finished(sock, "dup")
    assert out.finish_reason["type"] == "abort"


def test_one_frame_per_client_per_step_carries_every_streamed_request(sock):
    # long enough that the three overlap however the worker's drains split the three sends
    # (with 4 tokens, a fast step let the first finish before the third arrived)
    new = 64
    params = {"max_new_tokens": new, **GREEDY}
    for i in range(3):
        _send(sock, m.GenerateReq(f"b{i}", [20 + i, 21, 22], params, True))
    records: dict[str, list[int]] = {f"b{i}": [] for i in range(3)}
    sizes = []
    finished = 0
    while finished < 3:
        frame = _recv(sock)
        assert isinstance(frame, m.BatchOut)
        assert len({o.rid for o in frame.outputs}) == len(frame.outputs)
        sizes.append(len(frame.outputs))
        for o in frame.outputs:
            assert o.start == len(records[o.rid])  # each record continues where the last ended
            records[o.rid] += o.new_ids
            finished += o.finish_reason is not None
    assert max(sizes) == 3  # the three decode together: one frame, three records
    assert all(len(ids) == new for ids in records.values())


def test_stats_count_tokens_forwards_and_cache_hits(sock):
    before = _stats(sock)
    params = {"max_new_tokens": 6, **GREEDY}
    for i in range(2):
        _send(sock, m.GenerateReq(f"st{i}", [11, 12, 13, 14, 15, 16], params, False))
        _until_finished(sock, f"st{i}")
    after = _stats(sock)
    assert after["prompt_tokens"] - before["prompt_tokens"] == 12
    assert after["generation_tokens"] - before["generation_tokens"] == 12
    assert after["cached_tokens"] - before["cached_tokens"] == 5  # the second one's prefix
    assert 0 < after["cache_hit_rate"] <= 1
    assert after["forward_count"] > before["forward_count"]
    assert after["kv_total_tokens"] == 2048


# ---- exiting ------------------------------------------------------------------------------


def _gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            state = Path(f"/proc/{pid}/status").read_text()
            if "\nState:\tZ" in state:
                return True
        except (ProcessLookupError, FileNotFoundError):
            return True
        time.sleep(0.05)
    return False


def test_shutdown_request_and_sigterm_stop_the_worker(tiny_model_dir):
    for how in ("shutdown", "sigterm"):
        w = start_worker(tiny_model_dir("llama"), max_total_tokens=512)
        try:
            if how == "sigterm":
                w.proc.send_signal(signal.SIGTERM)
            else:
                s = zmq.Context.instance().socket(zmq.DEALER)
                s.connect(w.endpoint)
                s.send(m.encode(m.ShutdownReq()))
                s.close(linger=1000)
            assert w.proc.wait(30) == 0  # a hang guard: a loaded box can take seconds
        finally:
            w.stop()


PARENT = """
import sys, time
from plait.runtime.worker.process import start_worker
w = start_worker(sys.argv[1], max_total_tokens=512)
print(w.pid, flush=True)
time.sleep(600)
"""


def test_the_worker_exits_when_its_parent_dies(tiny_model_dir):
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tiny_model_dir("llama"))],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        worker_pid = int(parent.stdout.readline())
        assert not _gone(worker_pid, within=0.3)
        parent.kill()
        parent.wait()
        assert _gone(worker_pid, within=30)  # a hang guard, not a speed test
    finally:
        parent.kill()


def test_a_worker_that_fails_to_load_reports_its_stderr(tmp_path):
    with pytest.raises(WorkerStartError, match="exited with code") as info:
        start_worker(tmp_path / "no-such-model", start_timeout=60)
    assert "no-such-model" in str(info.value)


def _new_children(procs, before: set[int]) -> set[int]:
    return set(procs.children(os.getpid())) - before


def test_work_given_while_loading_runs_with_the_process_launched(tiny_model_dir, procs):
    before = set(procs.children(os.getpid()))  # the module's worker, when it is up
    seen: list[set[int]] = []
    w = start_worker(
        tiny_model_dir("llama"),
        max_total_tokens=512,
        while_loading=lambda: seen.append(_new_children(procs, before)),
    )
    try:
        assert seen == [{w.pid}]  # ran once, the worker already launched
        assert w.info["model_path"]  # and the start still waited for it to load
    finally:
        w.stop()


def test_a_failure_while_loading_stops_the_worker_and_propagates(tiny_model_dir, procs):
    before = set(procs.children(os.getpid()))
    launched: list[int] = []

    def fail() -> None:
        launched.extend(_new_children(procs, before))
        raise KeyError("the caller's own start-up failed")

    with pytest.raises(KeyError, match="start-up failed"):
        start_worker(tiny_model_dir("llama"), max_total_tokens=512, while_loading=fail)
    assert len(launched) == 1
    assert _gone(launched[0], within=30)  # a hang guard, not a speed test
