"""Pack a run directory's results (not its models) into a folder that can be committed, and unpack
it back into a run directory that `ilf run` resumes and `ilf report` reads.

    python scripts/run_archive.py pack runs/cpu results/cpu/run      # every JSONL gzipped, no models
    python scripts/run_archive.py unpack results/cpu/run runs/cpu    # then: ilf run cpu  (resumes)
    python scripts/run_archive.py pack runs/paper/table3 results/table3/raw   # a results/queue.sh experiment
    ilf report results/cpu/run                                       # reads the .jsonl.gz files as they are

Kept: config.toml, manifest.json, every *.json / *.jsonl (as .jsonl.gz, gzip mtime 0 so packing the
same run twice gives the same bytes) and unfinished *.jsonl.partial records, report Markdown and PNGs. Left out: model directories
(`model`, `model@s<i>`, with their checkpoints and TensorBoard logs), which FINETUNE rebuilds on
resume. Unpacking restores byte-identical JSONL, so the stage fingerprints still match.

An experiment directory of results/queue.sh (its meta.json instead of a manifest) packs the same
way; any directory holding a model (model.safetensors) is left out, and files that are symlinks to
another run's files are listed in links.json instead of copied.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import sys
from pathlib import Path

KEEP_SUFFIXES = {".json", ".jsonl", ".toml", ".md", ".png"}


def _in_model_dir(rel: Path) -> bool:
    return any(part == "model" or part.startswith("model@") or part in ("checkpoints", "runs") for part in rel.parts[:-1])


def pack(run_dir: Path, dest: Path) -> int:
    if not (run_dir / "manifest.json").is_file() and not (run_dir / "meta.json").is_file():
        sys.exit(f"error: {run_dir}: not a run directory (no manifest.json) nor an experiment of results/queue.sh (no meta.json)")
    models = [p.parent for p in run_dir.rglob("*.safetensors")]
    count, links = 0, {}
    for src in sorted(run_dir.rglob("*")):
        rel = src.relative_to(run_dir)
        if any(m in src.parents for m in models):
            continue
        if src.is_symlink():
            links[str(rel)] = os.path.relpath(src.resolve(), Path.cwd())  # the packed run it points into
            continue
        # A resumable stage's unfinished records (OUTPUT.partial) are kept too: the next machine resumes them.
        partial = src.name.endswith(".jsonl.partial")
        if not src.is_file() or _in_model_dir(rel) or (src.suffix not in KEEP_SUFFIXES and not partial):
            continue
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        if src.suffix == ".jsonl" or partial:
            out = out.with_name(out.name + ".gz")
            tmp = out.with_name(out.name + ".tmp")
            with open(src, "rb") as f, open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as g:
                shutil.copyfileobj(f, g)
            tmp.replace(out)
        else:
            shutil.copy2(src, out)
        count += 1
    if links:
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "links.json").write_text(json.dumps(links, indent=2, sort_keys=True) + "\n")
    return count


def unpack(src_dir: Path, run_dir: Path) -> int:
    count = 0
    links = json.loads((src_dir / "links.json").read_text()) if (src_dir / "links.json").is_file() else {}
    for rel, target in links.items():  # paths relative to the project root, like the packing's
        out = run_dir / rel
        if not out.exists() and not out.is_symlink():
            out.parent.mkdir(parents=True, exist_ok=True)
            out.symlink_to(Path(target).resolve())
            count += 1
    for src in sorted(src_dir.rglob("*")):
        if not src.is_file() or (src.parent == src_dir and src.name == "links.json" and links):
            continue
        rel = src.relative_to(src_dir)
        out = run_dir / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        if src.name.endswith((".jsonl.gz", ".jsonl.partial.gz")):
            out = out.with_name(out.name[: -len(".gz")])
            if out.exists():
                continue  # the local file may be further along (a resumed stage appends)
            tmp = out.with_name(out.name + ".tmp")
            with gzip.open(src, "rb") as g, open(tmp, "wb") as f:
                shutil.copyfileobj(g, f)
            tmp.replace(out)
        elif not out.exists():
            shutil.copy2(src, out)
        else:
            continue
        count += 1
    return count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["pack", "unpack"])
    ap.add_argument("source", type=Path)
    ap.add_argument("dest", type=Path)
    a = ap.parse_args()
    n = pack(a.source, a.dest) if a.action == "pack" else unpack(a.source, a.dest)
    print(f"{a.action}: {n} file(s) {a.source} -> {a.dest}")


if __name__ == "__main__":
    main()
