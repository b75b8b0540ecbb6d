"""The ILF authors' float rule against exact comparison, on the same programs, in one run.

The authors' eval_mbpp.py reads `assert X == Y` as `assert X == approx(Y)` (pytest.approx) for an
MBPP task whose first assert compares with a number; ilf compares exactly by default, as MBPP's
asserts are written, and offers the authors' rule as `eval.compare = "approx"` (configs/paper.toml).
This judges every program of a results file both ways, each twice (verdicts that change run to run
are not the rule's doing), and prints how many verdicts the rule changes, with every change.

    python benchmarks/bench_float_rule.py results/table1/raw/samples_results.jsonl.gz [--out FILE]
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

from bench_judge_agreement import judge_all  # the same way of judging a list of programs

from ilf import judge, machine
from ilf.jsonl import read_jsonl, write_json
from ilf.tasks import load_tasks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", help="MBPP results JSONL (ilf evaluate output, plain or .gz)")
    ap.add_argument("--out", help="JSON with the counts and every changed verdict")
    args = ap.parse_args()

    recs = [r for _, r in read_jsonl(args.results)]
    tasks = {t.task_id: t for t in load_tasks("mbpp")}
    under_rule = sorted({r["task_id"] for r in recs if judge.uses_approx(tasks[r["task_id"]])})
    runs, seconds = {}, {}
    for rep in (1, 2):
        for compare in judge.COMPARES:
            items = [(r["program"], judge.plan(tasks[r["task_id"]], r["time_limit"], compare=compare)) for r in recs]
            t0 = time.perf_counter()
            runs[f"{compare}-{rep}"] = judge_all(items)
            seconds[f"{compare}-{rep}"] = round(time.perf_counter() - t0, 1)
            print(f"{compare} run {rep}: {len(items)} programs in {seconds[f'{compare}-{rep}']} s", flush=True)
    flaky = sorted({i for c in judge.COMPARES for i, (a, b) in enumerate(zip(runs[f"{c}-1"], runs[f"{c}-2"])) if a.passed != b.passed})
    changed = [i for i, (a, b) in enumerate(zip(runs["exact-1"], runs["approx-1"])) if a.passed != b.passed and i not in flaky]
    rows = [
        {
            "task_id": recs[i]["task_id"],
            "sample_id": recs[i]["sample_id"],
            "exact": [runs["exact-1"][i].status, runs["exact-1"][i].error],
            "approx": [runs["approx-1"][i].status, runs["approx-1"][i].error],
        }
        for i in changed
    ]
    summary = {
        "programs": len(recs),
        "tasks": len({r["task_id"] for r in recs}),
        "tasks_under_the_rule": len(under_rule),
        "programs_under_the_rule": sum(1 for r in recs if r["task_id"] in set(under_rule)),
        "passed_exact": sum(v.passed for v in runs["exact-1"]),
        "passed_approx": sum(v.passed for v in runs["approx-1"]),
        "changed": len(changed),
        "changed_to_pass": sum(1 for i in changed if runs["approx-1"][i].passed),
        "changed_tasks": Counter(recs[i]["task_id"] for i in changed),
        "run_to_run_changes": len(flaky),
        "seconds": seconds,
        "machine": machine.describe(),
    }
    for k, v in summary.items():
        print(f"{k}: {v}")
    for r in rows:
        print(r)
    if args.out:
        write_json(args.out, {"summary": summary, "changed": rows})


if __name__ == "__main__":
    main()
