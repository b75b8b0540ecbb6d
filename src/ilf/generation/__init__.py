"""Sampling engines behind one interface (`ilf.generation.base`), one file per engine.

    from ilf.generation import get_engine, SamplingParams
    with get_engine("openvino", "qwen2.5-coder-0.5b-instruct") as eng:
        outs = eng.generate(prompts, SamplingParams(n=10, temperature=0.8, stop=["\\ndef "]))

Every engine class is constructed as `Cls(model_spec, **options)`, where model_spec is anything
`ilf.models.resolve_model` accepts (or, for the OpenAI-compatible engine, the server's model name).
Engine modules are imported only when asked for, so heavy libraries load only when used.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from ilf.errors import IlfError
from ilf.generation.base import Completion, Engine, SamplingParams, prompt_seed

# name -> "module:Class". The names are the values of `ilf sample --engine`.
ENGINES: dict[str, str] = {
    "transformers": "ilf.generation.hf:HFEngine",
    "openvino": "ilf.generation.openvino:OpenVINOEngine",
    "vllm": "ilf.generation.vllm:VLLMEngine",
    "openai": "ilf.generation.openai:OpenAIEngine",
}
ALIASES = {"hf": "transformers", "ov": "openvino"}


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def default_engine() -> str:
    """vLLM on a CUDA GPU; on a CPU the fastest engine measured (benchmarks/bench_sampling.py):
    OpenVINO GenAI, else transformers when openvino-genai is not installed."""
    if _cuda_available() and importlib.util.find_spec("vllm") is not None:
        return "vllm"
    if importlib.util.find_spec("openvino_genai") is not None:
        return "openvino"
    return "transformers"


def resolve_engine(name: str | None) -> str:
    """An engine setting as the engine's name: "auto" (ModelConfig.engine's default), "" or None is
    default_engine(); an alias is its engine."""
    if not name or name == "auto":
        return default_engine()
    return ALIASES.get(name, name)


def engine_class(name: str | None) -> type[Engine]:
    key = resolve_engine(name)
    if key not in ENGINES:
        raise IlfError(f"unknown engine {name!r}; expected one of {', '.join(ENGINES)}")
    mod_name, cls_name = ENGINES[key].split(":")
    try:
        mod = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        if e.name and (e.name == mod_name or mod_name.startswith(e.name + ".")):
            raise IlfError(f"engine {key!r} is not available in this installation ({mod_name} missing)") from None
        raise IlfError(f"engine {key!r} needs the package {e.name!r}, which is not installed") from None
    return getattr(mod, cls_name)


# Options only some engines take: every caller passes them, the engine that uses them gets them.
ENGINE_ONLY = {"weights": "openvino", "base_url": "openai"}


def get_engine(name: str | None, model_spec: Any = None, *, weights: str | None = None, base_url: str | None = None, **kw: Any) -> Engine:
    """The one way ilf opens an engine: load `model_spec` in engine `name` ("auto", "" or None =
    default_engine()). `weights` (ModelConfig.weights) reaches the openvino engine and `base_url`
    the openai engine only, so callers pass their settings as they are. A model the engine cannot
    load (a broken config.json, missing weights) is one IlfError naming it."""
    name = resolve_engine(name)
    for key, value in (("weights", weights), ("base_url", base_url)):
        if value and ENGINE_ONLY[key] == name:
            kw[key] = value
    cls = engine_class(name)
    try:
        return cls(model_spec, **kw)
    except IlfError:
        raise
    except (ValueError, KeyError, OSError, TypeError) as e:
        msg = (str(e).strip().splitlines() or [""])[0][:300]
        raise IlfError(
            f"{getattr(model_spec, 'spec', model_spec)}: the {name} engine cannot load this model ({type(e).__name__}: {msg})"
        ) from None


__all__ = [
    "ENGINES",
    "Completion",
    "Engine",
    "SamplingParams",
    "default_engine",
    "engine_class",
    "get_engine",
    "prompt_seed",
    "resolve_engine",
]
