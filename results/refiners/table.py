"""results/refiners: the table of π_Refine × feedback × interface against π_θ sampled again.

Reads the raw files (RAW = results/refiners/raw by default, or a run directory of run.sh) and prints
the Markdown table of README.md, one row per refiner, each compared with the same control (π_θ
sampled again on the same tasks with the same budget) by ilf.report.control.control_comparison:

    python results/refiners/table.py [RAW]
"""

from __future__ import annotations

import re
import statistics
import sys
from pathlib import Path

from ilf.feedback.llm import without_leaks
from ilf.jsonl import load_jsonl, stored
from ilf.refine import refine_summary
from ilf.report.control import control_comparison
from ilf.tasks import load_tasks

HERE = Path(__file__).resolve().parent
ROWS = [  # (directory, refiner, feedback, interface)
    ("paper-trace", "0.5B, 2 human shots", "execution trace", "paper"),
    ("chat-trace-refuse", "0.5B", "execution trace", "chat, copies refused"),
    ("chat-resample", "0.5B", "– (the task alone: π_θ through its chat template)", "regenerate"),
    ("regenerate-none", "0.5B", 'none ("The program fails its tests.")', "regenerate"),
    ("regenerate-trace", "0.5B", "execution trace", "regenerate"),
    ("regenerate-ref15", "0.5B", "1.5B shown the reference", "regenerate"),
    ("chat-ref15-refuse", "0.5B", "1.5B shown the reference", "chat, copies refused"),
    ("ft-refiner-trace", "0.5B fine-tuned on 309 π_θ trace triples + 44 human", "execution trace", "paper"),
    ("r15-chat-resample", "1.5B", "– (the task alone: the 1.5B through its chat template)", "regenerate"),
    ("r15-regenerate-trace", "1.5B", "execution trace", "regenerate"),
    ("r15-chat-trace-refuse", "1.5B", "execution trace", "chat, copies refused"),
]
CONTROL = "regenerate-trace/refinements_control_results.jsonl"


def wall_seconds(raw: Path) -> dict[str, int]:
    """Sampling seconds per row, from run.sh's log ('sampled NAME in S s')."""
    log = raw / "log.txt"
    if not stored(log).exists():
        return {}
    text = log.read_text()
    # A row started more than once was resumed: its last start-to-end time leaves out earlier sessions' work.
    starts = {m[1]: len(re.findall(rf"start {re.escape(m[1])}$", text, flags=re.M)) for m in re.finditer(r"sampled (\S+) in", text)}
    return {m[1]: int(m[2]) for m in re.finditer(r"sampled (\S+) in (\d+) s", text) if starts.get(m[1], 1) == 1}


def main(raw: Path) -> None:
    control = load_jsonl(stored(raw / CONTROL))
    pool = [r["task_id"] for r in load_jsonl(stored(raw / "feedback_trace.jsonl"))]
    tasks = load_tasks("mbpp", task_ids=pool)  # the leak guard reads the references
    seconds = wall_seconds(raw)
    print(
        "| π_Refine | feedback | interface | pass@1 | π_θ again pass@1 | Δ pass@1 [95% CI] | tasks solved | "
        "solved only by π_Refine [95% CI] | only by π_θ again | net Δ tasks solved [95% CI] | copies of x0 | leaks dropped | "
        "tokens per refinement | sampling s per 100 x0 |"
    )
    print("|---|---|---|---:|---:|---|---:|---|---:|---|---:|---:|---:|---:|")
    for name, refiner, feedback, interface in ROWS:
        path = raw / name / "refinements_results.jsonl"
        if not stored(path).exists():
            print(f"| {refiner} | {feedback} | {interface} | not run |" + " |" * 11)
            continue
        recs = load_jsonl(stored(path))
        s = refine_summary(recs, 5)
        c = control_comparison(recs, control, tasks=pool)  # tasks whose feedback leaked count as unsolved
        lo, hi = c["delta_pass@1_ci"]
        blo, bhi = c["beyond_ci"]
        fb_name = "feedback_ref15.jsonl" if "ref15" in name else ""
        dropped = sum(without_leaks(load_jsonl(stored(raw / fb_name)), tasks)[1].values()) if fb_name else 0
        tokens = statistics.fmean(r["num_tokens"] for r in recs if not r.get("refused"))
        num_x0 = len({r["feedback_id"] for r in recs})
        sec = seconds.get(name)
        per100 = f"{100 * sec / num_x0:.0f}" if sec else "– (resumed)"
        print(
            f"| {refiner} | {feedback} | {interface} | {100 * c['pass@1']:.1f} | {100 * c['control_pass@1']:.1f} | "
            f"{100 * c['delta_pass@1']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] | {c['solved']} / {c['tasks']} | "
            f"**{c['beyond']}** [{blo:.0f}, {bhi:.0f}] | {c['missed']} | "
            f"{c['net_solved']:+d} [{c['net_solved_ci'][0]:+.0f}, {c['net_solved_ci'][1]:+.0f}] | "
            f"{s['copies_of_x0']} ({100 * s.get('copy_share', 0):.0f}%) | "
            f"{dropped} | {tokens:.0f} | {per100} |"
        )


def against(raw: Path, base_name: str, label: str, rows: list[tuple[str, str, str, str]]) -> None:
    """Rows against another control: a row of this table that samples with the task alone (the
    chat-resample rows: a model through its chat template, no x0, no feedback)."""
    base = raw / base_name / "refinements_results.jsonl"
    if not stored(base).exists():
        return
    control = load_jsonl(stored(base))
    pool = [r["task_id"] for r in load_jsonl(stored(raw / "feedback_trace.jsonl"))]
    print()
    print(f"| π_Refine | feedback | interface | pass@1 | {label} pass@1 | Δ pass@1 [95% CI] | net Δ tasks solved [95% CI] |")
    print("|---|---|---|---:|---:|---|---|")
    for name, refiner, feedback, interface in rows:
        path = raw / name / "refinements_results.jsonl"
        if name == base_name or not stored(path).exists():
            continue
        c = control_comparison(load_jsonl(stored(path)), control, tasks=pool)
        lo, hi = c["delta_pass@1_ci"]
        print(
            f"| {refiner} | {feedback} | {interface} | {100 * c['pass@1']:.1f} | {100 * c['control_pass@1']:.1f} | "
            f"{100 * c['delta_pass@1']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] | "
            f"{c['net_solved']:+d} [{c['net_solved_ci'][0]:+.0f}, {c['net_solved_ci'][1]:+.0f}] |"
        )


if __name__ == "__main__":
    where = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "raw"
    main(where)
    # π_θ (the 0.5B) through its chat template with the task alone: the control of every chat interface
    against(where, "chat-resample", "0.5B chat control", [r for r in ROWS if not r[0].startswith("r15-")])
    # the 1.5B through its chat template with the task alone: what the 1.5B's rows must beat to credit the feedback
    against(where, "r15-chat-resample", "1.5B chat control", [r for r in ROWS if r[0].startswith("r15-")])
