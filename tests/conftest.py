from pathlib import Path

import pytest

from ilf.tasks import default_data_dir


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Path:
    """A tiny random Qwen2 model with a small BPE tokenizer (tests/tiny_models.py), built once per session."""
    import tiny_models

    return tiny_models.build_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def qwen_tiny(tmp_path_factory) -> Path:
    """A tiny random Qwen2 model with the bundled model's real tokenizer (what OpenVINO and chat templates need)."""
    import tiny_models

    return tiny_models.build_qwen_tiny(tmp_path_factory.mktemp("qwen_tiny"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = default_data_dir()
    if d is None or not (d / "mbpp.jsonl").exists():
        pytest.fail("MBPP data not found: run `ilf data fetch`, set ILF_DATA_DIR, or place shared/data beside the project")
    return d
