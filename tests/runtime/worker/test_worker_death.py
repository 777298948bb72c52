"""What a caller sees when the worker dies: pending requests fail with WorkerDiedError within
seconds (process exit or a silent heartbeat), and later calls raise it too; never a hang."""

from __future__ import annotations

import os
import signal
import time

import pytest

import plait
from plait.runtime.client.runtime_client import RuntimeClient
from plait.runtime.errors import WorkerDiedError
from plait.runtime.sampling_params import SamplingParams
from plait.runtime.worker.process import start_worker

GREEDY = {"temperature": 0, "ignore_eos": True}


def test_killing_the_worker_fails_pending_requests_fast(tiny_model_dir):
    w = start_worker(tiny_model_dir("llama"), max_total_tokens=1024)
    c = RuntimeClient(w.endpoint, None, is_alive=w.is_alive)
    try:
        params = SamplingParams(max_new_tokens=450, **GREEDY)
        handle = c.submit([5, 6, 7], params, stream=True)
        queued = c.submit([5, 6, 8], params)
        next(iter(handle))
        start = time.monotonic()
        os.kill(w.pid, signal.SIGKILL)
        for h in (handle, queued):
            with pytest.raises(WorkerDiedError):
                h.result(timeout=10)
        assert time.monotonic() - start < 5
        with pytest.raises(WorkerDiedError):
            c.submit([5], params)
        with pytest.raises(WorkerDiedError):
            c.stats()
    finally:
        c.close()
        w.stop()


def test_a_silent_worker_is_declared_dead_by_the_heartbeat(tiny_model_dir):
    w = start_worker(tiny_model_dir("llama"), max_total_tokens=1024)
    c = RuntimeClient(w.endpoint, None, heartbeat_timeout=1.0)  # no process handle
    try:
        handle = c.submit([5, 6, 7], SamplingParams(max_new_tokens=450, **GREEDY), stream=True)
        next(iter(handle))
        os.kill(w.pid, signal.SIGSTOP)
        start = time.monotonic()
        with pytest.raises(WorkerDiedError, match="ping"):
            handle.result(timeout=10)
        assert time.monotonic() - start < 5
    finally:
        os.kill(w.pid, signal.SIGKILL)
        c.close()
        w.stop()


def test_runtime_raises_worker_died_after_the_worker_dies(tiny_model_dir):
    rt = plait.Runtime(tiny_model_dir("llama"), max_total_tokens=512, restart_worker=False)
    try:
        out = rt.generate(
            input_ids=[5, 6, 7], sampling_params={"max_new_tokens": 3, "ignore_eos": True}
        )
        assert out["text"] is None and len(out["output_ids"]) == 3
        os.kill(rt.worker.pid, signal.SIGKILL)
        rt.worker.proc.wait(5)
        with pytest.raises(WorkerDiedError, match="worker"):
            rt.generate(input_ids=[5, 6, 7], sampling_params={"max_new_tokens": 3})
    finally:
        rt.shutdown()


def test_runtime_replaces_a_dead_worker_and_serves_again(tiny_model_dir):
    """In-flight requests fail at once with WorkerDiedError; a new worker serves after."""
    rt = plait.Runtime(tiny_model_dir("llama"), max_total_tokens=512)
    try:
        first = rt.worker
        handle = rt.submit([5, 6, 7], {"max_new_tokens": 400, **GREEDY}, stream=True)
        next(iter(handle))
        os.kill(first.pid, signal.SIGKILL)
        with pytest.raises(WorkerDiedError):
            handle.result(timeout=10)
        assert rt.wait_ready(timeout=60)
        assert rt.worker.pid != first.pid and rt.supervisor.restarts == 1
        out = rt.generate(input_ids=[5, 6, 7], sampling_params={"max_new_tokens": 3, **GREEDY})
        assert len(out["output_ids"]) == 3
    finally:
        rt.shutdown()
    assert not rt.worker.is_alive()


def test_a_crash_loop_backs_off_exponentially_up_to_a_cap():
    from plait.runtime.client.supervised_worker import RestartPolicy

    p = RestartPolicy(base_s=0.5, cap_s=30.0)
    assert [p.delay(k) for k in range(10)] == [0, 0, 0.5, 1, 2, 4, 8, 16, 30, 30]


def test_work_given_while_loading_runs_for_the_first_worker_only(tiny_model_dir):
    from plait.runtime.client.supervised_worker import SupervisedWorker
    from plait.runtime.config import EngineConfig

    calls: list[int] = []
    config = EngineConfig.from_kwargs(tiny_model_dir("llama"), max_total_tokens=512)
    supervisor = SupervisedWorker(config, while_loading=lambda: calls.append(1))
    try:
        assert calls == [1] and supervisor.tokenizer is None  # tiny model: no tokenizer
        first = supervisor.worker
        params = SamplingParams(max_new_tokens=400, **GREEDY)
        handle = supervisor.submit([5, 6, 7], params, stream=True)
        next(iter(handle))
        os.kill(first.pid, signal.SIGKILL)
        with pytest.raises(WorkerDiedError):
            handle.result(timeout=10)
        with supervisor._cond:  # notified at the death and when the replacement serves
            replaced = supervisor._cond.wait_for(
                lambda: supervisor.restarts == 1 and supervisor.status == "ready", 60
            )
        assert replaced and supervisor.worker.pid != first.pid
        assert calls == [1]  # not again for the replacement
    finally:
        supervisor.close()
