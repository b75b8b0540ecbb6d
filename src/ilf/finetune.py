"""FINETUNE (Algorithm 1, lines for π_Refine and π_θ*): supervised fine-tuning, loss on the target only.

Built on TRL's `SFTTrainer` with prompt-completion data, PEFT LoRA as an option, so users get the
Hugging Face training loop they know: TensorBoard logging, checkpoints, `resume_from_checkpoint`,
`accelerate launch` for several GPUs (see docs/gpus.md).

Input: pairs `{prompt, completion}` (+ optional `task_id`, `kind`), docs/finetune.md. Output: a
complete Hugging Face model directory (LoRA merged, tokenizer, generation config listing every end
token) that every ilf sampling engine loads, plus `ilf_finetune.json` (config, data fingerprint,
skipped examples, metrics).

Tokenization is done here, not by TRL, for two reasons:
- the target is never truncated: an over-long refinement prompt loses the end of its OLD CODE first
  (as the authors' finetune_refinement_model.py does), any other prompt loses its start; a pair whose
  target does not fit is reported and skipped, never trained on with a zero loss;
- prompt and completion are tokenized separately, so the model trains on exactly the prompt tokens
  the sampling engines feed it (joint tokenization may merge the prompt's last "\n" with the body's
  indentation, and TRL would then cut that token out of the prompt).
"""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import json
import math
import os
import re
import resource
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from ilf.config import MIN_PROMPT_TOKENS, FinetuneConfig
from ilf.errors import IlfError
from ilf.jsonl import read_jsonl, require, write_json
from ilf.settings import check

CHECKPOINT_SUBDIR = "checkpoints"
META_FILE = "ilf_finetune.json"
PAIRS_FILE = "train_pairs.jsonl"  # `ilf finetune --data surge` writes the pairs it built here
_OWN_FILES = {PAIRS_FILE, "sweep", CHECKPOINT_SUBDIR}
REFINE_HEAD = "OLD CODE:\n"
REFINE_SPLIT = "\n\nFEEDBACK:\n"  # see ilf.tasks.REFINE_TEMPLATE


# ---------------------------------------------------------------------------------------------
# Pairs


@dataclass
class Pair:
    prompt: str
    completion: str  # the target; with objective dpo, the preferred ("chosen") completion
    task_id: Any = None
    kind: Optional[str] = None  # e.g. "refine" (π_Refine) or "program" (π_θ)
    source: str = ""  # file:line, for reports
    rejected: Optional[str] = None  # objective dpo: the dispreferred completion


def load_pairs(data: str | os.PathLike | Iterable[dict] | Iterable[Pair]) -> list[Pair]:
    """Pairs from a JSONL file or from records; bad records fail with file:line:field."""
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        pairs = []
        for line, rec in read_jsonl(path):
            pairs.append(_pair_from_record(rec, path, line))
    else:
        pairs = []
        for i, rec in enumerate(data, start=1):
            pairs.append(rec if isinstance(rec, Pair) else _pair_from_record(rec, "<pairs>", i))
    if not pairs:
        raise IlfError(f"{data if isinstance(data, (str, os.PathLike)) else '<pairs>'}: no training pairs")
    return pairs


def _pair_from_record(rec: dict, path: Any, line: int) -> Pair:
    prompt = require(rec, "prompt", str, path, line)
    if "chosen" in rec or "rejected" in rec:  # a preference pair (TRL's prompt/chosen/rejected)
        chosen = require(rec, "chosen", str, path, line)
        rejected = require(rec, "rejected", str, path, line)
        return Pair(prompt=prompt, completion=chosen, task_id=rec.get("task_id"), source=f"{path}:{line}", rejected=rejected)
    completion = require(rec, "completion", str, path, line)
    kind = rec.get("kind")
    if kind is not None and not isinstance(kind, str):
        raise IlfError(f"{path}:{line}: field 'kind' must be str, got {type(kind).__name__}")
    return Pair(prompt=prompt, completion=completion, task_id=rec.get("task_id"), kind=kind, source=f"{path}:{line}")


def fingerprint(pairs: Sequence[Pair]) -> str:
    """sha256 of the training text, order included (a different order is a different run)."""
    h = hashlib.sha256()
    for p in pairs:
        text = [p.prompt, p.completion] + ([p.rejected] if p.rejected is not None else [])
        h.update(json.dumps(text, ensure_ascii=False).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Tokenization with the target-preserving truncation rule


@dataclass
class Encoded:
    input_ids: list[int]
    completion_mask: list[int]
    num_target_tokens: int
    truncated: str = ""  # "" | "old_code" | "prompt_start"


@dataclass
class Skipped:
    index: int
    task_id: Any
    source: str
    reason: str


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def _lead_ids(tokenizer) -> list[int]:
    """Special tokens the tokenizer puts before any text (a BOS for Llama-style models, none for Qwen)."""
    return list(tokenizer("", add_special_tokens=True)["input_ids"])


def split_refinement_prompt(prompt: str) -> Optional[tuple[str, str, str]]:
    """(head, old_code, tail) of a π_Refine prompt (ilf.tasks.REFINE_TEMPLATE), else None."""
    if not prompt.startswith(REFINE_HEAD):
        return None
    cut = prompt.find(REFINE_SPLIT, len(REFINE_HEAD))
    if cut < 0:
        return None
    return REFINE_HEAD, prompt[len(REFINE_HEAD) : cut], prompt[cut:]


def encode_pair(pair: Pair, tokenizer, max_length: int, eos_token_id: int) -> Encoded | str:
    """Token ids and completion mask for one pair, or the reason it cannot be trained on.

    The completion (+ one end token) is kept whole. If the sequence is too long, a refinement
    prompt first loses the end of its OLD CODE (like the authors), any prompt then loses its start.
    """
    if not pair.completion.strip():
        return "empty completion: nothing to learn"
    target = _ids(tokenizer, pair.completion) + [eos_token_id]
    lead = _lead_ids(tokenizer)
    budget = max_length - len(target)  # tokens left for the prompt
    if budget < len(lead) + MIN_PROMPT_TOKENS:
        return (
            f"completion is {len(target)} tokens: with max_length={max_length} fewer than {MIN_PROMPT_TOKENS} "
            "prompt tokens would remain (the target is never truncated; raise --max-length)"
        )
    prompt_ids = lead + _ids(tokenizer, pair.prompt)
    truncated = ""
    if len(prompt_ids) > budget:
        parts = split_refinement_prompt(pair.prompt)
        new_ids = None
        if parts is not None:
            head, old, tail = (_ids(tokenizer, s) for s in parts)
            keep = budget - len(lead) - len(head) - len(tail)
            if keep >= 0:
                new_ids = lead + head + old[:keep] + tail
                truncated = "old_code"
        if new_ids is None:
            body = prompt_ids[len(lead) :]
            new_ids = lead + body[len(body) - (budget - len(lead)) :]
            truncated = "prompt_start"
        prompt_ids = new_ids
    ids = prompt_ids + target
    assert len(ids) <= max_length
    return Encoded(ids, [0] * len(prompt_ids) + [1] * len(target), len(target), truncated)


def encode_pairs(pairs: Sequence[Pair], tokenizer, max_length: int, eos_token_id: int):
    """(encoded examples, skipped examples with reasons, truncation counts)."""
    encoded: list[Encoded] = []
    skipped: list[Skipped] = []
    counts = {"old_code": 0, "prompt_start": 0}
    for i, p in enumerate(pairs):
        e = encode_pair(p, tokenizer, max_length, eos_token_id)
        if isinstance(e, str):
            skipped.append(Skipped(i, p.task_id, p.source, e))
            continue
        if e.truncated:
            counts[e.truncated] += 1
        encoded.append(e)
    return encoded, skipped, counts


# ---------------------------------------------------------------------------------------------
# Model loading and saving


def _load_base(model_spec: str | os.PathLike):
    """(model, tokenizer, description) through ilf.models, which resolves every model spec (hub id,
    directory, GGUF file, bundled default); GGUF weights come back dequantized and trainable."""
    import torch

    from ilf import models

    resolved = models.resolve_model(str(model_spec))
    model, tok = models.load_hf_model(resolved, dtype=torch.float32)
    desc = {"spec": str(model_spec), "name": resolved.name}
    _make_trainable(model)
    return model, tok, desc


def _make_trainable(model) -> None:
    """A model loaded from GGUF keeps its quantizer marker, and then refuses both training and
    save_pretrained although its weights are plain float tensors (DESIGN.md pitfall)."""
    import torch

    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if getattr(model.config, "quantization_config", None) is not None:
        try:
            del model.config.quantization_config
        except AttributeError:
            model.config.quantization_config = None
    for attr in ("is_quantized", "_is_quantized_training_enabled"):
        if getattr(model, attr, False):
            try:
                setattr(model, attr, False)
            except AttributeError:
                pass
    if model.dtype != torch.float32:  # fp32 master weights: lr 5e-6 steps vanish in bf16
        model.to(torch.float32)


def end_token_ids(tokenizer, model=None) -> list[int]:
    """Every token that ends a completion: ilf.models.eos_token_ids (it knows the bundled model
    lists only <|im_end|> and adds <|endoftext|>) plus the model's generation config's."""
    from ilf.models import eos_token_ids

    ids = list(eos_token_ids(tokenizer))
    if model is not None and model.generation_config is not None:
        g = model.generation_config.eos_token_id
        for tid in [g] if isinstance(g, int) else (g or []):
            if tid not in ids:
                ids.append(tid)
    if not ids:
        raise IlfError("the tokenizer has no end-of-sequence token; cannot teach the model to stop")
    return ids


def training_eos_id(tokenizer, eos_ids: list[int]) -> int:
    """The end token appended to each target. Plain-text (non-chat) completions end with the
    tokenizer's document end (`<|endoftext|>` for Qwen) when it is one of the end tokens."""
    vocab = tokenizer.get_vocab()
    for name in ("<|endoftext|>", "</s>"):
        if name in vocab and vocab[name] in eos_ids:
            return vocab[name]
    return eos_ids[0]


def _save_final(model, tokenizer, output_dir: Path, eos_ids: list[int], save_dtype: str) -> None:
    import torch

    if getattr(model, "hf_quantizer", None) is not None:
        _make_trainable(model)
    dtype = getattr(torch, save_dtype)
    model.to(dtype)
    model.config.use_cache = True
    gc = model.generation_config
    gc.eos_token_id = list(eos_ids)
    if gc.pad_token_id is None:
        gc.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[-1]
    model.config.eos_token_id = eos_ids[0]
    model.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)


# ---------------------------------------------------------------------------------------------
# Progress (rich, like the rest of ilf; replaces the Trainer's tqdm bar)


def _rich_progress_callback():
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from transformers import TrainerCallback

    class RichProgress(TrainerCallback):
        def __init__(self):
            self.progress = None
            self.task = None
            self.t0 = 0.0
            self.step0 = 0

        def on_train_begin(self, args, state, control, **kw):
            if not state.is_world_process_zero:
                return
            from ilf.progress import LogProgress

            self.progress = LogProgress(
                TextColumn("[bold]fine-tuning"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("steps"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
            )
            self.progress.start()
            self.t0, self.step0 = time.time(), state.global_step
            self.task = self.progress.add_task("fine-tuning (steps)", total=state.max_steps, completed=state.global_step, info="")

        def on_step_end(self, args, state, control, **kw):
            if self.progress is None:
                return
            done = state.global_step - self.step0
            rate = done / max(time.time() - self.t0, 1e-9)
            info = self.progress.tasks[0].fields.get("info", "")
            info = re.sub(r"^[\d.]+ s/step ?", "", info)
            self.progress.update(self.task, completed=state.global_step, info=f"{1 / rate:.1f} s/step {info}" if rate else info)

        def on_log(self, args, state, control, logs=None, **kw):
            if self.progress is None or not logs or "loss" not in logs:
                return
            self.progress.update(self.task, info=f"loss {logs['loss']:.4f} lr {logs.get('learning_rate', 0):.2e}")

        def on_train_end(self, args, state, control, **kw):
            if self.progress is not None:
                self.progress.update(self.task, completed=state.global_step)
                self.progress.stop()
                self.progress = None

    return RichProgress()


# ---------------------------------------------------------------------------------------------
# Checkpoints and run identity


def last_complete_checkpoint(ckpt_dir: Path) -> Optional[Path]:
    """The newest `checkpoint-N` whose trainer_state.json exists (the Trainer writes it last, so a
    run killed while saving leaves an incomplete folder that is ignored)."""
    if not ckpt_dir.is_dir():
        return None
    best = None
    for d in ckpt_dir.iterdir():
        m = re.fullmatch(r"checkpoint-(\d+)", d.name)
        if m and (d / "trainer_state.json").exists():
            if best is None or int(m.group(1)) > best[0]:
                best = (int(m.group(1)), d)
    return best[1] if best else None


# Fields that do not change what is trained: a run may resume or be skipped across changes of these.

# The Trainer's logging integrations ilf documents, and the module each needs.
LOGGERS = {"tensorboard": "tensorboard", "wandb": "wandb"}


def _check_loggers(report_to: list[str]) -> None:
    """One line before any training for a logger that is unknown or not installed (transformers
    would fail later, or log nowhere)."""
    import importlib.util

    for name in report_to:
        if name not in LOGGERS:
            raise IlfError(f"finetune.report_to: {name!r} is not one of {', '.join(LOGGERS)} or none")
        if importlib.util.find_spec(LOGGERS[name]) is None:
            raise IlfError(f"finetune.report_to = {name!r} needs the {LOGGERS[name]} package: pip install 'ilf[{name}]'")


# replay_from: a path; what replay drew from is in the data fingerprint.
_NON_IDENTITY_FIELDS = {
    "threads",
    "logging_steps",
    "report_to",
    "save_steps",
    "save_total_limit",
    "keep_checkpoints",
    "resume",
    "replay_from",
}


def _identity(cfg: FinetuneConfig, data_fp: str, base: str) -> dict[str, Any]:
    c = {k: v for k, v in cfg.keyed().items() if k not in _NON_IDENTITY_FIELDS}
    return {"base_model": base, "data_fingerprint": data_fp, "config": c}


def _dpo_encoded(pair: Pair, tokenizer) -> Encoded:
    """A preference pair's counts for the model's metadata (the trainer tokenizes it itself)."""
    prompt, target = _ids(tokenizer, pair.prompt), _ids(tokenizer, pair.completion)
    return Encoded(input_ids=prompt + target, completion_mask=[0] * len(prompt) + [1] * len(target), num_target_tokens=len(target))


def replay_pairs(results: str | os.PathLike, pairs: Sequence[Pair], share: float, seed: int) -> tuple[list[Pair], dict[str, Any]]:
    """Replay: π_θ's own passing programs (one per task, seeded) on tasks `pairs` does not train on,
    as many as make them `share` of the training set. Returns the pairs and what a report needs:
    how many, and the mean length of π_θ's samples in `results` (the length the targets should keep)."""
    import random

    from ilf.text import body_after_prompt

    path = Path(results)
    taken = {str(p.task_id) for p in pairs}
    passing: dict[str, list[dict]] = {}
    lengths = []
    for line, rec in read_jsonl(path):
        if isinstance(rec.get("num_tokens"), int):
            lengths.append(rec["num_tokens"])
        if rec.get("passed") is True and str(rec.get("task_id")) not in taken:
            require(rec, "prompt", str, path, line)
            require(rec, "program", str, path, line)
            passing.setdefault(str(rec["task_id"]), []).append(rec)
    want = round(share / (1 - share) * len(pairs))
    rng = random.Random(f"{seed}:replay")
    chosen = rng.sample(sorted(passing), min(want, len(passing)))
    out = []
    for tid in chosen:
        rec = min(passing[tid], key=lambda r: str(r.get("sample_id")))
        body = body_after_prompt(rec["program"], rec["prompt"])
        out.append(Pair(prompt=rec["prompt"], completion=body, task_id=rec["task_id"], source=f"replay:{path}"))
    info = {"from": str(path), "wanted": want, "pairs": len(out), "model_tokens_mean": sum(lengths) / len(lengths) if lengths else None}
    return out, info


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _destroy_process_group() -> None:
    """Registered at exit under torchrun: a rank that exits with its process group alive can abort in
    C++ ("terminate called without an active exception", exit -6: seen once in CI on the 2-process
    test, after the model was written)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("ilf", "torch", "transformers", "trl", "peft", "accelerate"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


# ---------------------------------------------------------------------------------------------
# FINETUNE


def _refuse_foreign_output(output_dir: Path, overwrite: bool) -> None:
    """A directory that holds files ilf did not write is not ours to write into."""
    if overwrite or not output_dir.exists():
        return
    if not output_dir.is_dir():
        raise IlfError(f"{output_dir}: exists and is not a directory; choose another --output")
    own = _OWN_FILES | {META_FILE}
    if any(p.name not in own for p in output_dir.iterdir()) and not (output_dir / META_FILE).exists():
        raise IlfError(f"{output_dir}: directory exists and is not an ilf fine-tuning output; choose another --output")


def _training_pairs(pairs, cfg: FinetuneConfig, console) -> tuple[list[Pair], dict[str, Any]]:
    """The pairs to train on: a seeded subset (max_pairs), checked against the objective, plus replay."""
    data_list = load_pairs(pairs)
    if cfg.max_pairs and cfg.max_pairs < len(data_list):
        import random

        keep = sorted(random.Random(f"{cfg.seed}:pairs").sample(range(len(data_list)), cfg.max_pairs))
        data_list = [data_list[i] for i in keep]
    dpo = cfg.objective == "dpo"
    missing = next((p for p in data_list if (p.rejected is None) == dpo), None)
    if missing is not None:
        want = "preference pairs (prompt, chosen, rejected)" if dpo else "prompt/completion pairs"
        raise IlfError(f"{missing.source or 'pairs'}: objective {cfg.objective} trains on {want}")
    if dpo and cfg.replay:
        raise IlfError("finetune.replay goes with objective sft (replay adds completions, not preferences)")
    replay_info: dict[str, Any] = {}
    if cfg.replay:
        if not cfg.replay_from:
            raise IlfError("finetune.replay needs finetune.replay_from: a results JSONL of π_θ's samples (`ilf evaluate`)")
        extra, replay_info = replay_pairs(cfg.replay_from, data_list, cfg.replay, cfg.seed)
        if len(extra) < replay_info["wanted"]:
            console.print(
                f"[yellow]replay[/]: {cfg.replay_from} has passing programs on {len(extra)} other tasks, "
                f"fewer than the {replay_info['wanted']} that make {cfg.replay:.0%} of the training set"
            )
        data_list = data_list + extra
    return data_list, replay_info


def _already_done(output_dir: Path, ident: dict[str, Any], cfg: FinetuneConfig, overwrite: bool) -> bool:
    """True when OUTPUT holds this exact run. Otherwise clears what may not be resumed (another run's
    model or checkpoints, with --overwrite or --no-resume) and refuses a foreign OUTPUT."""
    meta_path = output_dir / META_FILE
    ckpt_dir = output_dir / CHECKPOINT_SUBDIR
    run_marker = ckpt_dir / "ilf_run.json"
    if meta_path.exists():
        same_run = json.loads(meta_path.read_text(encoding="utf-8")).get("identity") == ident
        if same_run and not overwrite:
            # Done, unless its weights were deleted (to save disk once sampled): then it trains again.
            return any(output_dir.glob("*.safetensors"))
        if not overwrite:
            raise IlfError(
                f"{output_dir}: holds a model fine-tuned with another base model, data or config; "
                "choose another --output or pass --overwrite"
            )
        meta_path.unlink()
    if ckpt_dir.exists():
        same = run_marker.exists() and json.loads(run_marker.read_text(encoding="utf-8")) == ident
        if not cfg.resume or overwrite or not same:
            if not same and cfg.resume and not overwrite and last_complete_checkpoint(ckpt_dir):
                raise IlfError(
                    f"{ckpt_dir}: checkpoints of a run with another base model, data or config; "
                    "pass --overwrite (or --no-resume) to start over"
                )
            shutil.rmtree(ckpt_dir)
    else:
        _refuse_foreign_output(output_dir, overwrite)
    return False


def _training_args(cfg: FinetuneConfig, ckpt_dir: Path, *, bf16: bool, accum: int, dpo: bool, has_eval: bool):
    """TRL's SFTConfig (or DPOConfig) from one FinetuneConfig."""
    import torch
    from trl import DPOConfig, SFTConfig

    if cfg.save_steps < 0:
        save_kw: dict[str, Any] = {"save_strategy": "no"}
    elif cfg.save_steps == 0:
        save_kw = {"save_strategy": "epoch"}
    else:
        save_kw = {"save_strategy": "steps", "save_steps": cfg.save_steps}
    report_to = [] if cfg.report_to in ("none", "") else [r.strip() for r in cfg.report_to.split(",")]
    _check_loggers(report_to)
    eval_kw: dict[str, Any] = {"eval_strategy": "no"}
    if has_eval:
        eval_kw = {"eval_strategy": "steps", "eval_steps": cfg.eval_steps} if cfg.eval_steps > 0 else {"eval_strategy": "epoch"}
    if dpo:  # DPO + an SFT term on the chosen program (RPO), which keeps outputs from shrinking
        objective_kw: dict[str, Any] = {
            "beta": cfg.dpo_beta,
            "loss_type": ["sigmoid", "sft"] if cfg.dpo_sft_weight else ["sigmoid"],
            "loss_weights": [1.0, cfg.dpo_sft_weight] if cfg.dpo_sft_weight else [1.0],
        }
    else:
        objective_kw = {"completion_only_loss": True}
    return (DPOConfig if dpo else SFTConfig)(
        output_dir=str(ckpt_dir),
        learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.per_device_batch_size,
        gradient_accumulation_steps=accum,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=int(cfg.warmup) if cfg.warmup >= 1 else cfg.warmup,
        weight_decay=cfg.weight_decay,
        optim=cfg.optim,
        max_grad_norm=cfg.max_grad_norm,
        bf16=bf16,
        fp16=False,
        seed=cfg.seed,
        data_seed=cfg.seed,
        logging_steps=cfg.logging_steps,
        report_to=report_to,
        save_total_limit=cfg.save_total_limit,
        max_length=cfg.max_length,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        # Several CPU processes (torchrun on a machine without GPUs) talk over gloo.
        ddp_backend="gloo" if _world_size() > 1 and not torch.cuda.is_available() else None,
        use_cpu=not torch.cuda.is_available(),  # else the Trainer refuses bf16 autocast on a CPU
        disable_tqdm=True,
        **save_kw,
        **eval_kw,
        **objective_kw,
        **{_checkpointing_arg(): cfg.gradient_checkpointing},
    )


def _save_model(trainer, tokenizer, base_spec, output_dir: Path, eos_ids: list[int], cfg: FinetuneConfig) -> None:
    """The trained model as a plain Hugging Face directory (LoRA merged), on the main process."""
    if cfg.lora and _world_size() == 1:
        final = trainer.model.merge_and_unload()
        if _is_main_process():
            _save_final(final, tokenizer, output_dir, eos_ids, cfg.save_dtype)
    elif cfg.lora:
        adapter_dir = output_dir / "adapter"
        trainer.save_model(str(adapter_dir))  # distributed-safe; merged below on the main process
        if _is_main_process():
            from peft import PeftModel

            base, _, _ = _load_base(base_spec)
            final = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
            _save_final(final, tokenizer, output_dir, eos_ids, cfg.save_dtype)
    else:
        if _world_size() == 1:
            _save_final(trainer.model, tokenizer, output_dir, eos_ids, cfg.save_dtype)
        else:  # FSDP/ZeRO-3 gather the full state dict inside save_model
            trainer.save_model(str(output_dir))
            if _is_main_process():
                tokenizer.save_pretrained(output_dir)
                _fix_generation_config(output_dir, eos_ids)


def finetune(
    pairs: str | os.PathLike | Iterable[dict] | Iterable[Pair],
    model: str | os.PathLike,
    output_dir: str | os.PathLike,
    config: FinetuneConfig | None = None,
    *,
    overwrite: bool = False,
    eval_pairs: str | os.PathLike | Iterable[dict] | None = None,
    callbacks: Sequence[Any] = (),
    console=None,
) -> Path:
    """Fine-tune `model` (any ilf model spec) on prompt/completion `pairs`; return the model directory.

    eval_pairs: held-out pairs whose loss (target only) is logged every `eval_steps` (0 = each epoch).

    Resumes from the last complete checkpoint in OUTPUT/checkpoints; returns at once when OUTPUT
    already holds this exact run (same base model, data and training config).
    """
    from rich.console import Console

    console = console or Console(stderr=True)
    cfg = config or FinetuneConfig()
    check(cfg)  # a config changed after it was built is checked again
    output_dir = Path(output_dir)
    data_list, replay_info = _training_pairs(pairs, cfg, console)
    dpo = cfg.objective == "dpo"
    data_fp = fingerprint(data_list)
    eval_list = load_pairs(eval_pairs) if eval_pairs is not None else []
    ident = _identity(cfg, data_fp, str(model))
    if eval_list:
        ident["eval_fingerprint"] = fingerprint(eval_list)
    meta_path = output_dir / META_FILE
    ckpt_dir = output_dir / CHECKPOINT_SUBDIR

    if _already_done(output_dir, ident, cfg, overwrite):
        console.print(f"[green]{output_dir}[/]: already fine-tuned on this data with this config; skipping")
        return output_dir
    run_marker = ckpt_dir / "ilf_run.json"

    import torch

    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    t_load = time.time()
    with console.status(f"loading {model} ..."):
        hf_model, tokenizer, base_desc = _load_base(model)
    load_s = time.time() - t_load
    eos_ids = end_token_ids(tokenizer, hf_model)
    train_eos = training_eos_id(tokenizer, eos_ids)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(train_eos)

    if dpo:  # TRL's DPOTrainer tokenizes prompt/chosen/rejected itself (max_length keeps the start)
        encoded = [_dpo_encoded(p, tokenizer) for p in data_list]
        skipped, trunc_counts = [], {"old_code": 0, "prompt_start": 0}
    else:
        encoded, skipped, trunc_counts = encode_pairs(data_list, tokenizer, cfg.max_length, train_eos)
    for s in skipped:
        console.print(f"[yellow]skipped[/] {s.source or f'pair {s.index}'} (task {s.task_id}): {s.reason}", highlight=False)
    if trunc_counts["old_code"] or trunc_counts["prompt_start"]:
        console.print(
            f"truncated prompts to fit max_length={cfg.max_length}: {trunc_counts['old_code']} in OLD CODE, "
            f"{trunc_counts['prompt_start']} from the start (targets are never truncated)"
        )
    if not encoded:
        raise IlfError(f"no trainable pair left: all {len(data_list)} were skipped (see the reasons above)")

    from datasets import Dataset
    from trl import DPOTrainer, SFTTrainer

    def to_dataset(examples: list[Encoded]) -> Dataset:
        return Dataset.from_dict({"input_ids": [e.input_ids for e in examples], "completion_mask": [e.completion_mask for e in examples]})

    if dpo:
        columns = {"prompt": [p.prompt for p in data_list], "chosen": [p.completion for p in data_list]}
        dataset = Dataset.from_dict(columns | {"rejected": [p.rejected for p in data_list]})
    else:
        dataset = to_dataset(encoded)
    eval_dataset = None
    if eval_list and dpo:
        raise IlfError("held-out pairs (eval_pairs) go with objective sft")
    if eval_list:
        eval_encoded, eval_skipped, _ = encode_pairs(eval_list, tokenizer, cfg.max_length, train_eos)
        for s in eval_skipped:
            console.print(f"[yellow]skipped eval pair[/] {s.source}: {s.reason}", highlight=False)
        eval_dataset = to_dataset(eval_encoded) if eval_encoded else None
    bf16 = _use_bf16(cfg.bf16, console)
    accum = max(1, math.ceil(cfg.batch_size / (cfg.per_device_batch_size * _world_size())))
    effective_batch = accum * cfg.per_device_batch_size * _world_size()
    args = _training_args(cfg, ckpt_dir, bf16=bf16, accum=accum, dpo=dpo, has_eval=eval_dataset is not None)
    peft_config = None
    if cfg.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=list(cfg.lora_target_modules),
            task_type="CAUSAL_LM",
        )
    old_tb = os.environ.get("TENSORBOARD_LOGGING_DIR")
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(output_dir / "runs")  # outlives the deleted checkpoints
    try:
        trainer = (DPOTrainer if dpo else SFTTrainer)(
            model=hf_model,
            args=args,
            train_dataset=dataset,
            eval_dataset=eval_dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=list(callbacks),
        )
        if _world_size() > 1:
            atexit.unregister(_destroy_process_group)  # once, however many runs this process makes
            atexit.register(_destroy_process_group)
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        trainer.remove_callback(ProgressCallback)
        trainer.remove_callback(PrinterCallback)
        trainer.add_callback(_rich_progress_callback())
        if _is_main_process():
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            write_json(run_marker, ident)
        resume_from = last_complete_checkpoint(ckpt_dir) if cfg.resume else None
        resumed_step = 0
        if resume_from is not None:
            resumed_step = json.loads((resume_from / "trainer_state.json").read_text())["global_step"]
            console.print(f"resuming from {resume_from} (step {resumed_step})")
        t0 = time.time()
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        train_s = time.time() - t0
    finally:
        if old_tb is None:
            os.environ.pop("TENSORBOARD_LOGGING_DIR", None)
        else:
            os.environ["TENSORBOARD_LOGGING_DIR"] = old_tb

    state = trainer.state
    tokens_per_epoch = sum(e.num_target_tokens for e in encoded)
    steps_per_epoch = math.ceil(len(encoded) / (cfg.per_device_batch_size * _world_size()) / accum)
    start_epoch = resumed_step / max(steps_per_epoch, 1)
    target_tokens = tokens_per_epoch * max(state.epoch - start_epoch, 0.0)

    # Save: merge LoRA into the base weights so every engine loads a plain model directory.
    t_save = time.time()
    _save_model(trainer, tokenizer, model, output_dir, eos_ids, cfg)
    save_s = time.time() - t_save

    if not _is_main_process():
        return output_dir
    metrics = {
        "train_loss": result.training_loss,
        "eval_loss": next((h["eval_loss"] for h in reversed(state.log_history) if "eval_loss" in h), None),
        "global_step": state.global_step,
        "resumed_from_step": resumed_step,
        "epochs": state.epoch,
        "effective_batch_size": effective_batch,
        "bf16": bf16,
        "gradient_accumulation_steps": accum,
        "train_seconds": round(train_s, 2),
        "load_seconds": round(load_s, 2),
        "save_seconds": round(save_s, 2),
        "target_tokens": int(target_tokens),
        "target_tokens_per_second": round(target_tokens / train_s, 2) if train_s > 0 else None,
        "seconds_per_step": round(train_s / max(state.global_step - resumed_step, 1), 3),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "log_history": state.log_history,
    }
    meta = {
        "identity": ident,
        "config": asdict(cfg),
        "base_model": base_desc,
        "data": {
            "source": str(pairs) if isinstance(pairs, (str, os.PathLike)) else "<records>",
            "fingerprint": data_fp,
            "num_pairs": len(data_list),
            "num_trained": len(encoded),
            "num_skipped": len(skipped),
            "skipped": [asdict(s) for s in skipped],
            "truncated": trunc_counts,
            "target_tokens_per_epoch": tokens_per_epoch,
            # Targets' length against the model's own (replay keeps them close): mean completion tokens.
            "target_tokens_mean": round(tokens_per_epoch / max(len(encoded), 1), 1),
            **({"replay": replay_info} if replay_info else {}),
        },
        "eos_token_ids": eos_ids,
        "training_eos_token_id": train_eos,
        "metrics": metrics,
        "versions": _versions(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json(meta_path, meta)  # written last: its presence marks a complete model directory
    if not cfg.keep_checkpoints:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    console.print(
        f"[green]fine-tuned[/] {len(encoded)} pairs ({len(skipped)} skipped), {state.global_step} steps, "
        f"loss {result.training_loss:.4f}, {metrics['target_tokens_per_second']} target tokens/s, "
        f"peak RSS {metrics['peak_rss_mb'] / 1024:.1f} GiB -> {output_dir}"
    )
    return output_dir


def _die_with_parent() -> None:
    """In the FINETUNE child: end with the pipeline process (Linux), so that a killed `ilf run` leaves no
    orphan training into the model directory its resumed run will train into."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def finetune_in_child(
    pairs: str | os.PathLike | Iterable[dict] | Iterable[Pair],
    model: str | os.PathLike,
    output_dir: str | os.PathLike,
    config: FinetuneConfig | None = None,
    **kwargs: Any,
) -> Path:
    """`finetune()` in a fresh child process, as `ilf run` calls it. Full fine-tuning's peak (weights,
    gradients, AdamW state, activations: several GiB for the 0.5B model) stays with the Python heap
    of the process that trained, so a pipeline that trains several models and then loads others (an
    LLM, an engine conversion) in one process grows until the kernel ends it. A child returns it all
    on exit. Errors raise here as they would in-process."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    pairs = pairs if isinstance(pairs, (str, os.PathLike)) else list(pairs)
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: nothing of the parent's heap
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx, initializer=_die_with_parent) as pool:
        try:
            return pool.submit(finetune, pairs, model, output_dir, config, **kwargs).result()
        except BrokenProcessPool:
            raise IlfError(
                f"FINETUNE -> {output_dir}: its process ended without a result (killed; out of memory? "
                "`dmesg` says). Rerun the same command: it resumes from the last checkpoint."
            ) from None


def accelerate_config(name: str) -> Path:
    """Path of a shipped `accelerate launch --config_file` (ddp | fsdp | deepspeed_zero3); docs/gpus.md."""
    p = Path(__file__).parent / "accelerate_configs" / f"{name}.yaml"
    if not p.exists():
        raise IlfError(f"no accelerate config {name!r}; shipped: ddp, fsdp, deepspeed_zero3")
    return p


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX-BF16 in /proc/cpuinfo. Without them torch emulates bf16 matmuls, which
    measured several times slower than float32 (docs/finetune.md)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _use_bf16(requested: bool, console) -> bool:
    """bf16 autocast where the hardware has it natively: CUDA with bf16, or a CPU with bf16 instructions."""
    import torch

    if not requested:
        return False
    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    if cpu_has_native_bf16():
        return True
    console.print("[dim]bf16: this CPU has no AVX512-BF16/AMX, so FINETUNE runs in float32 (docs/finetune.md)[/]")
    return False


def _checkpointing_arg() -> str:
    """transformers 5.x renamed gradient_checkpointing to activation_checkpointing."""
    from trl import SFTConfig

    names = {f.name for f in dataclasses.fields(SFTConfig)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


def _fix_generation_config(model_dir: Path, eos_ids: list[int]) -> None:
    from transformers import GenerationConfig

    try:
        gc = GenerationConfig.from_pretrained(model_dir)
    except OSError:
        gc = GenerationConfig()
    gc.eos_token_id = list(eos_ids)
    gc.save_pretrained(model_dir)


# ---------------------------------------------------------------------------------------------
# The `ilf finetune` command (cli.py builds its flags from FinetuneConfig and SweepConfig)

ANNOTATION_DATA = ("surge", "authors")  # --data values meaning the authors' annotation file
