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

The control every π_Refine result is read against (`ilf.control.resample_control`, compared by
`ilf.report.control.control_comparison`): π_θ sampled again on the same tasks with the same number
of samples, no x0 and no feedback. A repair is ILF's signal only where resampling would not have
found a passing program.
"""

from __future__ import annotations

import dataclasses
import random
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from ilf.errors import IlfError
from ilf.jsonl import Resumable
from ilf.tasks import Task, TaskSet, refinement_prompt
from ilf.text import body_after_prompt, edit_distance, normalize_newlines, same_program

if TYPE_CHECKING:
    from ilf.config import RefineConfig

EXAMPLE_SEPARATOR = "\n\n\n"  # between few-shot triples: blank lines end a program for the extractor


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
    from ilf.generation.base import params_fields

    # An (x0, f) is done once its whole group is written (n, plus refused copies).
    out = Resumable(output, lambda r: r["feedback_id"], complete=lambda rs: len(rs) >= rs[0].get("group_size", params.n))
    todo = [fb for fb in feedback if fb["feedback_id"] not in out]
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

    with out:
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
                out.add(fb["feedback_id"], recs)
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
    return out.records([fb["feedback_id"] for fb in feedback])


# The refinement prompt's own headers end a refinement, as well as the extractor's stops.
REFINE_STOP = ("\nOLD CODE:", "\nFEEDBACK:", "\nREFINEMENT:")


def refine_params(cfg: "RefineConfig", seed: int, n: int | None = None):
    """π_Refine's sampling parameters: [refine]'s n (or `n`), temperature, top_p, top_k, max_new_tokens."""
    from ilf.extraction import STOP_SEQUENCES

    return cfg.params(seed, n=n, stop=list(STOP_SEQUENCES) + list(REFINE_STOP))


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
    from ilf.stats import estimate_pass_at_k

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
