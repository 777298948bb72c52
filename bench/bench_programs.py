"""Programs per second on the SGLang paper's workload shapes, three ways:

  plait           the program below on ``plait.Runtime`` (radix cache on), run_batch
  plait-no-cache  the same program, ``Runtime(disable_radix_cache=True)``
  naive           the same program by hand over transformers: every gen re-encodes the whole
                  prompt and calls ``model.generate`` (batch size 1), every select runs one
                  forward per choice; float32 like the others

Workloads: few-shot QA (20-shot), HellaSwag-style select over 4 endings (20-shot), multi-turn
chat (4 turns), tree-of-thought (fork 3 ideas, then merge), a ReAct agent (thought, select an
action, argument, observation; up to 3 steps). All greedy.

  python bench/bench_programs.py [--workloads few-shot,select,chat,tree,react]
                                 [--systems plait,plait-no-cache,naive] [--scale 1.0]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

import plait as sgl
from plait.bench.naive_lm import NaiveLM
from plait.bench.program_data import (
    CHAT_SYSTEM,
    CHAT_TOPICS,
    HELLASWAG_QUESTIONS,
    REACT_ACTIONS,
    REACT_PREFIX,
    REACT_QUESTIONS,
    TREE_INSTRUCTION,
    hellaswag_prefix,
    observation,
)
from plait.bench.workloads import FEW_SHOT, QUESTIONS
from plait.runtime.model.model_source import resolve_model_path

FEW_SHOT_PREFIX = "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in FEW_SHOT)
HELLASWAG_PREFIX = hellaswag_prefix()

# ---- the programs, in plait (SGLang's frontend) ------------------------------------------------


@sgl.function
def few_shot_qa(s, question):
    s += FEW_SHOT_PREFIX + "Question: " + question + "\nAnswer:"
    s += sgl.gen("answer", max_tokens=16, stop="\n")


@sgl.function
def hellaswag(s, context, endings):
    s += HELLASWAG_PREFIX + context
    s += sgl.select("answer", choices=endings)


@sgl.function
def multi_turn_chat(s, questions):
    s += sgl.system(CHAT_SYSTEM)
    for i, q in enumerate(questions):
        s += sgl.user(q)
        s += sgl.assistant(sgl.gen(f"turn{i}", max_tokens=24))
    s["answer"] = s[f"turn{len(questions) - 1}"]


@sgl.function
def tree_of_thought(s, question):
    s += TREE_INSTRUCTION + "Question: " + question + "\n"
    forks = s.fork(3)
    for i, f in enumerate(forks):
        f += f"Idea {i + 1}:" + sgl.gen("idea", max_tokens=24, stop="\n")
    forks.join()
    for i, f in enumerate(forks):
        s += f"Idea {i + 1}:" + f["idea"] + "\n"
    s += "Final answer:" + sgl.gen("answer", max_tokens=16, stop="\n")


@sgl.function
def react_agent(s, question):
    s += REACT_PREFIX + "Question: " + question + "\n"
    for step in range(1, 4):
        s += f"Thought {step}:" + sgl.gen("thought", max_tokens=24, stop="\n") + "\n"
        s += f"Action {step}: " + sgl.select("action", choices=REACT_ACTIONS)
        s += "[" + sgl.gen("arg", max_tokens=12, stop=["]", "\n"]) + "]\n"
        if s["action"] == "Finish":
            break
        s += f"Observation {step}: " + observation(s["action"], s["arg"]) + "\n"
    s["answer"] = s["arg"]


# ---- the same programs by hand over transformers ----------------------------------------------


def naive_few_shot_qa(lm: NaiveLM, question: str) -> str:
    return lm.gen(FEW_SHOT_PREFIX + "Question: " + question + "\nAnswer:", 16, ["\n"])


def naive_hellaswag(lm: NaiveLM, context: str, endings: list[str]) -> str:
    return lm.select(HELLASWAG_PREFIX + context, endings)


def naive_multi_turn_chat(lm: NaiveLM, questions: list[str]) -> str:
    text = lm.role("system", CHAT_SYSTEM)
    prefix, suffix = lm.template.markers["assistant"]
    for q in questions:
        text += lm.role("user", q) + prefix
        answer = lm.gen(text, 24)
        text += answer + suffix
    return answer


def naive_tree_of_thought(lm: NaiveLM, question: str) -> str:
    text = TREE_INSTRUCTION + "Question: " + question + "\n"
    ideas = [lm.gen(text + f"Idea {i + 1}:", 24, ["\n"]) for i in range(3)]
    text += "".join(f"Idea {i + 1}:{idea}\n" for i, idea in enumerate(ideas))
    return lm.gen(text + "Final answer:", 16, ["\n"])


def naive_react_agent(lm: NaiveLM, question: str) -> str:
    text = REACT_PREFIX + "Question: " + question + "\n"
    for step in range(1, 4):
        text += f"Thought {step}:"
        text += lm.gen(text, 24, ["\n"]) + "\n"
        text += f"Action {step}: "
        action = lm.select(text, REACT_ACTIONS)
        text += action + "["
        arg = lm.gen(text, 12, ["]", "\n"])
        text += arg + "]\n"
        if action == "Finish":
            break
        text += f"Observation {step}: " + observation(action, arg) + "\n"
    return arg


# ---- running ------------------------------------------------------------------------------------


@dataclass(slots=True)
class Workload:
    program: Any
    naive: Callable[..., str]
    args: list[dict[str, Any]]


# programs per workload at --scale 1: sized so the naive baseline takes about 3 minutes
COUNTS = {"few-shot": 16, "select": 12, "chat": 8, "tree": 8, "react": 4}


def workloads(scale: float) -> dict[str, Workload]:
    def take(name: str, items: list[Any]) -> list[Any]:
        return [items[i % len(items)] for i in range(max(1, round(COUNTS[name] * scale)))]

    return {
        "few-shot": Workload(
            few_shot_qa, naive_few_shot_qa, [{"question": q} for q in take("few-shot", QUESTIONS)]
        ),
        "select": Workload(
            hellaswag,
            naive_hellaswag,
            [{"context": c, "endings": e} for c, e, _ in take("select", HELLASWAG_QUESTIONS)],
        ),
        "chat": Workload(
            multi_turn_chat,
            naive_multi_turn_chat,
            [{"questions": q} for q in take("chat", CHAT_TOPICS)],
        ),
        "tree": Workload(
            tree_of_thought,
            naive_tree_of_thought,
            [{"question": q} for q in take("tree", QUESTIONS)],
        ),
        "react": Workload(
            react_agent,
            naive_react_agent,
            [{"question": q} for q in take("react", REACT_QUESTIONS)],
        ),
    }


@dataclass(slots=True)
class Row:
    workload: str
    system: str
    programs: int
    seconds: float
    hit_rate: float | None
    answers: list[str]

    @property
    def per_second(self) -> float:
        return self.programs / self.seconds


def run_plait(name: str, w: Workload, runtime: sgl.Runtime, system: str, bar: tqdm) -> Row:
    runtime.flush_cache()
    before = runtime.stats()
    t = time.perf_counter()
    states = w.program.run_batch(w.args, backend=runtime, num_threads=len(w.args), temperature=0)
    dt = time.perf_counter() - t
    after = runtime.stats()
    prompt = after["prompt_tokens"] - before["prompt_tokens"]
    hit = (after["cached_tokens"] - before["cached_tokens"]) / max(prompt, 1)
    bar.update(len(w.args))
    return Row(name, system, len(w.args), dt, hit, [st["answer"] for st in states])


def run_naive(name: str, w: Workload, lm: NaiveLM, bar: tqdm) -> Row:
    answers = []
    t = time.perf_counter()
    for kwargs in w.args:
        answers.append(w.naive(lm, **kwargs))
        bar.update(1)
    return Row(name, "naive", len(w.args), time.perf_counter() - t, None, answers)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workloads", default="few-shot,select,chat,tree,react")
    ap.add_argument("--systems", default="plait,plait-no-cache,naive")
    ap.add_argument("--scale", type=float, default=1.0, help=f"programs per workload: {COUNTS} x")
    args = ap.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    path = resolve_model_path(None)
    all_workloads = workloads(args.scale)
    chosen = {k: all_workloads[k] for k in args.workloads.split(",")}
    systems = args.systems.split(",")
    print(
        f"# {path.name}, float32, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    )
    total = sum(len(w.args) for w in chosen.values()) * len(systems)
    rows: list[Row] = []
    with tqdm(total=total, unit="program", desc="programs") as bar:
        for system in systems:
            if system == "naive":
                lm = NaiveLM(path)
                naive_few_shot_qa(lm, "warm up?")
                for name, w in chosen.items():
                    rows.append(run_naive(name, w, lm, bar))
                    tqdm.write(_line(rows[-1]))
                del lm
                continue
            runtime = sgl.Runtime(disable_radix_cache=system == "plait-no-cache")
            try:
                runtime.generate("warm up", {"max_new_tokens": 4})
                for name, w in chosen.items():
                    rows.append(run_plait(name, w, runtime, system, bar))
                    tqdm.write(_line(rows[-1]))
            finally:
                runtime.shutdown()
    print(table(rows))


def _line(r: Row) -> str:
    hit = "" if r.hit_rate is None else f", cache hit rate {r.hit_rate:.0%}"
    return f"{r.workload:9s} {r.system:15s} {r.per_second:7.3f} programs/s ({r.programs} in {r.seconds:.1f} s{hit})"


def table(rows: list[Row]) -> str:
    by = {(r.workload, r.system): r for r in rows}
    lines = [
        "| workload | programs | plait (prog/s) | hit rate | no cache (prog/s) | hit rate "
        "| naive (prog/s) | vs no cache | vs naive | answers equal to naive |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(r.workload for r in rows):
        on, off, naive = (by.get((name, s)) for s in ("plait", "plait-no-cache", "naive"))
        cells = [name, str((on or off or naive).programs)]
        for r in (on, off):
            cells += ["-", "-"] if r is None else [f"{r.per_second:.3f}", f"{r.hit_rate:.0%}"]
        cells.append("-" if naive is None else f"{naive.per_second:.3f}")
        cells.append(f"{on.per_second / off.per_second:.1f}x" if on and off else "-")
        cells.append(f"{on.per_second / naive.per_second:.1f}x" if on and naive else "-")
        if on and naive:
            same = sum(a.strip() == b.strip() for a, b in zip(on.answers, naive.answers))
            cells.append(f"{same}/{on.programs}")
        else:
            cells.append("-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
