"""The report's figures (matplotlib, Agg; each saved atomically)."""

from __future__ import annotations

import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ilf.jsonl import honour_umask
from ilf.report.analysis import TABLE_KS, base_method, order_sources

FIGURE_DPI = 130

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
        honour_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        _plt().close(fig)
    return path


def _styles(labels: list[str]) -> list[tuple[Any, int]]:
    """(colour, seed index) per row: every FINETUNE seed of a method ('gold', 'gold@s1', ...) shares
    the method's colour, so a Table 4 with 3 seeds per method reads as methods, not 16 unrelated bars."""
    plt = _plt()
    colors = plt.get_cmap("tab10")
    methods: list[str] = []
    out = []
    for label in labels:
        method, seed = base_method(label), label.partition("@s")[2]
        if method not in methods:
            methods.append(method)
        out.append((colors(methods.index(method) % 10), int(seed) if seed.isdigit() else 0))
    return out


SEED_HATCHES = ("", "//", "..", "xx")
SEED_LINESTYLES = ("-", "--", ":", "-.")
LEGEND_INSIDE_MAX = 6  # more curves than this: the legend goes beside the axes


def metric_label(name: str) -> str:
    return "1+ correct" if name == "one_plus_correct" else name


MAX_GROUPED_BARS = 6
"""More methods than this: pass rates are drawn as one panel per metric, a dot and its CI per method
on its own line, instead of groups of bars too thin to read."""


def _metrics(rows: list[tuple[str, dict]]) -> tuple[list[str], dict[str, str]]:
    """The metrics to draw and their labels: pass@n and "1+ correct" are the same number when every
    task has n samples; then one of them, labelled as both."""
    metrics = [m for m in [f"pass@{k}" for k in TABLE_KS] + ["one_plus_correct"] if any(m in a["metrics"] for _, a in rows)]
    labels = {m: metric_label(m) for m in metrics}
    if "one_plus_correct" in metrics:
        for m in metrics[:-1]:
            same = all(a["metrics"].get(m) is not None and a["metrics"].get(m) == a["metrics"].get("one_plus_correct") for _, a in rows)
            if same:
                metrics.remove("one_plus_correct")
                labels[m] = f"{m} = 1+ correct"
                break
    return metrics, labels


def plot_pass_at_k(rows: list[tuple[str, dict]], path: Path, title: str) -> Path:
    """Grouped bars: one group per metric, one bar per (label, method analysis), 95% CI error bars;
    with more than MAX_GROUPED_BARS methods, one panel per metric with a line per method."""
    plt = _plt()
    metrics, mlabels = _metrics(rows)
    if len(rows) > MAX_GROUPED_BARS:
        return _plot_pass_dots(rows, metrics, mlabels, path, title)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 + 0.55 * len(rows) * len(metrics)), 4.2))
    width = 0.8 / max(1, len(rows))
    styles = _styles([label for label, _ in rows])
    for i, (label, a) in enumerate(rows):
        color, seed = styles[i]
        xs, ys, lo, hi = [], [], [], []
        for j, m in enumerate(metrics):
            if m not in a["metrics"]:
                continue
            e = a["metrics"][m]
            xs.append(j - 0.4 + width * (i + 0.5))
            ys.append(100 * e["value"])
            lo.append(100 * (e["value"] - e["lo"]))
            hi.append(100 * (e["hi"] - e["value"]))
        bars = ax.bar(
            xs,
            ys,
            width * 0.92,
            yerr=[lo, hi],
            capsize=3,
            label=label,
            color=color,
            hatch=SEED_HATCHES[seed % len(SEED_HATCHES)],
            edgecolor="white",
        )
        for b, y in zip(bars, ys):
            ax.annotate(
                f"{y:.1f}",
                (b.get_x() + b.get_width() / 2, 0),
                xytext=(0, 2),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=7,
                color="white" if y > 8 else "black",
                # a solid box in the bar's colour keeps the number readable over a seed's hatch
                bbox=dict(boxstyle="square,pad=0.1", facecolor=color, edgecolor="none") if y > 8 else None,
            )
    ax.set_xticks(range(len(metrics)), [mlabels[m] for m in metrics])
    ax.set_ylabel("% of tasks (mean over tasks)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.09), frameon=False, ncol=min(4, len(rows)))
    return _save(fig, path)


def _plot_pass_dots(rows: list[tuple[str, dict]], metrics: list[str], mlabels: dict[str, str], path: Path, title: str) -> Path:
    """Many methods: a panel per metric, a line per method (the first at the top), its value as a
    dot with the 95% CI as a bar, and the value written beside it."""
    plt = _plt()
    n = len(rows)
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 + 2.6 * len(metrics), 1.2 + 0.32 * n), sharey=True, squeeze=False)
    styles = _styles([label for label, _ in rows])
    for ax, m in zip(axes[0], metrics):
        for i, (_label, a) in enumerate(rows):
            if m not in a["metrics"]:
                continue
            e, (color, _) = a["metrics"][m], styles[i]
            v = 100 * e["value"]
            ax.errorbar([v], [i], xerr=[[v - 100 * e["lo"]], [100 * e["hi"] - v]], fmt="o", ms=4, capsize=2, color=color)
            ax.annotate(f"{v:.1f}", (100 * e["hi"], i), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
        ax.set_title(mlabels[m], fontsize=10)
        ax.set_xlim(0, 100)
        ax.grid(axis="x", alpha=0.3)
        ax.set_xlabel("% of tasks (95% CI)")
    axes[0, 0].set_yticks(range(n), [label for label, _ in rows], fontsize=8)
    axes[0, 0].invert_yaxis()
    fig.suptitle(title)
    return _save(fig, path)


BAND_MAX = 4
"""pass@k curves with more methods than this are drawn without their CI bands (the bands overlap
into one blur); the CIs are in the report's table."""


def plot_pass_curve(rows: list[tuple[str, dict]], path: Path, title: str) -> Path:
    """pass@k against k (1..n) per method, shaded 95% CI (up to BAND_MAX methods)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    styles = _styles([label for label, _ in rows])
    for i, (label, a) in enumerate(rows):
        curve = a["pass_curve"]
        if not curve:
            continue
        color, seed = styles[i]
        ks = [p["k"] for p in curve]
        ls = SEED_LINESTYLES[seed % len(SEED_LINESTYLES)]
        ax.plot(ks, [100 * p["value"] for p in curve], marker="o", ms=3, label=label, color=color, linestyle=ls)
        if seed == 0 and len(rows) <= BAND_MAX:  # one band per method: the seeds' bands overlap into a blur
            ax.fill_between(ks, [100 * p["lo"] for p in curve], [100 * p["hi"] for p in curve], alpha=0.15, color=color)
    ax.set_xlabel("k (samples allowed per task)" + ("" if len(rows) <= BAND_MAX else "; 95% CIs in the report's table"))
    ax.set_ylabel("pass@k (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(rows) > LEGEND_INSIDE_MAX:  # a long legend inside the axes hides the curves
        ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
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
        for i, source in enumerate(order_sources(values)):
            vs = values[source]
            med = statistics.median(vs)
            ax.hist(vs, bins=bins, alpha=0.25, color=colors(i % 10), histtype="stepfilled")
            ax.hist(vs, bins=bins, color=colors(i % 10), histtype="step", linewidth=1.6, label=f"{source} (n={len(vs)}, median {med:.2f})")
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
            name = f"{label}: {metric_label(metric)}" if label else metric_label(metric)
            ax.errorbar(xs, ys, yerr=err, marker=marker, capsize=4, label=name, color=colors(ci % 10))
            for x, y in zip(xs, ys):
                ax.annotate(f"{y:.1f}", (x, y), xytext=(6, 0), textcoords="offset points", va="center", fontsize=8)
            ci += 1
    rounds_all = sorted({r["round"] for _, rs in rows for r in rs})
    ax.set_xticks(rounds_all, [f"round {r}" for r in rounds_all])
    if len(rounds_all) == 1:
        ax.set_xlim(rounds_all[0] - 1, rounds_all[0] + 1)
    ax.set_xlabel("ILF round")
    ax.set_ylabel("% of (x0, feedback) pairs")
    # the axis fits the data (π_Refine's rates are often a few %): a 0-100 axis flattens them
    his = [100 * r["metrics"][m]["hi"] for _, rs in rows for r in rs for m in ("pass@1", "one_plus_correct") if m in r.get("metrics", {})]
    top = max(his, default=0)
    ax.set_ylim(0, min(100, max(5.0, 1.25 * top)))

    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    return _save(fig, path)


def plot_bugs_vs_pass(rows: list[dict], path: Path, title: str) -> Path:
    """Figure 5: bugs the feedback addresses against π_Refine's mean pass rate, one line per
    feedback source, 95% CI bars, with the number of feedback texts per point."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    sources = list(dict.fromkeys(r.get("source", "") for r in rows))
    for i, src in enumerate(sources):
        rs = [r for r in rows if r.get("source", "") == src]
        off = 0.08 * (i - (len(sources) - 1) / 2)  # side by side, so the CI bars do not overlap
        xs = [r["bugs"] + off for r in rs]
        ys = [100 * r["value"] for r in rs]
        err = [[100 * (r["value"] - r["lo"]) for r in rs], [100 * (r["hi"] - r["value"]) for r in rs]]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=src or None)
        for x, y, r in zip(xs, ys, rs):
            ax.annotate(f"n={r['feedback']}", (x, y), textcoords="offset points", xytext=(6, 4), fontsize=7)
    ticks = sorted({r["bugs"] for r in rows})
    ax.set_xticks(ticks, [("5+" if x == 5 else str(x)) for x in ticks])
    if len(sources) > 1:
        ax.legend(fontsize=8, title="feedback", title_fontsize=8)
    ax.set_xlabel("bugs addressed in the feedback")
    ax.set_ylabel("π_Refine pass rate (%)")
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_metric_vs_x(rows: list[tuple[str, dict, float | None]], path: Path, title: str, x_label: str, metric: str = "pass@1") -> Path:
    """`metric` against a number per results file (the paper's Figure 4: pass rate by training-set
    size), 95% CI bars. Rows without a number are reference lines across the plot (zero-shot, ILF)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colors = plt.get_cmap("tab10")
    points = sorted((x, label, a["metrics"][metric]) for label, a, x in rows if x is not None and metric in a["metrics"])
    if points:
        xs = [x for x, _, _ in points]
        ys = [100 * e["value"] for _, _, e in points]
        err = [[100 * (e["value"] - e["lo"]) for _, _, e in points], [100 * (e["hi"] - e["value"]) for _, _, e in points]]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, color=colors(0), label=f"by {x_label}")
        for x, y, (_, label, _) in zip(xs, ys, points):
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    refs = [(label, a["metrics"][metric]) for label, a, x in rows if x is None and metric in a["metrics"]]
    for i, (label, e) in enumerate(refs):
        c = colors((i + 1) % 10)
        ax.axhline(100 * e["value"], ls="--", color=c, label=f"{label} ({100 * e['value']:.1f})")
        ax.axhspan(100 * e["lo"], 100 * e["hi"], color=c, alpha=0.1)
    ax.set_xlabel(x_label)
    ax.set_ylabel(f"{metric_label(metric)} (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    return _save(fig, path)


def plot_ilf_rounds(rows: list[tuple[str, list[dict]]], path: Path, title: str) -> Path:
    """π_θ* after each ILF round (round 0 = zero-shot): pass@1 on the evaluation tasks with 95% CI bars
    (the last round's seed mean; its seeds as dots), and the pass rate of the x0 the next round sampled
    from that model on the feedback tasks (no CI: the x0 sample is a stage's input, not an evaluation)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colors = plt.get_cmap("tab10")
    for i, (label, rounds) in enumerate(rows):
        prefix = f"{label}: " if label else ""
        pts = [r for r in rounds if r.get("pass@1")]
        xs = [r["round"] for r in pts]
        ys = [100 * r["pass@1"]["value"] for r in pts]
        err = [
            [100 * (r["pass@1"]["value"] - r["pass@1"]["lo"]) for r in pts],
            [100 * (r["pass@1"]["hi"] - r["pass@1"]["value"]) for r in pts],
        ]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=4, color=colors(2 * i % 10), label=f"{prefix}pass@1, evaluation tasks")
        for r in pts:
            seeds = [100 * v for v in r.get("pass@1_per_seed") or [] if v is not None]
            ax.scatter([r["round"] + 0.08] * len(seeds), seeds, s=12, color=colors(2 * i % 10), alpha=0.6, zorder=3)
        nxt = [(r["round"], 100 * r["next_x0_pass_rate"]) for r in rounds if r.get("next_x0_pass_rate") is not None]
        if nxt:
            label_x0 = f"{prefix}x0 pass rate, feedback tasks (next round)"
            ax.plot(*zip(*nxt), marker="s", ls="--", color=colors((2 * i + 1) % 10), label=label_x0)
    all_rounds = sorted({r["round"] for _, rs in rows for r in rs})
    ax.set_xticks(all_rounds, ["π_θ" if k == 0 else f"after round {k}" for k in all_rounds])
    ax.set_xlabel("model")
    ax.set_ylabel("% of samples passing")
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    return _save(fig, path)
