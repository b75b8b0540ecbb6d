"""`ilf export`: a run's training sets as Hugging Face datasets that TRL trains on, DPO pairs and
chat records from π_Refine's passing refinements, and model cards in the fine-tuned models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ilf.jsonl import write_json, write_jsonl

TASKS = [641, 646]  # MBPP_Train tasks with human refinements in the authors' file


def make_run(root: Path, data_dir: Path) -> Path:
    from ilf.feedback.annotations import load_authors
    from ilf.refine import body_after_prompt
    from ilf.tasks import load_tasks

    run = root / "run"
    tasks = load_tasks("mbpp", data_dir=data_dir, task_ids=TASKS)
    ann = {a["task_id"]: a for a in load_authors(data_dir / "surge_annotations.jsonl") if a["task_id"] in TASKS}
    nl = lambda s: s.replace("\r\n", "\n")  # noqa: E731
    write_json(run / "manifest.json", {"stages": {}, "code_version": "ilf test"})
    (run / "config.toml").write_text(f'name = "t"\ndata_dir = "{data_dir}"\n\n[model]\nbase = "tiny"\n')
    write_jsonl(
        run / "r1" / "feedback.jsonl",
        [
            {
                "task_id": t,
                "sample_id": 0,
                "program": nl(ann[t]["program"]),
                "feedback": ann[t]["feedback"],
                "feedback_id": f"f{t}",
                "source": "authors",
            }
            for t in TASKS
        ],
    )
    write_jsonl(
        run / "r1" / "refinements.jsonl",
        [
            {
                "task_id": t,
                "feedback_id": f"f{t}",
                "sample_id": j,
                "refinement": nl(ann[t]["refinement"]) if j == 0 else "x",
                "passed": j == 0,
                "status": "passed" if j == 0 else "failed",
            }
            for t in TASKS
            for j in range(2)
        ],
    )
    write_jsonl(
        run / "r1" / "train_pairs.jsonl",
        [
            {
                "task_id": t,
                "prompt": tasks[t].prompt,
                "completion": body_after_prompt(nl(ann[t]["refinement"]), tasks[t].prompt),
                "source": "ilf",
            }
            for t in TASKS
        ],
    )
    write_jsonl(
        run / "baselines" / "gold" / "train_pairs.jsonl",
        [
            {"task_id": t, "prompt": tasks[t].prompt, "completion": body_after_prompt(tasks[t].gold, tasks[t].prompt), "source": "gold"}
            for t in TASKS
        ],
    )
    return run


def test_export_loads_with_datasets_and_trains_with_trl(tmp_path, data_dir):
    import datasets
    from tiny_models import build_qwen_tiny
    from trl import SFTConfig, SFTTrainer

    run = make_run(tmp_path, data_dir)
    model_dir = build_qwen_tiny(run / "r1" / "model")
    write_json(
        model_dir / "ilf_finetune.json",
        {
            "base_model": "tiny",
            "config": {"learning_rate": 1e-5, "batch_size": 2, "epochs": 1, "lora": False, "seed": 0},
            "data": {"num_trained": 2},
            "metrics": {"train_loss": 1.0},
        },
    )
    write_json(
        run / "report" / "report.json",
        {
            "runs": [
                {
                    "code_version": "ilf test",
                    "methods": [
                        {
                            "method": "ilf",
                            "split": "11-13",
                            "n": 10,
                            "temperature": 0.8,
                            "engine": "openvino/f16",
                            "metrics": {"pass@1": {"value": 0.25, "lo": 0.1, "hi": 0.4}},
                        }
                    ],
                }
            ]
        },
    )
    out = tmp_path / "export"
    proc = subprocess.run(
        [sys.executable, "-m", "ilf.cli", "export", str(run), "--output", str(out)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr

    sft = datasets.load_from_disk(str(out / "sft" / "ilf-r1"))
    assert sft.num_rows == 2 and {"prompt", "completion"} <= set(sft.column_names)
    gold = datasets.load_dataset("json", data_files=str(out / "sft" / "gold.jsonl"), split="train")
    assert gold.num_rows == 2 and gold[0]["source"] == "gold"
    dpo = datasets.load_from_disk(str(out / "dpo"))
    assert dpo.num_rows == 2  # one passing refinement per task
    row = dpo[0]
    assert row["chosen"] != row["rejected"] and row["prompt"].rstrip().endswith(":")
    chat = [json.loads(x) for x in (out / "chat.jsonl").read_text().splitlines()]
    assert [m["role"] for m in chat[0]["messages"]] == ["user", "assistant", "user", "assistant"]
    assert chat[0]["messages"][3]["content"] == row["chosen"] or chat[1]["messages"][3]["content"] == row["chosen"]
    card = (model_dir / "README.md").read_text()
    assert "base_model: tiny" in card and "25.0 [10.0, 40.0]" in card and "openvino/f16" in card

    # The exported prompt-completion set trains with TRL's SFTTrainer as is (one step, the tiny model).
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    args = SFTConfig(
        output_dir=str(tmp_path / "trl"),
        max_steps=1,
        per_device_train_batch_size=2,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        max_length=256,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=sft, processing_class=tok)
    result = trainer.train()
    assert result.global_step == 1 and result.training_loss > 0


def test_export_refuses_an_output_inside_the_run(tmp_path, data_dir):
    from ilf.errors import IlfError
    from ilf.export import export_run

    run = make_run(tmp_path, data_dir)
    with pytest.raises(IlfError, match="outside the run directory"):
        export_run(run, run / "exports")


def test_export_writes_all_or_nothing_and_takes_a_data_dir(tmp_path, data_dir):
    from ilf.errors import IlfError
    from ilf.export import export_run

    run = make_run(tmp_path, data_dir)
    empty = tmp_path / "nodata"
    empty.mkdir()
    cfg = run / "config.toml"
    cfg.write_text(cfg.read_text().replace(f'data_dir = "{data_dir}"', f'data_dir = "{empty}"'))
    out = tmp_path / "exports"
    with pytest.raises(IlfError):
        export_run(run, out, model_cards=False)
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    counts = export_run(run, out, model_cards=False, data_dir=data_dir)
    assert counts["dpo"] == len(TASKS) and (out / "sft" / "ilf-r1.jsonl").is_file() and (out / "dpo").is_dir()
    tree = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    again = export_run(run, out, model_cards=False, data_dir=data_dir)  # into the same directory: replaced
    assert again == counts and sorted(str(p.relative_to(out)) for p in out.rglob("*")) == tree
