"""Algorithm 1 (ILF) as resumable stages over a run directory.

    for round r = 1..R:
        x0 ~ π_θ(t)                      on the feedback tasks          rK/samples.jsonl
        EVAL(x0)                                                        rK/results.jsonl
        f = feedback on failing x0       (authors | human | llm | trace) rK/feedback.jsonl
        x1 ~ π_Refine(t, x0, f), EVAL(x1)                               rK/refinements.jsonl
        R = one passing x1 per task                                     rK/train_pairs.jsonl
        [sweep: FINETUNE per grid setting, EVAL on validation tasks]    sweep/ilf/table.jsonl
        π_θ* = FINETUNE(π_θ, R)                                         rK/model/
        π_θ <- π_θ*
    EVAL every method on the test tasks                                 eval/<method>/
    report                                                              report/report.md

Each stage records its fingerprint (config + inputs' content), timings and status in
manifest.json (ilf.stages). A finished stage with the same fingerprint is skipped; a stage killed
midway keeps what it finished (sampling and EVAL append per task, FINETUNE resumes from its
checkpoint).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable

from rich.console import Console

from ilf.config import TRAINED_METHODS, FeedbackConfig, FinetuneConfig, RunConfig, to_toml
from ilf.errors import IlfError
from ilf.jsonl import load_jsonl, write_json, write_jsonl
from ilf.stages import Stages
from ilf.sweep import grid as sweep_grid
from ilf.tasks import TaskSet, load_tasks, parse_ranges

console = Console(stderr=True)


def feedback_params(fc: FeedbackConfig, method: str = "") -> dict:
    """[feedback] as a stage parameter; llm_max_x0 only for the LLM baselines, so changing it
    re-runs nothing else."""
    d = asdict(fc)
    if not method.startswith("llm-"):
        d.pop("llm_max_x0", None)
    return d


def refine_key(rc) -> dict:
    """[refine] as the refine stages' fingerprint: without `control` (it has its own stage) and
    without later settings left at their defaults, so runs made before them still resume."""
    key = {k: v for k, v in asdict(rc).items() if k != "control"}
    for name, default in (("interface", "paper"), ("refuse_copies", False)):
        if key.get(name) == default:
            key.pop(name)
    return key


class Run(Stages):
    """A run directory: its config, and Algorithm 1 as stages (ilf.stages keeps the manifest)."""

    def __init__(self, cfg: RunConfig):
        super().__init__(cfg.resolved_run_dir())
        self.cfg = cfg
        (self.dir / "config.toml").write_text(to_toml(cfg))
        self._engine = None
        self._engine_key: tuple | None = None
        self._tasks: dict[str, TaskSet] = {}
        self._authors: list[dict[str, Any]] | None = None
        # model dir -> fingerprint of the FINETUNE stage that made it (pairs, base, settings, seed). A stage
        # that uses a trained model is keyed by this, not by the model's bytes: a model retrained from the
        # same inputs (deleted to save disk, or a run moved to another machine without its models) keeps
        # the samples already drawn from it, finished or partial, instead of discarding hours of EVAL.
        self._trained: dict[str, str] = {}
        # model dir -> its FINETUNE, finished before but the model not on disk: run when a stage needs it.
        self._deferred: dict[str, Callable[[], None]] = {}

    # -- shared resources ----------------------------------------------------------------------

    def tasks(self, spec: str = "all") -> TaskSet:
        if spec not in self._tasks:
            self._tasks[spec] = load_tasks("mbpp", data_dir=self.cfg.data_dir or None, task_ids=None if spec == "all" else spec)
            for tid, why in self._tasks[spec].skipped.items():
                console.print(f"[yellow]warning[/]: task {tid} cannot be formatted and is left out: {why}")
        return self._tasks[spec]

    def _authors_path(self) -> Path:
        from ilf.data import locate

        return locate("authors", self.cfg.data_dir or None)

    def _has_authors(self) -> bool:
        try:
            return self._authors_path().is_file()
        except IlfError:
            return False

    def authors_annotations(self) -> list[dict[str, Any]]:
        """The paper authors' 195 human (x0, f, x1) triples as feedback records (read once per run)."""
        if self._authors is None:
            self._authors = self._load_authors()
        return self._authors

    def _load_authors(self) -> list[dict[str, Any]]:
        from ilf.annotations import load_human_triples

        return load_human_triples(self._authors_path())

    def engine_name(self, engine: str | None = None) -> str:
        from ilf.generation import resolve_engine

        return resolve_engine(engine or self.cfg.model.engine)

    def engine(self, model: str, engine: str | None = None):
        """One loaded model at a time (memory, and the cores both want): switching closes the previous one."""
        from ilf.generation import get_engine

        name = self.engine_name(engine)
        key = (str(model), name)
        if self._engine_key != key:
            self.close_engine()
            self.materialize(model)
            console.print(f"loading [bold]{model}[/] with the [bold]{self.engine_label(engine)}[/] engine")
            self._engine = get_engine(name, str(model), weights=self.cfg.model.weights)
            self._engine_key = key
        return self._engine

    def engine_label(self, engine: str | None = None) -> str:
        """What sample records and the report name as the engine, e.g. 'openvino/f16'."""
        from ilf.generation.weights import engine_label

        return engine_label(self.engine_name(engine), self.cfg.model.weights)

    def close_engine(self) -> None:
        if self._engine is not None:
            self._engine.close()
        self._engine, self._engine_key = None, None

    # -- Algorithm 1 ---------------------------------------------------------------------------

    def run(self) -> Path:
        cfg = self.cfg
        model = cfg.model.base
        console.print(self.plan())
        trained_rounds, more_seeds = 0, None
        for r in range(1, cfg.rounds + 1):
            previous, (model, pairs) = model, self.ilf_round(r, model)
            if not pairs:  # nothing to learn from: π_θ* would be π_θ, and later rounds repeat this one
                model = previous
                break
            trained_rounds, more_seeds = r, self._more_seeds
            if r > 1 and "ilf" in cfg.eval.methods:
                # The previous round's π_θ* is not the final one (this round trained): evaluated now, so that
                # a run stopped in a later round already shows it.
                self.eval_method(f"ilf-r{r - 1}", previous)
        if more_seeds is not None:  # training randomness: the final π_θ* again with other FINETUNE seeds
            more_seeds()
        self.close_engine()
        self.evaluate_methods(final_model=model if trained_rounds else None, rounds=trained_rounds)
        if cfg.report.perplexity:
            self.perplexity_stage()
        report = self.report_stage()
        return report

    def plan(self) -> str:
        """What this run will do, in the amounts that set its cost (printed when it starts)."""
        cfg = self.cfg
        trained = [m for m in cfg.eval.methods if m != "zero-shot"]
        n_eval_tasks = len(self.tasks(cfg.eval.tasks))
        models = (1 if "zero-shot" in cfg.eval.methods else 0) + len(trained) * cfg.train_seeds
        if "ilf" in cfg.eval.methods:  # evaluate_methods also samples each earlier round's π_θ* (ilf-r1, ...)
            models += cfg.rounds - 1
        lines = [f"plan ({cfg.name}, {cfg.model.base}, engine {self.engine_label()}):"]
        if cfg.feedback.source == "authors":
            lines.append(f"  feedback: the paper authors' human annotations on {cfg.feedback.tasks} (CodeGen-6B's x0)")
        else:
            n_fb = len(self.feedback_tasks())
            rule = "with no passing x0" if cfg.feedback.only_unsolved else "with a failing x0"
            lines.append(
                f"  x0 ~ π_θ: {n_fb} tasks ({cfg.feedback.tasks}) x {cfg.sample.n} samples, EVAL; "
                f"{cfg.feedback.source} feedback on one failing x0 of each task {rule}"
            )
        interface = {"paper": "", "chat": ", chat template", "regenerate": ", regenerating from the task and f (x0 not shown)"}
        paper = cfg.refine.interface == "paper"
        pr = (
            "π_Refine: "
            + (cfg.refine.mode if paper or cfg.refine.mode == "finetune" else "π_θ")
            + (f" ({cfg.refine.shots} human triples)" if cfg.refine.mode == "fewshot" and paper else "")
            + interface[cfg.refine.interface]
            + f", {cfg.refine.n} refinements per x0"
            + (f" + {cfg.refine.shuffled_n} with shuffled feedback" if cfg.refine.shuffled_n else "")
            + (f"; the control: π_θ sampled again, {cfg.refine.n} per x0" if cfg.refine.control else "")
            + "; R = one passing refinement per task"
        )
        lines.append("  " + pr + (f"; {cfg.rounds} rounds" if cfg.rounds > 1 else ""))
        if cfg.sweep.enabled():
            grid = len(sweep_grid(cfg.finetune, cfg.sweep))
            swept = [m for m in trained if m in (cfg.sweep.methods or trained)]
            lines.append(
                f"  sweep: {grid} settings x {len(swept)} methods, each fine-tuned and sampled on "
                f"{cfg.sweep.max_tasks or 'all'} {cfg.sweep.tasks} tasks x {cfg.sweep.n}"
            )
        if not cfg.eval.methods:
            lines.append("  no FINETUNE and no evaluation (eval.methods is empty): the report covers x0, feedback and π_Refine")
        else:
            lines.append(f"  FINETUNE: {len(trained)} trained methods x {cfg.train_seeds} seeds ({', '.join(trained) or 'none'})")
            lines.append(
                f"  evaluation: {models} models x {n_eval_tasks} tasks ({cfg.eval.tasks}) x {cfg.eval.n} samples "
                f"= {models * n_eval_tasks * cfg.eval.n} programs; then the report"
            )
        lines.append("  " + self.time_estimate(models * n_eval_tasks * cfg.eval.n))
        lines.append("  (progress lines show rates and ETAs per step; a killed run resumes with the same command)")
        return "\n".join(lines)

    def time_estimate(self, eval_programs: int) -> str:
        """How long the sampling will take here, from the speed this machine sampled at before."""
        from ilf.sampling import known_speed

        cfg = self.cfg
        speed = known_speed(self.engine_label(), cfg.model.base)
        if not speed:
            return "time: not known on this machine yet (the first sampling step measures it)"
        programs = eval_programs
        if cfg.feedback.source != "authors":
            n_fb = len(self.feedback_tasks())
            per_x0 = cfg.refine.n * (2 if cfg.refine.control else 1) + cfg.refine.shuffled_n
            programs += n_fb * cfg.sample.n + n_fb * per_x0  # π_Refine and its control: at most
        if cfg.sweep.enabled():
            grid = len(sweep_grid(cfg.finetune, cfg.sweep))
            trained = [m for m in cfg.eval.methods if m != "zero-shot"]
            swept = [m for m in trained if m in (cfg.sweep.methods or trained)]
            programs += grid * len(swept) * (cfg.sweep.max_tasks or len(self.tasks(cfg.sweep.tasks))) * cfg.sweep.n
        minutes = programs / speed / 60
        return (
            f"time: about {minutes:.0f} min of sampling for at most {programs} programs at the "
            f"{60 * speed:.0f} programs/min this machine sampled before; FINETUNE and EVAL come on top"
        )

    def ilf_round(self, r: int, model: str) -> tuple[str, list[dict]]:
        cfg, rd = self.cfg, self.dir / f"r{r}"
        self._more_seeds: Callable[[], None] | None = None  # set when this round trains π_θ*
        rd.mkdir(exist_ok=True)
        fb_path = rd / "feedback.jsonl"

        # x0 ~ π_θ and EVAL(x0): needed unless the feedback is the authors' (their x0 came from CodeGen-6B).
        if cfg.feedback.source != "authors":
            self.sample_stage(f"r{r}/sample", model, self.feedback_tasks(), cfg.sample, rd / "samples.jsonl")
            self.eval_stage(f"r{r}/eval-x0", rd / "samples.jsonl", rd / "results.jsonl")

        self.stage(
            f"r{r}/feedback",
            lambda: write_jsonl(fb_path, self.collect_feedback(r, rd, model)),
            params={"feedback": feedback_params(cfg.feedback), "model": model, "seed": cfg.seed},
            inputs=[rd / "results.jsonl"] if cfg.feedback.source != "authors" else [],
            outputs=[fb_path],
        )
        feedback = load_jsonl(fb_path)
        if not feedback:
            raise IlfError(f"{fb_path}: no feedback to refine (no failing programs on the feedback tasks?)")

        refiner = self.refiner_stage()
        raw = rd / "refinements_raw.jsonl"
        self.stage(
            f"r{r}/refine",
            lambda: self.refine_samples(feedback, refiner, raw),
            params={"refine": refine_key(cfg.refine), "refiner": refiner, "seed": cfg.seed, "engine": self.engine_label()},
            inputs=[fb_path],
            outputs=[raw],
        )
        refined = rd / "refinements.jsonl"
        self.eval_stage(f"r{r}/eval-refine", raw, refined)
        if cfg.refine.shuffled_n:
            self.shuffled_control(r, rd, feedback, refiner)
        control = rd / "control_results.jsonl"
        if cfg.refine.control:
            self.resample_control(r, rd, feedback, model)
        pairs_path = rd / "train_pairs.jsonl"

        def select():
            from ilf.pairs import ilf_pairs
            from ilf.refine import refine_summary
            from ilf.text import edit_distance

            results = load_jsonl(refined)
            x0 = {f["feedback_id"]: f["program"] for f in feedback}
            for res in results:  # recomputed here: the measure is the selection's, not the sampler's
                if res["feedback_id"] in x0:
                    res["edit_distance"] = edit_distance(x0[res["feedback_id"]], res["refinement"], self.tasks()[res["task_id"]].prompt)
            dropped: dict[str, int] = {}
            pairs = ilf_pairs(results, self.tasks(), seed=cfg.seed + r, max_edit_distance=cfg.refine.max_edit_distance, dropped=dropped)
            summary = refine_summary(results, cfg.refine.n)
            summary.update(max_edit_distance=cfg.refine.max_edit_distance, **dropped, train_pairs=len(pairs))
            if cfg.refine.control:
                from ilf.report.control import control_comparison

                summary["control"] = control_comparison(results, load_jsonl(control), cfg.report.bootstrap or None, 0)
            write_json(rd / "refine_summary.json", summary)
            write_jsonl(pairs_path, pairs)

        self.stage(
            f"r{r}/select",
            select,
            params={"max_edit_distance": cfg.refine.max_edit_distance, "seed": cfg.seed, "measure": "bounded"}
            | ({"control": True} if cfg.refine.control else {}),
            inputs=[refined] + ([control] if cfg.refine.control else []),
            outputs=[pairs_path, rd / "refine_summary.json"],
        )
        pairs = load_jsonl(pairs_path)
        summary = json.loads((rd / "refine_summary.json").read_text())
        console.print(
            f"π_Refine: {summary.get('num_feedback', 0)} (x0, f) pairs, pass@1 {summary.get('pass@1', 0):.3f}, "
            f"1+ correct {summary.get('one_plus_correct', 0):.3f}; R has {len(pairs)} programs"
        )
        if "control" in summary:
            from ilf.report.control import describe_comparison

            console.print(describe_comparison(summary["control"]), highlight=False)
        if not pairs:
            console.print(
                f"[yellow]R is empty[/]: π_Refine repaired none of the {summary.get('num_feedback', 0)} (x0, f) pairs of "
                f"round {r}, so ILF has nothing to train on and neither have the baselines that use R's tasks; the "
                "run goes on to evaluate the other methods and writes the report (more refinements per x0, "
                "refine.n, or more tasks, feedback.max_tasks, give π_Refine more chances)"
            )
            return model, pairs
        if r == cfg.rounds and "ilf" not in cfg.eval.methods:
            # A run that measures x0, feedback and π_Refine (Tables 1-3) trains nothing it does not evaluate.
            console.print("eval.methods has no ilf: π_θ* is not trained; R and π_Refine's measurements are this run's result")
            return model, pairs
        out_model = rd / "model"
        tc = self.sweep_stage("ilf" if r == 1 else f"ilf-r{r}", model, pairs_path)
        self.finetune_stage(f"r{r}/finetune", model, pairs_path, out_model, tc)

        def more_seeds():  # run() trains them for the last round that trained (a later round's R may be empty)
            for i in range(1, cfg.train_seeds):
                self.finetune_stage(f"r{r}/finetune@s{i}", model, pairs_path, seed_dir(out_model, i), tc, seed_offset=i)

        self._more_seeds = more_seeds
        return str(out_model), pairs

    def sweep_stage(self, method: str, base: str, pairs_path: Path) -> FinetuneConfig:
        """The paper's FINETUNE sweep (Appendix A.1) for one method, on the validation tasks
        (sweep.tasks; ilf.sweep): returns [finetune] with the best setting."""
        from ilf.generation import get_engine
        from ilf.sweep import best_config, sweep

        cfg, sw = self.cfg, self.cfg.sweep
        train = replace(cfg.finetune, objective="dpo") if method.endswith("-dpo") else cfg.finetune
        if not sw.enabled() or re.sub(r"-r\d+$", "", method) not in (sw.methods or TRAINED_METHODS):
            return train
        sd = self.dir / "sweep" / method
        val = self.tasks(sw.tasks)
        name = self.engine_name()

        def body():
            self.close_engine()  # one model in memory at a time
            self.materialize(base)
            sweep(
                pairs_path,
                base,
                sd,
                val,
                train,
                sw,
                engine=lambda m: get_engine(name, m, weights=cfg.model.weights),
                engine_name=self.engine_label(),
                seed=cfg.seed,
                timeout=cfg.eval.timeout or None,
                compare=cfg.eval.compare,
                console=console,
            )

        self.stage(
            f"sweep/{method}",
            body,
            params={"base": base, "finetune": train.keyed(), "sweep": asdict(sw), "engine": self.engine_label(), "seed": cfg.seed},
            inputs=[pairs_path],
            outputs=[sd / "best.json"],
        )
        return best_config(train, json.loads((sd / "best.json").read_text(encoding="utf-8")))

    # -- stage bodies ---------------------------------------------------------------------------

    def feedback_tasks(self) -> TaskSet:
        """The tasks that get x0 and feedback: feedback.tasks, the first feedback.max_tasks of them."""
        tasks = self.tasks(self.cfg.feedback.tasks)
        if self.cfg.feedback.max_tasks:
            tasks = TaskSet(dict(list(tasks.tasks.items())[: self.cfg.feedback.max_tasks]), {}, tasks.source)
        return tasks

    def example_annotations(self) -> list[dict[str, Any]]:
        """Human triples that teach π_Refine and the LLM (refine.examples_tasks, MBPP_Refine)."""
        wanted = parse_ranges(self.cfg.refine.examples_tasks)
        return [a for a in self.authors_annotations() if a["task_id"] in wanted]

    def feedback_annotations(self) -> list[dict[str, Any]]:
        """The authors' annotations on feedback.tasks, by task id, the first feedback.max_tasks."""
        wanted = parse_ranges(self.cfg.feedback.tasks)
        ann = sorted((a for a in self.authors_annotations() if a["task_id"] in wanted), key=lambda a: a["task_id"])
        return ann[: self.cfg.feedback.max_tasks] if self.cfg.feedback.max_tasks else ann

    def sample_stage(self, name: str, model: str, tasks: TaskSet | str, sc, out: Path) -> None:
        from ilf.sampling import sample

        if isinstance(tasks, str):
            tasks = self.tasks(tasks)
        params = sc.params(self.cfg.seed)

        def body():
            # The engine loads only if some task still needs sampling (a resumed stage may not).
            sample(
                list(tasks), lambda: self.engine(model), params, out, resume=True, model_name=str(model), engine_name=self.engine_label()
            )

        key, inputs = self._model_key(model)
        ident = {"model": model, "engine": self.engine_label(), "tasks": sorted(map(str, tasks.tasks)), "sampling": asdict(params)}
        self.stage(name, body, params=ident | key, inputs=inputs, outputs=[out])

    def _model_key(self, model: str) -> tuple[dict[str, str], list[Path]]:
        """(extra params, inputs) that identify a model for a stage fingerprint: a model this run trained
        by the stage that trained it, any other directory by its bytes, a model name by itself."""
        trained = self._trained.get(str(Path(model).resolve()))
        if trained:
            return {"trained_by": trained}, []
        return {}, [Path(model)] if Path(model).is_dir() else []

    def eval_stage(self, name: str, samples: Path, out: Path) -> None:
        from ilf.evaluation import evaluate

        def body():
            self.close_engine()  # EVAL wants both cores
            recs = load_jsonl(samples)
            evaluate(recs, self.tasks(), timeout=self.cfg.eval.timeout or None, output=out, progress=True, compare=self.cfg.eval.compare)

        params = {"timeout": self.cfg.eval.timeout}
        if self.cfg.eval.compare != "exact":  # only when set: earlier runs keep their EVAL stages
            params["compare"] = self.cfg.eval.compare
        self.stage(name, body, params=params, inputs=[samples], outputs=[out])

    def collect_feedback(self, r: int, rd: Path, model: str) -> list[dict[str, Any]]:
        cfg = self.cfg.feedback
        wanted = parse_ranges(cfg.tasks)
        if cfg.source == "authors":  # rounds > 1 is refused by config validation
            trains = "ilf" in self.cfg.eval.methods
            console.print(
                "[yellow]note[/]: feedback.source = authors: x0 are CodeGen-Mono 6.1B's programs (the paper's "
                f"annotations), not {self.cfg.model.base}'s own" + (", so this ILF trains off-policy" if trains else "")
            )
            return self.feedback_annotations()

        from ilf.feedback.collect import collect_feedback
        from ilf.feedback.llm import choose_failing, without_leaks

        failing = choose_failing(
            load_jsonl(rd / "results.jsonl"), per_task=1, only_unsolved=cfg.only_unsolved, seed=self.cfg.seed, salt=f"r{r}:"
        )
        tasks = self.tasks()
        if cfg.source in ("trace", "llm"):
            llm = cfg.llm_model or model
            written = collect_feedback(
                cfg.source,
                failing,
                tasks,
                rd / "feedback_llm.jsonl" if cfg.source == "llm" else None,
                engine=lambda: self.engine(llm, cfg.llm_engine or None),
                id_prefix=f"trace-r{r}",
                k_shot=cfg.llm_shots,
                reference=cfg.llm_reference,
                examples=self.example_annotations() if cfg.source == "llm" else None,
                seed=self.cfg.seed,
                model_name=str(llm),
            )
            kept, dropped = without_leaks(written, tasks)
            if dropped:
                console.print(
                    f"leak guard: {sum(dropped.values())} of {len(written)} feedback texts dropped "
                    f"({', '.join(f'{v} {k}' for k, v in sorted(dropped.items()))}; all kept in {rd / 'feedback_llm.jsonl'})"
                )
            return kept
        # human: annotations collected with `ilf annotate RUN_DIR`
        from ilf.feedback.store import FeedbackStore

        db = Path(cfg.human_db) if cfg.human_db else self.dir / "feedback.db"
        if not db.exists():
            raise IlfError(
                f"{db}: no human feedback yet. x0 and their results are ready in {rd}; "
                f"collect feedback with `ilf annotate {self.dir}`, then rerun `ilf run`"
            )
        recs = [x for x in FeedbackStore(db).feedback_records(sources=["human"]) if x["task_id"] in wanted and x.get("feedback")]
        if not recs:
            raise IlfError(f"{db}: the store holds no feedback for tasks {cfg.tasks}; annotate with `ilf annotate {self.dir}`")
        return recs

    def refiner_stage(self) -> str:
        """π_Refine's model: the base model few-shot, or FINETUNE on human triples (refine.mode = finetune)."""
        cfg = self.cfg
        base = cfg.refine.model or cfg.model.base
        if cfg.refine.mode == "fewshot":
            return base
        from ilf.pairs import human_refinement_pairs

        pairs_path = self.dir / "refiner" / "train_pairs.jsonl"

        def pairs():
            write_jsonl(pairs_path, human_refinement_pairs(self.example_annotations(), self.tasks(), kind="refine"))

        self.stage("refiner/pairs", pairs, params={"examples_tasks": cfg.refine.examples_tasks}, outputs=[pairs_path])
        out = self.dir / "refiner" / "model"
        self.finetune_stage("refiner/finetune", base, pairs_path, out, cfg.refine_finetune)
        return str(out)

    def shuffled_control(self, r: int, rd: Path, feedback: list[dict], refiner: str) -> None:
        """Table 2's control: the same x0 refined with another task's feedback (refine.shuffled_n
        samples each). Its verdicts go to r<N>/refinements_shuffled.jsonl; nothing of it enters R."""
        from ilf.refine import shuffled_feedback

        cfg = self.cfg
        shuffled = shuffled_feedback(feedback, seed=cfg.seed + r)
        if not shuffled:
            console.print("[yellow]warning[/]: the shuffled-feedback control needs feedback on 2+ tasks; skipped")
            return
        raw = rd / "refinements_shuffled_raw.jsonl"
        self.stage(
            f"r{r}/refine-shuffled",
            lambda: self.refine_samples(shuffled, refiner, raw, n=cfg.refine.shuffled_n),
            params={"refine": refine_key(cfg.refine), "refiner": refiner, "seed": cfg.seed, "engine": self.engine_label()},
            inputs=[rd / "feedback.jsonl"],
            outputs=[raw],
        )
        self.eval_stage(f"r{r}/eval-refine-shuffled", raw, rd / "refinements_shuffled.jsonl")

    def resample_control(self, r: int, rd: Path, feedback: list[dict], model: str) -> None:
        """The decisive control: π_θ sampled again on the feedback's tasks with π_Refine's budget,
        no x0, no feedback (ilf.control.resample_control); compared with R's source in r<N>/select."""
        from ilf.control import resample_control
        from ilf.refine import chat_formatter, refine_params

        cfg = self.cfg
        raw = rd / "control_samples.jsonl"
        params = refine_params(cfg.refine, cfg.seed + r)
        self.stage(
            f"r{r}/control",
            lambda: resample_control(
                feedback,
                self.tasks(),
                lambda: self.engine(model),
                params,
                raw,
                interface=cfg.refine.interface,
                chat=lambda: chat_formatter(model),
                model_name=str(model),
                engine_name=self.engine_label(),
            ),
            params={
                "n": cfg.refine.n,
                "model": str(model),
                "seed": params.seed,
                "engine": self.engine_label(),
                **self._model_key(model)[0],
            }
            | ({"interface": "chat"} if cfg.refine.interface != "paper" else {}),
            inputs=[rd / "feedback.jsonl"],
            outputs=[raw],
        )
        self.eval_stage(f"r{r}/eval-control", raw, rd / "control_results.jsonl")

    def refine_samples(self, feedback: list[dict], refiner: str, out: Path, n: int | None = None) -> None:
        from ilf.refine import refine

        examples = self.example_annotations() if self.cfg.refine.mode == "fewshot" and self.cfg.refine.shots else []
        # The engine loads only if something is left to sample.
        refine(
            feedback,
            self.tasks(),
            lambda: self.engine(refiner),
            self.cfg.refine,
            out,
            examples=examples,
            seed=self.cfg.seed,
            n=n,
            console=console,
            protocol={"model": str(refiner), "engine": self.engine_label(), "dataset": "mbpp"},
            refiner=refiner,
        )

    def finetune_stage(self, name: str, base: str, pairs: Path, out: Path, tc: FinetuneConfig, seed_offset: int = 0) -> None:
        """FINETUNE seed i of train_seeds trains with finetune.seed + i."""
        from ilf.finetune import finetune_in_child

        tc = replace(tc, seed=tc.seed + seed_offset)
        replay_inputs = []
        if tc.replay and not tc.replay_from:  # replay draws from the x0 of the round that trains (π_θ's own)
            m = re.match(r"r(\d+)/", name)
            tc = replace(tc, replay_from=str(self.dir / f"r{m.group(1) if m else 1}" / "results.jsonl"))
            replay_inputs = [Path(tc.replay_from)]

        def body():
            self.close_engine()
            self.materialize(base)
            finetune_in_child(load_jsonl(pairs), base, out, tc, overwrite=True)

        key, base_inputs = self._model_key(base)
        train = tc.keyed()  # older runs resume
        params, inputs = {"base": base, "train": train} | key, [pairs, *base_inputs, *replay_inputs]
        fp, entry, where = self.fingerprint(params, inputs), self.manifest["stages"].get(name, {}), str(Path(out).resolve())
        self._trained[where] = fp
        if entry.get("status") == "done" and entry.get("fingerprint") == fp and not Path(out).exists():
            # Trained before, the model since deleted (disk) or left behind (a run moved without its models):
            # retrained only if a later stage still needs it, not for the evaluations that already finished.
            console.print(f"[dim]✓ {name}: done; {out} not on disk: retrained if a later stage needs it[/]")
            self._deferred[where] = lambda: self.stage(name, body, params=params, inputs=inputs, outputs=[out])
            return
        self.stage(name, body, params=params, inputs=inputs, outputs=[out])

    def materialize(self, model: str) -> None:
        """Before a model is loaded: retrain it if its FINETUNE was deferred (see finetune_stage)."""
        run = self._deferred.pop(str(Path(model).resolve()), None)
        if run is not None:
            run()

    # -- evaluation of every method on the test tasks -------------------------------------------

    def evaluate_methods(self, final_model: str | None, rounds: int) -> None:
        """Evaluate every method that has a model. final_model None: R was empty in round 1, so
        neither ILF nor the baselines trained on R's tasks exist (the report says so)."""
        cfg = self.cfg
        models: dict[str, str] = {}
        for m in cfg.eval.methods:
            if m == "zero-shot":
                models[m] = cfg.model.base
            elif final_model is None:
                continue
            elif m == "ilf":
                models[m] = final_model
                for i in range(1, cfg.train_seeds):
                    models[f"{m}@s{i}"] = str(seed_dir(Path(final_model), i))
            else:
                model = self.baseline_model(m)
                if model is None:
                    continue
                models[m] = model
                for i in range(1, cfg.train_seeds):
                    models[f"{m}@s{i}"] = str(seed_dir(Path(model), i))
        if "ilf" in cfg.eval.methods and rounds > 1 and final_model is not None:
            for r in range(1, rounds):
                models[f"ilf-r{r}"] = str(self.dir / f"r{r}" / "model")
        for method, model in models.items():
            self.eval_method(method, model)

    def eval_method(self, method: str, model: str) -> None:
        from ilf.evaluation import summarize

        cfg, ed = self.cfg, self.dir / "eval" / method
        self.sample_stage(f"eval/{method}/sample", model, cfg.eval.tasks, cfg.eval, ed / "samples.jsonl")
        self.eval_stage(f"eval/{method}/eval", ed / "samples.jsonl", ed / "results.jsonl")
        if Path(model).resolve().is_relative_to(self.dir.resolve()):
            from ilf.models import remove_conversions

            # The run's own models are sampled once: their engine conversions (~1 GB each) need not stay.
            self.close_engine()
            remove_conversions(model)

        def summary():
            results = load_jsonl(ed / "results.jsonl")
            s = summarize(results, ks=(1, 10, 100))
            s = {k: v for k, v in s.items() if k != "per_task"}
            train = None
            base_method = method.split("@")[0]
            if base_method.startswith("ilf"):
                r = int(base_method[5:]) if base_method.startswith("ilf-r") else self.last_trained_round()
                train = len(load_jsonl(self.dir / f"r{r}" / "train_pairs.jsonl"))
            elif method != "zero-shot":
                train = len(load_jsonl(self.dir / "baselines" / base_method / "train_pairs.jsonl"))
            first = results[0] if results else {}
            write_json(
                ed / "summary.json",
                {
                    "method": method,
                    "model": model,
                    "engine": first.get("engine"),
                    "dataset": "mbpp",
                    "split": cfg.eval.tasks,
                    "task_ids": sorted({r["task_id"] for r in results}),
                    "n": cfg.eval.n,
                    "temperature": cfg.eval.temperature,
                    "top_p": cfg.eval.top_p,
                    "max_new_tokens": cfg.eval.max_new_tokens,
                    "seed": cfg.seed,
                    "train_pairs": train,
                    **s,
                },
            )

        self.stage(
            f"eval/{method}/summary", summary, params={"method": method}, inputs=[ed / "results.jsonl"], outputs=[ed / "summary.json"]
        )
        s = json.loads((ed / "summary.json").read_text())
        console.print(
            f"[bold]{method}[/]: pass@1 {s.get('pass@1', 0):.3f}"
            + (f", pass@10 {s['pass@10']:.3f}" if "pass@10" in s else "")
            + f", 1+ correct {s.get('one_plus_correct', 0):.3f} ({s.get('num_tasks')} tasks × {cfg.eval.n})"
        )

    def last_trained_round(self) -> int:
        """Rounds stop at the first empty R: the final model is the last round's that trained."""
        for r in range(self.cfg.rounds, 0, -1):
            p = self.dir / f"r{r}" / "train_pairs.jsonl"
            if p.exists() and load_jsonl(p):
                return r
        return self.cfg.rounds

    def baseline_model(self, method: str) -> str | None:
        """The paper's Table 4 baselines: FINETUNE π_θ on other data for the same tasks as R."""
        from ilf.baselines import FROM_OWN_SAMPLES, LLM_BASELINES, baseline_pairs

        cfg, bd = self.cfg, self.dir / "baselines" / method
        pairs_path = bd / "train_pairs.jsonl"

        def pairs():
            if method in LLM_BASELINES:
                recs = self.llm_refinement_pairs(method, bd)
            else:
                if method in FROM_OWN_SAMPLES and not (self.dir / "r1" / "results.jsonl").exists():
                    console.print(f"[yellow]warning[/]: {method} needs π_θ's own samples (feedback.source != authors); skipped")
                recs = baseline_pairs(method, self.dir / "r1", self.tasks(), seed=cfg.seed, annotations=self.authors_annotations)
            write_jsonl(pairs_path, recs)

        params = {"method": method, "feedback": feedback_params(cfg.feedback, method), "tasks": "R's task ids"}
        if method.startswith("llm-"):  # the LLM's draws are sampled as π_Refine's
            params["sampling"] = {k: getattr(cfg.refine, k) for k in ("n", "temperature", "top_p")}
        self.stage(f"baselines/{method}/pairs", pairs, params=params, inputs=[self.dir / "r1" / "train_pairs.jsonl"], outputs=[pairs_path])
        if not load_jsonl(pairs_path):
            # Nothing to train on (e.g. no LLM refinement passed): no model, so no row in the report.
            console.print(f"[yellow]warning[/]: baseline {method!r} has no training data ({pairs_path}); not evaluated")
            return None
        out = bd / "model"
        tc = self.sweep_stage(method, cfg.model.base, pairs_path)
        self.finetune_stage(f"baselines/{method}/finetune", cfg.model.base, pairs_path, out, tc)
        for i in range(1, cfg.train_seeds):
            self.finetune_stage(f"baselines/{method}/finetune@s{i}", cfg.model.base, pairs_path, seed_dir(out, i), tc, seed_offset=i)
        return str(out)

    def llm_refinement_pairs(self, method: str, bd: Path) -> list[dict]:
        """llm-1shot / llm-2shot on the same failing x0 as ILF's feedback: π_θ's own (on-policy) or
        the authors' CodeGen programs (ilf.baselines)."""
        from ilf.baselines import llm_refinement_pairs, llm_x0

        cfg = self.cfg
        src = self.dir / "r1" / "feedback.jsonl"
        failing = load_jsonl(src) if cfg.feedback.source != "authors" and src.exists() else self.feedback_annotations()
        llm = cfg.feedback.llm_model or cfg.model.base
        recs = llm_refinement_pairs(
            method,
            llm_x0(failing, cfg.feedback.llm_max_x0, cfg.seed),
            self.tasks(),
            lambda: self.engine(llm, cfg.feedback.llm_engine or None),
            bd,
            fc=cfg.feedback,
            rc=cfg.refine,
            examples=self.example_annotations(),
            seed=cfg.seed,
            model_name=str(llm),
            compare=cfg.eval.compare,
            console=console,
        )
        self.close_engine()
        return recs

    # -- perplexity and report ------------------------------------------------------------------

    def perplexity_stage(self) -> None:
        out = self.dir / "perplexity.jsonl"
        tasks = self.tasks()
        r1 = self.dir / "r1" / "train_pairs.jsonl"

        def body():
            from ilf.report import compute_perplexities

            self.close_engine()
            # Figure 3: every source on R's task ids (human refinements where those tasks have one).
            from ilf.pairs import gold_pairs, human_refinement_pairs

            ilf_pairs = load_jsonl(r1)
            ids = sorted({p["task_id"] for p in ilf_pairs})
            ann = self.authors_annotations() if self._has_authors() else []
            sources = {
                "gold": gold_pairs(tasks, ids),
                "human-refinements": human_refinement_pairs(ann, tasks, task_ids=ids),
                "ilf": ilf_pairs,
            }
            compute_perplexities(self.cfg.model.base, sources, out)

        self.stage("perplexity", body, params={"model": self.cfg.model.base}, inputs=[r1], outputs=[out])

    def report_stage(self) -> Path:
        from ilf.report import write_report

        inputs = sorted(self.dir.glob("eval/*/results.jsonl")) + sorted(self.dir.glob("r*/refinements.jsonl"))
        path = self.dir / "report" / "report.md"
        self.stage("report", lambda: write_report(self.dir), params={}, inputs=inputs, outputs=[path])
        return path


def seed_dir(model_dir: Path, i: int) -> Path:
    """Where FINETUNE seed i (> 0) of a method writes its model: beside seed 0's, `model@s<i>`."""
    return model_dir.with_name(f"{model_dir.name}@s{i}")


def run_pipeline(cfg: RunConfig) -> Path:
    run = Run(cfg)
    console.print(f"run directory: [bold]{run.dir}[/]")
    try:
        return run.run()
    finally:
        run.close_engine()
