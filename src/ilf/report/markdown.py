"""report.md from the analysed runs."""

from __future__ import annotations

import json
import math
import re
from typing import Any, Optional

from ilf.report.analysis import PROTOCOL_KEYS, TABLE_KS, compress_ids, task_sort_key
from ilf.report.figures import metric_label

# ---------------------------------------------------------------------------------------------
# Markdown


def pct(e: Optional[dict], signed: bool = False) -> str:
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
    ids = sorted({t for _, m in methods for t in m["per_task"]}, key=task_sort_key)
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
    has_tokens = any(m.get("mean_tokens") is not None for _, m in methods)
    header = (["run"] if with_run else []) + ["method", "model", "train pairs", "tasks", "n"] + [metric_label(n) for n in names]
    if has_delta:
        header.append("Δ pass@1 vs zero-shot")
    if has_tokens:
        header.append("tokens per sample")
    rows = []
    for label, m in methods:
        n = str(m["n_min"]) if m["n_min"] == m["n_max"] else f"{m['n_min']}-{m['n_max']}"
        row = ([label] if with_run else []) + [m["method"], m["model"], m["train_pairs"], m["num_tasks"], n]
        row += [pct(m["metrics"].get(name)) for name in names]
        if has_delta:
            d = m.get("delta_vs_zero-shot", {}).get("metrics", {}).get("pass@1")
            row.append(pct(d, signed=True) if d else "–")
        if has_tokens:
            row.append("–" if m.get("mean_tokens") is None else f"{m['mean_tokens']:.1f}")
        rows.append(row)
    out = _table(header, rows)
    for label, m in methods:
        if m["summary_mismatch"]:
            out.append(f"\nNote ({label + ' / ' if with_run else ''}{m['method']}): {m['summary_mismatch']}; the table uses results.jsonl.")
    return out


def _direction(e: dict) -> str:
    if e["lo"] > 0:
        return "**higher**, the CI excludes 0"
    if e["hi"] < 0:
        return "**lower**, the CI excludes 0"
    return "within noise (the CI covers 0)"


def _verdict_lines(a: dict) -> list[str]:
    """The paper's claim checked against this run's numbers (ILF above zero-shot and above each
    baseline, 95% CI over tasks above 0), in words, with the facts that bear on it: written from
    the same estimates as the tables below, so it can never disagree with them."""
    ilf = next((g for g in a.get("train_seeds", []) if g["method"] == "ilf"), None)
    if ilf is None or not ilf.get("minus_zero_shot"):
        return []
    k = len(ilf["seeds"])
    seeds = f"the mean of its {k} FINETUNE seeds" if k > 1 else "one FINETUNE seed"
    comparisons = [("zero-shot", ilf["minus_zero_shot"])] + [
        (g["method"], g["ilf_minus"]) for g in a["train_seeds"] if g["method"] != "ilf" and g.get("ilf_minus")
    ]
    L = ["## Does ILF help in this run?", ""]
    L += [f"ILF ({seeds}), paired over the evaluation tasks, pass@1 in points:", ""]
    L += [f"- ILF − {name}: {pct(e, signed=True)}: {_direction(e)}." for name, e in comparisons]
    mde = [(name, e["detectable"]) for name, e in comparisons if e.get("detectable") == e.get("detectable") and e.get("detectable")]
    if mde:
        L += [
            "",
            "The smallest difference this design detects (80% power, two-sided 5%, paired over tasks): "
            + ", ".join(f"ILF − {name} ±{100 * d:.1f}" for name, d in mde)
            + " points; a smaller true effect would likely read as noise here.",
        ]
    wins = [name for name, e in comparisons if e["lo"] > 0]
    if len(wins) == len(comparisons) and any(name == "gold" for name, _ in comparisons):
        verdict = "**The paper's claim holds in this run**: ILF is above zero-shot and above every baseline evaluated here."
    elif len(wins) == len(comparisons):
        verdict = (
            "**ILF is above zero-shot** and every baseline evaluated here; fine-tuning on gold code was not "
            "evaluated, so the paper's comparison with it is not tested."
        )
    elif comparisons[0][1]["hi"] < 0:
        verdict = "**ILF did not help in this run**: it lowered pass@1 below the model it started from."
    else:
        verdict = (
            "**The paper's claim is not shown in this run**: ILF is not above "
            + ", ".join(name for name, e in comparisons if e["lo"] <= 0)
            + " with a CI above 0."
        )
    L += ["", verdict + " (The paper's claim: ILF above zero-shot and above fine-tuning on gold code, CI above 0.)"]
    by = {m["method"]: m for m in a["methods"]}
    facts = []
    if by.get("ilf", {}).get("train_pairs") is not None:
        facts.append(f"ILF trained on {by['ilf']['train_pairs']} repaired programs")
    if by.get("ilf", {}).get("mean_tokens") and by.get("zero-shot", {}).get("mean_tokens"):
        facts.append(
            f"ILF's samples average {by['ilf']['mean_tokens']:.0f} tokens (seed 0), zero-shot's {by['zero-shot']['mean_tokens']:.0f}"
        )
    if facts:
        L += ["", "Facts that bear on it: " + "; ".join(facts) + "."]
    if a.get("untrained_methods") or a.get("unfinished_methods"):
        L += ["", "Not all configured methods are in these comparisons (see below the Table 4 analog)."]
    return L + [""]


def _seeds_table(runs: list[tuple[str, dict]], with_run: bool, baseline: str = "zero-shot") -> list[str]:
    header = (["run"] if with_run else []) + [
        "method",
        "pass@1 per seed",
        "mean [95% CI]",
        f"Δ vs {baseline}",
        "ILF − method",
        "ILF − method per seed",
    ]
    rows = []
    for label, a in runs:
        for g in a.get("train_seeds", []):
            per = ", ".join("–" if v is None else f"{100 * v:.1f}" for v in g["pass@1"])
            ps = g.get("ilf_minus_per_seed") or {}
            rows.append(
                ([label] if with_run else [])
                + [
                    g["method"],
                    per,
                    pct(g.get("mean")),
                    pct(g.get("minus_zero_shot"), signed=True) if g.get("minus_zero_shot") else "–",
                    pct(g.get("ilf_minus"), signed=True) if g.get("ilf_minus") else "–",
                    "; ".join(f"{k}: {pct(v, signed=True)}" for k, v in ps.items()) or "–",
                ]
            )
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
    header = (
        (["run"] if with_run else [])
        + ["round", "(x0, f) pairs", "tasks", "refinements per pair"]
        + kcols
        + ["1+ correct", "|R| (train pairs)", "x0 pass rate"]
    )
    for label, a in runs:
        for r in a["refine"]:
            if "missing" in r:
                rows.append(
                    ([label] if with_run else [])
                    + [r["round"], r.get("feedback"), "–", f"no {r['missing']}"]
                    + ["–"] * len(kcols)
                    + ["–", r.get("train_pairs"), _pct1(r.get("x0_pass_rate"))]
                )
                continue
            n = str(r["n_min"]) if r["n_min"] == r["n_max"] else f"{r['n_min']}-{r['n_max']}"
            rows.append(
                ([label] if with_run else [])
                + [r["round"], r["pairs"], r["pair_tasks"], n]
                + [pct(r["metrics"].get(k)) for k in kcols]
                + [pct(r["metrics"].get("one_plus_correct")), r.get("train_pairs"), _pct1(r.get("x0_pass_rate"))]
            )
    return _table(header, rows)


def _rounds_table(runs: list[tuple[str, dict]], with_run: bool) -> list[str]:
    header = (["run"] if with_run else []) + [
        "round",
        "model",
        "|R| of the round",
        "pass@1 [95% CI]",
        "pass@1 per seed",
        "Δ vs zero-shot",
        "tokens per sample",
        "next round's x0 pass rate",
        "… on R_1..R_k's tasks (solved / tasks)",
        "… on the other tasks",
    ]
    rows = []
    for label, a in runs:
        for r in a.get("rounds", []):
            per = r.get("pass@1_per_seed")
            tok = r.get("mean_tokens")
            rows.append(
                ([label] if with_run else [])
                + [
                    r["round"],
                    ", ".join(r["seeds"]),
                    "–" if r["train_pairs"] is None else r["train_pairs"],
                    pct(r.get("pass@1")),
                    ", ".join(f"{100 * v:.1f}" for v in per if v is not None) if per else "–",
                    pct(r["delta_vs_zero_shot"], signed=True) if r.get("delta_vs_zero_shot") else "–",
                    "–" if tok is None else f"{tok:.1f}",
                    _pct1(r.get("next_x0_pass_rate")) or "–",
                    f"{_pct1(on['pass_rate'])} ({on['solved']} / {on['tasks']})" if (on := r.get("next_x0_on_R")) else "–",
                    _pct1(off["pass_rate"]) if (off := r.get("next_x0_off_R")) else "–",
                ]
            )
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
    L += [
        "",
        "All numbers are recomputed from the per-sample files (`eval/<method>/results.jsonl`, "
        "`r<N>/refinements.jsonl`, `r<N>/feedback.jsonl`, `perplexity.jsonl`); `report.json` holds them all, "
        "including per-task counts.",
        "",
    ]

    if not compare:
        L += _verdict_lines(runs[0][1])

    # Table 4 analog
    L += ["## Pass rates on the evaluation tasks (Table 4 analog)", ""]
    if any(a["methods"] for _, a in runs):
        L += _protocol_lines(runs) + [""] + _methods_table(runs, compare) + [""]
        if any("delta_vs_zero-shot" in m for _, a in runs for m in a["methods"]):
            L += [
                "Δ pass@1 vs zero-shot: difference in percentage points on the tasks both rows share, with a paired "
                "bootstrap CI (the same resampled tasks for both); an interval that excludes 0 is a difference the "
                "task sample supports.",
                "",
            ]
        for key, cap in (("pass_at_k", "pass@k per method, 95% CI error bars"), ("pass_curve", "pass@k as a function of k")):
            if key in figures:
                L += [f"![{cap}]({figures[key]})", ""]
    else:
        L += ["No evaluation results (eval/<method>/results.jsonl) yet: this section is empty.", ""]
    if any(len(g["seeds"]) > 1 for _, a in runs for g in a.get("train_seeds", [])):
        L += [
            "### Training randomness (FINETUNE seeds)",
            "",
            "Each trained method was fine-tuned with several seeds (same data, same evaluation samples' seeds). "
            "Mean = per-task pass@1 averaged over seeds, 95% bootstrap CI over tasks; Δ columns pair the seed "
            "averages on the tasks both share; ILF − method per seed pairs ILF seed i with the method's seed i.",
            "",
        ]
        L += _seeds_table(runs, compare) + [""]
    if any(a.get("rounds") for _, a in runs):
        L += [
            "### ILF rounds (beyond the paper)",
            "",
            "π_θ* of each round becomes the next round's π_θ. Round 0 is zero-shot π_θ; the last round's row "
            "averages its FINETUNE seeds. Δ pairs with zero-shot per task. The next round's x0 pass rate is "
            "the share of passing samples that the next round drew from this model on its feedback tasks "
            "(training tasks), on the tasks of the R it was trained on (R_1..R_k), where every x0 failed before "
            "training, and on the other training tasks: does the model solve what it was trained on, and what "
            "does it gain or lose elsewhere?",
            "",
        ]
        L += _rounds_table(runs, compare) + [""]
        if "ilf_rounds" in figures:
            L += [f"![π_θ* after each ILF round]({figures['ilf_rounds']})", ""]
    for label, a in runs:
        if a["unfinished_methods"]:
            L += [f"Not finished{' in ' + label if compare else ''} (no results.jsonl): {', '.join(a['unfinished_methods'])}.", ""]
        for u in a.get("untrained_methods", []):
            L += [
                f"Not evaluated{' in ' + label if compare else ''}: **{u['method']}** has no training data "
                f"(`{u['train_pairs']}` is empty), so it was not fine-tuned and has no row.",
                "",
            ]

    # Table 3 analog
    L += ["## π_Refine: pass rates of refinements (Table 3 analog)", ""]
    if any(a["refine"] for _, a in runs):
        L += [
            "For each (x0, f) pair — a failing program and its feedback — π_Refine samples n refinements, each "
            "run against the task's tests. Means over pairs with 95% bootstrap CIs over pairs. |R| = refinements "
            "kept for FINETUNE (one passing refinement per task); x0 pass rate = share of π_θ's samples that "
            "passed on the feedback tasks (absent when x0 came from the authors' file).",
            "",
        ]
        L += _refine_table(runs, compare) + [""]
        for label, r in ((label, r) for label, a in runs for r in a["refine"] if r.get("unsolved_pool")):
            pool = r["unsolved_pool"]
            L += [
                f"Round {r['round']}{f' ({label})' if compare else ''}: tasks with no passing x0 among k samples "
                f"(the paper's pool uses k = 30; sample.n sets it): "
                + ", ".join(f"k = {k}: {v:.1f}" for k, v in sorted(pool.items(), key=lambda kv: int(kv[0])))
                + f" of {r['x0_tasks']} tasks.",
                "",
            ]
        for label, r in ((label, r) for label, a in runs for r in a["refine"] if r.get("control")):
            section = control_section(r["control"])
            section[0] = f"### Round {r['round']}{f' ({label})' if compare else ''}: π_Refine against π_θ sampled again"
            L += section
        if "refine_rounds" in figures:
            L += [f"![π_Refine pass rates per round]({figures['refine_rounds']})", ""]
        shuf = [(label, r) for label, a in runs for r in a["refine"] if r.get("shuffled")]
        if shuf:
            L += [
                "### Is the feedback used? Related vs shuffled feedback (Table 2 analog)",
                "",
                "The same x0 refined with its own feedback and with another task's (refine.shuffled_n samples "
                "each). pass@1 = share of passing refinements per x0; Δ is paired per x0 with a 95% bootstrap CI. "
                "A Δ whose CI covers 0 means π_Refine repairs as often without the right feedback.",
                "",
            ]
            L += _table(
                (["run"] if compare else [])
                + [
                    "round",
                    "x0",
                    "pass@1 related f",
                    "pass@1 shuffled f",
                    "Δ related − shuffled",
                    "1+ correct related",
                    "1+ correct shuffled",
                ],
                [
                    ([label] if compare else [])
                    + [
                        r["round"],
                        r["shuffled"]["pairs"],
                        pct(r["shuffled"]["related"]),
                        pct(r["shuffled"]["shuffled"]),
                        pct(r["shuffled"]["delta"], signed=True),
                        pct(r["shuffled"]["related_one_plus"]),
                        pct(r["shuffled"]["shuffled_one_plus"]),
                    ]
                    for label, r in shuf
                ],
            ) + [""]
    else:
        L += ["No ILF rounds (r<N>/refinements.jsonl) in this run: this section is empty.", ""]

    sweeps = [(label, sw) for label, a in runs for sw in a.get("sweep", [])]
    if sweeps:
        L += [
            "## FINETUNE sweep (Appendix A.1)",
            "",
            "Each trained method fine-tuned once per setting and sampled on the validation tasks (sweep.tasks, "
            "never the test tasks); the setting with the best pass rate (marked) trains the evaluated models.",
            "",
        ]
        rows = [
            ([label] if compare else [])
            + [
                sw["method"],
                r["setting"],
                f"{100 * r['pass_rate']:.1f}",
                r["num_tasks"],
                r["num_samples"],
                "–" if r.get("mean_tokens") is None else f"{r['mean_tokens']:.1f}",
                "best" if r["setting"] == sw["best"] else "",
            ]
            for label, sw in sweeps
            for r in sw["rows"]
        ]
        head = ["method", "setting", "validation pass rate (%)", "tasks", "samples", "tokens per sample", ""]
        L += _table((["run"] if compare else []) + head, rows) + [""]

    # Training set sizes
    L += ["## Training sets", ""]
    rows = [
        ([label] if compare else []) + [m["method"], m["train_pairs"]]
        for label, a in runs
        for m in a["methods"]
        if m["method"] != "zero-shot"
    ]
    rows += [([label] if compare else []) + [f"round {r['round']} R", r.get("train_pairs")] for label, a in runs for r in a["refine"]]
    if rows:
        L += _table((["run"] if compare else []) + ["model / set", "training examples"], rows) + [""]
    else:
        L += ["No fine-tuned methods in this run.", ""]
    for label, a in runs:
        for r in a["refine"]:
            if r.get("train_pairs") == 0:
                L += [
                    f"**R is empty in round {r['round']}{f' of {label}' if compare else ''}**: π_Refine repaired none of the "
                    f"(x0, f) pairs, so ILF had nothing to train on{' and stopped there' if r['round'] == 1 else ''}; "
                    "the methods trained on R's tasks (ILF, gold, human-refinements, RFT, LLM feedback) were not "
                    "trained, and only the other methods are evaluated above.",
                    "",
                ]

    # Feedback statistics
    L += ["## Feedback (Table 6 analog)", ""]
    if any(a["feedback"] for _, a in runs):
        rows = [
            ([label] if compare else [])
            + [
                f["source"],
                f["count"],
                f.get("tasks"),
                f"{f['mean_words']:.1f}",
                _fmt(f.get("median_words")),
                f"{100 * f['share_with_code']:.0f}%",
            ]
            for label, a in runs
            for f in a["feedback"]
        ]
        L += _table((["run"] if compare else []) + ["source", "feedback", "tasks", "words (mean)", "words (median)", "contains code"], rows)
        rules = sorted({f["code_rule"] for _, a in runs for f in a["feedback"] if f.get("code_rule")})
        L += ["", "Contains code: " + "; ".join(rules) + "." if rules else "", ""]
    else:
        L += ["No feedback.jsonl in any round: this section is empty.", ""]

    # Figure 3 analog
    L += ["## Perplexity of training data under the base model (Figure 3 analog)", ""]
    if any(a["perplexity"] for _, a in runs):
        rows = [
            ([label] if compare else [])
            + [p["source"], p["count"], f"{p['mean']:.3f}", f"{p['median']:.3f}", f"{p['std']:.3f}", f"{p['mean_tokens']:.0f}"]
            for label, a in runs
            for p in a["perplexity"]
        ]
        L += [
            "Perplexity of each training completion under the base model π_θ: exp(mean negative log-likelihood of "
            "the completion's tokens, given its prompt). The paper's Figure 3 shows π_Refine's refinements with lower "
            "perplexity than gold programs and human-written refinements, i.e. closer to what the model itself writes.",
            "",
        ]
        L += _table((["run"] if compare else []) + ["source", "programs", "mean", "median", "std", "tokens (mean)"], rows) + [""]
        if "perplexity" in figures:
            L += [f"![perplexity histogram]({figures['perplexity']})", ""]
    else:
        L += ["No perplexity.jsonl in this run (set report.perplexity = true): Figure 3 analog skipped.", ""]

    # Stages
    L += ["## Stages", ""]
    if any(a["stages"] for _, a in runs):
        # Wall times depend on the CPU several-fold, and a resumed run may span machines: each stage
        # names the CPU that finished it (numbered below the table; older manifests have none).
        cpus = list(dict.fromkeys(s["cpu"] for _, a in runs for s in a["stages"] if s.get("cpu")))
        rows = [
            ([label] if compare else [])
            + [s["stage"], s["status"], "–" if s["seconds"] is None else f"{s['seconds']:.1f}"]
            + ([str(cpus.index(s["cpu"]) + 1) if s.get("cpu") else "–"] if cpus else [])
            for label, a in runs
            for s in a["stages"]
        ]
        L += _table((["run"] if compare else []) + ["stage", "status", "seconds"] + (["CPU"] if cpus else []), rows) + [""]
        L += [f"- CPU {i}: {c}" for i, c in enumerate(cpus, 1)] + ([""] if cpus else [])
    else:
        L += ["No manifest.json: stage timings unknown.", ""]
    return "\n".join(L).rstrip() + "\n"


def render_results(a: dict, figures: dict[str, str], title: str) -> str:
    """report.md of one results file: pass rates per MBPP split (the paper's Table 1 form)."""
    p, b = a["protocol"], a["bootstrap"]
    L = [f"# {title}", "", f"Results file `{a['results']}`; regenerate with `ilf report {a['results']}`.", ""]
    L.append(
        f"**Protocol.** Model {_fmt(p['model'])}, engine {_fmt(p['engine'])}, dataset {_fmt(p['dataset'])}; temperature "
        f"{_fmt(p['temperature'])}, top_p {_fmt(p['top_p'])}, max new tokens {_fmt(p['max_new_tokens'])}, seed {_fmt(p['seed'])}. "
        f"Scores are means over tasks, in %; brackets: {int(100 * b['confidence'])}% percentile bootstrap CI over tasks "
        f"({b['resamples']} resamples, seed {b['seed']}); pass@k uses the unbiased estimator of Chen et al. (2021)."
    )
    L.append("")
    ks = [f"pass@{k}" for k in TABLE_KS]
    header = ["split", "tasks", "samples per task"] + ks + ["1+ correct", "tasks with no passing sample"]
    rows = []
    for r in a["splits"]:
        n = str(r["n_min"]) if r["n_min"] == r["n_max"] else f"{r['n_min']}-{r['n_max']}"
        unsolved = f"{len(r['unsolved'])} ({100 * len(r['unsolved']) / r['num_tasks']:.1f}%)"
        metrics = [pct(r["metrics"].get(k)) for k in ks] + [pct(r["metrics"].get("one_plus_correct"))]
        rows.append([f"{r['split']} ({r['task_ids']})", r["num_tasks"], n, *metrics, unsolved])
    L += _table(header, rows) + [""]
    L.append("Statuses of all programs: " + ", ".join(f"{k} {v}" for k, v in sorted(a["statuses"].items())) + ".")
    L.append("")
    if "control" in a:
        L += control_section(a["control"])
    if "pass_curve" in figures:
        L += [f"![pass@k as a function of k]({figures['pass_curve']})", ""]
    return "\n".join(L) + "\n"


def control_section(c: dict) -> list[str]:
    """π_Refine against π_θ sampled again with the same budget (ilf.report.control.control_comparison)."""
    from ilf.report.control import describe_comparison

    L = ["## π_Refine against π_θ sampled again", ""]
    if not c.get("tasks"):
        return L + [describe_comparison(c), ""]
    lo, hi = c["delta_pass@1_ci"]
    blo, bhi = c["beyond_ci"]
    header = ["", "pass@1", "tasks solved", "solved only here"]
    rows = [
        ["π_Refine (x0 + feedback)", f"{100 * c['pass@1']:.1f}", c["solved"], f"{c['beyond']} [{blo:.0f}, {bhi:.0f}]"],
        ["π_θ sampled again (no x0, no feedback)", f"{100 * c['control_pass@1']:.1f}", c["control_solved"], c["missed"]],
        [
            "Δ (paired over tasks)",
            f"{100 * c['delta_pass@1']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]",
            f"{c['solved'] - c['control_solved']:+d}"
            + (f" [{c['net_solved_ci'][0]:+.0f}, {c['net_solved_ci'][1]:+.0f}]" if "net_solved_ci" in c else ""),
            "",
        ],
    ]
    L += _table(header, rows) + [""]
    L.append(
        f"{c['tasks']} tasks, {c['samples_per_task']} samples per task on both sides (the control's first samples of each "
        "task, as many as the refinements; through the chat template with the task alone when π_Refine used the chat "
        "template). The tasks solved only by π_Refine are what ILF can learn that resampling would not give it; when both "
        "sides rarely pass, chance alone puts tasks on each side, so read them against the tasks solved only by "
        "resampling (the net Δ of tasks solved). Brackets are 95% bootstrap CIs over tasks"
        + (
            f"; the smallest Δ pass@1 this design detects (80% power) is ±{100 * c['delta_pass@1_detectable']:.1f} points."
            if c.get("delta_pass@1_detectable") == c.get("delta_pass@1_detectable") and c.get("delta_pass@1_detectable")
            else "."
        )
    )
    return L + [""]


def render_results_comparison(
    labels: list[str],
    rows: list[dict],
    bootstrap: dict,
    figures: dict[str, str],
    title: str,
    x_label: str | None = None,
    seeds: list[dict] | None = None,
    labelled: bool = False,
    common_tasks: int | None = None,
) -> str:
    """report.md of several results files side by side, each against the first (paired); with
    x_label, each row's "x" (None: a reference line) is a column and the pass@1-against-x figure;
    with seeds (seed_groups of the labels), the per-method seed table; with common_tasks (a count),
    every row was scored on only the tasks all files share."""
    cmd = "ilf report " + " ".join(r["results"] for r in rows)
    if labelled:
        cmd += " --labels " + ",".join(labels)
    if common_tasks is not None:
        cmd += " --common-tasks"
    if x_label:
        xs = ",".join("-" if r.get("x") is None else f"{r['x']:g}" for r in rows)
        cmd += f' --x {xs} --x-label "{x_label}"'
    L = [f"# {title}", "", f"Regenerate with `{cmd}`.", ""]
    L.append(
        f"Scores are means over tasks, in %; brackets: {int(100 * bootstrap['confidence'])}% percentile bootstrap CI over tasks "
        f"({bootstrap['resamples']} resamples, seed {bootstrap['seed']}); Δ is each file minus the first, paired over the tasks both "
        "have; pass@k uses the unbiased estimator of Chen et al. (2021)."
        + (f" Every row is scored on only the {common_tasks} tasks all files share (`--common-tasks`)." if common_tasks else "")
    )
    L.append("")
    ks = [f"pass@{k}" for k in TABLE_KS]
    header = ["results"] + ([x_label] if x_label else []) + ["model", "dataset", "T", "tasks", "samples per task"] + ks + ["1+ correct"]
    header += [f"Δ {k} vs first" for k in ks] + ["Δ 1+ correct vs first", "tokens per sample"]
    out = []
    for label, r in zip(labels, rows):
        p = r["protocol"]
        n = str(r["n_min"]) if r["n_min"] == r["n_max"] else f"{r['n_min']}-{r['n_max']}"
        d = (r["delta"] or {}).get("metrics", {})
        xcol = [("reference line" if r.get("x") is None else f"{r['x']:g}")] if x_label else []
        out.append(
            [label]
            + xcol
            + [_fmt(p.get("model")), _fmt(p.get("dataset")), _fmt(p.get("temperature")), r["num_tasks"], n]
            + [pct(r["metrics"].get(k)) for k in ks + ["one_plus_correct"]]
            + [pct(d.get(k), signed=True) if d else "–" for k in ks + ["one_plus_correct"]]
            + ["–" if r.get("mean_tokens") is None else f"{r['mean_tokens']:.1f}"]
        )
    L += _table(header, out) + [""]
    if seeds:
        L += [
            "## Training seeds",
            "",
            f"Files named '<method>@s<i>' are FINETUNE seed i of a method ('<method>' alone: seed 0). The mean is over seeds "
            f"(per task, then bootstrapped over the tasks all seeds share); Δ vs {labels[0]} and ILF − method are paired over tasks.",
            "",
        ]
        L += _seeds_table([("", {"train_seeds": seeds})], with_run=False, baseline=labels[0]) + [""]
    if "pass_curve" in figures:
        L += [f"![pass@k as a function of k]({figures['pass_curve']})", ""]
    if "pass_vs_x" in figures:
        L += [f"![pass@1 by {x_label}]({figures['pass_vs_x']})", ""]
    return "\n".join(L) + "\n"
