"""Shared test setup: offline hub, the real data beside the checkout, and tiny fixtures."""
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a failing hub call would otherwise hang for a minute
_SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
if "WORKBOOK_DATA" not in os.environ and _SHARED.is_dir():
    os.environ["WORKBOOK_DATA"] = str(_SHARED)

import pytest  # noqa: E402

from lib.data import data_root  # noqa: E402


@pytest.fixture
def real_data() -> Path:
    """The data root holding the real datasets (../shared/data); skips when it is absent."""
    root = data_root()
    if not (root / "conll2003" / "train.txt").is_file():
        pytest.skip(f"real data not found under {root}; set WORKBOOK_DATA=../shared/data")
    return root


@pytest.fixture
def tmp_root(tmp_path, monkeypatch) -> Path:
    """An empty data root for malformed-input fixtures."""
    monkeypatch.setenv("WORKBOOK_DATA", str(tmp_path))
    return tmp_path
