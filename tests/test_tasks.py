"""Tasks: the paper's splits and prompt, derived robustly for every MBPP task."""

import json

import pytest

from ilf.errors import IlfError
from ilf.tasks import (
    SPLITS,
    TaskFormatError,
    find_entry_point,
    load_tasks,
    mbpp_task,
    normalize_task_id,
    parse_ranges,
    refinement_prompt,
    signature_prefix,
)


def test_every_mbpp_task_is_formatted(data_dir):
    ts = load_tasks("mbpp", data_dir=data_dir)
    assert len(ts) == 974 and ts.skipped == {}
    for t in ts:
        assert t.prompt.startswith('"""\n') and t.prompt.endswith(":\n")
        # The prompt ends with the entry point's def header, and it compiles with a body added.
        compile(t.prompt + "    pass\n", f"task{t.task_id}", "exec")
        assert f"def {t.entry_point}" in t.prompt


def test_prompt_matches_the_authors_format(data_dir):
    """The authors' annotation file stores their 1-shot prompt: ours equals it (CRLF normalised),
    except for the two rows whose non-ASCII characters became U+FFFD in their file."""
    ts = load_tasks("mbpp", data_dir=data_dir)
    rows = [json.loads(line) for line in open(data_dir / "surge_annotations.jsonl")]
    mismatched = [r["task_id"] for r in rows if ts[r["task_id"]].prompt != r["prompt"].replace("\r\n", "\n")]
    assert sorted(mismatched) == [260, 679]
    for tid in mismatched:
        r = next(r for r in rows if r["task_id"] == tid)
        assert "\ufffd" in r["prompt"]


def test_paper_splits(data_dir):
    sizes = {s: len(load_tasks("mbpp", data_dir=data_dir, split=s)) for s in ("prompt", "test", "refine", "train")}
    assert sizes == {"prompt": 10, "test": 100, "refine": 200, "train": 664}
    assert SPLITS["test"] == (11, 110)
    ts = load_tasks("mbpp", data_dir=data_dir, task_ids="11-13,20")
    assert list(ts.tasks) == [11, 12, 13, 20]


def test_regex_failures_are_recovered():
    # A multi-line signature, spaces before the colon, and an entry point hidden behind set(...):
    rec = {
        "task_id": 9999,
        "text": "Return common items.",
        "code": "import math\r\ndef common(a,\r\n           b) :\r\n    return set(a) & set(b)",
        "test_list": ["assert set(common([1,2],[2])) == {2}", "assert common([], []) == set()", "assert common([1],[1]) == {1}"],
        "test_setup_code": "",
    }
    t = mbpp_task(rec)
    assert t.entry_point == "common"
    assert t.prompt.endswith("import math\ndef common(a,\n           b) :\n")
    assert ">>> Example: set(common([1,2],[2])) = {2}" in t.prompt


def test_one_line_def_and_decorators():
    code = "@staticmethod\ndef f(x): return x\n"
    assert signature_prefix(code, "f") == "@staticmethod\ndef f(x):"
    code = "def g(x: dict[str, int] = {'a': 1}) -> int:\n    return 1\n"
    assert signature_prefix(code, "g").endswith("-> int:")


def test_unformattable_task_reports_reason():
    with pytest.raises(TaskFormatError, match="no function"):
        find_entry_point("x = 1\n", ["assert x == 1"])


def test_test_setup_code_is_honoured(data_dir):
    ts = load_tasks("mbpp", data_dir=data_dir, task_ids=[367, 927])
    for t in ts:
        assert t.test_setup and t.test.startswith(t.test_setup)


def test_task_ids_and_ranges():
    assert normalize_task_id("12", "mbpp") == 12 and normalize_task_id(12, "mbpp") == 12
    assert normalize_task_id("HumanEval/3", "humaneval") == "HumanEval/3"
    assert parse_ranges("test") == set(range(11, 111))
    with pytest.raises(IlfError):
        parse_ranges("5-2")


def test_humaneval_loads(data_dir):
    he = load_tasks("humaneval", data_dir=data_dir)
    assert len(he) == 164
    t = he["HumanEval/0"]
    assert t.entry_point == "has_close_elements" and t.test.rstrip().endswith("check(has_close_elements)")


def test_missing_data_dir_is_one_clear_error(tmp_path):
    with pytest.raises(IlfError, match="mbpp.jsonl: file not found"):
        load_tasks("mbpp", data_dir=tmp_path)


def test_refinement_prompt_format(data_dir):
    t = load_tasks("mbpp", data_dir=data_dir, task_ids=[2])[2]
    p = refinement_prompt(t, t.prompt + "    return 1\n", "Use sets.")
    assert p.startswith("OLD CODE:\n" + t.prompt)
    assert "\n\nFEEDBACK:\nUse sets.\n\nREFINEMENT:\n" in p and p.endswith(t.prompt)
