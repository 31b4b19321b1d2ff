"""The run ledger, its fingerprint, and whole-or-nothing writes."""
import json
import os

import pytest

from lib.reporting import atomic_dir, atomic_write_text, load_ledger, record


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


def _fill(path, text: str) -> None:
    with atomic_dir(path) as tmp:
        (tmp / "a.txt").write_text(text)


def _failing_replace(monkeypatch, failing: set[int]) -> None:
    """os.replace fails on its calls numbered in `failing` (1-based; the first moves the old folder aside)."""
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append(src)
        if len(calls) in failing:
            raise OSError("disk full")
        real(src, dst)
    monkeypatch.setattr(os, "replace", replace)


def test_atomic_dir_keeps_the_old_folder_when_the_second_rename_fails(tmp_path, monkeypatch):
    target = tmp_path / "ckpt"
    _fill(target, "old")
    _failing_replace(monkeypatch, {2})  # old -> aside works, new -> target fails, old -> back works
    with pytest.raises(OSError, match="disk full"):
        _fill(target, "new")
    assert (target / "a.txt").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_atomic_dir_puts_the_old_folder_back_after_a_crash_between_the_renames(tmp_path, monkeypatch):
    target = tmp_path / "ckpt"
    _fill(target, "old")
    with monkeypatch.context() as m:
        _failing_replace(m, {2, 3})  # the swap fails and so does putting the old folder back: as if killed there
        with pytest.raises(OSError):
            _fill(target, "new")
    assert not target.exists() and (tmp_path / ".ckpt.old.tmp" / "a.txt").read_text() == "old"
    with pytest.raises(ZeroDivisionError):  # the next write, even a failing one, restores the old folder first
        with atomic_dir(target):
            1 / 0
    assert (target / "a.txt").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    _fill(target, "new")
    assert (target / "a.txt").read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    (tmp_path / ".ckpt.old.tmp").mkdir()  # killed after the swap, before the clean-up: a stale old folder
    _fill(target, "newer")
    assert (target / "a.txt").read_text() == "newer" and [p.name for p in tmp_path.iterdir()] == ["ckpt"]
