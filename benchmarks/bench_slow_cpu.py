"""Every MBPP reference solution on a CPU twice as slow: do the time limits hold?

The limits are calibrated on this machine (ilf.judge.gold_seconds: each reference's CPU time,
limit = max(timeout, GOLD_TIME_FACTOR x that)). A slower CPU is simulated without one: each
reference program is padded with a busy loop that burns its own measured CPU time again, so it
needs twice its calibrated time. Prints how many pass with the calibrated limits and how many
would pass with the bare default limit, the slowest references, and the CPU.

    python benchmarks/bench_slow_cpu.py [--factor 2.0]
"""

from __future__ import annotations

import argparse
import sys
import time

from ilf import judge, machine, sandbox
from ilf.evaluation import evaluate
from ilf.tasks import load_tasks

PAD = "\nimport time as _ilf_t\n_ilf_end = _ilf_t.process_time() + {extra}\nwhile _ilf_t.process_time() < _ilf_end:\n    pass\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--factor", type=float, default=2.0, help="how much slower the simulated CPU is")
    ap.add_argument("--timeout", type=float, default=sandbox.DEFAULT_TIMEOUT)
    args = ap.parse_args()
    print(f"CPU: {machine.describe()}")
    tasks = load_tasks("mbpp")
    t0 = time.monotonic()
    gold = judge.gold_seconds(list(tasks), progress=False)
    print(f"calibration: {len(gold)} references, {time.monotonic() - t0:.1f} s (cached after the first run)")
    slowest = sorted(gold.items(), key=lambda kv: -kv[1])[:5]
    print("slowest references (CPU s here):", ", ".join(f"{k}: {v:.2f}" for k, v in slowest))
    samples = [{"task_id": t.task_id, "program": t.gold + PAD.format(extra=(args.factor - 1) * gold[t.task_id])} for t in tasks]
    for calibrate in (True, False):
        res = evaluate(samples, tasks, timeout=args.timeout, progress=False, calibrate=calibrate)
        bad = [(r["task_id"], r["status"]) for r in res if not r["passed"]]
        label = "calibrated limits" if calibrate else f"bare {args.timeout:g} s limit"
        print(f"{label:22s}: {len(res) - len(bad)}/{len(res)} references pass at {args.factor:g}x their CPU time; failing: {bad}")


if __name__ == "__main__":
    sys.exit(main())
