"""π_Refine: repair a wrong program x0 given natural-language feedback f (paper §2, Figure 2).

The input is the paper's format (`ilf.tasks.refinement_prompt`):

    OLD CODE:
    <task prompt + wrong program>

    FEEDBACK:
    <feedback>

    REFINEMENT:
    <task prompt>            <- the model continues from here

used either few-shot (k human triples of OTHER tasks in front) or with a model fine-tuned on such
triples (`refine.mode = finetune`). n refinements are sampled per (x0, f), each is EVALed, and one
passing refinement per task is picked at random (seeded) into the training set R, as the paper does.

Two more interfaces use the model's chat template (`refine.interface`): `chat` shows x0 and f in the
user turn; `regenerate` shows the task and f as a reviewer's advice and not x0, so the model has no
copy to anchor to and the program it writes stays its own. In both the assistant turn starts with
the task prompt, so a refinement continues `task.prompt` exactly as π_θ's samples do.

The control every π_Refine result is read against (`resample_control`, `control_comparison`): π_θ
sampled again on the same tasks with the same number of samples, no x0 and no feedback. A repair
is ILF's signal only where resampling would not have found a passing program.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import random
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from ilf.errors import IlfError
from ilf.jsonl import Appender, load_jsonl
from ilf.tasks import Task, TaskSet, normalize_newlines, refinement_prompt

if TYPE_CHECKING:
    from ilf.config import RefineConfig

EXAMPLE_SEPARATOR = "\n\n\n"  # between few-shot triples: blank lines end a program for the extractor


def edit_distance(old: str, new: str, prompt: str | None = None) -> float:
    """Bounded edit distance in [0, 1] between x0 and a refinement: Levenshtein(old body, new body) /
    the longer body, bodies taken after the task prompt (ilf.feedback.text). Not the authors'
    annotation measure (/ len(old body), unbounded), which would make a 1.0 threshold drop repairs."""
    from ilf.feedback.text import bounded_edit_distance

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


# ---------------------------------------------------------------------------------------------
# Prompts: the paper's text format, or the model's chat template

CHAT_REPAIR = (
    "This Python function fails its tests:\n\n```python\n{old_code}\n```\n\nFeedback on it:\n{feedback}\n\nWrite the corrected function."
)
CHAT_REGENERATE = (
    "Write this Python function:\n\n```python\n{prompt}```\n\nA reviewer who saw an earlier, wrong attempt at it advises:\n{feedback}"
)
# The assistant turn starts with the task prompt, so the model continues it as π_θ does.
ASSISTANT_START = "```python\n{prompt}"


def chat_formatter(model: Any) -> Callable[[str, str], str]:
    """(user text, assistant start) -> the prompt string in `model`'s chat template."""
    from transformers import AutoTokenizer

    from ilf.models import resolve_model

    resolved = resolve_model(model)
    tok = AutoTokenizer.from_pretrained(str(resolved.hf_dir))
    if not getattr(tok, "chat_template", None):
        raise IlfError(f"{resolved.name}: refine.interface chat/regenerate needs a model with a chat template; use interface = paper")

    def fmt(user: str, start: str) -> str:
        text = tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)
        return text + start

    return fmt


def interface_prompt(fb: dict[str, Any], task: Task, interface: str, chat: Callable[[str, str], str]) -> str:
    """The chat or regenerate prompt of one (x0, f)."""
    feedback = normalize_newlines(fb["feedback"]).strip()
    if interface == "chat":
        user = CHAT_REPAIR.format(old_code=normalize_newlines(fb["program"]).rstrip(), feedback=feedback)
    elif interface == "regenerate" and not feedback:  # no feedback: π_θ through its chat template (a control)
        user = CHAT_REGENERATE.split("\n\nA reviewer")[0].format(prompt=task.prompt)
    elif interface == "regenerate":
        user = CHAT_REGENERATE.format(prompt=task.prompt, feedback=feedback)
    else:
        raise IlfError(f"refine.interface {interface!r}: expected chat or regenerate here")
    return chat(user, ASSISTANT_START.format(prompt=task.prompt))


# ---------------------------------------------------------------------------------------------
# Few-shot examples: human triples (x0, f, x1) from other tasks


def fewshot_block(example: dict[str, Any], task: Task) -> str:
    """One demonstration: the refinement prompt of the example's task followed by its human refinement."""
    refinement = body_after_prompt(example["refinement"], task.prompt)
    return refinement_prompt(task, example["program"], example["feedback"]) + refinement.rstrip() + "\n"


def choose_examples(examples: Sequence[dict[str, Any]], k: int, exclude_task: Any, seed: int, key: Any) -> list[dict[str, Any]]:
    """k examples of other tasks, chosen reproducibly per (seed, key)."""
    pool = [e for e in examples if e["task_id"] != exclude_task]
    rng = random.Random(f"{seed}:{key}")
    return rng.sample(pool, min(k, len(pool)))


def build_prompt(
    fb: dict[str, Any], task: Task, examples: Sequence[dict[str, Any]], example_tasks: TaskSet | dict, k: int, seed: int
) -> str:
    shots = choose_examples(examples, k, fb["task_id"], seed, fb["feedback_id"]) if k else []
    prefix = "".join(fewshot_block(e, example_tasks[e["task_id"]]) + EXAMPLE_SEPARATOR for e in shots)
    return prefix + refinement_prompt(task, fb["program"], fb["feedback"])


def shuffled_feedback(feedback: Sequence[dict[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """Table 2's control: each record keeps its x0 but gets the feedback of another task (a seeded
    derangement over tasks), under the id `<feedback_id>~shuffled`."""
    rng = random.Random(f"{seed}:shuffle")
    order = list(range(len(feedback)))
    same_task = lambda i, j: feedback[i]["task_id"] == feedback[j]["task_id"]  # noqa: E731
    if len({f["task_id"] for f in feedback}) < 2:
        return []
    while any(same_task(i, j) for i, j in enumerate(order)):
        rng.shuffle(order)
    return [
        dict(fb, feedback=feedback[j]["feedback"], feedback_id=f"{fb['feedback_id']}~shuffled", shuffled_from=feedback[j]["feedback_id"])
        for fb, j in zip(feedback, order)
    ]


# ---------------------------------------------------------------------------------------------
# Sampling refinements (resumable per feedback record)


MAX_REDRAWS = 3  # with refuse_copies: extra draws per (x0, f) before it keeps fewer than n refinements


def _redraw_seed(seed: int, attempt: int) -> int:
    return seed + 1_000_003 * attempt


def sample_refinements(
    feedback: Sequence[dict[str, Any]],
    tasks: TaskSet,
    engine,
    params,
    output: str | Path,
    *,
    examples: Sequence[dict[str, Any]] = (),
    example_tasks: TaskSet | dict | None = None,
    shots: int = 0,
    seed: int = 0,
    interface: str = "paper",
    chat: Callable[[], Callable[[str, str], str]] | None = None,
    refuse_copies: bool = False,
    chunk: int = 16,  # prompts per engine call; records are written per (x0, f) as each finishes
    on_progress: Callable[[int, int], None] | None = None,
    protocol: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Sample params.n refinements per feedback record; append them to `output` per record.

    Records already in `output` (same feedback_id) are kept, so a killed run resumes.
    Returns refinement records: task_id, feedback_id, sample_id, completion, refinement (the whole
    program EVAL runs), num_tokens, finish_reason, copy_of_x0 (same syntax tree as x0), refused
    (a copy drawn again under refuse_copies: not one of the n), the sampling parameters
    (temperature, top_p, top_k, max_new_tokens, seed) and `protocol` (e.g. model, engine,
    refine_mode, shots, interface), so a report names how π_Refine was sampled.
    `chat` loads the chat-template formatter (`chat_formatter`) for interface chat/regenerate.
    """
    from ilf.extraction import extract_program
    from ilf.jsonl import write_jsonl
    from ilf.sampling import params_fields

    output = Path(output)
    done: dict[str, list[dict]] = defaultdict(list)
    if output.exists():
        for rec in load_jsonl(output, allow_torn_tail=True):
            done[rec["feedback_id"]].append(rec)
    # A feedback record is done once its whole group is written (n, plus refused copies).
    complete = lambda rs: rs and len(rs) >= rs[0].get("group_size", params.n)  # noqa: E731
    todo = [fb for fb in feedback if not complete(done.get(fb["feedback_id"]))]
    partial = {fb["feedback_id"] for fb in todo if fb["feedback_id"] in done}
    if partial:  # drop partially written groups (a kill between lines): rewrite them whole
        write_jsonl(output, [r for fid, rs in done.items() if fid not in partial for r in rs])
    finished = len(feedback) - len(todo)
    if on_progress:
        on_progress(finished, len(feedback))
    sampled = {**(protocol or {}), **params_fields(params)}
    if todo and not hasattr(engine, "generate"):
        engine = engine()  # a loader: the model loads only when something is left to sample
    fmt = None
    if todo and interface != "paper":
        if chat is None:
            raise IlfError(f"refine.interface {interface}: no chat template given")
        fmt = chat()  # a loader: the tokenizer loads only when something is left to sample

    def prompt_of(fb: dict[str, Any]) -> str:
        task = tasks[fb["task_id"]]
        if interface == "paper":
            return build_prompt(fb, task, examples, example_tasks or tasks, shots, seed)
        return interface_prompt(fb, task, interface, fmt)

    def record(fb: dict[str, Any], c, j: int, refused: bool, copy: bool, program: str) -> dict[str, Any]:
        task = tasks[fb["task_id"]]
        return {
            "task_id": fb["task_id"],
            "feedback_id": fb["feedback_id"],
            "x0_sample_id": fb.get("sample_id"),
            "sample_id": j,
            "completion": c.text,
            "refinement": program,
            "program": program,
            "num_tokens": c.num_tokens,
            "finish_reason": c.finish_reason,
            "edit_distance": edit_distance(fb["program"], program, task.prompt),
            "copy_of_x0": copy,
            "refused": refused,
            **sampled,
        }

    with Appender(output) as out:
        for start in range(0, len(todo), chunk):
            batch = todo[start : start + chunk]
            prompts = [prompt_of(fb) for fb in batch]
            drawn: list[list[tuple[Any, str, bool]]] = [[] for _ in batch]  # (completion, program, copy)

            def take(i: int, completions, batch=batch, drawn=drawn) -> None:
                task = tasks[batch[i]["task_id"]]
                for c in completions:
                    program = extract_program(task, c.text)
                    drawn[i].append((c, program, same_program(batch[i]["program"], program)))

            def flush(i: int, batch=batch, drawn=drawn) -> None:
                fb, group = batch[i], drawn[i]
                kept = 0
                recs = []
                for j, (c, program, copy) in enumerate(group):
                    refused = refuse_copies and (copy or kept >= params.n)
                    kept += not refused
                    recs.append(record(fb, c, j, refused, copy, program))
                for r in recs:
                    r["group_size"] = len(recs)
                    out.write(r)
                nonlocal finished
                finished += 1
                if on_progress:
                    on_progress(finished, len(feedback))

            def first(i: int, completions, batch=batch) -> None:
                take(i, completions)
                if not refuse_copies:
                    flush(i)

            engine.generate(prompts, params, progress=first)
            if not refuse_copies:
                continue
            for attempt in range(1, MAX_REDRAWS + 1):
                kept = [sum(not copy for _, _, copy in g) for g in drawn]
                need = {i: params.n - k for i, k in enumerate(kept) if k < params.n}
                if not need:
                    break
                for k in sorted(set(need.values())):
                    idx = [i for i, v in need.items() if v == k]
                    outs = engine.generate(
                        [prompts[i] for i in idx], dataclasses.replace(params, n=k, seed=_redraw_seed(params.seed, attempt))
                    )
                    for i, completions in zip(idx, outs):
                        take(i, completions)
            for i in range(len(batch)):
                flush(i)
    order = {fb["feedback_id"]: i for i, fb in enumerate(feedback)}
    recs = [r for r in load_jsonl(output) if r["feedback_id"] in order]
    recs.sort(key=lambda r: (order[r["feedback_id"]], r["sample_id"]))
    return recs


# The refinement prompt's own headers end a refinement, as well as the extractor's stops.
REFINE_STOP = ("\nOLD CODE:", "\nFEEDBACK:", "\nREFINEMENT:")


def refine_params(cfg: "RefineConfig", seed: int, n: int | None = None):
    """π_Refine's sampling parameters: [refine]'s n (or `n`), temperature, top_p, top_k, max_new_tokens."""
    from ilf.extraction import STOP_SEQUENCES
    from ilf.generation import SamplingParams

    return SamplingParams(
        n=n or cfg.n,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        top_k=cfg.top_k,
        max_new_tokens=cfg.max_new_tokens,
        seed=seed,
        stop=list(STOP_SEQUENCES) + list(REFINE_STOP),
    )


def refine(
    feedback: Sequence[dict[str, Any]],
    tasks: TaskSet,
    engine,
    cfg: "RefineConfig",
    output: str | Path,
    *,
    examples: Sequence[dict[str, Any]] = (),
    example_tasks: TaskSet | dict | None = None,
    seed: int = 0,
    n: int | None = None,
    console=None,
    protocol: dict[str, Any] | None = None,
    refiner: Any = None,
) -> list[dict[str, Any]]:
    """x1 ~ π_Refine(t, x0, f) for every feedback record, with a progress bar: the one implementation
    behind `ilf refine` and the pipeline's refine stages. Few-shot (cfg.mode = fewshot, interface
    paper) puts cfg.shots of `examples` (human triples of other tasks) in front; a fine-tuned
    π_Refine gets the bare prompt; interface chat/regenerate uses `refiner`'s chat template.
    `engine` is an engine or a loader called only if something is left to sample (resumable)."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from ilf.progress import LogProgress

    fewshot = cfg.mode == "fewshot" and cfg.shots > 0 and cfg.interface == "paper"
    with LogProgress(
        TextColumn("π_Refine"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("(x0, f) pairs"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    ) as bar:
        t = bar.add_task("π_Refine ((x0, f) pairs)", total=len(feedback))
        return sample_refinements(
            feedback,
            tasks,
            engine,
            refine_params(cfg, seed, n),
            output,
            examples=examples if fewshot else (),
            example_tasks=example_tasks or tasks,
            shots=cfg.shots if fewshot else 0,
            seed=seed,
            interface=cfg.interface,
            chat=lambda: chat_formatter(refiner),
            refuse_copies=cfg.refuse_copies,
            on_progress=lambda done, total: bar.update(t, completed=done, total=total),
            protocol={
                **(protocol or {}),
                "refine_mode": cfg.mode,
                "shots": cfg.shots if fewshot else 0,
                **({"interface": cfg.interface} if cfg.interface != "paper" else {}),
            },
        )


# ---------------------------------------------------------------------------------------------
# Scoring π_Refine (R itself is built by ilf.pairs.ilf_pairs)


def refine_summary(results: Sequence[dict[str, Any]], n: int) -> dict[str, Any]:
    """π_Refine's pass rates (the paper's Table 3 analog) over (x0, f) pairs. Refinements refused
    as copies of x0 are not among them; `copies_of_x0` counts every copy, refused or kept."""
    from ilf.evaluation import estimate_pass_at_k

    groups: dict[str, list[bool]] = defaultdict(list)
    task_of: dict[str, Any] = {}
    copies = refused = 0
    for r in results:
        copies += bool(r.get("copy_of_x0"))
        if r.get("refused"):
            refused += 1
            continue
        groups[r["feedback_id"]].append(bool(r.get("passed")))
        task_of[r["feedback_id"]] = r["task_id"]
    ns = [len(v) for v in groups.values()]
    cs = [sum(v) for v in groups.values()]
    out: dict[str, Any] = {"num_feedback": len(groups), "n": n, "copies_of_x0": copies, "copies_refused": refused}
    if results:
        out["copy_share"] = copies / len(results)
    if groups:
        for k in sorted({1, 5, 10, n}):
            if k <= min(ns):
                out[f"pass@{k}"] = float(estimate_pass_at_k(ns, cs, k).mean())
        out["one_plus_correct"] = sum(c > 0 for c in cs) / len(cs)
        out["num_tasks_solved"] = len({task_of[f] for f, v in groups.items() if any(v)})
    out["per_feedback"] = {fid: {"task_id": task_of[fid], "n": len(v), "c": sum(v)} for fid, v in groups.items()}
    return out


# ---------------------------------------------------------------------------------------------
# The control: π_θ sampled again with the same budget, no x0, no feedback

CONTROL_SEED_SALT = 7919  # the control's sampling seed is seed + this: draws independent of x0's


def control_budget(feedback: Sequence[dict[str, Any]], n: int) -> dict[Any, int]:
    """Samples of π_θ per task that match π_Refine's: n per (x0, f) of the task."""
    budget: dict[Any, int] = defaultdict(int)
    for fb in feedback:
        budget[fb["task_id"]] += n
    return dict(budget)


def resample_control(
    feedback: Sequence[dict[str, Any]],
    tasks: TaskSet,
    engine,
    params,
    output: str | Path,
    *,
    interface: str = "paper",
    chat: Callable[[], Callable[[str, str], str]] | None = None,
    model_name: str | None = None,
    engine_name: str | None = None,
) -> list[dict]:
    """π_θ sampled again on the feedback's tasks with π_Refine's budget (the largest per task;
    `control_comparison` takes each task's own), no x0, no feedback, a seed of its own. Through the
    same door π_Refine used: the task prompt for interface paper, the chat template with the task
    alone for chat/regenerate (sampling π_θ through its chat template alone already solves tasks the
    task prompt does not, and that must not count as the feedback's doing)."""
    budget = control_budget(feedback, params.n)
    n = max(budget.values(), default=params.n)
    params = dataclasses.replace(params, n=n, seed=params.seed + CONTROL_SEED_SALT)
    if interface == "paper":
        from ilf.sampling import sample

        todo = [tasks[t] for t in budget]
        return sample(todo, engine, dataclasses.replace(params, stop=[]), output, model_name=model_name, engine_name=engine_name)
    alone = [{"task_id": t, "feedback_id": f"control-{t}", "program": "", "feedback": ""} for t in budget]
    protocol = {"model": model_name, "engine": engine_name, "interface": "regenerate", "control": "chat template, the task alone"}
    return sample_refinements(alone, tasks, engine, params, output, interface="regenerate", chat=chat, protocol=protocol)


def control_comparison(
    refined: Sequence[dict[str, Any]],
    control: Sequence[dict[str, Any]],
    resamples: int | None = None,
    seed: int = 0,
    tasks: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """π_Refine against π_θ sampled again, task by task with the same number of samples (the
    control's first samples of each task). pass@1 and tasks solved for both; `beyond`: tasks the
    refinements solved and resampling did not (ILF's whole signal); paired bootstrap CIs over tasks.
    tasks: every task the comparison is over; one without refinements (its feedback dropped, say)
    counts as unsolved by π_Refine, against the control's usual number of samples."""
    import numpy as np

    from ilf.report.stats import BOOTSTRAP_RESAMPLES, bootstrap_ci, bootstrap_indices, detectable_difference

    ref: dict[Any, list[bool]] = defaultdict(list)
    for r in refined:
        if not r.get("refused"):
            ref[r["task_id"]].append(bool(r.get("passed")))
    ctl: dict[Any, list[tuple[int, bool]]] = defaultdict(list)
    for r in control:
        ctl[r["task_id"]].append((int(r.get("sample_id", 0)), bool(r.get("passed"))))
    ids = [t for t in ref if ref[t] and t in ctl]
    if not ids:
        return {"tasks": 0}
    usual = int(np.median([len(ref[t]) for t in ids]))
    unrefined = [t for t in (tasks or []) if t in ctl and not ref.get(t)]
    ids += unrefined
    a = np.array([sum(ref[t]) / len(ref[t]) if ref.get(t) else 0.0 for t in ids])
    ctl_used = {t: [p for _, p in sorted(ctl[t])[: len(ref[t]) if ref.get(t) else usual]] for t in ids}
    b = np.array([sum(v) / len(v) for v in (ctl_used[t] for t in ids)])
    sa, sb = a > 0, b > 0
    idx = bootstrap_indices(len(ids), resamples or BOOTSTRAP_RESAMPLES, seed)
    beyond = (sa & ~sb).astype(float)
    net = sa.astype(float) - sb.astype(float)
    lo, hi = bootstrap_ci(a - b, indices=idx)
    blo, bhi = bootstrap_ci(beyond, indices=idx)
    nlo, nhi = bootstrap_ci(net, indices=idx)
    return {
        "tasks": len(ids),
        "samples_per_task": usual,
        "tasks_without_refinements": len(unrefined),
        "pass@1": float(a.mean()),
        "control_pass@1": float(b.mean()),
        "delta_pass@1": float((a - b).mean()),
        "delta_pass@1_ci": [lo, hi],
        "delta_pass@1_detectable": detectable_difference(a - b),
        "solved": int(sa.sum()),
        "control_solved": int(sb.sum()),
        "beyond": int((sa & ~sb).sum()),
        "beyond_ci": [blo * len(ids), bhi * len(ids)],
        "missed": int((sb & ~sa).sum()),
        # beyond - missed: when both sides rarely pass, chance alone puts tasks on each side
        "net_solved": int(net.sum()),
        "net_solved_ci": [nlo * len(ids), nhi * len(ids)],
        "beyond_tasks": [t for t, x, y in zip(ids, sa, sb) if x and not y],
    }


def describe_comparison(c: dict[str, Any]) -> str:
    """One line a reader of an ILF result asks for first."""
    if not c.get("tasks"):
        return "control: no task with both refinements and control samples"
    lo, hi = c["delta_pass@1_ci"]
    blo, bhi = c["beyond_ci"]
    return (
        f"π_Refine vs π_θ sampled again ({c['tasks']} tasks, {c['samples_per_task']} samples each): pass@1 "
        f"{100 * c['pass@1']:.1f} vs {100 * c['control_pass@1']:.1f} "
        f"(Δ {100 * c['delta_pass@1']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]); "
        f"tasks solved {c['solved']} vs {c['control_solved']} (net {c['net_solved']:+d} [{c['net_solved_ci'][0]:+.0f}, "
        f"{c['net_solved_ci'][1]:+.0f}]); solved only by π_Refine {c['beyond']} [{blo:.0f}, {bhi:.0f}], only by resampling {c['missed']}"
    )


# ---------------------------------------------------------------------------------------------
# `ilf refine`


def read_feedback(path: str | Path, tasks: TaskSet) -> list[dict[str, Any]]:
    """Feedback records to refine: an ilf feedback JSONL (`ilf feedback`, a run's r<N>/feedback.jsonl,
    `ilf annotations export`) or the authors' file. One clear error names the file, line and field."""
    from ilf.feedback.annotations import from_authors_row
    from ilf.jsonl import read_jsonl, require

    out, seen = [], {}
    for line, rec in read_jsonl(path):
        if "Feedback" in rec and "original_model_completion" in rec:  # the authors' file
            rec = from_authors_row(rec, path, line)
            rec["program"], rec["feedback"] = normalize_newlines(rec["program"]), normalize_newlines(rec["feedback"]).strip()
        require(rec, "task_id", (int, str), path, line)
        for f in ("feedback_id", "program", "feedback"):
            require(rec, f, str, path, line)
        try:
            tasks[rec["task_id"]]
        except (KeyError, ValueError, TypeError):
            raise IlfError(f"{path}:{line}: field 'task_id': unknown task {rec['task_id']!r} for this dataset") from None
        if rec["feedback_id"] in seen:
            raise IlfError(f"{path}:{line}: field 'feedback_id': {rec['feedback_id']!r} is also on line {seen[rec['feedback_id']]}")
        seen[rec["feedback_id"]] = line
        out.append(rec)
    if not out:
        raise IlfError(f"{path}: no feedback records")
    from ilf.feedback.llm import without_leaks

    kept, dropped = without_leaks(out, tasks)
    if dropped:
        from rich.console import Console

        Console(stderr=True).print(
            f"{path}: {sum(dropped.values())} of {len(out)} feedback records dropped by the leak guard "
            f"({', '.join(f'{v} {k}' for k, v in sorted(dropped.items()))}): written with the reference shown, they hold its code",
            highlight=False,
        )
        if not kept:
            raise IlfError(f"{path}: every feedback record leaks the reference")
    return kept


def refine_command(
    feedback_path: str | Path,
    output: Path,
    cfg: "RefineConfig",
    *,
    engine: str,
    weights: str,
    dataset: str = "mbpp",
    data_dir: str | Path | None = None,
    tasks_file: str | Path | None = None,
    only_tasks: str | None = None,
    seed: int = 0,
    policy: str | None = None,
    console=None,
) -> dict[str, Path]:
    """`ilf refine`: cfg.n refinements per feedback record into OUTPUT; with cfg.shuffled_n the
    Table 2 control (each x0 with another task's feedback) into OUTPUT's `_shuffled` sibling; with
    cfg.control π_θ (`policy`, default the bundled model) sampled again with the same budget into
    OUTPUT's `_control` sibling."""
    from ilf.feedback.annotations import load_human_triples
    from ilf.generation import get_engine, resolve_engine
    from ilf.jsonl import refuse_overwrite
    from ilf.models import resolve_model
    from ilf.tasks import load_tasks, parse_ranges

    if cfg.mode == "finetune" and not cfg.model:
        raise IlfError(
            "--mode finetune needs --model: a π_Refine fine-tuned on human triples, e.g. "
            "`ilf finetune --data surge --split refine --kind refine --output refiner`"
        )
    tasks = load_tasks(dataset, data_dir=data_dir, path=tasks_file)
    feedback = read_feedback(feedback_path, tasks)
    if only_tasks:
        wanted = parse_ranges(only_tasks)
        feedback = [f for f in feedback if f["task_id"] in wanted]
        if not feedback:
            raise IlfError(f"{feedback_path}: no feedback on tasks {only_tasks}")
    output = Path(output)
    sibling = lambda tag: output.with_name(output.name.removesuffix(".jsonl") + f"_{tag}.jsonl")  # noqa: E731
    shuffled_out, control_out = sibling("shuffled"), sibling("control")
    for path in (output, shuffled_out, control_out):
        refuse_overwrite(path, feedback_path)
    examples, example_tasks = [], None
    if cfg.mode == "fewshot" and cfg.shots:
        wanted = parse_ranges(cfg.examples_tasks)
        examples = [a for a in load_human_triples(_authors_file(data_dir)) if a["task_id"] in wanted]
        example_tasks = load_tasks("mbpp", data_dir=data_dir, task_ids=sorted({a["task_id"] for a in examples}))
    name = resolve_engine(engine)
    model = resolve_model(cfg.model or None)  # converts once (with a message) before the engine loads
    from ilf.generation.weights import engine_label

    protocol = {"model": model.name, "engine": engine_label(name, weights), "dataset": dataset}
    eng: dict = {}

    def engine(which=model):  # loaded once, and only if something is left to sample; one at a time
        if which.hf_dir not in eng:
            for e in eng.values():
                e.close()
            eng.clear()
            eng[which.hf_dir] = get_engine(name, which, weights=weights)
        return eng[which.hf_dir]

    def run(records, out, n=None):
        return refine(
            records,
            tasks,
            engine,
            cfg,
            out,
            examples=examples,
            example_tasks=example_tasks,
            seed=seed,
            n=n,
            console=console,
            protocol=protocol,
            refiner=model,
        )

    written = {"refinements": output}
    try:
        recs = run(feedback, output)
        shuffled = shuffled_feedback(feedback, seed=seed) if cfg.shuffled_n else []
        if shuffled:
            run(shuffled, shuffled_out, n=cfg.shuffled_n)
            written["shuffled"] = shuffled_out
        elif cfg.shuffled_n and console:
            console.print("[yellow]warning[/]: the shuffled-feedback control needs feedback on 2+ tasks; skipped")
        if cfg.control:
            pi = resolve_model(policy or None)
            resample_control(
                feedback,
                tasks,
                lambda: engine(pi),
                refine_params(cfg, seed),
                control_out,
                interface=cfg.interface,
                chat=lambda: chat_formatter(pi),
                model_name=pi.name,
                engine_name=protocol["engine"],
            )
            written["control"] = control_out
    finally:
        for e in eng.values():
            e.close()
    if console:
        console.print(f"{len(recs)} refinements of {len(feedback)} (x0, f) pairs -> {output}", highlight=False)
        if cfg.control:
            console.print(
                f"π_θ ({pi.name}) sampled again with the same budget -> {control_out}; compare after EVAL with "
                f"`ilf evaluate` on both and `ilf report {output.name.removesuffix('.jsonl')}_results.jsonl "
                f"--control {control_out.name.removesuffix('.jsonl')}_results.jsonl`",
                highlight=False,
            )
    return written


def _authors_file(data_dir):
    from ilf.data import locate

    return locate("authors", data_dir)
