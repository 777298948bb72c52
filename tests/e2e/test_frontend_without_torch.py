"""The frontend needs neither torch nor the engine: ``import plait`` stays light, and a program
runs against a real ``plait serve`` from a process whose ``sys.modules`` never gets torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

PROGRAM = textwrap.dedent(
    """
    import sys
    import plait as sgl

    assert "torch" not in sys.modules, "import plait loaded torch"

    @sgl.function
    def qa(s, question):
        s += sgl.user(question)
        s += sgl.assistant(sgl.gen("answer", max_tokens=8, temperature=0))
        s += "\\nIs that right? " + sgl.select("verdict", choices=["yes", "no"])

    sgl.set_default_backend(sgl.RuntimeEndpoint(sys.argv[1]))
    state = qa.run(question="What is the capital of France?")
    assert state["verdict"] in ("yes", "no")
    assert isinstance(state["answer"], str)
    states = qa.run_batch([{"question": "1 + 1?"}, {"question": "2 + 2?"}])
    assert all(s["verdict"] in ("yes", "no") for s in states)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers"))
    assert not loaded, loaded
    heavy = ("plait.runtime.model", "plait.runtime.worker.core", "plait.runtime.engine")
    engine = [m for m in sys.modules if m.startswith(heavy)]
    assert not engine, engine
    print("OK", state["verdict"])
    """
)


def test_import_plait_loads_no_torch() -> None:
    code = "import plait, sys; assert 'torch' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.slow
def test_a_program_runs_against_plait_serve_without_torch(plait_server: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, plait_server],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("OK")
