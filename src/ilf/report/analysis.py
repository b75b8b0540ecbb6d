"""Every number of the report for one run directory, read from its per-sample artifacts (one clear
error line per malformed record), as a JSON-able dict (report.json)."""

from __future__ import annotations

import json
import math
import os
import re
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from ilf.config import RunConfig, read_run_config
from ilf.errors import IlfError
from ilf.jsonl import read_json, read_jsonl, require, stored
from ilf.stats import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    CONFIDENCE,
    bootstrap_indices,
    detectable_difference,
    estimate,
    per_task_values,
)

# pass@k columns of the Table 4 analog (each shown only when every task has >= k samples).
TABLE_KS = (1, 10)

# Rows in the paper's order (Table 4): baselines first, ILF last; unknown methods alphabetically between.
METHOD_ORDER = ("zero-shot", "gold", "human-refinements", "llm-1shot", "llm-2shot", "rft", "rft-all", "ilf-rft", "rft-dpo", "ilf-dpo")

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


def tid_text(task_id: Any) -> str:
    return str(task_id)


def task_sort_key(task_id: str):
    m = re.search(r"(\d+)$", task_id)
    return (task_id[: m.start()] if m else task_id, int(m.group(1)) if m else -1)


def _count_passes(path: Path, group: Sequence[str] = ("task_id",)) -> dict[str, list[int]]:
    """{group key: [n, c]} from a results-like JSONL (fields in `group` + boolean `passed`)."""
    counts: dict[str, list[int]] = {}
    for line, rec in read_jsonl(path, allow_torn_tail=True):
        if rec.get("refused"):  # a copy of x0 drawn again (refine.refuse_copies): not one of the n
            continue
        parts = [tid_text(require(rec, f, (str, int), path, line)) for f in group]
        passed = require(rec, "passed", bool, path, line)
        key = "/".join(parts) if len(parts) > 1 else parts[0]
        nc = counts.setdefault(key, [0, 0])
        nc[0] += 1
        nc[1] += int(passed)
    return counts


def _sorted_counts(counts: dict[str, list[int]]) -> dict[str, tuple[int, int]]:
    return {k: (counts[k][0], counts[k][1]) for k in sorted(counts, key=task_sort_key)}


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
        "mean_tokens": _mean_tokens(results),
        "protocol": protocol,
        "metrics": metrics,
        "pass_curve": _pass_curve(counts, resamples, seed),
        "per_task": {t: {"n": n, "c": c} for t, (n, c) in counts.items()},
        "summary_mismatch": mismatch,
    }


def paired_delta(a: dict, b: dict, metrics, resamples: int, seed: int) -> dict | None:
    """a - b per metric over the tasks both per-task tables ({task: {n, c}}) have, with a paired
    bootstrap CI (the same resampled tasks for every metric); None if they share no task."""
    common = [t for t in a if t in b]
    if not common:
        return None
    idx = bootstrap_indices(len(common), resamples, seed)
    deltas = {}
    for name in metrics:
        x = per_task_values({t: (a[t]["n"], a[t]["c"]) for t in common}, name)
        y = per_task_values({t: (b[t]["n"], b[t]["c"]) for t in common}, name)
        deltas[name] = estimate(x - y, resamples, seed, indices=idx) | {"detectable": detectable_difference(x - y)}
    return {"num_common_tasks": len(common), "metrics": deltas}


def _paired_deltas(methods: list[dict], resamples: int, seed: int, baseline: str = "zero-shot") -> None:
    """Add `delta_vs_<baseline>` (method - baseline, paired bootstrap over common tasks) in place."""
    base = next((m for m in methods if m["method"] == baseline), None)
    if base is None:
        return
    for m in methods:
        if m is base:
            continue
        d = paired_delta(m["per_task"], base["per_task"], [k for k in m["metrics"] if k in base["metrics"]], resamples, seed)
        if d is not None:
            m["delta_vs_" + baseline] = d


def base_method(method: str) -> str:
    """'ilf@s2' -> 'ilf': seed i > 0 of a trained method is evaluated under '<method>@s<i>'."""
    return method.split("@", 1)[0]


def seed_groups(methods: list[dict], resamples: int, seed: int, baseline: str = "zero-shot") -> list[dict]:
    """Training randomness: per trained method, each FINETUNE seed's pass@1 and the mean over seeds.

    `methods` are {"method", "per_task", "metrics"} records named '<method>' or '<method>@s<i>'.
    `mean` bootstraps over tasks the per-task pass@1 averaged over the method's seeds; `minus_zero_shot`
    and `ilf_minus` are the same seed-averaged values, paired with `baseline` (zero-shot in a run) /
    with ILF's seed average over the tasks both share. Per seed, `ilf_minus` pairs ILF seed i with the
    method's seed i."""
    groups: dict[str, list[dict]] = {}
    for m in methods:
        groups.setdefault(base_method(m["method"]), []).append(m)

    def per_task_mean(ms: list[dict], tasks: list[str]) -> np.ndarray:
        return np.mean([per_task_values({t: (m["per_task"][t]["n"], m["per_task"][t]["c"]) for t in tasks}, "pass@1") for m in ms], axis=0)

    def common(*groups_: list[dict]) -> list[str]:
        sets = [set(m["per_task"]) for g in groups_ for m in g]
        return sorted(set.intersection(*sets), key=task_sort_key) if sets else []

    zero, ilf = groups.get(baseline), groups.get("ilf")
    out = []
    for name, ms in groups.items():
        if name == baseline or len(ms) < 2 and name != "ilf":
            continue
        ms = sorted(ms, key=lambda m: m["method"])
        row: dict[str, Any] = {
            "method": name,
            "seeds": [m["method"] for m in ms],
            "pass@1": [m["metrics"].get("pass@1", {}).get("value") for m in ms],
        }
        tasks = common(ms)
        if not tasks:
            continue
        idx = bootstrap_indices(len(tasks), resamples, seed)
        row["mean"] = estimate(per_task_mean(ms, tasks), resamples, seed, indices=idx)
        if zero:
            t0 = common(ms, zero)
            if t0:
                diff = per_task_mean(ms, t0) - per_task_mean(zero, t0)
                row["minus_zero_shot"] = estimate(diff, resamples, seed, indices=bootstrap_indices(len(t0), resamples, seed))
                row["minus_zero_shot"]["detectable"] = detectable_difference(diff)
        if ilf and name != "ilf":
            t1 = common(ms, ilf)
            if t1:
                diff = per_task_mean(ilf, t1) - per_task_mean(ms, t1)
                row["ilf_minus"] = estimate(diff, resamples, seed, indices=bootstrap_indices(len(t1), resamples, seed))
                row["ilf_minus"]["detectable"] = detectable_difference(diff)
                by_seed = {m["method"].split("@")[1] if "@" in m["method"] else "s0": m for m in ms}
                row["ilf_minus_per_seed"] = {}
                for im in ilf:
                    key = im["method"].split("@")[1] if "@" in im["method"] else "s0"
                    if key in by_seed:
                        tt = common([im], [by_seed[key]])
                        row["ilf_minus_per_seed"][key] = estimate(
                            per_task_mean([im], tt) - per_task_mean([by_seed[key]], tt),
                            resamples,
                            seed,
                            indices=bootstrap_indices(len(tt), resamples, seed),
                        )
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
            from ilf.stats import unsolved_pool

            row["unsolved_pool"] = unsolved_pool(list(c0.values()), sorted({1, 2, 5, 10, 20, 30, min(n for n, _ in c0.values())}))
        row["feedback"] = _count_lines(rdir / "feedback.jsonl")
        row["train_pairs"] = _count_lines(rdir / "train_pairs.jsonl")
        if row["train_pairs"] is not None:
            row["train_tasks"] = len({tid_text(r.get("task_id")) for _, r in read_jsonl(rdir / "train_pairs.jsonl")})
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
        control = rdir / "control_results.jsonl"
        if stored(control).is_file():
            from ilf.jsonl import load_jsonl
            from ilf.report.control import control_comparison

            row["control"] = control_comparison(load_jsonl(stored(refs)), load_jsonl(stored(control)), resamples, seed)
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


def _mean_tokens(results: Path) -> Optional[float]:
    """Mean completion length (num_tokens) of a results file, None without the field: a FINETUNE that
    changes the model's style (terser programs, say) shows here first."""
    path = stored(results)
    if not path.is_file():
        return None
    toks = [r["num_tokens"] for _, r in read_jsonl(path, allow_torn_tail=True) if isinstance(r.get("num_tokens"), int)]
    return sum(toks) / len(toks) if toks else None


def _sweep_tables(run_dir: Path) -> list[dict]:
    """The FINETUNE sweep per method (sweep/<method>/table.jsonl, best.json), as the pipeline left it."""
    out = []
    for table in sorted({stored(p.with_name("table.jsonl")) for p in run_dir.glob("sweep/*/table.jsonl*")}):
        rows = [r for _, r in read_jsonl(table, allow_torn_tail=True)]
        for r in rows:  # the validation samples show a style shift too
            r["mean_tokens"] = _mean_tokens(table.parent / str(r.get("setting")) / "results.jsonl")
        best = _read_json_object(table.parent / "best.json")
        out.append({"method": table.parent.name, "rows": rows, "best": (best or {}).get("setting")})
    return out


def _feedback_stats(run_dir: Path) -> list[dict]:
    """Per source: count, words per feedback, share containing code (Table 6 analog)."""
    recs = []
    paths = [rdir / "feedback.jsonl" for _, rdir in _round_dirs(run_dir)]
    # The LLM-feedback baselines (llm-1shot/2shot) keep their feedback beside their training pairs.
    paths += (
        sorted({p.with_name("feedback.jsonl") for p in (run_dir / "baselines").glob("*/feedback.jsonl*")})
        if (run_dir / "baselines").is_dir()
        else []
    )
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
        tasks.setdefault(r["source"], set()).add(tid_text(r.get("task_id")))
    from ilf.report.feedback import feedback_stats  # one rule, so `ilf feedback-stats` and the report agree

    out = []
    for source, st in sorted(feedback_stats(recs).items()):
        out.append(
            {
                "source": source,
                "count": st.n,
                "tasks": len(tasks.get(source, ())),
                "mean_words": st.words_mean,
                "median_words": st.words_median,
                "share_with_code": st.share_with_code,
                "sentences_mean": st.sentences_mean,
                "edit_distance_mean": st.edit_distance_mean,
                "code_rule": "feedback with at least one whole line of Python (ilf.text.code_lines)",
            }
        )
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
    for source in order_sources(by):
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


def order_sources(names: Iterable[str]) -> list[str]:
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
        cpu = st.get("cpu")
        rows.append(
            {
                "stage": name,
                "status": status,
                "seconds": float(sec) if isinstance(sec, (int, float)) else None,
                "cpu": cpu if isinstance(cpu, str) else None,
            }
        )
    return manifest, rows


def _untrained_methods(run_dir: Path) -> list[dict]:
    """Methods the pipeline did not evaluate because their training set came out empty (e.g.
    human-refinements when none of R's tasks has an annotation): a reader must see that a row is
    absent for a reason, not lost."""
    sets = [("ilf", run_dir / "r1" / "train_pairs.jsonl")]
    if (run_dir / "baselines").is_dir():
        sets += [(d.name, d / "train_pairs.jsonl") for d in sorted((run_dir / "baselines").iterdir()) if d.is_dir()]
    return [
        {"method": m, "train_pairs": str(stored(p).relative_to(run_dir))}
        for m, p in sets
        if stored(p).is_file() and next(read_jsonl(p), None) is None and not (run_dir / "eval" / m).is_dir()
    ]


def ilf_rounds(run_dir: Path, methods: list[dict], seeds: list[dict], refine: list[dict]) -> list[dict]:
    """π_θ* after each ILF round (beyond the paper's one round): round 0 is zero-shot π_θ, round k < last
    is `ilf-r<k>`, the last round is `ilf` (its FINETUNE seeds averaged). Beside each model's pass@1 on
    the evaluation tasks: |R| of the round that made it, and the x0 the next round sampled from it on the
    feedback tasks: their pass rate, on the tasks of R_1..R_k alone (what it was trained on: R is drawn
    from tasks no x0 solved, so there the x0 before training passed 0) and on the other tasks. Empty
    unless an earlier round was evaluated."""
    by = {m["method"]: m for m in methods}
    earlier = sorted(int(name[5:]) for name in by if re.fullmatch(r"ilf-r\d+", name))
    ref = {r["round"]: r for r in refine}
    if not earlier or not ref:  # the last round's row is left out while its evaluation is unfinished
        return []
    group = next((g for g in seeds if g["method"] == "ilf" and "mean" in g), None)
    train_tasks = {
        j: {tid_text(r.get("task_id")) for _, r in read_jsonl(run_dir / f"r{j}" / "train_pairs.jsonl")}
        for j in ref
        if stored(run_dir / f"r{j}" / "train_pairs.jsonl").is_file()
    }
    rows = []
    last = max((j for j, r in ref.items() if r.get("train_pairs")), default=max(ref))  # a later round's R may be empty
    models = [(0, "zero-shot"), *[(k, f"ilf-r{k}") for k in earlier if k < last or "ilf" not in by], (last, "ilf")]
    for k, name in models:
        m = by.get(name)
        if m is None:
            continue
        row: dict[str, Any] = {"round": k, "method": name, "pass@1": m["metrics"].get("pass@1"), "seeds": [m["method"]]}
        row["delta_vs_zero_shot"] = (m.get("delta_vs_zero-shot") or {}).get("metrics", {}).get("pass@1")
        row["mean_tokens"] = m.get("mean_tokens")
        if name == "ilf" and group:
            row.update(
                {
                    "pass@1": group["mean"],
                    "delta_vs_zero_shot": group.get("minus_zero_shot"),
                    "seeds": group["seeds"],
                    "pass@1_per_seed": group["pass@1"],
                }
            )
            toks = [by[s].get("mean_tokens") for s in group["seeds"]]
            row["mean_tokens"] = statistics.fmean(toks) if all(t is not None for t in toks) else None
        row["train_pairs"] = ref.get(k, {}).get("train_pairs") if k else None
        nxt = ref.get(k + 1, {})
        row["next_x0_pass_rate"], row["next_x0_tasks"] = nxt.get("x0_pass_rate"), nxt.get("x0_tasks")
        trained_on = {t for j in range(1, k + 1) for t in train_tasks.get(j, ())}
        x0 = run_dir / f"r{k + 1}" / "results.jsonl"
        if trained_on and stored(x0).is_file():
            counts = _count_passes(x0)
            on = [counts[t] for t in sorted(trained_on) if t in counts]
            off = [nc for t, nc in counts.items() if t not in trained_on]
            for key, part in (("next_x0_on_R", on), ("next_x0_off_R", off)):
                row[key] = {
                    "tasks": len(part),
                    "solved": sum(1 for _, c in part if c),
                    "pass_rate": sum(c for _, c in part) / max(1, sum(n for n, _ in part)),
                }
        rows.append(row)
    return rows


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
    seeds = seed_groups(methods, resamples, seed)
    untrained = _untrained_methods(run_dir)
    ppl_rows, ppl_values = _perplexity_stats(run_dir)
    refine = _analyze_refine(run_dir, resamples, seed)
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
        "untrained_methods": untrained,
        "refine": refine,
        "rounds": ilf_rounds(run_dir, methods, seeds, refine),
        "sweep": _sweep_tables(run_dir),
        "feedback": _feedback_stats(run_dir),
        "perplexity": ppl_rows,
        "_perplexity_values": ppl_values,
    }


# ---------------------------------------------------------------------------------------------
# One results file of `ilf evaluate` (the paper's Table 1: a model's pass rates, per MBPP split)


def analyze_results(
    path: str | os.PathLike, resamples: Optional[int] = None, seed: Optional[int] = None, tasks: Optional[set[str]] = None
) -> dict:
    """Pass rates of one results file, over all its tasks and per MBPP split, with the tasks that
    have no passing sample (the pool ILF learns from). `tasks`: only these task ids (as text)."""
    from ilf.tasks import SPLITS

    path = stored(Path(path))
    if not path.is_file():
        raise IlfError(f"{path}: results file not found")
    resamples = BOOTSTRAP_RESAMPLES if resamples is None else resamples
    seed = BOOTSTRAP_SEED if seed is None else seed
    if resamples < 1:
        raise IlfError(f"--bootstrap must be >= 1, got {resamples}")
    counts = _sorted_counts(_count_passes(path))
    if tasks is not None:
        counts = {t: nc for t, nc in counts.items() if t in tasks}
    if not counts:
        raise IlfError(f"{path}: no results" + (" on the tasks asked for" if tasks is not None else ""))
    first: dict = {}
    statuses: dict[str, int] = {}
    tokens: list[int] = []  # what _mean_tokens computes, read in this same pass over the file
    for _, rec in read_jsonl(path, allow_torn_tail=True):
        if tasks is not None and tid_text(rec["task_id"]) not in tasks:
            continue
        first = first or rec
        statuses[str(rec.get("status"))] = statuses.get(str(rec.get("status")), 0) + 1
        if isinstance(rec.get("num_tokens"), int):
            tokens.append(rec["num_tokens"])
    protocol = {k: first.get(k) for k in ("model", "engine", "dataset", "temperature", "top_p", "max_new_tokens", "seed")}
    groups = [("all", counts)]
    if protocol["dataset"] in (None, "mbpp") and all(t.isdigit() for t in counts):
        for name, (lo, hi) in SPLITS.items():
            sub = {t: nc for t, nc in counts.items() if lo <= int(t) <= hi}
            if name != "all" and sub and len(sub) < len(counts):
                groups.append((name, sub))
    rows = []
    for name, cs in groups:
        metrics, names = _metrics_for(cs, resamples, seed)
        ns = [n for n, _ in cs.values()]
        rows.append(
            {
                "split": name,
                "num_tasks": len(cs),
                "num_samples": sum(ns),
                "n_min": min(ns),
                "n_max": max(ns),
                "task_ids": compress_ids(list(cs)),
                "metrics": metrics,
                "metric_names": names,
                "unsolved": [t for t, (_, c) in cs.items() if c == 0],
                "pass_curve": _pass_curve(cs, resamples, seed),
            }
        )
    return {
        "results": str(path),
        "protocol": protocol,
        "mean_tokens": sum(tokens) / len(tokens) if tokens else None,
        "statuses": statuses,
        "splits": rows,
        "bootstrap": {"resamples": resamples, "seed": seed, "confidence": CONFIDENCE},
        "per_task": {t: {"n": n, "c": c} for t, (n, c) in counts.items()},
    }


def compare_results_analyses(analyses: list[dict], resamples: int, seed: int) -> list[dict]:
    """Each results file's all-task metrics, and its difference from the first file's (paired
    bootstrap over the tasks both have): before/after comparisons of `ilf evaluate` outputs."""
    first = analyses[0]
    rows = []
    for i, a in enumerate(analyses):
        allrow = a["splits"][0]
        row = {k: allrow[k] for k in ("num_tasks", "n_min", "n_max", "metrics", "pass_curve")}
        row.update(results=a["results"], protocol=a["protocol"], mean_tokens=a.get("mean_tokens"), delta=None)
        if i:
            names = [k for k in allrow["metrics"] if k in first["splits"][0]["metrics"]]
            row["delta"] = paired_delta(a["per_task"], first["per_task"], names, resamples, seed)
        rows.append(row)
    return rows
