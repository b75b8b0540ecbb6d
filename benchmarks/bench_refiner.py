"""Which π_Refine repairs π_θ's own programs? Refiner variants side by side on the same (x0, f) records.

Reads a run's feedback file (e.g. runs/demo/r1/feedback.jsonl: on-policy x0 of MBPP_Train tasks with
trace or LLM feedback), samples n refinements per record with each variant (model x shots), runs them
in the sandbox and prints pass@1, 1+ correct and |R| (tasks with a passing repair) per variant, plus
the shuffled-feedback control (each x0 paired with another task's feedback: does π_Refine use f?).
Training tasks only: choosing π_Refine here never looks at MBPP_Test.

    flock /tmp/ilf-heavy.lock python benchmarks/bench_refiner.py runs/demo/r1/feedback.jsonl \
        --variants qwen2.5-coder-0.5b-instruct:1,qwen2.5-coder-1.5b-instruct:1 [--n 6] [--shuffled]

Writes benchmarks/results/refiner_<name>.json and the raw refinements with verdicts beside it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from ilf.annotations import load_authors
from ilf.evaluation import evaluate
from ilf.extraction import STOP_SEQUENCES, extract_program
from ilf.generation import SamplingParams, get_engine
from ilf.jsonl import load_jsonl, write_jsonl
from ilf.refine import refine_summary, sample_refinements, shuffled_feedback
from ilf.tasks import default_data_dir, load_tasks, parse_ranges

RESULTS = Path(__file__).parent / "results"


def resample(feedback: list[dict], tasks, engine_loader, params: SamplingParams, raw: Path) -> None:
    """The no-feedback control: π_θ's own prompt sampled again n times on the same tasks (does
    refining with f beat simply drawing more samples?). Written as refinement records."""
    if raw.exists():
        return
    eng = engine_loader()
    prompts = [tasks[fb["task_id"]].prompt for fb in feedback]
    plain = dataclasses.replace(params, stop=list(STOP_SEQUENCES))
    outs = eng.generate(prompts, plain)
    recs = []
    for fb, comps in zip(feedback, outs):
        task = tasks[fb["task_id"]]
        for j, c in enumerate(comps):
            program = extract_program(task, c.text)
            recs.append(
                {
                    "task_id": fb["task_id"],
                    "feedback_id": fb["feedback_id"],
                    "sample_id": j,
                    "completion": c.text,
                    "refinement": program,
                    "program": program,
                }
            )
    write_jsonl(raw, recs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("feedback", help="feedback JSONL of a run (task_id, feedback_id, program, feedback)")
    ap.add_argument(
        "--variants",
        default="qwen2.5-coder-0.5b-instruct:1",
        help="comma-separated MODEL:SHOTS (shots = human triples of MBPP_Refine in the prompt; "
        "MODEL:resample = the model's plain task prompt again, no feedback: the control)",
    )
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--max-new-tokens", type=int, default=192)
    ap.add_argument("--weights", default="f16")
    ap.add_argument("--shuffled", action="store_true", help="also run each variant with shuffled feedback")
    ap.add_argument("--name", default="demo")
    ap.add_argument("--limit", type=int, default=0, help="use the first N records (by task id) only")
    a = ap.parse_args()

    tasks = load_tasks("mbpp")
    feedback = sorted(load_jsonl(a.feedback), key=lambda f: f["task_id"])
    if a.limit:
        feedback = feedback[: a.limit]
    refine_ids = parse_ranges("refine")
    examples = [
        dict(
            x,
            program=x["program"].replace("\r\n", "\n"),
            refinement=x["refinement"].replace("\r\n", "\n"),
            feedback=x["feedback"].replace("\r\n", "\n").strip(),
        )
        for x in load_authors(default_data_dir() / "surge_annotations.jsonl")
        if x["task_id"] in refine_ids
    ]
    params = SamplingParams(
        n=a.n,
        temperature=a.temperature,
        top_p=0.95,
        max_new_tokens=a.max_new_tokens,
        seed=0,
        stop=list(STOP_SEQUENCES) + ["\nOLD CODE:", "\nFEEDBACK:", "\nREFINEMENT:"],
    )
    out_dir = RESULTS / f"refiner_{a.name}"
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for variant in a.variants.split(","):
        model, _, shots = variant.partition(":")
        kinds = (
            [("resample", feedback)]
            if shots == "resample"
            else ([("related", feedback)] + ([("shuffled", shuffled_feedback(feedback))] if a.shuffled else []))
        )
        for kind, fbs in kinds:
            tag = f"{Path(model).name}_{kind}" if kind == "resample" else f"{Path(model).name}_{shots or 1}shot_{kind}"
            raw = out_dir / f"{tag}_raw.jsonl"
            t0 = time.perf_counter()
            eng = None

            def loader(model=model):
                nonlocal eng
                eng = get_engine("openvino", model, weights=a.weights)
                return eng

            if kind == "resample":
                resample(fbs, tasks, loader, params, raw)
            else:
                sample_refinements(fbs, tasks, loader, params, raw, examples=examples, example_tasks=tasks, shots=int(shots or 1), seed=0)
            if eng is not None:
                eng.close()
            seconds = time.perf_counter() - t0
            res = evaluate(load_jsonl(raw), tasks, output=out_dir / f"{tag}.jsonl")
            s = refine_summary(res, a.n)
            s.pop("per_feedback")
            row = {
                "variant": tag,
                "model": model,
                "shots": None if kind == "resample" else int(shots or 1),
                "feedback": kind,
                "seconds": seconds,
                **s,
            }
            rows.append(row)
            print(
                f"{tag:55s} pass@1 {100 * s.get('pass@1', 0):5.1f}  1+ correct {100 * s['one_plus_correct']:5.1f}  "
                f"tasks repaired {s['num_tasks_solved']}/{s['num_feedback']}  ({seconds:.0f} s)",
                flush=True,
            )
    summary = RESULTS / f"refiner_{a.name}.json"
    if summary.exists():  # rows of earlier invocations on the same records stay; a rerun replaces its variant's row
        new = {r["variant"] for r in rows}
        rows = [r for r in json.loads(summary.read_text())["rows"] if r["variant"] not in new] + rows
    summary.write_text(json.dumps({"feedback": a.feedback, "n": a.n, "limit": a.limit, "rows": rows}, indent=2) + "\n")
    write_jsonl(out_dir / "feedback.jsonl", feedback)


if __name__ == "__main__":
    main()
