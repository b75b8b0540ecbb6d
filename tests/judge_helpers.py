"""Shared by the sandbox and judge tests: whether bubblewrap works here, and judging an attack
beside a correct neighbour."""

from __future__ import annotations

import json
import textwrap

import pytest

from ilf import sandbox
from ilf.evaluation import evaluate

BWRAP = sandbox.probe_bwrap()[0]
needs_bwrap = pytest.mark.skipif(not BWRAP, reason="bubblewrap unavailable here")

RIGHT = "def similar_elements(a, b):\n    return tuple(set(a) & set(b))\n"  # MBPP task 2, correct


def judged_beside_a_neighbour(tmp_path, tasks, attack: str, right: str = RIGHT, task_id=2, workers: int = 1, timeout: float = 3.0):
    """[right, attack, right] on one task in one `evaluate` run (one worker: the attack runs in the
    same worker as the programs before and after it); then again, resumed from a results file
    that lost the attack's record. -> the attack's result."""
    samples = [{"task_id": task_id, "sample_id": i, "program": textwrap.dedent(p)} for i, p in enumerate([right, attack, right])]
    out = tmp_path / "results.jsonl"
    first = evaluate(samples, tasks, timeout=timeout, workers=workers, output=out, progress=False, calibrate=False)
    assert first[0]["passed"] and first[2]["passed"], first
    assert not first[1]["passed"], first[1]
    kept = [ln for ln in out.read_text(encoding="utf-8").splitlines() if json.loads(ln)["sample_id"] != 1]
    out.write_text("\n".join(kept) + "\n", encoding="utf-8")
    again = evaluate(samples, tasks, timeout=timeout, workers=workers, output=out, progress=False, calibrate=False)
    assert again[0]["passed"] and again[2]["passed"] and not again[1]["passed"], again
    json.loads(out.read_text(encoding="utf-8").splitlines()[1])  # written, and readable
    return first[1]
