"""Program extraction: from a raw completion to exactly the program EVAL should run.

The paper's prompt ends with the `def` line of the function under test, so the model writes its
body and then, being an instruct model, usually goes on: example calls, prints, asserts, an
`if __name__ == "__main__":` block, prose, markdown fences. None of that may reach EVAL (a stray
print or assert can crash or, worse, pass a program for the wrong reason).

The authors cut at the first non-indented line. That rule breaks on a helper defined after the
function, on a truncated last statement, and on prose. Here:

1. cut at the first line opening a markdown fence (the engine already cut at `STOP_SEQUENCES`;
   they are not re-applied here, since one can occur inside a string literal);
2. drop trailing lines until `prompt + completion` parses (prose, a statement cut by the token limit);
3. keep, with `ast`, only: everything the prompt itself contains, the entry point's definition,
   and later top-level imports, plus the functions, classes and simple assignments the kept code
   refers to (transitively). Calls, prints, asserts, tests and `if __name__` blocks are dropped;
4. if nothing parses, fall back to the authors' rule (first non-indented line), so the record
   still holds a program (which then fails EVAL honestly).

The same rule serves π_Refine's output, which also continues `task.prompt`.
"""

from __future__ import annotations

import ast
from typing import Any

# Stop strings for sampling: they mark top-level code after the function. Cutting there saves
# tokens; `extract_program` does not depend on them (ast decides what is kept).
STOP_SEQUENCES = [
    "\nif __name__",
    "\nprint(",
    "\nassert ",
    "\n```",
    "\n#",
    "\n>>>",
    '\n"""',
    "\ndef test",
    "\nclass Test",
]

_KEEP_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _cut_fence(completion: str) -> str:
    """Text before the first line starting with a markdown fence."""
    lines = completion.split("\n")
    for i, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            return "\n".join(lines[:i])
    return completion


def _first_unindented_cut(completion: str) -> str:
    """The authors' rule: the completion up to its first non-empty, non-indented line."""
    lines = completion.split("\n")
    for i, line in enumerate(lines[1:], start=1):
        if line.strip() and not line[0].isspace():
            return "\n".join(lines[:i])
    return completion


def _parse_longest_prefix(source: str, min_lines: int) -> tuple[ast.Module, list[str]] | None:
    """Parse the longest prefix of `source` (cut at line boundaries, >= min_lines) that parses."""
    lines = source.split("\n")
    end = len(lines)
    while end >= min_lines:
        text = "\n".join(lines[:end])
        try:
            return ast.parse(text), lines[:end]
        except SyntaxError as e:
            # Retry above the offending line (or one line shorter if the error is past the end).
            bad = e.lineno or end
            end = min(end - 1, max(bad - 1, 0)) if bad <= end else end - 1
        except (ValueError, RecursionError):  # null bytes, absurd nesting
            end -= 1
    return None


def _names_used(node: ast.AST) -> set[str]:
    out = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            out.add(n.id)
        elif isinstance(n, ast.Attribute):
            base = n
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name):
                out.add(base.id)
    return out


def _defined_names(node: ast.stmt) -> set[str]:
    if isinstance(node, _KEEP_DEFS):
        return {node.name}
    if isinstance(node, (ast.Assign, ast.AnnAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return {t.id for t in targets if isinstance(t, ast.Name)}
    return set()


def _start_line(node: ast.stmt) -> int:
    decos = getattr(node, "decorator_list", None) or []
    return min([node.lineno] + [d.lineno for d in decos])


def extract_program(task: Any, completion: str) -> str:
    """The program EVAL runs: `task.prompt` + the completion cut where the entry point ends.

    `task` needs `.prompt` and `.entry_point` (an `ilf.tasks.Task`)."""
    prompt: str = task.prompt
    entry: str = task.entry_point
    completion = _cut_fence(completion.replace("\r\n", "\n"))
    source = prompt + completion
    prompt_lines = prompt.count("\n") + 1  # the line the completion starts on
    prompt_last = prompt.count("\n") if prompt.endswith("\n") else prompt_lines  # last line of prompt text
    parsed = _parse_longest_prefix(source, min_lines=prompt_lines)
    if parsed is None:
        return (prompt + _first_unindented_cut(completion)).rstrip() + "\n"
    tree, lines = parsed

    keep: list[ast.stmt] = []
    later: list[ast.stmt] = []
    entry_node = None
    for node in tree.body:
        if _start_line(node) <= prompt_last:
            # Starts inside the prompt (imports, helpers, the entry point's own def line).
            keep.append(node)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == entry:
                entry_node = node
        elif entry_node is None and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == entry:
            keep.append(node)  # a prompt that does not end in the def line (custom task files)
            entry_node = node
        else:
            later.append(node)
    if entry_node is None:
        return (prompt + _first_unindented_cut(completion)).rstrip() + "\n"

    # Later top-level code: imports always; defs/classes/assignments only if referenced.
    used: set[str] = set()
    for node in keep:
        used |= _names_used(node)
    extra: list[ast.stmt] = [n for n in later if isinstance(n, (ast.Import, ast.ImportFrom))]
    candidates = [n for n in later if isinstance(n, _KEEP_DEFS + (ast.Assign, ast.AnnAssign)) and entry not in _defined_names(n)]
    changed = True
    while changed:
        changed = False
        for n in list(candidates):
            if _defined_names(n) & used:
                extra.append(n)
                candidates.remove(n)
                used |= _names_used(n)
                changed = True
    extra.sort(key=_start_line)

    end = entry_node.end_lineno or len(lines)
    head = "\n".join(lines[:end])
    if not head.startswith(prompt):  # cannot happen when the entry def starts in the prompt
        head = prompt + "\n".join(lines[prompt_lines - 1 : end])
    parts = [head.rstrip()]
    for n in extra:
        parts.append("\n".join(lines[_start_line(n) - 1 : n.end_lineno]).rstrip())
    return "\n\n".join(parts) + "\n"
