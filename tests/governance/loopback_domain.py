"""A BEAT domain on loopback, for the governance's tests without namespaces: every router a real
store written by the fast path from the frames it would capture, anchored by the Batcher on one
real ``LocalLedger`` (nodes with their owners, the links, the SLA), and served by a real
``InterrogationServer`` over mutual TLS on 127.0.0.1. The governance is ``beatctl`` itself
(``governance.cli.main``), with a configuration file naming every endpoint.

``Domain(tmp, links, owners)``; ``send(path, n, ...)`` writes what every router on ``path`` sees
of ``n`` packets (the first from outside, the last to outside, unless ``drop_at``), ``start()``
commits, anchors and serves; ``beatctl(*argv)`` runs the governance's command line.
"""
import contextlib
import io
import os
import struct
import time

import pytest

import fastpath
from beat_lab import ca as certs
from beatd.interrogation import InterrogationServer
from beatd.store import Store
from ledger_client.batcher import Batcher
from ledger_client.keys import DeviceKey
from ledger_client.local import LocalLedger
from ledger_client.types import SLA, Node

H = "sha3-256"
SEG = 64
HOP_NS = 200_000                 # 0.2 ms per hop
STEP_NS = 1_000_000              # 1 ms between packets
SRC_IP, DST_IP = bytes([10, 1, 0, 1]), bytes([10, 2, 0, 1])
V4 = bytes(10) + b"\xff\xff"
HOST_MAC = bytes.fromhex("02aa000000ff")


def mac(node):
    return bytes.fromhex("02be0000") + node.to_bytes(2, "big")


def packet(i, tag):
    payload = struct.pack(">QI", i, tag) + b"beat-loopback"
    udp = struct.pack(">HHHH", 4000, 5000, 8 + len(payload), 0) + payload
    return struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i & 0xFFFF, 0, 64, 17, 0,
                       SRC_IP, DST_IP) + udp


class Domain:
    def __init__(self, tmp, links, owners=None, route=(1, 2, 3)):
        self.tmp = tmp
        self.links = [tuple(lk) for lk in links]
        self.nodes = sorted({n for lk in self.links for n in lk})
        self.neighbours = {n: set() for n in self.nodes}
        for a, b in self.links:
            self.neighbours[a].add(b)
            self.neighbours[b].add(a)
        self.owners = owners or {n: f"operator-{n}" for n in self.nodes}
        self.route = tuple(route)
        self.frames = {n: [] for n in self.nodes}       # (t_ns, frame bytes)
        self.t0 = time.time_ns() - 30 * 10**9
        self.t = self.t0
        self.pki = tmp / "pki"
        certs.make_ca(self.pki)
        certs.make_governance(self.pki, self.pki)
        for n in self.nodes:
            certs.make_device(self.pki, self.pki, n, ips=["127.0.0.1"])
        self.gov = DeviceKey.generate()
        self.gov_path = tmp / "governance.key"
        self.gov.save(str(self.gov_path))
        self.keys = {n: DeviceKey.generate() for n in self.nodes}
        self.ledger_path = str(tmp / "ledger.mdb")
        self.servers = {}
        self.stores = {}
        self.sla_valid_to_ns = (1 << 64) - 1             # SLA 1's end
        self.held = {}                    # node: its anchors, claimed, not on the ledger yet

    def send(self, path, n, tag=1, drop_at=None):
        """``n`` packets along ``path``; returns ``(first t_ns, last t_ns)`` of their entry."""
        first = self.t
        for i in range(n):
            self.passage(path, self.t, packet(self.t // STEP_NS, tag), drop_at)
            self.t += STEP_NS
        return first, self.t - STEP_NS

    def passage(self, path, t0, pkt, drop_at=None):
        """The frames of one packet ``pkt`` along ``path`` from ``t0``: arriving at each router
        (one hop delay apart) and leaving it a quarter hop later, unless it is ``drop_at``."""
        for k, x in enumerate(path):
            t_in = t0 + k * HOP_NS
            prev_mac = mac(path[k - 1]) if k else HOST_MAC
            self.frames[x].append((t_in, mac(x) + prev_mac + b"\x08\x00" + pkt))
            if x == drop_at:
                break
            next_mac = mac(path[k + 1]) if k + 1 < len(path) else HOST_MAC
            self.frames[x].append((t_in + HOP_NS // 4, next_mac + mac(x) + b"\x08\x00" + pkt))

    def start(self, gaps=None, late_gaps=None, chain=None, hold=()):
        """``gaps``: ``{node: [(from_ns, to_ns, frames, reason, interface)]}`` gap records a
        router writes before it anchors (anchored with its records); ``late_gaps``: the same,
        written after its anchors (never anchored). ``chain``: ``(ledger, governance account,
        {node: account})`` to run on an ``EthereumLedger`` instead of the local ledger (each
        device anchors from its own account). ``hold``: nodes whose batches the device counts as
        anchored (it answers with their inclusion proofs) but which reach the ledger only at
        ``release()``: a liar that anchors late, or a device that counts fewer confirmations than
        the governance."""
        gaps, late_gaps = gaps or {}, late_gaps or {}
        if chain is None:
            led = LocalLedger(self.ledger_path, hash_name=H, governance_pubkey=self.gov.public)
            gov, anchor_signer, account = self.gov, self.keys, {}
        else:
            led, gov, anchor_signer = chain
            account = {n: a.address_bytes for n, a in anchor_signer.items()}
        for n in self.nodes:
            led.register_node(Node(n, self.owners[n], self.keys[n].public, account.get(n)),
                              signer=gov)
        for a, b in self.links:
            led.register_link(a, b, signer=gov)
        led.register_sla(SLA(1, "tenant", V4 + SRC_IP, V4 + DST_IP, self.route,
                             valid_to_ns=self.sla_valid_to_ns), signer=gov)
        end = self.t + 10 * STEP_NS
        for n in self.nodes:
            store = Store(self.tmp / f"store-{n}", n, H, 64 << 20)
            pipe = fastpath.Pipeline(n, hash_name=H, own_macs=[mac(n)],
                                     neighbours={mac(m): m for m in self.neighbours[n]},
                                     segment_records=SEG, join_window_ns=HOP_NS)
            pipe.resume(**store.resume_state())
            blob, desc, off = [], [], 0
            for t, f in sorted(self.frames[n]):
                blob.append(f)
                desc.append(fastpath.pack_desc(t, off, len(f), len(f), 1, 0))
                off += len(f)
            pipe.feed(b"".join(blob), b"".join(desc))
            pipe.advance(end)
            store.commit(pipe.take())
            pipe.flush()
            store.commit(pipe.take())
            if gaps.get(n):
                store.record_capture(gaps[n])
            b = Batcher(store, led, n, H, anchor_signer[n], 1.0)
            while b.build() is not None:
                pass
            if n in hold:
                self.held[n] = [rec.anchor(n) for rec in b.outbox.batches(0)]
                for a in self.held[n]:
                    b.outbox.mark_anchored(a.batch_seq, None)
            else:
                b.submit()
            if late_gaps.get(n):
                store.record_capture(late_gaps[n])
            self.stores[n] = store
            self.servers[n] = InterrogationServer(
                store, self.keys[n], ca=self.pki / "ca.crt", cert=self.pki / f"device-{n}.crt",
                private_key=self.pki / f"device-{n}.key", listen="127.0.0.1:0",
                threshold_ns=3600 * 10**9).start()
        if chain is None:
            led.close()
        self.config = self.tmp / "governance.toml"
        self.config.write_text(
            f'[interrogation]\nca = "{self.pki}/ca.crt"\ncert = "{self.pki}/governance.crt"\n'
            f'key = "{self.pki}/governance.key"\ntimeout_s = 20\nretry_s = 2\n'
            + "".join(f'[[endpoints]]\nnode_id = {n}\naddress = "127.0.0.1:{s.port}"\n'
                      f'name = "r{n}"\n' for n, s in self.servers.items()))
        return self

    def release(self):
        """Send the held nodes' batches to the ledger now (they land after whatever came
        before)."""
        with self.ledger() as led:
            for n, anchors in self.held.items():
                for a in anchors:
                    led.anchor(a, signer=self.keys[n])
        self.held = {}

    def stop(self):
        for s in self.servers.values():
            s.stop(0)
        for s in self.stores.values():
            s.close()

    def ledger(self):
        return LocalLedger(self.ledger_path, hash_name=H)

    def beatctl(self, *argv, key=True):
        """``(exit code, stdout, stderr)`` of ``beatctl --ledger local:... [--key ...] ARGV``."""
        from governance import cli
        out, err = io.StringIO(), io.StringIO()
        head = ["--ledger", f"local:{self.ledger_path}"]
        if key:
            head += ["--key", str(self.gov_path)]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(head + [str(a) for a in argv])
        return code, out.getvalue(), err.getvalue()

    def interrogate(self, lo, hi, *more):
        return self.beatctl("interrogate", "--sla", 1, "--from", lo, "--to", hi, "--config",
                            self.config, *more)


def files(path):
    return sorted(os.path.relpath(os.path.join(d, f), path)
                  for d, _, fs in os.walk(path) for f in fs)


@pytest.fixture
def stop_after():
    """``stop_after(domain)``: the domain is stopped when the test ends, however it ends."""
    domains = []
    yield domains.append
    for d in domains:
        d.stop()
