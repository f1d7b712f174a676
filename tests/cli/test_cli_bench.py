"""``discoverd bench`` (issue 12): the report's arithmetic on known inputs, then every
scenario as a subprocess against one real member, its report checked and the store looked
at afterwards to see that the load really happened.

The member (heartbeat 100 ms, election 1 s: minimum lease TTL 2 s) serves the whole module;
each test writes under its own prefix or service name. Loads are small (a few hundred
requests, durations of a second or two): this checks what is counted, not how fast.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from cli_helpers import Run, discoverd, endpoint_of

from discoverd.cli.bench import (
    PERCENTILES,
    Keys,
    LoadSpec,
    Recorder,
    Report,
    bar,
    histogram,
    mean_stddev,
    percentile,
)
from discoverd.testing.cluster import ProcessCluster

# ----------------------------------------------------------------------------- pure helpers


def test_percentile_nearest_rank() -> None:
    hundred = [float(i) for i in range(1, 101)]
    assert [percentile(hundred, p) for p in PERCENTILES] == [
        10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 100.0]
    thousand = [float(i) for i in range(1, 1001)]
    assert percentile(thousand, 99.9) == 999.0  # not 1000: 99.9 % of 1000 is exactly 999
    assert percentile(thousand, 50) == 500.0
    assert percentile([7.0], 10) == percentile([7.0], 99.9) == 7.0
    assert percentile([1.0, 2.0], 50) == 1.0
    assert percentile([1.0, 2.0], 51) == 2.0
    assert percentile([], 50) == 0.0


def test_histogram_buckets() -> None:
    ten = [float(i) for i in range(1, 11)]
    buckets = histogram(ten)
    assert [c for _, c in buckets] == [1] * 10
    assert [round(b, 6) for b, _ in buckets] == [1.9, 2.8, 3.7, 4.6, 5.5, 6.4, 7.3, 8.2,
                                                 9.1, 10.0]
    # A value on a bound belongs to that bucket; the slowest is always in the last one.
    assert histogram([0.0, 0.0, 0.0, 1.0, 10.0]) == [
        (1.0, 4), (2.0, 0), (3.0, 0), (4.0, 0), (5.0, 0), (6.0, 0), (7.0, 0), (8.0, 0),
        (9.0, 0), (10.0, 1)]
    assert histogram([0.3, 0.1, 0.7][:0]) == []
    assert histogram([5.0, 5.0, 5.0]) == [(5.0, 3)]
    assert histogram([1.0, 2.0, 3.0, 4.0], buckets=2) == [(2.5, 2), (4.0, 2)]


def test_mean_stddev_and_bar() -> None:
    assert mean_stddev([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]) == (5.0, 2.0)
    assert mean_stddev([]) == (0.0, 0.0)
    assert bar(10, 10) == "∎" * 40
    assert bar(5, 10) == "∎" * 20
    assert bar(1, 100) == ""
    assert bar(0, 0) == ""


def test_report_text_and_json() -> None:
    rec = Recorder()
    for ms in range(10, 0, -1):  # 10 ms .. 1 ms, out of order
        rec.ok(ms / 1000)
    rec.fail("etcdserver: request timed out")
    rec.fail("etcdserver: request timed out")
    rec.fail("boom")
    report = Report.of("put", 2.0, rec)
    assert report.ops == 10
    assert report.rate == 5.0
    text = report.text()
    assert "Summary:\n  Total:\t2.0000 secs.\n  Slowest:\t10.0000 ms.\n" \
           "  Fastest:\t1.0000 ms.\n  Average:\t5.5000 ms.\n" in text
    assert "  Requests/sec:\t5.0000\n" in text
    assert "  1.9000 [1]\t|" + "∎" * 40 + "\n" in text
    assert "  10.0000 [1]\t|" in text
    assert "  50% in 5.0000 ms.\n" in text
    assert "  99.9% in 10.0000 ms.\n" in text
    assert text.endswith("Error distribution:\n  [2]\tetcdserver: request timed out\n"
                         "  [1]\tboom\n")
    js = report.to_json()
    assert js["ops"] == 10
    assert js["errors"] == 3
    assert js["error_messages"] == {"etcdserver: request timed out": 2, "boom": 1}
    assert js["seconds"] == 2.0
    assert js["rate"] == 5.0
    assert js["latency_ms"]["p10"] == 1.0
    assert js["latency_ms"]["p99.9"] == 10.0
    assert js["latency_ms"]["average"] == 5.5
    assert js["latency_ms"]["fastest"] == 1.0
    assert js["latency_ms"]["slowest"] == 10.0
    assert [b["count"] for b in js["histogram"]] == [1] * 10
    json.dumps(js)  # serialisable as it is


def test_keys_and_spec_checks() -> None:
    seq = Keys(LoadSpec(key_size=4, key_space=3, sequential_keys=True, prefix=b"p/"))
    assert [seq.next() for _ in range(4)] == [b"p/0000", b"p/0001", b"p/0002", b"p/0000"]
    a = Keys(LoadSpec(key_size=8, key_space=1000, seed=3))
    b = Keys(LoadSpec(key_size=8, key_space=1000, seed=3))
    drawn = [a.next() for _ in range(50)]
    assert drawn == [b.next() for _ in range(50)]
    assert all(len(k) == 8 and k.isdigit() and int(k) < 1000 for k in drawn)
    with pytest.raises(ValueError, match="needs keys longer"):
        LoadSpec(key_size=2, key_space=101).check()
    with pytest.raises(ValueError, match="one of --total and --duration"):
        LoadSpec(total=None, duration=None).check()
    with pytest.raises(ValueError, match="--clients"):
        LoadSpec(clients=0).check()


# ----------------------------------------------------------------------------- against a member


@pytest.fixture(scope="module")
def member(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("bench-member")
    cluster = ProcessCluster(root, 1, heartbeat_ms=100, election_ms=1000)
    try:
        cluster.start_all()
        cluster.wait_for_leader()
        yield endpoint_of(cluster)
    finally:
        cluster.close()


def ok(endpoint: str, *args: str) -> Run:
    r = discoverd(endpoint, *args, timeout=60)
    assert r.code == 0, str(r)
    return r


def bench_json(endpoint: str, *args: str) -> dict[str, Any]:
    r = ok(endpoint, "bench", *args, "-w", "json")
    assert r.err == b"", str(r)  # no progress bar when stderr is not a terminal
    assert r.out.count(b"\n") == 1, str(r)
    report: dict[str, Any] = json.loads(r.out)
    for field in ("scenario", "ops", "errors", "error_messages", "seconds", "rate",
                  "latency_ms", "histogram"):
        assert field in report, field
    assert set(report["latency_ms"]) == {"fastest", "slowest", "average", "stddev", "p10",
                                         "p25", "p50", "p75", "p90", "p95", "p99", "p99.9"}
    assert report["errors"] == 0, report["error_messages"]
    assert report["seconds"] > 0
    assert report["rate"] > 0
    lat = report["latency_ms"]
    assert 0 < lat["fastest"] <= lat["p50"] <= lat["p99.9"] <= lat["slowest"]
    assert sum(b["count"] for b in report["histogram"]) == report["ops"]
    return report


def key_count(endpoint: str, prefix: str) -> int:
    r = ok(endpoint, "get", prefix, "--prefix", "--count-only", "-w", "fields")
    m = re.search(rb'^"Count" : (\d+)$', r.out, re.MULTILINE)
    assert m is not None, str(r)
    return int(m.group(1))


def summary_value(text: str, label: str) -> float:
    m = re.search(rf"^  {re.escape(label)}:\t([0-9.]+)", text, re.MULTILINE)
    assert m is not None, f"{label} missing in:\n{text}"
    return float(m.group(1))


def test_put_text_report(member: str) -> None:
    r = ok(member, "bench", "put", "--total", "200", "--clients", "8", "--key-space", "50",
           "--sequential-keys", "--prefix", "put-seq/")
    text = r.out.decode()
    assert text.startswith("\nSummary:\n"), text
    assert summary_value(text, "Total") > 0
    assert summary_value(text, "Requests/sec") > 0
    assert "Response time histogram (ms):" in text
    assert text.count("∎" * 40) >= 1  # the largest bucket's bar is full
    assert "\nLatency distribution:\n  10% in " in text
    assert "  99.9% in " in text
    assert "Error distribution" not in text
    histogram_counts = [int(n) for n in re.findall(r"^  [0-9.]+ \[(\d+)\]\t\|", text,
                                                   re.MULTILINE)]
    assert sum(histogram_counts) == 200
    assert key_count(member, "put-seq/") == 50  # = min(total, key space)


def test_put_json_random_keys(member: str) -> None:
    report = bench_json(member, "put", "--total", "200", "--conns", "2",
                        "--key-space", "1000", "--seed", "7", "--prefix", "put-rand/",
                        "--val-size", "64")
    assert report["scenario"] == "put"
    assert report["ops"] == 200
    # One seeded generator feeds every client: the keys written are the first 200 draws.
    keys = Keys(LoadSpec(key_space=1000, seed=7, prefix=b"put-rand/"))
    expected = {keys.next() for _ in range(200)}
    assert key_count(member, "put-rand/") == len(expected)
    r = ok(member, "get", "put-rand/", "--prefix", "--keys-only")
    assert set(r.out.split()) == expected


def test_range_fills_then_reads(member: str) -> None:
    report = bench_json(member, "range", "--total", "200", "--key-space", "100",
                        "--prefix", "range/", "--consistency", "s")
    assert report["scenario"] == "range"
    assert report["ops"] == 200
    assert report["consistency"] == "s"
    assert report["filled"] == 100
    assert report["found"] == 200
    assert key_count(member, "range/") == 100
    empty = bench_json(member, "range", "--total", "50", "--key-space", "100",
                       "--prefix", "range-empty/", "--no-fill")
    assert (empty["ops"], empty["filled"], empty["found"]) == (50, 0, 0)
    assert empty["consistency"] == "l"


def test_txn_compare_then_put(member: str) -> None:
    report = bench_json(member, "txn", "--total", "200", "--key-space", "50",
                        "--sequential-keys", "--prefix", "txn/", "--clients", "4")
    assert report["ops"] == 200
    assert (report["created"], report["updated"]) == (50, 150)
    r = ok(member, "get", "txn/", "--prefix", "-w", "json")
    kvs = json.loads(r.out)["kvs"]
    assert len(kvs) == 50
    assert {kv["version"] for kv in kvs} == {4}  # 200 txns round 50 keys: 4 writes each


def test_watch_delivers_every_event(member: str) -> None:
    report = bench_json(member, "watch", "--watchers", "5", "--puts", "2",
                        "--total", "100", "--prefix", "watch/", "--conns", "2")
    assert report["scenario"] == "watch"
    assert report["puts"] == 100
    assert report["events_expected"] == 500
    assert report["events_delivered"] == 500
    assert report["ops"] == 500
    assert report["events_per_sec"] > 0
    assert key_count(member, "watch/") > 0


def test_watch_text_for_a_duration(member: str) -> None:
    r = ok(member, "bench", "watch", "--watchers", "3", "--duration", "1s", "--prefix",
           "watch-d/", "--clients", "1")
    text = r.out.decode()
    assert summary_value(text, "Total") >= 1.0
    assert summary_value(text, "Requests/sec") > 0
    puts = int(summary_value(text, "Puts answered"))
    assert puts > 0
    assert int(summary_value(text, "Events expected")) == 3 * puts
    assert int(summary_value(text, "Events delivered")) == 3 * puts
    assert "Error distribution" not in text


def test_lease_keepalives_for_a_duration(member: str) -> None:
    report = bench_json(member, "lease", "--duration", "1s", "--leases", "5",
                        "--clients", "4")
    assert report["scenario"] == "lease"
    assert report["ops"] > 0
    assert report["seconds"] >= 1.0
    assert (report["leases"], report["revoked"]) == (5, 5)
    r = ok(member, "lease", "list")
    assert r.out.startswith(b"found 0 leases\n"), str(r)  # revoked after the run


def test_lease_total(member: str) -> None:
    report = bench_json(member, "lease", "--total", "300", "--leases", "3")
    assert report["ops"] == 300


def test_register_holds_and_deregisters(member: str) -> None:
    report = bench_json(member, "register", "--services", "10", "--ttl", "2",
                        "--duration", "2s", "--clients", "4", "--service", "bench-reg")
    assert report["scenario"] == "register"
    assert report["ops"] == 10
    assert report["registered"] == 10
    assert report["alive_at_end"] == 10  # kept alive through a hold of a whole TTL
    assert report["keepalive_errors"] == 0
    assert report["leases_lost"] == 0
    assert key_count(member, "/services/bench-reg/") == 0  # deregistered at the end


def test_flag_errors(member: str) -> None:
    def fails(*args: str) -> str:
        r = discoverd(member, "bench", *args)
        assert r.code == 1, str(r)
        assert r.out == b"", str(r)
        return r.err.decode()

    assert fails("put", "--total", "5", "--duration", "1s") == \
        "Error: --total and --duration cannot be used together\n"
    assert fails("put", "-w", "table") == "Error: bench prints -w simple or json, not table\n"
    assert fails("put", "--key-size", "2", "--key-space", "1000") == \
        "Error: --key-space 1000 needs keys longer than --key-size 2\n"
    assert fails("watch", "--val-size", "4") == \
        "Error: --val-size must be at least 8 for watch (the value carries the put's " \
        "send time)\n"
    assert fails("put", "--clients", "x") == \
        'Error: invalid argument "x" for "--clients" flag: strconv.ParseInt: parsing "x": ' \
        "invalid syntax\n"
    assert fails("register", "--total", "5") == \
        "Error: bench register takes --duration (how long to hold), not --total\n"
