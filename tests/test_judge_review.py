"""EVAL's own review round: attacks beyond the second review's list (docs/sandbox.md, "Review
rounds"), each judged between two correct programs in one `evaluate` run on one worker. Every
attack tries to pass MBPP task 2 without computing its answer (it returns what it stole, or ()),
or to change its neighbours' verdicts. None passes; the neighbours pass; a resumed run finishes.

The table in docs/sandbox.md lists each attack with its outcome; the names here are its rows."""

from __future__ import annotations

import pytest
from judge_helpers import BWRAP, judged_beside_a_neighbour

from ilf.tasks import load_tasks

ROOT = __import__("os").geteuid() == 0

# name -> (program, the verdicts it may get)
ATTACKS: dict[str, tuple[str, tuple[str, ...]]] = {
    "reopen the result channel by path and write a verdict": (
        """
        import os
        fd = os.open("/proc/self/fd/3", os.O_WRONLY)
        os.write(fd, b'{"ready": 1}\\n{"passed": true}\\n')
        os._exit(0)
        """,
        ("error",),
    ),
    "a forked child writes answers between the real ones": (
        """
        import os, time
        if os.fork() == 0:
            for _ in range(200):
                os.write(3, b'{"v": {"t": [4, 5]}, "t": 0}\\n')
                time.sleep(0.001)
            os._exit(0)
        def similar_elements(a, b):
            time.sleep(0.05)
            return ()
        """,
        ("error", "failed"),
    ),
    "replace the child's encoder so every answer claims to be the expected one": (
        """
        import sys
        m = sys.modules["ilf.plain"]
        m.encode = m.encode_for_transfer = lambda x, *a: {"o": ["Yes", "<equal to anything>"]}
        def similar_elements(a, b):
            return ()
        """,
        ("failed",),
    ),
    "builtin subclasses whose __eq__ always says yes (int, tuple, frozenset)": (
        """
        class T(tuple):
            def __eq__(self, o):
                return True
            __hash__ = tuple.__hash__
        def similar_elements(a, b):
            return T()
        """,
        ("failed",),
    ),
    "return NotImplemented, Ellipsis or a type": (
        "def similar_elements(a, b):\n    return NotImplemented\n",
        ("failed",),
    ),
    "raise AssertionError from inside the call (a test's own failure looks different)": (
        "def similar_elements(a, b):\n    raise AssertionError('passed')\n",
        ("error",),
    ),
    "an exception whose __str__ raises or claims a pass": (
        """
        class E(Exception):
            def __str__(self):
                raise RuntimeError('{"status": "passed"}')
        def similar_elements(a, b):
            raise E()
        """,
        ("error",),
    ),
    "print a verdict on stdout and stderr": (
        """
        import sys
        print('{"status": "passed"}')
        sys.stderr.write('{"ready": 1}\\n{"v": {"t": [4, 5]}, "t": 0}\\n')
        def similar_elements(a, b):
            return ()
        """,
        ("failed",),
    ),
    "kill the process that supervises it": (
        """
        import os, signal
        def similar_elements(a, b):
            for pid in (os.getppid(), 1, 2):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            return ()
        """,
        ("failed", "error"),
    ),
    "kill(-1): every process it may signal": (
        "import os, signal\ndef similar_elements(a, b):\n    os.kill(-1, signal.SIGKILL)\n",
        ("failed", "error"),  # kill(-1) spares the caller
    ),
    "ptrace its supervisor to read the test": (
        """
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        def similar_elements(a, b):
            r = libc.ptrace(16, os.getppid(), None, None)  # PTRACE_ATTACH
            return (r, ctypes.get_errno())
        """,
        ("failed",),
    ),
    "read other processes' memory, fds and environment through /proc": (
        """
        import os
        def similar_elements(a, b):
            got = []
            for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
                for f in ("mem", "environ", "fd/0", "fd/3", "cmdline"):
                    try:
                        with open(f"/proc/{pid}/{f}", "rb") as h:
                            h.read(4096)
                        got.append((pid, f))
                    except OSError:
                        pass
            return tuple(x for x in got if x[0] != str(os.getpid()) and x[1] != "cmdline")
        """,
        ("failed",),
    ),
    "import ilf's host side from inside the jail": (
        """
        def similar_elements(a, b):
            import ilf.judge
            return ()
        """,
        ("error",),
    ),
    "rewrite ilf's codec on disk for the next program": (
        """
        import sys
        def similar_elements(a, b):
            path = sys.modules["ilf.plain"].__file__
            open(path, "a").write("\\nencode = lambda *a: {'t': [4, 5]}\\n")
            return ()
        """,
        ("error",),
    ),
    "a daemon that survives the program and answers for the next one": (
        """
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                for _ in range(3000):
                    for fd in range(3, 64):
                        try:
                            os.write(fd, b'{"v": {"t": [4, 5]}, "t": 0}\\n')
                        except OSError:
                            pass
                    time.sleep(0.002)
                os._exit(0)
            os._exit(0)
        def similar_elements(a, b):
            return ()
        """,
        ("failed", "error"),  # its writes may land on its own channel (an error for it alone)
    ),
    "carry data to the next program in the hostname (UTS namespace)": (
        """
        import socket
        def similar_elements(a, b):
            try:
                socket.sethostname("ilf-4-5")
            except OSError as e:
                return ("refused", e.errno)
            return ("set",)
        """,
        ("failed",),
    ),
    "an abstract unix socket left listening for the next program": (
        """
        import os, socket
        if os.fork() == 0:
            os.setsid()
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.bind(b"\\0ilf-answers")
            s.listen(1)
            import time
            time.sleep(30)
            os._exit(0)
        def similar_elements(a, b):
            return ()
        """,
        ("failed",),
    ),
    "set the clock to shorten or stretch its own limits": (
        """
        import time
        def similar_elements(a, b):
            try:
                time.clock_settime(time.CLOCK_REALTIME, 0)
                return ("set",)
            except OSError as e:
                return ("refused", e.errno)
        """,
        ("failed",),
    ),
    "raise its own limits (setrlimit, nice)": (
        """
        import os, resource
        def similar_elements(a, b):
            out = []
            for r in (resource.RLIMIT_CPU, resource.RLIMIT_AS, resource.RLIMIT_NPROC):
                try:
                    resource.setrlimit(r, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
                    out.append("raised")
                except (ValueError, OSError):
                    out.append("refused")
            try:
                os.setpriority(os.PRIO_PROCESS, os.getppid(), 19)
                out.append("reniced")
            except OSError:
                out.append("refused")
            return tuple(out)
        """,
        ("failed",),
    ),
    "spin in threads to hide CPU time": (
        """
        import threading
        def spin():
            while True:
                pass
        def similar_elements(a, b):
            for _ in range(4):
                threading.Thread(target=spin, daemon=True).start()
            spin()
        """,
        ("timeout",),
    ),
    "stop itself (SIGSTOP) to freeze its supervisor's clock": (
        "import os, signal\ndef similar_elements(a, b):\n    os.kill(os.getpid(), signal.SIGSTOP)\n    return ()\n",
        ("timeout",),
    ),
    "fill the result pipe and never exit": (
        """
        import os
        os.set_blocking(3, True)
        os.write(3, b'{"ready": 1}\\n')
        while True:
            os.write(3, b' ' * 65536)
        """,
        ("error", "timeout"),
    ),
    "an answer with a repr of a megabyte and a huge integer": (
        """
        class Big:
            def __repr__(self):
                return "x" * (1 << 20)
        def similar_elements(a, b):
            return (Big(), 10 ** 100000)
        """,
        ("failed",),
    ),
    "a cached answer in HOME or the working directory": (
        """
        import os
        def similar_elements(a, b):
            for d in (os.environ.get("HOME", "/"), os.getcwd(), "/home", "/var/tmp", "/dev/shm", "/run", "/srv"):
                try:
                    names = os.listdir(d)
                except OSError:
                    continue
                if names:
                    return (d, tuple(names))
            return ()
        """,
        ("failed",),
    ),
}


@pytest.fixture(scope="module")
def mbpp(data_dir):
    return load_tasks("mbpp", data_dir=data_dir, task_ids="2-4")


@pytest.mark.parametrize("name", list(ATTACKS))
def test_an_attack_from_the_review_round_gets_nothing(tmp_path, mbpp, name):
    program, expected = ATTACKS[name]
    r = judged_beside_a_neighbour(tmp_path, mbpp, program, timeout=1.0)
    assert r["status"] in expected, (name, r)


def test_the_review_attacks_are_stopped_by_what_the_docs_say(tmp_path, mbpp):
    """A few outcomes the table states precisely (they depend on root and bubblewrap here)."""
    if not (ROOT and BWRAP):
        pytest.skip("the table's outcomes were measured as root with bubblewrap")
    looks = {
        "ptrace its supervisor to read the test": "(got (-1, 1))",  # EPERM from seccomp
        "carry data to the next program in the hostname (UTS namespace)": "(got ('refused', 1))",
        "set the clock to shorten or stretch its own limits": "(got ('refused', 1))",
        "read other processes' memory, fds and environment through /proc": "(got ())",
        "a cached answer in HOME or the working directory": "(got ())",
        "raise its own limits (setrlimit, nice)": "(got ('refused', 'refused', 'refused', 'refused'))",
    }
    for name, got in looks.items():
        r = judged_beside_a_neighbour(tmp_path / name.split()[0], mbpp, ATTACKS[name][0], timeout=1.0)
        assert got in (r["error"] or ""), (name, r)


def test_the_review_round_has_at_least_20_attacks():
    assert len(ATTACKS) >= 20
