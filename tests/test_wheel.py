"""ilf where its users already are: the built wheel pip-installs into a fresh venv that already holds
a torch, without replacing it, and `ilf evaluate` (the README's example) and `ilf run --dry-run`
work there. Real pip, real venv, the packages from the machine's package index (and pip's cache)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _pip(python: Path, *args: str, timeout: int = 1800) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", *args], capture_output=True, text=True, timeout=timeout)


def _torch_files(python: Path) -> tuple[str, str]:
    """torch's version and its installed RECORD (which a reinstall or upgrade rewrites)."""
    code = (
        "import importlib.metadata as m, hashlib; d = m.distribution('torch'); "
        "print(d.version); print(hashlib.sha256(d.read_text('RECORD').encode()).hexdigest())"
    )
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return out[0], out[1]


@pytest.mark.slow
def test_the_wheel_installs_beside_an_existing_torch_and_runs(tmp_path, data_dir):
    import torch

    dist = tmp_path / "dist"
    proc = _pip(Path(sys.executable), "wheel", "--no-deps", "-w", str(dist), str(ROOT))
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = dist.glob("ilf-*.whl")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    # The user's environment: a torch is already there (here the release this project runs with).
    proc = _pip(python, "install", "-q", f"torch=={torch.__version__}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    before = _torch_files(python)

    # pip install ilf[...] with its ranges: the installed torch satisfies them and stays as it is.
    proc = _pip(python, "install", "-q", f"{wheel}[openvino,qwen-0_5b]", "-c", str(ROOT / "constraints.txt"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _torch_files(python) == before

    ilf = venv / "bin" / "ilf"
    work = tmp_path / "work"  # nothing of the project beside it
    work.mkdir()
    (work / "samples.jsonl").write_text(
        json.dumps({"task_id": 2, "completion": "    return tuple(set(test_tup1) & set(test_tup2))\n"})
        + "\n"
        + json.dumps({"task_id": 2, "completion": "    return None\n"})
        + "\n"
    )
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path / "home"), "ILF_DATA_DIR": str(data_dir)}
    cmd = [str(ilf), "evaluate", "samples.jsonl", "--dataset", "mbpp", "--json"]
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)
    assert summary["pass@1"] == 0.5 and summary["num_samples"] == 2
    assert (work / "samples_results.jsonl").exists()

    proc = subprocess.run([str(ilf), "run", "--dry-run"], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "demo" in proc.stdout + proc.stderr
