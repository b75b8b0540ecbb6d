"""Bug tags of feedback (Tables 5-6, Figure 5 analogs): the rubric's parsing, the summaries, and
`ilf feedback-bugs` / `ilf feedback-stats --bugs` end to end with a real tiny model."""

from __future__ import annotations

import json
import subprocess
import sys

from ilf.feedback.bugs import RUBRIC_VERSION, bugs_vs_pass_rate, category_shares, parse_tags, reparse, rubric_prompt
from ilf.jsonl import load_jsonl

ILF = [sys.executable, "-m", "ilf.cli"]


def _run(args, cwd):
    return subprocess.run(ILF + args, cwd=cwd, capture_output=True, text=True, timeout=600)


def test_parse_tags_counts_bugs_not_verdicts():
    t = parse_tags("- Logic error: wrong loop bound\n- formatting: returns a list\n* regex: bad pattern\nsome prose\n- Unrelated")
    assert t == {"categories": ["logic", "formatting", "regex", "unrelated"], "bugs": 3, "echoed": 0}
    assert parse_tags("- no feedback needed") == {"categories": ["no feedback needed"], "bugs": 0, "echoed": 0}
    assert parse_tags("- misc: ???\n- algebra") == {"categories": ["other", "algebra"], "bugs": 1, "echoed": 0}
    assert parse_tags("- logic: x\n" * 50)["bugs"] == 1  # a looping model's repeats count once
    assert parse_tags("".join(f"- logic: bug {i}\n" for i in range(50)))["bugs"] == 10  # and it is cut
    # A rubric example's line copied into the answer is about the example, not this program.
    t = parse_tags("- regex: wrong pattern\n- Recursion: no base case for n = 1")
    assert t == {"categories": ["regex"], "bugs": 1, "echoed": 1}


def test_feedback_stats_reparses_tags_from_the_models_lines():
    stale = {"feedback_id": "a", "categories": ["recursion"], "bugs": 1, "tags_text": "- recursion: no base case for n = 1"}
    assert reparse(stale) == {**stale, "categories": [], "bugs": 0, "echoed": 1}
    by_hand = {"feedback_id": "b", "categories": ["logic"], "bugs": 1}  # a person's tag: kept as written
    assert reparse(by_hand) == by_hand


def test_rubric_prompt_ends_where_the_model_lists_bugs():
    p = rubric_prompt("Add two numbers.", "def add(a, b):\n    return a - b\n", "It subtracts\ninstead of adding.")
    assert p.endswith("FEEDBACK: It subtracts instead of adding.\nBUGS:\n")
    assert p.count("BUGS:\n") == 4  # three hand-written examples, then the query


def test_summaries_per_source_and_by_bug_count():
    tags = [
        {"feedback_id": "a", "source": "authors", "categories": ["logic", "formatting"], "bugs": 2},
        {"feedback_id": "b", "source": "authors", "categories": ["logic"], "bugs": 1},
        {"feedback_id": "c", "source": "llm", "categories": ["no feedback needed"], "bugs": 0},
    ]
    s = category_shares(tags)
    assert s["authors"]["n"] == 2 and s["authors"]["bugs_mean"] == 1.5
    assert s["authors"]["shares"]["logic"] == 1.0 and s["authors"]["shares"]["formatting"] == 0.5
    assert s["llm"]["shares"]["no feedback needed"] == 1.0
    results = [{"feedback_id": "a", "passed": p} for p in (True, False, False, False)] + [
        {"feedback_id": "b", "passed": p} for p in (True, True)
    ]
    rows = bugs_vs_pass_rate(tags, results, resamples=200)
    assert [(r["source"], r["bugs"], r["feedback"], r["value"]) for r in rows] == [("authors", 1, 1, 1.0), ("authors", 2, 1, 0.25)]
    results.append({"feedback_id": "c", "passed": True})  # now c has one: a row of its own source
    rows = bugs_vs_pass_rate(tags, results, resamples=200)
    assert [(r["source"], r["bugs"], r["value"]) for r in rows] == [("authors", 1, 1.0), ("authors", 2, 0.25), ("llm", 0, 1.0)]


def test_feedback_bugs_tags_every_feedback_resumes_and_feeds_feedback_stats(tmp_path, tiny, data_dir):
    fb = [
        {
            "task_id": t,
            "feedback_id": f"trace-{t}",
            "program": f"def f{t}(x):\n    return None\n",
            "feedback": "Returns None.",
            "source": "trace",
        }
        for t in (601, 602, 603)
    ]
    (tmp_path / "fb.jsonl").write_text("".join(json.dumps(r) + "\n" for r in fb))
    args = [
        "feedback-bugs",
        "fb.jsonl",
        "--output",
        "tags.jsonl",
        "--model",
        str(tiny),
        "--engine",
        "transformers",
        "--data-dir",
        str(data_dir),
    ]
    proc = _run(args, tmp_path)
    assert proc.returncode == 0, proc.stderr
    tags = load_jsonl(tmp_path / "tags.jsonl")
    assert [t["feedback_id"] for t in tags] == [r["feedback_id"] for r in fb]
    for t in tags:  # whatever the tiny model wrote, the record is its parse
        assert t["rubric"] == RUBRIC_VERSION and t["source"] == "trace"
        assert {k: t[k] for k in ("categories", "bugs", "echoed")} == parse_tags(t["tags_text"])
    before = (tmp_path / "tags.jsonl").read_bytes()
    assert _run(args, tmp_path).returncode == 0
    assert (tmp_path / "tags.jsonl").read_bytes() == before  # resumed: nothing tagged twice

    # Hand-set tags (the tiny model's are gibberish) and refinement results give Table 5 and Figure 5.
    hand = [dict(t, tags_text="".join(f"- logic: bug {j}\n" for j in range(i + 1))) for i, t in enumerate(tags)]
    (tmp_path / "tags.jsonl").write_text("".join(json.dumps(t) + "\n" for t in hand))
    res = [{"feedback_id": f"trace-{t}", "passed": p} for t, p in ((601, True), (601, True), (602, True), (602, False), (603, False))]
    (tmp_path / "x1_results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in res))
    proc = _run(
        ["feedback-stats", "fb.jsonl", "--bugs", "tags.jsonl", "--refinements", "x1_results.jsonl", "--figure", "fig5.png", "--json"],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["bugs"]["trace"]["bugs_mean"] == 2.0
    assert [(r["bugs"], r["value"]) for r in out["bugs_vs_pass_rate"]] == [(1, 1.0), (2, 0.5), (3, 0.0)]
    assert (tmp_path / "fig5.png").read_bytes()[:4] == b"\x89PNG"
    assert out["bugs"]["trace"]["bugs_lo"] <= 2.0 <= out["bugs"]["trace"]["bugs_hi"]

    # --output: a report directory whose Markdown holds the same numbers and every tag to check (3 < the sample size).
    proc = _run(["feedback-stats", "fb.jsonl", "--bugs", "tags.jsonl", "--refinements", "x1_results.jsonl", "--output", "rep"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "rep" / "stats.json").read_text()) == out
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "`ilf feedback-stats fb.jsonl --bugs tags.jsonl --refinements x1_results.jsonl --output rep`" in md
    assert "| **bugs per feedback** | **2.00** [" in md and "| trace | 2 | 1 | 50.0 | [" in md and "](figure5.png)" in md
    assert all(f"**trace-{t}** (task {t})" in md for t in (601, 602, 603)) and "> Returns None." in md
    assert (tmp_path / "rep" / "figure5.png").read_bytes()[:4] == b"\x89PNG"


def test_figure_without_tags_is_one_line(tmp_path):
    (tmp_path / "fb.jsonl").write_text(json.dumps({"task_id": 601, "feedback_id": "a", "program": "x", "feedback": "y"}) + "\n")
    proc = _run(["feedback-stats", "fb.jsonl", "--figure", "f.png"], tmp_path)
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "--figure need --bugs" in lines[0], proc.stderr
    assert not (tmp_path / "f.png").exists()
    # Tags that miss every feedback: one line, and no half-made report directory.
    (tmp_path / "tags.jsonl").write_text(json.dumps({"feedback_id": "zz", "source": "x", "categories": [], "bugs": 0}) + "\n")
    proc = _run(["feedback-stats", "fb.jsonl", "--bugs", "tags.jsonl", "--output", "rep"], tmp_path)
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "tags.jsonl: no tags" in lines[0], proc.stderr
    assert not (tmp_path / "rep").exists()
