"""Run ledger (reports/<profile>/metrics.json), figures in one style, and atomic file writes."""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from lib.data import REPO_ROOT

STYLE = Path(__file__).with_name("workbook.mplstyle")
PACKAGES = ("torch", "transformers", "tokenizers", "datasets", "accelerate", "peft", "numpy")


def reports_root() -> Path:
    """$WORKBOOK_REPORTS, else the repo's reports/."""
    return Path(os.environ.get("WORKBOOK_REPORTS", REPO_ROOT / "reports")).resolve()


def report_dir(profile: str) -> Path:
    """reports/<profile>/, created on demand."""
    path = reports_root() / profile
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write a file whole or not at all: a temp file in the same folder, then an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Fill a temp folder beside `path`; on success it replaces `path` whole; on any failure the old one survives."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.parent / f".{path.name}.old.tmp"
    if old.exists():  # a crash between the two renames below left the old folder aside
        if path.exists():
            shutil.rmtree(old)  # the new folder made it: the old one is stale
        else:
            os.replace(old, path)  # the new one did not: put the old one back
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        for f in tmp.rglob("*"):  # on disk before the rename makes it visible
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        if path.exists():  # a non-empty folder cannot be replaced in one step: move it aside first
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except BaseException:
            if old.exists():
                os.replace(old, path)  # if this fails too, the next atomic_dir(path) puts it back
            raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path: Path, text: str) -> Path:
    """Text version of atomic_write_bytes (UTF-8)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> Path:
    """JSON version of atomic_write_bytes (indented, UTF-8, keys in insertion order)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def git_commit() -> str:
    """The repo's HEAD commit, with '+dirty' when tracked files outside reports/ changed; 'unknown' outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!reports"],
                               cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = "not installed"
    return out


def fingerprint(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """What makes a number reproducible: commit, versions, device, seed, profile and every parameter."""
    return {"git_commit": git_commit(), "packages": _versions(), "device": cfg.get("device"),
            "seed": cfg.get("seed"), "profile": cfg.get("profile"), "parameters": dict(cfg),
            "platform": platform.platform(), "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def load_ledger(profile: str) -> dict[str, Any]:
    """The ledger of a profile ({} when there is none yet)."""
    path = reports_root() / profile / "metrics.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


# While the runner executes a notebook, record() writes to this file instead of metrics.json; the runner merges it
# into the ledger once the notebook has ended, so a run killed midway leaves the ledger as it was.
STAGED_LEDGER = "WORKBOOK_STAGED_LEDGER"


def _plain(v: Any) -> Any:
    """NumPy/torch scalars (also inside lists and tuples) to plain Python numbers, so that the ledger is plain JSON."""
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if hasattr(v, "item") and getattr(v, "ndim", 0) == 0:
        v = v.item()
    return v


# The kinds of number a ledger entry keeps apart from what the run measured ("metrics"), each as
# {metric name: {"value": v, "source": s}}; the summary shows one column per kind, named here.
KINDS = {"baselines": "chance / theory", "references": "published by others", "claims": "claimed, unverified",
         "targets": "target"}
Noted = Mapping[str, tuple[float, str]]


def with_ci95(name: str, value: float, low: float, high: float) -> dict[str, Any]:
    """{name: value, name_ci95: [low, high]}: a measurement and its 95% interval as `record` reads them."""
    return {name: value, f"{name}_ci95": [low, high]}


def _check_intervals(metrics: Mapping[str, Any], names: Iterable[str]) -> None:
    """Each `<name>_ci95` in names must be [low, high] with low <= high (NaN allowed), beside a measured `<name>`."""
    for name in names:
        ci, base = metrics[name], name[: -len("_ci95")]
        if base not in metrics:
            raise ValueError(f"metric {name!r}: no measured {base!r} beside it (use with_ci95({base!r}, ...))")
        if not (isinstance(ci, list) and len(ci) == 2 and not ci[0] > ci[1]):
            raise ValueError(f"metric {name!r}: expected [low, high] with low <= high, got {ci!r}")


def record(cfg: Mapping[str, Any], metrics: Mapping[str, float], key: tuple[str, ...] = (),
           references: Noted | None = None, targets: Noted | None = None, claims: Noted | None = None,
           baselines: Noted | None = None) -> dict[str, Any]:
    """Add metrics of cfg['notebook'] to reports/<profile>/metrics.json, or to the runner's staging file
    (merged, atomic).

    `metrics` are what this run measured; `key` names those the summary shows (a metric `<name>_ci95` = [low, high]
    is shown as the interval of `<name>`, which must be measured too: `with_ci95` writes the pair). Numbers of other
    kinds map a metric name to (value, source) and are kept apart: `references` published by others (source: the
    citation), `claims` reported by a source we could not check, such as the seed article (source: who claims it,
    where), `baselines` what chance or theory gives (source: the derivation), `targets` what the workbook aims at
    (source: why, and for which profile or model).
    """
    nb, profile = cfg["notebook"], cfg["profile"]
    noted = {"references": references, "targets": targets, "claims": claims, "baselines": baselines}
    for kind, values in noted.items():
        for name, pair in (values or {}).items():
            if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[1], str) and pair[1].strip()):
                raise ValueError(f"{kind}[{name!r}]: expected (value, source) with a non-empty source, got {pair!r}")
    staged = os.environ.get(STAGED_LEDGER)
    path = Path(staged) if staged else report_dir(profile) / "metrics.json"
    ledger = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    entry = ledger.get(nb, {"metrics": {}, "key": []})
    entry["metrics"].update({k: _plain(v) for k, v in metrics.items()})
    _check_intervals(entry["metrics"], (k for k in metrics if k.endswith("_ci95")))
    entry["key"] = list(dict.fromkeys([*entry["key"], *key]))
    for kind, values in noted.items():
        entry.setdefault(kind, {}).update({k: {"value": _plain(v), "source": src}
                                           for k, (v, src) in (values or {}).items()})
    entry["fingerprint"] = fingerprint(cfg)
    ledger[nb] = entry
    atomic_write_json(path, ledger)
    return entry


def use_style() -> None:
    """Apply the workbook's one matplotlib style."""
    import matplotlib.pyplot as plt

    plt.style.use(str(STYLE))


def save_figure(fig, cfg: Mapping[str, Any], name: str) -> Path:
    """Save a figure as reports/<profile>/figures/<notebook>_<name>.png, atomically."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(report_dir(cfg["profile"]) / "figures" / f"{cfg['notebook']}_{name}.png", buf.getvalue())
