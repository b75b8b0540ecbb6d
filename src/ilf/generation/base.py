"""The one small interface every sampling engine implements (one engine per file, like evalplus).

An engine turns prompts into completions: `generate(prompts, params)` returns, for each prompt,
`params.n` Completion objects in a deterministic order. Engines never post-process text beyond
stop strings: cutting a completion down to the intended program is `ilf.extraction`'s job.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Optional, Sequence

from ilf.settings import check, setting


@dataclass
class Sampling:
    """The sampling settings a user chooses; one definition for every config section and command."""

    n: int = setting(1, "Samples per prompt.", ge=1)
    temperature: float = setting(0.8, "Sampling temperature (0 = greedy).", ge=0)
    top_p: float = setting(0.95, "Nucleus sampling: keep the smallest token set of this probability.", gt=0, le=1)
    top_k: int = setting(0, "Top-k sampling (0 = off).", ge=0)
    max_new_tokens: int = setting(256, "Most tokens generated per sample.", ge=1)

    def __post_init__(self):
        check(self)  # one validation for every caller (commands, config, pipeline, server)

    def sampling(self) -> dict:
        """These settings alone (a subclass's other fields left out)."""
        return {f.name: getattr(self, f.name) for f in fields(Sampling)}

    def params(self, seed: int = 0, *, n: int | None = None, stop: Sequence[str] = ()) -> "SamplingParams":
        """The one conversion from a step's config (or a command's flags) to what an engine receives."""
        return SamplingParams(**{**self.sampling(), **({"n": n} if n else {})}, stop=list(stop), seed=seed)


@dataclass
class SamplingParams(Sampling):
    """What an engine receives: the user's settings, the stop strings and the run seed."""

    stop: list[str] = field(default_factory=list)
    seed: int = 0


def params_fields(params: SamplingParams) -> dict[str, Any]:
    """The sampling parameters a record carries (samples and π_Refine's refinements alike)."""
    return {
        "seed": params.seed,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k,
        "max_new_tokens": params.max_new_tokens,
    }


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

    def close(self) -> None:  # noqa: B027 (optional: free memory / stop servers)
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
