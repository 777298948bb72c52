"""The server's admission gate: a fan-out past the per-request cap is a 400 naming ``n``; load
past the in-flight caps is a 429 with Retry-After; what is admitted is released exactly once."""

from __future__ import annotations

import pytest

from plait.runtime.errors import InvalidRequestError, OverloadedError
from plait.runtime.server.admission import AdmissionGate, HttpLimits
from plait.runtime.server.error_bodies import exception_body, exception_headers


def test_fan_out_past_the_cap_is_a_400_naming_n():
    gate = AdmissionGate(HttpLimits(max_sequences_per_request=16))
    gate.check_fan_out(16)
    with pytest.raises(InvalidRequestError) as e:
        gate.check_fan_out(4 * 128)
    assert e.value.field == "n" and "512" in e.value.message and "16" in e.value.message


def test_load_past_the_caps_is_refused_with_retry_after_until_released():
    gate = AdmissionGate(HttpLimits(max_concurrent_sequences=3, max_queued_tokens=100))
    for _ in range(3):
        gate.admit(1, 10)
    with pytest.raises(OverloadedError) as e:
        gate.admit(1, 10)
    status, body = exception_body(e.value)
    assert status == 429 and body["error"]["type"] == "rate_limit_error"
    assert exception_headers(e.value) == {"Retry-After": "1"}
    assert (gate.sequences, gate.tokens, gate.rejected) == (3, 30, 1)  # nothing reserved
    gate.release(1, 10)
    gate.admit(1, 10)
    with pytest.raises(OverloadedError):
        gate.admit(0, 71)  # the token cap
    for _ in range(3):
        gate.release(1, 10)
    assert (gate.sequences, gate.tokens) == (0, 0)


def test_an_idle_server_admits_one_request_past_the_caps():
    """A request larger than the caps is not refused forever: alone, it runs."""
    gate = AdmissionGate(HttpLimits(max_concurrent_sequences=2, max_queued_tokens=10))
    gate.admit(1, 500)
    with pytest.raises(OverloadedError):
        gate.admit(1, 1)
    gate.release(1, 500)
    with pytest.raises(AssertionError):
        gate.release(1, 1)
