"""A run directory's stages: each records its fingerprint (settings + the content of its inputs),
status, timings, code version and CPU in manifest.json. A finished stage with the same fingerprint
is skipped; one whose settings or inputs changed starts over; one killed midway resumes from what
its outputs hold (the stage's own code decides how)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from rich.console import Console

from ilf import __version__, machine
from ilf.errors import IlfError
from ilf.jsonl import read_json, write_json

console = Console(stderr=True)


def file_fingerprint(path: Path) -> str:
    """Content hash of a file or of every file in a directory (sorted), for stage fingerprints."""
    h = hashlib.sha256()
    path = Path(path)
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file() and "checkpoint" not in p.parts[-2] and not p.name.startswith("."):
                h.update(str(p.relative_to(path)).encode())
                h.update(hashlib.sha256(p.read_bytes()).digest())
    elif path.exists():
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def code_version() -> str:
    try:
        rev = subprocess.run(
            ["git", "-C", str(Path(__file__).parent), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except Exception:
        rev = ""
    return f"ilf {__version__}" + (f" ({rev})" if rev else "")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Stages:
    """The manifest of a run directory and the one way its stages run (`stage`)."""

    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.manifest_path = self.dir / "manifest.json"
        if self.manifest_path.exists():
            try:
                self.manifest = read_json(self.manifest_path)
            except json.JSONDecodeError as e:
                raise IlfError(f"{self.manifest_path}:{e.lineno}: invalid JSON in the run manifest ({e.msg})") from None
        else:
            self.manifest = {"created_at": _now(), "stages": {}}
        self.manifest["code_version"] = code_version()

    def _save(self) -> None:
        write_json(self.manifest_path, self.manifest)

    @staticmethod
    def fingerprint(params: dict[str, Any], inputs: list[Path] = ()) -> str:
        src = json.dumps({"params": params, "inputs": [file_fingerprint(p) for p in inputs], "v": __version__}, sort_keys=True, default=str)
        return hashlib.sha256(src.encode()).hexdigest()[:16]

    def stage(
        self,
        name: str,
        fn: Callable[[], Any],
        *,
        params: dict[str, Any],
        inputs: list[Path] = (),
        outputs: list[Path] = (),
    ) -> None:
        """Run `fn` unless this stage already finished with the same fingerprint."""
        fp = self.fingerprint(params, inputs)
        entry = self.manifest["stages"].get(name)
        if entry and entry.get("status") == "done" and entry.get("fingerprint") == fp and all(Path(o).exists() for o in outputs):
            console.print(f"[dim]✓ {name}: done ({entry.get('seconds', 0):.0f} s), skipped[/]")
            return
        if entry and entry.get("fingerprint") != fp:
            # Config or inputs changed: partial outputs belong to another setting; start over.
            for o in outputs:
                o = Path(o)
                if o.is_dir():
                    shutil.rmtree(o)
                elif o.exists():
                    o.unlink()
        resumed = bool(entry and entry.get("fingerprint") == fp and entry.get("status") != "done")
        console.rule(f"[bold]{name}[/]" + (" (resuming)" if resumed else ""))
        self.manifest["stages"][name] = {
            "status": "running",
            "fingerprint": fp,
            "params": params,
            "inputs": {str(p): file_fingerprint(p) for p in inputs},
            "started_at": _now(),
            "code_version": self.manifest["code_version"],
            "cpu": machine.describe(),  # a resumed stage records the machine that finished it
        }
        self._save()
        t0 = time.time()
        try:
            fn()
        except BaseException:
            self.manifest["stages"][name]["status"] = "failed"
            self.manifest["stages"][name]["seconds"] = time.time() - t0
            self._save()
            raise
        self.manifest["stages"][name].update(status="done", seconds=round(time.time() - t0, 2), finished_at=_now())
        self._save()
