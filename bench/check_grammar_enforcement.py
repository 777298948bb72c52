"""Fail-closed check of a grammar backend on the JSONSchemaBench sample: every schema it compiles
is walked by seeded random allowed tokens of a byte-level vocabulary (what a temperature-1 model
under the mask does, biased towards short outputs), and every finished output must validate
with ``jsonschema`` (formats checked). Compiles run in the server's killable compile process
under ``--timeout`` (a schema that runs past it counts as not compiled, as on the server).

    python -m plait.bench.check_grammar_enforcement [--backend llguidance] [--walks 8] [--timeout 10]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import jsonschema
from tqdm import tqdm

from plait.constrained.backends import make_compiler
from plait.constrained.compile_process import CompileProcess
from plait.constrained.grammar import CompiledGrammar, compile_stages
from plait.constrained.grammar_state import GrammarState
from plait.constrained.mask import MaskBuilder
from plait.constrained.spec import GrammarKey
from plait.constrained.vocabulary import TokenVocabulary
from plait.runtime.errors import InvalidRequestError

SAMPLE = (
    Path(__file__).resolve().parent.parent / "tests" / "constrained" / "data" / "jsonschemabench"
)
BYTES = TokenVocabulary([bytes([i]) for i in range(256)] + [None], 256, [256], "bytes")
# Bytes that close strings and containers: weighted up so walks end within ``max_bytes``.
_CLOSING = set(b'"}],0123456789tfn')


def walk(grammar: CompiledGrammar, rng: random.Random, max_bytes: int) -> str | bytes | None:
    """One walk's output (bytes when not UTF-8), or None when it did not finish in time."""
    gs = GrammarState(grammar, BYTES, [])
    builder = MaskBuilder()
    out = bytearray()
    for _ in range(max_bytes):
        allowed = [
            int(t)
            for t in (~builder.build([gs], BYTES.size).disallowed(BYTES.size)[0]).nonzero()[0]
        ]
        if not allowed:
            raise AssertionError("empty mask")
        stops = [t for t in allowed if gs.is_stop(t)]
        if stops and rng.random() < 0.5:
            return _text(out)
        ids = [t for t in allowed if not gs.is_stop(t)]
        if not ids:
            return _text(out)
        weights = [20.0 if t in _CLOSING else 1.0 for t in ids]
        t = rng.choices(ids, weights)[0]
        gs.accept(t)
        out.append(t)
    return None


def _text(out: bytearray) -> str | bytes:
    try:
        return out.decode()
    except UnicodeDecodeError:
        return bytes(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="llguidance")
    ap.add_argument("--walks", type=int, default=8)
    ap.add_argument("--max-bytes", type=int, default=600)
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds per compile stage")
    ap.add_argument(
        "--schema-seconds", type=float, default=None, help="stop walking a schema after this long"
    )
    args = ap.parse_args()
    compiler = make_compiler(args.backend, BYTES)
    proc = CompileProcess(args.backend, BYTES, memory_limit_mb=4096)
    rng = random.Random(0)
    compiled = finished = invalid = cut = 0
    for f in tqdm(sorted(SAMPLE.glob("*/*.json")), desc=args.backend):
        key = GrammarKey("json", f.read_text())
        try:
            payload = compile_stages(
                key, compiler.stages(), lambda k, stage: proc.compile(k, args.timeout, stage)
            )
            grammar = compiler.load(key, payload)
        except InvalidRequestError:
            continue
        compiled += 1
        schema = json.loads(key.spec)
        start = time.monotonic()
        for _ in range(args.walks):
            if args.schema_seconds and time.monotonic() - start > args.schema_seconds:
                cut += 1  # slow masks (outlines' first visits of large states): walks cut short
                break
            text = walk(grammar, rng, args.max_bytes)
            if text is None:
                continue
            finished += 1
            try:
                if isinstance(text, bytes):
                    raise ValueError("not UTF-8")
                jsonschema.validate(
                    json.loads(text), schema, format_checker=jsonschema.FormatChecker()
                )
            except (ValueError, jsonschema.ValidationError) as e:
                invalid += 1
                print(f"INVALID {f.parent.name}/{f.name}: {text[:200]!r}: {str(e)[:200]}")
    proc.kill()
    print(f"{args.backend}: {compiled} compiled, {finished} finished walks, {invalid} invalid")
    if cut:
        print(f"{cut} schemas walked fewer than {args.walks} times (--schema-seconds)")


if __name__ == "__main__":
    main()
