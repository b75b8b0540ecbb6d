"""The CPU this process runs on, as recorded beside every time and speed ilf writes.

Sampling and training speeds differ several-fold between CPUs with and without AVX-512 (VNNI, BF16,
AMX), so a wall time means little without the machine that measured it: run manifests, benchmarks and
results/ all describe it with `describe()`, and per-machine caches (judge time limits, sampling speed)
are keyed by `key()`.
"""

from __future__ import annotations

import hashlib
import os
import platform
from dataclasses import dataclass, field
from functools import lru_cache

SPEED_FLAGS = ("avx512f", "avx512_vnni", "avx512_bf16", "amx")
"""Flag prefixes that change how fast the model engines run; `describe()` lists those present."""


@dataclass(frozen=True)
class Cpu:
    model_name: str
    family: str = "?"
    model: str = "?"
    cpus: int = 1
    flags: tuple[str, ...] = field(default=(), repr=False)

    @property
    def speed_flags(self) -> list[str]:
        return [f for f in self.flags if f.startswith(SPEED_FLAGS)]


@lru_cache(maxsize=1)
def cpu() -> Cpu:
    """Parsed from /proc/cpuinfo (Linux); elsewhere the platform's processor string."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor is enough: all of a machine's CPUs are one type here
                k, _, v = line.partition(":")
                fields.setdefault(k.strip(), v.strip())
    except OSError:
        pass
    return Cpu(
        model_name=fields.get("model name") or platform.processor() or platform.machine() or "unknown CPU",
        family=fields.get("cpu family", "?"),
        model=fields.get("model", "?"),
        cpus=os.cpu_count() or 1,
        flags=tuple(fields.get("flags", "").split()),
    )


def describe() -> str:
    """One line: model name, family/model (the name alone is often generic under a hypervisor), CPU
    count and the speed-relevant extensions, e.g. 'Intel(R) Xeon(R) Processor (family 6, model 143),
    2 CPUs, avx512f avx512_vnni avx512_bf16 amx_bf16'."""
    c = cpu()
    ext = " ".join(c.speed_flags) or ("AVX2, no AVX-512" if "avx2" in c.flags else "no AVX2")
    return f"{c.model_name} (family {c.family}, model {c.model}), {c.cpus} CPUs, {ext}"


def key() -> str:
    """A short hash of what decides speed (model name, AVX flags, CPU count): per-machine cache keys."""
    c = cpu()
    avx = " ".join(sorted(f for f in c.flags if f.startswith("avx")))
    return hashlib.sha256(f"{c.model_name}|{avx}|{c.cpus}".encode()).hexdigest()[:12]
