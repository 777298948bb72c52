"""Fail closed, measured: each grammar backend decodes every schema of the JSONSchemaBench
sample (tests/constrained/data) that it compiles, at temperature 1, and every finished output is
validated with ``jsonschema`` (formats included): an invalid one is a backend that let through
what the schema forbids. The default model (SmolLM2) finishes most outputs; ``--model random``
(random weights, SmolLM2's tokenizer) makes the sampled text odd (control characters, multi-byte
pieces) but rarely closes a free string, so fewer outputs finish.

    python -m plait.bench.bench_schema_validity [--backends xgrammar,outlines] [--samples 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import jsonschema
from tqdm import tqdm

from plait.bench.cache_audit import write_audit_model
from plait.constrained.spec import GrammarKey
from plait.runtime.config import GRAMMAR_BACKENDS
from plait.runtime.engine import Engine
from plait.runtime.errors import InvalidRequestError
from plait.runtime.model.model_source import resolve_model_path

SAMPLE = (
    Path(__file__).resolve().parent.parent / "tests" / "constrained" / "data" / "jsonschemabench"
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
PROMPT = "Write one JSON instance of this JSON schema.\nSchema: {schema}\nJSON: "


def random_model_with_smollm2_tokenizer(out: Path) -> Path:
    """config.json of a small random llama (``load_format="dummy"``) and SmolLM2's tokenizer."""
    source = resolve_model_path(None)
    for name in TOKENIZER_FILES:
        shutil.copy(source / name, out / name)
    vocab_size = json.loads((source / "config.json").read_text())["vocab_size"]
    return write_audit_model(out, vocab_size)


def violations(schema: dict, text: str) -> str | None:
    """Why ``text`` is not an instance of ``schema`` (None: it is)."""
    try:
        value = json.loads(text)
    except ValueError as e:
        return f"not JSON: {e}"
    cls = jsonschema.validators.validator_for(schema)
    err = next(cls(schema, format_checker=cls.FORMAT_CHECKER).iter_errors(value), None)
    return None if err is None else f"{err.message[:120]} at {list(err.absolute_path)}"


def run_backend(
    model: Path | None, backend: str, files: list[Path], samples: int, max_new: int
) -> dict:
    """Compiles every schema first (the cache keeps them), then decodes the compiled ones
    together in one batch (continuous batching)."""
    engine = Engine(
        model,
        load_format="dummy" if model is not None else "auto",
        grammar_backend=backend,
        grammar_cache_dir=None,
        grammar_compile_timeout=10,
        max_total_tokens=64 * (max_new + 320),
    )
    cache = engine.scheduler.grammar.cache
    counts: Counter[str] = Counter()
    compiled: dict[Path, str] = {}  # file -> its schema text, read once
    for f in tqdm(files, desc=f"{backend} compile"):
        spec = f.read_text()
        try:
            cache.get(GrammarKey("json", spec)).result()
            compiled[f] = spec
        except InvalidRequestError:
            counts["refused"] += 1
    counts["compiled"] = len(compiled)
    prompts, params, names = [], [], []
    for f, spec in compiled.items():
        for s in range(samples):
            prompts.append(PROMPT.format(schema=spec[:600]))
            params.append(
                {"json_schema": spec, "temperature": 1.0, "max_new_tokens": max_new, "seed": s}
            )
            names.append(f)
    invalid: list[tuple[str, str, str]] = []
    outs = engine.generate(prompts, params) if prompts else []
    for f, out in zip(names, outs):
        if out["meta_info"]["finish_reason"]["type"] != "stop":
            counts["cut by max_new_tokens"] += 1
            continue
        counts["finished"] += 1
        why = violations(json.loads(compiled[f]), out["text"])
        if why is None:
            counts["valid"] += 1
        else:
            invalid.append((f"{f.parent.name}/{f.name}", why, out["text"][:200]))
    cache.shutdown()
    return {"counts": counts, "invalid": invalid}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backends", default=",".join(GRAMMAR_BACKENDS))
    ap.add_argument("--samples", type=int, default=3, help="outputs per schema (seeds)")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--model", choices=("smollm2", "random"), default="smollm2")
    ap.add_argument("--limit", type=int, default=0, help="only the first N schemas (0: all)")
    args = ap.parse_args()
    files = sorted(SAMPLE.glob("*/*.json"))
    if args.limit:
        files = files[: args.limit]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = random_model_with_smollm2_tokenizer(Path(tmp)) if args.model == "random" else None
        for backend in args.backends.split(","):
            r = run_backend(model, backend, files, args.samples, args.max_new_tokens)
            rows.append((backend, r))
            for name, why, text in r["invalid"]:
                print(f"INVALID {backend} {name}: {why}\n    {text!r}")
            print(f"{backend}: {dict(r['counts'])}, invalid {len(r['invalid'])}", flush=True)
    print(f"\n{len(files)} schemas, {args.samples} samples each, temperature 1, {args.model}")
    print("| backend | compiled | refused | finished | valid | invalid | cut by max_new_tokens |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for backend, r in rows:
        c = r["counts"]
        print(
            f"| {backend} | {c['compiled']} | {c['refused']} | {c['finished']} | {c['valid']} "
            f"| {len(r['invalid'])} | {c['cut by max_new_tokens']} |"
        )


if __name__ == "__main__":
    main()
