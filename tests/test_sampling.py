"""`ilf.sampling.sample` and `ilf sample`: records, resume after a kill, settings checks, CLI."""

import subprocess
import sys

import pytest

from ilf.errors import IlfError
from ilf.generation import SamplingParams, get_engine
from ilf.jsonl import load_jsonl
from ilf.sampling import sample
from ilf.tasks import load_tasks

PARAMS = SamplingParams(n=3, temperature=0.8, max_new_tokens=10, seed=3)
FIELDS = {
    "task_id",
    "sample_id",
    "model",
    "engine",
    "prompt",
    "completion",
    "program",
    "num_tokens",
    "finish_reason",
    "seed",
    "temperature",
    "top_p",
}


@pytest.fixture(scope="module")
def engine(tiny):
    eng = get_engine("transformers", str(tiny))
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def tasks(data_dir):
    return list(load_tasks("mbpp", data_dir=data_dir, task_ids="11-14"))


class Counting:
    """Wraps an engine and records which prompts it was asked to sample."""

    name = "transformers"

    def __init__(self, eng):
        self.eng, self.prompts = eng, []

    def __call__(self):
        return self

    def generate(self, prompts, params, progress=None):
        self.prompts.extend(prompts)
        return self.eng.generate(prompts, params, progress)


def test_records_and_programs(engine, tasks, tmp_path):
    out = tmp_path / "s.jsonl"
    recs = sample(tasks, engine, PARAMS, out, progress=False)
    assert len(recs) == 12 and load_jsonl(out) == recs
    assert [(r["task_id"], r["sample_id"]) for r in recs] == [(t.task_id, i) for t in tasks for i in range(3)]
    for r, t in zip(recs, [t for t in tasks for _ in range(3)]):
        assert FIELDS <= set(r)
        assert r["prompt"] == t.prompt and r["program"].startswith(t.prompt)
        assert r["engine"] == "transformers" and r["seed"] == 3 and r["temperature"] == 0.8 and r["dataset"] == "mbpp"
        assert 1 <= r["num_tokens"] <= 10


def test_resume_after_kill_samples_only_missing_tasks_and_matches(engine, tasks, tmp_path):
    full = sample(tasks, engine, PARAMS, tmp_path / "full.jsonl", progress=False)
    out = tmp_path / "killed.jsonl"
    lines = (tmp_path / "full.jsonl").read_text().splitlines(keepends=True)
    # Killed while writing task 13: its first sample complete, the second torn mid-line.
    out.write_text("".join(lines[:7]) + lines[7][:25])
    counting = Counting(engine)
    recs = sample(tasks, counting, PARAMS, out, progress=False, engine_name="transformers", model_name=full[0]["model"])
    assert counting.prompts == [tasks[2].prompt, tasks[3].prompt]  # 11 and 12 were complete
    assert recs == full  # per-prompt seeds: same samples as the uninterrupted run
    assert load_jsonl(out) == full
    # A rerun of a complete file loads no engine at all.
    never = lambda: pytest.fail("engine loaded for a complete file")  # noqa: E731
    assert sample(tasks, never, PARAMS, out, progress=False, engine_name="transformers", model_name=full[0]["model"]) == full


def test_resume_with_different_settings_is_refused(engine, tasks, tmp_path):
    out = tmp_path / "s.jsonl"
    sample(tasks[:1], engine, PARAMS, out, progress=False)
    other = SamplingParams(n=3, temperature=0.2, max_new_tokens=10, seed=3)
    with pytest.raises(IlfError, match=r"s.jsonl:1: field 'temperature'"):
        sample(tasks, engine, other, out, progress=False)
    assert len(load_jsonl(out)) == 3  # untouched


def test_cli_sample_then_resume(tiny, data_dir, tmp_path):
    out = tmp_path / "cli.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "ilf.cli",
        "sample",
        "--model",
        str(tiny),
        "--engine",
        "transformers",
        "--dataset",
        "mbpp",
        "--tasks",
        "11-12",
        "--n",
        "2",
        "--max-new-tokens",
        "8",
        "--seed",
        "5",
        "--output",
        str(out),
        "--data-dir",
        str(data_dir),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    recs = load_jsonl(out)
    assert [(x["task_id"], x["sample_id"]) for x in recs] == [(11, 0), (11, 1), (12, 0), (12, 1)]
    assert "4 samples for 2 tasks" in r.stderr
    r2 = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r2.returncode == 0 and load_jsonl(out) == recs


def test_cli_bad_input_is_one_line(tmp_path, data_dir):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "ilf.cli",
            "sample",
            "--model",
            str(tmp_path / "nope"),
            "--tasks",
            "11",
            "--output",
            str(tmp_path / "o.jsonl"),
            "--data-dir",
            str(data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "no such file or directory" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o.jsonl").exists()


def test_the_sampling_speed_of_this_machine_is_remembered_for_the_next_plan(tmp_path, monkeypatch, data_dir):
    from ilf.config import load_config
    from ilf.pipeline import Run
    from ilf.sampling import known_speed, record_speed

    monkeypatch.setenv("ILF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ILF_DATA_DIR", str(data_dir))  # the empty cache holds no data (a bare folder's is there)
    cfg = load_config(None, ["run_dir=" + str(tmp_path / "run"), "model.engine=openvino"])
    assert "not known on this machine yet" in Run(cfg).plan()
    record_speed("openvino/f16", cfg.model.base, 10, 1.0)  # too few programs to count
    assert known_speed("openvino/f16", cfg.model.base) is None
    record_speed("openvino/f16", cfg.model.base, 200, 100.0)
    assert known_speed("openvino/f16", cfg.model.base) == 2.0
    line = next(x for x in Run(cfg).plan().splitlines() if "time:" in x)
    assert "programs/min this machine sampled before" in line and "120 programs/min" in line, line


def test_the_plan_counts_every_model_it_evaluates(tmp_path, monkeypatch, data_dir):
    from ilf.config import load_config
    from ilf.pipeline import Run

    monkeypatch.setenv("ILF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ILF_DATA_DIR", str(data_dir))
    args = ["run_dir=" + str(tmp_path / "run"), "model.engine=openvino", 'eval.methods=["zero-shot","ilf"]', "train_seeds=3"]
    # zero-shot, ILF's final π_θ* with 3 seeds, and the π_θ* of rounds 1 and 2 (ilf-r1, ilf-r2)
    plan = Run(load_config(None, [*args, "rounds=3"])).plan()
    assert "evaluation: 6 models" in plan, plan
    assert "evaluation: 4 models" in Run(load_config(None, [*args, "rounds=1"])).plan()
