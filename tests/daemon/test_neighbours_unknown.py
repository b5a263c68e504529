"""MACs that are no configured neighbour's: logged rate-limited (MAC, interface, direction), the
busiest in ``beatd status`` and a metric of how many; and the interface set stated at start and
in the status. The table by itself with a clock the test moves; as root, a real daemon in
namespaces."""
import json
import logging
import subprocess
import sys
import time

from beatd import unknown_macs as um
from beatd.cli import format_status
from conftest import wait_for
from test_daemon import ROOT, SLOW_S, mac_str, sh
from test_neighbours_kernel import (IP_A, IP_B, NB_A, R_A, R_B, Daemon, router,  # noqa: F401
                                    send)

H1, H2, H3 = (bytes.fromhex(f"02ee000000{i:02x}") for i in (1, 2, 3))


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def table(caplog):
    caplog.set_level(logging.INFO, logger="test.unknown")
    clock = Clock()
    return um.UnknownMacs(logging.getLogger("test.unknown"), clock=clock, wall=clock), clock


def lines(caplog):
    return [(r.getMessage(), r.fields) for r in caplog.records if r.name == "test.unknown"]


def test_one_line_per_mac_interface_and_direction_per_interval(caplog):
    t, clock = table(caplog)
    names = {1: "eth1", 2: "eth2"}
    t.add([(H1, 1, 1, 5), (H1, 1, 2, 2), (H2, 2, 1, 1)], 0, names)
    t.log_due()
    got = lines(caplog)
    assert [(f["mac"], f["interface"], f["direction"], f["frames"]) for _, f in got] == [
        (mac_str(H1), "eth1", "ingress", 5), (mac_str(H1), "eth1", "egress", 2),
        (mac_str(H2), "eth2", "ingress", 1)]
    assert got[0][0].startswith("frames from a MAC that is no configured neighbour: recorded as "
                                "from outside")
    assert got[1][0].startswith("frames to a MAC that is no configured neighbour: recorded as "
                                "to outside")
    caplog.clear()
    # more frames within the interval: counted, not logged
    for _ in range(5):
        clock.t += 10
        t.add([(H1, 1, 1, 3)], 0, names)
        t.log_due()
    assert lines(caplog) == []
    clock.t += 15                               # 65 s after the first line
    t.log_due()
    got = lines(caplog)
    assert [(f["mac"], f["frames"], f["since_s"]) for _, f in got] == [(mac_str(H1), 15, 65.0)]
    # at stop, whatever is not logged yet
    caplog.clear()
    clock.t += 1
    t.add([(H2, 2, 1, 4), (H3, 0, 1, 1)], 0, names)
    t.log_due(force=True)
    got = lines(caplog)
    assert [(f["mac"], f["interface"], f["frames"]) for _, f in got] == [
        (mac_str(H2), "eth2", 4), (mac_str(H3), "unknown interface", 1)]


def test_a_flood_of_made_up_macs_cannot_flood_the_log(caplog):
    t, clock = table(caplog)
    macs = [bytes([2, 0, 0, 0, i >> 8, i & 255]) for i in range(300)]
    for k in range(0, 300, 60):                 # as the pipeline lists them: 60 per commit
        t.add([(m, 1, 1, 1) for m in macs[k:k + 60]], 7, {1: "eth1"})
        t.log_due(force=False)
        clock.t += 1.5
    assert len(lines(caplog)) == um.LOG_BUDGET
    caplog.clear()
    clock.t += um.LOG_INTERVAL_S
    t.log_due()
    got = lines(caplog)
    assert "more distinct MACs than are logged" in got[0][0]
    assert got[0][1]["macs_not_logged"] == 300 - um.LOG_BUDGET
    assert len(got) == 1 + um.LOG_BUDGET        # the next interval's budget
    st = t.status()
    assert st["distinct"] == 300 and st["frames"] == 300 and st["unlisted"] == 35
    assert len(st["top"]) == um.TOP


def test_the_table_is_bounded_and_keeps_the_busiest(caplog):
    t, clock = table(caplog)
    busy = [bytes([2, 1, 0, 0, 0, i]) for i in range(3)]
    t.add([(m, 1, 1, 1000 - i) for i, m in enumerate(busy)], 0, {1: "eth1"})
    for k in range(3 * um.TABLE_MAX):
        clock.t += 0.001
        t.add([(bytes([2, 2, 0, 0, k >> 8, k & 255]), 1, 1, 1)], 0, {1: "eth1"})
    st = t.status(top=3)
    assert st["distinct"] <= um.TABLE_MAX and st["evicted"] > 0
    assert [m["mac"] for m in st["top"]] == [mac_str(m) for m in busy]
    assert st["top"][0] == {"mac": mac_str(busy[0]), "frames": 1000, "ingress": 1000,
                            "egress": 0, "interfaces": {"eth1": 1000},
                            "first_seen": 1000.0, "last_seen": 1000.0}


def test_status_top_adds_up_interfaces_and_directions(caplog):
    t, clock = table(caplog)
    t.add([(H1, 1, 1, 3), (H1, 2, 1, 4), (H1, 1, 2, 5), (H2, 1, 1, 20)], 0,
          {1: "eth1", 2: "eth2"})
    st = t.status()
    assert [(m["mac"], m["frames"], m["ingress"], m["egress"], m["interfaces"])
            for m in st["top"]] == [(mac_str(H2), 20, 20, 0, {"eth1": 20}),
                                    (mac_str(H1), 12, 7, 5, {"eth1": 8, "eth2": 4})]
    assert t.distinct() == 2


# -- root: a real daemon ---------------------------------------------------------------------------

def test_run_logs_and_shows_unknown_macs(tmp_path, router):
    """Hosts behind A's link send with their own MACs (no neighbour's): their frames are recorded
    as from outside, each (MAC, interface, direction) logged once in the minute (the frames after
    it go into the line at stop), the busiest in `beatd status`, their number in a metric. The
    interface set is the configured one, said at start and in the status."""
    r_ns, r_a, r_b, a_ns, a_if, b_ns, b_if = router
    store, sock, cfg = tmp_path / "store", tmp_path / "control.sock", tmp_path / "beatd.toml"
    cfg.write_text(f"""
node_id = 1
own_macs = ["{mac_str(R_A)}", "{mac_str(R_B)}"]
interfaces = ["{r_a}", "{r_b}"]
[[neighbours]]
node_id = 10
mac = "{mac_str(NB_A)}"
interface = "{r_a}"
[store]
path = "{store}"
ring_size = "16MiB"
map_size = "256MiB"
[capture]
workers = 1
block_size = "256KiB"
block_count = 4
[daemon]
commit_interval_ms = 20
metrics_listen = "127.0.0.1:9481"
control_socket = "{sock}"
log_format = "json"
neighbour_refresh = false
[ledger]
backend = "none"
""")
    d = Daemon(r_ns, cfg, sock)
    try:
        def seen(mac):
            top = {m["mac"]: m for m in d.status()["unknown_macs"]["top"]}
            return top.get(mac_str(mac), {}).get("frames", 0)

        send(a_ns, a_if, H1, R_A, 0, 30, 1)
        send(a_ns, a_if, H2, R_A, 100, 10, 2)
        send(a_ns, a_if, NB_A, R_A, 200, 5, 3)
        send(r_ns, r_a, R_A, H3, 300, 4, 4)          # to a host: egress, to outside
        wait_for(lambda: (seen(H1), seen(H2), seen(H3)) == (30, 10, 4), timeout=SLOW_S,
                 what="the three unknown MACs' frames in the status")
        time.sleep(1.5)             # past the table's check interval: a line would be due
        send(a_ns, a_if, H1, R_A, 400, 7, 5)
        wait_for(lambda: seen(H1) == 37, timeout=SLOW_S, what="37 frames from H1")
        st = d.status()
        assert st["interfaces"] == [r_a, r_b]
        assert st["interfaces_from"] == "configuration (interfaces)"
        ums = st["unknown_macs"]
        top = {m["mac"]: m for m in ums["top"]}
        # the veth's own traffic (IPv6 ND/MLD from the router) may add multicast MACs
        assert top[mac_str(H1)]["ingress"] == 37 and top[mac_str(H1)]["interfaces"] == {r_a: 37}
        assert top[mac_str(H2)]["frames"] == 10 and top[mac_str(H3)]["egress"] == 4
        assert mac_str(NB_A) not in top
        assert ums["top"][0]["mac"] == mac_str(H1)          # the busiest first
        text = format_status(st)
        assert f"unknown MACs {ums['distinct']} MACs that are no configured neighbour" in text
        assert f"    {mac_str(H1)}  37 frames (37 in, 0 out) on {r_a} 37" in text
        assert f"interfaces   {r_a}, {r_b} (configuration (interfaces))" in text
        metrics = subprocess.run(
            ["ip", "netns", "exec", r_ns, sys.executable, "-c",
             "import urllib.request;print(urllib.request.urlopen("
             "'http://127.0.0.1:9481/metrics', timeout=30).read().decode())"],
            capture_output=True, text=True, timeout=60).stdout
        values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in metrics.splitlines()
                  if line and not line.startswith("#")}
        assert values["beat_unknown_macs"] == ums["distinct"] >= 3
        assert values["beat_neighbours_without_mac"] == 0
    finally:
        rc, err, logs = d.stop()
    assert rc == 0, err
    said = [x for x in logs if x["msg"].startswith("capturing on")]
    assert [(x["msg"], x["interfaces"]) for x in said] == [
        ("capturing on the configured interfaces", [r_a, r_b])]
    by_key = {}
    for x in logs:
        if "MAC that is no configured neighbour" in x["msg"]:
            by_key.setdefault((x["mac"], x["interface"], x["direction"]), []).append(x)
    h1 = by_key[(mac_str(H1), r_a, "ingress")]
    # one line in the minute, the rest at stop: never a line per frame or per commit
    assert len(h1) == 2 and sum(x["frames"] for x in h1) == 37, h1
    assert h1[0]["msg"].endswith("else a neighbour missing from [[neighbours]]")
    assert sum(x["frames"] for x in by_key[(mac_str(H2), r_a, "ingress")]) == 10
    assert sum(x["frames"] for x in by_key[(mac_str(H3), r_a, "egress")]) == 4
    assert not [k for k in by_key if k[0] == mac_str(NB_A)]


def test_run_states_that_it_captures_on_every_interface(tmp_path, router):
    """`interfaces = []`: every interface found (here the router's two ports), said at start as a
    warning naming the default, and in the status."""
    r_ns, r_a, r_b, *_ = router
    store, sock, cfg = tmp_path / "store", tmp_path / "control.sock", tmp_path / "beatd.toml"
    cfg.write_text(f"""
node_id = 1
[store]
path = "{store}"
ring_size = "16MiB"
map_size = "256MiB"
[capture]
workers = 1
block_size = "256KiB"
block_count = 4
[daemon]
metrics_listen = ""
control_socket = "{sock}"
log_format = "json"
[ledger]
backend = "none"
""")
    d = Daemon(r_ns, cfg, sock)
    try:
        st = d.status()
        assert sorted(st["interfaces"]) == sorted([r_a, r_b])
        assert st["interfaces_from"] == "all interfaces: interfaces = [] in the configuration"
        assert "(all interfaces: interfaces = [] in the configuration)" in format_status(st)
    finally:
        rc, err, logs = d.stop()
    assert rc == 0, err
    said = [x for x in logs if x["msg"].startswith("capturing on")]
    assert len(said) == 1 and said[0]["level"] == "warning", said
    assert said[0]["msg"].startswith("capturing on all interfaces: interfaces = [] in the "
                                     "configuration") and "management ports" in said[0]["msg"]
    assert sorted(said[0]["interfaces"]) == sorted([r_a, r_b])
    json.dumps(st)
