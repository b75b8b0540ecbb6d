"""Algorithm 1 end to end on a tiny real model: every stage, every artifact, resume after SIGKILL.

The tiny model (Qwen2 architecture, random init, a byte-level BPE tokenizer trained on MBPP) is
first taught, with ilf's own FINETUNE, to answer the paper's refinement prompt of three MBPP_Train
tasks with the human refinement, so that π_Refine (few-shot, 0 shots, greedy) really produces
passing refinements and the training set R is not empty. Everything after that is the real
pipeline: sandboxed EVAL, selection of R, FINETUNE of π_θ, evaluation, perplexity and report.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tiny_models

from ilf import machine
from ilf.config import load_config
from ilf.jsonl import load_jsonl

FEEDBACK_TASKS = [641, 646, 789]  # MBPP_Train tasks with short human refinements in the authors' file
ILF = [sys.executable, "-m", "ilf.cli"]


def build_refiner_model(out: Path, data_dir: Path) -> Path:
    from ilf.annotations import load_authors
    from ilf.finetune import FinetuneConfig, finetune
    from ilf.pairs import human_refinement_pairs
    from ilf.tasks import load_tasks

    tasks = load_tasks("mbpp", data_dir=data_dir)
    base = tiny_models.build_tiny_model(
        out / "init",
        corpus=[t.prompt + t.gold for t in tasks],
        vocab_size=1500,
        special_tokens=("<|endoftext|>", "<|im_end|>"),
        byte_alphabet=True,
        hidden_size=128,
        num_heads=4,
        kv_heads=2,
        max_positions=2048,
        tie_word_embeddings=True,
        peaked_head=False,
        model_max_length=None,
    )

    ann = {a["task_id"]: a for a in load_authors(data_dir / "surge_annotations.jsonl")}
    pairs = human_refinement_pairs([ann[t] for t in FEEDBACK_TASKS], tasks, kind="refine")
    fc = FinetuneConfig(
        learning_rate=3e-3,
        batch_size=3,
        per_device_batch_size=3,
        epochs=120,
        max_length=1024,
        warmup=0.0,
        report_to="none",
        logging_steps=50,
        seed=0,
    )
    return finetune(pairs, str(base), out / "refiner", fc)


@pytest.fixture(scope="module")
def refiner_model(tmp_path_factory, data_dir) -> Path:
    return build_refiner_model(tmp_path_factory.mktemp("tiny"), data_dir)


def write_config(path: Path, model: Path, run_dir: Path, **over) -> Path:
    eval_tasks = over.get("eval_tasks", "11-13")
    eval_n = over.get("eval_n", 2)
    ft_epochs = over.get("ft_epochs", 1)
    save_steps = over.get("save_steps", 0)
    path.write_text(f"""
name = "tiny"
run_dir = "{run_dir}"
seed = 0
train_seeds = {over.get("train_seeds", 1)}

[model]
base = "{model}"
engine = "transformers"

[feedback]
source = "authors"
tasks = "{",".join(map(str, FEEDBACK_TASKS))}"

[refine]
mode = "fewshot"
shots = 0
n = 2
temperature = 0.0
max_new_tokens = {over.get("refine_tokens", 48)}
shuffled_n = {over.get("shuffled_n", 0)}

[finetune]
learning_rate = 1e-4
batch_size = 2
per_device_batch_size = 1
epochs = {ft_epochs}
max_length = 512
bf16 = false
report_to = "none"
save_steps = {save_steps}

{over.get("sweep", "")}
[eval]
tasks = "{eval_tasks}"
n = {eval_n}
temperature = 0.8
max_new_tokens = {over.get("eval_tokens", 24)}
methods = {over.get("methods", '["zero-shot", "ilf", "gold"]')}

[report]
perplexity = true
bootstrap = 200
""")
    return path


def _stable(recs: list[dict]) -> list[tuple]:
    return [(r["task_id"], r["sample_id"], r["program"], r["passed"], r["status"]) for r in recs]


@pytest.mark.slow
def test_pipeline_end_to_end(refiner_model, tmp_path):
    run_dir = tmp_path / "run"
    sweep = '[sweep]\nlearning_rates = [1e-4, 3e-3]\nmethods = ["ilf"]\ntasks = "14-15"\nn = 1\nmax_new_tokens = 16\n'
    cfg_path = write_config(tmp_path / "tiny.toml", refiner_model, run_dir, train_seeds=2, shuffled_n=1, sweep=sweep)
    proc = subprocess.run(ILF + ["run", str(cfg_path)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = Path(proc.stdout.strip().splitlines()[-1])
    assert report == run_dir / "report" / "report.md" and report.exists()

    # Every artifact exists and is well-formed.
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert all(s["status"] == "done" for s in manifest["stages"].values()), manifest["stages"]
    for stage in [
        "r1/feedback",
        "r1/refine",
        "r1/eval-refine",
        "r1/select",
        "r1/finetune",
        "eval/zero-shot/sample",
        "eval/ilf/eval",
        "baselines/gold/finetune",
        "perplexity",
        "report",
    ]:
        assert stage in manifest["stages"]
    fb = load_jsonl(run_dir / "r1" / "feedback.jsonl")
    assert sorted(r["task_id"] for r in fb) == FEEDBACK_TASKS and all(r["feedback"] for r in fb)
    refinements = load_jsonl(run_dir / "r1" / "refinements.jsonl")
    assert len(refinements) == 2 * len(FEEDBACK_TASKS)
    assert {"task_id", "feedback_id", "sample_id", "refinement", "passed", "status", "edit_distance"} <= set(refinements[0])
    pairs = load_jsonl(run_dir / "r1" / "train_pairs.jsonl")
    passing_tasks = {r["task_id"] for r in refinements if r["passed"]}
    assert passing_tasks, "the memorised refinements should pass their tests"
    assert sorted(p["task_id"] for p in pairs) == sorted(passing_tasks)  # one per task, only passing ones
    summary = json.loads((run_dir / "r1" / "refine_summary.json").read_text())
    assert summary["num_feedback"] == 3 and 0 < summary["pass@1"] <= 1
    # The decisive control: π_θ sampled again on the feedback's tasks with π_Refine's budget, compared.
    ctl = load_jsonl(run_dir / "r1" / "control_results.jsonl")
    assert sorted({r["task_id"] for r in ctl}) == FEEDBACK_TASKS and len(ctl) == 2 * len(FEEDBACK_TASKS)
    assert {r["model"] for r in ctl} == {str(refiner_model)} and "r1/eval-control" in manifest["stages"]
    assert summary["control"]["tasks"] == 3 and summary["control"]["samples_per_task"] == 2
    assert "π_Refine vs π_θ sampled again" in proc.stderr
    # Table 2's control: every x0 refined once more with another task's feedback; none of it enters R.
    control = load_jsonl(run_dir / "r1" / "refinements_shuffled.jsonl")
    by_fid = {f["feedback_id"]: f for f in fb}
    assert len(control) == len(FEEDBACK_TASKS) and all(r["feedback_id"].endswith("~shuffled") for r in control)
    assert {r["feedback_id"].removesuffix("~shuffled") for r in control} == set(by_fid)
    assert not {p.get("feedback_id") for p in pairs} & {r["feedback_id"] for r in control}
    assert (run_dir / "r1" / "model" / "config.json").exists()
    for method in ["zero-shot", "ilf", "gold"]:
        s = json.loads((run_dir / "eval" / method / "summary.json").read_text())
        assert s["num_tasks"] == 3 and s["num_samples"] == 6 and s["n"] == 2 and 0 <= s["pass@1"] <= 1
        results = load_jsonl(run_dir / "eval" / method / "results.jsonl")
        assert len(results) == 6 and all(r["status"] in ("passed", "failed", "error", "timeout") for r in results)
    ilf_model = json.loads((run_dir / "eval" / "ilf" / "summary.json").read_text())["model"]
    assert ilf_model.endswith("r1/model")
    # train_seeds = 2: every trained method again with FINETUNE seed 1, evaluated beside seed 0.
    for method, model_dir in (("ilf@s1", "r1/model@s1"), ("gold@s1", "baselines/gold/model@s1")):
        s = json.loads((run_dir / "eval" / method / "summary.json").read_text())
        assert s["model"].endswith(model_dir) and s["num_samples"] == 6 and s["train_pairs"] == len(pairs)
    assert manifest["stages"]["r1/finetune@s1"]["params"]["train"]["seed"] == 1
    # The sweep: ILF fine-tuned per setting, measured on validation tasks 14-15 (never the test tasks
    # 11-13), the best setting's learning rate then trains every ILF seed; gold is not swept.
    table = load_jsonl(run_dir / "sweep" / "ilf" / "table.jsonl")
    assert [r["setting"] for r in table] == ["lr0.0001-bs2-ep1", "lr0.003-bs2-ep1"]
    assert all(r["num_tasks"] == 2 and r["num_samples"] == 2 for r in table)
    assert {x["task_id"] for x in load_jsonl(run_dir / "sweep" / "ilf" / "lr0.003-bs2-ep1" / "results.jsonl")} == {14, 15}
    best = json.loads((run_dir / "sweep" / "ilf" / "best.json").read_text())
    for stage in ("r1/finetune", "r1/finetune@s1"):
        assert manifest["stages"][stage]["params"]["train"]["learning_rate"] == best["learning_rate"]
    assert manifest["stages"]["baselines/gold/finetune"]["params"]["train"]["learning_rate"] == 1e-4
    assert not (run_dir / "sweep" / "ilf" / "lr0.003-bs2-ep1" / "model").exists()  # measured, then deleted
    seeds = {g["method"]: g for g in json.loads((run_dir / "report" / "report.json").read_text())["runs"][0]["train_seeds"]}
    assert seeds["ilf"]["seeds"] == ["ilf", "ilf@s1"] and "ilf_minus" in seeds["gold"]
    ppl = load_jsonl(run_dir / "perplexity.jsonl")
    assert {"gold", "human-refinements", "ilf"} <= {p["source"] for p in ppl}

    # The run ends with the headline table (pass@1 per method, Δ vs zero-shot) and its wall time.
    assert "Δ vs zero-shot" in proc.stderr and "done in" in proc.stderr
    text = report.read_text()
    for needle in ["zero-shot", "ilf", "gold", "pass@1", "π_Refine", "erplexity", "Table 2 analog", "Appendix A.1"]:
        assert needle in text, needle
    pngs = list((run_dir / "report").glob("*.png"))
    assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)

    # A second run skips every finished stage and changes nothing.
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*.jsonl")}
    proc2 = subprocess.run(ILF + ["run", str(cfg_path)], capture_output=True, text=True, timeout=600)
    assert proc2.returncode == 0, proc2.stderr[-2000:]
    assert "skipped" in proc2.stderr
    assert before == {p: p.stat().st_mtime_ns for p in run_dir.rglob("*.jsonl")}


@pytest.mark.slow
def test_an_empty_training_set_still_ends_in_a_report(refiner_model, tmp_path):
    """π_Refine repairs nothing (here: one token per refinement): ILF has no R to train on. The run
    does not fail; it evaluates what exists and the report says why ILF and its baselines are absent."""
    run_dir = tmp_path / "run"
    cfg_path = write_config(tmp_path / "empty.toml", refiner_model, run_dir, refine_tokens=1, eval_tasks="11", eval_n=1)
    proc = subprocess.run(ILF + ["run", str(cfg_path)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "R is empty" in proc.stderr
    assert load_jsonl(run_dir / "r1" / "train_pairs.jsonl") == []
    assert (run_dir / "eval" / "zero-shot" / "summary.json").exists()
    assert not (run_dir / "eval" / "ilf").exists() and not (run_dir / "baselines").exists()
    text = (run_dir / "report" / "report.md").read_text()
    assert "R is empty in round 1" in text and "zero-shot" in text
    # Every stage names the CPU that ran it, and the report's stage table shows it.
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert {s["cpu"] for s in manifest["stages"].values()} == {machine.describe()}
    assert f"- CPU 1: {machine.describe()}" in text


@pytest.mark.slow
def test_a_run_without_ilf_in_eval_methods_trains_nothing(refiner_model, tmp_path):
    """eval.methods = []: x0, feedback, π_Refine (and its shuffled control), R and the report, the
    runs behind Tables 1-3; no FINETUNE, no evaluation."""
    run_dir = tmp_path / "run"
    cfg_path = write_config(tmp_path / "refine_only.toml", refiner_model, run_dir, methods="[]", shuffled_n=1)
    proc = subprocess.run(ILF + ["run", str(cfg_path)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "π_θ* is not trained" in proc.stderr
    assert load_jsonl(run_dir / "r1" / "train_pairs.jsonl") and (run_dir / "r1" / "refinements_shuffled.jsonl").exists()
    assert not (run_dir / "r1" / "model").exists() and not (run_dir / "eval").exists()
    text = (run_dir / "report" / "report.md").read_text()
    assert "π_Refine" in text


@pytest.mark.slow
def test_models_not_on_disk_are_retrained_only_when_needed_and_keep_their_samples(refiner_model, tmp_path):
    """EVAL samples of a trained model are keyed by the FINETUNE stage that made it, not its bytes, and a
    finished FINETUNE whose model is gone (deleted for disk, or a run moved without its models) is
    retrained only if a stage still needs the model. Other FINETUNE settings are another model."""
    run_dir = tmp_path / "run"
    cfg_path = write_config(tmp_path / "t.toml", refiner_model, run_dir, eval_tasks="11", eval_n=1, methods='["ilf"]', train_seeds=2)
    assert subprocess.run(ILF + ["run", str(cfg_path)], capture_output=True, text=True, timeout=900).returncode == 0
    first = json.loads((run_dir / "manifest.json").read_text())["stages"]
    # Both models gone; seed 1's evaluation unfinished (its samples lost too); seed 0's complete.
    shutil.rmtree(run_dir / "r1" / "model")
    shutil.rmtree(run_dir / "r1" / "model@s1")
    for f in ("samples.jsonl", "results.jsonl"):
        (run_dir / "eval" / "ilf@s1" / f).unlink()
    proc = subprocess.run(ILF + ["run", str(cfg_path)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads((run_dir / "manifest.json").read_text())["stages"]
    assert again["r1/finetune"] == first["r1/finetune"] and not (run_dir / "r1" / "model").exists()  # not needed
    assert again["eval/ilf/sample"] == first["eval/ilf/sample"]
    assert again["r1/finetune@s1"]["started_at"] != first["r1/finetune@s1"]["started_at"]  # needed: retrained
    assert (run_dir / "r1" / "model@s1").is_dir()
    assert again["eval/ilf@s1/sample"]["fingerprint"] == first["eval/ilf@s1/sample"]["fingerprint"]
    assert load_jsonl(run_dir / "eval" / "ilf@s1" / "results.jsonl")  # sampled again from the retrained model

    # A retrained model whose bytes differ (another CPU) keeps its samples: the key is its FINETUNE stage.
    weights = run_dir / "r1" / "model@s1" / "model.safetensors"
    weights.write_bytes(weights.read_bytes() + b" ")
    proc = subprocess.run(ILF + ["run", str(cfg_path)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    third = json.loads((run_dir / "manifest.json").read_text())["stages"]
    assert third["eval/ilf@s1/sample"] == again["eval/ilf@s1/sample"]
    assert third["eval/ilf@s1/sample"]["params"]["trained_by"] == first["r1/finetune@s1"]["fingerprint"]

    # Another learning rate: another model, trained and sampled anew.
    cfg_path.write_text(cfg_path.read_text().replace("learning_rate = 1e-4", "learning_rate = 2e-4"))
    proc = subprocess.run(ILF + ["run", str(cfg_path)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fourth = json.loads((run_dir / "manifest.json").read_text())["stages"]
    for stage in ("eval/ilf/sample", "eval/ilf@s1/sample"):
        assert fourth[stage]["fingerprint"] != first[stage]["fingerprint"], stage
        assert fourth[stage]["started_at"] != third[stage]["started_at"], stage


def _wait_for(pred, proc, timeout=300.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def _stage_running(run_dir: Path, name: str) -> bool:
    try:
        m = json.loads((run_dir / "manifest.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    return m["stages"].get(name, {}).get("status") == "running"


def _lines(path: Path) -> int:
    try:
        return path.read_text().count("\n")
    except FileNotFoundError:
        return 0


@pytest.mark.slow
def test_sigkill_during_sampling_and_training_resumes(refiner_model, tmp_path):
    """Kill -9 in the middle of sampling, then of training; rerun: no finished work is redone and
    the final artifacts equal those of an uninterrupted run with the same seeds."""
    opts = dict(eval_tasks="11-22", eval_n=3, eval_tokens=48, ft_epochs=6, save_steps=1)
    clean_dir, killed_dir = tmp_path / "clean", tmp_path / "killed"
    clean_cfg = write_config(tmp_path / "clean.toml", refiner_model, clean_dir, **opts)
    killed_cfg = write_config(tmp_path / "killed.toml", refiner_model, killed_dir, **opts)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run(ILF + ["run", str(clean_cfg)], capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # 1) Kill during training of π_θ, once a checkpoint exists.
    p = subprocess.Popen(ILF + ["run", str(killed_cfg)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, env=env)
    ckpts = killed_dir / "r1" / "model" / "checkpoints"
    hit = _wait_for(lambda: _stage_running(killed_dir, "r1/finetune") and ckpts.exists() and any(ckpts.glob("checkpoint-*")), p)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert hit, "did not catch the training stage with a checkpoint"
    # 2) Rerun and kill during sampling of the zero-shot evaluation, after some tasks are written.
    p = subprocess.Popen(ILF + ["run", str(killed_cfg)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, env=env)
    samples = killed_dir / "eval" / "zero-shot" / "samples.jsonl"
    hit = _wait_for(lambda: _stage_running(killed_dir, "eval/zero-shot/sample") and _lines(samples) >= 6, p)
    os.killpg(p.pid, signal.SIGKILL)
    _, err2 = p.communicate()
    assert hit, "did not catch the sampling stage midway"
    assert b"resum" in err2.lower(), "the training stage should have resumed from its checkpoint"
    written = _lines(samples)
    assert 0 < written < 12 * 3
    # 3) Finish.
    proc = subprocess.run(ILF + ["run", str(killed_cfg)], capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming" in proc.stderr
    for method in ["zero-shot", "ilf", "gold"]:
        a = load_jsonl(clean_dir / "eval" / method / "results.jsonl")
        b = load_jsonl(killed_dir / "eval" / method / "results.jsonl")
        assert _stable(a) == _stable(b), method
    assert load_jsonl(clean_dir / "r1" / "train_pairs.jsonl") == load_jsonl(killed_dir / "r1" / "train_pairs.jsonl")


def test_bad_config_is_one_clear_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[refine]\nn = "ten"\n')
    proc = subprocess.run(ILF + ["run", str(bad)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and f"{bad}:3" in lines[0] and "refine.n" in lines[0]

    proc = subprocess.run(ILF + ["run", "--dry-run", "eval.methods=['zero-shot','bogus']"], capture_output=True, text=True)
    assert proc.returncode == 2 and "eval.methods" in proc.stderr and "bogus" in proc.stderr

    proc = subprocess.run(ILF + ["run", "--dry-run", "--unknown.key", "1"], capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown config key 'unknown'" in proc.stderr

    proc = subprocess.run(ILF + ["run", str(tmp_path / "missing.toml")], capture_output=True, text=True)
    assert proc.returncode == 2 and "missing.toml: config file not found" in proc.stderr


def test_malformed_artifact_is_one_clear_line(tmp_path, data_dir):
    """A run whose feedback artifact was edited by hand into invalid JSON fails with file:line."""
    from ilf.errors import IlfError
    from ilf.pipeline import Run

    cfg = load_config(None, [f"run_dir={tmp_path / 'r'}", f"data_dir={data_dir}"])
    run = Run(cfg)
    (run.dir / "manifest.json").write_text("{ not json")
    with pytest.raises(IlfError, match=r"manifest.json:1: invalid JSON"):
        Run(cfg)


def test_paper_config_validates():
    cfg = load_config("paper")
    assert cfg.eval.n == 30 and cfg.eval.temperature == 0.8 and cfg.refine.mode == "finetune"
    assert cfg.feedback.tasks == "train" and cfg.eval.tasks == "test" and cfg.refine.examples_tasks == "refine"
    assert cfg.finetune.learning_rate == 5e-6 and cfg.finetune.batch_size == 32 and cfg.finetune.epochs == 2
    assert set(cfg.eval.methods) == {"zero-shot", "ilf", "gold", "human-refinements", "llm-1shot", "llm-2shot"}


@pytest.mark.slow
def test_a_later_rounds_finetune_keys_its_base_by_the_stage_that_trained_it(tmp_path, monkeypatch, data_dir):
    """Round k fine-tunes round k-1's π_θ*. Models are not kept with a run, and a model retrained on
    another CPU differs in its bytes (float32 vs bf16 autocast): round k's FINETUNE, and so every sample of
    its model, must still count as done. Real tiny trainings; the "other CPU" is a perturbed weight."""
    import torch
    from transformers import AutoModelForCausalLM

    from ilf.jsonl import write_jsonl
    from ilf.pipeline import Run

    monkeypatch.setenv("ILF_DATA_DIR", str(data_dir))
    base = tiny_models.build_tiny_model(tmp_path / "base")
    pairs = tmp_path / "pairs.jsonl"
    write_jsonl(pairs, [{"task_id": i, "prompt": f"def f{i}():\n", "completion": f"    return {i}\n"} for i in range(2)])
    run_dir = tmp_path / "run"
    tiny_ft = [
        "finetune.epochs=1",
        "finetune.batch_size=1",
        "finetune.per_device_batch_size=1",
        "finetune.max_length=64",
        "finetune.bf16=false",
    ]
    cfg = load_config(None, ["run_dir=" + str(run_dir), f"model.base={base}", *tiny_ft])
    r1, r2 = run_dir / "r1" / "model", run_dir / "r2" / "model"

    def stages() -> dict:
        return json.loads((run_dir / "manifest.json").read_text())["stages"]

    def rounds(run: Run) -> dict:
        run.finetune_stage("r1/finetune", str(base), pairs, r1, run.cfg.finetune)
        run.finetune_stage("r2/finetune", str(r1), pairs, r2, run.cfg.finetune)
        return stages()

    first = rounds(Run(cfg))
    assert r2.is_dir() and first["r2/finetune"]["params"]["trained_by"] == first["r1/finetune"]["fingerprint"]

    # Round 1's model retrained elsewhere (other bytes), round 2's not on disk.
    model = AutoModelForCausalLM.from_pretrained(r1, dtype=torch.float32)
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    model.save_pretrained(r1)
    shutil.rmtree(r2)
    run = Run(cfg)
    assert rounds(run)["r2/finetune"] == first["r2/finetune"] and not r2.exists()  # done; retrained only if needed
    run.materialize(str(r2))
    again = stages()
    assert r2.is_dir() and again["r2/finetune"]["fingerprint"] == first["r2/finetune"]["fingerprint"]

    # Round 1 trained with another setting: another base, so round 2 trains again.
    cfg2 = load_config(None, ["run_dir=" + str(run_dir), f"model.base={base}", *tiny_ft, "finetune.learning_rate=2e-5"])
    third = rounds(Run(cfg2))
    assert third["r2/finetune"]["fingerprint"] != first["r2/finetune"]["fingerprint"]
    assert third["r2/finetune"]["started_at"] != again["r2/finetune"]["started_at"]


@pytest.mark.parametrize("empty_round", [None, 3])
def test_rounds_evaluate_each_pi_theta_star_once_with_stubbed_rounds(tmp_path, monkeypatch, data_dir, empty_round):
    """The order of Algorithm 1's rounds, with each round's sampling/refining/training stubbed (a real
    round 2 needs π_Refine to repair a trained model's failures, which no tiny model does): round r-1's
    π_θ* is evaluated as ilf-r<r-1> once round r trains; the last round that trains is ILF's final
    model, with its FINETUNE seeds, even when a later round's R is empty; no model is evaluated twice."""
    from ilf.pipeline import Run

    monkeypatch.setenv("ILF_DATA_DIR", str(data_dir))
    cfg = load_config(None, ["run_dir=" + str(tmp_path / "run"), "rounds=3", "train_seeds=2", 'eval.methods=["zero-shot","ilf"]'])
    run = Run(cfg)
    calls: list[tuple] = []

    def ilf_round(r, model):
        calls.append(("round", r, model))
        if r == empty_round:
            run._more_seeds = None
            return model, []
        run._more_seeds = lambda: calls.append(("seeds", r))
        return f"r{r}/model", [{"task_id": r}]

    monkeypatch.setattr(run, "ilf_round", ilf_round)
    monkeypatch.setattr(run, "eval_method", lambda method, model: calls.append(("eval", method, model)))
    monkeypatch.setattr(run, "report_stage", lambda: None)
    monkeypatch.setattr(run, "perplexity_stage", lambda: None)
    run.run()
    last = 2 if empty_round == 3 else 3
    evals = [c[1:] for c in calls if c[0] == "eval"]
    assert ("seeds", last) in calls and sum(c[0] == "seeds" for c in calls) == 1
    assert calls.index(("eval", "ilf-r1", "r1/model")) < calls.index(("round", 3, "r2/model"))
    assert ("ilf", f"r{last}/model") in evals and ("ilf@s1", f"r{last}/model@s1") in evals
    assert len({m for _, m in evals}) == len(evals), evals  # no model twice
    assert {m for m, _ in evals} == {"zero-shot", "ilf", "ilf@s1", "ilf-r1"} | ({"ilf-r2"} if last == 3 else set())
