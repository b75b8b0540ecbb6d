"""The unsolved pool of MBPP_Train by the number of samples n: tasks with no passing program among
the first n. n <= 10 from Table 1's 10 samples per task (results/table1), n > 10 from the 20 more
samples of the 252 tasks still unsolved at 10 (results/pool30); each an expectation over the order
of the samples (the unbiased estimator behind pass@k).

    python results/pool30/pool_curve.py
"""

import collections
import gzip
import json
from math import comb
from pathlib import Path

HERE = Path(__file__).parent


def passes(path: Path, lo: int = 311, hi: int = 974) -> dict[int, list[bool]]:
    out: dict[int, list[bool]] = collections.defaultdict(list)
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if lo <= int(r["task_id"]) <= hi:
                out[int(r["task_id"])].append(bool(r["passed"]))
    return out


first = passes(HERE.parent / "table1" / "raw" / "samples_results.jsonl.gz")
more = passes(HERE / "raw" / "samples_results.jsonl.gz")
assert all(not any(first[t]) for t in more) and len(more) == sum(1 for v in first.values() if not any(v))


def pool(n: int) -> float:
    if n <= 10:
        return sum(comb(10 - sum(v), n) / comb(10, n) for v in first.values())
    return sum(comb(20 - sum(v), n - 10) / comb(20, n - 10) for v in more.values())


print(f"MBPP_Train: {len(first)} tasks")
print("n   unsolved pool")
for n in (1, 2, 5, 10, 15, 20, 25, 30):
    print(f"{n:<3} {pool(n):6.1f}  ({100 * pool(n) / len(first):.1f}%)")
