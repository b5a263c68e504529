"""Services that a neighbour cannot silence (issue 12): the device's gRPC server over real mutual
TLS on 127.0.0.1, attacked with the certificates of other devices of the domain.

Checked: floods of reflection and Health.Watch streams held open by device certificates (one
certificate as in the issue's reproduction, and three together) do not delay the governance's
GetNodeInfo / GetProofSegments / GetCounterReport, which complete within seconds while every
stream the server took is still open; reflection and GetNodeInfo need the governance role
(PERMISSION_DENIED naming the role the certificate has), health (Check and Watch) is open to any
certificate of the domain's CA; the per-certificate and all-devices limits refuse with
RESOURCE_EXHAUSTED naming the role, the count and the limit, and give the slots back; the watchdog
cancels an idle reflection stream and a Health.Watch after max_call_s; the guard alone, on a
method open to devices that holds its worker, never lets devices hold every worker and gives a
slot back only once its worker is free; stop() does not hang while health watchers leave.
Refusals and cancellations are counted in stats(). Every call has a timeout and every flooding
stream is cancelled in a finally: the tests stop by themselves.
"""
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import fastpath
from beat_rpc import interrogation_pb2 as pb
from beat_rpc import interrogation_pb2_grpc as pb_grpc
from beat_lab import ca as certs
from beatd.interrogation import InterrogationServer, Limits
from beatd.store import Store
from benchmarks.pipeline import NEXT, OWN, build_frames
from conftest import wait_for
from governance.client import InterrogationClient
from ledger_client.keys import DeviceKey

NODE = 3
ATTACKERS = (5, 6, 7)                  # neighbours of NODE, each with its device certificate
H = "sha3-256"
T0 = 1_700_000_000_000_000_000
RECORDS = 20_000
FLOOD = 10                             # streams of each kind per attacking certificate
GOVERNANCE_S = 5.0                     # what "within a few seconds" means for the governance
REFLECTION = "ServerReflectionInfo"
HELD = object()                        # a flooding call that the server kept open


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    certs.make_ca(d)
    for node in (NODE,) + ATTACKERS:
        certs.make_device(d, d, node, ips=["127.0.0.1"])
    certs.make_governance(d, d)
    return d


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A device store with RECORDS records of edge traffic in closed segments."""
    s = Store(tmp_path_factory.mktemp("store"), NODE, H, 64 << 20)
    pipe = fastpath.Pipeline(NODE, hash_name=H, own_macs=[OWN], neighbours={NEXT: 2})
    pipe.resume(**s.resume_state())
    buf, desc = build_frames(2 * RECORDS, flows=100, desc_pack=fastpath.pack_desc)
    mv = memoryview(desc)
    for i in range(0, len(desc) // fastpath.DESC_SIZE, 8192):
        pipe.feed(buf, mv[i * fastpath.DESC_SIZE:(i + 8192) * fastpath.DESC_SIZE])
        s.commit(pipe.take())
    assert s.proof_ring_status(0, 0)["segments"] >= 1
    yield s
    s.close()


class Device:
    """NODE's InterrogationServer on 127.0.0.1, and channels to it with any certificate."""

    def __init__(self, store, pki, limits=None):
        self.pki = pki
        self.key = DeviceKey.generate()
        self.server = InterrogationServer(store, self.key, ca=pki / "ca.crt",
                                          cert=pki / f"device-{NODE}.crt",
                                          private_key=pki / f"device-{NODE}.key",
                                          listen="127.0.0.1:0", limits=limits).start()
        self.endpoint = f"127.0.0.1:{self.server.port}"
        self.channels = []

    def channel(self, name):
        rd = lambda n: (self.pki / n).read_bytes()      # noqa: E731
        ch = grpc.secure_channel(self.endpoint, grpc.ssl_channel_credentials(
            rd("ca.crt"), rd(f"{name}.key"), rd(f"{name}.crt")))
        self.channels.append(ch)
        return ch

    def governance(self, timeout=GOVERNANCE_S):
        return InterrogationClient(self.endpoint, self.pki / "ca.crt", self.pki / "governance.crt",
                                   self.pki / "governance.key", H, NODE, self.key.public,
                                   timeout=timeout)

    def stop(self):
        for ch in self.channels:
            ch.close()
        self.server.stop(0)


@pytest.fixture
def device(store, pki):
    d = Device(store, pki)
    yield d
    d.stop()


def _idle_requests(first, stop):
    """A reflection request stream: ``first`` (or nothing), then idle until ``stop`` is set."""
    if first is not None:
        yield first
    stop.wait(60)


class Flood:
    """Streams held open against the device: reflection (one request answered, then idle) and
    Health.Watch (the first status read, then idle). ``start`` waits until each one is either
    answered (held) or refused; ``outcomes`` has HELD or the grpc.RpcError of each."""

    def __init__(self):
        self.stop = threading.Event()
        self.calls = []
        self.outcomes = []
        self._lock = threading.Lock()

    def _run(self, call, first):
        try:
            next(call)
            out = HELD
        except grpc.RpcError as exc:
            out = exc
        with self._lock:
            self.outcomes.append(out)

    def reflection(self, ch):
        call = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
            _idle_requests(reflection_pb2.ServerReflectionRequest(list_services=""), self.stop),
            timeout=60)
        self.calls.append(call)
        return call

    def watch(self, ch):
        call = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service=""),
                                                   timeout=60)
        self.calls.append(call)
        return call

    def start(self, calls, timeout=10.0):
        """Waits (``timeout`` s at most) until every call is answered or refused; returns how
        many are neither (queued by the server)."""
        threads = [threading.Thread(target=self._run, args=(c, None), daemon=True) for c in calls]
        for t in threads:
            t.start()
        end = time.monotonic() + timeout
        for t in threads:
            t.join(max(0.0, end - time.monotonic()))
        return sum(t.is_alive() for t in threads)

    def held(self):
        return sum(o is HELD for o in self.outcomes)

    def refused(self):
        return [o for o in self.outcomes if o is not HELD]

    def close(self):
        self.stop.set()
        for c in self.calls:
            c.cancel()


def _governance_asks(device):
    """GetNodeInfo, GetProofSegments over the whole store and GetCounterReport with the
    governance's certificate: (seconds, segments)."""
    t0 = time.monotonic()
    with device.governance() as c:
        assert c.node_info().node_id == NODE
        segs = c.proof_segments(T0 - 10**9, T0 + 3599 * 10**9)
        assert c.counter_report()
    return time.monotonic() - t0, segs


# -- the attack ---------------------------------------------------------------------------------

def test_reflection_and_watch_floods_do_not_silence_the_device(device):
    """Every attacking certificate opens FLOOD reflection streams and FLOOD Health.Watch streams
    and keeps the ones the server takes open; the governance is still answered within seconds."""
    flood = Flood()
    try:
        calls = []
        for node in ATTACKERS:
            ch = device.channel(f"device-{node}")
            calls += [flood.reflection(ch) for _ in range(FLOOD)]
            calls += [flood.watch(ch) for _ in range(FLOOD)]
        pending = flood.start(calls)
        seconds, segs = _governance_asks(device)
        assert seconds < GOVERNANCE_S, f"the governance waited {seconds:.1f} s"
        assert sum(len(s.records) for s in segs) // 48 >= RECORDS - 1024
        assert pending == 0, f"{pending} flooding streams neither answered nor refused"
        # the flooding streams the server took are still open (the governance did not wait for
        # them to end): only health streams, at most the limits allow
        lim = device.server.limits
        assert 0 < flood.held() <= lim.max_device_rpcs
        st = device.server.stats()
        assert st["calls"]["others"] == flood.held()
        for exc in flood.refused():
            assert exc.code() in (grpc.StatusCode.PERMISSION_DENIED,
                                  grpc.StatusCode.RESOURCE_EXHAUSTED), exc
        denied = [e for e in flood.refused() if e.code() == grpc.StatusCode.PERMISSION_DENIED]
        assert len(denied) == FLOOD * len(ATTACKERS)       # every reflection stream
        assert st["refused_reasons"]["role"] >= len(denied)
    finally:
        flood.close()


@pytest.mark.parametrize("reflection, watch", [(8, 0), (0, 24), (12, 24)],
                         ids=["8-reflection", "24-watch", "12-reflection-24-watch"])
def test_one_device_certificate_floods(device, reflection, watch):
    """The issue's reproduction: one device certificate opens reflection streams, then
    Health.Watch streams, and keeps them open while the governance asks."""
    flood = Flood()
    try:
        ch = device.channel(f"device-{ATTACKERS[0]}")
        pending = flood.start([flood.reflection(ch) for _ in range(reflection)], timeout=5.0)
        pending += flood.start([flood.watch(ch) for _ in range(watch)], timeout=5.0)
        seconds, _ = _governance_asks(device)
        assert seconds < GOVERNANCE_S, f"the governance waited {seconds:.1f} s"
        assert pending == 0, f"{pending} flooding streams neither answered nor refused"
        assert flood.held() == min(watch, device.server.limits.max_peer_rpcs)
        assert len(flood.refused()) == reflection + watch - flood.held()
    finally:
        flood.close()


# -- roles --------------------------------------------------------------------------------------

def _reflect(ch):
    rs = reflection_pb2_grpc.ServerReflectionStub(ch)
    answers = list(rs.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10))
    return {s.name for s in answers[0].list_services_response.service}


def test_reflection_needs_the_governance_role(device):
    with pytest.raises(grpc.RpcError) as e:
        _reflect(device.channel("device-5"))
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert e.value.details() == (f"{REFLECTION} needs the governance role; the client "
                                 "certificate has device:5")
    assert "beat.v1.Interrogation" in _reflect(device.channel("governance"))
    assert device.server.stats()["refused"]["PERMISSION_DENIED"] >= 1


def test_health_is_open_to_devices_and_nothing_else_is(device):
    ch = device.channel("device-6")
    hs = health_pb2_grpc.HealthStub(ch)
    assert hs.Check(health_pb2.HealthCheckRequest(service="beat.v1.Interrogation"),
                    timeout=10).status == health_pb2.HealthCheckResponse.SERVING
    watch = hs.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()
    with pytest.raises(grpc.RpcError) as e:
        pb_grpc.InterrogationStub(ch).GetNodeInfo(pb.NodeInfoRequest(), timeout=10)
    assert (e.value.code(), e.value.details()) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "GetNodeInfo needs the governance role; the client certificate has device:6")


# -- per-peer limits ----------------------------------------------------------------------------

def test_per_peer_and_all_devices_limits(store, pki):
    d = Device(store, pki, Limits(max_peer_rpcs=2, max_device_rpcs=3))
    flood = Flood()
    try:
        a, b = d.channel("device-5"), d.channel("device-6")
        assert flood.start([flood.watch(a) for _ in range(3)]) == 0
        assert flood.held() == 2
        (exc,) = flood.refused()
        assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert exc.details() == ("2 calls of this client certificate (device:5) are running: the "
                                 "device's max_peer_rpcs is 2; retry later")
        assert flood.start([flood.watch(b) for _ in range(2)]) == 0
        assert flood.held() == 3
        exc = flood.refused()[-1]
        assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert exc.details() == ("3 calls of certificates without the governance role are "
                                 "running (this one has device:6): the device's max_device_rpcs "
                                 "is 3; retry later")
        # the governance is not counted among them and is answered
        with d.governance() as c:
            assert c.node_info().node_id == NODE
            assert _reflect(d.channel("governance"))
        st = d.server.stats()
        assert st["refused_reasons"] == {"max_peer_rpcs": 1, "max_device_rpcs": 1}
        assert st["refused"]["RESOURCE_EXHAUSTED"] == 2
        assert st["calls"]["others"] == 3
        # the slots come back when the streams end
        flood.close()
        wait_for(lambda: d.server.stats()["calls"]["others"] == 0, 10, "the slots released")
        again = Flood()
        assert again.start([again.watch(a) for _ in range(2)]) == 0
        assert again.held() == 2
        again.close()
    finally:
        flood.close()
        d.stop()


# -- the watchdog over every stream -------------------------------------------------------------

def test_watchdog_cancels_idle_reflection_and_watch_streams(store, pki):
    d = Device(store, pki, Limits(max_call_s=1.0))
    flood = Flood()
    try:
        refl = flood.reflection(d.channel("governance"))
        watch = flood.watch(d.channel("device-5"))
        assert flood.start([refl, watch]) == 0
        assert flood.held() == 2
        t0 = time.monotonic()
        for call in (refl, watch):
            with pytest.raises(grpc.RpcError) as e:
                for _ in call:
                    pass
            assert e.value.code() == grpc.StatusCode.CANCELLED
        took = time.monotonic() - t0
        assert took < 10.0, f"cancelled only after {took:.1f} s"
        wait_for(lambda: d.server.stats()["calls"] == {"governance": 0, "others": 0}, 10,
                 "the cancelled calls released")
        assert d.server.stats()["cancelled"]["max_call_s"] == 2
        # the governance's short calls are not touched by it
        with d.governance() as c:
            assert c.node_info().node_id == NODE
    finally:
        flood.close()
        d.stop()


def test_limits_name_the_key_and_value():
    for kw, match in ((dict(max_peer_rpcs=0), r"interrogation\.max_peer_rpcs: 0 must be a number "
                                              "above 0"),
                      (dict(max_device_rpcs=2.5), r"interrogation\.max_device_rpcs: 2\.5 must be "
                                                  "an integer"),
                      (dict(max_call_s=True), r"interrogation\.max_call_s: True must be"),
                      (dict(max_peer_rpcs=9), r"interrogation\.max_peer_rpcs: 9 is more than "
                                              "max_device_rpcs 8")):
        with pytest.raises(ValueError, match=match):
            Limits(**kw)
    lim = Limits()
    assert (lim.max_peer_rpcs, lim.max_device_rpcs, lim.max_call_s) == (4, 8, 60.0)
    assert lim.workers == lim.max_streams + 4 + lim.max_device_rpcs


# -- the guard alone: worker threads held by a method open to devices ---------------------------

def test_devices_never_hold_every_worker(pki):
    """Whatever an open method does (here: it holds its worker until cancelled, and 0.3 s more),
    certificates without the governance role hold at most max_device_rpcs workers, the governance
    is answered meanwhile, and a slot comes back only once its worker is free."""
    from concurrent import futures

    from beatd.interrogation import server_credentials
    from beatd.rpc_guard import RpcGuard

    lim = Limits(max_peer_rpcs=4, max_device_rpcs=8)
    guard = RpcGuard(lim, open_methods=["/t.T/Hold"])
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=lim.workers), interceptors=[guard],
                         maximum_concurrent_rpcs=lim.workers + 16)
    done = []

    def hold(request, context):
        while context.is_active():
            time.sleep(0.02)
        time.sleep(0.3)                 # still busy after the cancellation
        done.append(1)
        return b""

    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("t.T", {
        "Hold": grpc.unary_unary_rpc_method_handler(hold),
        "Ping": grpc.unary_unary_rpc_method_handler(lambda request, context: b"pong")})])
    port = server.add_secure_port("127.0.0.1:0", server_credentials(
        pki / "ca.crt", pki / f"device-{NODE}.crt", pki / f"device-{NODE}.key"))
    server.start()

    def channel(name):
        rd = lambda n: (pki / n).read_bytes()      # noqa: E731
        return grpc.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(
            rd("ca.crt"), rd(f"{name}.key"), rd(f"{name}.crt")))

    chans = [channel(f"device-{n}") for n in ATTACKERS]
    gov = channel("governance")
    calls = []
    try:
        calls = [ch.unary_unary("/t.T/Hold").future(b"", timeout=30)
                 for ch in chans for _ in range(6)]
        wait_for(lambda: sum(c.done() for c in calls) == len(calls) - lim.max_device_rpcs, 10,
                 "every flooding call beyond max_device_rpcs refused")
        refused = [c.exception() for c in calls if c.done()]
        assert all(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for e in refused)
        assert guard.stats()["calls"]["others"] == lim.max_device_rpcs
        # the governance: as many calls at once as its reserved workers, each answered at once
        t0 = time.monotonic()
        pings = [gov.unary_unary("/t.T/Ping").future(b"", timeout=10)
                 for _ in range(lim.workers - lim.max_device_rpcs)]
        assert [p.result() for p in pings] == [b"pong"] * len(pings)
        assert time.monotonic() - t0 < 2.0
        # devices may not call Ping (not open to them)
        with pytest.raises(grpc.RpcError) as e:
            chans[0].unary_unary("/t.T/Ping")(b"", timeout=10)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # the watchdog cancels them; their slots come back once their workers are free
        assert guard.cancel_overdue(now=time.monotonic() + lim.max_call_s + 1) == \
            lim.max_device_rpcs
        time.sleep(0.1)
        assert guard.stats()["calls"]["others"] == lim.max_device_rpcs   # workers still busy
        wait_for(lambda: guard.stats()["calls"]["others"] == 0, 10, "the slots given back")
        assert len(done) == lim.max_device_rpcs
    finally:
        for c in calls:
            c.cancel()
        for ch in chans + [gov]:
            ch.close()
        server.stop(0)


# -- health: stopping while watchers leave ------------------------------------------------------

def test_stop_while_health_watchers_leave_does_not_hang(store, pki):
    """grpc_health's own servicer deadlocks here (seen in this file's runs): the polling thread
    runs a leaving watcher's callback, which waits for the servicer's lock, which stop()'s
    NOT_SERVING holds while it waits for the polling thread to send to every watcher."""
    rounds, hung = 25, []
    for i in range(rounds):
        d = Device(store, pki)
        flood = Flood()
        ch = d.channel("governance")                 # not limited: many watchers
        assert flood.start([flood.watch(ch) for _ in range(16)]) == 0
        leave = threading.Thread(target=flood.close)
        stop = threading.Thread(target=d.server.stop, args=(0,), daemon=True)
        leave.start()
        stop.start()
        stop.join(15)
        leave.join(15)
        if stop.is_alive():
            hung.append(i + 1)
            break
        ch.close()
    assert not hung, f"InterrogationServer.stop() hung in round {hung[0]} of {rounds}"


def test_a_flood_of_refusals_is_logged_once_a_minute_per_peer(device, caplog):
    import logging
    ch = device.channel("device-7")
    clock = [1000.0]
    device.server.guard.clock = lambda: clock[0]
    with caplog.at_level(logging.INFO, logger="beatd.interrogation"):
        for t in (0, 1, 2, 61, 62):
            clock[0] = 1000.0 + t
            with pytest.raises(grpc.RpcError):
                _reflect(ch)
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert lines == [
        f"interrogation refused: PERMISSION_DENIED: /grpc.reflection.v1alpha.ServerReflection/"
        f"{REFLECTION}: {REFLECTION} needs the governance role; the client certificate has "
        "device:7",
        f"interrogation refused: PERMISSION_DENIED: /grpc.reflection.v1alpha.ServerReflection/"
        f"{REFLECTION}: {REFLECTION} needs the governance role; the client certificate has "
        "device:7 (2 more refusals of this certificate in the last 60 s)"]
    assert device.server.stats()["refused_reasons"]["role"] == 5
