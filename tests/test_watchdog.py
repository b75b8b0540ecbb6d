"""The stall watchdog that ends a sampling loop stuck in a native call holding the GIL (OpenVINO
GenAI's step() hung once: docs/limits.md). The hang is simulated by a real GIL-holding C call
(catastrophic regex backtracking) in a real child process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

STUCK = """
import re, signal, sys
from ilf.generation.watchdog import StallWatchdog
{handler}
with StallWatchdog("test sampling", timeout=2, grace=1) as wd, wd.armed():
    wd.beat()
    print("stepping", flush=True)
    re.match(r"(a+)+$", "a" * 60 + "b")  # C code holding the GIL for ages: no Python runs
print("returned", flush=True)
"""


def _run(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout)


def test_simulated_hang_in_a_gil_holding_call_is_ended_with_one_clear_line():
    p = _run(STUCK.format(handler=""))
    assert p.returncode == -signal.SIGTERM
    assert "stepping" in p.stdout and "returned" not in p.stdout
    lines = [ln for ln in p.stderr.splitlines() if ln.strip("\x1b[?25h").strip()]
    assert len(lines) == 1, p.stderr
    assert "ilf: test sampling made no progress for 2 s" in lines[0] and "rerun the same command to resume" in lines[0]


def test_simulated_hang_with_a_sigterm_handler_that_cannot_run_gets_sigkill():
    # A Python SIGTERM handler never runs while C code holds the GIL: the watchdog follows up.
    p = _run(STUCK.format(handler="signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))"))
    assert p.returncode == -signal.SIGKILL
    assert "made no progress" in p.stderr


def test_a_loop_that_keeps_beating_or_is_disarmed_is_left_alone_and_the_watchdog_exits_with_it():
    code = """
    import time
    from ilf.generation.watchdog import StallWatchdog
    with StallWatchdog("test sampling", timeout=3, grace=1) as wd:
        pid = wd.proc.pid
        with wd.armed():
            end = time.monotonic() + 6
            while time.monotonic() < end:
                time.sleep(0.05)
                wd.beat()
        time.sleep(4)  # disarmed: an idle engine is not a stall
        print(pid, flush=True)
    print("done", flush=True)
    """
    p = _run(code)
    assert p.returncode == 0, p.stderr
    pid, done = p.stdout.split()
    assert done == "done" and p.stderr == ""
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{pid}")


def test_disabled_watchdog_starts_no_process():
    from ilf.generation.watchdog import StallWatchdog

    with StallWatchdog("x", timeout=0) as wd, wd.armed():
        wd.beat()
        assert wd.proc is None


FLAKY_CHILD = """
import os, re, sys
from ilf.generation.watchdog import StallWatchdog
flag = sys.argv[1]
first = not os.path.exists(flag)
open(flag, "a").close()
if first:  # the first run hangs in a GIL-holding C call, like OpenVINO GenAI's step() did
    with StallWatchdog("test sampling", timeout=2, grace=1) as wd, wd.armed():
        re.match(r"(a+)+$", "a" * 60 + "b")
print("finished", flush=True)
"""


def test_supervise_restarts_a_run_its_watchdog_ended_and_returns_the_final_exit_code(tmp_path):
    """`ilf run` runs its work under `supervise`: a stall ended by the watchdog (marker file) is
    restarted; any other exit, success or failure, is returned as is."""
    from ilf.generation.watchdog import supervise

    msgs = []
    flag = tmp_path / "ran"
    rc = supervise([sys.executable, "-c", FLAKY_CHILD, str(flag)], max_restarts=2, log=msgs.append)
    assert rc == 0 and msgs == ["ilf: restarting after a stalled engine (1 of 2); finished work is kept"]
    assert supervise([sys.executable, "-c", "import sys; sys.exit(7)"], log=msgs.append) == 7 and len(msgs) == 1


def test_supervise_gives_up_after_the_last_restart(tmp_path):
    from ilf.generation.watchdog import supervise

    always = FLAKY_CHILD.replace("first = not os.path.exists(flag)", "first = True")
    msgs = []
    rc = supervise([sys.executable, "-c", always, str(tmp_path / "f")], max_restarts=1, log=msgs.append)
    assert rc == 3 and msgs[-1].startswith("ilf: the engine stalled 2 times; giving up")


def test_every_sampling_command_restarts_itself_after_a_stall_and_resumes(qwen_tiny, data_dir, tmp_path):
    """`ilf sample` (as refine, finetune's sweep and LLM feedback) does its work under `supervise`: with
    a stall timeout no decoding step can meet, the real OpenVINO engine's watchdog ends each attempt,
    the command starts again three times, then gives up with exit 3, leaving only whole records; the
    same command without the short timeout then resumes and finishes."""
    import json

    env = {**os.environ, "ILF_CACHE": str(tmp_path / "cache"), "ILF_DATA_DIR": str(data_dir)}
    out = tmp_path / "samples.jsonl"
    cmd = [sys.executable, "-m", "ilf.cli", "sample", "--model", str(qwen_tiny), "--engine", "openvino"]
    cmd += ["--tasks", "11-20", "--n", "4", "--max-new-tokens", "32", "--output", str(out)]

    def ilf(timeout: str | None) -> subprocess.CompletedProcess:
        e = dict(env, ILF_STALL_TIMEOUT=timeout) if timeout is not None else env
        return subprocess.run(cmd, capture_output=True, text=True, env=e, timeout=600)

    bad = ilf("soon")
    assert bad.returncode != 0 and "ILF_STALL_TIMEOUT must be seconds >= 0 (0 = no watchdog), got 'soon'" in bad.stderr
    assert "restarting" not in bad.stderr  # a refusal is not a stall

    stalled = ilf("0.001")
    assert stalled.returncode == 3, stalled.stderr[-2000:]
    for i in (1, 2, 3):
        assert f"ilf: restarting after a stalled engine ({i} of 3); finished work is kept" in stalled.stderr
    assert "ilf: the engine stalled 4 times; giving up" in stalled.stderr
    kept = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    assert len(kept) < 10 * 4

    done = ilf(None)
    assert done.returncode == 0, done.stderr[-2000:]
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted((r["task_id"], r["sample_id"]) for r in recs) == [(t, j) for t in range(11, 21) for j in range(4)]
