"""Gap records end to end on a real daemon (docs/gap-records.md; root): ``beatd run`` in a network
namespace with a tiny capture ring, anchoring on a real local ledger, flooded from the peer
namespace until the kernel drops. Then:

- the store holds kernel-drops gap records, each with its type-3 outbox leaf, and the daemon
  logged the drops (rate-limited) and summarised them at stop;
- the ledger holds their anchors (the daemon's anchor thread; the ledger's own time on each);
- the real Interrogation server on that store serves them over mutual TLS, signed, each with an
  inclusion proof that verifies against the anchor on the ledger; the governance honours them;
- judged over the time of one honoured gap (SLA route: this device, from its neighbour 7), the
  device's records that do not show the packets leave are blindness, not drops: it is not
  named; the same evidence without its gap records names it DROPPED.
"""
import dataclasses
import json
import random
import time

import fastpath
from beat_common.gap_record import GAP_KERNEL_DROPS, gap_leaf
from beat_lab import ca as certs
from beatd.interrogation import InterrogationServer
from beatd.store import Store
from conftest import wait_for
from governance import gaps as ggaps
from governance import interrogate as gi
from governance import verdicts, verify
from governance.client import InterrogationClient
from ledger_client.keys import DeviceKey
from ledger_client.local import LocalLedger
from ledger_client.merkle import verify_inclusion
from ledger_client.types import SLA, Node
from test_capture_gaps import _beatd_run, _status, _term
from test_daemon import OWN, PEER, SLOW_S, config_text, netns_pair, send, udp_frame  # noqa: F401

H = "sha3-256"
V4 = bytes(10) + b"\xff\xff"


def test_a_tiny_ring_under_load_gives_anchored_served_honoured_gaps(tmp_path, netns_pair):
    d_ns, d_if, p_ns, p_if = netns_pair
    store_path, sock = tmp_path / "store", tmp_path / "control.sock"
    store_path.mkdir()
    gov, dev = DeviceKey.generate(), DeviceKey.generate()
    key_path = store_path / "device.ed25519"
    dev.save(str(key_path))
    led_path = tmp_path / "ledger.mdb"
    with LocalLedger(str(led_path), hash_name=H, governance_pubkey=gov.public) as lg:
        lg.register_node(Node(1, "op-a", dev.public), signer=gov)
    pki = tmp_path / "pki"
    certs.make_ca(str(pki))
    certs.make_device(str(pki), str(pki), 1, ips=["127.0.0.1"])
    certs.make_governance(str(pki), str(pki))

    cfg = tmp_path / "beatd.toml"
    text = config_text(store_path, sock, interfaces=[d_if], metrics="")
    text = text.replace('block_size = "256KiB"', 'block_size = "4KiB"').replace(
        "block_count = 4", "block_count = 2")             # 4 frames of room: a burst overflows it
    text = text.replace("[store]", "[governance]\nanchor_period_s = 0.5\n[store]")
    text += f'[ledger]\nbackend = "local"\npath = "{led_path}"\nkey = "{key_path}"\n'
    cfg.write_text(text)
    proc = _beatd_run(d_ns, cfg)
    try:
        wait_for(lambda: proc.poll() is not None or _status(sock) is not None, timeout=SLOW_S,
                 what="the daemon's control socket")
        assert proc.poll() is None, proc.stderr.read()
        for burst in range(12):
            send(p_ns, p_if, burst * 5000, 5000, 1)
            st = _status(sock)
            if st and st["kernel_drops"] > 0 and burst >= 2:
                break
        wait_for(lambda: (_status(sock)["capture_gaps"]["last"] or {}).get("reason")
                 == "kernel drops", timeout=SLOW_S, what="a kernel-drops gap")
        time.sleep(2.0)                                    # a few anchor periods
        _term(proc)
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # logged: one line per interface at most every 10 s (a few here), and the summary at stop
    drop_lines = [ln for ln in err.splitlines() if "capture gap: kernel drops" in ln]
    assert 1 <= len(drop_lines) <= 3, err[-3000:]
    summary = [ln for ln in err.splitlines() if "capture gaps this run: kernel drops" in ln]
    assert summary and "frames_dropped=" in summary[0] and "blind_s=" in summary[0], err[-2000:]

    with Store(str(store_path), 1, H, 16 << 20, map_size=256 << 20) as store, \
            LocalLedger(str(led_path), hash_name=H) as led:
        assert store.verify() == []
        recs = store.gap_records()
        from beat_common.gap_record import unpack_gap_record
        drops = [(seq, unpack_gap_record(r)) for seq, r in recs
                 if unpack_gap_record(r)[3] == GAP_KERNEL_DROPS]
        assert drops and all(g[4] in ("any", d_if) and g[2] > 0 for _, g in drops)
        assert sum(g[2] for _, g in drops) >= 1
        leaves = {seq: (kind, v) for seq, kind, v in store.outbox()}
        for seq, r in recs:
            assert bytes([leaves[seq][0]]) + leaves[seq][1] == gap_leaf(H, 1, r)

        server = InterrogationServer(store, dev, ca=pki / "ca.crt", cert=pki / "device-1.crt",
                                     private_key=pki / "device-1.key", listen="127.0.0.1:0",
                                     threshold_ns=3600 * 10**9).start()
        try:
            lo = min(g[0] for _, g in drops) - 10**9
            hi = max(g[1] for _, g in drops) + 10**9
            with InterrogationClient(f"127.0.0.1:{server.port}", pki / "ca.crt",
                                     pki / "governance.crt", pki / "governance.key", H, 1,
                                     dev.public) as client:
                served = client.gap_records(lo, hi)         # every chunk's signature checked
                kernel = [g for g in served if g.reason == GAP_KERNEL_DROPS]
                assert len(kernel) == len(drops)
                anchors = verify.AnchorCache(led)
                for g in kernel:
                    assert g.anchor.anchored, g
                    a = led.get_anchor(1, g.anchor.batch_seq)
                    assert verify_inclusion(H, g.leaf(H, 1), g.anchor.leaf_index, a.tree_size,
                                            g.anchor.path, a.root)
                    assert a.ledger_t_ns >= g.to_ns
                declared = ggaps.check_gap_records(1, H, kernel, anchors,
                                                   asked_at_ns=time.time_ns())
                honoured = [d for d in declared if d.honoured]
                assert honoured, [d.why for d in declared]

                # the judgement over the honoured gap with the most records of the flow in it
                ft = fastpath.pd_ft(udp_frame(PEER, OWN, 0, 1), 1)[2]
                sla = SLA(1, "tenant", V4 + bytes([10, 77, 1, 1]), V4 + bytes([10, 78, 0, 2]),
                          (1,))
                margin = 2 * 10**9

                def evidence(g):
                    check, receipts, counters, gap_recs = gi._fetch(
                        client, 1, led, H, sla, ft, g.from_ns, g.to_ns, margin, anchors,
                        random.randrange(1 << 32))
                    return gi._node_evidence(1, H, check, receipts, counters, gap_recs, led,
                                             anchors, {}, {"asked_at_ns": time.time_ns(),
                                                           "gap_anchor_delay_ns": 120 * 10**9})

                best = None
                for g in honoured:
                    ev = evidence(g)
                    n = sum(g.from_ns <= t <= g.to_ns for (t,) in
                            __import__("struct").iter_unpack(">Q40x", ev.records))
                    if best is None or n > best[2]:
                        best = (g, ev, n)
                g, ev, n = best
                assert n > 0, "no record of the flow inside an honoured gap"
        finally:
            server.stop(0)

    def judge(e):
        return verdicts.judge(sla, g.from_ns, g.to_ns, {1: e}, topology={1: {7}},
                              asked=(g.from_ns - margin, g.to_ns + margin))

    j = judge(ev)
    d1 = j.devices[1]
    assert d1.verdict not in verdicts.FAULTS, d1.reasons
    assert d1.counts["blind"] > 0 and d1.counts["own_drops"] == 0, d1.counts
    assert any(r.startswith("blind: ") for r in d1.reasons), d1.reasons
    assert any("node 1 declared it was blind from" in note and "frames dropped by the kernel"
               in note for note in j.notes), j.notes
    # the same records without the gap records: the device lost these packets
    bare = dataclasses.replace(ev, declared_gaps=(),
                               coverage=dataclasses.replace(ev.coverage, gaps=()))
    j2 = judge(bare)
    assert j2.devices[1].verdict == verdicts.DROPPED, j2.devices[1].reasons
    print(json.dumps({"gap_records": len(recs), "kernel_drop_records": len(drops),
                      "honoured": len(honoured), "records_in_gap": n}))
