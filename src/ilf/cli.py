"""The `ilf` command: thin. Parses flags, calls the modules named after the paper's steps.

Every command turns an IlfError into one red line on stderr and exit code 2. Heavy imports
(torch, transformers, ...) happen inside the commands so `ilf --help` stays instant.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from ilf.errors import IlfError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Imitation learning from Language Feedback (Chen et al. 2023) for code models.",
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)


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
            raise typer.Exit(2)
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]: finished work is kept; rerun the same command to resume")
            raise typer.Exit(130)

    return wrapper


# ---------------------------------------------------------------------------------------------
# EVAL


@app.command()
@friendly
def evaluate(
    samples: Path = typer.Argument(..., help="JSONL of {task_id, program | completion, ...}"),
    dataset: str = typer.Option("mbpp", help="mbpp | humaneval | humanevalplus | jsonl"),
    data_dir: Optional[Path] = typer.Option(None, envvar="ILF_DATA_DIR", help="Directory holding the data files."),
    tasks_file: Optional[Path] = typer.Option(None, help="Task JSONL when --dataset jsonl."),
    timeout: float = typer.Option(None, help="Seconds per program (default: sandbox.DEFAULT_TIMEOUT)."),
    workers: int = typer.Option(0, help="Parallel sandbox workers (0 = number of CPUs)."),
    output: Optional[Path] = typer.Option(None, help="Results JSONL (default: SAMPLES with _results suffix)."),
    k: List[int] = typer.Option([1, 10, 100], help="k for pass@k (reported when every task has >= k samples)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON summary object on stdout."),
):
    """EVAL: run each program against its task's unit tests in the sandbox; report pass@k."""
    from ilf.evaluation import evaluate_file

    evaluate_file(
        samples,
        dataset=dataset,
        data_dir=data_dir,
        tasks_file=tasks_file,
        timeout=timeout,
        workers=workers,
        output=output,
        ks=k,
        as_json=as_json,
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
    report = run_pipeline(cfg)
    err.print(f"\n[bold green]done[/]: report at [bold]{report}[/]")
    print(report)


# ---------------------------------------------------------------------------------------------
# Report


@app.command()
@friendly
def report(
    run_dirs: List[Path] = typer.Argument(..., help="One run directory, or several to compare side by side."),
    output: Optional[Path] = typer.Option(
        None, help="Output directory (default: RUN_DIR/report; several runs: compare-A-vs-B beside the first)."),
    bootstrap: Optional[int] = typer.Option(None, help="Bootstrap resamples for the 95% CIs (default: config's report.bootstrap, else 2000)."),
    seed: Optional[int] = typer.Option(None, help="Bootstrap seed (default 0)."),
):
    """Tables (pass@k with 95% bootstrap CIs, π_Refine pass rates, feedback) and figures from run directories."""
    from ilf import report as rep

    if len(run_dirs) == 1 and output is None:
        path = rep.write_report(run_dirs[0], resamples=bootstrap, seed=seed)
    else:
        path = rep.compare_runs(run_dirs, output, resamples=bootstrap, seed=seed)
    err.print(f"[bold green]report[/]: [bold]{path}[/]")
    print(path)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
