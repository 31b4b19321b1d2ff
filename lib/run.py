"""Batch runner: execute the notebooks in order with papermill into reports/<profile>/ and write summary.md.

    python -m lib.run --profile smoke|cpu|gpu [--only 01 02] [-p key=value ...] [--resume] [--publish]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from lib.config import PROFILE_NAMES, PROFILES, ParameterError, notebook_knobs, resolve, validate
from lib.data import REPO_ROOT
from lib.models import MINI_GPT, models_root
from lib.reporting import (KINDS, STAGED_LEDGER, atomic_write_bytes, atomic_write_json, atomic_write_text, git_commit,
                           load_ledger, report_dir)
from lib.requires import model_folders

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
# The model folders a notebook leaves in models/<profile>/ for the later ones.
MAKES = {"01_tokenization": ("bpe-tinystories",), "03_pretraining": (MINI_GPT,), "04_fine_tuning": ("mini-gpt-chat",)}


def parse_value(text: str) -> Any:
    """'3' -> 3, '0.5' -> 0.5, 'true' -> True, '[1, 2]' -> [1, 2], 'null' -> None, else the string."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_params(pairs: list[str], profile: str, notebooks: list[Path]) -> dict[str, Any]:
    """Validate `-p key=value` pairs before anything runs; raise ParameterError with one line."""
    used = set().union(*(notebook_knobs(nb.stem) for nb in notebooks)) if notebooks else set()
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ParameterError(f"-p {pair!r}: expected key=value")
        value = validate(key, parse_value(raw))
        if key == "profile" and value != profile:
            raise ParameterError(f"profile={value!r}: conflicts with --profile {profile}; pass the profile once")
        if key not in used:
            raise ParameterError(f"{key}: not a parameter of the selected notebooks; they take "
                                 f"{', '.join(sorted(used))}")
        params[key] = value
    return params


def select(only: list[str] | None, folder: Path) -> list[Path]:
    """The notebooks NN_*.ipynb in order, restricted to the NN prefixes in `only`."""
    notebooks = sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))
    if only:
        unknown = [o for o in only if not any(p.name.startswith(o) for p in notebooks)]
        if unknown:
            raise ParameterError(f"--only {' '.join(unknown)}: no such notebook; expected prefixes of "
                                 f"{', '.join(p.stem for p in notebooks)}")
        notebooks = [p for p in notebooks if any(p.name.startswith(o) for o in only)]
    return notebooks


def needs(notebook: str, profile: str, params: dict[str, Any]) -> set[str]:
    """The model folders of models/<profile>/ that `notebook` loads with these parameters (made by MAKES)."""
    if not any(notebook in p for p in PROFILES.values()):
        return set()
    cfg = resolve(notebook, {**{k: v for k, v in params.items() if k in notebook_knobs(notebook)}, "profile": profile})
    return model_folders(notebook, cfg)


def with_prerequisites(selected: list[Path], folder: Path, profile: str,
                       params: dict[str, Any]) -> tuple[list[Path], list[str]]:
    """`selected` plus the notebooks that make a model folder one of them needs and that is missing, in order, and a
    line for each added; raise ParameterError when no notebook can make a missing folder."""
    makers = {m: nb for nb in select(None, folder) for m in MAKES.get(nb.stem, ())}
    plan, notes, root = list(selected), [], models_root(profile)
    for nb in plan:  # grows while it is walked: a notebook added here may need another one
        for model in sorted(needs(nb.stem, profile, params)):
            if (root / model).is_dir() or any(model in MAKES.get(p.stem, ()) for p in plan):
                continue
            if model not in makers:
                raise ParameterError(f"{nb.stem} needs {root / model}, which is missing and no notebook makes")
            plan.append(makers[model])
            notes.append(f"{makers[model].stem} runs first: {nb.stem} needs {root / model}, which it makes")
    return sorted(set(plan)), notes


def up_to_date(ledger: dict[str, Any], out_dir: Path, notebook: str, parameters: dict[str, Any], commit: str) -> bool:
    """True when the ledger says the notebook's last run succeeded at this (clean) commit with these parameters."""
    run = ledger.get(notebook, {}).get("run", {})
    return (run.get("status") == "ok" and run.get("commit") == commit and "+dirty" not in commit
            and commit != "unknown" and run.get("parameters") == parameters
            and (out_dir / f"{notebook}.ipynb").is_file())


def execute(nb: Path, out_dir: Path, parameters: dict[str, Any]) -> tuple[str, float, dict[str, Any]]:
    """Run one notebook with papermill; the executed copy lands whole in out_dir.

    Returns (status, seconds, the ledger entries it recorded): the notebook records into a staging file, merged into
    the ledger only afterwards, so that a run killed midway leaves metrics.json as it was.
    """
    import papermill as pm

    start = time.perf_counter()
    status = "ok"
    with tempfile.TemporaryDirectory() as tmp:  # papermill writes as it goes: keep that out of reports/
        tmp_out, staged = Path(tmp) / nb.name, Path(tmp) / "ledger.json"
        os.environ[STAGED_LEDGER] = str(staged)
        try:
            pm.execute_notebook(str(nb), str(tmp_out), parameters=parameters, cwd=str(nb.parent),
                                kernel_name="python3", progress_bar=True, log_output=False)
        except pm.PapermillExecutionError as e:
            status = f"failed: {e.ename}: {str(e.evalue).splitlines()[0] if e.evalue else ''}"
        except Exception as e:  # kernel died, bad notebook JSON, ...
            status = f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        finally:
            del os.environ[STAGED_LEDGER]
        if tmp_out.is_file():
            atomic_write_bytes(out_dir / nb.name, tmp_out.read_bytes())
        entries = json.loads(staged.read_text(encoding="utf-8")) if staged.is_file() else {}
    return status, time.perf_counter() - start, entries


def publish(executed: Path, target: Path) -> None:
    """Copy an executed notebook over its source, minus papermill's injected-parameters cell."""
    import nbformat

    nb = nbformat.read(executed, as_version=4)
    nb.cells = [c for c in nb.cells if "injected-parameters" not in c.get("metadata", {}).get("tags", [])]
    atomic_write_text(target, nbformat.writes(nb) + "\n")


def _fmt(v: Any) -> str:
    if isinstance(v, float) and not v.is_integer():
        return f"{v:.4g}"
    return f"{int(v):,}" if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def note_run(profile: str, notebook: str, status: str, seconds: float, entries: dict[str, Any] | None = None,
             **run: Any) -> None:
    """Write a notebook's run into the ledger in one go: the entries it recorded (replacing the old ones; without
    `entries`, the metrics already there stay), its status and wall time, and `run` (commit, parameters)."""
    ledger = load_ledger(profile)
    if entries is not None:
        ledger.pop(notebook, None)
        ledger.update(entries)
    ledger.setdefault(notebook, {"metrics": {}, "key": []})["run"] = \
        {"status": status, "seconds": round(seconds, 1), **run}
    atomic_write_json(report_dir(profile) / "metrics.json", ledger)


def _minutes(seconds: float | None) -> str:
    return "time unknown" if seconds is None else f"~{seconds / 60:.0f} min" if seconds >= 90 else f"~{seconds:.0f} s"


def _measured(metrics: dict[str, Any], name: str) -> str:
    """A measured value, with its 95% interval when the ledger has `<name>_ci95` = [low, high]."""
    ci = metrics.get(f"{name}_ci95")
    shown = _fmt(metrics[name])
    return shown + (f" [{_fmt(ci[0])}, {_fmt(ci[1])}]" if isinstance(ci, list) and len(ci) == 2 else "")


def _cell(text: str) -> str:
    """Text that cannot break a markdown table row: '|' escaped, line breaks as spaces."""
    return text.replace("|", "\\|").replace("\n", " ")


def summary_markdown(profile: str) -> str:
    """The summary of every notebook in the ledger: status, wall time and key measured metrics; then each number that
    has a value of another kind (chance / theory, published by others, claimed, target) beside the measured one."""
    ledger = load_ledger(profile)
    lines = [f"# Workbook run: profile `{profile}`", "",
             "| notebook | status | wall time | key metrics (measured in this run) |", "|---|---|---|---|"]
    ran = sorted(n for n, e in ledger.items() if "run" in e)
    for name in ran:
        entry = ledger[name]
        metrics = entry.get("metrics", {})
        shown = "<br>".join(f"{k} = {_measured(metrics, k)}" for k in entry.get("key", []) if k in metrics) or "–"
        status = _cell(entry["run"]["status"])
        lines.append(f"| {name} | {status} | {entry['run']['seconds']:.1f} s | {shown} |")
    kinds = [k for k in KINDS if any(ledger[n].get(k) for n in ran)]
    if kinds:
        lines += ["", "## Measured numbers beside other kinds of number", "",
                  "Each kind has its own column and none stands in for another: *measured* in this run (with its "
                  "95% interval where recorded), " + ", ".join(f"*{KINDS[k]}*" for k in kinds) + ".", "",
                  "| notebook | number | measured | " + " | ".join(KINDS[k] for k in kinds) + " |",
                  "|---|---|---|" + "---|" * len(kinds)]
        for name in ran:
            entry, metrics = ledger[name], ledger[name].get("metrics", {})
            noted = [n for k in kinds for n in entry.get(k, {})]
            for n in dict.fromkeys([*(k for k in entry.get("key", []) if k in noted), *noted]):
                cells = [_cell(f"{_fmt(r['value'])} ({r['source']})") if (r := entry.get(k, {}).get(n)) else "–"
                         for k in kinds]
                lines.append(f"| {name} | {n} | {_measured(metrics, n) if n in metrics else '–'} | "
                             + " | ".join(cells) + " |")
    by_commit: dict[str, list[str]] = {}
    for name, e in sorted(ledger.items()):
        if "fingerprint" in e:
            by_commit.setdefault(e["fingerprint"]["git_commit"], []).append(name[:2])
    if by_commit:
        fp = next(e["fingerprint"] for e in ledger.values() if "fingerprint" in e)
        commits = "; ".join(f"`{c}` ({', '.join(nbs)})" for c, nbs in by_commit.items())
        lines += ["", f"Commits: {commits}. Device `{fp.get('device')}`, torch {fp['packages'].get('torch')}, "
                      f"transformers {fp['packages'].get('transformers')}. Full numbers and fingerprints: "
                      "`metrics.json`."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the selected notebooks; exit 1 if any failed, 2 on bad arguments."""
    ap = argparse.ArgumentParser(prog="python -m lib.run", description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=os.environ.get("WORKBOOK_PROFILE", "cpu"))
    ap.add_argument("--only", nargs="+", metavar="NN", help="notebook number prefixes, e.g. 01 02")
    ap.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                    help="override a notebook parameter (validated first)")
    ap.add_argument("--publish", action="store_true",
                    help="copy each notebook that ran ok, with its outputs, back into notebooks/")
    ap.add_argument("--resume", action="store_true",
                    help="skip each notebook whose last run here succeeded at this commit with these parameters")
    ap.add_argument("--notebooks", type=Path, default=NOTEBOOKS_DIR, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    try:
        if args.profile not in PROFILE_NAMES:
            raise ParameterError(f"--profile {args.profile!r}: expected one of {', '.join(PROFILE_NAMES)}")
        notebooks = select(args.only, args.notebooks)
        params = parse_params(args.param, args.profile, notebooks)
        notebooks, notes = with_prerequisites(notebooks, args.notebooks, args.profile, params)
    except ParameterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line in notes:
        print(line)
    if os.environ.get("WORKBOOK_DATA"):  # the kernels run in notebooks/: make the data root absolute
        os.environ["WORKBOOK_DATA"] = str(Path(os.environ["WORKBOOK_DATA"]).expanduser().resolve())
    os.environ["WORKBOOK_PROFILE"] = args.profile
    out_dir, commit, ledger = report_dir(args.profile), git_commit(), load_ledger(args.profile)
    overrides = {nb.stem: {"profile": args.profile, **{k: v for k, v in params.items() if k in notebook_knobs(nb.stem)}}
                 for nb in notebooks}
    if args.resume:
        done = [nb for nb in notebooks if up_to_date(ledger, out_dir, nb.stem, overrides[nb.stem], commit)]
        for nb in done:
            print(f"{nb.stem}: up to date (ok at {commit[:12]}, same parameters), skipped")
        notebooks = [nb for nb in notebooks if nb not in done]
    expected = {nb.stem: ledger.get(nb.stem, {}).get("run", {}).get("seconds") for nb in notebooks}
    for nb in notebooks:
        print(f"  {nb.stem}: {_minutes(expected[nb.stem])} (its last run here)", flush=True)
    rows: list[tuple[str, str, float]] = []
    for i, nb in enumerate(notebooks, start=1):
        print(f"[{i}/{len(notebooks)}] {nb.stem} ({args.profile})", flush=True)
        status, secs, entries = execute(nb, out_dir, overrides[nb.stem])
        rows.append((nb.stem, status, secs))
        note_run(args.profile, nb.stem, status, secs, entries, commit=commit, parameters=overrides[nb.stem])
        left = [expected[n.stem] for n in notebooks[i:]]
        eta = (f"; the rest {_minutes(sum(left))}, done about "
               f"{(datetime.now() + timedelta(seconds=sum(left))):%H:%M}" if left and None not in left else "")
        print(f"[{i}/{len(notebooks)}] {nb.stem}: {status} in {secs:.1f} s{eta}", flush=True)
        atomic_write_text(out_dir / "summary.md", summary_markdown(args.profile))
    if args.publish:  # only now: a notebook copied in earlier would make the next one's fingerprint '+dirty'
        for nb in notebooks:
            if any(r[0] == nb.stem and r[1] == "ok" for r in rows):
                publish(out_dir / nb.name, nb)
    failed = [r for r in rows if r[1] != "ok"]
    print(f"{len(rows) - len(failed)} passed, {len(failed)} failed; summary: {out_dir / 'summary.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
