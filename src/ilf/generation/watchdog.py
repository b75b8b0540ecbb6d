"""A stall watchdog for native sampling loops.

OpenVINO GenAI's `pipeline.step()` holds the GIL, and it hung once here (docs/limits.md): then no
Python thread of the process runs, not even a signal handler. So the watchdog is a small separate
process, started once per engine. While armed (inside a sampling loop) it expects a heartbeat
after each step; if none comes for `timeout` seconds, it prints one clear line and ends the stuck
process (SIGTERM, then SIGKILL). Disarmed (an idle engine, e.g. `ilf serve` between requests), it
only waits. Finished work is already on disk (sampling writes per task), so rerunning the same
command resumes; every ilf command that samples does that by itself (`supervise`: the watchdog
leaves a marker file, and the command runs again in a new process).

    watchdog = StallWatchdog("openvino sampling", timeout=600)
    with watchdog.armed():
        while work:
            pipe.step()
            watchdog.beat()
    watchdog.close()
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import Iterator, Optional

# Seconds without a finished decoding step before the process is ended. One step takes well under
# a second, a few seconds with long prefills; five minutes leaves a wide margin for slower machines.
STALL_TIMEOUT = 300.0
# Overrides every watchdog's timeout (seconds; 0 = no watchdog), for a machine slower than that margin.
STALL_TIMEOUT_ENV = "ILF_STALL_TIMEOUT"
# If this environment variable names a file, the watchdog creates it before ending a stalled process,
# so a supervisor (`ilf run`) can tell a stall from any other end and restart the work.
STALL_MARKER_ENV = "ILF_STALL_MARKER"
# The process ended after SIGTERM gets this long before SIGKILL.
TERM_GRACE = 5.0
# Heartbeats are rate-limited: one write per this many seconds at most.
BEAT_INTERVAL = 1.0

_WATCHDOG = r"""
import os, select, signal, sys, time
pid, timeout, grace, what, marker = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]

def state():
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"

armed = False
while True:
    ready, _, _ = select.select([0], [], [], timeout if armed else None)
    if ready:
        data = os.read(0, 4096)
        if not data:
            sys.exit(0)  # closed (or its process is gone)
        for byte in data:  # a: armed, d: disarmed, .: a heartbeat; any byte restarts the clock
            armed = {97: True, 100: False}.get(byte, armed)
        continue
    if state() in ("T", "t"):
        continue  # stopped (Ctrl-Z, a debugger): not a stall
    then = "it restarts by itself" if marker else "rerun the same command to resume"
    sys.stderr.write(
        f"\x1b[?25h\nilf: {what} made no progress for {timeout:g} s (a hung native call, see docs/limits.md); "
        f"ending it. Finished work is saved: {then}.\n"
    )
    sys.stderr.flush()
    if marker:
        open(marker, "w").close()
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


def timeout_from_env(default: Optional[float]) -> Optional[float]:
    """$ILF_STALL_TIMEOUT if it is set, else `default`."""
    raw = os.environ.get(STALL_TIMEOUT_ENV, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        from ilf.errors import IlfError

        raise IlfError(f"{STALL_TIMEOUT_ENV} must be seconds >= 0 (0 = no watchdog), got {raw!r}")
    return value


class StallWatchdog:
    """Ends this process if, while `armed()`, `beat()` is not called for `timeout` seconds
    (0 or None: disabled, no process)."""

    def __init__(self, what: str, timeout: Optional[float] = STALL_TIMEOUT, grace: float = TERM_GRACE):
        self.proc: Optional[subprocess.Popen] = None
        self._last = time.monotonic()
        timeout = timeout_from_env(timeout)
        if timeout and timeout > 0 and sys.platform.startswith("linux"):
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-I",
                    "-c",
                    _WATCHDOG,
                    str(os.getpid()),
                    str(float(timeout)),
                    str(grace),
                    what,
                    os.environ.get(STALL_MARKER_ENV, ""),
                ],
                stdin=subprocess.PIPE,
                close_fds=True,
            )

    @contextmanager
    def armed(self) -> Iterator[StallWatchdog]:
        self._send(b"a")
        self._last = time.monotonic()
        try:
            yield self
        finally:
            self._send(b"d")

    def beat(self) -> None:
        now = time.monotonic()
        if now - self._last >= BEAT_INTERVAL:
            self._last = now
            self._send(b".")

    def _send(self, msg: bytes) -> None:
        if self.proc is None:
            return
        try:
            os.write(self.proc.stdin.fileno(), msg)  # type: ignore[union-attr]
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


# Restarts of a stalled `ilf run` before giving up (the OpenVINO GenAI hang is rare and does not
# repeat at the same point, since the restarted stage resumes with other requests in flight).
MAX_STALL_RESTARTS = 3


def supervise(cmd: list[str], max_restarts: int = MAX_STALL_RESTARTS, log=None) -> int:
    """Run `cmd` as a child; when its stall watchdog ended it (the marker file exists), run it
    again, up to `max_restarts` times. Returns the child's exit code (128 + signal if killed).

    The child dies with this process (PR_SET_PDEATHSIG), so killing the supervisor never leaves
    an orphan writing to the run directory; SIGINT/SIGTERM reach the child, which saves its work."""
    import signal
    import tempfile

    log = log or (lambda msg: sys.stderr.write(msg + "\n"))
    with tempfile.TemporaryDirectory(prefix="ilf-stall-") as d:
        marker = os.path.join(d, "stalled")
        env = {**os.environ, STALL_MARKER_ENV: marker, "ILF_SUPERVISED": "1"}
        for attempt in range(max_restarts + 1):
            child = subprocess.Popen(cmd, env=env, preexec_fn=_die_with_parent)
            # Ctrl-C reaches the child with its process group; a SIGTERM sent to this process is passed on.
            forward = {
                signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
                signal.SIGTERM: signal.signal(signal.SIGTERM, lambda s, _f, c=child: c.send_signal(s)),
            }
            try:
                rc = child.wait()
            finally:
                for sig, h in forward.items():
                    signal.signal(sig, h)
            if not os.path.exists(marker):
                return rc if rc >= 0 else 128 - rc
            os.unlink(marker)
            if attempt < max_restarts:
                log(f"ilf: restarting after a stalled engine ({attempt + 1} of {max_restarts}); finished work is kept")
        log(f"ilf: the engine stalled {max_restarts + 1} times; giving up (see docs/limits.md)")
        return 3


def _die_with_parent() -> None:
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass
