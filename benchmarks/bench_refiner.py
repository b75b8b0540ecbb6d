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
import json
import random
import time
from pathlib import Path

from ilf.evaluation import evaluate
from ilf.extraction import STOP_SEQUENCES
from ilf.feedback.annotations import load_authors
from ilf.generation import SamplingParams, get_engine
from ilf.jsonl import load_jsonl, write_jsonl
from ilf.refine import refine_summary, sample_refinements
from ilf.tasks import default_data_dir, load_tasks, parse_ranges

RESULTS = Path(__file__).parent / "results"


def shuffled(feedback: list[dict], seed: int = 0) -> list[dict]:
    """Each record keeps its x0 but gets the feedback of another task (a derangement, seeded)."""
    rng = random.Random(f"{seed}:shuffle")
    order = list(range(len(feedback)))
    while len(order) > 1 and any(i == j for i, j in enumerate(order)):
        rng.shuffle(order)
    return [dict(fb, feedback=feedback[j]["feedback"], feedback_id=f"{fb['feedback_id']}~shuffled") for fb, j in zip(feedback, order)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("feedback", help="feedback JSONL of a run (task_id, feedback_id, program, feedback)")
    ap.add_argument("--variants", default="qwen2.5-coder-0.5b-instruct:1",
                    help="comma-separated MODEL:SHOTS (shots = human triples of MBPP_Refine in the prompt)")
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--max-new-tokens", type=int, default=192)
    ap.add_argument("--weights", default="f16")
    ap.add_argument("--shuffled", action="store_true", help="also run each variant with shuffled feedback")
    ap.add_argument("--name", default="demo")
    a = ap.parse_args()

    tasks = load_tasks("mbpp")
    feedback = load_jsonl(a.feedback)
    refine_ids = parse_ranges("refine")
    examples = [dict(x, program=x["program"].replace("\r\n", "\n"), refinement=x["refinement"].replace("\r\n", "\n"),
                     feedback=x["feedback"].replace("\r\n", "\n").strip())
                for x in load_authors(default_data_dir() / "surge_annotations.jsonl") if x["task_id"] in refine_ids]
    params = SamplingParams(n=a.n, temperature=a.temperature, top_p=0.95, max_new_tokens=a.max_new_tokens, seed=0,
                            stop=list(STOP_SEQUENCES) + ["\nOLD CODE:", "\nFEEDBACK:", "\nREFINEMENT:"])
    out_dir = RESULTS / f"refiner_{a.name}"
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for variant in a.variants.split(","):
        model, _, shots = variant.partition(":")
        for kind, fbs in [("related", feedback)] + ([("shuffled", shuffled(feedback))] if a.shuffled else []):
            tag = f"{Path(model).name}_{shots or 1}shot_{kind}"
            raw = out_dir / f"{tag}_raw.jsonl"
            t0 = time.perf_counter()
            eng = None

            def loader():
                nonlocal eng
                eng = get_engine("openvino", model, weights=a.weights)
                return eng

            sample_refinements(fbs, tasks, loader, params, raw, examples=examples, example_tasks=tasks,
                               shots=int(shots or 1), seed=0)
            if eng is not None:
                eng.close()
            seconds = time.perf_counter() - t0
            res = evaluate(load_jsonl(raw), tasks, output=out_dir / f"{tag}.jsonl")
            s = refine_summary(res, a.n)
            s.pop("per_feedback")
            row = {"variant": tag, "model": model, "shots": int(shots or 1), "feedback": kind, "seconds": seconds, **s}
            rows.append(row)
            print(f"{tag:55s} pass@1 {100 * s.get('pass@1', 0):5.1f}  1+ correct {100 * s['one_plus_correct']:5.1f}  "
                  f"tasks repaired {s['num_tasks_solved']}/{s['num_feedback']}  ({seconds:.0f} s)", flush=True)
    (RESULTS / f"refiner_{a.name}.json").write_text(json.dumps({"feedback": a.feedback, "n": a.n, "rows": rows}, indent=2) + "\n")
    write_jsonl(out_dir / "feedback.jsonl", feedback)


if __name__ == "__main__":
    main()
