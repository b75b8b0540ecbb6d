"""OpenVINO prefix caching, off (ilf's default so far) and on, side by side: speed and samples.

Why: the LLM baselines' prompts are prefill-heavy. Every prompt of a stage starts with the same
few-shot examples, and each refinement prompt is its feedback prompt plus the feedback, so with
prefix caching most of the prefill is already in the KV cache. Whether samples change with it
matters as much as speed: ilf's samples must not depend on what else ran (a resumed run must match
an uninterrupted one, see INFERENCE_PRECISION in ilf/generation/openvino.py).

Workloads (seed 0, T = 0.8, top_p 0.95, ilf's stop strings):
- "llm-1shot": the 1.5B writes 1-shot feedback and then a refinement (`generate_llm_feedback`,
  the llm-1shot baseline's call) for the authors' failing programs of the first X0 MBPP_Train
  annotations, one draw each;
- "mbpp": the bundled 0.5B samples the paper's prompts of MBPP 11-18, n = 5 (EVAL's sampling).
Each workload runs with prefix caching off, then on, then on again for its last half alone (what a
resumed run does); "same as off" and "same when resumed" count identical texts.

    flock /tmp/ilf-heavy.lock python benchmarks/bench_prefix_caching.py [X0]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ilf import machine
from ilf.annotations import load_authors
from ilf.extraction import STOP_SEQUENCES
from ilf.feedback.llm import generate_llm_feedback
from ilf.generation import SamplingParams, get_engine
from ilf.models import DEFAULT_MODEL
from ilf.sandbox import Sandbox
from ilf.tasks import SPLITS, load_tasks

LLM = "qwen2.5-coder-1.5b-instruct"


def llm_workload(n_x0: int):
    tasks = load_tasks("mbpp")
    lo, hi = SPLITS["train"]
    authors = [a for a in load_authors() if lo <= int(a["task_id"]) <= hi][:n_x0]
    with Sandbox(workers=2) as sb:
        verdicts = dict(sb.run_many([(a["program"], tasks[a["task_id"]].test) for a in authors]))
    x0 = [
        {"task_id": a["task_id"], "sample_id": 0, "program": a["program"], "passed": False, "error": verdicts[i].error}
        for i, a in enumerate(authors)
    ]

    def run(eng, rows):
        recs = generate_llm_feedback(
            rows, tasks, eng, k_shot=1, with_refinement=True, seed=0, n=1, temperature=0.8, top_p=0.95, check_refinements=False
        )
        return [r["feedback"] + "\n" + r["refinement"] for r in recs]

    return x0, run


def mbpp_workload():
    tasks = load_tasks("mbpp")
    prompts = [tasks[t].prompt for t in range(11, 19)]
    params = SamplingParams(n=5, temperature=0.8, top_p=0.95, max_new_tokens=256, stop=list(STOP_SEQUENCES), seed=0)

    def run(eng, rows):
        return [c.text for o in eng.generate(rows, params) for c in o]

    return prompts, run


def measure(name: str, model: str, rows, run, per_row: int) -> list[dict]:
    out, texts = [], {}
    for caching in (False, True):
        eng = get_engine("openvino", model, prefix_caching=caching)
        run(eng, rows[:1])  # warm-up, untimed (first-call compilation)
        t0 = time.perf_counter()
        texts[caching] = run(eng, rows)
        dt = time.perf_counter() - t0
        row = {
            "workload": name,
            "prefix_caching": caching,
            "items": len(rows),
            "seconds": round(dt, 1),
            "s_per_item": round(dt / len(rows), 2),
        }
        if caching:
            half = len(rows) // 2
            resumed = run(eng, rows[half:])
            tail = texts[True][half * per_row :]
            row["same_as_off"] = f"{sum(a == b for a, b in zip(texts[False], texts[True]))}/{len(texts[True])}"
            row["same_when_resumed"] = f"{sum(a == b for a, b in zip(tail, resumed))}/{len(resumed)}"
        eng.close()
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def main() -> None:
    n_x0 = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    rows = []
    x0, run = llm_workload(n_x0)
    rows += measure("llm-1shot (1.5B, feedback + refinement)", LLM, x0, run, 1)
    prompts, run = mbpp_workload()
    rows += measure("mbpp (0.5B, n = 5)", DEFAULT_MODEL, prompts, run, 5)
    print(f"\nOpenVINO prefix caching; CPU: {machine.describe()}")
    print("| workload | prefix caching | items | s per item | same samples as off | same when resumed |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['workload']} | {'on' if r['prefix_caching'] else 'off'} | {r['items']} | {r['s_per_item']} | "
            f"{r.get('same_as_off', '')} | {r.get('same_when_resumed', '')} |"
        )
    out = Path(__file__).parent / "results" / "prefix_caching.json"
    out.write_text(json.dumps({"cpu": machine.describe(), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
