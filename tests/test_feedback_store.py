"""The feedback store (SQLite), the authors' annotations, text measures, trace feedback, statistics."""

import json
import sqlite3
import time

import pytest
from feedback_helpers import FIXED, PROMPT, WRONG, failing, make_task

from ilf.annotations import AUTHORS_FIELDS, load_authors, to_authors_row, write_authors
from ilf.errors import IlfError
from ilf.feedback.store import AlreadyAnnotated, FeedbackStore
from ilf.feedback.trace import trace_feedback, trace_feedback_records
from ilf.report.feedback import feedback_stats, load_feedback_file
from ilf.text import code_lines, levenshtein, normalized_edit_distance, sentences


@pytest.fixture
def authors_path(data_dir):
    return data_dir / "surge_annotations.jsonl"


def test_add_failing_keeps_up_to_ten_distinct_failing_programs(tmp_path):
    store = FeedbackStore(tmp_path / "f.db")
    results = [failing(1, i, PROMPT + f"    return a - {i}\n") for i in range(14)]
    results += [failing(1, 20, PROMPT + "    return a - 0\n"), {**failing(1, 21, FIXED), "passed": True}]
    results += [failing(2, 0)]
    rep = store.add_failing(results, {1: make_task(1), 2: make_task(2)})
    assert (rep.tasks, rep.samples, rep.passing_results) == (2, 11, 1)
    assert [s.sample_id for s in store.samples("1")] == list(range(10))
    # Adding the same results again changes nothing.
    assert store.add_failing(results, {1: make_task(1), 2: make_task(2)}).samples == 0
    with pytest.raises(IlfError, match="not in the loaded tasks"):
        store.add_failing([failing(3, 0)], {1: make_task(1)})


def test_leases_are_exclusive_and_expire(tmp_path):
    store = FeedbackStore(tmp_path / "f.db")
    store.add_failing([failing(t, 0) for t in (1, 2)], {t: make_task(t) for t in (1, 2)})
    store.add_annotator("a"), store.add_annotator("b"), store.add_annotator("c")
    a, b, c = store.annotators()
    assert store.next_task(a) == "1"
    assert store.next_task(a) == "1"  # keeps their task
    assert store.next_task(b) == "2"  # not the one a holds
    assert store.next_task(c) is None  # both leased
    store.submit(a, "sub-a-000001", "1", sample_pk=store.samples("1")[0].id, feedback="f", refinement=FIXED, passed=True)
    assert store.next_task(a) is None  # 1 is done, 2 is b's
    # Shared mode: several annotators per task, at the same time.
    assert store.next_task(c, annotations_per_task=2, exclusive=False) in ("1", "2")
    # An expired lease frees the task.
    with store.tx() as conn:
        conn.execute("UPDATE leases SET expires_at = ?", (time.time() - 1,))
    assert store.next_task(c) == "2"


def test_submissions_are_idempotent_and_one_per_task(tmp_path):
    store = FeedbackStore(tmp_path / "f.db")
    store.add_failing([failing(1, 0), failing(2, 0)], {t: make_task(t) for t in (1, 2)})
    store.add_annotator("a"), store.add_annotator("b")
    a, b = store.annotators()
    pk = store.samples("1")[0].id
    rec, created = store.submit(a, "same-id-0001", "1", sample_pk=pk, feedback="Use +.", refinement=FIXED, passed=True, edit_distance=0.1)
    again, created2 = store.submit(a, "same-id-0001", "1", sample_pk=pk, feedback="other", refinement=FIXED, passed=True)
    assert created and not created2 and again["feedback_id"] == rec["feedback_id"] and again["feedback"] == "Use +."
    with pytest.raises(AlreadyAnnotated):
        store.submit(a, "other-id-0002", "1", sample_pk=pk, feedback="x", refinement=FIXED, passed=True)
    with pytest.raises(IlfError, match="another annotator"):
        store.submit(b, "same-id-0001", "1", sample_pk=pk, feedback="x", refinement=FIXED, passed=True)
    with pytest.raises(IlfError, match="does not belong"):
        store.submit(b, "b-id-000003", "2", sample_pk=pk, feedback="x", refinement=FIXED, passed=True)
    store.submit(b, "b-skip-0004", "2", skip=True)
    out = tmp_path / "out.jsonl"
    assert store.export(out) == 1
    (exported,) = [json.loads(x) for x in out.read_text().splitlines()]
    for f in (
        "task_id",
        "sample_id",
        "program",
        "feedback",
        "refinement",
        "source",
        "author",
        "created_at",
        "feedback_id",
        "edit_distance",
        "passed",
    ):
        assert f in exported
    assert exported["task_id"] == 1 and exported["sample_id"] == 0 and exported["program"] == WRONG
    assert (exported["source"], exported["author"], exported["passed"]) == ("human", "a", True)
    assert len(store.feedback_records(include_skips=True)) == 2
    assert store.progress(b) == {"tasks": 2, "tasks_done": 2, "feedback": 0, "skip": 1}


def test_tokens_are_stored_hashed(tmp_path):
    store = FeedbackStore(tmp_path / "f.db")
    token = store.add_annotator("alice")
    raw = (tmp_path / "f.db").read_bytes() + (tmp_path / "f.db-wal").read_bytes()
    assert token.encode() not in raw
    assert store.annotator_by_token(token).name == "alice"
    assert store.annotator_by_token(token + "x") is None
    new = store.add_annotator("alice")  # a new token replaces the old one
    assert store.annotator_by_token(token) is None and store.annotator_by_token(new).name == "alice"


def test_wal_mode(tmp_path):
    FeedbackStore(tmp_path / "f.db")
    assert sqlite3.connect(tmp_path / "f.db").execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# -- the authors' annotations -------------------------------------------------------------------


def test_authors_file_round_trips_byte_for_byte(tmp_path, authors_path):
    recs = load_authors(authors_path)
    assert len(recs) == 195
    out = tmp_path / "again.jsonl"
    assert write_authors(out, recs) == 195
    assert out.read_bytes() == authors_path.read_bytes()
    # Per field: same names, order and values (the file has CRLF line ends and U+FFFD).
    original = [json.loads(x) for x in authors_path.read_text(encoding="utf-8").splitlines()]
    back = [to_authors_row(r) for r in recs]
    assert back == original
    assert all(list(b) == list(o) for b, o in zip(back, original))
    assert any("\r\n" in v for r in back for v in r.values() if isinstance(v, str))
    assert any("\ufffd" in v for r in back for v in r.values() if isinstance(v, str))
    assert set(original[0]) == set(AUTHORS_FIELDS)


def test_authors_round_trip_through_the_store(tmp_path, authors_path):
    store = FeedbackStore(tmp_path / "f.db")
    assert store.add_feedback(load_authors(authors_path)) == 195
    assert store.add_feedback(load_authors(authors_path)) == 0  # already there
    store.export(tmp_path / "ilf.jsonl")
    # The ilf export re-imports and still gives the authors' file back.
    store2 = FeedbackStore(tmp_path / "g.db")
    store2.add_feedback(load_feedback_file(tmp_path / "ilf.jsonl"))
    write_authors(tmp_path / "back.jsonl", store2.feedback_records())
    assert (tmp_path / "back.jsonl").read_bytes() == authors_path.read_bytes()
    r = store.feedback_records()[0]
    assert (r["source"], r["feedback_id"], r["task_id"]) == ("authors", "authors-1", 1)
    assert r["refinement"] == r["authors"]["prompt"] + r["authors"]["completion"]


def test_bad_authors_row_names_file_line_field(tmp_path, authors_path):
    lines = authors_path.read_text(encoding="utf-8").splitlines()
    row = json.loads(lines[2])
    row["Feedback"] = 3
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines[:2] + [json.dumps(row)]) + "\n")
    with pytest.raises(IlfError, match=r"bad.jsonl:3: field 'Feedback' must be str"):
        load_authors(bad)


# -- text measures ---------------------------------------------------------------------------------


def test_edit_distance_is_the_authors_measure(authors_path):
    rows = [json.loads(x) for x in authors_path.read_text(encoding="utf-8").splitlines()]
    for r in rows:
        d = normalized_edit_distance(r["original_model_completion"], r["prompt"] + r["completion"], r["prompt"])
        assert d == pytest.approx(r["refinement_edit_distance"], abs=1e-6), r["task_id"]
    assert levenshtein("kitten", "sitting") == 3
    assert normalized_edit_distance(WRONG, FIXED, PROMPT) == pytest.approx(1 / len("    return a - b\n"))


def test_code_lines_and_sentences():
    fb = "The loop stops early. Use range(n + 1) instead.\nfor i in range(n + 1):\n    total += i"
    assert code_lines(fb) == ["for i in range(n + 1):", "    total += i"]
    assert code_lines("Return the sum instead of the product (a + b). Also sort the list first.") == []
    assert code_lines("```\nx = 1\n```") == ["x = 1"]
    assert len(sentences("It is wrong. Fix the loop! Then return 0.")) == 3


# -- trace feedback and statistics ---------------------------------------------------------------------


def test_trace_feedback_texts():
    t = make_task(1)
    assert trace_feedback(failing(1, 0), t) == "The program fails the test `assert add(1, 2) == 3`: it returns -1 instead of 3."
    assert "did not finish in time" in trace_feedback({"status": "timeout", "error": "Timeout: exceeded 3 s wall time"}, t)
    assert "not valid Python" in trace_feedback({"status": "error", "error": "SyntaxError: invalid syntax (line 3)"}, t)
    assert "does not define the function `add`" in trace_feedback({"status": "error", "error": "NameError: name 'add' is not defined"}, t)
    assert trace_feedback(
        {"status": "error", "error": "ZeroDivisionError: division by zero", "failed_test": "assert add(1, 0) == 1"}, t
    ) == ("The program raises ZeroDivisionError: division by zero on the test `assert add(1, 0) == 1`.")
    recs = trace_feedback_records([failing(1, 0), {**failing(1, 1), "passed": True}], {1: t})
    assert len(recs) == 1 and recs[0]["source"] == "trace" and recs[0]["program"] == WRONG


def test_stats_per_source(authors_path):
    recs = load_feedback_file(authors_path)
    recs.append({"task_id": 1, "feedback": "Use a plus.\nreturn a + b", "source": "llm"})
    recs.append({"task_id": 1, "feedback": "Wrong result.", "source": "llm"})
    st = feedback_stats(recs)
    assert st["authors"].n == 195 and 40 < st["authors"].words_mean < 100
    assert st["authors"].share_passed == 1.0
    assert st["llm"].n == 2 and st["llm"].share_with_code == 0.5 and st["llm"].words_mean == 4.5
