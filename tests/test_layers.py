"""The architecture holds: `lint-imports` checks the contracts in pyproject.toml ([tool.importlinter]):
commands on top, the paper's steps as peers that import none of each other, machinery and
foundations below, no import cycle. A second test breaks a copy of the package on purpose, so the
contracts are known to catch what they claim to."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(env_path: Path | None = None) -> subprocess.CompletedProcess:
    env = None
    if env_path is not None:
        import os

        env = {**os.environ, "PYTHONPATH": str(env_path)}
    return subprocess.run(
        [str(LINT), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_import_contracts_hold():
    out = _lint()
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


def test_a_step_importing_another_step_or_a_command_breaks_the_contracts(tmp_path):
    shutil.copytree(ROOT / "src" / "ilf", tmp_path / "ilf", ignore=shutil.ignore_patterns("__pycache__"))
    refine = tmp_path / "ilf" / "refine.py"
    # refine reaching sideways into another step, and up into the commands layer
    refine.write_text(
        refine.read_text(encoding="utf-8") + "\n\ndef _bad():\n    from ilf.sampling import sample\n    import ilf.commands.refine\n"
    )
    out = _lint(tmp_path)
    assert out.returncode != 0
    assert "BROKEN" in out.stdout
    assert "ilf.refine -> ilf.sampling" in out.stdout
    assert "ilf.refine -> ilf.commands.refine" in out.stdout
