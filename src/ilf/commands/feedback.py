"""What the feedback commands of `ilf` do (cli.py only parses flags and calls these)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console

from ilf.errors import IlfError

console = Console(stderr=True, soft_wrap=True)


def default_db(source: str | os.PathLike | None) -> Path:
    """RUN_DIR/feedback.db for a run directory (where `ilf run` looks), else beside the results."""
    if source is None:
        return Path("feedback.db")
    p = Path(source)
    return p / "feedback.db" if p.is_dir() else p.parent / "feedback.db"


def annotate(
    source: str | None,
    *,
    db: str | None,
    host: str,
    port: int,
    add_annotators: Sequence[str],
    dataset: str | None,
    data_dir: str | None,
    tasks_file: str | None,
    only_unsolved: bool,
    config: Any,
    serve_app: bool = True,
) -> None:
    from ilf.feedback.app import load_failing, serve
    from ilf.feedback.store import FeedbackStore

    if source is None and db is None:
        raise IlfError("give a run directory or results file to annotate, or --db of an existing collection")
    if not 1 <= port <= 65535:
        raise IlfError(f"--port must be between 1 and 65535, got {port}")
    db_path = Path(db) if db else default_db(source)
    if source is None and not db_path.exists():
        raise IlfError(f"{db_path}: no such collection (give a run directory or results file to start one)")
    loaded = None
    if source is not None:  # read and check the input before anything is created
        loaded = load_failing(source, dataset=dataset, data_dir=data_dir, tasks_file=tasks_file, only_unsolved=only_unsolved)
    created = _new_paths(db_path)
    try:
        store = FeedbackStore(db_path)
        if loaded is not None:
            rep = store.add_failing(*loaded)
            console.print(
                f"[bold]{db_path}[/]: {rep.tasks} new task(s), {rep.samples} new failing sample(s) "
                f"({store.count_tasks()} task(s) in the collection)"
            )
        if store.count_tasks() == 0:
            raise IlfError(f"{db_path}: no failing samples to annotate")
    except BaseException:
        _remove_new(created)  # a failed start leaves no empty collection behind
        raise
    names = list(add_annotators)
    if not names and not store.annotators():
        names = ["annotator"]  # one command gives a usable collection
    shown = "localhost" if host in ("0.0.0.0", "::") else host
    for name in names:
        token = store.add_annotator(name)
        console.print(f"annotator [bold]{name}[/]: token {token}\n    http://{shown}:{port}/?token={token}")
    if not names:
        console.print(f"{len(store.annotators())} annotator(s) already registered; add one with --add-annotator NAME")
    if serve_app:
        console.print(f"serving http://{host}:{port}  (Ctrl+C stops; every submission is already saved)")
        serve(store, config, host=host, port=port)


def _new_paths(db_path: Path) -> list[Path]:
    """The database file (and its SQLite side files) and the folders this start would create."""
    if db_path.exists():
        return []
    made = [
        db_path,
        db_path.with_name(db_path.name + "-wal"),
        db_path.with_name(db_path.name + "-shm"),
        db_path.with_name(db_path.name + "-journal"),
    ]
    parent = db_path.parent
    while not parent.exists():
        made.append(parent)
        parent = parent.parent
    return made


def _remove_new(paths: list[Path]) -> None:
    for p in paths:
        try:
            p.rmdir() if p.is_dir() else p.unlink()
        except OSError:
            pass


def feedback(
    results_path: str,
    *,
    source: str,
    output: str | None,
    model: str | None,
    engine: str | None,
    base_url: str | None,
    dataset: str,
    data_dir: str | None,
    tasks_file: str | None,
    k_shot: int,
    with_refinement: bool,
    per_task: int,
    only_unsolved: bool,
    examples_path: str | None,
    seed: int,
    reference: bool = False,
    weights: str | None = None,
) -> Path:
    from ilf.feedback.collect import AUTOMATIC_SOURCES
    from ilf.feedback.llm import choose_failing
    from ilf.tasks import load_tasks

    if source not in AUTOMATIC_SOURCES:
        raise IlfError(f"--source must be {' or '.join(AUTOMATIC_SOURCES)}, got {source!r}")
    from ilf.jsonl import read_jsonl, require

    results = []
    for line, r in read_jsonl(results_path):
        require(r, "task_id", (int, str), results_path, line)
        require(r, "passed", bool, results_path, line)
        r["_line"] = line
        results.append(r)
    tasks = load_tasks(dataset, data_dir=data_dir, path=tasks_file)
    for r in results:  # feedback on a task ilf does not know would be meaningless
        try:
            known = tasks.get(r["task_id"]) is not None
        except (ValueError, TypeError):
            known = False
        if not known:
            raise IlfError(f"{results_path}:{r['_line']}: field 'task_id': unknown task {r['task_id']!r} for dataset {dataset}")
    for r in results:
        del r["_line"]
    failing = choose_failing(results, per_task=per_task, only_unsolved=only_unsolved, seed=seed)
    out = Path(output) if output else Path(results_path).with_name(Path(results_path).stem + f"_{source}_feedback.jsonl")
    from ilf.jsonl import refuse_overwrite

    refuse_overwrite(out, results_path, examples_path, tasks_file)
    examples, tasks_for_prompts, eng = None, tasks, None
    if source == "llm":
        from ilf.annotations import default_path, load_authors
        from ilf.generation import get_engine
        from ilf.report.feedback import load_feedback_file

        examples = load_feedback_file(examples_path) if examples_path else load_authors(default_path(data_dir))
        if examples and "authors" in examples[0] and tasks is not None:
            # Examples' tests and errors come from their MBPP tasks.
            ex_tasks = load_tasks("mbpp", data_dir=data_dir, task_ids={e["task_id"] for e in examples})
            tasks_for_prompts = {**ex_tasks.tasks, **tasks.tasks}
        eng = get_engine(engine, model, weights=weights, base_url=base_url)
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

    from ilf.feedback.collect import collect_feedback
    from ilf.progress import LogProgress

    try:  # a progress bar for the LLM (minutes); the trace is instant
        with LogProgress(
            TextColumn("llm feedback"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console, disable=eng is None
        ) as bar:
            t = bar.add_task("llm feedback (x0)", total=len(failing))
            recs = collect_feedback(
                source,
                failing,
                tasks_for_prompts,
                out,
                engine=eng,
                k_shot=k_shot,
                with_refinement=with_refinement,
                examples=examples,
                seed=seed,
                reference=reference,
                model_name=model or None,
                progress=lambda done, total: bar.update(t, completed=done, total=total),
            )
    finally:
        if eng is not None:
            eng.close()
    console.print(f"{len(recs)} {source} feedback record(s) -> {out}")
    return out


def feedback_stats(
    files: Sequence[str],
    as_json: bool,
    bugs: str | None = None,
    refinements: Sequence[str] = (),
    figure: str | None = None,
    output: str | None = None,
) -> None:
    """Table 6 per source; with a tag file of `ilf feedback-bugs`, Table 5 (category shares) and
    the mean bugs addressed; with π_Refine's refinement results too, Figure 5 (bugs vs pass rate).
    With `output`, also a directory with report.md, stats.json and (with refinements) figure5.png."""
    import json

    from ilf.jsonl import load_jsonl
    from ilf.report.feedback import feedback_stats as compute
    from ilf.report.feedback import load_feedback_file, stats_json, stats_table

    recs = []
    for f in files:
        recs.extend(load_feedback_file(f))
    stats = compute(recs)
    out: dict[str, Any] = {"sources": stats_json(stats)}
    if (refinements or figure) and not bugs:
        raise IlfError("--refinements and --figure need --bugs (a tag file of `ilf feedback-bugs`)")
    if figure and not refinements:
        raise IlfError("--figure needs --refinements (π_Refine's refinement results, with feedback_id and passed)")
    tags: list = []
    if bugs:
        from ilf.feedback.bugs import bugs_vs_pass_rate, category_shares, reparse

        ids = {str(r.get("feedback_id")) for r in recs}
        tags = [reparse(t) for t in load_jsonl(bugs) if str(t["feedback_id"]) in ids]
        if not tags:
            raise IlfError(f"{bugs}: no tags for the feedback of {', '.join(files)} (tag them with `ilf feedback-bugs`)")
        out["bugs"] = category_shares(tags)
        if refinements:
            results = [r for f in refinements for r in load_jsonl(f)]
            out["bugs_vs_pass_rate"] = bugs_vs_pass_rate(tags, results)
    # Every input is read and checked: only now is anything written.
    figures = ([Path(figure)] if figure else []) + ([Path(output) / "figure5.png"] if output and refinements else [])
    for path in figures:
        from ilf.report.figures import plot_bugs_vs_pass

        path.parent.mkdir(parents=True, exist_ok=True)
        plot_bugs_vs_pass(out["bugs_vs_pass_rate"], path, "π_Refine pass rate by bugs in the feedback")
    if output:
        import shlex

        from ilf.jsonl import atomic_open, write_json
        from ilf.report.feedback import render_report

        args = ["ilf", "feedback-stats", *files] + (["--bugs", bugs] if bugs else [])
        args += [x for f in refinements for x in ("--refinements", f)] + ["--output", output]
        by_id = {str(r.get("feedback_id")): r for r in recs}
        write_json(Path(output) / "stats.json", out)
        with atomic_open(Path(output) / "report.md") as f:
            f.write(render_report(out, shlex.join(args), by_id, tags))
    if as_json:
        print(json.dumps(out if bugs else out["sources"], indent=2))
        return
    Console().print(stats_table(stats))
    if bugs:
        from rich.table import Table

        from ilf.feedback.bugs import CATEGORIES

        t = Table(title="Share of feedback addressing each kind of bug (Table 5 analog; LLM-applied rubric)")
        t.add_column("category")
        for src in out["bugs"]:
            t.add_column(f"{src} (n={out['bugs'][src]['n']})", justify="right")
        for c in CATEGORIES + ("other",):
            t.add_row(c, *(f"{100 * v['shares'][c]:.0f}%" for v in out["bugs"].values()))
        t.add_row("bugs addressed (mean)", *(f"{v['bugs_mean']:.2f}" for v in out["bugs"].values()))
        Console().print(t)
        if out.get("bugs_vs_pass_rate"):
            t = Table(title="π_Refine pass rate by bugs addressed (Figure 5 analog)")
            for col in ("source", "bugs", "feedback", "pass rate", "95% CI"):
                t.add_column(col, justify="left" if col == "source" else "right")
            for r in out["bugs_vs_pass_rate"]:
                t.add_row(
                    r["source"],
                    "5+" if r["bugs"] == 5 else str(r["bugs"]),
                    str(r["feedback"]),
                    f"{100 * r['value']:.1f}%",
                    f"[{100 * r['lo']:.1f}, {100 * r['hi']:.1f}]",
                )
            Console().print(t)
    for path in figures:
        Console().print(f"figure -> {path}")
    if output:
        Console().print(f"report -> {Path(output) / 'report.md'}")


def feedback_bugs(
    files: Sequence[str],
    output: str,
    *,
    model: str,
    engine: str | None,
    weights: str | None,
    dataset: str,
    data_dir: str | None,
    tasks_file: str | None,
) -> Path:
    """`ilf feedback-bugs`: tag each feedback with the bugs it addresses (ilf.feedback.bugs)."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

    from ilf.feedback.bugs import tag_feedback
    from ilf.feedback.records import read_feedback
    from ilf.generation import get_engine
    from ilf.jsonl import refuse_overwrite
    from ilf.models import resolve_model
    from ilf.progress import LogProgress
    from ilf.tasks import load_tasks

    tasks = load_tasks(dataset, data_dir=data_dir, path=tasks_file)
    recs, seen = [], {}
    for f in files:
        for r in read_feedback(f, tasks):
            if r["feedback_id"] in seen:
                raise IlfError(f"{f}: feedback_id {r['feedback_id']!r} is also in {seen[r['feedback_id']]}")
            seen[r["feedback_id"]] = f
            recs.append(r)
    refuse_overwrite(output, *files)
    resolved = resolve_model(model)
    eng: list = []

    def load():
        eng.append(get_engine(engine, resolved, weights=weights))
        return eng[0]

    try:
        with LogProgress(TextColumn("bug tags"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console) as bar:
            t = bar.add_task("bug tags (feedback)", total=len(recs))
            tags = tag_feedback(
                recs, tasks, load, output, model_name=resolved.name, progress=lambda done, total: bar.update(t, completed=done, total=total)
            )
    finally:
        for e in eng:
            e.close()
    console.print(f"{len(tags)} feedback tagged -> {output}", highlight=False)
    return Path(output)


def annotations_import(file: str, db: str) -> None:
    from ilf.annotations import is_authors_file, load_authors
    from ilf.feedback.store import FeedbackStore
    from ilf.report.feedback import load_feedback_file

    recs = load_authors(file) if is_authors_file(file) else load_feedback_file(file)
    n = FeedbackStore(db).add_feedback(recs)
    console.print(f"{db}: imported {n} new record(s) of {len(recs)} from {file}")


def annotations_export(db: str, output: str, fmt: str, sources: Sequence[str], include_skips: bool) -> None:
    from ilf.annotations import write_authors
    from ilf.feedback.store import FeedbackStore

    if not Path(db).exists():
        raise IlfError(f"{db}: file not found")
    from ilf.jsonl import refuse_overwrite

    refuse_overwrite(output, db)
    store = FeedbackStore(db)
    if fmt == "authors":
        recs = [r for r in store.feedback_records(sources or ["authors"]) if "authors" in r]
        n = write_authors(output, recs)
    elif fmt == "ilf":
        n = store.export(output, sources=sources or None, include_skips=include_skips)
    else:
        raise IlfError(f"--format must be ilf or authors, got {fmt!r}")
    console.print(f"{n} record(s) -> {output}")
