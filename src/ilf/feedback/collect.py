"""The one place an automatic feedback source is chosen: `ilf feedback` and the pipeline both call
`collect_feedback` on the failing x0 they picked (`ilf.feedback.llm.choose_failing`). Human
feedback comes from the annotation store and the authors' from their file; neither is generated."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ilf.errors import IlfError
from ilf.jsonl import write_jsonl

AUTOMATIC_SOURCES = ("llm", "trace")


def collect_feedback(
    source: str,
    failing: Sequence[Mapping[str, Any]],
    tasks: Any,
    output: str | Path | None,
    *,
    engine: Any = None,
    id_prefix: str = "trace",
    k_shot: int = 1,
    with_refinement: bool = False,
    examples: Sequence[Mapping[str, Any]] | None = None,
    reference: bool = False,
    seed: int = 0,
    model_name: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Feedback records on `failing` from `source` (trace | llm), written to `output` atomically
    (trace: when given; llm: always, it is also where a killed run resumes from).

    trace: the failing call, expected vs returned value, or the exception (ilf.feedback.trace).
    llm: `engine` (an engine, or a loader called only if work is left) writes feedback in words,
    resumable through OUTPUT.partial (ilf.feedback.llm.write_llm_feedback). Every record is
    written; whoever reads them for π_Refine applies the leak guard (`without_leaks`)."""
    if source == "trace":
        from ilf.feedback.trace import trace_feedback_records

        recs = trace_feedback_records(failing, tasks, id_prefix=id_prefix)
        if output is not None:
            write_jsonl(output, recs)
        return recs
    if source == "llm":
        from ilf.feedback.llm import write_llm_feedback

        if engine is None or output is None:
            raise IlfError("feedback source llm needs a model to write it and an output file to resume from")
        return write_llm_feedback(
            failing,
            tasks,
            engine,
            output,
            k_shot=k_shot,
            with_refinement=with_refinement,
            examples=examples,
            seed=seed,
            reference=reference,
            model_name=model_name,
            progress=progress,
        )
    raise IlfError(f"feedback source {source!r}: expected one of {', '.join(AUTOMATIC_SOURCES)}")
