"""FINETUNE on a tiny Qwen2-architecture model built here (random weights, a real byte-level BPE
tokenizer trained here): real TRL SFTTrainer runs, real checkpoints, a real killed process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tiny_models

from ilf.errors import IlfError
from ilf.finetune import (
    META_FILE,
    FinetuneConfig,
    Pair,
    encode_pair,
    finetune,
    finetune_in_child,
    load_pairs,
    split_refinement_prompt,
)
from ilf.jsonl import write_jsonl
from ilf.tasks import REFINE_TEMPLATE

CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "def is_even(n):\n    return n % 2 == 0\n",
    "OLD CODE:\nFEEDBACK:\nREFINEMENT:\n",
    '"""\nWrite a function to reverse a list.\n\n>>> Example: rev([1, 2]) = [2, 1]\n"""\n\ndef rev(xs):\n',
    "    for i in range(len(xs)):\n        if xs[i] > 0:\n            total += xs[i]\n",
    "The loop is wrong because it skips the last element; fix the range.",
] * 5

# Memorised targets: distinct prompts, each with its own body.
MEMO = [
    ("def square(x):\n", "    return x * x\n"),
    ("def negate(x):\n", "    return -x\n"),
    ("def first(xs):\n", "    return xs[0]\n"),
    ("def size(xs):\n", "    return len(xs)\n"),
]


def build_tiny_model(path: Path) -> Path:
    # With the default initializer_range 0.02, the frozen lm_head behind a frozen RMSNorm caps the logits so
    # low that LoRA on the blocks plateaus at loss ~4.8 (seen in a plain PEFT loop too); real models are not like that.
    return tiny_models.build_tiny_model(
        path,
        corpus=CORPUS + [p + c for p, c in MEMO],
        special_tokens=("<|endoftext|>", "<|im_end|>"),
        byte_alphabet=True,
        eos="<|im_end|>",
        num_heads=4,
        kv_heads=2,
        max_positions=1024,
        initializer_range=0.2,
        peaked_head=False,
        pad_in_config=False,
        model_max_length=None,
    )


@pytest.fixture(scope="module")
def trainable_tiny(tmp_path_factory) -> Path:
    """The tiny model of this module: a byte-level tokenizer, so any target encodes and can be memorised."""
    return build_tiny_model(tmp_path_factory.mktemp("trainable_tiny") / "model")


@pytest.fixture(scope="module")
def tokenizer(trainable_tiny):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(trainable_tiny)


def greedy(model_dir: Path, prompt: str, max_new_tokens: int = 20) -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    ids = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
    return tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)


# ---------------------------------------------------------------------------------------------


def test_training_memorises_target_and_output_is_complete(trainable_tiny, tmp_path):
    pairs = [{"prompt": p, "completion": c, "task_id": i, "kind": "program"} for i, (p, c) in enumerate(MEMO)]
    data = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    before = greedy(trainable_tiny, MEMO[0][0])
    cfg = FinetuneConfig(learning_rate=3e-3, batch_size=4, epochs=40, report_to="tensorboard", threads=1, eval_steps=20)
    out = finetune(data, trainable_tiny, tmp_path / "out", cfg, eval_pairs=pairs[:2])

    meta = json.loads((out / META_FILE).read_text())
    losses = [h["loss"] for h in meta["metrics"]["log_history"] if "loss" in h]
    assert losses[-1] < 0.2 * losses[0], losses
    assert meta["data"]["num_trained"] == 4 and meta["data"]["num_skipped"] == 0
    assert meta["metrics"]["global_step"] == 40
    evals = [h["eval_loss"] for h in meta["metrics"]["log_history"] if "eval_loss" in h]
    assert len(evals) == 2 and evals[-1] < evals[0] and meta["metrics"]["eval_loss"] == evals[-1]
    # A complete HF model dir; generation config lists both end tokens; checkpoints removed; TB logs kept.
    gen = json.loads((out / "generation_config.json").read_text())
    assert sorted(gen["eos_token_id"]) == sorted(meta["eos_token_ids"]) and len(gen["eos_token_id"]) == 2
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    assert not (out / "checkpoints").exists()
    assert any((out / "runs").rglob("events.out.tfevents*"))
    # Memorised: greedy decoding reproduces each target and then stops.
    assert before != MEMO[0][1]
    for p, c in MEMO:
        assert greedy(out, p) == c

    # Same data + config again: the finished run is recognised and skipped.
    t = time.time()
    assert finetune(data, trainable_tiny, out, cfg, eval_pairs=pairs[:2]) == out
    assert time.time() - t < 5
    # Its weights deleted to save disk (its metadata kept): the same call trains it again, not "done".
    (out / "model.safetensors").unlink()
    assert finetune(data, trainable_tiny, out, cfg, eval_pairs=pairs[:2]) == out
    assert (out / "model.safetensors").exists() and greedy(out, MEMO[0][0]) == MEMO[0][1]
    # Other data into the same directory: refused with a clear message.
    with pytest.raises(IlfError, match="another base model, data or config"):
        finetune(pairs[:2], trainable_tiny, out, cfg)


def test_max_pairs_trains_on_a_seeded_subset(trainable_tiny, tmp_path):
    """Training-set size ablations (Figure 4): max_pairs keeps a random subset chosen with the seed,
    the same on a rerun, another with another seed; the model's metadata says which."""
    pairs = [{"prompt": p, "completion": c, "task_id": i, "kind": "program"} for i, (p, c) in enumerate(MEMO)]
    data = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    chosen = []
    for seed in (0, 0, 1, 2, 3):
        cfg = FinetuneConfig(learning_rate=1e-3, batch_size=2, epochs=1, threads=1, max_pairs=2, seed=seed, report_to="none")
        out = finetune(data, trainable_tiny, tmp_path / f"out{seed}", cfg, overwrite=True)
        meta = json.loads((out / META_FILE).read_text())
        assert meta["data"]["num_pairs"] == 2 and meta["config"]["max_pairs"] == 2
        chosen.append(meta["data"]["fingerprint"])
    assert chosen[0] == chosen[1] and len(set(chosen)) > 1


def test_replay_adds_pi_thetas_own_passing_programs_on_other_tasks(trainable_tiny, tmp_path):
    """finetune.replay: a share of the training set from π_θ's passing samples on tasks the pairs do not
    train on (one per task, seeded), and the model's metadata compares the targets' length with π_θ's."""
    pairs = [{"prompt": p, "completion": c, "task_id": i} for i, (p, c) in enumerate(MEMO[:2])]
    results = [
        {
            "task_id": t,
            "sample_id": j,
            "prompt": f"def f{t}():\n",
            "program": f"def f{t}():\n    return {j}\n",
            "passed": j == 1,
            "num_tokens": 6,
        }
        for t in (0, 7, 8, 9)  # task 0 is one the pairs train on: never replayed
        for j in range(2)
    ]
    src = write_jsonl(tmp_path / "x0_results.jsonl", results)
    cfg = FinetuneConfig(learning_rate=1e-3, batch_size=2, epochs=1, threads=1, report_to="none", replay=0.5, replay_from=str(src))
    out = finetune(pairs, trainable_tiny, tmp_path / "out", cfg)
    meta = json.loads((out / META_FILE).read_text())
    assert meta["data"]["num_pairs"] == 4 and meta["data"]["replay"]["pairs"] == 2 and meta["data"]["replay"]["model_tokens_mean"] == 6
    assert meta["data"]["target_tokens_mean"] > 0
    from ilf.finetune import load_pairs, replay_pairs

    extra, _ = replay_pairs(src, load_pairs(pairs), 0.5, 0)
    assert len(extra) == 2 and {p.task_id for p in extra} <= {7, 8, 9} and all(p.completion == "    return 1\n" for p in extra)
    assert extra == replay_pairs(src, load_pairs(pairs), 0.5, 0)[0]  # seeded
    assert len(replay_pairs(src, load_pairs(pairs), 0.9, 0)[0]) == 3  # never more than π_θ solved
    with pytest.raises(IlfError, match="replay needs finetune.replay_from"):
        finetune(pairs, trainable_tiny, tmp_path / "out2", FinetuneConfig(replay=0.5, report_to="none"))


def _logp(model_dir: Path, prompt: str, completion: str) -> float:
    """log π(completion | prompt) under the saved model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    p, c = tok(prompt, add_special_tokens=False)["input_ids"], tok(completion, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([p + c])).logits[0, len(p) - 1 : -1].log_softmax(-1)
    return float(logits[torch.arange(len(c)), torch.tensor(c)].sum())


def test_dpo_prefers_the_passing_program_to_the_failing_one(trainable_tiny, tmp_path):
    """objective dpo (TRL DPOTrainer with an SFT term): after training, the chosen body is likelier
    relative to the rejected one than under the base model; a pairs file of the wrong kind is one line."""
    prefs = [{"prompt": p, "chosen": c, "rejected": "    return None\n", "task_id": i} for i, (p, c) in enumerate(MEMO)]
    data = write_jsonl(tmp_path / "dpo.jsonl", prefs)
    margin = lambda m: sum(_logp(m, r["prompt"], r["chosen"]) - _logp(m, r["prompt"], r["rejected"]) for r in prefs)  # noqa: E731
    cfg = FinetuneConfig(objective="dpo", learning_rate=1e-3, batch_size=4, epochs=10, threads=1, report_to="none", dpo_beta=0.1)
    out = finetune(data, trainable_tiny, tmp_path / "out", cfg)
    meta = json.loads((out / META_FILE).read_text())
    assert meta["config"]["objective"] == "dpo" and meta["data"]["num_trained"] == 4
    assert margin(out) > margin(trainable_tiny) + 1.0
    # The identity of an SFT run does not name the DPO settings (models trained before them still resume).
    assert "objective" not in FinetuneConfig().keyed() and "objective" in cfg.keyed()
    with pytest.raises(IlfError, match="dpo.jsonl:1: objective sft trains on prompt/completion pairs"):
        finetune(data, trainable_tiny, tmp_path / "out2", FinetuneConfig(report_to="none"))
    sft = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": p, "completion": c} for p, c in MEMO])
    with pytest.raises(IlfError, match="objective dpo trains on preference pairs"):
        finetune(sft, trainable_tiny, tmp_path / "out3", cfg)


def test_lora_is_merged_into_a_plain_model_dir(trainable_tiny, tmp_path):
    pairs = [{"prompt": p, "completion": c} for p, c in MEMO]
    cfg = FinetuneConfig(
        lora=True, lora_r=16, lora_alpha=32, lora_dropout=0.0, learning_rate=1e-2, batch_size=4, epochs=60, report_to="none", threads=1
    )
    out = finetune(pairs, trainable_tiny, tmp_path / "lora", cfg)
    assert not (out / "adapter_config.json").exists()  # merged, not an adapter
    meta = json.loads((out / META_FILE).read_text())
    losses = [h["loss"] for h in meta["metrics"]["log_history"] if "loss" in h]
    assert losses[-1] < 0.5 * losses[0], losses
    assert greedy(out, MEMO[1][0]) == MEMO[1][1]


# --- truncation rule ---------------------------------------------------------------------------


def _refine_prompt(old: str, feedback: str, task_prompt: str) -> str:
    return REFINE_TEMPLATE.format(old_code=old, feedback=feedback, prompt=task_prompt)


def test_truncation_cuts_old_code_first_and_keeps_target(tokenizer):
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    task_prompt = "def rev(xs):\n"
    old = "def rev(xs):\n" + "    for i in range(len(xs)):\n        total += xs[i]\n" * 40
    prompt = _refine_prompt(old, "The loop is wrong; fix the range.", task_prompt)
    completion = "    return xs[::-1]\n"
    full = len(tokenizer(prompt + completion)["input_ids"])
    e = encode_pair(Pair(prompt, completion), tokenizer, 160, eos)
    assert full > 160 and len(e.input_ids) <= 160
    assert e.truncated == "old_code"
    target = [t for t, m in zip(e.input_ids, e.completion_mask) if m]
    assert tokenizer.decode(target) == completion + "<|endoftext|>"
    # The feedback and the task prompt after REFINEMENT survive; only OLD CODE lost its end.
    text = tokenizer.decode([t for t, m in zip(e.input_ids, e.completion_mask) if not m])
    assert text.startswith("OLD CODE:\ndef rev(xs):\n")
    assert text.endswith("\n\nFEEDBACK:\nThe loop is wrong; fix the range.\n\nREFINEMENT:\n" + task_prompt)
    assert split_refinement_prompt(prompt)[1] == old


def test_truncation_of_other_prompts_cuts_their_start(tokenizer):
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    prompt = "The loop is wrong because it skips the last element. " * 30 + "def add(a, b):\n"
    e = encode_pair(Pair(prompt, "    return a + b\n"), tokenizer, 64, eos)
    assert e.truncated == "prompt_start" and len(e.input_ids) <= 64
    kept = tokenizer.decode([t for t, m in zip(e.input_ids, e.completion_mask) if not m])
    assert kept.endswith("def add(a, b):\n")
    assert tokenizer.decode([t for t, m in zip(e.input_ids, e.completion_mask) if m]) == "    return a + b\n<|endoftext|>"


def test_examples_without_target_room_are_skipped_and_reported(trainable_tiny, tmp_path, tokenizer):
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    long_target = "    for i in range(len(xs)):\n        total += xs[i]\n" * 20
    assert "never truncated" in encode_pair(Pair("def f(xs):\n", long_target), tokenizer, 64, eos)
    assert "empty completion" in encode_pair(Pair("def f(xs):\n", "  \n"), tokenizer, 64, eos)

    pairs = [
        {"prompt": MEMO[0][0], "completion": MEMO[0][1], "task_id": 1},
        {"prompt": "def f(xs):\n", "completion": long_target, "task_id": 2},
        {"prompt": "def g(xs):\n", "completion": "", "task_id": 3},
    ]
    data = write_jsonl(tmp_path / "p.jsonl", pairs)
    cfg = FinetuneConfig(max_length=64, batch_size=1, epochs=1, report_to="none", threads=1, learning_rate=1e-3)
    out = finetune(data, trainable_tiny, tmp_path / "o", cfg)
    meta = json.loads((out / META_FILE).read_text())
    assert meta["data"]["num_trained"] == 1
    assert [(s["task_id"], s["source"].endswith(f":{s['task_id']}")) for s in meta["data"]["skipped"]] == [(2, True), (3, True)]
    losses = [h["loss"] for h in meta["metrics"]["log_history"] if "loss" in h]
    assert losses and all(x > 0 for x in losses)  # never a silent zero loss

    with pytest.raises(IlfError, match="no trainable pair left"):
        finetune(pairs[1:], trainable_tiny, tmp_path / "o2", cfg)


def test_bad_pairs_file_names_file_line_field(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a"}\n')
    with pytest.raises(IlfError, match=r"bad.jsonl:2: missing field 'completion'"):
        load_pairs(p)


# --- resumption after a kill ---------------------------------------------------------------------


def test_killed_run_resumes_from_its_last_checkpoint(trainable_tiny, tmp_path):
    pairs = [{"prompt": p, "completion": c} for p, c in MEMO] * 2
    data = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "ilf.cli", "finetune", "--data", str(data), "--model", str(trainable_tiny), "--output", str(out),
           "--batch-size", "1", "--epochs", "10", "--save-steps", "5", "--learning-rate", "1e-3", "--threads", "1",
           "--report-to", "none", "--save-total-limit", "2"]  # fmt: skip
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.time() + 120
    ckpt = out / "checkpoints"
    try:
        while time.time() < deadline:
            done = [d for d in ckpt.glob("checkpoint-*") if (d / "trainer_state.json").exists()] if ckpt.exists() else []
            if done:
                break
            assert proc.poll() is None, proc.stdout.read().decode()
            time.sleep(0.05)
        else:
            pytest.fail("no checkpoint written in time")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (out / META_FILE).exists()  # killed before the end
    killed_at = max(int(d.name.split("-")[1]) for d in ckpt.glob("checkpoint-*") if (d / "trainer_state.json").exists())
    assert 5 <= killed_at < 80

    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    meta = json.loads((out / META_FILE).read_text())
    assert meta["metrics"]["resumed_from_step"] >= killed_at
    assert meta["metrics"]["global_step"] == 80
    steps = [h["step"] for h in meta["metrics"]["log_history"] if "loss" in h]
    assert "resuming from" in r.stdout + r.stderr
    assert steps[-1] == 80


# --- FINETUNE in a child process (what `ilf run` does) ---------------------------------------------


def test_finetune_in_child_trains_there_and_raises_here(trainable_tiny, tmp_path):
    pairs = [{"prompt": p, "completion": c} for p, c in MEMO]
    cfg = FinetuneConfig(learning_rate=1e-3, batch_size=2, epochs=1, report_to="none", seed=0)
    out = finetune_in_child(pairs, trainable_tiny, tmp_path / "out", cfg)
    meta = json.loads((out / META_FILE).read_text())
    assert meta["metrics"]["global_step"] == 2 and meta["metrics"]["peak_rss_mb"] > 0
    # The child's error reaches the caller as the same one clear IlfError.
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a"}\n')
    with pytest.raises(IlfError, match=r"bad.jsonl:2: missing field 'completion'"):
        finetune_in_child(bad, trainable_tiny, tmp_path / "out2", cfg)


def test_finetune_child_killed_is_one_clear_error(trainable_tiny, tmp_path):
    """The OOM killer ends the child: the caller gets a line that says so and how to resume, not a
    BrokenProcessPool traceback."""
    import multiprocessing
    import threading

    pairs = [{"prompt": p, "completion": c} for p, c in MEMO] * 4
    cfg = FinetuneConfig(learning_rate=1e-3, batch_size=1, epochs=50, report_to="none", seed=0)
    errors: list[BaseException] = []
    t = threading.Thread(target=lambda: _catch(errors, finetune_in_child, pairs, trainable_tiny, tmp_path / "out", cfg))
    t.start()
    deadline = time.time() + 120
    while time.time() < deadline and not multiprocessing.active_children():
        time.sleep(0.05)
    time.sleep(3)  # inside the training loop by now (or still importing: either way it dies)
    for child in multiprocessing.active_children():
        os.kill(child.pid, signal.SIGKILL)
    t.join(120)
    assert len(errors) == 1 and isinstance(errors[0], IlfError), errors
    assert "ended without a result" in str(errors[0]) and str(tmp_path / "out") in str(errors[0])
    assert not (tmp_path / "out" / META_FILE).exists()


def _catch(errors: list, fn, *args) -> None:
    try:
        fn(*args)
    except BaseException as e:  # noqa: BLE001 - the test inspects it
        errors.append(e)


# --- several processes: the same command under torchrun (gloo on CPU; NCCL on GPUs) -----------------


def test_two_process_data_parallel_run_writes_one_model(trainable_tiny, tmp_path):
    """DDP with 2 CPU processes: ilf divides the effective batch across processes for gradient
    accumulation and only rank 0 writes the model. (The shipped GPU configs cannot run here.)"""
    pairs = [{"prompt": p, "completion": c} for p, c in MEMO] * 2
    data = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "ilf.cli", "finetune",
           "--data", str(data), "--model", str(trainable_tiny), "--output", str(out), "--batch-size", "4", "--epochs", "3",
           "--learning-rate", "1e-3", "--report-to", "none", "--threads", "1"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    meta = json.loads((out / META_FILE).read_text())
    m = meta["metrics"]
    # 8 pairs / 2 processes = 4 per process per epoch; batch 4 = 1 per device x 2 accumulation x 2 processes.
    assert (m["gradient_accumulation_steps"], m["effective_batch_size"], m["global_step"]) == (2, 4, 6)
    assert r.stdout.count("fine-tuned 8 pairs") + r.stderr.count("fine-tuned 8 pairs") == 1


# --- the bundled model -------------------------------------------------------------------------------


@pytest.mark.slow
def test_bundled_model_fine_tunes_and_loads_in_the_default_engine(tmp_path):
    import torch
    from safetensors import safe_open

    from ilf.generation import SamplingParams, default_engine, get_engine
    from ilf.models import DEFAULT_MODEL, resolve_model
    from ilf.pairs import annotation_pairs

    pairs = annotation_pairs(split="train", kind="program")[:2]
    cfg = FinetuneConfig(batch_size=1, max_steps=2, max_length=384, learning_rate=1e-5, report_to="none")
    out = finetune(pairs, DEFAULT_MODEL, tmp_path / "ft", cfg)
    meta = json.loads((out / META_FILE).read_text())
    assert meta["metrics"]["global_step"] == 2 and meta["metrics"]["train_loss"] > 0
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == [151645, 151643]

    # The weights moved (fp32 output: lr 1e-5 updates would round away in bf16).
    base = resolve_model(DEFAULT_MODEL).hf_dir
    name = "model.layers.0.mlp.down_proj.weight"
    with safe_open(out / "model.safetensors", "pt") as f_new, safe_open(base / "model.safetensors", "pt") as f_old:
        new, old = f_new.get_tensor(name), f_old.get_tensor(name).to(torch.float32)
    assert new.dtype == torch.float32 and 0 < (new - old).abs().max().item() < 1e-2

    engine = default_engine()
    with get_engine(engine, str(out)) as eng:
        [[c]] = eng.generate([pairs[0]["prompt"]], SamplingParams(n=1, temperature=0, max_new_tokens=48))
    assert c.text.strip() and c.num_tokens > 0
    from ilf.models import remove_model

    remove_model(out)  # and the engine's cached conversion, which would stay in the user's cache


# --- the sweep ---------------------------------------------------------------------------------------


def test_sweep_trains_each_setting_and_keeps_the_best(trainable_tiny, tmp_path):
    """`ilf finetune --sweep-...` runs the pipeline's sweep (ilf.sweep): one fine-tuning per setting,
    sampled on validation tasks, OUTPUT = the best model; resumable; refuses validation tasks in the pairs."""
    from typer.testing import CliRunner

    from ilf.cli import app

    data = tmp_path / "pairs.jsonl"
    write_jsonl(data, [{"prompt": p, "completion": c, "task_id": 900 + i} for i, (p, c) in enumerate(MEMO)])
    out = tmp_path / "sw"
    args = [
        "finetune",
        "--data",
        str(data),
        "--model",
        str(trainable_tiny),
        "--output",
        str(out),
        "--report-to",
        "none",
        "--threads",
        "1",
        "--sweep-learning-rates",
        "1e-3,3e-3",
        "--sweep-batch-sizes",
        "4",
        "--sweep-epochs",
        "1",
        "--sweep-tasks",
        "11-12",
        "--sweep-n",
        "1",
        "--sweep-max-new-tokens",
        "16",
        "--engine",
        "transformers",
    ]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in (out / "sweep" / "table.jsonl").read_text().splitlines()]
    assert [r["setting"] for r in rows] == ["lr0.001-bs4-ep1", "lr0.003-bs4-ep1"]
    assert all(r["num_samples"] == 2 and 0 <= r["pass_rate"] <= 1 for r in rows)
    meta = json.loads((out / META_FILE).read_text())
    best = meta["sweep"]["best"]["setting"]
    assert meta["config"]["learning_rate"] == meta["sweep"]["best"]["learning_rate"]
    assert (out / "model.safetensors").exists() and (out / "config.json").exists()
    kept = [r["setting"] for r in rows if (Path(r["model_dir"]) / "model.safetensors").exists()]
    assert kept == [best]  # the other model's weights were pruned
    # Resumable: a second call trains and samples nothing.
    t = time.time()
    assert CliRunner().invoke(app, args).exit_code == 0
    assert time.time() - t < 20
    # Moved to another machine without its models: the table is kept, only the best is trained again.
    import shutil

    for f in out.iterdir():
        if f.is_file() and f.name != "pairs.jsonl":
            f.unlink()
    shutil.rmtree(out / "sweep" / best / "model")
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "training it again" in r.output and r.output.count("validation pass rate") == 1  # nothing measured again
    assert [json.loads(x) for x in (out / "sweep" / "table.jsonl").read_text().splitlines()] == rows
    assert (out / "sweep" / best / "model" / "config.json").exists() and (out / "model.safetensors").exists()
    assert json.loads((out / META_FILE).read_text())["sweep"]["best"]["setting"] == best
    write_jsonl(data, [{"prompt": MEMO[0][0], "completion": MEMO[0][1], "task_id": 11}])
    r = CliRunner().invoke(app, args[:6] + [str(tmp_path / "sw2")] + args[7:])
    assert r.exit_code == 2 and "validation tasks also in the training pairs: 11" in r.output


# --- π_Refine pairs from the authors' annotations, through the CLI ---------------------------------------


def test_cli_builds_refine_pairs_from_the_authors_file(trainable_tiny, tmp_path):
    from typer.testing import CliRunner

    from ilf.cli import app

    out = tmp_path / "refiner"
    r = CliRunner().invoke(
        app,
        [
            "finetune",
            "--data",
            "surge",
            "--split",
            "refine",
            "--model",
            str(trainable_tiny),
            "--output",
            str(out),
            "--max-steps",
            "1",
            "--batch-size",
            "2",
            "--report-to",
            "none",
        ],
    )
    assert r.exit_code == 0, r.output
    pairs = [json.loads(x) for x in (out / "train_pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == 44 and all(111 <= p["task_id"] <= 310 and p["kind"] == "refine" for p in pairs)
    p = pairs[0]
    head, old, tail = split_refinement_prompt(p["prompt"])
    assert "\r" not in p["completion"] and p["completion"].strip() and tail.startswith("\n\nFEEDBACK:\n")
    assert tail.endswith('"""\n' + tail.split('"""\n', 2)[-1]) and "def " in tail.splitlines()[-1]
    meta = json.loads((out / META_FILE).read_text())
    assert meta["data"]["num_pairs"] == 44 and meta["metrics"]["global_step"] == 1

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": 3, "completion": "x"}\n')
    r = CliRunner().invoke(app, ["finetune", "--data", str(bad), "--model", str(trainable_tiny), "--output", str(tmp_path / "o")])
    assert r.exit_code == 2 and "bad.jsonl:1: field 'prompt' must be str" in r.output


def test_a_logger_that_is_unknown_or_not_installed_is_one_line_before_training():
    import importlib.util

    import pytest

    from ilf.errors import IlfError
    from ilf.finetune import LOGGERS, _check_loggers

    _check_loggers(["tensorboard"])  # installed with ilf
    with pytest.raises(IlfError, match="not one of"):
        _check_loggers(["mlflowx"])
    if importlib.util.find_spec("wandb") is None:
        with pytest.raises(IlfError, match=r"pip install 'ilf\[wandb\]'"):
            _check_loggers(["wandb"])
    assert set(LOGGERS) == {"tensorboard", "wandb"}
