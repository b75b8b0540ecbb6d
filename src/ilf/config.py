"""The run config: typed dataclasses loaded from TOML, with command-line overrides.

One name per setting everywhere: the TOML key `refine.n` is the flag `--refine.n` (or the override
`refine.n=10`) and the column `refine.n` in reports. `ilf run` with no file uses `DEFAULT` (the demo
that fits 15 minutes on a 2-core CPU); `configs/paper.toml` is the paper's full experiment.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ilf.errors import IlfError
from ilf.generation.base import SamplingParams

FEEDBACK_SOURCES = ("authors", "human", "llm", "trace")
REFINE_MODES = ("fewshot", "finetune")
METHODS = ("zero-shot", "ilf", "gold", "human-refinements", "llm-1shot", "llm-2shot", "rft")


@dataclass
class ModelConfig:
    base: str = "qwen2.5-coder-0.5b-instruct"  # π_θ: bundled name, HF dir, .gguf file or hub id
    engine: str = "auto"  # sampling engine; auto = fastest available (vllm on a GPU)
    # openvino engine: matrices as f16 (a fine-tuning update survives) or q8_0 (faster, but its error
    # exceeds a small update). Every model of a run is sampled at this one precision, so methods compare.
    weights: str = "f16"


@dataclass
class SampleConfig:
    """Sampling x0 ~ π_θ on the tasks that get feedback (not used with feedback.source = authors)."""

    n: int = 30
    temperature: float = SamplingParams.temperature
    top_p: float = SamplingParams.top_p
    top_k: int = SamplingParams.top_k
    max_new_tokens: int = SamplingParams.max_new_tokens


@dataclass
class FeedbackConfig:
    source: str = "authors"  # authors (the paper's 195 human annotations) | human (ilf annotate) | llm | trace
    tasks: str = "train"  # split name or id ranges ("311-400")
    max_tasks: int = 0  # 0 = all; else the first max_tasks eligible tasks (by id)
    only_unsolved: bool = True  # the paper keeps tasks where π_θ got no sample right
    human_db: str = ""  # source = human: SQLite store of `ilf annotate` (default RUN_DIR/feedback.db)
    llm_model: str = ""  # source = llm: model spec (default: model.base) or an OpenAI-compatible model name
    llm_engine: str = ""  # default: model.engine
    llm_base_url: str = ""  # for the openai engine
    llm_shots: int = 1  # few-shot human examples in the LLM's feedback prompt (paper: 1 or 2)
    # source = llm: show the task's reference solution to the feedback writer (a teacher who knows a
    # correct program; not in the paper, whose annotators had none). The feedback stays in words.
    llm_reference: bool = False
    # llm-1shot / llm-2shot baselines: (feedback, refinement) draws per x0 by the LLM, sampled at
    # refine.temperature / refine.top_p (0 = refine.n, as π_Refine's samples per x0).
    llm_n: int = 0


@dataclass
class RefineConfig:
    """π_Refine: repairs x0 given f, in the paper's OLD CODE / FEEDBACK / REFINEMENT format."""

    mode: str = "fewshot"  # fewshot: k human triples in the prompt | finetune: train π_Refine on triples
    shots: int = 2
    examples_tasks: str = "refine"  # tasks whose human annotations teach π_Refine (MBPP_Refine)
    model: str = ""  # base of π_Refine (default: model.base)
    n: int = 10
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 0
    max_new_tokens: int = 256
    # Drop passing refinements farther than this from x0 (bounded edit distance in [0, 1]; 1.0 = keep all).
    max_edit_distance: float = 1.0
    # Table 2's control: refinements per x0 sampled with ANOTHER task's feedback (0 = off). If π_Refine
    # repairs as often with unrelated feedback, it is not using the feedback.
    shuffled_n: int = 0


@dataclass
class TrainConfig:
    """FINETUNE settings (the paper's defaults; see ilf.finetune.FinetuneConfig for every option)."""

    learning_rate: float = 5e-6
    batch_size: int = 32  # effective batch (gradient accumulation fills it)
    per_device_batch_size: int = 4
    epochs: float = 2.0
    max_length: int = 1024
    lora: bool = False
    bf16: bool = True
    gradient_checkpointing: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # passed to FinetuneConfig as-is


@dataclass
class SweepConfig:
    """The paper's FINETUNE sweep (Appendix A.1): each trained method is fine-tuned once per grid
    setting, sampled on validation tasks (MBPP_Refine by default, never eval.tasks), and trained
    with the setting of the best pass rate. An empty list keeps that [finetune] value; all three
    empty = no sweep. The paper's grid: lr 1e-6,5e-6,1e-5 x batch 32,64,128 x epochs 1,2,5."""

    learning_rates: list[float] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    epochs: list[float] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)  # trained methods to sweep; empty = every trained one
    tasks: str = "refine"
    max_tasks: int = 40  # the first max_tasks validation tasks (0 = all)
    n: int = 5
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 0
    max_new_tokens: int = 256

    def enabled(self) -> bool:
        return bool(self.learning_rates or self.batch_sizes or self.epochs)


@dataclass
class EvalConfig:
    tasks: str = "test"  # MBPP_Test (11-110)
    n: int = 30
    temperature: float = SamplingParams.temperature
    top_p: float = SamplingParams.top_p
    top_k: int = SamplingParams.top_k
    max_new_tokens: int = SamplingParams.max_new_tokens
    methods: list[str] = field(default_factory=lambda: ["zero-shot", "ilf"])
    timeout: float = 0.0  # seconds per program; 0 = the sandbox default


@dataclass
class ReportConfig:
    perplexity: bool = True  # Figure 3 analog: perplexity of training data sources under the base model
    bootstrap: int = 2000


@dataclass
class RunConfig:
    name: str = "demo"
    run_dir: str = ""  # default: runs/<name>
    dataset: str = "mbpp"
    data_dir: str = ""  # default: ../shared/data beside the project, or $ILF_DATA_DIR
    seed: int = 0
    rounds: int = 1  # > 1: π_θ* becomes the next round's π_θ (the paper's proposed iteration)
    # FINETUNE seeds per trained method (seed, seed+1, ...): training randomness shows in the report;
    # seed i > 0 of a method is evaluated as "<method>@s<i>" (sampling seeds stay the run's, so pairs compare).
    train_seeds: int = 1
    model: ModelConfig = field(default_factory=ModelConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    finetune: TrainConfig = field(default_factory=TrainConfig)
    refine_finetune: TrainConfig = field(default_factory=TrainConfig)  # π_Refine's FINETUNE (mode = finetune)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def resolved_run_dir(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path("runs") / self.name


# ---------------------------------------------------------------------------------------------
# The built-in default: all of Algorithm 1 at demo scale, <= 15 minutes on 2 CPU cores.

BUILTIN_DIR = Path(__file__).parent / "configs"  # demo.toml (the default), paper.toml


def builtin_configs() -> dict[str, Path]:
    return {p.stem: p for p in sorted(BUILTIN_DIR.glob("*.toml"))}


DEFAULT_TOML = (BUILTIN_DIR / "demo.toml").read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Loading with one-line errors


def _key_line(text: str, dotted: str) -> int | None:
    """Best-effort line number of a dotted key in TOML text (tomllib gives none)."""
    *sections, key = dotted.split(".")
    section = ".".join(sections)
    current = ""
    for i, line in enumerate(text.splitlines(), start=1):
        s = line.strip()
        m = re.match(r"^\[([^\]]+)\]", s)
        if m:
            current = m.group(1).strip()
            continue
        if current == section and re.match(rf"^{re.escape(key)}\s*=", s):
            return i
    return None


def _type_ok(value: Any, tp: Any) -> tuple[bool, Any]:
    """Check (and gently coerce int -> float) a TOML value against a dataclass field type."""
    origin = typing.get_origin(tp)
    if tp is float:
        if isinstance(value, bool):
            return False, value
        if isinstance(value, (int, float)):
            return True, float(value)
        return False, value
    if tp is int:
        return (isinstance(value, int) and not isinstance(value, bool)), value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is str:
        return isinstance(value, str), value
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, list):
            return False, value
        out = []
        for v in value:
            ok, v2 = _type_ok(v, inner)
            if not ok:
                return False, value
            out.append(v2)
        return True, out
    if origin is dict or tp is dict:
        return isinstance(value, dict), value
    return True, value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _build(cls: type, data: dict[str, Any], where: str, text: str, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        line = _key_line(text, dotted) if text else None
        loc = f"{where}:{line}" if line else where
        if key not in fields:
            known = ", ".join(sorted(prefix + k for k in fields))
            raise IlfError(f"{loc}: unknown config key '{dotted}' (known: {known})")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise IlfError(f"{loc}: '{dotted}' must be a table [{dotted}]")
            kwargs[key] = _build(tp, value, where, text, prefix=f"{dotted}.")
            continue
        ok, coerced = _type_ok(value, tp)
        if not ok:
            raise IlfError(
                f"{loc}: config key '{dotted}' must be {_type_name(tp)}, got {type(value).__name__} ({value!r})"
            )
        kwargs[key] = coerced
    return cls(**kwargs)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _parse_value(raw: str) -> Any:
    """A command-line value as TOML would read it; bare words are strings."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """`key=value`, `--key value` or `--key=value` (dotted keys) -> nested dict."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        a = args[i]
        if a.startswith("--"):
            a = a[2:]
            if "=" not in a:
                if i + 1 >= len(args):
                    raise IlfError(f"command line: option '--{a}' needs a value")
                a = f"{a}={args[i + 1]}"
                i += 1
        if "=" not in a:
            raise IlfError(f"command line: cannot read '{args[i]}' (expected key=value or --key value)")
        key, raw = a.split("=", 1)
        key = key.strip().replace("-", "_") if "." not in key else ".".join(p.replace("-", "_") for p in key.split("."))
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = _parse_value(raw)
        i += 1
    return out


def validate(cfg: RunConfig, where: str = "config", text: str = "", overridden: set[str] | None = None) -> RunConfig:
    """Check every value; the error names where the bad value came from: the command line when
    a `key=value` override set it, else the config file and the key's line."""

    def bad(key: str, msg: str):
        if overridden and any(o == key or o.startswith(key + ".") or key.startswith(o + ".") for o in overridden):
            raise IlfError(f"command line: config key '{key}' {msg}")
        line = _key_line(text, key) if text else None
        raise IlfError(f"{where}{f':{line}' if line else ''}: config key '{key}' {msg}")

    if cfg.feedback.source not in FEEDBACK_SOURCES:
        bad("feedback.source", f"must be one of {', '.join(FEEDBACK_SOURCES)}, got {cfg.feedback.source!r}")
    if cfg.refine.mode not in REFINE_MODES:
        bad("refine.mode", f"must be one of {', '.join(REFINE_MODES)}, got {cfg.refine.mode!r}")
    for m in cfg.eval.methods:
        if m not in METHODS:
            bad("eval.methods", f"has unknown method {m!r}; known: {', '.join(METHODS)}")
    if cfg.rounds < 1:
        bad("rounds", "must be >= 1")
    if cfg.train_seeds < 1:
        bad("train_seeds", "must be >= 1")
    from ilf.generation.weights import WEIGHT_FORMATS

    if cfg.model.weights not in WEIGHT_FORMATS:
        bad("model.weights", f"must be one of {', '.join(WEIGHT_FORMATS)}, got {cfg.model.weights!r}")
    if cfg.rounds > 1 and cfg.feedback.source == "authors":
        bad("rounds", "must be 1 with feedback.source = 'authors': their feedback is on CodeGen-6B's fixed programs, "
            "so every round would train on the same data (use feedback.source = trace or llm for rounds > 1)")
    for key, v in [("sample.n", cfg.sample.n), ("refine.n", cfg.refine.n), ("eval.n", cfg.eval.n)]:
        if v < 1:
            bad(key, "must be >= 1")
    for key, v in [
        ("sample.temperature", cfg.sample.temperature),
        ("refine.temperature", cfg.refine.temperature),
        ("eval.temperature", cfg.eval.temperature),
        ("sweep.temperature", cfg.sweep.temperature),
    ]:
        if not (math.isfinite(v) and v >= 0):
            bad(key, f"must be a finite number >= 0, got {v}")
    for key, v in [("sample.top_p", cfg.sample.top_p), ("refine.top_p", cfg.refine.top_p), ("eval.top_p", cfg.eval.top_p)]:
        if not 0 < v <= 1:  # also refuses nan
            bad(key, f"must be in (0, 1], got {v}")
    for key, v in [("sample.top_k", cfg.sample.top_k), ("refine.top_k", cfg.refine.top_k), ("eval.top_k", cfg.eval.top_k),
                   ("feedback.max_tasks", cfg.feedback.max_tasks), ("feedback.llm_shots", cfg.feedback.llm_shots)]:
        if v < 0:
            bad(key, f"must be >= 0, got {v}")
    for key, v in [("sample.max_new_tokens", cfg.sample.max_new_tokens), ("refine.max_new_tokens", cfg.refine.max_new_tokens),
                   ("eval.max_new_tokens", cfg.eval.max_new_tokens), ("sweep.max_new_tokens", cfg.sweep.max_new_tokens)]:
        if v < 1:
            bad(key, f"must be >= 1, got {v}")
    if not 0 <= cfg.refine.max_edit_distance <= 1:  # also refuses nan
        bad("refine.max_edit_distance", f"must be in [0, 1] (bounded edit distance; 1 keeps all), got {cfg.refine.max_edit_distance}")
    if not (math.isfinite(cfg.eval.timeout) and cfg.eval.timeout >= 0):
        bad("eval.timeout", f"must be a finite number of seconds >= 0 (0 = the sandbox default), got {cfg.eval.timeout}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", cfg.name):
        bad("name", f"must be letters, digits, '.', '_' or '-' (it names runs/<name>/), got {cfg.name!r}")
    if cfg.report.bootstrap < 1:
        bad("report.bootstrap", f"must be >= 1, got {cfg.report.bootstrap}")
    for section in ("finetune", "refine_finetune"):
        tc = getattr(cfg, section)
        for key in ("learning_rate", "epochs"):
            v = getattr(tc, key)
            if not (math.isfinite(v) and v > 0):
                bad(f"{section}.{key}", f"must be a finite number > 0, got {v}")
        for key, least in (("batch_size", 1), ("per_device_batch_size", 1), ("max_length", 32)):
            if getattr(tc, key) < least:
                bad(f"{section}.{key}", f"must be >= {least}, got {getattr(tc, key)}")
        from ilf.finetune import FinetuneConfig

        names = {f.name for f in dataclasses.fields(FinetuneConfig)}
        unknown = sorted(set(tc.extra) - names)
        if unknown:
            bad(f"{section}.extra", f"has unknown FINETUNE option(s) {', '.join(unknown)} (known: {', '.join(sorted(names))})")
    if cfg.refine.shots < 0:
        bad("refine.shots", "must be >= 0")
    sw = cfg.sweep
    if any(v <= 0 for v in sw.learning_rates) or any(v < 1 for v in sw.batch_sizes) or any(v <= 0 for v in sw.epochs):
        bad("sweep", "learning_rates and epochs must be > 0 and batch_sizes >= 1")
    for m in sw.methods:
        if m not in METHODS or m == "zero-shot":
            bad("sweep.methods", f"has {m!r}, which is not a trained method")
    if sw.n < 1 or sw.temperature < 0 or not 0 < sw.top_p <= 1 or sw.max_tasks < 0:
        bad("sweep", "needs n >= 1, temperature >= 0, 0 < top_p <= 1, max_tasks >= 0")
    if cfg.feedback.llm_n < 0:
        bad("feedback.llm_n", "must be >= 0 (0 = refine.n)")
    if cfg.refine.shuffled_n < 0:
        bad("refine.shuffled_n", "must be >= 0 (0 = no shuffled-feedback control)")
    if cfg.dataset != "mbpp":
        bad("dataset", "must be 'mbpp' for the pipeline (HumanEval(+) has no training split; use `ilf evaluate`)")
    from ilf.tasks import parse_ranges

    for key, spec in [("feedback.tasks", cfg.feedback.tasks), ("refine.examples_tasks", cfg.refine.examples_tasks),
                      ("eval.tasks", cfg.eval.tasks), ("sweep.tasks", cfg.sweep.tasks)]:
        try:
            parse_ranges(spec)
        except IlfError as e:
            bad(key, str(e))
    if cfg.sweep.enabled():
        val = parse_ranges(cfg.sweep.tasks) or set()
        if val & (parse_ranges(cfg.eval.tasks) or set()):
            bad("sweep.tasks", "overlaps eval.tasks: settings are never chosen on the tasks that measure them")
        if val & (parse_ranges(cfg.feedback.tasks) or set()):
            bad("sweep.tasks", "overlaps feedback.tasks: the validation tasks must not be in the training data")
    if cfg.data_dir and not Path(cfg.data_dir).is_dir():
        bad("data_dir", f"is not a directory: {cfg.data_dir}")
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> RunConfig:
    """DEFAULT, or a TOML file, then command-line overrides; validated."""
    if path is not None and not Path(path).exists() and str(path) in builtin_configs():
        path = builtin_configs()[str(path)]  # `ilf run paper`
    if path is None:
        where, text = str(BUILTIN_DIR / "demo.toml"), DEFAULT_TOML
    else:
        p = Path(path)
        if not p.exists():
            raise IlfError(f"{p}: config file not found")
        from ilf.jsonl import read_text

        where, text = str(p), read_text(p)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise IlfError(f"{where}: invalid TOML ({e})") from None
    cfg = _build(RunConfig, data, where, text)
    overridden: set[str] = set()
    if overrides:
        over = parse_overrides(overrides) if isinstance(overrides, list) else overrides
        cfg = _build(RunConfig, _merge(to_dict(cfg), over), "command line", "")
        overridden = set(_dotted_keys(over))
    return validate(cfg, where, text, overridden)


def _dotted_keys(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        out += _dotted_keys(v, key + ".") if isinstance(v, dict) else [key]
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def to_toml(cfg: RunConfig) -> str:
    """Resolved config as TOML (written into the run directory)."""

    def val(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, float):
            return repr(v)
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {val(x)}" for k, x in v.items()) + "}"
        return str(v)

    d = to_dict(cfg)
    lines = [f"{k} = {val(v)}" for k, v in d.items() if not isinstance(v, dict)]
    for k, v in d.items():
        if isinstance(v, dict):
            lines.append(f"\n[{k}]")
            lines.extend(f"{kk} = {val(vv)}" for kk, vv in v.items())
    return "\n".join(lines) + "\n"
