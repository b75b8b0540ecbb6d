"""JSON Lines I/O: every artifact ilf reads or writes goes through here.

Reads fail with one line naming the file, the line and the field; writes are atomic
(temp file + rename) so a crash never leaves half a file behind. Appends are used only
for resumable stages (`Resumable`: one finished group at a time), and a torn last line is
ignored on read.
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from ilf.errors import IlfError


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def honour_umask(file: int | str | os.PathLike) -> None:
    """Give a file made by tempfile.mkstemp (always 0600) the mode a plain open() would: 0666 minus
    the umask. Every write-then-rename output calls it, so reports and data are readable by others."""
    os.chmod(file, 0o666 & ~_UMASK)


def _read_bytes(path: Path) -> bytes:
    """The file's bytes (decompressed for .gz), or one clear error naming the file."""
    if path.is_dir():
        raise IlfError(f"{path}: is a directory, expected a file")
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except FileNotFoundError:
        raise IlfError(f"{path}: file not found") from None
    except PermissionError:
        raise IlfError(f"{path}: permission denied") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise IlfError(f"{path}: not a valid gzip file ({e or 'truncated'})") from None
    except OSError as e:
        raise IlfError(f"{path}: cannot read ({e.strerror or e})") from None


def _decode_line(raw: bytes, path: Path, lineno: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise IlfError(f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1})") from None


def read_text(path: str | os.PathLike) -> str:
    """A UTF-8 text file (or .gz), or one clear error naming the file and, for bad bytes, the line."""
    path = Path(path)
    data = _read_bytes(path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        lineno = data.count(b"\n", 0, e.start) + 1
        start = data.rfind(b"\n", 0, e.start) + 1
        raise IlfError(f"{path}:{lineno}: not UTF-8 text (byte 0x{data[e.start]:02x} at column {e.start - start + 1})") from None


def read_json(path: str | os.PathLike) -> Any:
    """One JSON document (a manifest, a summary), or one clear error naming the file and line."""
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise IlfError(f"{path}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
    except (RecursionError, ValueError) as e:
        raise IlfError(f"{path}: invalid JSON ({'nested too deeply' if isinstance(e, RecursionError) else str(e).split(';')[0]})") from None


def parse_json(text: str, path: Any, lineno: int) -> Any:
    """json.loads with one clear error for every way a line can be bad (JSON syntax, nesting
    deeper than Python parses, a number too long to convert, a lone surrogate escape)."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise IlfError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise IlfError(f"{path}:{lineno}: JSON nested too deeply") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise IlfError(f"{path}:{lineno}: invalid JSON ({str(e).split(';')[0]})") from None
    if "\\u" in text:  # a "\ud800" escape decodes to a lone surrogate that no UTF-8 file can hold
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise IlfError(f"{path}:{lineno}: a lone UTF-16 surrogate escape (e.g. \\ud800) in a string is not text") from None
        except RecursionError:
            raise IlfError(f"{path}:{lineno}: JSON nested too deeply") from None
    return obj


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
    lines = _read_bytes(path).split(b"\n")
    last = len(lines) - (1 if lines and lines[-1] == b"" else 0)  # the line after a final newline
    for i, raw in enumerate(lines[:last], start=1):
        if not raw.strip():
            continue
        torn = allow_torn_tail and i == last and lines[-1] != b""
        try:
            rec = parse_json(_decode_line(raw, path, i), path, i)
        except IlfError:
            if torn:  # a killed append: the only line without a newline, the last one
                return
            raise
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


def check_writable(path: str | os.PathLike) -> None:
    """One clear error now, before any long work, if `path` cannot be written: a probe file is
    created and removed in its directory, or in the nearest existing one (nothing is left behind)."""
    path = Path(path)
    where = path.parent
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        if path.is_dir():
            raise IsADirectoryError(21, "is a directory")
        if not where.is_dir():
            raise NotADirectoryError(20, f"{where} is not a directory")
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".check", dir=where)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise IlfError(f"{path}: cannot write here ({e.strerror or e})") from None


@contextmanager
def atomic_open(path: str | os.PathLike, encoding: str = "utf-8", newline: str | None = None):
    """Open a temp file beside `path` for writing; on success it replaces `path` (fsynced), on any
    error it is removed. Readers see the old file or the whole new one, never half of it."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise IlfError(f"{path}: cannot write here ({e.strerror or e})") from None
    try:
        with os.fdopen(fd, "w", encoding=encoding, newline=newline) as f:
            yield f
            f.flush()
            honour_umask(f.fileno())
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
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.is_dir():
                raise IsADirectoryError(21, "is a directory")
            open(self.path, "a").close()
        except OSError as e:
            raise IlfError(f"{path}: cannot write here ({e.strerror or e})") from None
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

    def write_many(self, recs: Iterable[dict[str, Any]]) -> None:
        """Several records, one flush: a group lands whole or (killed mid-write) as a torn group."""
        self._f.write("".join(dumps(r) + "\n" for r in recs))
        self._f.flush()

    def close(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Resumable:
    """The one resumable output of ilf's long stages (sampling, π_Refine, LLM feedback, bug tags):
    records come in groups (a task's n samples, an x0's refinements, one feedback), each group is
    appended whole and flushed the moment it is finished, so a kill loses only the groups in flight.

    Opening reads back what `path` holds: `keep(line, rec)` may reject a record (written with other
    settings; it may also raise a one-line error instead), a torn last line is ignored, and a group
    that `complete(records)` does not accept (cut short by a kill) is dropped. `done` maps each key
    to its finished group, in file order. Nothing is written until the first `add`, which first
    rewrites the file without what was dropped. `finish(keys)` rewrites it atomically in that order.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        key: Callable[[dict[str, Any]], Any],
        *,
        keep: Callable[[int, dict[str, Any]], bool] | None = None,
        complete: Callable[[list[dict[str, Any]]], bool] | None = None,
    ):
        self.path = Path(path)
        self.done: dict[Any, list[dict[str, Any]]] = {}
        self._dirty = False
        self._app: Appender | None = None
        groups: dict[Any, list[dict[str, Any]]] = {}
        if self.path.exists():
            for line, rec in read_jsonl(self.path, allow_torn_tail=True):
                if keep is not None and not keep(line, rec):
                    self._dirty = True
                    continue
                groups.setdefault(key(rec), []).append(rec)
        for k, group in groups.items():
            if complete is None or complete(group):
                self.done[k] = group
            else:
                self._dirty = True

    def __contains__(self, k: Any) -> bool:
        return k in self.done

    def add(self, k: Any, records: Iterable[dict[str, Any]]) -> None:
        """Append one finished group (all its lines, then one flush)."""
        records = list(records)
        if self._app is None:
            if self._dirty:
                write_jsonl(self.path, self.records())
            self._app = Appender(self.path)
        self._app.write_many(records)
        self.done[k] = records

    def records(self, keys: Iterable[Any] | None = None) -> list[dict[str, Any]]:
        """The finished records, group by group: of `keys` in that order (None: all, file order first)."""
        return [r for k in (self.done if keys is None else keys) if k in self.done for r in self.done[k]]

    def finish(self, keys: Iterable[Any] | None = None) -> list[dict[str, Any]]:
        """Close, and rewrite the file atomically with the groups of `keys` in that order (None: all)."""
        self.close()
        recs = self.records(keys)
        write_jsonl(self.path, recs)
        return recs

    def close(self) -> None:
        if self._app is not None:
            self._app.close()
            self._app = None

    def __enter__(self) -> "Resumable":
        return self

    def __exit__(self, *exc) -> None:
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
