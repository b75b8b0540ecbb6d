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
import re

from rapidfuzz.distance import Levenshtein


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
