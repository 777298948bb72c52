"""The notebook view of a ProgramState: the conversation, each generated value highlighted
and, where logprobs came back, every generated token's probability on hover."""

from __future__ import annotations

import html
import math

from plait.runtime.interp.interpreter import GenSpan, StreamExecutor

_STYLE = (
    "<style>.plait-state{font-family:monospace;white-space:pre-wrap;line-height:1.5}"
    ".plait-var{background:#fff3b0;border-radius:3px}"
    ".plait-role{color:#888;font-size:0.85em}"
    ".plait-tok:hover{background:#ffd166}</style>"
)


def state_to_html(ex: StreamExecutor) -> str:
    """HTML of the whole text: chat-template text dimmed (``plait-role``), generated spans in
    ``<span class="plait-var">`` titled with their variable name, and their tokens titled
    ``p=...`` when logprobs exist."""
    text = ex.text
    pieces: list[tuple[int, int, str]] = []
    for span in ex.spans:
        pieces.append((span.start, span.end, _span_html(text[span.start : span.end], span)))
    for start, end, role in ex.role_spans:
        marker = html.escape(text[start:end])
        pieces.append((start, end, f'<span class="plait-role" title="{role}">{marker}</span>'))
    out = [_STYLE, '<div class="plait-state">']
    pos = 0
    for start, end, piece in sorted(pieces):
        if start < pos or end > len(text) or start == end:
            continue
        out.append(html.escape(text[pos:start]))
        out.append(piece)
        pos = end
    out.append(html.escape(text[pos:]))
    out.append("</div>")
    return "".join(out)


def _span_html(value: str, span: GenSpan) -> str:
    title = html.escape(span.name or "(unnamed)", quote=True)
    body = _tokens_html(value, span.token_logprobs) or html.escape(value)
    return f'<span class="plait-var" title="{title}">{body}</span>'


def _tokens_html(value: str, triples: list[tuple] | None) -> str | None:
    """Per-token spans when the tokens' texts spell ``value`` (a trimmed stop string may
    follow); ``None`` otherwise."""
    if not triples or any(t[2] is None for t in triples):
        return None
    parts, pos = [], 0
    for logprob, _tid, tok in triples:
        if pos >= len(value):
            break
        piece = tok[: len(value) - pos]
        if value[pos : pos + len(piece)] != piece:
            return None
        p = math.exp(logprob) if logprob is not None else float("nan")
        parts.append(f'<span class="plait-tok" title="p={p:.3f}">{html.escape(piece)}</span>')
        pos += len(piece)
    if pos < len(value):
        return None
    return "".join(parts)
