"""Feedback statistics per source (the paper's Table 6 analog): how long feedback is, how often
it contains whole lines of code, how far refinements moved from the original program.

Input: feedback JSONL files of any source, or the authors' surge_annotations.jsonl as-is.
`ilf feedback-stats FILE...` prints a table (or `--json`).
"""

from __future__ import annotations

import os
import statistics
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping

from ilf.feedback.text import code_lines, sentences, word_count
from ilf.jsonl import read_jsonl, require


@dataclass
class SourceStats:
    source: str
    n: int  # feedback texts
    words_mean: float
    words_median: float
    sentences_mean: float
    share_over_4_sentences: float  # the protocol asks for 1-4 sentences
    share_with_code: float  # feedback with at least one whole line of code
    refinements: int  # records with a refinement
    edit_distance_mean: float | None  # normalised edit distance of refinements, when recorded
    share_passed: float | None  # share of refinements that passed, when recorded


def feedback_stats(records: Iterable[Mapping[str, Any]]) -> dict[str, SourceStats]:
    """Statistics per `source` (skips and records without feedback text are ignored)."""
    groups: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in records:
        if isinstance(r.get("feedback"), str) and not r.get("skipped"):
            groups[str(r.get("source") or "unknown")].append(r)
    out = {}
    for src, recs in groups.items():
        words = [word_count(r["feedback"]) for r in recs]
        sents = [len(sentences(r["feedback"])) for r in recs]
        dists = [r["edit_distance"] for r in recs if isinstance(r.get("edit_distance"), (int, float))]
        refined = [r for r in recs if r.get("refinement")]
        passed = [bool(r["passed"]) for r in refined if r.get("passed") is not None]
        out[src] = SourceStats(
            source=src,
            n=len(recs),
            words_mean=statistics.fmean(words),
            words_median=float(statistics.median(words)),
            sentences_mean=statistics.fmean(sents),
            share_over_4_sentences=sum(s > 4 for s in sents) / len(recs),
            share_with_code=sum(bool(code_lines(r["feedback"])) for r in recs) / len(recs),
            refinements=len(refined),
            edit_distance_mean=statistics.fmean(dists) if dists else None,
            share_passed=sum(passed) / len(passed) if passed else None,
        )
    return out


def load_feedback_file(path: str | os.PathLike) -> list[dict[str, Any]]:
    """A feedback JSONL of ilf, or the authors' file (converted on the fly)."""
    from ilf.feedback.annotations import from_authors_row

    out = []
    for line, rec in read_jsonl(path):
        if "Feedback" in rec and "original_model_completion" in rec:
            out.append(from_authors_row(rec, path, line))
        else:
            require(rec, "feedback", (str, type(None)), path, line)
            out.append(rec)
    return out


def stats_table(stats: dict[str, SourceStats]):
    from rich.table import Table

    t = Table(title="Feedback per source (Table 6 analog)")
    for col in (
        "source",
        "n",
        "words (mean)",
        "words (median)",
        "sentences",
        "> 4 sentences",
        "with code lines",
        "refinements",
        "edit dist.",
        "passed",
    ):
        t.add_column(col, justify="left" if col == "source" else "right")

    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}%"

    for s in stats.values():
        t.add_row(
            s.source,
            str(s.n),
            f"{s.words_mean:.1f}",
            f"{s.words_median:.0f}",
            f"{s.sentences_mean:.1f}",
            pct(s.share_over_4_sentences),
            pct(s.share_with_code),
            str(s.refinements),
            "-" if s.edit_distance_mean is None else f"{s.edit_distance_mean:.3f}",
            pct(s.share_passed),
        )
    return t


def stats_json(stats: dict[str, SourceStats]) -> dict[str, dict]:
    return {k: asdict(v) for k, v in stats.items()}
