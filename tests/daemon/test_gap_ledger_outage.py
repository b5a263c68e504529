"""An honest device whose ledger was down is not named for its capture gaps (findings G6/G1,
docs/threat-model.md "Declared capture loss"; root): ``beatd run`` in a network namespace with a
tiny capture ring, its ledger the default local one (STORE/ledger.lmdb), which the governance
creates only seconds after the kernel dropped frames: until then every anchor waits in the outbox
(the ledger is "not there": Unavailable, retried). The ledger then takes the queued batches late,
more than the governance's (here short) ``gap_anchor_delay`` after the gaps ended, which the old
delay-only rule called back-dated. Checked on the real store, the real ledger's times and the
real Interrogation service: the gap records are honoured (the device's batches before each
record hold older content only) and the device is judged blind, not at fault.
"""
import random
import struct
import time

import fastpath
from beat_common.gap_record import GAP_KERNEL_DROPS, unpack_gap_record
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
from ledger_client.types import SLA, Node
from test_capture_gaps import _beatd_run, _status, _term
from test_daemon import OWN, PEER, SLOW_S, config_text, netns_pair, send, udp_frame  # noqa: F401

H = "sha3-256"
V4 = bytes(10) + b"\xff\xff"
DELAY_NS = 2 * 10**9          # the governance's gap_anchor_delay, short to keep the test fast
OUTAGE_S = 4.0                # the ledger appears this long after the first kernel-drops gap


def test_gaps_anchored_late_after_a_ledger_outage_are_honoured(tmp_path, netns_pair):
    d_ns, d_if, p_ns, p_if = netns_pair
    store_path, sock = tmp_path / "store", tmp_path / "control.sock"
    store_path.mkdir()
    gov, dev = DeviceKey.generate(), DeviceKey.generate()
    dev.save(str(store_path / "device.ed25519"))          # the default ledger.key
    led_path = store_path / "ledger.lmdb"                 # the default ledger.path: not there
    pki = tmp_path / "pki"
    certs.make_ca(str(pki))
    certs.make_device(str(pki), str(pki), 1, ips=["127.0.0.1"])
    certs.make_governance(str(pki), str(pki))

    cfg = tmp_path / "beatd.toml"
    text = config_text(store_path, sock, interfaces=[d_if], metrics="")
    text = text.replace('block_size = "256KiB"', 'block_size = "4KiB"').replace(
        "block_count = 4", "block_count = 2")             # 4 frames of room: a burst overflows it
    text = text.replace("[store]", "[governance]\nanchor_period_s = 0.5\n[store]")
    text += '[ledger]\nbackend = "local"\n'
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
        send(p_ns, p_if, 90_000, 200, 1)                   # recorded after the gaps
        time.sleep(OUTAGE_S)                               # batches queue; nothing anchored
        assert not led_path.exists()
        with LocalLedger(str(led_path), hash_name=H, governance_pubkey=gov.public) as lg:
            lg.register_node(Node(1, "op-a", dev.public), signer=gov)
        # the batcher retries with its backoff (at most 30 s); then the queue goes in order

        def anchored():
            with LocalLedger(str(led_path), hash_name=H) as lg:
                return lg.next_batch_seq(1)
        wait_for(lambda: anchored() >= 3, timeout=60, what="the queued anchors on the ledger")
        time.sleep(1.5)
        _term(proc)
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-3000:]

    with Store(str(store_path), 1, H, 16 << 20, map_size=256 << 20) as store, \
            LocalLedger(str(led_path), hash_name=H) as led:
        drops = [unpack_gap_record(r) for _, r in store.gap_records()
                 if unpack_gap_record(r)[3] == GAP_KERNEL_DROPS]
        assert drops, err[-2000:]
        server = InterrogationServer(store, dev, ca=pki / "ca.crt", cert=pki / "device-1.crt",
                                     private_key=pki / "device-1.key", listen="127.0.0.1:0",
                                     threshold_ns=3600 * 10**9).start()
        try:
            lo = min(g[0] for g in drops) - 10**9
            hi = max(g[1] for g in drops) + 10**9
            with InterrogationClient(f"127.0.0.1:{server.port}", pki / "ca.crt",
                                     pki / "governance.crt", pki / "governance.key", H, 1,
                                     dev.public) as client:
                kernel = [g for g in client.gap_records(lo, hi) if g.reason == GAP_KERNEL_DROPS]
                anchors = verify.AnchorCache(led)
                late = []
                for g in kernel:
                    assert g.anchor.anchored, g
                    a = led.get_anchor(1, g.anchor.batch_seq)
                    if a.ledger_t_ns > g.to_ns + DELAY_NS:
                        late.append(g)
                # the outage is real: the ledger took them after the delay (the old rule's
                # "back-dated"), and it took earlier batches of this device just as late
                assert late, [(g.to_ns, led.get_anchor(1, g.anchor.batch_seq).ledger_t_ns)
                              for g in kernel]
                first = led.get_anchor(1, 0)
                assert first.ledger_t_ns > min(g.to_ns for g in late) + DELAY_NS
                asked = time.time_ns()
                declared = ggaps.check_gap_records(1, H, late, anchors, asked_at_ns=asked,
                                                   anchor_delay_ns=DELAY_NS)
                assert [d.status for d in declared] == [ggaps.HONOURED] * len(late), \
                    [d.why for d in declared]

                ft = fastpath.pd_ft(udp_frame(PEER, OWN, 0, 1), 1)[2]
                sla = SLA(1, "tenant", V4 + bytes([10, 77, 1, 1]), V4 + bytes([10, 78, 0, 2]),
                          (1,))
                margin = 2 * 10**9
                best = None
                for g in late:
                    check, receipts, counters, gap_recs = gi._fetch(
                        client, 1, led, H, sla, ft, g.from_ns, g.to_ns, margin, anchors,
                        random.randrange(1 << 32))
                    ev = gi._node_evidence(1, H, check, receipts, counters, gap_recs, led,
                                           anchors, {}, {"asked_at_ns": asked,
                                                         "gap_anchor_delay_ns": DELAY_NS})
                    n = sum(g.from_ns <= t <= g.to_ns for (t,) in
                            struct.iter_unpack(">Q40x", ev.records))
                    if best is None or n > best[2]:
                        best = (g, ev, n)
        finally:
            server.stop(0)
    g, ev, n = best
    assert n > 0, "no record of the flow inside a late gap"
    assert all(d.status == ggaps.HONOURED for d in ev.declared_gaps
               if d.reason == GAP_KERNEL_DROPS and d.to_ns >= g.from_ns and d.from_ns <= g.to_ns)
    j = verdicts.judge(sla, g.from_ns, g.to_ns, {1: ev}, topology={1: {7}},
                       asked=(g.from_ns - margin, g.to_ns + margin))
    d1 = j.devices[1]
    assert d1.verdict not in verdicts.FAULTS, d1.reasons
    assert d1.counts["blind"] > 0, d1.counts
    assert any(r.startswith("blind: ") for r in d1.reasons), d1.reasons
