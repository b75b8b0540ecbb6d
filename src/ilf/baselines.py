"""What FINETUNE trains on instead of (or beside) ILF's R: the paper's Table 4 baselines and ilf's
training-set variants, each for the same tasks as R.

    gold                MBPP's reference programs for R's tasks
    human-refinements   the annotators' own refinements, on R's tasks that have one
    rft                 π_θ's own passing x0, on as many tasks as R has (rejection-sampling FT)
    ilf-rft / rft-all   the complete proposal of paper §2, with and without R
    ilf-dpo / rft-dpo   preference pairs: R's repair over its x0 / π_θ's passing over its failing
                        sample, on as many tasks
    llm-1shot/-2shot    an LLM writes feedback and refinement for ILF's x0 (paper §3.3)

Every builder reads round 1 of a run directory (`r1/`): its R, x0 results, feedback and refinements.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Callable

from ilf import pairs as build
from ilf.config import FeedbackConfig, RefineConfig
from ilf.jsonl import load_jsonl
from ilf.tasks import TaskSet

LLM_BASELINES = {"llm-1shot": 1, "llm-2shot": 2}  # method -> human examples in the LLM's prompt
# Methods built from π_θ's own samples (r1/results.jsonl): none with feedback.source = authors.
FROM_OWN_SAMPLES = ("rft", "rft-all", "ilf-rft", "rft-dpo")


def baseline_pairs(method: str, r1: Path, tasks: TaskSet, *, seed: int, annotations: Callable[[], list[dict]]) -> list[dict]:
    """The training records of a baseline that needs no model (every method but the LLM ones).
    `annotations` gives the authors' 195 annotations (read only by human-refinements)."""
    ilf_r = load_jsonl(r1 / "train_pairs.jsonl")
    r_tasks = [p["task_id"] for p in ilf_r]
    x0_results = r1 / "results.jsonl"
    if method in FROM_OWN_SAMPLES and not x0_results.exists():  # feedback.source = authors: never sampled
        return []
    if method == "gold":
        return build.gold_pairs(tasks, r_tasks)
    if method == "human-refinements":
        return build.human_refinement_pairs(sorted(annotations(), key=lambda a: a["task_id"]), tasks, task_ids=r_tasks)
    if method in ("rft", "rft-all", "ilf-rft"):
        # The complete proposal (π*(x|t) ∝ π_θ(x|t)·1[x passes]): π_θ's passing x0 are exact samples of
        # π* where π_θ solves a task; R stands in only where it does not.
        recs = build.rft_pairs(load_jsonl(x0_results), tasks, len(r_tasks) if method == "rft" else None, seed=seed)
        return ilf_r + recs if method == "ilf-rft" else recs
    if method == "ilf-dpo":
        return build.refinement_preferences(load_jsonl(r1 / "refinements.jsonl"), load_jsonl(r1 / "feedback.jsonl"), tasks, ilf_r)
    if method == "rft-dpo":  # on as many tasks as ilf-dpo, as rft is on as many as R
        return build.sample_preferences(load_jsonl(x0_results), tasks, len(r_tasks), seed=seed)
    raise ValueError(f"not a baseline without a model: {method!r}")


def llm_x0(failing: list[dict[str, Any]], max_x0: int, seed: int) -> list[dict[str, Any]]:
    """The x0 an LLM baseline repairs: ILF's own failing x0 (or the authors' CodeGen programs), at
    most max_x0 of them, a seeded subset (0 = all)."""
    if max_x0 and max_x0 < len(failing):
        keep = set(random.Random(f"{seed}:llm-x0").sample(range(len(failing)), max_x0))
        failing = [a for i, a in enumerate(failing) if i in keep]
    return [
        {
            "task_id": a["task_id"],
            "sample_id": a.get("sample_id", 0),
            "program": a["program"],
            "passed": False,
            "status": "failed",
            "error": a.get("error"),
        }
        for a in failing
    ]


def llm_refinement_pairs(
    method: str,
    x0: list[dict[str, Any]],
    tasks: TaskSet,
    open_engine: Callable[[], Any],
    out_dir: Path,
    *,
    fc: FeedbackConfig,
    rc: RefineConfig,
    examples: list[dict[str, Any]],
    seed: int,
    model_name: str,
    compare: str,
    console,
) -> list[dict]:
    """The paper's §3.3 ablation: an LLM writes feedback AND refinement for each x0, with
    feedback.llm_n (default refine.n) draws per x0 at π_Refine's temperature; the refinements are
    judged in the sandbox and R is chosen from them as ILF's is. Resumes from OUT_DIR's files."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from ilf.evaluation import evaluate
    from ilf.feedback.llm import write_llm_feedback
    from ilf.progress import LogProgress
    from ilf.text import edit_distance

    # A chunk of x0 at a time (feedback, then refinement): the bar moves per chunk.
    columns = (BarColumn(), MofNCompleteColumn(), TextColumn("x0"), TimeElapsedColumn(), TimeRemainingColumn())
    with LogProgress(TextColumn(f"{method}: LLM feedback + refinement"), *columns, console=console) as bar:
        t = bar.add_task(f"{method} (x0)", total=len(x0))
        recs = write_llm_feedback(
            x0,
            tasks,
            open_engine,
            out_dir / "feedback.jsonl",
            k_shot=LLM_BASELINES[method],
            with_refinement=True,
            examples=examples,
            seed=seed,
            n=fc.llm_n or rc.n,
            temperature=rc.temperature,
            top_p=rc.top_p,
            model_name=model_name,
            progress=lambda done, total: bar.update(t, completed=done, total=total),
        )
    samples = [
        {
            "task_id": x["task_id"],
            "feedback_id": x["feedback_id"],
            "sample_id": 0,
            "program": x["refinement"],
            "refinement": x["refinement"],
            "edit_distance": edit_distance(x["program"], x["refinement"], tasks[x["task_id"]].prompt),
        }
        for x in recs
        if x.get("refinement")
    ]
    results = evaluate(samples, tasks, output=out_dir / "refinements.jsonl", progress=True, compare=compare)
    return build.ilf_pairs(results, tasks, seed=seed, source=method)
