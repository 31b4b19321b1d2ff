"""Financial news monitoring (金融舆情监测): a stream of windows, injected surges, a CUSUM alarm, how to score it.

- A stream is a list of windows (an hour of news each); a window lists the items that arrived in it, as indices into
  a pool whose topic and sentiment some classifier has predicted.
- `plan_surges` and `make_stream` build a simulated stream with known ground truth: background items drawn from a
  pool, and in the surge windows extra negative items of one topic (a documented start and end).
- `cusum` is the alarm: the negative share (or count) of a topic per window, standardised against a warm-up stretch,
  summed one-sidedly (Page 1954); an alert when the sum crosses h, then the sum starts again from zero.
- `score_alerts` says which surges were caught, after how many windows, and how many alerts fell in quiet windows.
- `python -m lib.monitor FILE.jsonl` runs the alarm over JSONL records `{"time", "text"}` (plus `"topic"` with
  `--lexicon`), classified by the model notebook 11 saved (or VADER), and prints the alerts.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from lib.data import DataFormatError


@dataclass(frozen=True)
class Surge:
    """Extra negative items of one topic in windows start .. end - 1."""

    topic: int
    start: int
    end: int


def plan_surges(n_windows: int, n_surges: int, length: int, warmup: int, gap: int, topic: int,
                seed: int) -> list[Surge]:
    """n_surges non-overlapping surges of `length` windows after the warm-up, at least `gap` quiet windows apart."""
    free = n_windows - warmup - n_surges * (length + gap)
    if n_surges < 0 or length < 1 or free < 0:
        raise ValueError(f"plan_surges: {n_surges} surges of {length} windows with gaps of {gap} do not fit in "
                         f"{n_windows} windows after a warm-up of {warmup}")
    rng = np.random.default_rng(seed)
    slack = np.sort(rng.integers(0, free + 1, n_surges))  # extra quiet windows before each surge, non-decreasing
    return [Surge(topic, s, s + length) for s in (warmup + gap + slack + np.arange(n_surges) * (length + gap))]


def make_stream(n_background: int, n_injected: int, n_windows: int, per_window: int, surges: Sequence[Surge],
                per_surge_window: int, seed: int) -> list[list[tuple[str, int]]]:
    """Windows of ("bg", i) background items drawn with replacement, plus ("inj", j) injected items in surge windows."""
    rng = np.random.default_rng(seed)
    windows = [[("bg", int(i)) for i in rng.integers(0, n_background, per_window)] for _ in range(n_windows)]
    for s in surges:
        for w in range(s.start, s.end):
            windows[w] += [("inj", int(j)) for j in rng.integers(0, n_injected, per_surge_window)]
    return windows


STATISTICS = ("share", "count")


def negative_series(windows: Sequence[Sequence[tuple[str, int]]], topic: dict[str, np.ndarray],
                    negative: dict[str, np.ndarray], which: int, kind: str = "share") -> np.ndarray:
    """The alarm's input, one value per window, over the items predicted as topic `which`: the share of them
    predicted negative (nan if none) with kind="share", or their number with kind="count"."""
    if kind not in STATISTICS:
        raise ValueError(f"kind={kind!r}: expected one of {', '.join(STATISTICS)}")
    out = np.full(len(windows), np.nan)
    for w, items in enumerate(windows):
        hits = [bool(negative[src][i]) for src, i in items if topic[src][i] == which]
        if kind == "count":
            out[w] = float(sum(hits))
        elif hits:
            out[w] = float(np.mean(hits))
    return out


def cusum(x: np.ndarray, warmup: int, k: float, h: float, min_sd: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """(alert per window, the CUSUM statistic) of the series x, standardised by its first `warmup` windows (their
    standard deviation, at least min_sd: a share never counts as steadier than that)."""
    base = x[:warmup][~np.isnan(x[:warmup])]
    if len(base) < 2:
        raise ValueError(f"cusum: the warm-up of {warmup} windows has {len(base)} values; expected at least 2")
    mu, sd = float(base.mean()), max(float(base.std(ddof=1)), min_sd)
    stat, alerts, s = np.zeros(len(x)), np.zeros(len(x), bool), 0.0
    for t in range(warmup, len(x)):
        z = 0.0 if math.isnan(x[t]) else (x[t] - mu) / sd
        s = max(0.0, s + z - k)
        stat[t] = s
        if s > h:
            alerts[t], s = True, 0.0
    return alerts, stat


def episodes(alerts: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) window of each run of consecutive alerts."""
    runs, start = [], None
    for t, a in enumerate([*alerts, False]):
        if a and start is None:
            start = t
        elif not a and start is not None:
            runs.append((start, t - 1))
            start = None
    return runs


def score_alerts(alerts: np.ndarray, surges: Sequence[Surge], warmup: int, grace: int) -> dict[str, Any]:
    """Caught surges (an alert in start .. end + grace - 1), delays in windows, alerts in quiet windows."""
    busy = np.zeros(len(alerts), bool)
    caught, delays = [], []
    for s in surges:
        busy[s.start:s.end + grace] = True
        hit = np.flatnonzero(alerts[s.start:s.end + grace])
        caught.append(len(hit) > 0)
        if len(hit):
            delays.append(int(hit[0]))
    quiet = ~busy
    quiet[:warmup] = False
    false_alarms, n_alerts = int(alerts[quiet].sum()), int(alerts[warmup:].sum())
    return {"surges": len(surges), "caught": int(sum(caught)), "delays": delays, "quiet_windows": int(quiet.sum()),
            "false_alarms": false_alarms, "alerts": n_alerts, "caught_each": caught}


def pool_scores(scores: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Pooled recall, precision, mean delay and false alarms per 100 quiet windows over several streams and topics."""
    surges, caught = sum(s["surges"] for s in scores), sum(s["caught"] for s in scores)
    alerts, false_alarms = sum(s["alerts"] for s in scores), sum(s["false_alarms"] for s in scores)
    quiet, delays = sum(s["quiet_windows"] for s in scores), [d for s in scores for d in s["delays"]]
    return {"recall": caught / surges if surges else float("nan"), "caught": caught, "surges": surges,
            "precision": (alerts - false_alarms) / alerts if alerts else float("nan"),
            "mean_delay": float(np.mean(delays)) if delays else float("nan"),
            "fa_per_100": 100 * false_alarms / quiet if quiet else float("nan"), "false_alarms": false_alarms,
            "quiet_windows": quiet, "alerts": alerts, "delays": delays}


def false_alarm_rate(units: np.ndarray) -> Callable[[np.ndarray], float]:
    """A resampling metric: idx -> false alarms per 100 quiet windows over the units idx of a (units, 2) array of
    [false alarms, quiet windows] (a stream's topic each), for lib.stats.paired_bootstrap."""
    units = np.asarray(units)
    return lambda idx: 100 * units[idx, 0].sum() / max(1, units[idx, 1].sum())


def pick_alarm(evaluate, ks: Sequence[float], hs: Sequence[float], max_fa: float,
               kinds: Sequence[str] = ("share",)) -> dict[str, Any]:
    """The (kind, k, h) with the highest recall among those with at most max_fa false alarms per 100 quiet windows
    (ties: shorter mean delay, then larger h); `evaluate(kind, k, h)` returns pool_scores' dict on validation."""
    rows = [{"kind": kind, "k": k, "h": h, **evaluate(kind, k, h)} for kind in kinds for k in ks for h in hs]
    ok = [r for r in rows if r["fa_per_100"] <= max_fa] or [min(rows, key=lambda r: (r["fa_per_100"], -r["h"]))]
    return max(ok, key=lambda r: (r["recall"], -np.nan_to_num(r["mean_delay"], nan=1e9), r["h"]))


# ---------------------------------------------------------------- the saved classifier

CLASSIFIER_DIR = "11_financial_monitoring"  # under lib.models.models_root()


@dataclass
class NewsClassifier:
    """Topic and sentiment heads over one model's pooled states (notebook 11's), with the alarm's statistic, k and h."""

    model: str
    blocks: int
    topics: list[str]
    heads: dict[str, Any]  # "topic" / "sentiment" -> {"weight": (n, d), "bias": (n,), "centre": (d,)} tensors; the
    # centre is the mean of that head's training vectors, removed before it reads them (lib.intent.centre)
    alarm: dict[str, Any]  # "kind" (share or count), "k", "h"

    def classify(self, pooled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(topic, sentiment) indices from raw pooled states; each head centres them on its own training mean."""
        from lib.intent import centre

        return tuple((centre(pooled, h["centre"].numpy()) @ h["weight"].numpy().T + h["bias"].numpy()).argmax(1)
                     for h in (self.heads["topic"], self.heads["sentiment"]))

    def predict(self, texts: Sequence[str], lm=None, tokenizer=None) -> tuple[np.ndarray, np.ndarray]:
        """(topic index, sentiment index into lib.finance.FIN_LABELS) of each text."""
        from lib.models import load_causal_lm, load_tokenizer
        from lib.retrieval import embed

        tokenizer = tokenizer or load_tokenizer(self.model)
        lm = lm or load_causal_lm(self.model)
        return self.classify(embed(lm, tokenizer, texts, blocks=self.blocks))

    def save(self, folder: Path | None = None) -> Path:
        """Write heads (safetensors) and settings (JSON) into folder, whole or not at all; the folder."""
        from lib.checkpoints import save_part
        from lib.models import models_root
        from lib.reporting import atomic_dir

        folder = Path(folder or models_root() / CLASSIFIER_DIR)
        with atomic_dir(folder) as tmp:
            save_part(tmp, "classifier", vars(self))
        return folder

    @classmethod
    def load(cls, folder: Path | None = None) -> NewsClassifier:
        """Read what save wrote; a missing folder says which notebook makes it."""
        from lib.checkpoints import load_part
        from lib.models import models_root

        folder = Path(folder or models_root() / CLASSIFIER_DIR)
        if not (folder / "classifier.json").is_file():
            raise FileNotFoundError(f"{folder}: no saved classifier; run notebook 11 (it saves one there), pass "
                                    "--model DIR, or use --lexicon with a 'topic' field in every record")
        return cls(**load_part(folder, "classifier"))


# ---------------------------------------------------------------- the command line

def read_records(path: Path, need_topic: bool) -> list[dict[str, Any]]:
    """JSONL records {"time": ISO 8601, "text": str} (and "topic" when asked); a bad line stops with file:line."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFormatError(f"{path}:{n}: not JSON ({e.msg}); expected {{\"time\": ..., \"text\": ...}}")
            keys = ("time", "text", "topic") if need_topic else ("time", "text")
            if not isinstance(rec, dict) or any(not isinstance(rec.get(k), str) or not rec[k].strip() for k in keys):
                raise DataFormatError(f"{path}:{n}: expected an object with non-empty string fields {', '.join(keys)}")
            try:
                rec["time"] = datetime.fromisoformat(rec["time"])
            except ValueError:
                raise DataFormatError(f"{path}:{n}: time={rec['time']!r} is not ISO 8601 (e.g. 2004-08-30T14:05)")
            out.append(rec)
    if not out:
        raise DataFormatError(f"{path}: no records; expected JSONL lines {{\"time\": ..., \"text\": ...}}")
    return out


def window_of(times: Sequence[datetime], every: str) -> np.ndarray:
    """The 0-based window of each time (hour or day), counted from the first window of the stream."""
    step = 3600 if every == "hour" else 86400
    secs = np.array([t.timestamp() for t in times]) // step
    return (secs - secs.min()).astype(int)


def main(argv: Sequence[str] | None = None) -> int:
    """Classify a JSONL stream, run the CUSUM alarm per topic on the negative share or count, print the alerts."""
    ap = argparse.ArgumentParser(prog="python -m lib.monitor", description=main.__doc__)
    ap.add_argument("file", type=Path, help="JSONL, one {\"time\": ISO 8601, \"text\": ...} per line")
    ap.add_argument("--every", choices=("hour", "day"), default="hour", help="window length")
    ap.add_argument("--warmup", type=int, default=12, help="windows that set the baseline (no alerts there)")
    ap.add_argument("--lexicon", action="store_true", help="VADER for sentiment, topics from each record's 'topic'")
    ap.add_argument("--model", type=Path, default=None, help="the classifier notebook 11 saved (default: its folder)")
    ap.add_argument("--statistic", choices=STATISTICS, default=None, help="negative share or count per window "
                    "(default: the saved or share)")
    ap.add_argument("-k", type=float, default=None, help="CUSUM allowance (default: the saved or 0.5)")
    ap.add_argument("--h", type=float, default=None, help="CUSUM threshold (default: the saved or 4)")
    args = ap.parse_args(argv)
    try:
        records = read_records(args.file, need_topic=args.lexicon)
        if args.lexicon:
            from lib.finance import vader_labels

            names = sorted({r["topic"] for r in records})
            topics = np.array([names.index(r["topic"]) for r in records])
            sentiment, kind, k, h = vader_labels([r["text"] for r in records]), "share", 0.5, 4.0
        else:
            clf = NewsClassifier.load(args.model)
            names, (topics, sentiment) = clf.topics, clf.predict([r["text"] for r in records])
            kind, k, h = clf.alarm.get("kind", "share"), clf.alarm["k"], clf.alarm["h"]
    except (DataFormatError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    k, h = args.k if args.k is not None else k, args.h if args.h is not None else h
    kind = args.statistic or kind
    win = window_of([r["time"] for r in records], args.every)
    n = int(win.max()) + 1
    windows = [[("x", i) for i in np.flatnonzero(win == w)] for w in range(n)]
    neg = {"x": np.asarray(sentiment) == 2}
    start = min(r["time"] for r in records)
    print(f"{len(records)} records in {n} {args.every} windows from {start:%Y-%m-%d %H:%M}; CUSUM on the negative "
          f"{kind}, k={k}, h={h}")
    if n <= args.warmup + 1:
        print(f"too few windows for a warm-up of {args.warmup}: no alerts possible")
        return 0
    for t, name in enumerate(names):
        alerts, stat = cusum(negative_series(windows, {"x": topics}, neg, t, kind), args.warmup, k, h)
        for first, last in episodes(alerts):
            when = f"window {first}" if first == last else f"windows {first}-{last}"
            print(f"ALERT {name}: {when} (CUSUM {stat[first]:.1f} > {h}), negative news surging")
    return 0


if __name__ == "__main__":
    sys.exit(main())
