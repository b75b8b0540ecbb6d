"""The decisive control of every π_Refine result: π_θ sampled again on the same tasks with the same
number of samples, no x0 and no feedback, through the same door π_Refine used. A repair is ILF's
signal only where resampling would not have found a passing program. It composes two steps
(sampling and refine's chat-template sampler), so it sits above them; the comparison of the two
result files is a report (`ilf.report.control`)."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Sequence

from ilf.refine import sample_refinements
from ilf.sampling import sample
from ilf.tasks import TaskSet

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
        todo = [tasks[t] for t in budget]
        return sample(todo, engine, dataclasses.replace(params, stop=[]), output, model_name=model_name, engine_name=engine_name)
    alone = [{"task_id": t, "feedback_id": f"control-{t}", "program": "", "feedback": ""} for t in budget]
    protocol = {"model": model_name, "engine": engine_name, "interface": "regenerate", "control": "chat template, the task alone"}
    return sample_refinements(alone, tasks, engine, params, output, interface="regenerate", chat=chat, protocol=protocol)
