"""Progress for long steps: rich bars on a terminal, plain lines in a log.

`LogProgress` is rich's `Progress` (same columns, same calls). When its console is not a terminal
(`ilf run > log.txt 2>&1`), rich would show nothing until the end, so it prints instead one plain
line per task at most every LOG_INTERVAL seconds and when the task finishes:

    sampling (tasks): 120/664 (18%), 2.9/min, ETA 3h07m, programs 600, tok/s 81.0
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import Progress, TaskID

LOG_INTERVAL = 60.0  # seconds between plain progress lines of one task
FIELD_NAMES = {"tps": "tok/s"}  # how a bar's field is named in a plain line


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class LogProgress(Progress):
    def __init__(self, *columns: Any, console: Console | None = None, disable: bool = False, **kw: Any):
        console = console or Console(stderr=True)
        self._plain = not disable and not console.is_terminal
        self._last: dict[TaskID, float] = {}
        self._ended: set[TaskID] = set()
        super().__init__(*columns, console=console, disable=disable or self._plain, **kw)

    def update(self, task_id: TaskID, **kw: Any) -> None:
        super().update(task_id, **kw)
        if self._plain:
            self._log(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        if self._plain:
            self._log(task_id)

    def stop(self) -> None:
        if self._plain:
            for tid in list(self._tasks):
                self._log(tid, force=True)
        super().stop()

    def _log(self, tid: TaskID, force: bool = False) -> None:
        task = self._tasks[tid]
        now = time.monotonic()
        if tid in self._ended or (not force and not task.finished and now - self._last.get(tid, 0.0) < LOG_INTERVAL):
            return
        self._last[tid] = now
        if task.finished:
            self._ended.add(tid)
        done, total = task.completed, task.total
        parts = [f"{task.description}: {done:.0f}" + (f"/{total:.0f} ({100 * done / total:.0f}%)" if total else "")]
        speed = task.finished_speed or task.speed
        if speed:
            parts.append(f"{60 * speed:.1f}/min")
        if task.finished:
            parts.append(f"done in {_duration(task.finished_time or task.elapsed or 0)}")
        elif task.time_remaining is not None:
            parts.append(f"ETA {_duration(task.time_remaining)}")
        for k, v in task.fields.items():
            if v not in ("", None):
                k = FIELD_NAMES.get(k, k)
                parts.append(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}")
        self.console.print(", ".join(parts), markup=False, highlight=False, soft_wrap=True)
