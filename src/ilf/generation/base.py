"""The one small interface every sampling engine implements (one engine per file, like evalplus).

An engine turns prompts into completions: `generate(prompts, params)` returns, for each prompt,
`params.n` Completion objects in a deterministic order. Engines never post-process text beyond
stop strings: cutting a completion down to the intended program is `ilf.extraction`'s job.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 0.8  # 0 means greedy
    top_p: float = 0.95
    top_k: int = 0  # 0 = off
    max_new_tokens: int = 256
    stop: list[str] = field(default_factory=list)
    seed: int = 0

    def __post_init__(self):
        """One validation for every caller (commands, config, pipeline, server)."""
        import math

        from ilf.errors import IlfError

        if not isinstance(self.n, int) or self.n < 1:
            raise IlfError(f"sampling: n must be an integer >= 1, got {self.n!r}")
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature) and self.temperature >= 0):
            raise IlfError(f"sampling: temperature must be a finite number >= 0, got {self.temperature!r}")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise IlfError(f"sampling: top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise IlfError(f"sampling: top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise IlfError(f"sampling: max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")


@dataclass
class Completion:
    text: str  # generated text (after the prompt), cut at the first stop string (stop string excluded)
    num_tokens: int  # generated tokens counted by the engine
    finish_reason: str = "stop"  # "stop" (eos or stop string) | "length"


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut `text` at the earliest stop string (excluded). Returns (text, whether it was cut)."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def repeat_to_n(comps: list[Completion], n: int) -> list[Completion]:
    """Greedy decoding runs once: copy its completion(s) up to n samples (fresh objects)."""
    if len(comps) >= n:
        return comps
    return [Completion(c.text, c.num_tokens, c.finish_reason) for c in comps * n][:n]


def prompt_seed(seed: int, prompt: str) -> int:
    """A per-prompt seed that depends only on the run seed and the prompt text."""
    import zlib

    return (seed * 1_000_003 + zlib.crc32(prompt.encode("utf-8"))) % (2**31 - 1)


class Engine(ABC):
    """A loaded model that samples completions. Create with `ilf.generation.get_engine`."""

    name: str = "base"

    @abstractmethod
    def generate(
        self,
        prompts: Sequence[str],
        params: SamplingParams,
        progress: Optional[Callable[[int, list[Completion]], None]] = None,
    ) -> list[list[Completion]]:
        """Return params.n completions per prompt. `progress(i, completions)` is called as each
        prompt finishes (for progress bars and per-task resumable writes).

        Reproducibility contract: each prompt is seeded from (params.seed, the prompt text) alone,
        e.g. `prompt_seed(params.seed, prompt)`, so results do not depend on batching, order or
        on where a resumed run restarted."""

    def close(self) -> None:  # free memory / stop servers
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
