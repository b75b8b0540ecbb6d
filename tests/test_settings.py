"""Every setting has one name, one default and one validation: `ilf run KEY=V`, the step's own
command and the report agree (ilf.settings). Walks every field of every step's config."""

from __future__ import annotations

import dataclasses
import typing

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from ilf.cli import app
from ilf.config import (
    DataConfig,
    EvalConfig,
    FeedbackConfig,
    FinetuneConfig,
    ModelConfig,
    RefineConfig,
    RunConfig,
    SampleConfig,
    SweepConfig,
    load_config,
    read_run_config,
    to_toml,
)
from ilf.errors import IlfError
from ilf.settings import flag_name, settings_fields

# (run config section, its dataclass, the step command, the command's flag prefix, fields it has no flag for)
STEPS = [
    ("sample", SampleConfig, "sample", "", ()),
    ("model", ModelConfig, "sample", "", ()),  # model.base is `ilf sample --model`
    ("finetune", FinetuneConfig, "finetune", "", ()),
    ("sweep", SweepConfig, "finetune", "sweep_", ("methods",)),
    ("feedback", FeedbackConfig, "feedback", "", ("tasks", "max_tasks", "human_db", "llm_n", "llm_max_x0")),
    ("refine", RefineConfig, "refine", "", ("max_edit_distance",)),  # the choice of R, not π_Refine's sampling
    ("eval", EvalConfig, "evaluate", "", ("tasks", "n", "temperature", "top_p", "top_k", "max_new_tokens", "methods")),
]
# Flags that take a subset of the key's values, required on the command line: `ilf feedback --source`
# writes llm or trace feedback (authors and human feedback come from files and the annotation app).
SUBSET = {"feedback.source"}
# Arguments that get each command past its own required options to the settings' validation.
REQUIRED = {
    "sample": ["--output", "{tmp}/s.jsonl"],
    "finetune": ["--data", "surge", "--output", "{tmp}/ft"],
    "feedback": ["{tmp}/r.jsonl", "--source", "trace"],
    "evaluate": ["{tmp}/s.jsonl"],
    "refine": ["{tmp}/f.jsonl", "--output", "{tmp}/x1.jsonl"],
}


def _params(command: str) -> dict:
    group = get_command(app)
    return {p.name: p for p in group.commands[command].params}


def _bad_value(field: dataclasses.Field, tp) -> str | None:
    """A value the field's declared constraints refuse, as TOML (None: the field has none)."""
    md = field.metadata
    if md.get("choices") is not None:
        return "'nope'" if typing.get_origin(tp) is not list else "['nope']"
    bound = next((md[k] for k in ("ge", "gt") if md.get(k) is not None), None)
    if bound is not None:
        bad = bound - 1 if md.get("ge") is not None else bound
        inner = typing.get_args(tp)[0] if typing.get_origin(tp) is list else tp
        text = str(int(bad)) if inner is int else repr(float(bad))
        return f"[{text}]" if typing.get_origin(tp) is list else text
    if md.get("le") is not None:
        return repr(float(md["le"]) + 1)
    return None


def _cases():
    for section, cls, command, prefix, skip in STEPS:
        hints = typing.get_type_hints(cls)
        for f in settings_fields(cls):
            yield pytest.param(section, cls, command, prefix, skip, f, hints[f.name], id=f"{section}.{f.name}")


@pytest.mark.parametrize("section,cls,command,prefix,skip,field,tp", list(_cases()))
def test_every_setting_agrees_between_run_config_and_its_command(tmp_path, section, cls, command, prefix, skip, field, tp):
    key = f"{section}.{field.name}"
    default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
    # The run config: the key exists with the dataclass default (what `ilf run --dry-run` prints).
    block = to_toml(RunConfig()).split(f"\n[{section}]\n")[1].split("\n\n")[0]
    assert any(line.startswith(f"{field.name} = ") for line in block.splitlines()), key
    assert getattr(getattr(RunConfig(), section), field.name) == default

    params = _params(command)
    pname = "model" if key == "model.base" else prefix + field.name
    if field.name in skip or not field.metadata.get("cli", True):
        assert pname not in params, f"{key} has a flag but is listed as having none"
    else:
        # The command: a flag of the same name, the same default, the field's own help.
        assert pname in params, f"`ilf {command}` has no flag for {key}"
        p = params[pname]
        if key in SUBSET:
            r = CliRunner().invoke(app, [command, *[a.format(tmp=tmp_path) for a in REQUIRED[command]][:1], "--source", "nope"])
            assert r.exit_code == 2 and "--source must be llm or trace" in r.output, r.output
            return
        want = ",".join(map(str, default)) if typing.get_origin(tp) is list else default
        assert p.default == want, f"`ilf {command} --{pname}` defaults to {p.default!r}, {key} to {want!r}"
        assert p.help == field.metadata["help"]

    bad = _bad_value(field, tp)
    if bad is None:
        return
    # One validation: the same refusal from the run config and from the command.
    with pytest.raises(IlfError) as e:
        load_config(None, [f"run_dir={tmp_path / 'r'}", f"{key}={bad}"])
    msg = str(e.value)
    assert msg.startswith("command line: ") and f"'{key}'" in msg and "\n" not in msg
    problem = msg.split(f"'{key}' ", 1)[1]
    if field.name in skip or not field.metadata.get("cli", True):
        return
    flag_value = bad.strip("[]'")
    args = [a.format(tmp=tmp_path) for a in REQUIRED[command]] + [f"--{pname.replace('_', '-')}", flag_value]
    r = CliRunner().invoke(app, [command, *args])
    assert r.exit_code == 2, r.output
    assert problem in " ".join(r.output.split()), (problem, r.output)


# Flags that share a name with a DataConfig / ModelConfig setting but are another setting, on purpose.
OTHER_SETTING = {
    ("refine", "model"): "RefineConfig.model, π_Refine's base (checked above)",
    ("feedback-bugs", "model"): "the LLM that applies the rubric, another model than π_θ",
}


def _all_commands(group, path=()):
    import click

    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        yield (*path, name), cmd
        if hasattr(cmd, "list_commands"):
            yield from _all_commands(cmd, (*path, name))


def test_every_command_takes_the_shared_data_and_model_flags_from_their_dataclasses():
    """`--dataset`, `--data-dir`, `--tasks-file`, `--model`, `--engine` and `--weights` mean one
    setting each: wherever a command has one, it is DataConfig's or ModelConfig's field, with the
    field's default, help and choices, and a bad value is refused the same way."""
    shared = {flag_name(f): (cls, f) for cls in (DataConfig, ModelConfig) for f in settings_fields(cls)}
    seen: dict[str, list[str]] = {}
    for path, cmd in _all_commands(get_command(app)):
        for p in cmd.params:
            if p.name not in shared or (path[-1], p.name) in OTHER_SETTING:
                continue
            cls, f = shared[p.name]
            where = f"ilf {' '.join(path)} --{p.name.replace('_', '-')}"
            assert p.default == f.default, (where, p.default, f.default)
            assert p.help == f.metadata["help"], (where, p.help)
            seen.setdefault(p.name, []).append(" ".join(path))
    # Every command that reads tasks or opens a model has them (a command written by hand would not).
    assert set(seen["dataset"]) >= {"evaluate", "feedback", "refine", "feedback-bugs", "sample", "annotate"}, seen
    assert set(seen["data_dir"]) >= set(seen["dataset"]) | {"finetune", "export", "data"}, seen
    assert set(seen["engine"]) >= {"finetune", "refine", "feedback-bugs", "sample", "serve"}, seen
    assert set(seen["weights"]) >= set(seen["engine"]) | {"feedback"}, seen
    assert set(seen["model"]) >= {"finetune", "sample", "serve"}, seen


@pytest.mark.parametrize("command", ["evaluate", "feedback", "refine", "feedback-bugs", "sample"])
def test_a_bad_shared_flag_is_one_line_naming_it(tmp_path, command):
    args = [a.format(tmp=tmp_path) for a in REQUIRED.get(command, ["{tmp}/f.jsonl", "--output", "{tmp}/o.jsonl"])]
    r = CliRunner().invoke(app, [command, *args, "--dataset", "nope"])
    assert r.exit_code == 2 and "--dataset must be one of mbpp, humaneval, humanevalplus, jsonl, got 'nope'" in " ".join(r.output.split())
    if command != "evaluate":
        r = CliRunner().invoke(app, [command, *args, "--weights", "q4"])
        assert r.exit_code == 2 and "--weights must be one of f16, q8_0, got 'q4'" in " ".join(r.output.split()), r.output
    assert not list(tmp_path.iterdir())


def test_report_reads_the_run_config_with_the_same_loader(tmp_path):
    """The report and exports read config.toml through the loader: same defaults, same refusals,
    and a key an older ilf wrote is left out rather than failing the report."""
    run = tmp_path / "run"
    run.mkdir()
    written = load_config(None, ["eval.n=7", f"run_dir={run}"])
    (run / "config.toml").write_text('dataset = "mbpp"\n' + to_toml(written) + "\n[old]\nextra = {}\n")
    cfg = read_run_config(run)
    assert cfg == written and cfg.eval.n == 7
    (run / "config.toml").write_text("[report]\nbootstrap = 0\n")
    with pytest.raises(IlfError, match=r"config.toml:2: config key 'report.bootstrap' must be an integer >= 1"):
        read_run_config(run)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("[finetune]\nlearning_rate = 1e-5\nbogus = 3\n", "c.toml:3: unknown config key 'finetune.bogus'"),
        ('[finetune]\nlearning_rate = "x"\n', "c.toml:2: config key 'finetune.learning_rate' must be a number"),
        ("[sweep]\nlearning_rates = [0]\n", "c.toml:2: config key 'sweep.learning_rates' must be a finite number > 0"),
        ("epochs = 0\n", "c.toml:1: config key 'epochs' must be a finite number > 0"),
    ],
)
def test_finetune_config_file_is_read_by_the_run_config_loader(tmp_path, text, expected):
    """`ilf finetune --config FILE`: its [finetune] and [sweep] tables go through the same loader as
    `ilf run`, so a bad key or value is one line naming the file and line, and nothing is written."""
    (tmp_path / "c.toml").write_text(text)
    r = CliRunner().invoke(app, ["finetune", "--data", "surge", "--output", str(tmp_path / "ft"), "--config", str(tmp_path / "c.toml")])
    assert r.exit_code == 2 and expected in " ".join(r.output.split()), r.output
    assert not (tmp_path / "ft").exists()


def test_the_config_reference_lists_every_key_as_the_dataclasses_define_it():
    """docs/config.md is generated (scripts/config_reference.py); it must not drift from the code."""
    from pathlib import Path

    from ilf.config import RunConfig, config_reference
    from ilf.settings import settings_fields

    doc = (Path(__file__).resolve().parents[1] / "docs" / "config.md").read_text(encoding="utf-8")
    assert doc == config_reference(), "docs/config.md is stale: run python scripts/config_reference.py"
    run = RunConfig()
    for section in ("model", "sample", "feedback", "refine", "finetune", "sweep", "eval", "report"):
        assert f"## [{section}]" in doc
        for f in settings_fields(getattr(run, section)):
            assert f"| `{f.name}` |" in doc, (section, f.name)
    assert "| `llm_max_x0` |" in doc  # a run-only key, once only in a config comment
