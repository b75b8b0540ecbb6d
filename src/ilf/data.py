"""The data files ilf reads: where each comes from, its sha256, and where ilf looks for it.

Like evalplus and lm-evaluation-harness, ilf gets its data itself. Each file is pinned to an
upstream URL (a commit or a release, so its bytes never change) and to a sha256 recorded here. A
file is looked for, in order:

1. `--data-dir` / `$ILF_DATA_DIR` (the user's own copy, used as given: the only place looked in),
2. `shared/data` beside the project (this project's machines),
3. the cache, `$ILF_CACHE/data` (default `~/.cache/ilf/data`),
4. a download from the pinned URL (or `$ILF_DATA_BASE_URL/<file name>`, a mirror), written to the
   cache atomically once its sha256 matches.

A file from 2-4 whose sha256 does not match is refused, never used. `ilf data` lists each file's
state; `ilf data fetch` downloads what is missing.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ilf.errors import IlfError
from ilf.jsonl import honour_umask

DATA_DIR_ENV = "ILF_DATA_DIR"
BASE_URL_ENV = "ILF_DATA_BASE_URL"  # a mirror serving the files by name: BASE/<name>
DOWNLOAD_TIMEOUT = 60.0  # seconds without a byte before a download is given up
CHUNK = 1 << 16


@dataclass(frozen=True)
class DataFile:
    key: str
    name: str
    url: str
    sha256: str
    size: int
    what: str
    license: str


FILES: dict[str, DataFile] = {
    f.key: f
    for f in (
        DataFile(
            "mbpp",
            "mbpp.jsonl",
            # google-research master; the file last changed in f82046ba (2022-03-31); the sha256 pins its bytes.
            "https://raw.githubusercontent.com/google-research/google-research/master/mbpp/mbpp.jsonl",
            "ccf64ceae9c5403bf50a044cb6d505bfd2a2963ee58338ba268fd65beab92a9f",
            563_743,
            "MBPP, Austin et al. 2021",
            "CC-BY-4.0",
        ),
        DataFile(
            "authors",
            "surge_annotations.jsonl",
            "https://raw.githubusercontent.com/nyu-mll/ILF-for-code-generation/"
            "1bbccca2934b26e2d8745e5afab65eb677cbe92a/surge_annotations.jsonl",
            "fedbfd3e2a0cfcb39497e93dae5ad996e734bbc51a9f6ecd1f49bc8cd595ecfc",
            455_215,
            "the ILF authors' 195 human annotations",
            "MIT",
        ),
        DataFile(
            "humaneval",
            "HumanEval.jsonl.gz",
            "https://raw.githubusercontent.com/openai/human-eval/6d43fb980f9fee3c892a914eda09951f772ad10d/data/HumanEval.jsonl.gz",
            "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef",
            44_877,
            "HumanEval",
            "MIT",
        ),
        DataFile(
            "humanevalplus",
            "HumanEvalPlus.jsonl.gz",
            "https://github.com/evalplus/humanevalplus_release/releases/download/v0.1.10/HumanEvalPlus.jsonl.gz",
            "272720b90ac375502c8ed23cd791c2a93dfb22a911641a494da74a426c09f101",
            925_932,
            "HumanEval+ v0.1.10, EvalPlus",
            "Apache-2.0",
        ),
    )
}


def cache_data_dir() -> Path:
    from ilf.models import cache_dir

    return cache_dir() / "data"


def shared_data_dir() -> Path | None:
    """`shared/data` beside the project (or beside the current directory), if there is one."""
    root = Path(__file__).resolve().parents[2]
    for base in (root, Path.cwd()):
        for cand in (base.parent / "shared" / "data", base / "shared" / "data"):
            if cand.is_dir():
                return cand
    return None


def user_data_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The directory the user named: --data-dir, else $ILF_DATA_DIR."""
    if data_dir:
        return Path(data_dir)
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env) if env else None


def local_copies(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Every data file present in the places locate() looks (no hashing): what no output may overwrite."""
    dirs = [d for d in (user_data_dir(data_dir), shared_data_dir(), cache_data_dir()) if d is not None]
    return [p for d in dirs for f in FILES.values() if (p := _in_dir(d, f)) is not None]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _in_dir(d: Path, f: DataFile) -> Path | None:
    p = d / f.name
    if p.is_file():
        return p
    if p.suffix == ".gz" and p.with_suffix("").is_file():  # an uncompressed copy is accepted too
        return p.with_suffix("")
    return None


def _verified(path: Path, f: DataFile) -> bool:
    # Only the exact pinned bytes are checked; an uncompressed copy of a .gz file cannot be.
    return path.name != f.name or sha256_file(path) == f.sha256


def how_to_provide(f: DataFile) -> str:
    return (
        f"{f.name} ({f.what}) not found; provide it one of three ways: --data-dir DIR or {DATA_DIR_ENV}=DIR, "
        f"`ilf data fetch` (needs the network), or a copy in {cache_data_dir()}"
    )


def locate(key: str, data_dir: str | os.PathLike | None = None, *, fetch: bool = True) -> Path:
    """The path of data file `key` (see the module doc for the order). Raises IlfError with one
    line when it is nowhere and cannot be downloaded, or when a copy fails its sha256."""
    f = FILES[key]
    user = user_data_dir(data_dir)
    if user is not None:
        p = _in_dir(user, f)
        if p is None:
            raise IlfError(f"{user / f.name}: file not found (data directory given by --data-dir / {DATA_DIR_ENV})")
        return p
    shared = shared_data_dir()
    for d in ([shared] if shared else []) + [cache_data_dir()]:
        p = _in_dir(d, f)
        if p is not None:
            if not _verified(p, f):
                raise IlfError(
                    f"{p}: sha256 does not match the pinned {f.sha256[:12]}…; refusing to use it (delete it and run `ilf data fetch`)"
                )
            return p
    if not fetch:
        raise IlfError(how_to_provide(f))
    try:
        return download(key)
    except IlfError as e:
        raise IlfError(f"{how_to_provide(f)} [{e}]") from None


def download(key: str, dest_dir: Path | None = None, base_url: str | None = None) -> Path:
    """Download data file `key` into the cache (or dest_dir): streamed to a temporary file beside
    the destination, checked against its size and sha256, then renamed into place. Nothing is left
    behind by a failed, interrupted or corrupted download."""
    f = FILES[key]
    dest_dir = Path(dest_dir) if dest_dir else cache_data_dir()
    base = base_url if base_url is not None else os.environ.get(BASE_URL_ENV, "")
    url = f"{base.rstrip('/')}/{f.name}" if base else f.url
    dest_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{f.name}.", suffix=".part", dir=dest_dir)
    h, got = hashlib.sha256(), 0
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as resp:
                    for block in iter(lambda: resp.read(CHUNK), b""):
                        got += len(block)
                        if got > f.size:
                            raise IlfError(f"{url}: more than the expected {f.size} bytes; refusing {f.name}")
                        h.update(block)
                        out.write(block)
            except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
                reason = getattr(e, "reason", None) or e
                raise IlfError(f"{f.name}: download from {url} failed ({reason})") from None
        if got != f.size or h.hexdigest() != f.sha256:
            raise IlfError(
                f"{url}: downloaded {got} bytes with sha256 {h.hexdigest()[:12]}…, expected {f.size} bytes "
                f"with {f.sha256[:12]}…; refusing {f.name}"
            )
        final = dest_dir / f.name
        honour_umask(tmp)
        os.replace(tmp, final)
        return final
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def status(data_dir: str | os.PathLike | None = None) -> list[dict]:
    """Each file's state, for `ilf data`: where it was found and whether its sha256 matches."""
    rows = []
    user, shared, cache = user_data_dir(data_dir), shared_data_dir(), cache_data_dir()
    for f in FILES.values():
        row = {
            "key": f.key,
            "file": f.name,
            "what": f.what,
            "license": f.license,
            "url": f.url,
            "where": None,
            "path": None,
            "sha256_ok": None,
        }
        for where, d in (("--data-dir/ILF_DATA_DIR", user), ("shared/data", shared), ("cache", cache)):
            p = _in_dir(d, f) if d else None
            if p is not None:
                row.update(where=where, path=str(p), sha256_ok=_verified(p, f) if p.name == f.name else None)
                break
            if where.startswith("--") and d is not None:
                break  # a named directory is the only place looked in
        rows.append(row)
    return rows


def fetch_all(base_url: str | None = None) -> list[tuple[str, Path | None, str]]:
    """Download every file that ilf cannot already find with the right hash (see locate).
    Returns (file, path or None, message) per file; one failed file does not stop the others."""
    out = []
    for f in FILES.values():
        try:
            path = locate(f.key, fetch=False)
            out.append((f.name, path, "present"))
            continue
        except IlfError:
            pass
        try:
            out.append((f.name, download(f.key, base_url=base_url), "downloaded"))
        except IlfError as e:
            out.append((f.name, None, str(e)))
    return out
