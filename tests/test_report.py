"""ilf.report on small synthetic run directories (real files with made-up per-sample results) and
completion-only perplexity on a tiny random Qwen2 model built here."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from math import comb
from pathlib import Path

import numpy as np
import pytest

from ilf import report
from ilf.errors import IlfError
from ilf.jsonl import load_jsonl, write_json, write_jsonl

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------
# Synthetic run directories


def _results(method: str, outcomes: dict[int, list[bool]], model: str) -> list[dict]:
    return [
        {
            "task_id": t,
            "sample_id": i,
            "model": model,
            "engine": "openvino",
            "prompt": "p",
            "completion": "c",
            "program": "x",
            "num_tokens": 58 + i % 2 if method == "zero-shot" else 31,
            "passed": ok,
            "status": "passed" if ok else "failed",
            "error": None,
        }
        for t, oks in outcomes.items()
        for i, ok in enumerate(oks)
    ]


def make_run(
    root: Path,
    name: str = "demo",
    *,
    n: int = 10,
    zero_rate: float = 0.2,
    ilf_rate: float = 0.5,
    tasks: range = range(11, 31),
    refine: bool = True,
    feedback: bool = True,
    perplexity: bool = True,
    manifest: bool = True,
) -> Path:
    """A run directory as the pipeline writes it: zero-shot and ilf evals, one round, optional sections.
    Task t passes its first round(rate * n) samples, shifted per task so tasks differ."""
    run = root / name
    run.mkdir(parents=True)
    (run / "config.toml").write_text(f'name = "{name}"\nseed = 0\n\n[report]\nbootstrap = 500\n')
    for method, rate, model in (("zero-shot", zero_rate, "qwen2.5-coder-0.5b-instruct"), ("ilf", ilf_rate, f"runs/{name}/r1/model")):
        outcomes = {}
        for j, t in enumerate(tasks):
            c = max(0, min(n, round(rate * n) + (j % 3) - 1))
            outcomes[t] = [i < c for i in range(n)]
        ed = run / "eval" / method
        write_jsonl(ed / "results.jsonl", _results(method, outcomes, model))
        write_json(
            ed / "summary.json",
            {
                "method": method,
                "model": model,
                "engine": "openvino",
                "dataset": "mbpp",
                "split": "11-30",
                "task_ids": list(tasks),
                "n": n,
                "temperature": 0.8,
                "top_p": 0.95,
                "max_new_tokens": 192,
                "seed": 0,
                "train_pairs": 7 if method == "ilf" else None,
            },
        )
    if refine:
        r1 = run / "r1"
        refs = []
        # 8 (x0, f) pairs x 4 refinements; pair p has p % 5 passing refinements.
        for p in range(8):
            for s in range(4):
                refs.append(
                    {
                        "task_id": 311 + p,
                        "feedback_id": f"f{p}",
                        "sample_id": s,
                        "refinement": "def f(): pass",
                        "passed": s < p % 5,
                        "status": "passed" if s < p % 5 else "failed",
                        "error": None,
                        "edit_distance": 0.25,
                    }
                )
        write_jsonl(r1 / "refinements.jsonl", refs)
        write_jsonl(
            r1 / "train_pairs.jsonl",
            [{"task_id": 311 + p, "prompt": "p", "completion": "c", "source": "ilf"} for p in range(8) if p % 5 > 0],
        )
        write_json(r1 / "refine_summary.json", {"num_feedback": 8, "n": 4})
    if feedback:
        write_jsonl(
            run / "r1" / "feedback.jsonl",
            [
                {
                    "task_id": 311,
                    "sample_id": 0,
                    "program": "x",
                    "feedback": "The loop should stop one step earlier.",
                    "source": "authors",
                    "author": "a",
                    "feedback_id": "f0",
                    "created_at": "2023",
                },
                {
                    "task_id": 312,
                    "sample_id": 0,
                    "program": "x",
                    "feedback": "Use sorted instead of sort:\nreturn sorted(xs)",
                    "source": "authors",
                    "author": "a",
                    "feedback_id": "f1",
                    "created_at": "2023",
                },
                {
                    "task_id": 313,
                    "sample_id": 0,
                    "program": "x",
                    "feedback": "Wrong operator.",
                    "source": "trace",
                    "author": "ilf",
                    "feedback_id": "f2",
                    "created_at": "2023",
                },
            ],
        )
    if perplexity:
        rng = np.random.default_rng(0)
        recs = []
        for source, mu in (("gold", 1.6), ("human-refinements", 1.4), ("ilf", 1.1)):
            for t in range(311, 331):
                ppl = float(np.exp(rng.normal(mu, 0.3)))
                recs.append(
                    {
                        "source": source,
                        "task_id": t,
                        "index": 0,
                        "perplexity": ppl,
                        "nll": math.log(ppl),
                        "num_tokens": 40,
                        "model": "m",
                        "dtype": "float32",
                    }
                )
        write_jsonl(run / "perplexity.jsonl", recs)
    if manifest:
        write_json(
            run / "manifest.json",
            {
                "code_version": "abc123",
                "created_at": "2026-11-22T04:00:00Z",
                "stages": {
                    "r1/refine": {"status": "done", "seconds": 12.5, "fingerprint": "x", "cpu": "CPU A"},
                    "eval/ilf/eval": {"status": "done", "seconds": 30.0, "fingerprint": "y", "cpu": "CPU B"},
                },
            },
        )
    return run


def _method(rep: dict, name: str) -> dict:
    return next(m for m in rep["runs"][0]["methods"] if m["method"] == name)


# ---------------------------------------------------------------------------------------------
# Maths


@pytest.mark.parametrize("n,c,k", [(5, 2, 1), (5, 2, 2), (10, 3, 5), (10, 0, 3), (10, 10, 10), (4, 1, 4), (30, 7, 10)])
def test_pass_at_k_matches_the_combinatorial_definition(n, c, k):
    expected = 1.0 - comb(n - c, k) / comb(n, k)
    assert report.pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_bootstrap_ci_contains_the_mean_narrows_with_more_tasks_and_is_seeded():
    pattern = [1.0, 0.0, 0.0, 0.5, 0.2, 0.0, 1.0, 0.1, 0.0, 0.3]
    small = np.array(pattern * 2)  # 20 tasks
    big = np.array(pattern * 40)  # 400 tasks, same mean
    lo_s, hi_s = report.bootstrap_ci(small, resamples=2000, seed=1)
    lo_b, hi_b = report.bootstrap_ci(big, resamples=2000, seed=1)
    mean = small.mean()
    assert lo_s < mean < hi_s and lo_b < mean < hi_b
    assert (hi_b - lo_b) < 0.5 * (hi_s - lo_s)  # ~ 1/sqrt(20) of the width
    assert report.bootstrap_ci(small, resamples=2000, seed=1) == (lo_s, hi_s)
    assert report.bootstrap_ci(small, resamples=2000, seed=2) != (lo_s, hi_s)
    # Constant values: a zero-width interval at the value.
    assert report.bootstrap_ci(np.full(15, 0.4)) == pytest.approx((0.4, 0.4))


def test_compress_ids():
    assert report.compress_ids(["11", "12", "13", "20", "22", "23"]) == "11-13, 20, 22-23"
    assert report.compress_ids(["HumanEval/0", "HumanEval/1"]) == "HumanEval/0, HumanEval/1"


# ---------------------------------------------------------------------------------------------
# One run


def test_write_report_has_every_section_with_numbers_from_the_results(tmp_path):
    run = make_run(tmp_path)
    md_path = report.write_report(run)
    assert md_path == run / "report" / "report.md"
    md = md_path.read_text()
    rep = json.loads((run / "report" / "report.json").read_text())

    # Table 4 analog: numbers recomputed by hand from results.jsonl.
    res = load_jsonl(run / "eval" / "ilf" / "results.jsonl")
    per_task: dict[int, list[bool]] = {}
    for r in res:
        per_task.setdefault(r["task_id"], []).append(r["passed"])
    p1 = np.mean([sum(v) / len(v) for v in per_task.values()])
    p10 = np.mean([1.0 - comb(len(v) - sum(v), 10) / comb(len(v), 10) for v in per_task.values()])
    one_plus = np.mean([any(v) for v in per_task.values()])
    ilf = _method(rep, "ilf")
    assert ilf["metrics"]["pass@1"]["value"] == pytest.approx(p1)
    assert ilf["metrics"]["pass@10"]["value"] == pytest.approx(p10)
    assert ilf["metrics"]["one_plus_correct"]["value"] == pytest.approx(one_plus)
    for m in ilf["metrics"].values():
        assert m["lo"] <= m["value"] <= m["hi"]
    assert ilf["train_pairs"] == 7 and ilf["num_tasks"] == 20 and ilf["n_min"] == 10
    assert rep["runs"][0]["bootstrap"]["resamples"] == 500  # from config.toml [report] bootstrap
    # ILF is better on every task here: the paired difference's CI excludes 0.
    d = ilf["delta_vs_zero-shot"]["metrics"]["pass@1"]
    assert d["lo"] > 0 and d["value"] == pytest.approx(p1 - _method(rep, "zero-shot")["metrics"]["pass@1"]["value"])

    for heading in ("Table 4 analog", "Table 3 analog", "## Training sets", "Table 6 analog", "Figure 3 analog", "## Stages"):
        assert heading in md
    assert "temperature 0.8, top_p 0.95, max new tokens 192, seed 0; engine openvino" in md
    assert "20 tasks (11-30)" in md and "n = 10 samples per task" in md
    assert f"| ilf | runs/demo/r1/model | 7 | 20 | 10 | {100 * p1:.1f} [" in md
    assert md.index("| zero-shot |") < md.index("| ilf |")
    # Mean completion tokens per method: a style change from FINETUNE (terser programs) shows here.
    assert _method(rep, "zero-shot")["mean_tokens"] == pytest.approx(58.5) and _method(rep, "ilf")["mean_tokens"] == 31
    assert "tokens per sample" in md and next(ln for ln in md.splitlines() if ln.startswith("| ilf |")).endswith("| 31.0 |")

    # Table 3 analog: 8 pairs x 4 refinements, pair p passes p % 5 of 4 -> c = 0,1,2,3,4,0,1,2.
    cs = [p % 5 for p in range(8)]
    r1 = rep["runs"][0]["refine"][0]
    assert r1["pairs"] == 8 and r1["refinements"] == 32 and r1["train_pairs"] == 6
    assert r1["metrics"]["pass@1"]["value"] == pytest.approx(np.mean([c / 4 for c in cs]))
    assert r1["metrics"]["one_plus_correct"]["value"] == pytest.approx(6 / 8)
    assert r1["mean_edit_distance_passing"] == pytest.approx(0.25)

    fb = {f["source"]: f for f in rep["runs"][0]["feedback"]}
    assert fb["authors"]["count"] == 2 and fb["trace"]["count"] == 1
    assert fb["authors"]["mean_words"] == pytest.approx((7 + 7) / 2)
    assert fb["authors"]["share_with_code"] == pytest.approx(0.5)  # "return sorted(xs)" is a line of code
    ppl = {p["source"]: p for p in rep["runs"][0]["perplexity"]}
    assert set(ppl) == {"gold", "human-refinements", "ilf"} and ppl["ilf"]["count"] == 20
    assert "| r1/refine | done | 12.5 | 1 |" in md and "| eval/ilf/eval | done | 30.0 | 2 |" in md
    assert "- CPU 1: CPU A" in md and "- CPU 2: CPU B" in md  # a run resumed on another machine says so

    # Figures: valid PNGs that matplotlib reads back, referenced from the Markdown.
    import matplotlib.image as mpimg

    assert set(rep["figures"]) == {"pass_at_k", "pass_curve", "refine_rounds", "perplexity"}
    for name in rep["figures"].values():
        data = (run / "report" / name).read_bytes()
        assert data.startswith(PNG_MAGIC)
        assert mpimg.imread(run / "report" / name).shape[0] > 200
        assert f"]({name})" in md


def test_missing_inputs_give_one_line_each_instead_of_failing(tmp_path):
    run = make_run(tmp_path, n=5, refine=False, feedback=False, perplexity=False, manifest=False)
    md = report.write_report(run).read_text()
    assert "No perplexity.jsonl in this run" in md
    assert "No ILF rounds" in md
    assert "No feedback.jsonl" in md
    assert "No manifest.json" in md
    assert "pass@10" not in md  # n = 5 < 10
    rep = json.loads((run / "report" / "report.json").read_text())
    assert set(rep["figures"]) == {"pass_at_k", "pass_curve"}

    empty = tmp_path / "empty"
    empty.mkdir()
    md = report.write_report(empty).read_text()
    assert "No evaluation results" in md


def test_unfinished_method_and_summary_mismatch_are_reported(tmp_path):
    run = make_run(tmp_path)
    (run / "eval" / "gold").mkdir()  # stage started, no results yet
    s = json.loads((run / "eval" / "ilf" / "summary.json").read_text())
    s["pass@1"] = 0.99
    write_json(run / "eval" / "ilf" / "summary.json", s)
    md = report.write_report(run).read_text()
    assert "Not finished (no results.jsonl): gold." in md
    assert "summary.json says pass@1 = 0.9900" in md
    assert "Not evaluated" not in md


def test_baseline_without_training_data_is_named_not_silently_missing(tmp_path):
    run = make_run(tmp_path)
    (run / "baselines" / "human-refinements").mkdir(parents=True)
    (run / "baselines" / "human-refinements" / "train_pairs.jsonl").write_text("")
    md = report.write_report(run).read_text()
    assert "**human-refinements** has no training data (`baselines/human-refinements/train_pairs.jsonl` is empty)" in md
    rep = json.loads((run / "report" / "report.json").read_text())
    assert [u["method"] for r in rep["runs"] for u in r["untrained_methods"]] == ["human-refinements"]


@pytest.mark.parametrize(
    "path,content,expected",
    [
        ("eval/ilf/results.jsonl", '{"task_id": 11, "passed": true}\n{"task_id": 11}\n', "results.jsonl:2: missing field 'passed'"),
        ("eval/ilf/results.jsonl", '{"task_id": 11, "passed": "yes"}\n', "results.jsonl:1: field 'passed' must be bool"),
        ("r1/refinements.jsonl", '{"task_id": 311, "passed": true}\n', "refinements.jsonl:1: missing field 'feedback_id'"),
        ("eval/ilf/summary.json", '{"model": ', "summary.json:1: invalid JSON"),
        ("perplexity.jsonl", '{"source": "gold", "task_id": 1, "num_tokens": 3}\n', "perplexity.jsonl:1: missing field 'perplexity'"),
        ("r1/feedback.jsonl", '{"task_id": 1, "source": "authors"}\n', "feedback.jsonl:1: missing field 'feedback'"),
    ],
)
def test_malformed_artifact_is_one_clear_error_and_nothing_is_written(tmp_path, path, content, expected):
    run = make_run(tmp_path)
    (run / path).write_text(content)
    with pytest.raises(IlfError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        report.write_report(run)
    assert not (run / "report" / "report.md").exists()


def test_cli_report_bad_artifact_exits_2_with_one_line(tmp_path):
    run = make_run(tmp_path)
    (run / "eval" / "zero-shot" / "results.jsonl").write_text('{"task_id": 11, "passed": true}\nnot json\n')
    p = subprocess.run([sys.executable, "-m", "ilf.cli", "report", str(run)], capture_output=True, text=True)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "results.jsonl:2: invalid JSON" in lines[0]


# ---------------------------------------------------------------------------------------------
# Several runs


def test_compare_runs_has_one_row_per_run_and_method(tmp_path):
    a = make_run(tmp_path, "demo", ilf_rate=0.5)
    b = make_run(tmp_path, "paper", ilf_rate=0.7, perplexity=False)
    out = tmp_path / "cmp"
    md = report.compare_runs([a, b], out).read_text()
    rep = json.loads((out / "report.json").read_text())
    assert [r["label"] for r in rep["runs"]] == ["demo", "paper"]
    for run in ("demo", "paper"):
        for method in ("zero-shot", "ilf"):
            assert f"| {run} | {method} |" in md
    assert "| demo | 1 | 8 |" in md and "| paper | 1 | 8 |" in md  # π_Refine rows per run
    ilf_a = next(m for m in rep["runs"][0]["methods"] if m["method"] == "ilf")
    ilf_b = next(m for m in rep["runs"][1]["methods"] if m["method"] == "ilf")
    assert ilf_b["metrics"]["pass@1"]["value"] > ilf_a["metrics"]["pass@1"]["value"]
    for name in rep["figures"].values():
        assert (out / name).read_bytes().startswith(PNG_MAGIC)

    # Default output beside the first run; the CLI writes the same.
    p = subprocess.run([sys.executable, "-m", "ilf.cli", "report", str(a), str(b)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "compare-demo-vs-paper" / "report.md").is_file()


# ---------------------------------------------------------------------------------------------
# Perplexity on a tiny random model


def _tiny_model(d: Path) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    corpus = ["def add(a, b):\n    return a + b\n", "for i in range(10):\n    print(i)\n", '"""Sum a list."""\n']
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        corpus * 10,
        trainer=trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
    )
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>").save_pretrained(d)
    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=tok.get_vocab_size(),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    Qwen2ForCausalLM(cfg).save_pretrained(d)
    return d


def _hand_perplexity(model_dir: Path, prompt: str, completion: str) -> tuple[float, int]:
    """exp(mean NLL of the completion tokens), one unpadded sequence, from the full logits."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    p = tok(prompt)["input_ids"]
    full = tok(prompt + completion)["input_ids"]
    start = next((i for i, (a, b) in enumerate(zip(p, full)) if a != b), min(len(p), len(full)))
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([full])).logits[0].double(), -1)
    nll = [-float(logp[i - 1, full[i]]) for i in range(start, len(full))]
    return math.exp(sum(nll) / len(nll)), len(nll)


def test_perplexity_equals_exp_mean_nll_by_hand_and_resumes(tmp_path):
    model_dir = _tiny_model(tmp_path / "tiny")
    prompt = "def add(a, b):\n"
    sources = {
        "gold": [
            {"task_id": 1, "prompt": prompt, "completion": "    return a + b\n"},
            {"task_id": 2, "prompt": "# loop\n", "completion": "for i in range(10):\n    print(i)\n" * 3},
        ],
        "ilf": [
            {"task_id": 1, "prompt": prompt, "completion": "    return b + a\n"},
            {"task_id": 1, "prompt": prompt, "completion": "    print(a)\n"},
        ],  # same task twice
    }
    out = tmp_path / "perplexity.jsonl"
    # batch_size 3: rows of different lengths share a batch (left padding is exercised).
    report.compute_perplexities(str(model_dir), sources, out, batch_size=3, dtype="float32", progress=False)
    recs = load_jsonl(out)
    assert [(r["source"], r["task_id"], r["index"]) for r in recs] == [("gold", 1, 0), ("gold", 2, 0), ("ilf", 1, 0), ("ilf", 1, 1)]
    for rec, src in zip(recs, [sources["gold"][0], sources["gold"][1], sources["ilf"][0], sources["ilf"][1]]):
        ppl, ntok = _hand_perplexity(model_dir, src["prompt"], src["completion"])
        assert rec["num_tokens"] == ntok
        assert rec["perplexity"] == pytest.approx(ppl, rel=1e-4)
    # A random model over ~300 tokens: perplexity near the vocabulary size, far from 1.
    assert all(50 < r["perplexity"] < 2000 for r in recs)

    # Resume: records already in the file are kept as they are (marked here), only new ones are scored.
    recs[0]["perplexity"] = 123.0
    write_jsonl(out, recs[:2])
    sources["ilf"].append({"task_id": 3, "prompt": prompt, "completion": "    return 0\n"})
    report.compute_perplexities(str(model_dir), sources, out, batch_size=8, dtype="float32", progress=False)
    again = load_jsonl(out)
    assert len(again) == 5 and again[0]["perplexity"] == 123.0
    assert again[2]["perplexity"] == pytest.approx(recs[2]["perplexity"], rel=1e-4)

    # The report reads it (Figure 3 section).
    run = tmp_path / "run"
    run.mkdir()
    (run / "perplexity.jsonl").write_text(out.read_text())
    md = report.write_report(run).read_text()
    assert "| gold | 2 |" in md and (run / "report" / "perplexity.png").read_bytes().startswith(PNG_MAGIC)


def test_perplexity_bad_source_record_is_one_clear_error(tmp_path):
    with pytest.raises(IlfError, match=r"perplexity source 'gold' record 1: missing field 'completion'"):
        report.compute_perplexities(
            "unused", {"gold": [{"task_id": 1, "prompt": "a", "completion": "b"}, {"task_id": 2, "prompt": "a"}]}, tmp_path / "p.jsonl"
        )
    assert not (tmp_path / "p.jsonl").exists()


def test_training_seeds_are_grouped_with_means_and_paired_ilf_deltas(tmp_path):
    """Seeds i > 0 of a trained method (eval/<method>@s<i>) are shown per seed and as a mean, with
    ILF − method paired per seed and on the seed averages."""
    run = make_run(tmp_path, refine=False, feedback=False, perplexity=False, zero_rate=0.2, ilf_rate=0.5)
    tasks = range(11, 31)
    for method, rate in (("ilf@s1", 0.6), ("gold", 0.3), ("gold@s1", 0.1)):
        outcomes = {t: [i < round(rate * 10) for i in range(10)] for t in tasks}
        write_jsonl(run / "eval" / method / "results.jsonl", _results(method, outcomes, method))
    a = report.analyze_run(run)
    assert [m["method"] for m in a["methods"]] == ["zero-shot", "gold", "gold@s1", "ilf", "ilf@s1"]
    groups = {g["method"]: g for g in a["train_seeds"]}
    assert set(groups) == {"gold", "ilf"} and groups["gold"]["seeds"] == ["gold", "gold@s1"]
    assert groups["gold"]["mean"]["value"] == pytest.approx(0.2)
    ilf_mean = np.mean([a["methods"][3]["metrics"]["pass@1"]["value"], 0.6])
    assert groups["ilf"]["mean"]["value"] == pytest.approx(ilf_mean)
    assert groups["gold"]["ilf_minus"]["value"] == pytest.approx(ilf_mean - 0.2)
    assert groups["gold"]["ilf_minus_per_seed"]["s1"]["value"] == pytest.approx(0.6 - 0.1)
    assert groups["gold"]["ilf_minus"]["lo"] <= groups["gold"]["ilf_minus"]["value"] <= groups["gold"]["ilf_minus"]["hi"]
    text = report.write_report(run).read_text()
    assert "Training randomness" in text and "gold@s1" in text


def test_ilf_rounds_show_each_rounds_model_beside_the_next_rounds_x0(tmp_path):
    """rounds = 3: zero-shot is round 0, ilf-r1 and ilf-r2 the earlier rounds' π_θ*, ilf (with its seeds)
    the last; each row carries |R| of its round and the pass rate of the x0 the next round drew from it,
    overall and on the tasks the model was trained on."""
    run = make_run(tmp_path, feedback=False, perplexity=False, zero_rate=0.4, ilf_rate=0.2)
    tasks = range(11, 31)
    for method, rate in (("ilf@s1", 0.1), ("ilf-r1", 0.3), ("ilf-r2", 0.5)):
        outcomes = {t: [i < round(rate * 10) for i in range(10)] for t in tasks}
        write_jsonl(run / "eval" / method / "results.jsonl", _results(method, outcomes, method))
    # x0 of round r (5 tasks x 4 samples): passing samples per task; R_r trains on the listed tasks
    x0_passing = {1: {311: 3}, 2: {311: 4, 312: 4}, 3: {312: 2, 313: 1}}
    r_tasks = {1: [312, 313], 2: [314], 3: [315]}
    for r in (1, 2, 3):
        rd = run / f"r{r}"
        x0 = [{"task_id": t, "sample_id": i, "passed": i < x0_passing[r].get(t, 0)} for t in range(311, 316) for i in range(4)]
        write_jsonl(rd / "results.jsonl", x0)
        if r > 1:
            write_jsonl(rd / "refinements.jsonl", load_jsonl(run / "r1" / "refinements.jsonl"))
        write_jsonl(rd / "train_pairs.jsonl", [{"task_id": t, "prompt": "p", "completion": "c"} for t in r_tasks[r]])
    a = report.analyze_run(run)
    rows = a["rounds"]
    expected = [(0, "zero-shot", None), (1, "ilf-r1", 2), (2, "ilf-r2", 1), (3, "ilf", 1)]
    assert [(r["round"], r["method"], r["train_pairs"]) for r in rows] == expected
    assert [r["next_x0_pass_rate"] for r in rows] == [pytest.approx(3 / 20), pytest.approx(8 / 20), pytest.approx(3 / 20), None]
    # on R_1's tasks the x0 of ilf-r1 pass 4 of 8 (1 of 2 tasks); ilf-r2's on R_1 + R_2: 3 of 12 (2 of 3)
    on_r = [r.get("next_x0_on_R") for r in rows]
    assert on_r[0] is None and on_r[3] is None
    assert on_r[1] == {"tasks": 2, "solved": 1, "pass_rate": pytest.approx(0.5)}
    assert on_r[2] == {"tasks": 3, "solved": 2, "pass_rate": pytest.approx(0.25)}
    # the other tasks: ilf-r1's x0 pass 4 of 12 (311: 4 of 4); ilf-r2's 0 of 8 (311, 315)
    assert rows[1]["next_x0_off_R"] == {"tasks": 3, "solved": 1, "pass_rate": pytest.approx(4 / 12)}
    assert rows[2]["next_x0_off_R"] == {"tasks": 2, "solved": 0, "pass_rate": 0.0}
    assert rows[1]["pass@1"]["value"] == pytest.approx(0.3)
    assert rows[1]["delta_vs_zero_shot"]["value"] == pytest.approx(0.3 - 0.4, abs=0.02)
    last = rows[3]
    assert last["seeds"] == ["ilf", "ilf@s1"] and last["pass@1"]["value"] == pytest.approx(
        np.mean([_method({"runs": [a]}, "ilf")["metrics"]["pass@1"]["value"], 0.1])
    )
    path = report.write_report(run)
    text = path.read_text()
    assert "### ILF rounds" in text and "| 2 | ilf-r2 | 1 |" in text and "| 25.0 (2 / 3) |" in text
    assert (path.parent / "ilf_rounds.png").read_bytes().startswith(PNG_MAGIC)
    # stopped in round 3 before ILF's final model was evaluated: the earlier rounds' rows are shown
    import shutil

    for m in ("ilf", "ilf@s1"):
        shutil.rmtree(run / "eval" / m)
    assert [r["method"] for r in report.analyze_run(run)["rounds"]] == ["zero-shot", "ilf-r1", "ilf-r2"]
    # one round: no rounds section
    single = make_run(tmp_path, "one", feedback=False, perplexity=False)
    assert report.analyze_run(single)["rounds"] == [] and "### ILF rounds" not in report.write_report(single).read_text()


def test_report_from_a_packed_run_equals_the_original_and_unpack_restores_the_bytes(tmp_path):
    """Published runs keep per-sample files as .jsonl.gz (scripts/run_archive.py): `ilf report` over
    them gives the same numbers, and unpacking gives back byte-identical files for `ilf run` to resume."""
    import subprocess
    import sys

    run = make_run(tmp_path)
    # A shuffled-feedback control and a sweep table, so their sections are covered too.
    write_jsonl(
        run / "r1" / "refinements_shuffled.jsonl",
        [{"task_id": 311 + p, "feedback_id": f"f{p}~shuffled", "sample_id": 0, "passed": p == 4, "status": "x"} for p in range(8)],
    )
    write_jsonl(
        run / "sweep" / "ilf" / "table.jsonl",
        [
            {
                "setting": "lr1e-05-bs8-ep2",
                "learning_rate": 1e-5,
                "batch_size": 8,
                "epochs": 2.0,
                "pass_rate": 0.3,
                "num_samples": 10,
                "num_tasks": 2,
            }
        ],
    )
    write_json(run / "sweep" / "ilf" / "best.json", {"setting": "lr1e-05-bs8-ep2"})
    write_jsonl(
        run / "sweep" / "ilf" / "lr1e-05-bs8-ep2" / "results.jsonl",
        [{"task_id": 111 + i, "sample_id": 0, "passed": i == 0, "num_tokens": 40 + 4 * i} for i in range(2)],
    )
    (run / "r1" / "model").mkdir()
    (run / "r1" / "model" / "model.safetensors").write_bytes(b"weights")
    script = Path(__file__).parents[1] / "scripts" / "run_archive.py"
    packed = tmp_path / "packed"
    subprocess.run([sys.executable, str(script), "pack", str(run), str(packed)], check=True, capture_output=True)
    assert (packed / "eval" / "ilf" / "results.jsonl.gz").is_file() and not (packed / "eval" / "ilf" / "results.jsonl").exists()
    assert not (packed / "r1" / "model").exists()

    original = report.analyze_run(run)
    again = report.analyze_run(packed)

    def strip(a: dict, root: Path) -> str:  # the numbers, not where the files live
        text = json.dumps({k: v for k, v in a.items() if k not in ("run", "run_dir")}, sort_keys=True, default=str)
        return text.replace(str(root), "RUN").replace(".jsonl.gz", ".jsonl")

    assert strip(again, packed) == strip(original, run)
    assert original["refine"][0]["shuffled"]["pairs"] == 8 and original["sweep"][0]["best"] == "lr1e-05-bs8-ep2"
    md = report.write_report(packed).read_text()
    assert "Table 2 analog" in md and "Appendix A.1" in md
    assert original["sweep"][0]["rows"][0]["mean_tokens"] == 42 and "| 42.0 | best |" in md  # the setting's samples

    restored = tmp_path / "restored"
    subprocess.run([sys.executable, str(script), "unpack", str(packed), str(restored)], check=True, capture_output=True)
    for p in run.rglob("*.jsonl"):
        assert (restored / p.relative_to(run)).read_bytes() == p.read_bytes()


def test_an_experiment_directory_packs_without_its_models_and_lists_its_links(tmp_path):
    """results/queue.sh's experiments (meta.json, no manifest) pack like runs: JSONL gzipped, any
    directory holding a model left out, symlinks into another run listed in links.json, not copied."""
    import subprocess
    import sys

    exp = tmp_path / "exp"
    write_jsonl(exp / "x1_results.jsonl", [{"task_id": 311, "passed": True}])
    write_json(exp / "meta.json", {"segments": [], "seconds": 0})
    (exp / "k6").mkdir()
    (exp / "k6" / "model.safetensors").write_bytes(b"weights")
    write_json(exp / "k6" / "config.json", {"model_type": "qwen2"})
    write_jsonl(tmp_path / "other" / "results.jsonl", [{"task_id": 11, "passed": False}])
    (exp / "zero-shot_results.jsonl").symlink_to(tmp_path / "other" / "results.jsonl")
    script = Path(__file__).parents[1] / "scripts" / "run_archive.py"
    packed = tmp_path / "packed"
    subprocess.run([sys.executable, str(script), "pack", str(exp), str(packed)], check=True, capture_output=True, cwd=tmp_path)
    assert sorted(p.name for p in packed.rglob("*")) == ["links.json", "meta.json", "x1_results.jsonl.gz"]
    assert json.loads((packed / "links.json").read_text()) == {"zero-shot_results.jsonl": "other/results.jsonl"}
    subprocess.run(
        [sys.executable, str(script), "unpack", str(packed), str(tmp_path / "again")], check=True, capture_output=True, cwd=tmp_path
    )
    assert (tmp_path / "again" / "zero-shot_results.jsonl").resolve() == (tmp_path / "other" / "results.jsonl").resolve()
    assert (tmp_path / "again" / "x1_results.jsonl").read_bytes() == (exp / "x1_results.jsonl").read_bytes()
    bad = subprocess.run(
        [sys.executable, str(script), "pack", str(tmp_path / "other"), str(tmp_path / "p2")], capture_output=True, text=True
    )
    assert bad.returncode != 0 and "no meta.json" in bad.stderr and not (tmp_path / "p2").exists()


def test_progress_writes_plain_lines_when_not_on_a_terminal():
    """`ilf run > log` shows progress as plain lines (count, rate, ETA, fields), none of rich's bar art."""
    import io

    from rich.console import Console
    from rich.progress import BarColumn, TextColumn

    from ilf import progress as progress_mod

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=False, width=200)
    old = progress_mod.LOG_INTERVAL
    progress_mod.LOG_INTERVAL = 0.0
    try:
        with progress_mod.LogProgress(TextColumn("x"), BarColumn(), console=console) as bar:
            t = bar.add_task("sampling (tasks)", total=4, programs=0)
            for i in range(4):
                bar.update(t, advance=1, programs=5 * (i + 1))
    finally:
        progress_mod.LOG_INTERVAL = old
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("sampling (tasks): 1/4 (25%)") and "programs 5" in lines[0]
    assert lines[-1].startswith("sampling (tasks): 4/4 (100%)") and "done in" in lines[-1]
    assert len(lines) == 4 and not any("━" in x for x in lines)


def test_a_results_file_reports_pass_rates_per_mbpp_split(tmp_path):
    """`ilf report RESULTS.jsonl.gz` (the paper's Table 1 form): pass rates over all tasks and per
    MBPP split, and the tasks with no passing sample, recomputed from the per-sample records."""
    import gzip

    recs = []
    for tid, passes in [(11, [1, 0, 0, 0]), (12, [0, 0, 0, 0]), (311, [1, 1, 1, 1]), (312, [0, 0, 0, 0]), (313, [0, 1, 0, 0])]:
        for j, p in enumerate(passes):
            recs.append(
                {
                    "task_id": tid,
                    "sample_id": j,
                    "passed": bool(p),
                    "status": "passed" if p else "failed",
                    "model": "m",
                    "engine": "openvino/f16",
                    "temperature": 0.8,
                    "top_p": 0.95,
                    "max_new_tokens": 256,
                    "seed": 0,
                }
            )
    path = tmp_path / "results.jsonl.gz"
    path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in recs).encode()))
    r = subprocess.run([sys.executable, "-m", "ilf.cli", "report", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "results_report"
    a = json.loads((out / "report.json").read_text())
    rows = {s["split"]: s for s in a["splits"]}
    assert set(rows) == {"all", "test", "train"} and (out / "pass_at_k_curve.png").stat().st_size > 0
    assert rows["all"]["metrics"]["pass@1"]["value"] == pytest.approx((0.25 + 0 + 1 + 0 + 0.25) / 5)
    assert rows["test"]["unsolved"] == ["12"] and rows["train"]["unsolved"] == ["312"] and len(rows["all"]["unsolved"]) == 2
    assert rows["train"]["metrics"]["one_plus_correct"]["value"] == pytest.approx(2 / 3)
    md = (out / "report.md").read_text()
    assert "| train (311-313) | 3 | 4 | 41.7 [" in md and "1 (33.3%)" in md


def test_results_files_compare_against_the_first_paired_over_common_tasks(tmp_path):
    """`ilf report A.jsonl B.jsonl` (before/after ILF, few-shot vs fine-tuned π_Refine): each file's
    pass rates and its paired difference from the first over the tasks both have."""

    def write(name, table):
        recs = [
            {"task_id": t, "sample_id": j, "passed": bool(p), "status": "passed" if p else "failed", "model": name, "temperature": 0.8}
            for t, passes in table
            for j, p in enumerate(passes)
        ]
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
        return str(tmp_path / f"{name}.jsonl")

    a = write("before", [(11, [0, 0]), (12, [1, 0]), (13, [0, 0])])
    b = write("after", [(11, [1, 1]), (12, [1, 0]), (14, [1, 1])])  # 13 missing, 14 new: compared on 11 and 12
    r = subprocess.run([sys.executable, "-m", "ilf.cli", "report", a, b, "--output", str(tmp_path / "cmp")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "cmp" / "report.json").read_text())
    before, after = rep["rows"]
    assert before["delta"] is None and before["metrics"]["pass@1"]["value"] == pytest.approx(0.5 / 3)
    d = after["delta"]
    assert d["num_common_tasks"] == 2 and d["metrics"]["pass@1"]["value"] == pytest.approx(((1 - 0) + (0.5 - 0.5)) / 2)
    assert d["metrics"]["pass@1"]["lo"] <= 0.5 <= d["metrics"]["pass@1"]["hi"]
    md = (tmp_path / "cmp" / "report.md").read_text()
    assert "| after | after |" in md and "+50.0 [" in md
    mixed = subprocess.run([sys.executable, "-m", "ilf.cli", "report", a, str(tmp_path)], capture_output=True, text=True)
    assert mixed.returncode == 2 and "not both" in mixed.stderr


def test_results_files_against_a_number_draw_figure_4(tmp_path):
    """`ilf report ... --x -,6,12` (the paper's Figure 4): pass@1 by training tasks, '-' a reference
    line; the numbers are a column and part of the regenerate command; a wrong count is one line."""

    def write(name, passes):
        recs = [{"task_id": t, "sample_id": j, "passed": bool(p), "status": "x"} for t in (11, 12) for j, p in enumerate(passes)]
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
        return str(tmp_path / f"{name}.jsonl")

    files = [write("zero-shot", [0, 1]), write("k6", [1, 1]), write("k12", [0, 0])]
    cmd = [sys.executable, "-m", "ilf.cli", "report", *files, "--output", str(tmp_path / "fig4")]
    r = subprocess.run(cmd + ["--x", "-,6,12", "--x-label", "training tasks"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "fig4" / "report.json").read_text())
    assert [row["x"] for row in rep["rows"]] == [None, 6, 12] and rep["x_label"] == "training tasks"
    assert (tmp_path / "fig4" / rep["figures"]["pass_vs_x"]).stat().st_size > 1000
    md = (tmp_path / "fig4" / "report.md").read_text()
    assert '--x -,6,12 --x-label "training tasks"' in md and "| k6 | 6 |" in md and "| zero-shot | reference line |" in md
    bad = subprocess.run(cmd + ["--x", "6,12"], capture_output=True, text=True)
    assert bad.returncode == 2 and "one value per results file (3)" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    nan = subprocess.run(cmd + ["--x", "-,six,12"], capture_output=True, text=True)
    assert nan.returncode == 2 and "'six'" in nan.stderr


def test_results_files_labelled_as_seeds_get_means_and_paired_deltas(tmp_path):
    """`ilf report ... --labels zero-shot,ilf,ilf@s1,lora,lora@s1`: seeds of a method (files named
    '<method>@s<i>') are averaged per task, paired with the first file and with ILF; the labels name
    the rows and are part of the regenerate command; a wrong count is one line."""
    tasks = range(11, 31)

    def write(name, rate, tokens):
        recs = [
            {"task_id": t, "sample_id": j, "passed": j < round(rate * 10), "status": "x", "num_tokens": tokens}
            for t in tasks
            for j in range(10)
        ]
        write_jsonl(tmp_path / name / "results.jsonl", recs)  # every file has the same name, as in a run's eval/
        return str(tmp_path / name / "results.jsonl")

    files = [write("z", 0.3, 60), write("i0", 0.2, 30), write("i1", 0.4, 32), write("l0", 0.5, 50), write("l1", 0.1, 54)]
    cmd = [sys.executable, "-m", "ilf.cli", "report", *files, "--output", str(tmp_path / "seeds")]
    r = subprocess.run(cmd + ["--labels", "zero-shot,ilf,ilf@s1,lora,lora@s1"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "seeds" / "report.json").read_text())
    groups = {g["method"]: g for g in rep["train_seeds"]}
    assert set(groups) == {"ilf", "lora"} and groups["lora"]["seeds"] == ["lora", "lora@s1"]
    assert groups["ilf"]["mean"]["value"] == pytest.approx(0.3) and groups["lora"]["mean"]["value"] == pytest.approx(0.3)
    assert groups["ilf"]["minus_zero_shot"]["value"] == pytest.approx(0.0)
    assert groups["lora"]["ilf_minus_per_seed"]["s0"]["value"] == pytest.approx(0.2 - 0.5)
    assert groups["lora"]["ilf_minus_per_seed"]["s1"]["value"] == pytest.approx(0.4 - 0.1)
    assert [row["mean_tokens"] for row in rep["rows"]] == [60, 30, 32, 50, 54]
    md = (tmp_path / "seeds" / "report.md").read_text()
    assert "--labels zero-shot,ilf,ilf@s1,lora,lora@s1" in md and "| lora@s1 |" in md and "| lora | 50.0, 10.0 |" in md
    bad = subprocess.run(cmd + ["--labels", "zero-shot,ilf"], capture_output=True, text=True)
    assert bad.returncode == 2 and "one distinct, non-empty name per results file (5)" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_common_tasks_scores_every_file_on_the_tasks_they_share(tmp_path):
    """`ilf report A B --common-tasks`: feedback sources on the same x0. A has tasks 1-4 (one never
    passes), B tasks 3-6; both rows are scored on 3-4 only, the regenerate command says so, and
    files sharing no task are one error line with nothing written."""

    def write(name, rates):
        recs = [{"task_id": t, "sample_id": j, "passed": j < 10 * r, "status": "x"} for t, r in rates.items() for j in range(10)]
        write_jsonl(tmp_path / name, recs)
        return str(tmp_path / name)

    a = write("a_results.jsonl", {1: 1.0, 2: 1.0, 3: 0.2, 4: 0.0})
    b = write("b_results.jsonl", {3: 0.6, 4: 0.4, 5: 1.0, 6: 1.0})
    cmd = [sys.executable, "-m", "ilf.cli", "report", a, b, "--output", str(tmp_path / "rep")]
    r = subprocess.run(cmd + ["--common-tasks"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = json.loads((tmp_path / "rep" / "report.json").read_text())["rows"]
    assert [row["num_tasks"] for row in rows] == [2, 2]
    assert [row["metrics"]["pass@1"]["value"] for row in rows] == pytest.approx([0.1, 0.5])
    assert rows[1]["delta"]["num_common_tasks"] == 2 and rows[1]["delta"]["metrics"]["pass@1"]["value"] == pytest.approx(0.4)
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "b_results.jsonl --common-tasks`" in md and "only the 2 tasks all files share" in md
    # Without the flag each file keeps all its tasks (A: 4 tasks, pass@1 0.55).
    assert subprocess.run(cmd, capture_output=True, text=True).returncode == 0
    rows = json.loads((tmp_path / "rep" / "report.json").read_text())["rows"]
    assert [row["num_tasks"] for row in rows] == [4, 4] and rows[0]["metrics"]["pass@1"]["value"] == pytest.approx(0.55)

    c = write("c_results.jsonl", {9: 1.0})
    bad = subprocess.run(
        [sys.executable, "-m", "ilf.cli", "report", a, c, "--common-tasks", "--output", str(tmp_path / "none")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "share no task" in bad.stderr
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize(
    "zero_rate,ilf_rate,expected",
    [
        (0.5, 0.2, "**ILF did not help in this run**: it lowered pass@1 below the model it started from."),
        (0.2, 0.5, "**ILF is above zero-shot** and every baseline evaluated here; fine-tuning on gold code was not evaluated"),
        (0.3, 0.3, "**The paper's claim is not shown in this run**: ILF is not above zero-shot with a CI above 0."),
    ],
)
def test_report_states_whether_ilf_helped_from_the_same_estimates(tmp_path, zero_rate, ilf_rate, expected):
    md = report.write_report(make_run(tmp_path, zero_rate=zero_rate, ilf_rate=ilf_rate)).read_text()
    assert expected in md
    assert "ILF trained on 7 repaired programs" in md
    rep = json.loads((tmp_path / "demo" / "report" / "report.json").read_text())
    d = rep["runs"][0]["train_seeds"][0]["minus_zero_shot"]
    assert f"- ILF − zero-shot: {100 * d['value']:+.1f}" in md


def test_figures_stay_readable_with_fifteen_methods(tmp_path):
    """15 methods (results/cpu): one panel per metric with a line per method instead of 15-bar
    groups 2,900 px wide; pass@10 and 1+ correct, equal at n = 10, drawn once; no CI bands blur
    the pass@k curves."""
    from PIL import Image

    from ilf.report import figures

    def e(v):
        return {"value": v, "lo": v - 0.05, "hi": v + 0.05}

    curve = [{"k": k, "value": 0.3 + 0.02 * k, "lo": 0.25, "hi": 0.4} for k in range(1, 11)]
    metrics = {"pass@1": e(0.3), "pass@10": e(0.6), "one_plus_correct": e(0.6)}
    rows = [(f"method-{i}", {"metrics": dict(metrics), "pass_curve": curve}) for i in range(15)]
    metrics, labels = figures._metrics(rows)
    assert metrics == ["pass@1", "pass@10"] and labels["pass@10"] == "pass@10 = 1+ correct"
    w, h = Image.open(figures.plot_pass_at_k(rows, tmp_path / "bars.png", "t")).size
    assert w < 1400 and h > 15 * 20, (w, h)  # a line per method, not a bar per method side by side
    few = rows[:2]
    assert Image.open(figures.plot_pass_at_k(few, tmp_path / "few.png", "t")).size[0] < 1400
    rows[0][1]["metrics"]["one_plus_correct"] = e(0.7)  # n differs: both are drawn
    assert figures._metrics(rows)[0] == ["pass@1", "pass@10", "one_plus_correct"]
    figures.plot_pass_curve(rows, tmp_path / "curve.png", "t")


def test_a_packed_run_is_named_by_its_experiment(tmp_path):
    import shutil

    from ilf.report import write_report

    src = Path(__file__).resolve().parents[1] / "results" / "rounds" / "run"
    if not src.is_dir():
        pytest.skip("results/rounds/run not packed here")
    run = tmp_path / "rounds" / "run"
    shutil.copytree(src, run, ignore=shutil.ignore_patterns("report"))
    md = write_report(run, resamples=50, output=tmp_path / "out")
    assert md.read_text().startswith("# ILF report: rounds/run") and (tmp_path / "out" / "refine_rounds.png").is_file()


def test_the_detectable_difference_is_detected_four_times_in_five():
    """detectable_difference: a true paired effect of that size is found (two-sided 5%) with 80% power."""
    import numpy as np

    from ilf.stats import detectable_difference

    rng = np.random.default_rng(0)
    sd, n = 0.3, 100
    effect = 2.8016 * sd / np.sqrt(n)  # (z_0.975 + z_0.8) standard errors
    found = 0
    for _ in range(2000):
        d = rng.normal(effect, sd, n)
        found += abs(d.mean()) / (d.std(ddof=1) / np.sqrt(n)) > 1.96
    assert 0.76 < found / 2000 < 0.84
    assert abs(detectable_difference(rng.normal(0, sd, 10_000)) * np.sqrt(10_000) / np.sqrt(n) - effect) < 0.01
