"""The report: tables and figures computed from a run directory's per-sample artifacts.

`write_report(run_dir)` writes RUN_DIR/report/{report.md, report.json, *.png}; `compare_runs(dirs, out)`
puts several runs side by side (one row per run x method). Every number comes from the per-sample
files (eval/<method>/results.jsonl, r<N>/refinements.jsonl, feedback.jsonl, perplexity.jsonl); the
summary.json files only supply the sampling protocol (model, engine, temperature, ...).

Confidence intervals: percentile bootstrap over tasks. A method's score is the mean over tasks of a
per-task value (pass@k from the unbiased estimator of Chen et al. 2021, or 1 if any sample passed);
tasks are resampled with replacement BOOTSTRAP_RESAMPLES times (seeded) and the 2.5th/97.5th
percentiles of the resampled means bound the 95% interval. Differences against zero-shot use the same
resampled task sets for both methods (paired bootstrap), which is what decides "ILF beats zero-shot".

`compute_perplexities(...)` gives the pipeline the paper's Figure 3 input: the perplexity of each
training-data source's completions under the base model (completion tokens only).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

from ilf.errors import IlfError
from ilf.jsonl import atomic_open, write_json
from ilf.report.analysis import analyze_results, analyze_run, base_method, compare_results_analyses, compress_ids, seed_groups
from ilf.report.figures import plot_ilf_rounds, plot_metric_vs_x, plot_pass_at_k, plot_pass_curve, plot_perplexity, plot_refine_rounds
from ilf.report.markdown import pct, render_markdown, render_results, render_results_comparison
from ilf.report.perplexity import completion_token_ids, compute_perplexities
from ilf.stats import BOOTSTRAP_RESAMPLES, bootstrap_ci, pass_at_k

__all__ = [
    "BOOTSTRAP_RESAMPLES",
    "analyze_results",
    "analyze_run",
    "bootstrap_ci",
    "compare_runs",
    "completion_token_ids",
    "compress_ids",
    "compute_perplexities",
    "pass_at_k",
    "pct",
    "write_report",
    "write_results_report",
]

# ---------------------------------------------------------------------------------------------
# Entry points


def _write_text(path: Path, text: str) -> Path:
    with atomic_open(path) as f:
        f.write(text)
    return path


def _figures(runs: list[tuple[str, dict]], out: Path, suffix: str) -> dict[str, str]:
    compare = len(runs) > 1
    figs: dict[str, str] = {}
    rows = [((f"{label}: " if compare else "") + m["method"], m) for label, a in runs for m in a["methods"]]
    if rows:
        figs["pass_at_k"] = plot_pass_at_k(rows, out / "pass_at_k.png", f"Pass rates per method{suffix}").name
        if any(m["pass_curve"] for _, m in rows):
            figs["pass_curve"] = plot_pass_curve(rows, out / "pass_at_k_curve.png", f"pass@k by k{suffix}").name
    ref = [(label if compare else "", [r for r in a["refine"] if "metrics" in r]) for label, a in runs]
    if any(rs for _, rs in ref):
        figs["refine_rounds"] = plot_refine_rounds(ref, out / "refine_rounds.png", f"π_Refine pass rate per round{suffix}").name
    rounds = [(label if compare else "", a.get("rounds", [])) for label, a in runs]
    if any(rs for _, rs in rounds):
        figs["ilf_rounds"] = plot_ilf_rounds(rounds, out / "ilf_rounds.png", f"π_θ* after each ILF round{suffix}").name
    ppl = [(label if compare else "", {s: v for s, v in a["_perplexity_values"].items() if v}) for label, a in runs]
    if any(vals for _, vals in ppl):
        figs["perplexity"] = plot_perplexity(ppl, out / "perplexity.png", f"Training data perplexity under the base model{suffix}").name
    return figs


def _write(runs: list[tuple[str, dict]], out: Path, title: str, suffix: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    figs = _figures(runs, out, suffix)
    payload = {
        "figures": figs,
        "runs": [{"label": label, **{k: v for k, v in a.items() if not k.startswith("_")}} for label, a in runs],
    }
    write_json(out / "report.json", payload)
    return _write_text(out / "report.md", render_markdown(runs, figs, title))


def write_report(
    run_dir: str | os.PathLike, resamples: Optional[int] = None, seed: Optional[int] = None, output: str | os.PathLike | None = None
) -> Path:
    """Write RUN_DIR/report/report.md (+ report.json, figures), or into `output`; return the
    report.md path. A results file of `ilf evaluate` instead of a run directory: its pass rates
    per split, beside it."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir() and (run_dir.is_file() or Path(str(run_dir) + ".gz").is_file()):
        return write_results_report(run_dir, output, resamples=resamples, seed=seed)
    a = analyze_run(run_dir, resamples, seed)
    # a packed run lives in <experiment>/run: name it by its experiment
    name = a["run"] if a["run"] != "run" else f"{run_dir.resolve().parent.name}/run"
    return _write([(a["run"], a)], Path(output) if output else run_dir / "report", f"ILF report: {name}", f" ({name})")


def compare_runs(
    run_dirs: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike | None = None,
    resamples: Optional[int] = None,
    seed: Optional[int] = None,
) -> Path:
    """Several runs side by side (one row per run x method); return output_dir/report.md.

    Default output: <parent of the first run>/compare-<run1>-vs-<run2>...
    """
    if not run_dirs:
        raise IlfError("compare_runs: no run directories given")
    analyses = [analyze_run(d, resamples, seed) for d in run_dirs]
    labels = [a["run"] for a in analyses]
    if len(set(labels)) < len(labels):  # same directory name under different parents: use the paths
        labels = [str(Path(d)) for d in run_dirs]
    if output_dir is None:
        output_dir = Path(run_dirs[0]).resolve().parent / ("compare-" + "-vs-".join(a["run"] for a in analyses))[:120]
    runs = list(zip(labels, analyses))
    return _write(runs, Path(output_dir), "ILF runs compared: " + ", ".join(labels), "")


def write_results_report(
    results: str | os.PathLike,
    output_dir: str | os.PathLike | None = None,
    resamples: Optional[int] = None,
    seed: Optional[int] = None,
    control: str | os.PathLike | None = None,
) -> Path:
    """report.md (+ report.json, pass@k curve) of one `ilf evaluate` results file, in
    OUTPUT_DIR (default: <results name>_report beside it); returns the report.md path.
    control: for π_Refine's results, the results of π_θ sampled again (`ilf refine --control`):
    the report then compares the two task by task with the same budget."""
    results = Path(results)
    a = analyze_results(results, resamples, seed)
    if control is not None:
        from ilf.jsonl import load_jsonl, stored
        from ilf.report.control import control_comparison

        refined = load_jsonl(stored(results))
        if not any("feedback_id" in r for r in refined):
            raise IlfError(f"{results}: --control compares π_Refine's results (records with feedback_id); these are not")
        a["control"] = control_comparison(refined, load_jsonl(stored(control)), resamples, seed or 0)
    name = results.name.removesuffix(".gz").removesuffix(".jsonl")
    out = Path(output_dir) if output_dir else results.with_name(f"{name}_report")
    out.mkdir(parents=True, exist_ok=True)
    figs = {}
    rows = [(r["split"], r) for r in a["splits"] if r["pass_curve"]]
    if rows:
        figs["pass_curve"] = plot_pass_curve(rows, out / "pass_at_k_curve.png", f"pass@k by k ({name})").name
    write_json(out / "report.json", {"figures": figs, **a})
    return _write_text(out / "report.md", render_results(a, figs, f"Pass rates: {name}"))


def compare_results(
    results: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike | None = None,
    resamples: Optional[int] = None,
    seed: Optional[int] = None,
    x: Optional[Sequence[float | None]] = None,
    x_label: str = "x",
    labels: Optional[Sequence[str]] = None,
    common_tasks: bool = False,
) -> Path:
    """report.md (+ report.json, pass@k curves) of several `ilf evaluate` results files, each
    against the first, paired over common tasks (before/after ILF, few-shot vs fine-tuned π_Refine,
    related vs shuffled feedback). Default OUTPUT_DIR: compare-<names> beside the first.

    x: a number per file (None: a reference line) for a pass@1-against-x figure, the paper's
    Figure 4 (pass rate by the number of training tasks).

    labels: a name per file (default: the file names). Names '<method>@s<i>' mark FINETUNE seed i of
    a method ('<method>' alone is seed 0): each method with several seeds then gets the seed table
    of a run's report (mean over seeds, paired with the first file and with 'ilf').

    common_tasks: score every file on only the tasks all of them have (e.g. feedback sources on the
    same x0), so each row's pass rates, not only the paired Δ, are over the same tasks."""
    if x is not None and (len(x) != len(results) or all(v is None for v in x)):
        raise IlfError(f"ilf report: --x needs one value per results file ({len(results)}), at least one a number")
    common = None
    if common_tasks:
        from ilf.jsonl import stored
        from ilf.report.analysis import _count_passes

        sets = [set(_count_passes(stored(Path(r)))) for r in results]
        common = set.intersection(*sets)
        if not common:
            raise IlfError("ilf report --common-tasks: the results files share no task")
    analyses = [analyze_results(r, resamples, seed, tasks=common) for r in results]
    names = [Path(r).name.removesuffix(".gz").removesuffix(".jsonl") for r in results]
    given = labels is not None
    if given:
        labels = [str(v) for v in labels]
        if len(labels) != len(results) or len(set(labels)) != len(labels) or not all(labels):
            raise IlfError(f"ilf report: --labels needs one distinct, non-empty name per results file ({len(results)}), got {labels}")
    else:
        labels = names if len(set(names)) == len(names) else [str(Path(r)) for r in results]
    b = analyses[0]["bootstrap"]
    rows = compare_results_analyses(analyses, b["resamples"], b["seed"])
    methods = [{"method": label, "per_task": a["per_task"], "metrics": a["splits"][0]["metrics"]} for label, a in zip(labels, analyses)]
    seeds = [g for g in seed_groups(methods, b["resamples"], b["seed"], baseline=base_method(labels[0])) if len(g["seeds"]) > 1]
    out = Path(output_dir) if output_dir else Path(results[0]).resolve().parent / ("compare-" + "-vs-".join(names))[:120]
    out.mkdir(parents=True, exist_ok=True)
    figs = {}
    curves = [(label, r) for label, r in zip(labels, rows) if r["pass_curve"]]
    if curves:
        figs["pass_curve"] = plot_pass_curve(curves, out / "pass_at_k_curve.png", "pass@k by k").name
    if x is not None:
        figs["pass_vs_x"] = plot_metric_vs_x(
            [(label, r, v) for label, r, v in zip(labels, rows, x)], out / "pass_at_1_vs_x.png", f"pass@1 by {x_label}", x_label
        ).name
        for r, v in zip(rows, x):
            r["x"] = v
    write_json(
        out / "report.json",
        {
            "figures": figs,
            "labels": labels,
            "bootstrap": b,
            "rows": rows,
            "x_label": x_label if x is not None else None,
            "train_seeds": seeds,
        },
    )
    return _write_text(
        out / "report.md",
        render_results_comparison(
            labels,
            rows,
            b,
            figs,
            "Results compared: " + ", ".join(labels),
            x_label if x is not None else None,
            seeds=seeds,
            labelled=given,
            common_tasks=len(common) if common is not None else None,
        ),
    )
