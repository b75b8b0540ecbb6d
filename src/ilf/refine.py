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
"""

from __future__ import annotations

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
    chunk: int = 16,  # prompts per engine call; records are written per prompt as each finishes
    on_progress: Callable[[int, int], None] | None = None,
    protocol: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Sample params.n refinements per feedback record; append them to `output` per record.

    Records already in `output` (same feedback_id) are kept, so a killed run resumes.
    Returns refinement records: task_id, feedback_id, sample_id, completion, refinement (the whole
    program EVAL runs), num_tokens, finish_reason, the sampling parameters (temperature, top_p,
    top_k, max_new_tokens, seed) and `protocol` (e.g. model, engine, refine_mode, shots), so a
    report names how π_Refine was sampled as it does for `ilf sample`'s records.
    """
    from ilf.extraction import extract_program

    output = Path(output)
    done: dict[str, list[dict]] = defaultdict(list)
    if output.exists():
        for rec in load_jsonl(output, allow_torn_tail=True):
            done[rec["feedback_id"]].append(rec)
    # A feedback record counts as done only with all n refinements written.
    todo = [fb for fb in feedback if len(done.get(fb["feedback_id"], [])) < params.n]
    partial = {fb["feedback_id"] for fb in todo if fb["feedback_id"] in done}
    if partial:  # drop partially written groups (a kill between lines): rewrite them whole
        keep = [r for fid, rs in done.items() if fid not in partial for r in rs]
        from ilf.jsonl import write_jsonl

        write_jsonl(output, keep)
    finished = len(feedback) - len(todo)
    if on_progress:
        on_progress(finished, len(feedback))
    from ilf.sampling import params_fields

    sampled = {**(protocol or {}), **params_fields(params)}
    if todo and not hasattr(engine, "generate"):
        engine = engine()  # a loader: the model loads only when something is left to sample
    with Appender(output) as out:
        for start in range(0, len(todo), chunk):
            batch = todo[start : start + chunk]
            prompts = [build_prompt(fb, tasks[fb["task_id"]], examples, example_tasks or tasks, shots, seed) for fb in batch]

            def written(i: int, completions, batch=batch) -> None:
                fb = batch[i]
                task = tasks[fb["task_id"]]
                for j, c in enumerate(completions):
                    program = extract_program(task, c.text)
                    out.write(
                        {
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
                            **sampled,
                        }
                    )
                nonlocal finished
                finished += 1
                if on_progress:
                    on_progress(finished, len(feedback))

            engine.generate(prompts, params, progress=written)
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
) -> list[dict[str, Any]]:
    """x1 ~ π_Refine(t, x0, f) for every feedback record, with a progress bar: the one implementation
    behind `ilf refine` and the pipeline's refine stages. Few-shot (cfg.mode = fewshot) puts cfg.shots
    of `examples` (human triples of other tasks) in front; a fine-tuned π_Refine gets the bare prompt.
    `engine` is an engine or a loader called only if something is left to sample (resumable)."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from ilf.progress import LogProgress

    fewshot = cfg.mode == "fewshot" and cfg.shots > 0
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
            on_progress=lambda done, total: bar.update(t, completed=done, total=total),
            protocol={**(protocol or {}), "refine_mode": cfg.mode, "shots": cfg.shots if fewshot else 0},
        )


# ---------------------------------------------------------------------------------------------
# Scoring π_Refine (R itself is built by ilf.pairs.ilf_pairs)


def refine_summary(results: Sequence[dict[str, Any]], n: int) -> dict[str, Any]:
    """π_Refine's pass rates (the paper's Table 3 analog) over (x0, f) pairs."""
    from ilf.evaluation import estimate_pass_at_k

    groups: dict[str, list[bool]] = defaultdict(list)
    task_of: dict[str, Any] = {}
    for r in results:
        groups[r["feedback_id"]].append(bool(r.get("passed")))
        task_of[r["feedback_id"]] = r["task_id"]
    ns = [len(v) for v in groups.values()]
    cs = [sum(v) for v in groups.values()]
    out: dict[str, Any] = {"num_feedback": len(groups), "n": n}
    if groups:
        for k in sorted({1, 5, 10, n}):
            if k <= min(ns):
                out[f"pass@{k}"] = float(estimate_pass_at_k(ns, cs, k).mean())
        out["one_plus_correct"] = sum(c > 0 for c in cs) / len(cs)
        out["num_tasks_solved"] = len({task_of[f] for f, v in groups.items() if any(v)})
    out["per_feedback"] = {fid: {"task_id": task_of[fid], "n": len(v), "c": sum(v)} for fid, v in groups.items()}
    return out


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
    return out


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
    console=None,
) -> dict[str, Path]:
    """`ilf refine`: cfg.n refinements per feedback record into OUTPUT, and with cfg.shuffled_n the
    Table 2 control (each x0 with another task's feedback) into OUTPUT's `_shuffled` sibling."""
    from ilf.feedback.annotations import load_human_triples
    from ilf.generation import default_engine, get_engine
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
    shuffled_out = output.with_name(output.name.removesuffix(".jsonl") + "_shuffled.jsonl")
    refuse_overwrite(output, feedback_path)
    refuse_overwrite(shuffled_out, feedback_path)
    examples, example_tasks = [], None
    if cfg.mode == "fewshot" and cfg.shots:
        wanted = parse_ranges(cfg.examples_tasks)
        examples = [a for a in load_human_triples(_authors_file(data_dir)) if a["task_id"] in wanted]
        example_tasks = load_tasks("mbpp", data_dir=data_dir, task_ids=sorted({a["task_id"] for a in examples}))
    name = default_engine() if engine in ("", "auto") else engine
    model = resolve_model(cfg.model or None)  # converts once (with a message) before the engine loads
    kw = {"weights": weights} if name == "openvino" else {}
    from ilf.generation.weights import engine_label

    protocol = {"model": model.name, "engine": engine_label(name, weights), "dataset": dataset}
    eng: list = []

    def engine():  # loaded once, and only if something is left to sample
        if not eng:
            eng.append(get_engine(name, model, **kw))
        return eng[0]

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
    finally:
        for e in eng:
            e.close()
    if console:
        console.print(f"{len(recs)} refinements of {len(feedback)} (x0, f) pairs -> {output}", highlight=False)
    return written


def _authors_file(data_dir):
    from ilf.data import locate

    return locate("authors", data_dir)
