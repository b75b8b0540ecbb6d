"""`ilf refine`: x1 ~ π_Refine(t, x0, f) from a feedback file, with a real tiny model, the real
sandbox behind `ilf evaluate`, and the same implementation the pipeline's refine stages call."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ilf.jsonl import load_jsonl

ILF = [sys.executable, "-m", "ilf.cli"]
TASKS = [601, 602, 603]  # MBPP_Train


def _run(args, cwd):
    return subprocess.run(ILF + args, cwd=cwd, capture_output=True, text=True, timeout=600)


def _feedback(tasks=TASKS) -> list[dict]:
    return [
        {
            "task_id": t,
            "feedback_id": f"trace-{t}",
            "sample_id": 0,
            "program": f"def f{t}(x):\n    return None\n",
            "feedback": f"f{t} returns None.",
        }
        for t in tasks
    ]


def test_refine_samples_n_per_feedback_with_the_shuffled_control_and_resumes(tmp_path, tiny, data_dir):
    fb = tmp_path / "feedback.jsonl"
    fb.write_text("".join(json.dumps(r) + "\n" for r in _feedback()))
    args = ["refine", str(fb), "--output", "x1.jsonl", "--engine", "transformers", "--model", str(tiny), "--n", "2",
            "--shuffled-n", "1", "--max-new-tokens", "12", "--shots", "1", "--data-dir", str(data_dir),
            "--policy", str(tiny)]  # fmt: skip
    proc = _run(args, tmp_path)
    assert proc.returncode == 0, proc.stderr
    recs = load_jsonl(tmp_path / "x1.jsonl")
    assert sorted((r["feedback_id"], r["sample_id"]) for r in recs) == sorted((f"trace-{t}", j) for t in TASKS for j in range(2))
    assert all(r["program"] == r["refinement"] and r["x0_sample_id"] == 0 and 0 <= r["edit_distance"] <= 1 for r in recs)
    # How π_Refine was sampled travels with each record, as with `ilf sample`'s records.
    assert {(r["model"], r["engine"], r["refine_mode"], r["shots"], r["max_new_tokens"]) for r in recs} == {
        (tiny.name, "transformers", "fewshot", 1, 12)
    }
    # The control through the paper's door: π_θ (--policy) on the task prompt alone, as many samples per task.
    control = load_jsonl(tmp_path / "x1_control.jsonl")
    assert sorted((r["task_id"], r["sample_id"]) for r in control) == sorted((t, j) for t in TASKS for j in range(2))
    assert all("returns None" not in r["prompt"] and r["prompt"].rstrip().endswith(":") for r in control)
    shuffled = load_jsonl(tmp_path / "x1_shuffled.jsonl")
    assert len(shuffled) == 3 and all(r["feedback_id"].endswith("~shuffled") for r in shuffled)

    before = (tmp_path / "x1.jsonl").read_bytes()
    proc = _run(args, tmp_path)  # every record is there: nothing is sampled again
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "x1.jsonl").read_bytes() == before

    # The records are `ilf evaluate`'s input as they are.
    proc = _run(["evaluate", "x1.jsonl", "--data-dir", str(data_dir), "--json"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = load_jsonl(tmp_path / "x1_results.jsonl")
    assert len(results) == 6 and all(r["status"] in ("passed", "failed", "error", "timeout") for r in results)

    # ... and the report names the refiner and its temperature instead of "–".
    proc = _run(["report", "x1_results.jsonl", "--output", "report"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    protocol = next(line for line in (tmp_path / "report" / "report.md").read_text().splitlines() if "**Protocol.**" in line)
    assert f"Model {tiny.name}, engine transformers, dataset mbpp; temperature 0.8" in protocol, protocol


def _one_error_line(proc) -> str:
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    return lines[0]


@pytest.mark.parametrize(
    "record, expected",
    [
        ({"task_id": 602, "feedback_id": "b", "program": "x = 1\n"}, "fb.jsonl:2: missing field 'feedback'"),
        ({"task_id": 99999, "feedback_id": "b", "program": "x = 1\n", "feedback": "no"}, "fb.jsonl:2: field 'task_id': unknown task"),
        ({"task_id": 602, "feedback_id": "trace-601", "program": "x\n", "feedback": "no"}, "fb.jsonl:2: field 'feedback_id'"),
    ],
)
def test_a_bad_feedback_record_is_one_line_and_nothing_written(tmp_path, data_dir, record, expected):
    fb = tmp_path / "fb.jsonl"
    fb.write_text(json.dumps(_feedback([601])[0]) + "\n" + json.dumps(record) + "\n")
    line = _one_error_line(_run(["refine", "fb.jsonl", "--output", "x1.jsonl", "--data-dir", str(data_dir)], tmp_path))
    assert expected in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fb.jsonl"]


def test_a_finetuned_refiner_must_be_named(tmp_path, data_dir):
    fb = tmp_path / "fb.jsonl"
    fb.write_text(json.dumps(_feedback([601])[0]) + "\n")
    line = _one_error_line(
        _run(["refine", "fb.jsonl", "--output", "x1.jsonl", "--mode", "finetune", "--data-dir", str(data_dir)], tmp_path)
    )
    assert "--mode finetune needs --model" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fb.jsonl"]


def test_the_authors_file_is_feedback_as_it_is_and_tasks_select(tmp_path, data_dir):
    from ilf.data import locate
    from ilf.feedback.records import read_feedback
    from ilf.tasks import load_tasks, parse_ranges

    recs = read_feedback(locate("authors", data_dir), load_tasks("mbpp", data_dir=data_dir))
    assert len(recs) == 195 and all("\r" not in r["program"] and r["feedback_id"] == f"authors-{r['task_id']}" for r in recs)
    assert sum(r["task_id"] in parse_ranges("train") for r in recs) == 128  # the paper's Table 3 tasks
    fb = tmp_path / "fb.jsonl"
    fb.write_text(json.dumps(_feedback([601])[0]) + "\n")
    line = _one_error_line(_run(["refine", "fb.jsonl", "--output", "x1.jsonl", "--tasks", "11-20", "--data-dir", str(data_dir)], tmp_path))
    assert "no feedback on tasks 11-20" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fb.jsonl"]
