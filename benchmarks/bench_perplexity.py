"""Perplexity throughput for the Figure 3 analog: ilf.report.compute_perplexities (batched, left
padding, logits only at completion positions) in float32 and bfloat16, beside a plain baseline in the
same run: one record at a time, full logits, `model(input_ids, labels=...)` loss in float32.

Data: MBPP gold programs (prompt = the paper's task prompt, completion = the gold body), tasks
311-350 by default. Prints programs/s, completion tokens/s, peak RSS and the largest relative
difference in perplexity against the baseline.

    flock /tmp/ilf-heavy.lock python benchmarks/bench_perplexity.py [--tasks 311-350] [--model SPEC]
"""

from __future__ import annotations

import argparse
import math
import resource
import tempfile
import time
from pathlib import Path

import torch

from ilf.jsonl import load_jsonl
from ilf.models import DEFAULT_MODEL, load_hf_model
from ilf.report import completion_token_ids, compute_perplexities
from ilf.tasks import load_tasks
from ilf.text import body_after_prompt


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def baseline(model_spec: str, recs: list[dict]) -> tuple[list[float], int, float]:
    """One record at a time, full logits, the model's own masked loss (float32)."""
    model, tok = load_hf_model(model_spec, dtype="float32")
    ppls, ntok = [], 0
    t0 = time.perf_counter()
    with torch.no_grad():
        for r in recs:
            ids, start = completion_token_ids(tok, r["prompt"], r["completion"])
            x = torch.tensor([ids])
            labels = x.clone()
            labels[0, :start] = -100
            loss = model(input_ids=x, labels=labels).loss
            ppls.append(math.exp(float(loss)))
            ntok += len(ids) - start
    return ppls, ntok, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", default="311-350")
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()

    tasks = list(load_tasks("mbpp", task_ids=args.tasks))
    recs = [{"task_id": t.task_id, "prompt": t.prompt, "completion": body_after_prompt(t.gold, t.prompt)} for t in tasks]
    print(f"{len(recs)} MBPP gold programs (tasks {args.tasks}), model {args.model}, torch threads {torch.get_num_threads()}")

    base_ppl, ntok, base_s = baseline(args.model, recs)
    rows = [("baseline: per record, full logits, fp32", base_s, 0.0)]
    with tempfile.TemporaryDirectory() as d:
        for dtype in ("float32", "bfloat16"):
            out = Path(d) / f"{dtype}.jsonl"
            load_hf_model(args.model, dtype=dtype)  # warm the file cache so both runs load alike
            t0 = time.perf_counter()
            compute_perplexities(args.model, {"gold": recs}, out, batch_size=args.batch_size, dtype=dtype, progress=False)
            secs = time.perf_counter() - t0  # includes loading the model (~1-2 s)
            ppl = [r["perplexity"] for r in load_jsonl(out)]
            rel = max(abs(a - b) / b for a, b in zip(ppl, base_ppl))
            rows.append((f"ilf.report batch {args.batch_size}, {dtype} (incl. load)", secs, rel))

    print(f"\n{'method':48s} {'seconds':>8s} {'programs/s':>11s} {'tokens/s':>9s} {'max rel. diff':>14s}")
    for name, secs, rel in rows:
        print(f"{name:48s} {secs:8.1f} {len(recs) / secs:11.2f} {ntok / secs:9.0f} {rel:14.2e}")
    print(
        f"\ncompletion tokens scored: {ntok}; baseline median perplexity {sorted(base_ppl)[len(base_ppl) // 2]:.3f}; "
        f"peak RSS {peak_rss_mb():.0f} MB"
    )


if __name__ == "__main__":
    main()
