"""The run ledger, its fingerprint, and whole-or-nothing writes."""
import json
import os

import pytest

from lib.reporting import atomic_write_text, load_ledger, record


@pytest.fixture
def reports(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBOOK_REPORTS", str(tmp_path))
    return tmp_path


def test_record_merges_metrics_and_fingerprints(reports):
    cfg = {"notebook": "01_x", "profile": "smoke", "seed": 0, "device": "cpu", "bpe_vocab_size": 10}
    record(cfg, {"a": 1}, key=("a",), references={"a": (2.0, "paper")})
    record(cfg, {"b": 0.5}, key=("b",))
    entry = load_ledger("smoke")["01_x"]
    assert entry["metrics"] == {"a": 1.0, "b": 0.5} and entry["key"] == ["a", "b"]
    assert entry["references"]["a"] == {"value": 2.0, "source": "paper"}
    fp = entry["fingerprint"]
    assert fp["seed"] == 0 and fp["profile"] == "smoke" and fp["parameters"]["bpe_vocab_size"] == 10
    assert fp["packages"]["torch"].startswith("2.13") and fp["git_commit"]
    assert json.loads((reports / "smoke" / "metrics.json").read_text())


def test_atomic_write_leaves_old_file_and_no_temp_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "out.json"
    atomic_write_text(target, "old")

    def boom(*a):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_text(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.json"]
