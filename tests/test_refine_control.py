"""π_Refine read against its decisive control (π_θ sampled again with the same budget), the chat
and regenerate interfaces, copies of x0 refused and drawn again, and the leak guard for feedback
written with the reference shown. Real tiny models, the real sandbox behind `ilf evaluate`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ilf.feedback.llm import feedback_leak, without_leaks
from ilf.jsonl import load_jsonl
from ilf.refine import MAX_REDRAWS, refine_summary
from ilf.report.control import control_comparison
from ilf.text import same_program

ILF = [sys.executable, "-m", "ilf.cli"]


def _run(args, cwd):
    return subprocess.run(ILF + args, cwd=cwd, capture_output=True, text=True, timeout=600)


def _fb(task, fid, program="def f(x):\n    return None\n", feedback="It returns None."):
    return {"task_id": task, "feedback_id": fid, "sample_id": 0, "program": program, "feedback": feedback}


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_regenerate_shows_the_task_and_feedback_and_the_control_matches_the_budget(tmp_path, qwen_tiny, data_dir):
    # Task 601 has two (x0, f) records: its control budget is 2 x n, the others' n.
    fb = _write(tmp_path / "fb.jsonl", [_fb(601, "a"), _fb(601, "b"), _fb(602, "c"), _fb(603, "d")])
    args = ["refine", str(fb), "--output", "x1.jsonl", "--engine", "transformers", "--model", str(qwen_tiny),
            "--policy", str(qwen_tiny), "--interface", "regenerate", "--n", "2", "--max-new-tokens", "8",
            "--data-dir", str(data_dir), "--seed", "3"]  # fmt: skip
    proc = _run(args, tmp_path)
    assert proc.returncode == 0, proc.stderr
    recs = load_jsonl(tmp_path / "x1.jsonl")
    assert len(recs) == 8 and {r["interface"] for r in recs} == {"regenerate"} and {r["shots"] for r in recs} == {0}
    assert all(r["program"].startswith(r["program"][: r["program"].index("def ")]) for r in recs)

    control = load_jsonl(tmp_path / "x1_control.jsonl")
    per_task = {t: sum(r["task_id"] == t for r in control) for t in (601, 602, 603)}
    assert per_task == {601: 4, 602: 4, 603: 4}  # the largest budget is sampled; the comparison takes each task's own
    from ilf.tasks import load_tasks

    tasks = load_tasks("mbpp", data_dir=data_dir, task_ids=[601, 602, 603])
    # π_θ alone, through the door π_Refine used (its chat template, the task alone), no x0, no feedback,
    # a seed of its own.
    assert {r["control"] for r in control} == {"chat template, the task alone"} and {r["interface"] for r in control} == {"regenerate"}
    assert all(r["program"].startswith(tasks[r["task_id"]].prompt) for r in control)
    assert {r["seed"] for r in control} == {3 + 7919} and {r["model"] for r in control} == {qwen_tiny.name}

    for f in ("x1.jsonl", "x1_control.jsonl"):
        assert _run(["evaluate", f, "--data-dir", str(data_dir)], tmp_path).returncode == 0
    proc = _run(["report", "x1_results.jsonl", "--control", "x1_control_results.jsonl", "--output", "rep"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "π_Refine vs π_θ sampled again (3 tasks, 2 samples each)" in proc.stderr  # the median: 601 has 4
    c = json.loads((tmp_path / "rep" / "report.json").read_text())["control"]
    assert c["tasks"] == 3 and c["solved"] + c["missed"] - c["beyond"] == c["control_solved"]
    assert "## π_Refine against π_θ sampled again" in (tmp_path / "rep" / "report.md").read_text()

    # --control with samples that are not π_Refine's is one line.
    plain = [{k: v for k, v in r.items() if k != "feedback_id"} for r in load_jsonl(tmp_path / "x1_control_results.jsonl")]
    _write(tmp_path / "plain_results.jsonl", plain)
    proc = _run(["report", "plain_results.jsonl", "--control", "x1_control_results.jsonl"], tmp_path)
    assert proc.returncode == 2 and "are not" in proc.stderr.strip().splitlines()[-1]


def test_the_chat_interface_needs_a_chat_template(tmp_path, tiny, data_dir):
    fb = _write(tmp_path / "fb.jsonl", [_fb(601, "a")])
    proc = _run(["refine", str(fb), "--output", "x1.jsonl", "--engine", "transformers", "--model", str(tiny), "--no-control",
                 "--interface", "chat", "--n", "1", "--max-new-tokens", "4", "--data-dir", str(data_dir)], tmp_path)  # fmt: skip
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert proc.returncode == 2 and "needs a model with a chat template" in lines[-1], proc.stderr
    assert not (tmp_path / "x1.jsonl").exists() or not load_jsonl(tmp_path / "x1.jsonl")


def test_copies_of_x0_are_refused_counted_and_drawn_again(tmp_path, qwen_tiny, data_dir):
    # Greedy decoding writes one program per prompt, and a regenerate prompt does not show x0:
    # make that program x0, so every draw is a copy.
    base = ["--engine", "transformers", "--model", str(qwen_tiny), "--no-control", "--interface", "regenerate",
            "--temperature", "0", "--max-new-tokens", "10", "--data-dir", str(data_dir)]  # fmt: skip
    _write(tmp_path / "fb0.jsonl", [_fb(601, "a")])
    assert _run(["refine", "fb0.jsonl", "--output", "first.jsonl", "--n", "1", *base], tmp_path).returncode == 0
    greedy = load_jsonl(tmp_path / "first.jsonl")[0]["program"]
    _write(tmp_path / "fb.jsonl", [_fb(601, "a", program=greedy + "\n\n")])
    proc = _run(["refine", "fb.jsonl", "--output", "x1.jsonl", "--n", "2", "--refuse-copies", *base], tmp_path)
    assert proc.returncode == 0, proc.stderr
    recs = load_jsonl(tmp_path / "x1.jsonl")
    assert len(recs) == 2 * (1 + MAX_REDRAWS) and all(r["copy_of_x0"] and r["refused"] for r in recs)
    assert {r["group_size"] for r in recs} == {len(recs)} and sorted(r["sample_id"] for r in recs) == list(range(len(recs)))
    s = refine_summary([dict(r, passed=False) for r in recs], 2)
    assert s["copies_refused"] == len(recs) and s["num_feedback"] == 0 and "pass@1" not in s
    # The group is complete: a rerun samples nothing.
    before = (tmp_path / "x1.jsonl").read_bytes()
    assert _run(["refine", "fb.jsonl", "--output", "x1.jsonl", "--n", "2", "--refuse-copies", *base], tmp_path).returncode == 0
    assert (tmp_path / "x1.jsonl").read_bytes() == before
    # Without --refuse-copies the copies are kept, and counted.
    assert _run(["refine", "fb.jsonl", "--output", "kept.jsonl", "--n", "2", *base], tmp_path).returncode == 0
    kept = load_jsonl(tmp_path / "kept.jsonl")
    assert len(kept) == 2 and all(r["copy_of_x0"] and not r["refused"] for r in kept)
    assert refine_summary([dict(r, passed=False) for r in kept], 2)["copies_of_x0"] == 2


def test_same_program_ignores_layout_and_comments_only():
    x0 = "def f(x):\n    return x + 1\n"
    assert same_program(x0, "def f(x):\n\n    # add one\n    return x+1\n")
    assert not same_program(x0, "def f(x):\n    return x + 2\n")
    assert not same_program("def f(x):\n    return (", "def f(x):\n    return [")  # unparsable: by text


def _res(task, sid, passed, fid=None):
    r = {"task_id": task, "sample_id": sid, "passed": passed}
    return dict(r, feedback_id=fid) if fid else r


def test_control_comparison_matches_the_budget_per_task():
    refined = [_res(1, 0, True, "a"), _res(1, 1, False, "a"), _res(2, 0, False, "b"), _res(2, 1, False, "b"),
               _res(3, 0, True, "c"), _res(3, 1, True, "c"), dict(_res(3, 2, True, "c"), refused=True)]  # fmt: skip
    # Task 1's control passes only at its 3rd sample: beyond the refinements' budget of 2.
    control = [_res(1, 0, False), _res(1, 1, False), _res(1, 2, True), _res(2, 0, True), _res(2, 1, False),
               _res(3, 0, False), _res(3, 1, True)]  # fmt: skip
    c = control_comparison(refined, control, resamples=200)
    assert c["tasks"] == 3 and c["samples_per_task"] == 2
    assert (c["solved"], c["control_solved"], c["beyond"], c["missed"]) == (2, 2, 1, 1)
    assert c["beyond_tasks"] == [1]
    assert c["pass@1"] == pytest.approx((0.5 + 0 + 1) / 3) and c["control_pass@1"] == pytest.approx((0 + 0.5 + 0.5) / 3)
    lo, hi = c["delta_pass@1_ci"]
    assert lo <= c["delta_pass@1"] <= hi
    assert c["net_solved"] == c["solved"] - c["control_solved"] == 0
    # A task whose feedback was dropped (no refinements) counts as unsolved by π_Refine, not as absent.
    c4 = control_comparison(refined, control + [_res(4, 0, True), _res(4, 1, False)], resamples=200, tasks=[1, 2, 3, 4])
    assert (c4["tasks"], c4["tasks_without_refinements"], c4["control_solved"], c4["missed"]) == (4, 1, 3, 2)


@pytest.mark.parametrize(
    "feedback, reference, leak",
    [
        ("The function should return the sum of the list, not the product.", "def f(x):\n    return sum(x)", None),
        ("Use result = a + b instead.", None, "code"),
        ("Replace it with ```python\nx\n```", None, "code"),
        ("Call sorted(lst, key=lambda t: t[1]) on the list.", None, "code"),
        ("Change the return statement to return (math.pi * r**2 * h)/3.", None, "code"),
        ("It prints instead of returning: change print(num) to return num.", None, "code"),
        ("A well-known two-pointer scan finds the pair; it needs 1-4 passes.", None, None),
        ("It uses the XOR operator (^) where it needs AND (&).", None, None),
        ("Return the sentence: the quick brown fox jumps over the lazy dog, as it is.",
         "def f():\n    return 'the quick brown fox jumps over the lazy dog'", "reference"),
    ],
)  # fmt: skip
def test_the_leak_guard_finds_code_and_quoted_reference(feedback, reference, leak):
    assert feedback_leak(feedback, reference) == leak


def test_refine_drops_leaked_feedback_and_says_how_many(tmp_path, data_dir):
    from ilf.feedback.records import read_feedback
    from ilf.tasks import load_tasks

    tasks = load_tasks("mbpp", data_dir=data_dir, task_ids=[601, 602])
    # A file written by an earlier guard (leak None) is judged again by the current one.
    stale = dict(_fb(602, "c", feedback="Use x = y + 1 there."), reference_shown=True, leak=None)
    path = _write(tmp_path / "fb.jsonl", [dict(_fb(601, "a"), leak="code"), _fb(602, "b"), stale])
    kept = read_feedback(path, tasks)
    assert [r["feedback_id"] for r in kept] == ["b"]
    assert without_leaks([dict(_fb(601, "a"), leak="code"), dict(_fb(601, "c"), leak="reference")])[1] == {"code": 1, "reference": 1}


def test_regenerate_prompts_show_the_task_and_the_advice_never_x0(qwen_tiny, data_dir):
    from ilf.refine import chat_formatter, interface_prompt
    from ilf.tasks import load_tasks

    task = load_tasks("mbpp", data_dir=data_dir, task_ids=[601])[601]
    fmt = chat_formatter(str(qwen_tiny))
    fb = _fb(601, "a", program=task.prompt + "    return 'SECRET_X0'\n", feedback="It returns a string.")
    regen = interface_prompt(fb, task, "regenerate", fmt)
    assert "SECRET_X0" not in regen and "It returns a string." in regen and regen.endswith("```python\n" + task.prompt)
    chat = interface_prompt(fb, task, "chat", fmt)
    assert "SECRET_X0" in chat and "It returns a string." in chat and chat.endswith("```python\n" + task.prompt)
    # No feedback at all: π_θ through its chat template with the task alone (the interface's own control).
    alone = interface_prompt(dict(fb, feedback=""), task, "regenerate", fmt)
    assert "reviewer" not in alone and "SECRET_X0" not in alone and task.prompt in alone
