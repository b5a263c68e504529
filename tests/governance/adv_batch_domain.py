"""A BEAT domain on loopback with several SLAs sharing their end devices, and devices that lie in
their batched receipts answers: the adversary's set-up for the batched receipts request (request
kind 7, "receipts of flows"; tests/governance/test_adv_batch_*.py).

Three real routers (stores written by the fast path, anchored on a real local ledger, real
Interrogation servers over mutual TLS on 127.0.0.1; tests/governance/loopback_domain.py), three
flows sent side by side, one packet of each every millisecond:

- flow A (10.1.0.1 -> 10.2.0.1) over 1, 2, 3: SLA 1 (route 1, 2, 3);
- flow B (10.1.0.2 -> 10.2.0.2) over 1, 2, 3: SLA 2 (route 1, 2, 3);
- flow C (10.1.0.3 -> 10.2.0.3) over 1, 2: SLA 3 (route 1, 2).

Router 1 is the first device of every SLA (one batch: A, B, C and the overflow flow), router 3 the
last of SLAs 1 and 2, router 2 the last of SLA 3. ``drop`` names the flows router 2 drops in the
middle phase (its own records say so: the honest verdict names router 2).

A lying device: ``Liar(domain, node)`` rewrites what its real server answers to GetReceipts before
it is signed with the device's own key (the device's software changed, its key and certificate its
own): which receipts, cut into which chunks, under which Q, how late, and whether it refuses the
batched request (``Liar``'s doc).
"""
import struct
import threading
import time

import pytest

from beat_rpc import evidence as ev
from loopback_domain import STEP_NS, V4, Domain, stop_after  # noqa: F401 (the tests take it from here)

from governance.service.monitor import OVERFLOW
from ledger_client.types import SLA

H = "sha3-256"
L = 10**9
LINKS = [(1, 2), (2, 3)]
FLOWS = {                     # name: (src ip, dst ip, path)
    "A": (bytes([10, 1, 0, 1]), bytes([10, 2, 0, 1]), (1, 2, 3)),
    "B": (bytes([10, 1, 0, 2]), bytes([10, 2, 0, 2]), (1, 2, 3)),
    "C": (bytes([10, 1, 0, 3]), bytes([10, 2, 0, 3]), (1, 2)),
}
SLA_OF = {"A": 1, "B": 2, "C": 3}


def addr(flow):
    """``(src, dst)`` of a flow, 16 bytes each (IPv4-mapped)."""
    s, d, _ = FLOWS[flow]
    return V4 + s, V4 + d


def _packet(i, tag, src_ip, dst_ip):
    payload = struct.pack(">QI", i, tag) + b"beat-adv-batch"
    udp = struct.pack(">HHHH", 4000, 5000, 8 + len(payload), 0) + payload
    return struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i & 0xFFFF, 0, 64, 17, 0,
                       src_ip, dst_ip) + udp


class BatchDomain(Domain):
    """``Domain`` with flows A, B, C side by side and SLAs 1, 2, 3 (see the module doc)."""

    def send_flows(self, n, tag, drop=()):
        """``n`` steps, one packet of every flow each (flow k offset by k * 300 us); the flows
        named in ``drop`` end at router 2. Returns ``(first t_ns, last t_ns)`` of the steps."""
        first = self.t
        for _ in range(n):
            for k, (name, (s, d, path)) in enumerate(sorted(FLOWS.items())):
                self.passage(path, self.t + k * 300_000, _packet(self.t // STEP_NS, tag, s, d),
                             2 if name in drop else None)
            self.t += STEP_NS
        return first, self.t - STEP_NS

    def start(self, **kw):
        super().start(**kw)
        with self.ledger() as led:
            for name in ("B", "C"):
                src, dst = addr(name)
                led.register_sla(SLA(SLA_OF[name], f"tenant-{name}", src, dst,
                                     FLOWS[name][2]), signer=self.gov)
        return self


def batch_domain(tmp, healthy=2000, dropped=3000, after=1500, drop=("B",), rewrite=None,
                 owners=None):
    """Epochs of every flow healthy, then ``dropped`` steps where router 2 drops ``drop``, then
    healthy again. ``d.healthy``, ``d.dropped``, ``d.after``: their (first, last) t_ns.
    ``rewrite(d)``: changes ``d.frames`` (what each router saw or claims) before the routers
    write and anchor them. ``owners``: ``{node: operator}`` (default one operator each)."""
    d = BatchDomain(tmp, LINKS, owners=owners, route=FLOWS["A"][2])
    d.t = ((d.t0 // L) + 1) * L
    d.healthy = d.send_flows(healthy, 1)
    d.dropped = d.send_flows(dropped, 2, drop=drop)
    d.after = d.send_flows(after, 3) if after else None
    if rewrite is not None:
        rewrite(d)
    return d.start()


def of_flow(name):
    """A frame of flow ``name`` (its IPv4 source)."""
    src = FLOWS[name][0]
    return lambda f: f[14 + 12:14 + 16] == src


def remove(d, node, lo, hi, which):
    """Router ``node`` has no frame ``which`` between lo and hi (it says it never saw them)."""
    d.frames[node] = [(t, f) for t, f in d.frames[node] if not (lo <= t <= hi and which(f))]


def epochs_of(lo, hi):
    """The epochs wholly covered by steps from lo to hi."""
    return list(range(((lo + L - 1) // L) * L, hi + STEP_NS - L + 1, L))


# -- the service --------------------------------------------------------------------------------

def service(domain, tmp, **kw):
    """The real service (governance/service) on ``domain``, every SLA evaluated from the first
    healthy epoch on."""
    from test_service_loopback import service as one_sla_service
    svc, led = one_sla_service(domain, tmp, **kw)
    with svc.state.lock:
        for sla_id in SLA_OF.values():
            st = svc.state.sla(sla_id)
            if st["next_epoch"] is None:
                st["next_epoch"] = (domain.healthy[0] // L) * L
    return svc, led


def run_rounds(svc, until, timeout=60):
    from test_service_loopback import run_rounds as rr
    return rr(svc, until, timeout)


def results(svc, sla_id):
    return {r["epoch_ns"]: r for r in svc.state.snapshot(series=True)["slas"][str(sla_id)]["series"]}


def evaluated(svc, epoch, slas=(1, 2, 3)):
    return lambda: all(epoch in results(svc, s) for s in slas)


# -- a lying device -----------------------------------------------------------------------------

class Liar:
    """Router ``node``'s real Interrogation server, its receipts answers rewritten before they
    are signed with its own key. Hooks (all optional):

    - ``items(batched, Q, receipts)``: the receipts to answer (the honest ones given, in order;
      ``batched``: the request named several flows, request kind 7);
    - ``chunks(receipts)``: how they are cut into chunks (a list of lists; default the server's);
    - ``Q(batched, Q)``: the request digest written into the chunks (a replay: another's);
    - ``delay_s``: a sleep before the first chunk;
    - ``refuse_batch``: ``(grpc.StatusCode, details)`` a request naming several flows is refused
      with (a device that says it does not know kind 7), the per-flow requests answered.

    ``asked``: ``(batched, Q, number of receipts honestly due)`` of every receipts answer."""

    def __init__(self, domain, node):
        self.servicer = sv = domain.servers[node].servicer
        self.node = node
        self.items = None
        self.chunks = None
        self.Q = None
        self.delay_s = 0.0
        self.refuse_batch = None
        self.asked = []
        self._local = threading.local()
        self._honest = sv._chunked_answer
        sv._chunked_answer = self._answer
        self._honest_batch = getattr(sv, "_receipts_of_flows", None)
        if self._honest_batch is not None:
            sv._receipts_of_flows = self._batch

    def restore(self):
        self.servicer._chunked_answer = self._honest
        if self._honest_batch is not None:
            self.servicer._receipts_of_flows = self._honest_batch

    def _batch(self, request, context):
        if self.refuse_batch is not None:
            from beatd.interrogation import RequestError
            self.servicer._refuse(context, RequestError(*self.refuse_batch))
        self._local.batched = True
        try:
            yield from self._honest_batch(request, context)
        finally:
            self._local.batched = False

    def _answer(self, kind, Q, items, per_chunk):
        if kind != ev.KIND_RECEIPTS:
            yield from self._honest(kind, Q, items, per_chunk)
            return
        batched = getattr(self._local, "batched", False)
        self.asked.append((batched, bytes(Q), len(items)))
        if self.delay_s:
            time.sleep(self.delay_s)
        items = list(items) if self.items is None else list(self.items(batched, Q, list(items)))
        q = bytes(Q) if self.Q is None else self.Q(batched, bytes(Q))
        sv = self.servicer
        groups = self.chunks(items) if self.chunks is not None else \
            ([items[i:i + per_chunk] for i in range(0, len(items), per_chunk)] or [[]])
        for seq, group in enumerate(groups):
            body = encode_receipts_chunk(sv.node_id, q, seq, seq == len(groups) - 1,
                                         sv.clock(), group)
            yield sv._sign(body)
        sv._answered()


def encode_receipts_chunk(node_id, Q, seq, last, t_ns, receipts):
    """A receipts chunk (kind 3) of ``receipts`` in the order given (``ev.encode_chunk`` does not
    sort: a liar may send them in any order)."""
    return ev.encode_chunk(ev.KIND_RECEIPTS, node_id, Q, seq, last, t_ns, receipts)




@pytest.fixture
def liar(domain):
    """``liar(node)``: a ``Liar`` on that router of the module's ``domain``, undone after the
    test (imported by the test modules that use it)."""
    made = []

    def make(node):
        made.append(Liar(domain, node))
        return made[-1]
    yield make
    for lr in made:
        lr.restore()
