"""Nothing a user types destroys data: an output path that is one of the command's inputs is
refused with one line and exit 2, and the input is left byte for byte as it was."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ILF = [sys.executable, "-m", "ilf.cli"]
SAMPLE = {"task_id": 2, "completion": "    return tuple(set(test_tup1) & set(test_tup2))\n"}


def _run(args, cwd):
    return subprocess.run(ILF + args, cwd=cwd, capture_output=True, text=True, timeout=300)


def _one_error_line(proc) -> str:
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    return lines[0]


def test_evaluate_refuses_to_overwrite_its_samples_or_the_data(tmp_path, data_dir):
    samples = tmp_path / "s.jsonl"
    samples.write_text(json.dumps(SAMPLE) + "\n")
    before = samples.read_bytes()
    line = _one_error_line(_run(["evaluate", str(samples), "--output", str(samples)], tmp_path))
    assert "input file" in line and samples.read_bytes() == before
    mbpp = data_dir / "mbpp.jsonl"
    size = mbpp.stat().st_size
    _one_error_line(_run(["evaluate", str(samples), "--output", str(mbpp)], tmp_path))
    assert mbpp.stat().st_size == size


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])  # 0 is eval.timeout's "the sandbox default"
def test_evaluate_refuses_a_timeout_that_is_not_a_positive_finite_number(tmp_path, value):
    samples = tmp_path / "s.jsonl"
    samples.write_text(json.dumps(SAMPLE) + "\n")
    line = _one_error_line(_run(["evaluate", str(samples), "--timeout", value], tmp_path))
    assert "--timeout" in line and not (tmp_path / "s_results.jsonl").exists()


def test_feedback_and_annotations_export_refuse_to_overwrite_their_input(tmp_path):
    results = tmp_path / "r.jsonl"
    results.write_text(
        json.dumps({"task_id": 2, "sample_id": 0, "passed": False, "status": "failed", "program": "x", "error": "AssertionError"}) + "\n"
    )
    before = results.read_bytes()
    _one_error_line(_run(["feedback", str(results), "--source", "trace", "--output", str(results)], tmp_path))
    assert results.read_bytes() == before
    from ilf.feedback.store import FeedbackStore

    db = tmp_path / "s.db"
    store = FeedbackStore(db)
    store.add_annotator("ann")
    store.close()  # WAL checkpointed: the file's bytes are final
    before = db.read_bytes()
    assert len(before) > 0
    _one_error_line(_run(["annotations", "export", str(db), "--db", str(db)], tmp_path))
    assert db.read_bytes() == before


def _commands(group, prefix=()):
    import click

    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        path = (*prefix, name)
        yield path, cmd
        if hasattr(cmd, "list_commands"):  # a group (typer may use its own copy of click's classes)
            yield from _commands(cmd, path)


def test_every_command_shows_an_example_and_takes_dash_h():
    """A user learns a command from its help: each one has an example, and -h works everywhere."""
    import typer.main

    from ilf.cli import app

    root = typer.main.get_command(app)
    paths = list(_commands(root))
    assert len(paths) >= 15
    for path, cmd in paths:
        assert "Example" in (cmd.help or ""), f"ilf {' '.join(path)}: no example in its help"
    run_help = dict(paths)[("run",)].help
    assert all(name in run_help for name in ("demo", "cpu", "paper", "table2-authors"))
    for path in (("evaluate",), ("annotations", "export"), ("data", "fetch")):
        p = subprocess.run([sys.executable, "-m", "ilf.cli", *path, "-h"], capture_output=True, text=True, timeout=120)
        assert p.returncode == 0 and "Usage" in p.stdout, (path, p.stderr)


def test_help_names_values_as_click_does_and_lists_choices():
    """TEXT / INTEGER / FLOAT / PATH and [a|b] for values, an argument by its name in capitals, nothing for a
    switch, in every command's help; typer's own <str>, <int>, <bool> appear nowhere."""
    import typer.main

    from ilf.cli import app, click_metavars

    root = typer.main.get_command(app)
    click_metavars(root)
    seen = set()
    for path, cmd in _commands(root):
        for param in cmd.params:
            assert param.metavar is not None, (path, param.name)
            assert "<" not in param.metavar, (path, param.name, param.metavar)
            seen.add(param.metavar)
    assert {"TEXT", "INTEGER", "FLOAT", "PATH", "", "[fewshot|finetune]", "[paper|chat|regenerate]"} <= seen
    env = {**os.environ, "COLUMNS": "200"}
    out = subprocess.run([sys.executable, "-m", "ilf.cli", "refine", "-h"], capture_output=True, text=True, timeout=120, env=env).stdout
    assert "FEEDBACK" in out and "[paper|chat|regenerate]" in out and "<str>" not in out and "<bool>" not in out


def test_the_annotation_app_and_the_model_server_do_not_share_a_default_port():
    import typer.main

    from ilf.cli import app

    cmds = dict(_commands(typer.main.get_command(app)))
    port = {name: next(p.default for p in cmds[(name,)].params if p.name == "port") for name in ("annotate", "serve")}
    assert port["serve"] == 8000 and port["annotate"] != port["serve"], port
