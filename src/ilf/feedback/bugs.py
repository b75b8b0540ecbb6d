"""How many bugs a feedback addresses, and of which kind (the paper's §3.4-3.5: Tables 5-6, Figure 5).

The authors tagged 50 feedback texts per source by hand; their file carries no tags. ilf derives
them reproducibly: an LLM (by default the bundled 1.5B model, greedy) applies the rubric below to
each (task, x0, feedback) and lists the bugs the feedback points out, one per line, each with one of
the paper's categories. The rubric, its three hand-written examples and the parsing are fixed
(RUBRIC_VERSION names them), so a tag file can be checked by hand: every record keeps the model's
own lines (`tags_text`).

    TASK: <description>
    OLD CODE:
    <program>
    FEEDBACK: <feedback>
    BUGS:
    - <category>: <the bug in a few words>
    ---
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ilf.jsonl import Resumable

# Table 5's categories, in its order; the last two are not bugs.
BUG_CATEGORIES = (
    "logic",
    "formatting",
    "missing step",
    "algebra",
    "recursion",
    "regex",
    "function semantics",
    "dynamic programming",
    "extra step",
)
NOT_BUGS = ("no feedback needed", "unrelated")
CATEGORIES = BUG_CATEGORIES + NOT_BUGS

RUBRIC = (
    "Each example shows a programming task, a wrong Python program, and feedback someone wrote about it. "
    "Under BUGS, list each distinct bug of the program that the feedback points out, one per line, as "
    '"- <category>: <the bug in a few words>". Categories: logic (wrong condition, loop or control flow), '
    "formatting (wrong output type, format or function signature), missing step, algebra (wrong formula "
    "or arithmetic), recursion, regex, function semantics (a built-in or library function misused), "
    "dynamic programming, extra step (does something the task does not ask). List only bugs the "
    'feedback mentions. If the feedback says the program is correct or asks for no change, write "- no '
    'feedback needed". If the feedback is not about this program, write "- unrelated".'
)
# Hand-written for the rubric (not from MBPP or the authors' file): two bugs, one, none.
EXAMPLES = (
    (
        "Write a function to return the sum of the squares of a list of numbers.",
        "def sum_squares(nums):\n    total = 0\n    for n in nums:\n        total += n * 2\n    print(total)",
        "The loop doubles each number instead of squaring it; use n * n. The function also prints the total instead of returning it.",
        "- algebra: doubles each number instead of squaring it\n- formatting: prints the total instead of returning it",
    ),
    (
        "Write a function to find the n-th Fibonacci number.",
        "def fib(n):\n    if n == 0:\n        return 0\n    return fib(n - 1) + fib(n - 2)",
        "The recursion has no base case for n = 1, so it never stops; return 1 when n is 1.",
        "- recursion: no base case for n = 1",
    ),
    (
        "Write a function to check whether a string is a palindrome.",
        "def is_palindrome(s):\n    return s == s[::-1]",
        "This looks right to me.",
        "- no feedback needed",
    ),
)
SEPARATOR = "\n---\n"
STOP = ["\n---", "\nTASK:", "\n\n"]
MAX_NEW_TOKENS = 120
MAX_LINES = 10  # a model that loops on "- logic: ..." is cut here
CHUNK = 16  # feedback records per engine call: the unit a killed command loses at most


def _block(task_text: str, program: str, feedback: str) -> str:
    return f"TASK: {task_text.strip()}\nOLD CODE:\n{program.rstrip()}\nFEEDBACK: {' '.join(feedback.split())}\nBUGS:\n"


def rubric_prompt(task_text: str, program: str, feedback: str) -> str:
    shots = "".join(_block(t, p, f) + tags + SEPARATOR for t, p, f, tags in EXAMPLES)
    return RUBRIC + "\n\n" + shots + _block(task_text, program, feedback)


RUBRIC_VERSION = hashlib.sha256((RUBRIC + repr(EXAMPLES) + repr(CATEGORIES) + repr(STOP) + str(MAX_NEW_TOKENS)).encode()).hexdigest()[:12]


def _category(label: str) -> str:
    label = " ".join(re.sub(r"[^a-z ]", " ", label.lower()).split())
    for c in CATEGORIES:  # exact, then a category the label starts with ("logic error" -> logic)
        if label == c:
            return c
    for c in CATEGORIES:
        if label.startswith(c):
            return c
    return "other"


def _norm(line: str) -> str:
    return " ".join(line.lstrip("-* ").lower().split())


# A small model sometimes copies an example's bug line into its answer ("- recursion: no base case
# for n = 1" under a regex task): such a line is about the example, not this program, so it is dropped.
EXAMPLE_LINES = frozenset(
    _norm(x) for *_, tags in EXAMPLES for x in tags.splitlines() if _category(_norm(x).split(":")[0]) in BUG_CATEGORIES
)


def parse_tags(text: str) -> dict[str, Any]:
    """The model's BUGS lines -> categories (one per line, in order) and the number of bugs
    (lines whose category is a bug: not "no feedback needed", "unrelated" or unparseable).
    A line repeated word for word counts once (a looping model), and a line copied from one of the
    rubric's examples is dropped and counted in `echoed`."""
    cats, seen, echoed = [], set(), 0
    for line in text.splitlines()[:MAX_LINES]:
        line = line.strip()
        key = _norm(line)
        if not line.startswith(("-", "*")) or key in seen:
            continue
        seen.add(key)
        if key in EXAMPLE_LINES:
            echoed += 1
            continue
        label = line.lstrip("-* ").split(":", 1)[0]
        cats.append(_category(label))
    return {"categories": cats, "bugs": sum(c in BUG_CATEGORIES for c in cats), "echoed": echoed}


def reparse(tag: Mapping[str, Any]) -> dict[str, Any]:
    """A tag record with its categories and bugs derived from the model's own lines (`tags_text`)
    by the current parse_tags, so a parsing fix needs no re-tagging; records without tags_text (tags
    written by a person) are kept as they are."""
    return {**tag, **parse_tags(tag["tags_text"])} if isinstance(tag.get("tags_text"), str) else dict(tag)


def tag_feedback(
    records: Sequence[Mapping[str, Any]],
    tasks: Any,
    engine: Any,
    output: str | Path,
    *,
    model_name: str,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Tag every feedback record (greedy, so the tags repeat); append one tag record per feedback
    to `output` as each chunk finishes. Records already in `output` for this rubric and model are
    kept (a killed command resumes). `engine` may be a loader, called only if work is left."""
    from ilf.generation.base import SamplingParams

    # Keyed by rubric and model too: tags of another rubric or model in OUTPUT stay, unused.
    out = Resumable(output, lambda t: (t.get("rubric"), t.get("model"), t["feedback_id"]))
    key = lambda r: (RUBRIC_VERSION, model_name, r["feedback_id"])  # noqa: E731
    todo = [r for r in records if key(r) not in out]
    if progress:
        progress(len(records) - len(todo), len(records))
    if todo and not hasattr(engine, "generate"):
        engine = engine()
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=MAX_NEW_TOKENS, stop=STOP, seed=0)
    with out:
        for start in range(0, len(todo), CHUNK):
            chunk = todo[start : start + CHUNK]
            prompts = [rubric_prompt(tasks[r["task_id"]].text or tasks[r["task_id"]].prompt, r["program"], r["feedback"]) for r in chunk]
            for r, outs in zip(chunk, engine.generate(prompts, params)):
                text = outs[0].text
                # The prompt ends with "BUGS:\n": the first line is the model's first tag.
                rec = {
                    "feedback_id": r["feedback_id"],
                    "task_id": r["task_id"],
                    "source": r.get("source"),
                    **parse_tags(text),
                    "tags_text": text,
                    "rubric": RUBRIC_VERSION,
                    "model": model_name,
                }
                out.add(key(r), [rec])
            if progress:
                progress(len(records) - len(todo) + start + len(chunk), len(records))
    return out.records([key(r) for r in records])


# ---------------------------------------------------------------------------------------------
# Tables 5-6 and Figure 5 from tag files


def category_shares(tags: Sequence[Mapping[str, Any]], *, resamples: int = 2000, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per source: feedback tagged, mean bugs addressed (Table 6's first row) with a 95% bootstrap CI
    over feedback, and the share of feedback with at least one tag of each category (Table 5: a
    feedback can count in several)."""
    by_source: dict[str, list[Mapping[str, Any]]] = {}
    for t in tags:
        by_source.setdefault(str(t.get("source") or "unknown"), []).append(t)
    import numpy as np

    from ilf.stats import estimate

    out = {}
    for src, ts in by_source.items():
        n = len(ts)
        ci = estimate(np.array([t["bugs"] for t in ts], dtype=float), resamples, seed)
        out[src] = {
            "n": n,
            "bugs_mean": ci["value"],
            "bugs_lo": ci["lo"],
            "bugs_hi": ci["hi"],
            "shares": {c: sum(c in t["categories"] for t in ts) / n for c in CATEGORIES + ("other",)},  # in rubric order
            "share_echoed": sum(bool(t.get("echoed")) for t in ts) / n,
        }
    return out


def bugs_vs_pass_rate(
    tags: Sequence[Mapping[str, Any]], refinement_results: Sequence[Mapping[str, Any]], *, resamples: int = 2000, seed: int = 0
) -> list[dict[str, Any]]:
    """Figure 5: per feedback source and number of bugs the feedback addresses (5 = five or more),
    the mean over feedback of π_Refine's pass rate on its refinements, with a 95% bootstrap CI over
    feedback. Feedback with no refinement in the results is left out."""
    import numpy as np

    from ilf.stats import estimate

    per_fb: dict[str, list[bool]] = {}
    for r in refinement_results:
        per_fb.setdefault(str(r["feedback_id"]), []).append(bool(r["passed"]))
    rows = []
    groups: dict[tuple[str, int], list[float]] = {}
    for t in tags:
        passes = per_fb.get(str(t["feedback_id"]))
        if passes:
            key = (str(t.get("source") or "unknown"), min(int(t["bugs"]), 5))
            groups.setdefault(key, []).append(sum(passes) / len(passes))
    order = list(dict.fromkeys(str(t.get("source") or "unknown") for t in tags))  # sources in tag-file order
    for src, k in sorted(groups, key=lambda g: (order.index(g[0]), g[1])):
        vals = np.array(groups[src, k])
        rows.append({"source": src, "bugs": k, "feedback": len(vals), **estimate(vals, resamples, seed)})
    return rows
