"""The simulated domain of the governance service's benchmark (benchmarks/service.py).

``plan(slas, routers, ...)``: a grid of routers (each linked to its right and lower neighbour),
one flow per SLA (its own IPv4 source and destination) over a route of ``route_len`` adjacent
routers, ``packets`` packets per epoch; ``drops``: ``{sla_id: fraction}`` packets the middle
router of that SLA's route drops (exactly ``round(packets x fraction)`` per epoch).

``build(workdir, plan)``: the PKI (a CA, the governance's certificate, one per device), every
device's Ed25519 key, the local ledger (``ledger.mdb``: the nodes, links and SLAs registered by the
governance key) and ``plan.json``.

``python -m benchmarks.service_domain WORKDIR PART PARTS``: one device process serving every
``PARTS``-th router from ``PART``: per router a real ``beatd.store.Store`` (LMDB), the native fast
path (``fastpath.Pipeline``), a ``Batcher`` anchoring on the local ledger and a real
``InterrogationServer`` (gRPC over mutual TLS on 127.0.0.1). It writes its ports to
``ports-PART.json``, then, after every receipt epoch E (1 s) has ended, for each router: the frames
it saw of every packet of E (the first router from outside, the last to outside, the others
between neighbours), advance past the join window (E's receipts close), the anchor-period
boundary (the segment closes), one store commit, one batch built and anchored (anchor period 1 s,
as the lab's). Each anchor's landing (the wall time ``anchor()`` returned) is appended to
``anchors-PART.jsonl``. It stops on SIGTERM.
"""
import json
import os
import random
import signal
import struct
import sys
import time

H = "sha3-256"
L = 1_000_000_000
JOIN_NS = 50_000_000               # the pipeline's join window (fastpath's default)
HOP_NS = 200_000                   # 0.2 ms per hop
FIRST_NS = 60_000_000              # the epoch's packets from E + 60 ms ...
LAST_NS = 900_000_000              # ... to E + 900 ms (all of them inside E, at every hop)
V4 = bytes(10) + b"\xff\xff"
HOST_MAC = bytes.fromhex("02aa000000ff")


def mac(node):
    return bytes.fromhex("02be") + node.to_bytes(4, "big")


def src_ip(sla_id):
    return bytes([10, 0]) + sla_id.to_bytes(2, "big")


def dst_ip(sla_id):
    return bytes([10, 128]) + sla_id.to_bytes(2, "big")


def plan(slas=1000, routers=100, route_len=4, packets=10, drops=None, seed=16):
    """The domain's layout (a JSON-able dict, see the module doc)."""
    if routers < route_len:
        raise ValueError(f"routers: {routers} is fewer than route_len {route_len}")
    width = max(2, int(round(routers ** 0.5)))
    nodes = list(range(1, routers + 1))
    links = set()
    for n in nodes:
        i = n - 1
        if (i % width) + 1 < width and n + 1 <= routers:
            links.add((n, n + 1))
        if n + width <= routers:
            links.add((n, n + width))
    nb = {n: sorted({b for a, b in links if a == n} | {a for a, b in links if b == n})
          for n in nodes}
    rng = random.Random(seed)
    routes = {}
    for s in range(1, slas + 1):
        while True:                                  # a simple path of route_len routers
            path = [rng.choice(nodes)]
            while len(path) < route_len:
                options = [m for m in nb[path[-1]] if m not in path]
                if not options:
                    break
                path.append(rng.choice(options))
            if len(path) == route_len:
                routes[s] = path
                break
    return {"slas": slas, "routers": routers, "route_len": route_len, "packets": packets,
            "drops": {str(k): v for k, v in (drops or {}).items()}, "seed": seed,
            "nodes": nodes, "links": sorted(links), "routes": {str(k): v for k, v in routes.items()}}


def build(workdir, p):
    """PKI, keys, the ledger with every registration, ``plan.json``; returns the governance key."""
    from beat_lab import ca as certs
    from ledger_client.keys import DeviceKey
    from ledger_client.local import LocalLedger
    from ledger_client.types import SLA, Node

    pki = os.path.join(workdir, "pki")
    certs.make_ca(pki)
    certs.make_governance(pki, pki)
    for n in p["nodes"]:
        certs.make_device(pki, pki, n, ips=["127.0.0.1"])
    gov = DeviceKey.generate()
    gov.save(os.path.join(workdir, "governance.key"))
    os.makedirs(os.path.join(workdir, "keys"), exist_ok=True)
    keys = {}
    for n in p["nodes"]:
        keys[n] = DeviceKey.generate()
        keys[n].save(os.path.join(workdir, "keys", f"device-{n}.key"))
    led = LocalLedger(os.path.join(workdir, "ledger.mdb"), hash_name=H,
                      governance_pubkey=gov.public)
    try:
        for n in p["nodes"]:
            led.register_node(Node(n, f"operator-{n}", keys[n].public), signer=gov)
        for a, b in p["links"]:
            led.register_link(a, b, signer=gov)
        for s, route in sorted(p["routes"].items(), key=lambda kv: int(kv[0])):
            s = int(s)
            led.register_sla(SLA(s, f"tenant-{s}", V4 + src_ip(s), V4 + dst_ip(s), tuple(route),
                                 max_loss_ppm=10_000), signer=gov)
    finally:
        led.close()
    with open(os.path.join(workdir, "plan.json"), "w") as f:
        json.dump(p, f)
    return gov


def governance_config(workdir, ports, service):
    """``governance.toml``: the [interrogation] files, every endpoint, the [service] table
    (``service``: its keys and values)."""
    pki = os.path.join(workdir, "pki")
    text = (f'[interrogation]\nca = "{pki}/ca.crt"\ncert = "{pki}/governance.crt"\n'
            f'key = "{pki}/governance.key"\ntimeout_s = 10\nretry_s = 2\n')
    for n, port in sorted(ports.items()):
        text += f'[[endpoints]]\nnode_id = {n}\naddress = "127.0.0.1:{port}"\nname = "r{n}"\n'
    text += "[service]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in service.items())
    path = os.path.join(workdir, "governance.toml")
    with open(path, "w") as f:
        f.write(text)
    return path


# -- the devices ---------------------------------------------------------------------------------

_IP = struct.Struct(">BBHHHBBH4s4s")
_UDP = struct.Struct(">HHHH")


def _packet(sla_id, epoch_no, i):
    payload = struct.pack(">IQI", sla_id, epoch_no, i) + b"beat-bench"
    udp = _UDP.pack(4000, 5000, 8 + len(payload), 0) + payload
    return _IP.pack(0x45, 0, 20 + len(udp), (epoch_no * 131 + i) & 0xFFFF, 0, 64, 17, 0,
                    src_ip(sla_id), dst_ip(sla_id)) + udp


class Router:
    """One simulated device: store, fast path, batcher, interrogation server."""

    def __init__(self, workdir, p, node, ledger):
        import fastpath
        from beatd.interrogation import InterrogationServer
        from beatd.store import Store
        from ledger_client.batcher import Batcher
        from ledger_client.keys import DeviceKey

        self.node = node
        nb = {b for a, b in p["links"] if a == node} | {a for a, b in p["links"] if b == node}
        self.key = DeviceKey.load(os.path.join(workdir, "keys", f"device-{node}.key"))
        self.store = Store(os.path.join(workdir, "stores", f"r{node}"), node, H, 256 << 20)
        self.pipe = fastpath.Pipeline(node, hash_name=H, own_macs=[mac(node)],
                                      neighbours={mac(m): m for m in nb}, segment_records=1024,
                                      join_window_ns=JOIN_NS, anchor_period_ns=L)
        self.pipe.resume(**self.store.resume_state())
        self.batcher = Batcher(self.store, ledger, node, H, self.key, 1.0)
        pki = os.path.join(workdir, "pki")
        self.server = InterrogationServer(
            self.store, self.key, ca=os.path.join(pki, "ca.crt"),
            cert=os.path.join(pki, f"device-{node}.crt"),
            private_key=os.path.join(pki, f"device-{node}.key"), listen="127.0.0.1:0",
            threshold_ns=3600 * L).start()
        # (sla, position on the route, route, packets, the first packet seen, dropped here):
        # the middle router of a dropping SLA's route drops its first ``dropped`` packets
        self.flows = []
        for s, route in p["routes"].items():
            if node not in route:
                continue
            s, k = int(s), route.index(node)
            frac = p["drops"].get(str(s))
            dropped = round(p["packets"] * frac) if frac else 0
            at = len(route) // 2
            self.flows.append((s, k, route, p["packets"], dropped if k > at else 0,
                               dropped if k == at else 0))

    def frames(self, epoch_ns):
        """(buffer, descriptors) of every frame this router saw of epoch ``epoch_ns``."""
        import fastpath
        epoch_no = epoch_ns // L
        out = []
        me = mac(self.node)
        for s, k, route, total, first_seen, drop_here in self.flows:
            prev_mac = mac(route[k - 1]) if k else HOST_MAC
            next_mac = mac(route[k + 1]) if k + 1 < len(route) else HOST_MAC
            step = (LAST_NS - FIRST_NS) // max(1, total)
            for i in range(first_seen, total):
                t = epoch_ns + FIRST_NS + i * step + k * HOP_NS
                pkt = _packet(s, epoch_no, i)
                out.append((t, me + prev_mac + b"\x08\x00" + pkt))
                if i < drop_here:
                    continue                            # dropped here
                out.append((t + HOP_NS // 4, next_mac + me + b"\x08\x00" + pkt))
        out.sort(key=lambda x: x[0])
        blob, desc, off = [], [], 0
        for t, f in out:
            blob.append(f)
            desc.append(fastpath.pack_desc(t, off, len(f), len(f), 1, 0))
            off += len(f)
        return b"".join(blob), b"".join(desc)

    def epoch(self, epoch_ns):
        """Everything this router does once epoch ``epoch_ns`` has ended; returns
        ``(batch_seq, landed_ns)`` of its anchor (None when nothing was anchored)."""
        buf, desc = self.frames(epoch_ns)
        if desc:
            self.pipe.feed(buf, desc)
        self.pipe.advance(epoch_ns + L + JOIN_NS + 1)       # E's receipts close
        self.pipe.close_segment()                           # the anchor-period boundary
        self.store.commit(self.pipe.take())
        rec = self.batcher.build()
        done = self.batcher.submit()
        landed = time.time_ns()
        if rec is None or rec.batch_seq not in done:
            return None
        return rec.batch_seq, landed

    def close(self):
        self.server.stop(0)
        self.store.close()


def serve(workdir, part, parts):
    """The device process (see the module doc)."""
    with open(os.path.join(workdir, "plan.json")) as f:
        p = json.load(f)
    nodes = [n for i, n in enumerate(p["nodes"]) if i % parts == part]
    from ledger_client.local import LocalLedger
    ledger = LocalLedger(os.path.join(workdir, "ledger.mdb"), hash_name=H)   # one per process
    routers = [Router(workdir, p, n, ledger) for n in nodes]
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    tmp = os.path.join(workdir, f"ports-{part}.json.tmp")
    with open(tmp, "w") as f:
        json.dump({r.node: r.server.port for r in routers}, f)
    os.replace(tmp, os.path.join(workdir, f"ports-{part}.json"))
    log = open(os.path.join(workdir, f"anchors-{part}.jsonl"), "a", buffering=1)
    epoch = (time.time_ns() // L) * L                      # the first epoch simulated: this one
    try:
        while not stopping:
            due = epoch + L + JOIN_NS + 10_000_000          # E has ended, past the join window
            wait = (due - time.time_ns()) / 1e9
            if wait > 0:
                time.sleep(min(wait, 0.2))
                continue
            for r in routers:
                got = r.epoch(epoch)
                if got is not None:
                    log.write(json.dumps({"epoch_ns": epoch, "node": r.node, "batch_seq": got[0],
                                          "landed_ns": got[1]}) + "\n")
            epoch += L
    finally:
        for r in routers:
            r.close()
        ledger.close()
        log.close()


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
