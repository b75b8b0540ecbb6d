"""Reading feedback records to refine: ilf's feedback JSONL (`ilf feedback`, a run's
r<N>/feedback.jsonl, `ilf annotations export`) or the authors' file, with the leak guard applied."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ilf.errors import IlfError
from ilf.tasks import TaskSet
from ilf.text import normalize_newlines


def read_feedback(path: str | Path, tasks: TaskSet) -> list[dict[str, Any]]:
    """Feedback records to refine: an ilf feedback JSONL (`ilf feedback`, a run's r<N>/feedback.jsonl,
    `ilf annotations export`) or the authors' file. One clear error names the file, line and field."""
    from ilf.annotations import from_authors_row
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
