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

import json
import math
import os
import re
import statistics
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from ilf.config import RunConfig, read_run_config
from ilf.errors import IlfError
from ilf.jsonl import Appender, read_json, read_jsonl, require, stored, write_json, write_jsonl

# Bootstrap: the paper reports no intervals; 2000 percentile resamples keep the CI bounds stable to
# about 0.5 percentage points at 100 tasks and cost milliseconds with numpy.
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95

# pass@k columns of the Table 4 analog (each shown only when every task has >= k samples).
TABLE_KS = (1, 10)

# Rows in the paper's order (Table 4): baselines first, ILF last; unknown methods alphabetically between.
METHOD_ORDER = ("zero-shot", "gold", "human-refinements", "llm-1shot", "llm-2shot", "rft")

# Perplexity (Figure 3 analog). Batch of 8 MBPP programs fits comfortably in memory with the 0.5B
# model; logits are kept only for the completion positions (the vocabulary is 152k wide).
PERPLEXITY_BATCH_SIZE = 8
# Measured on this 2-core CPU with benchmarks/bench_perplexity.py (see docs/report.md).
PERPLEXITY_DTYPE = "float32"
# Longer inputs keep their last PERPLEXITY_MAX_LENGTH tokens: the prompt is cut, never the completion's end.
PERPLEXITY_MAX_LENGTH = 2048

FIGURE_DPI = 130

# ---------------------------------------------------------------------------------------------
# Maths


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """Unbiased pass@k of one task."""
    return float(per_task_pass_at_k([num_samples], [num_correct], k)[0])


def per_task_pass_at_k(ns: Sequence[int], cs: Sequence[int], k: int) -> np.ndarray:
    """ilf.evaluation's estimator: every pass@k ilf prints comes from one formula."""
    from ilf.evaluation import estimate_pass_at_k

    if not len(ns):
        return np.zeros(0)
    return np.asarray(estimate_pass_at_k(np.asarray(ns), np.asarray(cs), k), dtype=float).reshape(-1)


def per_task_values(counts: dict[str, tuple[int, int]], metric: str) -> np.ndarray:
    """One value per task: metric is 'pass@K' or 'one_plus_correct'."""
    if metric == "one_plus_correct":
        return np.array([1.0 if c > 0 else 0.0 for n, c in counts.values()])
    k = int(metric.split("@", 1)[1])
    return per_task_pass_at_k([n for n, _ in counts.values()], [c for _, c in counts.values()], k)


def bootstrap_indices(num_items: int, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """(resamples, num_items) indices drawn with replacement; shared by paired comparisons."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, num_items, size=(resamples, num_items))


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
    indices: Optional[np.ndarray] = None,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (one value per task)."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return (math.nan, math.nan)
    idx = bootstrap_indices(v.size, resamples, seed) if indices is None else indices
    means = v[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return (float(lo), float(hi))


def estimate(values: np.ndarray, resamples: int, seed: int, indices: Optional[np.ndarray] = None) -> dict[str, float]:
    """{'value', 'lo', 'hi'}: mean over tasks and its bootstrap CI."""
    if len(values) == 0:
        return {"value": math.nan, "lo": math.nan, "hi": math.nan}
    lo, hi = bootstrap_ci(values, resamples, seed, indices=indices)
    return {"value": float(np.mean(values)), "lo": lo, "hi": hi}


# ---------------------------------------------------------------------------------------------
# Reading artifacts (one clear error line per malformed record)


def _read_json(path: Path) -> Any:
    try:
        return read_json(path)
    except json.JSONDecodeError as e:
        raise IlfError(f"{path}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from None


def _read_json_object(path: Path) -> Optional[dict]:
    if not path.is_file():
        return None
    obj = _read_json(path)
    if not isinstance(obj, dict):
        raise IlfError(f"{path}:1: expected a JSON object, got {type(obj).__name__}")
    return obj


def _tid(task_id: Any) -> str:
    return str(task_id)


def _task_sort_key(task_id: str):
    m = re.search(r"(\d+)$", task_id)
    return (task_id[: m.start()] if m else task_id, int(m.group(1)) if m else -1)


def _count_passes(path: Path, group: Sequence[str] = ("task_id",)) -> dict[str, list[int]]:
    """{group key: [n, c]} from a results-like JSONL (fields in `group` + boolean `passed`)."""
    counts: dict[str, list[int]] = {}
    for line, rec in read_jsonl(path, allow_torn_tail=True):
        parts = [_tid(require(rec, f, (str, int), path, line)) for f in group]
        passed = require(rec, "passed", bool, path, line)
        key = "/".join(parts) if len(parts) > 1 else parts[0]
        nc = counts.setdefault(key, [0, 0])
        nc[0] += 1
        nc[1] += int(passed)
    return counts


def _sorted_counts(counts: dict[str, list[int]]) -> dict[str, tuple[int, int]]:
    return {k: (counts[k][0], counts[k][1]) for k in sorted(counts, key=_task_sort_key)}


def _count_lines(path: Path) -> Optional[int]:
    if not stored(path).is_file():
        return None
    return sum(1 for _ in read_jsonl(path, allow_torn_tail=True))


def compress_ids(ids: Iterable[str]) -> str:
    """'11-50, 60, 61-63' style for integer ids; otherwise the count and the first few ids."""
    ids = list(ids)
    if not ids:
        return "none"
    if all(i.isdigit() for i in ids):
        nums = sorted(int(i) for i in ids)
        parts, start, prev = [], nums[0], nums[0]
        for x in nums[1:] + [None]:
            if x is not None and x == prev + 1:
                prev = x
                continue
            parts.append(f"{start}-{prev}" if prev > start else f"{start}")
            if x is not None:
                start = prev = x
        return ", ".join(parts)
    shown = ", ".join(ids[:5])
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > 5 else "")


def _method_sort_key(method: str):
    base, _, seed = method.partition("@")
    s = int(seed[1:]) if seed[1:].isdigit() else 0
    if base in METHOD_ORDER:
        return (0, METHOD_ORDER.index(base), 0, s, method)
    m = re.fullmatch(r"ilf-r(\d+)", base)
    if m:
        return (2, 0, int(m.group(1)), s, method)
    if base == "ilf":
        return (3, 0, 0, s, method)
    return (1, 0, 0, s, method)


def _round_dirs(run_dir: Path) -> list[tuple[int, Path]]:
    out = []
    for p in run_dir.iterdir():
        m = re.fullmatch(r"r(\d+)", p.name)
        if m and p.is_dir():
            out.append((int(m.group(1)), p))
    return sorted(out)


# ---------------------------------------------------------------------------------------------
# Analysis of one run -> a JSON-able dict (report.json)

PROTOCOL_KEYS = ("dataset", "split", "engine", "temperature", "top_p", "max_new_tokens", "seed")


def _metrics_for(counts: dict[str, tuple[int, int]], resamples: int, seed: int) -> tuple[dict, list[str]]:
    """Table metrics (pass@k for k in TABLE_KS where every task has >= k samples, 1+ correct)."""
    ns = [n for n, _ in counts.values()]
    metrics: dict[str, dict] = {}
    names = [f"pass@{k}" for k in TABLE_KS if ns and min(ns) >= k] + ["one_plus_correct"]
    idx = bootstrap_indices(len(counts), resamples, seed) if counts else None
    for name in names:
        metrics[name] = estimate(per_task_values(counts, name), resamples, seed, indices=idx)
    return metrics, names


def _pass_curve(counts: dict[str, tuple[int, int]], resamples: int, seed: int) -> list[dict]:
    """pass@k for k = 1..min n, with CIs (the pass@k curve figure)."""
    if not counts:
        return []
    kmax = min(n for n, _ in counts.values())
    idx = bootstrap_indices(len(counts), resamples, seed)
    return [{"k": k, **estimate(per_task_values(counts, f"pass@{k}"), resamples, seed, indices=idx)} for k in range(1, kmax + 1)]


def _analyze_method(run_dir: Path, mdir: Path, resamples: int, seed: int, config: RunConfig | None) -> dict:
    method = mdir.name
    results = mdir / "results.jsonl"
    summary = _read_json_object(mdir / "summary.json") or {}
    counts = _sorted_counts(_count_passes(results))
    metrics, _ = _metrics_for(counts, resamples, seed)
    ns = [n for n, _ in counts.values()]

    # Protocol: summary.json (written by the pipeline), else the sample records, else config.toml's [eval].
    first: dict = next((rec for _, rec in read_jsonl(results, allow_torn_tail=True)), {})
    ev = dict(asdict(config.eval), dataset="mbpp") if config else {}  # the pipeline runs MBPP
    protocol = {key: summary.get(key, first.get(key, ev.get(key))) for key in PROTOCOL_KEYS}
    model = summary.get("model", first.get("model"))

    train_pairs = summary.get("train_pairs")
    if train_pairs is None and (method == "ilf" or re.fullmatch(r"ilf-r\d+", method)):
        rounds = _round_dirs(run_dir)
        rnum = int(method[5:]) if method != "ilf" else (rounds[-1][0] if rounds else None)
        if rnum is not None:
            train_pairs = _count_lines(run_dir / f"r{rnum}" / "train_pairs.jsonl")
    if method == "zero-shot" and train_pairs is None:
        train_pairs = 0

    # The stored summary is a convenience copy; flag it when it disagrees with the per-sample results.
    mismatch = None
    if isinstance(summary.get("pass@1"), (int, float)) and "pass@1" in metrics:
        if abs(summary["pass@1"] - metrics["pass@1"]["value"]) > 1e-6:
            mismatch = f"summary.json says pass@1 = {summary['pass@1']:.4f}, results.jsonl gives {metrics['pass@1']['value']:.4f}"

    return {
        "method": method,
        "model": model,
        "results": str(results),
        "num_tasks": len(counts),
        "num_samples": int(sum(ns)),
        "n_min": min(ns) if ns else 0,
        "n_max": max(ns) if ns else 0,
        "train_pairs": train_pairs,
        "protocol": protocol,
        "metrics": metrics,
        "pass_curve": _pass_curve(counts, resamples, seed),
        "per_task": {t: {"n": n, "c": c} for t, (n, c) in counts.items()},
        "summary_mismatch": mismatch,
    }


def _paired_deltas(methods: list[dict], resamples: int, seed: int, baseline: str = "zero-shot") -> None:
    """Add `delta_vs_<baseline>` (method - baseline, paired bootstrap over common tasks) in place."""
    base = next((m for m in methods if m["method"] == baseline), None)
    if base is None:
        return
    for m in methods:
        if m is base:
            continue
        common = [t for t in m["per_task"] if t in base["per_task"]]
        if not common:
            continue
        idx = bootstrap_indices(len(common), resamples, seed)
        deltas = {}
        for name in m["metrics"]:
            if name not in base["metrics"]:
                continue
            a = per_task_values({t: (m["per_task"][t]["n"], m["per_task"][t]["c"]) for t in common}, name)
            b = per_task_values({t: (base["per_task"][t]["n"], base["per_task"][t]["c"]) for t in common}, name)
            deltas[name] = estimate(a - b, resamples, seed, indices=idx)
        m["delta_vs_" + baseline] = {"num_common_tasks": len(common), "metrics": deltas}


def base_method(method: str) -> str:
    """'ilf@s2' -> 'ilf': seed i > 0 of a trained method is evaluated under '<method>@s<i>'."""
    return method.split("@", 1)[0]


def _seed_groups(methods: list[dict], resamples: int, seed: int) -> list[dict]:
    """Training randomness: per trained method, each FINETUNE seed's pass@1 and the mean over seeds.

    `mean` bootstraps over tasks the per-task pass@1 averaged over the method's seeds; `minus_zero_shot`
    and `ilf_minus` are the same seed-averaged values, paired with zero-shot / with ILF's seed average
    over the tasks both share. Per seed, `ilf_minus` pairs ILF seed i with the method's seed i."""
    groups: dict[str, list[dict]] = {}
    for m in methods:
        groups.setdefault(base_method(m["method"]), []).append(m)

    def per_task_mean(ms: list[dict], tasks: list[str]) -> np.ndarray:
        return np.mean([per_task_values({t: (m["per_task"][t]["n"], m["per_task"][t]["c"]) for t in tasks}, "pass@1")
                        for m in ms], axis=0)

    def common(*groups_: list[dict]) -> list[str]:
        sets = [set(m["per_task"]) for g in groups_ for m in g]
        return sorted(set.intersection(*sets), key=_task_sort_key) if sets else []

    zero, ilf = groups.get("zero-shot"), groups.get("ilf")
    out = []
    for name, ms in groups.items():
        if name == "zero-shot" or len(ms) < 2 and name != "ilf":
            continue
        ms = sorted(ms, key=lambda m: m["method"])
        row: dict[str, Any] = {"method": name, "seeds": [m["method"] for m in ms],
                               "pass@1": [m["metrics"].get("pass@1", {}).get("value") for m in ms]}
        tasks = common(ms)
        if not tasks:
            continue
        idx = bootstrap_indices(len(tasks), resamples, seed)
        row["mean"] = estimate(per_task_mean(ms, tasks), resamples, seed, indices=idx)
        if zero:
            t0 = common(ms, zero)
            if t0:
                row["minus_zero_shot"] = estimate(per_task_mean(ms, t0) - per_task_mean(zero, t0), resamples, seed,
                                                  indices=bootstrap_indices(len(t0), resamples, seed))
        if ilf and name != "ilf":
            t1 = common(ms, ilf)
            if t1:
                row["ilf_minus"] = estimate(per_task_mean(ilf, t1) - per_task_mean(ms, t1), resamples, seed,
                                            indices=bootstrap_indices(len(t1), resamples, seed))
                by_seed = {m["method"].split("@")[1] if "@" in m["method"] else "s0": m for m in ms}
                row["ilf_minus_per_seed"] = {}
                for im in ilf:
                    key = im["method"].split("@")[1] if "@" in im["method"] else "s0"
                    if key in by_seed:
                        tt = common([im], [by_seed[key]])
                        row["ilf_minus_per_seed"][key] = estimate(
                            per_task_mean([im], tt) - per_task_mean([by_seed[key]], tt), resamples, seed,
                            indices=bootstrap_indices(len(tt), resamples, seed))
        out.append(row)
    return out


def _analyze_refine(run_dir: Path, resamples: int, seed: int) -> list[dict]:
    """π_Refine per round (Table 3 analog): pass rates of refinements per (x0, f) pair, and |R|."""
    rounds = []
    for rnum, rdir in _round_dirs(run_dir):
        refs = rdir / "refinements.jsonl"
        row: dict[str, Any] = {"round": rnum, "dir": str(rdir)}
        x0 = rdir / "results.jsonl"
        if stored(x0).is_file():
            c0 = _count_passes(x0)
            row["x0_samples"] = sum(n for n, _ in c0.values())
            row["x0_tasks"] = len(c0)
            row["x0_pass_rate"] = sum(c for _, c in c0.values()) / max(1, row["x0_samples"])
        row["feedback"] = _count_lines(rdir / "feedback.jsonl")
        row["train_pairs"] = _count_lines(rdir / "train_pairs.jsonl")
        if row["train_pairs"] is not None:
            row["train_tasks"] = len({_tid(r.get("task_id")) for _, r in read_jsonl(rdir / "train_pairs.jsonl")})
        if not stored(refs).is_file():
            row["missing"] = "refinements.jsonl"
            rounds.append(row)
            continue
        counts = _sorted_counts(_count_passes(refs, group=("task_id", "feedback_id")))
        metrics, _ = _metrics_for(counts, resamples, seed)
        ns = [n for n, _ in counts.values()]
        kmax = min(ns) if ns else 0
        if kmax > max(TABLE_KS) and counts:  # also pass@n, the paper's "1+ correct" written as pass@k
            idx = bootstrap_indices(len(counts), resamples, seed)
            metrics[f"pass@{kmax}"] = estimate(per_task_values(counts, f"pass@{kmax}"), resamples, seed, indices=idx)
        dists = [
            float(r["edit_distance"])
            for _, r in read_jsonl(refs, allow_torn_tail=True)
            if r.get("passed") is True and isinstance(r.get("edit_distance"), (int, float))
        ]
        row.update(
            {
                "pairs": len(counts),
                "pair_tasks": len({k.split("/", 1)[0] for k in counts}),
                "refinements": int(sum(ns)),
                "n_min": kmax,
                "n_max": max(ns) if ns else 0,
                "metrics": metrics,
                "mean_edit_distance_passing": statistics.fmean(dists) if dists else None,
            }
        )
        shuffled = rdir / "refinements_shuffled.jsonl"
        if stored(shuffled).is_file():
            row["shuffled"] = _shuffled_control(counts, shuffled, resamples, seed)
        rounds.append(row)
    return rounds


def _shuffled_control(related: dict[str, tuple[int, int]], path: Path, resamples: int, seed: int) -> dict:
    """Table 2 analog: π_Refine with each x0's own feedback vs another task's, paired per x0.
    The control's records carry `<feedback_id>~shuffled`; pass@1 = c/n per x0."""
    raw = _count_passes(path, group=("task_id", "feedback_id"))
    shuf = {k.removesuffix("~shuffled"): (n, c) for k, (n, c) in raw.items()}
    common = [k for k in related if k in shuf]
    a = np.array([related[k][1] / related[k][0] for k in common])
    b = np.array([shuf[k][1] / shuf[k][0] for k in common])
    idx = bootstrap_indices(len(common), resamples, seed) if common else None
    return {
        "pairs": len(common),
        "n": min((shuf[k][0] for k in common), default=0),
        "related": estimate(a, resamples, seed, indices=idx),
        "shuffled": estimate(b, resamples, seed, indices=idx),
        "delta": estimate(a - b, resamples, seed, indices=idx),
        "related_one_plus": estimate((a > 0).astype(float), resamples, seed, indices=idx),
        "shuffled_one_plus": estimate((b > 0).astype(float), resamples, seed, indices=idx),
    }


def _sweep_tables(run_dir: Path) -> list[dict]:
    """The FINETUNE sweep per method (sweep/<method>/table.jsonl, best.json), as the pipeline left it."""
    out = []
    for table in sorted({stored(p.with_name("table.jsonl")) for p in run_dir.glob("sweep/*/table.jsonl*")}):
        rows = [r for _, r in read_jsonl(table, allow_torn_tail=True)]
        best = _read_json_object(table.parent / "best.json")
        out.append({"method": table.parent.name, "rows": rows, "best": (best or {}).get("setting")})
    return out


def _feedback_stats(run_dir: Path) -> list[dict]:
    """Per source: count, words per feedback, share containing code (Table 6 analog)."""
    recs = []
    paths = [rdir / "feedback.jsonl" for _, rdir in _round_dirs(run_dir)]
    # The LLM-feedback baselines (llm-1shot/2shot) keep their feedback beside their training pairs.
    paths += sorted({p.with_name("feedback.jsonl") for p in (run_dir / "baselines").glob("*/feedback.jsonl*")}) if (run_dir / "baselines").is_dir() else []
    for path in paths:
        if not stored(path).is_file():
            continue
        for line, rec in read_jsonl(path, allow_torn_tail=True):
            require(rec, "feedback", str, path, line)
            source = require(rec, "source", str, path, line)
            if path.parent.parent.name == "baselines":
                source = f"{source} ({path.parent.name})"
            recs.append({**rec, "source": source})
    if not recs:
        return []
    tasks: dict[str, set] = {}
    for r in recs:
        tasks.setdefault(r["source"], set()).add(_tid(r.get("task_id")))
    from ilf.feedback.stats import feedback_stats  # one rule, so `ilf feedback-stats` and the report agree

    out = []
    for source, st in sorted(feedback_stats(recs).items()):
        out.append({
            "source": source, "count": st.n, "tasks": len(tasks.get(source, ())), "mean_words": st.words_mean,
            "median_words": st.words_median, "share_with_code": st.share_with_code,
            "sentences_mean": st.sentences_mean, "edit_distance_mean": st.edit_distance_mean,
            "code_rule": "feedback with at least one whole line of Python (ilf.feedback.text.code_lines)",
        })
    return out


def _perplexity_stats(run_dir: Path) -> tuple[list[dict], dict[str, list[float]]]:
    path = run_dir / "perplexity.jsonl"
    if not stored(path).is_file():
        return [], {}
    by: dict[str, list[tuple[float, int]]] = {}
    for line, rec in read_jsonl(path, allow_torn_tail=True):
        source = require(rec, "source", str, path, line)
        ppl = require(rec, "perplexity", (int, float, type(None)), path, line)
        ntok = require(rec, "num_tokens", int, path, line)
        if ppl is None or not math.isfinite(ppl):
            continue  # an empty completion has no perplexity
        by.setdefault(source, []).append((float(ppl), ntok))
    rows, values = [], {}
    for source in _order_sources(by):
        v = [p for p, _ in by[source]]
        values[source] = v
        rows.append(
            {
                "source": source,
                "count": len(v),
                "mean": statistics.fmean(v),
                "median": statistics.median(v),
                "std": statistics.pstdev(v),
                "mean_tokens": statistics.fmean(t for _, t in by[source]),
            }
        )
    return rows, values


def _order_sources(names: Iterable[str]) -> list[str]:
    order = ("gold", "human-refinements", "ilf")
    return sorted(names, key=lambda s: (order.index(s) if s in order else len(order), s))


def _stages(run_dir: Path) -> tuple[Optional[dict], list[dict]]:
    manifest = _read_json_object(run_dir / "manifest.json")
    if manifest is None:
        return None, []
    stages = manifest.get("stages", {})
    path = run_dir / "manifest.json"
    if not isinstance(stages, dict):
        raise IlfError(f"{path}:1: field 'stages' must be an object, got {type(stages).__name__}")
    rows = []
    for name, st in stages.items():
        if not isinstance(st, dict):
            raise IlfError(f"{path}:1: field 'stages.{name}' must be an object, got {type(st).__name__}")
        sec = st.get("seconds")
        status = st.get("status")
        if name == "report" and status == "running":
            status = "running (this report)"
        rows.append({"stage": name, "status": status, "seconds": float(sec) if isinstance(sec, (int, float)) else None})
    return manifest, rows


def analyze_run(run_dir: str | os.PathLike, resamples: Optional[int] = None, seed: Optional[int] = None) -> dict:
    """Every number of the report for one run directory, as a JSON-able dict (report.json)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise IlfError(f"{run_dir}: run directory not found")
    config = read_run_config(run_dir)
    if resamples is None:
        resamples = config.report.bootstrap if config else BOOTSTRAP_RESAMPLES
    if seed is None:
        seed = BOOTSTRAP_SEED
    if resamples < 1:
        raise IlfError(f"--bootstrap must be >= 1, got {resamples}")
    manifest, stages = _stages(run_dir)

    methods, unfinished = [], []
    eval_dir = run_dir / "eval"
    if eval_dir.is_dir():
        for mdir in sorted((p for p in eval_dir.iterdir() if p.is_dir()), key=lambda p: _method_sort_key(p.name)):
            if stored(mdir / "results.jsonl").is_file():
                methods.append(_analyze_method(run_dir, mdir, resamples, seed, config))
            else:
                unfinished.append(mdir.name)
    _paired_deltas(methods, resamples, seed)
    seeds = _seed_groups(methods, resamples, seed)
    ppl_rows, ppl_values = _perplexity_stats(run_dir)
    return {
        "run": run_dir.resolve().name,
        "run_dir": str(run_dir),
        "created_at": (manifest or {}).get("created_at"),
        "code_version": (manifest or {}).get("code_version"),
        "bootstrap": {"resamples": resamples, "seed": seed, "confidence": CONFIDENCE, "unit": "task"},
        "stages": stages,
        "methods": methods,
        "train_seeds": seeds,
        "unfinished_methods": unfinished,
        "refine": _analyze_refine(run_dir, resamples, seed),
        "sweep": _sweep_tables(run_dir),
        "feedback": _feedback_stats(run_dir),
        "perplexity": ppl_rows,
        "_perplexity_values": ppl_values,
    }


# ---------------------------------------------------------------------------------------------
# Figures (matplotlib, Agg; each saved atomically)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=FIGURE_DPI, bbox_inches="tight")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        _plt().close(fig)
    return path


def _metric_label(name: str) -> str:
    return "1+ correct" if name == "one_plus_correct" else name


def plot_pass_at_k(rows: list[tuple[str, dict]], path: Path, title: str) -> Path:
    """Grouped bars: one group per metric, one bar per (label, method analysis), 95% CI error bars."""
    plt = _plt()
    metrics = [m for m in [f"pass@{k}" for k in TABLE_KS] + ["one_plus_correct"] if any(m in a["metrics"] for _, a in rows)]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 + 0.55 * len(rows) * len(metrics)), 4.2))
    width = 0.8 / max(1, len(rows))
    colors = plt.get_cmap("tab10")
    for i, (label, a) in enumerate(rows):
        xs, ys, lo, hi = [], [], [], []
        for j, m in enumerate(metrics):
            if m not in a["metrics"]:
                continue
            e = a["metrics"][m]
            xs.append(j - 0.4 + width * (i + 0.5))
            ys.append(100 * e["value"])
            lo.append(100 * (e["value"] - e["lo"]))
            hi.append(100 * (e["hi"] - e["value"]))
        bars = ax.bar(xs, ys, width * 0.92, yerr=[lo, hi], capsize=3, label=label, color=colors(i % 10))
        for b, y in zip(bars, ys):
            ax.annotate(f"{y:.1f}", (b.get_x() + b.get_width() / 2, 0), xytext=(0, 2), textcoords="offset points",
                        ha="center", va="bottom", fontsize=7, color="white" if y > 8 else "black")
    ax.set_xticks(range(len(metrics)), [_metric_label(m) for m in metrics])
    ax.set_ylabel("% of tasks (mean over tasks)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.09), frameon=False, ncol=min(4, len(rows)))
    return _save(fig, path)


def plot_pass_curve(rows: list[tuple[str, dict]], path: Path, title: str) -> Path:
    """pass@k against k (1..n) per method, shaded 95% CI."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colors = plt.get_cmap("tab10")
    for i, (label, a) in enumerate(rows):
        curve = a["pass_curve"]
        if not curve:
            continue
        ks = [p["k"] for p in curve]
        ax.plot(ks, [100 * p["value"] for p in curve], marker="o", ms=3, label=label, color=colors(i % 10))
        ax.fill_between(ks, [100 * p["lo"] for p in curve], [100 * p["hi"] for p in curve], alpha=0.15, color=colors(i % 10))
    ax.set_xlabel("k (samples allowed per task)")
    ax.set_ylabel("pass@k (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    return _save(fig, path)


def plot_perplexity(panels: list[tuple[str, dict[str, list[float]]]], path: Path, title: str) -> Path:
    """Histogram of per-program perplexity per training-data source (the paper's Figure 3), log x;
    one panel per run (label, {source: values}), dashed lines at the medians."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

    panels = [(label, vals) for label, vals in panels if vals]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8.0, 1.0 + 3.2 * len(panels)), sharex=True, squeeze=False)
    allv = [v for _, vals in panels for vs in vals.values() for v in vs if v > 0]
    lo, hi = min(allv), max(allv)
    if hi <= lo:
        hi = lo * 1.5
    bins = np.geomspace(lo * 0.95, hi * 1.05, 25)
    colors = plt.get_cmap("tab10")
    for ax, (label, values) in zip(axes[:, 0], panels):
        for i, source in enumerate(_order_sources(values)):
            vs = values[source]
            med = statistics.median(vs)
            ax.hist(vs, bins=bins, alpha=0.25, color=colors(i % 10), histtype="stepfilled")
            ax.hist(vs, bins=bins, color=colors(i % 10), histtype="step", linewidth=1.6,
                    label=f"{source} (n={len(vs)}, median {med:.2f})")
            ax.axvline(med, color=colors(i % 10), linestyle="--", linewidth=1)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(ScalarFormatter())
        ax.tick_params(axis="x", which="minor", labelsize=7)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("programs")
        if label:
            ax.set_title(label, fontsize=10)
        ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes[-1, 0].set_xlabel("perplexity of the completion under the base model (log scale; dashed: medians)")
    fig.suptitle(title)
    return _save(fig, path)


def plot_refine_rounds(rows: list[tuple[str, list[dict]]], path: Path, title: str) -> Path:
    """π_Refine pass@1 and 1+ correct per round (error bars = 95% CI over (x0, f) pairs)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colors = plt.get_cmap("tab10")
    ci = 0
    series = len(rows) * 2
    for label, rounds in rows:
        for metric, marker in (("pass@1", "o"), ("one_plus_correct", "s")):
            pts = [(r["round"], r["metrics"][metric]) for r in rounds if metric in r.get("metrics", {})]
            if not pts:
                continue
            dodge = 0.3 * (ci - (series - 1) / 2) / max(1, series - 1)  # side by side within a round
            xs = [p[0] + dodge for p in pts]
            ys = [100 * p[1]["value"] for p in pts]
            err = [[100 * (p[1]["value"] - p[1]["lo"]) for p in pts], [100 * (p[1]["hi"] - p[1]["value"]) for p in pts]]
            name = f"{label}: {_metric_label(metric)}" if label else _metric_label(metric)
            ax.errorbar(xs, ys, yerr=err, marker=marker, capsize=4, label=name, color=colors(ci % 10))
            ci += 1
    rounds_all = sorted({r["round"] for _, rs in rows for r in rs})
    ax.set_xticks(rounds_all, [f"round {r}" for r in rounds_all])
    if len(rounds_all) == 1:
        ax.set_xlim(rounds_all[0] - 1, rounds_all[0] + 1)
    ax.set_xlabel("ILF round")
    ax.set_ylabel("% of (x0, feedback) pairs")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------
# Markdown


def _pct(e: Optional[dict], signed: bool = False) -> str:
    if not e or e.get("value") is None or (isinstance(e["value"], float) and math.isnan(e["value"])):
        return "–"
    fmt = "{:+.1f}" if signed else "{:.1f}"
    return f"{fmt.format(100 * e['value'])} [{fmt.format(100 * e['lo'])}, {fmt.format(100 * e['hi'])}]"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    def cell(x):
        return "–" if x is None else str(x).replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(cell(x) for x in r) + " |" for r in rows]
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return "–" if v is None else str(v)


def _protocol_lines(runs: list[tuple[str, dict]]) -> list[str]:
    """State the sampling protocol once; values that differ between rows are listed per row."""
    methods = [(label, m) for label, a in runs for m in a["methods"]]
    if not methods:
        return []
    lines = []
    task_sets = {tuple(m["per_task"]) for _, m in methods}
    ids = sorted({t for _, m in methods for t in m["per_task"]}, key=_task_sort_key)
    proto = {}
    for key in PROTOCOL_KEYS:
        vals = {json.dumps(m["protocol"].get(key)) for _, m in methods}
        proto[key] = json.loads(vals.pop()) if len(vals) == 1 else "differs per row (see report.json)"
    nmin = min(m["n_min"] for _, m in methods)
    nmax = max(m["n_max"] for _, m in methods)
    nstr = str(nmin) if nmin == nmax else f"{nmin}-{nmax}"
    # A named split ("test") is worth stating; an id range is already in the task list.
    split = f" ({proto['split']})" if isinstance(proto.get("split"), str) and re.search(r"[A-Za-z]", proto["split"]) else ""
    lines.append(
        f"**Protocol.** Dataset {_fmt(proto['dataset'])}{split}; {len(ids)} tasks ({compress_ids(ids)})"
        + ("" if len(task_sets) == 1 else ", not the same task set for every row (see the tasks column)")
        + f"; n = {nstr} samples per task; temperature {_fmt(proto['temperature'])}, top_p {_fmt(proto['top_p'])}, "
        f"max new tokens {_fmt(proto['max_new_tokens'])}, seed {_fmt(proto['seed'])}; engine {_fmt(proto['engine'])}. "
        "Each program is run against the task's unit tests in ilf's sandbox."
    )
    b = runs[0][1]["bootstrap"]
    lines.append(
        f"Scores are means over tasks, in %; brackets: {int(100 * b['confidence'])}% percentile bootstrap CI over tasks "
        f"({b['resamples']} resamples, seed {b['seed']}). pass@k uses the unbiased estimator of Chen et al. (2021); "
        "1+ correct = share of tasks with at least one passing sample."
    )
    return lines


def _methods_table(runs: list[tuple[str, dict]], with_run: bool) -> list[str]:
    methods = [(label, m) for label, a in runs for m in a["methods"]]
    names = [f"pass@{k}" for k in TABLE_KS if any(f"pass@{k}" in m["metrics"] for _, m in methods)] + ["one_plus_correct"]
    has_delta = any("delta_vs_zero-shot" in m for _, m in methods)
    header = (["run"] if with_run else []) + ["method", "model", "train pairs", "tasks", "n"] + [_metric_label(n) for n in names]
    if has_delta:
        header.append("Δ pass@1 vs zero-shot")
    rows = []
    for label, m in methods:
        n = str(m["n_min"]) if m["n_min"] == m["n_max"] else f"{m['n_min']}-{m['n_max']}"
        row = ([label] if with_run else []) + [m["method"], m["model"], m["train_pairs"], m["num_tasks"], n]
        row += [_pct(m["metrics"].get(name)) for name in names]
        if has_delta:
            d = m.get("delta_vs_zero-shot", {}).get("metrics", {}).get("pass@1")
            row.append(_pct(d, signed=True) if d else "–")
        rows.append(row)
    out = _table(header, rows)
    for label, m in methods:
        if m["summary_mismatch"]:
            out.append(f"\nNote ({label + ' / ' if with_run else ''}{m['method']}): {m['summary_mismatch']}; the table uses results.jsonl.")
    return out


def _seeds_table(runs: list[tuple[str, dict]], with_run: bool) -> list[str]:
    header = (["run"] if with_run else []) + ["method", "pass@1 per seed", "mean [95% CI]", "Δ vs zero-shot",
                                              "ILF − method", "ILF − method per seed"]
    rows = []
    for label, a in runs:
        for g in a.get("train_seeds", []):
            per = ", ".join("–" if v is None else f"{100 * v:.1f}" for v in g["pass@1"])
            ps = g.get("ilf_minus_per_seed") or {}
            rows.append(([label] if with_run else []) + [
                g["method"], per, _pct(g.get("mean")), _pct(g.get("minus_zero_shot"), signed=True) if g.get("minus_zero_shot") else "–",
                _pct(g.get("ilf_minus"), signed=True) if g.get("ilf_minus") else "–",
                "; ".join(f"{k}: {_pct(v, signed=True)}" for k, v in ps.items()) or "–"])
    return _table(header, rows)


def _refine_table(runs: list[tuple[str, dict]], with_run: bool) -> list[str]:
    rows = []
    kcols: list[str] = []
    for _, a in runs:
        for r in a["refine"]:
            for name in r.get("metrics", {}):
                if name.startswith("pass@") and name not in kcols:
                    kcols.append(name)
    kcols.sort(key=lambda s: int(s.split("@")[1]))
    header = (["run"] if with_run else []) + ["round", "(x0, f) pairs", "tasks", "refinements per pair"] + kcols + [
        "1+ correct", "|R| (train pairs)", "x0 pass rate"]
    for label, a in runs:
        for r in a["refine"]:
            if "missing" in r:
                rows.append(([label] if with_run else []) + [r["round"], r.get("feedback"), "–", f"no {r['missing']}"] + ["–"] * len(kcols)
                            + ["–", r.get("train_pairs"), _pct1(r.get("x0_pass_rate"))])
                continue
            n = str(r["n_min"]) if r["n_min"] == r["n_max"] else f"{r['n_min']}-{r['n_max']}"
            rows.append(([label] if with_run else []) + [r["round"], r["pairs"], r["pair_tasks"], n]
                        + [_pct(r["metrics"].get(k)) for k in kcols]
                        + [_pct(r["metrics"].get("one_plus_correct")), r.get("train_pairs"), _pct1(r.get("x0_pass_rate"))])
    return _table(header, rows)


def _pct1(v: Optional[float]) -> Optional[str]:
    return None if v is None else f"{100 * v:.1f}"


def render_markdown(runs: list[tuple[str, dict]], figures: dict[str, str], title: str) -> str:
    compare = len(runs) > 1
    L = [f"# {title}", ""]
    for label, a in runs:
        bits = [f"run directory `{a['run_dir']}`"]
        if a.get("created_at"):
            bits.append(f"created {a['created_at']}")
        if a.get("code_version"):
            bits.append(f"code {a['code_version']}")
        L.append(("- **" + label + "**: " if compare else "") + ", ".join(bits) + ("" if compare else "."))
    L += ["", "All numbers are recomputed from the per-sample files (`eval/<method>/results.jsonl`, "
          "`r<N>/refinements.jsonl`, `r<N>/feedback.jsonl`, `perplexity.jsonl`); `report.json` holds them all, "
          "including per-task counts.", ""]

    # Table 4 analog
    L += ["## Pass rates on the evaluation tasks (Table 4 analog)", ""]
    if any(a["methods"] for _, a in runs):
        L += _protocol_lines(runs) + [""] + _methods_table(runs, compare) + [""]
        if any("delta_vs_zero-shot" in m for _, a in runs for m in a["methods"]):
            L += ["Δ pass@1 vs zero-shot: difference in percentage points on the tasks both rows share, with a paired "
                  "bootstrap CI (the same resampled tasks for both); an interval that excludes 0 is a difference the "
                  "task sample supports.", ""]
        for key, cap in (("pass_at_k", "pass@k per method, 95% CI error bars"), ("pass_curve", "pass@k as a function of k")):
            if key in figures:
                L += [f"![{cap}]({figures[key]})", ""]
    else:
        L += ["No evaluation results (eval/<method>/results.jsonl) yet: this section is empty.", ""]
    if any(len(g["seeds"]) > 1 for _, a in runs for g in a.get("train_seeds", [])):
        L += ["### Training randomness (FINETUNE seeds)", "",
              "Each trained method was fine-tuned with several seeds (same data, same evaluation samples' seeds). "
              "Mean = per-task pass@1 averaged over seeds, 95% bootstrap CI over tasks; Δ columns pair the seed "
              "averages on the tasks both share; ILF − method per seed pairs ILF seed i with the method's seed i.", ""]
        L += _seeds_table(runs, compare) + [""]
    for label, a in runs:
        if a["unfinished_methods"]:
            L += [f"Not finished{' in ' + label if compare else ''} (no results.jsonl): {', '.join(a['unfinished_methods'])}.", ""]

    # Table 3 analog
    L += ["## π_Refine: pass rates of refinements (Table 3 analog)", ""]
    if any(a["refine"] for _, a in runs):
        L += ["For each (x0, f) pair — a failing program and its feedback — π_Refine samples n refinements, each "
              "run against the task's tests. Means over pairs with 95% bootstrap CIs over pairs. |R| = refinements "
              "kept for FINETUNE (one passing refinement per task); x0 pass rate = share of π_θ's samples that "
              "passed on the feedback tasks (absent when x0 came from the authors' file).", ""]
        L += _refine_table(runs, compare) + [""]
        if "refine_rounds" in figures:
            L += [f"![π_Refine pass rates per round]({figures['refine_rounds']})", ""]
        shuf = [(label, r) for label, a in runs for r in a["refine"] if r.get("shuffled")]
        if shuf:
            L += ["### Is the feedback used? Related vs shuffled feedback (Table 2 analog)", "",
                  "The same x0 refined with its own feedback and with another task's (refine.shuffled_n samples "
                  "each). pass@1 = share of passing refinements per x0; Δ is paired per x0 with a 95% bootstrap CI. "
                  "A Δ whose CI covers 0 means π_Refine repairs as often without the right feedback.", ""]
            L += _table((["run"] if compare else []) + ["round", "x0", "pass@1 related f", "pass@1 shuffled f",
                                                        "Δ related − shuffled", "1+ correct related", "1+ correct shuffled"],
                        [([label] if compare else []) + [r["round"], r["shuffled"]["pairs"], _pct(r["shuffled"]["related"]),
                         _pct(r["shuffled"]["shuffled"]), _pct(r["shuffled"]["delta"], signed=True),
                         _pct(r["shuffled"]["related_one_plus"]), _pct(r["shuffled"]["shuffled_one_plus"])]
                         for label, r in shuf]) + [""]
    else:
        L += ["No ILF rounds (r<N>/refinements.jsonl) in this run: this section is empty.", ""]

    sweeps = [(label, sw) for label, a in runs for sw in a.get("sweep", [])]
    if sweeps:
        L += ["## FINETUNE sweep (Appendix A.1)", "",
              "Each trained method fine-tuned once per setting and sampled on the validation tasks (sweep.tasks, "
              "never the test tasks); the setting with the best pass rate (marked) trains the evaluated models.", ""]
        rows = [([label] if compare else []) + [sw["method"], r["setting"], f"{100 * r['pass_rate']:.1f}",
                 r["num_tasks"], r["num_samples"], "best" if r["setting"] == sw["best"] else ""]
                for label, sw in sweeps for r in sw["rows"]]
        L += _table((["run"] if compare else []) + ["method", "setting", "validation pass rate (%)", "tasks", "samples", ""],
                    rows) + [""]

    # Training set sizes
    L += ["## Training sets", ""]
    rows = [([label] if compare else []) + [m["method"], m["train_pairs"]] for label, a in runs for m in a["methods"] if m["method"] != "zero-shot"]
    rows += [([label] if compare else []) + [f"round {r['round']} R", r.get("train_pairs")] for label, a in runs for r in a["refine"]]
    if rows:
        L += _table((["run"] if compare else []) + ["model / set", "training examples"], rows) + [""]
    else:
        L += ["No fine-tuned methods in this run.", ""]
    for label, a in runs:
        for r in a["refine"]:
            if r.get("train_pairs") == 0:
                L += [f"**R is empty in round {r['round']}{f' of {label}' if compare else ''}**: π_Refine repaired none of the "
                      f"(x0, f) pairs, so ILF had nothing to train on{' and stopped there' if r['round'] == 1 else ''}; "
                      "the methods trained on R's tasks (ILF, gold, human-refinements, RFT, LLM feedback) were not "
                      "trained, and only the other methods are evaluated above.", ""]

    # Feedback statistics
    L += ["## Feedback (Table 6 analog)", ""]
    if any(a["feedback"] for _, a in runs):
        rows = [([label] if compare else []) + [f["source"], f["count"], f.get("tasks"), f"{f['mean_words']:.1f}",
                                                 _fmt(f.get("median_words")), f"{100 * f['share_with_code']:.0f}%"]
                for label, a in runs for f in a["feedback"]]
        L += _table((["run"] if compare else []) + ["source", "feedback", "tasks", "words (mean)", "words (median)", "contains code"], rows)
        rules = sorted({f["code_rule"] for _, a in runs for f in a["feedback"] if f.get("code_rule")})
        L += ["", "Contains code: " + "; ".join(rules) + "." if rules else "", ""]
    else:
        L += ["No feedback.jsonl in any round: this section is empty.", ""]

    # Figure 3 analog
    L += ["## Perplexity of training data under the base model (Figure 3 analog)", ""]
    if any(a["perplexity"] for _, a in runs):
        rows = [([label] if compare else []) + [p["source"], p["count"], f"{p['mean']:.3f}", f"{p['median']:.3f}",
                                                 f"{p['std']:.3f}", f"{p['mean_tokens']:.0f}"]
                for label, a in runs for p in a["perplexity"]]
        L += ["Perplexity of each training completion under the base model π_θ: exp(mean negative log-likelihood of "
              "the completion's tokens, given its prompt). The paper's Figure 3 shows π_Refine's refinements with lower "
              "perplexity than gold programs and human-written refinements, i.e. closer to what the model itself writes.", ""]
        L += _table((["run"] if compare else []) + ["source", "programs", "mean", "median", "std", "tokens (mean)"], rows) + [""]
        if "perplexity" in figures:
            L += [f"![perplexity histogram]({figures['perplexity']})", ""]
    else:
        L += ["No perplexity.jsonl in this run (set report.perplexity = true): Figure 3 analog skipped.", ""]

    # Stages
    L += ["## Stages", ""]
    if any(a["stages"] for _, a in runs):
        rows = [([label] if compare else []) + [s["stage"], s["status"], "–" if s["seconds"] is None else f"{s['seconds']:.1f}"]
                for label, a in runs for s in a["stages"]]
        L += _table((["run"] if compare else []) + ["stage", "status", "seconds"], rows) + [""]
    else:
        L += ["No manifest.json: stage timings unknown.", ""]
    return "\n".join(L).rstrip() + "\n"


# ---------------------------------------------------------------------------------------------
# Entry points


def _write_text(path: Path, text: str) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
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


def write_report(run_dir: str | os.PathLike, resamples: Optional[int] = None, seed: Optional[int] = None) -> Path:
    """Write RUN_DIR/report/report.md (+ report.json, figures); return the report.md path."""
    run_dir = Path(run_dir)
    a = analyze_run(run_dir, resamples, seed)
    return _write([(a["run"], a)], run_dir / "report", f"ILF report: {a['run']}", f" ({a['run']})")


def compare_runs(run_dirs: Sequence[str | os.PathLike], output_dir: str | os.PathLike | None = None,
                 resamples: Optional[int] = None, seed: Optional[int] = None) -> Path:
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


# ---------------------------------------------------------------------------------------------
# Perplexity (Figure 3 input)


def _validate_sources(sources: dict[str, list[dict]]) -> None:
    if not isinstance(sources, dict):
        raise IlfError("compute_perplexities: sources must be a dict {source name: [records]}")
    for name, recs in sources.items():
        for i, rec in enumerate(recs):
            where = f"perplexity source '{name}' record {i}"
            if not isinstance(rec, dict):
                raise IlfError(f"{where}: expected an object with prompt, completion, task_id")
            for field, types in (("prompt", str), ("completion", str), ("task_id", (str, int))):
                if field not in rec:
                    raise IlfError(f"{where}: missing field '{field}'")
                if not isinstance(rec[field], types):
                    raise IlfError(f"{where}: field '{field}' has type {type(rec[field]).__name__}")


def _record_keys(sources: dict[str, list[dict]]) -> list[tuple[str, str, int, dict]]:
    """(source, task_id, occurrence, record): occurrence tells apart two records of one task in one source."""
    out = []
    for name, recs in sources.items():
        seen: dict[str, int] = {}
        for rec in recs:
            t = _tid(rec["task_id"])
            occ = seen.get(t, 0)
            seen[t] = occ + 1
            out.append((name, t, occ, rec))
    return out


def completion_token_ids(tokenizer, prompt: str, completion: str) -> tuple[list[int], int]:
    """(input ids of prompt + completion, index of the first completion token).

    As TRL's prompt-completion SFT: the prompt and the whole text are tokenized separately; tokens past
    the prompt's shared prefix are the completion (a token merging across the boundary counts as
    completion, so no completion character goes unscored)."""
    p = tokenizer(prompt)["input_ids"]
    full = tokenizer(prompt + completion)["input_ids"]
    start = 0
    while start < min(len(p), len(full)) and p[start] == full[start]:
        start += 1
    return list(full), start


def compute_perplexities(
    model_spec: Any,
    sources: dict[str, list[dict]],
    output: str | os.PathLike,
    *,
    batch_size: int = PERPLEXITY_BATCH_SIZE,
    dtype: str = PERPLEXITY_DTYPE,
    max_length: int = PERPLEXITY_MAX_LENGTH,
    progress: bool = True,
) -> Path:
    """Completion-only perplexity of every record under `model_spec`; writes `output` (perplexity.jsonl).

    sources: {"gold": [{"prompt", "completion", "task_id"}, ...], "ilf": [...], ...}. Output records:
    source, task_id, index (occurrence of the task within the source), perplexity = exp(mean NLL of the
    completion tokens), nll, num_tokens, model, dtype. Resumable: records already in `output` are kept;
    the finished file is rewritten atomically in the sources' order.
    """
    _validate_sources(sources)
    if batch_size < 1:
        raise IlfError(f"compute_perplexities: batch_size must be >= 1, got {batch_size}")
    output = Path(output)
    model_name = str(model_spec) if model_spec else "default"
    done: dict[tuple[str, str, int], dict] = {}
    if output.exists():
        for line, rec in read_jsonl(output, allow_torn_tail=True):
            key = (require(rec, "source", str, output, line), _tid(require(rec, "task_id", (str, int), output, line)),
                   require(rec, "index", int, output, line))
            if rec.get("model") != model_name:
                raise IlfError(f"{output}:{line}: field 'model' is {rec.get('model')!r}, not {model_name!r}; "
                               "delete the file to recompute under the new model")
            done[key] = rec
    keyed = _record_keys(sources)
    todo = [(s, t, o, r) for s, t, o, r in keyed if (s, t, o) not in done]
    if todo:
        for rec in _score(model_spec, model_name, todo, output, batch_size, dtype, max_length, progress):
            done[(rec["source"], _tid(rec["task_id"]), rec["index"])] = rec
    write_jsonl(output, [done[(s, t, o)] for s, t, o, _ in keyed if (s, t, o) in done])
    return output


def _score(model_spec, model_name, todo, output: Path, batch_size, dtype, max_length, progress):
    import torch
    import torch.nn.functional as F
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from ilf.progress import LogProgress

    from ilf.models import load_hf_model

    model, tok = load_hf_model(model_spec, dtype=dtype)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0

    items = []
    for s, t, o, rec in todo:
        ids, start = completion_token_ids(tok, rec["prompt"], rec["completion"])
        if len(ids) > max_length:  # keep the end: the prompt loses its beginning, the completion stays whole
            cut = len(ids) - max_length
            ids, start = ids[cut:], max(1, start - cut)
        start = max(start, 1)  # the first token has no prediction
        items.append((s, rec["task_id"], o, ids, start))
    # Longest first: similar lengths share a batch (less padding); the slowest batches show up early.
    order = sorted(range(len(items)), key=lambda i: -len(items[i][3]))

    columns = [TextColumn("perplexity"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
               TimeElapsedColumn(), TimeRemainingColumn()]
    with Appender(output) as app, torch.no_grad(), LogProgress(*columns, console=Console(stderr=True), disable=not progress) as bar:
        task = bar.add_task("perplexity (records)", total=len(items), rate="")
        import time

        t0 = time.perf_counter()
        ndone = 0
        for b in range(0, len(order), batch_size):
            batch = [items[i] for i in order[b: b + batch_size]]
            T = max(len(x[3]) for x in batch)
            ncomp = [len(x[3]) - x[4] for x in batch]
            keep = max(ncomp) + 1  # logits only at the positions that predict a completion token
            ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), T), dtype=torch.long)
            for r, x in enumerate(batch):  # left padding: every row's completion ends at column T-1
                ids[r, T - len(x[3]):] = torch.tensor(x[3])
                mask[r, T - len(x[3]):] = 1
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            try:
                logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=keep).logits
            except TypeError:  # architectures without logits_to_keep
                logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -keep:]
            for r, x in enumerate(batch):
                s, t, o, _, _ = x
                m = ncomp[r]
                if m <= 0:
                    nll, ppl = None, None
                else:
                    lg = logits[r, keep - 1 - m: keep - 1].float()
                    target = ids[r, T - m:]
                    nll = float(F.cross_entropy(lg, target, reduction="mean"))
                    ppl = math.exp(nll)
                rec = {"source": s, "task_id": t, "index": o, "perplexity": ppl, "nll": nll, "num_tokens": max(m, 0),
                       "model": model_name, "dtype": dtype}
                app.write(rec)
                yield rec
            ndone += len(batch)
            bar.update(task, advance=len(batch), rate=f"{ndone / (time.perf_counter() - t0):.2f} programs/s")
