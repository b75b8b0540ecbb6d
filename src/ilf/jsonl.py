"""JSON Lines I/O: every artifact ilf reads or writes goes through here.

Reads fail with one line naming the file, the line and the field; writes are atomic
(temp file + rename) so a crash never leaves half a file behind. Appends are used only
for resumable stages, one complete line at a time, and a torn last line is ignored on read.
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from ilf.errors import IlfError


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def stored(path: str | os.PathLike) -> Path:
    """`path`, or its gzip-compressed copy `path.gz` when only that exists (published run
    directories keep their per-sample files compressed; every reader accepts either)."""
    path = Path(path)
    gz = path.with_name(path.name + ".gz")
    return gz if not path.exists() and path.suffix != ".gz" and gz.is_file() else path


def read_jsonl(path: str | os.PathLike, *, allow_torn_tail: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line_number, record) for each non-empty line (of `path`, or of `path.gz`, see stored()).

    allow_torn_tail: a resumable stage may have been killed mid-append; its last line can then be
    incomplete. Such a line (only the last one, only without a trailing newline) is skipped.
    """
    path = stored(path)
    if not path.exists():
        raise IlfError(f"{path}: file not found")
    with _open_text(path) as f:
        lines = f.readlines()
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if allow_torn_tail and i == len(lines) and not line.endswith("\n"):
                return
            raise IlfError(f"{path}:{i}: invalid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(rec, dict):
            raise IlfError(f"{path}:{i}: expected a JSON object, got {type(rec).__name__}")
        yield i, rec


def load_jsonl(path: str | os.PathLike, **kw) -> list[dict[str, Any]]:
    return [rec for _, rec in read_jsonl(path, **kw)]


def require(rec: dict, field: str, types: type | tuple[type, ...], path: Any, line: int) -> Any:
    """Return rec[field], or raise one clear error naming file, line and field."""
    if field not in rec:
        raise IlfError(f"{path}:{line}: missing field '{field}'")
    value = rec[field]
    if not isinstance(value, types):
        names = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
        raise IlfError(f"{path}:{line}: field '{field}' must be {names}, got {type(value).__name__}")
    return value


def dumps(rec: dict[str, Any]) -> str:
    return json.dumps(rec, ensure_ascii=False)


@contextmanager
def atomic_open(path: str | os.PathLike, encoding: str = "utf-8", newline: str | None = None):
    """Open a temp file beside `path` for writing; on success it replaces `path` (fsynced), on any
    error it is removed. Readers see the old file or the whole new one, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding=encoding, newline=newline) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> Path:
    """Write all records atomically: readers see the old file or the whole new one."""
    with atomic_open(path) as f:
        for rec in records:
            f.write(dumps(rec) + "\n")
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write one JSON document (manifests, summaries)."""
    with atomic_open(path) as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")
    return Path(path)


class Appender:
    """Append records one complete line at a time (resumable stages). Flushed per record."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A killed writer may have left a torn last line: cut it so new lines start clean.
        if self.path.exists() and self.path.stat().st_size:
            with open(self.path, "rb+") as f:
                data = f.read()
                if not data.endswith(b"\n"):
                    f.truncate(data.rfind(b"\n") + 1)
        self._f = open(self.path, "a", encoding="utf-8")

    def write(self, rec: dict[str, Any]) -> None:
        self._f.write(dumps(rec) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def refuse_overwrite(output: str | os.PathLike, *inputs: str | os.PathLike | None, flag: str = "--output") -> None:
    """One clear error if `output` is one of the command's inputs (same file, whatever the path
    spelling): an output never overwrites what the command reads."""
    out = Path(output)
    if not out.exists():
        return
    for i in inputs:
        if i is not None and Path(i).exists() and os.path.samefile(out, i):
            raise IlfError(f"{output}: {flag} is the input file {i}; choose another output path (nothing was written)")
