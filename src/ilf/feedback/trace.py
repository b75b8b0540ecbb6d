"""Execution-trace feedback (LeTI-style): EVAL's failing assert or exception, put into words.

A cheap automatic feedback source to compare with human and LLM feedback: it says WHAT failed
(the test, the value returned, the exception), never why or how to fix it. It reads the result
record of `ilf evaluate` (`status`, `error` = "ErrorType: message", and `failed_test` = the
failing test statement when the sandbox reported it); nothing is executed here.

    trace_feedback({"status": "failed", "error": "AssertionError: assert f(1) == 2 (got 3)",
                    "failed_test": "assert f(1) == 2"}, task)
    -> "The program fails the test `assert f(1) == 2`: it returns 3 instead of 2."
"""

from __future__ import annotations

import ast
import re
from typing import Any, Iterable, Mapping

from ilf.feedback.store import now_iso

# Values quoted in feedback are cut to this many characters (a huge list says nothing more).
MAX_VALUE_CHARS = 200
_GOT = re.compile(r"\(got (.*)\)\s*$", re.S)


def _cut(s: str, n: int = MAX_VALUE_CHARS) -> str:
    s = " ".join(s.split())
    return s if len(s) <= n else s[: n - 3] + "..."


def _split_error(error: str | None) -> tuple[str, str]:
    """'ValueError: bad value' -> ('ValueError', 'bad value')."""
    if not error:
        return "", ""
    head, sep, msg = error.partition(":")
    if sep and re.fullmatch(r"[A-Za-z_][\w.]*", head.strip()):
        return head.strip(), msg.strip()
    return "", error.strip()


def _expected(test: str) -> str | None:
    """The right side of `assert call == expected` (None for other shapes)."""
    try:
        node = ast.parse(test.strip()).body[0]
    except (SyntaxError, IndexError, ValueError):
        return None
    if isinstance(node, ast.Assert) and isinstance(node.test, ast.Compare) and len(node.test.ops) == 1:
        if isinstance(node.test.ops[0], ast.Eq):
            return ast.get_source_segment(test.strip(), node.test.comparators[0])
    return None


def trace_feedback(result: Mapping[str, Any], task: Any = None) -> str:
    """Feedback text for one failing result record (see module doc). `task` is accepted for
    symmetry with the other sources and names the function under test when available."""
    status = result.get("status") or ("passed" if result.get("passed") else "failed")
    etype, msg = _split_error(result.get("error"))
    test = (result.get("failed_test") or "").strip()
    fn = getattr(task, "entry_point", None)
    on_test = f" on the test `{_cut(test)}`" if test else ""

    if status == "passed" or result.get("passed") is True:
        return "The program passes the tests."
    if status == "timeout":
        return (
            f"The program did not finish in time{on_test}: it may loop forever or be far too slow. "
            "Make sure every loop and recursion terminates."
        )
    if etype in ("SyntaxError", "IndentationError", "TabError"):
        return f"The program is not valid Python ({etype}: {_cut(msg)}). Fix the syntax so that it runs."
    if etype == "AssertionError" or (not etype and test.startswith("assert")):
        m = _GOT.search(msg)
        got = _cut(m.group(1)) if m else None
        exp = _expected(test) if test else None
        if test and got is not None and exp is not None:
            return f"The program fails the test `{_cut(test)}`: it returns {got} instead of {_cut(exp)}."
        if test and got is not None:
            return f"The program fails the test `{_cut(test)}`: the checked expression evaluates to {got}."
        if test:
            return f"The program fails the test `{_cut(test)}`."
        return "The program returns a wrong result on the tests."
    if etype == "NameError" and fn and f"'{fn}'" in msg:
        return f"The program does not define the function `{fn}` that the tests call ({etype}: {_cut(msg)})."
    if etype:
        detail = f": {_cut(msg)}" if msg else ""
        return f"The program raises {etype}{detail}{on_test}."
    if msg:
        return f"The program fails the tests{on_test}: {_cut(msg)}."
    return f"The program fails the tests{on_test}."


def trace_feedback_records(results: Iterable[Mapping[str, Any]], tasks: Any = None, id_prefix: str = "trace") -> list[dict[str, Any]]:
    """Feedback records (source "trace") for the failing results; passing ones are skipped.
    `id_prefix` keeps the ids of different ILF rounds apart (the pipeline uses trace-rK)."""
    lookup = (tasks.get if hasattr(tasks, "get") else dict(tasks).get) if tasks is not None else (lambda _: None)
    out = []
    for rec in results:
        if rec.get("passed") is True:
            continue
        task = lookup(rec["task_id"])
        program = rec.get("program")
        if program is None and task is not None:
            program = task.prompt + rec.get("completion", "")
        out.append(
            {
                "task_id": rec["task_id"],
                "sample_id": rec.get("sample_id"),
                "program": program,
                "feedback": trace_feedback(rec, task),
                "refinement": None,
                "source": "trace",
                "author": "ilf.feedback.trace",
                "created_at": now_iso(),
                "feedback_id": f"{id_prefix}-{rec['task_id']}-{rec.get('sample_id')}",
                "edit_distance": None,
                "passed": None,
            }
        )
    return out
