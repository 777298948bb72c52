"""A server-sent event is one line for every client's line reader, whatever the model wrote:
httpx's ``aiter_lines`` splits on every ``str.splitlines`` break (U+0085, U+2028, U+2029, ...)."""

from __future__ import annotations

import json

from httpx._decoders import LineDecoder

from plait.runtime.server.streams import sse

TEXT = "a\x85b\u2028c\u2029d\x1ce\rf\ng\x0bh"


def test_an_event_is_one_line_to_httpx_and_decodes_to_the_same_text():
    lines = LineDecoder().decode(sse({"text": TEXT}))
    events = [ln for ln in lines if ln]
    assert len(events) == 1 and events[0].startswith("data: ")
    assert json.loads(events[0][len("data: ") :])["text"] == TEXT
