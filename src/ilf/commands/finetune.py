"""`ilf finetune`: fine-tune on a pairs file or the authors' annotations, once, or once per setting
of a sweep grid with OUTPUT becoming the best model on validation tasks (ilf.sweep)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional

from ilf.config import FinetuneConfig
from ilf.errors import IlfError
from ilf.finetune import ANNOTATION_DATA, META_FILE, PAIRS_FILE, _refuse_foreign_output, finetune
from ilf.jsonl import load_jsonl, write_json, write_jsonl


def finetune_command(
    data: str,
    model: str,
    output: Path,
    cfg: FinetuneConfig,
    *,
    split: str = "refine",
    kind: str = "refine",
    data_dir: Optional[Path] = None,
    overwrite: bool = False,
    eval_data: Optional[str] = None,
    sweep_cfg: Any = None,
    val_dataset: str = "mbpp",
    engine: Optional[str] = None,
    weights: str = "f16",
) -> Path:
    """Fine-tune on a pairs file or the authors' annotations; with a sweep grid, fine-tune once per
    setting first and make OUTPUT the model of the best validation pass rate (ilf.sweep)."""
    from ilf.annotations import is_authors_file

    if data.lower() in ANNOTATION_DATA or (Path(data).is_file() and is_authors_file(data)):
        from ilf.pairs import annotation_pairs

        path = None if data.lower() in ANNOTATION_DATA else data
        built = annotation_pairs(path, split=split, kind=kind, data_dir=data_dir)
        _refuse_foreign_output(Path(output), overwrite)  # before anything is written into it
        pairs = write_jsonl(Path(output) / PAIRS_FILE, built)
    else:
        if not Path(data).exists():
            raise IlfError(f"{data}: file not found (or pass --data surge for the authors' annotations)")
        pairs = Path(data)
    if sweep_cfg is None or not sweep_cfg.enabled():
        return finetune(pairs, model, output, cfg, overwrite=overwrite, eval_pairs=eval_data)
    from ilf.generation import get_engine, resolve_engine
    from ilf.generation.weights import engine_label
    from ilf.sweep import sweep
    from ilf.tasks import load_tasks

    _refuse_foreign_output(Path(output), overwrite)
    name = resolve_engine(engine)
    val = load_tasks(val_dataset, data_dir=data_dir, task_ids=sweep_cfg.tasks)
    best = sweep(
        pairs,
        model,
        Path(output) / "sweep",
        val,
        cfg,
        sweep_cfg,
        engine=lambda m: get_engine(name, m, weights=weights),
        engine_name=engine_label(name, weights),
        seed=cfg.seed,
        keep_best=True,
    )
    best_dir = Path(best["model_dir"])
    for f in best_dir.iterdir():  # OUTPUT becomes the best model (hard links: no extra disk)
        if f.is_file():
            dst = Path(output) / f.name
            dst.unlink(missing_ok=True)
            try:
                os.link(f, dst)
            except OSError:
                shutil.copy2(f, dst)
    meta = json.loads((Path(output) / META_FILE).read_text(encoding="utf-8"))
    meta["sweep"] = {"best": best, "table": load_jsonl(Path(output) / "sweep" / "table.jsonl")}
    write_json(Path(output) / META_FILE, meta)
    return Path(output)
