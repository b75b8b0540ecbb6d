"""LLM feedback end to end with a real (tiny) model in the transformers engine, the trace and LLM
`ilf feedback` commands, and (slow) the bundled 0.5B model writing feedback."""

import json
import os
import subprocess
import sys

import pytest
import tiny_models
from feedback_helpers import FIXED, PROMPT, WRONG, failing, make_task

from ilf.feedback.llm import FEEDBACK_STOP, block, generate_llm_feedback, llm_feedback_id, pick_examples, write_llm_feedback

HUMAN_EXAMPLES = [
    {
        "task_id": 10,
        "feedback_id": "h-10",
        "program": PROMPT + "    return a\n",
        "refinement": FIXED,
        "feedback": "The function ignores b. Return the sum of both numbers.",
        "source": "human",
    },
    {
        "task_id": 11,
        "feedback_id": "h-11",
        "program": PROMPT + "    return b\n",
        "refinement": FIXED,
        "feedback": "Only the second number is returned. Add the first one too.",
        "source": "human",
    },
    {
        "task_id": 1,
        "feedback_id": "h-1",
        "program": WRONG,
        "refinement": FIXED,
        "feedback": "Same task as the target: must never be shown as an example.",
        "source": "human",
    },
]


def build_tiny_model(out_dir):
    corpus = [PROMPT, FIXED, WRONG] + [e["feedback"] for e in HUMAN_EXAMPLES] + ["TASK: TESTS:\nOLD CODE:\nERROR: FEEDBACK:\n"]
    # Rotary positions: no position table, so a long context costs nothing at this size.
    return tiny_models.build_tiny_model(
        out_dir,
        corpus=corpus * 10,
        vocab_size=300,
        special_tokens=("<|endoftext|>",),
        hidden_size=32,
        layers=1,
        max_positions=8192,
        model_max_length=None,
    )


@pytest.fixture(scope="module")
def tiny_engine(tmp_path_factory):
    """An engine on this module's tiny model: its corpus holds the feedback prompts, and its context is long."""
    from ilf.generation import get_engine

    path = build_tiny_model(tmp_path_factory.mktemp("tiny"))
    with get_engine("transformers", str(path)) as eng:
        yield eng


def test_prompt_shows_examples_of_other_tasks_only():
    shots = pick_examples(HUMAN_EXAMPLES, 2, exclude_task=1, seed=0)
    assert {e["task_id"] for e in shots} == {10, 11}
    q = block("Add two numbers.", "assert add(1, 2) == 3", WRONG, "AssertionError: assert add(1, 2) == 3 (got -1)")
    assert q.endswith("FEEDBACK:\n") and "OLD CODE:\n" + WRONG.rstrip() in q


def test_llm_feedback_end_to_end_with_a_real_small_model(tiny_engine):
    tasks = {1: make_task(1), 10: make_task(10), 11: make_task(11)}
    results = [failing(1, 0), failing(1, 1, PROMPT + "    return a * b\n"), {**failing(1, 2, FIXED), "passed": True}]
    recs = generate_llm_feedback(results, tasks, tiny_engine, k_shot=2, examples=HUMAN_EXAMPLES, seed=0, max_new_tokens=24)
    assert len(recs) == 2  # the passing result gets none
    for r in recs:
        assert r["source"] == "llm" and r["task_id"] == 1 and r["feedback_id"].startswith("llm-")
        assert isinstance(r["feedback"], str) and r["feedback"].strip()
        assert not any(s.strip() and s.strip() in r["feedback"] for s in FEEDBACK_STOP)
        assert sorted(r["example_ids"]) == ["h-10", "h-11"] and r["refinement"] is None
    assert recs[0]["program"] == WRONG
    # Greedy decoding with the same seed: the same feedback again.
    again = generate_llm_feedback(results, tasks, tiny_engine, k_shot=2, examples=HUMAN_EXAMPLES, seed=0, max_new_tokens=24)
    assert [r["feedback"] for r in again] == [r["feedback"] for r in recs]
    assert [r["feedback_id"] for r in again] == [r["feedback_id"] for r in recs]


def test_llm_feedback_with_refinement_is_checked_in_the_sandbox(tiny_engine):
    tasks = {1: make_task(1), 10: make_task(10), 11: make_task(11)}
    (rec,) = generate_llm_feedback(
        [failing(1, 0)], tasks, tiny_engine, k_shot=1, with_refinement=True, examples=HUMAN_EXAMPLES, max_new_tokens=16
    )
    assert rec["refinement"].startswith(PROMPT)
    assert rec["passed"] in (True, False) and rec["status"] in ("passed", "failed", "error", "timeout")
    assert isinstance(rec["edit_distance"], float)


def test_llm_feedback_draws_n_samples_per_x0_and_resumes(tiny_engine, tmp_path):
    """The LLM baselines sample n (feedback, refinement) draws per x0 at a temperature, as π_Refine
    does; a rerun keeps what the partial file holds and samples only the missing x0."""
    tasks = {1: make_task(1), 2: make_task(2), 10: make_task(10), 11: make_task(11)}
    x0 = [failing(1, 0), failing(2, 0)]
    out = tmp_path / "llm.jsonl"
    kw = dict(k_shot=1, with_refinement=True, examples=HUMAN_EXAMPLES, seed=0, n=3, temperature=1.0, model_name="tiny")
    recs = write_llm_feedback(x0, tasks, tiny_engine, out, **kw)
    assert [(r["task_id"], r["draw"]) for r in recs] == [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]
    assert len({r["feedback_id"] for r in recs}) == 6
    assert len({r["feedback"] for r in recs if r["task_id"] == 1}) > 1  # sampled, not one greedy text copied
    assert all(r["refinement"].startswith(PROMPT) and r["status"] for r in recs)
    assert not out.with_name(out.name + ".partial").exists()
    # Kill after the first x0: only task 1's draws are in the partial file; the rerun adds task 2's.
    out.with_name(out.name + ".partial").write_text("".join(json.dumps(r) + "\n" for r in recs[:3]))
    out.unlink()
    calls = []

    class Counting:
        def __init__(self, eng):
            self.eng = eng

        def generate(self, prompts, params, progress=None):
            calls.append(len(prompts))
            return self.eng.generate(prompts, params, progress=progress)

    again = write_llm_feedback(x0, tasks, Counting(tiny_engine), out, **kw)
    assert [r["feedback_id"] for r in again] == [r["feedback_id"] for r in recs]
    assert calls == [1, 3]  # one x0's feedback prompt, then its 3 refinement prompts
    # Greedy: one draw, whatever n says.
    greedy = write_llm_feedback(x0[:1], tasks, tiny_engine, tmp_path / "g.jsonl", **{**kw, "temperature": 0.0})
    assert len(greedy) == 1


@pytest.mark.slow  # three CLI processes, each importing torch (~20 s on 2 busy cores)
def test_feedback_command_trace_and_llm(tmp_path, data_dir, tiny_engine):
    """`ilf feedback` on MBPP results: trace feedback names the failing assert; llm feedback runs a model."""
    from ilf.tasks import load_tasks

    task = load_tasks("mbpp", data_dir=data_dir, task_ids="11").tasks[11]
    wrong = task.prompt + "    return s\n"
    results = tmp_path / "results.jsonl"
    results.write_text(
        json.dumps(
            {
                "task_id": 11,
                "sample_id": 0,
                "program": wrong,
                "passed": False,
                "status": "failed",
                "error": 'AssertionError: assert remove_Occ("hello","l") == "heo" (got \'hello\')',
                "failed_test": task.tests[0],
            }
        )
        + "\n"
    )
    env = {**os.environ, "ILF_DATA_DIR": str(data_dir)}
    out = tmp_path / "trace.jsonl"
    cmd = [sys.executable, "-m", "ilf.cli", "feedback", str(results), "--source", "trace", "--output", str(out)]
    subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
    (rec,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert rec["source"] == "trace" and rec["feedback"].startswith(f"The program fails the test `{task.tests[0]}`")
    # A bad results file: one line naming file, line and field; nothing written.
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task_id": 11}\n')
    p = subprocess.run(
        [sys.executable, "-m", "ilf.cli", "feedback", str(bad), "--source", "trace", "--output", str(tmp_path / "none.jsonl")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2 and "bad.jsonl:1: missing field 'passed'" in p.stderr
    assert not (tmp_path / "none.jsonl").exists()
    # LLM feedback through the command, with the tiny model and the authors' examples.
    model_dir = tiny_engine.resolved.hf_dir
    out = tmp_path / "llm.jsonl"
    subprocess.run(
        cmd[:-4] + ["--source", "llm", "--llm-engine", "transformers", "--llm-model", str(model_dir), "--output", str(out)],
        check=True,
        env=env,
        capture_output=True,
        text=True,
    )
    (rec,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert rec["source"] == "llm" and rec["feedback"] and rec["example_ids"][0].startswith("authors-")
    assert rec["example_ids"] != ["authors-11"]
    assert rec["feedback_id"] == llm_feedback_id(str(model_dir), 1, False, 0, 11, 0)
    assert not (tmp_path / "llm.jsonl.partial").exists()
    # Resume: a record already in OUTPUT.partial (a killed run) is kept, not generated again.
    (tmp_path / "llm.jsonl.partial").write_text(json.dumps({**rec, "feedback": "FROM THE KILLED RUN"}) + "\n")
    subprocess.run(
        cmd[:-4] + ["--source", "llm", "--llm-engine", "transformers", "--llm-model", str(model_dir), "--output", str(out)],
        check=True,
        env=env,
        capture_output=True,
        text=True,
    )
    (rec,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert rec["feedback"] == "FROM THE KILLED RUN"


@pytest.mark.slow
def test_bundled_model_writes_feedback(data_dir):
    """The bundled Qwen2.5-Coder-0.5B-Instruct writes feedback in words for a real MBPP failure."""
    from ilf.annotations import load_authors
    from ilf.generation import get_engine
    from ilf.tasks import load_tasks

    tasks = load_tasks("mbpp", data_dir=data_dir, task_ids="11,12").tasks
    wrong = tasks[11].prompt + "    return s.replace(ch, '')\n"
    res = {
        "task_id": 11,
        "sample_id": 0,
        "program": wrong,
        "passed": False,
        "status": "failed",
        "error": 'AssertionError: assert remove_Occ("hello","l") == "heo" (got \'heo\')',
        "failed_test": tasks[11].tests[0],
    }
    examples = [e for e in load_authors(data_dir / "surge_annotations.jsonl") if e["task_id"] != 11][:20]
    all_tasks = load_tasks("mbpp", data_dir=data_dir, task_ids={e["task_id"] for e in examples} | {11}).tasks
    with get_engine("transformers") as eng:
        (rec,) = generate_llm_feedback([res], all_tasks, eng, k_shot=1, examples=examples, max_new_tokens=64)
    assert len(rec["feedback"].split()) >= 3, rec["feedback"]
