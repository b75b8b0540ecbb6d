"""LLM feedback: a model writes the feedback a human annotator would (paper §3.3-3.4).

The model (any ilf engine, including an OpenAI-compatible endpoint through the `openai` engine)
is prompted with k human examples of OTHER tasks, then the task, its tests, the failing program
and its error, and continues after "FEEDBACK:". With `with_refinement` it then also writes the
repaired program after "REFINEMENT:" (the paper's 1-shot/2-shot InstructGPT ablation), which is
checked in `ilf.sandbox` and measured against the original like a human refinement.

    TASK: <description>
    TESTS:
    <asserts>
    OLD CODE:
    <program>
    ERROR: <error of EVAL>
    FEEDBACK:
    <1-4 sentences>
    REFINEMENT:              (with_refinement only)
    <program>
    ---
"""

from __future__ import annotations

import hashlib
import random
import re
from typing import Any, Callable, Iterable, Mapping, Sequence

from ilf.errors import IlfError
from ilf.feedback.store import now_iso
from ilf.tasks import normalize_newlines
from ilf.text import normalized_edit_distance

INSTRUCTION = (
    "Each example shows a programming task, its tests, a wrong Python program and the error it "
    "raised, then feedback from an expert: 1-4 sentences saying what is wrong and how to fix it, "
    "in words, without writing code."
)
# With a reference solution shown (reference=True): the feedback of a teacher who knows a correct
# program, still in words only, so the refinement stays the model's own repair of x0.
INSTRUCTION_REFERENCE = (
    "Each example shows a programming task, its tests, a correct reference solution, a wrong Python "
    "program and the error it raised, then feedback from an expert who compared the wrong program with "
    "the reference: 1-4 sentences saying what is wrong and how to fix it, in words, without writing code."
)
SEPARATOR = "\n---\n"
# Feedback ends at the next section or a blank line; refinements at the next example. At most 4
# stop strings each: OpenAI-compatible APIs refuse more.
FEEDBACK_STOP = ["\nREFINEMENT:", "\n---", "\nTASK:", "\n\n"]
REFINEMENT_STOP = ["\n---", "\nTASK:", "\nFEEDBACK:", "\n\n\n"]
FEEDBACK_MAX_TOKENS = 96
REFINEMENT_MAX_TOKENS = 384
# Few-shot examples longer than this (program + feedback + refinement, characters) are not used:
# they would crowd a small model's context.
MAX_EXAMPLE_CHARS = 2500


# The leak guard for feedback written with the reference shown: feedback that holds code, or a run
# of LEAK_NGRAM tokens of the reference, would hand π_Refine the answer instead of advice. Code is
# what English feedback does not contain: a fence, a statement, a call or an index right after a
# name, an assignment, or an operator between operands ("r**2 * h", "n % 2 == 0").
LEAK_NGRAM = 8
_CODE = re.compile(
    r"```"
    r"|^\s*(def|class|import|from|return|for|while|if|elif|else)\b.*[:(=]"
    r"|\bdef \w+\s*\(|\blambda\b[^:]*:"
    r"|\b[A-Za-z_][\w.]*\([^()]*\)"
    r"|\b[A-Za-z_]\w*\[[^\]]+\]"
    r"|\b\w+\s*(=|\+=|-=|\*=)\s*[\w(\[{'\"]"
    r"|[\w)\]]\s*(\*\*|==|!=|<=|>=|//|%)\s*[\w(\[]"
    r"|[\w)\]] (\*|/|\+|-) [\w(\[]",  # spaced, so hyphenated words are prose
    re.M,
)
_TOKEN = re.compile(r"\w+|[^\w\s]")


def feedback_leak(feedback: str, reference: str | None) -> str | None:
    """'code' if the feedback holds code, 'reference' if it quotes LEAK_NGRAM tokens of the
    reference in a row, else None."""
    text = feedback or ""
    if _CODE.search(text):
        return "code"
    if reference:
        ref = _TOKEN.findall(reference)
        grams = {tuple(ref[i : i + LEAK_NGRAM]) for i in range(len(ref) - LEAK_NGRAM + 1)}
        fb = _TOKEN.findall(text)
        if any(tuple(fb[i : i + LEAK_NGRAM]) in grams for i in range(len(fb) - LEAK_NGRAM + 1)):
            return "reference"
    return None


def without_leaks(records: Sequence[Mapping[str, Any]], tasks: Any = None) -> tuple[list[Mapping[str, Any]], dict[str, int]]:
    """The feedback records to refine, and the leaked ones dropped, counted by reason. Records
    written with the reference shown are checked again with this guard when `tasks` (for the
    references) is given, so a file written by an earlier guard is judged by the current one."""
    lookup = (tasks.get if hasattr(tasks, "get") else dict(tasks).get) if tasks is not None else None
    kept, dropped = [], {}
    for r in records:
        leak = r.get("leak")
        if lookup is not None and r.get("reference_shown"):
            task = lookup(r["task_id"])
            leak = feedback_leak(r.get("feedback") or "", getattr(task, "gold", None))
        if leak:
            dropped[leak] = dropped.get(leak, 0) + 1
        else:
            kept.append(r)
    return kept, dropped


def _tests_text(task: Any) -> str:
    tests = list(getattr(task, "tests", None) or [])
    if tests:
        return "\n".join(tests)
    return normalize_newlines(getattr(task, "test", "")).strip()


def _task_text(task: Any, rec: Mapping[str, Any] | None = None) -> str:
    if task is not None and getattr(task, "text", ""):
        return " ".join(task.text.split())
    prompt = ((rec or {}).get("authors") or {}).get("prompt", "")
    if '"""' in prompt:  # the authors' prompt is the docstring prompt: take its first paragraph
        return " ".join(prompt.split('"""')[1].strip().split("\n\n")[0].split())
    return ""


def block(
    task_text: str,
    tests: str,
    program: str,
    error: str | None,
    feedback: str | None = None,
    refinement: str | None = None,
    with_refinement: bool = False,
    reference: str | None = None,
) -> str:
    """One example (or, with feedback=None, the query the model continues)."""
    ref = f"REFERENCE SOLUTION:\n{normalize_newlines(reference).rstrip()}\n" if reference else ""
    s = (
        f"TASK: {task_text}\nTESTS:\n{tests.strip()}\n{ref}OLD CODE:\n{normalize_newlines(program).rstrip()}\n"
        f"ERROR: {error or 'the tests fail'}\nFEEDBACK:\n"
    )
    if feedback is None:
        return s
    s += " ".join(normalize_newlines(feedback).split()) + "\n"
    if with_refinement:
        s += "REFINEMENT:\n" + normalize_newlines(refinement).rstrip() + "\n"
    return s


def pick_examples(examples: Sequence[Mapping[str, Any]], k: int, exclude_task: Any, seed: int) -> list[Mapping[str, Any]]:
    """k examples of other tasks: a fixed seeded order of the usable pool, so most prompts share
    the same few-shot prefix (cheaper for engines with prefix caching), skipping the target task."""
    pool = [
        e
        for e in examples
        if e.get("feedback")
        and e.get("program")
        and e.get("task_id") != exclude_task
        and len(e["program"]) + len(e["feedback"]) + len(e.get("refinement") or "") <= MAX_EXAMPLE_CHARS
    ]
    pool.sort(key=lambda e: hashlib.sha256(f"{seed}:{e.get('feedback_id', e['task_id'])}".encode()).hexdigest())
    return pool[:k]


def example_errors(examples: Iterable[Mapping[str, Any]], tasks: Any) -> dict[str, str | None]:
    """EVAL's error for each example's wrong program (examples rarely record it), via ilf.judge."""
    from ilf import judge
    from ilf.sandbox import DEFAULT_TIMEOUT, Sandbox

    lookup = tasks.get if hasattr(tasks, "get") else (lambda _: None)
    jobs, ids = [], []
    out: dict[str, str | None] = {}
    for e in examples:
        fid = e.get("feedback_id", str(e["task_id"]))
        if e.get("error"):
            out[fid] = e["error"]
            continue
        task = lookup(e["task_id"])
        if task is None:
            out[fid] = None
            continue
        ids.append(fid)
        jobs.append((normalize_newlines(e["program"]), judge.plan(task, DEFAULT_TIMEOUT)))
    if jobs:
        with Sandbox(workers=min(2, len(jobs))) as sb:
            for i, v in judge.judge_many(sb, jobs):
                out[ids[i]] = v.error
    return out


def llm_feedback_id(
    label: str, k_shot: int, with_refinement: bool, seed: int, task_id: Any, sample_id: Any, draw: int = 0, reference: bool = False
) -> str:
    """Deterministic: the same settings give the same id, so a killed run knows what is done.
    `draw` numbers the feedback samples of one x0 (n > 1)."""
    key = (
        f"{label}:{k_shot}:{with_refinement}:{seed}:{task_id}:{sample_id}"
        + (f":{draw}" if draw else "")
        + (":reference" if reference else "")
    )
    return f"llm-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def engine_label(engine: Any) -> str:
    resolved = getattr(engine, "resolved", None)
    name = getattr(resolved, "name", None) or getattr(engine, "model_name", None) or getattr(engine, "model", None)
    return f"{getattr(engine, 'name', 'engine')}:{name}" if isinstance(name, str) else str(getattr(engine, "name", "engine"))


def _cut_refinement(task: Any, completion: str) -> str:
    from ilf.extraction import extract_program

    return extract_program(task, completion)


def generate_llm_feedback(
    failing_results: Sequence[Mapping[str, Any]],
    tasks: Any,
    engine: Any,
    k_shot: int = 1,
    with_refinement: bool = False,
    *,
    examples: Sequence[Mapping[str, Any]] | None = None,
    seed: int = 0,
    temperature: float = 0.0,
    n: int = 1,
    top_p: float = 1.0,
    reference: bool = False,
    max_new_tokens: int = FEEDBACK_MAX_TOKENS,
    check_refinements: bool = True,
    model_name: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Feedback records (source "llm") for failing EVAL results, n per result (sampled at
    `temperature`; 0 = greedy, one draw copied).

    examples: human feedback records of other tasks (default: the authors' 195 annotations);
    k_shot of them go in each prompt. with_refinement: the model also writes one refinement per
    feedback draw, which is run in the sandbox (passed/status/error) and measured (edit_distance)."""
    from ilf.generation.base import SamplingParams

    if k_shot < 0:
        raise IlfError("k_shot must be >= 0")
    if n < 1:
        raise IlfError("n must be >= 1")
    if temperature == 0:
        n = 1  # greedy: every draw would be the same text
    if examples is None:
        from ilf.annotations import load_authors

        examples = load_authors()
    lookup = tasks.get if hasattr(tasks, "get") else dict(tasks).get
    targets = [r for r in failing_results if r.get("passed") is not True]
    for r in targets:
        if lookup(r["task_id"]) is None:
            raise IlfError(f"task {r['task_id']!r} of the results is not in the loaded tasks")
    chosen = {id(r): pick_examples(examples, k_shot, r["task_id"], seed) for r in targets}
    used = {e.get("feedback_id", str(e["task_id"])): e for shots in chosen.values() for e in shots}
    errors = example_errors(used.values(), tasks) if used else {}

    def shots_text(r) -> str:
        parts = []
        for e in chosen[id(r)]:
            et = lookup(e["task_id"])
            tests = _tests_text(et) if et is not None else ""
            parts.append(
                block(
                    _task_text(et, e),
                    tests,
                    e["program"],
                    errors.get(e.get("feedback_id", str(e["task_id"]))),
                    e["feedback"],
                    e.get("refinement"),
                    with_refinement,
                    _reference(et),
                )
            )
        return (INSTRUCTION_REFERENCE if reference else INSTRUCTION) + "\n\n" + "".join(p + SEPARATOR for p in parts)

    def _reference(task) -> str | None:
        return getattr(task, "gold", None) if reference and task is not None else None

    def program_of(r, task) -> str:
        return r["program"] if isinstance(r.get("program"), str) else task.prompt + r.get("completion", "")

    queries = []
    for r in targets:
        task = lookup(r["task_id"])
        queries.append(
            shots_text(r) + block(_task_text(task), _tests_text(task), program_of(r, task), r.get("error"), reference=_reference(task))
        )
    params = SamplingParams(n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, stop=FEEDBACK_STOP, seed=seed)
    done = [0]

    def tick(_i, _c):
        done[0] += 1
        if progress:
            progress(done[0], len(queries) * (2 if with_refinement else 1))

    outs = engine.generate(queries, params, progress=tick) if queries else []
    # One entry per (x0, draw), x0-major: draw j of target i is entry i * n + j.
    draws = [(i, j) for i in range(len(targets)) for j in range(n)]
    feedbacks = [" ".join(outs[i][j].text.split()) for i, j in draws]

    refinements: list[str | None] = [None] * len(draws)
    verdicts: list[Any] = [None] * len(draws)
    if with_refinement and targets:
        rq = [queries[i] + feedbacks[e] + "\nREFINEMENT:\n" + lookup(targets[i]["task_id"]).prompt for e, (i, _) in enumerate(draws)]
        # One refinement per feedback draw; the per-prompt seed differs with the feedback text.
        rparams = SamplingParams(
            n=1, temperature=temperature, top_p=top_p, max_new_tokens=REFINEMENT_MAX_TOKENS, stop=REFINEMENT_STOP, seed=seed
        )
        routs = engine.generate(rq, rparams, progress=tick)
        refinements = [_cut_refinement(lookup(targets[i]["task_id"]), o[0].text) for (i, _), o in zip(draws, routs)]
        if check_refinements:
            from ilf import judge
            from ilf.sandbox import DEFAULT_TIMEOUT, Sandbox

            with Sandbox(workers=min(2, len(draws))) as sb:
                jobs = [(x, judge.plan(lookup(targets[i]["task_id"]), DEFAULT_TIMEOUT)) for x, (i, _) in zip(refinements, draws)]
                for e, v in judge.judge_many(sb, jobs):
                    verdicts[e] = v

    label = model_name or engine_label(engine)
    records = []
    for e, (i, j) in enumerate(draws):
        r = targets[i]
        task = lookup(r["task_id"])
        program = program_of(r, task)
        fid = llm_feedback_id(label, k_shot, with_refinement, seed, r["task_id"], r.get("sample_id"), draw=j, reference=reference)
        v = verdicts[e]
        records.append(
            {
                "task_id": r["task_id"],
                "sample_id": r.get("sample_id"),
                "program": program,
                "feedback": feedbacks[e],
                "refinement": refinements[e],
                "source": "llm",
                "author": label,
                "created_at": now_iso(),
                "feedback_id": fid,
                "edit_distance": normalized_edit_distance(program, refinements[e], task.prompt) if refinements[e] is not None else None,
                "passed": v.passed if v is not None else None,
                "status": v.status if v is not None else None,
                "error": v.error if v is not None else None,
                "k_shot": k_shot,
                "draw": j,
                "reference_shown": reference,
                "leak": feedback_leak(feedbacks[e], getattr(task, "gold", None)) if reference else None,
                "example_ids": [e.get("feedback_id", e["task_id"]) for e in chosen[id(r)]],
            }
        )
    return records


LLM_CHUNK = 16  # x0 per engine call in write_llm_feedback: the unit a killed run loses at most


def write_llm_feedback(
    failing_results: Sequence[Mapping[str, Any]],
    tasks: Any,
    engine: Any,
    output: Any,
    *,
    k_shot: int = 1,
    with_refinement: bool = False,
    examples: Sequence[Mapping[str, Any]] | None = None,
    seed: int = 0,
    n: int = 1,
    temperature: float = 0.0,
    top_p: float = 1.0,
    reference: bool = False,
    model_name: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """`generate_llm_feedback` over many x0, resumable: records are appended to OUTPUT.partial a
    chunk at a time, a rerun with the same settings skips the x0 already there (ids are
    deterministic), and OUTPUT is written atomically at the end. `engine` may be a loader
    (called only if something is left to do). Returns the records in x0 order."""
    from pathlib import Path

    from ilf.jsonl import Resumable, write_jsonl

    out = Path(output)
    partial = out.with_name(out.name + ".partial")
    have = Resumable(partial, lambda r: r["feedback_id"])
    draws = 1 if temperature == 0 else n
    targets = [r for r in failing_results if r.get("passed") is not True]
    label = model_name

    def ids(r) -> list[str]:
        return [
            llm_feedback_id(label, k_shot, with_refinement, seed, r["task_id"], r.get("sample_id"), draw=j, reference=reference)
            for j in range(draws)
        ]

    if label is None and not hasattr(engine, "generate"):
        engine = engine()
    if label is None:
        label = engine_label(engine)
    todo = [r for r in targets if not all(i in have for i in ids(r))]
    if progress:
        progress(len(targets) - len(todo), len(targets))
    if todo and not hasattr(engine, "generate"):
        engine = engine()
    with have:
        for i in range(0, len(todo), LLM_CHUNK):
            chunk = todo[i : i + LLM_CHUNK]
            for rec in generate_llm_feedback(
                chunk,
                tasks,
                engine,
                k_shot=k_shot,
                with_refinement=with_refinement,
                examples=examples,
                seed=seed,
                n=n,
                temperature=temperature,
                top_p=top_p,
                reference=reference,
                model_name=label,
            ):
                have.add(rec["feedback_id"], [rec])
            if progress:
                progress(len(targets) - len(todo) + i + len(chunk), len(targets))
    recs = have.records([i for r in targets for i in ids(r)])
    write_jsonl(out, recs)
    partial.unlink(missing_ok=True)
    return recs


def choose_failing(
    results: Sequence[Mapping[str, Any]], *, per_task: int = 1, only_unsolved: bool = False, seed: int = 0, salt: str = ""
) -> list[Mapping[str, Any]]:
    """Failing results to give feedback on: `per_task` per task (seeded choice; `salt` makes the
    choice differ between ILF rounds), in task order. The paper's annotators pick the sample easiest
    to fix; automatic sources take one at random. `ilf feedback` and the pipeline both call this."""
    by_task: dict[Any, list[Mapping[str, Any]]] = {}
    for r in results:
        by_task.setdefault(r["task_id"], []).append(r)
    out = []
    for tid, rs in by_task.items():
        if only_unsolved and any(r.get("passed") is True for r in rs):
            continue
        bad = [r for r in rs if r.get("passed") is not True]
        if per_task and len(bad) > per_task:
            bad = random.Random(f"{seed}:{salt}{tid}").sample(bad, per_task)
        out.extend(bad)
    return out
