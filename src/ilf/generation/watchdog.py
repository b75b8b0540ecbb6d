"""A stall watchdog for native sampling loops.

OpenVINO GenAI's `pipeline.step()` holds the GIL, and it hung once here (docs/limits.md): then no
Python thread of the process runs, not even a signal handler. So the watchdog is a small separate
process. The sampling loop sends it a heartbeat after each step; if none comes for `timeout`
seconds, it prints one clear line and ends the stuck process (SIGTERM, then SIGKILL). Finished work
is already on disk (sampling writes per task), so rerunning the same command resumes.

    with StallWatchdog("openvino sampling", timeout=600) as wd:
        while work:
            pipe.step()
            wd.beat()
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Optional

# Seconds without a finished decoding step before the process is ended. One step here takes
# 0.1-0.5 s (a few seconds with long prefills); ten minutes leaves room for much slower machines.
STALL_TIMEOUT = 600.0
# The process ended after SIGTERM gets this long before SIGKILL.
TERM_GRACE = 5.0
# Heartbeats are rate-limited: one write per this many seconds at most.
BEAT_INTERVAL = 1.0

_WATCHDOG = r"""
import os, select, signal, sys, time
pid, timeout, grace, what = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]

def state():
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"

while True:
    ready, _, _ = select.select([0], [], [], timeout)
    if ready:
        if not os.read(0, 4096):
            sys.exit(0)  # the loop finished (or its process is gone)
        continue
    if state() in ("T", "t"):
        continue  # stopped (Ctrl-Z, a debugger): not a stall
    sys.stderr.write(
        f"\x1b[?25h\nilf: {what} made no progress for {timeout:.0f} s (a hung native call, see docs/limits.md); "
        "ending it. Finished work is saved: rerun the same command to resume.\n"
    )
    sys.stderr.flush()
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            sys.exit(1)
        end = time.monotonic() + wait
        while time.monotonic() < end and state() not in ("?", "Z"):
            time.sleep(0.1)
    sys.exit(1)
"""


class StallWatchdog:
    """Ends this process if `beat()` is not called for `timeout` seconds (0 or None: disabled)."""

    def __init__(self, what: str, timeout: Optional[float] = STALL_TIMEOUT, grace: float = TERM_GRACE):
        self.proc: Optional[subprocess.Popen] = None
        self._last = time.monotonic()
        if timeout and timeout > 0 and sys.platform.startswith("linux"):
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-c", _WATCHDOG, str(os.getpid()), str(float(timeout)), str(grace), what],
                stdin=subprocess.PIPE,
                close_fds=True,
            )

    def beat(self) -> None:
        now = time.monotonic()
        if self.proc is None or now - self._last < BEAT_INTERVAL:
            return
        self._last = now
        try:
            os.write(self.proc.stdin.fileno(), b".")  # type: ignore[union-attr]
        except OSError:
            pass

    def close(self) -> None:
        if self.proc is None:
            return
        try:
            self.proc.stdin.close()  # type: ignore[union-attr]
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
        self.proc = None

    def __enter__(self) -> StallWatchdog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
