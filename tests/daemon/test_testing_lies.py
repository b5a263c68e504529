"""The test-only lying switch of beatd (`beatd run --testing-lie SPEC`, beatd/testing_lies.py):
the records rewritten before they are committed, the segment commitment S recomputed over the lie
(the device anchors its lie), counters and receipts honest; hidden, command line only, refused in a
configuration file. No root needed: the fast path's pure twin and test_daemon's stand-in source."""
import struct
import subprocess
import sys
import threading
import time

import pytest

import fastpath
from fastpath import pure
from beatd import config as bconfig
from beatd.control import request
from beatd.daemon import Daemon, DaemonError
from beatd.store import Store
from beatd.testing_lies import Lies, parse_lie

from conftest import wait_for
from test_daemon import OWN, PEER, ROOT, SLOW_S, StandIn, config_text, mac_str, udp_frame

NONE = fastpath.NONE
OTHER = bytes.fromhex("02aa00000009")       # a second neighbour (node 9): where packets go
HASH = "sha3-256"
REC = struct.Struct(">QQQ16s8s")


def rows(records):
    return [REC.unpack_from(records, off) for off in range(0, len(records), 48)]


def forwarded(i, tag=1):
    """Packet i received from PEER (node 7) and sent to OTHER (node 9)."""
    return [udp_frame(PEER, OWN, i, tag), udp_frame(OWN, OTHER, i, tag)]


def pipeline_output(n=10, close=True, open_after=3):
    """A pure-twin pipeline of node 1 fed n forwarded packets (and their 2n frames), the segment
    closed, then ``open_after`` more packets left in the open segment; its Output."""
    p = pure.Pipeline(1, HASH, own_macs=(OWN,), neighbours={PEER: 7, OTHER: 9},
                      join_window_ns=1_000_000)
    t = 1_700_000_000_000_000_000

    def feed(first, count):
        nonlocal t
        frames = [f for i in range(first, first + count) for f in forwarded(i)]
        buf, desc, off = b"".join(frames), [], 0
        for f in frames:
            desc.append(pure.pack_desc(t, off, len(f), len(f), 1, 0))
            off += len(f)
            t += 1000
        p.feed(buf, b"".join(desc))
        t += 10_000_000
        p.advance(t)

    feed(0, n)
    if close:
        p.close_segment()
    feed(n, open_after)
    return p.take()


def flow_tag_of(frame):
    reason, _pd, ft = pure.pd_ft(frame, 1, HASH)
    assert reason is None
    return ft


# -- parsing ------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec,kind,old,new", [
    ("next=4:2", "next", 4, 2), ("prev=4:2", "prev", 4, 2), ("self", "self", None, None),
    ("next=3:NONE", "next", 3, NONE), ("prev=0:7", "prev", 0, 7)])
def test_specs_parse(spec, kind, old, new):
    lie = parse_lie(spec)
    assert (lie.kind, lie.old, lie.new, lie.spec) == (kind, old, new, spec)


def test_withhold_spec_takes_a_flow_tag():
    lie = parse_lie("withhold=00112233445566aa")
    assert lie.kind == "withhold" and lie.ft == bytes.fromhex("00112233445566aa")


@pytest.mark.parametrize("spec,named", [
    ("next=4", "OLD:NEW"), ("next=x:2", "'x'"), ("prev=4:-1", "'-1'"), ("next=2:2", "same"),
    ("withhold=abc", "'abc'"), ("withhold=00112233445566", "16 hex"), ("lie", "not one of"),
    ("swap=1:2", "'swap'"), ("next=4:18446744073709551616", "18446744073709551616")])
def test_bad_specs_are_named(spec, named):
    with pytest.raises(ValueError) as e:
        parse_lie(spec)
    assert spec in str(e.value) and named in str(e.value)


# -- rewriting an Output ------------------------------------------------------------------------

def test_next_lie_rewrites_records_and_recomputes_S():
    honest = pipeline_output()
    out = pipeline_output()
    assert out == honest                        # deterministic: the same input, the same output
    (seq, count, S, recs), = honest.segments
    assert {(r[1], r[2]) for r in rows(recs)} == {(7, 9)} and count == 10
    assert S == fastpath.segment_value(HASH, 1, seq, recs)

    lies = Lies(["next=9:5"], 1, HASH)
    lies.apply(out)
    (seq2, count2, S2, recs2), = out.segments
    assert (seq2, count2) == (seq, count)
    assert [(r[1], r[2]) for r in rows(recs2)] == [(7, 5)] * 10
    # everything but next_id as recorded; S is that of the lie, not of the truth
    assert [(r[0], r[3], r[4]) for r in rows(recs2)] == [(r[0], r[3], r[4]) for r in rows(recs)]
    assert S2 == fastpath.segment_value(HASH, 1, seq, recs2) != S
    assert S2 == pure.segment_value(HASH, 1, seq, recs2)
    assert {(r[1], r[2]) for r in rows(out.open_records)} == {(7, 5)}
    assert len(out.open_records) == len(honest.open_records) == 3 * 48
    assert {(r[1], r[2]) for r in rows(out.records)} == {(7, 5)}
    # counters and receipts stay honest
    assert (out.counters, out.receipts, out.open_receipts) == (
        honest.counters, honest.receipts, honest.open_receipts)
    assert struct.unpack_from(">QQ", out.counters, 0) == (7, 9)
    assert lies.status() == {"lies": ["next=9:5"], "records_rewritten": 10,
                             "records_withheld": 0, "segments_recommitted": 1}


def test_prev_and_self_lies():
    out = Lies(["prev=7:4"], 1, HASH).apply(pipeline_output())
    assert {(r[1], r[2]) for r in rows(out.segments[0][3])} == {(4, 9)}
    out = Lies(["self"], 1, HASH).apply(pipeline_output())
    seq, count, S, recs = out.segments[0]
    assert {(r[1], r[2]) for r in rows(recs)} == {(7, 1)}
    assert S == fastpath.segment_value(HASH, 1, seq, recs)
    # an ingress-only record (next_id NONE: not forwarded) is left as it is
    rec = REC.pack(5, 7, NONE, b"\1" * 16, b"\2" * 8)
    assert Lies(["self"], 1, HASH).records(rec) == (rec, False)


def test_lies_apply_in_order():
    out = Lies(["next=9:5", "prev=7:9"], 1, HASH).apply(pipeline_output())
    assert {(r[1], r[2]) for r in rows(out.segments[0][3])} == {(9, 5)}


def test_withhold_drops_one_flow_and_recommits():
    honest = pipeline_output()
    ft = flow_tag_of(forwarded(0)[0])
    other = REC.pack(1, 7, 9, b"\3" * 16, b"\4" * 8)           # another flow's record
    out = pipeline_output()
    seq, count, S, recs = out.segments[0]
    out.segments = [(seq, count + 1, fastpath.segment_value(HASH, 1, seq, recs + other),
                     recs + other)]
    lies = Lies([f"withhold={ft.hex()}"], 1, HASH)
    lies.apply(out)
    seq2, count2, S2, recs2 = out.segments[0]
    assert recs2 == other and count2 == 1
    assert S2 == fastpath.segment_value(HASH, 1, seq, other)
    assert out.open_records == b"" and out.records == b""
    assert out.counters == honest.counters and out.receipts == honest.receipts
    assert lies.withheld == 10
    # a segment of nothing but the flow: written empty, with the S of an empty segment
    out = Lies([f"withhold={ft.hex()}"], 1, HASH).apply(pipeline_output())
    assert out.segments == [(seq, 0, fastpath.segment_value(HASH, 1, seq, b""), b"")]


def test_no_lie_leaves_an_output_alone():
    honest = pipeline_output()
    out = Lies(["next=4:2"], 1, HASH).apply(pipeline_output())
    assert out == honest


# -- in the daemon --------------------------------------------------------------------------------

class DirectionStandIn(StandIn):
    """test_daemon's stand-in, the direction taken from the MACs (dir 0): egress frames too."""

    def push(self, frames):
        buf = b"".join(frames)
        desc, off = [], 0
        t = time.time_ns()
        for i, f in enumerate(frames):
            desc.append(fastpath.pack_desc(t + i * 1000, off, len(f), len(f), 1, 0))
            off += len(f)
        with self.lock:
            self.batches.append((buf, b"".join(desc), len(frames)))


def _run_daemon(tmp_path, lies, push):
    path = tmp_path / "beatd.toml"
    text = config_text(tmp_path / "store", tmp_path / "c.sock", metrics="")
    text += '[ledger]\nbackend = "none"\n'
    text = text.replace("[store]", "[[neighbours]]\nnode_id = 9\nmac = \"02:aa:00:00:00:09\"\n"
                                   "[store]")
    path.write_text(text)
    cfg = bconfig.load(path)
    sources = []

    def factory(interfaces, worker, group, config):
        s = DirectionStandIn(interfaces[0])
        sources.append(s)
        return [s]

    d = Daemon(cfg, config_path=str(path), source_factory=factory, testing_lies=lies)
    d.start()
    t = threading.Thread(target=d.serve, kwargs={"tick_s": 0.02})
    t.start()
    try:
        frames = push()
        sources[0].push(frames)
        wait_for(lambda: d.pipeline.totals()["frames"] == len(frames), timeout=SLOW_S,
                 what=f"{len(frames)} frames fed")
        st = request(str(tmp_path / "c.sock"), timeout=SLOW_S)
    finally:
        d.request_stop()
        t.join(timeout=SLOW_S)
        d.shutdown()
    assert d.failure is None
    with Store(tmp_path / "store", node_id=1, hash_name=HASH, ring_size=16 << 20,
               map_size=256 << 20) as s:
        return st, [REC.unpack(r) for r in s.iter_records()], s.counters(), s.verify(), \
            s.commitments(), s.segments()


def test_daemon_commits_and_anchors_the_lie(tmp_path):
    st, recs, counters, problems, commits, segs = _run_daemon(
        tmp_path, ["next=9:5"], lambda: [f for i in range(30) for f in forwarded(i)])
    assert st["testing"]["lies"] == ["next=9:5"] and st["testing"]["allow_inject"] is False
    from beatd.cli import format_status
    assert "  TESTING      lies next=9:5 (" in format_status(st)
    assert [(r[1], r[2]) for r in recs] == [(7, 5)] * 30
    # the store's own check recomputes every S: the lie is what the device committed to
    assert problems == []
    assert segs and all(S == fastpath.segment_value(HASH, 1, seq, r)
                        for seq, _count, S, r in segs)
    assert {c[1] for c in commits} == {S for _seq, _count, S, _r in segs}
    assert counters[(7, 9)][0] == 30 and (7, 5) not in counters       # honest counters


def test_daemon_withholds_a_flow(tmp_path):
    ft = flow_tag_of(forwarded(0, tag=1)[0])
    assert flow_tag_of(forwarded(0, tag=2)[0]) != ft

    def push():
        return [f for i in range(20) for tag in (1, 2) for f in forwarded(i, tag)]

    st, recs, counters, problems, _, segs = _run_daemon(tmp_path, [f"withhold={ft.hex()}"], push)
    # every S is that of what was written; only the (honest) counters tell the store's own check
    # that records were withheld
    assert problems == ["counters: 40 packets, 20 records"]
    assert segs and all(S == fastpath.segment_value(HASH, 1, seq, r)
                        for seq, _count, S, r in segs)
    assert len(recs) == 20 and {r[4] for r in recs} == {flow_tag_of(forwarded(0, 2)[0])}
    assert counters[(7, 9)][0] == 40                                    # honest counters
    assert st["testing"]["lies"] == [f"withhold={ft.hex()}"]


def test_daemon_refuses_a_bad_spec(tmp_path):
    path = tmp_path / "beatd.toml"
    path.write_text(config_text(tmp_path / "store", "", metrics="") + '[ledger]\nbackend = "none"\n')
    with pytest.raises(DaemonError) as e:
        Daemon(bconfig.load(path), testing_lies=["next=4"])
    assert "next=4" in str(e.value) and "OLD:NEW" in str(e.value)


def test_lies_need_the_devices_own_node_id():
    for node_id in (None, 0, NONE, True):
        with pytest.raises(ValueError) as e:
            Lies(["self"], node_id, HASH)
        assert f"node_id {node_id!r}" in str(e.value)
    with pytest.raises(ValueError) as e:
        Lies([], 1, HASH)
    assert "no SPEC" in str(e.value)


def test_the_switch_on_a_config_without_node_id_is_named(tmp_path):
    path = tmp_path / "beatd.toml"
    path.write_text(config_text(tmp_path / "store", "", metrics="").replace("node_id = 1\n", "") +
                    '[ledger]\nbackend = "none"\n')
    r = subprocess.run([sys.executable, "-m", "beatd", "run", "--config", str(path),
                        "--testing-lie", "self"], capture_output=True, text=True, timeout=60,
                       cwd=ROOT)
    assert r.returncode == 2 and "node_id None" in r.stderr and "Traceback" not in r.stderr, \
        r.stderr


def test_a_daemon_without_the_switch_reports_no_testing(tmp_path):
    st, recs, *_ = _run_daemon(tmp_path, (), lambda: forwarded(0))
    assert st["testing"] is None and [(r[1], r[2]) for r in recs] == [(7, 9)]
    from beatd.cli import format_status
    assert "TESTING" not in format_status(st)


# -- hidden, command line only ---------------------------------------------------------------------

@pytest.mark.parametrize("snippet,key", [
    ('testing_lie = ["next=4:2"]\n', "testing_lie"),
    ('testing-lie = "self"\n', "testing-lie"),
    ('testing_allow_inject = true\n', "testing_allow_inject"),
    ('[daemon]\ntesting_lie = ["self"]\n', "daemon.testing_lie"),
])
def test_a_configuration_file_cannot_turn_the_switch_on(tmp_path, snippet, key):
    path = tmp_path / "beatd.toml"
    base = config_text(tmp_path / "store", "", metrics="")
    if snippet.startswith("[daemon]"):
        text = base.replace("[daemon]\n", snippet)
    else:
        text = snippet + base
    path.write_text(text)
    with pytest.raises(bconfig.ConfigError) as e:
        bconfig.load(path)
    assert str(e.value) == (f"{path}: {key}: the testing switches (--testing-allow-inject, "
                            "--testing-lie) are TEST ONLY: command line only, never in a "
                            "configuration file")
    r = subprocess.run([sys.executable, "-m", "beatd", "run", "--config", str(path)],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2 and key in r.stderr and "TEST ONLY" in r.stderr, r.stderr


def test_the_lie_switch_is_hidden_and_checked_on_the_command_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "beatd", "run", "--help"], capture_output=True,
                       text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0 and "lie" not in r.stdout and "testing" not in r.stdout
    path = tmp_path / "beatd.toml"
    path.write_text(config_text(tmp_path / "store", "", metrics="") +
                    '[ledger]\nbackend = "none"\n')
    r = subprocess.run([sys.executable, "-m", "beatd", "run", "--config", str(path),
                        "--testing-lie", "next=4:2", "--testing-lie", "withhold=zz"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2 and "withhold=zz" in r.stderr and "'zz'" in r.stderr, r.stderr
