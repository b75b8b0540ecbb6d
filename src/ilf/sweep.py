"""The paper's FINETUNE sweep (Appendix A.1): fine-tune once per grid setting, sample the
validation tasks with each model, EVAL, and keep the setting of the best pass rate.

One implementation for `ilf finetune --sweep-...` and the pipeline's `[sweep]`. Settings are chosen
on validation tasks only (MBPP_Refine by default); the callers refuse an overlap with the training or
test tasks. Resumable: SWEEP_DIR/table.jsonl holds each measured setting, SWEEP_DIR/<setting>/ its
samples and results; a table made with other pairs, base model or settings is discarded.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from ilf.config import FinetuneConfig, SweepConfig
from ilf.errors import IlfError
from ilf.jsonl import load_jsonl, write_json, write_jsonl
from ilf.models import remove_model
from ilf.tasks import Task, TaskSet

# The paper's grid (Appendix A.1), for users who want all of it: 27 fine-tunings per method.
PAPER_LEARNING_RATES = (1e-6, 5e-6, 1e-5)
PAPER_BATCH_SIZES = (32, 64, 128)
PAPER_EPOCHS = (1.0, 2.0, 5.0)


def setting_name(lr: float, batch: int, epochs: float) -> str:
    return f"lr{lr:g}-bs{batch}-ep{epochs:g}"


def grid(train: FinetuneConfig, sw: SweepConfig) -> list[tuple[float, int, float]]:
    """The settings to try; an empty list in [sweep] keeps [finetune]'s value."""
    return list(
        itertools.product(sw.learning_rates or [train.learning_rate], sw.batch_sizes or [train.batch_size], sw.epochs or [train.epochs])
    )


def best_config(train: FinetuneConfig, best: dict[str, Any]) -> FinetuneConfig:
    return replace(train, learning_rate=best["learning_rate"], batch_size=best["batch_size"], epochs=best["epochs"])


def sweep(
    pairs: Path,
    base: str,
    sweep_dir: Path,
    val_tasks: TaskSet | Sequence[Task],
    train: FinetuneConfig,
    sw: SweepConfig,
    *,
    engine: Callable[[str], Any],
    engine_name: str,
    seed: int = 0,
    timeout: float | None = None,
    compare: str = "exact",
    keep_best: bool = False,
    console=None,
) -> dict[str, Any]:
    """Measure every setting of the grid; return the best row (ties: the earlier setting) of
    SWEEP_DIR/table.jsonl, also written to SWEEP_DIR/best.json. engine(model_dir) loads a sampling
    engine (closed here after use). keep_best: keep the best model's weights in its
    SWEEP_DIR/<setting>/model (else every model is deleted once measured: a full-FT model of the
    bundled 0.5B model is 2.4 GB)."""
    from rich.console import Console

    from ilf.evaluation import evaluate
    from ilf.finetune import finetune_in_child, load_pairs
    from ilf.sampling import sample

    console = console or Console(stderr=True)
    val = list(val_tasks)[: sw.max_tasks or None]  # the first sweep.max_tasks validation tasks
    if not val:
        raise IlfError("sweep: the validation tasks are empty")
    val_ids = {str(t.task_id) for t in val}
    overlap = sorted({str(p.task_id) for p in load_pairs(pairs) if p.task_id is not None} & val_ids)
    if overlap:
        raise IlfError(f"sweep: validation tasks also in the training pairs: {', '.join(overlap[:10])}")
    ident = {
        "base": base,
        "pairs": hashlib.sha256(Path(pairs).read_bytes()).hexdigest(),
        "finetune": train.keyed(),
        "sweep": asdict(sw),
        "val_tasks": sorted(val_ids),
        "engine": engine_name,
        "seed": seed,
    }
    ident_fp = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]
    table = sweep_dir / "table.jsonl"
    rows = {r["setting"]: r for r in load_jsonl(table)} if table.exists() else {}
    if any(r.get("fingerprint") != ident_fp for r in rows.values()):
        shutil.rmtree(sweep_dir)  # another R, base or grid: the measured settings do not apply
        rows = {}
    settings = grid(train, sw)
    order = [setting_name(*s) for s in settings]
    params = sw.params(seed)

    def best_row() -> dict[str, Any]:
        done = [rows[s] for s in order if s in rows]
        return max(done, key=lambda r: (r["pass_rate"], -order.index(r["setting"])))

    for (lr, bs, ep), name in zip(settings, order):
        if name in rows:
            continue
        sdir = sweep_dir / name
        console.print(f"[bold]sweep[/] {name}")
        # In a child process: a full fine-tuning's heap would otherwise stay with this one (docs/finetune.md).
        finetune_in_child(pairs, base, sdir / "model", replace(train, learning_rate=lr, batch_size=bs, epochs=ep), overwrite=True)
        loaded: list[Any] = []  # the engine loads only if some task still needs sampling
        try:
            sample(
                val,
                lambda sdir=sdir, loaded=loaded: loaded.append(engine(str(sdir / "model"))) or loaded[0],
                params,
                sdir / "samples.jsonl",
                resume=True,
                model_name=str(sdir / "model"),
                engine_name=engine_name,
            )
        finally:
            for e in loaded:
                e.close()
        res = evaluate(
            load_jsonl(sdir / "samples.jsonl"), val_tasks, timeout=timeout, output=sdir / "results.jsonl", progress=True, compare=compare
        )
        meta = json.loads((sdir / "model" / "ilf_finetune.json").read_text(encoding="utf-8"))
        rows[name] = {
            "setting": name,
            "learning_rate": lr,
            "batch_size": bs,
            "epochs": ep,
            "pass_rate": sum(bool(x["passed"]) for x in res) / max(1, len(res)),
            "num_samples": len(res),
            "num_tasks": len({x["task_id"] for x in res}),
            "train_loss": meta["metrics"].get("train_loss"),
            "model_dir": str(sdir / "model"),
            "fingerprint": ident_fp,
        }
        write_jsonl(table, [rows[s] for s in order if s in rows])
        console.print(
            f"sweep {name}: validation pass rate {rows[name]['pass_rate']:.3f} ({len(res)} samples, {rows[name]['num_tasks']} tasks)"
        )
        best = best_row()
        for r in rows.values():  # every measured model but the best so far (or all) goes, with its conversions
            if not keep_best or r is not best:
                remove_model(r["model_dir"])
    best = best_row()
    model_dir = sweep_dir / best["setting"] / "model"
    if keep_best and not (model_dir / "config.json").exists():
        # Measured on another machine (a run directory moved without its models): train the chosen
        # setting again rather than measuring the whole grid again.
        console.print(f"[bold]sweep[/] {best['setting']}: the best model is not on disk; training it again")
        finetune_in_child(pairs, base, model_dir, best_config(train, best), overwrite=True)
    best = dict(best, model_dir=str(model_dir))
    write_json(sweep_dir / "best.json", best)
    console.print(f"sweep: best {best['setting']} (validation pass rate {best['pass_rate']:.3f})")
    return best
