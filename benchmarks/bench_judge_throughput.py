"""EVAL throughput of the split judge vs the in-process path vs an earlier ilf, same programs, same run.

Programs: bench_sandbox.py's set (974 MBPP gold solutions + the 195 wrong CodeGen programs of the
ILF annotations, each on its MBPP asserts). Timed, alternating, each twice, pool start-up included:

- ilf.judge.judge_many (the default path: split judge, seccomp, per-job CPU accounting);
- Sandbox.run_many on (program, test) pairs (the in-process judge, same sandbox);
- the split judge and the in-process path of another ilf source tree (`--baseline-src`, e.g. a
  `git worktree` of an earlier commit), in a subprocess (its split judge only if it has one).

    python benchmarks/bench_judge_throughput.py --baseline-src /path/to/old/ilf/src [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from ilf import judge, machine, sandbox
from ilf.data import locate
from ilf.tasks import load_tasks

BASELINE = r"""
import json, sys, time
from ilf import sandbox
from ilf.tasks import load_tasks
tasks = load_tasks("mbpp")
progs = json.load(open(sys.argv[1]))
t0 = time.perf_counter()
if sys.argv[2] == "split":
    from ilf import judge
    plans = {t.task_id: judge.plan(t, sandbox.DEFAULT_TIMEOUT) for t in tasks}
    with sandbox.Sandbox(workers=0) as sb:
        got = dict(judge.judge_many(sb, [(p, plans[t]) for t, p in progs]))
else:
    with sandbox.Sandbox(workers=0) as sb:
        got = dict(sb.run_many([(p, tasks[t].test) for t, p in progs]))
print(json.dumps({"seconds": time.perf_counter() - t0, "passed": sum(got[i].passed for i in range(len(progs)))}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline-src", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "judge_throughput.json")
    args = ap.parse_args()
    tasks = load_tasks("mbpp")
    progs = [(t.task_id, t.gold) for t in tasks]
    for line in locate("authors").read_text().splitlines():
        r = json.loads(line)
        progs.append((int(r["task_id"]), r["original_model_completion"]))
    job_file = args.out.with_suffix(".jobs.json")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    job_file.write_text(json.dumps(progs))
    model = machine.describe()
    print(f"CPU: {model}; {len(progs)} programs")
    print(f"isolation: {sandbox.isolation_status()}")
    plans = {t.task_id: judge.plan(t, sandbox.DEFAULT_TIMEOUT) for t in tasks}

    def split():
        t0 = time.perf_counter()
        with sandbox.Sandbox(workers=0) as sb:
            got = dict(judge.judge_many(sb, [(p, plans[t]) for t, p in progs]))
        return time.perf_counter() - t0, sum(got[i].passed for i in range(len(progs)))

    def inprocess():
        t0 = time.perf_counter()
        with sandbox.Sandbox(workers=0) as sb:
            got = dict(sb.run_many([(p, tasks[t].test) for t, p in progs]))
        return time.perf_counter() - t0, sum(got[i].passed for i in range(len(progs)))

    def baseline(path: str):
        env = dict(os.environ, PYTHONPATH=str(args.baseline_src))
        cmd = [sys.executable, "-c", BASELINE, str(job_file), path]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        d = json.loads(r.stdout.strip().splitlines()[-1])
        return d["seconds"], d["passed"]

    fns = {
        "split judge (this ilf)": split,
        "in-process (this ilf)": inprocess,
        f"in-process ({args.baseline_src})": lambda: baseline("inprocess"),
    }
    if (args.baseline_src / "ilf" / "judge.py").exists():
        fns[f"split judge ({args.baseline_src})"] = lambda: baseline("split")
    runs: dict[str, list] = {name: [] for name in fns}
    for _ in range(2):
        for name, fn in fns.items():
            el, passed = fn()
            runs[name].append((el, passed))
            print(f"{name:50s} {el:6.2f} s  {len(progs) / el:7.1f} programs/s  passed {passed}")
    best = {k: min(e for e, _ in v) for k, v in runs.items()}
    base = best.get(f"split judge ({args.baseline_src})", best[f"in-process ({args.baseline_src})"])
    for k, v in best.items():
        print(f"best {k:45s} {v:6.2f} s  ({v / base:.2f}x the baseline's time)")
    args.out.write_text(json.dumps({"cpu": model, "programs": len(progs), "runs": runs, "best_seconds": best}, indent=1) + "\n")
    job_file.unlink()


if __name__ == "__main__":
    sys.exit(main())
