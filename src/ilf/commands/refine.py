"""`ilf refine`: n refinements per feedback record, with the shuffled-feedback control (Table 2) and
π_θ sampled again with the same budget beside them when asked."""

from __future__ import annotations

from pathlib import Path

from ilf.config import RefineConfig
from ilf.control import resample_control
from ilf.errors import IlfError
from ilf.feedback.records import read_feedback
from ilf.refine import chat_formatter, refine, refine_params, shuffled_feedback


def refine_command(
    feedback_path: str | Path,
    output: Path,
    cfg: RefineConfig,
    *,
    engine: str,
    weights: str,
    dataset: str = "mbpp",
    data_dir: str | Path | None = None,
    tasks_file: str | Path | None = None,
    only_tasks: str | None = None,
    seed: int = 0,
    policy: str | None = None,
    console=None,
) -> dict[str, Path]:
    """`ilf refine`: cfg.n refinements per feedback record into OUTPUT; with cfg.shuffled_n the
    Table 2 control (each x0 with another task's feedback) into OUTPUT's `_shuffled` sibling; with
    cfg.control π_θ (`policy`, default the bundled model) sampled again with the same budget into
    OUTPUT's `_control` sibling."""
    from ilf.annotations import load_human_triples
    from ilf.generation import get_engine, resolve_engine
    from ilf.jsonl import refuse_overwrite
    from ilf.models import resolve_model
    from ilf.tasks import load_tasks, parse_ranges

    if cfg.mode == "finetune" and not cfg.model:
        raise IlfError(
            "--mode finetune needs --model: a π_Refine fine-tuned on human triples, e.g. "
            "`ilf finetune --data surge --split refine --kind refine --output refiner`"
        )
    tasks = load_tasks(dataset, data_dir=data_dir, path=tasks_file)
    feedback = read_feedback(feedback_path, tasks)
    if only_tasks:
        wanted = parse_ranges(only_tasks)
        feedback = [f for f in feedback if f["task_id"] in wanted]
        if not feedback:
            raise IlfError(f"{feedback_path}: no feedback on tasks {only_tasks}")
    output = Path(output)
    sibling = lambda tag: output.with_name(output.name.removesuffix(".jsonl") + f"_{tag}.jsonl")  # noqa: E731
    shuffled_out, control_out = sibling("shuffled"), sibling("control")
    for path in (output, shuffled_out, control_out):
        refuse_overwrite(path, feedback_path)
    examples, example_tasks = [], None
    if cfg.mode == "fewshot" and cfg.shots:
        wanted = parse_ranges(cfg.examples_tasks)
        examples = [a for a in load_human_triples(_authors_file(data_dir)) if a["task_id"] in wanted]
        example_tasks = load_tasks("mbpp", data_dir=data_dir, task_ids=sorted({a["task_id"] for a in examples}))
    name = resolve_engine(engine)
    model = resolve_model(cfg.model or None)  # converts once (with a message) before the engine loads
    from ilf.generation.weights import engine_label

    protocol = {"model": model.name, "engine": engine_label(name, weights), "dataset": dataset}
    eng: dict = {}

    def engine(which=model):  # loaded once, and only if something is left to sample; one at a time
        if which.hf_dir not in eng:
            for e in eng.values():
                e.close()
            eng.clear()
            eng[which.hf_dir] = get_engine(name, which, weights=weights)
        return eng[which.hf_dir]

    def run(records, out, n=None):
        return refine(
            records,
            tasks,
            engine,
            cfg,
            out,
            examples=examples,
            example_tasks=example_tasks,
            seed=seed,
            n=n,
            console=console,
            protocol=protocol,
            refiner=model,
        )

    written = {"refinements": output}
    try:
        recs = run(feedback, output)
        shuffled = shuffled_feedback(feedback, seed=seed) if cfg.shuffled_n else []
        if shuffled:
            run(shuffled, shuffled_out, n=cfg.shuffled_n)
            written["shuffled"] = shuffled_out
        elif cfg.shuffled_n and console:
            console.print("[yellow]warning[/]: the shuffled-feedback control needs feedback on 2+ tasks; skipped")
        if cfg.control:
            pi = resolve_model(policy or None)
            resample_control(
                feedback,
                tasks,
                lambda: engine(pi),
                refine_params(cfg, seed),
                control_out,
                interface=cfg.interface,
                chat=lambda: chat_formatter(pi),
                model_name=pi.name,
                engine_name=protocol["engine"],
            )
            written["control"] = control_out
    finally:
        for e in eng.values():
            e.close()
    if console:
        console.print(f"{len(recs)} refinements of {len(feedback)} (x0, f) pairs -> {output}", highlight=False)
        if cfg.control:
            console.print(
                f"π_θ ({pi.name}) sampled again with the same budget -> {control_out}; compare after EVAL with "
                f"`ilf evaluate` on both and `ilf report {output.name.removesuffix('.jsonl')}_results.jsonl "
                f"--control {control_out.name.removesuffix('.jsonl')}_results.jsonl`",
                highlight=False,
            )
    return written


def _authors_file(data_dir):
    from ilf.data import locate

    return locate("authors", data_dir)
