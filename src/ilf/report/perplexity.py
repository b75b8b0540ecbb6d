"""Perplexity of training-data sources under the base model (the paper's Figure 3 input): the pipeline's
one step of the report that loads a model."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from ilf.errors import IlfError
from ilf.jsonl import Appender, read_jsonl, require, write_jsonl
from ilf.report.analysis import tid_text

# Batch of 8 MBPP programs fits comfortably in memory with the 0.5B model; logits are kept only for
# the completion positions (the vocabulary is 152k wide).
PERPLEXITY_BATCH_SIZE = 8
# float32: chosen with benchmarks/bench_perplexity.py (docs/report.md).
PERPLEXITY_DTYPE = "float32"
# Longer inputs keep their last PERPLEXITY_MAX_LENGTH tokens: the prompt is cut, never the completion's end.
PERPLEXITY_MAX_LENGTH = 2048

# ---------------------------------------------------------------------------------------------
# Perplexity (Figure 3 input)


def _validate_sources(sources: dict[str, list[dict]]) -> None:
    if not isinstance(sources, dict):
        raise IlfError("compute_perplexities: sources must be a dict {source name: [records]}")
    for name, recs in sources.items():
        for i, rec in enumerate(recs):
            where = f"perplexity source '{name}' record {i}"
            if not isinstance(rec, dict):
                raise IlfError(f"{where}: expected an object with prompt, completion, task_id")
            for field, types in (("prompt", str), ("completion", str), ("task_id", (str, int))):
                if field not in rec:
                    raise IlfError(f"{where}: missing field '{field}'")
                if not isinstance(rec[field], types):
                    raise IlfError(f"{where}: field '{field}' has type {type(rec[field]).__name__}")


def _record_keys(sources: dict[str, list[dict]]) -> list[tuple[str, str, int, dict]]:
    """(source, task_id, occurrence, record): occurrence tells apart two records of one task in one source."""
    out = []
    for name, recs in sources.items():
        seen: dict[str, int] = {}
        for rec in recs:
            t = tid_text(rec["task_id"])
            occ = seen.get(t, 0)
            seen[t] = occ + 1
            out.append((name, t, occ, rec))
    return out


def completion_token_ids(tokenizer, prompt: str, completion: str) -> tuple[list[int], int]:
    """(input ids of prompt + completion, index of the first completion token).

    As TRL's prompt-completion SFT: the prompt and the whole text are tokenized separately; tokens past
    the prompt's shared prefix are the completion (a token merging across the boundary counts as
    completion, so no completion character goes unscored)."""
    p = tokenizer(prompt)["input_ids"]
    full = tokenizer(prompt + completion)["input_ids"]
    start = 0
    while start < min(len(p), len(full)) and p[start] == full[start]:
        start += 1
    return list(full), start


def compute_perplexities(
    model_spec: Any,
    sources: dict[str, list[dict]],
    output: str | os.PathLike,
    *,
    batch_size: int = PERPLEXITY_BATCH_SIZE,
    dtype: str = PERPLEXITY_DTYPE,
    max_length: int = PERPLEXITY_MAX_LENGTH,
    progress: bool = True,
) -> Path:
    """Completion-only perplexity of every record under `model_spec`; writes `output` (perplexity.jsonl).

    sources: {"gold": [{"prompt", "completion", "task_id"}, ...], "ilf": [...], ...}. Output records:
    source, task_id, index (occurrence of the task within the source), perplexity = exp(mean NLL of the
    completion tokens), nll, num_tokens, model, dtype. Resumable: records already in `output` are kept;
    the finished file is rewritten atomically in the sources' order.
    """
    _validate_sources(sources)
    if batch_size < 1:
        raise IlfError(f"compute_perplexities: batch_size must be >= 1, got {batch_size}")
    output = Path(output)
    model_name = str(model_spec) if model_spec else "default"
    done: dict[tuple[str, str, int], dict] = {}
    if output.exists():
        for line, rec in read_jsonl(output, allow_torn_tail=True):
            key = (
                require(rec, "source", str, output, line),
                tid_text(require(rec, "task_id", (str, int), output, line)),
                require(rec, "index", int, output, line),
            )
            if rec.get("model") != model_name:
                raise IlfError(
                    f"{output}:{line}: field 'model' is {rec.get('model')!r}, not {model_name!r}; "
                    "delete the file to recompute under the new model"
                )
            done[key] = rec
    keyed = _record_keys(sources)
    todo = [(s, t, o, r) for s, t, o, r in keyed if (s, t, o) not in done]
    if todo:
        for rec in _score(model_spec, model_name, todo, output, batch_size, dtype, max_length, progress):
            done[(rec["source"], tid_text(rec["task_id"]), rec["index"])] = rec
    write_jsonl(output, [done[(s, t, o)] for s, t, o, _ in keyed if (s, t, o) in done])
    return output


def _score(model_spec, model_name, todo, output: Path, batch_size, dtype, max_length, progress):
    import torch
    import torch.nn.functional as F
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from ilf.models import load_hf_model
    from ilf.progress import LogProgress

    model, tok = load_hf_model(model_spec, dtype=dtype)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0

    items = []
    for s, _t, o, rec in todo:
        ids, start = completion_token_ids(tok, rec["prompt"], rec["completion"])
        if len(ids) > max_length:  # keep the end: the prompt loses its beginning, the completion stays whole
            cut = len(ids) - max_length
            ids, start = ids[cut:], max(1, start - cut)
        start = max(start, 1)  # the first token has no prediction
        items.append((s, rec["task_id"], o, ids, start))
    # Longest first: similar lengths share a batch (less padding); the slowest batches show up early.
    order = sorted(range(len(items)), key=lambda i: -len(items[i][3]))

    columns = [
        TextColumn("perplexity"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Appender(output) as app, torch.no_grad(), LogProgress(*columns, console=Console(stderr=True), disable=not progress) as bar:
        task = bar.add_task("perplexity (records)", total=len(items), rate="")
        import time

        t0 = time.perf_counter()
        ndone = 0
        for b in range(0, len(order), batch_size):
            batch = [items[i] for i in order[b : b + batch_size]]
            T = max(len(x[3]) for x in batch)
            ncomp = [len(x[3]) - x[4] for x in batch]
            keep = max(ncomp) + 1  # logits only at the positions that predict a completion token
            ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), T), dtype=torch.long)
            for r, x in enumerate(batch):  # left padding: every row's completion ends at column T-1
                ids[r, T - len(x[3]) :] = torch.tensor(x[3])
                mask[r, T - len(x[3]) :] = 1
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            try:
                logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=keep).logits
            except TypeError:  # architectures without logits_to_keep
                logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -keep:]
            for r, x in enumerate(batch):
                s, t, o, _, _ = x
                m = ncomp[r]
                if m <= 0:
                    nll, ppl = None, None
                else:
                    lg = logits[r, keep - 1 - m : keep - 1].float()
                    target = ids[r, T - m :]
                    nll = float(F.cross_entropy(lg, target, reduction="mean"))
                    ppl = math.exp(nll)
                rec = {
                    "source": s,
                    "task_id": t,
                    "index": o,
                    "perplexity": ppl,
                    "nll": nll,
                    "num_tokens": max(m, 0),
                    "model": model_name,
                    "dtype": dtype,
                }
                app.write(rec)
                yield rec
            ndone += len(batch)
            bar.update(task, advance=len(batch), rate=f"{ndone / (time.perf_counter() - t0):.2f} programs/s")
