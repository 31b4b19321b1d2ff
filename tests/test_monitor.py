"""lib.monitor: surges and streams as planned, the CUSUM alarm on known series, alert scoring, the CLI's errors."""
import json

import numpy as np
import pytest

from lib.monitor import (Surge, cusum, episodes, main, make_stream, negative_series, pick_alarm, plan_surges,
                         pool_scores, read_records, score_alerts)
from lib.data import DataFormatError


def test_surges_fit_after_the_warmup_and_keep_their_gaps():
    for seed in range(20):
        surges = plan_surges(200, 6, 4, warmup=20, gap=8, topic=2, seed=seed)
        assert len(surges) == 6 and surges[0].start >= 28 and surges[-1].end <= 200
        assert all(b.start - a.end >= 8 for a, b in zip(surges, surges[1:]))
    with pytest.raises(ValueError, match="do not fit"):
        plan_surges(50, 6, 4, warmup=20, gap=8, topic=2, seed=0)


def test_stream_injects_only_in_surge_windows():
    surges = [Surge(2, 5, 8)]
    windows = make_stream(100, 10, 12, per_window=6, surges=surges, per_surge_window=3, seed=0)
    assert [sum(src == "inj" for src, _ in w) for w in windows] == [0] * 5 + [3] * 3 + [0] * 4
    assert all(sum(src == "bg" for src, _ in w) == 6 for w in windows)


def test_negative_series_counts_only_the_topic():
    windows = [[("bg", 0), ("bg", 1), ("bg", 2)], [("bg", 3)], [("inj", 0), ("bg", 1)]]
    topic = {"bg": np.array([1, 1, 0, 0]), "inj": np.array([1])}
    neg = {"bg": np.array([True, False, True, True]), "inj": np.array([True])}
    share = negative_series(windows, topic, neg, which=1)
    assert share[0] == 0.5 and np.isnan(share[1]) and share[2] == 0.5
    assert negative_series(windows, topic, neg, which=1, kind="count").tolist() == [1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="expected one of share, count"):
        negative_series(windows, topic, neg, which=1, kind="mean")


def test_cusum_raises_one_alert_within_the_delay_and_none_on_a_flat_stream():
    rng = np.random.default_rng(0)
    flat = 0.3 + 0.05 * rng.standard_normal(300)
    alerts, _ = cusum(flat, warmup=30, k=1.0, h=6.0)
    assert alerts.sum() == 0
    step = flat.copy()
    step[150:156] += 0.3  # six sigma for six windows
    alerts, stat = cusum(step, warmup=30, k=1.0, h=6.0)
    assert np.flatnonzero(alerts)[0] in (150, 151) and alerts[:150].sum() == 0 and (stat >= 0).all()
    scores = score_alerts(alerts, [Surge(0, 150, 156)], warmup=30, grace=2)
    assert scores["caught"] == 1 and scores["delays"][0] <= 1 and scores["false_alarms"] == 0


def test_episodes_merge_consecutive_alerts():
    assert episodes(np.array([0, 1, 1, 0, 1, 0, 0, 1], bool)) == [(1, 2), (4, 4), (7, 7)]


def test_cusum_needs_a_warmup():
    with pytest.raises(ValueError, match="warm-up"):
        cusum(np.array([np.nan, np.nan, 0.5]), warmup=2, k=0.5, h=4)


def test_scores_by_hand():
    alerts = np.zeros(40, bool)
    alerts[[5, 12, 22, 31]] = True  # 5: warm-up (ignored); 12: caught, delay 2; 22: in grace; 31: false alarm
    s = score_alerts(alerts, [Surge(0, 10, 14), Surge(0, 20, 21)], warmup=8, grace=2)
    assert (s["caught"], s["delays"], s["false_alarms"], s["alerts"]) == (2, [2, 2], 1, 3)
    assert s["quiet_windows"] == 40 - 8 - 6 - 3
    pooled = pool_scores([s, s])
    assert pooled["recall"] == 1.0 and pooled["precision"] == pytest.approx(2 / 3)
    assert pooled["fa_per_100"] == pytest.approx(100 * 2 / (2 * 23))


def test_pick_alarm_respects_the_false_alarm_budget():
    table = {(0.5, 2): (1.0, 9.0), (0.5, 4): (0.8, 1.0), (1.0, 4): (0.8, 0.5), (1.0, 2): (0.6, 0.0)}
    ev = lambda kind, k, h: {"recall": table[k, h][0], "fa_per_100": table[k, h][1], "mean_delay": k}
    best = pick_alarm(ev, [0.5, 1.0], [2, 4], max_fa=2.0)
    assert (best["kind"], best["k"], best["h"]) == ("share", 0.5, 4)  # recall 0.8 in budget; ties: shorter delay


def test_records_errors_name_the_line(tmp_path):
    f = tmp_path / "s.jsonl"
    f.write_text('{"time": "2004-08-30T10:00", "text": "Shares fell."}\n{"time": "yesterday", "text": "x"}\n')
    with pytest.raises(DataFormatError, match=r"s\.jsonl:2: time='yesterday'"):
        read_records(f, need_topic=False)
    f.write_text('{"time": "2004-08-30T10:00", "text": "Shares fell."}\nnot json\n')
    with pytest.raises(DataFormatError, match=r"s\.jsonl:2: not JSON"):
        read_records(f, need_topic=False)
    f.write_text('{"time": "2004-08-30T10:00", "text": "Shares fell."}\n')
    with pytest.raises(DataFormatError, match=r"s\.jsonl:1: expected .* topic"):
        read_records(f, need_topic=True)


def test_cli_prints_an_alert_for_a_surge_and_exits_2_on_a_bad_line(tmp_path, capsys):
    pytest.importorskip("vaderSentiment")
    calm = ["Shares were little changed as investors waited for the report.", "The company opened a new office.",
            "Profit rose sharply and the company raised its forecast.", "The firm named a new finance chief."]
    bad = ["Shares plunged after the company warned of huge losses and layoffs.",
           "The bank collapsed amid fraud charges, wiping out investors."]
    rows = []
    for hour in range(48):
        texts = calm if not 30 <= hour < 34 else calm[:2] + bad * 3
        rows += [{"time": f"2004-09-{1 + hour // 24:02d}T{hour % 24:02d}:{m * 5:02d}", "text": t, "topic": "Business"}
                 for m, t in enumerate(texts)]
    f = tmp_path / "stream.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main([str(f), "--lexicon", "--warmup", "12"]) == 0
    out = capsys.readouterr().out
    assert "48 hour windows" in out and "ALERT Business: windows 30-3" in out and out.count("ALERT") == 1
    f.write_text(f.read_text() + '{"time": "2004-09-03T00:00"}\n')
    assert main([str(f), "--lexicon"]) == 2
    assert f"stream.jsonl:{len(rows) + 1}:" in capsys.readouterr().err


def test_saved_classifier_round_trips_through_safetensors(tmp_path):
    import torch

    from lib.monitor import NewsClassifier

    clf = NewsClassifier("smollm2-135m-instruct", 4, ["World", "Business"],
                         {"topic": {"weight": torch.randn(2, 8), "bias": torch.zeros(2), "centre": torch.randn(8)},
                          "sentiment": {"weight": torch.randn(3, 8), "bias": torch.ones(3), "centre": torch.randn(8)}},
                         {"k": 0.5, "h": 4.0})
    folder = clf.save(tmp_path / "clf")
    assert sorted(p.name for p in folder.iterdir()) == ["classifier.json", "classifier.safetensors"]
    back = NewsClassifier.load(folder)
    assert back.topics == clf.topics and back.alarm == clf.alarm and back.blocks == 4
    for head in ("topic", "sentiment"):
        assert all(torch.equal(back.heads[head][k], clf.heads[head][k]) for k in ("weight", "bias", "centre"))
    with pytest.raises(FileNotFoundError, match="run notebook 11"):
        NewsClassifier.load(tmp_path / "nowhere")


def test_each_head_centres_the_pooled_states_on_its_own_mean():
    import torch

    from lib.monitor import NewsClassifier

    eye = torch.eye(2)  # a head that reads the centred vector's two coordinates as two class scores
    heads = {"topic": {"weight": eye, "bias": torch.zeros(2), "centre": torch.tensor([0.0, 0.0])},
             "sentiment": {"weight": torch.eye(3, 2), "bias": torch.zeros(3), "centre": torch.tensor([2.0, 0.0])}}
    clf = NewsClassifier("m", 1, ["A", "B"], heads, {})
    topic, sentiment = clf.classify(np.array([[1.0, 0.5]]))
    assert topic.tolist() == [0] and sentiment.tolist() == [1]  # (1, .5) for the topic head; (-1, .5) for sentiment


def test_false_alarm_rate_pools_the_resampled_units():
    from lib.monitor import false_alarm_rate

    units = np.array([[1, 10], [0, 30], [3, 60]])  # [false alarms, quiet windows] per stream and topic
    rate = false_alarm_rate(units)
    assert rate(np.arange(3)) == pytest.approx(100 * 4 / 100)
    assert rate(np.array([0, 0, 1])) == pytest.approx(100 * 2 / 50)  # a resample may repeat a unit
    assert false_alarm_rate(np.zeros((1, 2)))(np.array([0])) == 0  # no quiet window: no division by zero
