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
    from ilf.annotations import load_authors
    from ilf.tasks import load_tasks
    from ilf.text import body_after_prompt

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


class _StandInHub:
    """A local stand-in for the Hugging Face Hub's upload API on 127.0.0.1 (no hub is reachable
    here): repo creation, README validation, preupload (every file 'regular') and NDJSON commits,
    whose files it writes under `root/<type>s/<repo>/`. Anything else is a 404 it records."""

    def __init__(self, root: Path):
        import base64
        import http.server
        import threading

        self.root, self.requests, self.unknown = root, [], []
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _json(self, obj, code=200):
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = self.path.split("?")[0]
                hub.requests.append((path, self.headers.get("Authorization")))
                parts = path.strip("/").split("/")
                if path == "/api/repos/create":
                    req = json.loads(data)
                    kind = req.get("type", "model")
                    repo = f"{req.get('organization') or 'me'}/{req['name']}" if "/" not in req["name"] else req["name"]
                    (hub.root / f"{kind}s" / repo).mkdir(parents=True, exist_ok=True)
                    hub.private = req.get("private", req.get("visibility") == "private")
                    return self._json({"url": f"http://{self.headers['Host']}/{repo}"})
                if path == "/api/validate-yaml":
                    return self._json({"errors": [], "warnings": []})
                if len(parts) == 6 and parts[0] == "api" and parts[4] == "preupload":
                    files = json.loads(data)["files"]
                    return self._json({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})
                if len(parts) == 6 and parts[0] == "api" and parts[4] == "commit":
                    dest = hub.root / parts[1] / parts[2] / parts[3]
                    for line in data.decode().splitlines():
                        item = json.loads(line)
                        if item["key"] == "file":
                            f = dest / item["value"]["path"]
                            f.parent.mkdir(parents=True, exist_ok=True)
                            f.write_bytes(base64.b64decode(item["value"]["content"]))
                    return self._json({"commitUrl": f"http://{self.headers['Host']}/{parts[2]}/{parts[3]}/commit/1", "commitOid": "1" * 40})
                hub.unknown.append(("POST", path))
                return self._json({"error": "not in the stand-in"}, 404)

            def do_GET(self):
                hub.unknown.append(("GET", self.path))
                return self._json({"error": "not in the stand-in"}, 404)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def test_push_to_hub_uploads_the_data_and_each_model_with_its_card_to_a_local_stand_in_hub(tmp_path, data_dir):
    import datasets
    from tiny_models import build_qwen_tiny

    run = make_run(tmp_path, data_dir)
    build_qwen_tiny(run / "r1" / "model")
    (run / "r1" / "model" / "checkpoints").mkdir()
    (run / "r1" / "model" / "checkpoints" / "optimizer.pt").write_bytes(b"big")
    hub = _StandInHub(tmp_path / "hub")
    env = {**__import__("os").environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_standin", "HF_HUB_DISABLE_TELEMETRY": "1"}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "ilf.cli", "export", str(run), "--output", str(tmp_path / "out"), "--data-dir", str(data_dir),
             "--push-to-hub", "me/ilf-t", "--private"],
            capture_output=True, text=True, timeout=600, env=env,
        )  # fmt: skip
    finally:
        hub.close()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not hub.unknown, hub.unknown
    assert {a for _, a in hub.requests} == {"Bearer hf_standin"} and hub.private is True
    data = tmp_path / "hub" / "datasets" / "me" / "ilf-t-data"
    assert sorted(str(p.relative_to(data)) for p in data.rglob("*") if p.is_file()) == [
        "README.md", "chat.jsonl", "dpo.jsonl", "sft/gold.jsonl", "sft/ilf-r1.jsonl"
    ]  # fmt: skip
    # The card's configs make each file a named config of `load_dataset`, read here from the pushed files.
    card = (data / "README.md").read_text()
    assert "- config_name: ilf-r1\n  data_files: sft/ilf-r1.jsonl" in card and "| dpo | 2 |" in card
    sft = datasets.load_dataset(str(data), "ilf-r1", split="train")
    assert sorted(sft["task_id"]) == TASKS and set(sft.column_names) >= {"prompt", "completion"}
    model = tmp_path / "hub" / "models" / "me" / "ilf-t-ilf-r1"
    assert (model / "config.json").exists() and (model / "model.safetensors").exists()
    assert (model / "README.md").read_text().startswith("---\nlibrary_name: transformers")
    assert not (model / "checkpoints").exists()  # training state stays home
    assert "pushed me/ilf-t-data" in proc.stderr and "pushed me/ilf-t-ilf-r1" in proc.stderr


def test_push_to_hub_without_a_reachable_hub_is_one_line(tmp_path, data_dir):
    run = make_run(tmp_path, data_dir)
    env = {**__import__("os").environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_TOKEN": "x", "HF_HUB_ETAG_TIMEOUT": "2"}
    proc = subprocess.run(
        [sys.executable, "-m", "ilf.cli", "export", str(run), "--output", str(tmp_path / "out"), "--data-dir", str(data_dir),
         "--push-to-hub", "me/ilf-t"],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert proc.returncode == 2 and lines[-1].startswith("error: --push-to-hub me/ilf-t:"), proc.stderr
    args = ["export", str(run), "--output", str(tmp_path / "o2"), "--push-to-hub", "noslash"]
    proc = subprocess.run([sys.executable, "-m", "ilf.cli", *args], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 2 and "expected NAMESPACE/NAME" in proc.stderr and not (tmp_path / "o2").exists()
