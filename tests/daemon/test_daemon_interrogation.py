"""beatd with `[interrogation]`: the configuration and its errors, the service running inside the
daemon (mutual TLS on loopback), evidence signed with the key registered on the ledger, the state
in `beatd status`. No root: the stand-in capture source of test_daemon.py."""
import struct
import threading
import time

import pytest

from beat_lab import ca as certs
from beatd import config as bconfig
from beatd.control import request
from beatd.daemon import Daemon
from fastpath.hashes import digest_function
from governance.client import InterrogationClient
from ledger_client.keys import DeviceKey

from conftest import wait_for
from test_daemon import OWN, PEER, config_text, stand_in_factory, udp_frame

HASH = "sha3-256"


@pytest.fixture
def pki(tmp_path):
    ca_dir = tmp_path / "ca"
    certs.make_ca(str(ca_dir))
    certs.make_device(str(ca_dir), str(tmp_path / "dev"), 1, ips=["127.0.0.1"])
    certs.make_governance(str(ca_dir), str(tmp_path / "gov"))
    return {"ca": str(ca_dir / "ca.crt"), "cert": str(tmp_path / "dev" / "device-1.crt"),
            "key": str(tmp_path / "dev" / "device-1.key"),
            "gov_cert": str(tmp_path / "gov" / "governance.crt"),
            "gov_key": str(tmp_path / "gov" / "governance.key")}


def _section(pki, listen="127.0.0.1:0", **extra):
    lines = ["[interrogation]", f'listen = "{listen}"', f'ca = "{pki["ca"]}"',
             f'cert = "{pki["cert"]}"', f'key = "{pki["key"]}"']
    lines += [f"{k} = {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def test_config_needs_the_tls_files_and_checks_them(tmp_path, pki):
    base = {"node_id": 1, "store": {"path": str(tmp_path / "s")}}
    c = bconfig.from_dict(base)
    assert c.interrogation_listen == ""                 # off unless configured
    c = bconfig.from_dict({**base, "interrogation": {"listen": "127.0.0.1:9478", "ca": pki["ca"],
                                                     "cert": pki["cert"], "key": pki["key"]}})
    assert c.interrogation_signing_key == str(tmp_path / "s" / "device.ed25519")
    assert (c.interrogation_max_window_s, c.interrogation_max_streams) == (3600.0, 4)
    assert (c.interrogation_max_index_entries, c.interrogation_max_seg_seqs) == (100_000, 1024)
    assert (c.interrogation_max_peer_rpcs, c.interrogation_max_device_rpcs,
            c.interrogation_max_call_s) == (4, 8, 60.0)
    cases = [
        ({"listen": "127.0.0.1:9478", "cert": pki["cert"], "key": pki["key"]},
         "interrogation.ca: missing"),
        ({"listen": "nowhere", "ca": pki["ca"], "cert": pki["cert"], "key": pki["key"]},
         'interrogation.listen: "nowhere" is not an address'),
        ({"listen": "127.0.0.1:1", "ca": str(tmp_path / "no.crt"), "cert": pki["cert"],
          "key": pki["key"]}, f'interrogation.ca: "{tmp_path / "no.crt"}": no such file'),
        ({"listen": "127.0.0.1:1", "ca": "rel.crt"}, 'interrogation.ca: "rel.crt" is not an '
                                                      "absolute path"),
        ({"max_streams": 0}, "interrogation.max_streams: 0 must be more than 0"),
        ({"max_index_entries": 0}, "interrogation.max_index_entries: 0 must be more than 0"),
        ({"max_seg_seqs": 1.5}, "interrogation.max_seg_seqs: 1.5 is not an integer"),
        ({"max_peer_rpcs": 0}, "interrogation.max_peer_rpcs: 0 must be more than 0"),
        ({"max_peer_rpcs": 2.5}, "interrogation.max_peer_rpcs: 2.5 is not an integer"),
        ({"max_device_rpcs": 2000}, "interrogation.max_device_rpcs: 2000 is more than 1024"),
        ({"max_peer_rpcs": 9}, "interrogation.max_peer_rpcs: 9 is more than "
                               "interrogation.max_device_rpcs (8): one certificate cannot have "
                               "more calls than all of them together"),
        ({"max_call_s": -1}, "interrogation.max_call_s: -1 must be more than 0"),
        ({"plaintext": True}, "interrogation.plaintext: unknown key"),
    ]
    for raw, message in cases:
        with pytest.raises(bconfig.ConfigError) as e:
            bconfig.from_dict({**base, "interrogation": raw})
        assert message in str(e.value), (raw, str(e.value))
    with pytest.raises(bconfig.ConfigError, match="interrogation.signing_key: missing"):
        bconfig.from_dict({**base, "ledger": {"backend": "none"},
                           "interrogation": {"listen": "127.0.0.1:1", "ca": pki["ca"],
                                             "cert": pki["cert"], "key": pki["key"]}})


def test_daemon_serves_signed_evidence(tmp_path, pki):
    path = tmp_path / "beatd.toml"
    text = config_text(tmp_path / "store", tmp_path / "c.sock", metrics="127.0.0.1:0")
    text = text.replace("[store]", "[governance]\nreceipt_epoch_ms = 100\nanchor_period_s = 0.3\n"
                                   "[store]")
    path.write_text(text + _section(pki))
    cfg = bconfig.load(path)
    sources = []
    d = Daemon(cfg, config_path=str(path), source_factory=stand_in_factory(sources))
    d.start()
    main = threading.Thread(target=d.serve, kwargs={"tick_s": 0.02})
    main.start()
    try:
        port = d.interrogation.stats()["port"]
        assert port > 0
        key = DeviceKey.load(tmp_path / "store" / "device.ed25519")   # made at the first start
        frames = [udp_frame(PEER, OWN, i, 1) for i in range(200)]
        sources[0].push(frames)
        wait_for(lambda: d.pipeline.totals()["frames"] == 200, what="200 frames fed")
        wait_for(lambda: d.store.proof_ring_status(0, 0)["segments"] >= 1, timeout=5,
                 what="a closed segment")
        now = time.time_ns()
        window = (now - 600 * 10**9, now + 10**9)
        st = request(str(tmp_path / "c.sock"))
        assert st["interrogation"]["port"] == port
        with InterrogationClient(f"127.0.0.1:{port}", pki["ca"], pki["gov_cert"], pki["gov_key"],
                                 HASH, 1, key.public) as client:
            info = client.node_info()
            assert info.node_id == 1 and bytes(info.public_key) == key.public
            segs = client.proof_segments(*window)
            assert segs, "no segment answered"
            H = digest_function(HASH)
            for sg in segs:
                n = len(sg.records) // 48
                assert sg.S == H(b"BEAT-SG-v1" + struct.pack(">QQQ", 1, sg.seg_seq, n) +
                                 sg.records)
            total = sum(len(sg.records) // 48 for sg in segs)
            assert 0 < total <= 200
            from governance.client import RequestRejected
            with pytest.raises(RequestRejected, match="to_ns is before from_ns"):
                client.proof_segments(window[1], window[0])
        # a device certificate (here the daemon's own) may ask for health only: refused before
        # the handler, counted by code and by reason
        with InterrogationClient(f"127.0.0.1:{port}", pki["ca"], pki["cert"], pki["key"],
                                 HASH, 1, key.public) as client:
            with pytest.raises(RequestRejected, match="GetNodeInfo needs the governance role; "
                                                      "the client certificate has device:1"):
                client.node_info()
        # the service's metrics (the stream's slot is freed by gRPC's done callback, which may
        # run just after the client got the last chunk)
        import urllib.request
        wait_for(lambda: d.interrogation.stats()["active_streams"] == 0, timeout=30,
                 what="the answered streams' slots released")
        body = urllib.request.urlopen(f"http://127.0.0.1:{d.metrics.port}/metrics",
                                      timeout=5).read().decode()
        metrics = {line.split(" ")[0]: float(line.split(" ")[1]) for line in body.splitlines()
                   if line.startswith("beat_interrogation")}
        assert metrics["beat_interrogation_answers_total"] >= 1, metrics
        assert metrics["beat_interrogation_active_streams"] == 0, metrics
        assert any(k.startswith("beat_interrogation_refused_total{code=") and "INVALID_ARGUMENT"
                   in k and v == 1 for k, v in metrics.items()), metrics
        assert metrics['beat_interrogation_refused_total{code="PERMISSION_DENIED"}'] == 1, metrics
        assert metrics['beat_interrogation_refused_reasons_total{reason="role"}'] == 1, metrics
        assert metrics['beat_interrogation_calls{role="governance"}'] == 0, metrics
        assert metrics['beat_interrogation_calls{role="others"}'] == 0, metrics
        assert metrics['beat_interrogation_cancelled_total{limit="max_call_s"}'] == 0, metrics
        # and `beatd status` says the same
        from beatd.cli import format_status
        text = format_status(request(str(tmp_path / "c.sock")))
        assert f"interrogate  port {port}: 0 answers running" in text, text
        assert "INVALID_ARGUMENT 1" in text, text
        assert ("PERMISSION_DENIED 1 (before the handler: role 1); calls running: governance 0, "
                "others 0") in text, text
        # the wrong public key: every chunk is refused by the client
        from beat_rpc.evidence import BadSignature
        with InterrogationClient(f"127.0.0.1:{port}", pki["ca"], pki["gov_cert"], pki["gov_key"],
                                 HASH, 1, DeviceKey.generate().public) as client:
            with pytest.raises(BadSignature):
                client.proof_segments(*window)
    finally:
        d.request_stop()
        main.join(timeout=2)
        d.shutdown()
    assert d.interrogation is None
