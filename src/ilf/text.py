"""Text measures shared by the app, the store, the statistics and LLM feedback.

- `normalized_edit_distance`: the authors' keep rule measure. Their `refinement_edit_distance`
  is Levenshtein(old body, new body) / len(old body), where a body is the program after the task
  prompt (checked against all 195 rows of surge_annotations.jsonl in tests). It can exceed 1.
  The annotation app applies it (the authors' < 0.5 rule).
- `bounded_edit_distance`: Levenshtein / the longer body, in [0, 1]; what π_Refine's filter uses, so
  `refine.max_edit_distance = 1.0` really keeps every refinement.
- `code_lines`: lines of a feedback text that are whole lines of Python code (the protocol asks
  for feedback in words; the app warns, the statistics count it).
- `sentences`, `word_count`: for the 1-4 sentence guideline and Table 6-style statistics.
"""

from __future__ import annotations

import ast
import functools
import re

from rapidfuzz.distance import Levenshtein


def normalize_newlines(s: str | None) -> str:
    """CRLF and CR line ends -> LF (browsers submit textareas with CRLF; files come from anywhere)."""
    return (s or "").replace("\r\n", "\n").replace("\r", "\n")


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insert/delete/substitute, unit costs), by rapidfuzz (C++, bit-parallel)."""
    return Levenshtein.distance(a, b)


def body(program: str, prefix: str | None) -> str:
    """The part of a program after the task prompt (the whole program when it does not start with it)."""
    if prefix and program.startswith(prefix):
        return program[len(prefix) :]
    return program


def normalized_edit_distance(old: str, new: str, prefix: str | None = None) -> float:
    """Levenshtein(old body, new body) / len(old body): the authors' `refinement_edit_distance`.

    `prefix` (the task prompt) is removed from both programs when both start with it, so editing
    the program an annotator was shown is measured on the code the model wrote."""
    o, n = _bodies(old, new, prefix)
    return levenshtein(o, n) / max(1, len(o))


def bounded_edit_distance(old: str, new: str, prefix: str | None = None) -> float:
    """Levenshtein(old body, new body) / max(len(old body), len(new body)): 0 = same, 1 = nothing shared."""
    o, n = _bodies(old, new, prefix)
    return levenshtein(o, n) / max(1, len(o), len(n))


def _bodies(old: str, new: str, prefix: str | None) -> tuple[str, str]:
    """Both programs after the task prompt, when both start with it; else both whole."""
    if prefix and not (old.startswith(prefix) and new.startswith(prefix)):
        prefix = None
    return body(old, prefix), body(new, prefix)


# -- code inside feedback ----------------------------------------------------------------------

_BLOCK_HEADER = re.compile(r"^(def|class|for|while|if|elif|else|try|except|finally|with)\b.*:$")
_CODE_CHARS = re.compile(r"[=()\[\]]|\breturn\b|\bimport\b")


def is_code_line(line: str) -> bool:
    """True when a line of feedback is a whole line of Python rather than prose.

    A line counts when it parses as Python (a block header like `for i in x:` is completed with
    a body first) and is more than a bare word or constant: prose almost never parses, and
    `x` or `True` alone is as likely to be a word in a sentence."""
    s = line.strip().strip("`").strip()
    if len(s) < 3 or not _CODE_CHARS.search(s) and not _BLOCK_HEADER.match(s):
        return False
    src = s + "\n    pass" if _BLOCK_HEADER.match(s) else s
    if src.startswith(("elif", "else", "except", "finally")):
        src = "if 1:\n    pass\n" + src if src.startswith(("elif", "else")) else "try:\n    pass\n" + src
    try:
        tree = ast.parse(src)
    except (SyntaxError, ValueError):
        return False
    if len(tree.body) == 1 and isinstance(tree.body[0], ast.Expr):
        v = tree.body[0].value
        if isinstance(v, (ast.Name, ast.Constant)):
            return False
        # `foo(bar)` alone is code; a comparison like `a == b` is code too.
    return True


def code_lines(text: str) -> list[str]:
    """Whole lines of code in a feedback text (a line inside a ``` fence always counts)."""
    found: list[str] = []
    in_fence = False
    for line in text.splitlines():
        if line.strip().startswith("```"):
            in_fence = not in_fence
            continue
        if line.strip() and (in_fence or is_code_line(line)):
            found.append(line)
    return found


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9`'\"(])|\n\s*\n")


def sentences(text: str) -> list[str]:
    """Split prose into sentences (a period followed by a capital, or a blank line)."""
    parts = [p.strip() for p in _SENTENCE_END.split(text.strip())]
    return [p for p in parts if p]


def word_count(text: str) -> int:
    return len(text.split())


# ---------------------------------------------------------------------------------------------
# Programs: the body after the task prompt, the distance between x0 and a refinement, copies of x0


def edit_distance(old: str, new: str, prompt: str | None = None) -> float:
    """Bounded edit distance in [0, 1] between x0 and a refinement: Levenshtein(old body, new body) /
    the longer body, bodies taken after the task prompt (ilf.text). Not the authors'
    annotation measure (/ len(old body), unbounded), which would make a 1.0 threshold drop repairs."""
    return float(bounded_edit_distance(normalize_newlines(old), normalize_newlines(new), normalize_newlines(prompt) if prompt else None))


def body_after_prompt(program: str, prompt: str) -> str:
    """The part of a whole program that follows the task prompt (what π_θ is trained to write)."""
    program, prompt = normalize_newlines(program), normalize_newlines(prompt)
    if program.startswith(prompt):
        return program[len(prompt) :]
    # Human refinements sometimes touch the prompt's whitespace: align on the def header instead.
    head = prompt.rstrip().splitlines()[-1] if prompt.strip() else ""
    i = program.find(head)
    if head and i >= 0:
        return program[i + len(head) :].lstrip("\n")
    return program


@functools.lru_cache(maxsize=4096)  # x0 is compared with each of its n refinements and redraws
def _syntax(program: str) -> str:
    try:
        return ast.dump(ast.parse(normalize_newlines(program)))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return " ".join(normalize_newlines(program).split())


def same_program(x0: str, x1: str) -> bool:
    """x1 is x0 again: the same syntax tree (comments, blank lines and spacing do not count)."""
    return _syntax(x0) == _syntax(x1)
