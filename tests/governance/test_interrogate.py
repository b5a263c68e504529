"""governance/interrogate.py without a network: the configuration, the topology, whom the
governance asks (the route, every registered neighbour of it, then registered neighbours the
records name, bounded), the retries, and the windows it refuses to judge. The same code against
real daemons: tests/lab/test_lab_scenarios.py."""
import struct

import pytest

from governance import interrogate as itg
from governance.client import NodeUnreachable, RequestRejected
from governance.verdicts import NodeEvidence, flow_tag
from ledger_client.types import SLA, Node

V4 = bytes(10) + b"\xff\xff"
SRC, DST = V4 + bytes([10, 0, 0, 1]), V4 + bytes([10, 0, 0, 2])
FT = flow_tag("sha3-256", SRC, DST)


def write_config(tmp_path, extra=""):
    for name in ("ca", "cert", "key"):
        (tmp_path / f"{name}.pem").write_text("x")
    p = tmp_path / "gov.toml"
    p.write_text(f"""
[interrogation]
ca = "{tmp_path}/ca.pem"
cert = "{tmp_path}/cert.pem"
key = "{tmp_path}/key.pem"
{extra}
""")
    return str(p)


def test_config_links_and_judgement(tmp_path):
    cfg = itg.load_config(write_config(tmp_path, """
[judgement]
f = 2
threshold_s = 600
max_devices = 5
[[links]]
a = 2
b = 1
[[links]]
a = 1
b = 2
[[links]]
a = 2
b = 3
"""))
    assert (cfg.f, cfg.threshold_s, cfg.max_devices) == (2, 600.0, 5)
    assert cfg.links == ((1, 2), (2, 3))
    assert (cfg.retry_s, cfg.margin_s) == (itg.DEFAULT_RETRY_S, itg.DEFAULT_MARGIN_S)
    assert cfg.gap_tolerance_s == 10.0


@pytest.mark.parametrize("extra, message", [
    ("[[links]]\na = 1\nb = 1", r"links\[0\]: a and b are both 1"),
    ("[[links]]\na = 1", r"links\[0\]: needs a and b"),
    ("[[links]]\na = 0\nb = 2", r"links\[0\]\.a: 0 is not a node id"),
    ("[judgement]\nf = -1", r"judgement\.f: -1 is not an integer >= 0"),
    ("[judgement]\nf = 1.5", r"judgement\.f: 1\.5 is not an integer"),
    ("[judgement]\nmax_devices = 0", r"judgement\.max_devices: 0 is not an integer >= 1"),
    ("[judgement]\nthreshold_s = 0", r"judgement\.threshold_s: 0 is not a number of seconds > 0"),
    ("[judgement]\ngap_tolerance_s = 0", r"judgement\.gap_tolerance_s: 0 is not a number of "
                                         r"seconds > 0"),
    ("[judgement]\ngap_tolerance_s = \"10\"", r"judgement\.gap_tolerance_s: '10' is not"),
    ("[judgement]\nfoo = 1", r"judgement\.foo: unknown key.*gap_tolerance_s"),
    ("[routes]\nx = 1", r"routes: unknown key"),
])
def test_config_errors_name_the_key_and_value(tmp_path, extra, message):
    with pytest.raises(itg.ConfigError, match=message):
        itg.load_config(write_config(tmp_path, extra))


class Ledger:
    """What collect and interrogate read of a ledger."""
    hash_name = "sha3-256"

    def __init__(self, links=(), owners=None, sla=None):
        self._links = links
        self._owners = owners or {}
        self._sla = sla

    def links(self):
        return list(self._links)

    def get_node(self, n):
        return Node(n, self._owners.get(n, f"op{n}"), bytes(32))

    def get_sla(self, sla_id):
        return self._sla


def cfg_with(tmp_path, extra=""):
    return itg.load_config(write_config(tmp_path, extra))


def test_topology_from_the_ledger_else_the_configuration(tmp_path):
    cfg = cfg_with(tmp_path, "[[links]]\na = 7\nb = 8")
    assert itg.topology_of(Ledger(links=[(1, 2), (2, 3)]), cfg) == {
        1: {2}, 2: {1, 3}, 3: {2}}
    assert itg.topology_of(Ledger(), cfg) == {7: {8}, 8: {7}}
    with pytest.raises(itg.NotJudgeable, match="no topology: register the links"):
        itg.topology_of(Ledger(), cfg_with(tmp_path))


def records(*recs):
    return b"".join(struct.pack(">QQQ", t, p, q) + bytes(16) + FT for t, p, q in recs)


def test_collect_asks_the_route_its_neighbours_then_registered_names(tmp_path, monkeypatch):
    """Route 1-2-3; 4 neighbours 1 and 3 (the detour); 5 neighbours 4 only; 6 is registered
    nowhere near. 4's records name 5 (its registered neighbour: asked in round 2) and 6 (not its
    neighbour: never asked, whatever a record says)."""
    links = [(1, 2), (2, 3), (1, 4), (4, 3), (4, 5), (6, 7)]
    answers = {4: records((10, 1, 5), (11, 6, 3))}
    asked = []

    def ask(n, *a):
        asked.append(n)
        return NodeEvidence(n, records=answers.get(n, b"")), {}, []

    monkeypatch.setattr(itg, "_ask", ask)
    sla = SLA(1, "t", SRC, DST, (1, 2, 3))
    ev, info, topo, owners, _ = itg.collect(Ledger(links, {1: "acme", 4: "acme"}), sla, 0, 100,
                                         cfg_with(tmp_path), "sha3-256")
    assert sorted(asked[:4]) == [1, 2, 3, 4] and asked[4:] == [5]
    assert sorted(ev) == [1, 2, 3, 4, 5]
    assert owners == {1: "acme", 2: "op2", 3: "op3", 4: "acme", 5: "op5"}
    assert topo[4] == {1, 3, 5}
    # at most max_devices: the rest is listed, not asked
    asked.clear()
    ev, info, _, _, _ = itg.collect(Ledger(links), sla, 0, 100,
                                 cfg_with(tmp_path, "[judgement]\nmax_devices = 4"), "sha3-256")
    assert sorted(ev) == [1, 2, 3, 4] and info["capped"] == [5]


def test_retry_with_backoff_then_what_the_failure_makes():
    """A device is asked again while it is unreachable (governance/retry.py's backoff); what is
    left unreachable, or refuses, is not judged; an answer cut short or badly signed is MISSING
    (incomplete, bad_evidence)."""
    import grpc

    from beat_rpc.evidence import BadSignature, IncompleteAnswer

    clock = [0.0]
    slept = []

    def sleep(s):
        slept.append(s)
        clock[0] += s

    timing = {"sleep": sleep, "clock": lambda: clock[0], "jitter": 0.0}
    calls = []

    def down():
        calls.append(clock[0])
        raise NodeUnreachable("node 3 at x: UNAVAILABLE: refused")

    got, ev = itg._classified(3, lambda: itg._with_retry(down, 10.0, **timing))
    assert got is None and ev.status == "unreachable" and "UNAVAILABLE" in ev.error
    assert slept == [0.25, 0.5, 1.0, 2.0, 4.0] and len(calls) == 6
    # a device that comes back is used; one that refuses is not asked again
    state = {"n": 0}

    def flaky():
        state["n"] += 1
        if state["n"] < 3:
            raise NodeUnreachable("down")
        return "evidence"

    assert itg._classified(3, lambda: itg._with_retry(flaky, 10.0, **timing)) == \
        ("evidence", None)

    def fails(exc):
        def call():
            state["n"] += 1
            raise exc
        state["n"] = 0
        got, ev = itg._classified(3, lambda: itg._with_retry(call, 10.0, **timing))
        assert got is None and state["n"] == 1           # asked once: not transient
        return ev.status

    assert fails(RequestRejected("PERMISSION_DENIED", grpc.StatusCode.PERMISSION_DENIED,
                                 "no")) == "unreachable"
    assert fails(IncompleteAnswer("node 3: no last chunk")) == "incomplete"
    assert fails(BadSignature("node 3: chunk 0")) == "bad_evidence"


def test_a_window_older_than_the_threshold_is_not_judged(tmp_path):
    sla = SLA(1, "t", SRC, DST, (1, 2, 3))
    cfg = cfg_with(tmp_path, "[judgement]\nthreshold_s = 60\n[[links]]\na = 1\nb = 2")
    now = 10_000 * 10**9
    with pytest.raises(itg.NotJudgeable, match="more than the threshold time 60 s"):
        itg.interrogate(Ledger(sla=sla), 1, now - 61 * 10**9, now, cfg, now_ns=now)
    with pytest.raises(LookupError, match="SLA 9: not on the ledger"):
        itg.interrogate(Ledger(), 9, now - 10, now, cfg, now_ns=now)


def test_a_route_no_honest_device_can_follow_is_not_judged(tmp_path, monkeypatch):
    """Refused before any device is asked: a route that visits a device twice, or a step that is
    not a registered link."""
    monkeypatch.setattr(itg, "_ask", lambda *a: pytest.fail("a device was asked"))
    cfg = cfg_with(tmp_path)
    now = 10_000 * 10**9
    for route, message in (((1, 2, 1), "visits node 1 twice"),
                           ((1, 3), "from node 1 to node 3, which are not registered")):
        sla = SLA(1, "t", SRC, DST, route)
        with pytest.raises(itg.NotJudgeable, match=message):
            itg.interrogate(Ledger(links=[(1, 2), (2, 3)], sla=sla), 1, now - 10, now, cfg,
                            now_ns=now)
