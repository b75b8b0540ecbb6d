"""π_Refine against π_θ sampled again (`ilf.control.resample_control`), task by task: the
comparison every π_Refine table shows (pipeline report, `ilf refine`, `ilf report --control`)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Sequence


def control_comparison(
    refined: Sequence[dict[str, Any]],
    control: Sequence[dict[str, Any]],
    resamples: int | None = None,
    seed: int = 0,
    tasks: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """π_Refine against π_θ sampled again, task by task with the same number of samples (the
    control's first samples of each task). pass@1 and tasks solved for both; `beyond`: tasks the
    refinements solved and resampling did not (ILF's whole signal); paired bootstrap CIs over tasks.
    tasks: every task the comparison is over; one without refinements (its feedback dropped, say)
    counts as unsolved by π_Refine, against the control's usual number of samples."""
    import numpy as np

    from ilf.stats import BOOTSTRAP_RESAMPLES, bootstrap_ci, bootstrap_indices, detectable_difference

    ref: dict[Any, list[bool]] = defaultdict(list)
    for r in refined:
        if not r.get("refused"):
            ref[r["task_id"]].append(bool(r.get("passed")))
    ctl: dict[Any, list[tuple[int, bool]]] = defaultdict(list)
    for r in control:
        ctl[r["task_id"]].append((int(r.get("sample_id", 0)), bool(r.get("passed"))))
    ids = [t for t in ref if ref[t] and t in ctl]
    if not ids:
        return {"tasks": 0}
    usual = int(np.median([len(ref[t]) for t in ids]))
    unrefined = [t for t in (tasks or []) if t in ctl and not ref.get(t)]
    ids += unrefined
    a = np.array([sum(ref[t]) / len(ref[t]) if ref.get(t) else 0.0 for t in ids])
    ctl_used = {t: [p for _, p in sorted(ctl[t])[: len(ref[t]) if ref.get(t) else usual]] for t in ids}
    b = np.array([sum(v) / len(v) for v in (ctl_used[t] for t in ids)])
    sa, sb = a > 0, b > 0
    idx = bootstrap_indices(len(ids), resamples or BOOTSTRAP_RESAMPLES, seed)
    beyond = (sa & ~sb).astype(float)
    net = sa.astype(float) - sb.astype(float)
    lo, hi = bootstrap_ci(a - b, indices=idx)
    blo, bhi = bootstrap_ci(beyond, indices=idx)
    nlo, nhi = bootstrap_ci(net, indices=idx)
    return {
        "tasks": len(ids),
        "samples_per_task": usual,
        "tasks_without_refinements": len(unrefined),
        "pass@1": float(a.mean()),
        "control_pass@1": float(b.mean()),
        "delta_pass@1": float((a - b).mean()),
        "delta_pass@1_ci": [lo, hi],
        "delta_pass@1_detectable": detectable_difference(a - b),
        "solved": int(sa.sum()),
        "control_solved": int(sb.sum()),
        "beyond": int((sa & ~sb).sum()),
        "beyond_ci": [blo * len(ids), bhi * len(ids)],
        "missed": int((sb & ~sa).sum()),
        # beyond - missed: when both sides rarely pass, chance alone puts tasks on each side
        "net_solved": int(net.sum()),
        "net_solved_ci": [nlo * len(ids), nhi * len(ids)],
        "beyond_tasks": [t for t, x, y in zip(ids, sa, sb) if x and not y],
    }


def describe_comparison(c: dict[str, Any]) -> str:
    """One line a reader of an ILF result asks for first."""
    if not c.get("tasks"):
        return "control: no task with both refinements and control samples"
    lo, hi = c["delta_pass@1_ci"]
    blo, bhi = c["beyond_ci"]
    return (
        f"π_Refine vs π_θ sampled again ({c['tasks']} tasks, {c['samples_per_task']} samples each): pass@1 "
        f"{100 * c['pass@1']:.1f} vs {100 * c['control_pass@1']:.1f} "
        f"(Δ {100 * c['delta_pass@1']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]); "
        f"tasks solved {c['solved']} vs {c['control_solved']} (net {c['net_solved']:+d} [{c['net_solved_ci'][0]:+.0f}, "
        f"{c['net_solved_ci'][1]:+.0f}]); solved only by π_Refine {c['beyond']} [{blo:.0f}, {bhi:.0f}], only by resampling {c['missed']}"
    )
