"""The batch runner: parameter checks up front, failures marked, nothing half-written in reports/."""
import json
import subprocess
import sys

import nbformat
import pytest

from lib.run import main, parse_value

NOTEBOOK = [
    ("profile = None", ["parameters"]),
    ("from lib.reporting import record\n"
     "record({'notebook': NAME, 'profile': profile, 'seed': 0}, {'answer': 42}, key=('answer',))", []),
    ("from lib.data import load_conll2003\nif FAIL:\n    load_conll2003('train')", []),
]


def _notebook(folder, name, fail):
    nb = nbformat.v4.new_notebook()
    for src, tags in NOTEBOOK:
        src = src.replace("NAME", repr(name)).replace("FAIL", str(fail))
        nb.cells.append(nbformat.v4.new_code_cell(src, metadata={"tags": tags}))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, folder / f"{name}.ipynb")


@pytest.mark.parametrize("pair, needle", [
    ("profile=huge", "profile='huge': expected one of smoke, cpu, gpu"),
    ("bpe_vocab_size=-1", "bpe_vocab_size=-1: expected a value > 0"),
    ("bpe_vocab_size", "expected key=value"),
    ("max_stpes=3", "max_stpes: unknown parameter"),
])
def test_bad_parameters_fail_with_one_line(tmp_path, capsys, pair, needle):
    _notebook(tmp_path, "01_tokenization", fail=False)  # validation happens before anything runs
    assert main(["--profile", "smoke", "--only", "01", "--notebooks", str(tmp_path), "-p", pair]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1


def test_bad_profile_from_the_shell_is_one_line():
    out = subprocess.run([sys.executable, "-m", "lib.run", "--profile", "smoke", "-p", "profile=huge"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stderr.strip().splitlines() == \
        ["error: profile='huge': expected one of smoke, cpu, gpu"]


def test_parse_value():
    assert [parse_value(v) for v in ("3", "0.5", "true", "[1, 2]", "null", "gpt2")] == [
        3, 0.5, True, [1, 2], None, "gpt2"]


def test_runner_keeps_going_marks_failures_and_writes_whole_files(tmp_path, monkeypatch):
    nbs, reports, data = tmp_path / "nbs", tmp_path / "reports", tmp_path / "data"
    nbs.mkdir()
    (data / "conll2003").mkdir(parents=True)
    (data / "conll2003" / "train.txt").write_text("EU NNP B-NP B-ORG\nrejects VBZ B-VP B-VERB\n")
    monkeypatch.setenv("WORKBOOK_REPORTS", str(reports))
    monkeypatch.setenv("WORKBOOK_DATA", str(data))
    _notebook(nbs, "01_bad", fail=True)
    _notebook(nbs, "02_good", fail=False)
    assert main(["--profile", "smoke", "--notebooks", str(nbs)]) == 1
    summary = (reports / "smoke" / "summary.md").read_text()
    assert "| 01_bad | failed: DataFormatError:" in summary and "train.txt:2: unknown NER tag 'B-VERB'" in summary
    assert "| 02_good | ok |" in summary and "answer = 42" in summary
    ledger = json.loads((reports / "smoke" / "metrics.json").read_text())
    assert ledger["02_good"]["metrics"]["answer"] == 42
    for name in ("01_bad", "02_good"):
        nbformat.read(reports / "smoke" / f"{name}.ipynb", as_version=4)  # whole, valid notebooks
    assert not [p for p in reports.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".")]
    assert ledger["01_bad"]["run"]["status"].startswith("failed") and ledger["02_good"]["run"]["status"] == "ok"
    assert main(["--profile", "smoke", "--notebooks", str(nbs), "--only", "02"]) == 0  # --only keeps other rows
    summary = (reports / "smoke" / "summary.md").read_text()
    assert "| 01_bad | failed" in summary and "| 02_good | ok |" in summary


def test_summary_puts_each_kind_of_number_in_its_own_column(tmp_path, monkeypatch):
    from lib.reporting import record
    from lib.run import note_run, summary_markdown

    monkeypatch.setenv("WORKBOOK_REPORTS", str(tmp_path))
    cfg = {"notebook": "07_ner", "profile": "smoke", "seed": 0}
    record(cfg, {"entity_f1": 0.43, "entity_f1_ci95": [0.41, 0.45], "token_acc": 0.886}, key=("entity_f1", "token_acc"),
           references={"entity_f1": (0.924, "BERT-base, Devlin et al. 2019")},
           targets={"best_f1": (0.9, "gpu profile, gpt2")}, claims={"token_acc": (0.973, "the seed article, §5.4")},
           baselines={"token_acc": (0.825, "the all-O tagger")})
    note_run("smoke", "07_ner", "ok", 1.0)
    record({"notebook": "01_tok", "profile": "smoke", "seed": 0}, {"v": 1}, key=("v",))
    note_run("smoke", "01_tok", "ok", 1.0)
    lines = summary_markdown("smoke").splitlines()
    assert "| 07_ner | ok | 1.0 s | entity_f1 = 0.43 [0.41, 0.45]<br>token_acc = 0.886 |" in lines
    head = "| notebook | number | measured | chance / theory | published by others | claimed, unverified | target |"
    rows = lines[lines.index(head) + 2:]
    assert rows[:3] == [
        "| 07_ner | entity_f1 | 0.43 [0.41, 0.45] | – | 0.924 (BERT-base, Devlin et al. 2019) | – | – |",
        "| 07_ner | token_acc | 0.886 | 0.825 (the all-O tagger) | – | 0.973 (the seed article, §5.4) | – |",
        "| 07_ner | best_f1 | – | – | – | – | 0.9 (gpu profile, gpt2) |"]
    assert not any(r.startswith("| 01_tok") for r in rows)  # no other kind of number: no row
    record({"notebook": "03_pre", "profile": "smoke", "seed": 0}, {"loss": 8.4}, baselines={"loss": (8.3, "ln|V|")})
    note_run("smoke", "03_pre", "ok", 1.0)
    assert "| 03_pre | loss | 8.4 | 8.3 (ln\\|V\\|) | – | – | – |" in summary_markdown("smoke").splitlines()


def test_summary_without_other_kinds_of_number_has_no_second_table(tmp_path, monkeypatch):
    from lib.reporting import record
    from lib.run import note_run, summary_markdown

    monkeypatch.setenv("WORKBOOK_REPORTS", str(tmp_path))
    record({"notebook": "01_tok", "profile": "smoke", "seed": 0}, {"v": 1}, key=("v",))
    note_run("smoke", "01_tok", "ok", 1.0)
    assert "## Measured numbers beside" not in summary_markdown("smoke")


def test_publish_copies_only_after_every_notebook_ran(tmp_path, monkeypatch):
    """A notebook copied into notebooks/ mid-run would make the next notebook's fingerprint '+dirty'."""
    import lib.run as run

    for name in ("01_a", "02_b"):
        _notebook(tmp_path, name, fail=False)
    monkeypatch.setenv("WORKBOOK_REPORTS", str(tmp_path / "reports"))
    seen, published = [], []
    monkeypatch.setattr(run, "execute",
                        lambda nb, out, params: (seen.append((nb.stem, list(published))), ("ok", 0.1, {}))[1])
    monkeypatch.setattr(run, "publish", lambda executed, target: published.append(target.stem))
    assert main(["--profile", "smoke", "--notebooks", str(tmp_path), "--publish"]) == 0
    assert seen == [("01_a", []), ("02_b", [])] and published == ["01_a", "02_b"]


def _fake_execute(calls):
    """An execute() that records the call and leaves an executed notebook and one ledger entry, as the real one does."""
    def execute(nb, out_dir, params):
        calls.append(nb.stem)
        (out_dir / nb.name).write_text("{}")
        return "ok", 1.0, {nb.stem: {"metrics": {"n": len(calls)}, "key": ["n"]}}
    return execute


def test_resume_skips_what_ran_ok_at_this_commit_with_these_parameters(tmp_path, monkeypatch, capsys):
    import lib.run as run

    for name in ("01_a", "02_b"):
        _notebook(tmp_path, name, fail=False)
    monkeypatch.setenv("WORKBOOK_REPORTS", str(tmp_path / "reports"))
    calls, commit = [], ["abc123"]
    monkeypatch.setattr(run, "execute", _fake_execute(calls))
    monkeypatch.setattr(run, "git_commit", lambda: commit[0])
    args = ["--profile", "smoke", "--notebooks", str(tmp_path)]
    assert main(args + ["--resume"]) == 0 and calls == ["01_a", "02_b"]
    assert main(args + ["--resume"]) == 0 and calls == ["01_a", "02_b"]  # nothing left to do
    assert "01_a: up to date" in capsys.readouterr().out
    assert main(args + ["--resume", "-p", "seed=3"]) == 0 and calls[2:] == ["01_a", "02_b"]  # other parameters
    assert main(args + ["--resume", "-p", "seed=3"]) == 0 and len(calls) == 4
    ledger = json.loads((tmp_path / "reports" / "smoke" / "metrics.json").read_text())
    ledger["02_b"]["run"]["status"] = "failed: KeyboardInterrupt: "
    (tmp_path / "reports" / "smoke" / "metrics.json").write_text(json.dumps(ledger))
    assert main(args + ["--resume", "-p", "seed=3"]) == 0 and calls[4:] == ["02_b"]  # a failed run is redone
    commit[0] = "abc123+dirty"
    assert main(args + ["--resume"]) == 0 and calls[5:] == ["01_a", "02_b"]  # uncommitted changes: everything
    commit[0] = "def456"
    assert main(args) == 0 and calls[7:] == ["01_a", "02_b"]  # without --resume: everything
    assert "01_a: ~1 s (its last run here)" in capsys.readouterr().out


def test_a_missing_model_runs_the_notebook_that_makes_it_first(tmp_path, monkeypatch, capsys):
    import lib.run as run

    for name in ("01_tokenization", "03_pretraining", "05_zero_shot_prompting"):
        _notebook(tmp_path, name, fail=False)
    monkeypatch.setenv("WORKBOOK_REPORTS", str(tmp_path / "reports"))
    monkeypatch.setenv("WORKBOOK_MODELS", str(tmp_path / "models"))
    calls = []
    monkeypatch.setattr(run, "execute", _fake_execute(calls))
    args = ["--profile", "smoke", "--notebooks", str(tmp_path), "--only", "05"]
    assert main(args) == 0 and calls == ["01_tokenization", "03_pretraining", "05_zero_shot_prompting"]
    out = capsys.readouterr().out
    assert "03_pretraining runs first: 05_zero_shot_prompting needs" in out and "01_tokenization runs first" in out
    (tmp_path / "models" / "mini-gpt").mkdir(parents=True)
    assert main(args) == 0 and calls[3:] == ["05_zero_shot_prompting"]  # the model is there: 05 alone
    (tmp_path / "models" / "mini-gpt").rmdir()
    assert main(args + ["-p", "compare_models=[smollm2-135m-instruct]"]) == 0  # no mini-gpt in this run: 05 alone
    assert calls[4:] == ["05_zero_shot_prompting"]
    (tmp_path / "03_pretraining.ipynb").unlink()
    assert main(args) == 2 and "needs" in capsys.readouterr().err and calls[5:] == []  # nothing can make it: refused


SLOW = [("profile = None", ["parameters"]),
        ("import os, time\nfrom lib.reporting import record\n"
         "record({'notebook': '01_slow', 'profile': profile, 'seed': 0},\n"
         "       {'answer': 41 + bool(os.environ.get('SLOW'))})",
         []),
        ("if os.environ.get('SLOW'):\n    open(os.environ['MARKER'], 'w').write(str(os.getpid()))\n    time.sleep(300)",
         [])]


def test_a_run_killed_midway_leaves_ledger_summary_and_reports_as_they_were(tmp_path):
    import os
    import signal
    import time

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src, metadata={"tags": tags}) for src, tags in SLOW]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "01_slow.ipynb")
    env = {**os.environ, "WORKBOOK_REPORTS": str(tmp_path / "reports"), "MARKER": str(tmp_path / "marker")}
    cmd = [sys.executable, "-m", "lib.run", "--profile", "smoke", "--notebooks", str(tmp_path)]
    assert subprocess.run(cmd, env=env, capture_output=True, timeout=300).returncode == 0
    out = tmp_path / "reports" / "smoke"
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert json.loads(before["metrics.json"])["01_slow"]["metrics"]["answer"] == 41
    proc = subprocess.Popen(cmd, env={**env, "SLOW": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 240
    while not (tmp_path / "marker").is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    kernel = int((tmp_path / "marker").read_text())  # the notebook has recorded 42 by now, into the staging file
    os.killpg(proc.pid, signal.SIGKILL)
    os.kill(kernel, signal.SIGKILL)
    proc.wait(timeout=60)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
