"""The CPU description recorded beside every wall time (run manifests, benchmarks, results/)."""

import hashlib
import os

from ilf import machine


def test_describe_names_this_cpu_its_count_and_speed_flags():
    text = machine.describe()
    with open("/proc/cpuinfo") as f:
        info = f.read()
    name = next(ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name"))
    flags = next(ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags"))
    assert text.startswith(name) and f"{os.cpu_count()} CPUs" in text
    # AVX-512 and AMX change engine speed several-fold: they are named when present, and their absence is said.
    for f in flags:
        assert (f in text.split()) == f.startswith(machine.SPEED_FLAGS), f
    if "avx512f" not in flags:
        assert "no AVX-512" in text


def test_key_is_stable_and_depends_on_the_avx_flags():
    c = machine.cpu()
    avx = " ".join(sorted(f for f in c.flags if f.startswith("avx")))
    assert machine.key() == hashlib.sha256(f"{c.model_name}|{avx}|{c.cpus}".encode()).hexdigest()[:12]
    other = machine.Cpu(c.model_name, cpus=c.cpus, flags=tuple(f for f in c.flags if not f.startswith("avx512")))
    assert ("avx512f" in c.flags) == (other.speed_flags != c.speed_flags)
