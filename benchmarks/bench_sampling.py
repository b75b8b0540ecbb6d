"""Sampling speed and pass rate per engine, beside Hugging Face generate used as a user would.

Protocol (issue 3): MBPP tasks 11-42, the paper's prompt, n=10, temperature 0.8, top_p 0.95, at most
128 new tokens, ilf's stop strings (ilf.extraction.STOP_SEQUENCES). For each engine: load time,
generated tokens/s, programs/s (the fair figure: engines count stop tokens differently) and the pass
rate of the extracted programs under EVAL (ilf.evaluation -> ilf.sandbox), so a fast but broken
engine shows. The baseline is `model.generate(num_return_sequences=10, stop_strings=..., tokenizer=...)`
on the bf16 model, prompt by prompt, as a transformers user writes it.

    flock /tmp/ilf-heavy.lock python benchmarks/bench_sampling.py [--tasks 11-42] [--baseline-tasks 11-18]
                                                                  [--engines openvino,hf-generate]

HF generate runs ~8 tokens/s here, so all 32 tasks would take it over an hour: by default it runs on
the first 8 tasks (--baseline-tasks), and every other engine runs on those same tasks too (the
side-by-side rows and the speed-up) and then on all of --tasks (its figures on the full set).

Raw per-sample records and results go to benchmarks/results/sampling_<engine>_<tasks>.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

from ilf.evaluation import evaluate, summarize
from ilf.extraction import STOP_SEQUENCES, extract_program
from ilf.generation import SamplingParams, get_engine
from ilf.models import DEFAULT_MODEL, eos_token_ids, load_hf_model, resolve_model
from ilf.tasks import load_tasks

RESULTS = Path(__file__).parent / "results"


def hf_generate_baseline(model_spec, prompts, params):
    """transformers generate as documented: n return sequences + stop_strings, one prompt at a time."""
    import torch

    model, tok = load_hf_model(model_spec)
    eos = eos_token_ids(tok, model.generation_config.eos_token_id)
    outs = []
    for p in prompts:
        enc = tok(p, return_tensors="pt")
        torch.manual_seed(params.seed)
        with torch.inference_mode():
            gen = model.generate(
                **enc,
                do_sample=True,
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=0,
                num_return_sequences=params.n,
                max_new_tokens=params.max_new_tokens,
                stop_strings=params.stop,
                tokenizer=tok,
                eos_token_id=eos,
                pad_token_id=tok.pad_token_id,
            )
        plen = enc["input_ids"].shape[1]
        comps = []
        for row in gen[:, plen:].tolist():
            n = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
            text = tok.decode(row[:n], skip_special_tokens=True)
            cut = min([i for i in (text.find(s) for s in params.stop) if i >= 0], default=-1)
            comps.append((text[:cut] if cut >= 0 else text, n))
        outs.append(comps)
    return outs


def run_engine(name, model, tasks, params):
    t0 = time.perf_counter()
    prompts = [t.prompt for t in tasks]
    if name == "hf-generate":
        load = 0.0  # loading is inside; measured separately below
        tl = time.perf_counter()
        outs = hf_generate_baseline(model, prompts, params)
        wall = time.perf_counter() - tl
    else:
        eng = get_engine(name, model, **({"weights": "q8_0"} if name == "openvino" else {}))  # int8, as in docs/results.md
        load = time.perf_counter() - t0
        tl = time.perf_counter()
        res = eng.generate(prompts, params)
        wall = time.perf_counter() - tl
        outs = [[(c.text, c.num_tokens) for c in o] for o in res]
        eng.close()
    samples = []
    for task, comps in zip(tasks, outs):
        for i, (text, ntok) in enumerate(comps):
            samples.append(
                {
                    "task_id": task.task_id,
                    "sample_id": i,
                    "engine": name,
                    "completion": text,
                    "program": extract_program(task, text),
                    "num_tokens": ntok,
                }
            )
    results = evaluate(samples, tasks, progress=False)
    RESULTS.mkdir(exist_ok=True)
    with open(RESULTS / f"sampling_{name}_{tasks[0].task_id}-{tasks[-1].task_id}.jsonl", "w") as f:
        for r in results:
            f.write(json.dumps(r) + "\n")
    tokens = sum(s["num_tokens"] for s in samples)
    s = summarize(results, ks=(1, 10))
    return {
        "engine": name,
        "tasks": f"{tasks[0].task_id}-{tasks[-1].task_id}",
        "programs": len(samples),
        "load_s": round(load, 1),
        "sample_s": round(wall, 1),
        "tokens": tokens,
        "tokens_per_s": round(tokens / wall, 1),
        "programs_per_s": round(len(samples) / wall, 3),
        "pass_rate": round(sum(r["passed"] for r in results) / len(results), 3),
        "pass@1": s.get("pass@1"),
        "pass@10": s.get("pass@10"),
        "per_task_correct": {str(t["task_id"]): t["num_correct"] for t in s["per_task"]},
    }


def paired_delta(row, base, resamples=10000, seed=0):
    """Mean over shared tasks of (row's pass rate - base's), with a 95% paired bootstrap CI over tasks."""
    import numpy as np

    ids = sorted(set(row["per_task_correct"]) & set(base["per_task_correct"]))
    n_r, n_b = row["programs"] / len(row["per_task_correct"]), base["programs"] / len(base["per_task_correct"])
    d = np.array([row["per_task_correct"][i] / n_r - base["per_task_correct"][i] / n_b for i in ids])
    means = d[np.random.default_rng(seed).integers(0, len(d), (resamples, len(d)))].mean(1)
    return float(d.mean()), [float(x) for x in np.percentile(means, [2.5, 97.5])]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--tasks", default="11-42")
    ap.add_argument("--baseline-tasks", default="11-18", help="tasks for hf-generate (and side by side for the others)")
    ap.add_argument("--engines", default="openvino,hf-generate")
    ap.add_argument("--n", type=int, default=10)
    args = ap.parse_args()
    tasks = list(load_tasks("mbpp", task_ids=args.tasks))
    base_tasks = list(load_tasks("mbpp", task_ids=args.baseline_tasks))
    resolved = resolve_model(args.model)  # conversion happens before any timing
    params = SamplingParams(n=args.n, temperature=0.8, top_p=0.95, max_new_tokens=128, stop=list(STOP_SEQUENCES), seed=0)
    print(
        f"model {resolved.name}; MBPP {args.tasks} ({len(tasks)} tasks), baseline on {args.baseline_tasks} "
        f"({len(base_tasks)} tasks); n={args.n} T=0.8 top_p=0.95 <=128 tokens; {os.cpu_count()} CPUs",
        flush=True,
    )
    engines = args.engines.split(",")
    runs = [(e, base_tasks) for e in engines]  # side by side on the same tasks
    runs += [(e, tasks) for e in engines if e != "hf-generate" and [t.task_id for t in tasks] != [t.task_id for t in base_tasks]]
    rows = []
    for name, ts in runs:
        row = run_engine(name, resolved, ts, params)
        row["max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        rows.append(row)
        print(json.dumps(row), flush=True)
    base = next((r for r in rows if r["engine"] == "hf-generate"), None)
    print(
        "\n| engine | tasks | programs | load s | sample s | tokens/s | programs/s | pass rate | pass@1 | pass@10 "
        "| speed-up vs HF generate (tok/s, programs/s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        same = base is not None and r["tasks"] == base["tasks"]
        sp = f"{r['tokens_per_s'] / base['tokens_per_s']:.1f}x, {r['programs_per_s'] / base['programs_per_s']:.1f}x" if same else "-"
        print(
            f"| {r['engine']} | {r['tasks']} | {r['programs']} | {r['load_s']} | {r['sample_s']} | {r['tokens_per_s']} | "
            f"{r['programs_per_s']} | {r['pass_rate']} | {r['pass@1']} | {r['pass@10']} | {sp} |"
        )
    if base:
        for r in rows:
            if r is not base and r["tasks"] == base["tasks"]:
                m, (lo, hi) = paired_delta(r, base)
                r["delta_pass_rate_vs_hf"] = {"mean": m, "ci95": [lo, hi]}
                print(
                    f"{r['engine']} - hf-generate, pass rate on the same {len(r['per_task_correct'])} tasks: "
                    f"{100 * m:+.1f} points [95% paired bootstrap CI over tasks {100 * lo:+.1f}, {100 * hi:+.1f}]"
                )
    RESULTS.mkdir(exist_ok=True)
    with open(RESULTS / "sampling_summary.json", "w") as f:
        json.dump(
            {"tasks": args.tasks, "baseline_tasks": args.baseline_tasks, "n": args.n, "cpus": os.cpu_count(), "rows": rows}, f, indent=2
        )


if __name__ == "__main__":
    main()
