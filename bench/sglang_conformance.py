"""SGLang's own frontend test programs (``sglang/test/test_programs.py`` from the sglang wheel on
PyPI, read at run time, never copied here), run two ways on the default model:

  plait   through ``import plait as sgl`` on a ``plait.Runtime`` (the program text is SGLang's
          with ``sglang`` replaced by ``plait`` where it imports the frontend)
  sglang  through SGLang's own client, ``sglang.RuntimeEndpoint``, against ``plait serve``

Each test is classified: pass; model quality (an ``assert`` of test_programs.py, or a conversion
of generated text there, that a 135M model does not meet); API failure (anything raised
elsewhere: plait, SGLang's client, the protocol); skipped (needs what the setup lacks).

  python -m plait.bench.sglang_conformance            # both ways: prints the table
  python -m plait.bench.sglang_conformance --json     # one JSON object per way

Internal, one way per process (tests/e2e/test_sglang_conformance.py runs these):
  python -m plait.bench.sglang_conformance --way plait [--tests a,b] --json
  python -m plait.bench.sglang_conformance --way sglang --url URL [--tests a,b] --json

The wheel is fetched with ``pip download --no-deps sglang==SGLANG_VERSION`` into
``~/.cache/plait-sglang`` (``PLAIT_SGLANG_CACHE``), unzipped, and its client's light
dependencies installed next to it with ``pip install --no-deps --target``; nothing is installed
into this environment. Exit status 3: the wheel could not be fetched.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import traceback
import types
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SGLANG_VERSION = "0.5.23"
# What ``import sglang`` and its RuntimeEndpoint import, beyond what plait's test extra has.
CLIENT_DEPS = [
    "psutil==7.2.2",
    "pybase64==1.5.1",
    "pillow==13.0.0",
    "msgspec==0.23.0",
    "aiohttp==3.14.5",
    "multidict==7.2.1",
    "yarl==1.25.1",
    "propcache==0.5.4",
    "aiohappyeyeballs==2.7.1",
    "aiosignal==1.4.0",
    "frozenlist==1.8.0",
]
EXIT_UNAVAILABLE = 3

# Arguments as SGLang's own suite calls them against its server (test_srt_backend.py).
CALL_KWARGS: dict[str, dict[str, Any]] = {"test_select": {"check_answer": False}}
SKIPS: dict[str, dict[str, str]] = {
    "plait": {"test_image_qa": "needs image input; the default model is text-only"},
    "sglang": {
        "test_image_qa": "needs image input; the default model is text-only",
        "test_completion_speculative": (
            "reads token_usage, which SGLang's RuntimeEndpoint does not have (SGLang runs it "
            "on its OpenAI backend only)"
        ),
        "test_chat_completion_speculative": (
            "SGLang's client reads RuntimeEndpoint.is_chat_model, which it does not define: the "
            "executor fails before sending a request (and only warns, so the test would pass)"
        ),
    },
}
# How an ``import plait as sgl`` program reaches what test_programs.py imports from sglang.
# The two sglang.srt imports are SGLang's test helpers (a ROCm check, a tokenizer loader),
# given by the harness.
_PLAIT_IMPORTS = {
    "import sglang as sgl": "import plait as sgl",
    "from sglang.lang.ir import": "from plait.lang.ir import",
    "from sglang.srt.utils import is_hip": "from _sglang_test_helpers import is_hip",
    "from sglang.srt.utils.hf_transformers_utils import get_tokenizer": (
        "from _sglang_test_helpers import get_tokenizer"
    ),
}


@dataclass(slots=True)
class Outcome:
    test: str
    kind: str  # pass | model_quality | api_failure | skipped
    detail: str = ""


class SglangUnavailable(RuntimeError):
    pass


# ---- the wheel ---------------------------------------------------------------------------------


def cache_dir() -> Path:
    return Path(os.environ.get("PLAIT_SGLANG_CACHE", Path.home() / ".cache" / "plait-sglang"))


def fetch_sglang(version: str = SGLANG_VERSION) -> tuple[Path, Path]:
    """The unzipped ``sglang`` package's parent directory and the client's dependency directory
    (both cached); raises ``SglangUnavailable`` when pip cannot get them."""
    root = cache_dir()
    src, deps = root / version, root / f"deps-{version}"
    if not (src / "sglang" / "test" / "test_programs.py").exists():
        root.mkdir(parents=True, exist_ok=True)
        wheels = list(root.glob(f"sglang-{version}-*.whl"))
        if not wheels:
            _pip("download", "--no-deps", "-d", str(root), f"sglang=={version}")
            wheels = list(root.glob(f"sglang-{version}-*.whl"))
        if not wheels:
            raise SglangUnavailable(f"pip download sglang=={version} gave no wheel")
        with zipfile.ZipFile(wheels[0]) as z:
            z.extractall(src, [n for n in z.namelist() if n.startswith("sglang/")])
    if not (deps / ".complete").exists():
        _pip("install", "--no-deps", "--target", str(deps), *CLIENT_DEPS)
        (deps / ".complete").write_text("\n".join(CLIENT_DEPS))
    return src, deps


def _pip(*args: str) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "pip", *args, "-q"], capture_output=True, text=True, timeout=600
    )
    if r.returncode != 0:
        raise SglangUnavailable(f"pip {args[0]} failed: {r.stderr.strip()[-500:]}")


# ---- running the programs ----------------------------------------------------------------------


def test_names(module: types.ModuleType) -> list[str]:
    return [n for n in vars(module) if n.startswith("test_") and callable(getattr(module, n))]


def run_tests(module: types.ModuleType, way: str, only: list[str] | None) -> list[Outcome]:
    path = Path(module.__file__).resolve()
    outcomes = []
    for name in test_names(module):
        if only and name not in only:
            continue
        if name in SKIPS[way]:
            outcomes.append(Outcome(name, "skipped", SKIPS[way][name]))
            continue
        t0 = time.monotonic()
        try:
            getattr(module, name)(**CALL_KWARGS.get(name, {}))
        except BaseException as e:  # noqa: BLE001 - every failure is classified
            outcomes.append(classify(name, e, path))
        else:
            outcomes.append(Outcome(name, "pass"))
        # progress on stderr, one line per test: a run cut short still shows what it did
        line = {**asdict(outcomes[-1]), "seconds": round(time.monotonic() - t0, 1)}
        print(json.dumps(line), file=sys.stderr, flush=True)
    return outcomes


# Exceptions that a check of generated content raises: a failed assert, int()/float()/json on
# text that is not a number / JSON, eval() of text that is not an expression.
_CONTENT_ERRORS = (AssertionError, ValueError, SyntaxError, NameError, ZeroDivisionError)


def classify(name: str, e: BaseException, programs: Path) -> Outcome:
    """Model quality only when the exception is a content check of test_programs.py: raised in
    that file (or in text it evals), or in the standard library it called there on generated
    text (``json.loads``, ``int()``), with no frame of plait or SGLang's client in between.
    Anything raised inside plait or SGLang's client is an API failure."""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename != "<string>"]
    detail = f"{type(e).__name__}: {str(e)[:300]}"
    mine = [i for i, f in enumerate(frames) if Path(f.filename).resolve() == programs]
    if isinstance(e, _CONTENT_ERRORS) and mine:
        check = frames[mine[-1]]
        below = frames[mine[-1] + 1 :]
        if not any(_is_library_frame(f.filename) for f in below):
            return Outcome(name, "model_quality", f"{detail} (test_programs.py:{check.lineno})")
    where = frames[-1] if frames else None
    at = f" at {where.filename}:{where.lineno}" if where else ""
    return Outcome(name, "api_failure", detail + at)


def _is_library_frame(filename: str) -> bool:
    """A frame of plait or of SGLang's client: an error raised there is the API's, whatever its
    type. Only the standard library's frames (json, builtins' helpers) are not."""
    path = Path(filename).resolve()
    plait_root = Path(__file__).resolve().parent.parent
    return path.is_relative_to(plait_root) or "sglang" in path.parts


def load_plait_programs(src: Path, work: Path) -> types.ModuleType:
    """test_programs.py with its sglang imports pointed at plait (see ``_PLAIT_IMPORTS``)."""
    text = (src / "sglang" / "test" / "test_programs.py").read_text()
    for old, new in _PLAIT_IMPORTS.items():
        text = text.replace(old, new)
    left = re.findall(r".*\bsglang\b.*", text)
    if left:
        raise RuntimeError(f"test_programs.py imports more of sglang than mapped: {left}")
    work.mkdir(parents=True, exist_ok=True)
    (work / "_sglang_test_helpers.py").write_text(_HELPERS)
    path = work / "test_programs.py"
    path.write_text(text)
    sys.path.insert(0, str(work))
    module = types.ModuleType("sglang_test_programs_on_plait")
    module.__file__ = str(path)
    exec(compile(text, str(path), "exec"), module.__dict__)
    return module


_HELPERS = '''"""What test_programs.py imports from SGLang's server package, for the plait run."""


def is_hip():
    return False


def get_tokenizer(model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path)
'''


def run_plait(
    only: list[str] | None, max_total_tokens: int, quantization: str | None = None
) -> list[Outcome]:
    import plait

    src, _ = fetch_sglang()
    module = load_plait_programs(src, cache_dir() / "plait-run")
    runtime = plait.Runtime(max_total_tokens=max_total_tokens, quantization=quantization)
    try:
        plait.set_default_backend(runtime)
        return run_tests(module, "plait", only)
    finally:
        runtime.shutdown()


def run_sglang(url: str, only: list[str] | None) -> list[Outcome]:
    src, deps = fetch_sglang()
    sys.path[:0] = [str(src), str(deps)]
    import sglang as sgl  # the real one, from the wheel

    # test_gen_min_new_tokens loads a tokenizer with a helper of SGLang's server package,
    # whose module imports torchvision; the harness gives the helper, as for the plait run
    helpers = types.ModuleType("sglang.srt.utils.hf_transformers_utils")
    exec(_HELPERS, helpers.__dict__)
    sys.modules[helpers.__name__] = helpers
    from sglang.test import test_programs

    # SmolLM2's template is ChatML, which SGLang's name matching does not guess
    endpoint = sgl.RuntimeEndpoint(url, chat_template_name="chatml")
    # SGLang's suite passes an sgl.Runtime (a server it launches), whose .endpoint is this
    # RuntimeEndpoint; test_gen_min_new_tokens reads default_backend.endpoint
    endpoint.endpoint = endpoint
    sgl.set_default_backend(endpoint)
    return run_tests(test_programs, "sglang", only)


def run_examples_sglang(url: str, examples: Path) -> list[Outcome]:
    """Every program in examples/ whose ``main`` takes a backend, run through SGLang's client:
    the file's ``import plait as sgl`` becomes ``import sglang as sgl``."""
    src, deps = fetch_sglang()
    sys.path[:0] = [str(src), str(deps)]
    import sglang as sgl

    outcomes = []
    for path in sorted(examples.glob("*.py")):
        text = path.read_text()
        if "def main(runtime" not in text:
            continue
        module = types.ModuleType(f"sglang_example_{path.stem}")
        module.__file__ = str(path)
        try:
            code = compile(
                text.replace("import plait as sgl", "import sglang as sgl"), path, "exec"
            )
            exec(code, module.__dict__)
            module.main(sgl.RuntimeEndpoint(url, chat_template_name="chatml"))
        except BaseException as e:  # noqa: BLE001
            outcomes.append(Outcome(path.name, "api_failure", f"{type(e).__name__}: {e}"))
        else:
            outcomes.append(Outcome(path.name, "pass"))
    return outcomes


# ---- both ways, the table ----------------------------------------------------------------------


def _run_way(way: str, url: str | None, extra: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "plait.bench.sglang_conformance", "--way", way, "--json", *extra]
    if url:
        cmd += ["--url", url]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        raise RuntimeError(f"{way} run failed ({r.returncode}): {r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def table(results: dict[str, list[dict[str, Any]]]) -> str:
    names = [o["test"] for o in next(iter(results.values()))]
    ways = list(results)
    by = {w: {o["test"]: o for o in results[w]} for w in ways}
    head = "| test | " + " | ".join(ways) + " |\n|---|" + "---|" * len(ways)
    rows = [head]
    for n in names:
        rows.append(f"| {n} | " + " | ".join(by[w][n]["kind"] for w in ways) + " |")
    for w in ways:
        counts: dict[str, int] = {}
        for o in results[w]:
            counts[o["kind"]] = counts.get(o["kind"], 0) + 1
        rows.append(f"| **{w} total** | " + ", ".join(f"{k} {v}" for k, v in counts.items()) + " |")
    notes = [
        f"- {w} {o['test']}: {o['kind']}: {o['detail']}"
        for w in ways
        for o in results[w]
        if o["kind"] != "pass"
    ]
    return "\n".join(rows) + "\n\n" + "\n".join(notes)


@contextmanager
def plait_serve(max_total_tokens: int, quantization: str | None = None) -> Iterator[str]:
    """``plait serve`` on a free loopback port; yields its URL once it serves."""
    from plait.runtime.server.launch import serve

    quant = ["--quantization", quantization] if quantization else []
    with serve("--max-total-tokens", str(max_total_tokens), *quant, stop_timeout=30) as server:
        yield server.url


def both_ways(args: argparse.Namespace) -> None:
    extra = ["--tests", args.tests] if args.tests else []
    quant = ["--quantization", args.quantization] if args.quantization else []
    results: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    t0 = time.monotonic()
    results["plait"] = _run_way("plait", None, extra + quant)  # the server below is quantized
    seconds["plait"] = time.monotonic() - t0
    with plait_serve(args.max_total_tokens, args.quantization) as url:
        t0 = time.monotonic()
        results["sglang"] = _run_way("sglang", url, extra)
        seconds["sglang"] = time.monotonic() - t0
        examples = _run_way("examples", url, [])
    if args.json:
        print(json.dumps({"results": results, "examples": examples, "seconds": seconds}))
        return
    print(f"# sglang {SGLANG_VERSION} test_programs.py on plait (default model)\n")
    print(table(results))
    print("\nexamples/ through sglang.RuntimeEndpoint against plait serve:")
    for o in examples:
        print(f"- {o['test']}: {o['kind']} {o['detail']}")
    print("\nseconds: " + ", ".join(f"{w} {v:.0f}" for w, v in seconds.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--way", choices=["plait", "sglang", "examples"])
    ap.add_argument("--url")
    ap.add_argument("--tests", help="comma-separated test names (default: all)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--max-total-tokens", type=int, default=16384)
    ap.add_argument(
        "--quantization",
        choices=["int8", "int4"],
        help="weight-only quantized linear layers (default: the model's float32)",
    )
    args = ap.parse_args()
    only = args.tests.split(",") if args.tests else None
    try:
        fetch_sglang()
    except SglangUnavailable as e:
        print(f"sglang {SGLANG_VERSION} unavailable: {e}", file=sys.stderr)
        sys.exit(EXIT_UNAVAILABLE)
    if args.way is None:
        both_ways(args)
        return
    if args.way == "plait":
        outcomes = run_plait(only, args.max_total_tokens, args.quantization)
    elif args.way == "sglang":
        outcomes = run_sglang(args.url, only)
    elif args.way == "examples":
        outcomes = run_examples_sglang(args.url, Path(__file__).resolve().parents[1] / "examples")
    result = [asdict(o) for o in outcomes]
    if args.json:
        print(json.dumps(result))
    else:
        print(table({args.way: result}))


if __name__ == "__main__":
    main()
