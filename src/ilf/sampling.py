"""Sample x0 ~ π_θ: n programs per task, written as sample records that `ilf evaluate` reads.

A sample record (docs/artifacts.md): task_id, sample_id, model, engine, prompt, completion (raw),
program (what EVAL runs, see ilf.extraction), num_tokens, finish_reason, seed, temperature, top_p,
top_k, max_new_tokens.

Resumable per task: the n records of a task are appended together as soon as the engine finishes
that task; a rerun keeps complete tasks and samples only the rest (a task cut short by a kill, or a
torn last line, is sampled again). Per-prompt seeds (generation/base.py) make the resumed samples
the same as an uninterrupted run's. The finished file is rewritten in task order.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from ilf.errors import IlfError
from ilf.extraction import STOP_SEQUENCES, extract_program
from ilf.generation.base import Engine, SamplingParams, params_fields
from ilf.jsonl import Resumable
from ilf.tasks import Task

# Settings that must match for records already in the output file to be reused.
RESUME_KEYS = ("model", "engine", "seed", "temperature", "top_p", "top_k", "max_new_tokens")


def _task_key(task_id: Any) -> str:
    return str(task_id)


def _settings(model: str, engine: str, params: SamplingParams) -> dict[str, Any]:
    return {"model": model, "engine": engine, **params_fields(params)}


def _check_resumable(output: Path, settings: dict[str, Any]) -> Callable[[int, dict], bool]:
    """A record already in `output` is reused only if it was sampled with the same settings; one
    sampled otherwise is an error (mixing two settings in one file would make pass@k meaningless)."""

    def keep(line: int, rec: dict) -> bool:
        for k in RESUME_KEYS:
            if k in rec and rec[k] != settings[k]:
                raise IlfError(
                    f"{output}:{line}: field '{k}' is {rec[k]!r} but this run uses {settings[k]!r}; "
                    "resume only with the same settings, or choose another --output"
                )
        if "task_id" not in rec or not isinstance(rec.get("sample_id"), int):
            raise IlfError(f"{output}:{line}: not a sample record (needs task_id and integer sample_id)")
        return True

    return keep


def make_records(task: Task, completions, params: SamplingParams, model: str, engine: str) -> list[dict]:
    recs = []
    for i, c in enumerate(completions):
        recs.append(
            {
                "task_id": task.task_id,
                "sample_id": i,
                "dataset": task.dataset,
                "model": model,
                "engine": engine,
                "prompt": task.prompt,
                "completion": c.text,
                "program": extract_program(task, c.text),
                "num_tokens": c.num_tokens,
                "finish_reason": c.finish_reason,
                **params_fields(params),
            }
        )
    return recs


def _progress():
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from ilf.progress import LogProgress

    return LogProgress(
        TextColumn("[bold]sampling[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("tasks"),
        TextColumn("{task.fields[programs]} programs"),
        TextColumn("{task.fields[tps]:.1f} tok/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )


def sample(
    tasks: Iterable[Task],
    engine: Engine | Any,
    params: SamplingParams,
    output: str | os.PathLike,
    resume: bool = True,
    model_name: Optional[str] = None,
    progress: bool = True,
    engine_name: Optional[str] = None,
) -> list[dict]:
    """Sample params.n completions per task with `engine` (an Engine, or a callable returning one,
    called only if some task still needs sampling) and write sample records to `output`.

    params.stop empty -> ilf.extraction.STOP_SEQUENCES. Returns all records, in task order."""
    tasks = list(tasks)
    output = Path(output)
    if not params.stop:
        params = replace(params, stop=list(STOP_SEQUENCES))
    eng = engine if isinstance(engine, Engine) else None
    engine_name = engine_name or getattr(eng or engine, "name", None) or "unknown"
    model = model_name or _model_name(eng)
    settings = _settings(model, engine_name, params)

    n = params.n
    out = Resumable(
        output,
        lambda r: _task_key(r["task_id"]),
        keep=_check_resumable(output, settings) if resume else (lambda line, rec: False),
        complete=lambda group: {r["sample_id"] for r in group} >= set(range(n)),
    )
    for k, group in out.done.items():  # each task's samples 0..n-1, in order
        by_id = {r["sample_id"]: r for r in group}
        out.done[k] = [by_id[i] for i in range(n)]
    old = list(out.done)  # complete tasks already in the file, in file order: all are kept
    todo = [t for t in tasks if _task_key(t.task_id) not in out]

    if todo:
        if eng is None:
            eng = engine()  # may fail: nothing has been written or removed yet
        with out:  # nothing is written before the engine's first answer
            _run(todo, eng, params, out, model, engine_name, progress, len(tasks) - len(todo), len(tasks))
        out.finish(old + [k for k in (_task_key(t.task_id) for t in todo) if k in out])
    return out.records([_task_key(t.task_id) for t in tasks])


def _model_name(eng: Any) -> str:
    resolved = getattr(eng, "resolved", None)
    return getattr(resolved, "name", None) or getattr(eng, "model_name", None) or "unknown"


def _run(todo, eng, params, out: Resumable, model, engine_name, show, already, total) -> None:
    new = 0
    start = time.perf_counter()
    tokens = 0
    prog = _progress() if show else None
    bar = prog.add_task("sampling (tasks)", total=total, completed=already, programs=0, tps=0.0) if prog else None

    def on_done(i: int, comps) -> None:
        nonlocal tokens, new
        task = todo[i]
        out.add(_task_key(task.task_id), make_records(task, comps, params, model, engine_name))
        new += 1
        tokens += sum(c.num_tokens for c in comps)
        if prog is not None:
            dt = max(time.perf_counter() - start, 1e-9)
            prog.update(bar, advance=1, programs=new * params.n, tps=tokens / dt)

    prompts = [t.prompt for t in todo]
    if prog is not None:
        with prog:
            results = eng.generate(prompts, params, progress=on_done)
    else:
        results = eng.generate(prompts, params, progress=on_done)
    for i, comps in enumerate(results):  # an engine that did not report every prompt
        if _task_key(todo[i].task_id) not in out:
            on_done(i, comps)
    record_speed(engine_name, model, new * params.n, time.perf_counter() - start)


SPEED_FILE = "speed.json"
"""Programs per second each (machine, engine, model) last sampled at, in the cache: `ilf run` uses it
to say how long its sampling will take on this machine."""


def _speed_key(engine_name: str, model: str) -> str:
    from ilf import machine

    return f"{machine.key()}|{engine_name}|{Path(str(model)).name}"


def record_speed(engine_name: str, model: str, programs: int, seconds: float) -> None:
    if programs < 20 or seconds <= 0:  # too few to say anything (and engine start-up dominates)
        return
    from ilf.jsonl import write_json
    from ilf.models import cache_dir

    path = cache_dir() / SPEED_FILE
    try:
        data = json.loads(path.read_text())
        data = data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        data = {}
    data[_speed_key(engine_name, model)] = programs / seconds
    try:
        write_json(path, data)
    except Exception:  # noqa: BLE001 - a cache that cannot be written costs only the estimate
        pass


def known_speed(engine_name: str, model: str) -> float | None:
    """Programs per second measured on this machine before, or None."""
    from ilf.models import cache_dir

    try:
        v = json.loads((cache_dir() / SPEED_FILE).read_text()).get(_speed_key(engine_name, model))
        return float(v) if v else None
    except (OSError, ValueError, AttributeError, TypeError):
        return None
