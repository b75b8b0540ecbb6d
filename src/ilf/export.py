"""Exports of a run directory in the formats the field's tools read.

    ilf export RUN_DIR --output DIR            # all of them

- `DIR/sft/<set>/` (+ `<set>.jsonl`): every training set of the run (ILF's R per round, and each
  baseline's: gold, human-refinements, rft, llm-*) as a Hugging Face `datasets` dataset in TRL's
  prompt-completion format: `{"prompt", "completion", "task_id", "source"}`.
- `DIR/preferences/<set>/` (+ `<set>.jsonl`): what the run's DPO methods (ilf-dpo, rft-dpo) trained on.
- `DIR/dpo/` (+ `dpo.jsonl`): preference pairs from π_Refine's EVAL: `{"prompt": task prompt,
  "chosen": a passing refinement's body, "rejected": the failing x0's body, "task_id", "feedback"}`,
  one per passing refinement (TRL's DPOTrainer reads prompt/chosen/rejected).
- `DIR/chat/` (+ `chat.jsonl`): the ILF exchange as chat-template messages, `{"messages": [user:
  task, assistant: x0, user: feedback, assistant: refinement], "task_id"}` for each passing refinement.
- a model card (`README.md`) in every fine-tuned model directory of the run: base model, training
  data, config, code version, and the measured pass@k with its protocol (from the report).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ilf.config import RunConfig, read_run_config
from ilf.errors import IlfError
from ilf.jsonl import load_jsonl, stored, write_jsonl
from ilf.text import body_after_prompt


def training_sets(run_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Name -> pairs: `ilf-r<N>` for each round's R, and `<baseline>` for baselines/<baseline>/."""
    sets: dict[str, list[dict]] = {}
    for p in sorted(run_dir.glob("r[0-9]*/train_pairs.jsonl*")):
        sets[f"ilf-{p.parent.name}"] = load_jsonl(stored(p.with_name("train_pairs.jsonl")))
    for p in sorted(run_dir.glob("baselines/*/train_pairs.jsonl*")):
        sets[p.parent.name] = load_jsonl(stored(p.with_name("train_pairs.jsonl")))
    return {
        k: [{"prompt": r["prompt"], "completion": r["completion"], "task_id": r.get("task_id"), "source": r.get("source", k)} for r in v]
        for k, v in sets.items()
        if not any("chosen" in r for r in v)  # ilf-dpo / rft-dpo train on preferences: exported by preference_sets
    }


def preference_sets(run_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Name -> TRL prompt/chosen/rejected records of the run's DPO methods (baselines/ilf-dpo, rft-dpo)."""
    sets = {}
    for p in sorted(run_dir.glob("baselines/*/train_pairs.jsonl*")):
        recs = load_jsonl(stored(p.with_name("train_pairs.jsonl")))
        if recs and all("chosen" in r for r in recs):
            sets[p.parent.name] = [{k: r.get(k) for k in ("prompt", "chosen", "rejected", "task_id", "source")} for r in recs]
    return sets


def refinement_records(run_dir: Path, data_dir: str | Path | None = None) -> tuple[list[dict], list[dict]]:
    """(dpo, chat) records from every round's passing refinements and their x0 and feedback.
    The tasks come from `data_dir`, else the run's own data_dir, else ilf's usual places."""
    from ilf.tasks import load_tasks

    dpo, chat = [], []
    cfg = read_run_config(run_dir)
    tasks = None
    for refs_path in sorted(run_dir.glob("r[0-9]*/refinements.jsonl*")):
        rd = refs_path.parent
        fb_path = stored(rd / "feedback.jsonl")
        if not fb_path.is_file():
            continue
        feedback = {f["feedback_id"]: f for f in load_jsonl(fb_path)}
        passing = [r for r in load_jsonl(stored(rd / "refinements.jsonl")) if r.get("passed") is True]
        if tasks is None and passing:
            where = data_dir or (cfg.data_dir if cfg else "") or None
            tasks = load_tasks("mbpp", data_dir=where, task_ids=sorted({r["task_id"] for r in passing}))
        for r in passing:
            f = feedback.get(r["feedback_id"])
            task = tasks.get(r["task_id"]) if tasks else None
            if f is None or task is None:
                continue
            x0 = body_after_prompt(f["program"], task.prompt)
            x1 = body_after_prompt(r["refinement"], task.prompt)
            meta = {"task_id": r["task_id"], "round": rd.name, "feedback_id": r["feedback_id"], "sample_id": r["sample_id"]}
            dpo.append({"prompt": task.prompt, "chosen": x1, "rejected": x0, "feedback": f["feedback"], **meta})
            chat.append(
                {
                    "messages": [
                        {"role": "user", "content": f"Complete this Python function.\n\n{task.prompt}"},
                        {"role": "assistant", "content": x0},
                        {"role": "user", "content": f["feedback"]},
                        {"role": "assistant", "content": x1},
                    ],
                    **meta,
                }
            )
    return dpo, chat


def _save(records: list[dict], out: Path) -> None:
    import datasets

    write_jsonl(out.with_suffix(".jsonl"), records)
    if records:
        datasets.Dataset.from_list(records).save_to_disk(str(out))


def model_card(run_dir: Path, model_dir: Path, method: str, report: dict | None, config: RunConfig | None) -> str:
    """The README.md of a fine-tuned model: what it is, what it was trained on, how it measured."""
    meta_p = model_dir / "ilf_finetune.json"
    meta = json.loads(meta_p.read_text()) if meta_p.is_file() else {}
    base = meta.get("base_model") or (config.model.base if config else "?")
    lines = [
        "---",
        "library_name: transformers",
        "tags: [ilf, code, mbpp]",
        f"base_model: {base}",
        "---",
        "",
        f"# {run_dir.name}: {method}",
        "",
        f"Fine-tuned by [ilf](https://arxiv.org/abs/2303.16749) (Imitation learning from Language Feedback) "
        f"from `{base}` in run `{run_dir.name}` ({(report or {}).get('code_version') or 'code version unknown'}).",
        "",
    ]
    m = meta.get("metrics", {})
    cfgft = meta.get("config", {})
    lines += [
        "## Training",
        "",
        f"- method: `{method}`; training pairs: {meta.get('data', {}).get('num_trained', '?')}",
        f"- learning rate {cfgft.get('learning_rate')}, effective batch {cfgft.get('batch_size')}, epochs {cfgft.get('epochs')}, "
        f"LoRA {cfgft.get('lora')}, seed {cfgft.get('seed')}; train loss {m.get('train_loss')}",
        "",
    ]
    row = next((x for x in (report or {}).get("methods", []) if x.get("method") == method), None)
    if row:
        met = row.get("metrics", {})
        pct = lambda e: f"{100 * e['value']:.1f} [{100 * e['lo']:.1f}, {100 * e['hi']:.1f}]" if e else "–"  # noqa: E731
        lines += [
            "## Evaluation",
            "",
            f"MBPP tasks {row.get('split', config.eval.tasks if config else '?')}, {row.get('n')} samples per task at "
            f"T = {row.get('temperature')}, engine {row.get('engine')}; 95% bootstrap CIs over tasks.",
            "",
            "| pass@1 | pass@10 | 1+ correct |",
            "|---|---|---|",
            f"| {pct(met.get('pass@1'))} | {pct(met.get('pass@10'))} | {pct(met.get('one_plus_correct'))} |",
            "",
        ]
    else:
        lines += ["## Evaluation", "", "Not evaluated in this run yet (no report row).", ""]
    return "\n".join(lines)


def _report(run_dir: Path) -> dict | None:
    p = run_dir / "report" / "report.json"
    if not p.is_file():
        return None
    runs = json.loads(p.read_text()).get("runs") or []
    return runs[0] if runs else None


def model_dirs(run_dir: Path) -> list[tuple[Path, str]]:
    """(directory, method) of every fine-tuned model of a run (`ilf`, `ilf@s1`, `gold`, ...)."""
    out = []
    for mdir in sorted(run_dir.glob("r[0-9]*/model*")) + sorted(run_dir.glob("baselines/*/model*")):
        if (mdir / "config.json").is_file():
            seed = mdir.name.partition("@")[2]
            baseline = mdir.parent.parent.name == "baselines"  # baselines/rft/ is not a round's directory
            out.append((mdir, (mdir.parent.name if baseline else "ilf") + (f"@{seed}" if seed else "")))
    return out


def _repo_suffix(mdir: Path, method: str) -> str:
    """`ilf-r1`, `ilf-r1-s1`, `gold`, `gold-s1`: unique within a run."""
    if mdir.parent.parent.name != "baselines":
        method = method.replace("ilf", f"ilf-{mdir.parent.name}", 1)
    return method.replace("@", "-").replace("/", "-")


def export_run(run_dir: str | Path, output: str | Path, model_cards: bool = True, data_dir: str | Path | None = None) -> dict[str, int]:
    """Write every export of RUN_DIR under OUTPUT; returns counts per export. All or nothing: every
    record is read (and every task found) before anything is written, the exports are built in a
    temporary sibling of OUTPUT and moved into it only when all are done."""
    import shutil
    import tempfile

    run_dir, output = Path(run_dir), Path(output)
    if not (run_dir / "manifest.json").is_file():
        raise IlfError(f"{run_dir}: not a run directory (no manifest.json)")
    if output.resolve() == run_dir.resolve() or run_dir.resolve() in output.resolve().parents:
        raise IlfError(f"{output}: choose an output outside the run directory")
    if output.exists() and not output.is_dir():
        raise IlfError(f"{output}: exists and is not a directory")
    sets = training_sets(run_dir)
    prefs = preference_sets(run_dir)
    dpo, chat = refinement_records(run_dir, data_dir)  # may need the data: fails before any write
    output.parent.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    try:
        for name, recs in sets.items():
            _save(recs, tmp / "sft" / name)
            counts[f"sft/{name}"] = len(recs)
        for name, recs in prefs.items():
            _save(recs, tmp / "preferences" / name)
            counts[f"preferences/{name}"] = len(recs)
        _save(dpo, tmp / "dpo")
        _save(chat, tmp / "chat")
        counts["dpo"], counts["chat"] = len(dpo), len(chat)
        output.mkdir(exist_ok=True)
        for item in sorted(tmp.iterdir()):  # replaces what an earlier export of the same names left
            dest = output / item.name
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            elif dest.exists() or dest.is_symlink():
                dest.unlink()
            os.replace(item, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if model_cards:
        report, config = _report(run_dir), read_run_config(run_dir)
        for mdir, method in model_dirs(run_dir):
            (mdir / "README.md").write_text(model_card(run_dir, mdir, method, report, config), encoding="utf-8")
            counts.setdefault("model_cards", 0)
            counts["model_cards"] += 1
    return counts


def dataset_card(run_dir: Path, output: Path, files: list[str]) -> str:
    """README.md of the exported data on the Hub: one config per file, so `load_dataset(repo, name)` works."""
    lines = ["---", "tags: [ilf, code, mbpp]", "configs:"]
    for f in files:
        name = Path(f).name.removesuffix(".jsonl")
        lines += [f"- config_name: {name}", f"  data_files: {f}"]
    lines += [
        "---",
        "",
        f"# {run_dir.name}: ILF training data",
        "",
        "Exported by [ilf](https://arxiv.org/abs/2303.16749) (Imitation learning from Language Feedback) with "
        f"`ilf export {run_dir.name}`. `sft/*`: TRL prompt-completion sets (ILF's R per round and each baseline's); "
        "`dpo`: prompt/chosen/rejected from π_Refine's passing refinements and their failing x0; `chat`: the exchange as messages.",
        "",
        "| config | records |",
        "|---|---:|",
    ]
    lines += [f"| {Path(f).name.removesuffix('.jsonl')} | {sum(1 for _ in open(output / f, encoding='utf-8'))} |" for f in files]
    return "\n".join(lines) + "\n"


def push_to_hub(run_dir: str | Path, output: str | Path, repo_prefix: str, private: bool = False, models: bool = True) -> dict[str, str]:
    """Push an export to the Hugging Face Hub (or the endpoint in HF_ENDPOINT): the data as the dataset
    repo `<prefix>-data` (JSONL files + a card with one config per file), and each fine-tuned model of
    the run, with its model card, as the model repo `<prefix>-<method>` (`-ilf-r1`, `-gold-s1`, ...).
    Returns repo id -> the commit's URL."""
    from huggingface_hub import HfApi

    run_dir, output = Path(run_dir), Path(output)
    if repo_prefix.count("/") != 1 or not all(repo_prefix.split("/")):
        raise IlfError(f"--push-to-hub {repo_prefix!r}: expected NAMESPACE/NAME (repos NAME-data and NAME-<method> are created)")
    try:
        return _push(run_dir, output, repo_prefix, private, models, HfApi())
    except Exception as e:  # the hub client's errors (HTTP, connection, token) have no common base but Exception
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise IlfError(f"--push-to-hub {repo_prefix}: {type(e).__name__}: {first}") from None


def _push(run_dir: Path, output: Path, repo_prefix: str, private: bool, models: bool, api) -> dict[str, str]:
    pushed: dict[str, str] = {}
    files = sorted(str(p.relative_to(output)) for p in output.rglob("*.jsonl") if p.stat().st_size > 0)
    if files:
        repo = f"{repo_prefix}-data"
        api.create_repo(repo, repo_type="dataset", private=private, exist_ok=True)
        (output / "README.md").write_text(dataset_card(run_dir, output, files), encoding="utf-8")
        info = api.upload_folder(
            repo_id=repo, repo_type="dataset", folder_path=str(output), allow_patterns=[*files, "README.md"], commit_message="ilf export"
        )
        pushed[repo] = str(info)
    if models:
        for mdir, method in model_dirs(run_dir):
            repo = f"{repo_prefix}-{_repo_suffix(mdir, method)}"
            api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
            info = api.upload_folder(
                repo_id=repo,
                folder_path=str(mdir),
                ignore_patterns=["checkpoints/*", "runs/*", "*.tmp*"],
                commit_message=f"ilf: {method} of run {run_dir.name}",
            )
            pushed[repo] = str(info)
    return pushed
