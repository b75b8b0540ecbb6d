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

from ilf.jsonl import read_jsonl, require
from ilf.text import code_lines, sentences, word_count


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
    from ilf.annotations import from_authors_row

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


# ---------------------------------------------------------------------------------------------
# The Markdown report of `ilf feedback-stats --output DIR`

CHECK_SAMPLE = 8  # tags per source listed in the report for checking by hand (seeded draw)
CHECK_CHARS = 600  # feedback shown per listed tag; longer texts (traces) are cut with a mark


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def render_report(out: Mapping[str, Any], command: str, feedback: Mapping[str, Mapping[str, Any]], tags=(), seed: int = 0) -> str:
    """report.md: Table 6 per source; with tags, Table 5, the bugs per feedback, Figure 5 and a
    seeded sample of tags with their feedback, so a reader can check the LLM-applied rubric."""
    import random

    lines = [
        "# Feedback statistics (Tables 5-6, Figure 5 analogs)",
        "",
        f"Regenerate with `{command}`.",
        "",
        "## Feedback per source (Table 6 analog)",
        "",
        "Words and sentences per feedback text; shares in %. *with code lines*: the feedback holds at least one whole",
        "line of code; *edit dist.* and *passed* describe the refinements the feedback file carries, when it does.",
        "",
        "| source | feedback | words (mean) | words (median) | sentences (mean) | > 4 sentences | with code lines "
        "| refinements | edit dist. | passed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in out["sources"].values():
        ed = "–" if s["edit_distance_mean"] is None else f"{s['edit_distance_mean']:.3f}"
        lines.append(
            f"| {s['source']} | {s['n']} | {s['words_mean']:.1f} | {s['words_median']:.0f} | {s['sentences_mean']:.1f} | "
            f"{_pct(s['share_over_4_sentences'])} | {_pct(s['share_with_code'])} | {s['refinements']} | {ed} | {_pct(s['share_passed'])} |"
        )
    bugs = out.get("bugs")
    if bugs:
        # The rubric and its categories come from the tags (ilf.feedback.bugs wrote them), so this
        # report does not import the feedback step.
        rubrics = ", ".join(sorted({str(t.get("rubric")) for t in tags}))
        categories = list(next(iter(bugs.values()))["shares"])
        models = sorted({str(t.get("model")) for t in tags})
        srcs = list(bugs)
        lines += [
            "",
            "## Bugs addressed per feedback (Table 5 analog)",
            "",
            f"Tags: rubric {rubrics} of `ilf.feedback.bugs`, applied greedily by {', '.join(models)} (`ilf feedback-bugs`).",
            "Rows: the share of feedback (%) with at least one bug of the category; a feedback can count in several.",
            "Bugs per feedback: mean with a 95% bootstrap CI over feedback texts. Categories and counts are parsed from the",
            "model's own lines (`tags_text`): a line repeated word for word counts once, and a line copied from one of the",
            "rubric's examples is dropped (last row: the share of feedback where that happened).",
            "",
            "| | " + " | ".join(f"{s} (n = {bugs[s]['n']})" for s in srcs) + " |",
            "|---|" + "---|" * len(srcs),
            "| **bugs per feedback** | "
            + " | ".join(f"**{bugs[s]['bugs_mean']:.2f}** [{bugs[s]['bugs_lo']:.2f}, {bugs[s]['bugs_hi']:.2f}]" for s in srcs)
            + " |",
        ]
        for c in categories:
            lines.append(f"| {c} | " + " | ".join(_pct(bugs[s]["shares"][c]) for s in srcs) + " |")
        lines.append("| *a rubric example's line copied (dropped)* | " + " | ".join(_pct(bugs[s].get("share_echoed")) for s in srcs) + " |")
    rows = out.get("bugs_vs_pass_rate")
    if rows:
        lines += [
            "",
            "## π_Refine's pass rate by bugs addressed (Figure 5 analog)",
            "",
            "Per feedback text, the share of its refinements that pass; mean over the feedback with that many bugs,",
            "95% bootstrap CI over feedback texts.",
            "",
            "| source | bugs addressed | feedback | pass rate | 95% CI |",
            "|---|---|---|---|---|",
        ]
        for r in rows:
            k = "5+" if r["bugs"] == 5 else r["bugs"]
            lines.append(f"| {r['source']} | {k} | {r['feedback']} | {_pct(r['value'])} | [{_pct(r['lo'])}, {_pct(r['hi'])}] |")
        lines += ["", "![π_Refine pass rate by bugs addressed](figure5.png)"]
    if tags:
        lines += [
            "",
            "## Tags to check by hand",
            "",
            f"A seeded draw (seed {seed}) of {CHECK_SAMPLE} tags per source: the feedback (cut at {CHECK_CHARS} characters)",
            "and the model's own lines, from which the categories and the bug count are parsed.",
        ]
        by_src: dict[str, list] = defaultdict(list)
        for t in tags:
            by_src[str(t.get("source") or "unknown")].append(t)
        for src, ts in by_src.items():
            lines += ["", f"### {src}"]
            for t in random.Random(f"{seed}-{src}").sample(ts, min(CHECK_SAMPLE, len(ts))):
                text = str(feedback.get(str(t["feedback_id"]), {}).get("feedback", ""))
                if len(text) > CHECK_CHARS:
                    text = text[:CHECK_CHARS] + " […]"
                quoted = "\n".join("> " + x for x in text.splitlines() or [""])
                lines += [
                    "",
                    f"**{t['feedback_id']}** (task {t['task_id']}): {t['bugs']} bug(s), {', '.join(t['categories']) or 'no tag'}"
                    + (f"; {t['echoed']} line(s) copied from a rubric example, dropped" if t.get("echoed") else ""),
                    "",
                    quoted,
                    "",
                    "```text",
                    str(t.get("tags_text", "")).strip(),
                    "```",
                ]
    return "\n".join(lines) + "\n"
