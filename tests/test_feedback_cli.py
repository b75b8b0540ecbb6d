"""The feedback commands as a user runs them: `ilf annotate` serving a results file, import/export
of the authors' annotations, `ilf feedback-stats`."""

import json
import os
import re
import subprocess
import sys
import time

from feedback_helpers import Client, form_values, free_port

from ilf.tasks import load_tasks

ILF = [sys.executable, "-m", "ilf.cli"]


def test_annotate_serves_a_results_file(tmp_path, data_dir):
    task = load_tasks("mbpp", data_dir=data_dir, task_ids="11").tasks[11]
    results = tmp_path / "results.jsonl"
    rows = [
        {
            "task_id": 11,
            "sample_id": i,
            "program": task.prompt + f"    return s[{i}:]\n",
            "passed": False,
            "status": "failed",
            "error": "AssertionError: x",
        }
        for i in range(3)
    ]
    rows.append({"task_id": 12, "sample_id": 0, "program": "x", "passed": True, "status": "passed", "error": None})
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    port = free_port()
    env = {**os.environ, "ILF_DATA_DIR": str(data_dir)}
    proc = subprocess.Popen(
        ILF + ["annotate", str(results), "--port", str(port), "--add-annotator", "alice"], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        lines = []
        while not any("serving" in x for x in lines):
            line = proc.stderr.readline()
            assert line, "".join(lines)
            lines.append(line)
        text = "".join(lines)
        assert "1 new task(s), 3 new failing sample(s)" in text
        url = re.search(r"(http://127\.0\.0\.1:\d+)/\?token=(\S+)", text)
        c = Client(url.group(1))
        for _ in range(100):  # the server starts listening right after printing
            try:
                c.login(url.group(2))
                break
            except (ConnectionError, OSError):
                time.sleep(0.1)
        status, html, _ = c.get("/task")
        assert status == 200 and len(form_values(html)["samples"]) == 3 and "Task 11" in html
    finally:
        proc.terminate()
        proc.wait(30)
    assert (tmp_path / "feedback.db").exists()


def test_annotations_import_export_and_stats(tmp_path, data_dir):
    authors = data_dir / "surge_annotations.jsonl"
    db = tmp_path / "f.db"
    run = lambda *a: subprocess.run(ILF + list(a), capture_output=True, text=True)  # noqa: E731
    p = run("annotations", "import", str(authors), "--db", str(db))
    assert p.returncode == 0 and "imported 195 new record(s)" in p.stderr
    assert run("annotations", "export", str(tmp_path / "back.jsonl"), "--db", str(db), "--format", "authors").returncode == 0
    assert (tmp_path / "back.jsonl").read_bytes() == authors.read_bytes()
    assert run("annotations", "export", str(tmp_path / "ilf.jsonl"), "--db", str(db)).returncode == 0
    recs = [json.loads(x) for x in (tmp_path / "ilf.jsonl").read_text().splitlines()]
    assert len(recs) == 195 and {r["source"] for r in recs} == {"authors"}
    p = run("feedback-stats", str(authors), "--json")
    stats = json.loads(p.stdout)
    assert stats["authors"]["n"] == 195 and round(stats["authors"]["words_mean"], 1) == 68.7
    p = run("annotations", "export", str(tmp_path / "x.jsonl"), "--db", str(tmp_path / "missing.db"))
    assert p.returncode == 2 and "missing.db: file not found" in p.stderr


def test_run_directory_input_uses_the_newest_round(tmp_path, data_dir):
    import pytest

    from ilf.commands.feedback import default_db
    from ilf.errors import IlfError
    from ilf.feedback.app import load_failing

    run = tmp_path / "runs" / "demo"
    with pytest.raises(IlfError, match="no such results file or run directory"):
        load_failing(run)
    (run / "r1").mkdir(parents=True)
    (run / "r2").mkdir()
    (run / "config.toml").write_text(f'name = "demo"\ndataset = "mbpp"\ndata_dir = "{data_dir}"\n')
    row = {"task_id": 11, "sample_id": 0, "program": "x", "passed": False, "status": "failed", "error": None}
    (run / "r1" / "results.jsonl").write_text(json.dumps(row) + "\n")
    rows = [row, {**row, "task_id": 12}, {**row, "task_id": 12, "sample_id": 1, "passed": True}]
    (run / "r2" / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    results, tasks = load_failing(run)
    assert [r["task_id"] for r in results] == [11]  # task 12 has a passing sample (only unsolved)
    assert 11 in tasks.tasks and default_db(run) == run / "feedback.db"
    results, _ = load_failing(run, only_unsolved=False)
    assert sorted({r["task_id"] for r in results}) == [11, 12]
    (run / "r2" / "results.jsonl").write_text('{"task_id": 11, "sample_id": 0}\n')
    with pytest.raises(IlfError, match=r"r2/results.jsonl:1: missing field 'passed'"):
        load_failing(run)
