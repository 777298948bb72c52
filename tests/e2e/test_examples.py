"""Every example runs on the default model: the quickstart as the README runs it (its own
process), the others through their ``main`` on one shared Runtime, and the notebook top to
bottom in a Jupyter kernel."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

import plait

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

pytestmark = pytest.mark.slow


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"plait_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def runtime():
    rt = plait.Runtime()
    yield rt
    rt.shutdown()


def test_quickstart_script():
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Paris" in out.stdout
    assert "tokens/s" in out.stdout and "streamed:" in out.stdout


def test_few_shot_qa(runtime, capsys):
    load("few_shot_qa").main(runtime)
    out = capsys.readouterr().out
    right = int(out.strip().split("\n")[-1].split("/")[0])
    assert right >= 3, out  # the 135M model gets about half of them
    hit = int(out.strip().split("hit rate ")[-1].rstrip("%"))
    assert hit >= 50, out  # the 20-example prefix is computed once


def test_chat(runtime, capsys):
    load("chat").main(runtime)
    out = capsys.readouterr().out
    assert out.count("assistant: ") == 4
    assert "prompt tokens from the prefix cache" in out


def test_react_agent(runtime, capsys):
    module = load("react_agent")
    assert module.calculate("2 * (3 + 4)") == "14"
    assert module.calculate("__import__('os')").startswith("cannot calculate")
    module.QUESTIONS = module.QUESTIONS[:1]  # the whole program, on one input (suite time)
    module.main(runtime)
    out = capsys.readouterr().out
    assert out.count("=> answer:") == 1 and "Action: " in out


def test_tree_of_thought(runtime, capsys):
    module = load("tree_of_thought")
    module.QUESTIONS = module.QUESTIONS[:1]
    module.main(runtime)
    out = capsys.readouterr().out
    assert out.count("approach 3:") == 1 and out.count("judged best: ") == 1


def test_openai_client(plait_server, capsys):
    load("openai_client").main(plait_server)
    out = capsys.readouterr().out
    assert "Paris" in out
    assert "-> positive" in out and "-> negative" in out


def test_notebook_runs_top_to_bottom():
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(EXAMPLES / "notebook.ipynb", as_version=4)
    NotebookClient(
        nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(EXAMPLES)}}
    ).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert outputs


def test_json_extraction(runtime, capsys):
    import jsonschema

    module = load("json_extraction")
    module.TEXTS = module.TEXTS[:2]
    people = module.main(runtime)
    assert len(people) == 2
    for person in people:
        jsonschema.validate(person, module.SCHEMA)
    assert people[0]["age"] == 34
