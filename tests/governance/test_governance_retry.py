"""governance/retry.py: retries with exponential backoff and jitter within a deadline, and the
classification of what went wrong (unreachable, refused, incomplete, bad_evidence).

Deterministic: a fake call fails or answers as scripted and costs fake time; the clock, the sleep
and the random jitter are injected, so the waits and timeouts are checked exactly and nothing
sleeps. Then against a real TLS server: a device that comes up while the governance retries is
answered, one that never does is unreachable within the deadline, a device refusing is refused
at once.
"""
import threading
import time

import grpc
import pytest

from beat_rpc.evidence import BadSignature, IncompleteAnswer, MalformedEvidence, WrongAnswer
from governance import retry
from governance.client import (InterrogationClient, NodeUnreachable, NoEvidence, RequestRejected,
                               WrongNode)
from governance.retry import (BadEvidence, Incomplete, Refused, Unreachable, ask_with_retry,
                              classify)

RE = grpc.StatusCode.RESOURCE_EXHAUSTED
BUSY = "1 evidence streams are running: the device's max_streams is 1; retry later"
TOO_BIG = ("5000000 records in 12 segments of the window [1, 2]: more than the device's "
           "max_records 4000000; ask for a shorter window or fewer flows")


def unavailable(chunks=0):
    return NodeUnreachable("node 3 at r3:9478: GetProofSegments: UNAVAILABLE: connection refused",
                           grpc.StatusCode.UNAVAILABLE, "connection refused", chunks)


def deadline():
    return NodeUnreachable("node 3: DEADLINE_EXCEEDED", grpc.StatusCode.DEADLINE_EXCEEDED,
                           "Deadline Exceeded")


def rejected(code, details):
    return RequestRejected(f"node 3: {code.name}: {details}", code, details)


class Fake:
    """A clock, a sleep and a call answering from ``script`` (an exception is raised, anything
    else returned; the last entry again and again), each attempt costing ``cost`` seconds (or
    the timeout it got, when "timeout")."""

    def __init__(self, script, cost=0.0):
        self.t = 100.0
        self.script = list(script)
        self.cost = cost
        self.sleeps = []
        self.timeouts = []

    def clock(self):
        return self.t

    def sleep(self, s):
        assert s >= 0
        self.sleeps.append(s)
        self.t += s

    def call(self, timeout):
        self.timeouts.append(timeout)
        self.t += timeout if self.cost == "timeout" else self.cost
        out = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(out, BaseException):
            raise out
        return out

    def ask(self, deadline_s=20.0, **kw):
        kw.setdefault("random", lambda: 0.0)
        return ask_with_retry(self.call, deadline_s, clock=self.clock, sleep=self.sleep, **kw)


def test_transient_failures_then_the_answer():
    f = Fake([unavailable(), rejected(RE, BUSY), deadline(), "segments"])
    seen = []
    assert f.ask(on_retry=lambda n, exc, d: seen.append((n, type(exc).__name__, d))) == "segments"
    assert f.sleeps == [0.25, 0.5, 1.0]                    # random() = 0: no jitter taken off
    assert seen == [(1, "NodeUnreachable", 0.25), (2, "RequestRejected", 0.5),
                    (3, "NodeUnreachable", 1.0)]
    assert f.timeouts == [20.0, 19.75, 19.25, 18.25]        # each attempt: the time left


def test_backoff_doubles_up_to_its_cap_and_stops_at_the_deadline():
    f = Fake([unavailable()])
    with pytest.raises(Unreachable) as e:
        f.ask(20.0)
    # 0.25 + 0.5 + 1 + 2 + 4 * 4 = 19.75; one more wait of 4 s would pass the deadline
    assert f.sleeps == [0.25, 0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    err = e.value
    assert (err.classification, err.attempts, err.busy) == ("unreachable", 9, False)
    assert isinstance(err.last_error, NodeUnreachable) and len(err.errors) == 9
    assert err.errors[0].startswith("attempt 1: NodeUnreachable: node 3 at r3:9478: ")
    assert str(err) == ("the request: unreachable after 9 attempts in 19.8 s (deadline 20 s): "
                        "NodeUnreachable: node 3 at r3:9478: GetProofSegments: UNAVAILABLE: "
                        "connection refused")
    assert err.__cause__ is err.last_error


def test_jitter_takes_a_random_part_off_each_wait():
    f = Fake([unavailable(), unavailable(), unavailable(), "ok"])
    draws = iter([1.0, 0.5, 0.0])
    assert f.ask(jitter=0.5, random=lambda: next(draws)) == "ok"
    assert f.sleeps == [0.25 * 0.5, 0.5 * 0.75, 1.0]
    f = Fake([unavailable(), "ok"])
    assert f.ask(jitter=0.0, random=lambda: 1.0) == "ok" and f.sleeps == [0.25]


def test_attempt_timeouts_never_pass_the_deadline():
    f = Fake([deadline()], cost="timeout")
    with pytest.raises(Unreachable) as e:
        f.ask(8.0, attempt_timeout_s=3.0)
    assert f.timeouts == [3.0, 3.0, 1.25]                   # the last one: what was left
    assert f.sleeps == [0.25, 0.5]
    assert f.t - 100.0 == pytest.approx(8.0)
    assert e.value.attempts == 3 and e.value.elapsed_s == pytest.approx(8.0)


def test_a_device_that_stays_busy_is_unreachable_not_refused():
    f = Fake([rejected(RE, BUSY)])
    with pytest.raises(Unreachable) as e:
        f.ask(3.0)
    assert e.value.busy and e.value.attempts > 1
    assert "(the device stayed busy)" in str(e.value)
    # gRPC's own limit says so too
    assert classify(rejected(RE, "Concurrent RPC limit exceeded!")).busy


@pytest.mark.parametrize("exc", [
    rejected(grpc.StatusCode.INVALID_ARGUMENT, "window [10, 5]: to_ns is before from_ns"),
    rejected(grpc.StatusCode.PERMISSION_DENIED, "GetNodeInfo needs the governance role; ..."),
    rejected(RE, TOO_BIG),
    NoEvidence("node 3: NOT_FOUND", grpc.StatusCode.NOT_FOUND, "none of the flow tags"),
    rejected(grpc.StatusCode.UNKNOWN, "Exception iterating responses"),
], ids=["invalid", "permission", "max_records", "not_found", "unknown"])
def test_refusals_are_not_retried(exc):
    f = Fake([unavailable(), exc])
    with pytest.raises(Refused) as e:
        f.ask()
    assert (e.value.classification, e.value.attempts, e.value.last_error) == ("refused", 2, exc)
    assert f.sleeps == [0.25]
    assert str(e.value).startswith(f"the request: refused: {type(exc).__name__}: ")


def test_an_answer_cut_short_is_incomplete():
    exc = IncompleteAnswer("node 3: the answer ended after 2 chunks without the last one")
    f = Fake([unavailable(), unavailable(chunks=3), exc])
    with pytest.raises(Incomplete) as e:
        f.ask(what="node 3 GetProofSegments")
    assert (e.value.classification, e.value.attempts) == ("incomplete", 3)
    assert str(e.value) == ("node 3 GetProofSegments: incomplete: IncompleteAnswer: node 3: the "
                            "answer ended after 2 chunks without the last one")
    # a transport failure in the middle of an answer is retried, and unreachable at the end
    assert classify(unavailable(chunks=3)) == retry.Classified("unreachable", retry=True)


@pytest.mark.parametrize("exc", [BadSignature("chunk 0: bad signature"),
                                 MalformedEvidence("chunk 0: 3 bytes"),
                                 WrongAnswer("chunk 0 of node 4"),
                                 WrongNode("r3: answers as node 4")])
def test_bad_evidence_is_not_retried(exc):
    f = Fake([exc])
    with pytest.raises(BadEvidence) as e:
        f.ask()
    assert (e.value.classification, e.value.attempts, f.sleeps) == ("bad_evidence", 1, [])


def test_raw_grpc_errors_are_classified():
    class Err(grpc.RpcError):
        def __init__(self, code, details=""):
            self._c, self._d = code, details

        def code(self):
            return self._c

        def details(self):
            return self._d

    assert classify(Err(grpc.StatusCode.CANCELLED)).classification == "unreachable"
    assert classify(Err(RE, BUSY)) == retry.Classified("unreachable", retry=True, busy=True)
    assert classify(Err(RE, TOO_BIG)) == retry.Classified("refused")
    assert classify(Err(grpc.StatusCode.INTERNAL, "x")).classification == "refused"
    assert classify(KeyError("x")) == retry.Classified(None)


def test_other_exceptions_are_raised_unchanged():
    f = Fake([unavailable(), ValueError("pubkey: 31 bytes")])
    with pytest.raises(ValueError, match="pubkey: 31 bytes"):
        f.ask()
    assert f.sleeps == [0.25]


@pytest.mark.parametrize("kw, match", [
    (dict(deadline_s=0), r"deadline_s: 0 must be a number of seconds above 0"),
    (dict(deadline_s=True), r"deadline_s: True must be"),
    (dict(attempt_timeout_s=-1), r"attempt_timeout_s: -1 must be above 0"),
    (dict(jitter=1.5), r"jitter: 1\.5 must be within \[0, 1\]"),
    (dict(first_delay_s=5, max_delay_s=1), r"backoff: first_delay_s 5, max_delay_s 1"),
])
def test_arguments_are_checked(kw, match):
    args = dict(deadline_s=10.0)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        ask_with_retry(lambda t: None, **args)


# -- against a real device ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    from beat_lab import ca as certs
    d = tmp_path_factory.mktemp("pki")
    certs.make_ca(d)
    certs.make_device(d, d, 3, ips=["127.0.0.1"])
    certs.make_governance(d, d)
    return d


def _client(pki, endpoint, key, name="governance"):
    return InterrogationClient(endpoint, pki / "ca.crt", pki / f"{name}.crt", pki / f"{name}.key",
                               "sha3-256", 3, key.public, timeout=10)


def _server(tmp_path, pki, key, listen):
    from beatd.interrogation import InterrogationServer
    from beatd.store import Store
    store = Store(tmp_path / "store", 3, "sha3-256", 1 << 20)
    srv = InterrogationServer(store, key, ca=pki / "ca.crt", cert=pki / "device-3.crt",
                              private_key=pki / "device-3.key", listen=listen)
    return store, srv


def test_a_device_that_comes_up_while_the_governance_retries(tmp_path, pki):
    from conftest import free_port
    from ledger_client.keys import DeviceKey
    key = DeviceKey.generate()
    port = free_port()
    up = []

    def start():                  # the port is bound only now: connections are refused until
        up.append(_server(tmp_path, pki, key, f"127.0.0.1:{port}"))
        up[0][1].start()
    timer = threading.Timer(1.5, start)
    retries = []
    try:
        with _client(pki, f"127.0.0.1:{port}", key) as c:
            t0 = time.monotonic()
            timer.start()
            info = ask_with_retry(lambda t: c.node_info(timeout=t), 20.0, attempt_timeout_s=5.0,
                                  what="node 3 GetNodeInfo",
                                  on_retry=lambda n, exc, d: retries.append(exc))
            took = time.monotonic() - t0
        assert info.node_id == 3
        assert retries and all(isinstance(e, NodeUnreachable) for e in retries)
        assert 1.5 <= took < 10.0, f"answered after {took:.1f} s"
    finally:
        timer.join(10)
        for store, srv in up:
            srv.stop(0)
            store.close()


def test_a_device_that_never_answers_is_unreachable_within_the_deadline(pki):
    from conftest import free_port
    from ledger_client.keys import DeviceKey
    key = DeviceKey.generate()
    with _client(pki, f"127.0.0.1:{free_port()}", key) as c:
        t0 = time.monotonic()
        with pytest.raises(Unreachable) as e:
            ask_with_retry(lambda t: c.proof_segments(1, 2, timeout=t), 2.0,
                           what="node 3 GetProofSegments")
        took = time.monotonic() - t0
    assert e.value.attempts >= 3 and took < 4.0
    assert str(e.value).startswith("node 3 GetProofSegments: unreachable after ")


def test_a_refusal_is_not_retried(tmp_path, pki):
    from ledger_client.keys import DeviceKey
    key = DeviceKey.generate()
    store, srv = _server(tmp_path, pki, key, "127.0.0.1:0")
    srv.start()
    try:
        with _client(pki, f"127.0.0.1:{srv.port}", key, name="device-3") as c:
            with pytest.raises(Refused) as e:
                ask_with_retry(lambda t: c.counter_report(timeout=t), 20.0)
        assert e.value.attempts == 1
        assert e.value.last_error.code == grpc.StatusCode.PERMISSION_DENIED
    finally:
        srv.stop(0)
        store.close()
