"""ilf.jsonl.Resumable, the one resumable output of sampling, π_Refine, LLM feedback and bug tags:
finished groups survive a kill, a group cut short is dropped and redone, a torn line is ignored,
records of other settings are refused, and nothing is written before the first finished group."""

import json

import pytest

from ilf.errors import IlfError
from ilf.jsonl import Resumable, load_jsonl


def _lines(*recs, torn=""):
    return "".join(json.dumps(r) + "\n" for r in recs) + torn


def test_a_group_cut_short_and_a_torn_line_are_dropped_before_the_first_new_group(tmp_path):
    path = tmp_path / "out.jsonl"
    # task 1 finished (2 of 2), task 2 cut short (1 of 2), then half a line from the kill
    path.write_text(_lines({"t": 1, "i": 0}, {"t": 1, "i": 1}, {"t": 2, "i": 0}, torn='{"t": 2, "i'))
    before = path.read_bytes()
    out = Resumable(path, lambda r: r["t"], complete=lambda g: len(g) == 2)
    assert 1 in out and 2 not in out
    assert path.read_bytes() == before  # opening writes nothing
    with out:
        out.add(2, [{"t": 2, "i": 0}, {"t": 2, "i": 1}])
    assert [(r["t"], r["i"]) for r in load_jsonl(path)] == [(1, 0), (1, 1), (2, 0), (2, 1)]


def test_finish_rewrites_in_the_callers_order_and_records_filters_by_key(tmp_path):
    path = tmp_path / "out.jsonl"
    with Resumable(path, lambda r: r["k"]) as out:
        for k in ("b", "a", "c"):
            out.add(k, [{"k": k}])
    assert [r["k"] for r in out.records(["c", "a"])] == ["c", "a"]
    out.finish(["a", "b", "c"])
    assert [r["k"] for r in load_jsonl(path)] == ["a", "b", "c"]
    again = Resumable(path, lambda r: r["k"])
    assert list(again.done) == ["a", "b", "c"]


def test_keep_can_refuse_records_of_other_settings_with_one_error(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text(_lines({"k": 1, "seed": 0}, {"k": 2, "seed": 1}))

    def keep(line, rec):
        if rec["seed"] != 0:
            raise IlfError(f"{path}:{line}: field 'seed' is {rec['seed']}, this run uses 0")
        return True

    with pytest.raises(IlfError, match=r"out.jsonl:2: field 'seed'"):
        Resumable(path, lambda r: r["k"], keep=keep)
    # keep returning False leaves the record out; the file loses it at the first new group
    out = Resumable(path, lambda r: r["k"], keep=lambda line, rec: rec["seed"] == 0)
    assert list(out.done) == [1]
    with out:
        out.add(3, [{"k": 3, "seed": 0}])
    assert [r["k"] for r in load_jsonl(path)] == [1, 3]


def test_nothing_is_created_when_no_group_finishes(tmp_path):
    path = tmp_path / "sub" / "out.jsonl"
    with Resumable(path, lambda r: r["k"]):
        pass  # e.g. the engine failed before its first answer
    assert not path.exists()
