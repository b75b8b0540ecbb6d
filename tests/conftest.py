from pathlib import Path

import pytest

from ilf.tasks import default_data_dir


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = default_data_dir()
    if d is None or not (d / "mbpp.jsonl").exists():
        pytest.fail("MBPP data not found: run `ilf data fetch`, set ILF_DATA_DIR, or place shared/data beside the project")
    return d
