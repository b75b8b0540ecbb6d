"""The paper's protocol where ilf used to deviate (issue 11): the refinement filter, the baselines'
data, the measurement precision, and the config rules that keep a run meaningful."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ilf.config import load_config
from ilf.errors import IlfError
from ilf.jsonl import write_jsonl
from ilf.pairs import sample_preferences


def _authors(data_dir):
    from ilf.annotations import load_authors

    return load_authors(data_dir / "surge_annotations.jsonl")


def test_bounded_edit_distance_keeps_every_passing_human_refinement(data_dir):
    """With refine.max_edit_distance = 1.0 ("no filter") every passing refinement is kept. The authors'
    measure (/ len(old body)) exceeds 1 for some of their own refinements, so it would drop them."""
    from ilf.pairs import ilf_pairs
    from ilf.tasks import load_tasks
    from ilf.text import edit_distance, normalized_edit_distance

    tasks = load_tasks("mbpp", data_dir=data_dir)
    ann = [a for a in _authors(data_dir) if a["task_id"] in tasks.tasks]
    assert len(ann) == 195
    nl = lambda s: s.replace("\r\n", "\n")  # noqa: E731
    unbounded = [normalized_edit_distance(nl(a["program"]), nl(a["refinement"]), tasks[a["task_id"]].prompt) for a in ann]
    assert sum(d >= 1.0 for d in unbounded) == 11  # what the old filter silently dropped
    results = []
    for i, a in enumerate(ann):
        d = edit_distance(a["program"], a["refinement"], tasks[a["task_id"]].prompt)
        assert 0.0 <= d <= 1.0
        results.append(
            {
                "task_id": a["task_id"],
                "feedback_id": f"f{i}",
                "sample_id": 0,
                "passed": True,
                "refinement": nl(a["refinement"]),
                "edit_distance": d,
            }
        )
    dropped: dict = {}
    pairs = ilf_pairs(results, tasks, max_edit_distance=1.0, dropped=dropped)
    assert len(pairs) == len({a["task_id"] for a in ann})
    assert dropped == {"passing_refinements_dropped_by_edit_distance": 0, "tasks_lost_to_edit_distance": 0}

    strict: dict = {}
    kept = ilf_pairs(results, tasks, max_edit_distance=0.2, dropped=strict)
    far = [r for r in results if r["edit_distance"] > 0.2]
    assert strict["passing_refinements_dropped_by_edit_distance"] == len(far) > 0
    assert strict["tasks_lost_to_edit_distance"] == len(pairs) - len(kept) > 0


def _run(tmp_path, data_dir, *over):
    from ilf.pipeline import Run

    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", f"data_dir={data_dir}", "feedback.source=trace", *over])
    return Run(cfg)


def test_rft_trains_on_own_passing_samples_for_as_many_tasks_as_R(tmp_path, data_dir):
    run = _run(tmp_path, data_dir)
    tasks = run.tasks()
    results = []
    for tid in (601, 602, 603, 604):  # π_θ solved these (some samples pass)...
        for j in range(3):
            results.append({"task_id": tid, "sample_id": j, "passed": j == 1, "program": tasks[tid].prompt + f"    return {j}\n"})
    for j in range(3):  # ...and not this one
        results.append({"task_id": 605, "sample_id": j, "passed": False, "program": tasks[605].prompt + "    pass\n"})
    (run.dir / "r1").mkdir(parents=True)
    write_jsonl(run.dir / "r1" / "results.jsonl", results)
    from ilf.pairs import rft_pairs

    pairs = rft_pairs(results, tasks, 2)
    assert len(pairs) == 2 and len({p["task_id"] for p in pairs}) == 2
    assert all(p["task_id"] != 605 and p["sample_id"] == 1 and p["completion"] == "    return 1\n" for p in pairs)
    assert pairs == rft_pairs(results, tasks, 2)  # seeded
    assert len(rft_pairs(results, tasks, 10)) == 4  # never more tasks than π_θ solved


def test_the_complete_proposal_is_R_plus_every_solved_task_and_rft_all_is_its_control(tmp_path, data_dir):
    """ilf-rft (paper §2's π*: R where π_θ fails, π_θ's own passing programs where it passes) and
    rft-all (the same passing programs without R): the difference between the two is the feedback's."""
    run = _run(tmp_path, data_dir, "eval.methods=['zero-shot','ilf','ilf-rft','rft-all']")
    tasks = run.tasks()
    results = [
        {"task_id": t, "sample_id": j, "passed": t != 605 and j == 1, "program": tasks[t].prompt + f"    return {j}\n"}
        for t in (601, 602, 603, 604, 605)
        for j in range(3)
    ]
    (run.dir / "r1").mkdir(parents=True)
    write_jsonl(run.dir / "r1" / "results.jsonl", results)
    r = [{"task_id": 605, "prompt": tasks[605].prompt, "completion": "    return 5\n", "source": "ilf"}]
    write_jsonl(run.dir / "r1" / "train_pairs.jsonl", r)
    run.finetune_stage = lambda *a, **k: None  # the data is what is tested here, not training
    run.sweep_stage = lambda *a, **k: None
    for method in ("ilf-rft", "rft-all", "rft"):
        run.baseline_model(method)
    read = lambda m: [json.loads(x) for x in (run.dir / "baselines" / m / "train_pairs.jsonl").read_text().splitlines()]  # noqa: E731
    assert sorted(p["task_id"] for p in read("rft-all")) == [601, 602, 603, 604]
    assert read("ilf-rft") == r + read("rft-all") and len(read("rft")) == len(r)


def test_dpo_methods_prefer_R_over_its_x0_and_pi_thetas_passing_over_its_failing(tmp_path, data_dir):
    """ilf-dpo: each program of R over the failing x0 it repaired; rft-dpo (its control without feedback):
    a passing sample of π_θ over a failing one, on as many tasks with both as ilf-dpo has pairs (as rft
    is the size of R). Both train with objective dpo."""
    run = _run(tmp_path, data_dir, "eval.methods=['zero-shot','ilf','ilf-dpo','rft-dpo']")
    tasks = run.tasks()
    p = {t: tasks[t].prompt for t in (601, 602, 603, 605)}
    results = [
        {"task_id": t, "sample_id": j, "passed": ok, "program": p[t] + f"    return {j}\n"}
        for t, oks in ((601, (True, False)), (602, (True, True)), (603, (False, True)), (605, (False, False)))
        for j, ok in enumerate(oks)
    ]
    rd = run.dir / "r1"
    rd.mkdir(parents=True)
    write_jsonl(rd / "results.jsonl", results)
    write_jsonl(rd / "feedback.jsonl", [{"task_id": 605, "feedback_id": "f605", "program": p[605] + "    return 0\n", "feedback": "f"}])
    write_jsonl(rd / "refinements.jsonl", [
        {"task_id": 605, "feedback_id": "f605", "sample_id": 0, "refinement": p[605] + "    return 9\n", "passed": True},
        {"task_id": 605, "feedback_id": "f605", "sample_id": 1, "refinement": p[605] + "    return 8\n", "passed": False},
    ])  # fmt: skip
    write_jsonl(
        rd / "train_pairs.jsonl",
        [{"task_id": 605, "prompt": p[605], "completion": "    return 9\n", "feedback_id": "f605", "sample_id": 0}],
    )
    trained = []
    run.finetune_stage = lambda name, base, pairs, out, tc, seed_offset=0: trained.append((name, tc.objective))
    for method in ("ilf-dpo", "rft-dpo"):
        run.baseline_model(method)
    read = lambda m: [json.loads(x) for x in (run.dir / "baselines" / m / "train_pairs.jsonl").read_text().splitlines()]  # noqa: E731
    (ilf,) = read("ilf-dpo")
    assert (ilf["task_id"], ilf["chosen"], ilf["rejected"], ilf["prompt"]) == (605, "    return 9\n", "    return 0\n", p[605])
    (own,) = read("rft-dpo")  # one pair, as ilf-dpo; 602 has no failing sample, 605 no passing one
    expected = {601: ("    return 0\n", "    return 1\n"), 603: ("    return 1\n", "    return 0\n")}
    assert (own["chosen"], own["rejected"]) == expected[own["task_id"]]
    chosen = {sample_preferences(results, tasks, 1, seed=s)[0]["task_id"] for s in range(20)}
    assert chosen == {601, 603}  # which tasks is a seeded choice
    assert {o for _, o in trained} == {"dpo"}


def test_human_refinement_baseline_uses_R_task_ids(tmp_path, data_dir):
    run = _run(tmp_path, data_dir, "eval.methods=['zero-shot','ilf','human-refinements']")
    annotated = sorted({a["task_id"] for a in _authors(data_dir) if a["task_id"] >= 311})[:2]
    (run.dir / "r1").mkdir(parents=True)
    write_jsonl(
        run.dir / "r1" / "train_pairs.jsonl",
        [{"task_id": t, "prompt": "p", "completion": "c"} for t in annotated + [312 if 312 not in annotated else 313]],
    )
    run.finetune_stage = lambda *a, **k: None  # the data is what is tested here, not training
    run.baseline_model("human-refinements")
    recs = [json.loads(x) for x in (run.dir / "baselines" / "human-refinements" / "train_pairs.jsonl").read_text().splitlines()]
    assert sorted(r["task_id"] for r in recs) == annotated


def test_config_rules(tmp_path):
    with pytest.raises(IlfError, match="rounds"):
        load_config(None, ["rounds=2", "feedback.source=authors"])
    assert load_config(None, ["rounds=2", "feedback.source=trace"]).rounds == 2
    with pytest.raises(IlfError, match="model.weights"):
        load_config(None, ["model.weights=f32"])
    cfg = load_config(None)
    assert cfg.model.weights == "f16" and cfg.feedback.source != "authors"  # the demo is on-policy


@pytest.mark.slow
def test_f16_weights_keep_a_small_update_that_q8_0_loses(tmp_path):
    """The measurement path: a model updated by a small step (as a few optimizer steps at a small
    learning rate do) keeps its update when converted with f16 matrices; Q8_0 re-quantization mostly
    replaces it with noise (block scales move)."""
    import gguf
    import torch
    from safetensors.torch import load_file, save_file
    from tiny_models import build_qwen_tiny

    from ilf.generation.openvino import hf_to_gguf

    base = build_qwen_tiny(tmp_path / "base")
    ft = tmp_path / "ft"
    import shutil

    shutil.copytree(base, ft)
    sd = load_file(ft / "model.safetensors")
    name = "model.layers.0.mlp.up_proj.weight"
    g = torch.Generator().manual_seed(1)
    w = sd[name].float()
    delta = torch.randn(w.shape, generator=g) * w.abs().mean() * 2e-3
    sd[name] = (w + delta).contiguous()
    save_file(sd, ft / "model.safetensors", metadata={"format": "pt"})

    def tensor(path, fmt):
        r = gguf.GGUFReader(path)
        t = next(t for t in r.tensors if t.name == "blk.0.ffn_up.weight")
        if fmt == "f16":
            assert t.tensor_type == gguf.GGMLQuantizationType.F16
        else:
            assert t.tensor_type == gguf.GGMLQuantizationType.Q8_0
        return gguf.quants.dequantize(t.data, t.tensor_type).reshape(w.shape).astype(np.float64)

    d = delta.numpy().astype(np.float64)
    cos = {}
    for fmt in ("f16", "q8_0"):
        hf_to_gguf(base, tmp_path / f"base-{fmt}.gguf", fmt)
        hf_to_gguf(ft, tmp_path / f"ft-{fmt}.gguf", fmt)
        dq = tensor(tmp_path / f"ft-{fmt}.gguf", fmt) - tensor(tmp_path / f"base-{fmt}.gguf", fmt)
        cos[fmt] = float((dq * d).sum() / np.sqrt((dq * dq).sum() * (d * d).sum()))
    assert cos["f16"] > 0.9, cos
    assert cos["q8_0"] < 0.5, cos


def test_sample_refuses_an_unknown_weight_format(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "s.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "ilf.cli", "sample", "--tasks", "11", "--weights", "f32", "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "--weights must be one of f16, q8_0" in proc.stderr and not out.exists()


@pytest.mark.parametrize(
    "override,key",
    [
        ("eval.timeout=-1", "eval.timeout"),
        ("eval.temperature=nan", "eval.temperature"),
        ("sample.top_p=5", "sample.top_p"),
        ("feedback.max_tasks=-3", "feedback.max_tasks"),
        ("refine.max_edit_distance=-1", "refine.max_edit_distance"),
        ("refine.max_edit_distance=nan", "refine.max_edit_distance"),
        ('name="a\\nb"', "name"),
        ("finetune.bogus=1", "finetune.bogus"),
        ("finetune.optim=3", "finetune.optim"),
        ("finetune.learning_rate=inf", "finetune.learning_rate"),
        ("sweep.learning_rates=[0.0]", "sweep.learning_rates"),
        ("refine.shuffled_n=-1", "refine.shuffled_n"),
    ],
)
def test_run_config_refuses_bad_values_with_one_line(tmp_path, override, key):
    """`ilf run --dry-run KEY=V` validates every value the way a run would use it."""
    from ilf.config import load_config
    from ilf.errors import IlfError

    with pytest.raises(IlfError) as e:
        load_config(None, [f"run_dir={tmp_path / 'r'}", override])
    assert f"'{key}'" in str(e.value) and "\n" not in str(e.value)


def test_llm_max_x0_enters_only_the_llm_baselines_fingerprints():
    """Subsetting the LLM baselines' x0 (a CPU-time knob) must not invalidate a run's finished stages."""
    from ilf.config import FeedbackConfig
    from ilf.pipeline import feedback_params

    a, b = FeedbackConfig(), FeedbackConfig(llm_max_x0=100)
    assert feedback_params(a) == feedback_params(b) and feedback_params(a, "gold") == feedback_params(b, "gold")
    assert feedback_params(a, "llm-1shot") != feedback_params(b, "llm-1shot")
    assert feedback_params(b, "llm-2shot")["llm_max_x0"] == 100


class ScriptedLLM:
    """Stands in for a large LLM (a paid API or a GPU model, neither runs here): its feedback is a fixed
    sentence and its refinement is the gold body for task 602, a wrong one for 603."""

    name = "scripted"

    def __init__(self, tasks):
        self.tasks, self.prompts = tasks, []

    def generate(self, prompts, params, progress=None):
        from ilf.generation.base import Completion
        from ilf.text import body_after_prompt

        out = []
        for i, p in enumerate(prompts):
            self.prompts.append(p)
            if p.endswith(self.tasks[602].prompt):  # a refinement prompt ends where the program starts
                texts = [body_after_prompt(self.tasks[602].gold, self.tasks[602].prompt)]
            elif p.endswith(self.tasks[603].prompt):
                texts = ["    return []\n"]
            else:  # a feedback prompt: n draws
                texts = ["Loop over the characters and return the first one seen twice."] * params.n
            out.append([Completion(text=t, num_tokens=len(t.split())) for t in texts])
            if progress:
                progress(i, out[-1])
        return out


def test_an_llm_baseline_writes_n_feedback_and_refinements_per_x0_judges_them_and_keeps_the_passing(tmp_path, data_dir):
    """llm-1shot (paper §3.3) with a scripted stand-in for the LLM: feedback.llm_n draws per x0, each
    refinement judged in the sandbox, R holds one passing refinement per task, and llm_max_x0 repairs
    a seeded subset of the x0."""
    from ilf.baselines import llm_refinement_pairs, llm_x0
    from ilf.jsonl import load_jsonl

    run = _run(tmp_path, data_dir, "feedback.llm_n=2", "refine.temperature=0.8")
    tasks = run.tasks()
    wrong = "    return None\n"
    failing = [{"task_id": t, "sample_id": 0, "program": tasks[t].prompt + wrong, "error": "AssertionError"} for t in (602, 603)]
    llm = ScriptedLLM(tasks)
    out = tmp_path / "llm-1shot"
    cfg = run.cfg
    kw = dict(fc=cfg.feedback, rc=cfg.refine, examples=run.example_annotations(), seed=0, model_name="scripted", compare="exact")
    pairs = llm_refinement_pairs("llm-1shot", llm_x0(failing, 0, 0), tasks, lambda: llm, out, console=None, **kw)

    feedback = load_jsonl(out / "feedback.jsonl")
    assert [(f["task_id"], f["draw"]) for f in feedback] == [(602, 0), (602, 1), (603, 0), (603, 1)]
    judged = load_jsonl(out / "refinements.jsonl")
    assert sorted((r["task_id"], r["passed"]) for r in judged) == [(602, True), (602, True), (603, False), (603, False)]
    assert [(p["task_id"], p["source"]) for p in pairs] == [(602, "llm-1shot")]
    assert pairs[0]["completion"].strip() == tasks[602].gold.split("\n", 1)[1].strip()
    # 1-shot: each feedback prompt holds one human example and the target.
    feedback_prompts = [p for p in llm.prompts if not p.endswith((tasks[602].prompt, tasks[603].prompt))]
    assert len(feedback_prompts) == 2 and all(p.count("FEEDBACK:") == 2 for p in feedback_prompts), feedback_prompts

    subset = llm_x0(failing, 1, 0)
    assert len(subset) == 1 and subset == llm_x0(failing, 1, 0) and subset[0]["passed"] is False
