"""The run ledger, its fingerprint, and whole-or-nothing writes."""
import json
import os

import numpy as np
import pytest

from lib.reporting import atomic_dir, atomic_write_text, load_ledger, record, with_ci95


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


def test_a_value_with_its_interval_is_recorded_and_summarised(reports):
    from lib.run import summary_markdown

    pair = with_ci95("gain", 0.25, np.float64(0.125), 0.375)
    assert pair == {"gain": 0.25, "gain_ci95": [0.125, 0.375]}
    cfg = {"notebook": "01_x", "profile": "smoke", "seed": 0, "device": "cpu"}
    record(cfg, pair, key=("gain",))
    assert load_ledger("smoke")["01_x"]["metrics"]["gain_ci95"] == [0.125, 0.375]
    ledger = load_ledger("smoke")
    ledger["01_x"]["run"] = {"status": "ok", "seconds": 1.0}
    (reports / "smoke" / "metrics.json").write_text(json.dumps(ledger))
    assert "gain = 0.25 [0.125, 0.375]" in summary_markdown("smoke")  # the summary's cell


@pytest.mark.parametrize("metrics, message", [
    ({"gain_ci95": [0.1, 0.3]}, "no measured 'gain' beside it"),          # an orphan interval (notebook 11 had two)
    ({"gain": 0.2, "gain_ci95": [0.3, 0.1]}, "expected [low, high] with low <= high"),
    ({"gain": 0.2, "gain_ci95": 0.3}, "expected [low, high]")])
def test_record_refuses_an_interval_without_its_value_or_out_of_order(reports, metrics, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        record({"notebook": "01_x", "profile": "smoke", "seed": 0, "device": "cpu"}, metrics)
    assert not (reports / "smoke" / "metrics.json").exists()  # nothing written


def test_record_accepts_an_interval_for_a_value_recorded_earlier(reports):
    cfg = {"notebook": "01_x", "profile": "smoke", "seed": 0, "device": "cpu"}
    record(cfg, {"gain": 0.2})
    record(cfg, {"gain_ci95": [0.1, float("nan")]})  # NaN: an interval that could not be computed
    assert load_ledger("smoke")["01_x"]["metrics"]["gain_ci95"][0] == 0.1


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


def test_record_keeps_the_kinds_of_number_apart(reports):
    cfg = {"notebook": "07_x", "profile": "smoke", "seed": 0}
    record(cfg, {"f1": np.float64(0.43), "f1_ci95": (np.float64(0.41), 0.45)}, key=("f1",),
           references={"f1": (0.924, "Devlin et al. 2019")}, targets={"f1": (0.9, "gpu profile, gpt2")},
           claims={"acc": (0.973, "the seed article, §5.4")}, baselines={"acc": (0.825, "all-O tagger")})
    entry = load_ledger("smoke")["07_x"]
    assert entry["metrics"] == {"f1": 0.43, "f1_ci95": [0.41, 0.45]}
    assert entry["references"] == {"f1": {"value": 0.924, "source": "Devlin et al. 2019"}}
    assert entry["targets"] == {"f1": {"value": 0.9, "source": "gpu profile, gpt2"}}
    assert entry["claims"] == {"acc": {"value": 0.973, "source": "the seed article, §5.4"}}
    assert entry["baselines"] == {"acc": {"value": 0.825, "source": "all-O tagger"}}
    record(cfg, {"g": 1}, references={"g": (2, "paper")})  # merged, the other kinds untouched
    entry = load_ledger("smoke")["07_x"]
    assert set(entry["references"]) == {"f1", "g"} and set(entry["targets"]) == {"f1"}


@pytest.mark.parametrize("bad", [{"f1": 0.9}, {"f1": (0.9, "")}, {"f1": (0.9, "a", "b")}])
def test_record_wants_a_source_for_every_number_of_another_kind(reports, bad):
    with pytest.raises(ValueError, match=r"targets\['f1'\]: expected \(value, source\)"):
        record({"notebook": "07_x", "profile": "smoke"}, {"f1": 0.4}, targets=bad)
    assert load_ledger("smoke") == {}
