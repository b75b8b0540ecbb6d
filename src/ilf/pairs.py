"""Training pairs for FINETUNE: the one place each kind is built (docs/artifacts.md, "train_pairs.jsonl").

A pair is `{task_id, kind, prompt, completion, source, ...}`:
- kind "program" (π_θ and every Table 4 method): prompt = the task prompt π_θ sees at test time,
  completion = the body of a program after that prompt (ILF's refinement, MBPP's gold program, a
  human refinement, a passing x0 for RFT);
- kind "refine" (π_Refine): prompt = the OLD CODE / FEEDBACK / REFINEMENT prompt, completion = the
  refinement's body.
"""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

from ilf.errors import IlfError
from ilf.tasks import Task, TaskSet, normalize_newlines, refinement_prompt
from ilf.text import body_after_prompt


def program_pair(task: Task, program: str, source: str, **extra: Any) -> dict[str, Any]:
    """task prompt -> the program's body (π_θ's training pair)."""
    return {
        "task_id": task.task_id,
        "kind": "program",
        "prompt": task.prompt,
        "completion": body_after_prompt(program, task.prompt),
        "source": source,
        **extra,
    }


def refine_pair(task: Task, x0: str, feedback: str, refinement: str, source: str = "human") -> dict[str, Any]:
    """(x0, f) in the refinement prompt -> the refinement's body (π_Refine's training pair)."""
    return {
        "task_id": task.task_id,
        "kind": "refine",
        "prompt": refinement_prompt(task, x0, feedback),
        "completion": body_after_prompt(refinement, task.prompt),
        "source": source,
    }


def ilf_pairs(
    results: Iterable[dict[str, Any]],
    tasks: TaskSet,
    *,
    seed: int = 0,
    max_edit_distance: float = 1.0,
    dropped: dict[str, int] | None = None,
    source: str = "ilf",
) -> list[dict[str, Any]]:
    """R: per task, one passing refinement chosen at random (seeded), as the paper does.

    A passing refinement farther than `max_edit_distance` from its x0 (the bounded measure of
    ilf.refine.edit_distance; 1.0 keeps all) is dropped; `dropped` receives the counts.
    """
    by_task: dict[Any, list[dict]] = defaultdict(list)
    passing_tasks, n_dropped = set(), 0
    for r in results:
        if not r.get("passed") or r.get("refused"):
            continue
        passing_tasks.add(r["task_id"])
        if r.get("edit_distance") is not None and r["edit_distance"] > max_edit_distance:
            n_dropped += 1
            continue
        by_task[r["task_id"]].append(r)
    if dropped is not None:
        dropped["passing_refinements_dropped_by_edit_distance"] = n_dropped
        dropped["tasks_lost_to_edit_distance"] = len(passing_tasks - set(by_task))
    pairs = []
    for tid in sorted(by_task, key=lambda t: (str(type(t)), t)):
        cands = sorted(by_task[tid], key=lambda r: (str(r["feedback_id"]), r["sample_id"]))
        pick = random.Random(f"{seed}:select:{tid}").choice(cands)
        pairs.append(
            program_pair(
                tasks[tid],
                pick["refinement"],
                source,
                feedback_id=pick["feedback_id"],
                sample_id=pick["sample_id"],
                edit_distance=pick.get("edit_distance"),
            )
        )
    return pairs


def gold_pairs(tasks: TaskSet, task_ids: Sequence[Any]) -> list[dict[str, Any]]:
    """MBPP's gold programs for the given tasks (Table 4's gold baseline, on R's task ids)."""
    return [program_pair(tasks[t], tasks[t].gold, "gold") for t in task_ids]


def human_refinement_pairs(
    annotations: Iterable[dict[str, Any]], tasks: TaskSet, task_ids: Iterable[Any] | None = None, kind: str = "program"
) -> list[dict[str, Any]]:
    """The annotators' (x0, f, x1) as pairs: kind program (Table 4's human-refinements baseline) or
    refine (π_Refine's training triples), in the order given. task_ids: only these tasks (None = all)."""
    if kind not in ("refine", "program"):
        raise IlfError(f"unknown pair kind {kind!r}; expected refine or program")
    wanted = None if task_ids is None else set(task_ids)
    out = []
    for a in annotations:
        task = tasks.get(a["task_id"])
        if (wanted is not None and a["task_id"] not in wanted) or task is None:
            continue
        # The authors' file mixes CRLF and LF; the refinement prompt wants LF and no trailing blank lines.
        x0, x1 = normalize_newlines(a["program"]), normalize_newlines(a["refinement"])
        f = normalize_newlines(a["feedback"]).strip()
        out.append(refine_pair(task, x0, f, x1) if kind == "refine" else program_pair(task, x1, "human-refinements"))
    return out


def rft_pairs(results: Iterable[dict[str, Any]], tasks: TaskSet, k: int | None, seed: int = 0) -> list[dict[str, Any]]:
    """RFT control (not in the paper): one passing x0 ~ π_θ per task, on k tasks π_θ already
    solves (seeded choice), so it trains on as many tasks as ILF's R without any feedback;
    k None: on every task π_θ solves (π_θ's exact samples of π* where it passes, paper §2)."""
    passing: dict[Any, list[dict]] = {}
    for res in results:
        if res.get("passed"):
            passing.setdefault(res["task_id"], []).append(res)
    k = len(passing) if k is None else k
    chosen = random.Random(f"{seed}:rft").sample(sorted(passing), min(k, len(passing)))
    out = []
    for tid in sorted(chosen):
        pick = random.Random(f"{seed}:rft:{tid}").choice(sorted(passing[tid], key=lambda x: x["sample_id"]))
        out.append(program_pair(tasks[tid], pick["program"], "rft", sample_id=pick["sample_id"]))
    return out


def annotation_pairs(
    path: str | Path | None = None, split: str = "refine", kind: str = "refine", data_dir: str | Path | None = None
) -> list[dict[str, Any]]:
    """Pairs from the ILF authors' `surge_annotations.jsonl` (`ilf finetune --data surge`).
    split: an MBPP split name or id ranges ("refine" = the 44 MBPP_Refine triples the paper
    trains π_Refine on)."""
    from ilf.annotations import default_path, load_authors
    from ilf.tasks import load_tasks, parse_ranges

    if kind not in ("refine", "program"):
        raise IlfError(f"unknown pair kind {kind!r}; expected refine or program")
    wanted = parse_ranges(split)
    src = Path(path) if path else default_path(data_dir)
    recs = [r for r in load_authors(src) if wanted is None or r["task_id"] in wanted]
    tasks = load_tasks("mbpp", data_dir=data_dir, task_ids=[r["task_id"] for r in recs]) if recs else None
    # An MBPP task that cannot be formatted is reported by load_tasks' callers.
    pairs = human_refinement_pairs(recs, tasks, kind=kind) if tasks else []
    if not pairs:
        raise IlfError(f"{src}: no annotation in split {split!r}")
    return pairs


def preference_pair(task: Task, chosen: str, rejected: str, source: str, **extra: Any) -> dict[str, Any]:
    """TRL's prompt/chosen/rejected from two whole programs of `task` (bodies after the task prompt)."""
    from ilf.text import body_after_prompt

    return {
        "task_id": task.task_id,
        "prompt": task.prompt,
        "chosen": body_after_prompt(chosen, task.prompt),
        "rejected": body_after_prompt(rejected, task.prompt),
        "source": source,
        **extra,
    }


def refinement_preferences(
    refinements: Iterable[dict[str, Any]], feedback: Iterable[dict[str, Any]], tasks: TaskSet, r: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """DPO from feedback: for each program of R, the repair it holds over the failing x0 it repaired."""
    x0 = {f["feedback_id"]: f["program"] for f in feedback}
    by_key = {(str(x["feedback_id"]), str(x["sample_id"])): x for x in refinements}
    out = []
    for p in r:
        ref = by_key.get((str(p.get("feedback_id")), str(p.get("sample_id"))))
        if ref is None or ref["feedback_id"] not in x0:
            continue
        task = tasks[p["task_id"]]
        out.append(preference_pair(task, ref["refinement"], x0[ref["feedback_id"]], "ilf-dpo", feedback_id=ref["feedback_id"]))
    return out


def sample_preferences(results: Iterable[dict[str, Any]], tasks: TaskSet, k: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """The DPO control without feedback: one of π_θ's passing samples over one of its failing samples
    (seeded), on k tasks that have both (a seeded choice; None: every such task), so the model learns
    from its own contrast alone, on as many tasks as ILF-DPO's pairs."""
    passing: dict[Any, list[dict]] = {}
    failing: dict[Any, list[dict]] = {}
    for res in results:
        (passing if res.get("passed") else failing).setdefault(res["task_id"], []).append(res)
    both = sorted(set(passing) & set(failing), key=lambda t: (str(type(t)), t))
    if k is not None and k < len(both):
        keep = set(random.Random(f"{seed}:prefer").sample(both, k))
        both = [t for t in both if t in keep]
    out = []
    for tid in both:
        rng = random.Random(f"{seed}:prefer:{tid}")
        good = rng.choice(sorted(passing[tid], key=lambda x: str(x["sample_id"])))
        bad = rng.choice(sorted(failing[tid], key=lambda x: str(x["sample_id"])))
        ids = [good["sample_id"], bad["sample_id"]]
        out.append(preference_pair(tasks[tid], good["program"], bad["program"], "rft-dpo", sample_ids=ids))
    return out
